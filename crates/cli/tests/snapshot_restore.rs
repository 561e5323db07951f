//! `apf snapshot` and `apf restore`: a snapshot of a short run restored side by
//! side (`--compare`), from nbdkit and qemu-nbd serving its image, through a
//! server restarted mid-run and one killed for good; and the one-line refusals
//! (exit status 2) of damaged snapshots, wrong flags and bad exports.

mod common;

use common::{
    Server, apf, free_port, have_nbdkit, have_qemu_nbd, listener, nbdkit, nbdkit_memory, nbdkit_on,
    one_line_input_error, serve,
};
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const CONFIG: &[&str] = &[
    "--vcpus",
    "1",
    "--ram",
    "64MiB",
    "--budget",
    "16MiB",
    "--latency",
    "200us",
    "-p",
    "scan,mem=32MiB,work=1500",
    "-p",
    "calc",
];

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("apf-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A snapshot of [`CONFIG`] once its scan has done 20% of its work, at `dir/snap`.
fn snapshot(dir: &Path) -> PathBuf {
    let snap = dir.join("snap");
    let mut args = vec!["snapshot", "--at", "20%", "--out", snap.to_str().unwrap()];
    args.extend_from_slice(CONFIG);
    let out = apf(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pages hold data"), "{}", text(&out));
    snap
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `apf restore SNAP ARGS --json J`: the exit status and the restores.
fn restore(snap: &Path, args: &[&str]) -> (Output, Vec<Value>) {
    let json = snap.with_extension(format!("{}.json", free_port()));
    let mut all = vec!["restore", snap.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", json.to_str().unwrap()]);
    let out = apf(&all);
    let restores = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["restores"].as_array().cloned())
        .unwrap_or_default();
    (out, restores)
}

fn vcpu_sum(r: &Value, key: &str) -> u64 {
    r["run"]["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["apf"][key].as_u64().unwrap_or(0))
        .sum()
}

fn assert_correct(r: &Value, what: &str) {
    assert_eq!(r["run"]["checksums_ok"], true, "{what}: {r}");
    assert_eq!(r["run"]["end"], "system_off", "{what}");
    assert_eq!(r["run"]["lost_pages"], 0, "{what}");
}

#[test]
fn a_snapshot_restores_side_by_side_and_from_nbd_servers() {
    let dir = scratch("serve");
    let snap = snapshot(&dir);
    let image = snap.join("memory");
    let image_before = std::fs::read(&image).unwrap();

    let (out, rs) = restore(&snap, &["--compare"]);
    assert!(out.status.success(), "{}", text(&out));
    let labels: Vec<&str> = rs
        .iter()
        .map(|r| r["run"]["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "eager, APF on",
            "lazy, APF off",
            "lazy, APF on",
            "lazy+prefetch, APF on"
        ]
    );
    for r in &rs {
        assert_correct(r, r["run"]["label"].as_str().unwrap());
    }
    assert!(rs[0]["loaded_pages"].as_u64().unwrap() > 0);
    assert_eq!(rs[1]["loaded_pages"], 0);
    assert_eq!(vcpu_sum(&rs[1], "not_present"), 0);
    assert!(vcpu_sum(&rs[2], "not_present") > 0, "lazy with APF on");
    assert_eq!(rs[2]["prefetched_pages"], 0);
    assert!(
        rs[3]["prefetched_pages"].as_u64().unwrap() > 0,
        "the loader read pages"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("to first instruction"), "{table}");

    if have_nbdkit() {
        // nbdkit's file plugin, read-only, 1 ms added by its delay filter.
        let server = nbdkit(&[
            "-r",
            "--filter=delay",
            "file",
            image.to_str().unwrap(),
            "rdelay=1ms",
        ]);
        let (out, rs) = restore(&snap, &["--from", &server.url(""), "--latency", "0"]);
        assert!(out.status.success(), "{}", text(&out));
        assert_correct(&rs[0], "lazy from nbdkit");
        assert!(vcpu_sum(&rs[0], "not_present") > 0);
        assert!(
            rs[0]["run"]["store"]["description"]
                .as_str()
                .unwrap()
                .contains("nbd nbd://127.0.0.1"),
            "{}",
            rs[0]["run"]["store"]
        );
    }
    if have_qemu_nbd() {
        let mut c = Command::new("qemu-nbd");
        c.args(["-r", "-f", "raw", "-t", "-x", "memory"])
            .arg(&image);
        let server = serve(c, listener(0));
        let (out, rs) = restore(&snap, &["--eager", "--from", &server.url("memory")]);
        assert!(out.status.success(), "{}", text(&out));
        assert_correct(&rs[0], "eager from qemu-nbd");
        let (out, rs) = restore(&snap, &["--from", &server.url("memory")]);
        assert!(out.status.success(), "{}", text(&out));
        assert_correct(&rs[0], "lazy from qemu-nbd");
    }
    assert!(
        std::fs::read(&image).unwrap() == image_before,
        "the image is never written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until `log` (nbdkit's log filter) shows `n` reads: the restore is
/// reading its image from the server.
fn wait_for_reads(log: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(log).map_or(0, |t| t.matches(" Read id=").count()) < n {
        assert!(
            Instant::now() < deadline,
            "{n} reads did not reach the server in 60 s"
        );
        std::thread::yield_now();
    }
}

#[test]
fn an_image_server_that_restarts_or_dies_mid_restore() {
    if !have_nbdkit() {
        return;
    }
    let dir = scratch("fail");
    let snap = snapshot(&dir);
    let image = snap.join("memory");
    let apf_bin = env!("CARGO_BIN_EXE_apf");

    // A server killed mid-restore and started again on its port within the
    // client's reconnect window: nothing is lost.
    let log = dir.join("nbdkit.log");
    let first = listener(0);
    let port = first.local_addr().unwrap().port();
    let start = |on: TcpListener, log: &Path| {
        let log = format!("logfile={}", log.display());
        let args = ["-r", "--filter=log", "--filter=delay", "file"];
        let args = [&args[..], &[image.to_str().unwrap(), &log, "rdelay=1ms"]].concat();
        nbdkit_on(on, &args)
    };
    let mut server: Server = start(first, &log);
    let json = dir.join("restart.json");
    let url = format!("nbd://127.0.0.1:{port}/");
    let child = Command::new(apf_bin)
        .args(["restore", snap.to_str().unwrap(), "--from", &url])
        .args(["--json", json.to_str().unwrap(), "--latency", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_reads(&log, 1);
    server.kill();
    let again_server = start(listener(port), &dir.join("nbdkit-again.log"));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_correct(&v["restores"][0], "across a server restart");
    let again = std::fs::read_to_string(dir.join("nbdkit-again.log")).unwrap();
    assert!(
        again.contains(" Read id="),
        "the client came back and read from the restarted server"
    );
    drop(again_server);

    // A server killed for good: once the client's reconnect window has passed,
    // the reads fail like a broken disk. The run ends (no vCPU hangs); the
    // processes that needed the lost pages are killed and named, the VM runs on.
    let log = dir.join("nbdkit-gone.log");
    let mut server = start(listener(port), &log);
    let child = Command::new(apf_bin)
        .args(["restore", snap.to_str().unwrap(), "--from", &url])
        .args(["--latency", "0", "--timeout", "120s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Past the guest kernel's own pages, which the first instructions read:
    // the pages lost are the processes'.
    wait_for_reads(&log, 300);
    server.kill();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("the guest powered off"),
        "the VM ran on: {stdout}"
    );
    assert!(
        stderr.contains("killed process") || stderr.contains("could not bring back"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_snapshots_wrong_flags_and_bad_exports_get_one_line_and_status_2() {
    let dir = scratch("bad");
    let snap = snapshot(&dir);
    let run = |args: &[&str]| {
        let mut all = vec!["restore", snap.to_str().unwrap()];
        all.extend_from_slice(args);
        apf(&all)
    };

    let missing = dir.join("no-such-snapshot");
    let e = one_line_input_error(&apf(&["restore", missing.to_str().unwrap()]), "missing");
    assert!(e.contains("cannot read state"), "{e}");

    let e = one_line_input_error(&run(&["--ram", "32MiB"]), "less RAM");
    assert!(e.contains("less than"), "{e}");
    let e = one_line_input_error(&run(&["--vcpus", "2"]), "other vCPUs");
    assert!(e.contains("vCPUs"), "{e}");
    let e = one_line_input_error(&run(&["--from", "nbd://127.0.0.1:0/x"]), "bad URL");
    assert!(e.contains("port"), "{e}");
    if have_nbdkit() {
        let small = nbdkit_memory("1M");
        let e = one_line_input_error(&run(&["--from", &small.url("x")]), "small export");
        assert!(e.contains("less than guest RAM"), "{e}");
    }

    // Another format, a damaged state, a truncated image: nothing changes.
    let state = std::fs::read(snap.join("state")).unwrap();
    let mut other = state.clone();
    let at = other.iter().position(|&b| b == b' ').unwrap() + 1;
    other[at] = b'7';
    std::fs::write(snap.join("state"), &other).unwrap();
    let e = one_line_input_error(&run(&[]), "format");
    assert!(e.contains("format 7"), "{e}");
    let mut damaged = state.clone();
    let n = damaged.len() - 3;
    damaged[n] ^= 0x04;
    std::fs::write(snap.join("state"), &damaged).unwrap();
    let e = one_line_input_error(&run(&[]), "damaged state");
    assert!(e.contains("checksum"), "{e}");
    std::fs::write(snap.join("state"), &state).unwrap();
    let image = std::fs::OpenOptions::new()
        .write(true)
        .open(snap.join("memory"))
        .unwrap();
    let len = image.metadata().unwrap().len();
    image.set_len(len - 4096).unwrap();
    let e = one_line_input_error(&run(&[]), "truncated image");
    assert!(e.contains("truncated"), "{e}");
    assert_eq!(std::fs::read(snap.join("state")).unwrap(), state);

    // A snapshot into a directory that holds one is refused.
    let mut args = vec!["snapshot", "--at", "100ms", "--out", snap.to_str().unwrap()];
    args.extend_from_slice(CONFIG);
    let e = one_line_input_error(&apf(&args), "a used directory");
    assert!(e.contains("not empty"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
