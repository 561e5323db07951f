//! Data processing -- register: logical and add/subtract (shifted and
//! extended), with carry, conditional compare and select, and the 1-, 2- and
//! 3-source classes.

use apf_abi::esr::AccessSize;

use super::fields::{bit, bits, dst, r5, size_of, sp, u8f};
use super::{CondSelOp, Extend, LogicOp, MulOp, Op, Shift, UnaryOp};

pub(super) fn data_processing_register(i: u32) -> Op {
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
