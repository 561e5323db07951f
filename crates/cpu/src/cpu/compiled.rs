//! The run loop's side of compiled code (`crate::jit`): entering it, the
//! calls it makes back into the interpreter, and filling the links and
//! direct pages it found empty.

#![allow(unsafe_code)]

use std::mem::offset_of;

use super::{Chain, Cpu, Flow};
use crate::bus::Bus;
use crate::cache::{DecodeCache, OPS_PER_PAGE};
use crate::jit::{BlockFn, Calls, CompiledBlocks, CpuLayout, EnterFn, JUMP, Link, NEXT};
use crate::mmu::AccessKind;
use crate::pstate::Pstate;
use crate::sysreg::SCTLR_M;

/// Steps compiled code may run before the run loop looks at kicks again:
/// about 3 µs of guest code.
const STEPS_PER_ENTRY: u64 = 1024;

fn flow_code(f: Flow) -> u64 {
    match f {
        Flow::Next => NEXT,
        Flow::Jump => JUMP,
        Flow::Resync => 2,
        Flow::Trap => 3,
        Flow::Fault => 4,
        Flow::Exit => 5,
        Flow::NotDecoded => 6,
    }
}

pub(crate) fn flow_of(code: u64) -> Flow {
    match code & 0xFF {
        NEXT => Flow::Next,
        JUMP => Flow::Jump,
        2 => Flow::Resync,
        3 => Flow::Trap,
        4 => Flow::Fault,
        5 => Flow::Exit,
        _ => Flow::NotDecoded,
    }
}

/// [`ExecFn`] for bus type `B`.
///
/// # Safety
///
/// `cpu` is the running `Cpu` and `calls` the [`Calls`] of this run, made by
/// [`Cpu::run_compiled`] for bus `B`, and `op` the arena position of an op of
/// the running block. Compiled code passes what it was called with.
unsafe extern "C" fn exec<B: Bus>(cpu: *mut u8, calls: *mut Calls, op: u64, last: u64) -> u64 {
    // SAFETY: the caller passes the pointers compiled code was called with;
    // `call` made them from live `&mut` borrows that nothing else uses
    // during the call.
    let cpu = unsafe { &mut *cpu.cast::<Cpu>() };
    // SAFETY: as for `cpu`.
    let calls = unsafe { &mut *calls };
    // SAFETY: `run_compiled::<B>` erased a `&mut B` that outlives the call.
    let bus = unsafe { &mut *calls.bus.cast::<B>() };
    #[allow(clippy::cast_possible_truncation)]
    // SAFETY: compiled code passes the arena position of the op it stands
    // for, which it was compiled from, so it is in the arena.
    let op = unsafe { calls.arena.add(op as usize) };
    // SAFETY: `op` points at an op of the running block, in the arena, which
    // is unchanged while compiled code runs.
    let op = unsafe { &*op };
    // MRS and MSR (which end blocks) read the count their block retires to.
    let first = calls.retired + calls.budget - calls.left;
    flow_code(cpu.exec(bus, op, first + last))
}

/// [`FillFn`] for bus type `B`.
///
/// # Safety
///
/// As for [`exec`].
unsafe extern "C" fn fill<B: Bus>(cpu: *mut u8, calls: *mut Calls, va: u64, write: u64) {
    // SAFETY: as in `exec`.
    let cpu = unsafe { &mut *cpu.cast::<Cpu>() };
    // SAFETY: as in `exec`.
    let calls = unsafe { &mut *calls };
    // SAFETY: as in `exec`.
    let bus = unsafe { &mut *calls.bus.cast::<B>() };
    cpu.fill_direct(bus, va, write != 0);
}

impl Cpu {
    /// Where compiled code finds the `Cpu` fields it uses.
    pub(super) const LAYOUT: CpuLayout = CpuLayout::new(
        offset_of!(Cpu, regs),
        offset_of!(Cpu, pc),
        offset_of!(Cpu, pstate) + offset_of!(Pstate, nzcv),
        offset_of!(Cpu, direct),
        offset_of!(Cpu, cache) + offset_of!(DecodeCache, block_epoch),
    );

    /// The interpreter just accessed `va` (`write`: stored to it) for compiled
    /// code: let the next accesses to its page at this EL go direct, as that
    /// one was allowed (see `jit/direct.rs`). Not for Device memory, nor for a
    /// write to a page holding decoded code.
    fn fill_direct<B: Bus>(&mut self, bus: &mut B, va: u64, write: bool) {
        let page = va & !0xFFF;
        let pa_page = if self.sys.sctlr_el1 & SCTLR_M == 0 {
            page
        } else {
            let kind = if write {
                AccessKind::Write
            } else {
                AccessKind::Read
            };
            // A TLB hit: the access just translated.
            match self.translate(bus, va, kind, self.pstate.el == 0) {
                Ok(t) if !t.device => t.pa & !0xFFF,
                _ => return,
            }
        };
        if write && self.cache.may_hold(pa_page >> 12) {
            return;
        }
        if let Some(host) = bus.host_page(pa_page, write) {
            self.direct.insert(page, host, write);
        }
    }

    /// Runs compiled block `f`, which fits in the budget and whose first op
    /// retires as number `*retired`, and the blocks after it on the same
    /// page while they are compiled, fit, and no kick came. Compiled blocks
    /// jump to each other through their links; when one returns instead, this
    /// fills the link it missed and calls the next. Returns the last block's
    /// flow and ops taken; `*retired` counts the blocks before it.
    #[inline(never)]
    pub(crate) fn run_compiled<B: Bus>(
        &mut self,
        bus: &mut B,
        blocks: &mut CompiledBlocks,
        f: BlockFn,
        retired: &mut u64,
        chain: &Chain<'_>,
    ) -> (Flow, u64) {
        let Some(enter) = blocks.enter() else {
            unreachable!("a block was compiled without a way in");
        };
        let busp = (bus as *mut B).cast();
        let mut calls = Calls::new(busp, exec::<B>, fill::<B>, chain.arena);
        let mut f = f;
        loop {
            calls.retired = *retired;
            calls.budget = (chain.stop - *retired).min(STEPS_PER_ENTRY);
            calls.left = calls.budget;
            calls.miss = std::ptr::null_mut();
            // SAFETY: see `call`.
            let r = unsafe { call(enter, self, &mut calls, f) };
            // The blocks before the last one retired every op.
            *retired = calls.retired + calls.budget - calls.left;
            let (code, taken) = (r & 0xFF, r >> 8);
            let stays = match code {
                JUMP => self.pc & !0xFFC == chain.page && !bus.kicked(),
                NEXT => self.pc & 0xFFF != 0,
                _ => false,
            };
            if !stays {
                return (flow_of(code), taken);
            }
            #[allow(clippy::cast_possible_truncation)]
            let index = ((self.pc >> 2) as usize) & (OPS_PER_PAGE - 1);
            let Some(next) = self.cache.block(chain.slab, index) else {
                return (flow_of(code), taken);
            };
            let Some(next_f) = blocks.compiled(next.start) else {
                return (flow_of(code), taken);
            };
            if next.len as u64 > chain.stop - *retired - taken {
                return (flow_of(code), taken);
            }
            // SAFETY: a non-null `miss` is a link of the block that just ran,
            // owned by `blocks` (alive), and no compiled code runs now.
            if let Some(link) = unsafe { calls.miss.as_mut() } {
                *link = Link::new(next_f, self.cache.block_epoch, next.len);
            }
            *retired += taken;
            f = next_f;
        }
    }
}

/// Runs compiled block `f` (and the blocks it jumps to) on `cpu`.
///
/// # Safety
///
/// `enter` and `f` come from the same live [`CompiledBlocks`], `calls.arena`
/// holds the ops `f` was compiled from, and `f`'s block fits in `calls.left`.
#[inline(always)]
unsafe fn call(enter: EnterFn, cpu: &mut Cpu, calls: &mut Calls, f: BlockFn) -> u64 {
    // SAFETY: `f` was compiled by `CompiledBlocks::compile` from the ops
    // `calls` points at (the arena keeps them while code for them exists).
    // Compiled code reads and writes `Cpu` fields at their `offset_of!`
    // offsets and `Calls` fields likewise, guest RAM only through host pages
    // the bus vouched for, jumps only to blocks of its own module through
    // links whose epoch matches the decode cache's, and calls back only
    // `calls.exec` and `calls.fill`, which get these same two pointers; both
    // borrows are unused until it returns.
    unsafe { enter(std::ptr::from_mut(cpu).cast(), calls, f) }
}
