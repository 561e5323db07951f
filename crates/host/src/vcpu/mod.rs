//! The vCPU run loop: one host thread per vCPU runs the interpreter in slices and
//! handles each exit as KVM's run loop would (DESIGN §2, §5).
//!
//! ```text
//! loop:  ack TLB shootdowns ─ APF service (completions, page-ready) ─ SDEI delivery
//!        ─ timer → GIC PPIs ─ IRQ line → CPU ─ Cpu::run(slice)
//!   HVC/SMC  → SMCCC dispatch (PSCI, SDEI, vendor-hyp, ASYNC_PF)
//!   WFI      → halt (poll briefly, then sleep) until an interrupt, an SDEI event,
//!              an APF completion or the timer deadline
//!   stage-2  → resolve; if the page needs I/O: APF decision
//!              async → start the fetch, resume the guest (not-present queued)
//!              halt  → wait for that page or an interrupt (repeated fault)
//!              sync  → read it on this thread; a lost page → external abort
//! ```

mod bus;
mod context;
mod fetch_sink;
mod stats;

pub use context::{FlatRam, HostAccess, VcpuContext};
pub use stats::{ExitCounts, FaultCounts, VcpuStats};

use crate::apf::{ApfCountersSnapshot, ApfEngine, ApfEngineState, FaultDecision, ItemHandle};
use crate::gic::{GicCpuInterface, IccState};
use crate::machine::{Machine, StartRequest, StopReason};
use crate::maintenance::Pending;
use crate::psci::{PowerState, PsciAction, enter_cpu};
use crate::sdei::{SdeiStateError, SdeiVcpu, SdeiVcpuState};
use crate::smccc::{Firmware, SmcccExit, deliver_sdei, dispatch};
use crate::waker::{VcpuWaker, WakeReason};
use apf_abi::esr::{DataAbort, Esr, InstructionAbort, ec, fsc, ipa_from_hpfar};
use apf_abi::ppi::{PPI_TIMER_PHYS, PPI_TIMER_VIRT};
use apf_abi::{Gfn, Gpa};
use apf_cpu::{Cpu, CpuConfig, CpuState, CpuStateError, Exception, Exit, SysReg, TimerLines};
use apf_mem::{FetchSink, FetchStart, GuestMemory, Resolve, VcpuTlb};
use bus::VcpuBus;
use fetch_sink::ApfFetchSink;
use serde::{Deserialize, Serialize};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How one vCPU is set up.
#[derive(Debug, Clone)]
pub struct VcpuSpec {
    /// Index (also the MPIDR affinity and the token's vCPU id).
    pub index: usize,
    /// The interpreter's configuration.
    pub cpu: CpuConfig,
    /// Whether the VMM offers APF.
    pub apf_offered: bool,
    /// The VMM's SDEI event and PPI for APF (used when offered).
    pub apf_sdei_event: u32,
    /// The page-ready PPI.
    pub apf_ppi: u32,
    /// Offer ABI 1.1 (the separate page-ready channel); else 1.0.
    pub apf_separate_ready: bool,
    /// Where the vCPU starts, if it is powered on at boot.
    pub boot: Option<StartRequest>,
    /// A saved state to resume from instead of `boot`: the thread restores it
    /// before its first slice. Restore the machine ([`Machine::restore_state`])
    /// before spawning.
    pub resume: Option<Box<VcpuState>>,
    /// Instructions per slice: bounds the latency of shootdowns and kicks.
    pub slice: u64,
    /// How long a halting vCPU polls before it sleeps.
    pub halt_poll: Duration,
}

/// What a vCPU thread returns: where its time went and what it counted.
#[derive(Debug, Clone)]
pub struct VcpuTotals {
    /// Index.
    pub index: usize,
    /// Time split and counters.
    pub stats: VcpuStats,
    /// APF counters.
    pub apf: ApfCountersSnapshot,
    /// The virtual counter at the end.
    pub counter: u64,
    /// The vCPU's state when its thread left the run loop (the machine was
    /// stopping): taken between slices, so never mid-instruction. A vCPU that
    /// was waiting for a page has its PC at the faulting instruction and
    /// retries it on resume.
    pub state: Box<VcpuState>,
    /// What its APF engine held when the thread left (work items,
    /// notifications, channel words: [`ApfEngine::describe`]) and the
    /// page-ready PPI's state in the GIC. A run that did not end says from
    /// this what its guest was waiting for.
    pub apf_detail: String,
}

/// One vCPU's state as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// Registers, system registers, timers.
    pub cpu: CpuState,
    /// The GIC CPU interface.
    pub icc: IccState,
    /// SDEI registrations, mask and a handler in progress.
    pub sdei: SdeiVcpuState,
    /// The APF configuration (nothing in flight).
    pub apf: ApfEngineState,
}

/// Why a [`VcpuState`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VcpuStateError {
    /// The CPU state.
    #[error("vCPU {vcpu}: {error}")]
    Cpu {
        /// The vCPU.
        vcpu: usize,
        /// What is wrong.
        error: CpuStateError,
    },
    /// The SDEI state.
    #[error("vCPU {vcpu}: {error}")]
    Sdei {
        /// The vCPU.
        vcpu: usize,
        /// What is wrong.
        error: SdeiStateError,
    },
}

/// A spawned vCPU thread, waiting at the start barrier.
#[derive(Debug)]
pub struct VcpuThread {
    /// Its waker (for the GIC and the machine).
    pub waker: Arc<VcpuWaker>,
    /// Its result.
    pub handle: JoinHandle<VcpuTotals>,
}

/// Spawns vCPU `spec.index` over guest `memory`. The thread builds its state (its
/// TLB, and the sink its fetches complete into), hands back its waker, and waits
/// at `start` until every vCPU's waker is registered with the machine.
pub fn spawn(
    spec: VcpuSpec,
    machine: Arc<Machine>,
    start: Arc<Barrier>,
    memory: Arc<GuestMemory>,
) -> std::io::Result<VcpuThread> {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{}", spec.index))
        .spawn(move || {
            let waker = Arc::new(VcpuWaker::for_current_thread());
            let mut apf = ApfEngine::new(
                u32::try_from(spec.index).unwrap_or(u32::MAX),
                spec.apf_offered,
            );
            if !spec.apf_separate_ready {
                apf.limit_to_v1_0();
            }
            if let Some(live) = machine.live(spec.index) {
                live.set_apf(Arc::clone(apf.counters()));
            }
            let ram = memory.vcpu_tlb();
            drop(memory);
            let sink: Arc<dyn FetchSink> = Arc::new(ApfFetchSink {
                port: Arc::clone(apf.port()),
                waker: Arc::clone(&waker),
            });
            let index = spec.index;
            let mut vcpu = Vcpu::new(spec, machine, Arc::clone(&waker), ram, sink, apf);
            // A saved state is restored before the start barrier, so a refusal
            // is an error of `spawn`, not of the run.
            let resumed = match vcpu.spec.resume.take() {
                Some(state) => match vcpu.resume(&state) {
                    Ok(on) => Some(on),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return vcpu.totals(Instant::now());
                    }
                },
                None => None,
            };
            let _ = tx.send(Ok(waker));
            start.wait();
            tracing::trace!(vcpu = index, resumed = ?resumed, "vcpu_start");
            vcpu.run(resumed)
        })?;
    match rx.recv() {
        Ok(Ok(waker)) => Ok(VcpuThread { waker, handle }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
        Err(_) => Err(std::io::Error::other("vCPU thread died at start")),
    }
}

struct Vcpu {
    spec: VcpuSpec,
    /// The APF engine, beside what it acts on rather than inside it, so that
    /// the two are split borrows of the vCPU.
    apf: ApfEngine,
    /// What the engine and the firmware act on: registers, SDEI, RAM, machine.
    ctx: VcpuContext<Cpu, VcpuTlb>,
    /// Where this vCPU's asynchronous fetches complete: its APF port and waker.
    sink: Arc<dyn FetchSink>,
    icc: GicCpuInterface,
    waker: Arc<VcpuWaker>,
    stats: VcpuStats,
    timer_lines: TimerLines,
}

/// What to do after an exit.
enum Next {
    Continue,
    PowerOff,
}

impl Vcpu {
    fn new(
        spec: VcpuSpec,
        machine: Arc<Machine>,
        waker: Arc<VcpuWaker>,
        ram: VcpuTlb,
        sink: Arc<dyn FetchSink>,
        mut apf: ApfEngine,
    ) -> Self {
        let icc = GicCpuInterface::new(Arc::clone(&machine.gic), spec.index)
            .expect("the machine's GIC has a CPU interface for every vCPU index");
        let mut ctx = VcpuContext {
            index: spec.index,
            cpu: Cpu::new(spec.cpu),
            sdei: SdeiVcpu::new(),
            ram,
            machine,
        };
        if spec.apf_offered {
            // The VMM's configuration; the spec's values are validated by the
            // control API, and a refusal leaves APF unconfigured (ENABLE fails).
            if let Err(e) = apf.configure(&mut ctx, spec.apf_sdei_event, spec.apf_ppi) {
                tracing::error!(vcpu = spec.index, error = %e, "APF configuration refused");
            }
        }
        Vcpu {
            spec,
            apf,
            ctx,
            sink,
            icc,
            waker,
            stats: VcpuStats::default(),
            timer_lines: TimerLines::default(),
        }
    }

    /// Runs until the machine stops. `resumed`: the power state a restored
    /// vCPU starts in (running or not); `None` boots from the spec.
    fn run(&mut self, resumed: Option<bool>) -> VcpuTotals {
        let begin = Instant::now();
        let mut on = match (resumed, self.spec.boot) {
            (Some(on), _) => on,
            (None, Some(boot)) => {
                self.power_on(boot);
                true
            }
            (None, None) => false,
        };
        while !self.ctx.machine.stopping() {
            if !on {
                on = self.wait_for_cpu_on();
                continue;
            }
            match self.step() {
                Next::Continue => {}
                Next::PowerOff => {
                    self.apf.reset(&mut self.ctx);
                    on = false;
                }
            }
        }
        self.totals(begin)
    }

    /// What the thread returns, with the state it leaves in.
    fn totals(&mut self, begin: Instant) -> VcpuTotals {
        self.stats.total = begin.elapsed();
        self.stats.instructions = self.ctx.cpu.retired();
        self.ctx.ram.park();
        VcpuTotals {
            index: self.spec.index,
            stats: self.stats,
            apf: self.apf.counters().snapshot(),
            counter: self.ctx.cpu.counter(),
            state: Box::new(self.save_state()),
            apf_detail: self.apf_detail(),
        }
    }

    /// See [`VcpuTotals::apf_detail`].
    fn apf_detail(&mut self) -> String {
        let ppi = self.apf.ppi();
        let gic = self.ctx.machine.gic.save_state();
        let line = match (gic.redistributors.get(self.spec.index), ppi < 32) {
            (Some(r), true) => {
                let b = &r.sgi_ppi;
                let bit = |w: u32| (w >> ppi) & 1;
                format!(
                    "ppi {ppi}: enabled {} level {} latch {} active {} priority {:#x}",
                    bit(b.enabled),
                    bit(b.level),
                    bit(b.latch),
                    bit(b.active),
                    b.priority[ppi as usize]
                )
            }
            _ => format!("ppi {ppi}: not a PPI of this vCPU"),
        };
        let memory = Arc::clone(self.ctx.ram.memory());
        let items = self
            .apf
            .describe(&mut self.ctx, |gfn| memory.describe_page(gfn));
        format!("{items}; {line}")
    }

    /// This vCPU's state; call between slices.
    fn save_state(&self) -> VcpuState {
        VcpuState {
            cpu: self.ctx.cpu.save_state(),
            icc: self.icc.save_state(),
            sdei: self.ctx.sdei.save_state(),
            apf: self.apf.save_state(),
        }
    }

    /// Installs a saved state in place of the boot; returns whether the vCPU
    /// runs: only if the restored PSCI state has it on (`Off` and `OnPending`
    /// wait for a CPU_ON, which the machine's state keeps). The GIC and PSCI
    /// must be restored already. An APF configuration the machine refuses (its block is taken)
    /// leaves APF off on this vCPU, with a warning: the guest runs on without it.
    fn resume(&mut self, state: &VcpuState) -> Result<bool, VcpuStateError> {
        let vcpu = self.spec.index;
        self.ctx
            .cpu
            .restore_state(&state.cpu)
            .map_err(|error| VcpuStateError::Cpu { vcpu, error })?;
        self.ctx
            .sdei
            .restore_state(&state.sdei)
            .map_err(|error| VcpuStateError::Sdei { vcpu, error })?;
        self.icc.restore_state(&state.icc);
        // The PPIs' levels came back with the GIC: start from them, so the
        // first slice drives only what differs from the restored timers.
        let gic = &self.ctx.machine.gic;
        self.timer_lines = TimerLines {
            virt: gic.ppi_level(vcpu, PPI_TIMER_VIRT),
            phys: gic.ppi_level(vcpu, PPI_TIMER_PHYS),
        };
        if let Err(e) = self.apf.restore_state(&mut self.ctx, &state.apf) {
            tracing::warn!(vcpu, error = %e, "saved APF configuration refused: APF is off on this vCPU");
        }
        Ok(self.ctx.machine.psci.power_state(vcpu) == Some(PowerState::On))
    }

    /// Resets the vCPU and starts it at `req` (boot, or CPU_ON).
    fn power_on(&mut self, req: StartRequest) {
        let ctx = &mut self.ctx;
        // Never backwards for this vCPU (it may have run before a CPU_OFF).
        let counter = ctx.cpu.counter().max(req.counter);
        ctx.cpu = Cpu::new(self.spec.cpu);
        ctx.cpu.advance_counter(counter);
        enter_cpu(&mut ctx.cpu, req.entry, req.context);
        ctx.sdei.reset();
        if let Ok(icc) = GicCpuInterface::new(Arc::clone(&ctx.machine.gic), self.spec.index) {
            self.icc = icc;
        }
        self.apf.reset(&mut self.ctx);
        self.ctx.machine.psci.mark_on(self.spec.index);
        self.unpark();
    }

    /// Powered off: sleep until a CPU_ON for this vCPU or the end of the run.
    fn wait_for_cpu_on(&mut self) -> bool {
        self.ctx.ram.park();
        let t = Instant::now();
        let index = self.spec.index;
        let machine = Arc::clone(&self.ctx.machine);
        let mut request = None;
        self.waker.halt(self.spec.halt_poll, None, || {
            request = request.or_else(|| machine.take_start(index));
            request.is_some() || machine.stopping()
        });
        self.stats.idle += t.elapsed();
        match request {
            Some(req) => {
                self.power_on(req);
                true
            }
            None => false,
        }
    }

    /// Resumes using the TLB after a halt.
    fn unpark(&mut self) {
        if self.ctx.ram.unpark() {
            self.ctx.cpu.invalidate_all_decoded();
        }
    }

    fn step(&mut self) -> Next {
        // Consume kicks before looking at what they announce: a completion or a
        // shootdown that lands while this step looks still ends the slice. (Our own
        // PPI changes below kick us too; that costs one short slice.)
        self.waker.clear();
        if self.ctx.ram.sync() {
            self.ctx.cpu.invalidate_all_decoded();
        }
        self.apf.service(&mut self.ctx);
        deliver_sdei(&mut self.apf, &mut self.ctx);
        self.update_timer_lines();
        let irq_line = self.icc.irq_line();
        self.ctx.cpu.set_irq_line(irq_line);

        let t = Instant::now();
        let ctx = &mut self.ctx;
        let index = self.spec.index;
        if let Some(pending) = ctx.machine.maintenance.enter_guest(index) {
            apply_maintenance(&mut ctx.cpu, &pending);
        }
        let mut bus = VcpuBus {
            index,
            ram: &mut ctx.ram,
            icc: &mut self.icc,
            machine: &ctx.machine,
            waker: &self.waker,
            irq_line,
            mmio: 0,
            mapped: 0,
            unresolved: None,
        };
        let retired = ctx.cpu.retired();
        let exit = ctx.cpu.run(&mut bus, self.spec.slice);
        ctx.machine.maintenance.leave_guest(index);
        if let Some(live) = ctx.machine.live(self.spec.index) {
            live.add_retired(ctx.cpu.retired().wrapping_sub(retired));
        }
        self.stats.exits.mmio += bus.mmio;
        self.stats.faults.mapped += bus.mapped;
        let unresolved = bus.unresolved;
        self.stats.guest += t.elapsed();

        let exits = &mut self.stats.exits;
        match exit {
            Exit::Hvc { imm } => {
                exits.hvc += 1;
                return self.hypercall(imm);
            }
            Exit::Smc { imm } => {
                exits.smc += 1;
                return self.hypercall(imm);
            }
            Exit::Wfi => {
                exits.wfi += 1;
                self.wait_for_interrupt();
            }
            Exit::Wfe => {
                // No SEV model: a WFE is a hint to let others run.
                exits.wfe += 1;
                std::thread::yield_now();
            }
            Exit::Stage2Abort {
                esr_el2,
                far,
                hpfar,
            } => {
                exits.stage2 += 1;
                self.stage2_abort(Esr(esr_el2), far, hpfar, unresolved);
            }
            Exit::TimerDeadline => exits.timer += 1,
            Exit::Budget => {
                exits.budget += 1;
                // The guest keeps this vCPU busy while its faults are in flight (the
                // point of APF), so the host threads those faults need (reclaim,
                // I/O completion) wait for a CPU; on a host with few cores they
                // would wait for whole scheduler slices. Offer the CPU once a slice.
                if self.apf.outstanding() > 0 {
                    std::thread::yield_now();
                }
            }
            Exit::Kicked => exits.kicked += 1,
        }
        Next::Continue
    }

    fn update_timer_lines(&mut self) {
        let lines = self.ctx.cpu.timer_irq_lines();
        let gic = &self.ctx.machine.gic;
        if lines.virt != self.timer_lines.virt {
            let _ = gic.set_ppi_level(self.spec.index, PPI_TIMER_VIRT, lines.virt);
        }
        if lines.phys != self.timer_lines.phys {
            let _ = gic.set_ppi_level(self.spec.index, PPI_TIMER_PHYS, lines.phys);
        }
        self.timer_lines = lines;
    }

    fn cntfrq(&self) -> u64 {
        self.ctx.cpu.sysreg(SysReg::CntfrqEl0).max(1)
    }

    /// Counter ticks in `wall` time at the counter's nominal frequency.
    fn ticks_in(&self, wall: Duration) -> u64 {
        let nanos = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
        u64::try_from(u128::from(nanos) * u128::from(self.cntfrq()) / 1_000_000_000)
            .unwrap_or(u64::MAX)
    }

    /// The vCPU spent `wall` in the host, blocked for a page: the guest's clock goes
    /// on meanwhile, as a real counter would (virtual time is retired instructions
    /// only while guest code runs). Without this a guest would not see the time its
    /// process lost to a synchronous fault, and its scheduler would charge nothing
    /// for it.
    fn pass_blocked_time(&mut self, wall: Duration) {
        self.stats.blocked += wall;
        let ticks = self.ticks_in(wall);
        self.ctx.cpu.advance_counter(ticks);
    }

    /// WFI: halt until something could make the guest run. Virtual time passes at
    /// the counter's nominal frequency while halted, so the timer still fires.
    fn wait_for_interrupt(&mut self) {
        let t = Instant::now();
        let freq = self.cntfrq();
        let now_ticks = self.ctx.cpu.counter();
        let deadline_ticks = self.ctx.cpu.next_timer_deadline();
        let wall_deadline = deadline_ticks.map(|d| {
            let ticks = d.saturating_sub(now_ticks);
            t + Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / freq)
        });
        self.ctx.ram.park();
        let (icc, sdei, machine, apf) = (&self.icc, &self.ctx.sdei, &self.ctx.machine, &self.apf);
        let reason = self.waker.halt(self.spec.halt_poll, wall_deadline, || {
            machine.stopping() || icc.irq_line() || sdei.has_deliverable() || apf.has_work()
        });
        self.unpark();
        let elapsed = t.elapsed();
        self.stats.idle += elapsed;
        let mut ticks = self.ticks_in(elapsed);
        if let (WakeReason::Deadline, Some(d)) = (reason, deadline_ticks) {
            ticks = ticks.max(d.saturating_sub(now_ticks));
        }
        self.ctx.cpu.advance_counter(ticks);
    }

    fn hypercall(&mut self, imm: u16) -> Next {
        // The context holds the machine too: PSCI's state is borrowed through a
        // handle of its own.
        let machine = Arc::clone(&self.ctx.machine);
        let mut fw = Firmware {
            index: self.spec.index,
            psci: &machine.psci,
            engine: &mut self.apf,
            vcpu: &mut self.ctx,
        };
        match dispatch(&mut fw, imm) {
            SmcccExit::Return => Next::Continue,
            SmcccExit::Psci(action) => self.psci(action),
        }
    }

    fn psci(&mut self, action: PsciAction) -> Next {
        let machine = &self.ctx.machine;
        match action {
            PsciAction::StartCpu {
                target,
                entry,
                context,
            } => {
                let counter = self.ctx.cpu.counter();
                machine.request_start(
                    target,
                    StartRequest {
                        entry,
                        context,
                        counter,
                    },
                );
                Next::Continue
            }
            PsciAction::CpuOff => Next::PowerOff,
            PsciAction::SystemOff => {
                machine.stop(StopReason::SystemOff);
                Next::Continue
            }
            PsciAction::SystemReset => {
                machine.stop(StopReason::SystemReset);
                Next::Continue
            }
        }
    }

    /// `unresolved`: what the bus found when it tried to map the page without
    /// an exit, if it did.
    fn stage2_abort(&mut self, esr: Esr, far: u64, hpfar: u64, unresolved: Option<(Gfn, Resolve)>) {
        let gpa = Gpa(ipa_from_hpfar(hpfar) | (far & 0xFFF));
        let write = esr.is_write_abort();
        if tracing::enabled!(target: "apf", tracing::Level::TRACE) {
            self.trace_stage2_abort(esr, gpa, write);
        }
        let resolved = match unresolved {
            Some((gfn, r)) if gfn == gpa.gfn() => r,
            _ => self.ctx.ram.resolve(gpa, write),
        };
        let gfn = match resolved {
            Resolve::Mapped => {
                self.stats.faults.mapped += 1;
                return;
            }
            Resolve::NotRam => {
                self.stats.faults.unmapped += 1;
                self.external_abort(esr, far);
                return;
            }
            Resolve::NeedsFetch(gfn) => gfn,
        };
        match self.apf.try_async(&mut self.ctx, gfn) {
            FaultDecision::Async { cookie, .. } => {
                self.stats.faults.asynchronous += 1;
                let memory = self.ctx.ram.memory();
                match memory.start_fetch(gfn, Arc::clone(&self.sink), cookie) {
                    FetchStart::Started | FetchStart::Joined => {}
                    FetchStart::AlreadyResident | FetchStart::NotRam => {
                        // No completion will come: complete it here. The engine
                        // then withdraws the undelivered not-present.
                        if let Some(handle) = ItemHandle::from_cookie(cookie) {
                            self.apf.port().complete(handle, true);
                        }
                    }
                }
            }
            FaultDecision::Halt => {
                self.stats.faults.halted += 1;
                self.halt_for_page();
            }
            FaultDecision::Sync(_) => {
                self.stats.faults.synchronous += 1;
                let t = Instant::now();
                let result = self.ctx.ram.fetch_blocking(gfn);
                self.pass_blocked_time(t.elapsed());
                if let Err(lost) = result {
                    tracing::warn!(vcpu = self.spec.index, gfn = gfn.0, error = %lost,
                        "page could not be read: external abort to the guest");
                    self.stats.faults.lost += 1;
                    self.external_abort(esr, far);
                }
            }
        }
    }

    /// The `stage2_abort` trace event: the faulting access and, for a data abort, the
    /// instruction that made it (PC is at it, and with the stage-1 MMU off it is a
    /// guest-physical address; its page was just executed, so it is resident).
    fn trace_stage2_abort(&mut self, esr: Esr, gpa: Gpa, write: bool) {
        let ctx = &mut self.ctx;
        let (vcpu, pc, el) = (self.spec.index, ctx.cpu.pc(), ctx.cpu.el());
        let (gfn, gpa) = (gpa.gfn().0, gpa.0);
        let mut word = [0u8; 4];
        if !esr.is_instruction_abort() && ctx.ram.read_bytes(Gpa(pc), &mut word).is_ok() {
            let insn = u32::from_le_bytes(word);
            tracing::trace!(name: "stage2_abort", target: "apf", vcpu, gfn, gpa, write, el,
                pc, insn);
        } else {
            tracing::trace!(name: "stage2_abort", target: "apf", vcpu, gfn, gpa, write, el,
                pc);
        }
    }

    /// A repeated fault on a page in flight: wait in the host for that page (or an
    /// interrupt the guest should take) instead of re-entering the guest to fault
    /// again (DESIGN §5.3).
    fn halt_for_page(&mut self) {
        let t = Instant::now();
        self.ctx.ram.park();
        let (icc, apf, ctx) = (&self.icc, &mut self.apf, &mut self.ctx);
        self.waker.halt(self.spec.halt_poll, None, || {
            apf.service(ctx);
            apf.halted_on().is_none() || ctx.machine.stopping() || icc.irq_line()
        });
        self.apf.end_halt();
        self.unpark();
        self.pass_blocked_time(t.elapsed());
    }

    /// The access at `far` cannot be satisfied: a synchronous external abort to EL1,
    /// of the same kind (data or instruction) as the stage-2 abort.
    fn external_abort(&mut self, esr: Esr, far: u64) {
        let lower = self.ctx.cpu.el() == 0;
        let syndrome = if esr.is_instruction_abort() {
            let class = if lower {
                ec::IABT_LOWER
            } else {
                ec::IABT_CURRENT
            };
            InstructionAbort {
                s1ptw: false,
                external: false,
                far_not_valid: false,
                ifsc: fsc::SYNC_EXTERNAL,
            }
            .encode(class)
        } else {
            let class = if lower {
                ec::DABT_LOWER
            } else {
                ec::DABT_CURRENT
            };
            DataAbort {
                syndrome: None,
                write: esr.is_write_abort(),
                s1ptw: false,
                cache_maintenance: false,
                external: false,
                far_not_valid: false,
                dfsc: fsc::SYNC_EXTERNAL,
            }
            .encode(class)
        };
        self.ctx.cpu.take_exception(Exception::Synchronous {
            esr: syndrome,
            far: Some(far),
        });
    }
}

/// Whether vCPU `index` of `machine` is powered on.
pub fn is_on(machine: &Machine, index: usize) -> bool {
    machine.psci.power_state(index) == Some(PowerState::On)
}

/// Applies what other vCPUs broadcast while this one was out of the guest.
fn apply_maintenance(cpu: &mut Cpu, pending: &Pending) {
    if pending.tlb {
        cpu.flush_tlb();
    }
    if pending.all_code {
        cpu.invalidate_all_decoded();
    } else {
        for &pa in &pending.code_pages {
            cpu.invalidate_decoded(pa);
        }
    }
}
