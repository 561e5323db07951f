//! A network block device as the store: slot `s` is bytes `s * 4096..` of the
//! export.
//!
//! - [`wire`]: the protocol's messages, pure encode/parse (public for the fuzz
//!   target).
//! - [`handshake`]: fixed newstyle, `NBD_OPT_GO` with the block size, falling
//!   back to `NBD_OPT_EXPORT_NAME`.
//! - `client`: one socket, requests pipelined with unique cookies, a reader
//!   thread matching replies, reconnecting and re-sending when the connection
//!   breaks.
//! - [`server`]: the other side, a read-only NBD server of any
//!   [`ExportSource`] (a guest's RAM for one).
//!
//! **Server failure.** When the connection breaks (EOF, reset, a bad reply, no
//! reply for the I/O timeout), requests in flight are kept; the reader reconnects
//! with back-off (5 ms doubling to 500 ms) and re-sends them: reads and
//! whole-page writes are idempotent, so a server restarted within the reconnect
//! timeout loses nothing. Past it, those requests complete with
//! [`IoError::Disconnected`], and later ones fail at once while the client keeps
//! trying in the background; once the server is back, requests flow again.
//!
//! **FLUSH is not sent.** The store holds swap: pages need to survive as long as
//! the server process (a restart, with the file plugin), not a host crash, and
//! servers write back what they hold when the client disconnects. The
//! constant is in [`wire`] for completeness.

mod client;
pub mod handshake;
pub mod server;
mod url;
#[doc(hidden)]
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

pub use server::{ExportSource, NbdServer, ServerCounters};
pub use url::{DEFAULT_PORT, NbdTarget, NbdUrl, UrlError};

use super::{IoCompletion, IoError, IoRequest, Slot, SlotAllocator, Store, StoreFull, StoreInfo};
use client::{OpenError, Settings, Shared};
use handshake::Via;

/// How to connect an [`NbdStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdConfig {
    /// The server and export.
    pub url: NbdUrl,
    /// Requests in flight at once (1 to 4096).
    pub queue_depth: usize,
    /// Refuse writes even if the server takes them.
    pub read_only: bool,
    /// A connection with requests in flight and no reply for this long is
    /// broken; also bounds every connect and handshake step.
    pub io_timeout: Duration,
    /// How long to keep reconnecting before failing the requests in flight.
    pub reconnect_timeout: Duration,
    /// The most slots to use (the export's size bounds it too).
    pub capacity: u32,
}

impl NbdConfig {
    /// Defaults for `url`: depth 32, read-write, 5 s I/O timeout, 10 s to
    /// reconnect (well under the memory system's 30 s I/O timeout).
    pub fn new(url: NbdUrl) -> NbdConfig {
        NbdConfig {
            url,
            queue_depth: 32,
            read_only: false,
            io_timeout: Duration::from_secs(5),
            reconnect_timeout: Duration::from_secs(10),
            capacity: u32::MAX,
        }
    }
}

/// Why an NBD store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// No connection.
    #[error("cannot connect to {url}: {source}; is the NBD server running there?")]
    Connect {
        /// The server.
        url: NbdUrl,
        /// Why.
        source: std::io::Error,
    },
    /// The handshake failed.
    #[error("NBD server at {url}: {source}")]
    Handshake {
        /// The server.
        url: NbdUrl,
        /// Why.
        source: handshake::HandshakeError,
    },
    /// The export cannot hold a page.
    #[error("the NBD export {url} holds {size} bytes, less than one 4096-byte page")]
    TooSmall {
        /// The server.
        url: NbdUrl,
        /// Its size.
        size: u64,
    },
    /// The queue depth is outside 1..=4096.
    #[error("queue depth {0} is out of range: use 1 to 4096")]
    QueueDepth(usize),
    /// The reader thread could not be started.
    #[error("cannot start the NBD reader thread: {0}")]
    Thread(std::io::Error),
}

/// Pages on an NBD export.
#[derive(Debug)]
pub struct NbdStore {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    slots: SlotAllocator,
    depth: usize,
    description: String,
}

impl NbdStore {
    /// Connects, runs the handshake and starts the reader thread. The first
    /// connection is not retried: a wrong URL fails at once.
    pub fn connect(cfg: &NbdConfig) -> Result<NbdStore, NbdError> {
        if cfg.queue_depth == 0 || cfg.queue_depth > 4096 {
            return Err(NbdError::QueueDepth(cfg.queue_depth));
        }
        let (conn, n) = client::open(&cfg.url, cfg.io_timeout).map_err(|e| match e {
            OpenError::Connect(source) => NbdError::Connect {
                url: cfg.url.clone(),
                source,
            },
            OpenError::Handshake(source) => NbdError::Handshake {
                url: cfg.url.clone(),
                source,
            },
        })?;
        let pages = n.size / apf_abi::PAGE_SIZE;
        if pages == 0 {
            return Err(NbdError::TooSmall {
                url: cfg.url.clone(),
                size: n.size,
            });
        }
        let capacity = u32::try_from(pages).unwrap_or(u32::MAX).min(cfg.capacity);
        let read_only = cfg.read_only || n.read_only();
        let settings = Settings {
            url: cfg.url.clone(),
            read_only,
            size: n.size,
            io_timeout: cfg.io_timeout,
            reconnect_timeout: cfg.reconnect_timeout,
        };
        let shared =
            Arc::new(
                Shared::new(settings, &conn).map_err(|source| NbdError::Connect {
                    url: cfg.url.clone(),
                    source,
                })?,
            );
        let s = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("apf-nbd".into())
            .spawn(move || s.run(conn))
            .map_err(NbdError::Thread)?;
        let description = format!(
            "nbd {}{}{}",
            cfg.url,
            if read_only { " (read-only)" } else { "" },
            if n.via == Via::ExportName {
                " (NBD_OPT_EXPORT_NAME)"
            } else {
                ""
            }
        );
        Ok(NbdStore {
            shared,
            reader: Some(reader),
            slots: SlotAllocator::new(capacity),
            depth: cfg.queue_depth,
            description,
        })
    }

    /// The export's size in bytes.
    pub fn export_size(&self) -> u64 {
        self.shared.settings().size
    }

    /// Whether writes are refused (by the server or the configuration).
    pub fn is_read_only(&self) -> bool {
        self.shared.settings().read_only
    }

    /// How many times the connection broke and was made again.
    pub fn reconnects(&self) -> u64 {
        self.shared.counters.reconnects.load(Ordering::Relaxed)
    }

    /// Requests the server answered with an error.
    pub fn remote_errors(&self) -> u64 {
        self.shared.counters.remote_errors.load(Ordering::Relaxed)
    }

    /// Requests failed because the server stayed away past the reconnect timeout.
    pub fn disconnected_errors(&self) -> u64 {
        self.shared
            .counters
            .disconnected_errors
            .load(Ordering::Relaxed)
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    /// Why the connection last broke or a reconnect failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error()
    }
}

impl Store for NbdStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            description: self.description.clone(),
            queue_depth: self.depth,
        }
    }

    fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        self.slots.alloc()
    }

    fn free_slot(&self, slot: Slot) {
        self.slots.free(slot);
    }

    fn submit(&self, reqs: &[IoRequest]) {
        self.shared.submit(reqs);
    }

    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        let before = out.len();
        let n = self.shared.complete(out, wait);
        // A thin-provisioned export ran out of room: as with a full file system,
        // use only the slots written before.
        for c in &out[before..] {
            if let Err(e) = &c.result
                && e.is_no_space()
                && let IoError::Remote { slot, .. } = e
            {
                self.slots.refuse_from(Slot(*slot));
            }
        }
        n
    }
}

impl Drop for NbdStore {
    fn drop(&mut self) {
        self.shared.shut();
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}
