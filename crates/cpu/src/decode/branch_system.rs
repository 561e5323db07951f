//! Branches, exception generating and system instructions (hints, barriers,
//! MSR immediate, SYS and MRS/MSR).

use super::fields::{bit, bits, dst, r5, sext, u8f};
use super::{Hint, Op, PstateField};
use crate::bus::SysRegId;

pub(super) fn branch_exception_system(i: u32) -> Op {
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
