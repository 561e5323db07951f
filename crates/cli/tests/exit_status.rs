//! The `apf` binary's exit statuses (README, "Exit statuses"): 0 the run
//! succeeded, 1 the run failed, 2 the input was wrong (one line on stderr that
//! says what to change), 3 the host could not build the VM.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A run that takes well under a second (with `--store mem`): no added
/// latency, a small scan beside a calc.
const QUICK: &[&str] = &[
    "--vcpus",
    "1",
    "--ram",
    "64MiB",
    "--budget",
    "16MiB",
    "--latency",
    "0",
    "-p",
    "scan,mem=8MiB,work=200",
    "-p",
    "calc",
];

fn apf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apf"))
        .args(args)
        .output()
        .expect("apf runs")
}

/// `apf COMMAND QUICK EXTRA`, over host memory unless `extra` names a store.
fn quick(command: &str, extra: &[&str]) -> Output {
    let mut args = vec![command];
    args.extend_from_slice(QUICK);
    if !extra.contains(&"--store") {
        args.extend_from_slice(&["--store", "mem"]);
    }
    args.extend_from_slice(extra);
    apf(&args)
}

/// A directory of this test's own.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("apf-exit-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn describe(args: &str, out: &Output) -> String {
    format!(
        "apf {args}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    )
}

/// Status 2, one line on stderr, and that line says `want`.
#[track_caller]
fn assert_refused(args: &str, out: &Output, want: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{}", describe(args, out));
    assert_eq!(err.lines().count(), 1, "one line: {}", describe(args, out));
    assert!(
        err.contains(want),
        "should say {want:?}: {}",
        describe(args, out)
    );
}

#[test]
fn wrong_flags_and_values_exit_2_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--ram", "4potatoes"], "is not a size"),
        (&["run", "--ram", "0"], "ram = 0B: use a multiple of 4KiB"),
        (&["run", "--vcpus", "0"], "vcpus = 0: use 1 to 16"),
        (&["run", "--vcpus", "1000"], "vcpus = 1000: use 1 to 16"),
        (&["compare", "--vcpus", "0"], "vcpus = 0: use 1 to 16"),
        (&["sweep", "--budget", "100"], "budget = 100B"),
        (&["run", "-p", "scan,vcpu=3,work=1"], "pinned to vcpu 3"),
        (
            &["store-bench", "--queue-depth", "0"],
            "store.queue_depth = 0",
        ),
        (
            &["run", "--json", "/nonexistent-apf-dir/run.json"],
            "--json",
        ),
        (&["compare", "--chart", "compare.gif"], ".png or .svg"),
    ];
    for (args, want) in cases {
        assert_refused(&args.join(" "), &apf(args), want);
    }
}

#[test]
fn a_wrong_config_file_exits_2_with_one_line() {
    let dir = scratch("config");
    let cases = [
        ("value.toml", "vcpus = \"two\"\n", "value.toml"),
        ("key.toml", "vcpu = 2\n", "unknown field `vcpu`"),
        (
            "range.toml",
            "[store]\nread_error_rate = 2.0\n",
            "store.read_error_rate = 2: use a number from 0 to 1",
        ),
    ];
    for (name, text, want) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        assert_refused(
            &format!("run --config {path}"),
            &apf(&["run", "--config", path]),
            want,
        );
    }
    let missing = dir.join("missing.toml");
    let missing = missing.to_str().unwrap();
    assert_refused(
        "run --config missing.toml",
        &apf(&["run", "--config", missing]),
        "cannot read the config file",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_or_missing_image_exits_2_at_once() {
    let dir = scratch("image");
    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let empty = empty.to_str().unwrap();
    // Before, an empty image booted nothing and ran until --timeout.
    let out = apf(&["run", "--image", empty, "--timeout", "3s"]);
    assert_refused("run --image empty.bin", &out, "is empty");
    let missing = dir.join("missing.bin");
    let missing = missing.to_str().unwrap();
    let out = apf(&["run", "--image", missing]);
    assert_refused("run --image missing.bin", &out, "cannot read the image");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unusable_store_path_exits_2() {
    let dir = scratch("store");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // A directory to be made under a file cannot be made.
    let under = file.join("swap");
    let under = under.to_str().unwrap();
    let out = quick("run", &["--store", "file", "--store-path", under]);
    assert_refused("run --store-path FILE/swap", &out, "--store-path");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_that_succeeds_exits_0() {
    let out = quick("run", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("run QUICK", &out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("all 2 checksums correct"), "{text}");
}

#[test]
fn a_run_that_times_out_exits_1() {
    let out = quick("run", &["--timeout", "10ms"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("run QUICK --timeout 10ms", &out)
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("did not finish in time"), "{err}");
}

#[test]
fn a_host_that_cannot_map_guest_ram_exits_3() {
    // An address-space limit of 1 GiB: guest RAM of 16 GiB cannot be mapped.
    let script = format!(
        "ulimit -v 1048576 && exec '{}' run --ram 16GiB --store mem -p scan,work=1",
        env!("CARGO_BIN_EXE_apf")
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh runs");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        describe("run --ram 16GiB under ulimit -v 1GiB", &out)
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot map"), "{err}");
}
