//! The scripted test guests on apf (issue 5 "Tests", issue 8 "hostile-guest
//! suite"). Each image checks itself against the spec and prints a line per
//! check (the names are in `scripted/mod.rs`; what each means is in
//! `guest/tests/README.md`). A run passes when no check failed, every check
//! printed `OK`, the image printed `DONE`, and the VM powered off.

mod scripted;

use apf_vm::config::{ByteSize, ProcessConfig, Span, StoreConfig, VmConfig, WorkloadKind};
use scripted::Image;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Only a guard against a hung guest, never a statement about speed.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// A VM for an image: RAM as `guest/tests/rt.h` assumes (TEST_RAM_SIZE), APF
/// offered with the separate ready channel, the default page-ready PPI (17). The
/// images do not read the boot block; the process is there because a VmConfig
/// must have one.
fn vm(image: &Image, budget: u64, store: StoreConfig) -> VmConfig {
    VmConfig {
        vcpus: image.vcpus,
        ram: ByteSize(64 * MIB),
        budget: ByteSize(budget),
        apf: true,
        separate_ready: true,
        store,
        processes: vec![ProcessConfig {
            kind: WorkloadKind::Calc,
            vcpu: 0,
            mem: ByteSize(0),
            work: 1,
        }],
        duration: None,
        seed: 1,
    }
}

/// Everything resident: the call images never fault on a page the store holds.
fn no_pressure(image: &Image) -> VmConfig {
    vm(image, 64 * MIB, StoreConfig::default())
}

/// A ~2 MiB budget under 16 MiB and more of data, over a store with 500 µs added
/// to every read: pages are evicted and every read-back is a slow fault.
fn slow_store(image: &Image) -> VmConfig {
    let store = StoreConfig {
        latency: Span(Duration::from_micros(500)),
        ..StoreConfig::default()
    };
    vm(image, 2 * MIB, store)
}

fn run(image: &Image, config: &VmConfig) {
    let path = image.path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let options = apf_vm::RunOptions {
        timeout: HANG_GUARD,
        echo_console: false,
        ..Default::default()
    };
    let run = apf_vm::run_image(config, &bytes, options)
        .unwrap_or_else(|e| panic!("{}: {e}", image.name));
    let console = scripted::parse(&run.uart);
    if let Err(why) = console.verdict(image) {
        panic!("{}: {why}\nconsole:\n{}", image.name, run.uart);
    }
    assert!(
        run.end == apf_vm::RunEnd::SystemOff,
        "{}: the VM did not power off\nconsole:\n{}",
        image.name,
        run.uart
    );
}

#[test]
fn sdei_calls() {
    run(&scripted::SDEI_CALLS, &no_pressure(&scripted::SDEI_CALLS));
}

#[test]
fn psci_calls() {
    run(&scripted::PSCI_CALLS, &no_pressure(&scripted::PSCI_CALLS));
}

#[test]
fn apf_calls() {
    run(&scripted::APF_CALLS, &no_pressure(&scripted::APF_CALLS));
}

#[test]
fn apf_flow() {
    run(&scripted::APF_FLOW, &slow_store(&scripted::APF_FLOW));
}

#[test]
fn hostile_never_ack() {
    run(
        &scripted::HOSTILE_NEVER_ACK,
        &slow_store(&scripted::HOSTILE_NEVER_ACK),
    );
}

#[test]
fn hostile_disable_in_flight() {
    run(
        &scripted::HOSTILE_DISABLE_IN_FLIGHT,
        &slow_store(&scripted::HOSTILE_DISABLE_IN_FLIGHT),
    );
}
