//! The TLB shootdown: the epoch every running vCPU must acknowledge before a
//! page may leave.
//!
//! The reclaimer marks a batch Evicting (no TLB can refill them), bumps the
//! epoch and waits until every vCPU has either acknowledged it (after flushing
//! its TLB) or is parked (it promised not to touch guest memory through its TLB
//! until it unparks, and flushes then if the epoch moved). Accesses happen only
//! between those points, so after the wait no vCPU can reach the batch's pages.
//! The dirty log (`dirty_log.rs`) shoots down too, so two shootdowns may wait
//! at once.

use std::sync::Arc;

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering, lock, wait};

/// One vCPU's side of the protocol.
#[derive(Debug)]
pub(crate) struct VcpuSlot {
    acked: AtomicU64,
    parked: AtomicBool,
}

/// The shootdown epoch and the vCPUs that must acknowledge it.
#[derive(Debug)]
pub(crate) struct Shootdown {
    epoch: AtomicU64,
    vcpus: Mutex<Vec<Arc<VcpuSlot>>>,
    /// Shootdowns waiting now (a count, not a flag: the first to finish must
    /// not stop the acknowledgements that wake the others).
    waiting: AtomicUsize,
    m: Mutex<()>,
    cv: Condvar,
}

impl Shootdown {
    pub(crate) fn new() -> Shootdown {
        Shootdown {
            epoch: AtomicU64::new(0),
            vcpus: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            m: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// The current epoch.
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A new vCPU, unparked, that has seen the epoch returned with it.
    pub(crate) fn register(&self) -> (Arc<VcpuSlot>, u64) {
        let seen = self.epoch();
        let slot = Arc::new(VcpuSlot {
            acked: AtomicU64::new(seen),
            parked: AtomicBool::new(false),
        });
        lock(&self.vcpus).push(Arc::clone(&slot));
        (slot, seen)
    }

    /// The vCPU (parked) is gone.
    pub(crate) fn unregister(&self, slot: &Arc<VcpuSlot>) {
        lock(&self.vcpus).retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// The vCPU flushed its TLB for epoch `e`.
    pub(crate) fn ack(&self, slot: &VcpuSlot, e: u64) {
        slot.acked.store(e, Ordering::SeqCst);
        self.notify_if_waiting();
    }

    /// The vCPU stops touching guest memory: shootdowns no longer wait for it.
    pub(crate) fn park(&self, slot: &VcpuSlot) {
        slot.parked.store(true, Ordering::SeqCst);
        self.notify_if_waiting();
    }

    /// The vCPU resumes; returns the epoch it must have flushed for.
    pub(crate) fn unpark(&self, slot: &VcpuSlot) -> u64 {
        slot.parked.store(false, Ordering::SeqCst);
        self.epoch()
    }

    /// The vCPU flushed on unparking (no shootdown waits on a parked vCPU, so
    /// nobody needs telling).
    pub(crate) fn acked_quietly(slot: &VcpuSlot, e: u64) {
        slot.acked.store(e, Ordering::SeqCst);
    }

    /// Returns once every vCPU has flushed its TLB or is parked.
    pub(crate) fn shoot_down(&self) {
        let e = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let vcpus: Vec<Arc<VcpuSlot>> = lock(&self.vcpus).clone();
        let mut g = lock(&self.m);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        loop {
            let done = vcpus
                .iter()
                .all(|v| v.parked.load(Ordering::SeqCst) || v.acked.load(Ordering::SeqCst) >= e);
            if done {
                break;
            }
            g = wait(&self.cv, g);
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn notify_if_waiting(&self) {
        if self.waiting.load(Ordering::SeqCst) != 0 {
            let _g = lock(&self.m);
            self.cv.notify_all();
        }
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn a_shootdown_waits_for_no_parked_vcpu_and_moves_the_epoch() {
        let sd = Shootdown::new();
        let (a, seen) = sd.register();
        let (b, _) = sd.register();
        assert_eq!(seen, 0);
        sd.park(&a);
        sd.park(&b);
        sd.shoot_down(); // would block forever if it waited on a parked vCPU
        assert_eq!(sd.epoch(), 1);
        assert_eq!(sd.unpark(&a), 1, "unparking reports the epoch to flush for");
    }

    #[test]
    fn an_acknowledged_vcpu_does_not_hold_up_the_next_shootdown_only_once() {
        let sd = Shootdown::new();
        let (a, _) = sd.register();
        // Acknowledging an epoch ahead of time covers shootdowns up to it.
        sd.ack(&a, 2);
        sd.shoot_down();
        sd.shoot_down();
        assert_eq!(sd.epoch(), 2);
        sd.unregister(&a);
        sd.shoot_down(); // nobody left to wait for
        assert_eq!(sd.epoch(), 3);
    }
}
