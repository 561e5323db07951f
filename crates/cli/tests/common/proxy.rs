//! A TCP proxy a test controls: it forwards connections to a target until a
//! rule cuts them all, then refuses a given number of new connections (accepts
//! and closes them at once) before forwarding again, or refuses for good.
//! Nothing here waits on time: the cut comes at a byte or frame count, and the
//! outage lasts a count of refused attempts.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// When the proxy cuts every connection.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Once this many bytes have gone from the target to clients.
    AfterBytesBack(u64),
    /// On the first connection, once this many apf control frames have gone to
    /// the target, and then `extra` bytes of the next (0: a whole request
    /// arrives, its reply never does; more: the next request arrives cut).
    AfterFrames { frames: u32, extra: usize },
}

/// What the proxy does after the cut.
#[derive(Debug, Clone, Copy)]
pub enum Outage {
    /// Refuses this many connections, then forwards again.
    Refuse(u32),
    /// Refuses every connection from then on (the target is gone).
    Forever,
}

#[derive(Debug)]
struct State {
    target: SocketAddr,
    cut: Cut,
    outage: Outage,
    done: AtomicBool,
    refused: AtomicU32,
    back: AtomicU64,
    connections: AtomicU32,
    /// Replies of the first connection are dropped from here on.
    silent: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

impl State {
    fn cut_all(&self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        for s in self.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A running proxy; it lives as long as the test (its threads end with the
/// process).
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    pub fn start(target: SocketAddr, cut: Cut, outage: Outage) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(State {
            target,
            cut,
            outage,
            done: AtomicBool::new(false),
            refused: AtomicU32::new(0),
            back: AtomicU64::new(0),
            connections: AtomicU32::new(0),
            silent: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if s.done.load(Ordering::SeqCst) {
                    let refuse = match s.outage {
                        Outage::Forever => true,
                        Outage::Refuse(n) => s.refused.load(Ordering::SeqCst) < n,
                    };
                    if refuse {
                        s.refused.fetch_add(1, Ordering::SeqCst);
                        drop(client);
                        continue;
                    }
                }
                let Ok(server) = TcpStream::connect(s.target) else {
                    continue;
                };
                let first = s.connections.fetch_add(1, Ordering::SeqCst) == 0;
                forward(&s, client, server, first);
            }
        });
        Proxy { addr, state }
    }

    /// Whether the cut happened.
    pub fn was_cut(&self) -> bool {
        self.state.done.load(Ordering::SeqCst)
    }

    /// Connections refused after the cut.
    pub fn refused(&self) -> u32 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Connections forwarded.
    pub fn connections(&self) -> u32 {
        self.state.connections.load(Ordering::SeqCst)
    }
}

fn forward(state: &Arc<State>, client: TcpStream, server: TcpStream, first: bool) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let armed = !state.done.load(Ordering::SeqCst);
    {
        let mut open = state.open.lock().expect("lock");
        if armed {
            open.push(client.try_clone().expect("clone"));
            open.push(server.try_clone().expect("clone"));
        }
    }
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let up = Arc::clone(state);
    std::thread::spawn(move || match up.cut {
        Cut::AfterFrames { frames, extra } if first && armed => {
            pump_frames(&up, client, server, frames, extra);
        }
        _ => pump(&up, client, server, false),
    });
    let back = Arc::clone(state);
    std::thread::spawn(move || pump(&back, s2, c2, armed));
}

/// Copies `from` to `to` until either closes; counts bytes going back to
/// clients for an AfterBytesBack rule.
fn pump(state: &State, mut from: TcpStream, mut to: TcpStream, back: bool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if back && state.silent.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if back
            && let Cut::AfterBytesBack(limit) = state.cut
            && state.back.fetch_add(n as u64, Ordering::SeqCst) + n as u64 >= limit
        {
            state.cut_all();
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Forwards whole apf control frames (16-byte header, the payload's length at
/// bytes 8..12) until the rule's count, then cuts.
fn pump_frames(state: &State, mut from: TcpStream, mut to: TcpStream, frames: u32, extra: usize) {
    let mut sent = 0;
    loop {
        let mut header = [0u8; 16];
        if from.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let mut frame = header.to_vec();
        frame.resize(16 + len, 0);
        if from.read_exact(&mut frame[16..]).is_err() {
            break;
        }
        let last = sent + 1 == frames && extra == 0;
        if sent == frames {
            // The next request, cut short.
            let _ = to.write_all(&frame[..extra.min(frame.len() - 1)]);
            state.cut_all();
            break;
        }
        if last {
            // Its reply must never come back.
            state.silent.store(true, Ordering::SeqCst);
        }
        if to.write_all(&frame).is_err() {
            break;
        }
        sent += 1;
        if last {
            state.cut_all();
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
