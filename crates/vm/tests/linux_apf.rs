//! Debian's stock arm64 Linux 6.12 on apf: the kernel boots under host memory
//! pressure (guest RAM four times the host budget, so pages are evicted to the
//! swap file and read back under Linux), runs the init of `guest/linux/` with every
//! workload kind, and powers off; every checksum matches the Rust replay, and the
//! same processes on QEMU report the same checksums.
//!
//! The kernel and initramfs come from `guest/linux/build.sh` (see
//! `common/linux.rs`); without them the tests skip with the reason printed, unless
//! `APF_REQUIRE_LINUX=1`.

#[path = "common/linux.rs"]
mod linux;
#[path = "common/qemu.rs"]
mod qemu;

use apf_abi::ppi::APF_DEFAULT_PPI;
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_abi::{APF_VERSION, ASYNC_PF_PER_VCPU};
use apf_vm::config::{ByteSize, ProcessConfig, StoreConfig, StoreKind, VmConfig, WorkloadKind};
use apf_vm::{LinuxGuest, RunEnd, RunOptions, VmRun, boot_block, run_linux};
use linux::{
    APF_NOT_OFFERED, APF_OFFERED, Artifacts, CHEAP_BOOT, MODULE_LOADED, NO_FP_BANNER, artifacts,
    boot_on_qemu, token,
};
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Only a guard against a hung guest: a boot and its workloads take seconds.
const TIMEOUT: Duration = Duration::from_secs(600);

fn process(kind: WorkloadKind, vcpu: u32, mem: u64, work: u64) -> ProcessConfig {
    ProcessConfig {
        kind,
        vcpu,
        mem: ByteSize(mem),
        work,
        write_pct: 100,
    }
}

/// 512 MiB of guest RAM in a 128 MiB budget over a real swap file, every workload
/// kind spread over the vCPUs, a 192 MiB scan among them and a 32 MiB one that
/// writes half its accesses.
fn config(vcpus: u32) -> VmConfig {
    let last = vcpus - 1;
    VmConfig {
        vcpus,
        ram: ByteSize(512 * MIB),
        budget: ByteSize(128 * MIB),
        store: StoreConfig {
            kind: StoreKind::File,
            ..StoreConfig::default()
        },
        processes: vec![
            process(WorkloadKind::Scan, 0, 192 * MIB, 20_000),
            process(WorkloadKind::Calc, last, 0, 3_000),
            process(WorkloadKind::Kv, last, MIB, 5_000),
            process(WorkloadKind::Build, 0, 8 * MIB, 1_000),
            // A scan that writes half its accesses: the sixth field of its token.
            ProcessConfig {
                write_pct: 50,
                ..process(WorkloadKind::Scan, last, 32 * MIB, 4_000)
            },
        ],
        seed: 7,
        ..VmConfig::default()
    }
}

fn boot(config: &VmConfig, linux: &Artifacts) -> VmRun {
    boot_with(config, linux, "")
}

/// [`boot`] with `extra` on the kernel command line.
fn boot_with(config: &VmConfig, linux: &Artifacts, extra: &str) -> VmRun {
    let guest = LinuxGuest {
        kernel: std::fs::read(&linux.image).expect("read the Image"),
        initrd: Some(std::fs::read(&linux.initrd).expect("read the initramfs")),
        append: format!("console=ttyAMA0 {CHEAP_BOOT} {extra}"),
    };
    run_linux(
        config,
        guest,
        RunOptions {
            timeout: TIMEOUT,
            echo_console: false,
            ..Default::default()
        },
    )
    .expect("the VM runs")
}

/// Boots on `vcpus` and checks the run; returns it for more checks.
fn boots_and_runs_every_workload(vcpus: u32) -> Option<(VmConfig, VmRun)> {
    let linux = artifacts()?;
    let config = config(vcpus);
    let run = boot(&config, &linux);
    let console = &run.uart;
    assert_eq!(run.end, RunEnd::SystemOff, "console:\n{console}");
    assert_eq!(run.kernel_panic, None);
    assert!(console.contains(NO_FP_BANNER), "console:\n{console}");
    assert!(console.contains("apf-init done"), "console:\n{console}");
    // The module loaded and found what the VM offers (APF is on by default).
    assert!(config.apf);
    assert!(console.contains(MODULE_LOADED), "console:\n{console}");
    assert!(
        console.contains(&offered_line()),
        "no `{}`; console:\n{console}",
        offered_line()
    );
    if vcpus > 1 {
        assert!(
            console.contains(&format!("SMP: Total of {vcpus} processors activated")),
            "console:\n{console}"
        );
    }
    assert_eq!(run.processes.len(), config.processes.len());
    for p in &run.processes {
        assert!(
            !p.killed() && p.checksum_ok,
            "process {p:?}; console:\n{console}"
        );
        assert_eq!(p.progress, config.processes[p.index].work, "{p:?}");
    }
    // Under Linux, pages left for the swap file and came back.
    assert!(run.mem.io.pages_written > 0, "{:?}", run.mem);
    assert!(run.mem.io.pages_read > 0, "{:?}", run.mem);
    assert_eq!(run.lost_pages(), 0);
    run.mem_invariants.as_ref().expect("memory invariants hold");
    eprintln!(
        "linux on apf, {vcpus} vCPU(s): powered off after {:.2?}",
        run.wall
    );
    Some((config, run))
}

/// The module's line for what apf offers: ABI version, slots per vCPU, the SDEI
/// event and the page-ready PPI (`ApfEngine`'s answers with the VM's defaults).
fn offered_line() -> String {
    format!(
        "{APF_OFFERED} {}.{} ({ASYNC_PF_PER_VCPU} slots, SDEI event {SDEI_EVENT_ASYNC_PF:#x}, PPI {APF_DEFAULT_PPI})",
        (APF_VERSION >> 16) & 0xff,
        (APF_VERSION >> 8) & 0xff,
    )
}

/// With `apf: false` the VM does not offer APF: the module loads, says why, and
/// the process still runs.
#[test]
fn with_apf_not_offered_the_module_says_so_and_init_goes_on() {
    let Some(linux) = artifacts() else { return };
    let config = VmConfig {
        vcpus: 1,
        ram: ByteSize(256 * MIB),
        budget: ByteSize(256 * MIB),
        apf: false,
        processes: vec![process(WorkloadKind::Calc, 0, 0, 200)],
        seed: 3,
        ..VmConfig::default()
    };
    let run = boot(&config, &linux);
    let console = &run.uart;
    assert_eq!(run.end, RunEnd::SystemOff, "console:\n{console}");
    assert!(console.contains(MODULE_LOADED), "console:\n{console}");
    assert_eq!(
        console.matches(APF_NOT_OFFERED).count(),
        1,
        "console:\n{console}"
    );
    // The UID matched (apf answers it either way); FEATURES left ASYNC_PF out.
    assert!(
        console.contains("apf: APF not offered (FEATURES does not list ASYNC_PF)"),
        "console:\n{console}"
    );
    assert!(!console.contains(APF_OFFERED), "console:\n{console}");
    assert_eq!(run.processes.len(), 1);
    assert!(run.processes[0].checksum_ok, "{:?}", run.processes[0]);
    assert_eq!(run.processes[0].progress, 200);
}

/// With KPTI forced on, user mode runs with the kernel unmapped, where the host
/// could not enter the module's SDEI entry: the module finds APF offered but keeps
/// it off, and the process runs.
#[test]
fn with_kpti_the_module_keeps_apf_off() {
    let Some(linux) = artifacts() else { return };
    let config = VmConfig {
        vcpus: 1,
        ram: ByteSize(256 * MIB),
        budget: ByteSize(128 * MIB),
        processes: vec![process(WorkloadKind::Calc, 0, 0, 200)],
        seed: 4,
        ..VmConfig::default()
    };
    let run = boot_with(&config, &linux, "kpti=1");
    let console = &run.uart;
    assert_eq!(run.end, RunEnd::SystemOff, "console:\n{console}");
    assert!(
        console.contains("CPU features: detected: Kernel page table isolation (KPTI)"),
        "console:\n{console}"
    );
    assert!(console.contains(&offered_line()), "console:\n{console}");
    assert!(
        console.contains("apf: APF off: the kernel is unmapped at EL0 (KPTI)"),
        "console:\n{console}"
    );
    assert!(
        console.contains("apf-module not_present 0"),
        "console:\n{console}"
    );
    assert!(run.processes[0].checksum_ok, "{:?}", run.processes[0]);
}

#[test]
fn linux_boots_on_1_vcpu_under_memory_pressure_and_every_checksum_matches() {
    boots_and_runs_every_workload(1);
}

#[test]
fn linux_boots_on_2_vcpus_and_qemu_reports_the_same_checksums() {
    let Some((config, run)) = boots_and_runs_every_workload(2) else {
        return;
    };
    if !qemu::qemu_present() {
        return;
    }
    let Some(linux) = artifacts() else { return };
    // The same processes, with the seeds apf derived, on QEMU.
    let specs = boot_block(&config).procs;
    let tokens: Vec<String> = specs[..config.processes.len()].iter().map(token).collect();
    let out = boot_on_qemu("same-processes-2vcpu", &linux, 2, &tokens);
    for p in &run.processes {
        let line = format!(
            "apf-proc {} done {} {:016x}",
            p.index, p.progress, p.checksum
        );
        assert!(
            out.lines().any(|l| l.trim_end() == line),
            "QEMU did not print `{line}`; its console:\n{out}"
        );
    }
}
