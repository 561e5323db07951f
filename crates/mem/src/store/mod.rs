//! Backing stores: where evicted pages live, behind one submit/complete trait.
//!
//! A store reads and writes whole 4 KiB pages at *slots*. The fetch pipeline
//! submits requests whose buffers point straight into guest RAM and later collects
//! their completions with [`Store::complete`]; nothing in between touches those
//! buffers. Completions are matched to requests by the caller's tag, so a store (or
//! a fault-injecting wrapper) that delivers one twice is harmless.
//!
//! - [`FileStore`]: a swap file, io_uring or a pread/pwrite thread pool.
//! - [`LatencyStore`]: adds latency on top of another store's real I/O.
//! - [`FaultyStore`]: seeded errors, short reads, lost and duplicated completions.
//! - [`CowStore`]: a read-only base (a snapshot's memory) under a writable top.
//! - [`MemStore`]: pages in host memory, for tests.
//! - [`NbdStore`]: pages on a network block device.
//! - [`MirrorStore`]: a migration source's memory, read through a local mirror.

mod bulk;
mod cow;
mod faulty;
mod file;
mod latency;
mod memstore;
mod mirror;
pub mod nbd;
mod pair;
pub(crate) mod rng;
mod slots;
#[cfg(test)]
mod test_page;

use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;

pub use bulk::{BulkReadError, read_slots};
pub use cow::{CowStore, page_checksum};
pub use faulty::{FaultConfig, FaultyStore};
pub use file::{Backend, FileStore, FileStoreConfig, StoreOpenError};
pub use latency::{Latency, LatencyStore};
pub use memstore::MemStore;
pub use mirror::{Mirror, MirrorCounts, MirrorOrigin, MirrorStore};
pub use nbd::{ExportSource, NbdConfig, NbdError, NbdServer, NbdStore, NbdUrl, ServerCounters};
pub use slots::SlotAllocator;

/// A page-sized place in a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

impl Slot {
    /// Byte offset of the slot in a file of consecutive pages.
    pub fn offset(self) -> u64 {
        u64::from(self.0) * apf_abi::PAGE_SIZE
    }
}

/// A page-aligned 4 KiB buffer an I/O reads into or writes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoBuf(NonNull<u8>);

// SAFETY: an IoBuf is an address handed to whichever thread performs the I/O; the
// creator's contract (see `IoBuf::new`) makes that thread its only user meanwhile.
unsafe impl Send for IoBuf {}
// SAFETY: as for Send.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// # Safety
    /// `ptr` must be 4096-aligned and valid for reads and writes of 4096 bytes from
    /// the moment a request carrying it is submitted until its completion has been
    /// returned by [`Store::complete`] (or, if a store loses the completion, until
    /// the I/O has finished touching it, which a store guarantees before it may
    /// lose one). Nothing else may access the buffer meanwhile, except that a write
    /// request's source may be read.
    pub unsafe fn new(ptr: NonNull<u8>) -> IoBuf {
        debug_assert_eq!(ptr.as_ptr() as usize % 4096, 0);
        IoBuf(ptr)
    }

    /// The buffer's address.
    pub fn as_ptr(self) -> *mut u8 {
        self.0.as_ptr()
    }
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoKind {
    /// Slot to buffer.
    Read,
    /// Buffer to slot.
    Write,
}

/// One page of I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRequest {
    /// The caller's name for it; its completion carries the same tag.
    pub tag: u64,
    /// Direction.
    pub kind: IoKind,
    /// Where in the store.
    pub slot: Slot,
    /// Where in memory.
    pub buf: IoBuf,
}

/// How one page of I/O failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The operating system refused or failed it.
    #[error("{op} of slot {slot} failed: {}", std::io::Error::from_raw_os_error(*.errno))]
    Os {
        /// Direction.
        op: &'static str,
        /// The slot.
        slot: u32,
        /// errno.
        errno: i32,
    },
    /// Fewer bytes than a page moved.
    #[error("{op} of slot {slot} moved {done} of 4096 bytes")]
    Short {
        /// Direction.
        op: &'static str,
        /// The slot.
        slot: u32,
        /// Bytes moved.
        done: usize,
    },
    /// A page read from a snapshot's image does not match its checksum.
    #[error(
        "page {slot} of the snapshot image fails its checksum: {found:#010x}, expected {expected:#010x}"
    )]
    Checksum {
        /// The page (the base's slot).
        slot: u32,
        /// The checksum recorded at snapshot time.
        expected: u32,
        /// The checksum of what was read.
        found: u32,
    },
    /// The NBD server answered with an error.
    #[error("{op} of slot {slot} failed: the NBD server replied error {error}: {}", std::io::Error::from_raw_os_error(*.errno))]
    Remote {
        /// Direction.
        op: &'static str,
        /// The slot.
        slot: u32,
        /// The NBD error code.
        error: u32,
        /// The errno it stands for (NBD's codes are Linux's).
        errno: i32,
    },
    /// The NBD server could not be reached again within the reconnect timeout.
    #[error("{op} of slot {slot} failed: the NBD server was unreachable for {after:?}")]
    Disconnected {
        /// Direction.
        op: &'static str,
        /// The slot.
        slot: u32,
        /// The reconnect timeout.
        after: Duration,
    },
    /// An injected error (FaultyStore).
    #[error("injected {op} error on slot {slot}")]
    Injected {
        /// Direction.
        op: &'static str,
        /// The slot.
        slot: u32,
    },
}

impl IoError {
    pub(crate) fn op_name(kind: IoKind) -> &'static str {
        match kind {
            IoKind::Read => "read",
            IoKind::Write => "write",
        }
    }

    /// A write the file system had no room for (full, over quota, past the file
    /// size limit, or cut short part-way): retrying the slot will not help,
    /// a slot the file already holds may.
    pub fn is_no_space(&self) -> bool {
        match self {
            IoError::Os {
                op: "write", errno, ..
            } => matches!(*errno, libc::ENOSPC | libc::EDQUOT | libc::EFBIG),
            IoError::Short { op: "write", .. } => true,
            IoError::Remote {
                op: "write", errno, ..
            } => *errno == libc::ENOSPC,
            _ => false,
        }
    }

    pub(crate) fn from_result(
        kind: IoKind,
        slot: Slot,
        r: std::io::Result<usize>,
    ) -> Result<(), IoError> {
        let op = IoError::op_name(kind);
        match r {
            Ok(4096) => Ok(()),
            Ok(done) => Err(IoError::Short {
                op,
                slot: slot.0,
                done,
            }),
            Err(e) => Err(IoError::Os {
                op,
                slot: slot.0,
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            }),
        }
    }
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Whether the whole page moved.
    pub result: Result<(), IoError>,
}

/// No slot is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("store full: all {capacity} slots ({bytes} bytes) are in use", bytes = u64::from(*.capacity) * apf_abi::PAGE_SIZE)]
pub struct StoreFull {
    /// Slots the store holds.
    pub capacity: u32,
}

/// How a store does its I/O, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    /// What it is, e.g. "file (io_uring, O_DIRECT) at /tmp/x" or "latency 500µs over ...".
    pub description: String,
    /// Requests it runs at once; more wait in the caller's backlog.
    pub queue_depth: usize,
}

impl fmt::Display for StoreInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (queue depth {})", self.description, self.queue_depth)
    }
}

/// A backing store for pages.
///
/// Contract: every submitted request completes exactly once through
/// [`Store::complete`], except that a faulty store may deliver a completion twice
/// (callers ignore tags they no longer know) or lose one, but only after the I/O has
/// finished with its buffer. At most `queue_depth` requests are in flight; callers
/// keep the rest.
pub trait Store: Send + Sync + fmt::Debug {
    /// What the store is and its queue depth.
    fn info(&self) -> StoreInfo;
    /// Takes a free slot.
    fn alloc_slot(&self) -> Result<Slot, StoreFull>;
    /// Returns a slot; its contents are garbage from now on.
    fn free_slot(&self, slot: Slot);
    /// Starts the requests. A request that cannot even be started completes with
    /// an error like any other.
    fn submit(&self, reqs: &[IoRequest]);
    /// Appends finished requests to `out` and returns how many. With `wait`, blocks
    /// until at least one is available or the duration passes.
    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize;
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn info(&self) -> StoreInfo {
        (**self).info()
    }
    fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        (**self).alloc_slot()
    }
    fn free_slot(&self, slot: Slot) {
        (**self).free_slot(slot);
    }
    fn submit(&self, reqs: &[IoRequest]) {
        (**self).submit(reqs);
    }
    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        (**self).complete(out, wait)
    }
}
