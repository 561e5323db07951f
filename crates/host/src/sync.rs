//! Locking that outlives a panic: a vCPU thread that panicked is reported by its
//! join, and what it held (plain registers, counters, text) stays usable. The
//! one poison-ignoring lock of the host, the VM and the CLI.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking the data over from a thread that panicked with it held.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
