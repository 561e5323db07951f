//! The completion port: how fetch completions reach a vCPU's APF engine from other
//! threads without locks and without allocation.
//!
//! Each of the 64 work-item slots has one atomic word holding the slot's generation
//! and state. The vCPU thread *arms* a slot when it queues a fetch and *disarms* it
//! when it drains the item (disable, reset); a completer may move an armed slot of
//! the expected generation to done, and nothing else. A completion for an item that
//! was drained, or that arrives twice, finds a different word and is refused: no
//! work item outlives its vCPU's queue, whatever the I/O does afterwards.
//!
//! The word is generic ([`AtomicWord`]) so that the model-checked test drives this
//! exact code with shuttle's atomics.

use apf_abi::ASYNC_PF_PER_VCPU;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Nanoseconds since the first call in this process: when a page came in, as one
/// word a completer can store.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The atomic operations the port needs, so the same code runs on std atomics and
/// under a model checker.
pub trait AtomicWord: Send + Sync {
    /// A new word holding `v`.
    fn new(v: u64) -> Self;
    /// Atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// Atomic store.
    fn store(&self, v: u64, order: Ordering);
    /// Atomic swap.
    fn swap(&self, v: u64, order: Ordering) -> u64;
    /// Atomic bitwise or; returns the previous value.
    fn fetch_or(&self, v: u64, order: Ordering) -> u64;
    /// Atomic compare-and-exchange.
    fn compare_exchange(&self, cur: u64, new: u64, ok: Ordering, err: Ordering)
    -> Result<u64, u64>;
}

impl AtomicWord for AtomicU64 {
    fn new(v: u64) -> Self {
        AtomicU64::new(v)
    }
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    fn store(&self, v: u64, order: Ordering) {
        AtomicU64::store(self, v, order);
    }
    fn swap(&self, v: u64, order: Ordering) -> u64 {
        AtomicU64::swap(self, v, order)
    }
    fn fetch_or(&self, v: u64, order: Ordering) -> u64 {
        AtomicU64::fetch_or(self, v, order)
    }
    fn compare_exchange(
        &self,
        cur: u64,
        new: u64,
        ok: Ordering,
        err: Ordering,
    ) -> Result<u64, u64> {
        AtomicU64::compare_exchange(self, cur, new, ok, err)
    }
}

const STATE_MASK: u64 = 0b11;
const IDLE: u64 = 0;
const ARMED: u64 = 1;
const DONE_OK: u64 = 2;
const DONE_FAILED: u64 = 3;

const fn word(generation: u32, state: u64) -> u64 {
    ((generation as u64) << 32) | state
}

/// Names one armed work item: its slot and the generation it was armed with.
/// This is what a fetch carries as its completion cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ItemHandle {
    /// Slot index, below 64.
    pub slot: u8,
    /// Generation the slot was armed with.
    pub generation: u32,
}

impl ItemHandle {
    /// Packs the handle into a 64-bit cookie.
    pub fn to_cookie(self) -> u64 {
        (u64::from(self.generation) << 8) | u64::from(self.slot)
    }

    /// Unpacks a cookie made by [`ItemHandle::to_cookie`]; `None` for a value no
    /// handle produces.
    pub fn from_cookie(cookie: u64) -> Option<ItemHandle> {
        let slot = u8::try_from(cookie & 0xFF).ok()?;
        let generation = u32::try_from(cookie >> 8).ok()?;
        (usize::from(slot) < ASYNC_PF_PER_VCPU).then_some(ItemHandle { slot, generation })
    }
}

/// A completed item as the vCPU collects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The slot.
    pub slot: u8,
    /// Whether the fetch succeeded.
    pub ok: bool,
    /// How long ago the completer finished the fetch: what the vCPU took to
    /// notice it (the page-ready latency `apf trace` breaks down).
    pub waited: Duration,
}

/// One vCPU's completion port. Completers call [`CompletionPort::complete`]; the
/// vCPU thread owns every other operation.
#[derive(Debug)]
pub struct CompletionPort<W: AtomicWord = AtomicU64> {
    words: [W; ASYNC_PF_PER_VCPU],
    /// Bit n set: slot n may have completed since the last collect.
    ready: W,
    /// When each slot's fetch completed ([`now_ns`]); a measurement, outside the
    /// protocol (plain atomics also under the model checker).
    done_at: [AtomicU64; ASYNC_PF_PER_VCPU],
}

impl<W: AtomicWord> Default for CompletionPort<W> {
    fn default() -> Self {
        CompletionPort {
            words: std::array::from_fn(|_| W::new(word(0, IDLE))),
            ready: W::new(0),
            done_at: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl<W: AtomicWord> CompletionPort<W> {
    /// vCPU side: arms `slot` for a new fetch and returns its handle. The slot must
    /// be idle (the engine only arms free slots).
    pub fn arm(&self, slot: u8) -> ItemHandle {
        let w = &self.words[usize::from(slot)];
        let generation = u32::try_from(w.load(Ordering::Relaxed) >> 32)
            .unwrap_or(0)
            .wrapping_add(1);
        w.store(word(generation, ARMED), Ordering::Release);
        ItemHandle { slot, generation }
    }

    /// vCPU side: the item in `slot` is gone (drained or consumed); any completion
    /// still on its way is refused from now on.
    pub fn disarm(&self, slot: u8) {
        let w = &self.words[usize::from(slot)];
        let generation = w.load(Ordering::Relaxed) >> 32;
        w.store(generation << 32 | IDLE, Ordering::Release);
    }

    /// Any thread: the fetch for `handle` finished. Returns true if the completion
    /// was taken (the caller should then kick the vCPU), false if the item was
    /// drained or this completion is a duplicate.
    pub fn complete(&self, handle: ItemHandle, ok: bool) -> bool {
        let Some(w) = self.words.get(usize::from(handle.slot)) else {
            return false;
        };
        let armed = word(handle.generation, ARMED);
        // A stale or duplicate completion must not overwrite the time of the
        // item armed now: refused before it stores one. (It could still slip in
        // if the slot were drained, re-armed and completed between this check
        // and the store below: a few nanoseconds, and only the measurement.)
        if w.load(Ordering::Relaxed) != armed {
            return false;
        }
        let done = word(handle.generation, if ok { DONE_OK } else { DONE_FAILED });
        // Before the state changes, so the collector (Acquire) sees this time.
        let done_at = &self.done_at[usize::from(handle.slot)];
        done_at.store(now_ns(), Ordering::Relaxed);
        if w.compare_exchange(armed, done, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.ready.fetch_or(1 << handle.slot, Ordering::Release);
        true
    }

    /// Cheap check for the run loop: may anything have completed?
    pub fn has_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) != 0
    }

    /// vCPU side: takes every completion of a currently armed generation, in slot
    /// order, and returns the slots to idle. Stale bits (drained items) are dropped.
    pub fn collect(&self, mut sink: impl FnMut(Completed)) {
        let mut bits = self.ready.swap(0, Ordering::AcqRel);
        while bits != 0 {
            let slot = u8::try_from(bits.trailing_zeros()).unwrap_or(0);
            bits &= bits - 1;
            let w = &self.words[usize::from(slot)];
            let v = w.load(Ordering::Acquire);
            let ok = match v & STATE_MASK {
                DONE_OK => true,
                DONE_FAILED => false,
                _ => continue, // drained and possibly re-armed: not this completion
            };
            w.store(v & !STATE_MASK, Ordering::Release);
            let done_at = self.done_at[usize::from(slot)].load(Ordering::Relaxed);
            let waited = Duration::from_nanos(now_ns().saturating_sub(done_at));
            sink(Completed { slot, ok, waited });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_is_taken_once() {
        let port: CompletionPort = CompletionPort::default();
        let h = port.arm(3);
        assert!(port.complete(h, true));
        assert!(!port.complete(h, true), "duplicate refused");
        let mut got = Vec::new();
        port.collect(|c| got.push((c.slot, c.ok)));
        assert_eq!(got, vec![(3, true)]);
        port.collect(|c| got.push((c.slot, c.ok)));
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn a_drained_item_refuses_its_late_completion_even_after_rearm() {
        let port: CompletionPort = CompletionPort::default();
        let old = port.arm(7);
        port.disarm(7);
        assert!(!port.complete(old, true));
        let new = port.arm(7);
        assert_ne!(old.generation, new.generation);
        assert!(port.complete(new, false));
        let first = port.done_at[7].load(Ordering::Relaxed);
        assert!(!port.complete(old, false), "stale generation refused");
        assert_eq!(
            port.done_at[7].load(Ordering::Relaxed),
            first,
            "the refused completion left the item's time alone"
        );
        let mut got = Vec::new();
        port.collect(|c| got.push((c.slot, c.ok)));
        assert_eq!(got, vec![(7, false)]);
    }

    #[test]
    fn cookies_roundtrip_and_reject_garbage() {
        let h = ItemHandle {
            slot: 63,
            generation: u32::MAX,
        };
        assert_eq!(ItemHandle::from_cookie(h.to_cookie()), Some(h));
        assert_eq!(ItemHandle::from_cookie(64), None);
        assert_eq!(ItemHandle::from_cookie(u64::MAX), None);
    }
}
