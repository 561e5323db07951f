//! The I/O engine: page reads and writes through the [`Store`], up to its queue
//! depth, with an express lane, timeouts, latency histograms and the I/O
//! counters. It knows nothing of page states: a request is a kind, a slot, a
//! buffer and a key (the page index) it hands back when the request ends.
//!
//! Collecting completions is a *role* one thread holds at a time. Whoever needs a
//! completion takes it: a vCPU between slices ([`IoEngine::poll`], never
//! blocking), a thread that must wait for a page (it then blocks in the store, so
//! the device's completion wakes the thread that wants it, not a middleman), the
//! reclaimer waiting for its writes, and, only when no vCPU is running or none has
//! collected for a while, the background reaper. This keeps cross-CPU thread
//! wake-ups (as costly as a disk read on the target machine) off the per-page path.
//!
//! Finished reads are handed to an [`OnReads`] (the pager) with no lock held.
//! The engine's lock also guards its user's state `U` (the pager's fetch
//! table), so a fetch can record its waiters and queue its read in one critical
//! section, and a thread blocked here can wait for either.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::fifo::ExpressFifo;
use crate::metrics::{AtomicHistogram, Histogram, IoCounters, IoCounts, add, bump};
use crate::store::{
    IoBuf, IoCompletion, IoError, IoKind, IoRequest, Slot, Store, StoreFull, StoreInfo,
};
use crate::sync::{AtomicUsize, Condvar, Mutex, MutexGuard, Ordering, lock, wait, wait_timeout};

/// How long a thread that holds the collecting role blocks in the store at once
/// before it looks around again (for lost completions, mostly).
const ROLE_WAIT: Duration = Duration::from_millis(1);

/// How a request ended.
#[derive(Debug)]
pub(crate) enum IoEnd {
    Done,
    Failed(IoError),
    /// Not completed within the I/O timeout.
    TimedOut,
}

/// How an eviction write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    Written,
    /// The store refused it (or had no slot): why, for reports.
    Failed(String),
    /// Given up on; the write may still land, so its slot must not be reused.
    TimedOut,
}

/// Told which reads ended (key, how), on the thread that collected them, with
/// no lock held.
pub(crate) trait OnReads {
    fn reads_done(&self, reads: Vec<(usize, IoEnd)>);
}

#[derive(Debug)]
struct Inflight {
    kind: IoKind,
    key: usize,
    started: Instant,
}

#[derive(Debug)]
struct Queued {
    tag: u64,
    kind: IoKind,
    key: usize,
    slot: Slot,
    buf: IoBuf,
}

/// The engine's state, and its user's, under one lock.
#[derive(Debug)]
pub(crate) struct IoState<U> {
    next_tag: u64,
    inflight: HashMap<u64, Inflight>,
    backlog: ExpressFifo<Queued>,
    writes_done: HashMap<u64, WriteOutcome>,
    role_held: bool,
    /// Threads waiting on `dispatched`.
    blocked: usize,
    reaper_waiting: bool,
    /// Bumped whenever completions were dispatched (the reclaimer waits on it).
    dispatches: u64,
    last_timeout_scan: Instant,
    last_reap: Instant,
    user: U,
}

impl<U> IoState<U> {
    fn next_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }
}

/// The engine locked: its user's state (through `Deref`) and queuing.
#[derive(Debug)]
pub(crate) struct IoGuard<'a, U> {
    st: MutexGuard<'a, IoState<U>>,
    io: &'a IoEngine<U>,
}

impl<U> Deref for IoGuard<'_, U> {
    type Target = U;
    fn deref(&self) -> &U {
        &self.st.user
    }
}

impl<U> DerefMut for IoGuard<'_, U> {
    fn deref_mut(&mut self) -> &mut U {
        &mut self.st.user
    }
}

impl<U> IoGuard<'_, U> {
    /// Queues a request for `key` (submitted later: [`IoEngine::submit_pending`]).
    /// `buf` belongs to the request from now until its end is reported (the
    /// engine touches a read's buffer before submitting it).
    pub(crate) fn queue(
        &mut self,
        kind: IoKind,
        key: usize,
        slot: Slot,
        buf: IoBuf,
        express: bool,
    ) {
        let tag = self.st.next_tag();
        self.st.backlog.push(
            Queued {
                tag,
                kind,
                key,
                slot,
                buf,
            },
            express,
        );
    }

    /// Moves a queued read for `key` into the express lane.
    pub(crate) fn promote_read(&mut self, key: usize) {
        self.st
            .backlog
            .promote(|q| q.key == key && q.kind == IoKind::Read);
    }

    /// Wakes the threads blocked in [`IoEngine::wait_for`] to look again.
    pub(crate) fn notify_blocked(&self) {
        self.io.notify_blocked(&self.st);
    }
}

/// The I/O engine.
#[derive(Debug)]
pub(crate) struct IoEngine<U> {
    st: Mutex<IoState<U>>,
    /// Something a blocked thread may wait for happened.
    dispatched: Condvar,
    /// Wakes the background reaper.
    reaper: Condvar,
    /// Requests in the store now (a cheap check for pollers).
    in_store: AtomicUsize,
    /// vCPUs running: they collect between slices; with none, the reaper does.
    collectors: AtomicUsize,
    depth: usize,
    timeout: Duration,
    reaper_grace: Option<Duration>,
    store: Box<dyn Store>,
    counters: IoCounters,
    read_latency: AtomicHistogram,
    write_latency: AtomicHistogram,
}

impl<U> IoEngine<U> {
    pub(crate) fn new(
        store: Box<dyn Store>,
        timeout: Duration,
        reaper_grace: Option<Duration>,
        user: U,
    ) -> IoEngine<U> {
        let now = Instant::now();
        IoEngine {
            st: Mutex::new(IoState {
                next_tag: 1,
                inflight: HashMap::new(),
                backlog: ExpressFifo::new(),
                writes_done: HashMap::new(),
                role_held: false,
                blocked: 0,
                reaper_waiting: false,
                dispatches: 0,
                last_timeout_scan: now,
                last_reap: now,
                user,
            }),
            dispatched: Condvar::new(),
            reaper: Condvar::new(),
            in_store: AtomicUsize::new(0),
            collectors: AtomicUsize::new(0),
            depth: store.info().queue_depth.max(1),
            timeout,
            reaper_grace,
            store,
            counters: IoCounters::default(),
            read_latency: AtomicHistogram::new(),
            write_latency: AtomicHistogram::new(),
        }
    }

    pub(crate) fn lock(&self) -> IoGuard<'_, U> {
        IoGuard {
            st: lock(&self.st),
            io: self,
        }
    }

    /// The I/O timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn store_info(&self) -> StoreInfo {
        self.store.info()
    }

    pub(crate) fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        self.store.alloc_slot()
    }

    /// Frees a slot that no page refers to any more.
    pub(crate) fn free_slot(&self, slot: Option<u32>) {
        if let Some(s) = slot {
            self.store.free_slot(Slot(s));
        }
    }

    /// A slot is kept from reuse for good (a write to it timed out and may
    /// still land): only counted.
    pub(crate) fn abandon_slot(&self) {
        bump(&self.counters.slots_abandoned);
    }

    /// (counters, read latency, write latency).
    pub(crate) fn snapshot(&self) -> (IoCounts, Histogram, Histogram) {
        (
            self.counters.snapshot(),
            self.read_latency.snapshot(),
            self.write_latency.snapshot(),
        )
    }

    fn notify_blocked(&self, st: &IoState<U>) {
        if st.blocked > 0 {
            self.dispatched.notify_all();
        }
    }

    /// A vCPU starts (or resumes) running: it collects between slices.
    pub(crate) fn collector_running(&self) {
        self.collectors.fetch_add(1, Ordering::SeqCst);
    }

    /// A vCPU parked: if none runs now, the reaper takes over collecting.
    pub(crate) fn collector_parked(&self) {
        if self.collectors.fetch_sub(1, Ordering::SeqCst) == 1 {
            let st = lock(&self.st);
            if st.reaper_waiting && !st.inflight.is_empty() {
                self.reaper.notify_all();
            }
        }
    }

    fn collectors(&self) -> usize {
        self.collectors.load(Ordering::SeqCst)
    }

    /// Waits until `done` yields a value from the user's state, collecting
    /// completions (for `on`) whenever something is in flight and nobody else is.
    pub(crate) fn wait_for<R>(
        &self,
        on: &impl OnReads,
        mut done: impl FnMut(&mut U) -> Option<R>,
    ) -> R {
        self.wait_until(on, |st| done(&mut st.user))
    }

    fn wait_until<R>(
        &self,
        on: &impl OnReads,
        mut done: impl FnMut(&mut IoState<U>) -> Option<R>,
    ) -> R {
        let mut st = lock(&self.st);
        loop {
            if let Some(r) = done(&mut st) {
                return r;
            }
            if !st.role_held && !st.inflight.is_empty() {
                st = self.reap_holding_role(on, st);
            } else {
                st = self.wait_dispatched(st);
            }
        }
    }

    /// Takes the collector role (free, as `st` shows), collects completions
    /// for at most [`ROLE_WAIT`] without the lock, and lets the role go.
    fn reap_holding_role<'a>(
        &'a self,
        on: &impl OnReads,
        mut st: MutexGuard<'a, IoState<U>>,
    ) -> MutexGuard<'a, IoState<U>> {
        st.role_held = true;
        drop(st);
        self.reap(on, Some(ROLE_WAIT));
        let mut st = lock(&self.st);
        self.release_role(&mut st);
        st
    }

    /// Waits, counted as blocked, for the role holder's next dispatch.
    fn wait_dispatched<'a>(
        &'a self,
        mut st: MutexGuard<'a, IoState<U>>,
    ) -> MutexGuard<'a, IoState<U>> {
        st.blocked += 1;
        st = wait(&self.dispatched, st);
        st.blocked -= 1;
        st
    }

    fn release_role(&self, st: &mut IoState<U>) {
        st.role_held = false;
        self.notify_blocked(st);
        // The reaper only takes over when no vCPU runs (else it looks by itself
        // once the grace period passes): no wake-up per released role.
        if st.reaper_waiting && self.collectors() == 0 && !st.inflight.is_empty() {
            self.reaper.notify_all();
        }
    }

    /// Collects completions if nobody else is; never blocks on I/O.
    pub(crate) fn poll(&self, on: &impl OnReads) {
        if self.in_store.load(Ordering::Relaxed) == 0 {
            return;
        }
        {
            let mut st = lock(&self.st);
            if st.role_held || st.inflight.is_empty() {
                // Whoever holds the role may be asleep in the store: requests
                // deferred behind it must not wait for its next completion.
                let queued = !st.backlog.is_empty();
                drop(st);
                if queued {
                    self.submit_pending();
                }
                return;
            }
            st.role_held = true;
        }
        self.reap(on, None);
        let mut st = lock(&self.st);
        self.release_role(&mut st);
    }

    /// The background reaper: collects completions only when no vCPU runs to do
    /// it, or none has for longer than the grace period. Returns once `stop`.
    pub(crate) fn reaper_loop(&self, on: &impl OnReads, stop: &crate::sync::AtomicBool) {
        let mut st = lock(&self.st);
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let stale = self
                .reaper_grace
                .is_some_and(|g| st.last_reap.elapsed() >= g);
            if !st.role_held && !st.inflight.is_empty() && (self.collectors() == 0 || stale) {
                st = self.reap_holding_role(on, st);
                continue;
            }
            st.reaper_waiting = true;
            st = match self.reaper_grace {
                Some(g) => wait_timeout(&self.reaper, st, g),
                None => wait(&self.reaper, st),
            };
            st.reaper_waiting = false;
        }
    }

    /// Wakes the reaper and every blocked thread (shutdown).
    pub(crate) fn wake_all(&self) {
        let st = lock(&self.st);
        self.reaper.notify_all();
        self.dispatched.notify_all();
        drop(st);
    }

    /// Collects completions (the caller holds the role) and acts on them.
    fn reap(&self, on: &impl OnReads, wait_for: Option<Duration>) {
        let mut out = Vec::new();
        self.store.complete(&mut out, wait_for);
        self.dispatch(on, out);
    }

    fn dispatch(&self, on: &impl OnReads, out: Vec<IoCompletion>) {
        let now = Instant::now();
        let io = &self.counters;
        let mut reads: Vec<(usize, IoEnd)> = Vec::new();
        {
            let mut st = lock(&self.st);
            st.last_reap = now;
            for c in out {
                let Some(f) = st.inflight.remove(&c.tag) else {
                    bump(&io.stray_completions);
                    continue;
                };
                let end = match c.result {
                    Ok(()) => IoEnd::Done,
                    Err(e) => IoEnd::Failed(e),
                };
                self.finish_io(&mut st, c.tag, f, end, now, &mut reads);
            }
            if !st.inflight.is_empty()
                && now.duration_since(st.last_timeout_scan) >= self.timeout / 8
            {
                st.last_timeout_scan = now;
                let late: Vec<u64> = st
                    .inflight
                    .iter()
                    .filter(|(_, f)| now.duration_since(f.started) >= self.timeout)
                    .map(|(t, _)| *t)
                    .collect();
                for tag in late {
                    let f = st.inflight.remove(&tag).expect("listed above");
                    bump(&io.timeouts);
                    self.finish_io(&mut st, tag, f, IoEnd::TimedOut, now, &mut reads);
                }
            }
            self.in_store.store(st.inflight.len(), Ordering::Relaxed);
            st.dispatches += 1;
            self.notify_blocked(&st);
        }
        if !reads.is_empty() {
            on.reads_done(reads);
        }
        self.submit_pending();
    }

    /// Records how one request ended: a read's end goes to `reads`, a write's
    /// is kept for [`IoEngine::wait_writes`].
    fn finish_io(
        &self,
        st: &mut IoState<U>,
        tag: u64,
        f: Inflight,
        end: IoEnd,
        now: Instant,
        reads: &mut Vec<(usize, IoEnd)>,
    ) {
        let io = &self.counters;
        let took = now.duration_since(f.started);
        match f.kind {
            IoKind::Read => {
                self.read_latency.record(took);
                bump(match end {
                    IoEnd::Done => &io.pages_read,
                    IoEnd::Failed(_) | IoEnd::TimedOut => &io.read_errors,
                });
                reads.push((f.key, end));
            }
            IoKind::Write => {
                self.write_latency.record(took);
                let w = match end {
                    IoEnd::Done => {
                        bump(&io.pages_written);
                        WriteOutcome::Written
                    }
                    IoEnd::Failed(e) => {
                        bump(&io.write_errors);
                        WriteOutcome::Failed(e.to_string())
                    }
                    IoEnd::TimedOut => {
                        bump(&io.write_errors);
                        WriteOutcome::TimedOut
                    }
                };
                st.writes_done.insert(tag, w);
            }
        }
    }

    /// Queues writes of `(key, slot, buf)` (each `buf` belongs to its write
    /// until it ends) and submits them; returns their tags.
    pub(crate) fn queue_writes(&self, writes: &[(usize, Slot, IoBuf)]) -> Vec<u64> {
        let tags = {
            let mut st = lock(&self.st);
            writes
                .iter()
                .map(|&(key, slot, buf)| {
                    let tag = st.next_tag();
                    st.backlog.push(
                        Queued {
                            tag,
                            kind: IoKind::Write,
                            key,
                            slot,
                            buf,
                        },
                        false,
                    );
                    tag
                })
                .collect()
        };
        self.submit_pending();
        tags
    }

    /// Waits for the writes `tags` and returns their outcomes in order.
    pub(crate) fn wait_writes(&self, on: &impl OnReads, tags: &[u64]) -> Vec<WriteOutcome> {
        self.wait_until(on, |st| {
            if tags.iter().all(|t| st.writes_done.contains_key(t)) {
                Some(
                    tags.iter()
                        .map(|t| st.writes_done.remove(t).expect("checked"))
                        .collect(),
                )
            } else {
                None
            }
        })
    }

    /// Waits until nothing is in the store or queued for it and nobody is acting
    /// on completions, collecting them itself when nobody else does. Only for a
    /// memory nothing starts I/O on any more: else it may never be idle.
    pub(crate) fn wait_idle(&self, on: &impl OnReads) {
        let mut st = lock(&self.st);
        loop {
            if st.inflight.is_empty() && !st.role_held {
                if st.backlog.is_empty() {
                    return;
                }
                drop(st);
                self.submit_pending();
                st = lock(&self.st);
            } else if !st.role_held {
                st = self.reap_holding_role(on, st);
            } else {
                // The holder notifies when it lets the role go.
                st = self.wait_dispatched(st);
            }
        }
    }

    /// How many times completions were dispatched so far.
    pub(crate) fn dispatches(&self) -> u64 {
        lock(&self.st).dispatches
    }

    /// Waits until completions were dispatched at least once more than `seen`
    /// (or nothing is in flight).
    pub(crate) fn wait_dispatch_after(&self, on: &impl OnReads, seen: u64) {
        self.wait_until(on, |st| {
            (st.dispatches != seen || st.inflight.is_empty()).then_some(())
        });
    }

    /// Submits at once if the store is idle; else leaves the requests queued for
    /// whoever collects the next completion (one must come: something is in
    /// flight), so requests started between two collections go in one submission
    /// instead of one system call each.
    pub(crate) fn submit_or_defer(&self) {
        if self.in_store.load(Ordering::Relaxed) == 0 {
            self.submit_pending();
        }
    }

    /// Hands queued requests to the store, up to its queue depth.
    pub(crate) fn submit_pending(&self) {
        let mut reqs = Vec::new();
        {
            let mut st = lock(&self.st);
            let now = Instant::now();
            while st.inflight.len() < self.depth {
                let Some(q) = st.backlog.pop_front() else {
                    break;
                };
                st.inflight.insert(
                    q.tag,
                    Inflight {
                        kind: q.kind,
                        key: q.key,
                        started: now,
                    },
                );
                reqs.push(IoRequest {
                    tag: q.tag,
                    kind: q.kind,
                    slot: q.slot,
                    buf: q.buf,
                });
            }
            if reqs.is_empty() {
                return;
            }
            let n = st.inflight.len();
            self.in_store.store(n, Ordering::Relaxed);
            self.counters
                .max_in_flight
                .fetch_max(n as u64, Ordering::Relaxed);
            self.notify_blocked(&st);
            if st.reaper_waiting && self.collectors() == 0 {
                self.reaper.notify_all();
            }
        }
        // Fault the read targets in here: a discarded page would make the kernel
        // punt the direct read to a worker thread to fault it in there, which
        // costs more than the fault itself.
        for r in reqs.iter().filter(|r| r.kind == IoKind::Read) {
            // SAFETY: the buffer is the request's from its queuing to its end
            // (the queuer's promise, `IoGuard::queue`), and the read overwrites
            // it whole.
            unsafe { crate::ram::copy_to_shared(&[0], r.buf.as_ptr()) };
        }
        let reads = reqs.iter().filter(|r| r.kind == IoKind::Read).count() as u64;
        add(&self.counters.reads_submitted, reads);
        add(&self.counters.writes_submitted, reqs.len() as u64 - reads);
        self.store.submit(&reqs);
    }

    /// (requests in the store, requests waiting for depth).
    pub(crate) fn depths(&self) -> (u64, u64) {
        let st = lock(&self.st);
        (st.inflight.len() as u64, st.backlog.len() as u64)
    }

    /// Where requests for `key` are (queued, in the store), and who collects,
    /// for a report of what a hung run waited for.
    pub(crate) fn describe_key(&self, key: usize) -> String {
        let st = lock(&self.st);
        format!(
            "queued {} in_store {} role_held {} collecting_vcpus {}",
            st.backlog.contains(|q| q.key == key),
            st.inflight.values().filter(|f| f.key == key).count(),
            st.role_held,
            self.collectors()
        )
    }

    /// (reads, writes) in the store now.
    pub(crate) fn in_flight_by_kind(&self) -> (u64, u64) {
        let st = lock(&self.st);
        let reads = st
            .inflight
            .values()
            .filter(|f| f.kind == IoKind::Read)
            .count() as u64;
        (reads, st.inflight.len() as u64 - reads)
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    //! The engine on one thread: stores that complete at submission, collected
    //! on the next poll or wait.

    use std::ptr::NonNull;

    use super::*;
    use crate::ram::{GuestRam, PAGE};
    use crate::store::{FaultConfig, FaultyStore, MemStore};

    /// Records the reads reported, by key and how they ended.
    #[derive(Default)]
    struct Rec(Mutex<Vec<(usize, &'static str)>>);

    impl OnReads for Rec {
        fn reads_done(&self, reads: Vec<(usize, IoEnd)>) {
            let mut v = self.0.lock().unwrap();
            for (key, end) in reads {
                let how = match end {
                    IoEnd::Done => "done",
                    IoEnd::Failed(_) => "failed",
                    IoEnd::TimedOut => "timed out",
                };
                v.push((key, how));
            }
        }
    }

    fn engine(store: impl Store + 'static, timeout: Duration) -> IoEngine<()> {
        IoEngine::new(Box::new(store), timeout, None, ())
    }

    fn buf(ram: &GuestRam, index: usize) -> IoBuf {
        // SAFETY: each test gives each page of its own mapping to one request
        // at a time and touches it only through the engine.
        unsafe { IoBuf::new(NonNull::new(ram.page_ptr(index)).unwrap()) }
    }

    #[test]
    fn requests_go_in_up_to_the_depth_express_first() {
        let ram = GuestRam::new(4 * PAGE).unwrap();
        let io = engine(MemStore::new(8, 1), Duration::from_secs(30));
        let rec = Rec::default();
        {
            let mut g = io.lock();
            for (key, express) in [(0, false), (1, false), (2, true)] {
                g.queue(IoKind::Read, key, Slot(0), buf(&ram, key), express);
            }
            g.promote_read(1);
        }
        io.submit_pending();
        assert_eq!(io.depths(), (1, 2), "a depth of one");
        assert_eq!(io.in_flight_by_kind(), (1, 0));
        for _ in 0..3 {
            io.poll(&rec);
        }
        assert_eq!(
            *rec.0.lock().unwrap(),
            [(2, "done"), (1, "done"), (0, "done")]
        );
        assert_eq!(io.depths(), (0, 0));
        let (c, read_latency, _) = io.snapshot();
        assert_eq!(
            (c.reads_submitted, c.pages_read, c.max_in_flight),
            (3, 3, 1)
        );
        assert_eq!(read_latency.count(), 3);
    }

    #[test]
    fn writes_are_waited_for_and_their_outcomes_kept_in_order() {
        let ram = GuestRam::new(2 * PAGE).unwrap();
        let io = engine(MemStore::new(8, 4), Duration::from_secs(30));
        let rec = Rec::default();
        let seen = io.dispatches();
        let slots = [io.alloc_slot().unwrap(), io.alloc_slot().unwrap()];
        let tags = io.queue_writes(&[(0, slots[0], buf(&ram, 0)), (1, slots[1], buf(&ram, 1))]);
        assert_eq!(
            io.wait_writes(&rec, &tags),
            [WriteOutcome::Written, WriteOutcome::Written]
        );
        assert!(io.dispatches() > seen);
        assert!(rec.0.lock().unwrap().is_empty(), "no read was reported");
        let (c, _, write_latency) = io.snapshot();
        assert_eq!((c.writes_submitted, c.pages_written), (2, 2));
        assert_eq!(write_latency.count(), 2);
    }

    #[test]
    fn a_lost_completion_times_out_and_a_duplicate_is_stray() {
        let ram = GuestRam::new(2 * PAGE).unwrap();
        let lost = FaultConfig {
            lost: 1.0,
            ..FaultConfig::default()
        };
        let io = engine(FaultyStore::new(MemStore::new(8, 4), lost), Duration::ZERO);
        let rec = Rec::default();
        io.lock()
            .queue(IoKind::Read, 5, Slot(0), buf(&ram, 0), false);
        io.submit_pending();
        io.poll(&rec);
        assert_eq!(*rec.0.lock().unwrap(), [(5, "timed out")]);
        let (c, _, _) = io.snapshot();
        assert_eq!((c.timeouts, c.read_errors, c.pages_read), (1, 1, 0));
        assert_eq!(io.depths(), (0, 0));

        let twice = FaultConfig {
            duplicate: 1.0,
            ..FaultConfig::default()
        };
        let io = engine(
            FaultyStore::new(MemStore::new(8, 4), twice),
            Duration::from_secs(30),
        );
        let rec = Rec::default();
        io.lock()
            .queue(IoKind::Read, 6, Slot(0), buf(&ram, 1), false);
        io.submit_pending();
        io.poll(&rec);
        assert_eq!(*rec.0.lock().unwrap(), [(6, "done")], "reported once");
        assert_eq!(io.snapshot().0.stray_completions, 1);
    }
}
