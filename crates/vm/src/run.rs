//! Building and running a VM: guest memory over a store, the platform, one thread
//! per vCPU, the image and the boot block; then the results.

use crate::config::{StoreKind, VmConfig, WorkloadKind};
use crate::ram::MemRam;
use crate::workload;
use apf_abi::boot::{
    BOOT_BLOCK_BYTES, BOOT_BLOCK_GPA, BOOT_OFF_STOP, BootBlock, ProcSpec, proc_state,
};
use apf_abi::platform::{IMAGE_LOAD_ADDR, RAM_BASE, UART_INTID};
use apf_abi::ppi::APF_DEFAULT_PPI;
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_cpu::CpuConfig;
use apf_host::apf::ApfCountersSnapshot;
use apf_host::gic::{Gic, SpiLine};
use apf_host::machine::{Machine, StartRequest, StopReason};
use apf_host::regs::mpidr_el1_of;
use apf_host::uart::Pl011;
use apf_host::vcpu::{self, VcpuReport, VcpuSpec};
use apf_mem::store::{
    Backend, FaultConfig, FaultyStore, FileStore, FileStoreConfig, Latency, LatencyStore, MemStore,
    Store, StoreInfo,
};
use apf_mem::{GuestMemory, MemConfig, MemMetrics};
use std::io::Write;
use std::ops::ControlFlow;
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The guest image built from `guest/` (see `guest/README.md`).
pub const GUEST_IMAGE: &[u8] = include_bytes!("../../../guest/apf-guest.bin");

/// Instructions per interpreter slice.
const SLICE: u64 = 20_000;
/// How long a halting vCPU polls before it sleeps (cross-CPU wake-ups cost
/// 22–28 µs on the machines this runs on).
const HALT_POLL: Duration = Duration::from_micros(30);
/// How often the host looks at the boot block's results while the guest runs.
const MONITOR_PERIOD: Duration = Duration::from_millis(2);

/// Why a VM could not be built or run.
#[derive(Debug, Error)]
pub enum VmError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The swap file could not be opened.
    #[error("store: {0}")]
    Store(#[from] apf_mem::store::StoreOpenError),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(#[from] apf_mem::MemError),
    /// The image has no bytes: nothing would run.
    #[error("the image is empty: give a flat AArch64 binary (loaded at {IMAGE_LOAD_ADDR:#x})")]
    EmptyImage,
    /// The image does not fit in guest RAM.
    #[error("the image is {len} bytes but RAM above {IMAGE_LOAD_ADDR:#x} holds {room}")]
    ImageTooBig {
        /// Image size.
        len: u64,
        /// Room.
        room: u64,
    },
    /// Writing the image or boot block into guest memory failed.
    #[error("loading the guest: {0}")]
    Load(String),
    /// A thread could not be started.
    #[error("starting a vCPU thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The GIC model refused the configuration.
    #[error("interrupt controller: {0}")]
    Gic(String),
    /// A vCPU thread panicked.
    #[error("vCPU {0} panicked")]
    VcpuPanicked(usize),
}

/// Whose fault a [`VmError`] is: what the caller should change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The configuration or the image is wrong (or names a store path that
    /// cannot be used): change the input.
    Input,
    /// The host could not build the VM: a mapping, a thread, io_uring, loading
    /// guest memory, the interrupt controller.
    Host,
    /// The VM was built and ran, and the run failed (a vCPU panicked).
    Run,
}

impl VmError {
    /// Whose fault this error is.
    pub fn class(&self) -> ErrorClass {
        use apf_mem::MemError;
        use apf_mem::store::StoreOpenError;
        match self {
            VmError::Config(_) | VmError::EmptyImage | VmError::ImageTooBig { .. } => {
                ErrorClass::Input
            }
            // A swap file that cannot be made or hold a page is a store path
            // to change; io_uring and the I/O threads are the host's.
            VmError::Store(StoreOpenError::Create { .. } | StoreOpenError::Probe { .. }) => {
                ErrorClass::Input
            }
            VmError::Store(StoreOpenError::QueueDepth(_)) => ErrorClass::Input,
            VmError::Store(StoreOpenError::IoUring { .. } | StoreOpenError::Threads(..)) => {
                ErrorClass::Host
            }
            VmError::Memory(
                MemError::RamSize(_) | MemError::RamBase { .. } | MemError::Budget(_),
            ) => ErrorClass::Input,
            VmError::Memory(MemError::Map { .. } | MemError::Spawn(..))
            | VmError::Load(_)
            | VmError::Thread(_)
            | VmError::Gic(_) => ErrorClass::Host,
            VmError::VcpuPanicked(_) => ErrorClass::Run,
        }
    }
}

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
}

/// One process's outcome, checked against the Rust reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutcome {
    /// Index in the configuration.
    pub index: usize,
    /// Workload.
    pub kind: WorkloadKind,
    /// The vCPU it ran on.
    pub vcpu: u32,
    /// Final state ([`proc_state`]).
    pub state: u32,
    /// Units of work done.
    pub progress: u64,
    /// Its checksum.
    pub checksum: u64,
    /// Whether the checksum equals the reference's for that progress.
    pub checksum_ok: bool,
    /// The syndrome that killed it, if it was killed.
    pub kill_esr: u32,
    /// When the host first saw it ended (done or killed), from the run's start;
    /// `None` if it was still running when the run ended.
    pub ended_at: Option<Duration>,
}

impl ProcessOutcome {
    /// Whether the guest killed it.
    pub fn killed(&self) -> bool {
        self.state == proc_state::KILLED
    }

    /// Why the guest killed it, from the syndrome the guest recorded: e.g.
    /// "external abort on a data read (ESR 0x92000010)"; `None` if it was not
    /// killed.
    pub fn kill_reason(&self) -> Option<String> {
        self.killed().then(|| kill_reason(self.kill_esr))
    }
}

/// The exception `esr` (a process's `kill_esr`) in words, with its value.
fn kill_reason(esr: u32) -> String {
    use apf_abi::esr::{Esr, ISS_FSC_MASK, ec, fsc};
    let e = Esr(u64::from(esr));
    let status = u32::try_from(e.iss() & ISS_FSC_MASK).unwrap_or(u32::MAX);
    let what = match e.ec() {
        ec::DABT_LOWER | ec::DABT_CURRENT => {
            let access = if e.is_write_abort() { "write" } else { "read" };
            if status == fsc::SYNC_EXTERNAL {
                format!("external abort on a data {access}")
            } else {
                format!("data abort on a {access}, fault status {status:#04x}")
            }
        }
        ec::IABT_LOWER | ec::IABT_CURRENT if status == fsc::SYNC_EXTERNAL => {
            "external abort on an instruction fetch".into()
        }
        ec::IABT_LOWER | ec::IABT_CURRENT => {
            format!("instruction abort, fault status {status:#04x}")
        }
        ec::UNKNOWN => "undefined instruction".into(),
        ec::PC_ALIGNMENT => "misaligned PC".into(),
        ec::SP_ALIGNMENT => "misaligned stack pointer".into(),
        ec::BRK64 => "breakpoint (BRK)".into(),
        ec::ILLEGAL_STATE => "illegal execution state".into(),
        ec::SYSREG => "trapped system register access".into(),
        ec::FP_ASIMD => "trapped SIMD/FP access".into(),
        class => format!("exception class {class:#04x}"),
    };
    format!("{what} (ESR {esr:#010x})")
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
    pub vcpus: Vec<VcpuReport>,
    /// Memory system metrics at the end.
    pub mem: MemMetrics,
    /// The memory system's invariant check at the end.
    pub mem_invariants: Result<(), apf_mem::InvariantError>,
    /// The store.
    pub store: StoreInfo,
    /// Per-process outcomes (workload runs).
    pub processes: Vec<ProcessOutcome>,
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
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
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

/// A running VM as a watchdog or a monitor sees it: handed to the observer of
/// [`run_image_observed`] and [`run_workloads_observed`] every few milliseconds.
#[derive(Debug)]
pub struct Live<'a> {
    /// Time since the vCPUs started.
    pub elapsed: Duration,
    machine: &'a Machine,
    memory: &'a GuestMemory,
    block: Option<BootBlock>,
}

impl Live<'_> {
    /// Instructions each vCPU has retired so far (its progress).
    pub fn retired(&self) -> Vec<u64> {
        (0..self.machine.vcpus())
            .map(|i| self.machine.live(i).map_or(0, |l| l.retired()))
            .collect()
    }

    /// Whether each vCPU is powered on (a vCPU that is off makes no progress).
    pub fn powered_on(&self) -> Vec<bool> {
        (0..self.machine.vcpus())
            .map(|i| vcpu::is_on(self.machine, i))
            .collect()
    }

    /// Each vCPU's APF counters and gauges now.
    pub fn apf(&self) -> Vec<ApfCountersSnapshot> {
        (0..self.machine.vcpus())
            .map(|i| {
                self.machine
                    .live(i)
                    .and_then(|l| l.apf())
                    .map(|c| c.snapshot())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Guest memory's figures now (queue lengths: `in_flight`, `backlog`).
    pub fn mem(&self) -> MemMetrics {
        self.memory.metrics()
    }

    /// Reads guest memory as the host would (a page in the store is fetched).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), apf_mem::HostAccessError> {
        self.memory.read_bytes(gpa, buf)
    }

    /// The boot block as the built-in guest keeps it, read this period: each
    /// process's state and progress (`None` in an image run).
    pub fn boot_block(&self) -> Option<&BootBlock> {
        self.block.as_ref()
    }
}

/// Called with the running VM every few milliseconds; `Break` ends the run
/// ([`RunEnd::Stopped`]).
pub type Observer<'o> = &'o mut dyn FnMut(&Live<'_>) -> ControlFlow<()>;

/// Options of a run that are not part of the VM's configuration.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// End the run after this long, whatever the guest does.
    pub timeout: Duration,
    /// Echo the console to standard output.
    pub echo_console: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(120),
            echo_console: false,
        }
    }
}

/// The backing store `config` describes: the file or memory store, with the added
/// latency and injected faults it asks for.
pub fn open_store(config: &VmConfig) -> Result<Box<dyn Store>, VmError> {
    let s = &config.store;
    let pages = u32::try_from(config.ram.0 / apf_abi::PAGE_SIZE).unwrap_or(u32::MAX);
    let depth = usize::try_from(s.queue_depth).unwrap_or(1);
    let base: Box<dyn Store> = match s.kind {
        StoreKind::File => Box::new(FileStore::open(&FileStoreConfig {
            path: s.path.clone(),
            queue_depth: depth,
            direct: s.direct,
            backend: Backend::Auto,
            capacity: pages,
        })?),
        StoreKind::Mem => Box::new(MemStore::new(pages, depth)),
    };
    let delayed: Box<dyn Store> = if s.latency.0.is_zero() {
        base
    } else if s.latency_sigma == 0.0 {
        Box::new(LatencyStore::new(base, Latency::Fixed(s.latency.0)))
    } else {
        Box::new(LatencyStore::new(
            base,
            Latency::LogNormal {
                median: s.latency.0,
                sigma: s.latency_sigma,
                seed: config.seed,
            },
        ))
    };
    let faults = FaultConfig {
        read_error: s.read_error_rate,
        lost: s.lost_completion_rate,
        duplicate: s.duplicate_completion_rate,
        ..FaultConfig::default()
    };
    Ok(if faults == FaultConfig::default() {
        delayed
    } else {
        Box::new(FaultyStore::new(
            delayed,
            FaultConfig {
                seed: config.seed,
                ..faults
            },
        ))
    })
}

/// A seed per process, derived from the run's (splitmix64).
fn process_seed(run_seed: u64, index: usize) -> u64 {
    let mut z = run_seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The boot block that tells the built-in guest what to run.
pub fn boot_block(config: &VmConfig) -> BootBlock {
    let mut block = BootBlock {
        nr_vcpus: config.vcpus,
        nr_procs: u32::try_from(config.processes.len()).unwrap_or(0),
        ram_base: RAM_BASE,
        ram_size: config.ram.0,
        seed: config.seed,
        ..BootBlock::default()
    };
    for (i, p) in config.processes.iter().enumerate() {
        block.procs[i] = ProcSpec {
            kind: p.kind.abi(),
            vcpu: p.vcpu,
            mem_bytes: if p.kind == WorkloadKind::Calc {
                0
            } else {
                p.mem.0
            },
            work: p.work,
            seed: process_seed(config.seed, i),
        };
    }
    block
}

struct Built {
    memory: Arc<GuestMemory>,
    machine: Arc<Machine>,
    console: Arc<Mutex<Vec<u8>>>,
}

fn build(config: &VmConfig, image: &[u8], echo: bool) -> Result<Built, VmError> {
    config.validate_machine()?;
    if image.is_empty() {
        return Err(VmError::EmptyImage);
    }
    let store = open_store(config)?;
    let memory = GuestMemory::new(
        MemConfig {
            io_timeout: config.store.io_timeout.0,
            ..MemConfig::new(RAM_BASE, config.ram.0, config.budget.0)
        },
        store,
    )?;
    let room = (RAM_BASE + config.ram.0).saturating_sub(IMAGE_LOAD_ADDR);
    if image.len() as u64 > room {
        return Err(VmError::ImageTooBig {
            len: image.len() as u64,
            room,
        });
    }
    memory
        .write_bytes(IMAGE_LOAD_ADDR, image)
        .map_err(|e| VmError::Load(e.to_string()))?;
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
    let machine = Arc::new(Machine::new(gic, uart, RAM_BASE..RAM_BASE + config.ram.0));
    Ok(Built {
        memory,
        machine,
        console,
    })
}

/// Spawns one vCPU thread: [`vcpu::spawn`], or in tests one that fails on purpose.
trait SpawnVcpu:
    FnMut(
    VcpuSpec,
    Arc<Machine>,
    Arc<Barrier>,
    vcpu::RamFactory<MemRam>,
) -> std::io::Result<vcpu::VcpuThread>
{
}

impl<F> SpawnVcpu for F where
    F: FnMut(
        VcpuSpec,
        Arc<Machine>,
        Arc<Barrier>,
        vcpu::RamFactory<MemRam>,
    ) -> std::io::Result<vcpu::VcpuThread>
{
}

/// A VM's vCPU threads, which hold its guest memory. Each thread waits at its
/// own start barrier until [`Vcpus::start`]; the VM's memory outlives none of
/// them: dropped without [`Vcpus::join`] (a step of the assembly failed, or the
/// run unwound), the guard stops the machine, lets every thread still waiting
/// through (it sees the stop and returns before running any guest code) and
/// joins them all.
struct Vcpus {
    machine: Arc<Machine>,
    /// Spawned, waiting to start (index order).
    waiting: Vec<(Arc<Barrier>, vcpu::VcpuThread)>,
    /// Started (index order).
    running: Vec<std::thread::JoinHandle<VcpuReport>>,
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
    fn join(mut self) -> Result<Vec<VcpuReport>, VmError> {
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
fn start_vcpus(
    config: &VmConfig,
    built: &Built,
    mut spawn: impl SpawnVcpu,
) -> Result<Vcpus, VmError> {
    let n = usize::try_from(config.vcpus).unwrap_or(1);
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
                ..CpuConfig::default()
            },
            apf_offered: config.apf,
            apf_sdei_event: SDEI_EVENT_ASYNC_PF,
            apf_ppi: APF_DEFAULT_PPI,
            apf_separate_ready: config.separate_ready,
            boot: (index == 0).then_some(StartRequest {
                entry: IMAGE_LOAD_ADDR,
                context: 0,
            }),
            slice: SLICE,
            halt_poll: HALT_POLL,
        };
        let memory = Arc::clone(&built.memory);
        let make_ram: vcpu::RamFactory<MemRam> =
            Box::new(move |waker, port| MemRam::new(memory.vcpu_tlb(), port, waker));
        let start = Arc::new(Barrier::new(2));
        let thread = spawn(
            spec,
            Arc::clone(&built.machine),
            Arc::clone(&start),
            make_ram,
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

fn finish(
    built: Built,
    vcpus: Vcpus,
    begin: Instant,
    work_done_at: Option<Duration>,
    observer_stopped: bool,
) -> Result<VmRun, VmError> {
    let vcpus = vcpus.join()?;
    let wall = begin.elapsed();
    built.machine.uart.flush();
    let end = match built.machine.stop_reason() {
        Some(StopReason::SystemOff) => RunEnd::SystemOff,
        Some(StopReason::SystemReset) => RunEnd::SystemReset,
        Some(StopReason::Host) | None if observer_stopped => RunEnd::Stopped,
        Some(StopReason::Host) | None => RunEnd::Timeout,
    };
    let uart =
        String::from_utf8_lossy(&built.console.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned();
    Ok(VmRun {
        end,
        wall,
        work_done_at,
        uart,
        vcpus,
        mem: built.memory.metrics(),
        mem_invariants: built.memory.check_invariants(),
        store: built.memory.store_info(),
        processes: Vec::new(),
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
    let vcpus = start_vcpus(config, &built, vcpu::spawn)?;
    let observer_stopped = built.monitor(begin, options.timeout, false, observe, |_| {});
    built.machine.stop(StopReason::Host);
    finish(built, vcpus, begin, None, observer_stopped)
}

impl Built {
    /// Looks at the running VM every [`MONITOR_PERIOD`] until it stops or
    /// `timeout` passes: shows it to `observe`, then to `tick` (with the boot
    /// block, read once a period, if `workload`). Returns whether the observer
    /// ended the run.
    fn monitor(
        &self,
        begin: Instant,
        timeout: Duration,
        workload: bool,
        observe: Observer<'_>,
        mut tick: impl FnMut(&Live<'_>),
    ) -> bool {
        while !self.machine.stopping() && begin.elapsed() < timeout {
            std::thread::park_timeout(MONITOR_PERIOD);
            let live = Live {
                elapsed: begin.elapsed(),
                machine: &self.machine,
                memory: &self.memory,
                block: if workload {
                    read_boot_block(&self.memory)
                } else {
                    None
                },
            };
            if observe(&live).is_break() {
                return true;
            }
            tick(&live);
        }
        false
    }
}

fn read_boot_block(memory: &GuestMemory) -> Option<BootBlock> {
    let mut bytes = [0u8; BOOT_BLOCK_BYTES];
    memory.read_bytes(BOOT_BLOCK_GPA, &mut bytes).ok()?;
    BootBlock::from_bytes(&bytes)
}

fn outcomes(
    config: &VmConfig,
    block: &BootBlock,
    ended_at: &[Option<Duration>],
) -> Vec<ProcessOutcome> {
    config
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let r = block.results[i];
            ProcessOutcome {
                index: i,
                kind: p.kind,
                vcpu: p.vcpu,
                state: r.state,
                progress: r.progress,
                checksum: r.checksum,
                checksum_ok: workload::verify(&block.procs[i], &r).is_ok(),
                kill_esr: r.kill_esr,
                ended_at: ended_at.get(i).copied().flatten(),
            }
        })
        .collect()
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
    let block = boot_block(config);
    built
        .memory
        .write_bytes(BOOT_BLOCK_GPA, &block.to_bytes())
        .map_err(|e| VmError::Load(e.to_string()))?;
    let begin = Instant::now();
    let vcpus = start_vcpus(config, &built, vcpu::spawn)?;
    let finite: Vec<usize> = (0..config.processes.len())
        .filter(|&i| config.processes[i].work > 0)
        .collect();
    let mut work_done_at = None;
    let mut ended_at = vec![None; config.processes.len()];
    let mut stop_sent = false;
    let observer_stopped = built.monitor(begin, options.timeout, true, observe, |live| {
        let Some(now) = live.boot_block() else {
            return;
        };
        let ended =
            |i: &usize| matches!(now.results[*i].state, proc_state::DONE | proc_state::KILLED);
        for (i, at) in ended_at.iter_mut().enumerate() {
            if at.is_none() && ended(&i) {
                *at = Some(live.elapsed);
            }
        }
        if stop_sent {
            return;
        }
        let all_done = !finite.is_empty() && finite.iter().all(ended);
        if all_done && work_done_at.is_none() {
            work_done_at = Some(live.elapsed);
        }
        let out_of_time = config.duration.is_some_and(|d| live.elapsed >= d.0);
        if all_done || out_of_time {
            let _ = built
                .memory
                .write_bytes(BOOT_BLOCK_GPA + BOOT_OFF_STOP, &1u32.to_le_bytes());
            stop_sent = true;
        }
    });
    built.machine.stop(StopReason::Host);
    let block = read_boot_block(&built.memory);
    let mut run = finish(built, vcpus, begin, work_done_at, observer_stopped)?;
    // After `finish` took the wall time: checking the checksums replays every
    // process's work in Rust, which takes a while after a long run.
    run.processes = block
        .map(|b| outcomes(config, &b, &ended_at))
        .unwrap_or_default();
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, StoreConfig};
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
            let result = start_vcpus(&config, &built, spawn).map(|_| ());
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
        let (error, others, memory) = assemble_failing(|spec, machine, start, make_ram| {
            if spec.index == 2 {
                Err(std::io::Error::other("injected: no thread for vCPU 2"))
            } else {
                vcpu::spawn(spec, machine, start, make_ram)
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
        let (error, others, memory) = assemble_failing(|spec, machine, start, make_ram| {
            let index = spec.index;
            let thread = vcpu::spawn(spec, Arc::clone(&machine), start, make_ram)?;
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

    #[test]
    fn a_kill_is_explained_from_its_syndrome() {
        use apf_abi::esr::{DataAbort, InstructionAbort, ec, fsc};
        let data = |write, dfsc| {
            DataAbort {
                syndrome: None,
                write,
                s1ptw: false,
                cache_maintenance: false,
                external: false,
                far_not_valid: false,
                dfsc,
            }
            .encode(ec::DABT_LOWER)
            .0
        };
        let lost_read = u32::try_from(data(false, fsc::SYNC_EXTERNAL)).unwrap();
        assert_eq!(
            kill_reason(lost_read),
            format!("external abort on a data read (ESR {lost_read:#010x})")
        );
        let lost_write = u32::try_from(data(true, fsc::SYNC_EXTERNAL)).unwrap();
        assert!(kill_reason(lost_write).starts_with("external abort on a data write"));
        let fetch = InstructionAbort {
            s1ptw: false,
            external: false,
            far_not_valid: false,
            ifsc: fsc::SYNC_EXTERNAL,
        }
        .encode(ec::IABT_LOWER)
        .0;
        assert!(
            kill_reason(u32::try_from(fetch).unwrap())
                .starts_with("external abort on an instruction fetch")
        );
        let perm = u32::try_from(data(true, fsc::PERMISSION_L3)).unwrap();
        assert!(kill_reason(perm).starts_with("data abort on a write, fault status 0x0f"));
        assert_eq!(
            kill_reason(0x0200_0000),
            "undefined instruction (ESR 0x02000000)"
        );

        let mut p = ProcessOutcome {
            index: 0,
            kind: WorkloadKind::Scan,
            vcpu: 0,
            state: proc_state::DONE,
            progress: 10,
            checksum: 0,
            checksum_ok: true,
            kill_esr: 0,
            ended_at: None,
        };
        assert_eq!(p.kill_reason(), None);
        p.state = proc_state::KILLED;
        p.kill_esr = lost_read;
        assert!(p.killed());
        assert_eq!(p.kill_reason(), Some(kill_reason(lost_read)));
    }
}
