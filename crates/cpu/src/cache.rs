//! The decoded-instruction cache: decoded pages keyed by guest physical page,
//! two-way set associative over hashed page numbers (so code pages a power of
//! two apart do not evict each other). A slot is decoded on first execution; a
//! store by this CPU resets the slots it overwrites, so self-modifying code
//! sees its new words.
//!
//! On top of the slots, straight-line blocks: the decoded ops from an entry
//! slot up to the first op that may leave straight-line flow (see
//! [`ends_block`]) or the page end, copied contiguously into an arena so the
//! run loop executes them without a per-op lookup, page-end check or budget
//! check. A page's blocks are forgotten whenever any of its slots is reset or
//! the page is evicted, so a block never outlives the words it came from.

use crate::decode::{BitfieldOp, Hint, LoadExt, LogicOp, Op, Writeback, reg};
use apf_abi::esr::AccessSize;

/// Instructions per 4 KiB page.
pub(crate) const OPS_PER_PAGE: usize = 1024;
/// Arena capacity in ops (16 MiB); when full, every block is forgotten.
const ARENA_OPS: usize = 1 << 20;
/// A slot's block entry: none built there.
const NO_BLOCK: u64 = 0;

/// A straight-line block: `len` ops at `start` in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) start: usize,
    pub(crate) len: usize,
}

/// Whether `op` ends a block: it may set PC, change PSTATE, the timer or the
/// translation regime, read the retired count, or is not decoded. Loads and
/// stores stay inside: a fault leaves the block through its flow.
pub(crate) fn ends_block(op: &Op) -> bool {
    !matches!(
        op,
        Op::AddImm { .. }
            | Op::AddShifted { .. }
            | Op::AddExtended { .. }
            | Op::AddCarry { .. }
            | Op::LogicImm { .. }
            | Op::LogicShifted { .. }
            | Op::MovWide { .. }
            | Op::Adr { .. }
            | Op::Bitfield { .. }
            | Op::Extr { .. }
            | Op::ShiftVariable { .. }
            | Op::Unary { .. }
            | Op::Div { .. }
            | Op::Mul { .. }
            | Op::CondSel { .. }
            | Op::CondCmp { .. }
            | Op::Crc32 { .. }
            | Op::AddX { .. }
            | Op::AddW { .. }
            | Op::SubsImmW { .. }
            | Op::SubsRegW { .. }
            | Op::AddRegW { .. }
            | Op::EorRegW { .. }
            | Op::AndImm { .. }
            | Op::Ubfx { .. }
            | Op::Ubfiz { .. }
            | Op::MovX { .. }
            | Op::MovW { .. }
            | Op::LoadX { .. }
            | Op::LoadW { .. }
            | Op::LoadH { .. }
            | Op::LoadB { .. }
            | Op::StoreX { .. }
            | Op::StoreW { .. }
            | Op::StoreH { .. }
            | Op::StoreB { .. }
            | Op::LoadSH { .. }
            | Op::LoadRegX { .. }
            | Op::LoadRegW { .. }
            | Op::LoadRegH { .. }
            | Op::LoadRegB { .. }
            | Op::LoadRegSH { .. }
            | Op::StoreRegX { .. }
            | Op::StoreRegW { .. }
            | Op::StoreRegH { .. }
            | Op::StoreRegB { .. }
            | Op::Hint(Hint::Nop)
            | Op::Prefetch
            | Op::Clrex
            | Op::Barrier
            | Op::Load { .. }
            | Op::Store { .. }
            | Op::LoadRegOffset { .. }
            | Op::StoreRegOffset { .. }
            | Op::LoadLiteral { .. }
            | Op::LoadPair { .. }
            | Op::StorePair { .. }
            | Op::LoadExclusive { .. }
            | Op::StoreExclusive { .. }
            | Op::LoadAcquire { .. }
            | Op::StoreRelease { .. }
            | Op::Atomic { .. }
            | Op::Cas { .. }
    )
}
const WAYS: usize = 2;
const SET_BITS: u32 = 9;
const SETS: usize = 1 << SET_BITS;
const NO_PAGE: u64 = u64::MAX;
const NO_SLAB: u32 = u32::MAX;
/// Bits of the held-page filter; a page number's low bits pick one.
const FILTER_BITS: usize = 4096;

/// The block-only form of `op`, if it has one: the same effect with the
/// choices of its generic form (width, ADD or SUB, flags, a zero operand) made
/// here. tests/blocks.rs compares blocks with single steps, which run the
/// generic forms.
fn specialise(op: Op) -> Op {
    match op {
        Op::AddImm {
            d,
            n,
            imm,
            sf: true,
            sub,
            flags: false,
        } => Op::AddX {
            d,
            n,
            imm: if sub {
                u64::from(imm).wrapping_neg()
            } else {
                u64::from(imm)
            },
        },
        Op::AddImm {
            d,
            n,
            imm,
            sf: false,
            sub,
            flags: false,
        } => Op::AddW {
            d,
            n,
            imm: if sub { imm.wrapping_neg() } else { imm },
        },
        Op::AddImm {
            d,
            n,
            imm,
            sf: false,
            sub: true,
            flags: true,
        } => Op::SubsImmW { d, n, imm },
        // With no shift amount every shift type is the identity.
        Op::AddShifted {
            d,
            n,
            m,
            amount: 0,
            sf: false,
            sub,
            flags,
            ..
        } if sub == flags => {
            if sub {
                Op::SubsRegW { d, n, m }
            } else {
                Op::AddRegW { d, n, m }
            }
        }
        Op::LogicShifted {
            d,
            n,
            m,
            op: LogicOp::Eor,
            amount: 0,
            invert: false,
            sf: false,
            ..
        } => Op::EorRegW { d, n, m },
        Op::LogicImm {
            d,
            n,
            op: LogicOp::And,
            imm,
            sf,
        } => Op::AndImm {
            d,
            n,
            imm: if sf { imm } else { imm & 0xFFFF_FFFF },
        },
        // UBFM's field, as the generic form computes it (alu::bitfield).
        Op::Bitfield {
            d,
            n,
            op: BitfieldOp::Ubfm,
            immr,
            imms,
            sf,
        } => {
            let field = |width: u8| {
                if width >= 64 {
                    u64::MAX
                } else {
                    (1u64 << width) - 1
                }
            };
            if imms >= immr {
                Op::Ubfx {
                    d,
                    n,
                    shift: immr,
                    mask: field(imms - immr + 1),
                }
            } else {
                Op::Ubfiz {
                    d,
                    n,
                    shift: if sf { 64 } else { 32 } - immr,
                    mask: field(imms + 1),
                }
            }
        }
        Op::LogicShifted {
            d,
            n: reg::ZR,
            m,
            op: LogicOp::Orr,
            amount: 0,
            invert: false,
            sf,
            ..
        } => {
            if sf {
                Op::MovX { d, m }
            } else {
                Op::MovW { d, m }
            }
        }
        // Single-register loads and stores without writeback: one form per
        // size (LDTR/STTR, writeback and most sign-extending loads stay generic).
        Op::Load {
            t,
            n,
            offset,
            size,
            ext: LoadExt::Zero,
            wb: Writeback::None,
            unprivileged: false,
        } => match size {
            AccessSize::Double => Op::LoadX { t, n, offset },
            AccessSize::Word => Op::LoadW { t, n, offset },
            AccessSize::Half => Op::LoadH { t, n, offset },
            AccessSize::Byte => Op::LoadB { t, n, offset },
        },
        Op::Load {
            t,
            n,
            offset,
            size: AccessSize::Half,
            ext: LoadExt::Sign32,
            wb: Writeback::None,
            unprivileged: false,
        } => Op::LoadSH { t, n, offset },
        Op::LoadRegOffset {
            t,
            n,
            m,
            ext,
            shift,
            size,
            sign: LoadExt::Zero,
        } => match size {
            AccessSize::Double => Op::LoadRegX {
                t,
                n,
                m,
                ext,
                shift,
            },
            AccessSize::Word => Op::LoadRegW {
                t,
                n,
                m,
                ext,
                shift,
            },
            AccessSize::Half => Op::LoadRegH {
                t,
                n,
                m,
                ext,
                shift,
            },
            AccessSize::Byte => Op::LoadRegB {
                t,
                n,
                m,
                ext,
                shift,
            },
        },
        Op::LoadRegOffset {
            t,
            n,
            m,
            ext,
            shift,
            size: AccessSize::Half,
            sign: LoadExt::Sign32,
        } => Op::LoadRegSH {
            t,
            n,
            m,
            ext,
            shift,
        },
        Op::StoreRegOffset {
            t,
            n,
            m,
            ext,
            shift,
            size,
        } => match size {
            AccessSize::Double => Op::StoreRegX {
                t,
                n,
                m,
                ext,
                shift,
            },
            AccessSize::Word => Op::StoreRegW {
                t,
                n,
                m,
                ext,
                shift,
            },
            AccessSize::Half => Op::StoreRegH {
                t,
                n,
                m,
                ext,
                shift,
            },
            AccessSize::Byte => Op::StoreRegB {
                t,
                n,
                m,
                ext,
                shift,
            },
        },
        Op::Store {
            t,
            n,
            offset,
            size,
            wb: Writeback::None,
            unprivileged: false,
        } => match size {
            AccessSize::Double => Op::StoreX { t, n, offset },
            AccessSize::Word => Op::StoreW { t, n, offset },
            AccessSize::Half => Op::StoreH { t, n, offset },
            AccessSize::Byte => Op::StoreB { t, n, offset },
        },
        op => op,
    }
}

type DecodedPage = Box<[Op; OPS_PER_PAGE]>;
/// Per slot, the block that starts there: `start << 16 | len`, or [`NO_BLOCK`].
type PageBlocks = Box<[u64; OPS_PER_PAGE]>;

pub(crate) struct DecodeCache {
    /// Page number held by each entry (set * WAYS + way).
    tags: Vec<u64>,
    /// The slab index of each entry's decoded page.
    slab_of: Vec<u32>,
    /// Per set, the way used last (the other one is evicted next).
    recent: Vec<u8>,
    slab: Vec<DecodedPage>,
    /// The block entries of each slab page.
    blocks: Vec<PageBlocks>,
    /// The ops of every block built since the arena was last emptied.
    /// [`crate::Cpu::run`] takes it out of the cache while guest code runs
    /// (stores into code only clear entries in `blocks`, never arena ops), so
    /// a block's ops are borrowed without a lookup per op.
    pub(crate) arena: Vec<Op>,
    /// A superset of the held pages (bit `pfn % FILTER_BITS`), so that a
    /// store to a data page costs a bit test instead of a set lookup. Bits
    /// are set when a page is taken in and cleared only when every page is
    /// forgotten.
    filter: [u64; FILTER_BITS / 64],
    /// Bumped whenever the arena is emptied (compiled blocks go with it).
    pub(crate) arena_generation: u64,
    /// Bumped whenever block entries are forgotten, so that whoever kept a
    /// block found here knows to look again.
    pub(crate) block_epoch: u64,
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

/// The set of page `pfn` (Fibonacci hashing).
#[inline]
fn set_of(pfn: u64) -> usize {
    // The top SET_BITS bits always fit.
    #[allow(clippy::cast_possible_truncation)]
    let set = (pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SET_BITS)) as usize;
    set
}

/// The filter bit of page `pfn`.
#[inline(always)]
fn filter_bit(pfn: u64) -> usize {
    // Masked to the filter's size.
    #[allow(clippy::cast_possible_truncation)]
    let bit = (pfn as usize) & (FILTER_BITS - 1);
    bit
}

impl DecodeCache {
    pub(crate) fn new() -> DecodeCache {
        DecodeCache {
            tags: vec![NO_PAGE; SETS * WAYS],
            slab_of: vec![NO_SLAB; SETS * WAYS],
            recent: vec![0; SETS],
            slab: Vec::new(),
            blocks: Vec::new(),
            arena: Vec::new(),
            filter: [0; FILTER_BITS / 64],
            arena_generation: 0,
            block_epoch: 0,
        }
    }

    /// The entry holding page `pfn`, if any.
    #[inline]
    fn find(&self, pfn: u64) -> Option<usize> {
        let first = set_of(pfn) * WAYS;
        (first..first + WAYS).find(|&e| self.tags[e] == pfn)
    }

    /// The slab index of page `pfn`'s decoded ops, evicting the less recently
    /// used page of its set on a miss.
    pub(crate) fn page(&mut self, pfn: u64) -> usize {
        let set = set_of(pfn);
        let e = match self.find(pfn) {
            Some(e) => e,
            None => {
                let e = set * WAYS + (1 - usize::from(self.recent[set]));
                if self.slab_of[e] == NO_SLAB {
                    self.slab.push(empty_page());
                    self.blocks.push(Box::new([NO_BLOCK; OPS_PER_PAGE]));
                    self.slab_of[e] = u32::try_from(self.slab.len() - 1).unwrap_or(0);
                }
                self.tags[e] = pfn;
                let bit = filter_bit(pfn);
                self.filter[bit / 64] |= 1 << (bit % 64);
                self.slab[self.slab_of[e] as usize].fill(Op::NotDecoded);
                self.blocks[self.slab_of[e] as usize].fill(NO_BLOCK);
                self.block_epoch += 1;
                e
            }
        };
        self.recent[set] = u8::from(e % WAYS == 1);
        self.slab_of[e] as usize
    }

    #[inline]
    pub(crate) fn op(&self, slab: usize, index: usize) -> Op {
        self.slab[slab][index & (OPS_PER_PAGE - 1)]
    }

    /// The block starting at slot `index` of `slab`, if one was built.
    #[inline(always)]
    pub(crate) fn block(&self, slab: usize, index: usize) -> Option<Block> {
        let b = self.blocks[slab][index & (OPS_PER_PAGE - 1)];
        // Fields of an entry built by `build_block`: start < 2^48.
        #[allow(clippy::cast_possible_truncation)]
        (b != NO_BLOCK).then_some(Block {
            start: (b >> 16) as usize,
            len: (b & 0xFFFF) as usize,
        })
    }

    /// Builds the block starting at slot `index` of `slab` from its decoded
    /// slots; None when a slot before the block's end is not decoded yet (the
    /// single-op path decodes it, and a later entry builds the block).
    #[cold]
    #[inline(never)]
    pub(crate) fn build_block(
        &mut self,
        slab: usize,
        index: usize,
        arena: &mut Vec<Op>,
    ) -> Option<Block> {
        let page = &self.slab[slab];
        let mut end = index;
        while end < OPS_PER_PAGE {
            let op = &page[end];
            if *op == Op::NotDecoded {
                return None;
            }
            end += 1;
            if ends_block(op) {
                break;
            }
        }
        let len = end - index;
        if arena.len() + len > ARENA_OPS {
            // Forget every block; arena space is reclaimed only this way.
            for b in &mut self.blocks {
                b.fill(NO_BLOCK);
            }
            arena.clear();
            self.arena_generation += 1;
            self.block_epoch += 1;
        }
        let start = arena.len();
        arena.extend(self.slab[slab][index..end].iter().map(|&op| specialise(op)));
        self.blocks[slab][index] = (start as u64) << 16 | len as u64;
        Some(Block { start, len })
    }

    #[inline]
    pub(crate) fn set(&mut self, slab: usize, index: usize, op: Op) {
        self.slab[slab][index & (OPS_PER_PAGE - 1)] = op;
    }

    /// Whether page `pfn` may be held (false: it surely is not).
    #[inline(always)]
    pub(crate) fn may_hold(&self, pfn: u64) -> bool {
        let bit = filter_bit(pfn);
        (self.filter[bit / 64] >> (bit % 64)) & 1 != 0
    }

    /// This CPU stored `len` bytes at `addr`: forget any ops decoded from them.
    #[inline(always)]
    pub(crate) fn stored(&mut self, addr: u64, len: u64) {
        let last = addr.wrapping_add(len - 1);
        if self.may_hold(addr >> 12) || self.may_hold(last >> 12) {
            self.stored_near_code(addr, len);
        }
    }

    /// [`DecodeCache::stored`] for a naturally aligned store of `len` (a power
    /// of two, at most 16) bytes: it lies in one page, so one filter test.
    #[inline(always)]
    pub(crate) fn stored_aligned(&mut self, addr: u64, len: u64) {
        debug_assert!(len.is_power_of_two() && len <= 16 && addr & (len - 1) == 0);
        if self.may_hold(addr >> 12) {
            self.stored_near_code(addr, len);
        }
    }

    /// [`DecodeCache::stored`] for a store the filter did not rule out.
    #[inline(never)]
    fn stored_near_code(&mut self, addr: u64, len: u64) {
        if let Some(e) = self.find(addr >> 12) {
            self.reset_range(e, addr, len);
        }
        let last = addr.wrapping_add(len - 1);
        if last >> 12 != addr >> 12
            && let Some(e) = self.find(last >> 12)
        {
            self.reset_range(e, last & !0xFFF, (last & 0xFFF) + 1);
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
        // A block may span the reset slots from any earlier entry slot.
        self.blocks[s].fill(NO_BLOCK);
        self.block_epoch += 1;
    }

    /// Forgets page `pfn`.
    pub(crate) fn invalidate_page(&mut self, pfn: u64) {
        if let Some(e) = self.find(pfn) {
            self.tags[e] = NO_PAGE;
        }
    }

    /// Forgets every page.
    pub(crate) fn invalidate_all(&mut self) {
        self.tags.fill(NO_PAGE);
        self.filter.fill(0);
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
    fn stores_to_a_filter_mate_or_after_a_full_flush_stay_exact() {
        let mut c = DecodeCache::new();
        let s = c.page(5);
        c.set(s, 0, Op::Barrier);
        // Page 5 + FILTER_BITS shares page 5's filter bit but is not held.
        c.stored((5 + FILTER_BITS as u64) << 12, 8);
        assert_eq!(c.op(s, 0), Op::Barrier);
        // Forgetting everything clears the filter; taking the page in again sets it.
        c.invalidate_all();
        assert!(!c.may_hold(5));
        let s = c.page(5);
        assert!(c.may_hold(5));
        c.set(s, 0, Op::Barrier);
        c.stored(0x5000, 4);
        assert_eq!(c.op(s, 0), Op::NotDecoded);
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

    /// Pages other than `pfn` that share its set.
    fn set_mates(pfn: u64) -> impl Iterator<Item = u64> {
        (pfn + 1..).filter(move |&p| set_of(p) == set_of(pfn))
    }

    #[test]
    fn two_pages_share_a_set_and_a_third_evicts_the_older() {
        let mut c = DecodeCache::new();
        let mut mates = set_mates(7);
        let (b, third) = (mates.next().unwrap(), mates.next().unwrap());
        let sa = c.page(7);
        c.set(sa, 0, Op::Barrier);
        let sb = c.page(b);
        assert_ne!(sa, sb);
        c.set(sb, 0, Op::Isb);
        // Both stay decoded while they alternate.
        assert_eq!(
            {
                let s = c.page(7);
                c.op(s, 0)
            },
            Op::Barrier
        );
        assert_eq!(
            {
                let s = c.page(b);
                c.op(s, 0)
            },
            Op::Isb
        );
        // Page 7 was used less recently than b, so the third page takes its entry.
        let s3 = c.page(third);
        assert_eq!(s3, sa);
        assert_eq!(c.op(s3, 0), Op::NotDecoded);
        assert_eq!(
            {
                let s = c.page(b);
                c.op(s, 0)
            },
            Op::Isb
        );
    }

    #[test]
    fn pages_a_power_of_two_apart_do_not_collide() {
        let base = 0x40080;
        let sets: std::collections::HashSet<usize> =
            (0..8).map(|k| set_of(base + (k << 10))).collect();
        assert!(sets.len() >= 7, "4 MiB strides map to {} sets", sets.len());
    }

    #[test]
    fn invalidation_forgets_a_page() {
        let mut c = DecodeCache::new();
        let s = c.page(9);
        c.set(s, 0, Op::Barrier);
        c.invalidate_page(9);
        assert_eq!(
            {
                let s = c.page(9);
                c.op(s, 0)
            },
            Op::NotDecoded
        );
        c.set(s, 0, Op::Barrier);
        c.invalidate_all();
        assert_eq!(
            {
                let s = c.page(9);
                c.op(s, 0)
            },
            Op::NotDecoded
        );
    }
}
