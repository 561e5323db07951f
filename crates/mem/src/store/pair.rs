//! Two stores behind one: the part of [`CowStore`](super::CowStore) and
//! [`MirrorStore`](super::MirrorStore) that submits to either side and collects
//! from both, so that neither side's completions wait long behind the other's
//! silence.

use std::time::{Duration, Instant};

use super::{IoCompletion, IoRequest, Store};
use crate::sync::{AtomicUsize, Mutex, Ordering, lock};

/// How long one wait on a side lasts when both sides have requests in flight.
const ALTERNATE: Duration = Duration::from_micros(200);

/// Which of the two stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    First,
    Second,
}

/// Two stores, their requests in flight, and completions made up without I/O
/// (requests refused at submission).
#[derive(Debug)]
pub(crate) struct StorePair {
    pub(crate) first: Box<dyn Store>,
    pub(crate) second: Box<dyn Store>,
    first_inflight: AtomicUsize,
    second_inflight: AtomicUsize,
    refused: Mutex<Vec<IoCompletion>>,
}

impl StorePair {
    pub(crate) fn new(first: Box<dyn Store>, second: Box<dyn Store>) -> StorePair {
        StorePair {
            first,
            second,
            first_inflight: AtomicUsize::new(0),
            second_inflight: AtomicUsize::new(0),
            refused: Mutex::new(Vec::new()),
        }
    }

    fn side(&self, side: Side) -> (&dyn Store, &AtomicUsize) {
        match side {
            Side::First => (&*self.first, &self.first_inflight),
            Side::Second => (&*self.second, &self.second_inflight),
        }
    }

    /// Starts `reqs` on one side.
    pub(crate) fn submit(&self, side: Side, reqs: &[IoRequest]) {
        if reqs.is_empty() {
            return;
        }
        let (store, inflight) = self.side(side);
        inflight.fetch_add(reqs.len(), Ordering::Relaxed);
        store.submit(reqs);
    }

    /// Completes a request without I/O (on the next `complete`).
    pub(crate) fn refuse(&self, c: IoCompletion) {
        lock(&self.refused).push(c);
    }

    fn collect(
        &self,
        side: Side,
        out: &mut Vec<IoCompletion>,
        wait: Option<Duration>,
        seen: &mut impl FnMut(Side, &mut [IoCompletion]),
    ) -> usize {
        let (store, inflight) = self.side(side);
        let before = out.len();
        let n = store.complete(out, wait);
        inflight.fetch_sub(n, Ordering::Relaxed);
        seen(side, &mut out[before..]);
        n
    }

    fn drain(
        &self,
        out: &mut Vec<IoCompletion>,
        seen: &mut impl FnMut(Side, &mut [IoCompletion]),
    ) -> usize {
        let mut n = {
            let mut refused = lock(&self.refused);
            let n = refused.len();
            out.append(&mut refused);
            n
        };
        n += self.collect(Side::First, out, None, seen);
        n += self.collect(Side::Second, out, None, seen);
        n
    }

    /// [`Store::complete`] over both sides; `seen` may change each side's
    /// completions before they are returned.
    pub(crate) fn complete(
        &self,
        out: &mut Vec<IoCompletion>,
        wait: Option<Duration>,
        mut seen: impl FnMut(Side, &mut [IoCompletion]),
    ) -> usize {
        let n = self.drain(out, &mut seen);
        let Some(wait) = wait else {
            return n;
        };
        if n > 0 {
            return n;
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let first_busy = self.first_inflight.load(Ordering::Relaxed) > 0;
            let second_busy = self.second_inflight.load(Ordering::Relaxed) > 0;
            let n = match (first_busy, second_busy) {
                (true, false) => self.collect(Side::First, out, Some(left), &mut seen),
                (false, true) => self.collect(Side::Second, out, Some(left), &mut seen),
                // Both busy: take turns.
                (true, true) => {
                    let slice = left.min(ALTERNATE);
                    self.collect(Side::First, out, Some(slice), &mut seen)
                        + self.collect(Side::Second, out, Some(slice), &mut seen)
                }
                // Nothing in flight: nothing can arrive.
                (false, false) => 0,
            };
            let n = n + self.drain(out, &mut seen);
            if n > 0 || left.is_zero() || !(first_busy || second_busy) {
                return n;
            }
        }
    }
}
