//! A read-only NBD server: one export, fixed newstyle, simple replies.
//!
//! - [`ExportSource`]: what is served (bytes by offset); `crate::GuestRamSource`
//!   serves a guest's RAM, bringing pages in from its store as read.
//! - [`Export::serve`]: one connection's whole life (handshake, then requests)
//!   over any byte stream, so the fuzz target drives exactly what a socket does.
//! - [`NbdServer`]: a TCP listener, one thread per connection.
//!
//! Options: `EXPORT_NAME`, `GO`, `INFO`, `LIST`, `ABORT`; any other option gets
//! `NBD_REP_ERR_UNSUP` (structured replies among them). The empty name is the
//! default export, which is the one export. Commands: `READ`; `FLUSH` and
//! `CACHE` succeed doing nothing; `WRITE`, `TRIM` and `WRITE_ZEROES` get
//! `EPERM`; the rest `EINVAL`; `DISC` ends the connection.
//!
//! Each connection has a reader (the connection's thread) that parses
//! requests, and up to `workers` threads (16 by default, started as needed)
//! that serve its READs, so a slow read (a page the source must bring in from
//! its swap) holds up no other. Replies may leave out of order, each matched by
//! its cookie; a reply's header and data are written whole under one lock on
//! the socket. At most `workers` READs, and at most [`wire::MAX_PAYLOAD`]
//! bytes of them, are in flight per connection: past that the reader waits,
//! so a connection holds no more data than the longest READ, as when it
//! answered one request at a time. Other commands are answered by the reader
//! at once. `DISC`, a bad request magic or the end of the stream ends the
//! connection once the replies in flight are sent. Several connections run in
//! parallel (`CAN_MULTI_CONN`).
//!
//! A hostile client is bounded: option data over 16 KiB is skipped unread and
//! refused; a request over [`wire::MAX_PAYLOAD`] is refused (a WRITE's payload
//! that long closes the connection, its framing being unrecoverable without
//! reading it); a bad magic closes that connection only; at most
//! [`MAX_CONNECTIONS`] connections at once; over TCP, a handshake not finished
//! within [`ServerConfig::handshake_limit`] closes the connection. Once in
//! transmission a connection may stay idle for as long as the client likes:
//! NBD has no keep-alive, and a post-copy destination can rightly go quiet for
//! minutes.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use super::wire::{self, OptionReply, SimpleReply};

/// Connections served at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 64;

/// READs served at once per connection unless configured otherwise: enough
/// for a pipelining client (apf's sends up to 32) to keep a source with a slow
/// swap busy, few enough that 64 connections stay at about a thousand threads.
pub const DEFAULT_WORKERS: usize = 16;

/// The most workers a connection may have.
pub const MAX_WORKERS: usize = 64;

/// How long a TCP client has, by default, from connecting to the end of its
/// handshake: real clients need milliseconds.
pub const DEFAULT_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// The longest option data read: export names are at most 4096 bytes, and a
/// GO or INFO adds a few information types.
const MAX_OPTION_DATA: u32 = 16 * 1024;

/// The flags this server offers in its greeting.
const HANDSHAKE_FLAGS: u16 = wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES;

/// The transmission flags of the export.
const TRANSMISSION_FLAGS: u16 = wire::TFLAG_HAS_FLAGS
    | wire::TFLAG_READ_ONLY
    | wire::TFLAG_SEND_FLUSH
    | wire::TFLAG_CAN_MULTI_CONN
    | wire::TFLAG_SEND_CACHE;

/// What an NBD export serves: a fixed number of bytes, read by offset.
pub trait ExportSource: Send + Sync {
    /// Bytes in the export.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`; the server only asks for ranges
    /// within [`size`](ExportSource::size).
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ExportSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|at| Some(at..at.checked_add(buf.len())?))
            .and_then(|r| self.get(r))
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        buf.copy_from_slice(range);
        Ok(())
    }
}

/// Counts of what the server did, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Connections accepted (including those closed for being over the limit).
    pub connections: u64,
    /// Transmission requests received.
    pub requests: u64,
    /// READ requests answered with data.
    pub reads: u64,
    /// Bytes of READ data sent.
    pub bytes_read: u64,
    /// Requests answered with an error.
    pub error_replies: u64,
    /// Connections closed because the client broke the protocol (or, over
    /// TCP, did not finish its handshake in time).
    pub protocol_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    error_replies: AtomicU64,
    protocol_errors: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// How a connection ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client sent `NBD_CMD_DISC`.
    Disconnected,
    /// The client sent `NBD_OPT_ABORT`.
    Aborted,
    /// The client closed the connection between requests.
    Closed,
}

/// Why a connection was closed early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The byte stream failed or ended mid-message.
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    /// The client set handshake flags the server did not offer.
    #[error("the client sent unknown handshake flags {0:#x}")]
    ClientFlags(u32),
    /// An option did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#x} (expected IHAVEOPT)")]
    OptionMagic(u64),
    /// `NBD_OPT_EXPORT_NAME` named another export (that option has no error
    /// reply: the connection closes).
    #[error("the client asked for export {0:?}, which is not served here")]
    NoSuchExport(String),
    /// A request did not start with the request magic.
    #[error("bad request magic {0:#x}")]
    RequestMagic(u32),
    /// A WRITE's payload is too long to skip safely.
    #[error("a WRITE of {0} bytes is over the {max} accepted", max = wire::MAX_PAYLOAD)]
    WriteTooLong(u32),
    /// The client did not finish its handshake within the server's limit.
    #[error("the client did not finish its handshake within {0:?}")]
    HandshakeTimedOut(Duration),
}

/// How an [`NbdServer`] serves its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// READs served at once per connection, each on its own thread
    /// (1 to [`MAX_WORKERS`]); also the most READs in flight per connection.
    pub workers: usize,
    /// How long a client has from connecting to the end of its handshake
    /// (more than zero).
    pub handshake_limit: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            workers: DEFAULT_WORKERS,
            handshake_limit: DEFAULT_HANDSHAKE_LIMIT,
        }
    }
}

impl ServerConfig {
    fn check(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return bad(format!(
                "NBD server workers must be 1 to {MAX_WORKERS} per connection, not {}",
                self.workers
            ));
        }
        if self.handshake_limit.is_zero() {
            return bad("the NBD server's handshake limit must be more than zero".into());
        }
        Ok(())
    }
}

/// One named export and its counters; [`serve`](Export::serve) speaks NBD
/// over one connection.
pub struct Export {
    name: String,
    source: Arc<dyn ExportSource>,
    workers: usize,
    counters: Counters,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.source.size())
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// A GO or INFO option's data.
struct InfoRequest<'a> {
    name: &'a [u8],
    wants_name: bool,
    wants_block_size: bool,
}

fn parse_info_request(data: &[u8]) -> Option<InfoRequest<'_>> {
    let name_len = usize::try_from(u32::from_be_bytes(data.get(..4)?.try_into().ok()?)).ok()?;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let count = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let infos = &rest[2..];
    if infos.len() != count * 2 {
        return None;
    }
    let mut r = InfoRequest {
        name,
        wants_name: false,
        wants_block_size: false,
    };
    for t in infos.chunks_exact(2) {
        match u16::from_be_bytes([t[0], t[1]]) {
            wire::INFO_NAME => r.wants_name = true,
            wire::INFO_BLOCK_SIZE => r.wants_block_size = true,
            _ => {}
        }
    }
    Some(r)
}

/// Reads exactly `buf`, or nothing at all: `Ok(false)` on a clean end of the
/// stream before the first byte.
fn read_or_eof<S: Read>(s: &mut S, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads and drops `len` bytes through a fixed buffer.
fn skip<S: Read>(s: &mut S, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut s.take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn option_reply<S: Write>(s: &mut S, option: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut b = Vec::with_capacity(wire::OPTION_REPLY_HEADER_LEN + data.len());
    b.extend_from_slice(&wire::encode_option_reply(OptionReply {
        option,
        reply,
        len,
    }));
    b.extend_from_slice(data);
    s.write_all(&b)
}

/// What the negotiation phase ended in.
enum Negotiation {
    Transmission,
    Aborted,
}

impl Export {
    /// An export called `name` serving `source`, [`DEFAULT_WORKERS`] READs at
    /// once per connection.
    pub fn new(name: String, source: Arc<dyn ExportSource>) -> Export {
        Export {
            name,
            source,
            workers: DEFAULT_WORKERS,
            counters: Counters::default(),
        }
    }

    /// Serves up to `workers` READs at once per connection, taken into
    /// 1..=[`MAX_WORKERS`].
    #[must_use]
    pub fn with_workers(mut self, workers: usize) -> Export {
        self.workers = workers.clamp(1, MAX_WORKERS);
        self
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What has been served so far.
    pub fn counters(&self) -> ServerCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerCounters {
            connections: get(&c.connections),
            requests: get(&c.requests),
            reads: get(&c.reads),
            bytes_read: get(&c.bytes_read),
            error_replies: get(&c.error_replies),
            protocol_errors: get(&c.protocol_errors),
        }
    }

    /// Whether a client's export name means this export.
    fn is_named(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    /// Serves one connection from the greeting to its end: requests are read
    /// from `reader`, replies written to `writer` (for a socket, `&mut &stream`
    /// for both). READs are served on scoped threads, all joined before this
    /// returns.
    pub fn serve<R: Read, W: Write + Send>(
        &self,
        reader: &mut R,
        writer: &mut W,
    ) -> Result<Ended, ServeError> {
        let r = match self.negotiate(reader, writer) {
            Ok(Negotiation::Transmission) => self.transmit(reader, writer),
            Ok(Negotiation::Aborted) => Ok(Ended::Aborted),
            Err(e) => Err(e),
        };
        self.tally(r)
    }

    /// Serves one TCP connection, whose handshake must end within `limit`.
    fn serve_tcp(&self, stream: &TcpStream, limit: Duration) -> Result<Ended, ServeError> {
        let deadline = Instant::now().checked_add(limit);
        let (mut r, mut w) = (Deadline { stream, deadline }, Deadline { stream, deadline });
        let r = match self.negotiate(&mut r, &mut w) {
            Ok(Negotiation::Transmission) => stream
                .set_read_timeout(None)
                .and_then(|()| stream.set_write_timeout(None))
                .map_err(ServeError::from)
                .and_then(|()| self.transmit(&mut &*stream, &mut &*stream)),
            Ok(Negotiation::Aborted) => Ok(Ended::Aborted),
            Err(ServeError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && deadline.is_some_and(|d| Instant::now() >= d) =>
            {
                Err(ServeError::HandshakeTimedOut(limit))
            }
            Err(e) => Err(e),
        };
        self.tally(r)
    }

    /// Counts a connection the client ended by breaking the protocol.
    fn tally(&self, r: Result<Ended, ServeError>) -> Result<Ended, ServeError> {
        if matches!(&r, Err(e) if !matches!(e, ServeError::Io(_))) {
            bump(&self.counters.protocol_errors, 1);
        }
        r
    }

    fn negotiate<R: Read, W: Write>(
        &self,
        r: &mut R,
        s: &mut W,
    ) -> Result<Negotiation, ServeError> {
        s.write_all(&wire::encode_greeting(HANDSHAKE_FLAGS))?;
        s.flush()?;
        let mut flags = [0u8; 4];
        r.read_exact(&mut flags)?;
        let flags = u32::from_be_bytes(flags);
        if flags & !(wire::CLIENT_FIXED_NEWSTYLE | wire::CLIENT_NO_ZEROES) != 0 {
            return Err(ServeError::ClientFlags(flags));
        }
        let no_zeroes = flags & wire::CLIENT_NO_ZEROES != 0;
        loop {
            let mut h = [0u8; 16];
            r.read_exact(&mut h)?;
            let magic = u64::from_be_bytes(h[0..8].try_into().unwrap_or_default());
            if magic != wire::IHAVEOPT {
                return Err(ServeError::OptionMagic(magic));
            }
            let option = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            let len = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
            if len > MAX_OPTION_DATA {
                skip(r, u64::from(len))?;
                if option == wire::OPT_EXPORT_NAME {
                    return Err(ServeError::NoSuchExport(format!("<{len} bytes>")));
                }
                let msg =
                    format!("option data of {len} bytes is over the {MAX_OPTION_DATA} accepted");
                option_reply(s, option, wire::REP_ERR_TOO_BIG, msg.as_bytes())?;
                s.flush()?;
                continue;
            }
            let mut data = vec![0u8; len as usize];
            r.read_exact(&mut data)?;
            let next = self.option(s, option, &data, no_zeroes)?;
            s.flush()?;
            if let Some(n) = next {
                return Ok(n);
            }
        }
    }

    /// Answers one option; `Some` when negotiation is over.
    fn option<S: Write>(
        &self,
        s: &mut S,
        option: u32,
        data: &[u8],
        no_zeroes: bool,
    ) -> Result<Option<Negotiation>, ServeError> {
        let size = self.source.size();
        match option {
            wire::OPT_EXPORT_NAME => {
                if !self.is_named(data) {
                    return Err(ServeError::NoSuchExport(
                        String::from_utf8_lossy(data).into_owned(),
                    ));
                }
                let mut b = Vec::with_capacity(wire::EXPORT_NAME_REPLY_LEN + 124);
                b.extend_from_slice(&size.to_be_bytes());
                b.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    b.resize(wire::EXPORT_NAME_REPLY_LEN + wire::EXPORT_NAME_ZEROES, 0);
                }
                s.write_all(&b)?;
                Ok(Some(Negotiation::Transmission))
            }
            wire::OPT_ABORT => {
                // The client may already have closed: the ACK is a courtesy.
                let _ = option_reply(s, option, wire::REP_ACK, &[]);
                Ok(Some(Negotiation::Aborted))
            }
            wire::OPT_LIST => {
                if !data.is_empty() {
                    option_reply(s, option, wire::REP_ERR_INVALID, b"LIST takes no data")?;
                    return Ok(None);
                }
                let name = self.name.as_bytes();
                let mut d = Vec::with_capacity(4 + name.len());
                d.extend_from_slice(&u32::try_from(name.len()).unwrap_or(0).to_be_bytes());
                d.extend_from_slice(name);
                option_reply(s, option, wire::REP_SERVER, &d)?;
                option_reply(s, option, wire::REP_ACK, &[])?;
                Ok(None)
            }
            wire::OPT_INFO | wire::OPT_GO => {
                let Some(req) = parse_info_request(data) else {
                    let msg = b"malformed GO/INFO data";
                    option_reply(s, option, wire::REP_ERR_INVALID, msg)?;
                    return Ok(None);
                };
                if !self.is_named(req.name) {
                    // The client's name echoed in part: a reply it cannot inflate.
                    let asked = &req.name[..req.name.len().min(64)];
                    let msg = format!(
                        "no export {:?}; this server has only {:?}",
                        String::from_utf8_lossy(asked),
                        self.name
                    );
                    option_reply(s, option, wire::REP_ERR_UNKNOWN, msg.as_bytes())?;
                    return Ok(None);
                }
                let export = wire::encode_info(wire::Info::Export {
                    size,
                    flags: TRANSMISSION_FLAGS,
                });
                option_reply(s, option, wire::REP_INFO, &export)?;
                if req.wants_name {
                    let mut d = wire::INFO_NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(self.name.as_bytes());
                    option_reply(s, option, wire::REP_INFO, &d)?;
                }
                if req.wants_block_size {
                    let block = wire::encode_info(wire::Info::BlockSize {
                        min: 1,
                        preferred: 4096,
                        max: wire::MAX_PAYLOAD,
                    });
                    option_reply(s, option, wire::REP_INFO, &block)?;
                }
                option_reply(s, option, wire::REP_ACK, &[])?;
                Ok((option == wire::OPT_GO).then_some(Negotiation::Transmission))
            }
            _ => {
                let msg = format!("option {option} is not supported");
                option_reply(s, option, wire::REP_ERR_UNSUP, msg.as_bytes())?;
                Ok(None)
            }
        }
    }

    /// The transmission phase: this thread reads requests while workers,
    /// started as READs arrive, serve them.
    fn transmit<R: Read, W: Write + Send>(
        &self,
        r: &mut R,
        w: &mut W,
    ) -> Result<Ended, ServeError> {
        let conn = Transmission {
            export: self,
            size: self.source.size(),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            replies: Mutex::new(Replies { w, error: None }),
            broken: AtomicBool::new(false),
        };
        let ended = std::thread::scope(|scope| {
            let mut workers = Vec::new();
            let ended = conn.read_requests(r, scope, &mut workers);
            conn.close();
            // Joined by hand: the scope alone waits only for their closures,
            // and a thread past that (its thread-locals being freed) would
            // outlive the connection.
            for w in workers {
                // Never an error: workers catch panics (see `work`).
                let _ = w.join();
            }
            ended
        });
        // Every worker is joined: each reply in flight was sent, or failed.
        let failed = conn
            .replies
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .error;
        match (ended, failed) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(e)) => Err(e.into()),
            (Ok(ended), None) => Ok(ended),
        }
    }
}

/// Whether a READ of `len` bytes may join `in_flight` others of `bytes` in
/// all, with `workers` to serve them: one always may, so every legal READ is
/// served.
fn has_room(in_flight: usize, bytes: u64, len: u32, workers: usize) -> bool {
    in_flight == 0
        || (in_flight < workers
            && bytes.saturating_add(u64::from(len)) <= u64::from(wire::MAX_PAYLOAD))
}

/// A READ to serve.
#[derive(Debug, Clone, Copy)]
struct Job {
    cookie: u64,
    offset: u64,
    len: u32,
}

/// The READs of one connection between its reader and its workers.
#[derive(Debug, Default)]
struct Queue {
    /// Queued, not yet taken by a worker.
    jobs: VecDeque<Job>,
    /// Queued or being served: counted until the reply is written.
    in_flight: usize,
    /// The data of those in flight.
    bytes: u64,
    /// Workers started.
    workers: usize,
    /// Workers waiting for a job.
    idle: usize,
    /// No more jobs will come: workers exit once the queue is empty.
    closing: bool,
}

/// The socket's write half, shared by the reader and the workers.
struct Replies<'w, W> {
    w: &'w mut W,
    /// The first write that failed; nothing more is written after it.
    error: Option<io::Error>,
}

/// One connection in transmission.
struct Transmission<'a, W> {
    export: &'a Export,
    size: u64,
    queue: Mutex<Queue>,
    /// Wakes workers: a job was queued, or the connection is closing.
    work: Condvar,
    /// Wakes the reader: a READ finished, so there may be room for another.
    room: Condvar,
    replies: Mutex<Replies<'a, W>>,
    /// A reply could not be written: the reader stops.
    broken: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state whole (source reads run outside
    // them, and a panicking one is caught): a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'a, W: Write + Send> Transmission<'a, W> {
    /// Reads and dispatches requests until the client ends the connection or
    /// breaks it. After a failed write it returns `Closed`; the caller
    /// reports that write's error.
    fn read_requests<'s, R: Read>(
        &'s self,
        r: &mut R,
        scope: &'s Scope<'s, '_>,
        workers: &mut Vec<ScopedJoinHandle<'s, ()>>,
    ) -> Result<Ended, ServeError> {
        let counters = &self.export.counters;
        loop {
            if self.broken.load(Ordering::Acquire) {
                return Ok(Ended::Closed);
            }
            let mut h = [0u8; wire::REQUEST_LEN];
            if !read_or_eof(r, &mut h)? {
                return Ok(Ended::Closed);
            }
            let Some(req) = wire::parse_request(&h) else {
                let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                return Err(ServeError::RequestMagic(magic));
            };
            bump(&counters.requests, 1);
            let in_range = |len: u32| {
                len > 0
                    && len <= wire::MAX_PAYLOAD
                    && req
                        .offset
                        .checked_add(u64::from(len))
                        .is_some_and(|end| end <= self.size)
            };
            let error = match req.command {
                wire::CMD_READ if in_range(req.len) => {
                    self.queue_read(
                        Job {
                            cookie: req.cookie,
                            offset: req.offset,
                            len: req.len,
                        },
                        scope,
                        workers,
                    );
                    continue;
                }
                wire::CMD_READ => wire::NBD_EINVAL,
                wire::CMD_WRITE => {
                    if req.len > wire::MAX_PAYLOAD {
                        return Err(ServeError::WriteTooLong(req.len));
                    }
                    skip(r, u64::from(req.len))?;
                    wire::NBD_EPERM
                }
                wire::CMD_DISC => return Ok(Ended::Disconnected),
                wire::CMD_FLUSH | wire::CMD_CACHE => 0,
                wire::CMD_TRIM | wire::CMD_WRITE_ZEROES => wire::NBD_EPERM,
                _ => wire::NBD_EINVAL,
            };
            if error != 0 {
                bump(&counters.error_replies, 1);
            }
            self.send(&wire::encode_simple_reply(SimpleReply {
                error,
                cookie: req.cookie,
            }));
        }
    }

    /// Queues a READ once there is room, starting a worker if none is free.
    fn queue_read<'s>(
        &'s self,
        job: Job,
        scope: &'s Scope<'s, '_>,
        started: &mut Vec<ScopedJoinHandle<'s, ()>>,
    ) {
        let workers = self.export.workers;
        let mut q = lock(&self.queue);
        while !has_room(q.in_flight, q.bytes, job.len, workers) {
            q = self.room.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        q.in_flight += 1;
        q.bytes += u64::from(job.len);
        q.jobs.push_back(job);
        if q.jobs.len() > q.idle && q.workers < workers {
            // Without a new thread the ones running take it in turn.
            if let Ok(w) = std::thread::Builder::new()
                .name("apf-nbd-read".into())
                .spawn_scoped(scope, move || self.work())
            {
                started.push(w);
                q.workers += 1;
            }
        }
        if q.workers == 0 {
            // No thread could be started at all: serve it here, in order.
            q.jobs.pop_front();
            drop(q);
            self.answer(job);
            self.finished(job);
            return;
        }
        drop(q);
        self.work.notify_one();
    }

    /// A worker: serves queued READs until the connection closes.
    fn work(&self) {
        let mut q = lock(&self.queue);
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                if catch_unwind(AssertUnwindSafe(|| self.answer(job))).is_err() {
                    // Only the writer can panic here (a source's panic is
                    // caught in `answer`): the stream is unusable, and the job
                    // must still leave the in-flight count or the reader
                    // would wait for room forever.
                    self.fail(io::Error::other("writing a reply panicked"));
                }
                self.finished(job);
                q = lock(&self.queue);
            } else if q.closing {
                return;
            } else {
                q.idle += 1;
                q = self.work.wait(q).unwrap_or_else(PoisonError::into_inner);
                q.idle -= 1;
            }
        }
    }

    /// Reads a READ's data from the source and sends its reply.
    fn answer(&self, job: Job) {
        let counters = &self.export.counters;
        // Fresh each time rather than kept per worker, so an idle worker holds
        // no buffer and the bytes in flight bound this connection's memory.
        let mut out = vec![0u8; wire::SIMPLE_REPLY_LEN + job.len as usize];
        let data = &mut out[wire::SIMPLE_REPLY_LEN..];
        // A panicking source fails this READ alone, not the connection and the
        // other replies in flight.
        let read = catch_unwind(AssertUnwindSafe(|| {
            self.export.source.read(job.offset, data)
        }));
        let error = if matches!(read, Ok(Ok(()))) {
            // Counted before the reply goes, so a client that has its data
            // sees it counted.
            bump(&counters.reads, 1);
            bump(&counters.bytes_read, u64::from(job.len));
            0
        } else {
            bump(&counters.error_replies, 1);
            out.truncate(wire::SIMPLE_REPLY_LEN);
            wire::NBD_EIO
        };
        out[..wire::SIMPLE_REPLY_LEN].copy_from_slice(&wire::encode_simple_reply(SimpleReply {
            error,
            cookie: job.cookie,
        }));
        self.send(&out);
    }

    /// A READ's reply is written (or failed): it leaves the in-flight count.
    fn finished(&self, job: Job) {
        let mut q = lock(&self.queue);
        q.in_flight -= 1;
        q.bytes -= u64::from(job.len);
        self.room.notify_one();
    }

    /// Writes one reply whole, header and data together.
    fn send(&self, reply: &[u8]) {
        let mut out = lock(&self.replies);
        if out.error.is_some() {
            return;
        }
        let sent = match out.w.write_all(reply) {
            Ok(()) => out.w.flush(),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            // Under the same lock, so no later reply follows a failed one.
            out.error = Some(e);
            self.broken.store(true, Ordering::Release);
        }
    }

    /// Records the first failed write; the reader stops, nothing more is sent.
    fn fail(&self, e: io::Error) {
        lock(&self.replies).error.get_or_insert(e);
        self.broken.store(true, Ordering::Release);
    }

    /// No more READs: workers finish those queued, then exit.
    fn close(&self) {
        lock(&self.queue).closing = true;
        self.work.notify_all();
    }
}

/// A TCP connection in its handshake: every read and write ends by
/// `deadline` (none when the limit is past what an `Instant` can hold).
#[derive(Clone, Copy)]
struct Deadline<'a> {
    stream: &'a TcpStream,
    deadline: Option<Instant>,
}

impl Deadline<'_> {
    /// The time left, or a time-out error when none is.
    fn left(&self) -> io::Result<Option<Duration>> {
        let Some(d) = self.deadline else {
            return Ok(None);
        };
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(Some(left))
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(self.left()?)?;
        let mut s = self.stream;
        s.read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(self.left()?)?;
        let mut s = self.stream;
        s.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The connections being served.
#[derive(Debug, Default)]
struct Connections {
    /// A second handle on each open socket, to shut it down from outside.
    open: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
    next_id: u64,
    /// Set once: no connection is added after.
    stopping: bool,
}

#[derive(Debug)]
struct Shared {
    export: Export,
    handshake_limit: Duration,
    connections: Mutex<Connections>,
    stop: AtomicBool,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, Connections> {
        // A poisoned lock still holds a consistent table: every change to it is
        // a single insert, remove or push.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn accept_loop(self: &Arc<Self>, listener: &TcpListener) {
        loop {
            let accepted = listener.accept();
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let stream = match accepted {
                Ok((s, _)) => s,
                // Out of descriptors and the like: wait a little rather than
                // spin, then try again.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            bump(&self.export.counters.connections, 1);
            let _ = stream.set_nodelay(true);
            let mut conns = self.connections();
            conns.threads.retain(|t| !t.is_finished());
            if conns.stopping || conns.open.len() >= MAX_CONNECTIONS {
                continue;
            }
            let Ok(handle) = stream.try_clone() else {
                continue;
            };
            let id = conns.next_id;
            conns.next_id += 1;
            conns.open.insert(id, handle);
            let shared = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("apf-nbd-serve".into())
                .spawn(move || {
                    let _ = shared.export.serve_tcp(&stream, shared.handshake_limit);
                    shared.connections().open.remove(&id);
                });
            match spawned {
                Ok(t) => conns.threads.push(t),
                Err(_) => {
                    conns.open.remove(&id);
                }
            }
        }
    }
}

/// A read-only NBD server on a TCP port, serving one export.
#[derive(Debug)]
pub struct NbdServer {
    addr: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl NbdServer {
    /// Listens on `addr` (port 0 picks a free one) and serves `source` as
    /// export `name`, with the default [`ServerConfig`].
    pub fn bind(
        addr: SocketAddr,
        name: String,
        source: Arc<dyn ExportSource>,
    ) -> io::Result<NbdServer> {
        NbdServer::bind_with(addr, name, source, ServerConfig::default())
    }

    /// [`bind`](NbdServer::bind) with `config`; a config out of range is an
    /// `InvalidInput` error saying which field.
    pub fn bind_with(
        addr: SocketAddr,
        name: String,
        source: Arc<dyn ExportSource>,
        config: ServerConfig,
    ) -> io::Result<NbdServer> {
        config.check()?;
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            export: Export::new(name, source).with_workers(config.workers),
            handshake_limit: config.handshake_limit,
            connections: Mutex::new(Connections::default()),
            stop: AtomicBool::new(false),
        });
        let l = listener.try_clone()?;
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("apf-nbd-accept".into())
            .spawn(move || s.accept_loop(&l))?;
        Ok(NbdServer {
            addr,
            listener,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The export's name.
    pub fn export_name(&self) -> &str {
        self.shared.export.name()
    }

    /// What has been served so far.
    pub fn counters(&self) -> ServerCounters {
        self.shared.export.counters()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.connections().open.len()
    }

    /// Stops accepting, closes every connection and joins every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::Release);
        // SAFETY: shutdown(2) on the listening socket this server owns, open
        // until `self` drops; on Linux it wakes the blocked accept(2) with an
        // error, after which the loop sees `stop`.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        let threads = {
            let mut conns = self.shared.connections();
            conns.stopping = true;
            for s in conns.open.values() {
                let _ = s.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut conns.threads)
        };
        let _ = acceptor.join();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_requests_parse_only_when_consistent() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&wire::INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&wire::INFO_NAME.to_be_bytes());
        let r = parse_info_request(&d).expect("well-formed");
        assert_eq!(r.name, b"abc");
        assert!(r.wants_block_size && r.wants_name);
        for cut in 0..d.len() {
            assert!(parse_info_request(&d[..cut]).is_none(), "cut at {cut}");
        }
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert!(parse_info_request(&huge).is_none());
    }

    #[test]
    fn room_is_bounded_by_workers_and_bytes_but_one_read_always_fits() {
        let max = wire::MAX_PAYLOAD;
        assert!(has_room(0, 0, max, 1), "a lone READ of the longest length");
        assert!(has_room(3, 4096 * 3, 4096, 4));
        assert!(!has_room(4, 4096 * 4, 4096, 4), "over the workers");
        assert!(has_room(1, u64::from(max) - 4096, 4096, 4));
        assert!(
            !has_room(1, u64::from(max) - 4095, 4096, 4),
            "over the bytes"
        );
        assert!(!has_room(1, u64::MAX, 1, 4));
    }

    #[test]
    fn configs_out_of_range_are_refused_naming_the_field() {
        for (workers, limit, field) in [
            (0, DEFAULT_HANDSHAKE_LIMIT, "workers"),
            (MAX_WORKERS + 1, DEFAULT_HANDSHAKE_LIMIT, "workers"),
            (1, Duration::ZERO, "handshake limit"),
        ] {
            let c = ServerConfig {
                workers,
                handshake_limit: limit,
            };
            let e = c.check().expect_err("out of range");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(field), "{e}");
        }
        ServerConfig::default()
            .check()
            .expect("the default is valid");
    }

    #[test]
    fn vec_source_refuses_reads_past_its_end() {
        let v = vec![1u8, 2, 3, 4];
        let mut b = [0u8; 2];
        v.read(2, &mut b).expect("in range");
        assert_eq!(b, [3, 4]);
        assert!(v.read(3, &mut b).is_err());
        assert!(v.read(u64::MAX, &mut b).is_err());
    }
}
