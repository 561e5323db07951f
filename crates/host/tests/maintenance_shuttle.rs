//! Model-checked (shuttle) broadcasts of TLB maintenance between vCPUs: once a
//! broadcast returns, no other vCPU uses a translation cached before it, and two
//! vCPUs broadcasting at once never wait for each other forever. The inboxes
//! under test are the real ones, built on shuttle's atomics.
//!
//! Random schedules only: an issuer spins until its targets leave the guest, and
//! PCT's fixed priorities would starve the thread it waits for (an unfair
//! schedule no host scheduler produces; shuttle reports it as a step overrun).

#[path = "support/shuttle_word.rs"]
mod shuttle_word;

use shuttle_word::ShuttleWord;

use apf_cpu::Broadcast;
use apf_host::maintenance::Maintenance;
use shuttle::sync::atomic::AtomicU64;
use shuttle::thread;
use std::sync::Arc;
use std::sync::atomic::Ordering;

const ITERATIONS: usize = 2000;
/// Instructions the target vCPU runs, each in a slice of its own.
const SLICES: usize = 4;
const OLD: u64 = 1;
const NEW: u64 = 2;

/// vCPU 0 changes a "page table" entry and broadcasts a TLBI; vCPU 1 runs guest
/// slices, caching the entry as a TLB would and applying its inbox on entry.
/// After the broadcast returned, vCPU 1 must never use the old entry.
fn no_stale_translation_after_a_broadcast() {
    let m: Arc<Maintenance<ShuttleWord>> = Arc::new(Maintenance::new(2));
    let table = Arc::new(AtomicU64::new(OLD));
    let done = Arc::new(AtomicU64::new(0));
    let target = thread::spawn({
        let (m, table, done) = (Arc::clone(&m), Arc::clone(&table), Arc::clone(&done));
        move || {
            let mut cached = None;
            for _ in 0..SLICES {
                if m.enter_guest(1).is_some_and(|p| p.tlb) {
                    cached = None;
                }
                let entry = *cached.get_or_insert_with(|| table.load(Ordering::SeqCst));
                if done.load(Ordering::SeqCst) == 1 {
                    assert_eq!(entry, NEW, "a stale translation used after the broadcast");
                }
                m.leave_guest(1);
            }
        }
    });
    assert_eq!(m.enter_guest(0), None);
    table.store(NEW, Ordering::SeqCst);
    m.broadcast(0, Broadcast::Tlb, |_| {}, || false);
    done.store(1, Ordering::SeqCst);
    m.leave_guest(0);
    target.join().unwrap();
}

#[test]
fn no_stale_translation_after_a_broadcast_random() {
    shuttle::check_random(no_stale_translation_after_a_broadcast, ITERATIONS);
}

/// Both vCPUs in the guest broadcast at once: each must return (shuttle fails a
/// run that exceeds its step bound, so a mutual wait fails the test), and one
/// that returned owing a flush got the other's post.
fn simultaneous_broadcasts_both_return() {
    let m: Arc<Maintenance<ShuttleWord>> = Arc::new(Maintenance::new(2));
    let other = thread::spawn({
        let m = Arc::clone(&m);
        move || {
            let pending = m.enter_guest(1);
            let owed = m.broadcast(1, Broadcast::Tlb, |_| {}, || false);
            m.leave_guest(1);
            pending.is_some() || owed
        }
    });
    let pending = m.enter_guest(0);
    let owed = m.broadcast(0, Broadcast::CodePage(0x4000_0000), |_| {}, || false);
    m.leave_guest(0);
    let theirs = other.join().unwrap();
    // Whatever each posted reached the other: on entry, while waiting, or on the
    // next entry after the run.
    let mine = pending.is_some() || owed || m.enter_guest(0).is_some();
    let theirs = theirs || m.enter_guest(1).is_some();
    assert!(mine && theirs, "a post was lost");
}

#[test]
fn simultaneous_broadcasts_both_return_random() {
    shuttle::check_random(simultaneous_broadcasts_both_return, ITERATIONS);
}
