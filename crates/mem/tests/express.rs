//! A fetch a thread is blocked on (a synchronous fault, a host access) goes ahead
//! of the asynchronous fetches queued for the store's depth: it stops a whole
//! vCPU, where they each park one guest process.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apf_mem::store::{IoCompletion, IoRequest, MemStore, Slot, StoreFull, StoreInfo};
use apf_mem::{
    AccessSize, FetchError, FetchSink, FetchStart, GuestMemory, MemConfig, Resolve, Store,
};
use common::{BASE, write};

const PAGE: u64 = 4096;

/// A store of queue depth 1 that holds the requests it is given until the test
/// lets them through one by one (while open, it lets everything through).
#[derive(Debug, Clone)]
struct GatedStore {
    inner: Arc<MemStore>,
    open: Arc<AtomicBool>,
    held: Arc<Mutex<VecDeque<IoRequest>>>,
}

impl GatedStore {
    fn new() -> GatedStore {
        GatedStore {
            inner: Arc::new(MemStore::new(1 << 10, 1)),
            open: Arc::new(AtomicBool::new(true)),
            held: Arc::default(),
        }
    }

    fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Lets the oldest held request through.
    fn release_one(&self) {
        let req = self
            .held
            .lock()
            .unwrap()
            .pop_front()
            .expect("a held request");
        self.inner.submit(&[req]);
    }
}

impl Store for GatedStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            description: "gated memory store".into(),
            queue_depth: 1,
        }
    }
    fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        self.inner.alloc_slot()
    }
    fn free_slot(&self, slot: Slot) {
        self.inner.free_slot(slot);
    }
    fn submit(&self, reqs: &[IoRequest]) {
        if self.open.load(Ordering::SeqCst) {
            self.inner.submit(reqs);
        } else {
            self.held.lock().unwrap().extend(reqs.iter().copied());
        }
    }
    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        self.inner.complete(out, wait)
    }
}

#[derive(Default)]
struct Recorder {
    done: Mutex<Vec<u64>>,
}

impl FetchSink for Recorder {
    fn fetch_done(&self, cookie: u64, result: Result<(), FetchError>) {
        assert_eq!(result, Ok(()), "fetch {cookie}");
        self.done.lock().unwrap().push(cookie);
    }
}

/// Spins (yielding) until `cond` holds: every condition here is reached by the
/// memory system's own threads without the test's help.
fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        std::thread::yield_now();
    }
}

#[test]
fn a_fetch_a_thread_blocks_on_goes_ahead_of_queued_asynchronous_ones() {
    // 64 pages over a 16-page budget, reclaimed 4 at a time: once reclaim is
    // satisfied 8 frames are free, enough for the 4 fetches below without more.
    let gate = GatedStore::new();
    let cfg = MemConfig {
        batch_pages: 4,
        ..MemConfig::new(BASE, 64 * PAGE, 16 * PAGE)
    };
    let mem = GuestMemory::new(cfg, Box::new(gate.clone())).expect("guest memory");
    let mut tlb = mem.vcpu_tlb();
    for p in 0..64 {
        write(&mut tlb, BASE + p * PAGE, AccessSize::Double, 1000 + p).unwrap();
        tlb.sync();
    }
    let out: Vec<u64> = (0..64)
        .map(|p| BASE + p * PAGE)
        .filter(|&gpa| matches!(tlb.resolve(gpa, false), Resolve::NeedsFetch(_)))
        .take(4)
        .collect();
    assert_eq!(out.len(), 4, "pages in the store");
    drop(tlb);
    until(|| {
        let m = mem.metrics();
        m.in_flight == 0 && m.backlog == 0 && m.budget_pages - m.frames_used >= 8
    });
    gate.open.store(false, Ordering::SeqCst);
    let started = mem.metrics().fetch.started;

    // A is submitted at once (the store is idle); B and C wait for depth.
    let sink = Arc::new(Recorder::default());
    for (cookie, &gpa) in (1..).zip(&out[..3]) {
        assert_eq!(
            mem.start_fetch(gpa >> 12, sink.clone(), cookie),
            FetchStart::Started
        );
    }
    // D: a host access that must wait for its page.
    let d = out[3];
    let reader = {
        let mem = Arc::clone(&mem);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            mem.read_bytes(d, &mut buf)
                .map(|()| u64::from_le_bytes(buf))
        })
    };
    until(|| {
        let m = mem.metrics();
        m.fetch.started == started + 4 && m.backlog == 3
    });
    assert_eq!(gate.held(), 1, "only A is in the store");

    // A completes; the next request the pipeline hands the store must be D's.
    gate.release_one();
    until(|| sink.done.lock().unwrap().contains(&1) && gate.held() == 1);
    gate.release_one();
    until(|| reader.is_finished() || sink.done.lock().unwrap().contains(&2));
    assert!(
        reader.is_finished() && !sink.done.lock().unwrap().contains(&2),
        "B was read before D, which a thread was blocked on"
    );
    assert_eq!(reader.join().unwrap(), Ok(1000 + (d - BASE) / PAGE));

    // The rest in their order.
    gate.open.store(true, Ordering::SeqCst);
    while gate.held() > 0 {
        gate.release_one();
    }
    until(|| sink.done.lock().unwrap().len() == 3);
    assert_eq!(*sink.done.lock().unwrap(), [1, 2, 3]);
    assert_eq!(mem.check_invariants(), Ok(()));
}
