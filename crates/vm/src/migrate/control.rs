//! The source's end of the control stream: one request at a time, each sent
//! again on a new connection if the old one breaks, until the destination
//! answers or the reconnect window passes.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::wire::{FrameError, Reply, Request, read_frame, write_frame};
use crate::error::MigrateError;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between reconnection attempts (pacing, not synchronisation).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The longest a reply may take: the copy of a large round, or the whole
/// post-copy for AwaitComplete, is well under it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// A control connection to a destination that survives broken connections.
#[derive(Debug)]
pub(crate) struct ControlClient {
    label: String,
    addr: SocketAddr,
    session: u64,
    stream: Option<TcpStream>,
    window: Duration,
    /// Connections made after the first.
    pub(crate) reconnects: u64,
}

impl ControlClient {
    /// Connects to `addr` and says hello; errors here are the caller's input.
    pub(crate) fn connect(
        addr: &str,
        session: u64,
        window: Duration,
    ) -> Result<ControlClient, MigrateError> {
        let resolved = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| MigrateError::Address(addr.to_string()))?;
        let mut c = ControlClient {
            label: addr.to_string(),
            addr: resolved,
            session,
            stream: None,
            window,
            reconnects: 0,
        };
        c.open().map_err(|e| match e {
            Attempt::Io(source) => MigrateError::Connect {
                addr: addr.to_string(),
                source,
            },
            Attempt::Refused(why) => MigrateError::Refused {
                addr: addr.to_string(),
                why,
            },
            Attempt::Garbled(e) => MigrateError::NotApf {
                addr: addr.to_string(),
                what: e.to_string(),
            },
        })?;
        Ok(c)
    }

    /// The local address of the connection (the interface the destination
    /// reaches this host by).
    pub(crate) fn local_ip(&self) -> Option<std::net::IpAddr> {
        self.stream
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .map(|a| a.ip())
    }

    fn open(&mut self) -> Result<(), Attempt> {
        let mut s = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT).map_err(Attempt::Io)?;
        s.set_nodelay(true).map_err(Attempt::Io)?;
        s.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(Attempt::Io)?;
        let hello = Request::Hello {
            session: self.session,
            apf_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        write_frame(&mut s, &hello).map_err(Attempt::Io)?;
        match read_frame::<Reply>(&mut s) {
            Ok(Reply::Welcome { .. }) => {}
            Ok(Reply::Refused(why)) => return Err(Attempt::Refused(why)),
            Ok(other) => {
                return Err(Attempt::Refused(format!("answered hello with {other:?}")));
            }
            Err(FrameError::Io(e)) => return Err(Attempt::Io(e)),
            Err(e) => return Err(Attempt::Garbled(e)),
        }
        self.stream = Some(s);
        Ok(())
    }

    fn try_call(&mut self, req: &Request) -> Result<Reply, Attempt> {
        if self.stream.is_none() {
            self.open()?;
            self.reconnects += 1;
        }
        let s = self
            .stream
            .as_mut()
            .ok_or(Attempt::Io(std::io::Error::other("no stream")))?;
        write_frame(s, req).map_err(Attempt::Io)?;
        match read_frame::<Reply>(s) {
            Ok(Reply::Refused(why)) => Err(Attempt::Refused(why)),
            Ok(r) => Ok(r),
            Err(FrameError::Io(e)) => Err(Attempt::Io(e)),
            Err(e) => Err(Attempt::Garbled(e)),
        }
    }

    /// Closes the connection: the destination takes it as "the answer
    /// arrived".
    pub(crate) fn close(&mut self) {
        self.stream = None;
    }

    /// Sends `req` once, on the open connection or a new one; no retry.
    pub(crate) fn call_once(&mut self, req: &Request) -> Option<Reply> {
        let r = self.try_call(req).ok();
        if r.is_none() {
            self.stream = None;
        }
        r
    }

    /// Sends `req` and returns the reply. A broken connection is reopened and
    /// the request sent again (the destination treats a repeat as the same
    /// request) until the reconnect window passes.
    pub(crate) fn call(
        &mut self,
        req: &Request,
        during: &'static str,
    ) -> Result<Reply, MigrateError> {
        let mut broke_at: Option<Instant> = None;
        loop {
            match self.try_call(req) {
                Ok(r) => return Ok(r),
                Err(Attempt::Refused(why)) => {
                    return Err(MigrateError::Refused {
                        addr: self.label.clone(),
                        why,
                    });
                }
                Err(e) => {
                    self.stream = None;
                    let since = *broke_at.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.window {
                        return Err(MigrateError::Lost {
                            addr: self.label.clone(),
                            during,
                            after: self.window,
                            last: e.to_string(),
                        });
                    }
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }
}

/// One attempt's failure.
#[derive(Debug)]
enum Attempt {
    Io(std::io::Error),
    Refused(String),
    Garbled(FrameError),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Io(e) => write!(f, "{e}"),
            Attempt::Refused(why) => write!(f, "refused: {why}"),
            Attempt::Garbled(e) => write!(f, "{e}"),
        }
    }
}
