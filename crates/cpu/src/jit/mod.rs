//! The block compiler: a decoded block that keeps being entered is compiled to
//! host code with Cranelift, and the run loop calls that code instead of
//! interpreting the block's ops.
//!
//! - **What is compiled.** A block is the interpreter's own (`cache.rs`): straight
//!   line, ending at a branch or the page end, its ops in the decode cache's
//!   arena. It is compiled after [`Engine::Compiler`]'s `after` entries. Common
//!   ALU ops, single loads and stores and the closing branch become native code
//!   (`emit.rs`); any other op calls the interpreter's `exec` for that op, so
//!   both engines share one definition of every instruction.
//! - **Memory.** A native load or store looks its page up in the direct-page
//!   table (`direct.rs`): a hit is a host load or store, a miss runs the op in the
//!   interpreter and then asks the bus for the page's host address.
//! - **Lifetime.** Compiled code is keyed by the block's arena position, and
//!   arena ops never change until the arena is emptied; then every compiled
//!   block is freed with it (the arena generation).
//! - **Unsafe code.** This module is the only place in apf-cpu that has any: it
//!   calls code it generated and that code writes the `Cpu` it is given, and it
//!   reads and writes guest RAM through the bus's [`HostPage`](crate::HostPage)s.
//!
//! [`Engine::Compiler`]: crate::Engine::Compiler

#![allow(unsafe_code)]

mod direct;
mod emit;

pub(crate) use direct::DirectPages;

use std::mem::offset_of;

use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, Signature, types};
use cranelift_codegen::isa::CallConv;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Module, default_libcall_names};

use crate::Cpu;
use crate::bus::Bus;
use crate::cache::{Block, DecodeCache};
use crate::cpu::Flow;
use crate::decode::Op;
use crate::pstate::Pstate;
use emit::{Emit, Target, ends_natively};

/// Compiled code for one block, in Cranelift's tail-call convention, so that a
/// block can jump to the next: `(cpu, calls) -> ops taken << 8 | flow code`
/// of the last block run. Ops taken: those retired, plus the last one when it
/// returned a flow other than [`NEXT`] (as the interpreter's block loop counts
/// them). Called only through [`EnterFn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockFn(*const u8);
/// The way into compiled code from Rust: `(cpu, calls, block) -> what the
/// block returns`.
type EnterFn = unsafe extern "C" fn(*mut Cpu, *mut Calls, *const u8) -> u64;
/// The interpreter's `exec` for an op of the running block: `(cpu, calls, the
/// op's arena position, the block's length - 1) -> flow code`.
type ExecFn = unsafe extern "C" fn(*mut Cpu, *mut Calls, u64, u64) -> u64;
/// Fills the direct-page entry of an access the interpreter just did:
/// `(cpu, calls, virtual address, write)`.
type FillFn = unsafe extern "C" fn(*mut Cpu, *mut Calls, u64, u64);

/// What compiled code shares with the run loop beyond the `Cpu`, behind one
/// pointer so that a call passes two arguments.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Calls {
    /// The `&mut B` of the run, type-erased (`exec` and `fill` know `B`).
    bus: *mut u8,
    exec: ExecFn,
    fill: FillFn,
    /// The arena's first op.
    arena: *const Op,
    /// The retired count when compiled code was entered, and the budget then.
    retired: u64,
    budget: u64,
    /// What is left of the budget as the running block starts: a block jumps
    /// to the next only if it fits, and takes its length off. So the running
    /// block's first op retires as number `retired + budget - left`.
    left: u64,
    /// The link a block found empty or stale on its way out (null: none), for
    /// the run loop to fill.
    miss: *mut Link,
}

impl Calls {
    /// The calls of a run on `bus` with blocks in `arena`.
    pub(crate) fn new<B: Bus>(bus: &mut B, arena: &[Op]) -> Calls {
        Calls {
            bus: (bus as *mut B).cast(),
            exec: exec::<B>,
            fill: fill::<B>,
            arena: arena.as_ptr(),
            retired: 0,
            budget: 0,
            left: 0,
            miss: std::ptr::null_mut(),
        }
    }
}

/// Steps compiled code may run before the run loop looks at kicks again:
/// about 3 µs of guest code.
const STEPS_PER_ENTRY: u64 = 1024;

/// Flow codes, as compiled code returns them in its low byte.
pub(crate) const NEXT: u64 = 0;
pub(crate) const JUMP: u64 = 1;

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
/// `Calls::new::<B>`, with `ops` pointing at the running block, which has more
/// than `index` ops. Compiled code passes what it was called with.
unsafe extern "C" fn exec<B: Bus>(cpu: *mut Cpu, calls: *mut Calls, op: u64, last: u64) -> u64 {
    // SAFETY: the caller passes the pointers compiled code was called with;
    // `call` made them from live `&mut` borrows that nothing else uses
    // during the call.
    let cpu = unsafe { &mut *cpu };
    // SAFETY: as for `cpu`.
    let calls = unsafe { &mut *calls };
    // SAFETY: `Calls::new::<B>` erased a `&mut B` that outlives the call.
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
unsafe extern "C" fn fill<B: Bus>(cpu: *mut Cpu, calls: *mut Calls, va: u64, write: u64) {
    // SAFETY: as in `exec`.
    let cpu = unsafe { &mut *cpu };
    // SAFETY: as in `exec`.
    let calls = unsafe { &mut *calls };
    // SAFETY: as in `exec`.
    let bus = unsafe { &mut *calls.bus.cast::<B>() };
    cpu.fill_direct(bus, va, write != 0);
}

/// Where a run of compiled blocks may go on: blocks of code page `page`
/// (decode-cache slab `slab`, ops in `arena`) while the retired count stays
/// below `stop`.
#[derive(Debug)]
pub(crate) struct Chain<'a> {
    pub(crate) page: u64,
    pub(crate) slab: usize,
    pub(crate) stop: u64,
    pub(crate) arena: &'a [Op],
}

impl Cpu {
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
        let Some(enter) = blocks.enter else {
            unreachable!("a block was compiled without a way in");
        };
        let mut calls = Calls::new(bus, chain.arena);
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
            let index = ((self.pc >> 2) as usize) & (crate::cache::OPS_PER_PAGE - 1);
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
                *link = Link {
                    code: next_f.0,
                    epoch: self.cache.block_epoch,
                    len: next.len as u64,
                };
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
    unsafe { enter(cpu, calls, f.0) }
}

const REGS: i32 = field(offset_of!(Cpu, regs));
const PC: i32 = field(offset_of!(Cpu, pc));
const DIRECT: i32 = field(offset_of!(Cpu, direct) + DirectPages::TABLE);
const NZCV: i32 = field(offset_of!(Cpu, pstate) + offset_of!(Pstate, nzcv));
const BLOCK_EPOCH: i32 = field(offset_of!(Cpu, cache) + offset_of!(DecodeCache, block_epoch));
const CALLS_EXEC: i32 = field(offset_of!(Calls, exec));
const CALLS_FILL: i32 = field(offset_of!(Calls, fill));
const CALLS_LEFT: i32 = field(offset_of!(Calls, left));
const CALLS_MISS: i32 = field(offset_of!(Calls, miss));

/// A field offset as an IR load/store offset.
const fn field(offset: usize) -> i32 {
    assert!(offset < 1 << 16, "a field compiled code uses is far in");
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let offset = offset as i32;
    offset
}

/// Memory flags of compiled code's accesses to the `Cpu`, its direct-page
/// table and [`Calls`]: valid and aligned, so they never trap.
fn flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Memory flags of a guest RAM access through a host page: valid, so it never
/// traps, but only as aligned as the host page is.
fn ram_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// The compiled state of one arena position.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Entered this many times, not compiled.
    Cold(u32),
    Compiled(BlockFn),
    /// Compiling failed: interpret it.
    Refused,
}

/// Where one way out of a compiled block (a branch or its fall-through, to a
/// fixed place on the same page) went last time: the block there, valid while
/// the decode cache's blocks are those of `epoch`. Compiled code reads it and
/// jumps straight to `code`; the run loop fills it when it found the block.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct Link {
    /// The block's code (null: not linked yet).
    code: *const u8,
    epoch: u64,
    /// The block's length.
    len: u64,
}

const LINK_CODE: i32 = field(offset_of!(Link, code));
const LINK_EPOCH: i32 = field(offset_of!(Link, epoch));
const LINK_LEN: i32 = field(offset_of!(Link, len));

impl Link {
    const EMPTY: Link = Link {
        code: std::ptr::null(),
        epoch: 0,
        len: 0,
    };
}

/// Every compiled block of one vCPU, keyed by arena position.
pub(crate) struct CompiledBlocks {
    /// None: the host's ISA has no Cranelift backend; nothing is compiled.
    module: Option<JITModule>,
    ctx: cranelift_codegen::Context,
    builder: FunctionBuilderContext,
    slots: Vec<Slot>,
    /// The module's way in from Rust (None: no module, or compiling it failed).
    enter: Option<EnterFn>,
    /// Every compiled block's links, boxed so that compiled code can hold
    /// their addresses (a `Vec<Link>` would move them as it grows); freed
    /// with the module.
    #[allow(clippy::vec_box)]
    links: Vec<Box<Link>>,
    /// The arena generation the slots belong to.
    generation: u64,
    /// Entries before a block is compiled.
    after: u32,
    /// Blocks compiled so far.
    compiled: u64,
}

// SAFETY: a `JITModule` is not `Send` only because it holds raw pointers to its
// code memory, as `enter`, the slots and the links do. That memory is owned by
// this value alone, used only by the thread that holds it (the vCPU's), and
// freed by it; nothing is thread-local.
unsafe impl Send for CompiledBlocks {}

impl std::fmt::Debug for CompiledBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledBlocks")
            .field("after", &self.after)
            .field("compiled", &self.compiled)
            .finish_non_exhaustive()
    }
}

/// A module for the host's ISA, if Cranelift has a backend for it.
fn new_module() -> Option<JITModule> {
    let mut flags = settings::builder();
    // Blocks are small and generated by us: the IR verifier is for debugging.
    for (name, value) in [
        ("opt_level", "speed"),
        ("is_pic", "false"),
        // Cranelift's tail calls need frame pointers.
        ("preserve_frame_pointers", "true"),
        (
            "enable_verifier",
            if cfg!(debug_assertions) {
                "true"
            } else {
                "false"
            },
        ),
    ] {
        flags.set(name, value).ok()?;
    }
    let isa = cranelift_native::builder()
        .ok()?
        .finish(settings::Flags::new(flags))
        .ok()?;
    Some(JITModule::new(JITBuilder::with_isa(
        isa,
        default_libcall_names(),
    )))
}

impl CompiledBlocks {
    /// Blocks compiled after `after` entries (0: at their first).
    pub(crate) fn new(after: u32) -> CompiledBlocks {
        let module = new_module();
        let ctx = module
            .as_ref()
            .map_or_else(cranelift_codegen::Context::new, Module::make_context);
        let mut blocks = CompiledBlocks {
            module,
            ctx,
            builder: FunctionBuilderContext::new(),
            slots: Vec::new(),
            enter: None,
            links: Vec::new(),
            generation: 0,
            after,
            compiled: 0,
        };
        blocks.enter = blocks.compile_enter();
        blocks
    }

    /// The signatures of compiled code: blocks (tail calls), the way in, the
    /// interpreter's `exec` and `fill`.
    fn signatures(module: &JITModule) -> [Signature; 4] {
        let ptr = module.target_config().pointer_type();
        let host = module.isa().default_call_conv();
        let signature = |call_conv, params: &[types::Type], returns: bool| {
            let mut sig = Signature::new(call_conv);
            sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
            if returns {
                sig.returns.push(AbiParam::new(types::I64));
            }
            sig
        };
        [
            signature(CallConv::Tail, &[ptr, ptr], true),
            signature(host, &[ptr, ptr, ptr], true),
            signature(host, &[ptr, ptr, types::I64, types::I64], true),
            signature(host, &[ptr, ptr, types::I64, types::I64], false),
        ]
    }

    /// Compiles the module's [`EnterFn`]: a host-convention function that
    /// calls a block in the tail-call convention.
    fn compile_enter(&mut self) -> Option<EnterFn> {
        let module = self.module.as_mut()?;
        let [block_sig, enter_sig, _, _] = CompiledBlocks::signatures(module);
        let id = module.declare_anonymous_function(&enter_sig).ok()?;
        self.ctx.func.signature = enter_sig;
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.builder);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let p = b.block_params(entry).to_vec();
            let block_sig = b.import_signature(block_sig);
            let call = b.ins().call_indirect(block_sig, p[2], &[p[0], p[1]]);
            let r = b.inst_results(call)[0];
            b.ins().return_(&[r]);
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        let defined = module.define_function(id, &mut self.ctx).is_ok();
        module.clear_context(&mut self.ctx);
        if !defined {
            return None;
        }
        module.finalize_definitions().ok()?;
        let code = module.get_finalized_function(id);
        // SAFETY: `code` was just compiled with `enter_sig`, which is
        // `EnterFn`'s: three pointers in, an i64 out, the host's C convention.
        Some(unsafe { std::mem::transmute::<*const u8, EnterFn>(code) })
    }

    /// The compiled code of the block at arena `start`, compiling it once it
    /// has been entered often enough.
    #[inline]
    pub(crate) fn entry(
        &mut self,
        block: Block,
        index: usize,
        ops: &[Op],
        generation: u64,
    ) -> Option<BlockFn> {
        let start = block.start;
        if generation != self.generation {
            self.reset(generation);
        }
        if start >= self.slots.len() {
            self.slots.resize(start + 1024, Slot::Cold(0));
        }
        match self.slots[start] {
            Slot::Compiled(f) => Some(f),
            Slot::Refused => None,
            Slot::Cold(n) if n >= self.after => self.compile_at(start, index, ops),
            Slot::Cold(n) => {
                self.slots[start] = Slot::Cold(n + 1);
                None
            }
        }
    }

    /// The compiled code of the block at arena `start`, if there is some.
    #[inline(always)]
    pub(crate) fn compiled(&self, start: usize) -> Option<BlockFn> {
        match self.slots.get(start) {
            Some(Slot::Compiled(f)) => Some(*f),
            _ => None,
        }
    }

    /// The arena was emptied: free every compiled block.
    #[cold]
    fn reset(&mut self, generation: u64) {
        self.slots.clear();
        self.enter = None;
        self.generation = generation;
        if let Some(module) = self.module.take() {
            // SAFETY: every pointer into this module's code was in `slots` and
            // `enter`, just cleared, or in the links, freed next; no compiled
            // code is running (we are in the run loop).
            unsafe { module.free_memory() };
            self.links.clear();
            self.module = new_module();
            self.enter = self.compile_enter();
        }
    }

    #[cold]
    #[inline(never)]
    fn compile_at(&mut self, start: usize, index: usize, ops: &[Op]) -> Option<BlockFn> {
        let f = self.compile(start, index, ops);
        self.slots[start] = f.map_or(Slot::Refused, Slot::Compiled);
        f
    }

    /// Compiles the block of `ops`, at arena position `start`, that starts at
    /// slot `index` of its page.
    fn compile(&mut self, start: usize, index: usize, ops: &[Op]) -> Option<BlockFn> {
        self.enter?;
        let module = self.module.as_mut()?;
        let target = module.target_config();
        let ptr = target.pointer_type();
        let [block_sig, _, exec_sig, fill_sig] = CompiledBlocks::signatures(module);
        let id = module.declare_anonymous_function(&block_sig).ok()?;
        self.ctx.func.signature = block_sig.clone();
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.builder);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let (cpu, calls) = (b.block_params(entry)[0], b.block_params(entry)[1]);
            let block_sig = b.import_signature(block_sig);
            let exec_sig = b.import_signature(exec_sig);
            let fill_sig = b.import_signature(fill_sig);
            let pc0 = b.ins().load(types::I64, flags(), cpu, PC);
            let direct = b.ins().load(ptr, flags(), cpu, DIRECT);
            let mut e = Emit {
                b,
                cpu,
                calls,
                pc0,
                direct,
                exec_sig,
                fill_sig,
                block_sig,
                offset: index * 4,
                start,
                len: ops.len(),
                links: &mut self.links,
                flags_from: None,
            };
            let len = ops.len();
            let mut ended = false;
            for (i, op) in ops.iter().enumerate() {
                if e.native(op, i, len) {
                    ended |= i == len - 1 && ends_natively(op);
                    continue;
                }
                // The interpreter runs it (and may set NZCV); any flow but
                // NEXT leaves the block.
                e.flags_from = None;
                let r = e.exec_op(i);
                let out = e.b.create_block();
                let cont = e.b.create_block();
                e.b.ins().brif(r, out, &[], cont, &[]);
                e.b.switch_to_block(out);
                e.b.seal_block(out);
                let taken = e.b.ins().iconst(types::I64, taken_code(i + 1, 0));
                let v = e.b.ins().bor(taken, r);
                e.b.ins().return_(&[v]);
                e.b.switch_to_block(cont);
                e.b.seal_block(cont);
            }
            if !ended {
                // Every op went on to the next: PC is past the block.
                // Blocks are at most a page of ops.
                let bytes = i64::try_from(len * 4).unwrap_or(i64::MAX);
                e.leave(Target::Fixed(bytes), NEXT, len);
            }
            e.b.seal_all_blocks();
            e.b.finalize(target);
        }
        let defined = module.define_function(id, &mut self.ctx).is_ok();
        module.clear_context(&mut self.ctx);
        if !defined {
            return None;
        }
        module.finalize_definitions().ok()?;
        let code = module.get_finalized_function(id);
        self.compiled += 1;
        Some(BlockFn(code))
    }
}

/// `taken << 8 | flow`, as compiled code returns it.
fn taken_code(taken: usize, flow: u64) -> i64 {
    i64::try_from(taken << 8 | usize::try_from(flow).unwrap_or(0)).unwrap_or(i64::MAX)
}
