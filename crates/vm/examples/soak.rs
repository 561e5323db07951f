//! Soak (issue 8): 8 vCPUs on however many host cores there are, each running
//! 64 EL0 tasks that fault on nearly every page they touch (`guest/tests/soak.c`),
//! so up to 64 faults per vCPU are outstanding, for a long time. Samples the
//! process's RSS and open file descriptors, the store's queue (in flight,
//! backlog) and every vCPU's APF work items over time, and checks at the end
//! that they stayed flat, that every vCPU kept making rounds, and that no stamp
//! was ever wrong.
//!
//! ```sh
//! cargo run --release -p apf-vm --example soak -- [seconds=600] [sample-seconds=30]
//! ```
//!
//! Exits 1 when a check fails.

use apf_abi::platform::RAM_BASE;
use apf_host::apf::SyncReason;
use apf_vm::config::{ByteSize, Span, StoreConfig, VmConfig};
use apf_vm::{Live, RunOptions, run_image_observed};
use std::ops::ControlFlow;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const VCPUS: usize = 8;
const TASKS: usize = 64;
/// `struct soak_stats` in `guest/tests/soak.c`: magic, task_pages, then per
/// vCPU and task {rounds, bad, bad_addr, base}.
const STATS_GPA: u64 = RAM_BASE + 4 * MIB;
const SOAK_MAGIC: u64 = 0x4b41_4f53_4650_4100;
const TASK_WORDS: usize = 4;

/// One look at the running soak.
#[derive(Debug, Clone, Default)]
struct Sample {
    secs: u64,
    rss_kib: u64,
    fds: u64,
    in_flight: u64,
    backlog: u64,
    /// APF work items outstanding now, summed over vCPUs, and the most on one.
    outstanding: u64,
    outstanding_max: u64,
    /// Rounds each vCPU's tasks have finished, summed over its tasks.
    rounds: [u64; VCPUS],
    bad: u64,
    first_bad: Option<u64>,
    reads: u64,
    not_present: u64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The guest's per-task counters, or `None` before the guest has set them up.
fn guest_stats(live: &Live<'_>) -> Option<([u64; VCPUS], u64, Option<u64>)> {
    let mut bytes = vec![0u8; 16 + VCPUS * TASKS * TASK_WORDS * 8];
    live.read(STATS_GPA, &mut bytes).ok()?;
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    if word(0) != SOAK_MAGIC {
        return None;
    }
    let mut rounds = [0u64; VCPUS];
    let (mut bad, mut first_bad) = (0, None);
    for (cpu, r) in rounds.iter_mut().enumerate() {
        for task in 0..TASKS {
            let at = 2 + (cpu * TASKS + task) * TASK_WORDS;
            *r += word(at);
            bad += word(at + 1);
            if word(at + 1) != 0 {
                first_bad = first_bad.or(Some(word(at + 2)));
            }
        }
    }
    Some((rounds, bad, first_bad))
}

fn sample(live: &Live<'_>) -> Sample {
    let mem = live.mem();
    let apf = live.apf();
    let (rounds, bad, first_bad) = guest_stats(live).unwrap_or_default();
    Sample {
        secs: live.elapsed.as_secs(),
        rss_kib: rss_kib(),
        fds: open_fds(),
        in_flight: mem.in_flight,
        backlog: mem.backlog,
        outstanding: apf.iter().map(|a| a.outstanding).sum(),
        outstanding_max: apf.iter().map(|a| a.outstanding).max().unwrap_or(0),
        rounds,
        bad,
        first_bad,
        reads: mem.io.pages_read,
        not_present: apf.iter().map(|a| a.not_present).sum(),
    }
}

fn config() -> VmConfig {
    VmConfig {
        vcpus: u32::try_from(VCPUS).expect("a handful of vCPUs"),
        ram: ByteSize(64 * MIB),
        budget: ByteSize(8 * MIB),
        apf: true,
        separate_ready: true,
        store: StoreConfig {
            queue_depth: 256,
            latency: Span(Duration::from_millis(1)),
            ..StoreConfig::default()
        },
        processes: Vec::new(),
        duration: None,
        seed: 1,
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let secs = args.next().and_then(Result::ok).unwrap_or(600);
    let every = args.next().and_then(Result::ok).unwrap_or(30).max(1);
    let image_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../guest/tests/soak.bin");
    let image = std::fs::read(image_path).unwrap_or_else(|e| panic!("{image_path}: {e}"));
    let config = config();
    println!(
        "soak: {VCPUS} vCPUs x {TASKS} tasks on {} host cores, {secs} s, RAM {} budget {}, store latency {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        config.ram,
        config.budget,
        config.store.latency
    );
    println!(
        "{:>6} {:>9} {:>4} {:>8} {:>7} {:>11} {:>7} {:>10} {:>10} {:>12}  rounds per vCPU",
        "t(s)",
        "rss(KiB)",
        "fds",
        "inflight",
        "backlog",
        "apf out",
        "max/cpu",
        "reads",
        "not-pres",
        "bad stamps"
    );
    let mut samples: Vec<Sample> = Vec::new();
    let mut peak = Sample::default();
    let options = RunOptions {
        timeout: Duration::from_secs(secs + 60),
        echo_console: false,
        ..Default::default()
    };
    let run = run_image_observed(&config, &image, options, &mut |live| {
        // Peaks between samples, at the monitor's rate.
        let apf = live.apf();
        peak.outstanding = peak
            .outstanding
            .max(apf.iter().map(|a| a.outstanding).sum());
        peak.outstanding_max = peak
            .outstanding_max
            .max(apf.iter().map(|a| a.outstanding_peak).max().unwrap_or(0));
        let due = samples.len() as u64 * every;
        if live.elapsed.as_secs() >= due {
            let s = sample(live);
            println!(
                "{:>6} {:>9} {:>4} {:>8} {:>7} {:>11} {:>7} {:>10} {:>10} {:>12}  {:?}",
                s.secs,
                s.rss_kib,
                s.fds,
                s.in_flight,
                s.backlog,
                s.outstanding,
                s.outstanding_max,
                s.reads,
                s.not_present,
                s.bad,
                s.rounds
            );
            samples.push(s);
        }
        if live.elapsed >= Duration::from_secs(secs) {
            samples.push(sample(live));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .expect("the VM runs");

    let mut failures = Vec::new();
    if run.uart.contains("FAIL") {
        failures.push(format!("the guest reported failures:\n{}", run.uart));
    }
    let last = samples.last().cloned().unwrap_or_default();
    if last.bad != 0 {
        failures.push(format!(
            "{} stamps read back wrong (first at {:#x})",
            last.bad,
            last.first_bad.unwrap_or(0)
        ));
    }
    // After warm-up (the first quarter), nothing may grow and every vCPU keeps going.
    let warm = samples.len() / 4;
    if let Some(w) = samples.get(warm).filter(|_| samples.len() >= 4) {
        let rss_max = samples[warm..].iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let fds_max = samples[warm..].iter().map(|s| s.fds).max().unwrap_or(0);
        println!(
            "after warm-up (t={} s): RSS {} -> max {} KiB ({:+.1}%), fds {} -> max {}",
            w.secs,
            w.rss_kib,
            rss_max,
            (rss_max as f64 / w.rss_kib.max(1) as f64 - 1.0) * 100.0,
            w.fds,
            fds_max
        );
        if rss_max > w.rss_kib + w.rss_kib / 10 {
            failures.push(format!("RSS grew from {} to {rss_max} KiB", w.rss_kib));
        }
        if fds_max > w.fds {
            failures.push(format!("open descriptors grew from {} to {fds_max}", w.fds));
        }
        for cpu in 0..VCPUS {
            if last.rounds[cpu] <= w.rounds[cpu] {
                failures.push(format!(
                    "vcpu{cpu} made no rounds after t={} s ({} then {})",
                    w.secs, w.rounds[cpu], last.rounds[cpu]
                ));
            }
        }
    }
    println!(
        "peaks: {} APF work items outstanding at once over all vCPUs, {} on one vCPU; \
         end: {:?}, invariants {:?}",
        peak.outstanding, peak.outstanding_max, run.end, run.mem_invariants
    );
    for v in &run.vcpus {
        let fallbacks: Vec<String> = SyncReason::ALL
            .iter()
            .filter(|r| v.apf.fallback(**r) > 0)
            .map(|r| format!("{} {}", r.name(), v.apf.fallback(*r)))
            .collect();
        println!(
            "  vcpu{}: not-present {} page-ready {} wake-all {} halted {} peak outstanding {} blocked {:?}; sync fallbacks: {}",
            v.index,
            v.apf.not_present,
            v.apf.page_ready,
            v.apf.wake_all,
            v.stats.faults.halted,
            v.apf.outstanding_peak,
            v.stats.blocked,
            fallbacks.join(", ")
        );
    }
    if let Err(e) = &run.mem_invariants {
        failures.push(format!("memory invariants: {e}"));
    }
    if failures.is_empty() {
        println!("soak: OK");
    } else {
        println!("soak: FAILED\n{}", failures.join("\n"));
        std::process::exit(1);
    }
}
