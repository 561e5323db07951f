//! The synchronisation primitives the page protocol is built on.
//!
//! Everything that takes part in the access / evict / install protocol (page locks,
//! shootdown epochs, the fetch pipeline, the reclaimer and reaper threads) uses these
//! names, so the `shuttle` feature can swap in shuttle's model-checkable versions and
//! the model test exercises the real protocol, not a copy of it.
//!
//! Locks are never poisoned in practice (no code panics while holding one), and a
//! poisoned lock still guards consistent data here, so [`lock`] and [`wait`] take
//! the guard either way.

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard};
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::thread;

#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::thread;

pub(crate) use std::sync::atomic::Ordering;

use std::time::Duration;

/// Locks `m`, ignoring poisoning (see the module comment).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv`, ignoring poisoning.
pub(crate) fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Under the model checker, a point where another thread may run: for steps
/// that are not atomic in reality but involve no shuttle primitive (a host
/// copy of a page). Nothing otherwise.
#[inline]
pub(crate) fn model_yield() {
    #[cfg(feature = "shuttle")]
    thread::yield_now();
}

/// Waits on `cv` for at most `d` (shuttle never times out: the protocol must not
/// depend on timeouts for progress, only for noticing lost completions).
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    d: Duration,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout(g, d) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}
