//! The per-vCPU stage-1 TLB: direct-mapped on the VA page number, folded
//! (page number XOR page number >> 11) so that pages a multiple of 8 MiB
//! apart, such as kernel text and data, do not evict each other. An entry
//! caches one 4 KiB page of a translation (blocks are cached page by page)
//! with the permissions for EL1 and EL0 already computed, so a hit is a tag
//! compare, an ASID compare and a bit test.
//!
//! Flushing everything is frequent (the host calls [`Cpu::flush_tlb`] for
//! every broadcast TLBI of another vCPU), so the tag carries a generation
//! number in its top 12 bits: a flush bumps the generation, and only every
//! 4094th flush clears the array.
//!
//! [`Cpu::flush_tlb`]: crate::Cpu::flush_tlb

/// log2 of the number of entries.
const INDEX_BITS: u32 = 11;
const ENTRIES: usize = 1 << INDEX_BITS;
/// Where the generation sits in a tag. A canonical VA page number has 52 bits.
const GEN_SHIFT: u32 = 52;
/// The last generation before the array is cleared and numbering restarts at 1.
const GEN_LAST: u64 = 0xFFE;
/// The tag of an entry that matches nothing (generation 0 is never current).
const EMPTY: u64 = 0;

/// Permission bits of an entry: which accesses are allowed from which EL.
pub(crate) mod perm {
    pub(crate) const EL1_READ: u8 = 1 << 0;
    pub(crate) const EL1_WRITE: u8 = 1 << 1;
    pub(crate) const EL1_EXEC: u8 = 1 << 2;
    /// The EL0 bits are the EL1 bits shifted by this.
    pub(crate) const EL0_SHIFT: u32 = 3;
}

/// One cached page translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// VA page number | generation << 52, or [`EMPTY`].
    tag: u64,
    /// The PA page number.
    pub(crate) pa_page: u64,
    /// The ASID it was filled under (meaningless when `global`).
    asid: u16,
    /// 0 for a global entry (nG = 0), else all ones: a hit needs
    /// `(asid ^ current) & asid_mask == 0`, one test without a branch.
    asid_mask: u16,
    /// The lookup level of the leaf descriptor (fault reports name it).
    pub(crate) level: u8,
    /// `perm` bits.
    pub(crate) perms: u8,
    /// Device memory (MAIR attribute 0b0000xxxx).
    pub(crate) device: bool,
    /// The MAIR attribute byte (for PAR_EL1).
    pub(crate) attr: u8,
    /// The shareability field SH (for PAR_EL1).
    pub(crate) sh: u8,
    /// log2 of the mapping's size (12 page, 21 or 30 block): TLBI by VA
    /// drops every page of a block.
    block_shift: u8,
}

const EMPTY_ENTRY: Entry = Entry {
    tag: EMPTY,
    pa_page: 0,
    asid: 0,
    asid_mask: 0,
    level: 0,
    perms: 0,
    device: false,
    attr: 0,
    sh: 0,
    block_shift: 12,
};

/// What a walk found, to be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fill {
    pub(crate) pa_page: u64,
    pub(crate) global: bool,
    pub(crate) level: u8,
    pub(crate) perms: u8,
    pub(crate) device: bool,
    pub(crate) attr: u8,
    pub(crate) sh: u8,
    pub(crate) block_shift: u8,
}

#[derive(Debug)]
pub(crate) struct Tlb {
    entries: Box<[Entry; ENTRIES]>,
    /// The current generation, shifted into tag position.
    generation: u64,
    /// The largest `block_shift` filled since the last flush: how far a TLBI
    /// by VA must look.
    widest: u8,
}

#[inline(always)]
fn slot(vpn: u64) -> usize {
    // The index is masked to the table size.
    #[allow(clippy::cast_possible_truncation)]
    let s = ((vpn ^ (vpn >> INDEX_BITS)) as usize) & (ENTRIES - 1);
    s
}

impl Tlb {
    pub(crate) fn new() -> Tlb {
        Tlb {
            entries: Box::new([EMPTY_ENTRY; ENTRIES]),
            generation: 1 << GEN_SHIFT,
            widest: 12,
        }
    }

    /// The entry translating VA page `vpn` under `asid`, if cached.
    #[inline(always)]
    pub(crate) fn lookup(&self, vpn: u64, asid: u16) -> Option<&Entry> {
        let e = &self.entries[slot(vpn)];
        (e.tag == vpn | self.generation && (e.asid ^ asid) & e.asid_mask == 0).then_some(e)
    }

    /// Caches page `vpn` as `fill` says, filled under `asid`.
    pub(crate) fn insert(&mut self, vpn: u64, asid: u16, fill: Fill) {
        self.widest = self.widest.max(fill.block_shift);
        self.entries[slot(vpn)] = Entry {
            tag: vpn | self.generation,
            pa_page: fill.pa_page,
            asid,
            asid_mask: if fill.global { 0 } else { u16::MAX },
            level: fill.level,
            perms: fill.perms,
            device: fill.device,
            attr: fill.attr,
            sh: fill.sh,
            block_shift: fill.block_shift,
        };
    }

    /// Drops everything.
    pub(crate) fn flush(&mut self) {
        let next = (self.generation >> GEN_SHIFT) + 1;
        if next > GEN_LAST {
            self.entries.fill(EMPTY_ENTRY);
            self.generation = 1 << GEN_SHIFT;
        } else {
            self.generation = next << GEN_SHIFT;
        }
        self.widest = 12;
    }

    /// Drops every entry (any ASID, global or not) whose mapping covers VA page `vpn`.
    pub(crate) fn flush_page(&mut self, vpn: u64) {
        // A block of 2^widest bytes holding `vpn` has its pages in these slots.
        let pages = 1u64 << (self.widest - 12);
        let first = vpn & !(pages - 1);
        // At most ENTRIES slots exist, so the count fits.
        #[allow(clippy::cast_possible_truncation)]
        let count = pages.min(ENTRIES as u64) as usize;
        let current = vpn | self.generation;
        for k in 0..count {
            let e = &mut self.entries[slot(first.wrapping_add(k as u64))];
            let span = e.block_shift - 12;
            if (e.tag ^ current) >> span == 0 {
                e.tag = EMPTY;
            }
        }
    }

    /// Drops the non-global entries filled under `asid`.
    pub(crate) fn flush_asid(&mut self, asid: u16) {
        let generation = self.generation;
        for e in self.entries.iter_mut() {
            if e.tag >> GEN_SHIFT == generation >> GEN_SHIFT && e.asid_mask != 0 && e.asid == asid {
                e.tag = EMPTY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(pa_page: u64, global: bool, block_shift: u8) -> Fill {
        Fill {
            pa_page,
            global,
            level: 3,
            perms: perm::EL1_READ,
            device: false,
            attr: 0xFF,
            sh: 3,
            block_shift,
        }
    }

    #[test]
    fn hits_need_the_page_and_the_asid_or_global() {
        let mut t = Tlb::new();
        t.insert(0x12345, 7, page(0x99, false, 12));
        assert_eq!(t.lookup(0x12345, 7).map(|e| e.pa_page), Some(0x99));
        assert!(t.lookup(0x12345, 8).is_none(), "other ASID");
        assert!(t.lookup(0x12345 ^ 0x801, 7).is_none(), "same slot");
        t.insert(0x500, 7, page(0x55, true, 12));
        assert!(t.lookup(0x500, 9).is_some(), "global hits under any ASID");
    }

    #[test]
    fn flushes_by_generation_wrap_cleanly() {
        let mut t = Tlb::new();
        for round in 0..(2 * GEN_LAST + 5) {
            t.insert(round, 1, page(round, true, 12));
            assert!(t.lookup(round, 1).is_some());
            t.flush();
            assert!(t.lookup(round, 1).is_none(), "round {round}");
        }
    }

    #[test]
    fn flush_page_drops_every_page_of_a_block() {
        let mut t = Tlb::new();
        // Two pages of one 2 MiB block and an unrelated page.
        t.insert(0x40200, 1, page(0x80200, true, 21));
        t.insert(0x403FF, 1, page(0x803FF, true, 21));
        t.insert(0x40400, 1, page(0x1, true, 12));
        t.flush_page(0x40321);
        assert!(t.lookup(0x40200, 1).is_none());
        assert!(t.lookup(0x403FF, 1).is_none());
        assert!(t.lookup(0x40400, 1).is_some());
    }

    #[test]
    fn flush_asid_keeps_globals_and_other_asids() {
        let mut t = Tlb::new();
        t.insert(1, 5, page(1, false, 12));
        t.insert(2, 6, page(2, false, 12));
        t.insert(3, 5, page(3, true, 12));
        t.flush_asid(5);
        assert!(t.lookup(1, 5).is_none());
        assert!(t.lookup(2, 6).is_some());
        assert!(t.lookup(3, 5).is_some());
    }
}
