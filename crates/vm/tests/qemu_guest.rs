//! The committed guest image on `qemu-system-aarch64 -M virt,gic-version=3`: an
//! independent machine (no hypervisor, so the APF driver stays off) on which every
//! workload must report the checksum the Rust reference computes.
//!
//! The guest prints one `APF-RESULT` line per process and `APF-END` before it
//! powers off; each line carries the process's spec, so it is checked against both
//! the configuration we passed and [`apf_vm::workload::verify`].

#[path = "common/qemu.rs"]
mod qemu;

use apf_abi::boot::{BOOT_BLOCK_GPA, BootBlock, ProcResult, ProcSpec, proc_state, workload};
use apf_abi::esr;
use apf_vm::workload::{default_config, kind_name, verify};
use qemu::qemu_present;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// One `APF-RESULT` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reported {
    proc: usize,
    spec: ProcSpec,
    result: ProcResult,
}

/// What a run printed: whether it read our boot block, and its results.
#[derive(Debug)]
struct Run {
    from_boot_block: bool,
    reported: Vec<Reported>,
}

fn field<'a>(line: &'a str, key: &str) -> Result<&'a str, String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .ok_or_else(|| format!("no {key}= in {line:?}"))
}

fn number(line: &str, key: &str) -> Result<u64, String> {
    let text = field(line, key)?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{key}={text}: {e}"))
}

fn narrow(line: &str, key: &str) -> Result<u32, String> {
    u32::try_from(number(line, key)?).map_err(|e| format!("{key}: {e}"))
}

fn parse_result_line(line: &str) -> Result<Reported, String> {
    let kind_text = field(line, "kind")?;
    let kind = (1..=4)
        .find(|&k| kind_name(k) == Some(kind_text))
        .ok_or_else(|| format!("unknown kind {kind_text:?}"))?;
    let state = match field(line, "state")? {
        "new" => proc_state::NEW,
        "running" => proc_state::RUNNING,
        "done" => proc_state::DONE,
        "killed" => proc_state::KILLED,
        other => return Err(format!("unknown state {other:?}")),
    };
    let proc = usize::try_from(number(line, "proc")?).map_err(|e| e.to_string())?;
    Ok(Reported {
        proc,
        spec: ProcSpec {
            kind,
            vcpu: narrow(line, "vcpu")?,
            mem_bytes: number(line, "mem")?,
            work: number(line, "work")?,
            seed: number(line, "seed")?,
            write_pct: narrow(line, "write")?,
            reserved: 0,
        },
        result: ProcResult {
            state,
            kill_esr: narrow(line, "esr")?,
            progress: number(line, "progress")?,
            checksum: number(line, "checksum")?,
            reserved: 0,
        },
    })
}

fn parse_console(out: &str) -> Result<Run, String> {
    let banner = out
        .lines()
        .find(|l| l.starts_with("apf-guest: "))
        .ok_or("no boot banner")?;
    let reported = out
        .lines()
        .filter(|l| l.starts_with("APF-RESULT "))
        .map(parse_result_line)
        .collect::<Result<Vec<_>, _>>()?;
    let end = out
        .lines()
        .find(|l| l.starts_with("APF-END "))
        .ok_or("no APF-END line: the run did not finish")?;
    let count = usize::try_from(number(end, "procs")?).map_err(|e| e.to_string())?;
    if count != reported.len() {
        return Err(format!(
            "APF-END says {count} processes, {} reported",
            reported.len()
        ));
    }
    Ok(Run {
        from_boot_block: field(banner, "config")? == "boot-block",
        reported,
    })
}

/// Checks every process of a run: its spec is the one configured, its state is the
/// one expected, a finished process did all its work, and its checksum is the
/// reference's for the progress it reported.
fn check_run(reported: &[Reported], expected: &[(ProcSpec, u32)]) -> Result<(), String> {
    if reported.len() != expected.len() {
        return Err(format!(
            "{} processes reported, {} configured",
            reported.len(),
            expected.len()
        ));
    }
    for (i, (r, (spec, state))) in reported.iter().zip(expected).enumerate() {
        let fail = |what: String| Err(format!("proc {i}: {what}"));
        if r.proc != i || r.spec != *spec {
            return fail(format!("reported as {r:?}, configured {spec:?}"));
        }
        if r.result.state != *state {
            return fail(format!("state {} expected {state}", r.result.state));
        }
        if *state == proc_state::DONE && spec.work != 0 && r.result.progress != spec.work {
            return fail(format!(
                "done after {} of {} units",
                r.result.progress, spec.work
            ));
        }
        verify(spec, &r.result).or_else(|e| fail(e.to_string()))?;
    }
    Ok(())
}

fn image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/apf-guest.bin")
}

/// Boots the image on QEMU (with `block` loaded at its address if given) and
/// returns what the guest printed.
fn run_qemu(name: &str, vcpus: u32, ram_mib: u64, block: Option<&BootBlock>) -> String {
    let mut extra = Vec::new();
    if let Some(block) = block {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-bootblock.bin"));
        std::fs::write(&path, block.to_bytes()).expect("write the boot block");
        extra.push("-device".into());
        extra.push(
            format!(
                "loader,file={},addr={BOOT_BLOCK_GPA:#x},force-raw=on",
                path.display()
            )
            .into(),
        );
    }
    qemu::run(name, &image(), vcpus, ram_mib, &extra)
}

fn boot_block(vcpus: u32, ram_mib: u64, specs: &[ProcSpec]) -> BootBlock {
    let mut block = BootBlock {
        nr_vcpus: vcpus,
        nr_procs: u32::try_from(specs.len()).expect("few procs"),
        ram_size: ram_mib * MIB,
        seed: 0xA9F,
        ..BootBlock::default()
    };
    block.procs[..specs.len()].copy_from_slice(specs);
    block
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

fn all_done(specs: &[ProcSpec]) -> Vec<(ProcSpec, u32)> {
    specs.iter().map(|s| (*s, proc_state::DONE)).collect()
}

#[test]
fn built_in_config_matches_the_reference_on_qemu() {
    if !qemu_present() {
        return;
    }
    let config = default_config();
    let specs = &config.procs[..usize::try_from(config.nr_procs).unwrap()];
    let out = run_qemu("default", config.nr_vcpus, config.ram_size / MIB, None);
    let run = parse_console(&out).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    assert!(!run.from_boot_block, "no boot block was given:\n{out}");
    check_run(&run.reported, &all_done(specs)).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    assert!(
        out.contains("apf: cpu0 off: no apf hypervisor"),
        "APF must stay off on QEMU:\n{out}"
    );
}

#[test]
fn every_workload_from_a_boot_block_matches_the_reference_on_qemu() {
    if !qemu_present() {
        return;
    }
    let specs = [
        spec(workload::SCAN, 0, 6 * MIB, 50_000, 11),
        spec(workload::CALC, 0, 0, 3_000, 12),
        spec(workload::KV, 1, 4 * MIB, 60_000, 13),
        spec(workload::BUILD, 1, 4 * MIB, 5_000, 14),
        spec(workload::KV, 2, 64, 1_000, 15),
        spec(workload::BUILD, 2, 3 * 4096 + 5, 777, 16),
        spec(workload::SCAN, 2, 4096, 10_001, 17),
    ];
    let block = boot_block(3, 128, &specs);
    let out = run_qemu("all-kinds", 3, 128, Some(&block));
    let run = parse_console(&out).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    assert!(
        run.from_boot_block,
        "the guest did not read the boot block:\n{out}"
    );
    check_run(&run.reported, &all_done(&specs)).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
}

/// The boot block claims more RAM than QEMU has, so the last process's working set
/// lies where nothing answers: QEMU raises a synchronous external abort (DFSC 0x10),
/// as apf does for a page its store cannot read. That process is killed with the
/// syndrome recorded; the others finish with correct checksums.
#[test]
fn an_external_abort_kills_only_its_process_on_qemu() {
    if !qemu_present() {
        return;
    }
    let specs = [
        spec(workload::SCAN, 0, 4 * MIB, 20_000, 21),
        spec(workload::CALC, 1, 200 * MIB, 2_000, 22), // calc never touches its memory
        spec(workload::SCAN, 1, 8 * MIB, 20_000, 23),  // beyond QEMU's 128 MiB
        spec(workload::KV, 0, MIB, 20_000, 24),        // also beyond
    ];
    let block = boot_block(2, 512, &specs);
    let out = run_qemu("external-abort", 2, 128, Some(&block));
    let run = parse_console(&out).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    let expected = [
        (specs[0], proc_state::DONE),
        (specs[1], proc_state::DONE),
        (specs[2], proc_state::KILLED),
        (specs[3], proc_state::KILLED),
    ];
    check_run(&run.reported, &expected).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    for killed in &run.reported[2..] {
        let syndrome = esr::Esr(u64::from(killed.result.kill_esr));
        assert_eq!(syndrome.ec(), esr::ec::DABT_LOWER, "{syndrome:?}");
        assert_eq!(
            syndrome.iss() & esr::ISS_FSC_MASK,
            u64::from(esr::fsc::SYNC_EXTERNAL)
        );
        assert_eq!(
            killed.result.progress, 0,
            "killed while clearing its working set"
        );
    }
}

/// One vCPU, a long CPU-bound process scheduled first and a short scan: the scan
/// can only exit first if the timer preempts the calc (it never yields). The calc
/// runs for tens of millions of instructions, many timer periods at any QEMU speed.
#[test]
fn the_timer_preempts_a_cpu_bound_process_on_qemu() {
    if !qemu_present() {
        return;
    }
    let specs = [
        spec(workload::CALC, 0, 0, 200_000, 31),
        spec(workload::SCAN, 0, MIB, 2_000, 32),
    ];
    let block = boot_block(1, 64, &specs);
    let out = run_qemu("preemption", 1, 64, Some(&block));
    let run = parse_console(&out).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    check_run(&run.reported, &all_done(&specs)).unwrap_or_else(|e| panic!("{e}; console:\n{out}"));
    let exits: Vec<&str> = out.lines().filter(|l| l.starts_with("APF-EXIT ")).collect();
    assert_eq!(
        exits,
        ["APF-EXIT proc=1", "APF-EXIT proc=0"],
        "console:\n{out}"
    );
}

const SAMPLE: &str = "\
apf-guest: config=boot-block vcpus=1 procs=2 ram=0x8000000 heap=0x400cb000..0x400d0000
APF-RESULT proc=0 kind=calc vcpu=0 state=done progress=3 checksum=0xCHK0 esr=0x0 mem=0 work=3 seed=0x5 write=100
APF-RESULT proc=1 kind=scan vcpu=0 state=killed progress=0 checksum=0x9 esr=0x92000010 mem=4096 work=7 seed=0x9 write=100
APF-END procs=2
";

fn sample_specs() -> [ProcSpec; 2] {
    [
        spec(workload::CALC, 0, 0, 3, 5),
        spec(workload::SCAN, 0, 4096, 7, 9),
    ]
}

fn sample_console(calc_checksum: u64) -> String {
    SAMPLE.replace("CHK0", &format!("{calc_checksum:x}"))
}

#[test]
fn the_checker_accepts_the_reference_and_rejects_a_wrong_checksum() {
    let [calc, scan] = sample_specs();
    let good = apf_vm::workload::expected_checksum(&calc, 3).unwrap();
    let expected = [(calc, proc_state::DONE), (scan, proc_state::KILLED)];

    let run = parse_console(&sample_console(good)).unwrap();
    assert!(run.from_boot_block);
    assert_eq!(run.reported[1].result.kill_esr, 0x9200_0010);
    assert_eq!(check_run(&run.reported, &expected), Ok(()));

    let run = parse_console(&sample_console(good ^ 0x100)).unwrap();
    let err = check_run(&run.reported, &expected).unwrap_err();
    assert!(err.contains("proc 0") && err.contains("checksum"), "{err}");
}

#[test]
fn the_checker_rejects_wrong_specs_states_and_missing_lines() {
    let [calc, scan] = sample_specs();
    let good = apf_vm::workload::expected_checksum(&calc, 3).unwrap();
    let run = parse_console(&sample_console(good)).unwrap();

    let other_seed = spec(workload::CALC, 0, 0, 3, 6);
    assert!(
        check_run(
            &run.reported,
            &[(other_seed, proc_state::DONE), (scan, proc_state::KILLED)]
        )
        .is_err()
    );
    assert!(
        check_run(
            &run.reported,
            &[(calc, proc_state::DONE), (scan, proc_state::DONE)]
        )
        .is_err()
    );
    assert!(
        check_run(
            &run.reported[..1],
            &[(calc, proc_state::DONE), (scan, proc_state::KILLED)]
        )
        .is_err()
    );

    let unfinished = sample_console(good).replace("APF-END procs=2\n", "");
    assert!(parse_console(&unfinished).is_err());
    let short = sample_console(good).replace("procs=2\n", "procs=3\n");
    assert!(parse_console(&short).is_err());
}
