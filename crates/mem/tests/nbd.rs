//! The NBD store against real servers (nbdkit and qemu-nbd) started here on
//! 127.0.0.1. A missing server binary skips a test with a printed reason,
//! unless APF_REQUIRE_NBD=1 (CI), which makes it a failure.

#[path = "common/servers.rs"]
mod servers;

use servers::{Server, have, listener, nbdkit, nbdkit_on, serve};

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use apf_mem::store::nbd::handshake::HandshakeError;
use apf_mem::store::{
    IoBuf, IoCompletion, IoError, IoKind, IoRequest, NbdConfig, NbdError, NbdStore, NbdUrl, Slot,
    Store,
};

fn qemu_nbd(args: &[&str], file: &Path) -> Server {
    let mut c = Command::new("qemu-nbd");
    c.args(["-f", "raw", "-t"]).args(args).arg(file);
    serve(c, listener(0))
}

fn config(server: &Server, export: &str) -> NbdConfig {
    let mut c = NbdConfig::new(NbdUrl::parse(&server.url(export)).unwrap());
    c.io_timeout = Duration::from_secs(5);
    c.reconnect_timeout = Duration::from_secs(10);
    c
}

/// Connects; retries a connection the server reset during the handshake (a
/// server still starting, seen from qemu-nbd on a loaded machine) for at most
/// 10 s. The server's socket listens from before it starts, so a connection
/// is never refused while it does.
fn connect(cfg: &NbdConfig, server: &mut Server) -> NbdStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match NbdStore::connect(cfg) {
            Ok(s) => return s,
            Err(NbdError::Handshake {
                source: HandshakeError::Io(_),
                ..
            }) if Instant::now() < deadline => {
                if let Some(status) = server.exited() {
                    panic!("the server exited before answering: {status}");
                }
                std::thread::yield_now();
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    }
}

#[repr(C, align(4096))]
#[derive(Clone)]
struct Page([u8; 4096]);

/// Page-aligned buffers the requests point into.
struct Pages(Vec<Page>);

impl Pages {
    fn new(n: usize) -> Pages {
        Pages(vec![Page([0; 4096]); n])
    }

    fn buf(&mut self, i: usize) -> IoBuf {
        let p = NonNull::from(&mut self.0[i].0).cast::<u8>();
        // SAFETY: an aligned 4096-byte buffer that outlives every request using
        // it: `run` collects all completions before returning.
        unsafe { IoBuf::new(p) }
    }
}

fn pattern(slot: u32, seed: u64, page: &mut [u8; 4096]) {
    let mut x = (u64::from(slot) << 20) ^ seed ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in page.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

fn checksum(page: &[u8; 4096]) -> u64 {
    page.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Submits `reqs` at most `depth` at a time and collects every completion;
/// fails the test if one does not come within `limit` or comes twice.
fn run(
    store: &dyn Store,
    reqs: &[IoRequest],
    depth: usize,
    limit: Duration,
) -> HashMap<u64, Result<(), IoError>> {
    let deadline = Instant::now() + limit;
    let mut results = HashMap::new();
    let mut next = 0;
    let mut in_flight = 0;
    let mut out = Vec::new();
    while results.len() < reqs.len() {
        if in_flight < depth && next < reqs.len() {
            let n = (depth - in_flight).min(reqs.len() - next);
            store.submit(&reqs[next..next + n]);
            next += n;
            in_flight += n;
        }
        out.clear();
        store.complete(&mut out, Some(Duration::from_millis(100)));
        for IoCompletion { tag, result } in out.drain(..) {
            assert!(
                results.insert(tag, result).is_none(),
                "tag {tag} completed twice"
            );
            in_flight -= 1;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} requests completed in {limit:?}",
            results.len(),
            reqs.len()
        );
    }
    results
}

fn requests(kind: IoKind, pages: &mut Pages, slots: &[u32], tag0: u64) -> Vec<IoRequest> {
    slots
        .iter()
        .enumerate()
        .map(|(i, &s)| IoRequest {
            tag: tag0 + i as u64,
            kind,
            slot: Slot(s),
            buf: pages.buf(i),
        })
        .collect()
}

/// Writes `slots` with their pattern, reads them back into other buffers and
/// checks every page.
fn write_then_read(store: &NbdStore, slots: &[u32], seed: u64, depth: usize) {
    let mut src = Pages::new(slots.len());
    for (i, &s) in slots.iter().enumerate() {
        pattern(s, seed, &mut src.0[i].0);
    }
    let writes = requests(IoKind::Write, &mut src, slots, 0);
    for (tag, r) in run(store, &writes, depth, Duration::from_secs(30)) {
        assert_eq!(r, Ok(()), "write {tag}");
    }
    let mut dst = Pages::new(slots.len());
    let reads = requests(IoKind::Read, &mut dst, slots, 1 << 32);
    for (tag, r) in run(store, &reads, depth, Duration::from_secs(30)) {
        assert_eq!(r, Ok(()), "read {tag}");
    }
    for (i, slot) in slots.iter().enumerate() {
        assert_eq!(
            checksum(&dst.0[i].0),
            checksum(&src.0[i].0),
            "slot {slot} read back wrong"
        );
    }
}

fn spread_slots(n: u32, capacity: u32) -> Vec<u32> {
    // Out of order and spread over the export.
    (0..n).map(|i| (i * 7919) % capacity).collect()
}

#[test]
fn nbdkit_memory_write_then_read_at_depth_32() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let mut server = nbdkit(&["memory", "64M"]);
    let store = connect(&config(&server, "pages"), &mut server);
    assert_eq!(store.export_size(), 64 << 20);
    assert!(!store.is_read_only());
    assert!(
        store
            .info()
            .description
            .starts_with(&format!("nbd {}", server.url("pages"))),
        "{}",
        store.info().description
    );
    write_then_read(&store, &spread_slots(2048, 16384), 1, 32);
    // Slots beyond the export are refused, not sent.
    let mut p = Pages::new(1);
    let r = run(
        &store,
        &requests(IoKind::Read, &mut p, &[16384], 0),
        1,
        Duration::from_secs(5),
    );
    assert!(r[&0].is_err());
    assert_eq!(store.reconnects(), 0);
}

#[test]
fn qemu_nbd_file_write_then_read_at_depth_32_and_read_only() {
    if !have("qemu-nbd", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pages.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    {
        let mut server = qemu_nbd(&["-x", "pages"], &file);
        let store = connect(&config(&server, "pages"), &mut server);
        assert_eq!(store.export_size(), 32 << 20);
        write_then_read(&store, &spread_slots(1024, 8192), 2, 32);
    }
    // The same file read-only: the pages are there, and writes are refused.
    let mut server = qemu_nbd(&["-r", "-x", "pages"], &file);
    let store = connect(&config(&server, "pages"), &mut server);
    assert!(store.is_read_only());
    let slots = spread_slots(64, 8192);
    let mut dst = Pages::new(slots.len());
    let reads = requests(IoKind::Read, &mut dst, &slots, 0);
    for r in run(&store, &reads, 32, Duration::from_secs(30)).values() {
        assert_eq!(r, &Ok(()));
    }
    for (i, &s) in slots.iter().enumerate() {
        let mut want = Page([0; 4096]);
        pattern(s, 2, &mut want.0);
        assert_eq!(checksum(&dst.0[i].0), checksum(&want.0), "slot {s}");
    }
    let writes = requests(IoKind::Write, &mut dst, &slots[..4], 100);
    for r in run(&store, &writes, 32, Duration::from_secs(5)).values() {
        assert!(
            matches!(r, Err(IoError::Os { op: "write", errno, .. }) if *errno == libc::EROFS),
            "{r:?}"
        );
    }
}

#[test]
fn a_read_only_config_refuses_writes_to_a_writable_server() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let mut server = nbdkit(&["memory", "1M"]);
    let mut cfg = config(&server, "");
    cfg.read_only = true;
    let store = connect(&cfg, &mut server);
    assert!(store.is_read_only());
    let mut p = Pages::new(2);
    let r = run(
        &store,
        &requests(IoKind::Write, &mut p, &[0, 1], 0),
        2,
        Duration::from_secs(5),
    );
    assert!(r.values().all(Result::is_err));
}

#[test]
fn nbdkit_read_only_export_refuses_writes() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let mut server = nbdkit(&["-r", "memory", "1M"]);
    let store = connect(&config(&server, ""), &mut server);
    assert!(store.is_read_only());
    assert!(store.info().description.contains("read-only"));
    let mut p = Pages::new(1);
    let r = run(
        &store,
        &requests(IoKind::Write, &mut p, &[3], 0),
        1,
        Duration::from_secs(5),
    );
    assert!(r[&0].is_err());
}

#[test]
fn export_name_fallback_when_the_server_is_not_fixed_newstyle() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let mut server = nbdkit(&["--mask-handshake=0", "--no-sr", "memory", "8M"]);
    let store = connect(&config(&server, ""), &mut server);
    assert!(
        store.info().description.contains("NBD_OPT_EXPORT_NAME"),
        "{}",
        store.info().description
    );
    assert_eq!(store.export_size(), 8 << 20);
    write_then_read(&store, &spread_slots(256, 2048), 3, 32);
}

#[test]
fn error_filter_fails_some_reads_and_the_store_keeps_working() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let mut server = nbdkit(&[
        "--log=null",
        "--filter=error",
        "memory",
        "8M",
        "error=EIO",
        "error-pread-rate=50%",
    ]);
    let store = connect(&config(&server, ""), &mut server);
    let slots: Vec<u32> = (0..256).collect();
    let mut p = Pages::new(slots.len());
    let reads = requests(IoKind::Read, &mut p, &slots, 0);
    let results = run(&store, &reads, 32, Duration::from_secs(30));
    let failed = results.values().filter(|r| r.is_err()).count();
    assert!(failed > 0 && failed < slots.len(), "{failed} of 256 failed");
    for r in results.values() {
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    IoError::Remote {
                        op: "read",
                        error: 5,
                        ..
                    }
                ),
                "{e}"
            );
            assert!(
                e.to_string()
                    .contains("replied error 5: Input/output error"),
                "{e}"
            );
        }
    }
    assert_eq!(store.remote_errors(), failed as u64);
    // Writes are not affected and the connection is still the first one.
    let writes = requests(IoKind::Write, &mut p, &slots, 1000);
    assert!(
        run(&store, &writes, 32, Duration::from_secs(30))
            .values()
            .all(Result::is_ok)
    );
    assert_eq!(store.reconnects(), 0);
}

#[test]
fn delay_filter_completions_all_arrive() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let mut server = nbdkit(&[
        "--filter=delay",
        "memory",
        "8M",
        "rdelay=20ms",
        "wdelay=20ms",
    ]);
    let store = connect(&config(&server, ""), &mut server);
    let t = Instant::now();
    write_then_read(&store, &spread_slots(128, 2048), 4, 32);
    // Each page waited at least once for its write and once for its read.
    assert!(t.elapsed() >= Duration::from_millis(40));
}

#[test]
fn server_killed_and_restarted_within_the_timeout_loses_nothing() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pages.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let file_arg = format!("file={}", file.display());
    // The delay keeps requests in flight when the server dies.
    let args = [
        "--filter=delay",
        "file",
        file_arg.as_str(),
        "rdelay=200ms",
        "wdelay=200ms",
    ];
    let mut server = nbdkit(&args);
    let store = connect(&config(&server, ""), &mut server);
    let old: Vec<u32> = (0..64).collect();
    let mut src = Pages::new(old.len());
    for (i, &s) in old.iter().enumerate() {
        pattern(s, 5, &mut src.0[i].0);
    }
    let writes = requests(IoKind::Write, &mut src, &old, 0);
    assert!(
        run(&store, &writes, 32, Duration::from_secs(30))
            .values()
            .all(Result::is_ok)
    );

    // In flight at the kill: 32 reads of written pages and 32 new writes.
    let new: Vec<u32> = (1000..1032).collect();
    let mut new_src = Pages::new(new.len());
    for (i, &s) in new.iter().enumerate() {
        pattern(s, 6, &mut new_src.0[i].0);
    }
    let mut dst = Pages::new(32);
    let mut reqs = requests(IoKind::Read, &mut dst, &old[..32], 100);
    reqs.extend(requests(IoKind::Write, &mut new_src, &new, 200));
    store.submit(&reqs);
    server.kill();
    let mut server = nbdkit_on(listener(server.port), &args);
    let mut results = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while results.len() < reqs.len() {
        assert!(Instant::now() < deadline, "requests lost after the restart");
        out.clear();
        store.complete(&mut out, Some(Duration::from_millis(100)));
        for c in out.drain(..) {
            assert!(results.insert(c.tag, c.result).is_none());
        }
        if let Some(s) = server.exited() {
            panic!("the restarted server exited: {s}");
        }
    }
    for (tag, r) in &results {
        assert_eq!(r, &Ok(()), "request {tag}");
    }
    assert!(store.reconnects() >= 1, "{:?}", store.last_error());
    for i in 0..32 {
        assert_eq!(checksum(&dst.0[i].0), checksum(&src.0[i].0), "slot {i}");
    }
    // The writes made during the outage reached the file.
    let mut back = Pages::new(new.len());
    let reads = requests(IoKind::Read, &mut back, &new, 300);
    assert!(
        run(&store, &reads, 32, Duration::from_secs(30))
            .values()
            .all(Result::is_ok)
    );
    for i in 0..new.len() {
        assert_eq!(checksum(&back.0[i].0), checksum(&new_src.0[i].0));
    }
}

#[test]
fn server_killed_for_good_fails_every_request_within_the_timeout() {
    if !have("nbdkit", "nbdkit") {
        return;
    }
    let mut server = nbdkit(&["--filter=delay", "memory", "8M", "rdelay=500ms"]);
    let mut cfg = config(&server, "");
    cfg.io_timeout = Duration::from_secs(1);
    cfg.reconnect_timeout = Duration::from_secs(1);
    let store = connect(&cfg, &mut server);
    let slots: Vec<u32> = (0..32).collect();
    let mut p = Pages::new(slots.len());
    let reqs = requests(IoKind::Read, &mut p, &slots, 0);
    store.submit(&reqs);
    server.kill();
    let t = Instant::now();
    let mut out = Vec::new();
    while out.len() < reqs.len() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{} of 32 completed",
            out.len()
        );
        store.complete(&mut out, Some(Duration::from_millis(100)));
    }
    for c in &out {
        assert!(
            matches!(c.result, Err(IoError::Disconnected { op: "read", .. })),
            "{:?}",
            c.result
        );
    }
    assert_eq!(store.disconnected_errors(), 32);
    // Later requests fail at once, not after another timeout.
    let t = Instant::now();
    let r = run(&store, &reqs[..1], 1, Duration::from_secs(5));
    assert!(r[&0].is_err());
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(!store.is_connected());
}

#[test]
fn a_wrong_export_or_port_is_a_one_line_error() {
    if !have("qemu-nbd", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pages.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut server = qemu_nbd(&["-x", "pages"], &file);
    let pages = config(&server, "pages");
    drop(connect(&pages, &mut server));
    let e = NbdStore::connect(&config(&server, "nope")).unwrap_err();
    assert!(matches!(e, NbdError::Handshake { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("refused export \"nope\""), "{msg}");
    assert!(!msg.contains('\n'));
    drop(server);
    let e = NbdStore::connect(&pages).unwrap_err();
    assert!(e.to_string().contains("is the NBD server running"), "{e}");
}
