//! `apf run --migrate-to`, `apf listen` and `apf migrate-bench`: live
//! migration of the built-in guest between two apf processes.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apf_vm::config::{ByteSize, Span, VmConfig, WorkloadKind};
use apf_vm::migrate::{Landed, ListenOptions, MigrateMode, MigrateTo, SourceReport};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::report::{self, RunReport};
use crate::table::{Table, count, secs};
use crate::vmargs::{VmArgs, on_off};

fn parse_mode(text: &str) -> Result<MigrateMode, String> {
    MigrateMode::parse(text).ok_or_else(|| format!("`{text}` is not precopy, postcopy or hybrid"))
}

/// The migration flags of `apf run`.
#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Migrate the VM (built-in guest) to the `apf listen` at HOST:PORT while it runs.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["image", "kernel", "console"])]
    pub migrate_to: Option<String>,
    /// When the migration starts, on the run's timeline.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "3s",
        requires = "migrate_to"
    )]
    pub migrate_at: Span,
    /// precopy (rounds while the guest runs), postcopy (switch at once, pages on demand)
    /// or hybrid (one pre-copy round, then post-copy).
    #[arg(long, value_name = "MODE", default_value = "postcopy", value_parser = parse_mode, requires = "migrate_to")]
    pub mode: MigrateMode,
    /// Added to each page read the destination makes, on top of the real network (e.g.
    /// 30us for 25 GbE, 1ms for a WAN).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "0",
        requires = "migrate_to"
    )]
    pub net_latency: Span,
    /// The port the source serves its memory on, over NBD (0: any free port).
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 0,
        requires = "migrate_to"
    )]
    pub page_server_port: u16,
}

impl MigrateArgs {
    pub fn target(&self, to: &str) -> MigrateTo {
        MigrateTo {
            addr: to.to_string(),
            at: self.migrate_at.0,
            mode: self.mode,
            net_latency: self.net_latency.0,
            page_server_port: self.page_server_port,
        }
    }
}

#[derive(Args, Debug)]
pub struct ListenArgs {
    /// The port to listen on (0: any free port; the first line printed says which).
    #[arg(long)]
    pub port: u16,
    /// The address to listen on.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Offer APF to the migrated guest [default: as at the source].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub apf: Option<bool>,
    /// Host memory for the migrated guest's pages [default: as at the source].
    #[arg(long, value_name = "SIZE")]
    pub budget: Option<ByteSize>,
    /// Reach the source's page server at HOST:PORT instead of the address it gives
    /// (a NAT, a tunnel, a proxy).
    #[arg(long, value_name = "HOST:PORT")]
    pub pages_via: Option<String>,
    /// Also write the report as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// End the migrated run after this long whatever the guest does.
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    pub timeout: Span,
    /// How the vCPUs run guest code here (the source's choice does not travel).
    #[arg(long, value_enum, default_value_t)]
    pub engine: crate::vmargs::EngineArg,
}

impl ListenArgs {
    pub fn options(&self) -> ListenOptions {
        ListenOptions {
            addr: SocketAddr::new(self.bind, self.port),
            apf: self.apf,
            budget: self.budget,
            pages_via: self.pages_via.clone(),
        }
    }
}

/// A pre-copy round, as reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundJson {
    pub pages: u64,
    pub took_s: f64,
}

/// `apf run --migrate-to --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceJson {
    pub apf_version: String,
    pub command: String,
    pub mode: MigrateMode,
    pub destination: String,
    pub migrate_at_s: f64,
    pub net_latency_s: f64,
    pub rounds: Vec<RoundJson>,
    /// When the VM stopped here (None: the migration was abandoned).
    pub stopped_at_s: Option<f64>,
    pub precopy_s: f64,
    /// Last instruction here to the destination's "started" (an upper bound).
    pub downtime_s: Option<f64>,
    pub held_at_stop: u64,
    pub changed_at_stop: u64,
    pub copied_before_start: u64,
    /// Migration start to the destination holding every page.
    pub total_s: Option<f64>,
    pub all_pages_moved: bool,
    pub demand_pages: u64,
    pub copied_pages: u64,
    pub work_at_start: Vec<u64>,
    pub page_server_reads: u64,
    pub page_server_bytes: u64,
    pub page_server_connections: u64,
    pub reconnects: u64,
    pub abandoned: Option<String>,
}

impl SourceJson {
    pub fn new(to: &MigrateTo, r: &SourceReport) -> SourceJson {
        SourceJson {
            apf_version: env!("CARGO_PKG_VERSION").into(),
            command: "run --migrate-to".into(),
            mode: r.mode,
            destination: to.addr.clone(),
            migrate_at_s: to.at.as_secs_f64(),
            net_latency_s: to.net_latency.as_secs_f64(),
            rounds: r
                .rounds
                .iter()
                .map(|x| RoundJson {
                    pages: x.pages,
                    took_s: x.took.as_secs_f64(),
                })
                .collect(),
            stopped_at_s: r.stopped_at.map(|d| d.as_secs_f64()),
            precopy_s: r.precopy_time.as_secs_f64(),
            downtime_s: r.downtime.map(|d| d.as_secs_f64()),
            held_at_stop: r.held_at_stop,
            changed_at_stop: r.changed_at_stop,
            copied_before_start: r.copied_before_start,
            total_s: r.total_time.map(|d| d.as_secs_f64()),
            all_pages_moved: r.all_pages_moved,
            demand_pages: r.demand_pages,
            copied_pages: r.copied_pages,
            work_at_start: r.work_at_start.clone(),
            page_server_reads: r.served.reads,
            page_server_bytes: r.served.bytes_read,
            page_server_connections: r.served.connections,
            reconnects: r.reconnects,
            abandoned: r.abandoned.clone(),
        }
    }

    pub fn render(&self, run: &RunReport) -> String {
        let mut out = String::new();
        if let Some(why) = &self.abandoned {
            let _ = writeln!(
                out,
                "migration to {} abandoned: {why}; the VM ran to its end here",
                self.destination
            );
            out.push_str(&report::render_run(run));
            return out;
        }
        let _ = writeln!(
            out,
            "migrated to {} ({}, net latency {}): stopped at {} after {} pre-copy round{} ({} pages); downtime {}",
            self.destination,
            self.mode.name(),
            secs(self.net_latency_s),
            self.stopped_at_s.map_or_else(|| "-".into(), secs),
            self.rounds.len(),
            if self.rounds.len() == 1 { "" } else { "s" },
            count(self.rounds.iter().map(|r| r.pages).sum()),
            self.downtime_s.map_or_else(|| "-".into(), secs),
        );
        let _ = writeln!(
            out,
            "  at the stop: {} pages held, {} not yet at the destination ({} copied before its first instruction)",
            count(self.held_at_stop),
            count(self.changed_at_stop),
            count(self.copied_before_start)
        );
        let _ = writeln!(
            out,
            "  {} after {}: {} pages read on demand, {} copied; the page server answered {} reads on {} connections ({} control reconnections)",
            if self.all_pages_moved {
                "every page at the destination"
            } else {
                "the destination's run ended"
            },
            self.total_s.map_or_else(|| "-".into(), secs),
            count(self.demand_pages),
            count(self.copied_pages),
            count(self.page_server_reads),
            count(self.page_server_connections),
            count(self.reconnects),
        );
        out
    }
}

/// `apf listen --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LandedJson {
    pub apf_version: String,
    pub command: String,
    pub mode: MigrateMode,
    pub net_latency_s: f64,
    pub rounds: u32,
    pub round_pages: u64,
    /// How long the VM had run at the source.
    pub taken_at_s: f64,
    /// Switch-over's arrival to the first instruction here.
    pub setup_s: f64,
    pub copied_before_start: u64,
    /// First instruction here to every page held.
    pub complete_after_s: Option<f64>,
    pub work_at_complete: Option<Vec<u64>>,
    pub wanted_pages: u64,
    pub held_pages: u64,
    pub demand_pages: u64,
    pub copied_pages: u64,
    /// Pages that never arrived, by page number from the start of RAM.
    pub lost_pages: Vec<u64>,
    pub copy_error: Option<String>,
    pub resumed_connections: u64,
    pub blocktime_s: f64,
}

impl LandedJson {
    pub fn new(l: &Landed, run: &RunReport) -> LandedJson {
        LandedJson {
            apf_version: env!("CARGO_PKG_VERSION").into(),
            command: "listen".into(),
            mode: l.mode,
            net_latency_s: l.net_latency.as_secs_f64(),
            rounds: l.rounds,
            round_pages: l.round_pages,
            taken_at_s: l.taken_at.as_secs_f64(),
            setup_s: l.setup.as_secs_f64(),
            copied_before_start: l.copied_before_start,
            complete_after_s: l.complete_after.map(|d| d.as_secs_f64()),
            work_at_complete: l.work_at_complete.clone(),
            wanted_pages: l.mirror.wanted,
            held_pages: l.mirror.held,
            demand_pages: l.mirror.demand,
            copied_pages: l.mirror.copied,
            lost_pages: l.lost_pages.clone(),
            copy_error: l.copy_error.clone(),
            resumed_connections: l.resumed_connections,
            blocktime_s: run.blocktime_s(),
        }
    }

    pub fn render(&self, run: &RunReport) -> String {
        let mut out = format!(
            "took a {} migration (the VM had run {} at the source): first instruction {} after the switch-over; {}\n",
            self.mode.name(),
            secs(self.taken_at_s),
            secs(self.setup_s),
            match self.complete_after_s {
                Some(t) => format!(
                    "every page here {} later ({} on demand, {} copied)",
                    secs(t),
                    count(self.demand_pages),
                    count(self.copied_pages)
                ),
                None => format!(
                    "{} of {} pages here at the end ({} on demand, {} copied)",
                    count(self.held_pages),
                    count(self.wanted_pages),
                    count(self.demand_pages),
                    count(self.copied_pages)
                ),
            }
        );
        if !self.lost_pages.is_empty() {
            let shown: Vec<String> = self
                .lost_pages
                .iter()
                .take(16)
                .map(|p| format!("{p:#x}"))
                .collect();
            let _ = writeln!(
                out,
                "  {} pages NEVER RECEIVED (the source was gone: {}): {}{}",
                count(self.lost_pages.len() as u64),
                self.copy_error.as_deref().unwrap_or("unknown"),
                shown.join(" "),
                if self.lost_pages.len() > 16 {
                    " …"
                } else {
                    ""
                }
            );
        }
        out.push_str(&report::render_run(run));
        out
    }
}

/// A migration report with its run, as `--json` writes it.
#[derive(Debug, Serialize)]
pub struct WithRunReport<'a, T> {
    #[serde(flatten)]
    pub report: &'a T,
    pub run: &'a RunReport,
}

#[derive(Args, Debug)]
pub struct MigrateBenchArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// When each migration starts.
    #[arg(long, value_name = "DURATION", default_value = "3s")]
    pub at: Span,
    /// The added network latencies to run at.
    #[arg(
        long = "net-latencies",
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "0,30us,1ms"
    )]
    pub latencies: Vec<Span>,
    /// Also write every run as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the results (FILE.png or FILE.svg).
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// End each run after this long whatever the guest does.
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    pub timeout: Span,
}

/// One migration of the bench: both ends' reports.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    pub label: String,
    pub mode: MigrateMode,
    pub apf: bool,
    pub net_latency_s: f64,
    pub source: SourceJson,
    pub source_run: RunSummary,
    pub destination: LandedJson,
    pub destination_run: RunSummary,
}

impl BenchRun {
    /// Migration start to the destination holding every page (or its run's end).
    pub fn total_s(&self) -> f64 {
        self.source.total_s.unwrap_or(0.0)
    }

    /// From the run's start to its work done, across both hosts.
    pub fn end_to_end_s(&self) -> Option<f64> {
        Some(
            self.source.stopped_at_s?
                + self.source.downtime_s?
                + self.destination_run.work_done_s?,
        )
    }

    /// Calc units per second from the migration's start to every page here.
    pub fn calc_per_s_during(&self, config: &VmConfig) -> Option<f64> {
        let calc = |w: &[u64]| -> u64 {
            config
                .processes
                .iter()
                .zip(w)
                .filter(|(p, _)| p.kind == WorkloadKind::Calc)
                .map(|(_, &u)| u)
                .sum()
        };
        let after = self.destination.work_at_complete.as_deref()?;
        let total = self.source.total_s?;
        let done = calc(after).saturating_sub(calc(&self.source.work_at_start));
        (total > 0.0).then(|| done as f64 / total)
    }
}

/// The four migrations compared at each latency.
pub const BENCH_PLAN: [(MigrateMode, bool, &str); 4] = [
    (MigrateMode::Precopy, true, "pre-copy"),
    (MigrateMode::Postcopy, false, "post-copy, APF off"),
    (MigrateMode::Postcopy, true, "post-copy, APF on"),
    (MigrateMode::Hybrid, true, "hybrid, APF on"),
];

/// Why a bench migration could not be run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start `{what}`: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("`apf listen` did not say where it listens: {0}")]
    NoAddress(String),
    #[error("{label}: the {side} exited with {status}{stderr}")]
    Failed {
        label: String,
        side: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{label}: cannot read the {side}'s report {path}: {why}")]
    Report {
        label: String,
        side: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("cannot write the configuration for the runs: {0}")]
    Config(String),
}

/// Kills a child on drop unless it was waited for.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the bench needs of a run's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub wall_s: f64,
    pub work_done_s: Option<f64>,
    pub checksums_ok: bool,
    pub lost_pages: u64,
}

/// Both parts of a report `--json` wrote.
#[derive(Debug, Deserialize)]
struct WithRun<T> {
    #[serde(flatten)]
    report: T,
    run: RunSummary,
}

fn read_report<T: for<'de> Deserialize<'de>>(
    label: &str,
    side: &'static str,
    path: &Path,
) -> Result<(T, RunSummary), BenchError> {
    let bad = |why: String| BenchError::Report {
        label: label.to_string(),
        side,
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let parsed: WithRun<T> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    Ok((parsed.report, parsed.run))
}

/// What every run of a benchmark shares.
pub struct BenchSetup<'a> {
    /// This executable.
    pub exe: &'a Path,
    /// The directory for the runs' reports.
    pub work: &'a Path,
    /// The VM's configuration, for both ends.
    pub config_file: &'a Path,
    /// How both ends run guest code.
    pub engine: crate::vmargs::EngineArg,
}

/// Runs one migration between two child processes of this executable.
pub fn bench_one(
    setup: &BenchSetup<'_>,
    label: &str,
    (mode, apf, latency): (MigrateMode, bool, Duration),
    at: Duration,
    timeout: Duration,
) -> Result<BenchRun, BenchError> {
    let BenchSetup {
        exe,
        work,
        config_file,
        engine,
    } = *setup;
    let dst_json = work.join(format!("{label}-dst.json").replace([' ', ','], "_"));
    let src_json = work.join(format!("{label}-src.json").replace([' ', ','], "_"));
    let spawn = |cmd: &mut Command, what: &str| {
        cmd.spawn().map_err(|source| BenchError::Spawn {
            what: what.to_string(),
            source,
        })
    };
    let timeout_arg = format!("{}ms", timeout.as_millis());
    let engine_arg = clap::ValueEnum::to_possible_value(&engine)
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    let mut listen = Reaped(Some(spawn(
        Command::new(exe)
            .args(["listen", "--port", "0", "--bind", "127.0.0.1", "--apf"])
            .arg(if apf { "on" } else { "off" })
            .args(["--engine", &engine_arg])
            .arg("--timeout")
            .arg(&timeout_arg)
            .arg("--json")
            .arg(&dst_json)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        "apf listen",
    )?));
    let child = listen
        .0
        .as_mut()
        .ok_or_else(|| BenchError::NoAddress(String::new()))?;
    let mut first = String::new();
    if let Some(out) = child.stdout.take() {
        let mut lines = BufReader::new(out);
        let _ = lines.read_line(&mut first);
        // Keep reading (and dropping) its report so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    }
    let addr = first
        .split_whitespace()
        .find_map(|w| w.parse::<SocketAddr>().ok())
        .ok_or_else(|| BenchError::NoAddress(first.trim().to_string()))?;
    let source = spawn(
        Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(config_file)
            .arg("--apf")
            .arg(if apf { "on" } else { "off" })
            .arg("--migrate-to")
            .arg(addr.to_string())
            .arg("--migrate-at")
            .arg(format!("{}ms", at.as_millis()))
            .arg("--mode")
            .arg(mode.name())
            .arg("--net-latency")
            .arg(format!("{}us", latency.as_micros()))
            .args(["--engine", &engine_arg])
            .arg("--timeout")
            .arg(&timeout_arg)
            .arg("--json")
            .arg(&src_json)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        "apf run --migrate-to",
    )?;
    let failed = |side, out: std::process::Output| BenchError::Failed {
        label: label.to_string(),
        side,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .map_or_else(String::new, |l| format!(": {l}")),
    };
    let out = source
        .wait_with_output()
        .map_err(|source| BenchError::Spawn {
            what: "apf run".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(failed("source", out));
    }
    let child = listen
        .0
        .take()
        .ok_or_else(|| BenchError::NoAddress(String::new()))?;
    let out = child
        .wait_with_output()
        .map_err(|source| BenchError::Spawn {
            what: "apf listen".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(failed("destination", out));
    }
    let (source, source_run) = read_report::<SourceJson>(label, "source", &src_json)?;
    let (destination, destination_run) =
        read_report::<LandedJson>(label, "destination", &dst_json)?;
    Ok(BenchRun {
        label: label.to_string(),
        mode,
        apf,
        net_latency_s: latency.as_secs_f64(),
        source,
        source_run,
        destination,
        destination_run,
    })
}

/// The side-by-side table of one latency's migrations.
pub fn render_bench(latency: Span, config: &VmConfig, runs: &[BenchRun]) -> String {
    let mut out = format!("net latency {latency}\n");
    let mut head = vec![""];
    head.extend(runs.iter().map(|r| r.label.as_str()));
    let mut t = Table::new(&head);
    let mut row = |name: &str, f: &dyn Fn(&BenchRun) -> String| {
        let mut cells = vec![name.to_string()];
        cells.extend(runs.iter().map(f));
        t.row(cells);
    };
    let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), secs);
    row("total migration time", &|r| secs(r.total_s()));
    row("downtime", &|r| opt(r.source.downtime_s));
    row("pre-copy rounds", &|r| count(r.source.rounds.len() as u64));
    row("pages copied (push)", &|r| {
        count(r.destination.copied_pages)
    });
    row("pages on demand", &|r| count(r.destination.demand_pages));
    row("destination blocktime", &|r| {
        secs(r.destination.blocktime_s)
    });
    row("calc work/s during migration", &|r| {
        r.calc_per_s_during(config)
            .map_or_else(|| "-".into(), report::count_f)
    });
    row("end to end (work done)", &|r| opt(r.end_to_end_s()));
    row("checksums", &|r| {
        if r.destination_run.checksums_ok {
            "all correct".into()
        } else {
            "WRONG".into()
        }
    });
    out.push_str(&t.render());
    out
}
