//! The swap file: the default store.
//!
//! Pages live at `slot * 4096` in one file. I/O goes through io_uring with a
//! configurable queue depth, or, where io_uring is unavailable (old kernel,
//! seccomp) or for tests, through a pool of threads doing pread/pwrite. `O_DIRECT`
//! is used when asked for and the filesystem allows it; what was actually used is
//! in [`Store::info`].

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use io_uring::{IoUring, opcode, types};

use super::{
    IoCompletion, IoError, IoKind, IoRequest, Slot, SlotAllocator, Store, StoreFull, StoreInfo,
};
use crate::ram::PAGE;

/// How the file store does its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring if the kernel allows it, else threads.
    #[default]
    Auto,
    /// io_uring or fail.
    IoUring,
    /// A pool of `queue_depth` threads doing pread/pwrite.
    Threads,
}

/// How to open a [`FileStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStoreConfig {
    /// A directory to make an (unlinked) swap file in, or a file path to use; the
    /// system temporary directory when unset.
    pub path: Option<PathBuf>,
    /// Requests in flight at once.
    pub queue_depth: usize,
    /// Use `O_DIRECT` when the filesystem allows it.
    pub direct: bool,
    /// The I/O backend.
    pub backend: Backend,
    /// The most slots (pages) the file may hold.
    pub capacity: u32,
}

impl Default for FileStoreConfig {
    fn default() -> Self {
        FileStoreConfig {
            path: None,
            queue_depth: 32,
            direct: true,
            backend: Backend::Auto,
            capacity: u32::MAX,
        }
    }
}

/// Why a file store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    /// The swap file could not be created or opened.
    #[error("cannot create the swap file at {path}: {source}")]
    Create {
        /// The path tried.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The queue depth is outside 1..=4096.
    #[error("queue depth {0} is out of range: use 1 to 4096")]
    QueueDepth(usize),
    /// io_uring was required but could not be set up.
    #[error("io_uring with queue depth {depth} is unavailable: {source}")]
    IoUring {
        /// The depth asked for.
        depth: usize,
        /// Why.
        source: io::Error,
    },
    /// A first page could not be written and read back.
    #[error("the swap file at {path} cannot hold a page: {source}")]
    Probe {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Worker threads could not be started.
    #[error("cannot start {0} I/O threads: {1}")]
    Threads(usize, io::Error),
}

/// A swap file.
#[derive(Debug)]
pub struct FileStore {
    file: Arc<File>,
    slots: SlotAllocator,
    /// Slots below this are blocks the file system holds written (see
    /// [`FileStore::write_ahead`]); only kept with `O_DIRECT`.
    written_ahead: Mutex<u32>,
    engine: Engine,
    direct: bool,
    depth: usize,
    description: String,
}

#[derive(Debug)]
enum Engine {
    Uring(Box<Uring>),
    Threads(Pool),
}

impl Engine {
    /// io_uring or threads as `backend` asks; says which, and why not io_uring.
    fn start(
        file: &Arc<File>,
        depth: usize,
        backend: Backend,
    ) -> Result<(Engine, String), StoreOpenError> {
        Ok(match backend {
            Backend::Threads => (
                Engine::Threads(Pool::start(file, depth)?),
                "threads".to_string(),
            ),
            Backend::IoUring => match Uring::new(depth) {
                Ok(u) => (Engine::Uring(Box::new(u)), "io_uring".to_string()),
                Err(source) => return Err(StoreOpenError::IoUring { depth, source }),
            },
            Backend::Auto => match Uring::new(depth) {
                Ok(u) => (Engine::Uring(Box::new(u)), "io_uring".to_string()),
                Err(e) => (
                    Engine::Threads(Pool::start(file, depth)?),
                    format!("threads: io_uring unavailable: {e}"),
                ),
            },
        })
    }
}

impl FileStore {
    /// Opens (creates) the swap file.
    pub fn open(cfg: &FileStoreConfig) -> Result<FileStore, StoreOpenError> {
        if cfg.queue_depth == 0 || cfg.queue_depth > 4096 {
            return Err(StoreOpenError::QueueDepth(cfg.queue_depth));
        }
        let (file, path, shown) = create_file(cfg.path.as_deref())?;
        let mut direct = false;
        if cfg.direct && set_direct(&file) {
            if probe(&file).is_ok() {
                direct = true;
            } else {
                clear_direct(&file);
            }
        }
        if !direct {
            probe(&file).map_err(|source| StoreOpenError::Probe {
                path: path.clone(),
                source,
            })?;
        }
        let file = Arc::new(file);
        let depth = cfg.queue_depth;
        let (engine, how) = Engine::start(&file, depth, cfg.backend)?;
        let description = format!(
            "file ({how}, {}) at {shown}",
            if direct {
                "O_DIRECT"
            } else if cfg.direct {
                "buffered: O_DIRECT refused"
            } else {
                "buffered"
            }
        );
        Ok(FileStore {
            file,
            slots: SlotAllocator::new(cfg.capacity),
            // The probe wrote slot 0.
            written_ahead: Mutex::new(1),
            engine,
            direct,
            depth,
            description,
        })
    }

    /// Makes sure the file holds written blocks up to `slot`, writing zeros a
    /// chunk at a time ahead of the slots handed out. With `O_DIRECT` a page
    /// write into a hole (or a preallocated, unwritten extent) makes the file
    /// system allocate or convert blocks: io_uring cannot issue that without
    /// blocking and hands it to a kernel worker thread, where such writes go one
    /// at a time and need a CPU the vCPUs are using. An overwrite of a written
    /// block is issued at once. (On ext4 with two vCPUs on two cores, APF-on
    /// scans took up to 4.7 times as long before: README "Performance".)
    fn write_ahead(&self, slot: Slot) -> io::Result<()> {
        const CHUNK_PAGES: u32 = 256;
        let mut written = lock(&self.written_ahead);
        if slot.0 < *written {
            return Ok(());
        }
        let end = slot.0.saturating_add(CHUNK_PAGES).max(*written);
        let buf = AlignedBuf::zeroed(PAGE * 64)?;
        let fd = self.file.as_raw_fd();
        while *written < end {
            let pages = (end - *written).min(64);
            let len = PAGE * pages as usize;
            let at = i64::from(*written) * 4096;
            // SAFETY: buf is a valid, aligned buffer of at least `len` bytes we own.
            let w = unsafe { libc::pwrite(fd, buf.ptr.cast::<libc::c_void>(), len, at) };
            match usize::try_from(w) {
                Ok(n) if n == len => *written += pages,
                Ok(n) => return Err(io::Error::other(format!("wrote {n} of {len} bytes"))),
                Err(_) => return Err(io::Error::last_os_error()),
            }
        }
        Ok(())
    }

    /// Opens an existing file of consecutive pages read-only (a snapshot's
    /// memory image): slot `n` is the page at `n * 4096`, for the pages the file
    /// holds. It hands out no slots, and a write fails with the operating
    /// system's error: nothing can change the file through it.
    pub fn open_image(
        path: &Path,
        queue_depth: usize,
        direct: bool,
    ) -> Result<FileStore, StoreOpenError> {
        if queue_depth == 0 || queue_depth > 4096 {
            return Err(StoreOpenError::QueueDepth(queue_depth));
        }
        let open = |source| StoreOpenError::Create {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new().read(true).open(path).map_err(open)?;
        let len = file.metadata().map_err(open)?.len();
        let pages = u32::try_from(len / PAGE as u64).unwrap_or(u32::MAX);
        let mut used_direct = false;
        if direct && set_direct(&file) {
            if pages == 0 || probe_read(&file).is_ok() {
                used_direct = true;
            } else {
                clear_direct(&file);
            }
        }
        let file = Arc::new(file);
        let (engine, how) = Engine::start(&file, queue_depth, Backend::Auto)?;
        Ok(FileStore {
            file,
            slots: SlotAllocator::new(0),
            written_ahead: Mutex::new(0),
            engine,
            direct: used_direct,
            depth: queue_depth,
            description: format!(
                "image ({how}, {}, read-only, {pages} pages) at {}",
                if used_direct { "O_DIRECT" } else { "buffered" },
                path.display()
            ),
        })
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Whether I/O goes through io_uring (else a thread pool).
    pub fn uses_io_uring(&self) -> bool {
        matches!(self.engine, Engine::Uring(_))
    }
}

fn create_file(path: Option<&Path>) -> Result<(File, PathBuf, String), StoreOpenError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (path, unlink) = match path {
        None => (std::env::temp_dir(), true),
        Some(p) => (p.to_path_buf(), p.is_dir()),
    };
    let file_path = if unlink {
        path.join(format!(
            "apf-swap-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    } else {
        path.clone()
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file_path)
        .map_err(|source| StoreOpenError::Create {
            path: file_path.clone(),
            source,
        })?;
    if unlink {
        // The file lives as long as it is open and vanishes with the process.
        std::fs::remove_file(&file_path).map_err(|source| StoreOpenError::Create {
            path: file_path.clone(),
            source,
        })?;
        let shown = format!("{} (unlinked)", file_path.display());
        return Ok((file, file_path, shown));
    }
    let shown = file_path.display().to_string();
    Ok((file, file_path, shown))
}

fn set_direct(file: &File) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    flags >= 0 && unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) } == 0
}

fn clear_direct(file: &File) {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags >= 0 {
        // SAFETY: as above.
        let _ = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) };
    }
}

/// Writes and reads back a page at slot 0 (later overwritten by real use): finds
/// filesystems that accept `O_DIRECT` at open but refuse it at I/O, and files that
/// cannot be written at all.
fn probe(file: &File) -> io::Result<()> {
    let buf = AlignedBuf::zeroed(PAGE)?;
    let fd = file.as_raw_fd();
    // SAFETY: buf is a valid, aligned 4096-byte buffer we own.
    let w = unsafe { libc::pwrite(fd, buf.ptr.cast::<libc::c_void>(), PAGE, 0) };
    check_full(w)?;
    // SAFETY: as above.
    let r = unsafe { libc::pread(fd, buf.ptr.cast::<libc::c_void>(), PAGE, 0) };
    check_full(r)
}

/// Reads the first page: finds filesystems that accept `O_DIRECT` at open but
/// refuse it at I/O, without writing.
fn probe_read(file: &File) -> io::Result<()> {
    let buf = AlignedBuf::zeroed(PAGE)?;
    // SAFETY: buf is a valid, aligned 4096-byte buffer we own.
    let r = unsafe { libc::pread(file.as_raw_fd(), buf.ptr.cast::<libc::c_void>(), PAGE, 0) };
    check_full(r)
}

fn check_full(n: isize) -> io::Result<()> {
    match usize::try_from(n) {
        Ok(PAGE) => Ok(()),
        Ok(n) => Err(io::Error::other(format!("moved {n} of 4096 bytes"))),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// Page-aligned, zeroed heap memory (`O_DIRECT` needs aligned buffers).
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    /// `len` zero bytes (a non-zero multiple of the page size).
    fn zeroed(len: usize) -> io::Result<AlignedBuf> {
        let layout = std::alloc::Layout::from_size_align(len, PAGE).map_err(io::Error::other)?;
        if len == 0 {
            return Err(io::Error::other("an empty buffer"));
        }
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            Err(io::Error::from(io::ErrorKind::OutOfMemory))
        } else {
            Ok(AlignedBuf { ptr, layout })
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store for FileStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            description: self.description.clone(),
            queue_depth: self.depth,
        }
    }

    fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        let slot = self.slots.alloc()?;
        if self.direct && self.write_ahead(slot).is_err() {
            // No room for the blocks (or no I/O at all): the store ends below
            // what could be written, as when a page write finds no room.
            self.slots.free(slot);
            self.slots.refuse_from(slot);
            return Err(StoreFull { capacity: slot.0 });
        }
        Ok(slot)
    }

    fn free_slot(&self, slot: Slot) {
        self.slots.free(slot);
    }

    fn submit(&self, reqs: &[IoRequest]) {
        match &self.engine {
            Engine::Uring(u) => u.submit(self.file.as_raw_fd(), reqs),
            Engine::Threads(p) => p.submit(reqs),
        }
    }

    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        let before = out.len();
        let n = match &self.engine {
            Engine::Uring(u) => u.complete(out, wait),
            Engine::Threads(p) => p.complete(out, wait),
        };
        // The file system is full: use only the slots it already holds, so
        // reclaim stops writing to slots that cannot take a page.
        for c in &out[before..] {
            if let Err(e) = &c.result
                && e.is_no_space()
                && let IoError::Os { slot, .. } | IoError::Short { slot, .. } = e
            {
                self.slots.refuse_from(Slot(*slot));
            }
        }
        n
    }
}

/// io_uring: submissions under one lock, completions under another (only one
/// thread collects at a time anyway), waiting in the kernel with a timeout.
struct Uring {
    ring: IoUring,
    sq: Mutex<()>,
    cq: Mutex<()>,
    /// tag → (kind, slot) of each request in flight, for error messages.
    inflight: Mutex<HashMap<u64, (IoKind, Slot)>>,
    /// Requests that could not be handed to the kernel.
    failed: Mutex<VecDeque<IoCompletion>>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("entries", &self.ring.params().sq_entries())
            .finish_non_exhaustive()
    }
}

impl Uring {
    fn new(depth: usize) -> io::Result<Uring> {
        let entries = u32::try_from(depth.next_power_of_two()).map_err(io::Error::other)?;
        // Cooperative task running: completions are not pushed to a busy
        // submitter with an interrupt; the kernel raises a flag instead and the
        // next collector enters the kernel to run them (see `complete`). Kernels
        // before 5.19 refuse the flags: then plain.
        let ring = match IoUring::builder()
            .setup_cqsize(entries * 2)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)
        {
            Ok(r) => r,
            Err(_) => IoUring::builder()
                .setup_cqsize(entries * 2)
                .build(entries)?,
        };
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::other(
                "kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11)",
            ));
        }
        Ok(Uring {
            ring,
            sq: Mutex::new(()),
            cq: Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            failed: Mutex::new(VecDeque::new()),
        })
    }

    fn submit(&self, fd: i32, reqs: &[IoRequest]) {
        let _sq = lock(&self.sq);
        let mut inflight = lock(&self.inflight);
        for chunk in reqs.chunks(self.ring.params().sq_entries() as usize) {
            {
                // SAFETY: the submission queue is only touched under `self.sq`.
                let mut sq = unsafe { self.ring.submission_shared() };
                for r in chunk {
                    let len = u32::try_from(PAGE).expect("page fits u32");
                    let entry = match r.kind {
                        IoKind::Read => opcode::Read::new(types::Fd(fd), r.buf.as_ptr(), len)
                            .offset(r.slot.offset())
                            .build(),
                        IoKind::Write => opcode::Write::new(types::Fd(fd), r.buf.as_ptr(), len)
                            .offset(r.slot.offset())
                            .build(),
                    }
                    .user_data(r.tag);
                    // SAFETY: the buffer stays valid until the completion is collected
                    // (IoBuf's contract); the chunk fits the queue, which is empty
                    // between submissions because every submit below drains it.
                    if unsafe { sq.push(&entry) }.is_err() {
                        lock(&self.failed).push_back(IoCompletion {
                            tag: r.tag,
                            result: Err(IoError::Os {
                                op: IoError::op_name(r.kind),
                                slot: r.slot.0,
                                errno: libc::EBUSY,
                            }),
                        });
                        continue;
                    }
                    inflight.insert(r.tag, (r.kind, r.slot));
                }
                sq.sync();
            }
            loop {
                match self.ring.submitter().submit() {
                    Ok(_) => break,
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => {
                        // The kernel took none of them: fail them all.
                        let errno = e.raw_os_error().unwrap_or(libc::EIO);
                        let mut failed = lock(&self.failed);
                        for r in chunk {
                            if inflight.remove(&r.tag).is_some() {
                                failed.push_back(IoCompletion {
                                    tag: r.tag,
                                    result: Err(IoError::Os {
                                        op: IoError::op_name(r.kind),
                                        slot: r.slot.0,
                                        errno,
                                    }),
                                });
                            }
                        }
                        // SAFETY: under `self.sq`; forget the entries the kernel refused.
                        let mut sq = unsafe { self.ring.submission_shared() };
                        sq.sync();
                        break;
                    }
                }
            }
        }
    }

    fn drain(&self, out: &mut Vec<IoCompletion>) -> usize {
        let mut n = 0;
        {
            let mut failed = lock(&self.failed);
            n += failed.len();
            out.extend(failed.drain(..));
        }
        let _cq = lock(&self.cq);
        // SAFETY: the completion queue is only touched under `self.cq`.
        let cq = unsafe { self.ring.completion_shared() };
        let mut inflight = lock(&self.inflight);
        for cqe in cq {
            let tag = cqe.user_data();
            let Some((kind, slot)) = inflight.remove(&tag) else {
                continue;
            };
            let res = cqe.result();
            let r = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res.unsigned_abs() as usize)
            };
            out.push(IoCompletion {
                tag,
                result: IoError::from_result(kind, slot, r),
            });
            n += 1;
        }
        n
    }

    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        let n = self.drain(out);
        if n > 0 {
            return n;
        }
        let taskrun = {
            let _sq = lock(&self.sq);
            // SAFETY: the submission queue is only touched under `self.sq`.
            unsafe { self.ring.submission_shared() }.taskrun()
        };
        if taskrun {
            // Completions wait for us to run them in the kernel.
            let _ = self.ring.submitter().submit_and_wait(0);
            let n = self.drain(out);
            if n > 0 {
                return n;
            }
        }
        let Some(d) = wait else { return 0 };
        let ts = types::Timespec::from(d);
        let args = types::SubmitArgs::new().timespec(&ts);
        // ETIME (timeout) and EINTR just mean nothing came.
        let _ = self.ring.submitter().submit_with_args(1, &args);
        self.drain(out)
    }
}

/// pread/pwrite on a pool of threads.
#[derive(Debug)]
struct Pool {
    shared: Arc<PoolShared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct PoolShared {
    queue: Mutex<VecDeque<IoRequest>>,
    work: Condvar,
    done: Mutex<VecDeque<IoCompletion>>,
    finished: Condvar,
    stop: AtomicBool,
    fd: i32,
    _file: Arc<File>,
}

impl Pool {
    fn start(file: &Arc<File>, threads: usize) -> Result<Pool, StoreOpenError> {
        let shared = Arc::new(PoolShared {
            queue: Mutex::new(VecDeque::new()),
            work: Condvar::new(),
            done: Mutex::new(VecDeque::new()),
            finished: Condvar::new(),
            stop: AtomicBool::new(false),
            fd: file.as_raw_fd(),
            _file: Arc::clone(file),
        });
        let mut pool = Pool {
            shared,
            workers: Vec::new(),
        };
        for i in 0..threads {
            let s = Arc::clone(&pool.shared);
            let h = std::thread::Builder::new()
                .name(format!("apf-io-{i}"))
                .spawn(move || s.run())
                .map_err(|e| StoreOpenError::Threads(threads, e))?;
            pool.workers.push(h);
        }
        Ok(pool)
    }

    fn submit(&self, reqs: &[IoRequest]) {
        lock(&self.shared.queue).extend(reqs.iter().copied());
        for _ in reqs {
            self.shared.work.notify_one();
        }
    }

    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        let mut done = lock(&self.shared.done);
        if let Some(d) = wait
            && done.is_empty()
        {
            done = self
                .shared
                .finished
                .wait_timeout(done, d)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let n = done.len();
        out.extend(done.drain(..));
        n
    }
}

impl PoolShared {
    fn run(&self) {
        loop {
            let req = {
                let mut q = lock(&self.queue);
                loop {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(r) = q.pop_front() {
                        break r;
                    }
                    q = self.work.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let buf = req.buf.as_ptr().cast::<libc::c_void>();
            let off = libc::off_t::try_from(req.slot.offset()).unwrap_or(libc::off_t::MAX);
            let n = match req.kind {
                // SAFETY: IoBuf's contract: 4096 valid bytes, ours until completion.
                IoKind::Read => unsafe { libc::pread(self.fd, buf, PAGE, off) },
                // SAFETY: as above (read-only use of the source).
                IoKind::Write => unsafe { libc::pwrite(self.fd, buf, PAGE, off) },
            };
            let r = usize::try_from(n).map_err(|_| io::Error::last_os_error());
            let c = IoCompletion {
                tag: req.tag,
                result: IoError::from_result(req.kind, req.slot, r),
            };
            lock(&self.done).push_back(c);
            self.finished.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _q = lock(&self.shared.queue);
            self.shared.work.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
