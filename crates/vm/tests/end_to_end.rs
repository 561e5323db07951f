//! The whole system: the built-in guest on the platform, over real guest memory
//! evicted to a real swap file. Counts and correctness are asserted, never timings.

use apf_abi::boot::proc_state;
use apf_abi::esr::{Esr, fsc};
use apf_vm::config::{ByteSize, ProcessConfig, Span, StoreConfig, VmConfig, WorkloadKind};
use apf_vm::{RunEnd, RunOptions, VmRun, run_workloads};
use std::time::Duration;

/// 2 vCPUs, each with a scan and a calc; guest RAM 4× the host budget; a file store
/// with added latency.
fn scan_calc(apf: bool) -> VmConfig {
    let processes = (0..2)
        .flat_map(|vcpu| {
            [
                ProcessConfig {
                    kind: WorkloadKind::Scan,
                    vcpu,
                    mem: ByteSize(20 << 20),
                    work: 2500,
                    write_pct: 100,
                },
                ProcessConfig {
                    kind: WorkloadKind::Calc,
                    vcpu,
                    mem: ByteSize(0),
                    work: 0,
                    write_pct: 100,
                },
            ]
        })
        .collect();
    VmConfig {
        vcpus: 2,
        ram: ByteSize(64 << 20),
        budget: ByteSize(16 << 20),
        apf,
        separate_ready: true,
        store: StoreConfig {
            latency: Span(Duration::from_micros(200)),
            ..StoreConfig::default()
        },
        processes,
        duration: None,
        seed: 7,
    }
}

fn run(config: &VmConfig) -> VmRun {
    let options = RunOptions {
        timeout: Duration::from_secs(300),
        echo_console: false,
        ..Default::default()
    };
    let run = run_workloads(config, options).expect("the VM runs");
    assert_eq!(
        run.end,
        RunEnd::SystemOff,
        "the guest powers off; console:\n{}",
        run.uart
    );
    run
}

fn assert_all_correct(run: &VmRun) {
    assert!(!run.processes.is_empty());
    for p in &run.processes {
        assert_eq!(p.state, proc_state::DONE, "{p:?}\n{}", run.uart);
        assert!(p.checksum_ok, "checksum of {p:?}");
    }
}

#[test]
fn apf_off_and_on_both_correct_and_apf_removes_blocktime() {
    let off = run(&scan_calc(false));
    let on = run(&scan_calc(true));
    for (name, r) in [("off", &off), ("on", &on)] {
        for v in &r.vcpus {
            eprintln!(
                "APF {name} vcpu{}: blocked {:?} idle {:?} guest {:?}; faults {:?}; apf {:?}",
                v.index, v.stats.blocked, v.stats.idle, v.stats.guest, v.stats.faults, v.apf
            );
        }
        eprintln!("APF {name} processes: {:?}", r.processes);
    }
    assert_all_correct(&off);
    assert_all_correct(&on);

    let sum =
        |r: &VmRun, f: fn(&apf_host::vcpu::VcpuTotals) -> u64| r.vcpus.iter().map(f).sum::<u64>();
    assert_eq!(sum(&off, |v| v.apf.not_present), 0, "APF off sends nothing");
    assert!(
        sum(&off, |v| v.stats.faults.synchronous) > 0,
        "the scans needed pages back"
    );

    let not_present = sum(&on, |v| v.apf.not_present);
    let delivered = sum(&on, |v| v.apf.not_present_delivered);
    let page_ready = sum(&on, |v| v.apf.page_ready);
    let cancelled = sum(&on, |v| v.apf.cancelled);
    assert!(
        not_present > 0 && page_ready > 0,
        "APF on: {not_present} not-present, {page_ready} page-ready"
    );
    assert_eq!(
        not_present,
        delivered + cancelled,
        "each not-present was delivered or cancelled"
    );
    assert_eq!(
        delivered, page_ready,
        "each delivered not-present got its page-ready"
    );
    for v in &on.vcpus {
        assert!(v.apf.wake_all >= 1, "the enable's wake-all");
        assert_eq!(
            v.apf.acks,
            v.apf.page_ready + v.apf.wake_all,
            "every page-ready acknowledged"
        );
    }
    let blocked = |r: &VmRun| r.vcpus.iter().map(|v| v.stats.blocked).sum::<Duration>();
    assert!(
        blocked(&on) < blocked(&off),
        "blocktime with APF {:?} not below without {:?}",
        blocked(&on),
        blocked(&off)
    );
    assert_eq!(on.mem_invariants, Ok(()));
    assert_eq!(off.mem_invariants, Ok(()));
}

#[test]
fn store_errors_kill_only_the_process_that_needed_the_page() {
    let mut config = scan_calc(true);
    config.store.read_error_rate = 0.2;
    let run = run(&config);
    let killed: Vec<_> = run
        .processes
        .iter()
        .filter(|p| p.state == proc_state::KILLED)
        .collect();
    assert!(
        !killed.is_empty(),
        "with 20% read errors some access must fail twice"
    );
    for p in &run.processes {
        match p.state {
            proc_state::DONE => assert!(p.checksum_ok, "{p:?}"),
            proc_state::KILLED => {
                assert_eq!(
                    p.kind,
                    WorkloadKind::Scan,
                    "only a process touching evicted pages"
                );
                let esr = Esr(u64::from(p.kill_esr));
                assert!(esr.is_data_abort(), "{esr:?}");
                assert_eq!(esr.iss() & 0x3F, u64::from(fsc::SYNC_EXTERNAL), "{esr:?}");
                assert!(p.checksum_ok, "work up to the kill is still right: {p:?}");
                let reason = p.kill_reason().expect("a killed process has a reason");
                assert!(
                    reason.starts_with("external abort on a data")
                        && reason.contains(&format!("{:#010x}", p.kill_esr)),
                    "{reason}"
                );
            }
            other => panic!("process {} ended in state {other}", p.index),
        }
    }
    let lost: u64 = run.vcpus.iter().map(|v| v.stats.faults.lost).sum();
    let failed: u64 = run.vcpus.iter().map(|v| v.apf.failed_fetches).sum();
    assert_eq!(
        lost,
        killed.len() as u64,
        "one lost page per killed process"
    );
    assert_eq!(run.lost_pages(), lost);
    assert_eq!(run.killed().count(), killed.len());
    assert!(failed > 0, "failed asynchronous fetches are counted");
}

#[test]
fn apf_not_offered_and_abi_1_0_are_both_correct() {
    let mut off = scan_calc(true);
    off.apf = false;
    let run_off = run(&off);
    assert_all_correct(&run_off);
    assert!(
        run_off.uart.contains("off:"),
        "the driver stays off:\n{}",
        run_off.uart
    );

    let mut v10 = scan_calc(true);
    v10.separate_ready = false;
    let run10 = run(&v10);
    assert_all_correct(&run10);
    assert!(run10.uart.contains("separate_ready=0"), "{}", run10.uart);
    assert!(run10.vcpus.iter().map(|v| v.apf.page_ready).sum::<u64>() > 0);
}

/// The scan's write ratio through the whole system: the guest's checksums equal
/// the host's replay at write = 0, 50 and 100, and the fewer accesses write, the
/// more of the pages the scan brought back leave memory clean, without a write.
#[test]
fn scans_that_write_0_50_and_100_percent_all_check_out() {
    let mut dropped_clean = Vec::new();
    for write_pct in [0, 50, 100] {
        let config = VmConfig {
            vcpus: 1,
            ram: ByteSize(32 << 20),
            budget: ByteSize(8 << 20),
            apf: true,
            processes: vec![ProcessConfig {
                kind: WorkloadKind::Scan,
                vcpu: 0,
                mem: ByteSize(12 << 20),
                work: 6000,
                write_pct,
            }],
            store: StoreConfig {
                latency: Span(Duration::ZERO),
                ..StoreConfig::default()
            },
            ..VmConfig::default()
        };
        let r = run(&config);
        assert_all_correct(&r);
        assert_eq!(r.processes[0].progress, 6000);
        assert!(
            r.mem.io.pages_read > 0,
            "write={write_pct}: nothing paged in"
        );
        assert_eq!(r.mem_invariants, Ok(()));
        dropped_clean.push(r.mem.evict.dropped_clean);
    }
    assert!(
        dropped_clean[0] > dropped_clean[1] && dropped_clean[1] > dropped_clean[2],
        "pages dropped clean at write = 0, 50, 100: {dropped_clean:?}"
    );
}
