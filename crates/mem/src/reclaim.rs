//! The reclaimer: keeps resident pages under the host budget.
//!
//! When fewer than a batch of frames (`frames.rs`) are left it runs CLOCK over
//! the pages (second chance on the accessed bit set at TLB fill; a rotation
//! that finds every page used flushes the TLBs and lets the guest run before
//! the next one, rather than taking pages it knows nothing about), has the pager
//! mark a batch Evicting, shoots down every vCPU's TLB once for the whole batch,
//! has the dirty ones written, then has them dropped with one `madvise` per run
//! of pages. Clean pages with a valid store copy, and never-written pages, leave
//! without I/O. A fault on a chosen page before it is dropped rescues it. Every
//! page-state change is the pager's; the reclaimer decides which and when.
//!
//! A store that refuses pages (full, or failing every write) never costs data: a
//! dirty page whose write fails stays resident and dirty, a dirty page with no
//! slot to go to is not chosen at all, and a fetch that cannot get a frame within
//! the budget gets one beyond it (`Frames::extend`, counted and reported) rather
//! than failing. The budget is a target; guest RAM is the limit.

use crate::io::WriteOutcome;
use crate::metrics::{EvictCounters, EvictCounts, add, bump};
use crate::pager::{Evicted, Pager, Pick};
use crate::shootdown::Shootdown;
use crate::store::{Slot, StoreFull};
use crate::sync::{AtomicBool, Mutex, MutexGuard, Ordering, lock};

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
    /// Chose nothing, every candidate having been used since the hand last
    /// passed; the TLBs were flushed so that the next rotation can choose.
    all_used: bool,
}

/// The reclaimer's clock hand, counters and reports (its wake-up is
/// `Frames::kick`).
#[derive(Debug)]
pub(crate) struct Reclaimer {
    /// The clock hand (only the reclaimer moves it; a lock of its own keeps the
    /// scan off the kickers' lock).
    hand: Mutex<usize>,
    /// Held for the whole of a batch, so checks can see a state between batches.
    batch: Mutex<()>,
    /// Why the store last refused a write.
    last_error: Mutex<Option<String>>,
    /// Why frames were last taken beyond the budget, for reports.
    over_budget_reason: Mutex<Option<String>>,
    counters: EvictCounters,
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

impl Reclaimer {
    pub(crate) fn new() -> Reclaimer {
        Reclaimer {
            hand: Mutex::new(0),
            batch: Mutex::new(()),
            last_error: Mutex::new(None),
            over_budget_reason: Mutex::new(None),
            counters: EvictCounters::default(),
        }
    }

    pub(crate) fn snapshot(&self) -> EvictCounts {
        self.counters.snapshot()
    }

    /// Why frames were last taken beyond the budget.
    pub(crate) fn over_budget_reason(&self) -> Option<String> {
        lock(&self.over_budget_reason).clone()
    }

    /// Keeps the reclaimer between batches while held (for consistency checks).
    pub(crate) fn between_batches(&self) -> MutexGuard<'_, ()> {
        lock(&self.batch)
    }

    /// Sleeps until kicked, then reclaims, until `stop`. A round that cannot
    /// progress (every resident page pinned) ends and waits for the next kick: a
    /// frame taken, a fetch waiting for one, or a pin released, so nothing spins.
    pub(crate) fn run(&self, pager: &Pager, shoot: &Shootdown, stop: &AtomicBool) {
        while pager.frames().wait_kick(stop) {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            self.reclaim_until_satisfied(pager, shoot, stop);
        }
    }

    fn reclaim_until_satisfied(&self, pager: &Pager, shoot: &Shootdown, stop: &AtomicBool) {
        let frames = pager.frames();
        let mut failed_rounds = 0;
        while !stop.load(Ordering::SeqCst)
            && (!frames.satisfied() || pager.waiting_for_frames() != 0)
        {
            // Frames freed by anyone (a failed fetch, an earlier round) go to the
            // fetches waiting for one first.
            pager.grant_frames();
            let seen = pager.io().dispatches();
            let round = {
                let _batch = lock(&self.batch);
                let round = self.evict_batch(pager, shoot);
                if round.freed > 0 {
                    pager.grant_frames();
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
                    let why = lock(&self.last_error).clone().unwrap_or_default();
                    self.overrun_budget(pager, why);
                    return;
                }
                continue;
            }
            if round.chosen > 0 || round.all_used {
                continue; // all rescued, or all used: look again
            }
            if let Some(full) = round.no_slot {
                // Every page that could leave is dirty and the store has no
                // room: nothing will change until a slot is freed.
                let why = match lock(&self.last_error).as_ref() {
                    Some(write) => format!("{full} (the last write refused: {write})"),
                    None => full.to_string(),
                };
                self.overrun_budget(pager, why);
                return;
            }
            // Nothing evictable: frames are held by pages being fetched (wait for
            // them to land; then they can go) or pinned (wait for a kick).
            let (reads, writes) = pager.io().in_flight_by_kind();
            if reads + writes == 0 {
                return;
            }
            pager.wait_dispatch_after(seen);
        }
    }

    /// Extends the budget for the fetches waiting for a frame (and two batches
    /// more), because reclaim cannot free one (`why`), and grants them.
    fn overrun_budget(&self, pager: &Pager, why: String) {
        let waiting = pager.waiting_for_frames() as u64;
        if waiting == 0 {
            return;
        }
        // Explained before any page can be seen: a fetch's waiter may look.
        *lock(&self.over_budget_reason) = Some(why);
        let frames = pager.frames();
        frames.extend(waiting + 2 * frames.batch());
        pager.grant_frames();
    }

    /// Evicts one batch. The caller holds the batch lock.
    fn evict_batch(&self, pager: &Pager, shoot: &Shootdown) -> Round {
        let ev = &self.counters;
        let (mut victims, no_slot, used) = self.choose_victims(pager);
        let mut round = Round {
            chosen: victims.len() as u64,
            no_slot,
            ..Round::default()
        };
        if victims.is_empty() {
            if used && no_slot.is_none() {
                // Every candidate was used since the hand last passed. Their
                // bits are clear now, but a use hitting a TLB would not set
                // one again: flush them all, so the next rotation sees which
                // pages the guest used meanwhile (the shootdown lasts until
                // every running vCPU ends its slice).
                shoot.shoot_down();
                bump(&ev.shootdowns);
                bump(&ev.all_used);
                round.all_used = true;
            }
            return round;
        }
        bump(&ev.batches);
        add(&ev.chosen, victims.len() as u64);

        // Every vCPU drops its mappings (they cannot refill: the pages are
        // Evicting) before anything is read from or discarded in them.
        shoot.shoot_down();
        bump(&ev.shootdowns);

        let writes: Vec<(usize, Slot)> = victims
            .iter()
            .filter_map(|v| Some((v.index, v.new_slot?)))
            .collect();
        if !writes.is_empty() {
            let outcomes = pager.write_evicting(&writes);
            let mut it = outcomes.into_iter();
            for v in victims.iter_mut().filter(|v| v.new_slot.is_some()) {
                v.write = it.next();
            }
        }

        let io = pager.io();
        let mut dropping = Vec::new();
        for v in &victims {
            // The slot written for nothing goes back to the store, unless its
            // write timed out and may still land: then it is never reused.
            let give_back_slot = |slot: Option<Slot>| match (&v.write, slot) {
                (Some(WriteOutcome::TimedOut), Some(_)) => io.abandon_slot(),
                (_, s) => io.free_slot(s.map(|s| s.0)),
            };
            let written = match v.write {
                Some(WriteOutcome::Written) => v.new_slot,
                _ => None,
            };
            match pager.end_eviction(v.index, v.dirty, written) {
                Evicted::Rescued => {
                    // Whatever we wrote is stale.
                    bump(&ev.rescued);
                    give_back_slot(v.new_slot);
                }
                Evicted::Kept => {
                    let why = match &v.write {
                        Some(WriteOutcome::Failed(e)) => e.clone(),
                        _ => format!("a write did not complete within {:?}", io.timeout()),
                    };
                    *lock(&self.last_error) = Some(why);
                    round.aborted += 1;
                    give_back_slot(v.new_slot);
                    bump(&ev.aborted);
                }
                how => {
                    bump(match how {
                        Evicted::Clean => &ev.dropped_clean,
                        Evicted::Zero => &ev.dropped_zero,
                        _ => &ev.written,
                    });
                    if how == Evicted::Written {
                        pager.frames().pay_back(1);
                    }
                    dropping.push(v.index);
                }
            }
        }
        pager.finish_dropping(&mut dropping);
        round.freed = dropping.len() as u64;
        round
    }

    /// Runs the clock hand over at most one rotation and has up to a batch of
    /// unpinned resident pages without the accessed bit marked Evicting, each
    /// dirty one with the slot it will be written to. Dirty pages are passed
    /// over once the store has no slot left (returned), so a full store costs no
    /// shootdown. Also returns whether any page was passed over only for being
    /// used since the hand last passed.
    ///
    /// Never a second rotation at once: the bits it would read were cleared
    /// moments ago and, while the pages stay in the TLBs, would not be set again
    /// by any use, so it would take the first pages it met however hot (the
    /// guest kernel's, at the bottom of RAM, when every page was just used).
    fn choose_victims(&self, pager: &Pager) -> (Vec<Victim>, Option<StoreFull>, bool) {
        let n = pager.pages();
        let want = usize::try_from(pager.frames().batch()).unwrap_or(usize::MAX);
        let mut hand = lock(&self.hand);
        let mut victims = Vec::new();
        let mut no_slot = None;
        let mut used = false;
        for _ in 0..n {
            if victims.len() >= want {
                break;
            }
            let index = *hand;
            *hand = (*hand + 1) % n;
            match pager.start_evicting(index, no_slot.is_none()) {
                Pick::Skip => {}
                Pick::Used => used = true,
                Pick::NoSlot(full) => no_slot = Some(full),
                Pick::Chosen { dirty, new_slot } => victims.push(Victim {
                    index,
                    dirty,
                    new_slot,
                    write: None,
                }),
            }
        }
        (victims, no_slot, used)
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    //! The reclaimer on one thread, with no vCPU to shoot down.

    use std::sync::Arc;

    use super::*;
    use crate::page::State;
    use apf_abi::Gfn;

    use crate::pager::tests::{BASE, Sink, pager};
    use crate::pager::{Fault, FetchStart, PageIndex, Waiter};

    #[test]
    fn a_batch_writes_the_dirty_pages_and_drops_the_clean_ones() {
        let p = pager(4, 4, 8);
        let shoot = Shootdown::new();
        let r = Reclaimer::new();
        assert!(matches!(p.fault(BASE, true), Fault::Map { .. }));
        assert!(matches!(p.fault(Gfn(BASE.0 + 1), false), Fault::Map { .. }));
        // Both pages were used since the hand last passed (never): the first
        // rotation clears their bits, takes nothing and flushes the TLBs.
        let round = r.evict_batch(&p, &shoot);
        assert_eq!((round.chosen, round.all_used), (0, true));
        assert_eq!(
            shoot.epoch(),
            1,
            "the TLBs are flushed, so uses set bits again"
        );
        assert_eq!(p.word(0).state(), State::Resident);
        // Batches of one: unused since, page 0 goes, then page 1.
        let round = r.evict_batch(&p, &shoot);
        assert_eq!((round.chosen, round.freed, round.aborted), (1, 1, 0));
        assert_eq!(p.word(0).state(), State::InStore);
        assert_eq!(shoot.epoch(), 2, "one shootdown per batch");
        let round = r.evict_batch(&p, &shoot);
        assert_eq!((round.chosen, round.freed), (1, 1));
        assert_eq!(p.word(1).state(), State::Untouched);
        assert_eq!(p.frames().used(), 0);
        let e = r.snapshot();
        assert_eq!(
            (
                e.batches,
                e.all_used,
                e.shootdowns,
                e.chosen,
                e.written,
                e.dropped_zero,
                e.dropped_clean
            ),
            (2, 1, 3, 2, 1, 1, 0)
        );
        assert_eq!(r.evict_batch(&p, &shoot).chosen, 0, "nothing left");
    }

    #[test]
    fn a_full_store_extends_the_budget_for_the_fetch_that_waits() {
        let p = pager(4, 2, 0);
        let (shoot, r, stop) = (Shootdown::new(), Reclaimer::new(), AtomicBool::new(false));
        assert!(matches!(p.fault(BASE, true), Fault::Map { .. }));
        assert!(matches!(p.fault(Gfn(BASE.0 + 1), true), Fault::Map { .. }));
        let sink = Arc::new(Sink::default());
        assert_eq!(
            p.start_fetch(PageIndex(2), Waiter::Sink(sink.clone(), 9)),
            FetchStart::Started
        );
        assert_eq!(p.waiting_for_frames(), 1);
        r.reclaim_until_satisfied(&p, &shoot, &stop);
        assert_eq!(*sink.0.lock().unwrap(), [(9, Ok(()))]);
        assert_eq!(p.word(2).state(), State::Resident);
        assert_eq!(p.frames().taken_over_budget(), 1);
        let e = r.snapshot();
        assert_eq!(
            (e.shootdowns, e.all_used, e.batches),
            (1, 1, 0),
            "a full store costs no shootdown (the one is for the first rotation, \
             which found both pages used)"
        );
        let why = r.over_budget_reason().expect("explained");
        assert!(why.contains("full"), "{why}");
        // Both dirty pages stayed: nothing was lost.
        assert_eq!(p.counts()[State::Resident as usize], 3);
    }
}
