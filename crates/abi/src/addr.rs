//! Guest physical addresses and guest frame numbers as distinct types (as
//! rust-vmm's vm-memory has `GuestAddress`), so a gfn cannot be passed where an
//! address is expected, or the other way round. Both are `repr(transparent)`
//! over `u64`: no cost on the fault path.

use core::fmt;

// The page size lives here, with the types it splits, and is re-exported at
// the crate root.
/// Guest page size. Stage-2 is mapped with 4 KiB pages only.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A guest physical address (stage-2 input address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Gpa(pub u64);

/// A guest frame number: a guest physical address shifted right by [`PAGE_SHIFT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Gfn(pub u64);

impl Gpa {
    /// The address as a number.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The frame holding this address.
    #[inline]
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }

    /// The byte offset within its page.
    #[inline]
    pub const fn page_offset(self) -> u64 {
        self.0 % PAGE_SIZE
    }

    /// `self + len`, or `None` if that wraps the address space.
    #[inline]
    pub const fn checked_add(self, len: u64) -> Option<Gpa> {
        match self.0.checked_add(len) {
            Some(a) => Some(Gpa(a)),
            None => None,
        }
    }
}

impl Gfn {
    /// The frame number as a number.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The address of the frame's first byte. Frame numbers above
    /// `u64::MAX >> PAGE_SHIFT` lose their top bits (no such frame is RAM).
    #[inline]
    pub const fn gpa(self) -> Gpa {
        Gpa(self.0 << PAGE_SHIFT)
    }
}

impl fmt::Display for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::Display for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn conversions_at_known_points() {
        assert_eq!(Gpa(0x4000_1234).gfn(), Gfn(0x40001));
        assert_eq!(Gpa(0x4000_1234).page_offset(), 0x234);
        assert_eq!(Gfn(0x40001).gpa(), Gpa(0x4000_1000));
        assert_eq!(Gpa(u64::MAX).checked_add(1), None);
        assert_eq!(Gpa(0x1000).checked_add(0x20), Some(Gpa(0x1020)));
        assert_eq!(format!("{}", Gpa(0x4000_0000)), "0x40000000");
        assert_eq!(format!("{}", Gfn(0x40000)), "0x40000");
        assert_eq!(format!("{:#x}", Gfn(0x40000)), "0x40000");
        assert_eq!(format!("{:x}", Gpa(0xabc)), "abc");
    }

    proptest! {
        #[test]
        fn gpa_splits_into_frame_and_offset(a in any::<u64>()) {
            let gpa = Gpa(a);
            prop_assert!(gpa.page_offset() < PAGE_SIZE);
            prop_assert_eq!(gpa.gfn().gpa().raw() + gpa.page_offset(), a);
            prop_assert_eq!(gpa.gfn().gpa().gfn(), gpa.gfn());
        }

        #[test]
        fn checked_add_matches_u64(a in any::<u64>(), len in any::<u64>()) {
            prop_assert_eq!(Gpa(a).checked_add(len).map(Gpa::raw), a.checked_add(len));
        }

        #[test]
        fn frame_round_trips(g in 0..=(u64::MAX >> PAGE_SHIFT)) {
            prop_assert_eq!(Gfn(g).gpa().gfn(), Gfn(g));
            prop_assert_eq!(Gfn(g).gpa().page_offset(), 0);
        }
    }
}
