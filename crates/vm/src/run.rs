//! Wiring a VM and running it: guest memory over the store (`store.rs`), the
//! platform, one thread per vCPU, the image and the boot block (`boot.rs`); the
//! monitor (`monitor.rs`) watches it; then the results.

use crate::boot::{ProcessOutcome, boot_block, outcomes, read_boot_block};
use crate::config::{SnapshotPoint, VmConfig, share_done};
use crate::error::VmError;
use crate::monitor::{self, Live, Observer};
use crate::store::open_store;
use apf_abi::Gpa;
use apf_abi::boot::{BOOT_BLOCK_GPA, BOOT_OFF_STOP, proc_state};
use apf_abi::platform::{IMAGE_LOAD_ADDR, RAM_BASE, UART_INTID};
use apf_abi::ppi::APF_DEFAULT_PPI;
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_cpu::{CpuConfig, Engine};
use apf_host::gic::{Gic, SpiLine};
use apf_host::machine::{Machine, StartRequest, StopReason};
use apf_host::regs::mpidr_el1_of;
use apf_host::sync::lock;
use apf_host::uart::Pl011;
use apf_host::vcpu::{self, VcpuSpec, VcpuTotals};
use apf_mem::store::StoreInfo;
use apf_mem::{GuestMemory, MemConfig, MemMetrics};
use std::io::Write;
use std::ops::ControlFlow;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// The guest image built from `guest/` (see `guest/README.md`).
pub const GUEST_IMAGE: &[u8] = include_bytes!("../../../guest/apf-guest.bin");

/// Instructions per interpreter slice.
const SLICE: u64 = 20_000;
/// How long a halting vCPU polls before it sleeps (cross-CPU wake-ups cost
/// 22–28 µs on the machines this runs on).
const HALT_POLL: Duration = Duration::from_micros(30);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest powered off.
    SystemOff,
    /// The guest asked for a reset (not followed: the run ends).
    SystemReset,
    /// The timeout passed.
    Timeout,
    /// The observer ended it (see [`run_image_observed`]).
    Stopped,
    /// A Linux guest's kernel panicked ([`VmRun::kernel_panic`] has its line);
    /// whether it then reset or was stopped.
    KernelPanic,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct VmRun {
    /// How it ended.
    pub end: RunEnd,
    /// Wall time from the first vCPU's start to the end.
    pub wall: Duration,
    /// Wall time until every process with work to do had done it (workload runs).
    pub work_done_at: Option<Duration>,
    /// Console output.
    pub uart: String,
    /// Per-vCPU reports.
    pub vcpus: Vec<VcpuTotals>,
    /// Memory system metrics at the end.
    pub mem: MemMetrics,
    /// The memory system's invariant check at the end.
    pub mem_invariants: Result<(), apf_mem::InvariantError>,
    /// The store.
    pub store: StoreInfo,
    /// Per-process outcomes (workload runs).
    pub processes: Vec<ProcessOutcome>,
    /// A Linux guest's panic line ("Kernel panic - not syncing: ..."), if it
    /// panicked.
    pub kernel_panic: Option<String>,
    /// A Linux guest's apf module counters (`/sys/kernel/apf/<name>`) as its init
    /// printed them after the processes ended, in its order; empty without.
    pub guest_module: Vec<(String, u64)>,
}

impl VmRun {
    /// Pages the host could not bring back, as the guest saw them: stage-2
    /// faults whose page could not be read from the store even by the
    /// synchronous read that is the last resort, each answered with an external
    /// abort to the guest (the vCPUs' `faults.lost`, summed). A failed
    /// asynchronous fetch is not counted (nor memory's `fetch.failed`): the page
    /// stays in the store, the guest retries the access and the host reads it
    /// again. A page lost to two accesses counts twice.
    pub fn lost_pages(&self) -> u64 {
        self.vcpus.iter().map(|v| v.stats.faults.lost).sum()
    }

    /// The processes the guest killed.
    pub fn killed(&self) -> impl Iterator<Item = &ProcessOutcome> {
        self.processes.iter().filter(|p| p.killed())
    }
}

/// The console: kept for the report, and echoed to standard output if asked.
#[derive(Debug, Clone)]
struct Console {
    text: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.text).extend_from_slice(buf);
        if self.echo {
            std::io::stdout().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.echo {
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

/// Options of a run that are not part of the VM's configuration.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// End the run after this long, whatever the guest does.
    pub timeout: Duration,
    /// Echo the console to standard output.
    pub echo_console: bool,
    /// How the vCPUs run guest code.
    pub engine: Engine,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(120),
            echo_console: false,
            engine: Engine::default(),
        }
    }
}

/// A VM's memory and platform, before its vCPUs exist.
pub(crate) struct Built {
    pub(crate) memory: Arc<GuestMemory>,
    pub(crate) machine: Arc<Machine>,
    /// Everything the guest printed so far.
    pub(crate) console: Arc<Mutex<Vec<u8>>>,
}

/// How the boot vCPU starts, and how every vCPU's interpreter is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Boot {
    /// The boot vCPU's PC.
    pub(crate) entry: u64,
    /// The boot vCPU's x0.
    pub(crate) context: u64,
    /// Every vCPU's interpreter (its MPIDR is set per vCPU).
    pub(crate) cpu: CpuConfig,
}

/// A flat image's boot: at its load address, x0 = 0, the default clock, guest
/// code run by `engine`.
pub(crate) fn flat_image_boot(engine: Engine) -> Boot {
    Boot {
        entry: IMAGE_LOAD_ADDR,
        context: 0,
        cpu: CpuConfig {
            engine,
            ..CpuConfig::default()
        },
    }
}

pub(crate) fn build(config: &VmConfig, image: &[u8], echo: bool) -> Result<Built, VmError> {
    if image.is_empty() {
        config.validate_machine()?;
        return Err(VmError::EmptyImage);
    }
    let built = build_machine(config, echo)?;
    let room = built.machine.ram.end.saturating_sub(IMAGE_LOAD_ADDR);
    if image.len() as u64 > room {
        return Err(VmError::ImageTooBig {
            len: image.len() as u64,
            room,
        });
    }
    built
        .memory
        .write_bytes(Gpa(IMAGE_LOAD_ADDR), image)
        .map_err(|e| VmError::Load(e.to_string()))?;
    Ok(built)
}

/// Guest memory over the configuration's store, and the platform over it.
pub(crate) fn build_machine(config: &VmConfig, echo: bool) -> Result<Built, VmError> {
    config.validate_machine()?;
    build_machine_over(config, open_store(config)?, echo)
}

/// [`build_machine`] over a given store.
pub(crate) fn build_machine_over(
    config: &VmConfig,
    store: Box<dyn apf_mem::Store>,
    echo: bool,
) -> Result<Built, VmError> {
    // Guest RAM's range, built once: memory takes it as given (page-aligned or
    // refused, never rounded), and the machine takes the same value for what it
    // decides by it (RAM or MMIO on a TLB miss, CPU_ON entry points, APF shared
    // blocks), so the two cannot disagree.
    let ram = RAM_BASE..RAM_BASE + config.ram.0;
    let memory = GuestMemory::new(
        MemConfig {
            io_timeout: config.store.io_timeout.0,
            ..MemConfig::new(ram.start, ram.end - ram.start, config.budget.0)
        },
        store,
    )?;
    debug_assert!(
        memory.contains(Gpa(ram.start), ram.end - ram.start) && !memory.contains(Gpa(ram.end), 1),
        "memory holds exactly the machine's RAM range"
    );
    let vcpus = usize::try_from(config.vcpus).unwrap_or(1);
    let gic = Arc::new(Gic::new(vcpus).map_err(|e| VmError::Gic(e.to_string()))?);
    let console = Arc::new(Mutex::new(Vec::new()));
    let line =
        SpiLine::new(Arc::clone(&gic), UART_INTID).map_err(|e| VmError::Gic(e.to_string()))?;
    let uart = Pl011::new(
        Box::new(Console {
            text: Arc::clone(&console),
            echo,
        }),
        Box::new(line),
    );
    let machine = Arc::new(Machine::new(gic, uart, ram));
    Ok(Built {
        memory,
        machine,
        console,
    })
}

/// Spawns one vCPU thread: [`vcpu::spawn`], or in tests one that fails on purpose.
pub(crate) trait SpawnVcpu:
    FnMut(VcpuSpec, Arc<Machine>, Arc<Barrier>, Arc<GuestMemory>) -> std::io::Result<vcpu::VcpuThread>
{
}

impl<F> SpawnVcpu for F where
    F: FnMut(
        VcpuSpec,
        Arc<Machine>,
        Arc<Barrier>,
        Arc<GuestMemory>,
    ) -> std::io::Result<vcpu::VcpuThread>
{
}

/// A VM's vCPU threads, which hold its guest memory. Each thread waits at its
/// own start barrier until [`Vcpus::start`]; the VM's memory outlives none of
/// them: dropped without [`Vcpus::join`] (a step of the assembly failed, or the
/// run unwound), the guard stops the machine, lets every thread still waiting
/// through (it sees the stop and returns before running any guest code) and
/// joins them all.
pub(crate) struct Vcpus {
    machine: Arc<Machine>,
    /// Spawned, waiting to start (index order).
    waiting: Vec<(Arc<Barrier>, vcpu::VcpuThread)>,
    /// Started (index order).
    running: Vec<std::thread::JoinHandle<VcpuTotals>>,
}

impl Vcpus {
    /// Lets every waiting thread run: the boot vCPU last, so that the others
    /// are already running when it can first ask for them.
    fn start(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        for (start, _) in waiting.iter().rev() {
            start.wait();
        }
        self.running = waiting.into_iter().map(|(_, t)| t.handle).collect();
    }

    /// Waits for every thread (the machine must be stopping) and returns their
    /// reports; a panicked thread is an error, once all the others are joined.
    fn join(mut self) -> Result<Vec<VcpuTotals>, VmError> {
        let mut reports = Vec::with_capacity(self.running.len());
        let mut panicked = None;
        for (i, handle) in std::mem::take(&mut self.running).into_iter().enumerate() {
            match handle.join() {
                Ok(report) => reports.push(report),
                Err(_) => {
                    panicked.get_or_insert(i);
                }
            }
        }
        match panicked {
            Some(i) => Err(VmError::VcpuPanicked(i)),
            None => Ok(reports),
        }
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        if self.waiting.is_empty() && self.running.is_empty() {
            return;
        }
        self.machine.stop(StopReason::Host);
        for (start, thread) in self.waiting.drain(..) {
            start.wait();
            let _ = thread.handle.join();
        }
        for handle in self.running.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Spawns every vCPU thread, hands their wakers to the machine and the GIC, and
/// starts them. Any failure returns with no thread left: see [`Vcpus`].
pub(crate) fn start_vcpus(
    config: &VmConfig,
    built: &Built,
    boot: Boot,
    spawn: impl SpawnVcpu,
) -> Result<Vcpus, VmError> {
    start_vcpus_resumed(config, built, boot, spawn, None)
}

/// [`start_vcpus`], each vCPU from its saved state if `resume` has one per
/// vCPU (a restored VM: `boot` then only sets up the interpreters).
pub(crate) fn start_vcpus_resumed(
    config: &VmConfig,
    built: &Built,
    boot: Boot,
    mut spawn: impl SpawnVcpu,
    resume: Option<Vec<vcpu::VcpuState>>,
) -> Result<Vcpus, VmError> {
    let n = usize::try_from(config.vcpus).unwrap_or(1);
    let mut resume = resume.map(|states| states.into_iter().map(Box::new));
    let mut vcpus = Vcpus {
        machine: Arc::clone(&built.machine),
        waiting: Vec::with_capacity(n),
        running: Vec::new(),
    };
    for index in 0..n {
        let spec = VcpuSpec {
            index,
            cpu: CpuConfig {
                mpidr: mpidr_el1_of(index),
                ..boot.cpu
            },
            apf_offered: config.apf,
            apf_sdei_event: SDEI_EVENT_ASYNC_PF,
            apf_ppi: APF_DEFAULT_PPI,
            apf_separate_ready: config.separate_ready,
            boot: (index == 0 && resume.is_none()).then_some(StartRequest {
                entry: boot.entry,
                context: boot.context,
                counter: 0,
            }),
            resume: resume.as_mut().and_then(Iterator::next),
            slice: SLICE,
            halt_poll: HALT_POLL,
        };
        let start = Arc::new(Barrier::new(2));
        let thread = spawn(
            spec,
            Arc::clone(&built.machine),
            Arc::clone(&start),
            Arc::clone(&built.memory),
        )?;
        vcpus.waiting.push((start, thread));
    }
    built.machine.set_wakers(
        vcpus
            .waiting
            .iter()
            .map(|(_, t)| Arc::clone(&t.waker))
            .collect(),
    );
    for (i, (_, t)) in vcpus.waiting.iter().enumerate() {
        let kick: Arc<dyn apf_host::gic::Kick> = t.waker.clone();
        built
            .machine
            .gic
            .connect(i, kick)
            .map_err(|e| VmError::Gic(e.to_string()))?;
    }
    vcpus.start();
    Ok(vcpus)
}

/// Stops the machine, waits for its vCPUs and gathers what the run produced.
pub(crate) fn finish(
    built: &Built,
    vcpus: Vcpus,
    begin: Instant,
    work_done_at: Option<Duration>,
    observer_stopped: bool,
) -> Result<VmRun, VmError> {
    finish_after(built, vcpus, begin, work_done_at, observer_stopped, || {})
}

/// [`finish`], with `stop_loaders` called once the vCPUs have stopped and before
/// memory is counted and checked: a background loader (a lazy restore's
/// prefetcher, a migration's copier) must not start fetches meanwhile.
pub(crate) fn finish_after(
    built: &Built,
    vcpus: Vcpus,
    begin: Instant,
    work_done_at: Option<Duration>,
    observer_stopped: bool,
    stop_loaders: impl FnOnce(),
) -> Result<VmRun, VmError> {
    built.machine.stop(StopReason::Host);
    let vcpus = vcpus.join();
    let wall = begin.elapsed();
    stop_loaders();
    let vcpus = vcpus?;
    built.machine.uart.flush();
    let end = match built.machine.stop_reason() {
        Some(StopReason::SystemOff) => RunEnd::SystemOff,
        Some(StopReason::SystemReset) => RunEnd::SystemReset,
        Some(StopReason::Host) | None if observer_stopped => RunEnd::Stopped,
        Some(StopReason::Host) | None => RunEnd::Timeout,
    };
    let uart = String::from_utf8_lossy(&lock(&built.console)).into_owned();
    // Before the metrics: the check waits for the I/O in flight to end.
    let mem_invariants = built.memory.check_invariants();
    Ok(VmRun {
        end,
        wall,
        work_done_at,
        uart,
        vcpus,
        mem_invariants,
        mem: built.memory.metrics(),
        store: built.memory.store_info(),
        processes: Vec::new(),
        kernel_panic: None,
        guest_module: Vec::new(),
    })
}

/// Boots any flat AArch64 image (loaded at 0x40080000, entered at EL1h with x0 = 0)
/// and runs it until it powers off or `options.timeout` passes.
pub fn run_image(config: &VmConfig, image: &[u8], options: RunOptions) -> Result<VmRun, VmError> {
    run_image_observed(config, image, options, &mut |_| ControlFlow::Continue(()))
}

/// [`run_image`] with an observer that sees the VM while it runs and may end it.
pub fn run_image_observed(
    config: &VmConfig,
    image: &[u8],
    options: RunOptions,
    observe: Observer<'_>,
) -> Result<VmRun, VmError> {
    let built = build(config, image, options.echo_console)?;
    let begin = Instant::now();
    let vcpus = start_vcpus(config, &built, flat_image_boot(options.engine), vcpu::spawn)?;
    let observer_stopped = monitor::watch(
        &built.machine,
        &built.memory,
        begin,
        options.timeout,
        false,
        observe,
        |_| {},
    );
    finish(&built, vcpus, begin, None, observer_stopped)
}

/// Runs the built-in guest with the configuration's processes. The run ends when
/// every process with work to do has done it (processes with `work = 0` are then
/// stopped), when `config.duration` passes, or at `options.timeout`.
pub fn run_workloads(config: &VmConfig, options: RunOptions) -> Result<VmRun, VmError> {
    run_workloads_observed(config, options, &mut |_| ControlFlow::Continue(()))
}

/// [`run_workloads`] with an observer that sees the VM while it runs and may end it.
pub fn run_workloads_observed(
    config: &VmConfig,
    options: RunOptions,
    observe: Observer<'_>,
) -> Result<VmRun, VmError> {
    config.validate()?;
    let built = build(config, GUEST_IMAGE, options.echo_console)?;
    write_boot_block(config, &built)?;
    let begin = Instant::now();
    let vcpus = start_vcpus(config, &built, flat_image_boot(options.engine), vcpu::spawn)?;
    let mut progress = WorkloadProgress::new(config);
    let watched = drive_workloads(config, &built, begin, options, observe, &mut progress, None);
    let run = finish(
        &built,
        vcpus,
        begin,
        progress.work_done_at,
        watched.observer_stopped,
    )?;
    Ok(with_outcomes(config, &built, run, &progress))
}

/// Writes the built-in guest's boot block (its processes) into guest memory.
pub(crate) fn write_boot_block(config: &VmConfig, built: &Built) -> Result<(), VmError> {
    built
        .memory
        .write_bytes(Gpa(BOOT_BLOCK_GPA), &boot_block(config).to_bytes())
        .map_err(|e| VmError::Load(e.to_string()))
}

/// The host's view of a workload run's processes, on the run's own timeline
/// (a restored VM's from its restore: processes that ended before the
/// snapshot ended at zero).
#[derive(Debug, Clone)]
pub(crate) struct WorkloadProgress {
    /// When each process was first seen ended.
    pub(crate) ended_at: Vec<Option<Duration>>,
    /// When every process with work to do had done it.
    pub(crate) work_done_at: Option<Duration>,
    /// Time the VM ran before this run's timeline began (before its snapshot).
    pub(crate) before: Duration,
    stop_sent: bool,
}

impl WorkloadProgress {
    pub(crate) fn new(config: &VmConfig) -> WorkloadProgress {
        WorkloadProgress {
            ended_at: vec![None; config.processes.len()],
            work_done_at: None,
            before: Duration::ZERO,
            stop_sent: false,
        }
    }
}

/// How [`drive_workloads`] ended.
pub(crate) struct Watched {
    /// The observer ended the run.
    pub(crate) observer_stopped: bool,
    /// The snapshot time came (the machine is still running).
    pub(crate) snapshot_due: bool,
}

/// Watches a built-in guest's workloads until every process with work to do
/// has done it (then tells the others to stop), `config.duration` passes
/// (counting the time before a snapshot), `options.timeout`, or `snapshot_at`
/// (on the whole run's timeline).
pub(crate) fn drive_workloads(
    config: &VmConfig,
    built: &Built,
    begin: Instant,
    options: RunOptions,
    observe: Observer<'_>,
    progress: &mut WorkloadProgress,
    snapshot_at: Option<SnapshotPoint>,
) -> Watched {
    let finite: Vec<usize> = (0..config.processes.len())
        .filter(|&i| config.processes[i].work > 0)
        .collect();
    let mut snapshot_due = false;
    let mut snapshot_observer = |live: &Live<'_>| {
        let due = match snapshot_at {
            None => false,
            Some(SnapshotPoint::After(at)) => progress.before + live.elapsed >= at,
            Some(SnapshotPoint::WorkDone(percent)) => live.boot_block().is_some_and(|now| {
                finite.iter().any(|&i| {
                    share_done(percent, now.results[i].progress, config.processes[i].work)
                })
            }),
        };
        if due {
            snapshot_due = true;
            return ControlFlow::Break(());
        }
        observe(live)
    };
    let observer_stopped = monitor::watch(
        &built.machine,
        &built.memory,
        begin,
        options.timeout,
        true,
        &mut snapshot_observer,
        |live| {
            let Some(now) = live.boot_block() else {
                return;
            };
            let ended =
                |i: &usize| matches!(now.results[*i].state, proc_state::DONE | proc_state::KILLED);
            for (i, at) in progress.ended_at.iter_mut().enumerate() {
                if at.is_none() && ended(&i) {
                    *at = Some(live.elapsed);
                }
            }
            if progress.stop_sent {
                return;
            }
            let all_done = !finite.is_empty() && finite.iter().all(ended);
            if all_done && progress.work_done_at.is_none() {
                progress.work_done_at = Some(live.elapsed);
            }
            let out_of_time = config
                .duration
                .is_some_and(|d| progress.before + live.elapsed >= d.0);
            if all_done || out_of_time {
                let _ = built
                    .memory
                    .write_bytes(Gpa(BOOT_BLOCK_GPA + BOOT_OFF_STOP), &1u32.to_le_bytes());
                progress.stop_sent = true;
            }
        },
    );
    Watched {
        observer_stopped: observer_stopped && !snapshot_due,
        snapshot_due,
    }
}

/// The run with its processes' outcomes, read once every vCPU has stopped (so
/// no process changes the boot block meanwhile).
pub(crate) fn with_outcomes(
    config: &VmConfig,
    built: &Built,
    mut run: VmRun,
    progress: &WorkloadProgress,
) -> VmRun {
    let block = read_boot_block(&built.memory);
    // After `finish` took the wall time: checking the checksums replays every
    // process's work in Rust, which takes a while after a long run.
    run.processes = block
        .map(|b| outcomes(config, &b, &progress.ended_at))
        .unwrap_or_default();
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreKind;
    use crate::config::{ByteSize, StoreConfig};
    use crate::error::ErrorClass;
    use std::sync::Weak;
    use std::sync::mpsc;

    /// Long enough for a loaded machine to assemble and take apart a small VM.
    const DEADLINE: Duration = Duration::from_secs(60);

    fn four_vcpus() -> VmConfig {
        VmConfig {
            vcpus: 4,
            ram: ByteSize(64 << 20),
            budget: ByteSize(16 << 20),
            store: StoreConfig {
                kind: StoreKind::Mem,
                ..StoreConfig::default()
            },
            ..VmConfig::default()
        }
    }

    /// Assembles [`four_vcpus`] with `spawn` on another thread, which must come
    /// back within [`DEADLINE`] with an error; returns the error, how many
    /// references to guest memory were left besides the VM's own, and a weak
    /// reference to it taken before the VM was dropped.
    fn assemble_failing(
        spawn: impl SpawnVcpu + Send + 'static,
    ) -> (VmError, usize, Weak<GuestMemory>) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let config = four_vcpus();
            let built = build(&config, GUEST_IMAGE, false).expect("the VM builds");
            let memory = Arc::downgrade(&built.memory);
            let result =
                start_vcpus(&config, &built, flat_image_boot(Engine::default()), spawn).map(|_| ());
            let others = Arc::strong_count(&built.memory) - 1;
            drop(built);
            let _ = tx.send((result.err(), others, memory));
        });
        let (error, others, memory) = rx
            .recv_timeout(DEADLINE)
            .expect("assembly that fails returns within the deadline");
        (error.expect("assembly fails"), others, memory)
    }

    fn assert_released(others: usize, memory: &Weak<GuestMemory>) {
        assert_eq!(
            others, 0,
            "{others} references to guest memory remain after assembly failed (vCPU threads still waiting to start)"
        );
        assert!(
            memory.upgrade().is_none(),
            "guest memory (and its reclaim threads) outlived the failed VM"
        );
    }

    #[test]
    fn a_vcpu_that_cannot_start_releases_the_vcpus_started_before_it() {
        let (error, others, memory) = assemble_failing(|spec, machine, start, memory| {
            if spec.index == 2 {
                Err(std::io::Error::other("injected: no thread for vCPU 2"))
            } else {
                vcpu::spawn(spec, machine, start, memory)
            }
        });
        assert!(
            matches!(&error, VmError::Thread(e) if e.to_string().contains("vCPU 2")),
            "{error}"
        );
        assert_released(others, &memory);
    }

    #[test]
    fn a_vcpu_the_gic_refuses_releases_every_vcpu() {
        // vCPU 1's interrupt line is taken before the VM connects it: connecting
        // it fails after every thread is started.
        let (error, others, memory) = assemble_failing(|spec, machine, start, memory| {
            let index = spec.index;
            let thread = vcpu::spawn(spec, Arc::clone(&machine), start, memory)?;
            if index == 1 {
                let kick: Arc<dyn apf_host::gic::Kick> = thread.waker.clone();
                machine.gic.connect(1, kick).expect("vCPU 1 is free");
            }
            Ok(thread)
        });
        assert!(matches!(error, VmError::Gic(_)), "{error}");
        assert_released(others, &memory);
    }

    #[test]
    fn an_empty_image_is_refused_as_input() {
        let e = run_image(&four_vcpus(), &[], RunOptions::default()).unwrap_err();
        assert!(matches!(e, VmError::EmptyImage), "{e}");
        assert_eq!(e.class(), ErrorClass::Input);
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn errors_say_whose_fault_they_are() {
        let bad = VmConfig {
            vcpus: 0,
            ..four_vcpus()
        };
        let e = run_image(&bad, GUEST_IMAGE, RunOptions::default()).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Input, "{e}");
        let big = vec![0u8; 64 << 20];
        let e = run_image(&four_vcpus(), &big, RunOptions::default()).unwrap_err();
        assert!(matches!(e, VmError::ImageTooBig { .. }), "{e}");
        assert_eq!(e.class(), ErrorClass::Input);
        let e = VmError::Thread(std::io::Error::other("no thread"));
        assert_eq!(e.class(), ErrorClass::Host);
        assert_eq!(VmError::VcpuPanicked(1).class(), ErrorClass::Run);
    }
}
