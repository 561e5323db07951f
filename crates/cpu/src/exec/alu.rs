//! Data processing, immediate and register: the arithmetic as functions of
//! values, and the two operations that also set flags.

use apf_abi::esr::AccessSize;

/// All ones in the operation's width (W or X registers).
#[inline]
pub(super) fn mask(sf: bool) -> u64 {
    if sf { u64::MAX } else { 0xFFFF_FFFF }
}

/// Sign-extends the low `bits` bits.
#[inline]
pub(super) fn sext(v: u64, bits: u32) -> u64 {
    let s = 64 - bits;
    (((v << s) as i64) >> s) as u64
}

use crate::Cpu;
use crate::decode::{
    BitfieldOp, CondSelOp, Extend, LogicOp, MovOp, MulOp, Shift, UnaryOp, decode_bit_masks,
};
use crate::pstate::bits;

/// AddWithCarry: the result (truncated to the width) and NZCV in SPSR positions.
/// Inlined: CMP and friends are a tenth of typical code, and a call costs as
/// much as the flag arithmetic.
#[inline(always)]
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
#[inline(always)]
pub(super) fn add_or_sub(x: u64, y: u64, sub: bool, sf: bool) -> (u64, u64) {
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
pub(super) fn shifted(v: u64, shift: Shift, amount: u32, sf: bool) -> u64 {
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

/// An extended register: `option<1:0>` is the width (8 << option bits),
/// `option<2>` signedness. Branch-free, as the extend differs from one
/// instruction to the next.
#[inline]
pub(super) fn extended(v: u64, ext: Extend, amount: u8) -> u64 {
    let unused = 64 - (8u32 << (ext.0 & 3));
    let top = v << unused;
    let x = if ext.0 & 4 != 0 {
        ((top as i64) >> unused) as u64
    } else {
        top >> unused
    };
    x << amount
}

/// SBFM, BFM, UBFM. The shifts and extends (UBFM/SBFM) are inlined: they
/// are common; BFM, with its mask decode, is not.
#[inline(always)]
pub(super) fn bitfield(op: BitfieldOp, src: u64, dst: u64, immr: u32, imms: u32, sf: bool) -> u64 {
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
        BitfieldOp::Bfm => bitfield_move(src, dst, immr, imms, sf),
    };
    r & mask(sf)
}

/// BFM: the rotated field of `src` inserted into `dst`.
#[inline(never)]
fn bitfield_move(src: u64, dst: u64, immr: u32, imms: u32, sf: bool) -> u64 {
    let (wmask, tmask) = decode_bit_masks(u32::from(sf), imms, immr, false).unwrap_or((0, 0));
    let rotated = if sf {
        src.rotate_right(immr)
    } else {
        u64::from((src as u32).rotate_right(immr))
    };
    let bot = (dst & !wmask) | (rotated & wmask);
    (dst & !tmask) | (bot & tmask)
}

pub(super) fn unary(op: UnaryOp, v: u64, sf: bool) -> u64 {
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

pub(super) fn crc32(acc: u64, value: u64, size: AccessSize, castagnoli: bool) -> u64 {
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

/// MOVZ, MOVN, MOVK: `old` is the destination's value (MOVK keeps the rest of it).
#[inline(always)]
pub(super) fn mov_wide(op: MovOp, old: u64, imm16: u16, shift: u8, sf: bool) -> u64 {
    let imm = u64::from(imm16) << shift;
    match op {
        MovOp::Movz => imm,
        MovOp::Movn => !imm & mask(sf),
        MovOp::Movk => ((old & !(0xFFFFu64 << shift)) | imm) & mask(sf),
    }
}

/// EXTR: the width of bits of `n:m` starting at `lsb`.
#[inline(always)]
pub(super) fn extract(n: u64, m: u64, lsb: u32, sf: bool) -> u64 {
    if sf {
        if lsb == 0 {
            m
        } else {
            (m >> lsb) | (n << (64 - lsb))
        }
    } else {
        let concat = (n << 32) | (m & 0xFFFF_FFFF);
        (concat >> lsb) & 0xFFFF_FFFF
    }
}

/// UDIV and SDIV: division by zero gives zero, and the overflowing signed
/// division wraps.
#[inline(always)]
pub(super) fn divide(x: u64, y: u64, signed: bool, sf: bool) -> u64 {
    match (signed, sf) {
        (_, _) if y & mask(sf) == 0 => 0,
        (false, true) => x / y,
        (false, false) => u64::from(x as u32 / y as u32),
        (true, true) => (x as i64).wrapping_div(y as i64) as u64,
        (true, false) => u64::from((x as i32).wrapping_div(y as i32) as u32),
    }
}

/// The multiply families; `acc` is Ra (zero for the high-half forms).
#[inline(always)]
pub(super) fn multiply(op: MulOp, x: u64, y: u64, acc: u64, sf: bool) -> u64 {
    let wide = |signed: bool| -> u64 {
        if signed {
            i64::from(x as i32).wrapping_mul(i64::from(y as i32)) as u64
        } else {
            (x & 0xFFFF_FFFF).wrapping_mul(y & 0xFFFF_FFFF)
        }
    };
    match op {
        MulOp::Madd => acc.wrapping_add(x.wrapping_mul(y)) & mask(sf),
        MulOp::Msub => acc.wrapping_sub(x.wrapping_mul(y)) & mask(sf),
        MulOp::Smaddl => acc.wrapping_add(wide(true)),
        MulOp::Smsubl => acc.wrapping_sub(wide(true)),
        MulOp::Umaddl => acc.wrapping_add(wide(false)),
        MulOp::Umsubl => acc.wrapping_sub(wide(false)),
        MulOp::Smulh => ((i128::from(x as i64) * i128::from(y as i64)) >> 64) as u64,
        MulOp::Umulh => ((u128::from(x) * u128::from(y)) >> 64) as u64,
    }
}

/// What CSEL, CSINC, CSINV and CSNEG make of Rm when the condition fails.
#[inline(always)]
pub(super) fn select_else(op: CondSelOp, y: u64) -> u64 {
    match op {
        CondSelOp::Csel => y,
        CondSelOp::Csinc => y.wrapping_add(1),
        CondSelOp::Csinv => !y,
        CondSelOp::Csneg => y.wrapping_neg(),
    }
}

impl Cpu {
    /// ADC, ADCS, SBC, SBCS.
    #[inline(always)]
    pub(super) fn add_carry(&mut self, d: u8, n: u8, m: u8, sf: bool, sub: bool, flags: bool) {
        let y = if sub { !self.r(m) } else { self.r(m) };
        let carry = self.pstate.nzcv & bits::C != 0;
        let (r, f) = add_with_carry(self.r(n), y, carry, sf);
        if flags {
            self.pstate.nzcv = f;
        }
        self.w(d, r);
    }

    #[inline(always)]
    pub(super) fn logic(&mut self, d: u8, x: u64, y: u64, op: LogicOp, sf: bool) {
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

    #[inline(always)]
    pub(super) fn add_sub(&mut self, d: u8, x: u64, y: u64, sf: bool, sub: bool, flags: bool) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extends_take_width_and_sign_from_the_option() {
        let v = 0x8000_8081_8283_8485u64;
        let cases = [
            (0, 0x85),
            (1, 0x8485),
            (2, 0x8283_8485),
            (3, v),
            (4, 0xFFFF_FFFF_FFFF_FF85),
            (5, 0xFFFF_FFFF_FFFF_8485),
            (6, 0xFFFF_FFFF_8283_8485),
            (7, v),
        ];
        for (option, want) in cases {
            assert_eq!(extended(v, Extend(option), 0), want, "option {option}");
            assert_eq!(extended(v, Extend(option), 2), want << 2, "option {option}");
        }
        assert_eq!(extended(0x7F, Extend(4), 0), 0x7F, "positive SXTB");
    }
}
