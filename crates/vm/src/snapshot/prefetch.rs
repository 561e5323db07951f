//! The background loader of a lazy restore: reads the image's pages into
//! guest memory while the guest runs, so fewer of them are left for demand
//! faults. It yields to those faults by keeping at most a quarter of the
//! store's queue depth in flight, and stops when host memory is nearly full:
//! past that, every page it brought in would push out one the guest may want.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use apf_abi::Gfn;
use apf_mem::{FetchError, FetchSink, FetchStart, GuestMemory};

/// Fetches in flight, and a wake-up when one ends.
#[derive(Debug, Default)]
struct InFlight {
    count: Mutex<usize>,
    ended: Condvar,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until fewer than `limit` are in flight.
    fn wait_below(&self, limit: usize) {
        let mut n = self.lock();
        while *n >= limit {
            n = self.ended.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl FetchSink for InFlight {
    fn fetch_done(&self, _cookie: u64, _result: Result<(), FetchError>) {
        // A failed read leaves the page in the store: a demand fault reads it.
        let mut n = self.lock();
        *n = n.saturating_sub(1);
        self.ended.notify_all();
    }
}

/// A running background loader.
#[derive(Debug)]
pub(crate) struct Prefetcher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

impl Prefetcher {
    /// Starts loading `pages` (in order) into `memory`, `depth` reads at most
    /// in flight.
    pub(crate) fn start(
        memory: Arc<GuestMemory>,
        pages: Vec<Gfn>,
        depth: usize,
    ) -> std::io::Result<Prefetcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("apf-prefetch".into())
            .spawn(move || load(&memory, &pages, depth.max(1), &flag))?;
        Ok(Prefetcher { stop, handle })
    }

    /// Stops it; returns how many reads it started.
    pub(crate) fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// Brings `pages` (in order) into `memory`, `depth` reads at most in flight,
/// until host memory is nearly full or `stop`; returns, once they have all
/// ended, how many reads it started. A migration's destination fills memory
/// this way.
pub(crate) fn load(memory: &GuestMemory, pages: &[Gfn], depth: usize, stop: &AtomicBool) -> u64 {
    let inflight = Arc::new(InFlight::default());
    let sink: Arc<dyn FetchSink> = inflight.clone();
    // Leave an eighth of the budget for the guest's own faults.
    let margin = memory.budget_pages() / 8 + depth as u64;
    let mut started = 0;
    for &gfn in pages {
        if stop.load(Ordering::Relaxed) || memory.free_pages() <= margin {
            break;
        }
        inflight.wait_below(depth);
        *inflight.lock() += 1;
        match memory.start_fetch(gfn, Arc::clone(&sink), 0) {
            FetchStart::Started => started += 1,
            // A demand fault's read: ours ends with it.
            FetchStart::Joined => {}
            FetchStart::AlreadyResident | FetchStart::NotRam => {
                inflight.fetch_done(0, Ok(()));
            }
        }
    }
    // Ended reads only: a caller may change what the pages' copies hold next.
    inflight.wait_below(1);
    started
}
