//! Instruction fields: bit ranges, register numbers, sign extension.

use apf_abi::esr::AccessSize;

use super::op::reg;

#[inline]
pub(super) fn bits(i: u32, hi: u32, lo: u32) -> u32 {
    (i >> lo) & ((1 << (hi - lo + 1)) - 1)
}

#[inline]
pub(super) fn bit(i: u32, n: u32) -> bool {
    (i >> n) & 1 != 0
}

/// Sign-extends the low `width` bits of `v`.
#[inline]
pub(super) fn sext(v: u32, width: u32) -> i32 {
    let shift = 32 - width;
    // Reinterpreting the bits is the point: sign extension.
    #[allow(clippy::cast_possible_wrap)]
    let s = (v << shift) as i32;
    s >> shift
}

/// Field value of a register number (at most 5 bits).
#[inline]
pub(super) fn r5(i: u32, lo: u32) -> u8 {
    // Five bits always fit.
    #[allow(clippy::cast_possible_truncation)]
    let r = bits(i, lo + 4, lo) as u8;
    r
}

/// Destination where 31 is XZR.
#[inline]
pub(super) fn dst(r: u8) -> u8 {
    if r == 31 { reg::SINK } else { r }
}

/// Source or destination where 31 is SP.
#[inline]
pub(super) fn sp(r: u8) -> u8 {
    if r == 31 { reg::SP } else { r }
}

/// Narrows a field of at most 8 bits.
#[inline]
pub(super) fn u8f(v: u32) -> u8 {
    // Callers pass fields of at most 8 bits.
    #[allow(clippy::cast_possible_truncation)]
    let b = v as u8;
    b
}

pub(super) fn size_of(bits: u32) -> AccessSize {
    match bits & 3 {
        0 => AccessSize::Byte,
        1 => AccessSize::Half,
        2 => AccessSize::Word,
        _ => AccessSize::Double,
    }
}
