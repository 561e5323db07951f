//! Stage-2 page state: one word per guest page, changed only under its stripe lock.
//!
//! ```text
//!            first touch (frame)                      clock picks it
//! Untouched ───────────────────► Resident ────────────────────────► Evicting
//!     ▲                          ▲  ▲  │ (clean/dirty)     rescue ◄──┘   │ shot down,
//!     │                 install  │  │  └──── a fault on it ───────────┘   │ written if dirty
//!     │                          │  │                                     ▼
//!     │   Fetching ◄─── fault ── InStore ◄────────────── (discarded) ── Dropping
//!     └──────────────────────────────────────── (clean, never written) ────┘
//! ```
//!
//! A page is mapped by a TLB only while Resident. Evicting pages are still in
//! memory and can be rescued by a fault; Dropping pages are committed to leave and
//! are being discarded; Fetching pages are being read into their place (or wait for
//! a frame to read into).

use crate::sync::{AtomicU8, AtomicU64, Condvar, Mutex, MutexGuard, Ordering, lock};

/// Where a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum State {
    Untouched = 0,
    Resident = 1,
    Evicting = 2,
    Dropping = 3,
    InStore = 4,
    Fetching = 5,
}

pub(crate) const STATES: usize = 6;

impl State {
    fn from_bits(b: u64) -> State {
        match b & 7 {
            0 => State::Untouched,
            1 => State::Resident,
            2 => State::Evicting,
            3 => State::Dropping,
            4 => State::InStore,
            _ => State::Fetching,
        }
    }
}

const DIRTY: u64 = 1 << 3;
/// A Fetching page holds a frame (its read is queued or running).
const FRAMED: u64 = 1 << 4;
const PIN_SHIFT: u32 = 8;
const PIN_MASK: u64 = 0xFFFF << PIN_SHIFT;
const SLOT_SHIFT: u32 = 32;

/// One page's state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageWord(u64);

impl PageWord {
    pub(crate) fn state(self) -> State {
        State::from_bits(self.0)
    }
    pub(crate) fn set_state(&mut self, s: State) {
        self.0 = (self.0 & !7) | s as u64;
    }
    /// Written since its store copy (if any) was made.
    pub(crate) fn dirty(self) -> bool {
        self.0 & DIRTY != 0
    }
    pub(crate) fn set_dirty(&mut self, d: bool) {
        self.0 = if d { self.0 | DIRTY } else { self.0 & !DIRTY };
    }
    pub(crate) fn framed(self) -> bool {
        self.0 & FRAMED != 0
    }
    pub(crate) fn set_framed(&mut self, f: bool) {
        self.0 = if f { self.0 | FRAMED } else { self.0 & !FRAMED };
    }
    /// Host accessors copying the page now; a pinned page is not evicted.
    pub(crate) fn pins(self) -> u64 {
        (self.0 & PIN_MASK) >> PIN_SHIFT
    }
    /// Adds `delta` (±1) pins. Returns false if the count would leave 0..=0xFFFF.
    pub(crate) fn add_pin(&mut self, up: bool) -> bool {
        let p = self.pins();
        let p = if up {
            p.checked_add(1).filter(|&p| p <= 0xFFFF)
        } else {
            p.checked_sub(1)
        };
        match p {
            Some(p) => {
                self.0 = (self.0 & !PIN_MASK) | (p << PIN_SHIFT);
                true
            }
            None => false,
        }
    }
    /// Where the page is once it holds no frame: in the store if it has a copy
    /// there, else untouched (it reads as zero).
    pub(crate) fn state_without_frame(self) -> State {
        if self.slot().is_some() {
            State::InStore
        } else {
            State::Untouched
        }
    }
    /// The store slot holding a valid copy of this page.
    pub(crate) fn slot(self) -> Option<u32> {
        let s = self.0 >> SLOT_SHIFT;
        if s == 0 {
            None
        } else {
            u32::try_from(s - 1).ok()
        }
    }
    pub(crate) fn set_slot(&mut self, slot: Option<u32>) {
        let v = slot.map_or(0, |s| u64::from(s) + 1);
        self.0 = (self.0 & ((1 << SLOT_SHIFT) - 1)) | (v << SLOT_SHIFT);
    }
}

/// A lock (and a condition for waiting on Dropping pages) shared by the pages
/// whose index is congruent modulo the stripe count.
#[derive(Debug, Default)]
pub(crate) struct Stripe {
    lock: Mutex<()>,
    changed: Condvar,
}

/// Every page's state.
#[derive(Debug)]
pub(crate) struct PageTable {
    words: Box<[AtomicU64]>,
    /// Set at TLB fill, cleared by the clock hand.
    accessed: Box<[AtomicU8]>,
    stripes: Box<[Stripe]>,
    counts: [AtomicU64; STATES],
}

/// A page locked for a state change.
#[derive(Debug)]
pub(crate) struct PageGuard<'a> {
    table: &'a PageTable,
    index: usize,
    /// Always Some outside `wait_change`.
    guard: Option<MutexGuard<'a, ()>>,
    word: PageWord,
    before: PageWord,
}

/// The locked page's word: read and change it through the guard.
impl std::ops::Deref for PageGuard<'_> {
    type Target = PageWord;
    fn deref(&self) -> &PageWord {
        &self.word
    }
}

impl std::ops::DerefMut for PageGuard<'_> {
    fn deref_mut(&mut self) -> &mut PageWord {
        &mut self.word
    }
}

impl PageTable {
    pub(crate) fn new(pages: usize) -> PageTable {
        let stripes = pages.next_power_of_two().clamp(1, 1024);
        let counts = std::array::from_fn(|i| AtomicU64::new(if i == 0 { pages as u64 } else { 0 }));
        PageTable {
            words: (0..pages).map(|_| AtomicU64::new(0)).collect(),
            accessed: (0..pages).map(|_| AtomicU8::new(0)).collect(),
            stripes: (0..stripes).map(|_| Stripe::default()).collect(),
            counts,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.words.len()
    }

    fn stripe(&self, index: usize) -> &Stripe {
        &self.stripes[index & (self.stripes.len() - 1)]
    }

    /// Wakes whoever waits for a change of a page of `index`'s stripe
    /// ([`PageGuard::wait_change`]).
    pub(crate) fn notify_changed(&self, index: usize) {
        self.stripe(index).changed.notify_all();
    }

    /// Locks page `index`; changes to `word` are published when the guard drops.
    pub(crate) fn lock(&self, index: usize) -> PageGuard<'_> {
        let guard = lock(&self.stripe(index).lock);
        let word = PageWord(self.words[index].load(Ordering::Relaxed));
        PageGuard {
            table: self,
            index,
            guard: Some(guard),
            word,
            before: word,
        }
    }

    /// Reads a page's word without the lock (reports and invariant checks).
    pub(crate) fn peek(&self, index: usize) -> PageWord {
        PageWord(self.words[index].load(Ordering::Relaxed))
    }

    pub(crate) fn mark_accessed(&self, index: usize) {
        self.accessed[index].store(1, Ordering::Relaxed);
    }

    /// Clears the accessed bit; returns whether it was set.
    pub(crate) fn test_and_clear_accessed(&self, index: usize) -> bool {
        self.accessed[index].swap(0, Ordering::Relaxed) != 0
    }

    /// Pages in each state (exact when nothing is changing).
    pub(crate) fn counts(&self) -> [u64; STATES] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

impl PageGuard<'_> {
    /// Waits on the stripe's condition (for a Dropping page to settle), then
    /// reloads the word.
    pub(crate) fn wait_change(mut self) -> Self {
        self.publish();
        let guard = self.guard.take().expect("held");
        let guard = crate::sync::wait(&self.table.stripe(self.index).changed, guard);
        self.guard = Some(guard);
        self.word = self.table.peek(self.index);
        self.before = self.word;
        self
    }

    fn publish(&mut self) {
        if self.word != self.before {
            let t = self.table;
            let (old, new) = (self.before.state(), self.word.state());
            if old != new {
                t.counts[old as usize].fetch_sub(1, Ordering::Relaxed);
                t.counts[new as usize].fetch_add(1, Ordering::Relaxed);
            }
            t.words[self.index].store(self.word.0, Ordering::Relaxed);
            self.before = self.word;
        }
    }
}

impl Drop for PageGuard<'_> {
    fn drop(&mut self) {
        // Publish before the lock is released (fields drop after this body).
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_fields_are_independent() {
        let mut w = PageWord(0);
        w.set_state(State::Fetching);
        w.set_slot(Some(u32::MAX - 1));
        w.set_dirty(true);
        assert!(w.add_pin(true));
        w.set_framed(true);
        assert_eq!(w.state(), State::Fetching);
        assert_eq!(w.slot(), Some(u32::MAX - 1));
        assert!(w.dirty() && w.framed());
        assert_eq!(w.pins(), 1);
        w.set_slot(None);
        w.set_dirty(false);
        assert!(w.add_pin(false));
        assert!(!w.add_pin(false), "pins cannot go negative");
        assert_eq!(
            (w.slot(), w.dirty(), w.pins(), w.state()),
            (None, false, 0, State::Fetching)
        );
    }
}
