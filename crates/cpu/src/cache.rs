//! The decoded-instruction cache: decoded pages keyed by guest physical page,
//! direct-mapped. A slot is decoded on first execution; a store by this CPU
//! resets the slots it overwrites, so self-modifying code sees its new words.

use crate::decode::Op;

/// Instructions per 4 KiB page.
pub(crate) const OPS_PER_PAGE: usize = 1024;
const ENTRIES: usize = 1024;
const NO_PAGE: u64 = u64::MAX;
const NO_SLAB: u32 = u32::MAX;

type DecodedPage = Box<[Op; OPS_PER_PAGE]>;

pub(crate) struct DecodeCache {
    /// Page number held by each entry.
    tags: Vec<u64>,
    /// The slab index of each entry's decoded page.
    slab_of: Vec<u32>,
    slab: Vec<DecodedPage>,
}

impl std::fmt::Debug for DecodeCache {
    /// A summary: the decoded pages themselves are 16 KiB each.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeCache")
            .field(
                "pages",
                &self.tags.iter().filter(|&&t| t != NO_PAGE).count(),
            )
            .field("allocated", &self.slab.len())
            .finish()
    }
}

fn empty_page() -> DecodedPage {
    Box::new([Op::NotDecoded; OPS_PER_PAGE])
}

#[inline]
fn entry_of(pfn: u64) -> usize {
    // Masked to the table size.
    #[allow(clippy::cast_possible_truncation)]
    let e = (pfn as usize) & (ENTRIES - 1);
    e
}

impl DecodeCache {
    pub(crate) fn new() -> DecodeCache {
        DecodeCache {
            tags: vec![NO_PAGE; ENTRIES],
            slab_of: vec![NO_SLAB; ENTRIES],
            slab: Vec::new(),
        }
    }

    /// The slab index of page `pfn`'s decoded ops, evicting whatever page shared
    /// its entry.
    pub(crate) fn page(&mut self, pfn: u64) -> usize {
        let e = entry_of(pfn);
        if self.slab_of[e] == NO_SLAB {
            self.slab.push(empty_page());
            self.slab_of[e] = u32::try_from(self.slab.len() - 1).unwrap_or(NO_SLAB);
        }
        let s = self.slab_of[e] as usize;
        if self.tags[e] != pfn {
            self.tags[e] = pfn;
            self.slab[s].fill(Op::NotDecoded);
        }
        s
    }

    #[inline]
    pub(crate) fn op(&self, slab: usize, index: usize) -> Op {
        self.slab[slab][index & (OPS_PER_PAGE - 1)]
    }

    #[inline]
    pub(crate) fn set(&mut self, slab: usize, index: usize, op: Op) {
        self.slab[slab][index & (OPS_PER_PAGE - 1)] = op;
    }

    /// This CPU stored `len` bytes at `addr`: forget any ops decoded from them.
    #[inline]
    pub(crate) fn stored(&mut self, addr: u64, len: u64) {
        let e = entry_of(addr >> 12);
        if self.tags[e] == addr >> 12 {
            self.reset_range(e, addr, len);
        }
        let last = addr.wrapping_add(len - 1);
        if last >> 12 != addr >> 12 {
            let e2 = entry_of(last >> 12);
            if self.tags[e2] == last >> 12 {
                self.reset_range(e2, last & !0xFFF, (last & 0xFFF) + 1);
            }
        }
    }

    #[cold]
    fn reset_range(&mut self, e: usize, addr: u64, len: u64) {
        let s = self.slab_of[e] as usize;
        // Page offsets are below 4096.
        #[allow(clippy::cast_possible_truncation)]
        let first = ((addr & 0xFFF) >> 2) as usize;
        #[allow(clippy::cast_possible_truncation)]
        let last = (((addr & 0xFFF) + len - 1).min(0xFFF) >> 2) as usize;
        self.slab[s][first..=last].fill(Op::NotDecoded);
    }

    /// Forgets page `pfn`.
    pub(crate) fn invalidate_page(&mut self, pfn: u64) {
        let e = entry_of(pfn);
        if self.tags[e] == pfn {
            self.tags[e] = NO_PAGE;
        }
    }

    /// Forgets every page.
    pub(crate) fn invalidate_all(&mut self) {
        self.tags.fill(NO_PAGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_reset_only_the_overwritten_slots() {
        let mut c = DecodeCache::new();
        let s = c.page(5);
        for i in 0..8 {
            c.set(s, i, Op::Barrier);
        }
        // An 8-byte store at offset 6 touches words 1, 2 and 3.
        c.stored(0x5006, 8);
        assert_eq!(c.op(s, 0), Op::Barrier);
        assert_eq!(c.op(s, 1), Op::NotDecoded);
        assert_eq!(c.op(s, 3), Op::NotDecoded);
        assert_eq!(c.op(s, 4), Op::Barrier);
        // Other pages are unaffected.
        c.stored(0x6000, 8);
        assert_eq!(c.op(s, 4), Op::Barrier);
    }

    #[test]
    fn a_store_across_a_page_end_reaches_the_next_page() {
        let mut c = DecodeCache::new();
        let s = c.page(6);
        c.set(s, 0, Op::Barrier);
        c.set(s, 1, Op::Barrier);
        c.stored(0x5FFC, 8);
        assert_eq!(c.op(s, 0), Op::NotDecoded);
        assert_eq!(c.op(s, 1), Op::Barrier);
    }

    #[test]
    fn a_conflicting_page_evicts_and_invalidation_forgets() {
        let mut c = DecodeCache::new();
        let s = c.page(7);
        c.set(s, 0, Op::Barrier);
        assert_eq!(c.page(7), s);
        assert_eq!(c.op(s, 0), Op::Barrier);
        let s2 = c.page(7 + ENTRIES as u64);
        assert_eq!(s2, s);
        assert_eq!(c.op(s, 0), Op::NotDecoded);
        c.set(s, 0, Op::Barrier);
        c.invalidate_page(7 + ENTRIES as u64);
        c.page(7 + ENTRIES as u64);
        assert_eq!(c.op(s, 0), Op::NotDecoded);
    }
}
