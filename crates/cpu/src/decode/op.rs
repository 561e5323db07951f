//! The decoded form of an instruction: [`Op`] and its operand types.

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
    pub(super) fn from_bits(b: u32) -> Shift {
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
    pub(super) fn from_bits(b: u32) -> LogicOp {
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

    // Forms only blocks hold (see `cache::specialise`): common cases of the
    // ops above with the choices the generic form makes per execution taken
    // once, when the block is built.
    /// ADD/SUB (immediate), X, no flags: `d = n + imm` (SUB as the negated imm).
    AddX {
        d: u8,
        n: u8,
        imm: u64,
    },
    /// ADD/SUB (immediate), W, no flags.
    AddW {
        d: u8,
        n: u8,
        imm: u32,
    },
    /// SUBS (immediate), W: CMP.
    SubsImmW {
        d: u8,
        n: u8,
        imm: u32,
    },
    /// SUBS (shifted register), W, no shift: CMP.
    SubsRegW {
        d: u8,
        n: u8,
        m: u8,
    },
    /// ADD (shifted register), W, no flags, no shift.
    AddRegW {
        d: u8,
        n: u8,
        m: u8,
    },
    /// EOR (shifted register), W, no shift.
    EorRegW {
        d: u8,
        n: u8,
        m: u8,
    },
    /// AND (immediate) of either width, no flags; `imm` within the width.
    AndImm {
        d: u8,
        n: u8,
        imm: u64,
    },
    /// UBFM with imms >= immr (LSR, UBFX): `d = (n >> shift) & mask`.
    Ubfx {
        d: u8,
        n: u8,
        shift: u8,
        mask: u64,
    },
    /// UBFM with imms < immr (LSL, UBFIZ): `d = (n & mask) << shift`.
    Ubfiz {
        d: u8,
        n: u8,
        shift: u8,
        mask: u64,
    },
    /// ORR Xd, XZR, Xm (MOV register).
    MovX {
        d: u8,
        m: u8,
    },
    /// ORR Wd, WZR, Wm (MOV register).
    MovW {
        d: u8,
        m: u8,
    },
    /// LDR/LDUR (immediate) of 8 bytes, no writeback, not LDTR: the generic
    /// `Load` with its size, extension and writeback taken as constants where
    /// it runs (no size dispatch on the memory side, a constant alignment mask).
    LoadX {
        t: u8,
        n: u8,
        offset: i32,
    },
    /// As [`Op::LoadX`], 4 bytes zero-extended (LDR Wt).
    LoadW {
        t: u8,
        n: u8,
        offset: i32,
    },
    /// As [`Op::LoadX`], 2 bytes zero-extended (LDRH).
    LoadH {
        t: u8,
        n: u8,
        offset: i32,
    },
    /// As [`Op::LoadX`], 1 byte zero-extended (LDRB).
    LoadB {
        t: u8,
        n: u8,
        offset: i32,
    },
    /// STR/STUR (immediate) of 8 bytes, no writeback, not STTR.
    StoreX {
        t: u8,
        n: u8,
        offset: i32,
    },
    /// As [`Op::StoreX`], 4 bytes (STR Wt).
    StoreW {
        t: u8,
        n: u8,
        offset: i32,
    },
    /// As [`Op::StoreX`], 2 bytes (STRH).
    StoreH {
        t: u8,
        n: u8,
        offset: i32,
    },
    /// As [`Op::StoreX`], 1 byte (STRB).
    StoreB {
        t: u8,
        n: u8,
        offset: i32,
    },
    /// LDRSH Wt (immediate), no writeback: [`Op::LoadX`]'s form for the
    /// sign-extending halfword load to a W register.
    LoadSH {
        t: u8,
        n: u8,
        offset: i32,
    },
    /// LDR Xt (register): the generic `LoadRegOffset` with its size and extension
    /// taken as constants where it runs, as [`Op::LoadX`].
    LoadRegX {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
    },
    /// As [`Op::LoadRegX`], 4 bytes zero-extended (LDR Wt).
    LoadRegW {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
    },
    /// As [`Op::LoadRegX`], 2 bytes zero-extended (LDRH).
    LoadRegH {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
    },
    /// As [`Op::LoadRegX`], 1 byte zero-extended (LDRB).
    LoadRegB {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
    },
    /// As [`Op::LoadRegX`], 2 bytes sign-extended to W (LDRSH Wt).
    LoadRegSH {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
    },
    /// STR Xt (register): the generic `StoreRegOffset` with its size taken as a
    /// constant where it runs.
    StoreRegX {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
    },
    /// As [`Op::StoreRegX`], 4 bytes (STR Wt).
    StoreRegW {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
    },
    /// As [`Op::StoreRegX`], 2 bytes (STRH).
    StoreRegH {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
    },
    /// As [`Op::StoreRegX`], 1 byte (STRB).
    StoreRegB {
        t: u8,
        n: u8,
        m: u8,
        ext: Extend,
        shift: u8,
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

    /// LDR/LDUR (immediate); `unprivileged` for LDTR*.
    Load {
        t: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        ext: LoadExt,
        wb: Writeback,
        unprivileged: bool,
    },
    /// STR/STUR (immediate); `unprivileged` for STTR*.
    Store {
        t: u8,
        n: u8,
        offset: i32,
        size: AccessSize,
        wb: Writeback,
        unprivileged: bool,
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

const _: () = assert!(size_of::<Op>() <= 16);
