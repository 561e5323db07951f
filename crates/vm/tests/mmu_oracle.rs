//! The stage-1 MMU against QEMU: each `guest/tests/mmu_*` image builds its own
//! page tables, exercises mappings, faults, AT, TLB maintenance, ASIDs, EL0 and
//! unaligned accesses, and prints one `OBS <name> <field>=0x<hex> ...` line per
//! observation (only values the Arm ARM defines; `guest/tests/mmu_stage1.c` says
//! which fields are masked and why), then `DONE`. The same image runs on
//! `qemu-system-aarch64 -M virt,gic-version=3 -cpu cortex-a57` (the reference)
//! and on apf, and both must print the same observations.
//!
//! Where the QEMU this project installs is known to break the Arm ARM, the
//! image's line is checked against the fields the spec defines instead of
//! against QEMU (`Deviation`); a QEMU that does it right is accepted too.

#[path = "common/qemu.rs"]
mod qemu;

use apf_vm::config::{ByteSize, StoreConfig, VmConfig};
use qemu::qemu_present;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Only a guard against a hung guest (a run takes a few seconds).
const HANG_GUARD: Duration = Duration::from_secs(300);

/// An observation QEMU gets wrong: what QEMU prints instead, and the fields
/// the Arm ARM defines, which apf's line must carry.
#[derive(Debug)]
struct Deviation {
    name: &'static str,
    /// The fields after the name on the known QEMU.
    qemu_prints: &'static str,
    /// `field=value` pairs the spec requires (other fields are not checked).
    spec_fields: &'static [&'static str],
    /// Why QEMU differs.
    why: &'static str,
}

/// One oracle image.
#[derive(Debug)]
struct OracleImage {
    /// `guest/tests/<name>.bin`.
    name: &'static str,
    /// How many `OBS` lines a complete run prints.
    observations: usize,
    deviations: &'static [Deviation],
}

impl OracleImage {
    fn path(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../guest/tests")
            .join(format!("{}.bin", self.name))
    }
}

/// QEMU 7.2 (Debian 12) does not check alignment for Device memory: the Arm ARM
/// makes every unaligned access to any Device type an Alignment fault (DFSC
/// 0x21), whatever SCTLR_EL1.A says.
const DEVICE_ALIGNMENT: &str = "QEMU 7.2 lets unaligned accesses to Device memory through";

const MMU_STAGE1: OracleImage = OracleImage {
    name: "mmu_stage1",
    observations: 103,
    deviations: &[
        Deviation {
            name: "align_device_ldr_w",
            qemu_prints: "faults=0x0 esr=0x0 far=0x0 elr=0x0",
            spec_fields: &["faults=0x1", "esr=0x96000021", "far=0x10000b002"],
            why: DEVICE_ALIGNMENT,
        },
        Deviation {
            name: "align_device_str_x",
            qemu_prints: "faults=0x0 esr=0x0 far=0x0 elr=0x0",
            spec_fields: &["faults=0x1", "esr=0x96000061", "far=0x10000b014"],
            why: DEVICE_ALIGNMENT,
        },
    ],
};

const IMAGES: &[&OracleImage] = &[&MMU_STAGE1];

/// What a console says: the observations in order, the count the image
/// printed, and whether it finished.
#[derive(Debug, Default, PartialEq, Eq)]
struct Observed {
    /// (name, the fields after it), in the order printed.
    lines: Vec<(String, String)>,
    /// `OBS_COUNT <n>`: how many observations the image believes it printed.
    count: Option<usize>,
    done: bool,
    /// Lines starting with `FAIL` (an unexpected exception, a failed layout check).
    failures: Vec<String>,
}

fn parse(console: &str) -> Observed {
    let mut observed = Observed::default();
    for line in console.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("OBS ") {
            let (name, fields) = rest.split_once(' ').unwrap_or((rest, ""));
            observed.lines.push((name.to_string(), fields.to_string()));
        } else if let Some(n) = line.strip_prefix("OBS_COUNT ") {
            observed.count = n.trim().parse().ok();
        } else if line == "DONE" {
            observed.done = true;
        } else if line.starts_with("FAIL") {
            observed.failures.push(line.to_string());
        }
    }
    observed
}

/// The reference run is whole: DONE, no failure, every observation once, as
/// many as the image counted and as many as it is known to print.
fn check_reference(image: &OracleImage, qemu: &Observed) -> Result<(), String> {
    let mut problems = Vec::new();
    if !qemu.done {
        problems.push("no DONE line".to_string());
    }
    if !qemu.failures.is_empty() {
        problems.push(format!("failures: {:?}", qemu.failures));
    }
    if qemu.count != Some(qemu.lines.len()) {
        problems.push(format!(
            "OBS_COUNT {:?} but {} OBS lines",
            qemu.count,
            qemu.lines.len()
        ));
    }
    if qemu.lines.len() != image.observations {
        problems.push(format!(
            "{} observations, the image is known to print {}",
            qemu.lines.len(),
            image.observations
        ));
    }
    let mut names: Vec<&str> = qemu.lines.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        problems.push(format!("observation {} printed twice", w[0]));
    }
    for d in image.deviations {
        match qemu.lines.iter().find(|(n, _)| n == d.name) {
            None => problems.push(format!("no observation {}", d.name)),
            Some((_, fields)) if fields == d.qemu_prints || has_fields(fields, d) => {}
            Some((_, fields)) => problems.push(format!(
                "{}: QEMU printed `{fields}`, neither its known `{}` nor the spec's {:?}",
                d.name, d.qemu_prints, d.spec_fields
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn has_fields(fields: &str, d: &Deviation) -> bool {
    let present: Vec<&str> = fields.split_whitespace().collect();
    d.spec_fields.iter().all(|f| present.contains(f))
}

/// Every line where apf differs from the reference (or, for a known QEMU
/// deviation, from the spec), in the reference's order; then apf's extra lines.
fn differences(image: &OracleImage, qemu: &Observed, apf: &Observed) -> Vec<String> {
    let apf_lines: BTreeMap<&str, &str> = apf
        .lines
        .iter()
        .map(|(n, f)| (n.as_str(), f.as_str()))
        .collect();
    let mut diffs = Vec::new();
    for (name, want) in &qemu.lines {
        let got = apf_lines.get(name.as_str()).copied();
        if let Some(d) = image.deviations.iter().find(|d| d.name == name) {
            match got {
                Some(fields) if has_fields(fields, d) => {}
                _ => diffs.push(format!(
                    "{name}: apf `{}`, the spec needs {:?} ({})",
                    got.unwrap_or("<missing>"),
                    d.spec_fields,
                    d.why
                )),
            }
            continue;
        }
        match got {
            Some(fields) if fields == want => {}
            _ => diffs.push(format!(
                "{name}: qemu `{want}`, apf `{}`",
                got.unwrap_or("<missing>")
            )),
        }
    }
    for (name, fields) in &apf.lines {
        if !qemu.lines.iter().any(|(n, _)| n == name) {
            diffs.push(format!("{name}: apf printed `{fields}`, qemu nothing"));
        }
    }
    if !apf.done {
        diffs.push("apf: no DONE line".to_string());
    }
    diffs.extend(apf.failures.iter().map(|f| format!("apf: {f}")));
    diffs
}

fn run_qemu(image: &OracleImage) -> String {
    qemu::run(image.name, &image.path(), 1, 64, &[])
}

/// The image on apf: one vCPU, 64 MiB (TEST_RAM_SIZE), all of it resident.
fn run_apf(image: &OracleImage) -> String {
    let config = VmConfig {
        vcpus: 1,
        ram: ByteSize(64 * MIB),
        budget: ByteSize(64 * MIB),
        apf: false,
        separate_ready: false,
        store: StoreConfig::default(),
        processes: Vec::new(),
        duration: None,
        seed: 1,
    };
    let path = image.path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let options = apf_vm::RunOptions {
        timeout: HANG_GUARD,
        echo_console: false,
        ..Default::default()
    };
    match apf_vm::run_image(&config, &bytes, options) {
        Ok(run) => run.uart,
        // A run that stops with an error still shows how far the guest got.
        Err(e) => format!("FAIL apf_run_error {e}\n"),
    }
}

/// The reference run of an image, checked whole.
fn reference(image: &OracleImage) -> Observed {
    let out = run_qemu(image);
    let qemu = parse(&out);
    if let Err(why) = check_reference(image, &qemu) {
        panic!(
            "{}: the QEMU run is not a reference:\n{why}\n{out}",
            image.name
        );
    }
    qemu
}

#[test]
fn every_mmu_image_runs_whole_on_qemu() {
    if !qemu_present() {
        return;
    }
    for image in IMAGES {
        reference(image);
    }
}

#[test]
fn apf_prints_what_qemu_prints() {
    if !qemu_present() {
        return;
    }
    for image in IMAGES {
        let qemu = reference(image);
        let apf_out = run_apf(image);
        let diffs = differences(image, &qemu, &parse(&apf_out));
        assert!(
            diffs.is_empty(),
            "{}: {} differences from QEMU's {} observations:\n{}\napf console:\n{apf_out}",
            image.name,
            diffs.len(),
            qemu.lines.len(),
            diffs.join("\n")
        );
    }
}

#[test]
fn every_mmu_image_is_committed() {
    for image in IMAGES {
        assert!(image.path().is_file(), "{} is not built", image.name);
        let mut names: Vec<&str> = image.deviations.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), image.deviations.len(), "{}", image.name);
    }
}

const SAMPLE_DEVIATION: Deviation = Deviation {
    name: "dev",
    qemu_prints: "faults=0x0",
    spec_fields: &["faults=0x1", "esr=0x96000021"],
    why: "sample",
};
const SAMPLE: OracleImage = OracleImage {
    name: "sample",
    observations: 3,
    deviations: &[SAMPLE_DEVIATION],
};
const SAMPLE_QEMU: &str = "\
boot noise
OK layout
OBS a value=0x1
OBS b faults=0x1 esr=0x96000007 far=0x1000
OBS dev faults=0x0
OBS_COUNT 3
DONE
";

#[test]
fn the_comparison_passes_equal_runs_and_names_every_difference() {
    let qemu = parse(SAMPLE_QEMU);
    assert_eq!(check_reference(&SAMPLE, &qemu), Ok(()));
    let right = SAMPLE_QEMU.replace(
        "OBS dev faults=0x0",
        "OBS dev faults=0x1 esr=0x96000021 far=0x3 elr=0x4",
    );
    assert_eq!(
        differences(&SAMPLE, &qemu, &parse(&right)),
        Vec::<String>::new()
    );

    // Two wrong values, a missing line, an extra line: four differences.
    let wrong = right
        .replace("value=0x1", "value=0x2")
        .replace("esr=0x96000007", "esr=0x96000006")
        .replace(
            "OBS dev faults=0x1 esr=0x96000021 far=0x3 elr=0x4\n",
            "OBS extra x=0x1\n",
        );
    let diffs = differences(&SAMPLE, &qemu, &parse(&wrong));
    assert_eq!(diffs.len(), 4, "{diffs:#?}");
    assert!(
        diffs[0].starts_with("a: qemu `value=0x1`, apf `value=0x2`"),
        "{diffs:#?}"
    );
    assert!(diffs[1].starts_with("b: "), "{diffs:#?}");
    assert!(diffs[2].starts_with("dev: apf `<missing>`"), "{diffs:#?}");
    assert!(diffs[3].starts_with("extra: "), "{diffs:#?}");

    // apf copying QEMU's known deviation is a difference.
    let diffs = differences(&SAMPLE, &qemu, &qemu);
    assert_eq!(diffs.len(), 1, "{diffs:#?}");

    // A run cut short: no DONE, the failure line reported.
    let cut = "OBS a value=0x1\nFAIL unexpected_exception esr=0x0\n";
    let diffs = differences(&SAMPLE, &qemu, &parse(cut));
    assert!(diffs.iter().any(|d| d == "apf: no DONE line"), "{diffs:#?}");
    assert!(
        diffs.iter().any(|d| d.contains("unexpected_exception")),
        "{diffs:#?}"
    );
}

#[test]
fn a_reference_run_that_stops_early_or_miscounts_is_refused() {
    let short = SAMPLE_QEMU.replace("OBS dev faults=0x0\n", "");
    let why = check_reference(&SAMPLE, &parse(&short)).unwrap_err();
    assert!(why.contains("OBS_COUNT Some(3) but 2 OBS lines"), "{why}");
    assert!(
        why.contains("2 observations, the image is known to print 3"),
        "{why}"
    );
    assert!(why.contains("no observation dev"), "{why}");

    let unfinished = SAMPLE_QEMU.replace("DONE\n", "");
    assert!(
        check_reference(&SAMPLE, &parse(&unfinished))
            .unwrap_err()
            .contains("no DONE")
    );

    let twice = SAMPLE_QEMU.replace("OBS dev faults=0x0", "OBS a value=0x1");
    let why = check_reference(&SAMPLE, &parse(&twice)).unwrap_err();
    assert!(why.contains("observation a printed twice"), "{why}");

    let strange = SAMPLE_QEMU.replace("OBS dev faults=0x0", "OBS dev faults=0x7");
    let why = check_reference(&SAMPLE, &parse(&strange)).unwrap_err();
    assert!(why.contains("dev: QEMU printed `faults=0x7`"), "{why}");
}
