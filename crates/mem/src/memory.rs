//! [`GuestMemory`]: guest RAM with its page state, the host budget, the fetch
//! pipeline and the reclaimer, shared by every vCPU. This module only composes
//! the parts: the pager (`pager.rs`, over the I/O engine and the frames), the
//! shootdown and the reclaimer, and runs the two background threads.

use std::sync::Arc;
use std::time::Duration;

use apf_abi::{Gfn, Gpa, PAGE_SIZE};

use crate::dirty_log::DirtyPages;
use crate::frames::Frames;
use crate::io::IoEngine;
use crate::metrics::{MemMetrics, PageCounts};
use crate::page::State;
use crate::pager::{FetchError, FetchSink, FetchStart, PageIndex, Pager, Waiter};
use crate::ram::{GuestRam, PAGE};
use crate::reclaim::Reclaimer;
use crate::shootdown::Shootdown;
use crate::store::{Slot, Store};
use crate::sync::{AtomicBool, Condvar, Mutex, Ordering, lock, model_yield, thread, wait};

/// How guest memory is laid out and limited.
#[derive(Debug, Clone, PartialEq)]
pub struct MemConfig {
    /// Guest physical address of the first byte of RAM (page-aligned).
    pub ram_base: u64,
    /// Bytes of guest RAM (a whole number of pages).
    pub ram_size: u64,
    /// Host memory the resident pages may use; at least one page. Capped at RAM size.
    pub budget_bytes: u64,
    /// Pages per eviction batch (one shootdown each); 0 picks from the budget.
    pub batch_pages: usize,
    /// An I/O not completed after this long fails (a store that lost its
    /// completion); keep it far above any real device latency.
    pub io_timeout: Duration,
    /// If no vCPU has collected completions for this long, the background reaper
    /// does; `None` leaves it to parked-vCPU periods only (the model checker).
    pub reaper_grace: Option<Duration>,
}

impl MemConfig {
    /// RAM of `ram_size` bytes at `ram_base` with `budget_bytes` of host memory.
    pub fn new(ram_base: u64, ram_size: u64, budget_bytes: u64) -> MemConfig {
        MemConfig {
            ram_base,
            ram_size,
            budget_bytes,
            batch_pages: 0,
            io_timeout: Duration::from_secs(30),
            reaper_grace: Some(Duration::from_millis(1)),
        }
    }
}

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The RAM size is zero or not whole pages.
    #[error("ram_size = {0:#x}: guest RAM must be a non-zero multiple of 4096 bytes")]
    RamSize(u64),
    /// The base is not page-aligned or RAM would wrap the address space.
    #[error(
        "ram_base = {base:#x} with ram_size = {size:#x}: the base must be page-aligned and the range must fit in 64 bits"
    )]
    RamBase {
        /// The base.
        base: u64,
        /// The size.
        size: u64,
    },
    /// The budget cannot hold one page.
    #[error("budget_bytes = {0}: the host budget must hold at least one page (4096 bytes)")]
    Budget(u64),
    /// The host refused the mapping.
    #[error("cannot map {size:#x} bytes of guest RAM: {source}")]
    Map {
        /// Bytes asked for.
        size: u64,
        /// Why.
        source: std::io::Error,
    },
    /// A background thread could not start.
    #[error("cannot start the {0} thread: {1}")]
    Spawn(&'static str, std::io::Error),
}

/// Why a host-side access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostAccessError {
    /// Part of the range is not guest RAM.
    #[error("guest range {gpa:#x}+{len:#x} is not RAM")]
    NotRam {
        /// Start.
        gpa: Gpa,
        /// Length.
        len: u64,
    },
    /// A page of the range could not be brought in.
    #[error("guest range {gpa:#x}+{len:#x}: {source}")]
    Fetch {
        /// Start.
        gpa: Gpa,
        /// Length.
        len: u64,
        /// Why.
        source: FetchError,
    },
}

/// Why [`GuestMemory::place_in_store`] refused a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// The gfn is not guest RAM.
    #[error("gfn {0:#x} is not guest RAM")]
    NotRam(Gfn),
    /// The page already holds something.
    #[error("gfn {0:#x} is not untouched: its contents would be lost")]
    Touched(Gfn),
}

/// Why [`GuestMemory::for_each_touched_page`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError<E> {
    /// A page could not be read (from the store).
    #[error("{0}")]
    Read(HostAccessError),
    /// The visitor failed.
    #[error("{0}")]
    Visit(E),
}

/// A broken invariant found by [`GuestMemory::check_invariants`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// A kept count disagrees with a scan of the pages.
    #[error("{what}: counted {counted}, a scan finds {scanned}")]
    Count {
        /// Which figure.
        what: &'static str,
        /// The running count.
        counted: u64,
        /// The scan's.
        scanned: u64,
    },
    /// A page's word is inconsistent.
    #[error("page {gfn:#x}: {what}")]
    Page {
        /// The page.
        gfn: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// Two pages claim one slot.
    #[error("slot {slot} is held by pages {a:#x} and {b:#x}")]
    SharedSlot {
        /// The slot.
        slot: u32,
        /// One page.
        a: u64,
        /// The other.
        b: u64,
    },
    /// Frames in use exceed the budget by more than the counted overruns.
    #[error("{used} frames in use exceed the budget of {budget} and the counted overruns")]
    OverBudget {
        /// Frames used.
        used: u64,
        /// Budget.
        budget: u64,
    },
    /// Metrics that must add up do not.
    #[error("{0}")]
    Metrics(String),
}

/// Everything the vCPUs, the reclaimer and the reaper share.
#[derive(Debug)]
struct Inner {
    pager: Pager,
    shoot: Shootdown,
    reclaim: Reclaimer,
    stop: AtomicBool,
}

/// Guest RAM and everything that decides where its pages are. Share it as
/// `Arc<GuestMemory>`; each vCPU thread takes a [`VcpuTlb`](crate::VcpuTlb) from it.
#[derive(Debug)]
pub struct GuestMemory {
    inner: Arc<Inner>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl GuestMemory {
    /// Maps guest RAM (nothing resident yet) and starts the reclaimer and the
    /// background reaper.
    pub fn new(cfg: MemConfig, store: Box<dyn Store>) -> Result<Arc<GuestMemory>, MemError> {
        if cfg.ram_size == 0 || !cfg.ram_size.is_multiple_of(PAGE_SIZE) {
            return Err(MemError::RamSize(cfg.ram_size));
        }
        if !cfg.ram_base.is_multiple_of(PAGE_SIZE)
            || cfg.ram_base.checked_add(cfg.ram_size).is_none()
        {
            return Err(MemError::RamBase {
                base: cfg.ram_base,
                size: cfg.ram_size,
            });
        }
        if cfg.budget_bytes < PAGE_SIZE {
            return Err(MemError::Budget(cfg.budget_bytes));
        }
        let len = usize::try_from(cfg.ram_size).map_err(|_| MemError::Map {
            size: cfg.ram_size,
            source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        })?;
        let ram = GuestRam::new(len).map_err(|source| MemError::Map {
            size: cfg.ram_size,
            source,
        })?;
        let pages = ram.pages();
        let budget = (cfg.budget_bytes / PAGE_SIZE).min(pages as u64);
        let batch = if cfg.batch_pages == 0 {
            (budget / 8).clamp(1, 256)
        } else {
            cfg.batch_pages as u64
        };
        let io = IoEngine::new(
            store,
            cfg.io_timeout,
            cfg.reaper_grace,
            Pager::fetch_table(),
        );
        let frames = Frames::new(budget, batch);
        let inner = Arc::new(Inner {
            pager: Pager::new(Gpa(cfg.ram_base).gfn(), ram, frames, io),
            shoot: Shootdown::new(),
            reclaim: Reclaimer::new(),
            stop: AtomicBool::new(false),
        });
        let mem = Arc::new(GuestMemory {
            inner,
            threads: Mutex::new(Vec::new()),
        });
        let r = Arc::clone(&mem.inner);
        let reclaimer = thread::Builder::new()
            .name("apf-reclaim".into())
            .spawn(move || r.reclaim.run(&r.pager, &r.shoot, &r.stop))
            .map_err(|e| MemError::Spawn("reclaimer", e))?;
        lock(&mem.threads).push(reclaimer);
        let r = Arc::clone(&mem.inner);
        let reaper = thread::Builder::new()
            .name("apf-reaper".into())
            .spawn(move || r.pager.reaper_loop(&r.stop))
            .map_err(|e| MemError::Spawn("reaper", e))?;
        lock(&mem.threads).push(reaper);
        Ok(mem)
    }

    /// The pager (for the TLBs).
    pub(crate) fn pager(&self) -> &Pager {
        &self.inner.pager
    }

    /// The shootdown (for the TLBs).
    pub(crate) fn shootdown(&self) -> &Shootdown {
        &self.inner.shoot
    }

    /// The guest physical address of the first byte of RAM.
    pub fn ram_base(&self) -> Gpa {
        self.inner.pager.base_gfn().gpa()
    }

    /// Pages of host memory guest pages may use (the budget).
    pub fn budget_pages(&self) -> u64 {
        self.inner.pager.frames().budget()
    }

    /// Pages of the budget not in use now.
    pub fn free_pages(&self) -> u64 {
        let frames = self.inner.pager.frames();
        frames.budget().saturating_sub(frames.used())
    }

    /// Pages of guest RAM.
    pub fn ram_pages(&self) -> u64 {
        self.inner.pager.pages() as u64
    }

    /// Whether `gpa..gpa+len` is all guest RAM.
    pub fn contains(&self, gpa: Gpa, len: u64) -> bool {
        let base = self.inner.pager.base_gfn().gpa();
        let size = self.inner.pager.pages() as u64 * PAGE_SIZE;
        gpa >= base
            && gpa
                .checked_add(len)
                .is_some_and(|end| end.0 <= base.0 + size)
    }

    /// The store's description.
    pub fn store_info(&self) -> crate::store::StoreInfo {
        self.inner.pager.io().store_info()
    }

    /// Host-side read (boot block, the APF shared block): brings pages in
    /// synchronously if needed; each page is pinned against eviction while copied.
    /// On a vCPU thread use [`VcpuTlb::read_bytes`](crate::VcpuTlb::read_bytes),
    /// which parks the vCPU while it may wait (an unparked vCPU waiting for a
    /// frame would hold up the shootdown that frees one).
    pub fn read_bytes(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), HostAccessError> {
        let len = buf.len() as u64;
        self.host_access(gpa, len, false, |off, ptr, n| {
            // SAFETY: `ptr` is `n` bytes of a pinned resident page.
            unsafe { crate::ram::copy_from_shared(ptr, &mut buf[off..off + n]) }
        })
    }

    /// Host-side write; marks the pages dirty.
    pub fn write_bytes(&self, gpa: Gpa, buf: &[u8]) -> Result<(), HostAccessError> {
        let len = buf.len() as u64;
        self.host_access(gpa, len, true, |off, ptr, n| {
            // SAFETY: `ptr` is `n` bytes of a pinned resident page.
            unsafe { crate::ram::copy_to_shared(&buf[off..off + n], ptr) }
        })
    }

    fn host_access(
        &self,
        gpa: Gpa,
        len: u64,
        write: bool,
        mut copy: impl FnMut(usize, *mut u8, usize),
    ) -> Result<(), HostAccessError> {
        if !self.contains(gpa, len) {
            return Err(HostAccessError::NotRam { gpa, len });
        }
        let pager = &self.inner.pager;
        let mut done = 0usize;
        let total = usize::try_from(len).map_err(|_| HostAccessError::NotRam { gpa, len })?;
        while done < total {
            // In range: `contains` checked the whole of it.
            let at = Gpa(gpa.0 + done as u64);
            let index = pager
                .index_of(at.gfn())
                .ok_or(HostAccessError::NotRam { gpa, len })?;
            let in_page = (at.0 % PAGE_SIZE) as usize;
            let n = (PAGE - in_page).min(total - done);
            if !pager.pin(index, write) {
                pager
                    .fetch_pinned(index)
                    .map_err(|source| HostAccessError::Fetch { gpa, len, source })?;
                if write {
                    pager.mark_pinned_dirty(index);
                }
            }
            // A copy is not atomic: let the model checker run others first.
            model_yield();
            copy(done, pager.page_ptr(index).wrapping_add(in_page), n);
            if write {
                pager.log_host_write(index);
            }
            pager.unpin(index);
            done += n;
        }
        Ok(())
    }

    /// Declares that page `gfn`, untouched so far, is held by the store at
    /// `slot`: its first access will read it, like a page evicted there. This is
    /// how a restored VM starts with its memory still in the snapshot's image.
    /// Call it before any vCPU runs.
    pub fn place_in_store(&self, gfn: Gfn, slot: Slot) -> Result<(), PlaceError> {
        let pager = &self.inner.pager;
        let index = pager.index_of(gfn).ok_or(PlaceError::NotRam(gfn))?;
        if pager.place_in_store(index, slot) {
            Ok(())
        } else {
            Err(PlaceError::Touched(gfn))
        }
    }

    /// Drops page `gfn` from memory if it is resident, clean and still has its
    /// store copy, so that its next access reads that copy. Returns whether it
    /// did. Call it only before any vCPU runs (no TLB may map the page): a
    /// migration's destination drops a page the source changed after it was
    /// copied here.
    pub fn drop_clean_page(&self, gfn: Gfn) -> bool {
        let pager = &self.inner.pager;
        pager.index_of(gfn).is_some_and(|i| pager.drop_clean(i))
    }

    /// Every page of RAM that is not untouched (one never touched reads as
    /// zeros), in order: what a migration must move. With vCPUs running it is
    /// a moment's view; a page first written later is in the dirty log.
    pub fn touched_pages(&self) -> Vec<Gfn> {
        let pager = &self.inner.pager;
        (0..pager.pages())
            .filter(|&i| pager.word(i).state() != State::Untouched)
            .map(|i| pager.gfn_of(PageIndex(i)))
            .collect()
    }

    /// Calls `visit` with every page of RAM that is not untouched (one never
    /// touched reads as zeros), by gfn, with its contents: a copy taken with the
    /// page pinned. Pages in memory come first, in order; then those in the
    /// store, in order, read a batch at a time through the fetch pipeline (so at
    /// the store's queue depth, not one by one). Pages read back stay clean and
    /// keep their store copy, so reclaim drops them again without writing.
    /// Call it with the vCPUs stopped.
    pub fn for_each_touched_page<E>(
        &self,
        mut visit: impl FnMut(Gfn, &[u8]) -> Result<(), E>,
    ) -> Result<(), ExportError<E>> {
        let pager = &self.inner.pager;
        let mut page = vec![0u8; PAGE];
        let mut copy = |gfn: Gfn| -> Result<(), ExportError<E>> {
            self.read_bytes(gfn.gpa(), &mut page)
                .map_err(ExportError::Read)?;
            visit(gfn, &page).map_err(ExportError::Visit)
        };
        let mut stored = Vec::new();
        for i in 0..pager.pages() {
            match pager.word(i).state() {
                State::Untouched => {}
                State::InStore | State::Fetching => stored.push(pager.gfn_of(PageIndex(i))),
                _ => copy(pager.gfn_of(PageIndex(i)))?,
            }
        }
        // Half the budget at a time, so a batch's pages are still in memory
        // when it is copied (a page reclaimed meanwhile is just read again).
        let batch = usize::try_from(pager.frames().budget() / 2)
            .unwrap_or(1)
            .clamp(1, 1024);
        let sink = Arc::new(Countdown::default());
        for chunk in stored.chunks(batch) {
            for &gfn in chunk {
                sink.add();
                if !matches!(
                    self.start_fetch(gfn, Arc::clone(&sink) as Arc<dyn FetchSink>, 0),
                    FetchStart::Started | FetchStart::Joined
                ) {
                    sink.fetch_done(0, Ok(()));
                }
            }
            sink.wait_zero();
            for &gfn in chunk {
                copy(gfn)?;
            }
        }
        Ok(())
    }

    /// Starts bringing page `gfn` in without waiting (the APF path): one I/O per
    /// page however many ask. `sink` is told with `cookie` when the page is
    /// installed or the read failed, if this returns [`FetchStart::Started`] or
    /// [`FetchStart::Joined`].
    pub fn start_fetch(&self, gfn: Gfn, sink: Arc<dyn FetchSink>, cookie: u64) -> FetchStart {
        let pager = &self.inner.pager;
        let Some(index) = pager.index_of(gfn) else {
            return FetchStart::NotRam;
        };
        pager.start_fetch(index, Waiter::Sink(sink, cookie))
    }

    /// One line on page `gfn` and its fetch (state, pins, waiters, I/O), for
    /// a report of what a hung run waited for.
    pub fn describe_page(&self, gfn: Gfn) -> String {
        let pager = &self.inner.pager;
        match pager.index_of(gfn) {
            Some(index) => pager.describe_page(index),
            None => "not RAM".into(),
        }
    }

    /// Starts logging writes to guest RAM (for pre-copy migration): from now on
    /// every write, by a vCPU or the host, puts its page in the log that
    /// [`GuestMemory::take_dirty_log`] takes. Starting empties the log and
    /// returns once no vCPU holds a writable mapping made before, so no write
    /// after this returns escapes the log. Call it from a thread that is not an
    /// unparked vCPU of this memory (it waits for every running vCPU's
    /// [`VcpuTlb::sync`](crate::VcpuTlb::sync)).
    pub fn start_dirty_log(&self) {
        self.inner.pager.log().start(&self.inner.shoot);
    }

    /// The pages written since the previous take (or the start), removed from
    /// the log. Returns once no vCPU holds a writable mapping made before the
    /// log was cleared: a write the set misses (made after it was cleared) is
    /// in the next take, and a write to a page in the set that raced with the
    /// take has landed, so copying the set after this returns copies it.
    /// After [`GuestMemory::stop_dirty_log`] it still returns what was logged
    /// before. Call it as [`GuestMemory::start_dirty_log`].
    pub fn take_dirty_log(&self) -> DirtyPages {
        let pager = &self.inner.pager;
        pager.log().take(&self.inner.shoot, pager.base_gfn())
    }

    /// Stops logging writes (mappings no longer wait for the log).
    pub fn stop_dirty_log(&self) {
        self.inner.pager.log().stop();
    }

    /// Whether writes are being logged.
    pub fn dirty_log_on(&self) -> bool {
        self.inner.pager.log().is_on()
    }

    /// Pages of the RAM mapping the host kernel holds in memory (by `mincore`),
    /// the figure the budget is about.
    pub fn host_resident_pages(&self) -> std::io::Result<u64> {
        self.inner.pager.ram().host_resident_pages()
    }

    /// A snapshot of the figures. Exact (adds up) when no other thread is busy.
    pub fn metrics(&self) -> MemMetrics {
        let Inner { pager, reclaim, .. } = &*self.inner;
        let frames = pager.frames();
        let c = pager.counts();
        let (faults, fetch) = pager.snapshot();
        let (io, read_latency, write_latency) = pager.io().snapshot();
        let evict = reclaim.snapshot();
        let (in_flight, backlog) = pager.io().depths();
        MemMetrics {
            ram_pages: pager.pages() as u64,
            budget_pages: frames.budget(),
            frames_used: frames.used(),
            frames_peak: frames.peak(),
            frames_over_budget: frames.taken_over_budget(),
            over_budget_reason: reclaim.over_budget_reason(),
            pages: PageCounts {
                untouched: c[State::Untouched as usize],
                resident: c[State::Resident as usize],
                evicting: c[State::Evicting as usize],
                dropping: c[State::Dropping as usize],
                in_store: c[State::InStore as usize],
                fetching: c[State::Fetching as usize],
            },
            faults,
            fetch,
            io,
            in_flight,
            backlog,
            evict,
            read_latency,
            write_latency,
        }
    }

    /// Checks that page words, counts, slots and metrics agree. Call it once
    /// nothing starts fetches any more (every vCPU and background loader
    /// stopped): it waits for the I/O still in flight to end first, since a read
    /// that completed during the scan would move a page it had already counted.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let Inner { pager, reclaim, .. } = &*self.inner;
        // The reclaimer works on its own: see it between batches.
        let _batch = reclaim.between_batches();
        pager.wait_io_idle();
        let pages = pager.pages();
        let mut scanned = [0u64; crate::page::STATES];
        let mut framed = 0u64;
        let mut slots: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        for i in 0..pages {
            let w = pager.word(i);
            let gfn = pager.gfn_of(PageIndex(i)).0;
            scanned[w.state() as usize] += 1;
            let bad = |what| Err(InvariantError::Page { gfn, what });
            match w.state() {
                State::Untouched if w.slot().is_some() || w.dirty() => {
                    return bad("untouched with a slot or dirty");
                }
                State::InStore if w.slot().is_none() => return bad("in store without a slot"),
                State::Resident if w.dirty() && w.slot().is_some() => {
                    return bad("dirty but still holds a slot");
                }
                State::Fetching if w.framed() => framed += 1,
                State::Resident | State::Evicting | State::Dropping => framed += 1,
                _ => {}
            }
            if w.pins() != 0 {
                return bad("pinned with no host access running");
            }
            if let Some(s) = w.slot()
                && let Some(other) = slots.insert(s, gfn)
            {
                return Err(InvariantError::SharedSlot {
                    slot: s,
                    a: other,
                    b: gfn,
                });
            }
        }
        // Each state's count against the scan (so their sum is the pages of RAM:
        // the scan saw every page once).
        let counts = pager.counts();
        let names = [
            "untouched",
            "resident",
            "evicting",
            "dropping",
            "in store",
            "fetching",
        ];
        for (i, name) in names.iter().enumerate() {
            if counts[i] != scanned[i] {
                return Err(InvariantError::Count {
                    what: name,
                    counted: counts[i],
                    scanned: scanned[i],
                });
            }
        }
        let frames = pager.frames();
        let used = frames.used();
        if used != framed {
            return Err(InvariantError::Count {
                what: "frames in use",
                counted: used,
                scanned: framed,
            });
        }
        let m = self.metrics();
        // Frames beyond the budget only ever come from a counted overrun.
        if used > frames.budget() + m.frames_over_budget {
            return Err(InvariantError::OverBudget {
                used,
                budget: frames.budget(),
            });
        }
        let io = m.io;
        let (in_flight_reads, in_flight_writes) = pager.io().in_flight_by_kind();
        if io.reads_submitted != io.pages_read + io.read_errors + in_flight_reads {
            return Err(InvariantError::Metrics(format!(
                "reads submitted {} != read {} + failed {} + in flight {in_flight_reads}",
                io.reads_submitted, io.pages_read, io.read_errors
            )));
        }
        if io.writes_submitted != io.pages_written + io.write_errors + in_flight_writes {
            return Err(InvariantError::Metrics(format!(
                "writes submitted {} != written {} + failed {} + in flight {in_flight_writes}",
                io.writes_submitted, io.pages_written, io.write_errors
            )));
        }
        let e = m.evict;
        if e.chosen != e.written + e.dropped_clean + e.dropped_zero + e.rescued + e.aborted {
            return Err(InvariantError::Metrics(format!(
                "evictions do not add up: {e:?}"
            )));
        }
        Ok(())
    }
}

/// Counts fetches until all have ended ([`GuestMemory::for_each_touched_page`]).
#[derive(Debug, Default)]
struct Countdown {
    left: Mutex<usize>,
    zero: Condvar,
}

impl Countdown {
    fn add(&self) {
        *lock(&self.left) += 1;
    }

    fn wait_zero(&self) {
        let mut left = lock(&self.left);
        while *left > 0 {
            left = wait(&self.zero, left);
        }
    }
}

impl FetchSink for Countdown {
    fn fetch_done(&self, _cookie: u64, _result: Result<(), FetchError>) {
        // A failed read is read again, and its error reported, by the copy.
        let mut left = lock(&self.left);
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.zero.notify_all();
        }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.pager.wake_background();
        for h in lock(&self.threads).drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn a_host_write_racing_a_take_is_in_the_next_take() {
        let base = 0x4000_0000;
        let mem = GuestMemory::new(
            MemConfig::new(base, 4 * PAGE_SIZE, 4 * PAGE_SIZE),
            Box::new(MemStore::new(8, 2)),
        )
        .unwrap();
        mem.start_dirty_log();
        let gpa = Gpa(base + PAGE_SIZE);
        let mut taken_meanwhile = None;
        // A take between the pin and the copy (no vCPU: its shootdown waits for
        // nobody) must leave the page for the next take, which comes after
        // the bytes landed.
        mem.host_access(gpa, 4, true, |_, ptr, n| {
            taken_meanwhile = Some(mem.take_dirty_log());
            // SAFETY: `ptr` is `n` bytes of a pinned resident page.
            unsafe { crate::ram::copy_to_shared(&b"late"[..n], ptr) }
        })
        .unwrap();
        assert!(!taken_meanwhile.unwrap().contains(gpa.gfn()));
        let next = mem.take_dirty_log();
        assert_eq!(next.iter().collect::<Vec<_>>(), [gpa.gfn()]);
    }
}
