//! Instruction decode: a 32-bit A64 word becomes an [`Op`], the form the decode
//! cache stores and the executor runs. Every encoding this CPU does not
//! implement, and every reserved field value, decodes to [`Op::Undefined`].
//!
//! Register operands are *slots* of the register file (see [`reg`]), resolved
//! here once, so the executor never asks whether register 31 means SP or XZR.
//!
//! One module per top-level encoding group of the Arm ARM (C4.1), sharing the
//! field extractors below.

mod bitmask;
mod branch_system;
mod dp_immediate;
mod dp_register;
mod fields;
mod load_store;
mod op;

pub(crate) use bitmask::decode_bit_masks;
pub(crate) use op::{
    BitfieldOp, CondSelOp, Extend, Hint, LoadExt, LogicOp, MovOp, MulOp, Op, PstateField, Shift,
    UnaryOp, Writeback, reg,
};

use fields::bits;

/// Decodes one A64 instruction word.
pub(crate) fn decode(i: u32) -> Op {
    match bits(i, 28, 25) {
        0b1000 | 0b1001 => dp_immediate::data_processing_immediate(i),
        0b1010 | 0b1011 => branch_system::branch_exception_system(i),
        0b0101 | 0b1101 => dp_register::data_processing_register(i),
        0b0111 | 0b1111 => Op::SimdFp,
        0b0100 | 0b0110 | 0b1100 | 0b1110 => load_store::load_store(i),
        _ => Op::Undefined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apf_abi::esr::AccessSize;

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
                wb: Writeback::None,
                unprivileged: false
            }
        );
        // ldtrb w3, [x4, #-1]
        assert_eq!(
            decode(0x385F_F883),
            Op::Load {
                t: 3,
                n: 4,
                offset: -1,
                size: AccessSize::Byte,
                ext: LoadExt::Zero,
                wb: Writeback::None,
                unprivileged: true
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
