//! Frames: the host budget, how much of it is in use, and the signal that it
//! runs low (the reclaimer's wake-up).
//!
//! A frame is the host memory one resident page uses. Taking one (first touch,
//! fetch) counts against the budget; when fewer than a batch are left whoever
//! took it kicks the reclaimer. The kick lives here, not with the reclaimer, so
//! the pager that takes frames need not know who frees them.
//!
//! While the store refuses pages the budget is extended (`extra`) rather than
//! the fetches that need a frame failed: enough to take them and two batches
//! more, so the pages just brought in are not evicted again at once (with every
//! other page dirty and stuck, CLOCK would pick exactly them). A write the
//! store takes again pays the extension back.

use crate::sync::{AtomicBool, AtomicU64, Condvar, Mutex, Ordering, lock, wait};

#[derive(Debug)]
pub(crate) struct Frames {
    used: AtomicU64,
    /// The most ever in use at once.
    peak: AtomicU64,
    /// Frames allowed beyond the budget while the store refuses pages.
    extra: AtomicU64,
    /// Frames taken while the budget was already full (the overrun, counted
    /// before the page can be seen).
    over: AtomicU64,
    budget: u64,
    batch: u64,
    /// A kick is pending (once until the reclaimer has run).
    wanted: AtomicBool,
    /// Guards the wake-up only: a fault that kicks the reclaimer takes it, so it
    /// is never held across a scan.
    m: Mutex<()>,
    cv: Condvar,
}

impl Frames {
    pub(crate) fn new(budget: u64, batch: u64) -> Frames {
        Frames {
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            extra: AtomicU64::new(0),
            over: AtomicU64::new(0),
            budget,
            batch: batch.min(budget).max(1),
            wanted: AtomicBool::new(false),
            m: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.budget + self.extra.load(Ordering::Acquire)
    }

    /// Takes a frame if the budget (and its extension) allows.
    pub(crate) fn try_take(&self) -> bool {
        let limit = self.limit();
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < limit).then_some(u + 1)
            });
        let Ok(before) = taken else { return false };
        if before >= self.budget {
            self.over.fetch_add(1, Ordering::Relaxed);
        }
        self.peak.fetch_max(before + 1, Ordering::Relaxed);
        true
    }

    /// Lets `n` more frames than the budget be taken.
    pub(crate) fn extend(&self, n: u64) {
        self.extra.fetch_add(n, Ordering::AcqRel);
    }

    /// The store took `n` pages again: shrinks the extension by as many.
    pub(crate) fn pay_back(&self, n: u64) {
        let _ = self
            .extra
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                (e > 0).then(|| e.saturating_sub(n))
            });
    }

    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Frames taken with the budget full, over the whole run.
    pub(crate) fn taken_over_budget(&self) -> u64 {
        self.over.load(Ordering::Relaxed)
    }

    pub(crate) fn release(&self, n: u64) {
        let prev = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "released more frames than taken");
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Pages per eviction batch.
    pub(crate) fn batch(&self) -> u64 {
        self.batch
    }

    fn free(&self) -> u64 {
        self.limit().saturating_sub(self.used())
    }

    /// Fewer than a batch free: time to reclaim.
    fn low(&self) -> bool {
        self.free() < self.batch
    }

    /// Reclaim until two batches are free (or the budget, if smaller).
    pub(crate) fn satisfied(&self) -> bool {
        self.free() >= (2 * self.batch).min(self.budget)
    }

    /// Wakes the reclaimer (once until it has run).
    pub(crate) fn kick(&self) {
        if !self.wanted.swap(true, Ordering::SeqCst) {
            let _g = lock(&self.m);
            self.cv.notify_one();
        }
    }

    /// Wakes the reclaimer if fewer than a batch of frames are free.
    pub(crate) fn kick_if_low(&self) {
        if self.low() {
            self.kick();
        }
    }

    /// Wakes the reclaimer whether kicked or not (shutdown).
    pub(crate) fn wake(&self) {
        let _g = lock(&self.m);
        self.cv.notify_all();
    }

    /// The reclaimer's sleep: returns true once kicked, false once `stop` is set.
    pub(crate) fn wait_kick(&self, stop: &AtomicBool) -> bool {
        let mut g = lock(&self.m);
        while !self.wanted.swap(false, Ordering::SeqCst) {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            g = wait(&self.cv, g);
        }
        true
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn frames_stop_at_the_budget_and_count_the_extension_as_overrun() {
        let f = Frames::new(4, 2);
        assert!((0..4).all(|_| f.try_take()));
        assert!(!f.try_take(), "the budget is full");
        assert_eq!((f.used(), f.peak(), f.taken_over_budget()), (4, 4, 0));
        f.extend(2);
        assert!(f.try_take() && f.try_take());
        assert!(!f.try_take(), "the extension is used up");
        assert_eq!((f.used(), f.peak(), f.taken_over_budget()), (6, 6, 2));
        f.release(3);
        assert_eq!((f.used(), f.peak()), (3, 6));
    }

    #[test]
    fn paying_back_shrinks_the_extension_never_below_the_budget() {
        let f = Frames::new(2, 1);
        f.extend(2);
        f.pay_back(1);
        f.pay_back(5);
        assert!(f.try_take() && f.try_take());
        assert!(!f.try_take(), "the whole extension was paid back");
        assert_eq!(f.taken_over_budget(), 0);
    }

    #[test]
    fn low_and_satisfied_follow_the_free_frames() {
        let f = Frames::new(8, 2);
        assert!(!f.low() && f.satisfied());
        for _ in 0..5 {
            assert!(f.try_take());
        }
        // 3 free: not low (>= a batch), not satisfied (< two batches).
        assert!(!f.low() && !f.satisfied());
        assert!(f.try_take() && f.try_take());
        assert!(f.low(), "1 free is less than a batch");
        // The batch never exceeds the budget.
        assert_eq!(Frames::new(3, 100).batch(), 3);
    }

    #[test]
    fn a_kick_is_remembered_until_the_reclaimer_takes_it() {
        let f = Frames::new(2, 1);
        let stop = AtomicBool::new(false);
        f.kick();
        f.kick(); // one pending kick, however many
        assert!(f.wait_kick(&stop));
        stop.store(true, Ordering::SeqCst);
        assert!(!f.wait_kick(&stop), "no kick left: stop is seen");
        assert!(f.try_take() && f.try_take());
        f.kick_if_low();
        assert!(f.wait_kick(&stop), "the budget is full: low kicks");
    }
}
