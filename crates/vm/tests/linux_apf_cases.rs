//! The apf guest module's hostile cases on Debian's stock kernel: init runs the case
//! that `apf.case=` names (`guest/linux/cases.c`), which prints `apf-case <name> ok
//! ...` only if every verifier's data came back intact and the case's own check
//! held; init then prints the module's counters (`apf-module <name> <value>`), which
//! these tests check against what the case must have caused.
//!
//! The kernel and initramfs come from `guest/linux/build.sh` (see
//! `common/linux.rs`); without them the tests skip with the reason printed, unless
//! `APF_REQUIRE_LINUX=1`.

#[path = "common/linux.rs"]
mod linux;
#[path = "common/qemu.rs"]
mod qemu;

use apf_host::apf::SyncReason;
use apf_vm::config::{ByteSize, Span, StoreConfig, VmConfig};
use apf_vm::{LinuxGuest, RunEnd, RunOptions, VmRun, run_linux};
use linux::{APF_OFFERED, CHEAP_BOOT, MODULE_LOADED, artifacts};
use std::collections::BTreeMap;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Only a guard against a hung guest.
const TIMEOUT: Duration = Duration::from_secs(600);

/// 512 MiB of RAM in a 64 MiB host budget, no `-p` processes: the case brings
/// its own. `latency` is added to every store I/O: a long one keeps tasks asleep
/// on their pages while the case acts.
fn config(vcpus: u32, latency: Duration) -> VmConfig {
    VmConfig {
        vcpus,
        ram: ByteSize(512 * MIB),
        budget: ByteSize(64 * MIB),
        store: StoreConfig {
            latency: Span(latency),
            ..StoreConfig::default()
        },
        processes: Vec::new(),
        seed: 11,
        ..VmConfig::default()
    }
}

/// Boots with `apf.case=<case>` (and `extra` on the command line), checks that the
/// case passed and the VM powered off; returns the run and the module's counters.
fn run_case(case: &str, extra: &str, config: &VmConfig) -> Option<(VmRun, BTreeMap<String, u64>)> {
    let linux = artifacts()?;
    let guest = LinuxGuest {
        kernel: std::fs::read(&linux.image).expect("read the Image"),
        initrd: Some(std::fs::read(&linux.initrd).expect("read the initramfs")),
        append: format!("console=ttyAMA0 {CHEAP_BOOT} apf.case={case} {extra}"),
    };
    let run = run_linux(
        config,
        guest,
        RunOptions {
            timeout: TIMEOUT,
            echo_console: false,
            ..Default::default()
        },
    )
    .expect("the VM runs");
    let console = &run.uart;
    assert_eq!(run.end, RunEnd::SystemOff, "console:\n{console}");
    assert!(console.contains(MODULE_LOADED), "console:\n{console}");
    assert!(console.contains(APF_OFFERED), "console:\n{console}");
    assert!(
        console.contains(&format!("apf-case {case} ok ")),
        "case {case} did not pass; console:\n{console}"
    );
    assert_eq!(run.lost_pages(), 0);
    run.mem_invariants.as_ref().expect("memory invariants hold");
    let counters = module_counters(console);
    eprintln!("case {case}: {counters:?}, wall {:.1?}", run.wall);
    Some((run, counters))
}

/// The `apf-module <name> <value>` lines init prints from /sys/kernel/apf.
fn module_counters(console: &str) -> BTreeMap<String, u64> {
    console
        .lines()
        .filter_map(|l| {
            let mut words = l.trim_end().strip_prefix("apf-module ")?.split(' ');
            let name = words.next()?;
            let value = words.next()?.parse().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

fn get(counters: &BTreeMap<String, u64>, name: &str) -> u64 {
    *counters
        .get(name)
        .unwrap_or_else(|| panic!("no apf-module {name} line: {counters:?}"))
}

/// The host's synchronous faults for `reason`, over every vCPU.
fn host_fallbacks(run: &VmRun, reason: SyncReason) -> u64 {
    run.vcpus.iter().map(|v| v.apf.fallback(reason)).sum()
}

/// cpu1 goes offline while four or more tasks sleep on pages, and comes back: the
/// verifiers finish with their data intact, and no page-ready for a token from
/// before arrives after cpu1 is back (the host drains cpu1's work on ENABLE 0).
///
/// Whether a task is still asleep on a cpu1 token when the module's offline
/// callback runs is up to timing: Linux's scheduler deactivates the CPU first and
/// pushes every task that wakes meanwhile to cpu0, where its next fault goes. The
/// wake-up on going offline is asserted by the unload test, which runs the same
/// callback with no scheduler step before it.
#[test]
fn a_cpu_going_offline_and_back_loses_nothing() {
    let Some((_, counters)) = run_case("hotplug", "", &config(2, Duration::from_millis(2))) else {
        return;
    };
    assert_eq!(get(&counters, "ready_unknown"), 0, "{counters:?}");
    assert!(get(&counters, "sleepers_max") >= 4, "{counters:?}");
    assert_eq!(get(&counters, "sleepers"), 0, "{counters:?}");
}

/// SIGKILL to a task asleep on a page: it dies, and the page-ready for its token
/// is consumed by the orphaned entry. (The init retries with a fresh task when
/// the page came before the signal: its own path to kill() faults too.)
#[test]
fn a_killed_sleeper_leaves_and_its_page_ready_is_consumed() {
    let Some((_, counters)) = run_case("kill", "", &config(2, Duration::from_millis(10))) else {
        return;
    };
    let killed = get(&counters, "killed");
    assert!(killed >= 1, "{counters:?}");
    assert_eq!(get(&counters, "ready_orphan"), killed, "{counters:?}");
    assert_eq!(get(&counters, "sleepers"), 0, "{counters:?}");
}

/// rmmod while four or more tasks sleep on pages: unload turns APF off on every
/// CPU, wakes the sleepers, waits for them to leave the module, and they finish
/// with their data intact.
#[test]
fn the_module_unloads_with_sleepers() {
    let Some((run, _)) = run_case("unload", "", &config(2, Duration::from_millis(2))) else {
        return;
    };
    let woken: u64 = run
        .uart
        .lines()
        .find_map(|l| l.split("apf: unloaded, ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `apf: unloaded, <n> sleepers woken`:\n{}", run.uart));
    assert!(woken >= 1, "console:\n{}", run.uart);
    // The counters went with the module: init found no /sys/kernel/apf.
    assert!(
        module_counters(&run.uart).is_empty(),
        "console:\n{}",
        run.uart
    );
}

/// 200 tasks faulting at once over 16 table entries: the table fills, the rest
/// fault synchronously, and nothing hangs or loses data.
#[test]
fn a_full_sleeper_table_falls_back_to_synchronous_faults() {
    let Some((run, counters)) = run_case(
        "crowd",
        "apf.max_sleepers=16",
        &config(2, Duration::from_millis(1)),
    ) else {
        return;
    };
    assert!(run.uart.contains("apf-case crowd ok 200 verifiers intact"));
    assert_eq!(get(&counters, "sleepers_max"), 16, "{counters:?}");
    assert!(get(&counters, "fallbacks") >= 1, "{counters:?}");
    assert_eq!(get(&counters, "sleepers"), 0, "{counters:?}");
}

/// write(2) from a buffer the host evicted: the kernel's copy faults in kernel
/// mode, synchronously (the case checks no not-present came during it), and the
/// file holds the buffer's data.
#[test]
fn a_kernel_mode_fault_stays_synchronous() {
    let Some((run, _)) = run_case("kwrite", "", &config(1, Duration::from_millis(1))) else {
        return;
    };
    assert!(host_fallbacks(&run, SyncReason::KernelMode) > 0);
}
