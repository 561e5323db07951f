//! The atomic word the GIC's shared state is made of.
//!
//! Every piece of GIC state another thread may touch (pending bits, enables,
//! priorities, routes) is one 64-bit atomic word, so raising an interrupt never
//! takes a lock. The model-checked tests instantiate the GIC on shuttle's
//! atomics through this trait; the platform uses [`AtomicU64`].

use std::sync::atomic::{AtomicU64, Ordering};

/// A 64-bit atomic word. Every operation is sequentially consistent: the GIC's
/// correctness arguments ("the sender sets the bit, then kicks; the target
/// clears the kick, then reads the bits") rely on one total order.
pub trait Word: Send + Sync {
    /// A word holding `v`.
    fn new(v: u64) -> Self;
    /// The value.
    fn get(&self) -> u64;
    /// Replaces the value.
    fn set(&self, v: u64);
    /// ORs `v` in; returns the previous value.
    fn or(&self, v: u64) -> u64;
    /// ANDs `v` in; returns the previous value.
    fn and(&self, v: u64) -> u64;
}

impl Word for AtomicU64 {
    fn new(v: u64) -> Self {
        AtomicU64::new(v)
    }
    fn get(&self) -> u64 {
        self.load(Ordering::SeqCst)
    }
    fn set(&self, v: u64) {
        self.store(v, Ordering::SeqCst);
    }
    fn or(&self, v: u64) -> u64 {
        self.fetch_or(v, Ordering::SeqCst)
    }
    fn and(&self, v: u64) -> u64 {
        self.fetch_and(v, Ordering::SeqCst)
    }
}
