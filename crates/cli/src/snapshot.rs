//! `apf snapshot` and `apf restore`: take a snapshot of the built-in guest's
//! run, and resume it eagerly or lazily, with APF off or on, or all three side
//! by side (`--compare`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use apf_vm::config::{SnapshotPoint, Span, VmConfig, WorkloadKind};
use apf_vm::snapshot::{Restored, Snapshot};
use clap::Args;
use serde::Serialize;

use crate::report::{self, RunReport};
use crate::table::{Table, count, secs};
use crate::vmargs::{LinuxArgs, VmArgs};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub linux: LinuxArgs,
    /// When to take it: a time (e.g. 3s) from the start of the run, or with --kernel
    /// from the init's start line (as the processes' times are); or, for the built-in
    /// guest, a share of the work (e.g. 30%): once the first process with work to do
    /// has done that much of it, so every such process is mid-work.
    #[arg(long, value_name = "WHEN")]
    pub at: SnapshotPoint,
    /// The directory to write (made if missing; refused if not empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// End the run after this long if the snapshot point never comes [default: 120s].
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    pub timeout: Span,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A directory `apf snapshot` wrote.
    pub dir: PathBuf,
    /// Read every page before the first instruction.
    #[arg(long, conflicts_with_all = ["lazy", "compare"])]
    pub eager: bool,
    /// Start at once; read each page when first touched (the default).
    #[arg(long, conflicts_with = "compare")]
    pub lazy: bool,
    /// Lazy, and a background loader reads the image's pages meanwhile (while host
    /// memory has room), yielding to the guest's faults.
    #[arg(long, conflicts_with_all = ["eager", "lazy", "compare"])]
    pub prefetch: bool,
    /// Run eager, lazy with APF off, lazy with APF on and lazy+prefetch with APF on,
    /// side by side.
    #[arg(long, conflicts_with = "apf")]
    pub compare: bool,
    /// What a restore may change: --apf, --budget, --ram (at least the snapshot's), the
    /// store flags (the added latency also applies to the snapshot's image).
    #[command(flatten)]
    pub vm: VmArgs,
    /// Read the memory image from this NBD export of it (read-only), e.g. one served by
    /// `nbdkit -r file DIR/memory` or `qemu-nbd -r -f raw DIR/memory`, instead of DIR.
    #[arg(long, value_name = "nbd://HOST:PORT[/EXPORT]")]
    pub from: Option<String>,
    /// Also write the report as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// End the run after this long whatever the guest does.
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    pub timeout: Span,
}

/// One restore, for the report and the JSON.
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    /// `eager` or `lazy`.
    mode: &'static str,
    /// From opening the snapshot to the first instruction.
    to_first_instruction_s: f64,
    /// From opening the snapshot until every process with work had done it.
    to_work_done_s: Option<f64>,
    /// How long the VM had run before the snapshot.
    taken_at_s: f64,
    /// Pages the snapshot's image holds.
    image_pages: u64,
    /// Pages read before the first instruction.
    loaded_pages: u64,
    /// Pages read after it: by the background loader, or on demand.
    pages_read_after_start: u64,
    /// Of those, read by the background loader.
    prefetched_pages: u64,
    /// Calc units per second of the restored run (its own work only).
    calc_work_per_s: f64,
    /// The run from the first instruction.
    pub run: RunReport,
}

impl RestoreReport {
    pub fn new(label: String, snap: &Snapshot, config: &VmConfig, r: &Restored) -> RestoreReport {
        let run = RunReport::new(label, config, &r.run);
        let wall = r.run.wall.as_secs_f64();
        let before = &snap.state().progress.progress;
        let calc: u64 = r
            .run
            .processes
            .iter()
            .filter(|p| p.kind == WorkloadKind::Calc)
            .map(|p| p.progress - before.get(p.index).copied().unwrap_or(0).min(p.progress))
            .sum();
        RestoreReport {
            mode: r.mode.name(),
            to_first_instruction_s: r.to_first_instruction.as_secs_f64(),
            to_work_done_s: r.to_work_done().map(|d| d.as_secs_f64()),
            taken_at_s: r.taken_at.as_secs_f64(),
            image_pages: r.image_pages,
            loaded_pages: r.loaded_pages,
            pages_read_after_start: r.run.mem.io.pages_read,
            prefetched_pages: r.prefetched_pages,
            calc_work_per_s: if wall > 0.0 { calc as f64 / wall } else { 0.0 },
            run,
        }
    }
}

#[derive(Serialize)]
pub struct RestoreJson<'a> {
    pub apf_version: &'static str,
    pub command: &'static str,
    pub restores: &'a [RestoreReport],
}

pub fn render_one(dir: &Path, r: &RestoreReport) -> String {
    let mut out = format!(
        "restore of {} (taken at {:.2} s), {}: first instruction after {}, work done after {}; {} of {} image pages read before it\n",
        dir.display(),
        r.taken_at_s,
        r.run.label,
        secs(r.to_first_instruction_s),
        r.to_work_done_s.map_or_else(|| "-".into(), secs),
        count(r.loaded_pages),
        count(r.image_pages),
    );
    out.push_str(&report::render_run(&r.run));
    out
}

pub fn render_compare(dir: &Path, rs: &[RestoreReport]) -> String {
    let mut out = String::new();
    let first = &rs[0];
    let _ = writeln!(
        out,
        "restores of {} (taken at {:.2} s; {} image pages)",
        dir.display(),
        first.taken_at_s,
        count(first.image_pages)
    );
    let _ = writeln!(
        out,
        "{}",
        report::describe(&first.run.config, &first.run.store)
    );
    for r in rs {
        let _ = writeln!(out, "  {}: {}", r.run.label, report::ending(&r.run));
    }
    out.push('\n');
    let labels: Vec<&str> = rs.iter().map(|r| r.run.label.as_str()).collect();
    let mut head = vec![""];
    head.extend(&labels);
    let mut t = Table::new(&head);
    let mut row = |name: &str, f: &dyn Fn(&RestoreReport) -> String| {
        let mut cells = vec![name.to_string()];
        cells.extend(rs.iter().map(f));
        t.row(cells);
    };
    row("to first instruction", &|r| secs(r.to_first_instruction_s));
    row("to work done", &|r| {
        r.to_work_done_s.map_or_else(|| "-".into(), secs)
    });
    row("blocktime", &|r| secs(r.run.blocktime_s()));
    row("pages read before start", &|r| count(r.loaded_pages));
    row("pages prefetched", &|r| count(r.prefetched_pages));
    row("pages read on demand", &|r| {
        count(r.pages_read_after_start.saturating_sub(r.prefetched_pages))
    });
    row("calc work/s", &|r| report::count_f(r.calc_work_per_s));
    let faults =
        |r: &RestoreReport, key: &str| r.run.vcpus.iter().map(|v| v.faults[key]).sum::<u64>();
    row("faults async", &|r| count(faults(r, "async")));
    row("faults sync", &|r| count(faults(r, "sync")));
    row("wall", &|r| secs(r.run.wall_s));
    out.push_str(&t.render());
    out
}
