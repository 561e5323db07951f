//! Ops to Cranelift IR: the common ALU forms, single loads and stores
//! through the direct-page table, and the branch that ends a block. Everything
//! else calls the interpreter (`Emit::exec_op`).
//!
//! Guest registers live in `Cpu::regs` and NZCV in `Cpu::pstate`: every op
//! loads what it reads and stores what it writes, so an op run by the
//! interpreter in the middle of a block sees the same state.

// Immediates become i64 IR constants and offsets i32: the bit patterns are
// what matters, so wrapping casts are the semantics here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, SigRef, Value, types};
use cranelift_frontend::FunctionBuilder;

use super::abi::{
    CALLS_EXEC, CALLS_FILL, CALLS_LEFT, CALLS_MISS, CpuLayout, JUMP, LINK_CODE, LINK_EPOCH,
    LINK_LEN, Link, NEXT, flags, ram_flags,
};
use super::direct::DIRECT_PAGES;
use crate::decode::{CondSelOp, LoadExt, LogicOp, MovOp, MulOp, Op, Writeback, reg};
use apf_abi::esr::AccessSize;

/// Whether `op`, compiled natively as a block's last op, returns itself.
pub(super) fn ends_natively(op: &Op) -> bool {
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

/// The function being built for one block, and the values every op uses.
pub(super) struct Emit<'a> {
    pub(super) b: FunctionBuilder<'a>,
    /// `*mut Cpu`.
    pub(super) cpu: Value,
    /// `*mut Calls`.
    pub(super) calls: Value,
    /// PC of the block's first op.
    pub(super) pc0: Value,
    /// The direct-page table.
    pub(super) direct: Value,
    pub(super) exec_sig: SigRef,
    pub(super) fill_sig: SigRef,
    pub(super) block_sig: SigRef,
    /// The block's first op's offset in its page.
    pub(super) offset: usize,
    /// The block's first op's arena position.
    pub(super) start: usize,
    /// The block's length.
    pub(super) len: usize,
    /// What the NZCV in `Cpu` was last computed from in this block, if a
    /// native op set it: a condition on it can be a compare of the operands.
    pub(super) flags_from: Option<FlagsFrom>,
    /// Where the `Cpu` fields are.
    pub(super) layout: CpuLayout,
    /// Where the links of this block's ways out are kept.
    #[allow(clippy::vec_box)]
    pub(super) links: &'a mut Vec<Box<Link>>,
}

/// What a native op computed NZCV from (values at the op's width, zero
/// extended).
#[derive(Debug, Clone, Copy)]
pub(super) enum FlagsFrom {
    /// `x - y` (SUBS, CMP).
    Sub { x: Value, y: Value, sf: bool },
    /// A logical result: C and V clear (ANDS, TST).
    Logic { r: Value, sf: bool },
}

/// Where a block goes on its way out.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// This many bytes from the block's first op.
    Fixed(i64),
    /// A register's value.
    Computed(Value),
}

impl Emit<'_> {
    /// Base, address and written-back base of an immediate-offset access.
    fn imm_address(&mut self, n: u8, offset: i32, wb: Writeback) -> (Value, Value, Option<Value>) {
        let base = self.r(n);
        let moved = self.b.ins().iadd_imm_s(base, i64::from(offset));
        let addr = if wb == Writeback::Post { base } else { moved };
        (base, addr, (wb != Writeback::None).then_some(moved))
    }

    /// Base and address of a register-offset access.
    fn reg_address(
        &mut self,
        n: u8,
        m: u8,
        ext: crate::decode::Extend,
        shift: u8,
    ) -> (Value, Value) {
        let base = self.r(n);
        let off = self.r(m);
        let off = self.extend(off, ext, shift);
        (base, self.b.ins().iadd(base, off))
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
        let f = ram_flags();
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
        let f = ram_flags();
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
        let idx = self.b.ins().band_imm_s(idx, (DIRECT_PAGES - 1) as i64);
        let off = self.b.ins().ishl_imm_s(idx, 5);
        let entry = self.b.ins().iadd(self.direct, off);
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
        let r = self.exec_op(i);
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
        let fill = self
            .b
            .ins()
            .load(types::I64, flags(), self.calls, CALLS_FILL);
        self.b
            .ins()
            .call_indirect(self.fill_sig, fill, &[self.cpu, self.calls, addr, w]);
        self.b.ins().jump(cont, &[]);

        self.b.switch_to_block(cont);
        self.b.seal_block(cont);
    }

    /// Calls the interpreter for op `i` with PC at it; returns its flow code.
    pub(super) fn exec_op(&mut self, i: usize) -> Value {
        let pc = self.pc_at(i);
        self.b.ins().store(flags(), pc, self.cpu, self.layout.pc);
        let exec = self
            .b
            .ins()
            .load(types::I64, flags(), self.calls, CALLS_EXEC);
        let op = self.b.ins().iconst(types::I64, (self.start + i) as i64);
        let last = self.b.ins().iconst(types::I64, (self.len - 1) as i64);
        let call =
            self.b
                .ins()
                .call_indirect(self.exec_sig, exec, &[self.cpu, self.calls, op, last]);
        self.b.inst_results(call)[0]
    }

    pub(super) fn pc_at(&mut self, i: usize) -> Value {
        self.b.ins().iadd_imm_s(self.pc0, (i * 4) as i64)
    }

    fn r(&mut self, slot: u8) -> Value {
        let off = self.layout.regs + 8 * i32::from(slot & (reg::FILE as u8 - 1));
        self.b.ins().load(types::I64, flags(), self.cpu, off)
    }

    fn w(&mut self, slot: u8, v: Value) {
        let off = self.layout.regs + 8 * i32::from(slot & (reg::FILE as u8 - 1));
        self.b.ins().store(flags(), v, self.cpu, off);
    }

    fn low32(&mut self, v: Value) -> Value {
        let m = self.b.ins().iconst(types::I64, 0xFFFF_FFFF);
        self.b.ins().band(v, m)
    }

    /// NZCV of x - y at width 32 or 64 (x, y already at that width in I64).
    fn subs_flags(&mut self, x: Value, y: Value, sf: bool) -> (Value, Value) {
        self.flags_from = Some(FlagsFrom::Sub { x, y, sf });
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
        if let Some(from) = self.flags_from
            && let Some(c) = self.holds_for(from, cond)
        {
            return c;
        }
        let table = crate::pstate::cond_table(cond);
        let b = &mut self.b;
        let nzcv = b
            .ins()
            .load(types::I64, flags(), self.cpu, self.layout.nzcv);
        let nib = b.ins().ushr_imm_s(nzcv, 28);
        let nib = b.ins().band_imm_s(nib, 0xF);
        let t = b.ins().iconst(types::I64, i64::from(table));
        let s = b.ins().ushr(t, nib);
        let s = b.ins().band_imm_s(s, 1);
        b.ins().icmp_imm_s(IntCC::NotEqual, s, 0)
    }

    /// Whether `cond` holds for the NZCV `from` gives, computed from the
    /// operands (None: only the NZCV value tells, e.g. for VS).
    fn holds_for(&mut self, from: FlagsFrom, cond: u8) -> Option<Value> {
        use IntCC::{
            Equal, NotEqual, SignedGreaterThan, SignedGreaterThanOrEqual, SignedLessThan,
            SignedLessThanOrEqual, UnsignedGreaterThan, UnsignedGreaterThanOrEqual,
            UnsignedLessThan, UnsignedLessThanOrEqual,
        };
        // At 32 bits the signed views are the low halves.
        let signed = |e: &mut Self, v: Value, sf: bool| {
            if sf {
                v
            } else {
                e.b.ins().ireduce(types::I32, v)
            }
        };
        Some(match from {
            FlagsFrom::Sub { x, y, sf } => {
                let (cc, signed_cmp) = match cond {
                    0 => (Equal, false),
                    1 => (NotEqual, false),
                    2 => (UnsignedGreaterThanOrEqual, false),
                    3 => (UnsignedLessThan, false),
                    8 => (UnsignedGreaterThan, false),
                    9 => (UnsignedLessThanOrEqual, false),
                    10 => (SignedGreaterThanOrEqual, true),
                    11 => (SignedLessThan, true),
                    12 => (SignedGreaterThan, true),
                    13 => (SignedLessThanOrEqual, true),
                    _ => return None,
                };
                if signed_cmp {
                    let (x, y) = (signed(self, x, sf), signed(self, y, sf));
                    self.b.ins().icmp(cc, x, y)
                } else {
                    self.b.ins().icmp(cc, x, y)
                }
            }
            FlagsFrom::Logic { r, sf } => {
                let r = signed(self, r, sf);
                let cc = match cond {
                    0 => Equal,
                    1 => NotEqual,
                    // N: the sign; C and V are clear, so GE is PL and LT is MI.
                    4 | 11 => SignedLessThan,
                    5 | 10 => SignedGreaterThanOrEqual,
                    12 => SignedGreaterThan,
                    13 => SignedLessThanOrEqual,
                    _ => return None,
                };
                self.b.ins().icmp_imm_s(cc, r, 0)
            }
        })
    }

    /// Ends the function: branch to `target` if `cond`, else past the block.
    fn branch(&mut self, cond: Option<Value>, target: Target, len: usize) {
        match cond {
            None => self.leave(target, JUMP, len),
            Some(c) => {
                let yes = self.b.create_block();
                let no = self.b.create_block();
                self.b.ins().brif(c, yes, &[], no, &[]);
                self.b.switch_to_block(yes);
                self.b.seal_block(yes);
                self.leave(target, JUMP, len);
                self.b.switch_to_block(no);
                self.b.seal_block(no);
                self.leave(Target::Fixed(len as i64 * 4), NEXT, len);
            }
        }
    }

    /// Ends the function with all `len` ops retired, flow `code` (NEXT or
    /// JUMP) and PC at `to`. A fixed target on this page goes straight on to
    /// the block there when this way out is linked to it, the decode cache
    /// still holds it (the link's epoch), and it fits in what is left of the
    /// budget; else the run loop gets the flow, and the link to fill.
    pub(super) fn leave(&mut self, to: Target, code: u64, len: usize) {
        let ret = self
            .b
            .ins()
            .iconst(types::I64, ((len as i64) << 8) | code as i64);
        let pc = match to {
            Target::Fixed(bytes) => self.b.ins().iadd_imm_s(self.pc0, bytes),
            Target::Computed(v) => v,
        };
        self.b.ins().store(flags(), pc, self.cpu, self.layout.pc);
        let on_page = match to {
            Target::Fixed(bytes) => (0..4096).contains(&(self.offset as i64 + bytes)),
            Target::Computed(_) => false,
        };
        if !on_page {
            self.b.ins().return_(&[ret]);
            return;
        }
        self.links.push(Box::new(Link::EMPTY));
        let slot: &Link = self.links.last().map(AsRef::as_ref).unwrap_or(&Link::EMPTY);
        let link = self
            .b
            .ins()
            .iconst(types::I64, std::ptr::from_ref(slot) as i64);
        let (linked, current, fits, go, miss) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        let next = self.b.ins().load(types::I64, flags(), link, LINK_CODE);
        self.b.ins().brif(next, linked, &[], miss, &[]);

        self.b.switch_to_block(linked);
        self.b.seal_block(linked);
        let epoch = self.b.ins().load(types::I64, flags(), link, LINK_EPOCH);
        let now = self
            .b
            .ins()
            .load(types::I64, flags(), self.cpu, self.layout.block_epoch);
        let same = self.b.ins().icmp(IntCC::Equal, epoch, now);
        self.b.ins().brif(same, current, &[], miss, &[]);

        self.b.switch_to_block(current);
        self.b.seal_block(current);
        let left = self
            .b
            .ins()
            .load(types::I64, flags(), self.calls, CALLS_LEFT);
        let next_len = self.b.ins().load(types::I64, flags(), link, LINK_LEN);
        let need = self.b.ins().iadd_imm_s(next_len, len as i64);
        let ok = self
            .b
            .ins()
            .icmp(IntCC::UnsignedGreaterThanOrEqual, left, need);
        self.b.ins().brif(ok, fits, &[], miss, &[]);

        self.b.switch_to_block(fits);
        self.b.seal_block(fits);
        let left = self.b.ins().iadd_imm_s(left, -(len as i64));
        self.b.ins().store(flags(), left, self.calls, CALLS_LEFT);
        self.b.ins().jump(go, &[]);

        self.b.switch_to_block(go);
        self.b.seal_block(go);
        self.b
            .ins()
            .return_call_indirect(self.block_sig, next, &[self.cpu, self.calls]);

        self.b.switch_to_block(miss);
        self.b.seal_block(miss);
        self.b.ins().store(flags(), link, self.calls, CALLS_MISS);
        self.b.ins().return_(&[ret]);
    }

    /// Emits `op` (op `i` of `len`) as native code, or returns false.
    pub(super) fn native(&mut self, op: &Op, i: usize, len: usize) -> bool {
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
                self.b
                    .ins()
                    .store(flags(), nzcv, self.cpu, self.layout.nzcv);
                self.w(d, r);
            }
            Op::SubsRegW { d, n, m } => {
                let x = self.r(n);
                let x = self.low32(x);
                let y = self.r(m);
                let y = self.low32(y);
                let (r, nzcv) = self.subs_flags(x, y, false);
                self.b
                    .ins()
                    .store(flags(), nzcv, self.cpu, self.layout.nzcv);
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
                self.b
                    .ins()
                    .store(flags(), nzcv, self.cpu, self.layout.nzcv);
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
                self.b
                    .ins()
                    .store(flags(), nzcv, self.cpu, self.layout.nzcv);
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
                self.branch(None, Target::Fixed((i * 4) as i64 + i64::from(offset)), len);
            }
            Op::Bl { offset } if i == len - 1 => {
                let ret = self.pc_at(i + 1);
                self.w(30, ret);
                self.branch(None, Target::Fixed((i * 4) as i64 + i64::from(offset)), len);
            }
            Op::Br { n } | Op::Ret { n } if i == len - 1 => {
                let t = self.r(n);
                self.branch(None, Target::Computed(t), len);
            }
            Op::BCond { cond, offset } if i == len - 1 => {
                let c = self.holds(cond);
                let t = Target::Fixed((i * 4) as i64 + i64::from(offset));
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
                let tg = Target::Fixed((i * 4) as i64 + i64::from(offset));
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
                let tg = Target::Fixed((i * 4) as i64 + i64::from(offset));
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
                let (base, addr) = self.reg_address(n, m, ext, shift);
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
                let (base, addr) = self.reg_address(n, m, ext, shift);
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
                self.b
                    .ins()
                    .store(flags(), nzcv, self.cpu, self.layout.nzcv);
                self.flags_from = Some(FlagsFrom::Logic { r, sf });
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
        Op::LoadRegX {
            t,
            n,
            m,
            ext,
            shift,
        } => load_reg(t, n, m, ext, shift, Double, LoadExt::Zero),
        Op::LoadRegW {
            t,
            n,
            m,
            ext,
            shift,
        } => load_reg(t, n, m, ext, shift, Word, LoadExt::Zero),
        Op::LoadRegH {
            t,
            n,
            m,
            ext,
            shift,
        } => load_reg(t, n, m, ext, shift, Half, LoadExt::Zero),
        Op::LoadRegB {
            t,
            n,
            m,
            ext,
            shift,
        } => load_reg(t, n, m, ext, shift, Byte, LoadExt::Zero),
        Op::LoadRegSH {
            t,
            n,
            m,
            ext,
            shift,
        } => load_reg(t, n, m, ext, shift, Half, LoadExt::Sign32),
        Op::StoreRegX {
            t,
            n,
            m,
            ext,
            shift,
        } => store_reg(t, n, m, ext, shift, Double),
        Op::StoreRegW {
            t,
            n,
            m,
            ext,
            shift,
        } => store_reg(t, n, m, ext, shift, Word),
        Op::StoreRegH {
            t,
            n,
            m,
            ext,
            shift,
        } => store_reg(t, n, m, ext, shift, Half),
        Op::StoreRegB {
            t,
            n,
            m,
            ext,
            shift,
        } => store_reg(t, n, m, ext, shift, Byte),
        op => op,
    }
}
