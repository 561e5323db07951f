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
//! Each connection answers its requests one at a time, in order: a client
//! may pipeline, the server does not (it never reads ahead of the reply it is
//! writing). Several connections run in parallel (`CAN_MULTI_CONN`).
//!
//! A hostile client is bounded: option data over 16 KiB is skipped unread and
//! refused; a request over [`wire::MAX_PAYLOAD`] is refused (a WRITE's payload
//! that long closes the connection, its framing being unrecoverable without
//! reading it); a bad magic closes that connection only; at most
//! [`MAX_CONNECTIONS`] connections at once.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::wire::{self, OptionReply, SimpleReply};

/// Connections served at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 64;

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
    /// Connections closed because the client broke the protocol.
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
}

/// One named export and its counters; [`serve`](Export::serve) speaks NBD
/// over one connection.
pub struct Export {
    name: String,
    source: Arc<dyn ExportSource>,
    counters: Counters,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.source.size())
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
    /// An export called `name` serving `source`.
    pub fn new(name: String, source: Arc<dyn ExportSource>) -> Export {
        Export {
            name,
            source,
            counters: Counters::default(),
        }
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

    /// Serves one connection from the greeting to its end.
    pub fn serve<S: Read + Write>(&self, s: &mut S) -> Result<Ended, ServeError> {
        let r = match self.negotiate(s) {
            Ok(Negotiation::Transmission) => self.transmit(s),
            Ok(Negotiation::Aborted) => Ok(Ended::Aborted),
            Err(e) => Err(e),
        };
        if matches!(&r, Err(e) if !matches!(e, ServeError::Io(_))) {
            bump(&self.counters.protocol_errors, 1);
        }
        r
    }

    fn negotiate<S: Read + Write>(&self, s: &mut S) -> Result<Negotiation, ServeError> {
        s.write_all(&wire::encode_greeting(HANDSHAKE_FLAGS))?;
        s.flush()?;
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags)?;
        let flags = u32::from_be_bytes(flags);
        if flags & !(wire::CLIENT_FIXED_NEWSTYLE | wire::CLIENT_NO_ZEROES) != 0 {
            return Err(ServeError::ClientFlags(flags));
        }
        let no_zeroes = flags & wire::CLIENT_NO_ZEROES != 0;
        loop {
            let mut h = [0u8; 16];
            s.read_exact(&mut h)?;
            let magic = u64::from_be_bytes(h[0..8].try_into().unwrap_or_default());
            if magic != wire::IHAVEOPT {
                return Err(ServeError::OptionMagic(magic));
            }
            let option = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            let len = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
            if len > MAX_OPTION_DATA {
                skip(s, u64::from(len))?;
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
            s.read_exact(&mut data)?;
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

    fn transmit<S: Read + Write>(&self, s: &mut S) -> Result<Ended, ServeError> {
        let size = self.source.size();
        // Reply header and READ data, reused: at most MAX_PAYLOAD + 16 bytes.
        let mut out: Vec<u8> = Vec::new();
        loop {
            let mut h = [0u8; wire::REQUEST_LEN];
            if !read_or_eof(s, &mut h)? {
                return Ok(Ended::Closed);
            }
            let Some(req) = wire::parse_request(&h) else {
                let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                return Err(ServeError::RequestMagic(magic));
            };
            bump(&self.counters.requests, 1);
            let in_range = |len: u32| {
                len > 0
                    && len <= wire::MAX_PAYLOAD
                    && req
                        .offset
                        .checked_add(u64::from(len))
                        .is_some_and(|end| end <= size)
            };
            let error = match req.command {
                wire::CMD_READ if in_range(req.len) => {
                    let len = req.len as usize;
                    out.clear();
                    out.resize(wire::SIMPLE_REPLY_LEN + len, 0);
                    match self
                        .source
                        .read(req.offset, &mut out[wire::SIMPLE_REPLY_LEN..])
                    {
                        Ok(()) => {
                            let header = wire::encode_simple_reply(SimpleReply {
                                error: 0,
                                cookie: req.cookie,
                            });
                            out[..wire::SIMPLE_REPLY_LEN].copy_from_slice(&header);
                            // Counted before the reply goes, so a client that
                            // has its data sees it counted.
                            bump(&self.counters.reads, 1);
                            bump(&self.counters.bytes_read, u64::from(req.len));
                            s.write_all(&out)?;
                            s.flush()?;
                            continue;
                        }
                        Err(_) => wire::NBD_EIO,
                    }
                }
                wire::CMD_READ => wire::NBD_EINVAL,
                wire::CMD_WRITE => {
                    if req.len > wire::MAX_PAYLOAD {
                        return Err(ServeError::WriteTooLong(req.len));
                    }
                    skip(s, u64::from(req.len))?;
                    wire::NBD_EPERM
                }
                wire::CMD_DISC => return Ok(Ended::Disconnected),
                wire::CMD_FLUSH | wire::CMD_CACHE => 0,
                wire::CMD_TRIM | wire::CMD_WRITE_ZEROES => wire::NBD_EPERM,
                _ => wire::NBD_EINVAL,
            };
            if error != 0 {
                bump(&self.counters.error_replies, 1);
            }
            s.write_all(&wire::encode_simple_reply(SimpleReply {
                error,
                cookie: req.cookie,
            }))?;
            s.flush()?;
        }
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
                    let _ = shared.export.serve(&mut &stream);
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
    /// export `name`.
    pub fn bind(
        addr: SocketAddr,
        name: String,
        source: Arc<dyn ExportSource>,
    ) -> io::Result<NbdServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            export: Export::new(name, source),
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
    fn vec_source_refuses_reads_past_its_end() {
        let v = vec![1u8, 2, 3, 4];
        let mut b = [0u8; 2];
        v.read(2, &mut b).expect("in range");
        assert_eq!(b, [3, 4]);
        assert!(v.read(3, &mut b).is_err());
        assert!(v.read(u64::MAX, &mut b).is_err());
    }
}
