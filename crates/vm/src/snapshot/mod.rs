//! Snapshots of a running built-in-guest VM, and restoring them eagerly or
//! lazily (DESIGN §9: page sources are stores; VM state is data).
//!
//! Taking one runs the configuration until the given time, stops every vCPU at
//! an instruction boundary (a vCPU waiting for a page leaves with its PC on the
//! faulting instruction, to retry it), and writes the directory `format.rs`
//! describes. APF work in flight is dropped, as KVM does on migration: each
//! restored vCPU whose guest had APF enabled gets a wake-all page-ready, and
//! the guest's sleepers retry their accesses.
//!
//! A lazy restore starts at once: every page the image holds is "in the store"
//! of a [`CowStore`] whose base is the image (read-only, shared by any number
//! of restores) and whose top is a fresh swap file. An eager one reads (and
//! checks) every page before the first instruction.

mod format;
mod prefetch;

pub use format::{
    FORMAT, GuestKind, MEMORY_FILE, MemoryMap, ProgressState, STATE_FILE, SnapshotError,
    SnapshotState, read_state,
};

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apf_abi::{Gfn, Gpa, PAGE_SIZE};
use apf_host::machine::MachineState;
use apf_host::sync::lock;
use apf_host::vcpu;
use apf_host::vcpu::VcpuState;
use apf_mem::store::{
    BulkReadError, CowStore, FileStore, Latency, LatencyStore, Slot, Store, page_checksum,
    read_slots,
};
use apf_mem::{ExportError, GuestMemory};

use crate::boot::read_boot_block;
use crate::config::{ConfigError, SnapshotPoint, VmConfig};
use crate::error::VmError;
use crate::linux::LinuxGuest;
use crate::linux_run::{LinuxProgress, build_linux, drive_linux};
use crate::monitor::Observer;
use crate::run::{
    Built, GUEST_IMAGE, RunOptions, Vcpus, VmRun, WorkloadProgress, build_machine_over,
    drive_workloads, finish, finish_after, flat_image_boot, start_vcpus_resumed, with_outcomes,
    write_boot_block,
};
use crate::store::{connect_nbd, open_store};
use apf_cpu::Engine;
use prefetch::Prefetcher;
pub(crate) use prefetch::load as prefetch_pages;

/// What `take_snapshot` wrote.
#[derive(Debug)]
pub struct SnapshotTaken {
    /// The directory.
    pub dir: PathBuf,
    /// How long the VM had run when its vCPUs stopped.
    pub taken_at: Duration,
    /// Pages of the memory image that hold data (the rest are holes).
    pub pages_held: u64,
    /// Pages of guest RAM.
    pub pages: u64,
    /// Time spent writing the directory once the vCPUs had stopped.
    pub write_time: Duration,
    /// The run up to the snapshot.
    pub run: VmRun,
}

/// The guest a snapshot is taken of.
#[derive(Debug)]
pub enum SnapshotOf {
    /// The built-in guest with the configuration's processes; the snapshot
    /// time counts from the start of the run.
    BuiltIn,
    /// A Linux guest; the snapshot time counts from its init's start line (as
    /// its processes' times do), so that the boot's length does not matter.
    Linux(LinuxGuest),
}

/// Runs `guest` with `config` until `at`, then writes a snapshot of it to `dir`
/// (which must not exist, or be empty).
pub fn take_snapshot(
    config: &VmConfig,
    guest: SnapshotOf,
    at: SnapshotPoint,
    dir: &Path,
    options: RunOptions,
    observe: Observer<'_>,
) -> Result<SnapshotTaken, VmError> {
    let linux = matches!(guest, SnapshotOf::Linux(_));
    if linux {
        config.validate_linux_workloads()?;
    } else {
        config.validate()?;
    }
    let unreachable = |why| ConfigError::SnapshotPoint { point: at, why };
    match at {
        SnapshotPoint::After(_) => {}
        SnapshotPoint::WorkDone(0 | 100..) => {
            return Err(unreachable("give a share of the work from 1% to 99%").into());
        }
        SnapshotPoint::WorkDone(_) if linux => {
            return Err(unreachable(
                "a Linux guest's work is not followed as a share: give a time after its init's start, such as 3s",
            )
            .into());
        }
        SnapshotPoint::WorkDone(_) if config.processes.iter().all(|p| p.work == 0) => {
            return Err(unreachable("no process has work to do (work > 0): give a time").into());
        }
        SnapshotPoint::WorkDone(_) => {}
    }
    prepare_output(dir)?;
    let (built, boot) = match guest {
        SnapshotOf::BuiltIn => {
            let built = crate::run::build(config, GUEST_IMAGE, options.echo_console)?;
            write_boot_block(config, &built)?;
            (built, flat_image_boot(options.engine))
        }
        SnapshotOf::Linux(g) => build_linux(config, g, options)?,
    };
    let begin = Instant::now();
    let vcpus = start_vcpus_resumed(config, &built, boot, vcpu::spawn, None)?;
    let mut workloads = WorkloadProgress::new(config);
    let mut console = LinuxProgress::new(config);
    let watched = if linux {
        let after = match at {
            SnapshotPoint::After(after) => Some(after),
            SnapshotPoint::WorkDone(_) => None, // refused above
        };
        drive_linux(&built, begin, options, observe, &mut console, after)
    } else {
        drive_workloads(
            config,
            &built,
            begin,
            options,
            observe,
            &mut workloads,
            Some(at),
        )
    };
    let taken_at = begin.elapsed();
    let work_done_at = if linux {
        console.work_done_at
    } else {
        workloads.work_done_at
    };
    let run = finish(&built, vcpus, begin, work_done_at, watched.observer_stopped)?;
    if !watched.snapshot_due {
        return Err(SnapshotError::Output {
            dir: dir.to_path_buf(),
            what: format!(
                "the run ended after {:.2?}, before the snapshot point {at}{}: give an earlier --at",
                run.wall,
                match at {
                    SnapshotPoint::After(_) if linux => " after the init's start",
                    SnapshotPoint::After(_) => "",
                    SnapshotPoint::WorkDone(_) => " of the first process's work",
                }
            ),
        }
        .into());
    }
    let t = Instant::now();
    let memory = write_memory(dir, &built.memory)?;
    let progress = if linux {
        ProgressState {
            ended: console.ended(),
            progress: vec![0; config.processes.len()],
            work_done: console.work_done_at.is_some(),
        }
    } else {
        ProgressState {
            ended: workloads.ended_at.iter().map(Option::is_some).collect(),
            progress: read_boot_block(&built.memory)
                .map(|b| {
                    (0..config.processes.len())
                        .map(|i| b.results[i].progress)
                        .collect()
                })
                .unwrap_or_default(),
            work_done: workloads.work_done_at.is_some(),
        }
    };
    let state = SnapshotState {
        apf_version: env!("CARGO_PKG_VERSION").to_string(),
        config: config.clone(),
        guest: if linux {
            GuestKind::Linux
        } else {
            GuestKind::BuiltIn
        },
        taken_at,
        console: run.uart.clone(),
        machine: built.machine.save_state(),
        vcpus: run.vcpus.iter().map(|v| (*v.state).clone()).collect(),
        progress,
        memory,
    };
    format::write_state(dir, &state)?;
    let run = if linux {
        console.report(config, run)
    } else {
        with_outcomes(config, &built, run, &workloads)
    };
    Ok(SnapshotTaken {
        dir: dir.to_path_buf(),
        taken_at,
        pages_held: state.memory.held_pages(),
        pages: state.memory.pages,
        write_time: t.elapsed(),
        run,
    })
}

/// Writes a stopped VM (`r`, its memory in `memory`) as a snapshot directory
/// `apf restore` resumes: a migration's source does when its switch-over
/// failed, so that the VM survives on disk whatever happened at the other end.
pub(crate) fn write_stopped(
    dir: &Path,
    config: &VmConfig,
    r: &Resume<'_>,
    memory: &GuestMemory,
) -> Result<(), VmError> {
    prepare_output(dir)?;
    let memory = write_memory(dir, memory)?;
    let state = SnapshotState {
        apf_version: env!("CARGO_PKG_VERSION").to_string(),
        config: config.clone(),
        guest: r.guest,
        taken_at: r.taken_at,
        console: r.console.to_string(),
        machine: r.machine.clone(),
        vcpus: r.vcpus.to_vec(),
        progress: r.progress.clone(),
        memory,
    };
    format::write_state(dir, &state)?;
    Ok(())
}

/// Makes `dir` if needed; refuses one that holds anything.
fn prepare_output(dir: &Path) -> Result<(), SnapshotError> {
    let out = |what: String| SnapshotError::Output {
        dir: dir.to_path_buf(),
        what,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(out(
                    "exists and is not empty: give a new directory (nothing was overwritten)"
                        .into(),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| out(format!("cannot be created: {e}")))
        }
        Err(e) => Err(out(format!("cannot be read: {e}"))),
    }
}

/// Writes every touched page of guest RAM to `dir/memory` (holes elsewhere).
fn write_memory(dir: &Path, memory: &GuestMemory) -> Result<MemoryMap, SnapshotError> {
    let werr = |source| SnapshotError::Write {
        dir: dir.to_path_buf(),
        source,
    };
    let pages = memory.ram_pages();
    let file = File::create(dir.join(MEMORY_FILE)).map_err(werr)?;
    file.set_len(pages * PAGE_SIZE).map_err(werr)?;
    let base = memory.ram_base().gfn().0;
    let mut held = Vec::new();
    memory
        .for_each_touched_page(|gfn: Gfn, page| {
            let n = gfn.0 - base;
            held.push((n, page_checksum(page)));
            file.write_all_at(page, n * PAGE_SIZE)
        })
        .map_err(|e| match e {
            ExportError::Visit(e) => werr(e),
            ExportError::Read(e) => werr(std::io::Error::other(e.to_string())),
        })?;
    file.sync_all().map_err(werr)?;
    // Visited resident pages first, then those in the store.
    held.sort_unstable();
    let mut map = MemoryMap {
        pages,
        extents: Vec::new(),
        sums: Vec::new(),
    };
    for (n, sum) in held {
        map.push(n, sum);
    }
    Ok(map)
}

/// How a restore brings memory back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestoreMode {
    /// Every page read (and checked) before the first instruction.
    Eager,
    /// Pages read when first touched, from the image under a copy-on-write store.
    Lazy,
    /// Lazy, and a background loader reads the image's pages in address order
    /// meanwhile, while host memory has room, yielding to demand faults.
    LazyPrefetch,
}

impl RestoreMode {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            RestoreMode::Eager => "eager",
            RestoreMode::Lazy => "lazy",
            RestoreMode::LazyPrefetch => "lazy+prefetch",
        }
    }
}

/// Where a restore reads the snapshot's memory image from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ImageSource {
    /// The `memory` file in the snapshot's directory.
    #[default]
    Local,
    /// An NBD export of it (e.g. `nbdkit file DIR/memory` or `qemu-nbd -r`),
    /// at this URL, read-only: `nbd://HOST:PORT[/EXPORT]`.
    Nbd(String),
}

/// A restored run and what the restore itself cost.
#[derive(Debug)]
pub struct Restored {
    /// How memory came back.
    pub mode: RestoreMode,
    /// From opening the snapshot to the first instruction: reading the state,
    /// setting up memory (eager: reading all of it).
    pub to_first_instruction: Duration,
    /// How long the VM had run before its snapshot.
    pub taken_at: Duration,
    /// Pages the image holds.
    pub image_pages: u64,
    /// Pages read before the first instruction (eager).
    pub loaded_pages: u64,
    /// Pages the background loader read (lazy+prefetch); the rest of those
    /// read after the first instruction were read on demand.
    pub prefetched_pages: u64,
    /// The run from the first instruction (its work_done_at is on the same
    /// timeline).
    pub run: VmRun,
}

impl Restored {
    /// From opening the snapshot to the moment every process with work to do
    /// had done it.
    pub fn to_work_done(&self) -> Option<Duration> {
        self.run.work_done_at.map(|w| w + self.to_first_instruction)
    }
}

/// A snapshot directory, its state read and checked.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    state: SnapshotState,
    /// How long reading the state took (part of every restore's start).
    open_time: Duration,
}

impl Snapshot {
    /// Reads and checks the state in `dir`, and that the memory image is whole.
    pub fn open(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let t = Instant::now();
        let state = read_state(dir)?;
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            state,
            open_time: t.elapsed(),
        })
    }

    /// The configuration it was taken with: the base of a restore's.
    pub fn config(&self) -> &VmConfig {
        &self.state.config
    }

    /// Its state.
    pub fn state(&self) -> &SnapshotState {
        &self.state
    }

    /// Checks that a restore may use `config`: the snapshot's, with only what a
    /// restore may change (APF, the budget, the store, the duration) changed,
    /// at least its RAM, and valid for its guest.
    pub fn check_config(&self, config: &VmConfig) -> Result<(), SnapshotError> {
        let taken = &self.state.config;
        let bad = |what: String| SnapshotError::Inconsistent {
            dir: self.dir.clone(),
            what,
        };
        if config.ram.0 < taken.ram.0 {
            return Err(bad(format!(
                "--ram {} is less than the {} bytes of RAM the snapshot holds: give at least that",
                config.ram.0, taken.ram.0
            )));
        }
        if config.vcpus != taken.vcpus {
            return Err(bad(format!(
                "the snapshot has {} vCPUs, not {}: drop --vcpus",
                taken.vcpus, config.vcpus
            )));
        }
        if config.processes != taken.processes || config.seed != taken.seed {
            return Err(bad(
                "a restore runs the snapshot's processes with its seed: drop -p, --work and --seed"
                    .into(),
            ));
        }
        if config.separate_ready != taken.separate_ready {
            return Err(bad(
                "the guest chose its APF channel at boot: drop --separate-ready".into(),
            ));
        }
        match self.state.guest {
            GuestKind::BuiltIn => config.validate(),
            GuestKind::Linux => config.validate_linux(),
        }
        .map_err(|e| bad(e.to_string()))
    }

    /// Restores it with `config` (see [`Snapshot::check_config`]) and runs it
    /// to the end, as [`crate::run_workloads`] would have.
    pub fn restore(
        &self,
        mode: RestoreMode,
        config: &VmConfig,
        source: &ImageSource,
        options: RunOptions,
        observe: Observer<'_>,
    ) -> Result<Restored, VmError> {
        let t0 = Instant::now();
        self.check_config(config)?;
        let (dir, state) = (self.dir.as_path(), &self.state);
        let (store, loaded_pages) = match mode {
            RestoreMode::Lazy | RestoreMode::LazyPrefetch => {
                (lazy_store(dir, source, state, config)?, 0)
            }
            RestoreMode::Eager => (open_store(config)?, state.memory.held_pages()),
        };
        let built = build_machine_over(config, store, options.echo_console)?;
        match mode {
            RestoreMode::Lazy | RestoreMode::LazyPrefetch => place_image(dir, state, &built)?,
            RestoreMode::Eager => load_image(dir, source, state, config, &built)?,
        }
        let resume = Resume {
            guest: state.guest,
            taken_at: state.taken_at,
            console: &state.console,
            machine: &state.machine,
            vcpus: &state.vcpus,
            progress: &state.progress,
        };
        let (vcpus, begin) = start_resumed(config, &built, &resume, options.engine)?;
        let to_first_instruction = self.open_time + (begin - t0);
        let prefetcher = if mode == RestoreMode::LazyPrefetch {
            let base = built.memory.ram_base().gfn().0;
            let pages = state.memory.held().map(|(n, _)| Gfn(base + n)).collect();
            let depth = usize::try_from(config.store.queue_depth / 4).unwrap_or(1);
            Some(Prefetcher::start(Arc::clone(&built.memory), pages, depth)?)
        } else {
            None
        };
        let mut prefetched_pages = 0;
        let run = run_resumed(
            config,
            &built,
            vcpus,
            begin,
            &resume,
            options,
            observe,
            || {
                prefetched_pages = prefetcher.map_or(0, Prefetcher::stop);
            },
        )?;
        Ok(Restored {
            mode,
            prefetched_pages,
            to_first_instruction,
            taken_at: state.taken_at,
            image_pages: state.memory.held_pages(),
            loaded_pages,
            run,
        })
    }
}

/// A stopped VM's state, everything but its memory: what a snapshot's state
/// file and a migration's switch-over carry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resume<'a> {
    pub(crate) guest: GuestKind,
    pub(crate) taken_at: Duration,
    pub(crate) console: &'a str,
    pub(crate) machine: &'a MachineState,
    pub(crate) vcpus: &'a [VcpuState],
    pub(crate) progress: &'a ProgressState,
}

/// Restores the platform's state into `built` (its memory already set up)
/// and starts its vCPUs where they stopped. Returns them and the moment they
/// started.
pub(crate) fn start_resumed(
    config: &VmConfig,
    built: &Built,
    r: &Resume<'_>,
    engine: Engine,
) -> Result<(Vcpus, Instant), VmError> {
    built
        .machine
        .restore_state(r.machine)
        .map_err(|e| VmError::Load(format!("restoring the platform: {e}")))?;
    // The console so far: a Linux guest's init lines before the stop still
    // count, and the resumed run's console reads as one.
    lock(&built.console).extend_from_slice(r.console.as_bytes());
    let begin = Instant::now();
    let vcpus = start_vcpus_resumed(
        config,
        built,
        flat_image_boot(engine),
        vcpu::spawn,
        Some(r.vcpus.to_vec()),
    )?;
    Ok((vcpus, begin))
}

/// Watches a resumed VM to the end of its run, as the run it continues would
/// have been watched; its processes' outcomes span both parts. `stop_loaders`
/// stops whatever fetches pages beside the vCPUs (see [`finish_after`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_resumed(
    config: &VmConfig,
    built: &Built,
    vcpus: Vcpus,
    begin: Instant,
    r: &Resume<'_>,
    options: RunOptions,
    observe: Observer<'_>,
    stop_loaders: impl FnOnce(),
) -> Result<VmRun, VmError> {
    Ok(match r.guest {
        GuestKind::BuiltIn => {
            let mut progress = WorkloadProgress::new(config);
            progress.before = r.taken_at;
            for (at, ended) in progress.ended_at.iter_mut().zip(&r.progress.ended) {
                if *ended {
                    *at = Some(Duration::ZERO);
                }
            }
            if r.progress.work_done {
                progress.work_done_at = Some(Duration::ZERO);
            }
            let watched =
                drive_workloads(config, built, begin, options, observe, &mut progress, None);
            let run = finish_after(
                built,
                vcpus,
                begin,
                progress.work_done_at,
                watched.observer_stopped,
                stop_loaders,
            )?;
            with_outcomes(config, built, run, &progress)
        }
        GuestKind::Linux => {
            let mut progress = LinuxProgress::new(config);
            let watched = drive_linux(built, begin, options, observe, &mut progress, None);
            let run = finish_after(
                built,
                vcpus,
                begin,
                progress.work_done_at,
                watched.observer_stopped,
                stop_loaders,
            )?;
            progress.report(config, run)
        }
    })
}

/// The snapshot's image as a store, slot `n` being page `n`, with the
/// configuration's added latency as any device of the store has.
fn image_store(
    dir: &Path,
    source: &ImageSource,
    state: &SnapshotState,
    config: &VmConfig,
) -> Result<Box<dyn Store>, VmError> {
    let depth = usize::try_from(config.store.queue_depth).unwrap_or(1);
    let image: Box<dyn Store> = match source {
        ImageSource::Local => Box::new(FileStore::open_image(
            &dir.join(MEMORY_FILE),
            depth,
            config.store.direct,
        )?),
        ImageSource::Nbd(url) => Box::new(connect_nbd(
            url,
            config,
            true,
            0,
            state.memory.pages * PAGE_SIZE,
        )?),
    };
    Ok(if config.store.latency.0.is_zero() {
        image
    } else {
        Box::new(LatencyStore::new(
            image,
            Latency::Fixed(config.store.latency.0),
        ))
    })
}

/// The image under a fresh swap file (the configuration's store).
fn lazy_store(
    dir: &Path,
    source: &ImageSource,
    state: &SnapshotState,
    config: &VmConfig,
) -> Result<Box<dyn Store>, VmError> {
    Ok(Box::new(CowStore::new(
        image_store(dir, source, state, config)?,
        state.memory.sums_by_page(),
        open_store(config)?,
    )))
}

/// Declares every page the image holds to be in the store, at its own slot.
fn place_image(dir: &Path, state: &SnapshotState, built: &Built) -> Result<(), VmError> {
    let base = built.memory.ram_base().gfn().0;
    for (n, _) in state.memory.held() {
        let slot = u32::try_from(n).map_err(|_| SnapshotError::Inconsistent {
            dir: dir.to_path_buf(),
            what: format!("page {n} is past what a store can hold"),
        })?;
        built
            .memory
            .place_in_store(Gfn(base + n), Slot(slot))
            .map_err(|e| VmError::Load(e.to_string()))?;
    }
    Ok(())
}

/// Reads every page the image holds into guest memory through the image's
/// store, at its queue depth, checking each against its checksum first. Pages
/// past the budget go to the swap file, as they would on a host that much
/// smaller than the VM.
fn load_image(
    dir: &Path,
    source: &ImageSource,
    state: &SnapshotState,
    config: &VmConfig,
    built: &Built,
) -> Result<(), VmError> {
    let image = image_store(dir, source, state, config)?;
    let sums = state.memory.sums_by_page();
    let slots: Vec<Slot> = state
        .memory
        .held()
        .map(|(n, _)| Slot(u32::try_from(n).unwrap_or(u32::MAX)))
        .collect();
    let base = built.memory.ram_base();
    read_slots(&*image, &slots, config.store.io_timeout.0, |slot, page| {
        let n = u64::from(slot.0);
        if page_checksum(page) != sums[slot.0 as usize] {
            return Err(VmError::from(SnapshotError::PageChecksum {
                dir: dir.to_path_buf(),
                page: n,
            }));
        }
        built
            .memory
            .write_bytes(Gpa(base.0 + n * PAGE_SIZE), page)
            .map_err(|e| VmError::Load(e.to_string()))
    })
    .map_err(|e| match e {
        BulkReadError::Visit(e) => e,
        e => VmError::Load(format!("reading the snapshot's image: {e}")),
    })
}
