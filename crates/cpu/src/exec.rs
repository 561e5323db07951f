//! Executing decoded ops.
// An interpreter narrows registers to W views and reinterprets them as signed
// values by design: those casts are the semantics here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::sync::atomic::{Ordering, fence};

use apf_abi::esr::{AccessSize, AccessSyndrome, Esr, ec, fsc};

use crate::Cpu;
use crate::bus::{Bus, BusError};
use crate::cpu::{Exit, Flow, Monitor};
use crate::decode::{
    BitfieldOp, CondSelOp, Extend, Hint, LoadExt, LogicOp, MovOp, MulOp, Op, PstateField, Shift,
    UnaryOp, Writeback, decode_bit_masks, reg,
};
use crate::exception::AccessInfo;
use crate::pstate::bits;
use crate::sysreg::{MsrEffect, SysFault, raw_rt};

#[inline]
fn mask(sf: bool) -> u64 {
    if sf { u64::MAX } else { 0xFFFF_FFFF }
}

#[inline]
fn size_mask(size: AccessSize) -> u64 {
    match size {
        AccessSize::Byte => 0xFF,
        AccessSize::Half => 0xFFFF,
        AccessSize::Word => 0xFFFF_FFFF,
        AccessSize::Double => u64::MAX,
    }
}

/// Sign-extends the low `bits` bits.
#[inline]
fn sext(v: u64, bits: u32) -> u64 {
    let s = 64 - bits;
    (((v << s) as i64) >> s) as u64
}

/// AddWithCarry: the result (truncated to the width) and NZCV in SPSR positions.
#[inline]
fn add_with_carry(x: u64, y: u64, carry: bool, sf: bool) -> (u64, u64) {
    if sf {
        let (r1, c1) = x.overflowing_add(y);
        let (r, c2) = r1.overflowing_add(u64::from(carry));
        let v = ((x ^ r) & (y ^ r)) >> 63;
        let flags =
            ((r >> 63) << 31) | (u64::from(r == 0) << 30) | (u64::from(c1 | c2) << 29) | (v << 28);
        (r, flags)
    } else {
        let (x, y) = (x as u32, y as u32);
        let (r1, c1) = x.overflowing_add(y);
        let (r, c2) = r1.overflowing_add(u32::from(carry));
        let v = ((x ^ r) & (y ^ r)) >> 31;
        let flags = (u64::from(r >> 31) << 31)
            | (u64::from(r == 0) << 30)
            | (u64::from(c1 | c2) << 29)
            | (u64::from(v) << 28);
        (u64::from(r), flags)
    }
}

/// `x + y` or `x - y` (as `x + !y + 1`) with its flags.
#[inline]
fn add_or_sub(x: u64, y: u64, sub: bool, sf: bool) -> (u64, u64) {
    if sub {
        add_with_carry(x, !y, true, sf)
    } else {
        add_with_carry(x, y, false, sf)
    }
}

/// NZ of a logical result, C and V clear.
#[inline]
fn logic_flags(r: u64, sf: bool) -> u64 {
    let n = if sf { r >> 63 } else { (r >> 31) & 1 };
    (n << 31) | (u64::from(r == 0) << 30)
}

#[inline]
fn shifted(v: u64, shift: Shift, amount: u32, sf: bool) -> u64 {
    if sf {
        match shift {
            Shift::Lsl => v << amount,
            Shift::Lsr => v >> amount,
            Shift::Asr => ((v as i64) >> amount) as u64,
            Shift::Ror => v.rotate_right(amount),
        }
    } else {
        let w = v as u32;
        u64::from(match shift {
            Shift::Lsl => w << amount,
            Shift::Lsr => w >> amount,
            Shift::Asr => ((w as i32) >> amount) as u32,
            Shift::Ror => w.rotate_right(amount),
        })
    }
}

#[inline]
fn extended(v: u64, ext: Extend, amount: u8) -> u64 {
    let x = match ext.0 & 7 {
        0 => v & 0xFF,
        1 => v & 0xFFFF,
        2 => v & 0xFFFF_FFFF,
        3 => v,
        4 => sext(v, 8),
        5 => sext(v, 16),
        6 => sext(v, 32),
        _ => v,
    };
    x << amount
}

fn bitfield(op: BitfieldOp, src: u64, dst: u64, immr: u32, imms: u32, sf: bool) -> u64 {
    let size = if sf { 64 } else { 32 };
    let field = |width: u32| -> u64 {
        if width >= 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        }
    };
    let r = match op {
        BitfieldOp::Ubfm if imms >= immr => (src >> immr) & field(imms - immr + 1),
        BitfieldOp::Ubfm => (src & field(imms + 1)) << (size - immr),
        BitfieldOp::Sbfm if imms >= immr => sext(src >> immr, imms - immr + 1),
        BitfieldOp::Sbfm => sext(src & field(imms + 1), imms + 1) << (size - immr),
        BitfieldOp::Bfm => {
            let (wmask, tmask) =
                decode_bit_masks(u32::from(sf), imms, immr, false).unwrap_or((0, 0));
            let rotated = if sf {
                src.rotate_right(immr)
            } else {
                u64::from((src as u32).rotate_right(immr))
            };
            let bot = (dst & !wmask) | (rotated & wmask);
            (dst & !tmask) | (bot & tmask)
        }
    };
    r & mask(sf)
}

fn unary(op: UnaryOp, v: u64, sf: bool) -> u64 {
    if sf {
        match op {
            UnaryOp::Rbit => v.reverse_bits(),
            UnaryOp::Rev16 => {
                ((v & 0x00FF_00FF_00FF_00FF) << 8) | ((v >> 8) & 0x00FF_00FF_00FF_00FF)
            }
            UnaryOp::Rev32 => {
                let lo = (v as u32).swap_bytes();
                let hi = ((v >> 32) as u32).swap_bytes();
                (u64::from(hi) << 32) | u64::from(lo)
            }
            UnaryOp::Rev => v.swap_bytes(),
            UnaryOp::Clz => u64::from(v.leading_zeros()),
            UnaryOp::Cls => u64::from((v ^ ((v as i64) >> 1) as u64).leading_zeros() - 1),
        }
    } else {
        let w = v as u32;
        u64::from(match op {
            UnaryOp::Rbit => w.reverse_bits(),
            UnaryOp::Rev16 => ((w & 0x00FF_00FF) << 8) | ((w >> 8) & 0x00FF_00FF),
            UnaryOp::Rev32 | UnaryOp::Rev => w.swap_bytes(),
            UnaryOp::Clz => w.leading_zeros(),
            UnaryOp::Cls => (w ^ ((w as i32) >> 1) as u32).leading_zeros() - 1,
        })
    }
}

fn crc32(acc: u64, value: u64, size: AccessSize, castagnoli: bool) -> u64 {
    let poly: u32 = if castagnoli { 0x82F6_3B78 } else { 0xEDB8_8320 };
    let mut crc = acc as u32;
    let mut val = value;
    for _ in 0..size.bytes() * 8 {
        let bit = (crc ^ val as u32) & 1;
        crc >>= 1;
        if bit != 0 {
            crc ^= poly;
        }
        val >>= 1;
    }
    u64::from(crc)
}

/// The value a load writes to its register.
#[inline]
fn loaded(v: u64, size: AccessSize, ext: LoadExt) -> u64 {
    match ext {
        LoadExt::Zero => v,
        LoadExt::Sign32 => sext(v, (size.bytes() * 8) as u32) & 0xFFFF_FFFF,
        LoadExt::Sign64 => sext(v, (size.bytes() * 8) as u32),
    }
}

/// The syndrome of a single-register access without writeback (ISV = 1).
#[inline]
fn single(
    t: u8,
    size: AccessSize,
    sign: bool,
    sixty_four: bool,
    ar: bool,
    write: bool,
) -> AccessInfo {
    AccessInfo {
        syndrome: Some(AccessSyndrome {
            size,
            sign_extend: sign,
            srt: raw_rt(t) as u8,
            sixty_four,
            acquire_release: ar,
        }),
        write,
    }
}

/// The syndrome of an access ISV = 0 describes (pairs, writeback, exclusives, atomics).
#[inline]
fn no_syndrome(write: bool) -> AccessInfo {
    AccessInfo {
        syndrome: None,
        write,
    }
}

fn load_info(t: u8, size: AccessSize, ext: LoadExt, wb: Writeback) -> AccessInfo {
    if wb != Writeback::None {
        return no_syndrome(false);
    }
    let sixty_four = match ext {
        LoadExt::Zero => size == AccessSize::Double,
        LoadExt::Sign32 => false,
        LoadExt::Sign64 => true,
    };
    single(t, size, ext != LoadExt::Zero, sixty_four, false, false)
}

fn store_info(t: u8, size: AccessSize, wb: Writeback) -> AccessInfo {
    if wb != Writeback::None {
        return no_syndrome(true);
    }
    single(t, size, false, size == AccessSize::Double, false, true)
}

/// The size of an exclusive or compare-and-swap: one register or two.
#[inline]
fn block_bytes(size: AccessSize, pair: bool) -> u64 {
    if pair { 2 * size.bytes() } else { size.bytes() }
}

/// Two registers as the block a pair accesses: `lo` at the lower address.
#[inline]
fn join(lo: u64, hi: u64, size: AccessSize) -> u128 {
    let m = size_mask(size);
    u128::from(lo & m) | (u128::from(hi & m) << (size.bytes() * 8))
}

/// A block back into two registers (the second is zero for a single one).
#[inline]
fn split(block: u128, size: AccessSize) -> (u64, u64) {
    let m = size_mask(size);
    (block as u64 & m, (block >> (size.bytes() * 8)) as u64 & m)
}

impl Cpu {
    #[inline(always)]
    fn r(&self, slot: u8) -> u64 {
        self.regs[usize::from(slot) & (reg::FILE - 1)]
    }

    #[inline(always)]
    fn w(&mut self, slot: u8, v: u64) {
        self.regs[usize::from(slot) & (reg::FILE - 1)] = v;
    }

    /// Writes a raw register number (31 = XZR).
    #[inline]
    fn w_raw(&mut self, r: u8, v: u64) {
        if r < 31 {
            self.regs[usize::from(r)] = v;
        }
    }

    /// Reads a raw register number (31 = XZR).
    #[inline]
    fn r_raw(&self, r: u8) -> u64 {
        if r < 31 { self.regs[usize::from(r)] } else { 0 }
    }

    /// The base register of an access, with the SP alignment check.
    #[inline(always)]
    fn base(&mut self, n: u8) -> Result<u64, Flow> {
        let b = self.r(n);
        if n == reg::SP && b & 0xF != 0 && self.sp_alignment_checked() {
            self.sync_exception(Esr::new(ec::SP_ALIGNMENT, 0), None);
            return Err(Flow::Trap);
        }
        Ok(b)
    }

    /// The flow for a failed data access at `addr`.
    #[cold]
    fn access_fault(&mut self, e: BusError, addr: u64, info: AccessInfo) -> Flow {
        match e {
            BusError::Stage2Fault => {
                Flow::Fault(self.stage2_exit(Cpu::stage2_data_syndrome(info), addr))
            }
            BusError::ExternalAbort => {
                self.data_abort_el1(addr, info.write, fsc::SYNC_EXTERNAL);
                Flow::Trap
            }
        }
    }

    /// Alignment check: with the stage-1 MMU off every access is to Device
    /// memory, where an unaligned access faults.
    #[inline(always)]
    fn aligned(&mut self, addr: u64, bytes: u64, write: bool) -> Result<(), Flow> {
        if addr & (bytes - 1) != 0 {
            self.alignment_fault(addr, write);
            return Err(Flow::Trap);
        }
        Ok(())
    }

    #[cold]
    fn alignment_fault(&mut self, addr: u64, write: bool) {
        self.data_abort_el1(addr, write, fsc::ALIGNMENT);
    }

    #[inline(always)]
    fn load<B: Bus>(
        &mut self,
        bus: &mut B,
        addr: u64,
        size: AccessSize,
        info: AccessInfo,
    ) -> Result<u64, Flow> {
        self.aligned(addr, size.bytes(), false)?;
        bus.read(addr, size)
            .map_err(|e| self.access_fault(e, addr, info))
    }

    #[inline(always)]
    fn store<B: Bus>(
        &mut self,
        bus: &mut B,
        addr: u64,
        size: AccessSize,
        v: u64,
        info: AccessInfo,
    ) -> Result<(), Flow> {
        self.aligned(addr, size.bytes(), true)?;
        bus.write(addr, size, v)
            .map_err(|e| self.access_fault(e, addr, info))?;
        self.cache.stored(addr, size.bytes());
        Ok(())
    }

    /// The flow of an MRS/MSR/SYS that did not execute.
    fn sys_fault(&mut self, f: SysFault, id: crate::SysRegId, t: u8, read: bool) -> Flow {
        let esr = match f {
            SysFault::Undefined => Esr::undefined(),
            SysFault::Trapped => Esr::new(
                ec::SYSREG,
                id.trap_iss() | (raw_rt(t) << 5) | u64::from(read),
            ),
            SysFault::FpTrapped => Esr::new(ec::FP_ASIMD, 0),
        };
        self.sync_exception(esr, None);
        Flow::Trap
    }

    /// Executes one decoded instruction at the current PC.
    #[inline(always)]
    pub(crate) fn exec<B: Bus>(&mut self, bus: &mut B, op: Op) -> Flow {
        match op {
            Op::AddImm {
                d,
                n,
                imm,
                sf,
                sub,
                flags,
            } => {
                self.add_sub(d, self.r(n), u64::from(imm), sf, sub, flags);
                Flow::Next
            }
            Op::AddShifted {
                d,
                n,
                m,
                shift,
                amount,
                sf,
                sub,
                flags,
            } => {
                let y = shifted(self.r(m), shift, u32::from(amount), sf);
                self.add_sub(d, self.r(n), y, sf, sub, flags);
                Flow::Next
            }
            Op::AddExtended {
                d,
                n,
                m,
                ext,
                amount,
                sf,
                sub,
                flags,
            } => {
                let y = extended(self.r(m), ext, amount);
                self.add_sub(d, self.r(n), y, sf, sub, flags);
                Flow::Next
            }
            Op::AddCarry {
                d,
                n,
                m,
                sf,
                sub,
                flags,
            } => {
                let y = if sub { !self.r(m) } else { self.r(m) };
                let carry = self.pstate.nzcv & bits::C != 0;
                let (r, f) = add_with_carry(self.r(n), y, carry, sf);
                if flags {
                    self.pstate.nzcv = f;
                }
                self.w(d, r);
                Flow::Next
            }
            Op::LogicImm { d, n, op, imm, sf } => {
                self.logic(d, self.r(n), imm, op, sf);
                Flow::Next
            }
            Op::LogicShifted {
                d,
                n,
                m,
                op,
                shift,
                amount,
                invert,
                sf,
            } => {
                let mut y = shifted(self.r(m), shift, u32::from(amount), sf);
                if invert {
                    y = !y & mask(sf);
                }
                self.logic(d, self.r(n), y, op, sf);
                Flow::Next
            }
            Op::MovWide {
                d,
                op,
                imm16,
                shift,
                sf,
            } => {
                let imm = u64::from(imm16) << shift;
                let v = match op {
                    MovOp::Movz => imm,
                    MovOp::Movn => !imm & mask(sf),
                    MovOp::Movk => ((self.r(d) & !(0xFFFFu64 << shift)) | imm) & mask(sf),
                };
                self.w(d, v);
                Flow::Next
            }
            Op::Adr { d, imm, page } => {
                let v = if page {
                    (self.pc & !0xFFF).wrapping_add((i64::from(imm) << 12) as u64)
                } else {
                    self.pc.wrapping_add(i64::from(imm) as u64)
                };
                self.w(d, v);
                Flow::Next
            }
            Op::Bitfield {
                d,
                n,
                op,
                immr,
                imms,
                sf,
            } => {
                let v = bitfield(
                    op,
                    self.r(n),
                    self.r(d),
                    u32::from(immr),
                    u32::from(imms),
                    sf,
                );
                self.w(d, v);
                Flow::Next
            }
            Op::Extr { d, n, m, lsb, sf } => {
                let lsb = u32::from(lsb);
                let v = if sf {
                    if lsb == 0 {
                        self.r(m)
                    } else {
                        (self.r(m) >> lsb) | (self.r(n) << (64 - lsb))
                    }
                } else {
                    let concat = (self.r(n) << 32) | (self.r(m) & 0xFFFF_FFFF);
                    (concat >> lsb) & 0xFFFF_FFFF
                };
                self.w(d, v);
                Flow::Next
            }
            Op::ShiftVariable { d, n, m, shift, sf } => {
                let amount = (self.r(m) & if sf { 63 } else { 31 }) as u32;
                self.w(d, shifted(self.r(n), shift, amount, sf));
                Flow::Next
            }
            Op::Unary { d, n, op, sf } => {
                self.w(d, unary(op, self.r(n), sf));
                Flow::Next
            }
            Op::Div {
                d,
                n,
                m,
                signed,
                sf,
            } => {
                let (x, y) = (self.r(n), self.r(m));
                let v = match (signed, sf) {
                    (_, _) if y & mask(sf) == 0 => 0,
                    (false, true) => x / y,
                    (false, false) => u64::from(x as u32 / y as u32),
                    (true, true) => (x as i64).wrapping_div(y as i64) as u64,
                    (true, false) => u64::from((x as i32).wrapping_div(y as i32) as u32),
                };
                self.w(d, v);
                Flow::Next
            }
            Op::Mul { d, n, m, a, op, sf } => {
                let (x, y, acc) = (self.r(n), self.r(m), self.r_raw(a));
                let wide = |signed: bool| -> u64 {
                    if signed {
                        i64::from(x as i32).wrapping_mul(i64::from(y as i32)) as u64
                    } else {
                        (x & 0xFFFF_FFFF).wrapping_mul(y & 0xFFFF_FFFF)
                    }
                };
                let v = match op {
                    MulOp::Madd => acc.wrapping_add(x.wrapping_mul(y)) & mask(sf),
                    MulOp::Msub => acc.wrapping_sub(x.wrapping_mul(y)) & mask(sf),
                    MulOp::Smaddl => acc.wrapping_add(wide(true)),
                    MulOp::Smsubl => acc.wrapping_sub(wide(true)),
                    MulOp::Umaddl => acc.wrapping_add(wide(false)),
                    MulOp::Umsubl => acc.wrapping_sub(wide(false)),
                    MulOp::Smulh => ((i128::from(x as i64) * i128::from(y as i64)) >> 64) as u64,
                    MulOp::Umulh => ((u128::from(x) * u128::from(y)) >> 64) as u64,
                };
                self.w(d, v);
                Flow::Next
            }
            Op::CondSel {
                d,
                n,
                m,
                cond,
                op,
                sf,
            } => {
                let v = if self.pstate.holds(cond) {
                    self.r(n)
                } else {
                    let y = self.r(m);
                    match op {
                        CondSelOp::Csel => y,
                        CondSelOp::Csinc => y.wrapping_add(1),
                        CondSelOp::Csinv => !y,
                        CondSelOp::Csneg => y.wrapping_neg(),
                    }
                };
                self.w(d, v & mask(sf));
                Flow::Next
            }
            Op::CondCmp {
                n,
                m,
                imm,
                nzcv,
                cond,
                sub,
                sf,
            } => {
                if self.pstate.holds(cond) {
                    let y = if imm { u64::from(m) } else { self.r(m) };
                    self.pstate.nzcv = add_or_sub(self.r(n), y, sub, sf).1;
                } else {
                    self.pstate.nzcv = u64::from(nzcv) << 28;
                }
                Flow::Next
            }
            Op::Crc32 {
                d,
                n,
                m,
                size,
                castagnoli,
            } => {
                let v = crc32(self.r(n), self.r(m) & size_mask(size), size, castagnoli);
                self.w(d, v);
                Flow::Next
            }

            Op::B { offset } => self.branch_if(true, offset),
            Op::Bl { offset } => {
                self.regs[30] = self.pc.wrapping_add(4);
                self.branch_if(true, offset)
            }
            Op::BCond { cond, offset } => self.branch_if(self.pstate.holds(cond), offset),
            Op::Cbz {
                t,
                offset,
                nonzero,
                sf,
            } => self.branch_if((self.r(t) & mask(sf) != 0) == nonzero, offset),
            Op::Tbz {
                t,
                bit,
                offset,
                nonzero,
            } => self.branch_if(((self.r(t) >> bit) & 1 != 0) == nonzero, offset),
            Op::Br { n } | Op::Ret { n } => {
                self.pc = self.r(n);
                Flow::Jump
            }
            Op::Blr { n } => {
                let target = self.r(n);
                self.regs[30] = self.pc.wrapping_add(4);
                self.pc = target;
                Flow::Jump
            }
            Op::Eret => {
                if self.pstate.el == 0 {
                    self.undefined();
                    return Flow::Trap;
                }
                self.exception_return();
                Flow::Resync
            }

            Op::Svc { imm } => {
                self.pc = self.pc.wrapping_add(4);
                self.sync_exception(Esr::svc(imm), None);
                // SVC retires: its preferred return address is the next instruction.
                Flow::Resync
            }
            Op::Hvc { .. } | Op::Smc { .. } if self.pstate.el == 0 => {
                self.undefined();
                Flow::Trap
            }
            Op::Hvc { imm } => {
                self.pc = self.pc.wrapping_add(4);
                Flow::Exit(Exit::Hvc { imm })
            }
            Op::Smc { imm } => {
                self.pc = self.pc.wrapping_add(4);
                Flow::Exit(Exit::Smc { imm })
            }
            Op::Brk { imm } => {
                self.sync_exception(Esr::new(ec::BRK64, u64::from(imm)), None);
                Flow::Trap
            }

            Op::Hint(Hint::Nop) | Op::Prefetch => Flow::Next,
            Op::Hint(hint @ (Hint::Wfi | Hint::Wfe)) => {
                let wfe = hint == Hint::Wfe;
                if self.wait_trapped(wfe) {
                    // EC 0x01; from AArch64 CV = 1 and COND = 0b1110; TI = WFE.
                    let iss = (1 << 24) | (0xE << 20) | u64::from(wfe);
                    self.sync_exception(Esr::new(ec::WFX, iss), None);
                    return Flow::Trap;
                }
                self.pc = self.pc.wrapping_add(4);
                Flow::Exit(if wfe { Exit::Wfe } else { Exit::Wfi })
            }
            Op::Clrex => {
                self.monitor = None;
                Flow::Next
            }
            Op::Barrier => {
                fence(Ordering::SeqCst);
                Flow::Next
            }
            Op::Isb => {
                self.pc = self.pc.wrapping_add(4);
                Flow::Resync
            }
            Op::MsrImm { field, imm } => self.msr_immediate(field, imm),
            Op::Mrs { t, reg: id } => match self.mrs(bus, id) {
                Ok((v, foreign)) => {
                    self.w(t, v);
                    self.after_foreign(bus, foreign)
                }
                Err(f) => self.sys_fault(f, id, t, true),
            },
            Op::Msr { t, reg: id } => match self.msr(bus, id, self.r(t)) {
                Ok(MsrEffect::Plain) => Flow::Next,
                Ok(MsrEffect::Resync) => {
                    self.pc = self.pc.wrapping_add(4);
                    Flow::Resync
                }
                Ok(MsrEffect::TimerLines) => {
                    self.pc = self.pc.wrapping_add(4);
                    Flow::Exit(Exit::TimerDeadline)
                }
                Ok(MsrEffect::Foreign) => self.after_foreign(bus, true),
                Err(f) => self.sys_fault(f, id, t, false),
            },
            Op::Sys { t, op: id } => match self.sys_op(id, self.r_raw(t)) {
                Ok(()) => Flow::Next,
                Err(f) => self.sys_fault(f, id, t, false),
            },

            Op::Load {
                t,
                n,
                offset,
                size,
                ext,
                wb,
            } => {
                let base = match self.base(n) {
                    Ok(b) => b,
                    Err(f) => return f,
                };
                let moved = base.wrapping_add(i64::from(offset) as u64);
                let addr = if wb == Writeback::Post { base } else { moved };
                let v = match self.load(bus, addr, size, load_info(t, size, ext, wb)) {
                    Ok(v) => v,
                    Err(f) => return f,
                };
                // Rt == Rn with writeback: writeback suppressed (a permitted outcome).
                if wb != Writeback::None && t != n {
                    self.w(n, moved);
                }
                self.w(t, loaded(v, size, ext));
                Flow::Next
            }
            Op::Store {
                t,
                n,
                offset,
                size,
                wb,
            } => {
                let base = match self.base(n) {
                    Ok(b) => b,
                    Err(f) => return f,
                };
                let moved = base.wrapping_add(i64::from(offset) as u64);
                let addr = if wb == Writeback::Post { base } else { moved };
                // Rt == Rn with writeback stores the original value (a permitted outcome).
                let v = self.r(t);
                if let Err(f) = self.store(bus, addr, size, v, store_info(t, size, wb)) {
                    return f;
                }
                if wb != Writeback::None {
                    self.w(n, moved);
                }
                Flow::Next
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
                let base = match self.base(n) {
                    Ok(b) => b,
                    Err(f) => return f,
                };
                let addr = base.wrapping_add(extended(self.r(m), ext, shift));
                let info = load_info(t, size, sign, Writeback::None);
                match self.load(bus, addr, size, info) {
                    Ok(v) => {
                        self.w(t, loaded(v, size, sign));
                        Flow::Next
                    }
                    Err(f) => f,
                }
            }
            Op::StoreRegOffset {
                t,
                n,
                m,
                ext,
                shift,
                size,
            } => {
                let base = match self.base(n) {
                    Ok(b) => b,
                    Err(f) => return f,
                };
                let addr = base.wrapping_add(extended(self.r(m), ext, shift));
                let v = self.r(t);
                match self.store(bus, addr, size, v, store_info(t, size, Writeback::None)) {
                    Ok(()) => Flow::Next,
                    Err(f) => f,
                }
            }
            Op::LoadLiteral {
                t,
                offset,
                size,
                ext,
            } => {
                let addr = self.pc.wrapping_add(i64::from(offset) as u64);
                match self.load(bus, addr, size, load_info(t, size, ext, Writeback::None)) {
                    Ok(v) => {
                        self.w(t, loaded(v, size, ext));
                        Flow::Next
                    }
                    Err(f) => f,
                }
            }
            Op::LoadPair {
                t,
                t2,
                n,
                offset,
                size,
                sign,
                wb,
            } => self.load_pair(bus, t, t2, n, offset, size, sign, wb),
            Op::StorePair {
                t,
                t2,
                n,
                offset,
                size,
                wb,
            } => self.store_pair(bus, t, t2, n, offset, size, wb),
            Op::LoadExclusive {
                t,
                t2,
                n,
                size,
                pair,
                acquire,
            } => {
                let f = self.load_exclusive(bus, t, t2, n, size, pair);
                if acquire {
                    fence(Ordering::Acquire);
                }
                f
            }
            Op::StoreExclusive {
                s,
                t,
                t2,
                n,
                size,
                pair,
                release,
            } => {
                if release {
                    fence(Ordering::Release);
                }
                self.store_exclusive(bus, s, t, t2, n, size, pair)
            }
            Op::LoadAcquire { t, n, size } => {
                let addr = match self.base(n) {
                    Ok(b) => b,
                    Err(f) => return f,
                };
                let info = single(t, size, false, size == AccessSize::Double, true, false);
                match self.load(bus, addr, size, info) {
                    Ok(v) => {
                        fence(Ordering::Acquire);
                        self.w(t, v);
                        Flow::Next
                    }
                    Err(f) => f,
                }
            }
            Op::StoreRelease { t, n, size } => {
                let addr = match self.base(n) {
                    Ok(b) => b,
                    Err(f) => return f,
                };
                fence(Ordering::Release);
                let info = single(t, size, false, size == AccessSize::Double, true, true);
                match self.store(bus, addr, size, self.r(t) & size_mask(size), info) {
                    Ok(()) => Flow::Next,
                    Err(f) => f,
                }
            }
            Op::Atomic { s, t, n, size, op } => {
                let addr = match self.atomic_address(n, size.bytes(), true) {
                    Ok(a) => a,
                    Err(f) => return f,
                };
                let operand = self.r(s) & size_mask(size);
                match bus.atomic_rmw(addr, size, op, operand) {
                    Ok(old) => {
                        self.cache.stored(addr, size.bytes());
                        self.w(t, old);
                        Flow::Next
                    }
                    Err(e) => self.access_fault(e, addr, no_syndrome(true)),
                }
            }
            Op::Cas {
                s,
                t,
                n,
                size,
                pair,
            } => self.compare_and_swap(bus, s, t, n, size, pair),

            Op::Undefined => {
                self.undefined();
                Flow::Trap
            }
            Op::SimdFp => {
                if self.fp_trapped() {
                    self.sync_exception(Esr::new(ec::FP_ASIMD, 0), None);
                } else {
                    self.undefined();
                }
                Flow::Trap
            }
            Op::NotDecoded => {
                // The run loop decodes before executing; reaching this is a bug,
                // and UNDEFINED is the safe answer for a guest.
                self.undefined();
                Flow::Trap
            }
        }
    }

    #[inline(always)]
    fn logic(&mut self, d: u8, x: u64, y: u64, op: LogicOp, sf: bool) {
        let r = match op {
            LogicOp::And | LogicOp::Ands => x & y,
            LogicOp::Orr => x | y,
            LogicOp::Eor => x ^ y,
        } & mask(sf);
        if op == LogicOp::Ands {
            self.pstate.nzcv = logic_flags(r, sf);
        }
        self.w(d, r);
    }

    /// A PC-relative branch, taken when `cond` holds.
    #[inline]
    fn branch_if(&mut self, cond: bool, offset: i32) -> Flow {
        if cond {
            self.pc = self.pc.wrapping_add(i64::from(offset) as u64);
            Flow::Jump
        } else {
            Flow::Next
        }
    }

    #[inline(always)]
    fn add_sub(&mut self, d: u8, x: u64, y: u64, sf: bool, sub: bool, flags: bool) {
        if flags {
            let (r, f) = add_or_sub(x, y, sub, sf);
            self.pstate.nzcv = f;
            self.w(d, r);
        } else {
            let r = if sub {
                x.wrapping_sub(y)
            } else {
                x.wrapping_add(y)
            };
            self.w(d, r & mask(sf));
        }
    }

    /// After an access that went to the bus: the host may have kicked.
    fn after_foreign<B: Bus>(&mut self, bus: &mut B, foreign: bool) -> Flow {
        if foreign && bus.kicked() {
            self.pc = self.pc.wrapping_add(4);
            Flow::Exit(Exit::Kicked)
        } else {
            Flow::Next
        }
    }

    fn msr_immediate(&mut self, field: PstateField, imm: u8) -> Flow {
        let daif_allowed = self.pstate.el == 1 || self.sys.sctlr_el1 & (1 << 9) != 0;
        match field {
            PstateField::SpSel if self.pstate.el == 1 => self.set_spsel(imm & 1 != 0),
            PstateField::DaifSet if daif_allowed => self.pstate.daif |= u64::from(imm & 0xF) << 6,
            PstateField::DaifClr if daif_allowed => {
                self.pstate.daif &= !(u64::from(imm & 0xF) << 6)
            }
            PstateField::SpSel => {
                self.undefined();
                return Flow::Trap;
            }
            PstateField::DaifSet | PstateField::DaifClr => {
                let op2 = if field == PstateField::DaifSet { 6 } else { 7 };
                let id = crate::SysRegId::new(0, 3, 4, imm, op2);
                return self.sys_fault(SysFault::Trapped, id, reg::ZR, false);
            }
        }
        self.pc = self.pc.wrapping_add(4);
        Flow::Resync
    }

    #[allow(clippy::too_many_arguments)]
    fn load_pair<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        t2: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        sign: bool,
        wb: Writeback,
    ) -> Flow {
        let base = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        let moved = base.wrapping_add(i64::from(offset) as u64);
        let addr = if wb == Writeback::Post { base } else { moved };
        let info = no_syndrome(false);
        let first = match self.load(bus, addr, size, info) {
            Ok(v) => v,
            Err(f) => return f,
        };
        let second = match self.load(bus, addr.wrapping_add(size.bytes()), size, info) {
            Ok(v) => v,
            Err(f) => return f,
        };
        let ext = if sign { LoadExt::Sign64 } else { LoadExt::Zero };
        // Rn == Rt or Rt2 with writeback: writeback suppressed (a permitted outcome).
        if wb != Writeback::None && t != n && t2 != n {
            self.w(n, moved);
        }
        self.w(t, loaded(first, size, ext));
        self.w(t2, loaded(second, size, ext));
        Flow::Next
    }

    #[allow(clippy::too_many_arguments)]
    fn store_pair<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        t2: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        wb: Writeback,
    ) -> Flow {
        let base = match self.base(n) {
            Ok(b) => b,
            Err(f) => return f,
        };
        let moved = base.wrapping_add(i64::from(offset) as u64);
        let addr = if wb == Writeback::Post { base } else { moved };
        let second_addr = addr.wrapping_add(size.bytes());
        let info = no_syndrome(true);
        let (v1, v2) = (self.r(t) & size_mask(size), self.r(t2) & size_mask(size));
        if let Err(f) = self.aligned(addr, size.bytes(), true) {
            return f;
        }
        // A pair that crosses a page: probe both pages with reads first, in
        // address order, so a fault on the second cannot leave the first written.
        if second_addr & 0xFFF == 0 {
            for probe in [addr, second_addr] {
                if let Err(e) = bus.read(probe, size) {
                    return self.access_fault(e, probe, info);
                }
            }
        }
        if let Err(f) = self.store(bus, addr, size, v1, info) {
            return f;
        }
        if let Err(f) = self.store(bus, second_addr, size, v2, info) {
            return f;
        }
        if wb != Writeback::None {
            self.w(n, moved);
        }
        Flow::Next
    }

    /// The address of an exclusive or atomic access of `bytes`: the base
    /// register, aligned to the whole access (pairs included).
    #[inline]
    fn atomic_address(&mut self, n: u8, bytes: u64, write: bool) -> Result<u64, Flow> {
        let addr = self.base(n)?;
        self.aligned(addr, bytes, write)?;
        Ok(addr)
    }

    /// Reads the `bytes` (up to 16) at `addr` as one block. The bus has no
    /// 16-byte read, so sixteen bytes take two (an exclusive load need not be
    /// single-copy atomic: the store-exclusive compares the whole block).
    fn read_block<B: Bus>(
        &mut self,
        bus: &mut B,
        addr: u64,
        bytes: u64,
        info: AccessInfo,
    ) -> Result<u128, Flow> {
        if bytes <= 8 {
            let size = AccessSize::from_bytes(bytes).unwrap_or(AccessSize::Double);
            return bus
                .read(addr, size)
                .map(u128::from)
                .map_err(|e| self.access_fault(e, addr, info));
        }
        let high = addr.wrapping_add(8);
        let lo = bus
            .read(addr, AccessSize::Double)
            .map_err(|e| self.access_fault(e, addr, info))?;
        let hi = bus
            .read(high, AccessSize::Double)
            .map_err(|e| self.access_fault(e, high, info))?;
        Ok(u128::from(lo) | (u128::from(hi) << 64))
    }

    /// Replaces the `bytes` (up to 16) at `addr` with `new` if they equal
    /// `old`, atomically against other vCPUs; returns the previous value.
    fn swap_block<B: Bus>(
        &mut self,
        bus: &mut B,
        addr: u64,
        bytes: u64,
        old: u128,
        new: u128,
    ) -> Result<u128, Flow> {
        let prev = if bytes == 16 {
            bus.compare_exchange_pair(addr, old, new)
        } else {
            let size = AccessSize::from_bytes(bytes).unwrap_or(AccessSize::Double);
            bus.compare_exchange(addr, size, old as u64, new as u64)
                .map(u128::from)
        }
        .map_err(|e| self.access_fault(e, addr, no_syndrome(true)))?;
        if prev == old {
            self.cache.stored(addr, bytes);
        }
        Ok(prev)
    }

    /// LDXR and LDXP. For a single register `t2` is the sink.
    #[allow(clippy::too_many_arguments)]
    fn load_exclusive<B: Bus>(
        &mut self,
        bus: &mut B,
        t: u8,
        t2: u8,
        n: u8,
        size: AccessSize,
        pair: bool,
    ) -> Flow {
        let bytes = block_bytes(size, pair);
        let addr = match self.atomic_address(n, bytes, false) {
            Ok(a) => a,
            Err(f) => return f,
        };
        let value = match self.read_block(bus, addr, bytes, no_syndrome(false)) {
            Ok(v) => v,
            Err(f) => return f,
        };
        self.monitor = Some(Monitor { addr, bytes, value });
        let (first, second) = split(value, size);
        self.w(t, first);
        self.w(t2, second);
        Flow::Next
    }

    /// STXR and STXP. For a single register `t2` is the zero register.
    #[allow(clippy::too_many_arguments)]
    fn store_exclusive<B: Bus>(
        &mut self,
        bus: &mut B,
        s: u8,
        t: u8,
        t2: u8,
        n: u8,
        size: AccessSize,
        pair: bool,
    ) -> Flow {
        let bytes = block_bytes(size, pair);
        let addr = match self.atomic_address(n, bytes, true) {
            Ok(a) => a,
            Err(f) => return f,
        };
        let new = join(self.r(t), self.r(t2), size);
        let success = match self.monitor {
            Some(mon) if mon.addr == addr && mon.bytes == bytes => {
                match self.swap_block(bus, addr, bytes, mon.value, new) {
                    Ok(prev) => prev == mon.value,
                    Err(f) => return f,
                }
            }
            _ => false,
        };
        self.monitor = None;
        self.w(s, u64::from(!success));
        Flow::Next
    }

    /// CAS and CASP: `s` and `t` are raw register numbers, even for a pair.
    fn compare_and_swap<B: Bus>(
        &mut self,
        bus: &mut B,
        s: u8,
        t: u8,
        n: u8,
        size: AccessSize,
        pair: bool,
    ) -> Flow {
        let bytes = block_bytes(size, pair);
        let addr = match self.atomic_address(n, bytes, true) {
            Ok(a) => a,
            Err(f) => return f,
        };
        let second = |r: u8| if pair { self.r_raw(r + 1) } else { 0 };
        let old = join(self.r_raw(s), second(s), size);
        let new = join(self.r_raw(t), second(t), size);
        match self.swap_block(bus, addr, bytes, old, new) {
            Ok(prev) => {
                let (first, second) = split(prev, size);
                self.w_raw(s, first);
                if pair {
                    self.w_raw(s + 1, second);
                }
                Flow::Next
            }
            Err(f) => f,
        }
    }
}
