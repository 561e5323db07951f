//! The host budget and the reclaimer that keeps resident pages under it.
//!
//! When fewer than a batch of frames (`frames.rs`) are left the reclaimer runs
//! CLOCK over the pages (second chance on the accessed bit set at TLB fill), marks a batch Evicting, shoots down every vCPU's TLB once for the
//! whole batch, writes the dirty ones, then drops them with one `madvise` per run
//! of pages. Clean pages with a valid store copy, and never-written pages, leave
//! without I/O. A fault on a chosen page before it is dropped rescues it.
//!
//! A store that refuses pages (full, or failing every write) never costs data: a
//! dirty page whose write fails stays resident and dirty, a dirty page with no
//! slot to go to is not chosen at all, and a fetch that cannot get a frame within
//! the budget gets one beyond it (`Frames::extend`, counted and
//! reported) rather than failing. The budget is a target; guest RAM is the limit.

use crate::memory::Inner;
use crate::metrics::{add, bump};
use crate::page::State;
use crate::pipeline::WriteOutcome;
use crate::store::{Slot, StoreFull};
use crate::sync::{Mutex, Ordering, lock};

/// Batches in a row whose every page the store refused before the fetches
/// waiting for a frame are given one beyond the budget.
const FAILED_ROUNDS: u32 = 3;

/// What one batch did.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    chosen: u64,
    freed: u64,
    /// Kept because the store refused their write.
    aborted: u64,
    /// Dirty pages passed over because the store had no slot for them.
    no_slot: Option<StoreFull>,
}

/// The reclaimer's clock hand and its reports (its wake-up is `Frames::kick`).
#[derive(Debug)]
pub(crate) struct Reclaim {
    /// The clock hand (only the reclaimer moves it; a lock of its own keeps the
    /// scan off the kickers' lock).
    hand: Mutex<usize>,
    /// Held for the whole of a batch, so checks can see a state between batches.
    pub(crate) batch: Mutex<()>,
    /// Why the store last refused a write.
    last_error: Mutex<Option<String>>,
    /// Why frames were last taken beyond the budget, for reports.
    pub(crate) over_budget_reason: Mutex<Option<String>>,
}

impl Reclaim {
    pub(crate) fn new() -> Reclaim {
        Reclaim {
            hand: Mutex::new(0),
            batch: Mutex::new(()),
            last_error: Mutex::new(None),
            over_budget_reason: Mutex::new(None),
        }
    }
}

/// A page chosen for eviction.
#[derive(Debug)]
struct Victim {
    index: usize,
    /// Needs writing (dirty, so it has no valid store copy).
    dirty: bool,
    /// Where it is being written.
    new_slot: Option<Slot>,
    write: Option<WriteOutcome>,
}

impl Inner {
    pub(crate) fn kick_reclaim(&self) {
        self.frames.kick();
    }

    pub(crate) fn kick_reclaim_if_low(&self) {
        self.frames.kick_if_low();
    }

    pub(crate) fn wake_reclaimer(&self) {
        self.frames.wake();
    }

    /// Sleeps until kicked, then reclaims. A round that cannot progress (every
    /// resident page pinned) ends and waits for the next kick: a frame taken, a
    /// fetch waiting for one, or a pin released, so nothing spins.
    pub(crate) fn reclaim_loop(&self) {
        while self.frames.wait_kick(&self.stop) {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            self.reclaim_until_satisfied();
        }
    }

    fn reclaim_until_satisfied(&self) {
        let mut failed_rounds = 0;
        while !self.stop.load(Ordering::SeqCst)
            && (!self.frames.satisfied() || !self.pipe.state().frame_waiters.is_empty())
        {
            // Frames freed by anyone (a failed fetch, an earlier round) go to the
            // fetches waiting for one first.
            self.grant_frames();
            let seen = self.pipe.state().dispatches;
            let round = {
                let _batch = lock(&self.reclaim.batch);
                let round = self.evict_batch();
                if round.freed > 0 {
                    self.grant_frames();
                }
                round
            };
            if round.freed > 0 {
                failed_rounds = 0;
                continue;
            }
            if round.aborted > 0 {
                // The store refuses writes: after a few tries, the fetches
                // waiting for a frame get one beyond the budget.
                failed_rounds += 1;
                if failed_rounds >= FAILED_ROUNDS {
                    let why = lock(&self.reclaim.last_error).clone().unwrap_or_default();
                    self.overrun_budget(why);
                    return;
                }
                continue;
            }
            if round.chosen > 0 {
                continue; // all rescued: try the next ones
            }
            if let Some(full) = round.no_slot {
                // Every page that could leave is dirty and the store has no
                // room: nothing will change until a slot is freed.
                let why = match lock(&self.reclaim.last_error).as_ref() {
                    Some(write) => format!("{full} (the last write refused: {write})"),
                    None => full.to_string(),
                };
                self.overrun_budget(why);
                return;
            }
            // Nothing evictable: frames are held by pages being fetched (wait for
            // them to land; then they can go) or pinned (wait for a kick).
            let (reads, writes) = self.in_flight_by_kind();
            if reads + writes == 0 {
                return;
            }
            self.wait_dispatch_after(seen);
        }
    }

    /// Extends the budget for the fetches waiting for a frame (and two batches
    /// more), because reclaim cannot free one (`why`), and grants them.
    fn overrun_budget(&self, why: String) {
        let waiting = self.pipe.state().frame_waiters.len() as u64;
        if waiting == 0 {
            return;
        }
        // Explained before any page can be seen: a fetch's waiter may look.
        *lock(&self.reclaim.over_budget_reason) = Some(why);
        self.frames.extend(waiting + 2 * self.frames.batch());
        self.grant_frames();
    }

    /// Evicts one batch. The caller holds the batch lock.
    fn evict_batch(&self) -> Round {
        let ev = &self.counters.evict;
        let (mut victims, no_slot) = self.choose_victims();
        let mut round = Round {
            chosen: victims.len() as u64,
            no_slot,
            ..Round::default()
        };
        if victims.is_empty() {
            return round;
        }
        bump(&ev.batches);
        add(&ev.chosen, victims.len() as u64);

        // Every vCPU drops its mappings (they cannot refill: the pages are
        // Evicting) before anything is read from or discarded in them.
        self.shoot.shoot_down();
        bump(&ev.shootdowns);

        let writes: Vec<(usize, Slot)> = victims
            .iter()
            .filter_map(|v| Some((v.index, v.new_slot?)))
            .collect();
        if !writes.is_empty() {
            let tags = self.queue_writes(&writes);
            let outcomes = self.wait_writes(&tags);
            let mut it = outcomes.into_iter();
            for v in victims.iter_mut().filter(|v| v.new_slot.is_some()) {
                v.write = it.next();
            }
        }

        let mut dropping = Vec::new();
        for v in &victims {
            let mut g = self.pages.lock(v.index);
            let keep_slot = |slot: Option<Slot>| match (&v.write, slot) {
                (Some(WriteOutcome::TimedOut), Some(_)) => bump(&self.counters.io.slots_abandoned),
                (_, s) => self.free_slot(s.map(|s| s.0)),
            };
            if g.word.state() != State::Evicting {
                // Rescued by a fault while we worked: whatever we wrote is stale.
                bump(&ev.rescued);
                keep_slot(v.new_slot);
                continue;
            }
            match (&v.write, v.dirty) {
                (_, false) => {
                    bump(if g.word.slot().is_some() {
                        &ev.dropped_clean
                    } else {
                        &ev.dropped_zero
                    });
                }
                (Some(WriteOutcome::Written), true) => {
                    g.word.set_slot(v.new_slot.map(|s| s.0));
                    g.word.set_dirty(false);
                    bump(&ev.written);
                    self.frames.pay_back(1);
                }
                (w, true) => {
                    // The write failed: the page stays, still dirty.
                    let why = match w {
                        Some(WriteOutcome::Failed(e)) => e.clone(),
                        _ => format!("a write did not complete within {:?}", self.io_timeout),
                    };
                    *lock(&self.reclaim.last_error) = Some(why);
                    round.aborted += 1;
                    g.word.set_state(State::Resident);
                    keep_slot(v.new_slot);
                    bump(&ev.aborted);
                    continue;
                }
            }
            g.word.set_state(State::Dropping);
            dropping.push(v.index);
        }

        dropping.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &index in &dropping {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == index => *count += 1,
                _ => runs.push((index, 1)),
            }
        }
        if self.ram.discard_runs(&runs).is_err() {
            // Cannot happen for our own mapping; if it did, pages going back to
            // untouched must still read as zero (a fetch overwrites the others).
            for &index in &dropping {
                if self.pages.peek(index).slot().is_none() {
                    // SAFETY: a Dropping page is mapped by no TLB and pinned by no
                    // host copy; the mapping holds the whole page.
                    unsafe {
                        crate::ram::copy_to_shared(
                            &[0u8; crate::ram::PAGE],
                            self.ram.page_ptr(index),
                        )
                    };
                }
            }
        }
        for &index in &dropping {
            let mut g = self.pages.lock(index);
            g.word.set_state(if g.word.slot().is_some() {
                State::InStore
            } else {
                State::Untouched
            });
            self.pages.stripe(index).changed.notify_all();
        }
        self.frames.release(dropping.len() as u64);
        round.freed = dropping.len() as u64;
        round
    }

    /// Runs the clock hand over at most two rotations and marks up to a batch of
    /// unpinned resident pages without the accessed bit Evicting, each dirty one
    /// with the slot it will be written to. Dirty pages are passed over once the
    /// store has no slot left (returned), so a full store costs no shootdown,
    /// and then one rotation is all: the budget is extended instead.
    fn choose_victims(&self) -> (Vec<Victim>, Option<StoreFull>) {
        let n = self.pages.len();
        let want = usize::try_from(self.frames.batch()).unwrap_or(usize::MAX);
        let mut hand = lock(&self.reclaim.hand);
        let mut victims = Vec::new();
        let mut no_slot = None;
        for step in 0..2 * n {
            if victims.len() >= want {
                break;
            }
            // The second rotation finds only pages used since the first: with
            // the dirty ones stuck for want of a slot, those are the guest's
            // working set, and evicting them would read them straight back.
            if step == n && no_slot.is_some() {
                break;
            }
            let index = *hand;
            *hand = (*hand + 1) % n;
            let w = self.pages.peek(index);
            if w.state() != State::Resident || w.pins() != 0 {
                continue;
            }
            if self.pages.test_and_clear_accessed(index) {
                continue;
            }
            let mut g = self.pages.lock(index);
            if g.word.state() != State::Resident || g.word.pins() != 0 {
                continue;
            }
            let dirty = g.word.dirty();
            let new_slot = if dirty {
                if no_slot.is_some() {
                    continue;
                }
                match self.store.alloc_slot() {
                    Ok(s) => Some(s),
                    Err(full) => {
                        no_slot = Some(full);
                        continue;
                    }
                }
            } else {
                None
            };
            g.word.set_state(State::Evicting);
            victims.push(Victim {
                index,
                dirty,
                new_slot,
                write: None,
            });
        }
        (victims, no_slot)
    }
}
