//! The flags that describe a VM, shared by `run`, `compare`, `sweep` and `trace`:
//! a TOML file (`--config`) and flags that override its values.

use apf_abi::boot::WRITE_PCT_ALL;
use apf_vm::RunOptions;
use apf_vm::config::{
    ByteSize, ConfigError, ProcessConfig, Span, StoreKind, VmConfig, WorkloadKind,
};
use clap::Args;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why the VM's configuration could not be put together.
#[derive(Debug, Error)]
pub enum VmArgsError {
    /// The config file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value in the config file is wrong.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: ConfigError,
    },
    /// A value is wrong.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The store directory could not be made.
    #[error(
        "store path {path} does not exist and cannot be created: {source} (give --store-path a directory apf can make or write)"
    )]
    StoreDir {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
pub(crate) fn on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("`{text}` is not on or off")),
    }
}

/// A process given on the command line:
/// `KIND[,vcpu=N][,mem=SIZE][,work=N][,write=PCT]` (`write`: scan only).
pub fn parse_process(text: &str) -> Result<ProcessConfig, String> {
    let mut parts = text.split(',');
    let kind: WorkloadKind = parts.next().unwrap_or_default().trim().parse()?;
    let mut p = ProcessConfig {
        kind,
        vcpu: 0,
        mem: ByteSize(if kind == WorkloadKind::Calc {
            0
        } else {
            64 << 20
        }),
        work: 0,
        write_pct: 100,
    };
    for part in parts {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            format!("`{part}` in `{text}`: write key=value (vcpu, mem, work or write)")
        })?;
        let bad = |what: &str| format!("{key}={value} in `{text}`: {what}");
        match key.trim() {
            "vcpu" => p.vcpu = value.trim().parse().map_err(|_| bad("not a vCPU number"))?,
            "mem" => p.mem = value.trim().parse().map_err(|e| bad(&format!("{e}")))?,
            "work" => p.work = value.trim().parse().map_err(|_| bad("not a count"))?,
            "write" if kind != WorkloadKind::Scan => {
                return Err(format!(
                    "{key}={value} in `{text}`: write applies to scan only: drop it"
                ));
            }
            "write" => {
                p.write_pct = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|&pct| pct <= WRITE_PCT_ALL)
                    .ok_or_else(|| bad("use a percentage of accesses that write, from 0 to 100"))?;
            }
            _ => return Err(format!("`{key}` in `{text}`: use vcpu, mem, work or write")),
        }
    }
    Ok(p)
}

/// `--engine`: how the vCPUs run guest code.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineArg {
    /// Every instruction interpreted.
    Interpreter,
    /// Blocks compiled to host code once hot (Cranelift; docs/jit).
    #[default]
    Compiler,
}

impl EngineArg {
    /// The engine this names.
    pub fn engine(self) -> apf_vm::Engine {
        match self {
            EngineArg::Interpreter => apf_vm::Engine::Interpreter,
            EngineArg::Compiler => apf_vm::Engine::Compiler {
                after: apf_vm::Engine::COMPILE_AFTER,
            },
        }
    }
}

/// What describes the VM.
#[derive(Debug, Clone, Default, Args)]
pub struct VmArgs {
    /// A TOML configuration (see README); the flags below override its values.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// vCPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Guest RAM (e.g. 256MiB).
    #[arg(long, value_name = "SIZE")]
    pub ram: Option<ByteSize>,
    /// Host memory the guest's resident pages may use (e.g. 64MiB).
    #[arg(long, value_name = "SIZE")]
    pub budget: Option<ByteSize>,
    /// Offer APF to the guest: on or off (compare and sweep run both).
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub apf: Option<bool>,
    /// Let the guest use the separate page-ready channel (ABI 1.1): on or off.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub separate_ready: Option<bool>,
    /// Backing store: file (a real swap file), mem (host memory, for tests) or an
    /// NBD export, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH.
    #[arg(long, value_name = "file|mem|nbd://HOST:PORT/EXPORT", value_parser = parse_store_kind)]
    pub store: Option<StoreChoice>,
    /// Directory for the swap file (created if missing), or a file to use.
    #[arg(long, value_name = "PATH")]
    pub store_path: Option<PathBuf>,
    /// Store queue depth (requests in flight at once).
    #[arg(long, value_name = "N")]
    pub queue_depth: Option<u32>,
    /// Latency added to every store read and write (e.g. 0, 100us, 1ms).
    #[arg(long, value_name = "DURATION")]
    pub latency: Option<Span>,
    /// Log-normal spread (sigma) of the added latency; 0 = fixed.
    #[arg(long, value_name = "SIGMA")]
    pub latency_sigma: Option<f64>,
    /// Use O_DIRECT when the filesystem allows it: on or off.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub direct: Option<bool>,
    /// A guest process, KIND[,vcpu=N][,mem=SIZE][,work=N][,write=PCT] with KIND scan,
    /// calc, kv or build; work=0 (the default) runs until the run ends; write (scan
    /// only) is the percentage of accesses that write, 100 by default, 0 reads only.
    /// Repeat for more; replaces the configuration's list.
    #[arg(long = "process", short = 'p', value_name = "SPEC", value_parser = parse_process)]
    pub processes: Vec<ProcessConfig>,
    /// Units of work for every process that has some (replaces their `work`).
    #[arg(long, value_name = "N")]
    pub work: Option<u64>,
    /// Stop the run after this long (e.g. 10s); without it the run ends when every
    /// process with work has done it.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<Span>,
    /// Seed for the workloads and the store's latency.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How the vCPUs run guest code: compiler (blocks compiled to host code once
    /// hot), or interpreter.
    #[arg(long, value_enum, default_value_t)]
    pub engine: EngineArg,
}

/// A `--store` value: the kind, and the URL of an NBD store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreChoice {
    /// The kind.
    pub kind: StoreKind,
    /// For NBD, the URL as given.
    pub url: Option<String>,
}

fn parse_store_kind(text: &str) -> Result<StoreChoice, String> {
    let kind = |kind| StoreChoice { kind, url: None };
    match text {
        "file" => Ok(kind(StoreKind::File)),
        "mem" => Ok(kind(StoreKind::Mem)),
        _ if text.starts_with("nbd") => {
            apf_mem::store::NbdUrl::parse(text).map_err(|e| e.to_string())?;
            Ok(StoreChoice {
                kind: StoreKind::Nbd,
                url: Some(text.to_string()),
            })
        }
        _ => Err(format!(
            "`{text}` is not a store: use file, mem or nbd://HOST:PORT/EXPORT"
        )),
    }
}

impl VmArgs {
    /// How to run it: `timeout`, and the engine asked for.
    pub fn run_options(&self, timeout: std::time::Duration) -> RunOptions {
        RunOptions {
            timeout,
            echo_console: false,
            engine: self.engine.engine(),
        }
    }

    /// The configuration: `base` (or the config file), then the flags; checked for
    /// a run of the built-in guest.
    pub fn config(&self, base: VmConfig) -> Result<VmConfig, VmArgsError> {
        let c = self.merged(base)?;
        c.validate()?;
        Ok(c)
    }

    /// The same, checked only as a machine (for `--image`, which brings its own
    /// programs).
    pub fn config_machine(&self, base: VmConfig) -> Result<VmConfig, VmArgsError> {
        let c = self.merged(base)?;
        c.validate_machine()?;
        Ok(c)
    }

    /// The same, checked for booting a Linux kernel (`--kernel`): the machine,
    /// and processes it can name on the kernel command line.
    pub fn config_linux(&self, base: VmConfig) -> Result<VmConfig, VmArgsError> {
        let c = self.merged(base)?;
        c.validate_linux()?;
        Ok(c)
    }

    /// The same, checked for a measured run of a Linux kernel (`compare` and
    /// `sweep` with `--kernel`): as [`VmArgs::config_linux`], and some process
    /// with work, whose end ends the run.
    pub fn config_linux_workloads(&self, base: VmConfig) -> Result<VmConfig, VmArgsError> {
        let c = self.merged(base)?;
        c.validate_linux_workloads()?;
        Ok(c)
    }

    fn merged(&self, base: VmConfig) -> Result<VmConfig, VmArgsError> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| VmArgsError::Read {
                    path: path.clone(),
                    source,
                })?;
                VmConfig::from_toml(&text).map_err(|source| VmArgsError::File {
                    path: path.clone(),
                    source,
                })?
            }
            None => base,
        };
        let s = &mut c.store;
        set(&mut c.vcpus, self.vcpus);
        set(&mut c.ram, self.ram);
        set(&mut c.budget, self.budget);
        set(&mut c.apf, self.apf);
        set(&mut c.separate_ready, self.separate_ready);
        if let Some(choice) = &self.store {
            s.kind = choice.kind;
            // The flag replaces the store: a URL from the file does not
            // outlive a switch to file or mem.
            s.url.clone_from(&choice.url);
        }
        set(&mut s.queue_depth, self.queue_depth);
        set(&mut s.latency, self.latency);
        set(&mut s.latency_sigma, self.latency_sigma);
        set(&mut s.direct, self.direct);
        if self.store_path.is_some() {
            s.path.clone_from(&self.store_path);
        }
        if !self.processes.is_empty() {
            c.processes.clone_from(&self.processes);
        }
        if let Some(work) = self.work {
            for p in c.processes.iter_mut().filter(|p| p.work > 0) {
                p.work = work;
            }
        }
        if self.duration.is_some() {
            c.duration = self.duration;
        }
        set(&mut c.seed, self.seed);
        Ok(c)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// A store path that does not exist is a directory to make; says whether it made one.
pub fn ensure_store_dir(config: &VmConfig) -> Result<Option<&Path>, VmArgsError> {
    let Some(path) = config.store.path.as_deref() else {
        return Ok(None);
    };
    if config.store.kind != StoreKind::File || path.exists() {
        return Ok(None);
    }
    std::fs::create_dir_all(path).map_err(|source| VmArgsError::StoreDir {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(path))
}

/// A Linux guest for `compare` and `sweep`: every run boots it instead of the
/// built-in guest.
#[derive(Args, Debug)]
pub struct LinuxArgs {
    /// Boot this arm64 Linux Image (uncompressed) in every run instead of the built-in
    /// guest, with --initrd; the -p processes go to its init as for `apf run --kernel`.
    /// Without -p or --config: a 384MiB scan beside a calc, 512MiB of RAM in a 256MiB
    /// budget.
    #[arg(
        long,
        value_name = "IMAGE",
        requires = "initrd",
        conflicts_with = "duration"
    )]
    pub kernel: Option<PathBuf>,
    /// The initramfs whose init runs the processes (guest/linux/build.sh makes it).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command-line arguments for --kernel (e.g. "console=ttyAMA0").
    #[arg(
        long,
        value_name = "ARGS",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    pub append: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_specs_parse_with_defaults_and_name_their_mistakes() {
        let p = parse_process("scan,vcpu=1,mem=32MiB,work=500").unwrap();
        assert_eq!(
            p,
            ProcessConfig {
                kind: WorkloadKind::Scan,
                vcpu: 1,
                mem: ByteSize(32 << 20),
                work: 500,
                write_pct: 100,
            }
        );
        let calc = parse_process("calc").unwrap();
        assert_eq!(
            (calc.kind, calc.mem, calc.work),
            (WorkloadKind::Calc, ByteSize(0), 0)
        );
        assert!(
            parse_process("sort")
                .unwrap_err()
                .contains("use scan, calc, kv or build")
        );
        assert!(
            parse_process("scan,cpu=1")
                .unwrap_err()
                .contains("use vcpu, mem, work or write")
        );
        assert!(
            parse_process("scan,mem=lots")
                .unwrap_err()
                .contains("is not a size")
        );
        assert!(
            parse_process("scan,work")
                .unwrap_err()
                .contains("key=value")
        );
    }

    #[test]
    fn scan_write_ratio_parses_and_bad_values_say_what_to_change() {
        assert_eq!(parse_process("scan").unwrap().write_pct, 100);
        for pct in [0, 50, 100] {
            let p = parse_process(&format!("scan,write={pct},work=5")).unwrap();
            assert_eq!((p.write_pct, p.work), (pct, 5));
        }
        for bad in ["scan,write=101", "scan,write=x", "scan,write=-1"] {
            let err = parse_process(bad).unwrap_err();
            assert!(
                err.contains("use a percentage of accesses that write, from 0 to 100"),
                "{bad}: {err}"
            );
            assert!(!err.contains('\n'), "{bad}: one line: {err}");
        }
        assert!(
            parse_process("calc,write=0")
                .unwrap_err()
                .contains("write applies to scan only")
        );
    }

    #[test]
    fn flags_override_the_base_and_are_validated() {
        let args = VmArgs {
            vcpus: Some(1),
            latency: Some("1ms".parse().unwrap()),
            processes: vec![
                parse_process("scan,mem=32MiB,work=100").unwrap(),
                parse_process("calc").unwrap(),
            ],
            work: Some(7),
            apf: Some(false),
            ..VmArgs::default()
        };
        let c = args.config(VmConfig::default()).unwrap();
        assert_eq!(c.vcpus, 1);
        assert!(!c.apf);
        assert_eq!(c.store.latency, "1ms".parse().unwrap());
        let work: Vec<u64> = c.processes.iter().map(|p| p.work).collect();
        assert_eq!(work, [7, 0], "--work changes only processes that have work");

        let bad = VmArgs {
            vcpus: Some(1),
            processes: vec![parse_process("scan,vcpu=3,work=1").unwrap()],
            ..VmArgs::default()
        };
        let e = bad.config(VmConfig::default()).unwrap_err().to_string();
        assert!(e.contains("pinned to vcpu 3, but the VM has 1"), "{e}");
    }

    #[test]
    fn a_config_file_is_read_and_its_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("apf-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "vcpus = 1\n[[processes]]\nkind = \"calc\"\nwork = 9\n",
        )
        .unwrap();
        let args = VmArgs {
            config: Some(good),
            seed: Some(5),
            ..VmArgs::default()
        };
        let c = args.config(VmConfig::default()).unwrap();
        assert_eq!((c.vcpus, c.seed, c.processes.len()), (1, 5, 1));
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "vcpus = \"two\"\n").unwrap();
        let e = VmArgs {
            config: Some(bad),
            ..VmArgs::default()
        }
        .config(VmConfig::default())
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad.toml") && !e.contains('\n'), "{e}");

        // A file that cannot run as it is, made right by a flag: checked after
        // the flags, not before.
        let small = dir.join("small.toml");
        std::fs::write(
            &small,
            "ram = \"32MiB\"\nbudget = \"16MiB\"\n[[processes]]\nkind = \"scan\"\nmem = \"48MiB\"\nwork = 1\n",
        )
        .unwrap();
        let from_file = |ram: Option<ByteSize>| {
            VmArgs {
                config: Some(small.clone()),
                ram,
                ..VmArgs::default()
            }
            .config(VmConfig::default())
        };
        let e = from_file(None).unwrap_err().to_string();
        assert!(e.contains("raise ram"), "{e}");
        let c = from_file(Some(ByteSize(128 << 20))).unwrap();
        assert_eq!(c.ram, ByteSize(128 << 20));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_store_directory_is_created() {
        let dir = std::env::temp_dir().join(format!("apf-cli-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = VmConfig::default();
        c.store.path = Some(dir.join("deeper"));
        assert_eq!(
            ensure_store_dir(&c).unwrap(),
            Some(dir.join("deeper").as_path())
        );
        assert!(dir.join("deeper").is_dir());
        assert_eq!(ensure_store_dir(&c).unwrap(), None, "it exists now");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
