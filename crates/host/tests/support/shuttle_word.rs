//! shuttle's atomic as the word type of the APF engine (`AtomicWord`) and of the
//! GIC and the maintenance inboxes (`Word`), so the model-checked tests run the
//! real code (included by every `tests/*_shuttle.rs`).

use apf_host::apf::AtomicWord;
use apf_host::gic::Word;
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

impl Word for ShuttleWord {
    fn new(v: u64) -> Self {
        ShuttleWord(ShuttleU64::new(v))
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn set(&self, v: u64) {
        self.0.store(v, Ordering::SeqCst);
    }
    fn or(&self, v: u64) -> u64 {
        self.0.fetch_or(v, Ordering::SeqCst)
    }
    fn and(&self, v: u64) -> u64 {
        self.0.fetch_and(v, Ordering::SeqCst)
    }
}
