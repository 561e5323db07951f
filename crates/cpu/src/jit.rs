//! PROTOTYPE (branch jit-proto, not for main): straight-line blocks compiled
//! to host code with Cranelift, to measure what a JIT would give on CoreMark
//! before deciding to build one. The common ALU forms and the branch that ends
//! a block run as native code on the register file in `Cpu`; every other op
//! (loads, stores, system ops) calls back into the interpreter's `exec`.
//!
//! A block is compiled after it has been entered [`hot_threshold`] times.
//! Compiled code is keyed by the block's arena position: arena ops never
//! change until the arena is emptied, and then every compiled block is
//! dropped with it (the arena generation).
#![allow(unsafe_code)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

use std::mem::offset_of;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, Signature, Value, types};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Module, default_libcall_names};

use crate::Cpu;
use crate::bus::Bus;
use crate::cpu::Flow;
use crate::decode::{CondSelOp, LoadExt, LogicOp, MovOp, MulOp, Op, Writeback, reg};
use crate::pstate::Pstate;
use apf_abi::esr::AccessSize;

/// The interpreter's entry for one op: (cpu, bus, op, retired) -> flow code.
pub(crate) type Helper = unsafe extern "C" fn(*mut Cpu, *mut u8, *const Op, u64) -> u64;
/// A compiled block: (cpu, bus, helper, the block's ops, retired count of its
/// last op) -> ops taken << 8 | flow code.
pub(crate) type BlockFn =
    unsafe extern "C" fn(*mut Cpu, *mut u8, Helper, *const Op, u64, Fill) -> u64;
/// Fills the direct-page entry of an access that just went through the interpreter.
pub(crate) type Fill = unsafe extern "C" fn(*mut Cpu, *mut u8, u64, u64);

/// Entries of the direct-page table (direct-mapped on the VA page number).
pub(crate) const JTLB_ENTRIES: usize = 256;

/// A data page compiled code may access directly: valid for one run, with
/// the MMU off (VA = PA), and for writes only on pages holding no decoded code.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct JEntry {
    read_tag: u64,
    write_tag: u64,
    /// Host address minus guest address.
    addend: u64,
    pad: u64,
}

impl JEntry {
    pub(crate) const EMPTY: JEntry = JEntry {
        read_tag: u64::MAX,
        write_tag: u64::MAX,
        addend: 0,
        pad: 0,
    };
}

const _: () = assert!(size_of::<JEntry>() == 32);

/// [`Fill`] for bus type `B`.
pub(crate) unsafe extern "C" fn fill<B: Bus>(cpu: *mut Cpu, bus: *mut u8, va: u64, write: u64) {
    let cpu = unsafe { &mut *cpu };
    let bus = unsafe { &mut *bus.cast::<B>() };
    if cpu.sys.sctlr_el1 & crate::sysreg::SCTLR_M != 0 {
        return;
    }
    let page = va & !0xFFF;
    let write = write != 0;
    if write && cpu.cache.may_hold(page >> 12) {
        return;
    }
    let Some(host) = bus.host_page(page, write) else {
        return;
    };
    let e = &mut cpu.jtlb[((va >> 12) as usize) & (JTLB_ENTRIES - 1)];
    let addend = (host as u64).wrapping_sub(page);
    if e.addend != addend {
        *e = JEntry::EMPTY;
        e.addend = addend;
    }
    if write {
        e.write_tag = page;
    }
    e.read_tag = page;
}

pub(crate) const NEXT: u64 = 0;
pub(crate) const JUMP: u64 = 1;

pub(crate) fn flow_code(f: Flow) -> u64 {
    match f {
        Flow::Next => 0,
        Flow::Jump => 1,
        Flow::Resync => 2,
        Flow::Trap => 3,
        Flow::Fault => 4,
        Flow::Exit => 5,
        Flow::NotDecoded => 6,
    }
}

pub(crate) fn flow_of(code: u64) -> Flow {
    match code & 0xFF {
        0 => Flow::Next,
        1 => Flow::Jump,
        2 => Flow::Resync,
        3 => Flow::Trap,
        4 => Flow::Fault,
        5 => Flow::Exit,
        _ => Flow::NotDecoded,
    }
}

/// The interpreter's `exec` for one op, called from compiled code.
pub(crate) unsafe extern "C" fn helper<B: Bus>(
    cpu: *mut Cpu,
    bus: *mut u8,
    op: *const Op,
    retired: u64,
) -> u64 {
    let cpu = unsafe { &mut *cpu };
    let bus = unsafe { &mut *bus.cast::<B>() };
    let op = unsafe { &*op };
    if census_on() {
        census(op);
    }
    flow_code(cpu.exec(bus, op, retired))
}

fn census_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("APF_JIT_CENSUS").is_some())
}

struct Census(std::collections::HashMap<String, u64>);
impl Drop for Census {
    fn drop(&mut self) {
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        for (k, n) in v.iter().take(25) {
            eprintln!("census {n:>12} {k}");
        }
    }
}
thread_local! {
    static CENSUS: std::cell::RefCell<Census> = std::cell::RefCell::new(Census(Default::default()));
}

#[cold]
fn census(op: &Op) {
    let d = format!("{op:?}");
    let key = match *op {
        Op::Load {
            wb, unprivileged, ..
        }
        | Op::Store {
            wb, unprivileged, ..
        } => {
            format!(
                "{} wb={wb:?} u={unprivileged}",
                d.split(' ').next().unwrap_or("")
            )
        }
        Op::AddShifted {
            shift,
            amount,
            sf,
            sub,
            flags,
            ..
        } => {
            format!("AddShifted {shift:?} {amount} sf={sf} sub={sub} flags={flags}")
        }
        Op::AddImm { sf, sub, flags, .. } => format!("AddImm sf={sf} sub={sub} flags={flags}"),
        Op::LogicShifted {
            op,
            amount,
            invert,
            sf,
            ..
        } => {
            format!("LogicShifted {op:?} {amount} inv={invert} sf={sf}")
        }
        Op::LogicImm { op, sf, .. } => format!("LogicImm {op:?} sf={sf}"),
        Op::Bitfield { op, sf, .. } => format!("Bitfield {op:?} sf={sf}"),
        _ => d.split(' ').next().unwrap_or("").to_string(),
    };
    CENSUS.with(|c| *c.borrow_mut().0.entry(key).or_default() += 1);
}

/// Entries before a block is compiled (APF_JIT_HOT, default 50; 0 compiles at once).
fn hot_threshold() -> u32 {
    static HOT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *HOT.get_or_init(|| {
        std::env::var("APF_JIT_HOT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50)
    })
}

#[derive(Clone, Copy)]
enum Slot {
    Cold(u32),
    Compiled(BlockFn),
    Refused,
}

pub(crate) struct Jit {
    module: Option<JITModule>,
    ctx: cranelift_codegen::Context,
    fctx: FunctionBuilderContext,
    slots: Vec<Slot>,
    generation: u64,
    compiled: u64,
}

// SAFETY (prototype): the JIT module's memory is owned by this value and only
// used by the thread that runs the vCPU.
unsafe impl Send for Jit {}

impl std::fmt::Debug for Jit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jit")
            .field("compiled", &self.compiled)
            .finish()
    }
}

fn new_module() -> JITModule {
    let mut flags = settings::builder();
    flags.set("use_colocated_libcalls", "false").unwrap();
    flags.set("is_pic", "false").unwrap();
    flags.set("opt_level", "speed").unwrap();
    let isa = cranelift_native::builder()
        .expect("host supported")
        .finish(settings::Flags::new(flags))
        .expect("isa");
    JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()))
}

impl Default for Jit {
    fn default() -> Jit {
        let module = new_module();
        let ctx = module.make_context();
        Jit {
            module: Some(module),
            ctx,
            fctx: FunctionBuilderContext::new(),
            slots: Vec::new(),
            generation: 0,
            compiled: 0,
        }
    }
}

const REGS: i32 = offset_of!(Cpu, regs) as i32;
const PC: i32 = offset_of!(Cpu, pc) as i32;
const JTLB: i32 = offset_of!(Cpu, jtlb) as i32;
const NZCV: i32 = (offset_of!(Cpu, pstate) + offset_of!(Pstate, nzcv)) as i32;

fn flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

impl Jit {
    /// The compiled code of the block at arena `start`, compiling it when hot.
    #[inline]
    pub(crate) fn entry(&mut self, start: usize, ops: &[Op], generation: u64) -> Option<BlockFn> {
        if generation != self.generation {
            self.reset(generation);
        }
        if start >= self.slots.len() {
            self.slots.resize(start + 1024, Slot::Cold(0));
        }
        match self.slots[start] {
            Slot::Compiled(f) => Some(f),
            Slot::Refused => None,
            Slot::Cold(n) => {
                if n >= hot_threshold() {
                    self.compile_at(start, ops)
                } else {
                    self.slots[start] = Slot::Cold(n + 1);
                    None
                }
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

    #[cold]
    fn reset(&mut self, generation: u64) {
        if let Some(m) = self.module.take() {
            // SAFETY: every pointer into this module's code is in `slots`, cleared here.
            unsafe { m.free_memory() };
        }
        self.slots.clear();
        self.module = Some(new_module());
        self.generation = generation;
    }

    #[cold]
    #[inline(never)]
    fn compile_at(&mut self, start: usize, ops: &[Op]) -> Option<BlockFn> {
        let f = self.compile(ops);
        self.slots[start] = match f {
            Some(f) => Slot::Compiled(f),
            None => Slot::Refused,
        };
        f
    }

    fn compile(&mut self, ops: &[Op]) -> Option<BlockFn> {
        let module = self.module.as_mut()?;
        let ptr = module.target_config().pointer_type();
        let mut helper_sig = Signature::new(module.isa().default_call_conv());
        for _ in 0..3 {
            helper_sig.params.push(AbiParam::new(ptr));
        }
        helper_sig.params.push(AbiParam::new(types::I64));
        helper_sig.returns.push(AbiParam::new(types::I64));

        let mut sig = module.make_signature();
        for _ in 0..4 {
            sig.params.push(AbiParam::new(ptr));
        }
        sig.params.push(AbiParam::new(types::I64));
        sig.params.push(AbiParam::new(ptr));
        sig.returns.push(AbiParam::new(types::I64));
        let mut fill_sig = Signature::new(module.isa().default_call_conv());
        for _ in 0..2 {
            fill_sig.params.push(AbiParam::new(ptr));
        }
        fill_sig.params.push(AbiParam::new(types::I64));
        fill_sig.params.push(AbiParam::new(types::I64));
        let id = module.declare_anonymous_function(&sig).ok()?;
        self.ctx.func.signature = sig;
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let p = b.block_params(entry).to_vec();
            let (cpu, bus, helper, opsp, last, fillp) = (p[0], p[1], p[2], p[3], p[4], p[5]);
            let helper_sigref = b.import_signature(helper_sig);
            let fill_sigref = b.import_signature(fill_sig);
            let pc0 = b.ins().load(types::I64, flags(), cpu, PC);
            let jtlb = b.ins().load(ptr, flags(), cpu, JTLB);
            let mut e = Emit {
                b,
                cpu,
                pc0,
                bus,
                helper,
                opsp,
                last,
                fillp,
                jtlb,
                helper_sigref,
                fill_sigref,
            };
            let len = ops.len();
            let mut ended = false;
            for (i, op) in ops.iter().enumerate() {
                if e.native(op, i, len) {
                    if i == len - 1 && ends_natively(op) {
                        ended = true;
                    }
                    continue;
                }
                // The interpreter runs this op with PC at it.
                let pc = e.pc_at(i);
                e.b.ins().store(flags(), pc, cpu, PC);
                let off = e.b.ins().iconst(ptr, (i * size_of::<Op>()) as i64);
                let opp = e.b.ins().iadd(opsp, off);
                let call =
                    e.b.ins()
                        .call_indirect(helper_sigref, helper, &[cpu, bus, opp, last]);
                let r = e.b.inst_results(call)[0];
                let out = e.b.create_block();
                let cont = e.b.create_block();
                e.b.ins().brif(r, out, &[], cont, &[]);
                e.b.switch_to_block(out);
                e.b.seal_block(out);
                let taken = e.b.ins().iconst(types::I64, ((i as i64) + 1) << 8);
                let v = e.b.ins().bor(taken, r);
                e.b.ins().return_(&[v]);
                e.b.switch_to_block(cont);
                e.b.seal_block(cont);
            }
            if !ended {
                // Every op went to the next: PC past the block.
                let pc = e.pc_at(len);
                e.b.ins().store(flags(), pc, cpu, PC);
                let v =
                    e.b.ins()
                        .iconst(types::I64, ((len as i64) << 8) | NEXT as i64);
                e.b.ins().return_(&[v]);
            }
            let mut b = e.b;
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        let ok = module.define_function(id, &mut self.ctx).is_ok();
        module.clear_context(&mut self.ctx);
        if !ok {
            return None;
        }
        module.finalize_definitions().ok()?;
        let code = module.get_finalized_function(id);
        self.compiled += 1;
        // SAFETY: compiled with BlockFn's signature and the host's call convention.
        Some(unsafe { std::mem::transmute::<*const u8, BlockFn>(code) })
    }
}

/// Whether `op`, compiled natively as a block's last op, returns itself.
fn ends_natively(op: &Op) -> bool {
    matches!(
        op,
        Op::B { .. }
            | Op::Bl { .. }
            | Op::BCond { .. }
            | Op::Cbz { .. }
            | Op::Tbz { .. }
            | Op::Br { .. }
            | Op::Ret { .. }
    )
}

struct Emit<'a> {
    b: FunctionBuilder<'a>,
    cpu: Value,
    pc0: Value,
    bus: Value,
    helper: Value,
    opsp: Value,
    last: Value,
    fillp: Value,
    jtlb: Value,
    helper_sigref: cranelift_codegen::ir::SigRef,
    fill_sigref: cranelift_codegen::ir::SigRef,
}

impl Emit<'_> {
    /// Base, address and written-back base of an immediate-offset access.
    fn imm_address(&mut self, n: u8, offset: i32, wb: Writeback) -> (Value, Value, Option<Value>) {
        let base = self.r(n);
        let moved = self.b.ins().iadd_imm_s(base, i64::from(offset));
        let addr = if wb == Writeback::Post { base } else { moved };
        (base, addr, (wb != Writeback::None).then_some(moved))
    }

    /// `extended` of exec::alu: UXTB..SXTX, then shifted left.
    fn extend(&mut self, v: Value, ext: crate::decode::Extend, amount: u8) -> Value {
        let unused = 64 - (8i64 << (ext.0 & 3));
        let v = if unused == 0 {
            v
        } else {
            let top = self.b.ins().ishl_imm_s(v, unused);
            if ext.0 & 4 != 0 {
                self.b.ins().sshr_imm_s(top, unused)
            } else {
                self.b.ins().ushr_imm_s(top, unused)
            }
        };
        if amount == 0 {
            v
        } else {
            self.b.ins().ishl_imm_s(v, i64::from(amount))
        }
    }

    fn load_ext(&mut self, host: Value, size: AccessSize, ext: LoadExt) -> Value {
        let f = flags();
        let v = match (size, ext) {
            (AccessSize::Double, _) => self.b.ins().load(types::I64, f, host, 0),
            (AccessSize::Byte, LoadExt::Zero) => self.b.ins().uload8(types::I64, f, host, 0),
            (AccessSize::Half, LoadExt::Zero) => self.b.ins().uload16(types::I64, f, host, 0),
            (AccessSize::Word, LoadExt::Zero) => self.b.ins().uload32(f, host, 0),
            (AccessSize::Byte, _) => self.b.ins().sload8(types::I64, f, host, 0),
            (AccessSize::Half, _) => self.b.ins().sload16(types::I64, f, host, 0),
            (AccessSize::Word, _) => self.b.ins().sload32(f, host, 0),
        };
        if ext == LoadExt::Sign32 && size != AccessSize::Double {
            self.low32(v)
        } else {
            v
        }
    }

    fn store_sized(&mut self, host: Value, size: AccessSize, v: Value) {
        let f = flags();
        match size {
            AccessSize::Double => self.b.ins().store(f, v, host, 0),
            AccessSize::Byte => self.b.ins().istore8(f, v, host, 0),
            AccessSize::Half => self.b.ins().istore16(f, v, host, 0),
            AccessSize::Word => self.b.ins().istore32(f, v, host, 0),
        };
    }

    /// A single load or store (op `i`) at `addr` from base register `n`
    /// (holding `base`): the direct page when its entry matches, else the
    /// interpreter and then a fill. `wb`: the base's new value.
    #[allow(clippy::too_many_arguments)]
    fn access(
        &mut self,
        i: usize,
        n: u8,
        base: Value,
        addr: Value,
        wb: Option<Value>,
        size: AccessSize,
        direct: impl FnOnce(&mut Self, Value),
        write: bool,
    ) {
        let fast = self.b.create_block();
        let slow = self.b.create_block();
        let cont = self.b.create_block();
        let bytes = size.bytes();
        if n == reg::SP {
            // The interpreter decides whether SP alignment is checked.
            let low = self.b.ins().band_imm_s(base, 0xF);
            let probe = self.b.create_block();
            self.b.ins().brif(low, slow, &[], probe, &[]);
            self.b.switch_to_block(probe);
            self.b.seal_block(probe);
        }
        let idx = self.b.ins().ushr_imm_s(addr, 12);
        let idx = self.b.ins().band_imm_s(idx, (JTLB_ENTRIES - 1) as i64);
        let off = self.b.ins().ishl_imm_s(idx, 5);
        let entry = self.b.ins().iadd(self.jtlb, off);
        let tag = self
            .b
            .ins()
            .load(types::I64, flags(), entry, if write { 8 } else { 0 });
        let want = self
            .b
            .ins()
            .band_imm_s(addr, (!0xFFFu64 | (bytes - 1)) as i64);
        let hit = self.b.ins().icmp(IntCC::Equal, tag, want);
        self.b.ins().brif(hit, fast, &[], slow, &[]);

        self.b.switch_to_block(fast);
        self.b.seal_block(fast);
        let addend = self.b.ins().load(types::I64, flags(), entry, 16);
        let host = self.b.ins().iadd(addr, addend);
        direct(self, host);
        if let Some(moved) = wb {
            self.w(n, moved);
        }
        self.b.ins().jump(cont, &[]);

        self.b.switch_to_block(slow);
        self.b.seal_block(slow);
        let pc = self.pc_at(i);
        self.b.ins().store(flags(), pc, self.cpu, PC);
        let off = self
            .b
            .ins()
            .iconst(types::I64, (i * size_of::<Op>()) as i64);
        let opp = self.b.ins().iadd(self.opsp, off);
        let call = self.b.ins().call_indirect(
            self.helper_sigref,
            self.helper,
            &[self.cpu, self.bus, opp, self.last],
        );
        let r = self.b.inst_results(call)[0];
        let out = self.b.create_block();
        let refill = self.b.create_block();
        self.b.ins().brif(r, out, &[], refill, &[]);
        self.b.switch_to_block(out);
        self.b.seal_block(out);
        let taken = self.b.ins().iconst(types::I64, ((i as i64) + 1) << 8);
        let v = self.b.ins().bor(taken, r);
        self.b.ins().return_(&[v]);
        self.b.switch_to_block(refill);
        self.b.seal_block(refill);
        let w = self.b.ins().iconst(types::I64, i64::from(write));
        self.b
            .ins()
            .call_indirect(self.fill_sigref, self.fillp, &[self.cpu, self.bus, addr, w]);
        self.b.ins().jump(cont, &[]);

        self.b.switch_to_block(cont);
        self.b.seal_block(cont);
    }

    fn pc_at(&mut self, i: usize) -> Value {
        self.b.ins().iadd_imm_s(self.pc0, (i * 4) as i64)
    }

    fn r(&mut self, slot: u8) -> Value {
        let off = REGS + 8 * i32::from(slot & (reg::FILE as u8 - 1));
        self.b.ins().load(types::I64, flags(), self.cpu, off)
    }

    fn w(&mut self, slot: u8, v: Value) {
        let off = REGS + 8 * i32::from(slot & (reg::FILE as u8 - 1));
        self.b.ins().store(flags(), v, self.cpu, off);
    }

    fn low32(&mut self, v: Value) -> Value {
        let m = self.b.ins().iconst(types::I64, 0xFFFF_FFFF);
        self.b.ins().band(v, m)
    }

    /// NZCV of x - y at width 32 or 64 (x, y already at that width in I64).
    fn subs_flags(&mut self, x: Value, y: Value, sf: bool) -> (Value, Value) {
        let b = &mut self.b;
        let (r, n) = if sf {
            let r = b.ins().isub(x, y);
            let n = b.ins().ushr_imm_s(r, 63);
            (r, n)
        } else {
            let r0 = b.ins().isub(x, y);
            let m = b.ins().iconst(types::I64, 0xFFFF_FFFF);
            let r = b.ins().band(r0, m);
            let n = b.ins().ushr_imm_s(r, 31);
            (r, n)
        };
        let z = b.ins().icmp_imm_s(IntCC::Equal, r, 0);
        let z = b.ins().uextend(types::I64, z);
        let c = b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, x, y);
        let c = b.ins().uextend(types::I64, c);
        let xy = b.ins().bxor(x, y);
        let xr = b.ins().bxor(x, r);
        let v = b.ins().band(xy, xr);
        let v = b.ins().ushr_imm_s(v, if sf { 63 } else { 31 });
        let v = b.ins().band_imm_s(v, 1);
        let n = b.ins().ishl_imm_s(n, 31);
        let z = b.ins().ishl_imm_s(z, 30);
        let c = b.ins().ishl_imm_s(c, 29);
        let v = b.ins().ishl_imm_s(v, 28);
        let nz = b.ins().bor(n, z);
        let cv = b.ins().bor(c, v);
        let nzcv = b.ins().bor(nz, cv);
        (r, nzcv)
    }

    /// Whether condition `cond` holds, as an I8 0/1.
    fn holds(&mut self, cond: u8) -> Value {
        let table = crate::pstate::cond_table(cond);
        let b = &mut self.b;
        let nzcv = b.ins().load(types::I64, flags(), self.cpu, NZCV);
        let nib = b.ins().ushr_imm_s(nzcv, 28);
        let nib = b.ins().band_imm_s(nib, 0xF);
        let t = b.ins().iconst(types::I64, i64::from(table));
        let s = b.ins().ushr(t, nib);
        let s = b.ins().band_imm_s(s, 1);
        b.ins().icmp_imm_s(IntCC::NotEqual, s, 0)
    }

    /// Ends the function: branch to `target` if `cond`, else past the block.
    fn branch(&mut self, cond: Option<Value>, target: Value, len: usize) {
        let taken = ((len as i64) << 8) | JUMP as i64;
        match cond {
            None => {
                self.b.ins().store(flags(), target, self.cpu, PC);
                let v = self.b.ins().iconst(types::I64, taken);
                self.b.ins().return_(&[v]);
            }
            Some(c) => {
                let yes = self.b.create_block();
                let no = self.b.create_block();
                self.b.ins().brif(c, yes, &[], no, &[]);
                self.b.switch_to_block(yes);
                self.b.seal_block(yes);
                self.b.ins().store(flags(), target, self.cpu, PC);
                let v = self.b.ins().iconst(types::I64, taken);
                self.b.ins().return_(&[v]);
                self.b.switch_to_block(no);
                self.b.seal_block(no);
                let next = self.pc_at(len);
                self.b.ins().store(flags(), next, self.cpu, PC);
                let v = self
                    .b
                    .ins()
                    .iconst(types::I64, ((len as i64) << 8) | NEXT as i64);
                self.b.ins().return_(&[v]);
            }
        }
    }

    /// Emits `op` (op `i` of `len`) as native code, or returns false.
    fn native(&mut self, op: &Op, i: usize, len: usize) -> bool {
        match generic(*op) {
            Op::AddX { d, n, imm } => {
                let x = self.r(n);
                let v = self.b.ins().iadd_imm_s(x, imm as i64);
                self.w(d, v);
            }
            Op::AddW { d, n, imm } => {
                let x = self.r(n);
                let v = self.b.ins().iadd_imm_s(x, i64::from(imm));
                let v = self.low32(v);
                self.w(d, v);
            }
            Op::AddRegW { d, n, m } => {
                let x = self.r(n);
                let y = self.r(m);
                let v = self.b.ins().iadd(x, y);
                let v = self.low32(v);
                self.w(d, v);
            }
            Op::EorRegW { d, n, m } => {
                let x = self.r(n);
                let y = self.r(m);
                let v = self.b.ins().bxor(x, y);
                let v = self.low32(v);
                self.w(d, v);
            }
            Op::AndImm { d, n, imm } => {
                let x = self.r(n);
                let v = self.b.ins().band_imm_s(x, imm as i64);
                self.w(d, v);
            }
            Op::Ubfx { d, n, shift, mask } => {
                let x = self.r(n);
                let v = self.b.ins().ushr_imm_s(x, i64::from(shift));
                let v = self.b.ins().band_imm_s(v, mask as i64);
                self.w(d, v);
            }
            Op::Ubfiz { d, n, shift, mask } => {
                let x = self.r(n);
                let v = self.b.ins().band_imm_s(x, mask as i64);
                let v = if shift >= 64 {
                    self.b.ins().iconst(types::I64, 0)
                } else {
                    self.b.ins().ishl_imm_s(v, i64::from(shift))
                };
                self.w(d, v);
            }
            Op::MovX { d, m } => {
                let v = self.r(m);
                self.w(d, v);
            }
            Op::MovW { d, m } => {
                let v = self.r(m);
                let v = self.low32(v);
                self.w(d, v);
            }
            Op::SubsImmW { d, n, imm } => {
                let x = self.r(n);
                let x = self.low32(x);
                let y = self.b.ins().iconst(types::I64, i64::from(imm));
                let (r, nzcv) = self.subs_flags(x, y, false);
                self.b.ins().store(flags(), nzcv, self.cpu, NZCV);
                self.w(d, r);
            }
            Op::SubsRegW { d, n, m } => {
                let x = self.r(n);
                let x = self.low32(x);
                let y = self.r(m);
                let y = self.low32(y);
                let (r, nzcv) = self.subs_flags(x, y, false);
                self.b.ins().store(flags(), nzcv, self.cpu, NZCV);
                self.w(d, r);
            }
            Op::AddImm {
                d,
                n,
                imm,
                sf: true,
                sub: true,
                flags: true,
            } => {
                let x = self.r(n);
                let y = self.b.ins().iconst(types::I64, i64::from(imm));
                let (r, nzcv) = self.subs_flags(x, y, true);
                self.b.ins().store(flags(), nzcv, self.cpu, NZCV);
                self.w(d, r);
            }
            Op::AddShifted {
                d,
                n,
                m,
                amount: 0,
                sf: true,
                sub: true,
                flags: true,
                ..
            } => {
                let x = self.r(n);
                let y = self.r(m);
                let (r, nzcv) = self.subs_flags(x, y, true);
                self.b.ins().store(flags(), nzcv, self.cpu, NZCV);
                self.w(d, r);
            }
            Op::AddShifted {
                d,
                n,
                m,
                shift: crate::decode::Shift::Lsl,
                amount,
                sf: true,
                sub,
                flags: false,
            } => {
                let x = self.r(n);
                let y = self.r(m);
                let y = self.b.ins().ishl_imm_s(y, i64::from(amount));
                let v = if sub {
                    self.b.ins().isub(x, y)
                } else {
                    self.b.ins().iadd(x, y)
                };
                self.w(d, v);
            }
            Op::B { offset } if i == len - 1 => {
                let t = self
                    .b
                    .ins()
                    .iadd_imm_s(self.pc0, (i * 4) as i64 + i64::from(offset));
                self.branch(None, t, len);
            }
            Op::Bl { offset } if i == len - 1 => {
                let ret = self.pc_at(i + 1);
                self.w(30, ret);
                let t = self
                    .b
                    .ins()
                    .iadd_imm_s(self.pc0, (i * 4) as i64 + i64::from(offset));
                self.branch(None, t, len);
            }
            Op::Br { n } | Op::Ret { n } if i == len - 1 => {
                let t = self.r(n);
                self.branch(None, t, len);
            }
            Op::BCond { cond, offset } if i == len - 1 => {
                let c = self.holds(cond);
                let t = self
                    .b
                    .ins()
                    .iadd_imm_s(self.pc0, (i * 4) as i64 + i64::from(offset));
                self.branch(Some(c), t, len);
            }
            Op::Cbz {
                t,
                offset,
                nonzero,
                sf,
            } if i == len - 1 => {
                let v = self.r(t);
                let v = if sf { v } else { self.low32(v) };
                let c = self.b.ins().icmp_imm_s(
                    if nonzero {
                        IntCC::NotEqual
                    } else {
                        IntCC::Equal
                    },
                    v,
                    0,
                );
                let tg = self
                    .b
                    .ins()
                    .iadd_imm_s(self.pc0, (i * 4) as i64 + i64::from(offset));
                self.branch(Some(c), tg, len);
            }
            Op::Tbz {
                t,
                bit,
                offset,
                nonzero,
            } if i == len - 1 => {
                let v = self.r(t);
                let v = self.b.ins().ushr_imm_s(v, i64::from(bit));
                let v = self.b.ins().band_imm_s(v, 1);
                let c = self.b.ins().icmp_imm_s(
                    if nonzero {
                        IntCC::NotEqual
                    } else {
                        IntCC::Equal
                    },
                    v,
                    0,
                );
                let tg = self
                    .b
                    .ins()
                    .iadd_imm_s(self.pc0, (i * 4) as i64 + i64::from(offset));
                self.branch(Some(c), tg, len);
            }
            Op::Load {
                t,
                n,
                offset,
                size,
                ext,
                wb,
                unprivileged: false,
            } if wb == Writeback::None || t != n => {
                let (base, addr, moved) = self.imm_address(n, offset, wb);
                self.access(
                    i,
                    n,
                    base,
                    addr,
                    moved,
                    size,
                    |e, host| {
                        let v = e.load_ext(host, size, ext);
                        e.w(t, v);
                    },
                    false,
                );
            }
            Op::LoadRegOffset {
                t,
                n,
                m,
                ext,
                shift,
                size,
                sign,
            } => {
                let base = self.r(n);
                let off = self.r(m);
                let off = self.extend(off, ext, shift);
                let addr = self.b.ins().iadd(base, off);
                self.access(
                    i,
                    n,
                    base,
                    addr,
                    None,
                    size,
                    |e, host| {
                        let v = e.load_ext(host, size, sign);
                        e.w(t, v);
                    },
                    false,
                );
            }
            Op::StoreRegOffset {
                t,
                n,
                m,
                ext,
                shift,
                size,
            } => {
                let base = self.r(n);
                let off = self.r(m);
                let off = self.extend(off, ext, shift);
                let addr = self.b.ins().iadd(base, off);
                self.access(
                    i,
                    n,
                    base,
                    addr,
                    None,
                    size,
                    |e, host| {
                        let v = e.r(t);
                        e.store_sized(host, size, v);
                    },
                    true,
                );
            }
            Op::MovWide {
                d,
                op,
                imm16,
                shift,
                sf,
            } => {
                let imm = u64::from(imm16) << shift;
                let m = if sf { u64::MAX } else { 0xFFFF_FFFF };
                let v = match op {
                    MovOp::Movz => self.b.ins().iconst(types::I64, imm as i64),
                    MovOp::Movn => self.b.ins().iconst(types::I64, (!imm & m) as i64),
                    MovOp::Movk => {
                        let old = self.r(d);
                        let kept = self
                            .b
                            .ins()
                            .band_imm_s(old, (!(0xFFFFu64 << shift) & m) as i64);
                        self.b.ins().bor_imm_s(kept, imm as i64)
                    }
                };
                self.w(d, v);
            }
            Op::Mul {
                d,
                n,
                m,
                a,
                op: op @ (MulOp::Madd | MulOp::Msub),
                sf,
            } => {
                let x = self.r(n);
                let y = self.r(m);
                let p = self.b.ins().imul(x, y);
                let acc = if a < 31 {
                    self.r(a)
                } else {
                    self.b.ins().iconst(types::I64, 0)
                };
                let v = if op == MulOp::Madd {
                    self.b.ins().iadd(acc, p)
                } else {
                    self.b.ins().isub(acc, p)
                };
                let v = if sf { v } else { self.low32(v) };
                self.w(d, v);
            }
            Op::CondSel {
                d,
                n,
                m,
                cond,
                op,
                sf,
            } => {
                let c = self.holds(cond);
                let x = self.r(n);
                let y = self.r(m);
                let y = match op {
                    CondSelOp::Csel => y,
                    CondSelOp::Csinc => self.b.ins().iadd_imm_s(y, 1),
                    CondSelOp::Csinv => self.b.ins().bnot(y),
                    CondSelOp::Csneg => self.b.ins().ineg(y),
                };
                let v = self.b.ins().select(c, x, y);
                let v = if sf { v } else { self.low32(v) };
                self.w(d, v);
            }
            Op::LogicImm {
                d,
                n,
                op: LogicOp::Ands,
                imm,
                sf,
            } => {
                let x = self.r(n);
                let m = if sf { u64::MAX } else { 0xFFFF_FFFF };
                let r = self.b.ins().band_imm_s(x, (imm & m) as i64);
                let top = self.b.ins().ushr_imm_s(r, if sf { 63 } else { 31 });
                let top = self.b.ins().band_imm_s(top, 1);
                let nflag = self.b.ins().ishl_imm_s(top, 31);
                let z = self.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
                let z = self.b.ins().uextend(types::I64, z);
                let z = self.b.ins().ishl_imm_s(z, 30);
                let nzcv = self.b.ins().bor(nflag, z);
                self.b.ins().store(flags(), nzcv, self.cpu, NZCV);
                self.w(d, r);
            }
            Op::Bitfield {
                d,
                n,
                op: crate::decode::BitfieldOp::Sbfm,
                immr: 0,
                imms: imms @ (7 | 15 | 31),
                sf,
            } => {
                let x = self.r(n);
                let unused = 63 - i64::from(imms);
                let v = self.b.ins().ishl_imm_s(x, unused);
                let v = self.b.ins().sshr_imm_s(v, unused);
                let v = if sf { v } else { self.low32(v) };
                self.w(d, v);
            }
            Op::Store {
                t,
                n,
                offset,
                size,
                wb,
                unprivileged: false,
            } if wb == Writeback::None || t != n => {
                let (base, addr, moved) = self.imm_address(n, offset, wb);
                self.access(
                    i,
                    n,
                    base,
                    addr,
                    moved,
                    size,
                    |e, host| {
                        let v = e.r(t);
                        e.store_sized(host, size, v);
                    },
                    true,
                );
            }
            Op::Hint(crate::decode::Hint::Nop) | Op::Prefetch => {}
            _ => return false,
        }
        true
    }
}

/// The generic form of a block-only load or store (cache::specialise made
/// it for the interpreter; compiled code has its own constants).
fn generic(op: Op) -> Op {
    use AccessSize::{Byte, Double, Half, Word};
    let load = |t, n, offset, size, ext| Op::Load {
        t,
        n,
        offset,
        size,
        ext,
        wb: Writeback::None,
        unprivileged: false,
    };
    let store = |t, n, offset, size| Op::Store {
        t,
        n,
        offset,
        size,
        wb: Writeback::None,
        unprivileged: false,
    };
    let load_reg = |t, n, m, ext, shift, size, sign| Op::LoadRegOffset {
        t,
        n,
        m,
        ext,
        shift,
        size,
        sign,
    };
    let store_reg = |t, n, m, ext, shift, size| Op::StoreRegOffset {
        t,
        n,
        m,
        ext,
        shift,
        size,
    };
    match op {
        Op::LoadX { t, n, offset } => load(t, n, offset, Double, LoadExt::Zero),
        Op::LoadW { t, n, offset } => load(t, n, offset, Word, LoadExt::Zero),
        Op::LoadH { t, n, offset } => load(t, n, offset, Half, LoadExt::Zero),
        Op::LoadB { t, n, offset } => load(t, n, offset, Byte, LoadExt::Zero),
        Op::LoadSH { t, n, offset } => load(t, n, offset, Half, LoadExt::Sign32),
        Op::StoreX { t, n, offset } => store(t, n, offset, Double),
        Op::StoreW { t, n, offset } => store(t, n, offset, Word),
        Op::StoreH { t, n, offset } => store(t, n, offset, Half),
        Op::StoreB { t, n, offset } => store(t, n, offset, Byte),
        Op::LoadRegX { t, n, m, ext, shift } => load_reg(t, n, m, ext, shift, Double, LoadExt::Zero),
        Op::LoadRegW { t, n, m, ext, shift } => load_reg(t, n, m, ext, shift, Word, LoadExt::Zero),
        Op::LoadRegH { t, n, m, ext, shift } => load_reg(t, n, m, ext, shift, Half, LoadExt::Zero),
        Op::LoadRegB { t, n, m, ext, shift } => load_reg(t, n, m, ext, shift, Byte, LoadExt::Zero),
        Op::LoadRegSH { t, n, m, ext, shift } => {
            load_reg(t, n, m, ext, shift, Half, LoadExt::Sign32)
        }
        Op::StoreRegX { t, n, m, ext, shift } => store_reg(t, n, m, ext, shift, Double),
        Op::StoreRegW { t, n, m, ext, shift } => store_reg(t, n, m, ext, shift, Word),
        Op::StoreRegH { t, n, m, ext, shift } => store_reg(t, n, m, ext, shift, Half),
        Op::StoreRegB { t, n, m, ext, shift } => store_reg(t, n, m, ext, shift, Byte),
        op => op,
    }
}
