//! A fetch a thread is blocked on (a synchronous fault, a host access) goes ahead
//! of the asynchronous fetches queued for the store's depth: it stops a whole
//! vCPU, where they each park one guest process.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apf_abi::Gpa;
use apf_mem::store::{IoCompletion, IoRequest, MemStore, Slot, StoreFull, StoreInfo};
use apf_mem::{
    AccessSize, FetchError, FetchSink, FetchStart, GuestMemory, HostAccessError, MemConfig,
    Resolve, Store,
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
/// memory system's own threads without the test's help. A regression fails the
/// test after a generous deadline instead of hanging it.
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::yield_now();
    }
}

/// Guest memory over a gated store with four pages in the store and frames free
/// for all four, the gate closed, and A, B, C (the first three) fetched
/// asynchronously: A is in the store, B and C wait for depth. Returns the four
/// pages' addresses and the sink that records A, B, C's completions (cookies
/// 1, 2, 3).
fn three_queued() -> (Arc<GuestMemory>, GatedStore, Vec<u64>, Arc<Recorder>) {
    // 64 pages over a 16-page budget, reclaimed 4 at a time: once reclaim is
    // satisfied 8 frames are free, enough for the 4 fetches without more.
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
    drop(tlb);
    // Reclaim stops at 8 free frames, but later page-ins may leave it between 4
    // and 8 without waking it: read pages back until it has run to the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in (0..64).cycle() {
        let m = mem.metrics();
        if m.in_flight == 0 && m.backlog == 0 && m.budget_pages - m.frames_used >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "reclaim never satisfied: {m:?}");
        let mut buf = [0u8; 8];
        mem.read_bytes(Gpa(BASE + p * PAGE), &mut buf).unwrap();
    }
    let mut tlb = mem.vcpu_tlb();
    let out: Vec<u64> = (0..64)
        .map(|p| BASE + p * PAGE)
        .filter(|&gpa| matches!(tlb.resolve(Gpa(gpa), false), Resolve::NeedsFetch(_)))
        .take(4)
        .collect();
    assert_eq!(out.len(), 4, "pages in the store");
    drop(tlb);
    gate.open.store(false, Ordering::SeqCst);
    let sink = Arc::new(Recorder::default());
    for (cookie, &gpa) in (1..).zip(&out[..3]) {
        assert_eq!(
            mem.start_fetch(Gpa(gpa).gfn(), sink.clone(), cookie),
            FetchStart::Started
        );
    }
    assert_eq!(gate.held(), 1, "only A is in the store");
    (mem, gate, out, sink)
}

/// A host access to `gpa` on another thread (it waits for the page).
fn blocked_reader(mem: &Arc<GuestMemory>, gpa: u64) -> JoinHandle<Result<u64, HostAccessError>> {
    let mem = Arc::clone(mem);
    std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        mem.read_bytes(Gpa(gpa), &mut buf)
            .map(|()| u64::from_le_bytes(buf))
    })
}

/// Lets A through, then the request the pipeline hands the store next; returns
/// once `reader` has its page or cookie `rival` completed, whichever is first.
fn release_a_and_the_next(
    gate: &GatedStore,
    sink: &Recorder,
    reader: &JoinHandle<Result<u64, HostAccessError>>,
    rival: u64,
) {
    gate.release_one();
    until("A done and the next request in the store", || {
        sink.done.lock().unwrap().contains(&1) && gate.held() == 1
    });
    gate.release_one();
    until("the reader or its rival done", || {
        reader.is_finished() || sink.done.lock().unwrap().contains(&rival)
    });
}

fn value_of(gpa: u64) -> u64 {
    1000 + (gpa - BASE) / PAGE
}

fn drain(mem: &GuestMemory, gate: &GatedStore, sink: &Recorder) {
    gate.open.store(true, Ordering::SeqCst);
    while gate.held() > 0 {
        gate.release_one();
    }
    until("A, B and C done", || sink.done.lock().unwrap().len() == 3);
    assert_eq!(mem.check_invariants(), Ok(()));
}

#[test]
fn a_fetch_a_thread_blocks_on_goes_ahead_of_queued_asynchronous_ones() {
    let (mem, gate, out, sink) = three_queued();
    let started = mem.metrics().fetch.started;
    // D: a host access that must wait for its page, queued behind B and C.
    let d = out[3];
    let reader = blocked_reader(&mem, d);
    until("D queued", || {
        let m = mem.metrics();
        m.fetch.started == started + 1 && m.backlog == 3
    });
    release_a_and_the_next(&gate, &sink, &reader, 2);
    assert!(
        reader.is_finished() && !sink.done.lock().unwrap().contains(&2),
        "B was read before D, which a thread was blocked on"
    );
    assert_eq!(reader.join().unwrap(), Ok(value_of(d)));
    drain(&mem, &gate, &sink);
    assert_eq!(*sink.done.lock().unwrap(), [1, 2, 3]);
}

#[test]
fn a_thread_that_blocks_on_a_queued_fetch_moves_it_ahead() {
    let (mem, gate, out, sink) = three_queued();
    let joined = mem.metrics().fetch.joined;
    // The reader wants C, which is queued behind B: it joins C's fetch.
    let c = out[2];
    let reader = blocked_reader(&mem, c);
    until("the reader joined C", || {
        mem.metrics().fetch.joined == joined + 1
    });
    release_a_and_the_next(&gate, &sink, &reader, 2);
    assert!(
        reader.is_finished() && !sink.done.lock().unwrap().contains(&2),
        "B was read before C, which a thread had joined"
    );
    assert_eq!(reader.join().unwrap(), Ok(value_of(c)));
    drain(&mem, &gate, &sink);
    assert_eq!(*sink.done.lock().unwrap(), [1, 3, 2]);
}
