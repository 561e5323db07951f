//! Counters and their snapshot ([`MemMetrics`]), built so the figures add up:
//! page states sum to the pages of RAM, frames in use equal the pages holding one,
//! every read submitted is read, failed or in flight.
//!
//! Counters are plain atomics (not part of the page protocol, so not model-checked).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Log2 latency buckets: bucket `i` counts I/Os that took `[2^i, 2^(i+1))` µs
/// (bucket 0 also takes anything under 1 µs).
pub const LATENCY_BUCKETS: usize = 24;

/// An I/O latency histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    /// Counts per log2-µs bucket.
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Histogram {
    /// I/Os counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper edge (µs) of the bucket holding quantile `q` (0..=1), or 0 when empty.
    pub fn quantile_upper_us(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let want = ((n as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b;
            if seen >= want {
                return 1u64 << (i + 1);
            }
        }
        1u64 << LATENCY_BUCKETS
    }
}

#[derive(Debug)]
pub(crate) struct AtomicHistogram([AtomicU64; LATENCY_BUCKETS]);

impl AtomicHistogram {
    pub(crate) fn new() -> Self {
        AtomicHistogram(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let i = (63 - us.leading_zeros()) as usize;
        self.0[i.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)),
        }
    }
}

macro_rules! counters {
    ($(#[$m:meta])* $name:ident / $snap:ident { $($(#[$fm:meta])* $f:ident),* $(,)? }) => {
        #[derive(Debug, Default)]
        pub(crate) struct $name { $(pub(crate) $f: AtomicU64),* }
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $snap { $($(#[$fm])* pub $f: u64),* }
        impl $name {
            pub(crate) fn snapshot(&self) -> $snap { $snap { $($f: self.$f.load(Ordering::Relaxed)),* } }
        }
    };
}

counters!(
    /// Stage-2 faults (TLB misses resolved), by what they found.
    FaultCounters / FaultCounts {
        /// Resident page mapped (a TLB refill).
        resident,
        /// First write to a clean resident page: marked dirty, mapped writable.
        write_protect,
        /// First write since the dirty log was last taken to a resident page
        /// already dirty: logged, mapped writable.
        log_dirty,
        /// Never-touched page zero-filled without I/O.
        zero_fill,
        /// Page being evicted, rescued (eviction of it aborted).
        rescued,
        /// Page needs a fetch (in the store, being fetched, or no frame free).
        needs_fetch,
        /// Not guest RAM.
        not_ram,
    }
);

counters!(
    /// Fetches (async and blocking).
    FetchCounters / FetchCounts {
        /// Fetches started (one per page, however many asked).
        started,
        /// Requests that joined a fetch in flight.
        joined,
        /// Requests for a page that turned out resident (or was rescued).
        already_resident,
        /// Fetches that installed their page.
        completed,
        /// Fetches that failed (the page stays where it was).
        failed,
        /// Blocking fetches (a vCPU or the host waited).
        blocking,
    }
);

counters!(
    /// I/O through the store.
    IoCounters / IoCounts {
        /// Reads submitted.
        reads_submitted,
        /// Reads that installed a page.
        pages_read,
        /// Reads that failed (error, short, timed out).
        read_errors,
        /// Writes submitted.
        writes_submitted,
        /// Writes that stored a page.
        pages_written,
        /// Writes that failed.
        write_errors,
        /// I/Os given up on after the I/O timeout (included in the error counts).
        timeouts,
        /// Completions for a tag no longer in flight (duplicates, late ones), ignored.
        stray_completions,
        /// Slots abandoned because a write timed out and might still land.
        slots_abandoned,
        /// Most requests in flight at once.
        max_in_flight,
    }
);

counters!(
    /// Reclaim.
    EvictCounters / EvictCounts {
        /// Eviction batches.
        batches,
        /// TLB shootdowns: one per batch, and one per clock rotation that
        /// found every candidate used since the hand last passed (so that
        /// uses from then on are seen).
        shootdowns,
        /// Rotations that found every candidate used since the hand last passed.
        all_used,
        /// Pages chosen by the clock.
        chosen,
        /// Chosen pages that were dirty and written.
        written,
        /// Clean pages with a valid store copy dropped without I/O.
        dropped_clean,
        /// Never-written pages dropped back to untouched without I/O.
        dropped_zero,
        /// Chosen pages rescued by a fault before they left.
        rescued,
        /// Chosen pages kept because their write failed.
        aborted,
    }
);

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Pages in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageCounts {
    /// Never touched.
    pub untouched: u64,
    /// In memory, mappable.
    pub resident: u64,
    /// Chosen for eviction, still in memory.
    pub evicting: u64,
    /// Leaving memory.
    pub dropping: u64,
    /// In the store only.
    pub in_store: u64,
    /// Being fetched.
    pub fetching: u64,
}

/// A snapshot of guest memory's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemMetrics {
    /// Pages of guest RAM.
    pub ram_pages: u64,
    /// Pages of host memory guest RAM may use.
    pub budget_pages: u64,
    /// Frames in use: resident, evicting, dropping and fetching pages that hold one.
    pub frames_used: u64,
    /// The most frames in use at once; above `budget_pages` only if the store
    /// refused pages (`frames_over_budget`).
    pub frames_peak: u64,
    /// Frames taken with the budget already full, because reclaim could free
    /// none (the store refused every page that could leave): the fetch that
    /// needed one got it instead of failing.
    pub frames_over_budget: u64,
    /// Why frames were last taken beyond the budget (the store's refusal).
    pub over_budget_reason: Option<String>,
    /// Pages by state.
    pub pages: PageCounts,
    /// Faults by kind.
    pub faults: FaultCounts,
    /// Fetches.
    pub fetch: FetchCounts,
    /// Store I/O.
    pub io: IoCounts,
    /// Requests in flight in the store now.
    pub in_flight: u64,
    /// Requests waiting for queue depth now.
    pub backlog: u64,
    /// Reclaim.
    pub evict: EvictCounts,
    /// Read latency as seen by the pipeline (submission to collection).
    pub read_latency: Histogram,
    /// Write latency.
    pub write_latency: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_log2_micros() {
        let h = AtomicHistogram::new();
        h.record(Duration::from_nanos(10));
        h.record(Duration::from_micros(1));
        h.record(Duration::from_micros(3));
        h.record(Duration::from_micros(1000));
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[9], 1);
        assert_eq!(s.count(), 4);
        assert_eq!(s.quantile_upper_us(0.5), 2);
        assert_eq!(s.quantile_upper_us(1.0), 1024);
    }
}
