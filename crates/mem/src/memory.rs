//! [`GuestMemory`]: guest RAM with its page state, the host budget, the fetch
//! pipeline and the reclaimer, shared by every vCPU.

use std::sync::Arc;
use std::time::Duration;

use apf_abi::{PAGE_SHIFT, PAGE_SIZE};

use crate::frames::Frames;
use crate::metrics::{Counters, MemMetrics, PageCounts};
use crate::page::{PageTable, State};
use crate::pipeline::{FetchError, Pipeline, Waiter};
use crate::ram::{GuestRam, PAGE};
use crate::reclaim::Reclaim;
use crate::shootdown::Shootdown;
use crate::store::Store;
use crate::sync::{AtomicBool, Mutex, Ordering, lock, thread};
use crate::tlb::VcpuTlb;

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
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A page of the range could not be brought in.
    #[error("guest range {gpa:#x}+{len:#x}: {source}")]
    Fetch {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
        /// Why.
        source: FetchError,
    },
}

/// What [`GuestMemory::start_fetch`] did.
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
/// never from inside [`GuestMemory::start_fetch`], and never with a lock held.
pub trait FetchSink: Send + Sync {
    /// The fetch started with `cookie` installed its page, or failed (the page is
    /// still in the store: nothing is lost, a later fetch may succeed).
    fn fetch_done(&self, cookie: u64, result: Result<(), FetchError>);
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

/// Everything the vCPUs, the pipeline, the reclaimer and the reaper share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) base_gfn: u64,
    pub(crate) ram: GuestRam,
    pub(crate) pages: PageTable,
    pub(crate) store: Box<dyn Store>,
    pub(crate) frames: Frames,
    pub(crate) shoot: Shootdown,
    pub(crate) pipe: Pipeline,
    pub(crate) reclaim: Reclaim,
    pub(crate) counters: Counters,
    pub(crate) stop: AtomicBool,
    pub(crate) io_timeout: Duration,
    pub(crate) reaper_grace: Option<Duration>,
}

impl Inner {
    /// The page index of `gfn`, if it is RAM.
    #[inline]
    pub(crate) fn index_of(&self, gfn: u64) -> Option<usize> {
        let i = usize::try_from(gfn.checked_sub(self.base_gfn)?).ok()?;
        (i < self.pages.len()).then_some(i)
    }

    pub(crate) fn gfn_of(&self, index: usize) -> u64 {
        self.base_gfn + index as u64
    }

    /// Frees a slot that no page refers to any more.
    pub(crate) fn free_slot(&self, slot: Option<u32>) {
        if let Some(s) = slot {
            self.store.free_slot(crate::store::Slot(s));
        }
    }
}

/// Guest RAM and everything that decides where its pages are. Share it as
/// `Arc<GuestMemory>`; each vCPU thread takes a [`VcpuTlb`] from it.
#[derive(Debug)]
pub struct GuestMemory {
    pub(crate) inner: Arc<Inner>,
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
        let depth = store.info().queue_depth.max(1);
        let inner = Arc::new(Inner {
            base_gfn: cfg.ram_base >> PAGE_SHIFT,
            ram,
            pages: PageTable::new(pages),
            store,
            frames: Frames::new(budget, batch),
            shoot: Shootdown::new(),
            pipe: Pipeline::new(depth),
            reclaim: Reclaim::new(),
            counters: Counters::new(),
            stop: AtomicBool::new(false),
            io_timeout: cfg.io_timeout,
            reaper_grace: cfg.reaper_grace,
        });
        let mem = Arc::new(GuestMemory {
            inner,
            threads: Mutex::new(Vec::new()),
        });
        let r = Arc::clone(&mem.inner);
        let reclaimer = thread::Builder::new()
            .name("apf-reclaim".into())
            .spawn(move || r.reclaim_loop())
            .map_err(|e| MemError::Spawn("reclaimer", e))?;
        lock(&mem.threads).push(reclaimer);
        let r = Arc::clone(&mem.inner);
        let reaper = thread::Builder::new()
            .name("apf-reaper".into())
            .spawn(move || r.reaper_loop())
            .map_err(|e| MemError::Spawn("reaper", e))?;
        lock(&mem.threads).push(reaper);
        Ok(mem)
    }

    /// A software TLB for one vCPU thread. It starts unparked.
    pub fn vcpu_tlb(self: &Arc<Self>) -> VcpuTlb {
        VcpuTlb::new(Arc::clone(self))
    }

    /// Whether `gpa..gpa+len` is all guest RAM.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let base = self.inner.base_gfn << PAGE_SHIFT;
        let size = self.inner.pages.len() as u64 * PAGE_SIZE;
        gpa >= base && gpa.checked_add(len).is_some_and(|end| end <= base + size)
    }

    /// The store's description.
    pub fn store_info(&self) -> crate::store::StoreInfo {
        self.inner.store.info()
    }

    /// Host-side read (boot block, the APF shared block): brings pages in
    /// synchronously if needed; each page is pinned against eviction while copied.
    /// On a vCPU thread use [`VcpuTlb::read_bytes`], which parks the vCPU while it
    /// may wait (an unparked vCPU waiting for a frame would hold up the shootdown
    /// that frees one).
    pub fn read_bytes(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HostAccessError> {
        let len = buf.len() as u64;
        self.host_access(gpa, len, false, |off, ptr, n| {
            // SAFETY: `ptr` is `n` bytes of a pinned resident page.
            unsafe { crate::ram::copy_from_shared(ptr, &mut buf[off..off + n]) }
        })
    }

    /// Host-side write; marks the pages dirty.
    pub fn write_bytes(&self, gpa: u64, buf: &[u8]) -> Result<(), HostAccessError> {
        let len = buf.len() as u64;
        self.host_access(gpa, len, true, |off, ptr, n| {
            // SAFETY: `ptr` is `n` bytes of a pinned resident page.
            unsafe { crate::ram::copy_to_shared(&buf[off..off + n], ptr) }
        })
    }

    fn host_access(
        &self,
        gpa: u64,
        len: u64,
        write: bool,
        mut copy: impl FnMut(usize, *mut u8, usize),
    ) -> Result<(), HostAccessError> {
        if !self.contains(gpa, len) {
            return Err(HostAccessError::NotRam { gpa, len });
        }
        let inner = &*self.inner;
        let mut done = 0usize;
        let total = usize::try_from(len).map_err(|_| HostAccessError::NotRam { gpa, len })?;
        while done < total {
            let at = gpa + done as u64;
            let index = inner
                .index_of(at >> PAGE_SHIFT)
                .ok_or(HostAccessError::NotRam { gpa, len })?;
            let in_page = (at % PAGE_SIZE) as usize;
            let n = (PAGE - in_page).min(total - done);
            if !inner.pin(index, write) {
                inner
                    .fetch_pinned(index)
                    .map_err(|source| HostAccessError::Fetch { gpa, len, source })?;
                if write {
                    inner.mark_pinned_dirty(index);
                }
            }
            copy(done, inner.ram.page_ptr(index).wrapping_add(in_page), n);
            inner.unpin(index);
            done += n;
        }
        Ok(())
    }

    /// Starts bringing page `gfn` in without waiting (the APF path): one I/O per
    /// page however many ask. `sink` is told with `cookie` when the page is
    /// installed or the read failed, if this returns [`FetchStart::Started`] or
    /// [`FetchStart::Joined`].
    pub fn start_fetch(&self, gfn: u64, sink: Arc<dyn FetchSink>, cookie: u64) -> FetchStart {
        let Some(index) = self.inner.index_of(gfn) else {
            return FetchStart::NotRam;
        };
        self.inner.start_fetch(index, Waiter::Sink(sink, cookie))
    }

    /// Pages of the RAM mapping the host kernel holds in memory (by `mincore`),
    /// the figure the budget is about.
    pub fn host_resident_pages(&self) -> std::io::Result<u64> {
        self.inner.ram.host_resident_pages()
    }

    /// A snapshot of the figures. Exact (adds up) when no other thread is busy.
    pub fn metrics(&self) -> MemMetrics {
        let inner = &*self.inner;
        let c = inner.pages.counts();
        let (faults, fetch, io, evict, read_latency, write_latency) = inner.counters.snapshot();
        let (in_flight, backlog) = inner.pipeline_depths();
        MemMetrics {
            ram_pages: inner.pages.len() as u64,
            budget_pages: inner.frames.budget(),
            frames_used: inner.frames.used(),
            frames_peak: inner.frames.peak(),
            frames_over_budget: inner.frames.taken_over_budget(),
            over_budget_reason: lock(&inner.reclaim.over_budget_reason).clone(),
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

    /// Checks that page words, counts, slots and metrics agree. Call it when no
    /// other thread is using this memory (all vCPUs stopped, no fetch in flight).
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let inner = &*self.inner;
        // The reclaimer works on its own: see it between batches.
        let _batch = lock(&inner.reclaim.batch);
        let pages = inner.pages.len();
        let mut scanned = [0u64; crate::page::STATES];
        let mut framed = 0u64;
        let mut slots: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        for i in 0..pages {
            let w = inner.pages.peek(i);
            let gfn = inner.gfn_of(i);
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
        let counts = inner.pages.counts();
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
        let used = inner.frames.used();
        if used != framed {
            return Err(InvariantError::Count {
                what: "frames in use",
                counted: used,
                scanned: framed,
            });
        }
        let m = self.metrics();
        // Frames beyond the budget only ever come from a counted overrun.
        if used > inner.frames.budget() + m.frames_over_budget {
            return Err(InvariantError::OverBudget {
                used,
                budget: inner.frames.budget(),
            });
        }
        let io = m.io;
        let (in_flight_reads, in_flight_writes) = self.inner.in_flight_by_kind();
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

impl Drop for GuestMemory {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake_background();
        for h in lock(&self.threads).drain(..) {
            let _ = h.join();
        }
    }
}
