//! Waking a vCPU thread from other threads.
//!
//! A kick sets a flag the interpreter polls at basic-block boundaries (so a running
//! vCPU leaves `run` soon) and unparks the thread if it sleeps. A halting vCPU first
//! polls for a short while before it sleeps: on the machines this is built for, a
//! cross-CPU wake-up of a sleeping thread costs 22–28 µs, more than a disk read, so
//! a completion that arrives within the poll window is taken without one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// The kick side, shared with every thread that may wake this vCPU.
#[derive(Debug)]
pub struct VcpuWaker {
    kicked: AtomicBool,
    sleeping: AtomicBool,
    thread: Thread,
}

/// How a halt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeReason {
    /// The condition held (possibly after a kick).
    Ready,
    /// The deadline passed.
    Deadline,
}

impl VcpuWaker {
    /// A waker for the calling thread (the vCPU thread creates its own).
    pub fn for_current_thread() -> Self {
        VcpuWaker {
            kicked: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            thread: std::thread::current(),
        }
    }

    /// Any thread: make the vCPU look at its state again.
    pub fn kick(&self) {
        // SeqCst on both sides (here and in `halt`): either the sleeper sees the kick
        // before parking, or this sees it sleeping and unparks it.
        self.kicked.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
    }

    /// Whether a kick is pending (polled by the interpreter; does not consume it).
    #[inline]
    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Relaxed)
    }

    /// vCPU thread: consume a pending kick. Call before evaluating what to do, so a
    /// kick that arrives afterwards is not lost.
    pub fn clear(&self) {
        self.kicked.store(false, Ordering::Relaxed);
    }

    /// vCPU thread: waits until `ready()` holds or `deadline` passes, polling for
    /// `poll` first and then sleeping until kicked. `ready` is re-evaluated after
    /// every kick.
    pub fn halt(
        &self,
        poll: Duration,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> WakeReason {
        let start = Instant::now();
        loop {
            self.kicked.store(false, Ordering::Relaxed);
            if ready() {
                return WakeReason::Ready;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return WakeReason::Deadline;
            }
            if now.duration_since(start) < poll {
                while !self.kicked.load(Ordering::Acquire)
                    && start.elapsed() < poll
                    && deadline.is_none_or(|d| Instant::now() < d)
                {
                    std::hint::spin_loop();
                }
                continue;
            }
            self.sleeping.store(true, Ordering::SeqCst);
            if !self.kicked.load(Ordering::SeqCst) {
                match deadline {
                    Some(d) => std::thread::park_timeout(d.saturating_duration_since(now)),
                    None => std::thread::park(),
                }
            }
            self.sleeping.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn a_kick_from_another_thread_ends_a_sleeping_halt() {
        let waker = Arc::new(VcpuWaker::for_current_thread());
        let flag = Arc::new(AtomicU32::new(0));
        let (w, f) = (Arc::clone(&waker), Arc::clone(&flag));
        let kicker = std::thread::spawn(move || {
            f.store(1, Ordering::Release);
            w.kick();
        });
        let reason = waker.halt(Duration::ZERO, None, || flag.load(Ordering::Acquire) == 1);
        kicker.join().unwrap();
        assert_eq!(reason, WakeReason::Ready);
    }

    #[test]
    fn the_deadline_ends_a_halt_nobody_kicks() {
        let waker = VcpuWaker::for_current_thread();
        let deadline = Instant::now() + Duration::from_millis(2);
        assert_eq!(
            waker.halt(Duration::ZERO, Some(deadline), || false),
            WakeReason::Deadline
        );
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn kicks_are_visible_until_cleared() {
        let waker = VcpuWaker::for_current_thread();
        assert!(!waker.is_kicked());
        waker.kick();
        assert!(waker.is_kicked());
        waker.clear();
        assert!(!waker.is_kicked());
    }
}
