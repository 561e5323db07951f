//! The fetch pipeline: page reads and writes through the store, one read per page
//! however many wait for it, installs, and who collects completions.
//!
//! Collecting completions is a *role* one thread holds at a time. Whoever needs a
//! completion takes it: a vCPU between slices ([`Inner::poll_completions`], never
//! blocking), a thread that must wait for a page (it then blocks in the store, so
//! the device's completion wakes the thread that wants it, not a middleman), the
//! reclaimer waiting for its writes, and, only when no vCPU is running or none has
//! collected for a while, the background reaper. This keeps cross-CPU thread
//! wake-ups (as costly as a disk read on the target machine) off the per-page path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fifo::ExpressFifo;
use crate::memory::{FetchSink, FetchStart, Inner};
use crate::metrics::{add, bump};
use crate::page::State;
use crate::store::{IoBuf, IoCompletion, IoError, IoKind, IoRequest, Slot};
use crate::sync::{Condvar, Mutex, MutexGuard, Ordering, lock, wait, wait_timeout};

/// How long a thread that holds the collecting role blocks in the store at once
/// before it looks around again (for lost completions, mostly).
const ROLE_WAIT: Duration = Duration::from_millis(1);

/// Why a fetch failed. The page stays where it was (in the store): nothing is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The gfn is not guest RAM.
    #[error("gfn {gfn:#x} is not guest RAM")]
    NotRam {
        /// The page.
        gfn: u64,
    },
    /// The read failed.
    #[error("reading gfn {gfn:#x} failed: {source}")]
    Io {
        /// The page.
        gfn: u64,
        /// The store's error.
        source: IoError,
    },
    /// The read did not complete within the I/O timeout.
    #[error("reading gfn {gfn:#x} did not complete within {after:?}")]
    Timeout {
        /// The page.
        gfn: u64,
        /// The timeout.
        after: Duration,
    },
}

/// Who waits for a fetch.
pub(crate) enum Waiter {
    /// An asynchronous requester, called back.
    Sink(Arc<dyn FetchSink>, u64),
    /// A blocked thread; its outcome is left in `PipeState::outcomes`.
    Blocking(u64),
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiter::Sink(_, cookie) => write!(f, "Sink(cookie {cookie:#x})"),
            Waiter::Blocking(id) => write!(f, "Blocking({id})"),
        }
    }
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

#[derive(Debug)]
struct Inflight {
    kind: IoKind,
    page: usize,
    started: Instant,
}

/// How a request ended, as the pipeline sees it.
#[derive(Debug)]
enum IoEnd {
    Done,
    Failed(IoError),
    /// Not completed within the I/O timeout.
    TimedOut,
}

#[derive(Debug)]
struct Queued {
    tag: u64,
    kind: IoKind,
    page: usize,
    slot: Slot,
}

#[derive(Debug)]
pub(crate) struct PipeState {
    next_tag: u64,
    inflight: HashMap<u64, Inflight>,
    backlog: ExpressFifo<Queued>,
    /// Waiters of each page being fetched.
    fetches: HashMap<usize, Vec<Waiter>>,
    /// Pages being fetched that wait for a frame, oldest first (those a thread
    /// is blocked on before the rest).
    pub(crate) frame_waiters: ExpressFifo<usize>,
    outcomes: HashMap<u64, Result<(), FetchError>>,
    writes_done: HashMap<u64, WriteOutcome>,
    role_held: bool,
    /// Threads waiting on `dispatched`.
    blocked: usize,
    reaper_waiting: bool,
    /// Bumped whenever completions were dispatched (the reclaimer waits on it).
    pub(crate) dispatches: u64,
    last_timeout_scan: Instant,
    last_reap: Instant,
}

/// The pipeline's shared state.
#[derive(Debug)]
pub(crate) struct Pipeline {
    st: Mutex<PipeState>,
    /// Something a blocked thread may wait for happened.
    dispatched: Condvar,
    /// Wakes the background reaper.
    reaper: Condvar,
    /// Requests in the store now (a cheap check for pollers).
    in_store: crate::sync::AtomicUsize,
    /// Names blocked waiters (their outcomes are left under it).
    next_waiter: crate::sync::AtomicU64,
    depth: usize,
}

impl Pipeline {
    pub(crate) fn new(depth: usize) -> Pipeline {
        let now = Instant::now();
        Pipeline {
            st: Mutex::new(PipeState {
                next_tag: 1,
                inflight: HashMap::new(),
                backlog: ExpressFifo::new(),
                fetches: HashMap::new(),
                frame_waiters: ExpressFifo::new(),
                outcomes: HashMap::new(),
                writes_done: HashMap::new(),
                role_held: false,
                blocked: 0,
                reaper_waiting: false,
                dispatches: 0,
                last_timeout_scan: now,
                last_reap: now,
            }),
            dispatched: Condvar::new(),
            reaper: Condvar::new(),
            in_store: crate::sync::AtomicUsize::new(0),
            next_waiter: crate::sync::AtomicU64::new(1),
            depth,
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, PipeState> {
        lock(&self.st)
    }

    fn notify_blocked(&self, st: &PipeState) {
        if st.blocked > 0 {
            self.dispatched.notify_all();
        }
    }
}

impl Inner {
    /// Starts (or joins) bringing page `index` in for `waiter`.
    pub(crate) fn start_fetch(&self, index: usize, waiter: Waiter) -> FetchStart {
        let c = &self.counters.fetch;
        // A blocked thread gets the page pinned, so it can map it before the
        // reclaimer (however eager) takes it away again.
        let pin_for = matches!(waiter, Waiter::Blocking(_));
        let mut g = self.pages.lock(index);
        loop {
            match g.word.state() {
                State::Resident => {
                    if pin_for {
                        g.word.add_pin(true);
                    }
                    bump(&c.already_resident);
                    return FetchStart::AlreadyResident;
                }
                State::Evicting => {
                    self.rescue(&mut g.word, false);
                    if pin_for {
                        g.word.add_pin(true);
                    }
                    bump(&c.already_resident);
                    return FetchStart::AlreadyResident;
                }
                // Committed to leave: it is being discarded right now; a fetch can
                // only start once it is in the store (or untouched again).
                State::Dropping => g = g.wait_change(),
                State::Fetching => {
                    let mut st = self.pipe.state();
                    if pin_for {
                        st.backlog
                            .promote(|q| q.page == index && q.kind == IoKind::Read);
                        st.frame_waiters.promote(|&i| i == index);
                    }
                    st.fetches.entry(index).or_default().push(waiter);
                    bump(&c.joined);
                    return FetchStart::Joined;
                }
                State::Untouched | State::InStore => {
                    if g.word.state() == State::Untouched && self.frames.try_take() {
                        g.word.set_state(State::Resident);
                        if pin_for {
                            g.word.add_pin(true);
                        }
                        self.pages.mark_accessed(index);
                        drop(g);
                        bump(&self.counters.faults.zero_fill);
                        bump(&c.already_resident);
                        self.kick_reclaim_if_low();
                        return FetchStart::AlreadyResident;
                    }
                    g.word.set_state(State::Fetching);
                    bump(&c.started);
                    let framed = g.word.slot().is_some() && self.frames.try_take();
                    g.word.set_framed(framed);
                    let mut st = self.pipe.state();
                    st.fetches.insert(index, vec![waiter]);
                    if framed {
                        let slot = Slot(g.word.slot().expect("checked above"));
                        let tag = next_tag(&mut st);
                        st.backlog.push(
                            Queued {
                                tag,
                                kind: IoKind::Read,
                                page: index,
                                slot,
                            },
                            pin_for,
                        );
                    } else {
                        st.frame_waiters.push(index, pin_for);
                    }
                    drop(st);
                    drop(g);
                    if framed {
                        self.kick_reclaim_if_low();
                        self.submit_or_defer();
                    } else {
                        // A frame may have been freed since we looked: grant it
                        // (or wake the reclaimer if there is none).
                        self.grant_frames();
                    }
                    return FetchStart::Started;
                }
            }
        }
    }

    /// Brings page `index` in and waits for it, collecting completions itself
    /// when nobody else is. On success the page is resident and pinned for the
    /// caller, who must [`Inner::unpin`] it. The caller must not be an unparked vCPU.
    pub(crate) fn fetch_pinned(&self, index: usize) -> Result<(), FetchError> {
        bump(&self.counters.fetch.blocking);
        let id = self.pipe.next_waiter.fetch_add(1, Ordering::Relaxed);
        match self.start_fetch(index, Waiter::Blocking(id)) {
            FetchStart::AlreadyResident => Ok(()),
            FetchStart::NotRam => Err(FetchError::NotRam {
                gfn: self.gfn_of(index),
            }),
            FetchStart::Started | FetchStart::Joined => {
                self.wait_until(|st| st.outcomes.remove(&id))
            }
        }
    }

    /// Waits until `done` yields a value, taking the collecting role whenever
    /// something is in flight and nobody else holds it.
    pub(crate) fn wait_until<R>(&self, mut done: impl FnMut(&mut PipeState) -> Option<R>) -> R {
        let mut st = self.pipe.state();
        loop {
            if let Some(r) = done(&mut st) {
                return r;
            }
            if !st.role_held && !st.inflight.is_empty() {
                st.role_held = true;
                drop(st);
                self.reap(Some(ROLE_WAIT));
                st = self.pipe.state();
                self.release_role(&mut st);
            } else {
                st.blocked += 1;
                st = wait(&self.pipe.dispatched, st);
                st.blocked -= 1;
            }
        }
    }

    fn release_role(&self, st: &mut PipeState) {
        st.role_held = false;
        self.pipe.notify_blocked(st);
        // The reaper only takes over when no vCPU runs (else it looks by itself
        // once the grace period passes): no wake-up per released role.
        if st.reaper_waiting && self.shoot.running() == 0 && !st.inflight.is_empty() {
            self.pipe.reaper.notify_all();
        }
    }

    /// Collects completions if nobody else is; never blocks on I/O.
    pub(crate) fn poll_completions(&self) {
        if self.pipe.in_store.load(Ordering::Relaxed) == 0 {
            return;
        }
        {
            let mut st = self.pipe.state();
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
        self.reap(None);
        let mut st = self.pipe.state();
        self.release_role(&mut st);
    }

    /// The background reaper: collects completions only when no vCPU runs to do
    /// it, or none has for longer than the grace period.
    pub(crate) fn reaper_loop(&self) {
        let mut st = self.pipe.state();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let stale = self
                .reaper_grace
                .is_some_and(|g| st.last_reap.elapsed() >= g);
            if !st.role_held && !st.inflight.is_empty() && (self.shoot.running() == 0 || stale) {
                st.role_held = true;
                drop(st);
                self.reap(Some(ROLE_WAIT));
                st = self.pipe.state();
                self.release_role(&mut st);
                continue;
            }
            st.reaper_waiting = true;
            st = match self.reaper_grace {
                Some(g) => wait_timeout(&self.pipe.reaper, st, g),
                None => wait(&self.pipe.reaper, st),
            };
            st.reaper_waiting = false;
        }
    }

    /// Wakes the background threads (a vCPU parked, or shutdown).
    pub(crate) fn wake_background(&self) {
        {
            let st = self.pipe.state();
            self.pipe.reaper.notify_all();
            self.pipe.dispatched.notify_all();
            drop(st);
        }
        self.wake_reclaimer();
    }

    /// A vCPU parked: if none runs now, the reaper takes over collecting.
    pub(crate) fn vcpus_all_parked(&self) {
        let st = self.pipe.state();
        if st.reaper_waiting && !st.inflight.is_empty() {
            self.pipe.reaper.notify_all();
        }
    }

    /// Collects completions (the caller holds the role) and acts on them.
    fn reap(&self, wait_for: Option<Duration>) {
        let mut out = Vec::new();
        self.store.complete(&mut out, wait_for);
        self.dispatch(out);
    }

    fn dispatch(&self, out: Vec<IoCompletion>) {
        let now = Instant::now();
        let io = &self.counters.io;
        let mut reads: Vec<(usize, Result<(), FetchError>)> = Vec::new();
        {
            let mut st = self.pipe.state();
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
                && now.duration_since(st.last_timeout_scan) >= self.io_timeout / 8
            {
                st.last_timeout_scan = now;
                let late: Vec<u64> = st
                    .inflight
                    .iter()
                    .filter(|(_, f)| now.duration_since(f.started) >= self.io_timeout)
                    .map(|(t, _)| *t)
                    .collect();
                for tag in late {
                    let f = st.inflight.remove(&tag).expect("listed above");
                    bump(&io.timeouts);
                    self.finish_io(&mut st, tag, f, IoEnd::TimedOut, now, &mut reads);
                }
            }
            self.pipe
                .in_store
                .store(st.inflight.len(), Ordering::Relaxed);
            st.dispatches += 1;
            self.pipe.notify_blocked(&st);
        }
        let any_failed = reads.iter().any(|(_, r)| r.is_err());
        for (page, r) in reads {
            self.settle_fetch(page, r);
        }
        if any_failed {
            self.grant_frames();
        }
        self.submit_pending();
    }

    /// Records how one request ended.
    fn finish_io(
        &self,
        st: &mut PipeState,
        tag: u64,
        f: Inflight,
        end: IoEnd,
        now: Instant,
        reads: &mut Vec<(usize, Result<(), FetchError>)>,
    ) {
        let io = &self.counters.io;
        let took = now.duration_since(f.started);
        let gfn = self.gfn_of(f.page);
        match f.kind {
            IoKind::Read => {
                self.counters.read_latency.record(took);
                let r = match end {
                    IoEnd::Done => {
                        bump(&io.pages_read);
                        Ok(())
                    }
                    IoEnd::Failed(source) => {
                        bump(&io.read_errors);
                        Err(FetchError::Io { gfn, source })
                    }
                    IoEnd::TimedOut => {
                        bump(&io.read_errors);
                        Err(FetchError::Timeout {
                            gfn,
                            after: self.io_timeout,
                        })
                    }
                };
                reads.push((f.page, r));
            }
            IoKind::Write => {
                self.counters.write_latency.record(took);
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

    /// Ends the fetch of page `index`: installs it (or puts it back) and tells
    /// its waiters.
    pub(crate) fn settle_fetch(&self, index: usize, r: Result<(), FetchError>) {
        if r.is_err() {
            // The failed read may have filled part of the page: give it back.
            // Nothing maps a Fetching page, so this cannot lose data.
            let _ = self.ram.discard(index, 1);
        }
        let sinks = {
            let mut g = self.pages.lock(index);
            debug_assert_eq!(g.word.state(), State::Fetching);
            let framed = g.word.framed();
            g.word.set_framed(false);
            if r.is_ok() {
                g.word.set_state(State::Resident);
                g.word.set_dirty(false);
                self.pages.mark_accessed(index);
            } else {
                g.word.set_state(if g.word.slot().is_some() {
                    State::InStore
                } else {
                    State::Untouched
                });
                if framed {
                    self.frames.release(1);
                }
            }
            let mut st = self.pipe.state();
            let waiters = st.fetches.remove(&index).unwrap_or_default();
            let mut sinks = Vec::new();
            for w in waiters {
                match w {
                    Waiter::Blocking(id) => {
                        if r.is_ok() {
                            g.word.add_pin(true);
                        }
                        st.outcomes.insert(id, r.clone());
                    }
                    Waiter::Sink(s, cookie) => sinks.push((s, cookie)),
                }
            }
            self.pipe.notify_blocked(&st);
            sinks
        };
        bump(if r.is_ok() {
            &self.counters.fetch.completed
        } else {
            &self.counters.fetch.failed
        });
        for (s, cookie) in sinks {
            s.fetch_done(cookie, r.clone());
        }
    }

    /// Gives free frames to fetches waiting for one, oldest first.
    pub(crate) fn grant_frames(&self) {
        loop {
            let index = {
                let mut st = self.pipe.state();
                if st.frame_waiters.is_empty() {
                    break;
                }
                if !self.frames.try_take() {
                    drop(st);
                    self.kick_reclaim();
                    break;
                }
                st.frame_waiters.pop_front().expect("checked non-empty")
            };
            self.start_framed_fetch(index);
        }
        self.submit_pending();
    }

    /// A fetch has just been given its frame: zero-fills a never-touched page
    /// at once, or queues the read.
    fn start_framed_fetch(&self, index: usize) {
        let mut g = self.pages.lock(index);
        debug_assert!(g.word.state() == State::Fetching && !g.word.framed());
        g.word.set_framed(true);
        match g.word.slot() {
            None => {
                // Never touched: the frame is zero already, no I/O.
                drop(g);
                bump(&self.counters.faults.zero_fill);
                self.settle_fetch(index, Ok(()));
            }
            Some(slot) => {
                let mut st = self.pipe.state();
                let tag = next_tag(&mut st);
                let express = st.fetches.get(&index).is_some_and(|waiters| {
                    waiters.iter().any(|w| matches!(w, Waiter::Blocking(_)))
                });
                st.backlog.push(
                    Queued {
                        tag,
                        kind: IoKind::Read,
                        page: index,
                        slot: Slot(slot),
                    },
                    express,
                );
            }
        }
    }

    /// Queues eviction writes of `(page, slot)`; returns their tags.
    pub(crate) fn queue_writes(&self, writes: &[(usize, Slot)]) -> Vec<u64> {
        let tags = {
            let mut st = self.pipe.state();
            writes
                .iter()
                .map(|&(page, slot)| {
                    let tag = next_tag(&mut st);
                    st.backlog.push(
                        Queued {
                            tag,
                            kind: IoKind::Write,
                            page,
                            slot,
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

    /// Waits for the eviction writes `tags` and returns their outcomes in order.
    pub(crate) fn wait_writes(&self, tags: &[u64]) -> Vec<WriteOutcome> {
        self.wait_until(|st| {
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

    /// Submits at once if the store is idle; else leaves the request queued for
    /// whoever collects the next completion (one must come: something is in
    /// flight), so requests started between two collections go in one submission
    /// instead of one system call each.
    fn submit_or_defer(&self) {
        if self.pipe.in_store.load(Ordering::Relaxed) == 0 {
            self.submit_pending();
        }
    }

    /// Hands queued requests to the store, up to its queue depth.
    pub(crate) fn submit_pending(&self) {
        let mut reqs = Vec::new();
        {
            let mut st = self.pipe.state();
            let now = Instant::now();
            while st.inflight.len() < self.pipe.depth {
                let Some(q) = st.backlog.pop_front() else {
                    break;
                };
                let ptr =
                    std::ptr::NonNull::new(self.ram.page_ptr(q.page)).expect("mapping is non-null");
                // SAFETY: the page is Fetching with a frame (a read) or Evicting after
                // its shootdown (a write): no TLB maps it and no host copy pins it, so
                // until this request's completion is dispatched nothing else touches
                // it, except that a fault may rescue an Evicting page and write it
                // while its write runs (that write's copy is then discarded).
                let buf = unsafe { IoBuf::new(ptr) };
                st.inflight.insert(
                    q.tag,
                    Inflight {
                        kind: q.kind,
                        page: q.page,
                        started: now,
                    },
                );
                reqs.push(IoRequest {
                    tag: q.tag,
                    kind: q.kind,
                    slot: q.slot,
                    buf,
                });
            }
            if reqs.is_empty() {
                return;
            }
            let n = st.inflight.len();
            self.pipe.in_store.store(n, Ordering::Relaxed);
            self.counters
                .io
                .max_in_flight
                .fetch_max(n as u64, Ordering::Relaxed);
            self.pipe.notify_blocked(&st);
            if st.reaper_waiting && self.shoot.running() == 0 {
                self.pipe.reaper.notify_all();
            }
        }
        // Fault the read targets in here: a discarded page would make the kernel
        // punt the direct read to a worker thread to fault it in there, which
        // costs more than the fault itself.
        for r in reqs.iter().filter(|r| r.kind == IoKind::Read) {
            // SAFETY: the page is ours until the read's completion (see above)
            // and the read overwrites it whole.
            unsafe { crate::ram::copy_to_shared(&[0], r.buf.as_ptr()) };
        }
        let reads = reqs.iter().filter(|r| r.kind == IoKind::Read).count() as u64;
        add(&self.counters.io.reads_submitted, reads);
        add(
            &self.counters.io.writes_submitted,
            reqs.len() as u64 - reads,
        );
        self.store.submit(&reqs);
    }

    /// (requests in the store, requests waiting for depth).
    pub(crate) fn pipeline_depths(&self) -> (u64, u64) {
        let st = self.pipe.state();
        (st.inflight.len() as u64, st.backlog.len() as u64)
    }

    /// (reads, writes) in the store now.
    pub(crate) fn in_flight_by_kind(&self) -> (u64, u64) {
        let st = self.pipe.state();
        let reads = st
            .inflight
            .values()
            .filter(|f| f.kind == IoKind::Read)
            .count() as u64;
        (reads, st.inflight.len() as u64 - reads)
    }

    /// Wait until completions were dispatched at least once more than `seen`.
    pub(crate) fn wait_dispatch_after(&self, seen: u64) {
        self.wait_until(|st| (st.dispatches != seen || st.inflight.is_empty()).then_some(()));
    }
}

fn next_tag(st: &mut PipeState) -> u64 {
    st.next_tag += 1;
    st.next_tag
}
