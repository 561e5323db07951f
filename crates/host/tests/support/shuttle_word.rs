//! shuttle's atomic as the APF engine's word type, so the model-checked tests run
//! the real engine (included by `tests/apf_shuttle.rs` and
//! `tests/enable_claim_shuttle.rs`).

use apf_host::apf::AtomicWord;
use shuttle::sync::atomic::AtomicU64 as ShuttleU64;
use std::sync::atomic::Ordering;

/// shuttle's atomic, as the engine's word type.
pub struct ShuttleWord(ShuttleU64);

impl AtomicWord for ShuttleWord {
    fn new(v: u64) -> Self {
        ShuttleWord(ShuttleU64::new(v))
    }
    fn load(&self, o: Ordering) -> u64 {
        self.0.load(o)
    }
    fn store(&self, v: u64, o: Ordering) {
        self.0.store(v, o);
    }
    fn swap(&self, v: u64, o: Ordering) -> u64 {
        self.0.swap(v, o)
    }
    fn fetch_or(&self, v: u64, o: Ordering) -> u64 {
        self.0.fetch_or(v, o)
    }
    fn compare_exchange(&self, c: u64, n: u64, ok: Ordering, err: Ordering) -> Result<u64, u64> {
        self.0.compare_exchange(c, n, ok, err)
    }
}
