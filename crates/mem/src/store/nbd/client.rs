//! The connection: one socket, requests pipelined by any submitting thread, one
//! reader thread that matches replies to requests by cookie and, when the
//! connection breaks, reconnects and re-sends what was in flight.
//!
//! Locks: `writer` (the socket's sending side) is taken before `state` when both
//! are needed, so a request is recorded in flight and sent in one step: either
//! before a reconnect collects the requests to re-send (and is re-sent by it) or
//! after (and sent on the new socket), never both.
//!
//! Limit: after a reconnect the reader writes every request in flight before it
//! reads a reply. That cannot stall while the replies fit in the socket buffers
//! (depth × 4 KiB; loopback and LAN defaults hold depth 32 many times over); a
//! much deeper queue against a server that stops reading could wait out the
//! write timeout and reconnect again.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::handshake::{self, HandshakeError, Negotiated};
use super::url::{NbdTarget, NbdUrl};
use super::wire::{self, Expect};
use crate::store::{IoBuf, IoCompletion, IoError, IoKind, IoRequest};

const PAGE: u32 = 4096;

/// A connected socket, TCP or Unix.
#[derive(Debug)]
pub(super) enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn connect(target: &NbdTarget, timeout: Duration) -> io::Result<Conn> {
        match target {
            NbdTarget::Unix(p) => Ok(Conn::Unix(UnixStream::connect(p)?)),
            NbdTarget::Tcp { host, port } => {
                let mut last =
                    io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            // Requests are small and latency-bound: no Nagle delay.
                            s.set_nodelay(true)?;
                            return Ok(Conn::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
            Conn::Unix(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
        }
    }

    fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    /// Ends the connection for every clone, waking a blocked reader.
    fn shutdown(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn fd(&self) -> RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error("{0}")]
    Connect(io::Error),
    #[error("{0}")]
    Handshake(HandshakeError),
}

/// Connects and runs the handshake, every socket operation bounded by `timeout`.
pub(super) fn open(url: &NbdUrl, timeout: Duration) -> Result<(Conn, Negotiated), OpenError> {
    let mut conn = Conn::connect(&url.target, timeout).map_err(OpenError::Connect)?;
    conn.set_timeouts(timeout, timeout)
        .map_err(OpenError::Connect)?;
    let n = handshake::negotiate(&mut conn, &url.export).map_err(OpenError::Handshake)?;
    Ok((conn, n))
}

/// The client's settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub url: NbdUrl,
    pub read_only: bool,
    pub size: u64,
    pub io_timeout: Duration,
    pub reconnect_timeout: Duration,
}

/// One request in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    tag: u64,
    kind: IoKind,
    slot: u32,
    buf: IoBuf,
}

impl Pending {
    fn op(&self) -> &'static str {
        IoError::op_name(self.kind)
    }
}

/// Whether the connection is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Broken at this instant; requests wait for a reconnect.
    Reconnecting(Instant),
    /// Not back within the reconnect timeout: requests fail at once until it is.
    Down,
}

#[derive(Debug)]
struct State {
    inflight: HashMap<u64, Pending>,
    next_cookie: u64,
    done: VecDeque<IoCompletion>,
    /// When the in-flight set last went from empty to not: the server owes a
    /// reply from then on.
    busy_since: Instant,
    link: Link,
    last_error: Option<String>,
}

/// Counters.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub reconnects: AtomicU64,
    pub remote_errors: AtomicU64,
    pub disconnected_errors: AtomicU64,
}

#[derive(Debug)]
pub(super) struct Shared {
    settings: Settings,
    writer: Mutex<Option<Conn>>,
    state: Mutex<State>,
    /// Signalled when completions are added.
    done_cv: Condvar,
    /// Signalled (under `state`) on shutdown, to end a back-off wait.
    stop_cv: Condvar,
    stop: AtomicBool,
    pub counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Appends a request (and a write's page) to `out`.
fn encode(out: &mut Vec<u8>, cookie: u64, p: &Pending) {
    let command = match p.kind {
        IoKind::Read => wire::CMD_READ,
        IoKind::Write => wire::CMD_WRITE,
    };
    out.extend_from_slice(&wire::encode_request(wire::Request {
        command,
        cookie,
        offset: u64::from(p.slot) * u64::from(PAGE),
        len: PAGE,
    }));
    if p.kind == IoKind::Write {
        let at = out.len();
        out.resize(at + PAGE as usize, 0);
        // SAFETY: IoBuf's contract: the source holds 4096 readable bytes until
        // the request completes, and nothing writes it meanwhile; `out` has room.
        unsafe {
            std::ptr::copy_nonoverlapping(
                p.buf.as_ptr().cast_const(),
                out[at..].as_mut_ptr(),
                PAGE as usize,
            );
        }
    }
}

impl Shared {
    pub(super) fn new(settings: Settings, conn: &Conn) -> io::Result<Shared> {
        conn.set_timeouts(tick(settings.io_timeout), settings.io_timeout)?;
        Ok(Shared {
            writer: Mutex::new(Some(conn.try_clone()?)),
            state: Mutex::new(State {
                inflight: HashMap::new(),
                next_cookie: 1,
                done: VecDeque::new(),
                busy_since: Instant::now(),
                link: Link::Up,
                last_error: None,
            }),
            settings,
            done_cv: Condvar::new(),
            stop_cv: Condvar::new(),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    pub(super) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(super) fn last_error(&self) -> Option<String> {
        lock(&self.state).last_error.clone()
    }

    pub(super) fn is_connected(&self) -> bool {
        lock(&self.state).link == Link::Up
    }

    pub(super) fn submit(&self, reqs: &[IoRequest]) {
        let mut writer = lock(&self.writer);
        let mut out = Vec::new();
        let mut finished = false;
        {
            let mut st = lock(&self.state);
            for r in reqs {
                let end = r.slot.offset().saturating_add(u64::from(PAGE));
                let refuse = if r.kind == IoKind::Write && self.settings.read_only {
                    Some(libc::EROFS)
                } else if end > self.settings.size {
                    Some(libc::EINVAL)
                } else {
                    None
                };
                let op = IoError::op_name(r.kind);
                if let Some(errno) = refuse {
                    st.done.push_back(IoCompletion {
                        tag: r.tag,
                        result: Err(IoError::Os {
                            op,
                            slot: r.slot.0,
                            errno,
                        }),
                    });
                    finished = true;
                    continue;
                }
                if st.link == Link::Down {
                    // Fail fast while the server stays away; the reader keeps
                    // trying and requests flow again once it is back.
                    self.counters
                        .disconnected_errors
                        .fetch_add(1, Ordering::Relaxed);
                    st.done.push_back(IoCompletion {
                        tag: r.tag,
                        result: Err(IoError::Disconnected {
                            op,
                            slot: r.slot.0,
                            after: self.settings.reconnect_timeout,
                        }),
                    });
                    finished = true;
                    continue;
                }
                let cookie = st.next_cookie;
                st.next_cookie = st.next_cookie.wrapping_add(1).max(1);
                if st.inflight.is_empty() {
                    st.busy_since = Instant::now();
                }
                let p = Pending {
                    tag: r.tag,
                    kind: r.kind,
                    slot: r.slot.0,
                    buf: r.buf,
                };
                st.inflight.insert(cookie, p);
                if writer.is_some() {
                    encode(&mut out, cookie, &p);
                }
            }
        }
        if finished {
            self.done_cv.notify_all();
        }
        if let Some(conn) = writer.as_mut()
            && !out.is_empty()
            && let Err(e) = conn.write_all(&out)
        {
            // The reader sees the shutdown, reconnects and re-sends these.
            lock(&self.state).last_error = Some(format!("sending requests: {e}"));
            conn.shutdown();
            *writer = None;
        }
    }

    pub(super) fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        let mut st = lock(&self.state);
        if let Some(d) = wait
            && st.done.is_empty()
        {
            st = self
                .done_cv
                .wait_timeout(st, d)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let n = st.done.len();
        out.extend(st.done.drain(..));
        n
    }

    /// Stops the reader: a DISC if connected, then the socket closed.
    pub(super) fn shut(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(mut conn) = lock(&self.writer).take() {
            let disc = wire::encode_request(wire::Request {
                command: wire::CMD_DISC,
                cookie: 0,
                offset: 0,
                len: 0,
            });
            let _ = conn.write_all(&disc);
            conn.shutdown();
        }
        let _st = lock(&self.state);
        self.stop_cv.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The reader thread: serves the connection, and reconnects when it breaks,
    /// until shut down.
    pub(super) fn run(self: Arc<Self>, mut conn: Conn) {
        loop {
            let why = self.serve(&conn);
            conn.shutdown();
            if self.stopping() {
                return;
            }
            let broken_at = Instant::now();
            {
                *lock(&self.writer) = None;
                let mut st = lock(&self.state);
                st.last_error = Some(why);
                if st.link == Link::Up {
                    st.link = Link::Reconnecting(broken_at);
                }
            }
            match self.reconnect(broken_at) {
                Some(c) => conn = c,
                None => return,
            }
        }
    }

    /// Reads replies until the connection breaks (returns why).
    fn serve(&self, conn: &Conn) -> String {
        let mut last_rx = Instant::now();
        loop {
            let mut header = [0u8; wire::SIMPLE_REPLY_LEN];
            if let Err(e) = self.recv_exact(conn, header.as_mut_ptr(), header.len(), &mut last_rx) {
                return e;
            }
            let mut buf = None;
            let action = {
                let st = lock(&self.state);
                wire::check_reply(&header, |cookie| {
                    let p = st.inflight.get(&cookie)?;
                    buf = Some(p.buf);
                    Some(match p.kind {
                        IoKind::Read => Expect::Read(PAGE),
                        IoKind::Write => Expect::NoPayload,
                    })
                })
            };
            let action = match action {
                Ok(a) => a,
                Err(e) => return format!("bad reply: {e}"),
            };
            if action.payload > 0
                && let Some(buf) = buf
            {
                // check_reply never asks for more than the request's 4096 bytes,
                // which is the buffer's size.
                let len = action.payload.min(PAGE) as usize;
                if let Err(e) = self.recv_exact(conn, buf.as_ptr(), len, &mut last_rx) {
                    return e;
                }
            }
            if action.error == wire::NBD_ESHUTDOWN {
                // The server is going away: the request stays in flight and is
                // re-sent after the reconnect.
                return "the server is shutting down (NBD_ESHUTDOWN)".into();
            }
            let mut st = lock(&self.state);
            if let Some(p) = st.inflight.remove(&action.cookie) {
                let result = if action.error == 0 {
                    Ok(())
                } else {
                    self.counters.remote_errors.fetch_add(1, Ordering::Relaxed);
                    Err(IoError::Remote {
                        op: p.op(),
                        slot: p.slot,
                        error: action.error,
                        errno: wire::errno_of(action.error),
                    })
                };
                st.done.push_back(IoCompletion { tag: p.tag, result });
                drop(st);
                self.done_cv.notify_all();
            }
        }
    }

    /// Receives exactly `len` bytes to `ptr`, waking every tick to notice a
    /// shutdown or a server that owes replies and has been silent for the I/O
    /// timeout.
    fn recv_exact(
        &self,
        conn: &Conn,
        ptr: *mut u8,
        len: usize,
        last_rx: &mut Instant,
    ) -> Result<(), String> {
        let mut got = 0;
        while got < len {
            if self.stopping() {
                return Err("shut down".into());
            }
            // SAFETY: `ptr` is valid for `len` bytes: a local header, or a read
            // request's 4096-byte IoBuf, which is ours until its completion.
            let n = unsafe {
                libc::recv(
                    conn.fd(),
                    ptr.wrapping_add(got).cast::<libc::c_void>(),
                    len - got,
                    0,
                )
            };
            match usize::try_from(n) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => {
                    got += n;
                    *last_rx = Instant::now();
                }
                Err(_) => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            let st = lock(&self.state);
                            let owed_since = (*last_rx).max(st.busy_since);
                            if (!st.inflight.is_empty() || got > 0)
                                && owed_since.elapsed() >= self.settings.io_timeout
                            {
                                return Err(format!(
                                    "no reply for {:?} with requests in flight",
                                    self.settings.io_timeout
                                ));
                            }
                        }
                        _ => return Err(format!("receiving: {e}")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Reconnects with back-off; past the reconnect timeout, fails what is in
    /// flight and keeps trying. `None` when shut down.
    fn reconnect(&self, broken_at: Instant) -> Option<Conn> {
        let mut backoff = Duration::from_millis(5);
        let mut failed = false;
        loop {
            if self.stopping() {
                return None;
            }
            let remaining = self
                .settings
                .reconnect_timeout
                .saturating_sub(broken_at.elapsed());
            if remaining.is_zero() && !failed {
                self.fail_all();
                failed = true;
            }
            let attempt = if failed {
                self.settings.io_timeout.min(Duration::from_secs(1))
            } else {
                remaining.clamp(Duration::from_millis(100), self.settings.io_timeout)
            };
            match open(&self.settings.url, attempt) {
                Ok((conn, n)) if n.size >= self.settings.size => {
                    if let Some(c) = self.install(conn) {
                        return Some(c);
                    }
                }
                Ok((_, n)) => {
                    lock(&self.state).last_error = Some(format!(
                        "after reconnecting, the export holds {} bytes, fewer than the {} before",
                        n.size, self.settings.size
                    ));
                }
                Err(e) => lock(&self.state).last_error = Some(format!("reconnecting: {e}")),
            }
            let wait = if failed {
                backoff
            } else {
                backoff.min(remaining)
            };
            let st = lock(&self.state);
            if self.stopping() {
                return None;
            }
            // Not synchronisation: a back-off between attempts, cut short by shutdown.
            drop(
                self.stop_cv
                    .wait_timeout(st, wait)
                    .unwrap_or_else(PoisonError::into_inner),
            );
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Makes `conn` the connection and re-sends every request in flight, in
    /// cookie order. Returns the reading side.
    fn install(&self, conn: Conn) -> Option<Conn> {
        let io_timeout = self.settings.io_timeout;
        if conn.set_timeouts(tick(io_timeout), io_timeout).is_err() {
            return None;
        }
        let mut writer_side = conn.try_clone().ok()?;
        let mut writer = lock(&self.writer);
        let mut out = Vec::new();
        {
            let mut st = lock(&self.state);
            let mut pending: Vec<(u64, Pending)> =
                st.inflight.iter().map(|(c, p)| (*c, *p)).collect();
            pending.sort_unstable_by_key(|(c, _)| *c);
            for (cookie, p) in &pending {
                encode(&mut out, *cookie, p);
            }
            st.link = Link::Up;
            st.busy_since = Instant::now();
        }
        self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = writer_side.write_all(&out) {
            lock(&self.state).last_error = Some(format!("re-sending requests: {e}"));
            // The reader finds the connection shut and tries again.
            writer_side.shutdown();
            return Some(conn);
        }
        *writer = Some(writer_side);
        Some(conn)
    }

    /// The reconnect timeout passed: everything in flight fails.
    fn fail_all(&self) {
        let mut st = lock(&self.state);
        st.link = Link::Down;
        let after = self.settings.reconnect_timeout;
        let pending: Vec<Pending> = st.inflight.drain().map(|(_, p)| p).collect();
        for p in pending {
            self.counters
                .disconnected_errors
                .fetch_add(1, Ordering::Relaxed);
            st.done.push_back(IoCompletion {
                tag: p.tag,
                result: Err(IoError::Disconnected {
                    op: p.op(),
                    slot: p.slot,
                    after,
                }),
            });
        }
        drop(st);
        self.done_cv.notify_all();
    }
}

/// How often a blocked reader wakes to check for shutdown and stalls.
fn tick(io_timeout: Duration) -> Duration {
    (io_timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}
