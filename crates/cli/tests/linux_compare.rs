//! `apf compare --kernel`: Debian's stock arm64 kernel booted twice, APF off then
//! on, a short scan under memory pressure beside a calc that runs until the scan
//! is done. Both runs power off with every checksum right, and the init stopped
//! the calc after it had done some work. With APF on, the guest module took every
//! not-present the host sent, each was answered by a page-ready, and most of APF
//! off's synchronous faults became asynchronous.
//!
//! The kernel and initramfs come from `guest/linux/build.sh` (see
//! `crates/vm/tests/common/linux.rs`); without them the test skips with the reason
//! printed, unless `APF_REQUIRE_LINUX=1`.

#[path = "../../vm/tests/common/linux.rs"]
mod linux;
#[path = "../../vm/tests/common/qemu.rs"]
mod qemu;

use linux::{CHEAP_BOOT, artifacts};
use serde_json::Value;
use std::process::Command;

#[test]
fn compare_boots_the_kernel_with_apf_off_then_on() {
    let Some(linux) = artifacts() else { return };
    let dir = std::env::temp_dir().join(format!("apf-linux-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("compare.json");
    let append = format!("console=ttyAMA0 {CHEAP_BOOT}");
    let out = Command::new(env!("CARGO_BIN_EXE_apf"))
        .args(["compare", "--kernel"])
        .arg(&linux.image)
        .arg("--initrd")
        .arg(&linux.initrd)
        .args(["--append", &append])
        .args(["--vcpus", "1", "--ram", "256MiB", "--budget", "128MiB"])
        .args(["-p", "scan,mem=160MiB,work=3000", "-p", "calc"])
        .args(["--timeout", "300s", "--json"])
        .arg(&json)
        .output()
        .expect("apf runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let described = format!(
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{described}");
    assert!(stdout.contains("1 calc (vcpu 0) work"), "{described}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["command"], "compare");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{report:#}");
    for (run, (label, apf)) in runs.iter().zip([("APF off", false), ("APF on", true)]) {
        let what = format!("{label}: {run:#}");
        assert_eq!((&run["label"], &run["apf"]), (&label.into(), &apf.into()));
        assert_eq!(run["end"], "system_off", "{what}");
        assert_eq!(run["checksums_ok"], true, "{what}");
        assert_eq!(run["killed"].as_array().map(Vec::len), Some(0), "{what}");
        let procs = run["processes"].as_array().unwrap();
        assert_eq!(procs.len(), 2, "{what}");
        assert!(procs.iter().all(|p| p["checksum_ok"] == true), "{what}");
        assert_eq!(
            (&procs[0]["state"], &procs[0]["progress"]),
            (&"done".into(), &3000.into())
        );
        let calc = &procs[1];
        assert_eq!((&calc["name"], &calc["work"]), (&"calc".into(), &0.into()));
        // Stopped by the init once the scan had ended: done, as the built-in
        // guest reports it, with the work it published.
        assert_eq!(calc["state"], "done", "{what}");
        assert!(calc["progress"].as_u64().unwrap() > 0, "{what}");
        // Present whether or not the guest module has counters yet.
        let counters = run["guest_module"].as_object().expect("an object");
        assert!(counters.values().all(Value::is_u64), "{what}");
    }
    let (off, on) = (&runs[0], &runs[1]);
    let total = |run: &Value, group: &str, name: &str| -> u64 {
        run["vcpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[group][name].as_u64().unwrap())
            .sum()
    };
    let delivered = total(on, "apf", "not_present_delivered");
    assert!(delivered > 0, "{on:#}");
    assert_eq!(
        total(on, "apf", "page_ready") + total(on, "apf", "cancelled"),
        delivered,
        "every not-present is answered: {on:#}"
    );
    let module = &on["guest_module"];
    assert_eq!(module["not_present"], delivered, "{on:#}");
    // The init reads the module's counters once the scan has ended; a page-ready
    // for the calc (stopped while asleep on a page) may still come after.
    let module_ready = module["page_ready"].as_u64().unwrap();
    assert!(module_ready > 0, "{on:#}");
    assert!(module_ready <= total(on, "apf", "page_ready"), "{on:#}");
    assert_eq!(module["fallbacks"], 0, "{on:#}");
    assert_eq!(off["guest_module"]["not_present"], 0, "{off:#}");
    // User-mode faults became asynchronous; kernel-mode ones (populating the
    // working set) stay synchronous.
    let (sync_off, sync_on) = (total(off, "faults", "sync"), total(on, "faults", "sync"));
    assert!(
        sync_on < sync_off,
        "sync faults off {sync_off}, on {sync_on}"
    );
    let blocktime = |run: &Value| run["vcpus"][0]["blocktime_s"].as_f64().unwrap();
    assert!(blocktime(on) < blocktime(off), "{off:#}\n{on:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}
