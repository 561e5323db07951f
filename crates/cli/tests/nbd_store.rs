//! `--store nbd://...`: a short run against nbdkit's memory plugin started here
//! on 127.0.0.1, and the one-line errors (exit status 2) for a bad URL, a
//! server that is not there and an export smaller than guest RAM. Without
//! nbdkit the tests print why and pass, unless APF_REQUIRE_NBD=1 (CI).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// nbdkit, killed on every path out of the test.
struct Nbdkit {
    child: Child,
    port: u16,
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_nbdkit() -> bool {
    let found = Command::new("nbdkit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("APF_REQUIRE_NBD").as_deref() != Ok("1"),
            "nbdkit is missing and APF_REQUIRE_NBD=1: apt-get install nbdkit"
        );
        eprintln!("skipping: nbdkit is not installed (apt-get install nbdkit)");
    }
    found
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// nbdkit's memory plugin with an export of `size`, listening once this
/// returns (connects are retried for at most 10 s).
fn nbdkit_memory(size: &str) -> Nbdkit {
    let port = free_port();
    let child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["memory", size])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start nbdkit");
    let mut server = Nbdkit { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nbdkit did not listen in 10 s");
        if let Ok(Some(s)) = server.child.try_wait() {
            panic!("nbdkit exited: {s}");
        }
        std::thread::yield_now();
    }
    server
}

fn apf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apf"))
        .args(args)
        .output()
        .expect("apf runs")
}

const QUICK: &[&str] = &[
    "run",
    "--vcpus",
    "1",
    "--ram",
    "64MiB",
    "--budget",
    "16MiB",
    "--latency",
    "0",
    "-p",
    "scan,mem=32MiB,work=300",
    "-p",
    "calc",
];

fn quick(store: &str, extra: &[&str]) -> Output {
    let mut args = QUICK.to_vec();
    args.extend_from_slice(&["--store", store]);
    args.extend_from_slice(extra);
    apf(&args)
}

fn one_line_input_error(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    err
}

#[test]
fn a_run_over_nbdkit_reads_pages_back_with_every_checksum_right() {
    if !have_nbdkit() {
        return;
    }
    let server = nbdkit_memory("256M");
    let dir = std::env::temp_dir().join(format!("apf-nbd-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("run.json");
    let url = format!("nbd://127.0.0.1:{}/pages", server.port);
    let out = quick(&url, &["--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all 2 checksums correct"), "{stdout}");
    assert!(stdout.contains(&format!("store: nbd {url}")), "{stdout}");
    let report = std::fs::read_to_string(&json).unwrap();
    let pages_read: u64 = report
        .split("\"pages_read\": ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("pages_read in the report");
    assert!(pages_read > 0, "no page came back from the NBD store");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_urls_missing_servers_and_small_exports_are_one_line_input_errors() {
    let e = one_line_input_error(&quick("nbd://127.0.0.1:0/x", &[]), "port 0");
    assert!(e.contains("port"), "{e}");
    let e = one_line_input_error(&quick("nbds://h/x", &[]), "TLS");
    assert!(e.contains("not supported"), "{e}");
    let e = one_line_input_error(&quick("ndb", &[]), "a typo");
    assert!(e.contains("is not a store"), "{e}");

    // Nothing listens on a port just freed.
    let url = format!("nbd://127.0.0.1:{}/x", free_port());
    let e = one_line_input_error(&quick(&url, &[]), "no server");
    assert!(e.contains("is the NBD server running"), "{e}");

    if !have_nbdkit() {
        return;
    }
    let server = nbdkit_memory("1M");
    let url = format!("nbd://127.0.0.1:{}/x", server.port);
    let e = one_line_input_error(&quick(&url, &[]), "a 1 MiB export");
    assert!(e.contains("less than guest RAM"), "{e}");
}
