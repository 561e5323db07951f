//! Data processing -- immediate: PC-relative addressing, add/subtract,
//! logical, move wide, bitfield and extract.

use super::fields::{bit, bits, dst, r5, sext, sp, u8f};
use super::{BitfieldOp, LogicOp, MovOp, Op, decode_bit_masks};

pub(super) fn data_processing_immediate(i: u32) -> Op {
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
