//! DecodeBitMasks (Arm ARM J1): the immediates of the logical-immediate and
//! bitfield instructions.

/// The `(wmask, tmask)` pair for `N:immr:imms`, or `None` for a reserved
/// encoding. `logical` selects the extra rule of logical immediates (an element
/// of all ones is reserved). Masks are 64 bits wide; 32-bit users truncate.
pub(crate) fn decode_bit_masks(n: u32, imms: u32, immr: u32, logical: bool) -> Option<(u64, u64)> {
    let combined = (n << 6) | (!imms & 0x3F);
    if combined == 0 {
        return None;
    }
    let len = 31 - combined.leading_zeros();
    if len < 1 {
        return None;
    }
    let levels = (1u32 << len) - 1;
    if logical && (imms & levels) == levels {
        return None;
    }
    let s = imms & levels;
    let r = immr & levels;
    let d = s.wrapping_sub(r) & levels;
    let esize = 1u32 << len;
    let welem = ones(s + 1);
    let telem = ones(d + 1);
    let wmask = replicate(ror(welem, r, esize), esize);
    let tmask = replicate(telem, esize);
    Some((wmask, tmask))
}

fn ones(n: u32) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

fn ror(value: u64, amount: u32, esize: u32) -> u64 {
    if amount == 0 {
        return value;
    }
    let mask = ones(esize);
    ((value >> amount) | (value << (esize - amount))) & mask
}

fn replicate(elem: u64, esize: u32) -> u64 {
    let mut out = 0;
    let mut pos = 0;
    while pos < 64 {
        out |= elem << pos;
        pos += esize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_logical_immediates() {
        // and x0, x0, #0xff: N=1 immr=0 imms=7
        assert_eq!(decode_bit_masks(1, 7, 0, true).map(|m| m.0), Some(0xFF));
        // orr w0, wzr, #0x55555555: N=0 immr=0 imms=0b111100 (esize 2)
        assert_eq!(
            decode_bit_masks(0, 0x3C, 0, true).map(|m| m.0),
            Some(0x5555_5555_5555_5555)
        );
        // 0xfffffffffffffffe: N=1 immr=63 imms=62
        assert_eq!(decode_bit_masks(1, 62, 63, true).map(|m| m.0), Some(!1));
        // An all-ones element is reserved for logical immediates only.
        assert_eq!(decode_bit_masks(1, 63, 0, true), None);
        assert!(decode_bit_masks(1, 63, 0, false).is_some());
        // N=0 with imms=0b111111 has no element size.
        assert_eq!(decode_bit_masks(0, 0x3F, 0, false), None);
    }
}
