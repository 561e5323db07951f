//! Debian's stock arm64 Linux 6.12 on `qemu-system-aarch64` with FP/SIMD off (as
//! on apf), running the init of `guest/linux/`: every workload process must report
//! the checksum the Rust reference computes.
//!
//! The kernel and initramfs come from `guest/linux/build.sh` (this test does not
//! run it): `APF_LINUX_IMAGE` / `APF_LINUX_INITRD`, else the script's cache
//! (`APF_LINUX_CACHE`, default `<repo>/target/linux`). Without them or without
//! QEMU the tests skip with the reason printed, unless `APF_REQUIRE_LINUX=1`.
//!
//! The protocol (guest/linux/README.md): one `apf.proc=<kind>,<vcpu>,<mem_bytes>,
//! <work>,<seed>` token per process on the command line; init prints
//! `apf-proc <i> done <progress> <checksum>` or `apf-proc <i> killed <signal>
//! <progress> <checksum>` as each ends (`apf-proc <i> stopped <progress>
//! <checksum>` for one without work, stopped once the others have ended), then
//! `apf-init done`, or one `apf-init error: …` line, and powers off.

#[path = "common/linux.rs"]
mod linux;
#[path = "common/qemu.rs"]
mod qemu;

use apf_abi::boot::{ProcResult, ProcSpec, proc_state, workload};
use apf_vm::workload::verify;
use linux::{
    APF_NOT_OFFERED, APF_OFFERED, MODULE_LOADED, NO_FP_BANNER, artifacts_and_qemu as artifacts,
    boot_on_qemu as boot, token,
};

const MIB: u64 = 1 << 20;
const SIGKILL: u32 = 9;

/// How a process ended, as its `apf-proc` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Done,
    Killed {
        signal: u32,
    },
    /// Without work of its own; init stopped it.
    Stopped,
}

/// One `apf-proc` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcLine {
    index: usize,
    ended: Ended,
    progress: u64,
    checksum: u64,
}

impl ProcLine {
    fn result(&self) -> ProcResult {
        ProcResult {
            state: match self.ended {
                Ended::Done | Ended::Stopped => proc_state::DONE,
                Ended::Killed { .. } => proc_state::KILLED,
            },
            progress: self.progress,
            checksum: self.checksum,
            ..ProcResult::default()
        }
    }
}

/// What init printed.
#[derive(Debug, Default)]
struct Console {
    procs: Vec<ProcLine>,
    /// `apf-init done` was printed after every `apf-proc` line.
    init_done: bool,
    /// The text after `apf-init error: `.
    init_error: Option<String>,
}

fn parse_proc_line(rest: &str) -> Result<ProcLine, String> {
    let words: Vec<&str> = rest.split(' ').collect();
    let number = |i: usize| -> Result<u64, String> {
        let word = words.get(i).ok_or_else(|| format!("field {i} missing"))?;
        word.parse()
            .map_err(|e| format!("field {i} {word:?} is not a decimal u64: {e}"))
    };
    let checksum = |i: usize| -> Result<u64, String> {
        let word = words.get(i).ok_or_else(|| format!("field {i} missing"))?;
        if word.len() != 16 || word.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("checksum {word:?} is not 16 lowercase hex digits"));
        }
        u64::from_str_radix(word, 16).map_err(|e| format!("checksum {word:?}: {e}"))
    };
    let index = usize::try_from(number(0)?).map_err(|e| e.to_string())?;
    let (ended, rest_at) = match words.get(1).copied() {
        Some("done") => (Ended::Done, 2),
        Some("stopped") => (Ended::Stopped, 2),
        Some("killed") => {
            let signal = u32::try_from(number(2)?).map_err(|e| e.to_string())?;
            (Ended::Killed { signal }, 3)
        }
        other => return Err(format!("{other:?} is not done, killed or stopped")),
    };
    if words.len() != rest_at + 2 {
        return Err(format!("{} fields, expected {}", words.len(), rest_at + 2));
    }
    Ok(ProcLine {
        index,
        ended,
        progress: number(rest_at)?,
        checksum: checksum(rest_at + 1)?,
    })
}

fn parse_console(out: &str) -> Result<Console, String> {
    let mut console = Console::default();
    for line in out.lines().map(|l| l.trim_end_matches('\r')) {
        if console.init_done {
            if line.starts_with("apf-") {
                return Err(format!("{line:?} after apf-init done"));
            }
        } else if let Some(rest) = line.strip_prefix("apf-proc ") {
            let parsed = parse_proc_line(rest).map_err(|e| format!("{line:?}: {e}"))?;
            console.procs.push(parsed);
        } else if line == "apf-init done" {
            console.init_done = true;
        } else if let Some(why) = line.strip_prefix("apf-init error: ") {
            console.init_error = Some(why.to_string());
        }
    }
    Ok(console)
}

/// Checks that each process reported exactly once, ended as `ended[i]` says, did
/// all its work if done, and has the reference checksum for its progress.
fn check(console: &Console, specs: &[ProcSpec], ended: &[Ended]) -> Result<(), String> {
    if let Some(why) = &console.init_error {
        return Err(format!("init failed: {why}"));
    }
    if !console.init_done {
        return Err("no apf-init done line".into());
    }
    if console.procs.len() != specs.len() {
        return Err(format!(
            "{} apf-proc lines for {} processes",
            console.procs.len(),
            specs.len()
        ));
    }
    for (i, (spec, want)) in specs.iter().zip(ended).enumerate() {
        let mut lines = console.procs.iter().filter(|p| p.index == i);
        let (Some(line), None) = (lines.next(), lines.next()) else {
            return Err(format!("process {i}: not exactly one apf-proc line"));
        };
        if line.ended != *want {
            return Err(format!("process {i}: {:?}, expected {want:?}", line.ended));
        }
        if line.ended == Ended::Done && line.progress != spec.work {
            return Err(format!(
                "process {i}: done after {} of {} units",
                line.progress, spec.work
            ));
        }
        verify(spec, &line.result()).map_err(|e| format!("process {i}: {e}"))?;
    }
    Ok(())
}

fn spec(kind: u32, vcpu: u32, mem_bytes: u64, work: u64, seed: u64) -> ProcSpec {
    ProcSpec {
        kind,
        vcpu,
        mem_bytes,
        work,
        seed,
        ..ProcSpec::default()
    }
}

/// Every workload, spread over `vcpus`; small work counts, one big working set.
fn workload_set(vcpus: u32) -> Vec<ProcSpec> {
    let last = vcpus - 1;
    vec![
        spec(workload::SCAN, 0, 64 * MIB, 20_000, 0x5ca0_1111_0000_0001),
        spec(workload::CALC, last, 0, 3_000, 0xca1c_2222_0000_0002),
        spec(workload::KV, last, MIB, 5_000, 0x0c0f_3333_0000_0003),
        spec(workload::BUILD, 0, 8 * MIB, 2_000, 0xb01d_4444_0000_0004),
        // Not a multiple of the report interval, with a working set of one page.
        spec(workload::SCAN, last, 4096, 1_001, u64::MAX),
    ]
}

fn every_workload_matches_the_reference(vcpus: u32) {
    let Some(linux) = artifacts() else { return };
    let specs = workload_set(vcpus);
    let tokens: Vec<String> = specs.iter().map(token).collect();
    let name = format!("workloads-{vcpus}vcpu");
    let out = boot(&name, &linux, vcpus, &tokens);
    assert!(
        out.contains(NO_FP_BANNER),
        "{name}: FP was on; console:\n{out}"
    );
    let console = parse_console(&out).unwrap_or_else(|e| panic!("{name}: {e}; console:\n{out}"));
    let ended = vec![Ended::Done; specs.len()];
    check(&console, &specs, &ended).unwrap_or_else(|e| panic!("{name}: {e}; console:\n{out}"));
}

#[test]
fn every_workload_matches_the_reference_on_1_vcpu() {
    every_workload_matches_the_reference(1);
}

#[test]
fn every_workload_matches_the_reference_on_2_vcpus() {
    every_workload_matches_the_reference(2);
}

#[test]
fn without_tokens_init_runs_nothing_and_powers_off() {
    let Some(linux) = artifacts() else { return };
    let out = boot("no-tokens", &linux, 1, &[]);
    let console = parse_console(&out).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    check(&console, &[], &[]).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
}

/// The apf module loads on QEMU, finds no apf hypervisor and says so (QEMU's PSCI
/// is SMCCC 1.0, so the module makes no HVC of its own), and init goes on.
#[test]
fn the_apf_module_loads_and_finds_apf_not_offered() {
    let Some(linux) = artifacts() else { return };
    let specs = [spec(workload::CALC, 0, 0, 200, 5)];
    let tokens: Vec<String> = specs.iter().map(token).collect();
    let out = boot("apf-module", &linux, 1, &tokens);
    assert!(out.contains(MODULE_LOADED), "console:\n{out}");
    assert!(
        out.contains("apf: APF not offered (no SMCCC 1.1 firmware interface)"),
        "console:\n{out}"
    );
    assert_eq!(out.matches(APF_NOT_OFFERED).count(), 1, "console:\n{out}");
    assert!(!out.contains(APF_OFFERED), "console:\n{out}");
    let console = parse_console(&out).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    check(&console, &specs, &[Ended::Done]).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
}

/// A working set no machine can map: the child cannot start, kills itself, and
/// init reports it killed by SIGKILL with the (0, seed) it started from; the other
/// process is unaffected.
#[test]
fn a_process_that_cannot_map_its_working_set_is_reported_killed() {
    let Some(linux) = artifacts() else { return };
    let specs = [
        spec(workload::SCAN, 0, 1 << 40, 100, 0xdead_0000_0000_0001),
        spec(workload::CALC, 0, 0, 500, 0x0000_beef_0000_0002),
    ];
    let tokens: Vec<String> = specs.iter().map(token).collect();
    let out = boot("killed", &linux, 1, &tokens);
    let console = parse_console(&out).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    let ended = [Ended::Killed { signal: SIGKILL }, Ended::Done];
    check(&console, &specs, &ended).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    let killed = console
        .procs
        .iter()
        .find(|p| p.index == 0)
        .expect("checked");
    assert_eq!((killed.progress, killed.checksum), (0, specs[0].seed));
}

/// A process without work runs beside the one with work, and once that one has
/// ended init stops it and reports the work it published, which the reference
/// confirms.
#[test]
fn a_process_without_work_is_stopped_once_the_others_have_ended() {
    let Some(linux) = artifacts() else { return };
    let specs = [
        spec(workload::CALC, 0, 0, 0, 0x0000_5709_0000_0001),
        spec(workload::CALC, 0, 0, 3000, 0x0000_5709_0000_0002),
    ];
    let tokens: Vec<String> = specs.iter().map(token).collect();
    let out = boot("stopped", &linux, 1, &tokens);
    let console = parse_console(&out).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    check(&console, &specs, &[Ended::Stopped, Ended::Done])
        .unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    let stopped = console
        .procs
        .iter()
        .find(|p| p.index == 0)
        .expect("checked");
    assert!(stopped.progress > 0, "console:\n{out}");
    let last = console.procs.last().expect("checked");
    assert_eq!(
        last.index, 0,
        "stopped after the other ended; console:\n{out}"
    );
}

/// A token naming a vCPU the machine lacks: one error line, nothing run.
#[test]
fn a_bad_token_is_one_error_line_and_nothing_runs() {
    let Some(linux) = artifacts() else { return };
    let tokens = [
        token(&spec(workload::CALC, 0, 0, 10, 1)),
        token(&spec(workload::CALC, 2, 0, 10, 2)),
    ];
    let out = boot("bad-token", &linux, 2, &tokens);
    let console = parse_console(&out).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    assert_eq!(
        console.init_error.as_deref(),
        Some("apf.proc=calc,2,0,10,2: no such vcpu online"),
        "console:\n{out}"
    );
    assert!(
        console.procs.is_empty() && !console.init_done,
        "console:\n{out}"
    );
}

#[test]
fn the_parser_reads_every_line_form_and_refuses_malformed_ones() {
    let out = "[ 1.0] Run /init\r\napf-proc 1 done 3000 59b9c8965c8d30b1\r\n\
               apf-proc 0 killed 9 64 00000000000000ff\r\n\
               apf-proc 2 stopped 128 0000000000000001\r\napf-init done\r\n";
    let console = parse_console(out).unwrap();
    assert!(console.init_done && console.init_error.is_none());
    assert_eq!(
        console.procs,
        [
            ProcLine {
                index: 1,
                ended: Ended::Done,
                progress: 3000,
                checksum: 0x59b9_c896_5c8d_30b1
            },
            ProcLine {
                index: 0,
                ended: Ended::Killed { signal: 9 },
                progress: 64,
                checksum: 0xff
            },
            ProcLine {
                index: 2,
                ended: Ended::Stopped,
                progress: 128,
                checksum: 1
            },
        ]
    );
    for bad in [
        "apf-proc 0 done 1 ff",
        "apf-proc 0 done 1 59B9C8965C8D30B1",
        "apf-proc 0 ended 1 59b9c8965c8d30b1",
        "apf-proc 0 killed 1 59b9c8965c8d30b1",
        "apf-proc 0 stopped 9 1 59b9c8965c8d30b1",
        "apf-proc x done 1 59b9c8965c8d30b1",
        "apf-proc 0 done 1 59b9c8965c8d30b1 extra",
        "apf-init done\napf-proc 0 done 1 59b9c8965c8d30b1",
    ] {
        assert!(parse_console(bad).is_err(), "{bad:?} was accepted");
    }
    let failed = parse_console("apf-init error: apf.proc=x: unknown kind\n").unwrap();
    assert_eq!(
        failed.init_error.as_deref(),
        Some("apf.proc=x: unknown kind")
    );
    assert!(check(&failed, &[], &[]).is_err());
}

#[test]
fn check_refuses_a_wrong_checksum_a_short_run_and_a_missing_line() {
    let specs = [spec(workload::CALC, 0, 0, 100, 5)];
    let good_checksum = apf_vm::workload::expected_checksum(&specs[0], 100).unwrap();
    let with = |procs: Vec<ProcLine>| Console {
        procs,
        init_done: true,
        init_error: None,
    };
    let line = ProcLine {
        index: 0,
        ended: Ended::Done,
        progress: 100,
        checksum: good_checksum,
    };
    assert_eq!(check(&with(vec![line]), &specs, &[Ended::Done]), Ok(()));
    let wrong = ProcLine {
        checksum: good_checksum ^ 1,
        ..line
    };
    assert!(check(&with(vec![wrong]), &specs, &[Ended::Done]).is_err());
    let short = ProcLine {
        progress: 64,
        checksum: apf_vm::workload::expected_checksum(&specs[0], 64).unwrap(),
        ..line
    };
    assert!(check(&with(vec![short]), &specs, &[Ended::Done]).is_err());
    assert!(check(&with(vec![]), &specs, &[Ended::Done]).is_err());
    assert!(check(&with(vec![line, line]), &specs, &[Ended::Done]).is_err());
}
