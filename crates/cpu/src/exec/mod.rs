//! Executing decoded ops: [`Cpu::exec`] dispatches on the [`Op`], and the work
//! lives with its kind of instruction:
//!
//! - `alu`: data processing, immediate and register, as functions of values;
//! - `access`: the path every data access takes (base register, alignment,
//!   the bus, faults), where stage-1 translation belongs;
//! - `load_store`: the load and store instructions;
//! - `atomic`: exclusives, the LSE atomics and compare-and-swap;
//! - `system`: MRS, MSR, SYS, MSR (immediate) and WFI/WFE.
//!
//! Branches and exception generation are a few lines each and stay in the
//! dispatch.
// An interpreter narrows registers to W views and reinterprets them as signed
// values by design: those casts are the semantics here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod access;
mod alu;
mod atomic;
mod load_store;
mod system;

use std::sync::atomic::{Ordering, fence};

use apf_abi::esr::{AccessSize, Esr, ec};

use crate::Cpu;
use crate::bus::Bus;
use crate::cpu::{Exit, Flow};
use crate::decode::{Hint, LoadExt, Op, Writeback, reg};

use alu::{
    add_or_sub, bitfield, crc32, divide, extended, extract, mask, mov_wide, multiply, select_else,
    sext, shifted, unary,
};

#[inline]
fn size_mask(size: AccessSize) -> u64 {
    match size {
        AccessSize::Byte => 0xFF,
        AccessSize::Half => 0xFFFF,
        AccessSize::Word => 0xFFFF_FFFF,
        AccessSize::Double => u64::MAX,
    }
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

    /// Executes one decoded instruction at the current PC, `retired`
    /// instructions after reset (the run loop keeps the count in a register;
    /// only the counter and timer registers need it in `self`).
    #[inline(always)]
    pub(crate) fn exec<B: Bus>(&mut self, bus: &mut B, op: &Op, retired: u64) -> Flow {
        match *op {
            // Data processing (immediate and register): see `alu`.
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
                self.add_carry(d, n, m, sf, sub, flags);
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
                self.w(d, mov_wide(op, self.r(d), imm16, shift, sf));
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
                self.w(d, extract(self.r(n), self.r(m), u32::from(lsb), sf));
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
                self.w(d, divide(self.r(n), self.r(m), signed, sf));
                Flow::Next
            }
            Op::Mul { d, n, m, a, op, sf } => {
                self.w(d, multiply(op, self.r(n), self.r(m), self.r_raw(a), sf));
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
                    select_else(op, self.r(m))
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

            // Block-only forms (see `cache::specialise`).
            Op::AddX { d, n, imm } => {
                self.w(d, self.r(n).wrapping_add(imm));
                Flow::Next
            }
            Op::AddW { d, n, imm } => {
                self.w(d, u64::from((self.r(n) as u32).wrapping_add(imm)));
                Flow::Next
            }
            Op::SubsImmW { d, n, imm } => {
                let (r, nzcv) = add_or_sub(self.r(n), u64::from(imm), true, false);
                self.pstate.nzcv = nzcv;
                self.w(d, r);
                Flow::Next
            }
            Op::SubsRegW { d, n, m } => {
                let (r, nzcv) = add_or_sub(self.r(n), self.r(m), true, false);
                self.pstate.nzcv = nzcv;
                self.w(d, r);
                Flow::Next
            }
            Op::AddRegW { d, n, m } => {
                let r = (self.r(n) as u32).wrapping_add(self.r(m) as u32);
                self.w(d, u64::from(r));
                Flow::Next
            }
            Op::EorRegW { d, n, m } => {
                self.w(d, (self.r(n) ^ self.r(m)) & 0xFFFF_FFFF);
                Flow::Next
            }
            Op::AndImm { d, n, imm } => {
                self.w(d, self.r(n) & imm);
                Flow::Next
            }
            Op::Ubfx { d, n, shift, mask } => {
                self.w(d, (self.r(n) >> shift) & mask);
                Flow::Next
            }
            Op::Ubfiz { d, n, shift, mask } => {
                self.w(d, (self.r(n) & mask) << shift);
                Flow::Next
            }
            Op::MovX { d, m } => {
                self.w(d, self.r(m));
                Flow::Next
            }
            Op::MovW { d, m } => {
                self.w(d, self.r(m) & 0xFFFF_FFFF);
                Flow::Next
            }
            Op::LoadX { t, n, offset } => self.load_immediate(
                bus,
                t,
                n,
                offset,
                AccessSize::Double,
                LoadExt::Zero,
                Writeback::None,
                false,
            ),
            Op::LoadW { t, n, offset } => self.load_immediate(
                bus,
                t,
                n,
                offset,
                AccessSize::Word,
                LoadExt::Zero,
                Writeback::None,
                false,
            ),
            Op::LoadH { t, n, offset } => self.load_immediate(
                bus,
                t,
                n,
                offset,
                AccessSize::Half,
                LoadExt::Zero,
                Writeback::None,
                false,
            ),
            Op::LoadB { t, n, offset } => self.load_immediate(
                bus,
                t,
                n,
                offset,
                AccessSize::Byte,
                LoadExt::Zero,
                Writeback::None,
                false,
            ),
            Op::StoreX { t, n, offset } => self.store_immediate(
                bus,
                t,
                n,
                offset,
                AccessSize::Double,
                Writeback::None,
                false,
            ),
            Op::StoreW { t, n, offset } => {
                self.store_immediate(bus, t, n, offset, AccessSize::Word, Writeback::None, false)
            }
            Op::StoreH { t, n, offset } => {
                self.store_immediate(bus, t, n, offset, AccessSize::Half, Writeback::None, false)
            }
            Op::StoreB { t, n, offset } => {
                self.store_immediate(bus, t, n, offset, AccessSize::Byte, Writeback::None, false)
            }
            Op::LoadSH { t, n, offset } => self.load_immediate(
                bus,
                t,
                n,
                offset,
                AccessSize::Half,
                LoadExt::Sign32,
                Writeback::None,
                false,
            ),
            Op::LoadRegX {
                t,
                n,
                m,
                ext,
                shift,
            } => self.load_register_offset(
                bus,
                t,
                n,
                m,
                ext,
                shift,
                AccessSize::Double,
                LoadExt::Zero,
            ),
            Op::LoadRegW {
                t,
                n,
                m,
                ext,
                shift,
            } => {
                self.load_register_offset(bus, t, n, m, ext, shift, AccessSize::Word, LoadExt::Zero)
            }
            Op::LoadRegH {
                t,
                n,
                m,
                ext,
                shift,
            } => {
                self.load_register_offset(bus, t, n, m, ext, shift, AccessSize::Half, LoadExt::Zero)
            }
            Op::LoadRegB {
                t,
                n,
                m,
                ext,
                shift,
            } => {
                self.load_register_offset(bus, t, n, m, ext, shift, AccessSize::Byte, LoadExt::Zero)
            }
            Op::LoadRegSH {
                t,
                n,
                m,
                ext,
                shift,
            } => self.load_register_offset(
                bus,
                t,
                n,
                m,
                ext,
                shift,
                AccessSize::Half,
                LoadExt::Sign32,
            ),
            Op::StoreRegX {
                t,
                n,
                m,
                ext,
                shift,
            } => self.store_register_offset(bus, t, n, m, ext, shift, AccessSize::Double),
            Op::StoreRegW {
                t,
                n,
                m,
                ext,
                shift,
            } => self.store_register_offset(bus, t, n, m, ext, shift, AccessSize::Word),
            Op::StoreRegH {
                t,
                n,
                m,
                ext,
                shift,
            } => self.store_register_offset(bus, t, n, m, ext, shift, AccessSize::Half),
            Op::StoreRegB {
                t,
                n,
                m,
                ext,
                shift,
            } => self.store_register_offset(bus, t, n, m, ext, shift, AccessSize::Byte),

            // Branches and exception generation.
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
                self.exit_after(Exit::Hvc { imm })
            }
            Op::Smc { imm } => {
                self.pc = self.pc.wrapping_add(4);
                self.exit_after(Exit::Smc { imm })
            }
            Op::Brk { imm } => {
                self.sync_exception(Esr::new(ec::BRK64, u64::from(imm)), None);
                Flow::Trap
            }

            // System: see `system`.
            Op::Hint(Hint::Nop) | Op::Prefetch => Flow::Next,
            Op::Hint(hint @ (Hint::Wfi | Hint::Wfe)) => self.wait_for(hint == Hint::Wfe),
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
            Op::Mrs { t, reg: id } => {
                self.retired = retired;
                self.exec_mrs(bus, t, id)
            }
            Op::Msr { t, reg: id } => {
                self.retired = retired;
                self.exec_msr(bus, t, id)
            }
            Op::Sys { t, op: id } => self.exec_sys(bus, t, id),

            // Loads and stores: see `load_store` and, for exclusives and atomics, `atomic`.
            Op::Load {
                t,
                n,
                offset,
                size,
                ext,
                wb,
                unprivileged,
            } => self.load_immediate(bus, t, n, offset, size, ext, wb, unprivileged),
            Op::Store {
                t,
                n,
                offset,
                size,
                wb,
                unprivileged,
            } => self.store_immediate(bus, t, n, offset, size, wb, unprivileged),
            Op::LoadRegOffset {
                t,
                n,
                m,
                ext,
                shift,
                size,
                sign,
            } => self.load_register_offset(bus, t, n, m, ext, shift, size, sign),
            Op::StoreRegOffset {
                t,
                n,
                m,
                ext,
                shift,
                size,
            } => self.store_register_offset(bus, t, n, m, ext, shift, size),
            Op::LoadLiteral {
                t,
                offset,
                size,
                ext,
            } => self.load_literal(bus, t, offset, size, ext),
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
            Op::LoadAcquire { t, n, size } => self.load_acquire(bus, t, n, size),
            Op::StoreRelease { t, n, size } => self.store_release(bus, t, n, size),
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
            Op::Atomic { s, t, n, size, op } => self.atomic_rmw(bus, s, t, n, size, op),
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
            // The run loop decodes the slot and comes back.
            Op::NotDecoded => Flow::NotDecoded,
        }
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
}
