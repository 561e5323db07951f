//! `--store nbd://...`: a short run against nbdkit's memory plugin started here
//! on 127.0.0.1, and the one-line errors (exit status 2) for a bad URL, a
//! server that is not there and an export smaller than guest RAM. Without
//! nbdkit the tests print why and pass, unless APF_REQUIRE_NBD=1 (CI).

mod common;

use common::{apf, free_port, have_nbdkit, nbdkit_memory, one_line_input_error};
use std::process::Output;

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
