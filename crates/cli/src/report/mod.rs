//! What a run produced, as `--json` writes it: [`RunReport`] is the JSON schema
//! (README, "The JSON report"). The text forms (`text.rs`) are made from it, so
//! the two always agree.

mod text;

pub use text::{count_f, describe, ending, killed_lines, render_run, render_side_by_side};

use apf_host::apf::{ApfCountersSnapshot, SyncReason};
use apf_mem::MemMetrics;
use apf_mem::metrics::Histogram;
use apf_vm::config::VmConfig;
use apf_vm::{RunEnd, VmRun};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// The file `--json` writes.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// The apf version that wrote it.
    pub apf_version: &'static str,
    /// `run`, `compare` or `sweep`.
    pub command: &'a str,
    /// Every run, in the order they ran.
    pub runs: &'a [RunReport],
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// What this run is in its command (e.g. "APF on", "latency 1ms, APF off").
    pub label: String,
    /// Whether APF was offered to the guest.
    pub apf: bool,
    /// The whole configuration.
    pub config: VmConfig,
    /// `system_off`, `system_reset`, `timeout`, `stopped` or `kernel_panic`.
    pub end: &'static str,
    /// A Linux guest's panic line, if its kernel panicked.
    pub kernel_panic: Option<String>,
    /// Wall time from the first vCPU's start to the end.
    pub wall_s: f64,
    /// When every process with work had done it.
    pub work_done_s: Option<f64>,
    /// Every process's checksum matched the reference (a killed process's
    /// checksum is checked for the work it did before it was killed).
    pub checksums_ok: bool,
    /// The processes the guest killed, with why.
    pub killed: Vec<KilledReport>,
    /// Pages the host could not bring back: each sent the guest an external
    /// abort ([`VmRun::lost_pages`]).
    pub lost_pages: u64,
    /// Per process.
    pub processes: Vec<ProcessReport>,
    /// Per vCPU.
    pub vcpus: Vec<VcpuReport>,
    /// Guest memory and the store.
    pub memory: MemoryReport,
    /// The backing store.
    pub store: StoreReport,
    /// The memory system's invariant check at the end: `null` when it holds.
    pub invariant_violation: Option<String>,
    /// A Linux guest's apf module counters, name to value in the order the
    /// guest printed them; `{}` when it printed none (the built-in guest).
    #[serde(serialize_with = "in_order")]
    pub guest_module: Vec<(String, u64)>,
    /// A run that timed out: per vCPU, where it was and what its APF engine
    /// held (work items, notifications, channel words, the page-ready PPI),
    /// to say what the guest was waiting for. Empty for a run that ended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub at_timeout: Vec<String>,
}

/// Pairs as a JSON object, keeping their order (a map would sort them).
fn in_order<S: Serializer>(pairs: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (name, value) in pairs {
        map.serialize_entry(name, value)?;
    }
    map.end()
}

/// One guest process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    /// Index in the configuration.
    pub index: usize,
    /// Its workload: scan, calc, kv or build.
    pub name: &'static str,
    /// The vCPU it ran on.
    pub vcpu: u32,
    /// Units asked for (0 = until the run ended).
    pub work: u64,
    /// Units done.
    pub progress: u64,
    /// `done`, `killed`, `running` or `new`.
    pub state: &'static str,
    /// When it ended (seconds from the start); `null` if it never did.
    pub ended_s: Option<f64>,
    /// Units per second over its lifetime (start of the run to its end).
    pub work_per_s: f64,
    /// The checksum it reported.
    pub checksum: String,
    /// Whether that checksum equals the Rust reference's for `progress` units.
    pub checksum_ok: bool,
}

/// A process the guest killed.
#[derive(Debug, Clone, Serialize)]
pub struct KilledReport {
    /// Index in the configuration.
    pub index: usize,
    /// Its workload.
    pub name: &'static str,
    /// The vCPU it ran on.
    pub vcpu: u32,
    /// Why, from the syndrome the guest recorded, e.g. "external abort on a data
    /// read (ESR 0x92000010)".
    pub reason: String,
    /// That syndrome (ESR_EL1), in hex (0 for a Linux guest's process).
    pub esr: String,
    /// The signal that killed a Linux guest's process; `null` in the built-in guest.
    pub signal: Option<u32>,
}

/// One vCPU.
#[derive(Debug, Clone, Serialize)]
pub struct VcpuReport {
    /// Index.
    pub index: usize,
    /// Its thread's wall time.
    pub total_s: f64,
    /// Running guest code.
    pub guest_s: f64,
    /// Halted with nothing to run (WFI) or powered off.
    pub idle_s: f64,
    /// Blocked for a page: synchronous faults and repeated-fault halts.
    pub blocktime_s: f64,
    /// In the host: exits, hypercalls, APF service.
    pub host_s: f64,
    /// Guest instructions retired.
    pub instructions: u64,
    /// Exits by kind.
    pub exits: BTreeMap<&'static str, u64>,
    /// Stage-2 faults by outcome.
    pub faults: BTreeMap<&'static str, u64>,
    /// APF notifications and events.
    pub apf: BTreeMap<&'static str, u64>,
    /// Synchronous fallbacks by reason (reasons with none are left out).
    pub fallbacks: BTreeMap<&'static str, u64>,
}

/// Upper edges of the log2 buckets holding these quantiles, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
}

impl Quantiles {
    fn of(h: &Histogram) -> Quantiles {
        Quantiles {
            p50: h.quantile_upper_us(0.5),
            p90: h.quantile_upper_us(0.9),
            p99: h.quantile_upper_us(0.99),
        }
    }
}

/// Guest memory.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// Pages of guest RAM.
    pub ram_pages: u64,
    /// Pages the host lets guest RAM keep resident.
    pub budget_pages: u64,
    /// Host frames in use at the end.
    pub frames_used: u64,
    /// The most host frames in use at once.
    pub frames_peak: u64,
    /// Frames given beyond the budget because the store refused every page
    /// that could have made room (no data is lost; the budget is overrun).
    pub over_budget_frames: u64,
    /// Why the store refused them, if it did.
    pub over_budget_reason: Option<String>,
    /// Memory-system faults by what they found.
    pub faults: BTreeMap<&'static str, u64>,
    /// Pages read back from the store.
    pub pages_read: u64,
    /// Pages written to the store.
    pub pages_written: u64,
    /// Read and write errors.
    pub io_errors: u64,
    /// Clean pages dropped without a write.
    pub dropped_clean: u64,
    /// Most store requests in flight at once.
    pub max_in_flight: u64,
    /// Pages read per second of wall time.
    pub page_ins_per_s: f64,
    /// Read latency (submission to collection).
    pub read_latency_us: Quantiles,
    /// Write latency.
    pub write_latency_us: Quantiles,
}

/// The backing store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    /// What it is.
    pub description: String,
    /// Requests it runs at once.
    pub queue_depth: usize,
}

fn seconds(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn per_second(n: u64, over_s: f64) -> f64 {
    if over_s > 0.0 { n as f64 / over_s } else { 0.0 }
}

fn state_name(state: u32) -> &'static str {
    use apf_abi::boot::proc_state;
    match state {
        proc_state::NEW => "new",
        proc_state::RUNNING => "running",
        proc_state::DONE => "done",
        proc_state::KILLED => "killed",
        _ => "unknown",
    }
}

fn end_name(end: RunEnd) -> &'static str {
    match end {
        RunEnd::SystemOff => "system_off",
        RunEnd::SystemReset => "system_reset",
        RunEnd::Timeout => "timeout",
        RunEnd::Stopped => "stopped",
        RunEnd::KernelPanic => "kernel_panic",
    }
}

fn apf_counters(a: &ApfCountersSnapshot) -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        ("not_present", a.not_present),
        ("not_present_delivered", a.not_present_delivered),
        ("page_ready", a.page_ready),
        ("wake_all", a.wake_all),
        ("cancelled", a.cancelled),
        ("repeated_fault_halts", a.repeated_fault_halts),
        ("completions", a.completions),
        ("failed_fetches", a.failed_fetches),
        ("acks", a.acks),
        ("spurious_acks", a.spurious_acks),
        ("ready_write_failed", a.ready_write_failed),
        ("drained", a.drained),
    ])
}

/// See [`RunReport::at_timeout`].
fn vcpu_at_timeout(v: &apf_host::vcpu::VcpuTotals) -> String {
    let cpu = &v.state.cpu;
    format!(
        "vcpu {}: pc {:#x} el {} daif {:#x}; icc {:?}; {}",
        v.index, cpu.pc, cpu.pstate.el, cpu.pstate.daif, v.state.icc, v.apf_detail
    )
}

fn vcpu_report(v: &apf_host::vcpu::VcpuTotals) -> VcpuReport {
    let s = &v.stats;
    let e = &s.exits;
    let f = &s.faults;
    VcpuReport {
        index: v.index,
        total_s: seconds(s.total),
        guest_s: seconds(s.guest),
        idle_s: seconds(s.idle),
        blocktime_s: seconds(s.blocked),
        host_s: seconds(s.host()),
        instructions: s.instructions,
        exits: BTreeMap::from([
            ("hvc", e.hvc),
            ("smc", e.smc),
            ("wfi", e.wfi),
            ("wfe", e.wfe),
            ("stage2", e.stage2),
            ("timer", e.timer),
            ("budget", e.budget),
            ("kicked", e.kicked),
            ("mmio_accesses", e.mmio),
        ]),
        faults: BTreeMap::from([
            ("mapped", f.mapped),
            ("async", f.asynchronous),
            ("sync", f.synchronous),
            ("halted", f.halted),
            ("lost", f.lost),
            ("unmapped", f.unmapped),
        ]),
        apf: apf_counters(&v.apf),
        fallbacks: SyncReason::ALL
            .iter()
            .map(|&r| (r.name(), v.apf.fallback(r)))
            .filter(|&(_, n)| n > 0)
            .collect(),
    }
}

fn memory_report(m: &MemMetrics, wall_s: f64) -> MemoryReport {
    let f = &m.faults;
    MemoryReport {
        ram_pages: m.ram_pages,
        budget_pages: m.budget_pages,
        frames_used: m.frames_used,
        frames_peak: m.frames_peak,
        over_budget_frames: m.frames_over_budget,
        over_budget_reason: m.over_budget_reason.clone(),
        faults: BTreeMap::from([
            ("resident", f.resident),
            ("write_protect", f.write_protect),
            ("log_dirty", f.log_dirty),
            ("zero_fill", f.zero_fill),
            ("rescued", f.rescued),
            ("needs_fetch", f.needs_fetch),
            ("not_ram", f.not_ram),
        ]),
        pages_read: m.io.pages_read,
        pages_written: m.io.pages_written,
        io_errors: m.io.read_errors + m.io.write_errors,
        dropped_clean: m.evict.dropped_clean,
        max_in_flight: m.io.max_in_flight,
        page_ins_per_s: per_second(m.io.pages_read, wall_s),
        read_latency_us: Quantiles::of(&m.read_latency),
        write_latency_us: Quantiles::of(&m.write_latency),
    }
}

impl RunReport {
    /// The report of `run`, which ran `config`.
    pub fn new(label: impl Into<String>, config: &VmConfig, run: &VmRun) -> RunReport {
        let wall_s = seconds(run.wall);
        let processes: Vec<ProcessReport> = run
            .processes
            .iter()
            .map(|p| {
                let ended_s = p.ended_at.map(seconds);
                let work = config.processes.get(p.index).map_or(0, |c| c.work);
                ProcessReport {
                    index: p.index,
                    name: p.kind.name(),
                    vcpu: p.vcpu,
                    work,
                    progress: p.progress,
                    state: state_name(p.state),
                    ended_s,
                    work_per_s: per_second(p.progress, ended_s.unwrap_or(wall_s)),
                    checksum: format!("{:#018x}", p.checksum),
                    checksum_ok: p.checksum_ok,
                }
            })
            .collect();
        let killed = run
            .killed()
            .map(|p| KilledReport {
                index: p.index,
                name: p.kind.name(),
                vcpu: p.vcpu,
                reason: p.kill_reason().unwrap_or_default(),
                esr: format!("{:#010x}", p.kill_esr),
                signal: p.kill_signal,
            })
            .collect();
        RunReport {
            label: label.into(),
            apf: config.apf,
            config: config.clone(),
            end: end_name(run.end),
            kernel_panic: run.kernel_panic.clone(),
            wall_s,
            work_done_s: run.work_done_at.map(seconds),
            checksums_ok: !processes.is_empty() && processes.iter().all(|p| p.checksum_ok),
            killed,
            lost_pages: run.lost_pages(),
            processes,
            vcpus: run.vcpus.iter().map(vcpu_report).collect(),
            memory: memory_report(&run.mem, wall_s),
            store: StoreReport {
                description: run.store.description.clone(),
                queue_depth: run.store.queue_depth,
            },
            invariant_violation: run.mem_invariants.as_ref().err().map(ToString::to_string),
            guest_module: run.guest_module.clone(),
            at_timeout: if run.end == RunEnd::Timeout {
                run.vcpus.iter().map(vcpu_at_timeout).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Blocktime summed over vCPUs.
    pub fn blocktime_s(&self) -> f64 {
        self.vcpus.iter().map(|v| v.blocktime_s).sum()
    }

    /// Work per second summed over the processes of one workload.
    pub fn work_per_s_of(&self, name: &str) -> f64 {
        self.processes
            .iter()
            .filter(|p| p.name == name)
            .map(|p| p.work_per_s)
            .sum()
    }

    /// The workloads present, in order of first appearance.
    pub fn workloads(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for p in &self.processes {
            if !names.contains(&p.name) {
                names.push(p.name);
            }
        }
        names
    }

    fn vcpu_sum(
        &self,
        pick: impl Fn(&VcpuReport) -> &BTreeMap<&'static str, u64>,
    ) -> BTreeMap<&'static str, u64> {
        let mut sum = BTreeMap::new();
        for v in &self.vcpus {
            for (&k, &n) in pick(v) {
                *sum.entry(k).or_insert(0) += n;
            }
        }
        sum
    }
}

/// Reports of a real (short) run, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::RunReport;
    use apf_vm::config::{ByteSize, ProcessConfig, StoreKind, VmConfig, WorkloadKind};
    use apf_vm::{RunOptions, VmRun, run_workloads};

    /// A scan and a calc on one vCPU over host memory: well under a second.
    pub(crate) fn quick_run() -> (VmConfig, VmRun) {
        let mut config = VmConfig {
            ram: ByteSize(64 << 20),
            budget: ByteSize(16 << 20),
            processes: vec![
                ProcessConfig {
                    kind: WorkloadKind::Scan,
                    vcpu: 0,
                    mem: ByteSize(8 << 20),
                    work: 200,
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
            ..VmConfig::default()
        };
        config.store.kind = StoreKind::Mem;
        config.store.latency = "0".parse().unwrap();
        let run = run_workloads(&config, RunOptions::default()).expect("the VM runs");
        (config, run)
    }

    /// [`quick_run`] as if the guest had killed the scan on its first lost page
    /// (an external abort on a data read).
    pub(crate) fn killed_scan(label: &str) -> RunReport {
        let (config, mut run) = quick_run();
        let scan = &mut run.processes[0];
        scan.state = apf_abi::boot::proc_state::KILLED;
        scan.kill_esr = 0x9200_0010;
        run.vcpus[0].stats.faults.lost = 1;
        RunReport::new(label, &config, &run)
    }
}
