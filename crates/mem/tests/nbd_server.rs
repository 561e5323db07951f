//! apf's NBD server against apf's own client, a hand-driven client for the
//! refusals and the order of replies, sources that hold reads until the test
//! lets them go (concurrency without timing), and real clients (`qemu-img`,
//! `nbdinfo`). A missing client binary
//! skips its test with a printed reason, unless APF_REQUIRE_NBD=1 (CI), which
//! makes it a failure.

#[path = "common/servers.rs"]
mod servers;

use servers::have;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use apf_abi::{Gpa, PAGE_SIZE};
use apf_mem::store::nbd::handshake::{self, HandshakeError};
use apf_mem::store::nbd::server::{DEFAULT_WORKERS, ServerConfig};
use apf_mem::store::nbd::wire::{self, Request, SimpleReply};
use apf_mem::store::{
    ExportSource, FileStore, FileStoreConfig, IoBuf, IoCompletion, IoError, IoKind, IoRequest,
    NbdConfig, NbdError, NbdServer, NbdStore, NbdUrl, Slot, Store,
};
use apf_mem::{GuestMemory, GuestRamSource, MemConfig};

const EXPORT: &str = "ram";

/// Bytes that differ in every 8-byte word and every page.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn serve(source: Arc<dyn ExportSource>) -> NbdServer {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    NbdServer::bind(any, EXPORT.to_string(), source).expect("bind the NBD server")
}

fn serve_with(source: Arc<dyn ExportSource>, config: ServerConfig) -> NbdServer {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    NbdServer::bind_with(any, EXPORT.to_string(), source, config).expect("bind the NBD server")
}

/// How long a held read waits before the test calls the server stuck: a
/// failure detector only, which a passing run never reaches.
const STUCK: Duration = Duration::from_secs(20);

/// Serves `data`, each read held inside until `together` reads are inside at
/// once: they complete only if the server serves that many concurrently. A
/// read held for [`STUCK`] fails, and so does every read after it.
struct Latch {
    data: Vec<u8>,
    together: usize,
    state: Mutex<LatchState>,
    opened: Condvar,
}

#[derive(Default)]
struct LatchState {
    inside: usize,
    peak: usize,
    open: bool,
    stuck: bool,
}

impl Latch {
    fn new(data: Vec<u8>, together: usize) -> Latch {
        Latch {
            data,
            together,
            state: Mutex::default(),
            opened: Condvar::new(),
        }
    }

    /// The most reads that were inside at once.
    fn peak(&self) -> usize {
        self.state.lock().unwrap().peak
    }
}

impl ExportSource for Latch {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.inside += 1;
        st.peak = st.peak.max(st.inside);
        if st.inside >= self.together {
            st.open = true;
            self.opened.notify_all();
        }
        let (mut st, _) = self
            .opened
            .wait_timeout_while(st, STUCK, |s| !s.open && !s.stuck)
            .unwrap();
        st.inside -= 1;
        if !st.open {
            st.stuck = true;
            return Err(io::Error::other(format!(
                "at most {} reads were served at once, not {}",
                st.peak, self.together
            )));
        }
        drop(st);
        ExportSource::read(&self.data, offset, buf)
    }
}

/// Serves `data`; the read at `offsets[i]` is held until the test has let
/// `i` through ([`Turnstile::let_through`] lowers the bar), so the test
/// chooses the order reads finish in. Other offsets pass freely. A read held
/// for [`STUCK`] fails, and so does every held read after it.
struct Turnstile {
    data: Vec<u8>,
    offsets: Vec<u64>,
    /// Reads of index at least `.0` pass; none is held once `.1` (stuck).
    bar: Mutex<(usize, bool)>,
    lowered: Condvar,
}

impl Turnstile {
    fn new(data: Vec<u8>, offsets: Vec<u64>, bar: usize) -> Turnstile {
        Turnstile {
            data,
            offsets,
            bar: Mutex::new((bar, false)),
            lowered: Condvar::new(),
        }
    }

    fn let_through(&self, i: usize) {
        self.bar.lock().unwrap().0 = i;
        self.lowered.notify_all();
    }
}

impl ExportSource for Turnstile {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if let Some(i) = self.offsets.iter().position(|&o| o == offset) {
            let bar = self.bar.lock().unwrap();
            let (mut bar, _) = self
                .lowered
                .wait_timeout_while(bar, STUCK, |&mut (at, stuck)| at > i && !stuck)
                .unwrap();
            if bar.0 > i {
                bar.1 = true;
                return Err(io::Error::other(format!("read {i} was never let through")));
            }
        }
        ExportSource::read(&self.data, offset, buf)
    }
}

fn url(server: &NbdServer, export: &str) -> String {
    format!("nbd://{}/{export}", server.local_addr())
}

fn connect(server: &NbdServer, export: &str) -> Result<NbdStore, NbdError> {
    let mut c = NbdConfig::new(NbdUrl::parse(&url(server, export)).unwrap());
    c.read_only = true;
    c.queue_depth = 32;
    NbdStore::connect(&c)
}

#[repr(C, align(4096))]
#[derive(Clone)]
struct Page([u8; 4096]);

/// Reads every page of the export through `store`, `depth` requests in flight,
/// and checks each against `want`.
fn read_all_and_check(store: &NbdStore, want: &[u8], depth: usize) {
    let pages = want.len() / 4096;
    let n = u32::try_from(pages).unwrap();
    // Out of order, so requests complete out of sequence.
    let slots: Vec<u32> = (0..n).map(|i| (i * 7919) % n).collect();
    let mut bufs = vec![Page([0; 4096]); pages];
    let reqs: Vec<IoRequest> = slots
        .iter()
        .zip(bufs.iter_mut())
        .enumerate()
        .map(|(i, (&s, b))| {
            let p = NonNull::from(&mut b.0).cast::<u8>();
            IoRequest {
                tag: i as u64,
                kind: IoKind::Read,
                slot: Slot(s),
                // SAFETY: an aligned 4096-byte buffer that outlives every
                // request: all completions are collected below before `bufs`
                // is read or dropped.
                buf: unsafe { IoBuf::new(p) },
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut results: HashMap<u64, Result<(), IoError>> = HashMap::new();
    let (mut next, mut in_flight) = (0, 0);
    let mut out = Vec::new();
    while results.len() < reqs.len() {
        let n = (depth - in_flight).min(reqs.len() - next);
        if n > 0 {
            store.submit(&reqs[next..next + n]);
            next += n;
            in_flight += n;
        }
        out.clear();
        store.complete(&mut out, Some(Duration::from_millis(100)));
        for IoCompletion { tag, result } in out.drain(..) {
            assert!(results.insert(tag, result).is_none(), "tag {tag} twice");
            in_flight -= 1;
        }
        assert!(Instant::now() < deadline, "reads did not complete in 60 s");
    }
    for (i, &s) in slots.iter().enumerate() {
        assert_eq!(results[&(i as u64)], Ok(()), "read of slot {s}");
        let at = s as usize * 4096;
        assert!(
            bufs[i].0[..] == want[at..at + 4096],
            "slot {s} read back wrong"
        );
    }
}

/// Guest memory of `ram` bytes with `budget` bytes resident at most, swapping
/// to a file, holding `data` from the start of RAM (the rest never touched).
fn guest_memory(ram: u64, budget: u64, data: &[u8]) -> Arc<GuestMemory> {
    let store = FileStore::open(&FileStoreConfig {
        queue_depth: 32,
        capacity: u32::try_from(ram / PAGE_SIZE).unwrap(),
        ..FileStoreConfig::default()
    })
    .expect("swap file");
    let base = 0x4000_0000;
    let mem = GuestMemory::new(MemConfig::new(base, ram, budget), Box::new(store)).unwrap();
    for (i, chunk) in data.chunks(64 * 1024).enumerate() {
        let at = Gpa(base + (i * 64 * 1024) as u64);
        mem.write_bytes(at, chunk).expect("write guest RAM");
    }
    mem
}

#[test]
fn own_client_reads_a_pattern_from_memory_at_depth_32() {
    let data = pattern(8 << 20, 1);
    let server = serve(Arc::new(data.clone()));
    let store = connect(&server, EXPORT).expect("connect");
    assert_eq!(store.export_size(), data.len() as u64);
    assert!(store.is_read_only());
    read_all_and_check(&store, &data, 32);
    drop(store);
    let c = server.counters();
    assert_eq!(c.connections, 1);
    assert_eq!(c.reads, 2048);
    assert_eq!(c.bytes_read, data.len() as u64);
    assert_eq!((c.error_replies, c.protocol_errors), (0, 0));
}

#[test]
fn one_connection_serves_as_many_reads_at_once_as_it_has_workers() {
    // Each read is held until all are inside the source together: a server
    // serving one at a time fails them (EIO) after STUCK.
    let k = DEFAULT_WORKERS;
    let data = pattern(k * 4096, 11);
    let latch = Arc::new(Latch::new(data.clone(), k));
    let server = serve(Arc::clone(&latch) as Arc<dyn ExportSource>);
    let store = connect(&server, EXPORT).expect("connect");
    read_all_and_check(&store, &data, k);
    assert_eq!(latch.peak(), k);
    drop(store);
    let c = server.counters();
    assert_eq!((c.connections, c.reads), (1, k as u64));
    assert_eq!((c.error_replies, c.protocol_errors), (0, 0));
}

#[test]
fn a_connection_never_serves_more_reads_at_once_than_its_workers() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let none = ServerConfig {
        workers: 0,
        ..ServerConfig::default()
    };
    let e = NbdServer::bind_with(any, EXPORT.into(), Arc::new(vec![0u8; 4096]), none)
        .expect_err("0 workers");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("workers"), "{e}");
    // 4 workers, 12 reads pipelined: 4 are served together (the latch opens
    // only then), never more, and the rest wait their turn.
    let data = pattern(12 * 4096, 12);
    let latch = Arc::new(Latch::new(data.clone(), 4));
    let four = ServerConfig {
        workers: 4,
        ..ServerConfig::default()
    };
    let server = serve_with(Arc::clone(&latch) as Arc<dyn ExportSource>, four);
    let store = connect(&server, EXPORT).expect("connect");
    read_all_and_check(&store, &data, 12);
    assert_eq!(latch.peak(), 4);
    assert_eq!(server.counters().reads, 12);
}

/// Pipelined READs on one socket as `(offset, len)`, cookies 100 and up.
fn send_reads(s: &mut TcpStream, reads: &[(u64, u32)]) {
    let mut all = Vec::new();
    for (i, &(offset, len)) in reads.iter().enumerate() {
        all.extend_from_slice(&wire::encode_request(Request {
            command: wire::CMD_READ,
            cookie: 100 + i as u64,
            offset,
            len,
        }));
    }
    s.write_all(&all).unwrap();
}

#[test]
fn replies_come_back_out_of_order_each_with_its_own_data() {
    let data = pattern(256 << 10, 13);
    // Lengths that differ, so a reply whose data strayed would misframe.
    let reads: Vec<(u64, u32)> = (0..8u32)
        .map(|i| (u64::from(i) * 30_001, 1000 + 1313 * i))
        .collect();
    let k = reads.len();
    // Only the last read passes at first; each reply received lets the one
    // before it through, so the replies can only come back last first.
    let gate = Arc::new(Turnstile::new(
        data.clone(),
        reads.iter().map(|r| r.0).collect(),
        k - 1,
    ));
    let server = serve(Arc::clone(&gate) as Arc<dyn ExportSource>);
    let mut s = transmission(&server);
    s.set_read_timeout(Some(2 * STUCK)).unwrap();
    send_reads(&mut s, &reads);
    for i in (0..k).rev() {
        assert_eq!(
            reply(&mut s),
            SimpleReply {
                error: 0,
                cookie: 100 + i as u64
            },
            "the reply to read {i}"
        );
        let (offset, len) = reads[i];
        let mut got = vec![0u8; len as usize];
        s.read_exact(&mut got).unwrap();
        let at = usize::try_from(offset).unwrap();
        assert!(got == data[at..at + got.len()], "read {i}'s data");
        if i > 0 {
            gate.let_through(i - 1);
        }
    }
    let c = server.counters();
    assert_eq!(
        (c.requests, c.reads, c.error_replies),
        (k as u64, k as u64, 0)
    );
}

#[test]
fn disc_ends_the_connection_after_the_replies_in_flight() {
    let data = pattern(64 << 10, 14);
    let gate = Arc::new(Turnstile::new(data.clone(), vec![8192], 1));
    let server = serve(Arc::clone(&gate) as Arc<dyn ExportSource>);
    let mut s = transmission(&server);
    s.set_read_timeout(Some(2 * STUCK)).unwrap();
    send_reads(&mut s, &[(8192, 4096)]);
    request(&mut s, wire::CMD_DISC, 1, 0, 0);
    // The server has read the DISC while the READ is still held.
    let deadline = Instant::now() + STUCK;
    while server.counters().requests < 2 {
        assert!(Instant::now() < deadline, "the server never read the DISC");
        std::thread::yield_now();
    }
    gate.let_through(0);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(
        rest.len(),
        wire::SIMPLE_REPLY_LEN + 4096,
        "the READ's reply, then the end"
    );
    let header: [u8; wire::SIMPLE_REPLY_LEN] = rest[..wire::SIMPLE_REPLY_LEN].try_into().unwrap();
    assert_eq!(
        wire::parse_simple_reply(&header),
        Ok(SimpleReply {
            error: 0,
            cookie: 100
        })
    );
    assert!(rest[wire::SIMPLE_REPLY_LEN..] == data[8192..8192 + 4096]);
    assert_eq!(server.open_connections(), 0);
}

#[test]
fn a_client_that_stalls_its_handshake_is_closed_at_the_limit() {
    let limit = Duration::from_millis(500);
    let config = ServerConfig {
        handshake_limit: limit,
        ..ServerConfig::default()
    };
    let data = pattern(64 << 10, 15);
    let server = serve_with(Arc::new(data.clone()), config);
    let mut idle = transmission(&server);
    let mut stalled = TcpStream::connect(server.local_addr()).unwrap();
    stalled.set_read_timeout(Some(STUCK)).unwrap();
    let mut got = Vec::new();
    stalled
        .read_to_end(&mut got)
        .expect("the server closes a stalled handshake");
    assert!(
        got == wire::encode_greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES),
        "only the greeting, then the end"
    );
    assert_eq!(server.counters().protocol_errors, 1);
    // The limit is the handshake's alone: a connection past it may idle longer
    // (this sleep is the idling under test, not a synchronisation).
    std::thread::sleep(2 * limit);
    request(&mut idle, wire::CMD_READ, 1, 0, 64);
    assert_eq!(
        reply(&mut idle),
        SimpleReply {
            error: 0,
            cookie: 1
        }
    );
    let mut page = [0u8; 64];
    idle.read_exact(&mut page).unwrap();
    assert!(page[..] == data[..64]);
    assert_eq!(server.open_connections(), 1);
}

#[test]
fn own_client_reads_guest_memory_swapped_to_a_file_at_depth_32() {
    // 8 MiB of RAM, 6 MiB written through a 512 KiB budget: most of it is in
    // the swap file; the last 2 MiB were never touched and read as zeros.
    let written = pattern(6 << 20, 2);
    let mem = guest_memory(8 << 20, 512 << 10, &written);
    assert!(
        mem.metrics().pages.in_store > 1000,
        "the pattern should be mostly in the store: {:?}",
        mem.metrics().pages
    );
    let mut want = written;
    want.resize(8 << 20, 0);
    let server = serve(Arc::new(GuestRamSource::new(Arc::clone(&mem))));
    let store = connect(&server, EXPORT).expect("connect");
    assert_eq!(store.export_size(), 8 << 20);
    read_all_and_check(&store, &want, 32);
    assert_eq!(server.counters().bytes_read, 8 << 20);
}

#[test]
fn a_wrong_export_name_is_refused() {
    let server = serve(Arc::new(pattern(1 << 20, 3)));
    // GO: an NBD_REP_ERR_UNKNOWN, which apf's client reports.
    match connect(&server, "nope") {
        Err(NbdError::Handshake {
            source: HandshakeError::Refused { kind, message, .. },
            ..
        }) => {
            assert_eq!(kind, "NBD_REP_ERR_UNKNOWN");
            assert!(message.contains("\"nope\""), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // EXPORT_NAME has no error reply: the server closes the connection.
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let mut greeting = [0u8; wire::GREETING_LEN];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&wire::CLIENT_FIXED_NEWSTYLE.to_be_bytes())
        .unwrap();
    s.write_all(&wire::encode_option(wire::OPT_EXPORT_NAME, b"nope"))
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{} bytes after a wrong name", rest.len());
    // The server still serves the right name (the empty name too).
    drop(connect(&server, EXPORT).expect("right name"));
    drop(connect(&server, "").expect("default export"));
}

/// A connection past GO, for hand-made requests.
fn transmission(server: &NbdServer) -> TcpStream {
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let n = handshake::negotiate(&mut s, EXPORT).expect("handshake");
    assert!(n.read_only());
    assert_eq!(
        (n.min_block, n.preferred_block, n.max_block),
        (1, 4096, 32 << 20)
    );
    s
}

fn request(s: &mut TcpStream, command: u16, cookie: u64, offset: u64, len: u32) {
    let r = Request {
        command,
        cookie,
        offset,
        len,
    };
    s.write_all(&wire::encode_request(r)).unwrap();
}

fn reply(s: &mut TcpStream) -> SimpleReply {
    let mut h = [0u8; wire::SIMPLE_REPLY_LEN];
    s.read_exact(&mut h).expect("a reply");
    wire::parse_simple_reply(&h).expect("a simple reply")
}

#[test]
fn writes_get_eperm_and_bad_requests_einval_without_losing_the_stream() {
    let data = pattern(1 << 20, 4);
    let server = serve(Arc::new(data.clone()));
    let mut s = transmission(&server);
    // A WRITE with its payload: EPERM, and the payload is skipped.
    request(&mut s, wire::CMD_WRITE, 1, 0, 4096);
    s.write_all(&[0xee; 4096]).unwrap();
    assert_eq!(
        reply(&mut s),
        SimpleReply {
            error: 1,
            cookie: 1
        }
    );
    for (cmd, cookie, offset, len, want) in [
        (wire::CMD_TRIM, 2, 0, 4096, wire::NBD_EPERM),
        (wire::CMD_WRITE_ZEROES, 3, 0, 4096, wire::NBD_EPERM),
        (wire::CMD_READ, 4, (1 << 20) - 100, 4096, wire::NBD_EINVAL),
        (wire::CMD_READ, 5, u64::MAX - 10, 100, wire::NBD_EINVAL),
        (wire::CMD_READ, 6, 0, (32 << 20) + 1, wire::NBD_EINVAL),
        (wire::CMD_FLUSH, 7, 0, 0, 0),
        (wire::CMD_CACHE, 8, 0, 4096, 0),
        (99, 9, 0, 0, wire::NBD_EINVAL),
    ] {
        request(&mut s, cmd, cookie, offset, len);
        assert_eq!(
            reply(&mut s),
            SimpleReply {
                error: want,
                cookie
            },
            "command {cmd}"
        );
    }
    // Reads at odd offsets and lengths still come back right.
    request(&mut s, wire::CMD_READ, 10, 12345, 777);
    assert_eq!(
        reply(&mut s),
        SimpleReply {
            error: 0,
            cookie: 10
        }
    );
    let mut got = vec![0u8; 777];
    s.read_exact(&mut got).unwrap();
    assert!(got == data[12345..12345 + 777]);
    // A bad magic closes this connection only.
    s.write_all(&[0x55; wire::REQUEST_LEN]).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let mut t = transmission(&server);
    request(&mut t, wire::CMD_READ, 11, 0, 8);
    assert_eq!(
        reply(&mut t),
        SimpleReply {
            error: 0,
            cookie: 11
        }
    );
    request(&mut t, wire::CMD_DISC, 12, 0, 0);
    let c = server.counters();
    assert_eq!(c.protocol_errors, 1);
    assert_eq!(c.error_replies, 7);
}

#[test]
fn export_name_works_with_and_without_zeroes() {
    let data = pattern(64 << 10, 5);
    let server = serve(Arc::new(data.clone()));
    for (flags, zeroes) in [
        (wire::CLIENT_FIXED_NEWSTYLE, 124),
        (wire::CLIENT_FIXED_NEWSTYLE | wire::CLIENT_NO_ZEROES, 0),
    ] {
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        let mut greeting = [0u8; wire::GREETING_LEN];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(
            wire::parse_greeting(&greeting),
            Ok(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES)
        );
        s.write_all(&flags.to_be_bytes()).unwrap();
        // An unsupported option first: refused, negotiation goes on.
        s.write_all(&wire::encode_option(wire::OPT_STRUCTURED_REPLY, &[]))
            .unwrap();
        let mut h = [0u8; wire::OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let r = wire::parse_option_reply(&h, wire::OPT_STRUCTURED_REPLY).unwrap();
        assert_eq!(r.reply, wire::REP_ERR_UNSUP);
        let mut msg = vec![0u8; r.len as usize];
        s.read_exact(&mut msg).unwrap();
        s.write_all(&wire::encode_option(
            wire::OPT_EXPORT_NAME,
            EXPORT.as_bytes(),
        ))
        .unwrap();
        let mut b = [0u8; wire::EXPORT_NAME_REPLY_LEN];
        s.read_exact(&mut b).unwrap();
        let (size, tflags) = wire::parse_export_name_reply(&b);
        assert_eq!(size, data.len() as u64);
        assert_ne!(tflags & wire::TFLAG_READ_ONLY, 0);
        let mut z = vec![0xffu8; zeroes];
        s.read_exact(&mut z).unwrap();
        assert!(z.iter().all(|&x| x == 0));
        request(&mut s, wire::CMD_READ, 7, 4096, 16);
        assert_eq!(
            reply(&mut s),
            SimpleReply {
                error: 0,
                cookie: 7
            }
        );
        let mut got = [0u8; 16];
        s.read_exact(&mut got).unwrap();
        assert!(got == data[4096..4096 + 16]);
    }
}

#[test]
fn two_clients_at_once_both_read_right() {
    let data = pattern(4 << 20, 6);
    let server = serve(Arc::new(data.clone()));
    let a = connect(&server, EXPORT).expect("first client");
    let b = connect(&server, EXPORT).expect("second client");
    assert_eq!(server.open_connections(), 2);
    std::thread::scope(|s| {
        s.spawn(|| read_all_and_check(&a, &data, 32));
        s.spawn(|| read_all_and_check(&b, &data, 32));
    });
    assert_eq!(server.counters().bytes_read, 2 * data.len() as u64);
}

#[test]
fn shutdown_closes_open_connections_and_stops_listening() {
    let server = serve(Arc::new(pattern(64 << 10, 7)));
    let addr = server.local_addr();
    let mut idle = transmission(&server);
    let mut half = TcpStream::connect(addr).unwrap();
    let mut greeting = [0u8; wire::GREETING_LEN];
    half.read_exact(&mut greeting).unwrap();
    server.shutdown();
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    half.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run a client");
    eprintln!(
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn qemu_img_compares_and_converts_guest_memory() {
    if !have("qemu-img", "qemu-utils") {
        return;
    }
    let written = pattern(12 << 20, 8);
    let mem = guest_memory(16 << 20, 1 << 20, &written);
    let mut want = written;
    want.resize(16 << 20, 0);
    let server = serve(Arc::new(GuestRamSource::new(mem)));
    let dir = tempfile::tempdir().unwrap();
    let same = dir.path().join("same.raw");
    std::fs::write(&same, &want).unwrap();
    let nbd = url(&server, EXPORT);
    let compare = |file: &std::path::Path| {
        run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(file)
            .arg(&nbd))
        .status
        .code()
    };
    assert_eq!(
        compare(&same),
        Some(0),
        "qemu-img compare found a difference"
    );
    // One byte off in a swapped-out page: compare must see it (status 1).
    let mut other = want.clone();
    other[5 << 20] ^= 1;
    let differs = dir.path().join("differs.raw");
    std::fs::write(&differs, &other).unwrap();
    assert_eq!(compare(&differs), Some(1));
    let out = dir.path().join("out.raw");
    let convert = run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(&nbd)
        .arg(&out));
    assert!(convert.status.success());
    assert!(
        std::fs::read(&out).unwrap() == want,
        "converted bytes differ"
    );
    let c = server.counters();
    assert!(c.bytes_read >= 2 * want.len() as u64, "{c:?}");
    assert_eq!(c.protocol_errors, 0);
}

#[test]
fn nbdinfo_prints_the_size_and_lists_the_export() {
    if !have("nbdinfo", "libnbd-bin") {
        return;
    }
    let server = serve(Arc::new(pattern(3 << 20, 9)));
    let size = run(Command::new("nbdinfo")
        .arg("--size")
        .arg(url(&server, EXPORT)));
    assert!(size.status.success());
    assert_eq!(String::from_utf8_lossy(&size.stdout).trim(), "3145728");
    let info = run(Command::new("nbdinfo").arg(url(&server, EXPORT)));
    assert!(info.status.success());
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("export-size: 3145728"), "{text}");
    assert!(text.contains("is_read_only: true"), "{text}");
    let list = run(Command::new("nbdinfo")
        .arg("--list")
        .arg(format!("nbd://{}", server.local_addr())));
    assert!(list.status.success());
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(&format!("export=\"{EXPORT}\"")),
        "no export in the list"
    );
}

#[test]
fn abort_is_acknowledged_and_ends_the_connection() {
    let server = serve(Arc::new(pattern(64 << 10, 10)));
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let mut greeting = [0u8; wire::GREETING_LEN];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&wire::CLIENT_FIXED_NEWSTYLE.to_be_bytes())
        .unwrap();
    s.write_all(&wire::encode_option(wire::OPT_ABORT, &[]))
        .unwrap();
    let mut h = [0u8; wire::OPTION_REPLY_HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let r = wire::parse_option_reply(&h, wire::OPT_ABORT).unwrap();
    assert_eq!((r.reply, r.len), (wire::REP_ACK, 0));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(server.counters().protocol_errors, 0);
}
