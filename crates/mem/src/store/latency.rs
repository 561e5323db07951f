//! Added latency on top of a real store, to model slower devices.
//!
//! Every completion of the inner store is held until `inner completion time +
//! sampled latency`. No thread sleeps per I/O: held completions sit in a heap
//! ordered by due time, and whoever collects completions waits (in the inner
//! store) only until the earliest is due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::rng::Rng;
use super::{IoCompletion, IoRequest, Slot, Store, StoreFull, StoreInfo};
use crate::sync::{Mutex, lock};

/// The latency to add.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// The same for every I/O.
    Fixed(Duration),
    /// Log-normal around `median` with shape `sigma` (0 = fixed), seeded.
    LogNormal {
        /// The median.
        median: Duration,
        /// Spread of the underlying normal.
        sigma: f64,
        /// Seed of the sample sequence.
        seed: u64,
    },
}

/// A store with latency added to another's.
#[derive(Debug)]
pub struct LatencyStore<S> {
    inner: S,
    latency: Latency,
    rng: Mutex<Rng>,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
}

#[derive(Debug)]
struct Due {
    at: Instant,
    seq: u64,
    completion: IoCompletion,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<S: Store> LatencyStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, latency: Latency) -> LatencyStore<S> {
        let seed = match latency {
            Latency::Fixed(_) => 0,
            Latency::LogNormal { seed, .. } => seed,
        };
        LatencyStore {
            inner,
            latency,
            rng: Mutex::new(Rng::new(seed)),
            held: Mutex::new(Held::default()),
        }
    }

    fn sample(&self) -> Duration {
        match self.latency {
            Latency::Fixed(d) => d,
            Latency::LogNormal { median, sigma, .. } => {
                let z = lock(&self.rng).normal();
                median.mul_f64((sigma * z).exp().min(1e6))
            }
        }
    }

    fn hold(&self, fresh: &mut Vec<IoCompletion>) {
        if fresh.is_empty() {
            return;
        }
        let now = Instant::now();
        let delays: Vec<Duration> = fresh.iter().map(|_| self.sample()).collect();
        let mut h = lock(&self.held);
        for (c, d) in fresh.drain(..).zip(delays) {
            h.seq += 1;
            let seq = h.seq;
            h.heap.push(Reverse(Due {
                at: now + d,
                seq,
                completion: c,
            }));
        }
    }

    /// Moves due completions to `out`; returns how many and when the next is due.
    fn release(&self, out: &mut Vec<IoCompletion>) -> (usize, Option<Instant>) {
        let now = Instant::now();
        let mut h = lock(&self.held);
        let mut n = 0;
        while let Some(Reverse(top)) = h.heap.peek() {
            if top.at > now {
                return (n, Some(top.at));
            }
            let Reverse(due) = h.heap.pop().expect("peeked");
            out.push(due.completion);
            n += 1;
        }
        (n, None)
    }
}

impl<S: Store> Store for LatencyStore<S> {
    fn info(&self) -> StoreInfo {
        let inner = self.inner.info();
        let added = match self.latency {
            Latency::Fixed(d) => format!("{d:?} fixed"),
            Latency::LogNormal {
                median,
                sigma,
                seed,
            } => {
                format!("log-normal median {median:?} sigma {sigma} seed {seed}")
            }
        };
        StoreInfo {
            description: format!("{} + {added} latency", inner.description),
            queue_depth: inner.queue_depth,
        }
    }

    fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        self.inner.alloc_slot()
    }

    fn free_slot(&self, slot: Slot) {
        self.inner.free_slot(slot);
    }

    fn submit(&self, reqs: &[IoRequest]) {
        self.inner.submit(reqs);
    }

    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        let deadline = wait.map(|d| Instant::now() + d);
        let mut fresh = Vec::new();
        loop {
            self.inner.complete(&mut fresh, None);
            self.hold(&mut fresh);
            let (n, next) = self.release(out);
            let Some(deadline) = deadline else { return n };
            let now = Instant::now();
            if n > 0 || now >= deadline {
                return n;
            }
            let until = next.map_or(deadline, |t| t.min(deadline));
            // Sleep in the inner store: a fresh completion may be due sooner.
            self.inner
                .complete(&mut fresh, Some(until.saturating_duration_since(now)));
            self.hold(&mut fresh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn log_normal_samples_centre_on_the_median_and_repeat_with_the_seed() {
        let lat = Latency::LogNormal {
            median: Duration::from_millis(1),
            sigma: 0.5,
            seed: 9,
        };
        let a = LatencyStore::new(MemStore::new(1, 1), lat);
        let b = LatencyStore::new(MemStore::new(1, 1), lat);
        let mut xs: Vec<Duration> = (0..10_001).map(|_| a.sample()).collect();
        let ys: Vec<Duration> = (0..10_001).map(|_| b.sample()).collect();
        assert_eq!(xs, ys, "same seed, same latencies");
        xs.sort();
        let median = xs[5000].as_secs_f64();
        assert!((median - 1e-3).abs() < 0.05e-3, "median {median}");
        assert!(
            xs[0] < Duration::from_micros(500) && xs[10_000] > Duration::from_millis(2),
            "spread"
        );
        let fixed = LatencyStore::new(
            MemStore::new(1, 1),
            Latency::Fixed(Duration::from_micros(250)),
        );
        assert_eq!(fixed.sample(), Duration::from_micros(250));
    }
}
