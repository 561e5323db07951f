//! A snapshot of Debian's stock arm64 Linux on apf, taken while its init's
//! processes run (a scan that keeps the guest's pages moving through the swap
//! file, a calc beside it), restored lazily with APF on: the guest carries on
//! from its snapshot, the apf module in it takes not-presents for the image's
//! pages, and every process finishes with the checksum of its whole run.
//!
//! Needs the kernel and initramfs of `guest/linux/build.sh` (see
//! `common/linux.rs`); skips without them unless `APF_REQUIRE_LINUX=1`.

#[path = "common/linux.rs"]
mod linux;
#[path = "common/qemu.rs"]
mod qemu;

use apf_abi::boot::proc_state;
use apf_vm::config::{
    ByteSize, ProcessConfig, SnapshotPoint, Span, StoreConfig, VmConfig, WorkloadKind,
};
use apf_vm::snapshot::{
    ImageSource, MEMORY_FILE, RestoreMode, Snapshot, SnapshotOf, take_snapshot,
};
use apf_vm::{LinuxGuest, RunEnd, RunOptions};
use linux::{CHEAP_BOOT, MODULE_LOADED, artifacts};
use std::ops::ControlFlow;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// One vCPU, 256 MiB of RAM in a 64 MiB budget, 200 µs added to every store
/// I/O; a 96 MiB scan (its pages go to the swap file and come back) beside a
/// calc that runs until the scan is done.
fn config() -> VmConfig {
    VmConfig {
        vcpus: 1,
        ram: ByteSize(256 * MIB),
        budget: ByteSize(64 * MIB),
        apf: true,
        store: StoreConfig {
            latency: Span(Duration::from_micros(200)),
            ..StoreConfig::default()
        },
        processes: vec![
            ProcessConfig {
                kind: WorkloadKind::Scan,
                vcpu: 0,
                mem: ByteSize(96 * MIB),
                work: 6_000,
                write_pct: 100,
            },
            ProcessConfig {
                kind: WorkloadKind::Calc,
                vcpu: 0,
                mem: ByteSize(0),
                work: 0,
                write_pct: 100,
            },
        ],
        seed: 3,
        ..VmConfig::default()
    }
}

#[test]
fn a_running_linux_restores_lazily_and_finishes_its_work() {
    let Some(artifacts) = artifacts() else {
        return;
    };
    let guest = LinuxGuest {
        kernel: std::fs::read(&artifacts.image).expect("read the Image"),
        initrd: Some(std::fs::read(&artifacts.initrd).expect("read the initramfs")),
        append: format!("console=ttyAMA0 {CHEAP_BOOT}"),
    };
    let options = RunOptions {
        timeout: Duration::from_secs(600),
        echo_console: false,
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    // 300 ms after the init started its processes: both are mid-work.
    let taken = take_snapshot(
        &config,
        SnapshotOf::Linux(guest),
        SnapshotPoint::After(Duration::from_millis(300)),
        dir.path(),
        options,
        &mut |_| ControlFlow::Continue(()),
    )
    .expect("the snapshot is taken");
    assert!(
        taken.run.uart.contains(MODULE_LOADED),
        "console:\n{}",
        taken.run.uart
    );
    assert!(
        !taken.run.uart.contains("apf-proc 0 "),
        "the scan was still running at the snapshot"
    );
    let image = std::fs::read(dir.path().join(MEMORY_FILE)).expect("image");

    let snap = Snapshot::open(dir.path()).expect("the snapshot reads back");
    let restored = snap
        .restore(
            RestoreMode::Lazy,
            snap.config(),
            &ImageSource::Local,
            options,
            &mut |_| ControlFlow::Continue(()),
        )
        .expect("the snapshot restores");
    let run = &restored.run;
    assert_eq!(run.end, RunEnd::SystemOff, "console:\n{}", run.uart);
    assert_eq!(run.kernel_panic, None);
    assert!(run.uart.contains("apf-init done"), "console:\n{}", run.uart);
    for p in &run.processes {
        assert_eq!(p.state, proc_state::DONE, "{p:?}\n{}", run.uart);
        assert!(p.checksum_ok, "checksum of {p:?}");
    }
    assert_eq!(run.processes[0].progress, 6_000);
    assert!(run.mem.io.pages_read > 0, "pages came from the image");
    let not_present: u64 = run.vcpus.iter().map(|v| v.apf.not_present).sum();
    let wake_all: u64 = run.vcpus.iter().map(|v| v.apf.wake_all).sum();
    assert!(
        not_present > 0,
        "the module took not-presents after the restore"
    );
    assert!(
        wake_all > 0,
        "the restored engine woke the guest's sleepers"
    );
    let module = |name: &str| {
        run.guest_module
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    };
    assert!(
        module("not_present").is_some_and(|n| n > 0),
        "{:?}",
        run.guest_module
    );
    assert!(
        std::fs::read(dir.path().join(MEMORY_FILE)).expect("image") == image,
        "the image is never written"
    );
}
