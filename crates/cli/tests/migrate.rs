//! Live migration between two apf processes over TCP on 127.0.0.1: post-copy
//! with APF off and on, pre-copy and hybrid, connections cut at several points
//! (by a proxy the test controls), a source that vanishes, and bad input.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::proxy::{Cut, Outage, Proxy};
use common::{apf, one_line_input_error};

/// A running `apf listen`, killed if the test fails.
struct Listen {
    child: Option<Child>,
    addr: SocketAddr,
    stderr: Option<std::process::ChildStderr>,
    /// The rest of its stdout (its reports), read as it comes.
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Listen {
    fn start(args: &[&str]) -> Listen {
        let mut child = Command::new(env!("CARGO_BIN_EXE_apf"))
            .args(["listen", "--port", "0", "--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("apf listen starts");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("its first line");
        let addr = first
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        // Read the rest as it comes, so the listener never blocks on its
        // stdout, and keep it: a run that fails says more in its report.
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
            text
        });
        let stderr = child.stderr.take();
        Listen {
            child: Some(child),
            addr,
            stderr,
            stdout: Some(stdout),
        }
    }

    /// Its stderr, then its stdout (the reports of the runs it took), read to
    /// their ends: it returns once the listener has closed them (ended).
    fn output(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        if let Some(out) = self.stdout.take().and_then(|t| t.join().ok()) {
            text.push_str("\n--- apf listen's stdout ---\n");
            text.push_str(&out);
        }
        text
    }

    /// Waits for it to end; returns (exit code, its output).
    fn finish(mut self) -> (Option<i32>, String) {
        let text = self.output();
        let status = self.child.take().expect("child").wait().expect("wait");
        (status.code(), text)
    }
}

impl Listen {
    /// Ends it (it would listen on) and returns its output.
    fn stop(mut self) -> String {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.output()
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("apf-migrate-test-{}-{name}", std::process::id()))
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("json")
}

/// A smaller run than the default (same shape: a scan over most of RAM in a
/// budget half its size, with calc beside it), so each migration takes seconds.
/// The run lasts about 5 s: a pre-copy started 1 s in (2-3 s) must end first.
const SMALL: &[&str] = &[
    "-p",
    "scan,mem=48MiB,work=8000",
    "-p",
    "calc",
    "--ram",
    "64MiB",
    "--budget",
    "32MiB",
];

fn source(to: SocketAddr, mode: &str, at: &str, extra: &[&str], json_out: &Path) -> Output {
    let mut args: Vec<String> = [
        "run",
        "--migrate-to",
        &to.to_string(),
        "--mode",
        mode,
        "--migrate-at",
        at,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--json".into());
    args.push(json_out.display().to_string());
    Command::new(env!("CARGO_BIN_EXE_apf"))
        .args(&args)
        .output()
        .expect("apf run")
}

/// Every process of the destination's run ended with the checksum of its
/// whole run (both hosts), and no page was lost.
fn assert_whole(dst: &serde_json::Value, what: &str) {
    let run = &dst["run"];
    assert_eq!(run["checksums_ok"], true, "{what}: {run}");
    assert_eq!(run["end"], "system_off", "{what}");
    assert_eq!(run["lost_pages"], 0, "{what}");
    assert_eq!(
        dst["lost_pages"].as_array().map(Vec::len),
        Some(0),
        "{what}"
    );
    for p in run["processes"].as_array().expect("processes") {
        assert_eq!(p["state"], "done", "{what}: {p}");
    }
}

fn blocktime(dst: &serde_json::Value) -> f64 {
    dst["blocktime_s"].as_f64().expect("blocktime")
}

fn faults(dst: &serde_json::Value, kind: &str) -> u64 {
    dst["run"]["vcpus"]
        .as_array()
        .expect("vcpus")
        .iter()
        .map(|v| v["faults"][kind].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn postcopy_moves_the_default_workload_and_apf_hides_the_fetches() {
    let mut blocktimes = Vec::new();
    for apf_on in [false, true] {
        let apf_flag = if apf_on { "on" } else { "off" };
        let listen = Listen::start(&[
            "--apf",
            apf_flag,
            "--json",
            &tmp(&format!("pc-{apf_flag}-dst.json"))
                .display()
                .to_string(),
        ]);
        // Something that is not an apf source first: refused, and the
        // listener goes on listening.
        let mut junk = TcpStream::connect(listen.addr).expect("connect");
        junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let _ = std::io::Read::read_to_end(&mut junk, &mut Vec::new());
        let src_json = tmp(&format!("pc-{apf_flag}-src.json"));
        let out = source(listen.addr, "postcopy", "2s", &[], &src_json);
        assert!(
            out.status.success(),
            "source: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, err) = listen.finish();
        assert_eq!(code, Some(0), "destination: {err}");
        assert!(
            err.contains("refused a connection") && err.contains("not an apf migration source"),
            "{err}"
        );
        let src = json(&src_json);
        let dst = json(&tmp(&format!("pc-{apf_flag}-dst.json")));
        assert_whole(&dst, &format!("post-copy, APF {apf_flag}"));
        assert!(src["downtime_s"].as_f64().is_some());
        // Post-copy: nothing was copied before the first instruction.
        assert_eq!(dst["copied_before_start"], 0);
        assert!(dst["demand_pages"].as_u64().unwrap_or(0) > 0, "{dst}");
        assert!(dst["copied_pages"].as_u64().unwrap_or(0) > 0, "{dst}");
        if apf_on {
            // Only the guest kernel's own faults stay synchronous.
            assert!(faults(&dst, "async") > 10 * faults(&dst, "sync"), "{dst}");
        } else {
            assert_eq!(faults(&dst, "async"), 0);
        }
        blocktimes.push(blocktime(&dst));
    }
    assert!(
        blocktimes[1] < blocktimes[0],
        "blocktime with APF on ({:.3} s) below APF off ({:.3} s)",
        blocktimes[1],
        blocktimes[0]
    );
}

#[test]
fn precopy_and_hybrid_move_a_running_vm_with_every_checksum_right() {
    for mode in ["precopy", "hybrid"] {
        let dst_json = tmp(&format!("{mode}-dst.json"));
        let listen = Listen::start(&["--json", &dst_json.display().to_string()]);
        let src_json = tmp(&format!("{mode}-src.json"));
        let out = source(listen.addr, mode, "1s", SMALL, &src_json);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, err) = listen.finish();
        assert_eq!(code, Some(0), "{mode}: {err}");
        let (src, dst) = (json(&src_json), json(&dst_json));
        assert_whole(&dst, mode);
        let rounds = src["rounds"].as_array().expect("rounds").len();
        assert!(rounds >= 1, "{mode}: {src}");
        if mode == "hybrid" {
            assert_eq!(rounds, 1, "hybrid is one round");
        }
        // The first round copied every page the guest had touched; less was
        // left for the switch-over.
        let first = src["rounds"][0]["pages"].as_u64().unwrap_or(0);
        assert!(
            first > 0
                && src["changed_at_stop"].as_u64().unwrap_or(u64::MAX)
                    < src["held_at_stop"].as_u64().unwrap_or(0),
            "{mode}: {src}"
        );
        if mode == "precopy" {
            assert_eq!(dst["copied_before_start"], src["changed_at_stop"], "{mode}");
        }
    }
}

/// Runs a migration whose control connection goes through a proxy with
/// `cut` and `outage`.
fn migrate_through(
    name: &str,
    mode: &str,
    cut: Cut,
    outage: Outage,
    extra: &[&str],
) -> (
    Output,
    (Option<i32>, String),
    serde_json::Value,
    serde_json::Value,
    Proxy,
) {
    let dst_json = tmp(&format!("{name}-dst.json"));
    let listen = Listen::start(&["--json", &dst_json.display().to_string()]);
    let proxy = Proxy::start(listen.addr, cut, outage);
    let src_json = tmp(&format!("{name}-src.json"));
    let out = source(proxy.addr, mode, "1s", extra, &src_json);
    let end = listen.finish();
    let src = json(&src_json);
    let dst = if dst_json.exists() {
        json(&dst_json)
    } else {
        serde_json::Value::Null
    };
    (out, end, src, dst, proxy)
}

#[test]
fn a_control_connection_cut_during_precopy_at_and_after_the_switch_over_loses_nothing() {
    // Hello, Begin, Round 0: cut with round 0's reply lost (the destination
    // copied it; the source sends it again on a new connection).
    // Hello, Begin, SwitchOver cut in the middle: the destination never got
    // it whole; the source sends it again.
    // Hello, Begin, SwitchOver whole, its reply lost: the destination runs the
    // VM; the source, reconnecting, is told so.
    let cases = [
        (
            "cut-round",
            "precopy",
            Cut::AfterFrames {
                frames: 3,
                extra: 0,
            },
        ),
        (
            "cut-switch-half",
            "postcopy",
            Cut::AfterFrames {
                frames: 2,
                extra: 200,
            },
        ),
        (
            "cut-switch-reply",
            "postcopy",
            Cut::AfterFrames {
                frames: 3,
                extra: 0,
            },
        ),
    ];
    for (name, mode, cut) in cases {
        let (out, (code, err), src, dst, proxy) =
            migrate_through(name, mode, cut, Outage::Refuse(3), SMALL);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(proxy.was_cut(), "{name}: the cut happened");
        assert_eq!(
            proxy.refused(),
            3,
            "{name}: the outage refused three connections"
        );
        assert!(
            src["reconnects"].as_u64().unwrap_or(0) >= 1,
            "{name}: {src}"
        );
        assert_whole(&dst, name);
        // A round sent again after the cut was acknowledged, not copied twice.
        let sent: u64 = src["rounds"]
            .as_array()
            .expect("rounds")
            .iter()
            .map(|r| r["pages"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(dst["round_pages"].as_u64(), Some(sent), "{name}");
    }
}

/// A post-copy migration 2 s in whose page connections go through a proxy
/// that cuts them after 24 MiB (past the first demand reads, well before the
/// last page), then `outage`. Returns the source's output, the destination's
/// exit code and stderr, both reports and the proxy.
fn pages_through(
    name: &str,
    outage: Outage,
    extra: &[&str],
) -> (Output, (Option<i32>, String), PathBuf, PathBuf, Proxy) {
    let dst_json = tmp(&format!("{name}-dst.json"));
    let src_json = tmp(&format!("{name}-src.json"));
    // The destination reaches the source's page server (on a port the test
    // chose) through the proxy.
    let server_port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let proxy = Proxy::start(
        SocketAddr::from(([127, 0, 0, 1], server_port)),
        Cut::AfterBytesBack(24 << 20),
        outage,
    );
    let listen = Listen::start(&[
        "--json",
        &dst_json.display().to_string(),
        "--pages-via",
        &proxy.addr.to_string(),
    ]);
    let port = server_port.to_string();
    let mut args = vec!["--page-server-port", port.as_str()];
    args.extend_from_slice(extra);
    let out = source(listen.addr, "postcopy", "2s", &args, &src_json);
    let end = listen.finish();
    (out, end, src_json, dst_json, proxy)
}

#[test]
fn a_page_connection_cut_mid_postcopy_and_restored_loses_nothing() {
    let (out, (code, err), src_json, dst_json, proxy) =
        pages_through("cut-pages", Outage::Refuse(3), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(proxy.was_cut() && proxy.refused() == 3);
    let (src, dst) = (json(&src_json), json(&dst_json));
    assert_whole(&dst, "pages cut mid post-copy");
    // Two connections at first (demand, copier), then each reconnected.
    assert!(
        src["page_server_connections"].as_u64().unwrap_or(0) >= 4,
        "{src}"
    );
}

#[test]
fn a_source_gone_after_the_switch_over_costs_exactly_the_pages_not_yet_here() {
    let config = tmp("gone.toml");
    // A short I/O timeout: the destination gives up on the source after a
    // third of it.
    std::fs::write(&config, "[store]\nio_timeout = \"3s\"\n").expect("config");
    let config = config.display().to_string();
    let (_, (code, err), src_json, dst_json, proxy) =
        pages_through("gone", Outage::Forever, &["--config", &config]);
    assert!(proxy.was_cut());
    assert_eq!(code, Some(1), "the destination fails the run: {err}");
    assert!(err.contains("never arrived"), "{err}");
    let dst = json(&dst_json);
    let lost = dst["lost_pages"].as_array().expect("lost pages");
    assert!(!lost.is_empty(), "{dst}");
    // The guest needed some of them: the processes that did are killed and
    // named, and the run counts the pages it could not bring back.
    assert!(dst["run"]["lost_pages"].as_u64().unwrap_or(0) > 0, "{dst}");
    let killed = dst["run"]["killed"].as_array().expect("killed");
    assert!(
        !killed.is_empty() && killed.iter().all(|k| k["name"].is_string()),
        "{dst}"
    );
    // The source saw its destination finish without every page.
    let src = json(&src_json);
    assert_eq!(src["all_pages_moved"], false, "{src}");
}

#[test]
fn bad_input_gets_one_line() {
    // A port in use.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = apf(&["listen", "--bind", "127.0.0.1", "--port", &port]);
    let line = one_line_input_error(&out, "port in use");
    assert!(line.contains("give another --port"), "{line}");
    // Nobody listening.
    let free = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let out = apf(&["run", "--migrate-to", &free.to_string()]);
    let line = one_line_input_error(&out, "no destination");
    assert!(line.contains("cannot reach the destination"), "{line}");
    let out = apf(&["run", "--migrate-to", "nowhere"]);
    let line = one_line_input_error(&out, "no port");
    assert!(line.contains("not HOST:PORT"), "{line}");
    let out = apf(&["run", "--migrate-to", "127.0.0.1:1", "--mode", "live"]);
    let line = one_line_input_error(&out, "bad mode");
    assert!(line.contains("precopy, postcopy or hybrid"), "{line}");
}

#[test]
fn another_protocol_version_is_refused_and_the_listener_keeps_listening() {
    let listen = Listen::start(&[]);
    // A frame that says version 99.
    let mut s = TcpStream::connect(listen.addr).expect("connect");
    let payload = b"{}";
    let mut frame = b"APFM".to_vec();
    frame.extend_from_slice(&99u32.to_le_bytes());
    frame.extend_from_slice(&2u32.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(payload);
    s.write_all(&frame).expect("write");
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut reply);
    assert!(
        String::from_utf8_lossy(&reply).contains("protocol version 99"),
        "the refusal names the version"
    );
    // Still listening: a real migration goes through.
    let src_json = tmp("after-refusal-src.json");
    let out = source(listen.addr, "postcopy", "500ms", SMALL, &src_json);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, err) = listen.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("protocol version 99"), "{err}");
}

#[test]
fn a_source_that_gives_up_before_the_switch_over_runs_its_vm_to_the_end() {
    // Pre-copy's first round over a slow network outlasts the short run: the
    // source gives up, its VM ends there with every checksum right, and the
    // destination drops the session and listens again.
    let listen = Listen::start(&[]);
    let src_json = tmp("abandon-src.json");
    let mut extra = SMALL.to_vec();
    extra.extend(["--net-latency", "20ms"]);
    let out = source(listen.addr, "precopy", "1s", &extra, &src_json);
    let err = listen.stop();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("abandoned"));
    let src = json(&src_json);
    assert!(src["abandoned"].is_string(), "{src}");
    assert_eq!(src["run"]["checksums_ok"], true, "{src}");
    assert_eq!(src["run"]["end"], "system_off");
    assert!(
        err.contains("abandoned by its source") && err.contains("listening again"),
        "{err}"
    );
}

#[test]
fn a_switch_over_that_cannot_be_confirmed_saves_the_vm_for_apf_restore() {
    // The switch-over is cut in half and the destination never comes back:
    // the source cannot know whether the VM runs there, so it saves it.
    let listen = Listen::start(&[]);
    let proxy = Proxy::start(
        listen.addr,
        Cut::AfterFrames {
            frames: 2,
            extra: 200,
        },
        Outage::Forever,
    );
    let config = tmp("rescue.toml");
    // The source retries for a third of this.
    std::fs::write(&config, "[store]\nio_timeout = \"3s\"\n").expect("config");
    let mut extra = SMALL.to_vec();
    let config = config.display().to_string();
    extra.extend(["--config", config.as_str()]);
    let out = source(
        proxy.addr,
        "postcopy",
        "1s",
        &extra,
        &tmp("rescue-src.json"),
    );
    let _ = listen.stop();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let dir = err
        .split("saved in ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no directory in {err}"));
    assert!(err.contains("apf restore"), "{err}");
    // Nothing lost: the saved VM finishes its run with every checksum right.
    let restored = tmp("rescue-restore.json");
    let out = apf(&["restore", dir, "--json", &restored.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&restored);
    assert_eq!(r["restores"][0]["run"]["checksums_ok"], true, "{r}");
    let _ = std::fs::remove_dir_all(dir);
}
