//! Broadcast maintenance: the TLB and instruction-cache operations one vCPU
//! performs for the whole inner-shareable domain (TLBI …IS, IC IVAU, IC IALLUIS).
//!
//! Each vCPU caches stage-1 translations and decoded instructions of its own, so an
//! operation that the architecture broadcasts must reach the other vCPUs' caches
//! before the issuing instruction completes (its DSB would wait for that on
//! hardware). The issuer posts the operation to every other vCPU's inbox, kicks it,
//! and waits until each one that is executing guest code has applied its inbox. A
//! vCPU that is not executing guest code (halted, blocked in the host, off) is not
//! waited for: it applies its inbox before it next enters the guest.
//!
//! Ordering (SeqCst on both sides, as a Dekker pair): the issuer posts, then reads
//! the target's `in_guest`; the target sets `in_guest`, then drains its inbox. So
//! either the issuer sees the target in the guest and waits for it, or the target's
//! drain sees the post.
//!
//! The flags are [`Word`]s, so the model-checked test (`tests/maintenance_shuttle.rs`)
//! runs this code on shuttle's atomics.
//!
//! Two vCPUs can broadcast at once and wait for each other. A waiter therefore
//! also takes its own inbox while it waits and tells its caller to apply it at
//! once (the interpreter drops its whole TLB and decoded code), so no waiter waits
//! on a vCPU that waits on it.

use crate::gic::Word;
use crate::sync::lock;
use apf_cpu::Broadcast;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// Decoded pages queued for one vCPU beyond which it drops all of them instead.
const CODE_PAGES_MAX: usize = 64;

/// What a vCPU must apply before it runs guest code again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Drop every cached stage-1 translation.
    pub tlb: bool,
    /// Drop every decoded page.
    pub all_code: bool,
    /// Drop the decoded pages holding these guest-physical addresses.
    pub code_pages: Vec<u64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.tlb && !self.all_code && self.code_pages.is_empty()
    }

    fn add(&mut self, op: Broadcast) {
        match op {
            Broadcast::Tlb => self.tlb = true,
            Broadcast::AllCode => self.all_code = true,
            Broadcast::CodePage(pa) => {
                if self.code_pages.len() < CODE_PAGES_MAX {
                    self.code_pages.push(pa);
                } else {
                    self.all_code = true;
                    self.code_pages.clear();
                }
            }
        }
    }
}

/// One vCPU's inbox. `in_guest` and `posted` are 0 or 1. (The pending set's
/// lock is never held across an operation on the words, so under shuttle it is
/// never seen contended.)
struct Inbox<W> {
    in_guest: W,
    /// Whether `pending` holds something (read without the lock by waiters).
    posted: W,
    pending: Mutex<Pending>,
}

/// Every vCPU's inbox.
pub struct Maintenance<W: Word = AtomicU64> {
    inboxes: Box<[Inbox<W>]>,
}

impl<W: Word> std::fmt::Debug for Maintenance<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintenance")
            .field("vcpus", &self.inboxes.len())
            .finish_non_exhaustive()
    }
}

impl<W: Word> Maintenance<W> {
    /// Inboxes for `vcpus` vCPUs, none in the guest.
    pub fn new(vcpus: usize) -> Self {
        Maintenance {
            inboxes: (0..vcpus)
                .map(|_| Inbox {
                    in_guest: W::new(0),
                    posted: W::new(0),
                    pending: Mutex::new(Pending::default()),
                })
                .collect(),
        }
    }

    /// vCPU `index` is about to run guest code: returns what it must apply first.
    pub fn enter_guest(&self, index: usize) -> Option<Pending> {
        let inbox = self.inboxes.get(index)?;
        inbox.in_guest.set(1);
        self.take(inbox)
    }

    /// vCPU `index` stopped running guest code (until its next `enter_guest`).
    pub fn leave_guest(&self, index: usize) {
        if let Some(inbox) = self.inboxes.get(index) {
            inbox.in_guest.set(0);
        }
    }

    fn take(&self, inbox: &Inbox<W>) -> Option<Pending> {
        if inbox.posted.get() == 0 {
            return None;
        }
        let mut pending = lock(&inbox.pending);
        inbox.posted.set(0);
        let p = std::mem::take(&mut *pending);
        (!p.is_empty()).then_some(p)
    }

    /// vCPU `from` performs `op` for the domain: posts it to every other vCPU,
    /// calls `kick` for each, and returns once each is out of the guest or has
    /// applied it (or `give_up` says the machine is stopping). Returns `true` when
    /// `from` itself received broadcasts meanwhile and must drop its whole TLB and
    /// decoded code before it executes another instruction.
    pub fn broadcast(
        &self,
        from: usize,
        op: Broadcast,
        kick: impl Fn(usize),
        give_up: impl Fn() -> bool,
    ) -> bool {
        for (i, inbox) in self.inboxes.iter().enumerate() {
            if i == from {
                continue;
            }
            lock(&inbox.pending).add(op);
            inbox.posted.set(1);
            kick(i);
        }
        let mut owed = false;
        for (i, inbox) in self.inboxes.iter().enumerate() {
            if i == from {
                continue;
            }
            let mut spins = 0u32;
            while inbox.in_guest.get() == 1 && inbox.posted.get() == 1 {
                if let Some(own) = self.inboxes.get(from) {
                    owed |= self.take(own).is_some();
                }
                if give_up() {
                    return true;
                }
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        owed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn a_vcpu_out_of_the_guest_is_not_waited_for_and_applies_on_entry() {
        let m: Maintenance = Maintenance::new(3);
        let kicks = AtomicUsize::new(0);
        // Nobody in the guest: returns at once, owes nothing.
        let owed = m.broadcast(
            0,
            Broadcast::Tlb,
            |_| {
                kicks.fetch_add(1, Ordering::SeqCst);
            },
            || false,
        );
        assert!(!owed);
        assert_eq!(kicks.load(Ordering::SeqCst), 2, "the two others are kicked");
        m.broadcast(0, Broadcast::CodePage(0x4000_1000), |_| {}, || false);
        let p = m.enter_guest(1).expect("posted while out of the guest");
        assert!(p.tlb && !p.all_code);
        assert_eq!(p.code_pages, vec![0x4000_1000]);
        assert_eq!(m.enter_guest(1), None, "applied once");
        assert_eq!(m.enter_guest(0), None, "the issuer posts nothing to itself");
    }

    #[test]
    fn too_many_code_pages_become_all_code() {
        let m: Maintenance = Maintenance::new(2);
        for i in 0..=CODE_PAGES_MAX as u64 {
            m.broadcast(0, Broadcast::CodePage(i << 12), |_| {}, || false);
        }
        let p = m.enter_guest(1).unwrap();
        assert!(p.all_code && p.code_pages.is_empty() && !p.tlb);
    }

    #[test]
    fn the_issuer_waits_for_a_vcpu_in_the_guest_until_it_applies() {
        let m: Arc<Maintenance> = Arc::new(Maintenance::new(2));
        assert_eq!(m.enter_guest(1), None);
        let applied = Arc::new(AtomicBool::new(false));
        let target = std::thread::spawn({
            let (m, applied) = (Arc::clone(&m), Arc::clone(&applied));
            move || {
                // The target polls as the interpreter polls its kick flag.
                loop {
                    m.leave_guest(1);
                    if let Some(p) = m.enter_guest(1) {
                        assert!(p.tlb);
                        applied.store(true, Ordering::SeqCst);
                        break;
                    }
                }
            }
        });
        let owed = m.broadcast(0, Broadcast::Tlb, |_| {}, || false);
        assert!(!owed);
        target.join().unwrap();
        // Either the target applied it, or it was out of the guest when the wait
        // ended and applies it on its next entry (which the loop above did).
        assert!(applied.load(Ordering::SeqCst));
    }

    #[test]
    fn two_issuers_waiting_on_each_other_both_return_owing_a_flush() {
        let m: Arc<Maintenance> = Arc::new(Maintenance::new(2));
        assert_eq!(m.enter_guest(0), None);
        assert_eq!(m.enter_guest(1), None);
        // Each leaves the guest once its broadcast returns, as a vCPU does at its
        // next kick check.
        let other = std::thread::spawn({
            let m = Arc::clone(&m);
            move || {
                let owed = m.broadcast(1, Broadcast::Tlb, |_| {}, || false);
                m.leave_guest(1);
                owed
            }
        });
        let mine = m.broadcast(0, Broadcast::Tlb, |_| {}, || false);
        m.leave_guest(0);
        let theirs = other.join().unwrap();
        // Neither waits forever, and whichever finished first did so because the
        // other took its post while waiting, so that one owes a flush.
        assert!(mine || theirs);
    }
}
