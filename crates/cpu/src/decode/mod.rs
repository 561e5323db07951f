//! Instruction decode: a 32-bit A64 word becomes an [`Op`], the form the decode
//! cache stores and the executor runs. Every encoding this CPU does not
//! implement, and every reserved field value, decodes to [`Op::Undefined`].
//!
//! Register operands are *slots* of the register file (see [`reg`]), resolved
//! here once, so the executor never asks whether register 31 means SP or XZR.

mod bitmask;

pub(crate) use bitmask::decode_bit_masks;

use apf_abi::esr::AccessSize;

use crate::bus::{AtomicOp, SysRegId};

/// Register-file slots.
pub(crate) mod reg {
    /// Reads as zero and is never written: XZR/WZR as a source.
    pub(crate) const ZR: u8 = 31;
    /// The current stack pointer.
    pub(crate) const SP: u8 = 32;
    /// Writes to XZR/WZR land here and are never read.
    pub(crate) const SINK: u8 = 33;
    /// Size of the register file (a power of two so slot indexing needs no bounds check).
    pub(crate) const FILE: usize = 64;
}

/// The shift of a shifted-register operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shift {
    Lsl,
    Lsr,
    Asr,
    Ror,
}

impl Shift {
    fn from_bits(b: u32) -> Shift {
        match b & 3 {
            0 => Shift::Lsl,
            1 => Shift::Lsr,
            2 => Shift::Asr,
            _ => Shift::Ror,
        }
    }
}

/// The extend of an extended-register operand or register-offset address (the
/// `option` field: UXTB..SXTX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extend(pub(crate) u8);

/// How a load fills its destination register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadExt {
    /// Zero-extend (LDR, LDRB, LDRH).
    Zero,
    /// Sign-extend to 32 bits, then zero the top half (LDRSB/LDRSH to W).
    Sign32,
    /// Sign-extend to 64 bits (LDRSB/LDRSH/LDRSW to X).
    Sign64,
}

/// Base-register writeback of a load or store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writeback {
    /// Address = base + offset; base unchanged.
    None,
    /// Address = base + offset; base = address.
    Pre,
    /// Address = base; base = base + offset.
    Post,
}

/// The logical operations (bits 30:29 of the logical classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogicOp {
    And,
    Orr,
    Eor,
    /// AND that sets the flags.
    Ands,
}

impl LogicOp {
    fn from_bits(b: u32) -> LogicOp {
        match b & 3 {
            0 => LogicOp::And,
            1 => LogicOp::Orr,
            2 => LogicOp::Eor,
            _ => LogicOp::Ands,
        }
    }
}

/// MOVN, MOVZ, MOVK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MovOp {
    Movn,
    Movz,
    Movk,
}

/// SBFM, BFM, UBFM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BitfieldOp {
    Sbfm,
    Bfm,
    Ubfm,
}

/// The data-processing (1 source) operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnaryOp {
    Rbit,
    Rev16,
    /// REV32 (64-bit only): bytes reversed within each word.
    Rev32,
    /// REV: all bytes of the register reversed.
    Rev,
    Clz,
    Cls,
}

/// The multiply families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MulOp {
    Madd,
    Msub,
    Smaddl,
    Smsubl,
    Smulh,
    Umaddl,
    Umsubl,
    Umulh,
}

/// CSEL, CSINC, CSINV, CSNEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CondSelOp {
    Csel,
    Csinc,
    Csinv,
    Csneg,
}

/// The hints that do something here; every other hint is a NOP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    Nop,
    Wfe,
    Wfi,
}

/// The PSTATE fields MSR (immediate) can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PstateField {
    SpSel,
    DaifSet,
    DaifClr,
}

/// A decoded instruction. Register fields are slots (see [`reg`]) except where
/// noted as raw register numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Not decoded yet: the decode cache's empty slot.
    NotDecoded,
    /// UNDEFINED: EC 0.
    Undefined,
    /// A SIMD/FP instruction: trapped by CPACR_EL1.FPEN, else UNDEFINED.
    SimdFp,

    AddImm {
        d: u8,
        n: u8,
        imm: u32,
        sf: bool,
        sub: bool,
        flags: bool,
    },
    AddShifted {
        d: u8,
        n: u8,
        m: u8,
        shift: Shift,
        amount: u8,
        sf: bool,
        sub: bool,
        flags: bool,
    },
    AddExtended {
        d: u8,
        n: u8,
        m: u8,
        ext: Extend,
        amount: u8,
        sf: bool,
        sub: bool,
        flags: bool,
    },
    AddCarry {
        d: u8,
        n: u8,
        m: u8,
        sf: bool,
        sub: bool,
        flags: bool,
    },
    LogicImm {
        d: u8,
        n: u8,
        op: LogicOp,
        imm: u64,
        sf: bool,
    },
    LogicShifted {
        d: u8,
        n: u8,
        m: u8,
        op: LogicOp,
        shift: Shift,
        amount: u8,
        invert: bool,
        sf: bool,
    },
    MovWide {
        d: u8,
        op: MovOp,
        imm16: u16,
        shift: u8,
        sf: bool,
    },
    /// ADR / ADRP; `imm` is the signed 21-bit immediate.
    Adr {
        d: u8,
        imm: i32,
        page: bool,
    },
    Bitfield {
        d: u8,
        n: u8,
        op: BitfieldOp,
        immr: u8,
        imms: u8,
        sf: bool,
    },
    Extr {
        d: u8,
        n: u8,
        m: u8,
        lsb: u8,
        sf: bool,
    },
    ShiftVariable {
        d: u8,
        n: u8,
        m: u8,
        shift: Shift,
        sf: bool,
    },
    Unary {
        d: u8,
        n: u8,
        op: UnaryOp,
        sf: bool,
    },
    Div {
        d: u8,
        n: u8,
        m: u8,
        signed: bool,
        sf: bool,
    },
    Mul {
        d: u8,
        n: u8,
        m: u8,
        a: u8,
        op: MulOp,
        sf: bool,
    },
    CondSel {
        d: u8,
        n: u8,
        m: u8,
        cond: u8,
        op: CondSelOp,
        sf: bool,
    },
    /// CCMP/CCMN; `m` is a slot, or the 5-bit immediate when `imm`.
    CondCmp {
        n: u8,
        m: u8,
        imm: bool,
        nzcv: u8,
        cond: u8,
        sub: bool,
        sf: bool,
    },
    Crc32 {
        d: u8,
        n: u8,
        m: u8,
        size: AccessSize,
        castagnoli: bool,
    },

    B {
        offset: i32,
    },
    Bl {
        offset: i32,
    },
    BCond {
        cond: u8,
        offset: i32,
    },
    Cbz {
        t: u8,
        offset: i32,
        nonzero: bool,
        sf: bool,
    },
    Tbz {
        t: u8,
        bit: u8,
        offset: i32,
        nonzero: bool,
    },
    Br {
        n: u8,
    },
    Blr {
        n: u8,
    },
    Ret {
        n: u8,
    },
    Eret,

    Svc {
        imm: u16,
    },
    Hvc {
        imm: u16,
    },
    Smc {
        imm: u16,
    },
    Brk {
        imm: u16,
    },

    Hint(Hint),
    Clrex,
    Barrier,
    Isb,
    MsrImm {
        field: PstateField,
        imm: u8,
    },
    /// MRS; `t` is a slot.
    Mrs {
        t: u8,
        reg: SysRegId,
    },
    /// MSR (register); `t` is a slot.
    Msr {
        t: u8,
        reg: SysRegId,
    },
    /// SYS (cache and TLB maintenance, AT); `t` is a slot.
    Sys {
        t: u8,
        op: SysRegId,
    },

    Load {
        t: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        ext: LoadExt,
        wb: Writeback,
    },
    Store {
        t: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        wb: Writeback,
    },
    LoadRegOffset {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
        size: AccessSize,
        sign: LoadExt,
    },
    StoreRegOffset {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
        size: AccessSize,
    },
    LoadLiteral {
        t: u8,
        offset: i32,
        size: AccessSize,
        ext: LoadExt,
    },
    /// PRFM/PRFUM after the encoding checks: never accesses memory.
    Prefetch,
    LoadPair {
        t: u8,
        t2: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        sign: bool,
        wb: Writeback,
    },
    StorePair {
        t: u8,
        t2: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        wb: Writeback,
    },
    /// LDXR/LDAXR, and LDXP/LDAXP when `pair` (`size` is then the element size).
    LoadExclusive {
        t: u8,
        t2: u8,
        n: u8,
        size: AccessSize,
        pair: bool,
        acquire: bool,
    },
    /// STXR/STLXR/STXP/STLXP; `s` is the status slot.
    StoreExclusive {
        s: u8,
        t: u8,
        t2: u8,
        n: u8,
        size: AccessSize,
        pair: bool,
        release: bool,
    },
    /// LDAR, LDLAR, LDAPR.
    LoadAcquire {
        t: u8,
        n: u8,
        size: AccessSize,
    },
    /// STLR, STLLR.
    StoreRelease {
        t: u8,
        n: u8,
        size: AccessSize,
    },
    /// LDADD..LDUMIN and SWP; `s` is the operand slot, `t` the destination slot.
    Atomic {
        s: u8,
        t: u8,
        n: u8,
        size: AccessSize,
        op: AtomicOp,
    },
    /// CAS, and CASP when `pair` (`size` is then the element size); `s` and
    /// `t` are raw register numbers (`s` is read and written), even for a pair.
    Cas {
        s: u8,
        t: u8,
        n: u8,
        size: AccessSize,
        pair: bool,
    },
}

const _: () = assert!(core::mem::size_of::<Op>() <= 16);

#[inline]
fn bits(i: u32, hi: u32, lo: u32) -> u32 {
    (i >> lo) & ((1 << (hi - lo + 1)) - 1)
}

#[inline]
fn bit(i: u32, n: u32) -> bool {
    (i >> n) & 1 != 0
}

/// Sign-extends the low `width` bits of `v`.
#[inline]
fn sext(v: u32, width: u32) -> i32 {
    let shift = 32 - width;
    // Reinterpreting the bits is the point: sign extension.
    #[allow(clippy::cast_possible_wrap)]
    let s = (v << shift) as i32;
    s >> shift
}

/// Field value of a register number (at most 5 bits).
#[inline]
fn r5(i: u32, lo: u32) -> u8 {
    // Five bits always fit.
    #[allow(clippy::cast_possible_truncation)]
    let r = bits(i, lo + 4, lo) as u8;
    r
}

/// Destination where 31 is XZR.
#[inline]
fn dst(r: u8) -> u8 {
    if r == 31 { reg::SINK } else { r }
}

/// Source or destination where 31 is SP.
#[inline]
fn sp(r: u8) -> u8 {
    if r == 31 { reg::SP } else { r }
}

/// Narrows a field of at most 8 bits.
#[inline]
fn u8f(v: u32) -> u8 {
    // Callers pass fields of at most 8 bits.
    #[allow(clippy::cast_possible_truncation)]
    let b = v as u8;
    b
}

fn size_of(bits: u32) -> AccessSize {
    match bits & 3 {
        0 => AccessSize::Byte,
        1 => AccessSize::Half,
        2 => AccessSize::Word,
        _ => AccessSize::Double,
    }
}

/// Decodes one A64 instruction word.
pub(crate) fn decode(i: u32) -> Op {
    match bits(i, 28, 25) {
        0b1000 | 0b1001 => data_processing_immediate(i),
        0b1010 | 0b1011 => branch_exception_system(i),
        0b0101 | 0b1101 => data_processing_register(i),
        0b0111 | 0b1111 => Op::SimdFp,
        0b0100 | 0b0110 | 0b1100 | 0b1110 => load_store(i),
        _ => Op::Undefined,
    }
}

fn data_processing_immediate(i: u32) -> Op {
    let sf = bit(i, 31);
    let rd = r5(i, 0);
    let rn = r5(i, 5);
    match bits(i, 25, 23) {
        0b000 | 0b001 => Op::Adr {
            d: dst(rd),
            imm: sext((bits(i, 23, 5) << 2) | bits(i, 30, 29), 21),
            page: sf,
        },
        0b010 => {
            let flags = bit(i, 29);
            let imm = bits(i, 21, 10) << if bit(i, 22) { 12 } else { 0 };
            Op::AddImm {
                d: if flags { dst(rd) } else { sp(rd) },
                n: sp(rn),
                imm,
                sf,
                sub: bit(i, 30),
                flags,
            }
        }
        0b100 => {
            let n_bit = bits(i, 22, 22);
            if !sf && n_bit == 1 {
                return Op::Undefined;
            }
            let Some((wmask, _)) = decode_bit_masks(n_bit, bits(i, 15, 10), bits(i, 21, 16), true)
            else {
                return Op::Undefined;
            };
            let op = LogicOp::from_bits(bits(i, 30, 29));
            Op::LogicImm {
                d: if op == LogicOp::Ands { dst(rd) } else { sp(rd) },
                n: rn,
                op,
                imm: if sf { wmask } else { wmask & 0xFFFF_FFFF },
                sf,
            }
        }
        0b101 => {
            let hw = bits(i, 22, 21);
            let op = match bits(i, 30, 29) {
                0 => MovOp::Movn,
                2 => MovOp::Movz,
                3 => MovOp::Movk,
                _ => return Op::Undefined,
            };
            if !sf && hw >= 2 {
                return Op::Undefined;
            }
            // imm16 is a 16-bit field.
            #[allow(clippy::cast_possible_truncation)]
            let imm16 = bits(i, 20, 5) as u16;
            Op::MovWide {
                d: dst(rd),
                op,
                imm16,
                shift: u8f(hw * 16),
                sf,
            }
        }
        0b110 => {
            let op = match bits(i, 30, 29) {
                0 => BitfieldOp::Sbfm,
                1 => BitfieldOp::Bfm,
                2 => BitfieldOp::Ubfm,
                _ => return Op::Undefined,
            };
            let (immr, imms) = (bits(i, 21, 16), bits(i, 15, 10));
            if bit(i, 22) != sf || (!sf && (immr >= 32 || imms >= 32)) {
                return Op::Undefined;
            }
            Op::Bitfield {
                d: dst(rd),
                n: rn,
                op,
                immr: u8f(immr),
                imms: u8f(imms),
                sf,
            }
        }
        0b111 => {
            let imms = bits(i, 15, 10);
            if bits(i, 30, 29) != 0 || bit(i, 21) || bit(i, 22) != sf || (!sf && imms >= 32) {
                return Op::Undefined;
            }
            Op::Extr {
                d: dst(rd),
                n: rn,
                m: r5(i, 16),
                lsb: u8f(imms),
                sf,
            }
        }
        _ => Op::Undefined,
    }
}

fn branch_exception_system(i: u32) -> Op {
    if bits(i, 30, 26) == 0b00101 {
        let offset = sext(bits(i, 25, 0), 26) << 2;
        return if bit(i, 31) {
            Op::Bl { offset }
        } else {
            Op::B { offset }
        };
    }
    match bits(i, 31, 29) {
        0b010 => {
            if bits(i, 31, 24) != 0x54 || bit(i, 4) {
                return Op::Undefined;
            }
            Op::BCond {
                cond: u8f(bits(i, 3, 0)),
                offset: sext(bits(i, 23, 5), 19) << 2,
            }
        }
        0b001 | 0b101 => match bits(i, 30, 25) {
            0b011010 => Op::Cbz {
                t: r5(i, 0),
                offset: sext(bits(i, 23, 5), 19) << 2,
                nonzero: bit(i, 24),
                sf: bit(i, 31),
            },
            0b011011 => Op::Tbz {
                t: r5(i, 0),
                bit: u8f((bits(i, 31, 31) << 5) | bits(i, 23, 19)),
                offset: sext(bits(i, 18, 5), 14) << 2,
                nonzero: bit(i, 24),
            },
            _ => Op::Undefined,
        },
        0b110 => {
            if bit(i, 25) {
                branch_register(i)
            } else if bits(i, 25, 24) == 0 {
                exception_generation(i)
            } else if bits(i, 25, 22) == 0b0100 {
                system(i)
            } else {
                Op::Undefined
            }
        }
        _ => Op::Undefined,
    }
}

fn branch_register(i: u32) -> Op {
    if bits(i, 20, 16) != 0x1F || bits(i, 15, 10) != 0 || bits(i, 4, 0) != 0 {
        return Op::Undefined;
    }
    let n = r5(i, 5);
    match bits(i, 24, 21) {
        0b0000 => Op::Br { n },
        0b0001 => Op::Blr { n },
        0b0010 => Op::Ret { n },
        0b0100 if n == 31 => Op::Eret,
        _ => Op::Undefined,
    }
}

fn exception_generation(i: u32) -> Op {
    if bits(i, 4, 2) != 0 {
        return Op::Undefined;
    }
    // imm16 is a 16-bit field.
    #[allow(clippy::cast_possible_truncation)]
    let imm = bits(i, 20, 5) as u16;
    match (bits(i, 23, 21), bits(i, 1, 0)) {
        (0b000, 0b01) => Op::Svc { imm },
        (0b000, 0b10) => Op::Hvc { imm },
        (0b000, 0b11) => Op::Smc { imm },
        (0b001, 0b00) => Op::Brk { imm },
        // HLT (no halting debug) and DCPS (not in Debug state) are UNDEFINED.
        _ => Op::Undefined,
    }
}

fn system(i: u32) -> Op {
    let l = bit(i, 21);
    let op0 = bits(i, 20, 19);
    let op1 = bits(i, 18, 16);
    let crn = bits(i, 15, 12);
    let crm = bits(i, 11, 8);
    let op2 = bits(i, 7, 5);
    let rt = r5(i, 0);
    let id = SysRegId::from_instruction(i);
    match (op0, l) {
        (0, false) => {
            if rt != 31 {
                return Op::Undefined;
            }
            match (crn, op1) {
                (0b0010, 0b011) => Op::Hint(match (crm << 3) | op2 {
                    2 => Hint::Wfe,
                    3 => Hint::Wfi,
                    // YIELD, SEV, SEVL and the unallocated hints are NOPs: a
                    // single PE with no event register to model has nothing to do.
                    _ => Hint::Nop,
                }),
                (0b0011, 0b011) => match op2 {
                    0b010 => Op::Clrex,
                    0b100 | 0b101 => Op::Barrier,
                    0b110 => Op::Isb,
                    _ => Op::Undefined,
                },
                (0b0100, _) => {
                    let field = match (op1, op2) {
                        (0b000, 0b101) => PstateField::SpSel,
                        (0b011, 0b110) => PstateField::DaifSet,
                        (0b011, 0b111) => PstateField::DaifClr,
                        _ => return Op::Undefined,
                    };
                    Op::MsrImm {
                        field,
                        imm: u8f(crm),
                    }
                }
                _ => Op::Undefined,
            }
        }
        (1, false) => Op::Sys { t: rt, op: id },
        (2 | 3, true) => Op::Mrs {
            t: dst(rt),
            reg: id,
        },
        (2 | 3, false) => Op::Msr { t: rt, reg: id },
        _ => Op::Undefined,
    }
}

fn data_processing_register(i: u32) -> Op {
    let sf = bit(i, 31);
    let op0 = bit(i, 30);
    let s = bit(i, 29);
    let rd = r5(i, 0);
    let rn = r5(i, 5);
    let rm = r5(i, 16);
    if !bit(i, 28) {
        let imm6 = bits(i, 15, 10);
        if !bit(i, 24) {
            if !sf && imm6 >= 32 {
                return Op::Undefined;
            }
            return Op::LogicShifted {
                d: dst(rd),
                n: rn,
                m: rm,
                op: LogicOp::from_bits(bits(i, 30, 29)),
                shift: Shift::from_bits(bits(i, 23, 22)),
                amount: u8f(imm6),
                invert: bit(i, 21),
                sf,
            };
        }
        if !bit(i, 21) {
            let shift = bits(i, 23, 22);
            if shift == 3 || (!sf && imm6 >= 32) {
                return Op::Undefined;
            }
            return Op::AddShifted {
                d: dst(rd),
                n: rn,
                m: rm,
                shift: Shift::from_bits(shift),
                amount: u8f(imm6),
                sf,
                sub: op0,
                flags: s,
            };
        }
        let imm3 = bits(i, 12, 10);
        if bits(i, 23, 22) != 0 || imm3 > 4 {
            return Op::Undefined;
        }
        return Op::AddExtended {
            d: if s { dst(rd) } else { sp(rd) },
            n: sp(rn),
            m: rm,
            ext: Extend(u8f(bits(i, 15, 13))),
            amount: u8f(imm3),
            sf,
            sub: op0,
            flags: s,
        };
    }
    match bits(i, 24, 21) {
        0b0000 => {
            if bits(i, 15, 10) != 0 {
                return Op::Undefined;
            }
            Op::AddCarry {
                d: dst(rd),
                n: rn,
                m: rm,
                sf,
                sub: op0,
                flags: s,
            }
        }
        0b0010 => {
            if !s || bit(i, 10) || bit(i, 4) {
                return Op::Undefined;
            }
            Op::CondCmp {
                n: rn,
                m: rm,
                imm: bit(i, 11),
                nzcv: u8f(bits(i, 3, 0)),
                cond: u8f(bits(i, 15, 12)),
                sub: op0,
                sf,
            }
        }
        0b0100 => {
            if s || bit(i, 11) {
                return Op::Undefined;
            }
            let op = match (op0, bit(i, 10)) {
                (false, false) => CondSelOp::Csel,
                (false, true) => CondSelOp::Csinc,
                (true, false) => CondSelOp::Csinv,
                (true, true) => CondSelOp::Csneg,
            };
            Op::CondSel {
                d: dst(rd),
                n: rn,
                m: rm,
                cond: u8f(bits(i, 15, 12)),
                op,
                sf,
            }
        }
        0b0110 if !s => {
            if op0 {
                data_processing_1source(i, sf, rd, rn)
            } else {
                data_processing_2source(i, sf, rd, rn, rm)
            }
        }
        0b1000..=0b1111 => data_processing_3source(i, sf, rd, rn, rm),
        _ => Op::Undefined,
    }
}

fn data_processing_1source(i: u32, sf: bool, rd: u8, rn: u8) -> Op {
    if bits(i, 20, 16) != 0 {
        return Op::Undefined;
    }
    let op = match bits(i, 15, 10) {
        0 => UnaryOp::Rbit,
        1 => UnaryOp::Rev16,
        2 if sf => UnaryOp::Rev32,
        2 => UnaryOp::Rev,
        3 if sf => UnaryOp::Rev,
        4 => UnaryOp::Clz,
        5 => UnaryOp::Cls,
        _ => return Op::Undefined,
    };
    Op::Unary {
        d: dst(rd),
        n: rn,
        op,
        sf,
    }
}

fn data_processing_2source(i: u32, sf: bool, rd: u8, rn: u8, rm: u8) -> Op {
    let (d, n, m) = (dst(rd), rn, rm);
    match bits(i, 15, 10) {
        0b000010 => Op::Div {
            d,
            n,
            m,
            signed: false,
            sf,
        },
        0b000011 => Op::Div {
            d,
            n,
            m,
            signed: true,
            sf,
        },
        0b001000 => Op::ShiftVariable {
            d,
            n,
            m,
            shift: Shift::Lsl,
            sf,
        },
        0b001001 => Op::ShiftVariable {
            d,
            n,
            m,
            shift: Shift::Lsr,
            sf,
        },
        0b001010 => Op::ShiftVariable {
            d,
            n,
            m,
            shift: Shift::Asr,
            sf,
        },
        0b001011 => Op::ShiftVariable {
            d,
            n,
            m,
            shift: Shift::Ror,
            sf,
        },
        0b010000..=0b010111 => {
            let size = size_of(bits(i, 11, 10));
            if sf != (size == AccessSize::Double) {
                return Op::Undefined;
            }
            Op::Crc32 {
                d,
                n,
                m,
                size,
                castagnoli: bit(i, 12),
            }
        }
        _ => Op::Undefined,
    }
}

fn data_processing_3source(i: u32, sf: bool, rd: u8, rn: u8, rm: u8) -> Op {
    if bits(i, 30, 29) != 0 {
        return Op::Undefined;
    }
    let op = match (bits(i, 23, 21), bit(i, 15)) {
        (0b000, false) => MulOp::Madd,
        (0b000, true) => MulOp::Msub,
        (0b001, false) => MulOp::Smaddl,
        (0b001, true) => MulOp::Smsubl,
        (0b010, false) => MulOp::Smulh,
        (0b101, false) => MulOp::Umaddl,
        (0b101, true) => MulOp::Umsubl,
        (0b110, false) => MulOp::Umulh,
        _ => return Op::Undefined,
    };
    if !sf && op != MulOp::Madd && op != MulOp::Msub {
        return Op::Undefined;
    }
    Op::Mul {
        d: dst(rd),
        n: rn,
        m: rm,
        a: r5(i, 10),
        op,
        sf,
    }
}

fn load_store(i: u32) -> Op {
    if bit(i, 26) {
        return Op::SimdFp;
    }
    match bits(i, 29, 27) {
        0b001 if !bit(i, 24) => exclusive(i),
        0b011 if !bit(i, 24) => literal(i),
        0b101 => pair(i),
        0b111 => register(i),
        _ => Op::Undefined,
    }
}

fn literal(i: u32) -> Op {
    let offset = sext(bits(i, 23, 5), 19) << 2;
    let t = dst(r5(i, 0));
    let (size, ext) = match bits(i, 31, 30) {
        0b00 => (AccessSize::Word, LoadExt::Zero),
        0b01 => (AccessSize::Double, LoadExt::Zero),
        0b10 => (AccessSize::Word, LoadExt::Sign64),
        _ => return Op::Prefetch,
    };
    Op::LoadLiteral {
        t,
        offset,
        size,
        ext,
    }
}

fn pair(i: u32) -> Op {
    let load = bit(i, 22);
    let (size, sign) = match bits(i, 31, 30) {
        0b00 => (AccessSize::Word, false),
        0b01 if load && bits(i, 24, 23) != 0 => (AccessSize::Word, true),
        0b10 => (AccessSize::Double, false),
        _ => return Op::Undefined,
    };
    let wb = match bits(i, 24, 23) {
        0b01 => Writeback::Post,
        0b11 => Writeback::Pre,
        _ => Writeback::None,
    };
    let scale = if size == AccessSize::Double { 3 } else { 2 };
    let offset = sext(bits(i, 21, 15), 7) << scale;
    let (rt, rt2, n) = (r5(i, 0), r5(i, 10), sp(r5(i, 5)));
    if load {
        Op::LoadPair {
            t: dst(rt),
            t2: dst(rt2),
            n,
            offset,
            size,
            sign,
            wb,
        }
    } else {
        Op::StorePair {
            t: rt,
            t2: rt2,
            n,
            offset,
            size,
            wb,
        }
    }
}

/// What a (size, opc) pair of the single-register classes does.
enum Access {
    Store,
    Load(LoadExt),
    Prefetch,
}

fn access_kind(size: u32, opc: u32, prefetch_allowed: bool) -> Option<Access> {
    match opc {
        0b00 => Some(Access::Store),
        0b01 => Some(Access::Load(LoadExt::Zero)),
        0b10 if size == 3 => prefetch_allowed.then_some(Access::Prefetch),
        0b10 => Some(Access::Load(LoadExt::Sign64)),
        _ if size <= 1 => Some(Access::Load(LoadExt::Sign32)),
        _ => None,
    }
}

fn register(i: u32) -> Op {
    let size_bits = bits(i, 31, 30);
    let size = size_of(size_bits);
    let opc = bits(i, 23, 22);
    let rt = r5(i, 0);
    let n = sp(r5(i, 5));
    let single = |offset: i32, wb: Writeback, prefetch_allowed: bool| -> Op {
        match access_kind(size_bits, opc, prefetch_allowed) {
            Some(Access::Store) => Op::Store {
                t: rt,
                n,
                offset,
                size,
                wb,
            },
            Some(Access::Load(ext)) => Op::Load {
                t: dst(rt),
                n,
                offset,
                size,
                ext,
                wb,
            },
            Some(Access::Prefetch) => Op::Prefetch,
            None => Op::Undefined,
        }
    };
    if bit(i, 24) {
        // imm12 scaled by the size: at most 4095 << 3.
        #[allow(clippy::cast_possible_wrap)]
        let offset = (bits(i, 21, 10) << size_bits) as i32;
        return single(offset, Writeback::None, true);
    }
    if !bit(i, 21) {
        let offset = sext(bits(i, 20, 12), 9);
        return match bits(i, 11, 10) {
            0b00 => single(offset, Writeback::None, true),
            0b01 => single(offset, Writeback::Post, false),
            // LDTR/STTR: with the stage-1 MMU off there are no permissions to
            // check, so the unprivileged forms behave as the plain ones.
            0b10 => single(offset, Writeback::None, false),
            _ => single(offset, Writeback::Pre, false),
        };
    }
    match bits(i, 11, 10) {
        0b10 => {
            let option = bits(i, 15, 13);
            if option & 0b010 == 0 {
                return Op::Undefined;
            }
            let ext = Extend(u8f(option));
            let shift = if bit(i, 12) { u8f(size_bits) } else { 0 };
            let m = r5(i, 16);
            match access_kind(size_bits, opc, true) {
                Some(Access::Store) => Op::StoreRegOffset {
                    t: rt,
                    n,
                    m,
                    ext,
                    shift,
                    size,
                },
                Some(Access::Load(sign)) => Op::LoadRegOffset {
                    t: dst(rt),
                    n,
                    m,
                    ext,
                    shift,
                    size,
                    sign,
                },
                Some(Access::Prefetch) => Op::Prefetch,
                None => Op::Undefined,
            }
        }
        0b00 => atomic(i, size),
        _ => Op::Undefined,
    }
}

fn atomic(i: u32, size: AccessSize) -> Op {
    let rs = r5(i, 16);
    let rt = r5(i, 0);
    let n = sp(r5(i, 5));
    let op = match (bit(i, 15), bits(i, 14, 12)) {
        (false, 0b000) => AtomicOp::Add,
        (false, 0b001) => AtomicOp::Clear,
        (false, 0b010) => AtomicOp::Eor,
        (false, 0b011) => AtomicOp::Set,
        (false, 0b100) => AtomicOp::SignedMax,
        (false, 0b101) => AtomicOp::SignedMin,
        (false, 0b110) => AtomicOp::UnsignedMax,
        (false, 0b111) => AtomicOp::UnsignedMin,
        (true, 0b000) => AtomicOp::Swap,
        (true, 0b100) if bit(i, 23) && !bit(i, 22) && rs == 31 => {
            return Op::LoadAcquire {
                t: dst(rt),
                n,
                size,
            };
        }
        _ => return Op::Undefined,
    };
    Op::Atomic {
        s: rs,
        t: dst(rt),
        n,
        size,
        op,
    }
}

/// Load/store exclusive, load-acquire/store-release and compare-and-swap. The
/// should-be-one fields (Rs, Rt2 where unused) are not checked: behaving as if
/// they were ones is one of the permitted CONSTRAINED UNPREDICTABLE outcomes.
fn exclusive(i: u32) -> Op {
    let size_bits = bits(i, 31, 30);
    let size = size_of(size_bits);
    let load = bit(i, 22);
    let o0 = bit(i, 15);
    let rs = r5(i, 16);
    let rt = r5(i, 0);
    let rt2 = r5(i, 10);
    let n = sp(r5(i, 5));
    match (bit(i, 23), bit(i, 21)) {
        // Sizes 0 and 1 of the pair class are CASP (W and X pairs).
        (false, true) if size_bits < 2 => {
            if rs & 1 != 0 || rt & 1 != 0 {
                return Op::Undefined;
            }
            Op::Cas {
                s: rs,
                t: rt,
                n,
                size: if bit(i, 30) {
                    AccessSize::Double
                } else {
                    AccessSize::Word
                },
                pair: true,
            }
        }
        (false, pair) => {
            if load {
                Op::LoadExclusive {
                    t: dst(rt),
                    t2: if pair { dst(rt2) } else { reg::SINK },
                    n,
                    size,
                    pair,
                    acquire: o0,
                }
            } else {
                Op::StoreExclusive {
                    s: dst(rs),
                    t: rt,
                    t2: if pair { rt2 } else { reg::ZR },
                    n,
                    size,
                    pair,
                    release: o0,
                }
            }
        }
        (true, false) => {
            if load {
                Op::LoadAcquire {
                    t: dst(rt),
                    n,
                    size,
                }
            } else {
                Op::StoreRelease { t: rt, n, size }
            }
        }
        (true, true) => Op::Cas {
            s: rs,
            t: rt,
            n,
            size,
            pair: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_few_known_words() {
        // add x0, x1, #1
        assert_eq!(
            decode(0x9100_0420),
            Op::AddImm {
                d: 0,
                n: 1,
                imm: 1,
                sf: true,
                sub: false,
                flags: false
            }
        );
        // add sp, sp, #0x10 uses SP on both sides
        assert_eq!(
            decode(0x9100_43FF),
            Op::AddImm {
                d: reg::SP,
                n: reg::SP,
                imm: 0x10,
                sf: true,
                sub: false,
                flags: false
            }
        );
        // cmp x0, #0 (subs xzr, x0, #0) writes the sink
        assert_eq!(
            decode(0xF100_001F),
            Op::AddImm {
                d: reg::SINK,
                n: 0,
                imm: 0,
                sf: true,
                sub: true,
                flags: true
            }
        );
        // ret
        assert_eq!(decode(0xD65F_03C0), Op::Ret { n: 30 });
        // eret
        assert_eq!(decode(0xD69F_03E0), Op::Eret);
        // nop, wfi
        assert_eq!(decode(0xD503_201F), Op::Hint(Hint::Nop));
        assert_eq!(decode(0xD503_207F), Op::Hint(Hint::Wfi));
        // hvc #0x1234
        assert_eq!(decode(0xD402_4682), Op::Hvc { imm: 0x1234 });
        // ldr x1, [x2, #8]
        assert_eq!(
            decode(0xF940_0441),
            Op::Load {
                t: 1,
                n: 2,
                offset: 8,
                size: AccessSize::Double,
                ext: LoadExt::Zero,
                wb: Writeback::None
            }
        );
        // stp x29, x30, [sp, #-16]!
        assert_eq!(
            decode(0xA9BF_7BFD),
            Op::StorePair {
                t: 29,
                t2: 30,
                n: reg::SP,
                offset: -16,
                size: AccessSize::Double,
                wb: Writeback::Pre
            }
        );
        // udf #0 and an FP add
        assert_eq!(decode(0), Op::Undefined);
        assert_eq!(decode(0x1E22_2820), Op::SimdFp);
    }

    #[test]
    fn reserved_fields_are_undefined() {
        // add w0, w1, w2, lsl #32: imm6 >= 32 with sf = 0
        assert_eq!(decode(0x0B02_8020), Op::Undefined);
        // add x0, x1, x2 with shift = 11
        assert_eq!(decode(0x8BC2_0020), Op::Undefined);
        // ldr x0, [x1, w2, uxtb]: option<1> = 0
        assert_eq!(decode(0xF862_0820), Op::Undefined);
        // casp with odd Rs
        assert_eq!(decode(0x4821_7C02), Op::Undefined);
        // b.cond with bit 4 set (BC.cond, not implemented)
        assert_eq!(decode(0x5400_0010), Op::Undefined);
    }
}
