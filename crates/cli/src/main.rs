//! The `apf` command line: run a VM, compare APF off and on, sweep a parameter,
//! measure the store, trace the protocol.

// Only apf-mem needs unsafe code (guest RAM, io_uring); the command line is
// safe Rust, and the compiler keeps it so.
#![forbid(unsafe_code)]

mod chart;
mod demo;
mod migrate;
mod progress;
mod report;
mod snapshot;
mod storebench;
mod table;
mod trace;
mod vmargs;

use apf_vm::config::{ByteSize, ProcessConfig, Span, VmConfig, WorkloadKind};
use apf_vm::snapshot::{ImageSource, RestoreMode, Snapshot, SnapshotOf, take_snapshot};
use apf_vm::{
    ErrorClass, LinuxGuest, RunEnd, RunOptions, VmError, VmRun, run_image, run_linux,
    run_linux_observed, run_workloads, run_workloads_observed,
};
use clap::{Args, Parser, Subcommand};
use progress::RunBar;
use report::{JsonReport, RunReport};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use table::count;
use thiserror::Error;
use vmargs::{LinuxArgs, VmArgs, VmArgsError};

#[derive(Parser, Debug)]
#[command(
    name = "apf",
    version,
    about = "Asynchronous page faults for arm64 virtual machines",
    long_about = "Asynchronous page faults for arm64 virtual machines: a Rust hypervisor whose \
                  vCPUs run a real AArch64 guest over real memory with a real swap file.\n\n\
                  Start with `apf compare`: the built-in configuration with APF off, then on."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a VM, run its workloads and print a report; or boot any image (--image).
    Run(RunArgs),
    /// Run the same configuration with APF off, then on (same seed), side by side.
    Compare(CompareArgs),
    /// Vary one parameter (added store latency by default), APF off and on at each value.
    Sweep(SweepArgs),
    /// Run the built-in guest until --at, then write a snapshot of the VM to --out.
    Snapshot(snapshot::SnapshotArgs),
    /// Resume a snapshot, lazily (pages read when touched) or eagerly, and finish its run.
    Restore(snapshot::RestoreArgs),
    /// Wait for a VM migrated by `apf run --migrate-to`, resume it, and finish its run.
    Listen(migrate::ListenArgs),
    /// Migrate the built-in configuration between two apf processes on loopback:
    /// pre-copy, post-copy with APF off and on, hybrid, side by side per network latency.
    MigrateBench(migrate::MigrateBenchArgs),
    /// Measure the store's raw random-read rate per queue depth.
    StoreBench(storebench::StoreBenchArgs),
    /// Print the host's APF events of a short run, with the faulting instructions.
    Trace(TraceArgs),
    /// Walk the APF engine through a few faults with a fake vCPU and print each step.
    EngineDemo {
        /// Faults to take.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
        faults: u64,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Boot this flat AArch64 image instead of the built-in guest (loaded at 0x40080000,
    /// entered at EL1h) and stream its console until it powers off or --timeout passes.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["processes", "work", "duration", "console", "kernel"])]
    image: Option<PathBuf>,
    /// Boot this arm64 Linux Image (uncompressed) instead of the built-in guest and
    /// stream its console; the -p processes go to its init on the kernel command line
    /// (`apf.proc=...`) and are reported from its console.
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["duration", "console"])]
    kernel: Option<PathBuf>,
    /// The initrd (e.g. a cpio initramfs) for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command-line arguments for --kernel (e.g. "console=ttyAMA0 panic=-1").
    #[arg(
        long,
        value_name = "ARGS",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    append: Option<String>,
    /// Also write the device tree --kernel boots with to FILE (a DTB).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    dtb_out: Option<PathBuf>,
    /// Also write the report as JSON (schema in the README).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Show the guest's console while it runs.
    #[arg(long)]
    console: bool,
    /// End the run after this long whatever the guest does [default: 120s; 30s with --image].
    #[arg(long, value_name = "DURATION")]
    timeout: Option<Span>,
    #[command(flatten)]
    migrate: migrate::MigrateArgs,
}

#[derive(Args, Debug)]
struct CompareArgs {
    #[command(flatten)]
    vm: VmArgs,
    #[command(flatten)]
    linux: LinuxArgs,
    /// Also write both runs as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the comparison (FILE.png or FILE.svg).
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// End each run after this long whatever the guest does.
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    timeout: Span,
}

#[derive(Args, Debug)]
struct SweepArgs {
    #[command(flatten)]
    vm: VmArgs,
    #[command(flatten)]
    linux: LinuxArgs,
    /// Added store latencies to run at (the default sweep).
    #[arg(
        long = "latencies",
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "0,100us,1ms,5ms",
        conflicts_with = "budgets"
    )]
    latencies: Vec<Span>,
    /// Host budgets to run at, instead of latencies.
    #[arg(long = "budgets", value_name = "LIST", value_delimiter = ',')]
    budgets: Option<Vec<ByteSize>>,
    /// Also write every run as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw work per second and blocktime against the parameter (FILE.png or FILE.svg).
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// End each run after this long whatever the guest does.
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    timeout: Span,
}

#[derive(Args, Debug)]
struct TraceArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Only this vCPU's events.
    #[arg(long = "vcpu", value_name = "N")]
    vcpu_filter: Option<u64>,
    /// Only this token's events (and the stage-2 aborts on its page), e.g. 0x1000.
    #[arg(long, value_parser = parse_number)]
    token: Option<u64>,
    /// Only events with these names (comma-separated), e.g.
    /// stage2_abort,async_pf_not_present,async_pf_ready.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    event: Vec<String>,
    /// Print at most this many events (the first ones).
    #[arg(long, default_value_t = 200)]
    limit: usize,
}

fn parse_number(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not a number (decimal or 0x-prefixed hex)"))
}

/// The run succeeded: every check held.
const EXIT_OK: u8 = 0;
/// The run failed: a timeout, a wrong checksum, a killed process, a broken
/// memory invariant, a vCPU panic, a guest that asked for a reset.
const EXIT_RUN_FAILED: u8 = 1;
/// The input was wrong: a flag, a value, the config file, the image file, the
/// store path, an output path. Nothing ran.
const EXIT_BAD_INPUT: u8 = 2;
/// The host could not do its part: build the VM (map guest RAM, start a
/// thread, set up io_uring), record a trace, or write the report or chart.
const EXIT_HOST: u8 = 3;

/// Why a command failed: one line each, and the exit status that says whose
/// fault it is ([`CliError::exit_status`]).
#[derive(Debug, Error)]
enum CliError {
    #[error(transparent)]
    Args(#[from] VmArgsError),
    #[error("{0}{hint}", hint = vm_hint(.0))]
    Vm(#[from] VmError),
    #[error("cannot read the image {path}: {source} (give --image a readable file)")]
    Image {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the image {path} is empty: give --image a flat AArch64 binary")]
    EmptyImage { path: PathBuf },
    /// A --kernel or --initrd file that cannot be read.
    #[error("cannot read the {what} {path}: {source} (give {flag} a readable file)")]
    Input {
        what: &'static str,
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// An output file that could not be written, found before the run.
    #[error("{flag} {path}: {reason}")]
    Output {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("chart {path}: {reason}")]
    Chart { path: PathBuf, reason: String },
    #[error(transparent)]
    Bench(#[from] storebench::StoreBenchError),
    #[error(transparent)]
    MigrateBench(#[from] migrate::BenchError),
    #[error("cannot record trace events: {0}")]
    Trace(#[from] tracing::subscriber::SetGlobalDefaultError),
    /// The VM ran and the run failed.
    #[error("{0}")]
    RunFailed(String),
}

/// What to change after a VM error that is the input's fault, when the error
/// alone does not say.
fn vm_hint(e: &VmError) -> &'static str {
    use apf_mem::store::StoreOpenError;
    match e {
        VmError::Store(StoreOpenError::Create { .. } | StoreOpenError::Probe { .. }) => {
            " (give --store-path a writable directory)"
        }
        VmError::ImageTooBig { .. } => " (raise --ram)",
        _ => "",
    }
}

fn vm_status(e: &VmError) -> u8 {
    match e.class() {
        ErrorClass::Input => EXIT_BAD_INPUT,
        ErrorClass::Host => EXIT_HOST,
        ErrorClass::Run => EXIT_RUN_FAILED,
    }
}

impl CliError {
    /// The process's exit status for this error (README, "Exit statuses").
    fn exit_status(&self) -> u8 {
        use storebench::StoreBenchError;
        match self {
            CliError::Args(_)
            | CliError::Image { .. }
            | CliError::EmptyImage { .. }
            | CliError::Input { .. }
            | CliError::Output { .. }
            | CliError::Bench(StoreBenchError::Args(_) | StoreBenchError::Depth(_)) => {
                EXIT_BAD_INPUT
            }
            CliError::Vm(e) | CliError::Bench(StoreBenchError::Open(e)) => vm_status(e),
            CliError::Write { .. }
            | CliError::Chart { .. }
            | CliError::Trace(_)
            | CliError::Bench(StoreBenchError::Bench(_)) => EXIT_HOST,
            CliError::RunFailed(_) | CliError::MigrateBench(_) => EXIT_RUN_FAILED,
        }
    }
}

/// Refuses, before anything runs, an output file that cannot be written where
/// it is asked for: a directory that does not exist, or a chart that is neither
/// PNG nor SVG.
fn check_output(flag: &'static str, path: Option<&Path>) -> Result<(), CliError> {
    let Some(path) = path else {
        return Ok(());
    };
    let refuse = |reason: String| CliError::Output {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    if flag == "--chart"
        && !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("png" | "svg")
        )
    {
        return Err(refuse("name the file .png or .svg".into()));
    }
    if path.is_dir() {
        return Err(refuse("is a directory: name a file".into()));
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(refuse(format!(
            "the directory {} does not exist: create it or name another",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// What the runs of a command boot.
#[derive(Debug)]
enum Guest {
    /// The built-in guest.
    BuiltIn,
    /// A Linux kernel and initrd (`--kernel`): each run boots a copy.
    Linux(LinuxGuest),
}

impl Guest {
    /// The guest `args` ask for, its files read.
    fn of(args: &LinuxArgs) -> Result<Guest, CliError> {
        let Some(kernel) = &args.kernel else {
            return Ok(Guest::BuiltIn);
        };
        read_linux_guest(kernel, args.initrd.as_deref(), args.append.as_deref()).map(Guest::Linux)
    }

    /// The configuration `vm` describes for this guest, from its default
    /// scenario, checked for a measured run.
    fn config(&self, vm: &VmArgs) -> Result<VmConfig, VmArgsError> {
        match self {
            Guest::BuiltIn => vm.config(VmConfig::default()),
            Guest::Linux(_) => vm.config_linux_workloads(VmConfig::linux_compare()),
        }
    }

    /// Checks `config` as [`Guest::config`] does (a sweep's points).
    fn validate(&self, config: &VmConfig) -> Result<(), VmArgsError> {
        match self {
            Guest::BuiltIn => config.validate()?,
            Guest::Linux(_) => config.validate_linux_workloads()?,
        }
        Ok(())
    }
}

/// Runs `guest` with `config`, with a progress bar on a terminal.
fn run_one(
    config: &VmConfig,
    label: &str,
    options: RunOptions,
    guest: &Guest,
) -> Result<RunReport, CliError> {
    if let Some(dir) = vmargs::ensure_store_dir(config)? {
        eprintln!("apf: created the store directory {}", dir.display());
    }
    let bar = RunBar::new(config, label);
    let mut observe = |live: &apf_vm::Live<'_>| {
        bar.update(live);
        ControlFlow::Continue(())
    };
    let run = match guest {
        Guest::BuiltIn => run_workloads_observed(config, options, &mut observe),
        // The run takes its guest (and frees the bytes once they are in guest
        // RAM): a copy each time.
        Guest::Linux(linux) => run_linux_observed(config, linux.clone(), options, &mut observe),
    };
    bar.finish();
    Ok(RunReport::new(label, config, &run?))
}

fn write_json(path: &Path, command: &str, runs: &[RunReport]) -> Result<(), CliError> {
    write_json_value(
        path,
        &JsonReport {
            apf_version: env!("CARGO_PKG_VERSION"),
            command,
            runs,
        },
    )
}

/// Writes `value` as pretty JSON to `path`.
fn write_json_value(path: &Path, value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Write {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| CliError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A run whose results cannot be trusted, or in which the guest lost a
/// process or a page, fails the command: one line for the first such run, and
/// how many more there were.
fn check(runs: &[RunReport]) -> Result<(), CliError> {
    let mut problems = runs.iter().filter_map(problem);
    let Some(first) = problems.next() else {
        return Ok(());
    };
    let more = problems.count();
    Err(CliError::RunFailed(match more {
        0 => first,
        n => format!(
            "{first} (and {n} more failed run{})",
            if n == 1 { "" } else { "s" }
        ),
    }))
}

/// What went wrong in `r`, if anything (the worst first).
fn problem(r: &RunReport) -> Option<String> {
    let label = &r.label;
    if let Some(e) = &r.invariant_violation {
        return Some(format!("{label}: memory invariant broken: {e}"));
    }
    // First: a run stopped from outside may have caught a process between
    // writing its checksum and its progress, so its checksums say little.
    if r.end == "timeout" {
        return Some(format!(
            "{label}: the guest did not finish in time (raise --timeout or lower the work)"
        ));
    }
    if let Some(line) = &r.kernel_panic {
        return Some(format!("{label}: the guest kernel panicked: {line}"));
    }
    // A process the guest never said it finished (a Linux guest's init
    // printed no line for it) has no checksum to check.
    if r.end == "system_off"
        && let Some(p) = r
            .processes
            .iter()
            .find(|p| matches!(p.state, "new" | "running"))
    {
        return Some(format!(
            "{label}: process {} ({}, vcpu {}) did not finish before the guest powered off",
            p.index, p.name, p.vcpu
        ));
    }
    if !r.checksums_ok {
        return Some(format!("{label}: a process's checksum is wrong"));
    }
    if let Some(k) = r.killed.first() {
        let others = match r.killed.len() - 1 {
            0 => String::new(),
            n => format!(" ({n} more killed)"),
        };
        return Some(format!(
            "{label}: the guest killed process {} ({}, vcpu {}): {}{others}",
            k.index, k.name, k.vcpu, k.reason
        ));
    }
    if r.lost_pages > 0 {
        return Some(format!(
            "{label}: the host could not bring back {} page{} (an external abort to the guest each)",
            r.lost_pages,
            if r.lost_pages == 1 { "" } else { "s" }
        ));
    }
    None
}

fn cmd_run(args: &RunArgs) -> Result<(), CliError> {
    check_output("--json", args.json.as_deref())?;
    if let Some(path) = &args.image {
        return run_an_image(args, path);
    }
    if let Some(path) = &args.kernel {
        return run_a_kernel(args, path);
    }
    let config = args.vm.config(VmConfig::default())?;
    let timeout = args.timeout.map_or(Duration::from_secs(120), |t| t.0);
    if let Some(to) = &args.migrate.migrate_to {
        return cmd_migrate_source(args, &config, to, timeout);
    }
    let label = if config.apf { "APF on" } else { "APF off" };
    let report = if args.console {
        let run = run_workloads(
            &config,
            RunOptions {
                echo_console: true,
                ..args.vm.run_options(timeout)
            },
        )?;
        RunReport::new(label, &config, &run)
    } else {
        run_one(
            &config,
            label,
            args.vm.run_options(timeout),
            &Guest::BuiltIn,
        )?
    };
    print!("{}", report::render_run(&report));
    let runs = [report];
    if let Some(path) = &args.json {
        write_json(path, "run", &runs)?;
    }
    check(&runs)
}

fn cmd_migrate_source(
    args: &RunArgs,
    config: &VmConfig,
    addr: &str,
    timeout: Duration,
) -> Result<(), CliError> {
    if let Some(dir) = vmargs::ensure_store_dir(config)? {
        eprintln!("apf: created the store directory {}", dir.display());
    }
    let to = args.migrate.target(addr);
    let bar = RunBar::new(config, "source");
    let mut observe = |live: &apf_vm::Live<'_>| {
        bar.update(live);
        ControlFlow::Continue(())
    };
    let result =
        apf_vm::migrate::run_migrating(config, &to, args.vm.run_options(timeout), &mut observe);
    bar.finish();
    let r = result?;
    let run = RunReport::new("source", config, &r.run);
    let report = migrate::SourceJson::new(&to, &r);
    print!("{}", report.render(&run));
    write_with_run(args.json.as_deref(), &report, &run)?;
    match &r.abandoned {
        Some(why) => Err(CliError::RunFailed(format!(
            "the migration to {addr} was abandoned ({why}); the VM ran to its end here"
        ))),
        None => Ok(()),
    }
}

/// Writes a migration report with its run to `path`, if given.
fn write_with_run(
    path: Option<&Path>,
    report: &impl serde::Serialize,
    run: &RunReport,
) -> Result<(), CliError> {
    match path {
        Some(path) => write_json_value(path, &migrate::WithRunReport { report, run }),
        None => Ok(()),
    }
}

fn cmd_listen(args: &migrate::ListenArgs) -> Result<(), CliError> {
    check_output("--json", args.json.as_deref())?;
    let listener = apf_vm::migrate::Listener::bind(&args.options())?;
    let addr = listener
        .local_addr()
        .map_or_else(|| "?".to_string(), |a| a.to_string());
    // The first line says where: `apf migrate-bench` (and scripts) read it.
    println!("apf listen: waiting for a migration on {addr}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let landed = listener.take(
        RunOptions {
            timeout: args.timeout.0,
            echo_console: false,
            engine: args.engine.engine(),
        },
        &mut |_| ControlFlow::Continue(()),
        Box::new(|line| eprintln!("apf listen: {line}")),
    )?;
    let label = if landed.config.apf {
        "APF on"
    } else {
        "APF off"
    };
    let run = RunReport::new(label, &landed.config, &landed.run);
    let report = migrate::LandedJson::new(&landed, &run);
    print!("{}", report.render(&run));
    write_with_run(args.json.as_deref(), &report, &run)?;
    if !landed.lost_pages.is_empty() {
        return Err(CliError::RunFailed(format!(
            "{} pages never arrived from the source ({})",
            landed.lost_pages.len(),
            landed
                .copy_error
                .as_deref()
                .unwrap_or("the source was gone")
        )));
    }
    check(std::slice::from_ref(&run))
}

fn cmd_migrate_bench(args: &migrate::MigrateBenchArgs) -> Result<(), CliError> {
    let config = args.vm.config(VmConfig::default())?;
    check_output("--json", args.json.as_deref())?;
    check_output("--chart", args.chart.as_deref())?;
    let work = std::env::temp_dir().join(format!("apf-migrate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|source| CliError::Write {
        path: work.clone(),
        source,
    })?;
    let config_file = work.join("config.toml");
    let text = config
        .to_toml()
        .map_err(|e| migrate::BenchError::Config(e.to_string()))?;
    std::fs::write(&config_file, text).map_err(|source| CliError::Write {
        path: config_file.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(|e| migrate::BenchError::Spawn {
        what: "apf".into(),
        source: e,
    })?;
    let setup = migrate::BenchSetup {
        exe: &exe,
        work: &work,
        config_file: &config_file,
        engine: args.vm.engine,
    };
    let mut all = Vec::new();
    let mut text = String::new();
    for latency in &args.latencies {
        let mut runs = Vec::new();
        for (mode, apf, name) in migrate::BENCH_PLAN {
            eprintln!("apf migrate-bench: {name}, net latency {latency}");
            runs.push(migrate::bench_one(
                &setup,
                &format!("{name} {latency}"),
                (mode, apf, latency.0),
                args.at.0,
                args.timeout.0,
            )?);
        }
        for (r, (_, _, name)) in runs.iter_mut().zip(migrate::BENCH_PLAN) {
            r.label = name.to_string();
        }
        let table = migrate::render_bench(*latency, &config, &runs);
        println!("{table}");
        text.push_str(&table);
        all.push((*latency, runs));
    }
    let _ = std::fs::remove_dir_all(&work);
    if let Some(path) = &args.json {
        let runs: Vec<&migrate::BenchRun> = all.iter().flat_map(|(_, r)| r).collect();
        write_json_value(
            path,
            &serde_json::json!({
                "apf_version": env!("CARGO_PKG_VERSION"),
                "command": "migrate-bench",
                "config": config,
                "migrate_at_s": args.at.0.as_secs_f64(),
                "runs": runs,
            }),
        )?;
    }
    if let Some(path) = &args.chart {
        chart::migrate(path, &all).map_err(|reason| CliError::Chart {
            path: path.clone(),
            reason,
        })?;
    }
    let bad: Vec<String> = all
        .iter()
        .flat_map(|(_, r)| r)
        .filter(|r| !r.destination_run.checksums_ok)
        .map(|r| format!("{} at {} s", r.label, r.net_latency_s))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(CliError::RunFailed(format!(
            "wrong checksums after: {}",
            bad.join(", ")
        )))
    }
}

fn run_an_image(args: &RunArgs, path: &Path) -> Result<(), CliError> {
    let image = std::fs::read(path).map_err(|source| CliError::Image {
        path: path.to_path_buf(),
        source,
    })?;
    if image.is_empty() {
        return Err(CliError::EmptyImage {
            path: path.to_path_buf(),
        });
    }
    let config = args.vm.config_machine(VmConfig::default())?;
    if let Some(dir) = vmargs::ensure_store_dir(&config)? {
        eprintln!("apf: created the store directory {}", dir.display());
    }
    let timeout = args.timeout.map_or(Duration::from_secs(30), |t| t.0);
    let run = run_image(
        &config,
        &image,
        RunOptions {
            echo_console: true,
            ..args.vm.run_options(timeout)
        },
    )?;
    if let Some(json) = &args.json {
        // The image brings its own programs: the report has no processes.
        let config = VmConfig {
            processes: Vec::new(),
            ..config
        };
        let label = if config.apf { "APF on" } else { "APF off" };
        write_json(json, "run", &[RunReport::new(label, &config, &run)])?;
    }
    guest_ending(&run)
}

fn read_input(what: &'static str, flag: &'static str, path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Input {
        what,
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// The `--kernel`, `--initrd` and `--append` of any command, the files read; the
/// command line is the user's text only (the -p processes are added per run).
fn read_linux_guest(
    kernel: &Path,
    initrd: Option<&Path>,
    append: Option<&str>,
) -> Result<LinuxGuest, CliError> {
    Ok(LinuxGuest {
        kernel: read_input("kernel", "--kernel", kernel)?,
        initrd: initrd
            .map(|p| read_input("initrd", "--initrd", p))
            .transpose()?,
        append: append.unwrap_or_default().to_string(),
    })
}

/// `apf run --kernel`: boots Linux with the -p processes; the report lists them
/// as the init printed them (none if there are none).
fn run_a_kernel(args: &RunArgs, path: &Path) -> Result<(), CliError> {
    check_output("--dtb-out", args.dtb_out.as_deref())?;
    let guest = read_linux_guest(path, args.initrd.as_deref(), args.append.as_deref())?;
    // Without --config or -p, nothing runs but what the initrd brings.
    let base = VmConfig {
        processes: Vec::new(),
        ..VmConfig::default()
    };
    let config = args.vm.config_linux(base)?;
    if let Some(out) = &args.dtb_out {
        let prepared = apf_vm::linux::prepare(&config, &guest).map_err(VmError::from)?;
        std::fs::write(out, &prepared.dtb).map_err(|source| CliError::Write {
            path: out.clone(),
            source,
        })?;
    }
    if let Some(dir) = vmargs::ensure_store_dir(&config)? {
        eprintln!("apf: created the store directory {}", dir.display());
    }
    let timeout = args.timeout.map_or(Duration::from_secs(120), |t| t.0);
    let run = run_linux(
        &config,
        guest,
        RunOptions {
            echo_console: true,
            ..args.vm.run_options(timeout)
        },
    )?;
    let label = if config.apf { "APF on" } else { "APF off" };
    let report = RunReport::new(label, &config, &run);
    if !config.processes.is_empty() {
        print!("{}", report::render_run(&report));
    }
    let runs = [report];
    if let Some(json) = &args.json {
        write_json(json, "run", &runs)?;
    }
    guest_ending(&run)?;
    if config.processes.is_empty() {
        return Ok(());
    }
    check(&runs)
}

/// How a booted image or kernel ended, as the command's result: powering off
/// succeeds; a panic, a reset or running out of time fails.
fn guest_ending(run: &VmRun) -> Result<(), CliError> {
    let wall = table::secs(run.wall.as_secs_f64());
    match run.end {
        RunEnd::SystemOff => {
            eprintln!("apf: the guest powered off after {wall}");
            Ok(())
        }
        RunEnd::KernelPanic => Err(CliError::RunFailed(format!(
            "the guest kernel panicked after {wall}: {}",
            run.kernel_panic.as_deref().unwrap_or("Kernel panic")
        ))),
        RunEnd::SystemReset => Err(CliError::RunFailed(format!(
            "the guest asked for a reset after {wall} (apf does not reset)"
        ))),
        RunEnd::Timeout | RunEnd::Stopped => Err(CliError::RunFailed(format!(
            "the guest was still running after {wall} (--timeout)"
        ))),
    }
}

/// APF off, then on, same seed.
fn off_and_on(
    config: &VmConfig,
    prefix: &str,
    options: RunOptions,
    guest: &Guest,
) -> Result<(RunReport, RunReport), CliError> {
    let off = VmConfig {
        apf: false,
        ..config.clone()
    };
    let on = VmConfig {
        apf: true,
        ..config.clone()
    };
    let a = run_one(&off, &format!("{prefix}APF off"), options, guest)?;
    let b = run_one(&on, &format!("{prefix}APF on"), options, guest)?;
    Ok((a, b))
}

fn cmd_compare(args: &CompareArgs) -> Result<(), CliError> {
    let guest = Guest::of(&args.linux)?;
    let config = guest.config(&args.vm)?;
    check_output("--json", args.json.as_deref())?;
    check_output("--chart", args.chart.as_deref())?;
    let (off, on) = off_and_on(&config, "", args.vm.run_options(args.timeout.0), &guest)?;
    print!("{}", report::render_side_by_side(&off, &on));
    let runs = [off, on];
    if let Some(path) = &args.json {
        write_json(path, "compare", &runs)?;
    }
    if let Some(path) = &args.chart {
        chart::compare(path, &runs[0], &runs[1]).map_err(|reason| CliError::Chart {
            path: path.clone(),
            reason,
        })?;
    }
    check(&runs)
}

fn cmd_snapshot(args: &snapshot::SnapshotArgs) -> Result<(), CliError> {
    let guest = Guest::of(&args.linux)?;
    let config = guest.config(&args.vm)?;
    if let Some(dir) = vmargs::ensure_store_dir(&config)? {
        eprintln!("apf: created the store directory {}", dir.display());
    }
    let bar = RunBar::new(&config, "to the snapshot");
    let mut observe = |live: &apf_vm::Live<'_>| {
        bar.update(live);
        ControlFlow::Continue(())
    };
    let of = match guest {
        Guest::BuiltIn => SnapshotOf::BuiltIn,
        Guest::Linux(linux) => SnapshotOf::Linux(linux),
    };
    let taken = take_snapshot(
        &config,
        of,
        args.at,
        &args.out,
        args.vm.run_options(args.timeout.0),
        &mut observe,
    );
    bar.finish();
    let taken = taken?;
    println!(
        "snapshot {} taken at {:.2} s: {} of {} pages hold data ({} MiB), written in {:.2} s",
        taken.dir.display(),
        taken.taken_at.as_secs_f64(),
        count(taken.pages_held),
        count(taken.pages),
        (taken.pages_held * 4096) >> 20,
        taken.write_time.as_secs_f64(),
    );
    Ok(())
}

fn cmd_restore(args: &snapshot::RestoreArgs) -> Result<(), CliError> {
    check_output("--json", args.json.as_deref())?;
    let snap = Snapshot::open(&args.dir).map_err(VmError::from)?;
    // What a restore may not change first: its message says which flag to drop.
    let config = args.vm.config_machine(snap.config().clone())?;
    snap.check_config(&config).map_err(VmError::from)?;
    if let Some(dir) = vmargs::ensure_store_dir(&config)? {
        eprintln!("apf: created the store directory {}", dir.display());
    }
    let plan: Vec<(RestoreMode, bool)> = if args.compare {
        vec![
            (RestoreMode::Eager, true),
            (RestoreMode::Lazy, false),
            (RestoreMode::Lazy, true),
            (RestoreMode::LazyPrefetch, true),
        ]
    } else if args.prefetch {
        vec![(RestoreMode::LazyPrefetch, config.apf)]
    } else if args.eager {
        vec![(RestoreMode::Eager, config.apf)]
    } else {
        vec![(RestoreMode::Lazy, config.apf)]
    };
    let source = args
        .from
        .clone()
        .map_or(ImageSource::Local, ImageSource::Nbd);
    let mut reports = Vec::new();
    for (mode, apf) in plan {
        let label = format!("{}, APF {}", mode.name(), if apf { "on" } else { "off" });
        let config = VmConfig {
            apf,
            ..config.clone()
        };
        let bar = RunBar::new(&config, &label);
        let mut observe = |live: &apf_vm::Live<'_>| {
            bar.update(live);
            ControlFlow::Continue(())
        };
        let restored = snap.restore(
            mode,
            &config,
            &source,
            args.vm.run_options(args.timeout.0),
            &mut observe,
        );
        bar.finish();
        reports.push(snapshot::RestoreReport::new(
            label, &snap, &config, &restored?,
        ));
    }
    if let [one] = reports.as_slice() {
        print!("{}", snapshot::render_one(&args.dir, one));
    } else {
        print!("{}", snapshot::render_compare(&args.dir, &reports));
    }
    if let Some(path) = &args.json {
        write_restore_json(path, &reports)?;
    }
    let runs: Vec<RunReport> = reports.into_iter().map(|r| r.run).collect();
    check(&runs)
}

fn write_restore_json(path: &Path, restores: &[snapshot::RestoreReport]) -> Result<(), CliError> {
    write_json_value(
        path,
        &snapshot::RestoreJson {
            apf_version: env!("CARGO_PKG_VERSION"),
            command: "restore",
            restores,
        },
    )
}

fn cmd_sweep(args: &SweepArgs) -> Result<(), CliError> {
    let guest = Guest::of(&args.linux)?;
    let base = guest.config(&args.vm)?;
    check_output("--json", args.json.as_deref())?;
    check_output("--chart", args.chart.as_deref())?;
    let points: Vec<(String, VmConfig)> = match &args.budgets {
        Some(budgets) => budgets
            .iter()
            .map(|&b| {
                (
                    format!("budget {b}"),
                    VmConfig {
                        budget: b,
                        ..base.clone()
                    },
                )
            })
            .collect(),
        None => args
            .latencies
            .iter()
            .map(|&l| {
                let mut c = base.clone();
                c.store.latency = l;
                (format!("latency {l}"), c)
            })
            .collect(),
    };
    let mut sweep = chart::Sweep {
        parameter: if args.budgets.is_some() {
            "host budget"
        } else {
            "added store latency"
        },
        points: Vec::new(),
    };
    // Every point is checked before the first runs: a bad one found after an
    // hour of runs would waste them.
    for (_, config) in &points {
        guest.validate(config)?;
    }
    for (label, config) in &points {
        let (off, on) = off_and_on(
            config,
            &format!("{label}, "),
            args.vm.run_options(args.timeout.0),
            &guest,
        )?;
        sweep.points.push((label.clone(), off, on));
    }
    print!("{}", chart::render_sweep(&sweep));
    let runs: Vec<RunReport> = sweep
        .points
        .iter()
        .flat_map(|(_, a, b)| [a.clone(), b.clone()])
        .collect();
    if let Some(path) = &args.json {
        write_json(path, "sweep", &runs)?;
    }
    if let Some(path) = &args.chart {
        chart::sweep(path, &sweep).map_err(|reason| CliError::Chart {
            path: path.clone(),
            reason,
        })?;
    }
    check(&runs)
}

/// `apf trace`'s run: short, one vCPU, a scan that faults often beside a calc.
fn trace_config() -> VmConfig {
    let mut c = VmConfig {
        vcpus: 1,
        ram: ByteSize(64 << 20),
        budget: ByteSize(8 << 20),
        processes: vec![
            ProcessConfig {
                kind: WorkloadKind::Scan,
                vcpu: 0,
                mem: ByteSize(32 << 20),
                work: 300,
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
    c.store.latency = Span(Duration::from_micros(200));
    c
}

fn cmd_trace(args: &TraceArgs) -> Result<(), CliError> {
    let config = args.vm.config(trace_config())?;
    let recorder = trace::Recorder::install()?;
    let label = if config.apf { "APF on" } else { "APF off" };
    let report = run_one(
        &config,
        label,
        args.vm.run_options(Duration::from_secs(120)),
        &Guest::BuiltIn,
    )?;
    let records = recorder.take();
    let filter = trace::Filter {
        vcpu: args.vcpu_filter,
        token: args.token,
        events: args.event.clone(),
    };
    let chosen = filter.apply(&records);
    let shown = &chosen[..chosen.len().min(args.limit)];
    print!("{}", trace::render(shown));
    print!("\n{}", trace::fault_latencies(&records));
    println!(
        "{} of {} events shown (--limit {}); {}: {}",
        shown.len(),
        chosen.len(),
        args.limit,
        report.label,
        report::describe(&report.config, &report.store)
    );
    check(&[report])
}

/// Clap's error, on one line: what is wrong, and its tip if it has one.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad arguments");
    let mut first = first.strip_prefix("error: ").unwrap_or(first).to_string();
    if first.ends_with(':') {
        // A list follows (e.g. the required arguments missing), up to a blank line.
        let items: Vec<&str> = text
            .lines()
            .skip_while(|l| l.trim().is_empty())
            .skip(1)
            .map(str::trim)
            .take_while(|l| !l.is_empty())
            .collect();
        first = format!("{first} {}", items.join(", "));
    }
    match lines.find(|l| l.starts_with("tip:")) {
        Some(tip) => format!("{first} ({tip}; see --help)"),
        None => format!("{first} (see --help)"),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `apf` alone: the list of commands.
            let _ = e.print();
            return ExitCode::from(EXIT_BAD_INPUT);
        }
        Err(e) => {
            eprintln!("apf: {}", one_line(&e));
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let result = match &cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Compare(args) => cmd_compare(args),
        Command::Sweep(args) => cmd_sweep(args),
        Command::Snapshot(args) => cmd_snapshot(args),
        Command::Restore(args) => cmd_restore(args),
        Command::Listen(args) => cmd_listen(args),
        Command::MigrateBench(args) => cmd_migrate_bench(args),
        Command::StoreBench(args) => storebench::run(args).map_err(CliError::from),
        Command::Trace(args) => cmd_trace(args),
        Command::EngineDemo { faults } => demo::engine_demo(*faults).map_err(CliError::RunFailed),
    };
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("apf: {e}");
            ExitCode::from(e.exit_status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_get_one_line() {
        let e = Cli::try_parse_from(["apf", "run", "--ram", "lots"]).unwrap_err();
        let line = one_line(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("`lots` is not a size"), "{line}");
        let e = Cli::try_parse_from(["apf", "compare", "--vcpu", "2"]).unwrap_err();
        let line = one_line(&e);
        assert!(
            line.contains("--vcpu") && line.contains("--vcpus"),
            "{line}"
        );
        let e = Cli::try_parse_from(["apf", "run", "-p", "scan,vcpu=x"]).unwrap_err();
        assert!(one_line(&e).contains("not a vCPU number"));
        let e = Cli::try_parse_from(["apf", "compare", "--kernel", "Image"]).unwrap_err();
        assert_eq!(
            one_line(&e),
            "the following required arguments were not provided: --initrd <FILE> (see --help)"
        );
    }

    #[test]
    fn a_run_with_a_killed_process_or_a_lost_page_fails() {
        let killed = report::testing::killed_scan("APF on");
        let e = check(std::slice::from_ref(&killed)).unwrap_err();
        assert_eq!(e.exit_status(), EXIT_RUN_FAILED);
        assert_eq!(
            e.to_string(),
            "APF on: the guest killed process 0 (scan, vcpu 0): external abort on a data read (ESR 0x92000010)"
        );
        let lost = RunReport {
            killed: Vec::new(),
            ..killed.clone()
        };
        let e = check(&[lost]).unwrap_err().to_string();
        assert!(e.contains("could not bring back 1 page "), "{e}");
        let clean = RunReport {
            killed: Vec::new(),
            lost_pages: 0,
            ..killed.clone()
        };
        check(std::slice::from_ref(&clean)).unwrap();
        let e = check(&[clean, killed.clone(), killed])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("(and 1 more failed run)"), "{e}");
    }

    #[test]
    fn numbers_are_decimal_or_hex() {
        assert_eq!(parse_number("0x1000"), Ok(0x1000));
        assert_eq!(parse_number("42"), Ok(42));
        assert!(parse_number("0xZZ").is_err());
    }

    #[test]
    fn the_trace_run_is_valid_and_pressured() {
        let c = trace_config();
        c.validate().unwrap();
        let scan = c.processes[0].mem.0;
        assert!(scan > 2 * c.budget.0, "the scan must fault");
    }
}
