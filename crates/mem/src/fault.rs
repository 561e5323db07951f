//! Resolving a stage-2 fault on one page, and pinning pages for host copies.

use crate::memory::Inner;
use crate::metrics::bump;
use crate::page::{PageWord, State};

impl Inner {
    /// A vCPU faulted on page `index`. If it can be mapped now, returns whether it
    /// may be mapped writable (it is dirty); `None` if it needs a fetch.
    pub(crate) fn fault(&self, index: usize, write: bool) -> Option<bool> {
        let f = &self.counters.faults;
        let mut g = self.pages.lock(index);
        let mut took_frame = false;
        match g.word.state() {
            State::Resident => {
                if write && !g.word.dirty() {
                    self.make_dirty(&mut g.word);
                    bump(&f.write_protect);
                } else {
                    bump(&f.resident);
                }
            }
            State::Evicting => {
                self.rescue(&mut g.word, write);
            }
            State::Untouched if self.frames.try_take() => {
                g.word.set_state(State::Resident);
                g.word.set_dirty(write);
                took_frame = true;
                bump(&f.zero_fill);
            }
            _ => {
                bump(&f.needs_fetch);
                return None;
            }
        }
        self.pages.mark_accessed(index);
        let writable = g.word.dirty();
        drop(g);
        if took_frame {
            self.kick_reclaim_if_low();
        }
        Some(writable)
    }

    /// Marks a resident page written: its store copy (if any) is stale from now on.
    pub(crate) fn make_dirty(&self, w: &mut PageWord) {
        self.free_slot(w.slot());
        w.set_slot(None);
        w.set_dirty(true);
    }

    /// Aborts the eviction of an Evicting page because it is wanted again. The
    /// reclaimer notices at commit and drops whatever copy it was writing.
    pub(crate) fn rescue(&self, w: &mut PageWord, write: bool) {
        debug_assert_eq!(w.state(), State::Evicting);
        w.set_state(State::Resident);
        if write && !w.dirty() {
            self.make_dirty(w);
        }
        bump(&self.counters.faults.rescued);
    }

    /// Pins page `index` for a host copy if it is (or can at once be made)
    /// resident; a write marks it dirty. False if it needs a fetch first.
    pub(crate) fn pin(&self, index: usize, write: bool) -> bool {
        let mut g = self.pages.lock(index);
        let mut took_frame = false;
        match g.word.state() {
            State::Resident => {}
            State::Evicting => self.rescue(&mut g.word, write),
            State::Untouched if self.frames.try_take() => {
                g.word.set_state(State::Resident);
                took_frame = true;
                bump(&self.counters.faults.zero_fill);
            }
            _ => return false,
        }
        if !g.word.add_pin(true) {
            return false;
        }
        if write && !g.word.dirty() {
            self.make_dirty(&mut g.word);
        }
        self.pages.mark_accessed(index);
        drop(g);
        if took_frame {
            self.kick_reclaim_if_low();
        }
        true
    }

    /// Marks a page pinned by [`Inner::fetch_pinned`] dirty before a host write.
    pub(crate) fn mark_pinned_dirty(&self, index: usize) {
        let mut g = self.pages.lock(index);
        debug_assert!(g.word.state() == State::Resident && g.word.pins() > 0);
        if !g.word.dirty() {
            self.make_dirty(&mut g.word);
        }
    }

    /// Releases a pin taken by [`Inner::pin`] or [`Inner::fetch_pinned`].
    pub(crate) fn unpin(&self, index: usize) {
        let mut g = self.pages.lock(index);
        let ok = g.word.add_pin(false);
        debug_assert!(ok, "unpin without pin");
        drop(g);
        // The reclaimer may have stopped for want of unpinned pages.
        self.kick_reclaim_if_low();
    }
}
