//! The dirty log: which pages of guest RAM were written since it was last
//! taken, for pre-copy migration (what KVM's `KVM_MEM_LOG_DIRTY_PAGES` with
//! write protection gives). One bit per page, set by every write while the log
//! is on; independent of a page's `dirty` flag and store slot (eviction and
//! fetches move contents, they do not change them).
//!
//! How no write escapes it:
//! - A vCPU writes only through a writable TLB entry, and while the log is on
//!   the pager maps a page writable only if its bit is set (a write fault sets
//!   it first). So a vCPU write to a page whose bit is clear faults and sets it.
//! - Taking the log clears the bits first, then shoots down every TLB and waits.
//!   A write made through an entry filled before the clear, up to the moment
//!   its vCPU flushes, is to a page whose bit the clear saw set: it is in the
//!   returned set, and the caller copies that set only after the take returned,
//!   so after the write. A write after the flush faults and sets the bit again:
//!   it is in the next take.
//! - A host write (not a vCPU: no shootdown waits for it) sets the bit after
//!   its bytes are written, so a take either returns the page after the write
//!   landed, or leaves the bit for the next take.

use apf_abi::Gfn;

use crate::shootdown::Shootdown;
use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering, lock};

const WORD_BITS: usize = 64;

/// The log's bits and whether it is on.
#[derive(Debug)]
pub(crate) struct DirtyLog {
    on: AtomicBool,
    bits: Box<[AtomicU64]>,
    pages: usize,
    /// Serialises start, take and stop (each take must see the previous one's
    /// clear complete).
    control: Mutex<()>,
}

impl DirtyLog {
    pub(crate) fn new(pages: usize) -> DirtyLog {
        DirtyLog {
            on: AtomicBool::new(false),
            bits: (0..pages.div_ceil(WORD_BITS))
                .map(|_| AtomicU64::new(0))
                .collect(),
            pages,
            control: Mutex::new(()),
        }
    }

    /// Whether writes are being logged.
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// Sets page `index`'s bit; returns whether it was clear. Release: a host
    /// write's bytes are visible to whoever takes the bit.
    pub(crate) fn mark(&self, index: usize) -> bool {
        let bit = 1u64 << (index % WORD_BITS);
        self.bits[index / WORD_BITS].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Whether page `index`'s bit is set.
    pub(crate) fn is_marked(&self, index: usize) -> bool {
        let bit = 1u64 << (index % WORD_BITS);
        self.bits[index / WORD_BITS].load(Ordering::Acquire) & bit != 0
    }

    /// Clears every bit; returns the words as they were.
    fn clear(&self) -> Vec<u64> {
        self.bits
            .iter()
            .map(|w| {
                if w.load(Ordering::Acquire) == 0 {
                    0
                } else {
                    w.swap(0, Ordering::AcqRel)
                }
            })
            .collect()
    }

    /// Turns the log on, empty, and returns once no TLB holds a writable entry
    /// filled before (so every later vCPU write faults into the log).
    pub(crate) fn start(&self, shoot: &Shootdown) {
        let _control = lock(&self.control);
        self.on.store(true, Ordering::SeqCst);
        self.clear();
        shoot.shoot_down();
    }

    /// The pages written since the previous take (or the start); clears them,
    /// then waits until no TLB holds a writable entry filled before the clear.
    /// See the module comment for why this order loses no write.
    pub(crate) fn take(&self, shoot: &Shootdown, base: Gfn) -> DirtyPages {
        let _control = lock(&self.control);
        let words = self.clear();
        shoot.shoot_down();
        DirtyPages {
            base,
            pages: self.pages,
            words,
        }
    }

    /// Turns the log off: mappings need no bit from now on (entries filled
    /// while it was on are only more restrictive, so no shootdown is needed).
    pub(crate) fn stop(&self) {
        let _control = lock(&self.control);
        self.on.store(false, Ordering::SeqCst);
    }
}

/// A set of guest pages: what [`crate::GuestMemory::take_dirty_log`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyPages {
    base: Gfn,
    pages: usize,
    words: Vec<u64>,
}

impl DirtyPages {
    /// Pages in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Whether `gfn` is in the set.
    pub fn contains(&self, gfn: Gfn) -> bool {
        let Some(index) = gfn
            .0
            .checked_sub(self.base.0)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.pages)
        else {
            return false;
        };
        self.words[index / WORD_BITS] & (1 << (index % WORD_BITS)) != 0
    }

    /// The pages, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = Gfn> + '_ {
        self.words.iter().enumerate().flat_map(move |(i, &word)| {
            let first = self.base.0 + (i * WORD_BITS) as u64;
            let mut left = word;
            std::iter::from_fn(move || {
                if left == 0 {
                    return None;
                }
                let bit = left.trailing_zeros();
                left &= left - 1;
                Some(Gfn(first + u64::from(bit)))
            })
        })
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn a_take_returns_the_marked_pages_in_order_and_clears_them() {
        let log = DirtyLog::new(130);
        let shoot = Shootdown::new();
        let base = Gfn(0x100);
        log.start(&shoot);
        assert!(log.is_on());
        assert!(log.mark(129));
        assert!(log.mark(3));
        assert!(!log.mark(3), "already set");
        assert!(log.mark(64));
        assert!(log.is_marked(64) && !log.is_marked(65));
        let taken = log.take(&shoot, base);
        assert_eq!(
            taken.iter().collect::<Vec<_>>(),
            [Gfn(0x103), Gfn(0x140), Gfn(0x181)]
        );
        assert_eq!(taken.len(), 3);
        assert!(taken.contains(Gfn(0x140)) && !taken.contains(Gfn(0x141)));
        assert!(!taken.contains(Gfn(0xff)) && !taken.contains(Gfn(0x182)));
        assert_eq!(shoot.epoch(), 2, "start and take each shoot down");
        assert!(log.take(&shoot, base).is_empty(), "cleared by the take");
        log.stop();
        assert!(!log.is_on());
    }

    #[test]
    fn starting_again_empties_the_log() {
        let log = DirtyLog::new(8);
        let shoot = Shootdown::new();
        log.start(&shoot);
        log.mark(5);
        log.stop();
        log.start(&shoot);
        assert!(log.take(&shoot, Gfn(0)).is_empty());
    }
}
