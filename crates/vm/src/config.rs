//! A VM's configuration: what the `apf` command line and TOML files describe.
//!
//! Every field has a default, and [`VmConfig::default`] is the built-in
//! configuration `apf compare` runs. [`VmConfig::validate`] turns every bad value
//! into one line that says what to change.

use apf_abi::PAGE_SIZE;
use apf_abi::boot::{BOOT_MAX_PROCS, WRITE_PCT_ALL, workload};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

/// Guest RAM the kernel keeps for itself below the processes' working sets.
pub const KERNEL_RESERVE: u64 = 16 << 20;
/// Most vCPUs a VM can have (the guest's per-CPU tables and the GIC model).
pub const MAX_VCPUS: u32 = 16;

/// A size in bytes, written as `4096`, `64KiB`, `256MiB`, `4GiB` (or `K`, `M`, `G`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A duration written as `250us`, `1ms`, `2.5s` or `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

/// Why a size or duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{text}` is not a {what}: write it like {example}")]
pub struct ParseValueError {
    text: String,
    what: &'static str,
    example: &'static str,
}

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

impl FromStr for ByteSize {
    type Err = ParseValueError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseValueError {
            text: text.to_string(),
            what: "size",
            example: "`512MiB`, `4GiB` or `65536`",
        };
        let (num, unit) = split_number(text.trim());
        let n: u64 = num.parse().map_err(|_| err())?;
        let shift = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(err()),
        };
        n.checked_mul(1 << shift).map(ByteSize).ok_or_else(err)
    }
}

impl FromStr for Span {
    type Err = ParseValueError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseValueError {
            text: text.to_string(),
            what: "duration",
            example: "`100us`, `1ms`, `2.5s` or `0`",
        };
        let (num, unit) = split_number(text.trim());
        let n: f64 = num.parse().map_err(|_| err())?;
        let scale = match unit {
            "" if n == 0.0 => 0.0,
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            _ => return Err(err()),
        };
        Duration::try_from_secs_f64(n * scale)
            .map(Span)
            .map_err(|_| err())
    }
}

/// When a snapshot stops the VM, written as a duration (`3s`, `250ms`) or as a
/// share of the work (`30%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPoint {
    /// This long into the run; for a Linux guest, after its init's start line.
    After(Duration),
    /// Once the first of the built-in guest's processes with work to do has done
    /// this percentage of it (1 to 99). Every such process is then mid-work,
    /// however fast the host runs the guest, which a time cannot promise.
    WorkDone(u8),
}

/// Whether a process with `work` to do has done `percent` of it, `done` being done.
pub(crate) fn share_done(percent: u8, done: u64, work: u64) -> bool {
    work > 0 && u128::from(done) * 100 >= u128::from(work) * u128::from(percent)
}

impl FromStr for SnapshotPoint {
    type Err = ParseValueError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(percent) = text.trim().strip_suffix('%') else {
            return text.parse::<Span>().map(|s| SnapshotPoint::After(s.0));
        };
        match percent.trim().parse::<u8>() {
            Ok(p @ 1..=99) => Ok(SnapshotPoint::WorkDone(p)),
            _ => Err(ParseValueError {
                text: text.to_string(),
                what: "snapshot point",
                example: "`3s`, `250ms`, or a share of the work from `1%` to `99%`",
            }),
        }
    }
}

impl fmt::Display for SnapshotPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotPoint::After(d) => Span(*d).fmt(f),
            SnapshotPoint::WorkDone(p) => write!(f, "{p}%"),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        for (shift, unit) in units {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us == 0 {
            write!(f, "0")
        } else if us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1000) {
            write!(f, "{}ms", us / 1000)
        } else {
            write!(f, "{us}us")
        }
    }
}

macro_rules! deserialize_from_str {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Text(String),
                    Number(u64),
                }
                match Raw::deserialize(d)? {
                    Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
                    Raw::Number(n) => n.to_string().parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}
deserialize_from_str!(ByteSize);
deserialize_from_str!(Span);

/// Sizes and durations are written as they are read (`"256MiB"`, `"1ms"`).
macro_rules! serialize_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
serialize_as_text!(ByteSize);
serialize_as_text!(Span);

/// A workload kind (DESIGN §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Random page touches over a working set.
    Scan,
    /// CPU only.
    Calc,
    /// Hash-table gets in guest memory.
    Kv,
    /// Alternating compute and memory phases.
    Build,
}

impl WorkloadKind {
    /// The boot block's number for this kind.
    pub const fn abi(self) -> u32 {
        match self {
            WorkloadKind::Scan => workload::SCAN,
            WorkloadKind::Calc => workload::CALC,
            WorkloadKind::Kv => workload::KV,
            WorkloadKind::Build => workload::BUILD,
        }
    }

    /// The lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            WorkloadKind::Scan => "scan",
            WorkloadKind::Calc => "calc",
            WorkloadKind::Kv => "kv",
            WorkloadKind::Build => "build",
        }
    }
}

impl FromStr for WorkloadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scan" => Ok(WorkloadKind::Scan),
            "calc" => Ok(WorkloadKind::Calc),
            "kv" => Ok(WorkloadKind::Kv),
            "build" => Ok(WorkloadKind::Build),
            other => Err(format!(
                "unknown workload `{other}`: use scan, calc, kv or build"
            )),
        }
    }
}

/// One guest process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// What it runs.
    pub kind: WorkloadKind,
    /// The vCPU it is pinned to.
    #[serde(default)]
    pub vcpu: u32,
    /// Its working set (ignored by `calc`).
    #[serde(default = "default_working_set")]
    pub mem: ByteSize,
    /// Units of work; 0 = run until the run's duration ends.
    #[serde(default)]
    pub work: u64,
    /// `scan` only: the percentage of its accesses that write (`write` in TOML
    /// and on the command line); 100, the default, makes every access a
    /// read-modify-write, 0 reads only.
    #[serde(
        rename = "write",
        default = "all_writes",
        skip_serializing_if = "is_all_writes"
    )]
    pub write_pct: u32,
}

fn default_working_set() -> ByteSize {
    ByteSize(64 << 20)
}

fn all_writes() -> u32 {
    WRITE_PCT_ALL
}

fn is_all_writes(write_pct: &u32) -> bool {
    *write_pct == WRITE_PCT_ALL
}

impl ProcessConfig {
    /// Checks what the process itself asks for (`index` names it in the error).
    fn validate(&self, index: usize) -> Result<(), ConfigError> {
        if self.write_pct > WRITE_PCT_ALL {
            return Err(ConfigError::WritePct {
                index,
                value: self.write_pct,
            });
        }
        if self.kind != WorkloadKind::Scan && self.write_pct != WRITE_PCT_ALL {
            return Err(ConfigError::WriteNotScan {
                index,
                kind: self.kind.name(),
            });
        }
        Ok(())
    }
}

/// Which backing store holds evicted pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A swap file read and written with real I/O (the default).
    File,
    /// Host memory: for tests only.
    Mem,
    /// A network block device (`url`): pages at `slot * 4096` of the export.
    Nbd,
}

/// The backing store.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The store kind.
    pub kind: StoreKind,
    /// Directory or file for the swap file; a temporary file when unset.
    pub path: Option<PathBuf>,
    /// The NBD export for `kind = "nbd"`: `nbd://HOST:PORT/EXPORT` or
    /// `nbd+unix:///EXPORT?socket=PATH`.
    pub url: Option<String>,
    /// io_uring queue depth.
    pub queue_depth: u32,
    /// Latency added to every read and write, on top of the real I/O.
    pub latency: Span,
    /// Log-normal spread (sigma) of the added latency; 0 = fixed.
    pub latency_sigma: f64,
    /// Use O_DIRECT when the filesystem allows it.
    pub direct: bool,
    /// Fraction of reads that fail (fault injection, for tests).
    pub read_error_rate: f64,
    /// Fraction of completions the store never delivers (fault injection): the
    /// I/O is given up on after `io_timeout`.
    pub lost_completion_rate: f64,
    /// Fraction of completions the store delivers twice (fault injection).
    pub duplicate_completion_rate: f64,
    /// An I/O not completed after this long fails (a store that lost it).
    pub io_timeout: Span,
}

impl StoreConfig {
    /// How long a broken connection to a remote page source is retried: a
    /// third of the I/O timeout, at most 10 s (well inside the memory
    /// system's own timeout). The NBD client and the migration control
    /// stream both use it.
    pub fn reconnect_window(&self) -> Duration {
        (self.io_timeout.0 / 3).min(Duration::from_secs(10))
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::File,
            path: None,
            url: None,
            queue_depth: 32,
            latency: Span(Duration::from_millis(1)),
            latency_sigma: 0.0,
            direct: true,
            read_error_rate: 0.0,
            lost_completion_rate: 0.0,
            duplicate_completion_rate: 0.0,
            io_timeout: Span(Duration::from_secs(30)),
        }
    }
}

/// A whole VM.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM.
    pub ram: ByteSize,
    /// Host memory the guest's resident pages may use.
    pub budget: ByteSize,
    /// Offer APF to the guest.
    pub apf: bool,
    /// Let the guest use the separate page-ready channel (ABI 1.1).
    pub separate_ready: bool,
    /// The backing store.
    pub store: StoreConfig,
    /// The guest's processes.
    pub processes: Vec<ProcessConfig>,
    /// Stop the run after this long. Without it the run ends when every process
    /// with work to do has done it; processes with `work = 0` run until then.
    pub duration: Option<Span>,
    /// Seed for the guest's workloads and the store's latency and faults.
    pub seed: u64,
}

impl Default for VmConfig {
    /// The built-in configuration, the arm64 series' own scenario: one vCPU with a
    /// `scan` process (a working set 1.5 times the host budget, so a third of its
    /// touches fault) beside a `calc` process that can run while the scan waits;
    /// guest RAM twice the budget; 1 ms added to every store I/O. `apf compare`
    /// runs it with APF off and on in about 20 s on a 2-core machine.
    fn default() -> Self {
        VmConfig {
            vcpus: 1,
            ram: ByteSize(128 << 20),
            budget: ByteSize(64 << 20),
            apf: true,
            separate_ready: true,
            store: StoreConfig::default(),
            processes: vec![
                ProcessConfig {
                    kind: WorkloadKind::Scan,
                    vcpu: 0,
                    mem: ByteSize(96 << 20),
                    work: 15_000,
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
            duration: None,
            seed: 1,
        }
    }
}

impl VmConfig {
    /// The Linux guest's comparison, `apf compare --kernel`'s default: the series'
    /// scenario at the scale of a Linux guest. One vCPU with 512 MiB of RAM in a
    /// 256 MiB host budget, 1 ms added to every store I/O; a `scan` over 384 MiB
    /// (1.5 times the budget, so the guest's pages go to the swap file and come
    /// back) beside a `calc` that runs until the scan is done. A run with APF off
    /// takes about 55 s on a 2-core machine: the stock boot (~15 s) and the scan
    /// zeroing its working set beside the calc (~35 s) are most of it; the run
    /// takes ~3,700 synchronous faults, ~5 s of blocktime, for 8,000 units.
    pub fn linux_compare() -> VmConfig {
        VmConfig {
            ram: ByteSize(512 << 20),
            budget: ByteSize(256 << 20),
            processes: vec![
                ProcessConfig {
                    kind: WorkloadKind::Scan,
                    vcpu: 0,
                    mem: ByteSize(384 << 20),
                    work: 15_000,
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
        }
    }
}

/// A configuration value that cannot work; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The TOML did not parse.
    #[error("config: {0}")]
    Toml(String),
    /// vCPU count out of range.
    #[error("vcpus = {0}: use 1 to {MAX_VCPUS}")]
    Vcpus(u32),
    /// Guest RAM not a whole number of pages, or too small.
    #[error("ram = {0}: use a multiple of 4KiB of at least {min}", min = ByteSize(KERNEL_RESERVE * 2))]
    Ram(ByteSize),
    /// Budget below one page.
    #[error("budget = {0}: the host budget must hold at least one page (4KiB)")]
    Budget(ByteSize),
    /// Too many processes.
    #[error("{0} processes: a run can have at most {BOOT_MAX_PROCS}")]
    TooManyProcesses(usize),
    /// No processes at all.
    #[error("no processes: add at least one (for example kind = \"scan\")")]
    NoProcesses,
    /// A process pinned to a vCPU that does not exist.
    #[error("process {index} ({kind}) is pinned to vcpu {vcpu}, but the VM has {vcpus} vCPUs")]
    ProcessVcpu {
        /// Process index.
        index: usize,
        /// Its kind.
        kind: &'static str,
        /// The vCPU asked for.
        vcpu: u32,
        /// vCPUs the VM has.
        vcpus: u32,
    },
    /// A write percentage out of range.
    #[error("process {index}: write = {value}: use a percentage from 0 to 100")]
    WritePct {
        /// Process index.
        index: usize,
        /// The value given.
        value: u32,
    },
    /// A write percentage on a kind other than scan.
    #[error("process {index} ({kind}): write applies to scan only: drop it")]
    WriteNotScan {
        /// Process index.
        index: usize,
        /// Its kind.
        kind: &'static str,
    },
    /// Working sets do not fit in guest RAM.
    #[error(
        "working sets total {total} but guest RAM leaves {room} for them: raise ram or lower mem"
    )]
    WorkingSets {
        /// Sum of the working sets.
        total: ByteSize,
        /// RAM minus the kernel's reserve.
        room: ByteSize,
    },
    /// A Linux guest's measured run in which no process has work: its init
    /// stops the processes without work only when those with work have ended.
    #[error(
        "every process has work = 0 (run until the others end), so the Linux guest would never power off: give one some work"
    )]
    LinuxEndless,
    /// No process ends and the run has no duration.
    #[error(
        "every process has work = 0 (run until stopped) and the run has no duration: set duration or some work"
    )]
    Endless,
    /// Queue depth out of range.
    #[error("store.queue_depth = {0}: use 1 to 4096")]
    QueueDepth(u32),
    /// An NBD store without a URL.
    #[error("store.kind = \"nbd\" needs store.url = \"nbd://HOST:PORT/EXPORT\"")]
    NbdUrlMissing,
    /// A URL for a store that is not NBD.
    #[error("store.url is set but store.kind is not \"nbd\": drop the url or set kind = \"nbd\"")]
    UrlWithoutNbd,
    /// A URL that does not parse.
    #[error("store.url: {0}")]
    NbdUrl(#[from] apf_mem::store::nbd::UrlError),
    /// The I/O timeout would fail I/Os that are merely slow.
    #[error(
        "store.io_timeout = {timeout}: it must be longer than store.latency ({latency}), or every read times out"
    )]
    IoTimeout {
        /// The timeout.
        timeout: Span,
        /// The added latency.
        latency: Span,
    },
    /// A snapshot point the run could never reach.
    #[error("snapshot at {point}: {why}")]
    SnapshotPoint {
        /// The point asked for.
        point: SnapshotPoint,
        /// Why it cannot be reached, and what to give instead.
        why: &'static str,
    },
    /// A number out of its range.
    #[error("{name} = {value}: use a number from {range}")]
    Range {
        /// The field.
        name: &'static str,
        /// The value given.
        value: String,
        /// The accepted range.
        range: &'static str,
    },
}

impl VmConfig {
    /// The configuration as a file `--config` reads back as the same.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Toml(e.to_string()))
    }

    /// Parses a TOML configuration; missing fields take their defaults. Not
    /// validated: flags may still change it (callers check the result).
    pub fn from_toml(text: &str) -> Result<VmConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let what = e.message().replace('\n', " ");
            // Where: the line the error is on, as written, so a wrong value names
            // its key.
            let Some(span) = e.span() else {
                return ConfigError::Toml(what);
            };
            let line = text[..span.start.min(text.len())].matches('\n').count();
            let written = text.lines().nth(line).unwrap_or("").trim();
            ConfigError::Toml(format!("line {}: {what} (`{written}`)", line + 1))
        })
    }

    /// Checks that the machine (vCPUs, memory, store) can be built; what runs on it
    /// is not looked at (an image brings its own).
    pub fn validate_machine(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !self.ram.0.is_multiple_of(PAGE_SIZE) || self.ram.0 < KERNEL_RESERVE * 2 {
            return Err(ConfigError::Ram(self.ram));
        }
        if self.budget.0 < PAGE_SIZE {
            return Err(ConfigError::Budget(self.budget));
        }
        if self.store.queue_depth == 0 || self.store.queue_depth > 4096 {
            return Err(ConfigError::QueueDepth(self.store.queue_depth));
        }
        match (self.store.kind, self.store.url.as_deref()) {
            (StoreKind::Nbd, None) => return Err(ConfigError::NbdUrlMissing),
            (StoreKind::Nbd, Some(url)) => {
                apf_mem::store::NbdUrl::parse(url)?;
            }
            (_, Some(_)) => return Err(ConfigError::UrlWithoutNbd),
            (_, None) => {}
        }
        let rates = [
            ("store.read_error_rate", self.store.read_error_rate),
            (
                "store.lost_completion_rate",
                self.store.lost_completion_rate,
            ),
            (
                "store.duplicate_completion_rate",
                self.store.duplicate_completion_rate,
            ),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::Range {
                    name,
                    value: rate.to_string(),
                    range: "0 to 1",
                });
            }
        }
        if self.store.io_timeout.0 <= self.store.latency.0 {
            return Err(ConfigError::IoTimeout {
                timeout: self.store.io_timeout,
                latency: self.store.latency,
            });
        }
        let sigma = self.store.latency_sigma;
        if !(0.0..=4.0).contains(&sigma) {
            return Err(ConfigError::Range {
                name: "store.latency_sigma",
                value: sigma.to_string(),
                range: "0 to 4",
            });
        }
        Ok(())
    }

    /// Checks that the configuration can boot a Linux guest with its processes:
    /// the machine, and processes the command line can name (none is fine: the
    /// guest's init then runs nothing of ours). Working sets are the guest
    /// kernel's to fit.
    pub fn validate_linux(&self) -> Result<(), ConfigError> {
        self.validate_machine()?;
        if self.processes.len() > BOOT_MAX_PROCS {
            return Err(ConfigError::TooManyProcesses(self.processes.len()));
        }
        for (index, p) in self.processes.iter().enumerate() {
            if p.vcpu >= self.vcpus {
                return Err(ConfigError::ProcessVcpu {
                    index,
                    kind: p.kind.name(),
                    vcpu: p.vcpu,
                    vcpus: self.vcpus,
                });
            }
            p.validate(index)?;
        }
        Ok(())
    }

    /// Checks that the configuration can boot a Linux guest for a run that is
    /// measured (`compare`, `sweep`): [`VmConfig::validate_linux`], at least one
    /// process, and one with work, whose end ends the run.
    pub fn validate_linux_workloads(&self) -> Result<(), ConfigError> {
        self.validate_linux()?;
        if self.processes.is_empty() {
            return Err(ConfigError::NoProcesses);
        }
        if self.processes.iter().all(|p| p.work == 0) {
            return Err(ConfigError::LinuxEndless);
        }
        Ok(())
    }

    /// Checks that the configuration can run the built-in guest's processes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_machine()?;
        if self.processes.is_empty() {
            return Err(ConfigError::NoProcesses);
        }
        if self.processes.len() > BOOT_MAX_PROCS {
            return Err(ConfigError::TooManyProcesses(self.processes.len()));
        }
        let mut total = 0u64;
        for (index, p) in self.processes.iter().enumerate() {
            if p.vcpu >= self.vcpus {
                return Err(ConfigError::ProcessVcpu {
                    index,
                    kind: p.kind.name(),
                    vcpu: p.vcpu,
                    vcpus: self.vcpus,
                });
            }
            p.validate(index)?;
            if p.kind != WorkloadKind::Calc {
                total = total.saturating_add(p.mem.0.next_multiple_of(PAGE_SIZE));
            }
        }
        if self.duration.is_none() && self.processes.iter().all(|p| p.work == 0) {
            return Err(ConfigError::Endless);
        }
        let room = self.ram.0 - KERNEL_RESERVE;
        if total > room {
            return Err(ConfigError::WorkingSets {
                total: ByteSize(total),
                room: ByteSize(room),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_nbd_store_needs_a_good_url_and_only_nbd_takes_one() {
        let mut c = VmConfig::default();
        c.store.kind = StoreKind::Nbd;
        assert_eq!(c.validate(), Err(ConfigError::NbdUrlMissing));
        c.store.url = Some("nbd://127.0.0.1:10809/pages".into());
        c.validate().unwrap();
        c.store.url = Some("nbd://127.0.0.1:0/pages".into());
        assert!(matches!(c.validate(), Err(ConfigError::NbdUrl(_))));
        c.store.kind = StoreKind::File;
        assert_eq!(c.validate(), Err(ConfigError::UrlWithoutNbd));
        let t = VmConfig::from_toml("[store]\nkind = \"nbd\"\nurl = \"nbd://h/x\"\n").unwrap();
        assert_eq!(t.store.kind, StoreKind::Nbd);
        t.validate().unwrap();
    }

    #[test]
    fn a_snapshot_point_is_a_time_or_a_share_of_the_work() {
        let parse = |t: &str| t.parse::<SnapshotPoint>();
        assert_eq!(
            parse("250ms"),
            Ok(SnapshotPoint::After(Duration::from_millis(250)))
        );
        assert_eq!(parse(" 30% "), Ok(SnapshotPoint::WorkDone(30)));
        for bad in ["0%", "100%", "-5%", "2.5%", "%", "30 percent"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.to_string().contains(bad.trim()), "{bad}: {e}");
        }
        assert_eq!(SnapshotPoint::WorkDone(30).to_string(), "30%");
        assert_eq!(
            SnapshotPoint::After(Duration::from_secs(3)).to_string(),
            "3s"
        );

        assert!(!share_done(30, 749, 2500));
        assert!(share_done(30, 750, 2500));
        assert!(!share_done(30, 0, 0), "no work is never 30% done");
        assert!(share_done(99, u64::MAX, u64::MAX), "no overflow");
    }

    #[test]
    fn the_default_configuration_is_valid_and_under_pressure() {
        let c = VmConfig::default();
        c.validate().unwrap();
        assert_eq!(
            c.ram.0,
            2 * c.budget.0,
            "the series' scenario: RAM twice the budget"
        );
        let scan = c
            .processes
            .iter()
            .find(|p| p.kind == WorkloadKind::Scan)
            .unwrap();
        assert!(
            scan.mem.0 > c.budget.0 && scan.work > 0,
            "the scan must fault and end"
        );
        assert!(
            c.processes
                .iter()
                .any(|p| p.kind == WorkloadKind::Calc && p.vcpu == scan.vcpu),
            "something to run while the scan waits"
        );
    }

    #[test]
    fn the_linux_comparison_is_the_series_scenario_for_a_linux_guest() {
        let c = VmConfig::linux_compare();
        c.validate_linux_workloads().unwrap();
        assert_eq!((c.vcpus, c.ram.0, c.budget.0), (1, 512 << 20, 256 << 20));
        assert_eq!(c.store.latency, Span(Duration::from_millis(1)));
        let scan = &c.processes[0];
        assert_eq!(scan.kind, WorkloadKind::Scan);
        assert_eq!(2 * scan.mem.0, 3 * c.budget.0, "1.5 times the budget");
        assert!(scan.work > 0);
        let calc = &c.processes[1];
        assert_eq!(
            (calc.kind, calc.vcpu, calc.work),
            (WorkloadKind::Calc, 0, 0)
        );

        let endless = VmConfig {
            processes: vec![calc.clone()],
            ..c.clone()
        };
        endless.validate_linux().unwrap();
        assert_eq!(
            endless.validate_linux_workloads(),
            Err(ConfigError::LinuxEndless)
        );
        let none = VmConfig {
            processes: Vec::new(),
            ..c
        };
        assert_eq!(
            none.validate_linux_workloads(),
            Err(ConfigError::NoProcesses)
        );
    }

    #[test]
    fn sizes_and_durations_parse_and_print() {
        assert_eq!("256MiB".parse(), Ok(ByteSize(256 << 20)));
        assert_eq!("4G".parse(), Ok(ByteSize(4 << 30)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert!("4 potatoes".parse::<ByteSize>().is_err());
        assert!("99999999999T".parse::<ByteSize>().is_err(), "overflow");
        assert_eq!("1ms".parse(), Ok(Span(Duration::from_millis(1))));
        assert_eq!("2.5s".parse(), Ok(Span(Duration::from_millis(2500))));
        assert_eq!("0".parse(), Ok(Span(Duration::ZERO)));
        assert!(
            "5".parse::<Span>().is_err(),
            "a bare non-zero number has no unit"
        );
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(Span(Duration::from_micros(100)).to_string(), "100us");
    }

    #[test]
    fn toml_fills_in_defaults_and_refuses_unknown_fields() {
        let c = VmConfig::from_toml(
            "vcpus = 1\nram = \"128MiB\"\n[[processes]]\nkind = \"scan\"\nmem = \"32MiB\"\nwork = 10\n",
        )
        .unwrap();
        assert_eq!(
            (c.vcpus, c.ram, c.processes.len()),
            (1, ByteSize(128 << 20), 1)
        );
        assert_eq!(c.store, StoreConfig::default());
        let e = VmConfig::from_toml("vcpu = 2\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `vcpu`"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = VmConfig::from_toml("vcpus = 1\n[[processes]]\nkind = \"scan\"\nwrite = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 4: ") && e.contains("(`write = \"x\"`)"),
            "{e}"
        );
    }

    #[test]
    fn toml_carries_the_scan_write_ratio_and_checks_it() {
        let text = "[[processes]]\nkind = \"scan\"\nmem = \"8MiB\"\nwork = 10\nwrite = 0\n";
        let c = VmConfig::from_toml(text).unwrap();
        assert_eq!(c.processes[0].write_pct, 0);
        c.validate().unwrap();
        let back = VmConfig::from_toml(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back.processes[0].write_pct, 0, "written back as write = 0");
        let default = VmConfig::default().to_toml().unwrap();
        assert!(!default.contains("write"), "100 is left out: {default}");
        assert_eq!(VmConfig::from_toml(&default).unwrap(), VmConfig::default());

        let mut bad = c.clone();
        bad.processes[0].write_pct = 101;
        let e = bad.validate().unwrap_err();
        assert_eq!(
            e,
            ConfigError::WritePct {
                index: 0,
                value: 101
            }
        );
        assert_eq!(
            e.to_string(),
            "process 0: write = 101: use a percentage from 0 to 100"
        );
        assert_eq!(bad.validate_linux(), Err(e));
        let mut calc = c;
        calc.processes[0].kind = WorkloadKind::Calc;
        assert!(
            calc.validate()
                .unwrap_err()
                .to_string()
                .contains("write applies to scan only")
        );
        let e = VmConfig::from_toml(&text.replace("write = 0", "write = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected u32") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_values_get_one_line_that_names_the_fix() {
        let base = VmConfig::default();
        let cases: Vec<(VmConfig, &str)> = vec![
            (
                VmConfig {
                    vcpus: 0,
                    ..base.clone()
                },
                "vcpus = 0: use 1 to 16",
            ),
            (
                VmConfig {
                    budget: ByteSize(100),
                    ..base.clone()
                },
                "at least one page",
            ),
            (
                VmConfig {
                    ram: ByteSize(1 << 20),
                    ..base.clone()
                },
                "ram = 1MiB",
            ),
            (
                VmConfig {
                    processes: vec![],
                    ..base.clone()
                },
                "no processes",
            ),
            (
                VmConfig {
                    processes: vec![ProcessConfig {
                        kind: WorkloadKind::Scan,
                        vcpu: 5,
                        mem: ByteSize(4096),
                        work: 1,
                        write_pct: 100,
                    }],
                    ..base.clone()
                },
                "pinned to vcpu 5, but the VM has 1",
            ),
            (
                VmConfig {
                    processes: vec![ProcessConfig {
                        kind: WorkloadKind::Scan,
                        vcpu: 0,
                        mem: ByteSize(1 << 30),
                        work: 1,
                        write_pct: 100,
                    }],
                    ..base.clone()
                },
                "raise ram or lower mem",
            ),
            (
                VmConfig {
                    processes: vec![ProcessConfig {
                        kind: WorkloadKind::Calc,
                        vcpu: 0,
                        mem: ByteSize(0),
                        work: 0,
                        write_pct: 100,
                    }],
                    ..base.clone()
                },
                "set duration or some work",
            ),
            (
                VmConfig {
                    store: StoreConfig {
                        lost_completion_rate: 1.5,
                        ..StoreConfig::default()
                    },
                    ..base.clone()
                },
                "store.lost_completion_rate = 1.5: use a number from 0 to 1",
            ),
            (
                VmConfig {
                    store: StoreConfig {
                        duplicate_completion_rate: -0.1,
                        ..StoreConfig::default()
                    },
                    ..base.clone()
                },
                "store.duplicate_completion_rate = -0.1",
            ),
            (
                VmConfig {
                    store: StoreConfig {
                        io_timeout: Span(Duration::from_micros(500)),
                        latency: Span(Duration::from_micros(500)),
                        ..StoreConfig::default()
                    },
                    ..base.clone()
                },
                "store.io_timeout = 500us: it must be longer than store.latency (500us)",
            ),
        ];
        for (config, want) in cases {
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
            assert!(!e.contains('\n'));
        }
    }
}
