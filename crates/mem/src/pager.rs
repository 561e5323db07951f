//! The pager: the page table and every page-state transition. Faults, pins and
//! rescues; starting, granting a frame to and settling a fetch; and the steps
//! of an eviction the reclaimer asks for (Resident → Evicting → Dropping →
//! InStore or Untouched). States are in `page.rs`; nothing else changes them.
//! While the dirty log (`dirty_log.rs`) is on, every write sets its page's bit
//! there, and a page is mapped writable only once its bit is set.
//!
//! It owns the guest RAM mapping, the frames (the budget: taking one kicks the
//! reclaimer when few are left) and the I/O engine, whose lock also guards the
//! fetch table: who waits for each page being fetched, which fetches wait for a
//! frame, and the outcomes left for blocked threads. Lock order: a page's stripe,
//! then the I/O engine's lock.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use apf_abi::Gfn;

use crate::dirty_log::DirtyLog;
use crate::fifo::ExpressFifo;
use crate::frames::Frames;
use crate::io::{IoEnd, IoEngine, OnReads, WriteOutcome};
use crate::metrics::{FaultCounters, FaultCounts, FetchCounters, FetchCounts, bump};
use crate::page::{PageTable, PageWord, STATES, State};
use crate::ram::GuestRam;
use crate::store::{IoBuf, IoError, IoKind, Slot, StoreFull};
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// A page of guest RAM by its index from the RAM base (not a [`Gfn`]): what
/// [`Pager::index_of`] hands out and the pager's entry points take, so a gfn
/// cannot be passed for it. The page table, the I/O engine and the reclaimer
/// index their arrays with the raw `usize` inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub(crate) struct PageIndex(pub(crate) usize);

/// Why a fetch failed. The page stays where it was (in the store): nothing is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The gfn is not guest RAM.
    #[error("gfn {gfn:#x} is not guest RAM")]
    NotRam {
        /// The page.
        gfn: Gfn,
    },
    /// The read failed.
    #[error("reading gfn {gfn:#x} failed: {source}")]
    Io {
        /// The page.
        gfn: Gfn,
        /// The store's error.
        source: IoError,
    },
    /// The read did not complete within the I/O timeout.
    #[error("reading gfn {gfn:#x} did not complete within {after:?}")]
    Timeout {
        /// The page.
        gfn: Gfn,
        /// The timeout.
        after: Duration,
    },
}

/// What [`crate::GuestMemory::start_fetch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchStart {
    /// The page is resident (or was rescued from eviction): no fetch, no callback.
    AlreadyResident,
    /// A fetch was started; the sink will be called.
    Started,
    /// A fetch for the page was already in flight; the sink will be called when it ends.
    Joined,
    /// The gfn is not guest RAM: nothing started, no callback.
    NotRam,
}

/// Told when an asynchronous fetch ends. Called on whichever thread collected the
/// completion (a vCPU between slices, the reclaimer, or the background reaper),
/// never from inside [`crate::GuestMemory::start_fetch`], and never with a lock held.
pub trait FetchSink: Send + Sync {
    /// The fetch started with `cookie` installed its page, or failed (the page is
    /// still in the store: nothing is lost, a later fetch may succeed).
    fn fetch_done(&self, cookie: u64, result: Result<(), FetchError>);
}

/// Who waits for a fetch.
pub(crate) enum Waiter {
    /// An asynchronous requester, called back.
    Sink(Arc<dyn FetchSink>, u64),
    /// A blocked thread; its outcome is left in `Fetches::outcomes`.
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

/// The fetch table (under the I/O engine's lock).
#[derive(Debug)]
pub(crate) struct Fetches {
    /// Waiters of each page being fetched.
    waiters: HashMap<usize, Vec<Waiter>>,
    /// Pages being fetched that wait for a frame, oldest first (those a thread
    /// is blocked on before the rest).
    frame_waiters: ExpressFifo<usize>,
    outcomes: HashMap<u64, Result<(), FetchError>>,
}

/// What a stage-2 fault found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Map the page at `host`, writable or not.
    Map { host: *mut u8, writable: bool },
    /// The page must be fetched first.
    NeedsFetch,
    /// Not guest RAM.
    NotRam,
}

/// The clock hand's verdict on one page ([`Pager::start_evicting`]).
#[derive(Debug)]
pub(crate) enum Pick {
    /// Not a candidate (not resident, pinned, or dirty with no slot to be had).
    Skip,
    /// Used since the hand last passed; its accessed bit is clear now.
    Used,
    /// Dirty, and the store has no slot for it.
    NoSlot(StoreFull),
    /// Now Evicting; a dirty page with the slot it will be written to.
    Chosen { dirty: bool, new_slot: Option<Slot> },
}

/// Where an eviction ended for one page ([`Pager::end_eviction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evicted {
    /// A fault took it back while the batch ran.
    Rescued,
    /// Dropping: clean, its store copy valid.
    Clean,
    /// Dropping: never written, no store copy.
    Zero,
    /// Dropping: written to its new slot.
    Written,
    /// Resident again, still dirty: its write failed.
    Kept,
}

/// The pager.
#[derive(Debug)]
pub(crate) struct Pager {
    base_gfn: Gfn,
    ram: GuestRam,
    table: PageTable,
    frames: Frames,
    io: IoEngine<Fetches>,
    log: DirtyLog,
    /// Names blocked waiters (their outcomes are left under it).
    next_waiter: AtomicU64,
    faults: FaultCounters,
    fetch: FetchCounters,
}

impl Pager {
    pub(crate) fn new(
        base_gfn: Gfn,
        ram: GuestRam,
        frames: Frames,
        io: IoEngine<Fetches>,
    ) -> Pager {
        let pages = ram.pages();
        Pager {
            base_gfn,
            ram,
            table: PageTable::new(pages),
            frames,
            io,
            log: DirtyLog::new(pages),
            next_waiter: AtomicU64::new(1),
            faults: FaultCounters::default(),
            fetch: FetchCounters::default(),
        }
    }

    /// An empty fetch table, for the I/O engine to hold.
    pub(crate) fn fetch_table() -> Fetches {
        Fetches {
            waiters: HashMap::new(),
            frame_waiters: ExpressFifo::new(),
            outcomes: HashMap::new(),
        }
    }

    pub(crate) fn frames(&self) -> &Frames {
        &self.frames
    }

    pub(crate) fn io(&self) -> &IoEngine<Fetches> {
        &self.io
    }

    pub(crate) fn log(&self) -> &DirtyLog {
        &self.log
    }

    pub(crate) fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Pages of guest RAM.
    pub(crate) fn pages(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn base_gfn(&self) -> Gfn {
        self.base_gfn
    }

    /// The page index of `gfn`, if it is RAM.
    #[inline]
    pub(crate) fn index_of(&self, gfn: Gfn) -> Option<PageIndex> {
        let i = usize::try_from(gfn.0.checked_sub(self.base_gfn.0)?).ok()?;
        (i < self.table.len()).then_some(PageIndex(i))
    }

    pub(crate) fn gfn_of(&self, index: PageIndex) -> Gfn {
        Gfn(self.base_gfn.0 + index.0 as u64)
    }

    /// The host address of page `index`.
    #[inline]
    pub(crate) fn page_ptr(&self, index: PageIndex) -> *mut u8 {
        self.ram.page_ptr(index.0)
    }

    /// Page `index`'s word, unlocked (reports and checks).
    pub(crate) fn word(&self, index: usize) -> PageWord {
        self.table.peek(index)
    }

    /// Pages in each state.
    pub(crate) fn counts(&self) -> [u64; STATES] {
        self.table.counts()
    }

    /// (faults, fetches) counted.
    pub(crate) fn snapshot(&self) -> (FaultCounts, FetchCounts) {
        (self.faults.snapshot(), self.fetch.snapshot())
    }

    /// Fetches waiting for a frame.
    pub(crate) fn waiting_for_frames(&self) -> usize {
        self.io.lock().frame_waiters.len()
    }

    // --- Faults and pins -------------------------------------------------

    /// A vCPU faulted on `gfn`: maps it if it is resident (a write to a clean
    /// page marks it dirty), rescues it if it is being evicted, zero-fills it if
    /// never touched; else it needs a fetch, or is not RAM. While the dirty log
    /// is on, a write sets the page's bit before it is mapped writable, and a
    /// page whose bit is clear is mapped read-only (so its next write faults).
    pub(crate) fn fault(&self, gfn: Gfn, write: bool) -> Fault {
        let Some(PageIndex(index)) = self.index_of(gfn) else {
            bump(&self.faults.not_ram);
            return Fault::NotRam;
        };
        let f = &self.faults;
        // Read once: if the log starts after this, its shootdown drops
        // whatever this fault maps.
        let logging = self.log.is_on();
        let mut g = self.table.lock(index);
        let mut took_frame = false;
        match g.state() {
            State::Resident => {
                if write && !g.dirty() {
                    self.make_dirty(&mut g);
                    bump(&f.write_protect);
                } else if write && logging && self.log.mark(index) {
                    bump(&f.log_dirty);
                } else {
                    bump(&f.resident);
                }
            }
            State::Evicting => {
                self.rescue(&mut g, write);
            }
            State::Untouched if self.frames.try_take() => {
                g.set_state(State::Resident);
                g.set_dirty(write);
                took_frame = true;
                bump(&f.zero_fill);
            }
            _ => {
                bump(&f.needs_fetch);
                return Fault::NeedsFetch;
            }
        }
        self.table.mark_accessed(index);
        if write && logging {
            // Before the writable mapping is handed out (idempotent if the
            // arm above set it).
            self.log.mark(index);
        }
        let writable = g.dirty() && (!logging || self.log.is_marked(index));
        drop(g);
        if took_frame {
            self.frames.kick_if_low();
        }
        Fault::Map {
            host: self.ram.page_ptr(index),
            writable,
        }
    }

    /// Declares an untouched page's contents to be in the store at `slot` (a
    /// restored VM's pages, before any vCPU runs). False, and nothing changed,
    /// for a page that is not untouched.
    pub(crate) fn place_in_store(&self, PageIndex(index): PageIndex, slot: Slot) -> bool {
        let mut g = self.table.lock(index);
        if g.state() != State::Untouched {
            return false;
        }
        g.set_state(State::InStore);
        g.set_slot(Some(slot.0));
        true
    }

    /// Gives back the frame of a clean resident page that still has its store
    /// copy: it is in the store again, and its next access reads that copy.
    /// False, and nothing changed, for any other page. No TLB may map it (no
    /// vCPU runs yet): a migration's destination uses it before its first
    /// instruction, for a page the source changed after it was copied here.
    pub(crate) fn drop_clean(&self, PageIndex(index): PageIndex) -> bool {
        let mut g = self.table.lock(index);
        if g.state() != State::Resident || g.dirty() || g.slot().is_none() || g.pins() != 0 {
            return false;
        }
        // Under the page's lock: no fetch can read into the frame meanwhile.
        if self.ram.discard_runs(&[(index, 1)]).is_err() {
            return false;
        }
        g.set_state(State::InStore);
        self.table.notify_changed(index);
        drop(g);
        self.frames.release(1);
        true
    }

    /// Marks a resident page written: its store copy (if any) is stale from now on.
    fn make_dirty(&self, w: &mut PageWord) {
        self.io.free_slot(w.slot());
        w.set_slot(None);
        w.set_dirty(true);
    }

    /// Aborts the eviction of an Evicting page because it is wanted again. The
    /// reclaimer notices at [`Pager::end_eviction`] and drops whatever copy it
    /// was writing.
    fn rescue(&self, w: &mut PageWord, write: bool) {
        debug_assert_eq!(w.state(), State::Evicting);
        w.set_state(State::Resident);
        if write && !w.dirty() {
            self.make_dirty(w);
        }
        bump(&self.faults.rescued);
    }

    /// Pins page `index` for a host copy if it is (or can at once be made)
    /// resident; a write marks it dirty. False if it needs a fetch first.
    pub(crate) fn pin(&self, PageIndex(index): PageIndex, write: bool) -> bool {
        let mut g = self.table.lock(index);
        let mut took_frame = false;
        match g.state() {
            State::Resident => {}
            State::Evicting => self.rescue(&mut g, write),
            State::Untouched if self.frames.try_take() => {
                g.set_state(State::Resident);
                took_frame = true;
                bump(&self.faults.zero_fill);
            }
            _ => return false,
        }
        if !g.add_pin(true) {
            return false;
        }
        if write && !g.dirty() {
            self.make_dirty(&mut g);
        }
        self.table.mark_accessed(index);
        drop(g);
        if took_frame {
            self.frames.kick_if_low();
        }
        true
    }

    /// Marks a page pinned by [`Pager::fetch_pinned`] dirty before a host write.
    pub(crate) fn mark_pinned_dirty(&self, PageIndex(index): PageIndex) {
        let mut g = self.table.lock(index);
        debug_assert!(g.state() == State::Resident && g.pins() > 0);
        if !g.dirty() {
            self.make_dirty(&mut g);
        }
    }

    /// A pinned page's host address and whether it may be mapped writable:
    /// dirty, and while the dirty log is on, logged (as in [`Pager::fault`]).
    pub(crate) fn pinned_mapping(&self, PageIndex(index): PageIndex) -> (*mut u8, bool) {
        let logging = self.log.is_on();
        let g = self.table.lock(index);
        let writable = g.dirty() && (!logging || self.log.is_marked(index));
        drop(g);
        (self.ram.page_ptr(index), writable)
    }

    /// A host write to pinned page `index` has landed: logs it if the dirty
    /// log is on. After the bytes, not before: no shootdown waits for a host
    /// writer, so a take between a bit set first and the write would return
    /// the page before it was written and lose the write.
    pub(crate) fn log_host_write(&self, PageIndex(index): PageIndex) {
        if self.log.is_on() {
            self.log.mark(index);
        }
    }

    /// Releases a pin taken by [`Pager::pin`] or [`Pager::fetch_pinned`].
    pub(crate) fn unpin(&self, PageIndex(index): PageIndex) {
        let mut g = self.table.lock(index);
        let ok = g.add_pin(false);
        debug_assert!(ok, "unpin without pin");
        drop(g);
        // The reclaimer may have stopped for want of unpinned pages.
        self.frames.kick_if_low();
    }

    // --- Fetches ---------------------------------------------------------

    /// The buffer the read of page `index` fills.
    fn read_buf(&self, index: usize) -> IoBuf {
        let ptr = NonNull::new(self.ram.page_ptr(index)).expect("mapping is non-null");
        // SAFETY: the page is Fetching with a frame: no TLB maps it (only
        // Resident pages are mapped), no host copy pins it, and nothing touches
        // it until the read's end is settled (`settle_fetch`).
        unsafe { IoBuf::new(ptr) }
    }

    /// Starts (or joins) bringing page `index` in for `waiter`.
    pub(crate) fn start_fetch(&self, PageIndex(index): PageIndex, waiter: Waiter) -> FetchStart {
        let c = &self.fetch;
        // A blocked thread gets the page pinned, so it can map it before the
        // reclaimer (however eager) takes it away again.
        let pin_for = matches!(waiter, Waiter::Blocking(_));
        let mut g = self.table.lock(index);
        loop {
            match g.state() {
                State::Resident => {
                    if pin_for {
                        g.add_pin(true);
                    }
                    bump(&c.already_resident);
                    return FetchStart::AlreadyResident;
                }
                State::Evicting => {
                    self.rescue(&mut g, false);
                    if pin_for {
                        g.add_pin(true);
                    }
                    bump(&c.already_resident);
                    return FetchStart::AlreadyResident;
                }
                // Committed to leave: it is being discarded right now; a fetch can
                // only start once it is in the store (or untouched again).
                State::Dropping => g = g.wait_change(),
                State::Fetching => {
                    let mut st = self.io.lock();
                    if pin_for {
                        st.promote_read(index);
                        st.frame_waiters.promote(|&i| i == index);
                    }
                    st.waiters.entry(index).or_default().push(waiter);
                    bump(&c.joined);
                    return FetchStart::Joined;
                }
                State::Untouched | State::InStore => {
                    if g.state() == State::Untouched && self.frames.try_take() {
                        g.set_state(State::Resident);
                        if pin_for {
                            g.add_pin(true);
                        }
                        self.table.mark_accessed(index);
                        drop(g);
                        bump(&self.faults.zero_fill);
                        bump(&c.already_resident);
                        self.frames.kick_if_low();
                        return FetchStart::AlreadyResident;
                    }
                    g.set_state(State::Fetching);
                    bump(&c.started);
                    let framed = g.slot().is_some() && self.frames.try_take();
                    g.set_framed(framed);
                    let mut st = self.io.lock();
                    st.waiters.insert(index, vec![waiter]);
                    if framed {
                        let slot = Slot(g.slot().expect("checked above"));
                        st.queue(IoKind::Read, index, slot, self.read_buf(index), pin_for);
                    } else {
                        st.frame_waiters.push(index, pin_for);
                    }
                    drop(st);
                    drop(g);
                    if framed {
                        self.frames.kick_if_low();
                        self.io.submit_or_defer();
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
    /// caller, who must [`Pager::unpin`] it. The caller must not be an unparked vCPU.
    pub(crate) fn fetch_pinned(&self, index: PageIndex) -> Result<(), FetchError> {
        bump(&self.fetch.blocking);
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        match self.start_fetch(index, Waiter::Blocking(id)) {
            FetchStart::AlreadyResident => Ok(()),
            FetchStart::NotRam => Err(FetchError::NotRam {
                gfn: self.gfn_of(index),
            }),
            FetchStart::Started | FetchStart::Joined => {
                self.io.wait_for(self, |f| f.outcomes.remove(&id))
            }
        }
    }

    /// Ends the fetch of page `index`: installs it (or puts it back) and tells
    /// its waiters.
    fn settle_fetch(&self, index: usize, r: Result<(), FetchError>) {
        if r.is_err() {
            // The failed read may have filled part of the page: give it back.
            // Nothing maps a Fetching page, so this cannot lose data.
            let _ = self.ram.discard(index, 1);
        }
        let sinks = {
            let mut g = self.table.lock(index);
            debug_assert_eq!(g.state(), State::Fetching);
            let framed = g.framed();
            g.set_framed(false);
            if r.is_ok() {
                g.set_state(State::Resident);
                g.set_dirty(false);
                self.table.mark_accessed(index);
            } else {
                let at_rest = g.state_without_frame();
                g.set_state(at_rest);
                if framed {
                    self.frames.release(1);
                }
            }
            let mut st = self.io.lock();
            let waiters = st.waiters.remove(&index).unwrap_or_default();
            let mut sinks = Vec::new();
            for w in waiters {
                match w {
                    Waiter::Blocking(id) => {
                        if r.is_ok() {
                            g.add_pin(true);
                        }
                        st.outcomes.insert(id, r.clone());
                    }
                    Waiter::Sink(s, cookie) => sinks.push((s, cookie)),
                }
            }
            st.notify_blocked();
            sinks
        };
        bump(if r.is_ok() {
            &self.fetch.completed
        } else {
            &self.fetch.failed
        });
        for (s, cookie) in sinks {
            s.fetch_done(cookie, r.clone());
        }
    }

    /// One line on page `index` and its fetch: state, pins, frame, slot, the
    /// waiters on its fetch, whether it waits for a frame (and the frames in
    /// use now: a later count may be after the reclaimer freed some), and
    /// whether its read is queued or in the store.
    pub(crate) fn describe_page(&self, PageIndex(index): PageIndex) -> String {
        let w = self.table.peek(index);
        let st = self.io.lock();
        let waiters = st.waiters.get(&index).map_or(0, Vec::len);
        let for_frame = st.frame_waiters.contains(|&i| i == index);
        let frame_waiters = st.frame_waiters.len();
        drop(st);
        format!(
            "{:?} pins {} framed {} slot {:?} waiters {waiters} waiting_for_frame {for_frame} \
             (frames used {} of {}, fetches waiting for one {frame_waiters}) io: {}",
            w.state(),
            w.pins(),
            w.framed(),
            w.slot(),
            self.frames.used(),
            self.frames.limit(),
            self.io.describe_key(index),
        )
    }

    /// Gives free frames to fetches waiting for one, oldest first.
    pub(crate) fn grant_frames(&self) {
        loop {
            let index = {
                let mut st = self.io.lock();
                if st.frame_waiters.is_empty() {
                    break;
                }
                if !self.frames.try_take() {
                    drop(st);
                    self.frames.kick();
                    break;
                }
                st.frame_waiters.pop_front().expect("checked non-empty")
            };
            self.start_framed_fetch(index);
        }
        self.io.submit_pending();
    }

    /// A fetch has just been given its frame: zero-fills a never-touched page
    /// at once, or queues the read.
    fn start_framed_fetch(&self, index: usize) {
        let mut g = self.table.lock(index);
        debug_assert!(g.state() == State::Fetching && !g.framed());
        g.set_framed(true);
        match g.slot() {
            None => {
                // Never touched: the frame is zero already, no I/O.
                drop(g);
                bump(&self.faults.zero_fill);
                self.settle_fetch(index, Ok(()));
            }
            Some(slot) => {
                let mut st = self.io.lock();
                let express = st.waiters.get(&index).is_some_and(|waiters| {
                    waiters.iter().any(|w| matches!(w, Waiter::Blocking(_)))
                });
                st.queue(
                    IoKind::Read,
                    index,
                    Slot(slot),
                    self.read_buf(index),
                    express,
                );
            }
        }
    }

    // --- Collecting completions ------------------------------------------

    /// A vCPU runs (it collects completions between slices).
    pub(crate) fn vcpu_running(&self) {
        self.io.collector_running();
    }

    /// A vCPU parked: if none runs now, the reaper collects.
    pub(crate) fn vcpu_parked(&self) {
        self.io.collector_parked();
    }

    /// Collects completions if nobody else is; never blocks on I/O.
    pub(crate) fn poll_completions(&self) {
        self.io.poll(self);
    }

    /// The background reaper (see `io.rs`), until `stop`.
    pub(crate) fn reaper_loop(&self, stop: &AtomicBool) {
        self.io.reaper_loop(self, stop);
    }

    /// Waits until no I/O is in flight or queued and every completion has been
    /// acted on (see `IoEngine::wait_idle`).
    pub(crate) fn wait_io_idle(&self) {
        self.io.wait_idle(self);
    }

    /// Waits until completions were dispatched once more than `seen`.
    pub(crate) fn wait_dispatch_after(&self, seen: u64) {
        self.io.wait_dispatch_after(self, seen);
    }

    /// Wakes the background threads (shutdown).
    pub(crate) fn wake_background(&self) {
        self.io.wake_all();
        self.frames.wake();
    }

    // --- Eviction, step by step for the reclaimer ------------------------

    /// The clock hand is at page `index`: clears its accessed bit, and marks it
    /// Evicting if it is resident, unpinned and was not used since the hand last
    /// passed. A dirty one needs a slot to be written to: taken from the store
    /// if `may_alloc` (else the page is skipped).
    pub(crate) fn start_evicting(&self, index: usize, may_alloc: bool) -> Pick {
        let w = self.table.peek(index);
        if w.state() != State::Resident || w.pins() != 0 {
            return Pick::Skip;
        }
        if self.table.test_and_clear_accessed(index) {
            return Pick::Used;
        }
        let mut g = self.table.lock(index);
        if g.state() != State::Resident || g.pins() != 0 {
            return Pick::Skip;
        }
        let dirty = g.dirty();
        let new_slot = if dirty {
            if !may_alloc {
                return Pick::Skip;
            }
            match self.io.alloc_slot() {
                Ok(s) => Some(s),
                Err(full) => return Pick::NoSlot(full),
            }
        } else {
            None
        };
        g.set_state(State::Evicting);
        Pick::Chosen { dirty, new_slot }
    }

    /// Writes Evicting pages `(index, slot)` to the store and waits for the
    /// outcomes, in order. Call only after the shootdown that followed marking
    /// them Evicting.
    pub(crate) fn write_evicting(&self, writes: &[(usize, Slot)]) -> Vec<WriteOutcome> {
        let reqs: Vec<(usize, Slot, IoBuf)> = writes
            .iter()
            .map(|&(index, slot)| {
                let ptr = NonNull::new(self.ram.page_ptr(index)).expect("mapping is non-null");
                // SAFETY: the page is Evicting after its shootdown: no TLB maps it
                // and no host copy pins it, so until the write ends nothing else
                // touches it, except that a fault may rescue it and write it
                // while the write runs (that write's copy is then discarded, at
                // `end_eviction`).
                (index, slot, unsafe { IoBuf::new(ptr) })
            })
            .collect();
        let tags = self.io.queue_writes(&reqs);
        self.io.wait_writes(self, &tags)
    }

    /// Decides where the eviction of page `index` ends: Dropping if it is still
    /// Evicting and clean or `written` (to the slot given, which it now holds),
    /// Resident and dirty again if its write failed. A page rescued meanwhile is
    /// left alone.
    pub(crate) fn end_eviction(&self, index: usize, dirty: bool, written: Option<Slot>) -> Evicted {
        let mut g = self.table.lock(index);
        if g.state() != State::Evicting {
            return Evicted::Rescued;
        }
        let how = match (dirty, written) {
            (false, _) if g.slot().is_some() => Evicted::Clean,
            (false, _) => Evicted::Zero,
            (true, Some(slot)) => {
                g.set_slot(Some(slot.0));
                g.set_dirty(false);
                Evicted::Written
            }
            (true, None) => {
                g.set_state(State::Resident);
                return Evicted::Kept;
            }
        };
        g.set_state(State::Dropping);
        how
    }

    /// Gives the Dropping pages `dropping` back to the host, moves them to
    /// InStore (or Untouched) and releases their frames.
    pub(crate) fn finish_dropping(&self, dropping: &mut [usize]) {
        dropping.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &index in dropping.iter() {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == index => *count += 1,
                _ => runs.push((index, 1)),
            }
        }
        if self.ram.discard_runs(&runs).is_err() {
            // Cannot happen for our own mapping; if it did, pages going back to
            // untouched must still read as zero (a fetch overwrites the others).
            for &index in dropping.iter() {
                if self.table.peek(index).slot().is_none() {
                    // SAFETY: a Dropping page is mapped by no TLB and pinned by no
                    // host copy; the mapping holds the whole page.
                    unsafe {
                        crate::ram::copy_to_shared(
                            &[0u8; crate::ram::PAGE],
                            self.ram.page_ptr(index),
                        )
                    };
                }
            }
        }
        for &index in dropping.iter() {
            let mut g = self.table.lock(index);
            let at_rest = g.state_without_frame();
            g.set_state(at_rest);
            self.table.notify_changed(index);
        }
        self.frames.release(dropping.len() as u64);
    }
}

impl OnReads for Pager {
    fn reads_done(&self, reads: Vec<(usize, IoEnd)>) {
        let mut any_failed = false;
        let after = self.io.timeout();
        for (index, end) in reads {
            let gfn = self.gfn_of(PageIndex(index));
            let r = match end {
                IoEnd::Done => Ok(()),
                IoEnd::Failed(source) => Err(FetchError::Io { gfn, source }),
                IoEnd::TimedOut => Err(FetchError::Timeout { gfn, after }),
            };
            any_failed |= r.is_err();
            self.settle_fetch(index, r);
        }
        if any_failed {
            self.grant_frames();
        }
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
pub(crate) mod tests {
    //! One thread drives the pager through its transitions (the memory store
    //! completes I/O at submission, collected on the next poll or wait).

    use super::*;
    use crate::ram::PAGE;
    use crate::store::MemStore;

    pub(crate) const BASE: Gfn = Gfn(0x100);

    /// A pager over `pages` pages with room for `budget` resident, batches of
    /// one, and a memory store of `slots` slots.
    pub(crate) fn pager(pages: usize, budget: u64, slots: u32) -> Pager {
        let io = IoEngine::new(
            Box::new(MemStore::new(slots, 4)),
            Duration::from_secs(30),
            None,
            Pager::fetch_table(),
        );
        let ram = GuestRam::new(pages * PAGE).unwrap();
        Pager::new(BASE, ram, Frames::new(budget, 1), io)
    }

    /// Records what it is told.
    #[derive(Default)]
    pub(crate) struct Sink(pub(crate) std::sync::Mutex<Vec<(u64, Result<(), FetchError>)>>);

    impl FetchSink for Sink {
        fn fetch_done(&self, cookie: u64, result: Result<(), FetchError>) {
            self.0.lock().unwrap().push((cookie, result));
        }
    }

    fn state(p: &Pager, index: usize) -> State {
        p.word(index).state()
    }

    /// Marks page `index` Evicting (the first look only clears the accessed bit).
    fn choose(p: &Pager, index: usize) -> Pick {
        match p.start_evicting(index, true) {
            Pick::Used => p.start_evicting(index, true),
            pick => pick,
        }
    }

    #[test]
    fn a_first_touch_zero_fills_until_the_budget_is_spent() {
        let p = pager(4, 2, 8);
        assert!(matches!(
            p.fault(BASE, false),
            Fault::Map {
                writable: false,
                ..
            }
        ));
        assert!(matches!(
            p.fault(Gfn(BASE.0 + 1), true),
            Fault::Map { writable: true, .. }
        ));
        assert_eq!(
            p.fault(Gfn(BASE.0 + 2), false),
            Fault::NeedsFetch,
            "no frame left"
        );
        assert_eq!(p.fault(Gfn(BASE.0 + 4), false), Fault::NotRam);
        assert_eq!(p.fault(Gfn(BASE.0 - 1), false), Fault::NotRam);
        assert_eq!(p.counts()[State::Resident as usize], 2);
        assert_eq!(p.frames().used(), 2);
        let (f, _) = p.snapshot();
        assert_eq!((f.zero_fill, f.needs_fetch, f.not_ram), (2, 1, 2));
    }

    #[test]
    fn an_evicted_dirty_page_comes_back_with_its_data_and_loses_its_copy_when_written() {
        let p = pager(2, 2, 8);
        let Fault::Map { host, .. } = p.fault(BASE, true) else {
            panic!("first touch maps")
        };
        // SAFETY: page 0 is resident and dirty; nothing else runs.
        unsafe { crate::ram::copy_to_shared(b"kept", host) };

        let Pick::Chosen {
            dirty: true,
            new_slot: Some(slot),
        } = choose(&p, 0)
        else {
            panic!("a dirty page is chosen with a slot")
        };
        assert_eq!(state(&p, 0), State::Evicting);
        assert_eq!(p.write_evicting(&[(0, slot)]), [WriteOutcome::Written]);
        assert_eq!(p.end_eviction(0, true, Some(slot)), Evicted::Written);
        assert_eq!(state(&p, 0), State::Dropping);
        p.finish_dropping(&mut [0]);
        assert_eq!(state(&p, 0), State::InStore);
        assert_eq!(p.word(0).slot(), Some(slot.0));
        assert_eq!(p.frames().used(), 0);
        assert_eq!(p.fault(BASE, false), Fault::NeedsFetch);

        let sink = Arc::new(Sink::default());
        assert_eq!(
            p.start_fetch(PageIndex(0), Waiter::Sink(sink.clone(), 7)),
            FetchStart::Started
        );
        assert_eq!(
            p.start_fetch(PageIndex(0), Waiter::Sink(sink.clone(), 8)),
            FetchStart::Joined
        );
        p.poll_completions();
        assert_eq!(*sink.0.lock().unwrap(), [(7, Ok(())), (8, Ok(()))]);
        let w = p.word(0);
        assert_eq!(
            (w.state(), w.dirty(), w.slot()),
            (State::Resident, false, Some(slot.0))
        );
        let mut back = [0u8; 4];
        // SAFETY: page 0 is resident; nothing else runs.
        unsafe { crate::ram::copy_from_shared(p.page_ptr(PageIndex(0)), &mut back) };
        assert_eq!(&back, b"kept");

        // Mapped read-only while clean; the first write makes the copy stale.
        assert!(matches!(
            p.fault(BASE, false),
            Fault::Map {
                writable: false,
                ..
            }
        ));
        assert!(matches!(
            p.fault(BASE, true),
            Fault::Map { writable: true, .. }
        ));
        assert_eq!(
            p.word(0).slot(),
            None,
            "a written page's store copy is freed"
        );
        let (f, fetch) = p.snapshot();
        assert_eq!(
            (
                f.write_protect,
                fetch.started,
                fetch.joined,
                fetch.completed
            ),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn only_a_clean_resident_page_with_a_copy_is_dropped_and_it_reads_its_copy_again() {
        let p = pager(2, 2, 8);
        assert!(p.place_in_store(PageIndex(0), Slot(3)));
        let sink = Arc::new(Sink::default());
        assert_eq!(
            p.start_fetch(PageIndex(0), Waiter::Sink(sink.clone(), 1)),
            FetchStart::Started
        );
        p.poll_completions();
        assert_eq!(state(&p, 0), State::Resident);
        assert_eq!(p.frames().used(), 1);
        // A dirty page (page 1, zero-filled by a write) has no copy to go back to.
        assert!(matches!(p.fault(Gfn(BASE.0 + 1), true), Fault::Map { .. }));
        assert!(!p.drop_clean(PageIndex(1)), "a dirty page stays");
        assert_eq!(state(&p, 1), State::Resident);
        // The clean one goes back to its slot and gives back its frame.
        assert!(p.drop_clean(PageIndex(0)));
        let w = p.word(0);
        assert_eq!((w.state(), w.slot()), (State::InStore, Some(3)));
        assert_eq!(p.frames().used(), 1, "only page 1's frame is in use");
        assert!(!p.drop_clean(PageIndex(0)), "not resident any more");
        assert_eq!(p.fault(BASE, false), Fault::NeedsFetch, "it is read again");
    }

    #[test]
    fn a_fault_on_an_evicting_page_rescues_it() {
        let p = pager(2, 2, 8);
        assert!(matches!(p.fault(BASE, false), Fault::Map { .. }));
        assert!(matches!(
            choose(&p, 0),
            Pick::Chosen {
                dirty: false,
                new_slot: None
            }
        ));
        assert!(matches!(
            p.fault(BASE, true),
            Fault::Map { writable: true, .. }
        ));
        assert_eq!(p.end_eviction(0, false, None), Evicted::Rescued);
        let w = p.word(0);
        assert_eq!((w.state(), w.dirty()), (State::Resident, true));
        assert_eq!(p.snapshot().0.rescued, 1);
        assert_eq!(p.frames().used(), 1, "a rescued page keeps its frame");
    }

    #[test]
    fn a_pinned_page_is_never_chosen_and_a_failed_write_keeps_the_page() {
        let p = pager(2, 2, 8);
        assert!(
            p.pin(PageIndex(0), true),
            "an untouched page is pinned at once"
        );
        assert!(matches!(choose(&p, 0), Pick::Skip));
        p.unpin(PageIndex(0));
        let Pick::Chosen {
            dirty: true,
            new_slot,
        } = choose(&p, 0)
        else {
            panic!("unpinned, it is chosen")
        };
        // The write failed (no slot recorded): the page stays, still dirty.
        assert_eq!(p.end_eviction(0, true, None), Evicted::Kept);
        let w = p.word(0);
        assert_eq!(
            (w.state(), w.dirty(), w.slot()),
            (State::Resident, true, None)
        );
        p.io().free_slot(new_slot.map(|s| s.0));
    }

    #[test]
    fn a_dirty_page_with_no_slot_to_go_to_is_not_chosen() {
        let p = pager(2, 2, 0);
        assert!(matches!(p.fault(BASE, true), Fault::Map { .. }));
        assert!(matches!(choose(&p, 0), Pick::NoSlot(_)));
        assert!(matches!(p.start_evicting(0, false), Pick::Skip));
        assert_eq!(state(&p, 0), State::Resident);
    }

    #[test]
    fn a_fetch_with_no_frame_waits_for_one_and_a_blocked_thread_goes_first() {
        let p = pager(3, 1, 8);
        assert!(matches!(p.fault(BASE, false), Fault::Map { .. }));
        let sink = Arc::new(Sink::default());
        assert_eq!(
            p.start_fetch(PageIndex(1), Waiter::Sink(sink.clone(), 1)),
            FetchStart::Started
        );
        assert_eq!(
            p.start_fetch(PageIndex(2), Waiter::Sink(sink.clone(), 2)),
            FetchStart::Started
        );
        assert_eq!(p.waiting_for_frames(), 2);
        assert_eq!(state(&p, 1), State::Fetching);
        // A blocked thread joins page 2's fetch: it moves ahead of page 1.
        p.io().lock().frame_waiters.promote(|&i| i == 2);
        // Page 0 leaves (never written: no I/O) and its frame goes to page 2.
        assert!(matches!(choose(&p, 0), Pick::Chosen { dirty: false, .. }));
        assert_eq!(p.end_eviction(0, false, None), Evicted::Zero);
        p.finish_dropping(&mut [0]);
        assert_eq!(state(&p, 0), State::Untouched);
        p.grant_frames();
        assert_eq!(*sink.0.lock().unwrap(), [(2, Ok(()))]);
        assert_eq!(
            (state(&p, 1), state(&p, 2)),
            (State::Fetching, State::Resident)
        );
        assert_eq!(p.waiting_for_frames(), 1);
    }
}
