//! The vCPU: architectural state, the run loop and the host's view of both.

use apf_abi::esr::{Esr, ec};

mod compiled;
mod exceptions;
mod state;
mod sysregs;

pub use state::{CpuState, CpuStateError, PstateState};

use crate::bus::Bus;
use crate::cache::{DecodeCache, OPS_PER_PAGE};
use crate::decode::{Op, decode, reg};
use crate::exception::Exception;
use crate::jit::{CompiledBlocks, DirectPages};
use crate::mmu::{AccessKind, Fault, Mmu, Translation, WalkRegs};
use crate::pstate::{Pstate, bits};
use crate::sysreg::{SCTLR_WXN, SysRegs};
use crate::timer::{TimeScale, Timer, TimerLines};

/// Per-vCPU configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuConfig {
    /// MPIDR_EL1 affinity value (bit 31, RES1, is added).
    pub mpidr: u64,
    /// CNTFRQ_EL0: the counter frequency the guest is told, in Hz.
    pub cntfrq: u64,
    /// Virtual time: counter ticks per retired instruction.
    pub time_scale: TimeScale,
    /// How guest code runs.
    pub engine: Engine,
}

/// How a vCPU runs guest code. Both engines retire the same instructions with
/// the same effects; the compiler is faster on code that runs often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Every block is interpreted.
    Interpreter,
    /// A block entered `after` times is compiled to host code (Cranelift) and
    /// runs compiled from then on; ops the compiler does not handle still call
    /// the interpreter. On a host without a Cranelift backend, the interpreter.
    Compiler {
        /// Entries before a block is compiled (0: at its first).
        after: u32,
    },
}

impl Engine {
    /// Entries before a block is compiled, by default. A compile costs about
    /// 0.3 ms: at 50, a Linux boot had compiled 27,096 blocks by its last
    /// decode-arena reset and took about twice the interpreter's CPU time; at
    /// this figure, 1,425, and 7.5 s of CPU against 8.7 interpreted
    /// (docs/jit). A loop's blocks reach it in well under a millisecond.
    pub const COMPILE_AFTER: u32 = 5000;
}

impl Default for Engine {
    /// The compiler, blocks compiled after [`Engine::COMPILE_AFTER`] entries.
    fn default() -> Engine {
        Engine::Compiler {
            after: Engine::COMPILE_AFTER,
        }
    }
}

impl Default for CpuConfig {
    /// MPIDR 0, 100 MHz counter, one tick per instruction, the default engine.
    fn default() -> CpuConfig {
        CpuConfig {
            mpidr: 0,
            cntfrq: 100_000_000,
            time_scale: TimeScale::default(),
            engine: Engine::default(),
        }
    }
}

/// Why [`Cpu::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// HVC #imm at EL1; PC is past the instruction (the preferred return).
    Hvc {
        /// The immediate.
        imm: u16,
    },
    /// SMC #imm at EL1; PC is past the instruction.
    Smc {
        /// The immediate.
        imm: u16,
    },
    /// WFI; PC is past the instruction.
    Wfi,
    /// WFE; PC is past the instruction.
    Wfe,
    /// A stage-2 translation fault; PC is at the faulting instruction, which had
    /// no architectural effect and can be retried.
    Stage2Abort {
        /// ESR_EL2 as hardware builds it (EC 0x24 data / 0x20 instruction).
        /// S1PTW (bit 7) is set when the fault was on a stage-1 table walk's
        /// descriptor read rather than on the access itself.
        esr_el2: u64,
        /// FAR_EL2: the faulting VIRTUAL address (the access's VA, also for a
        /// fault on its table walk). It equals the IPA only with the MMU off.
        far: u64,
        /// HPFAR_EL2: the faulting IPA page (the descriptor's page for a walk).
        /// This, not `far`, says which guest page to map.
        hpfar: u64,
    },
    /// A timer output level may have changed: the counter reached
    /// [`Cpu::next_timer_deadline`], or the guest wrote a timer register. Read
    /// [`Cpu::timer_irq_lines`].
    TimerDeadline,
    /// The step budget was used up.
    Budget,
    /// [`Bus::kicked`] said so.
    Kicked,
}

/// Why an MRS, MSR or SYS did not execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SysFault {
    /// UNDEFINED (EC 0).
    Undefined,
    /// Trapped to EL1 by an EL1 control (EC 0x18).
    Trapped,
    /// Trapped by CPACR_EL1.FPEN (EC 0x07).
    FpTrapped,
    /// A translation or access fault was taken to EL1 (PC at the vector).
    Aborted,
    /// Return this exit (a stage-2 abort); nothing changed.
    Exit(Exit),
}

/// The local exclusive monitor: the address, size and value an LDXR/LDXP saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Monitor {
    pub(crate) addr: u64,
    pub(crate) bytes: u64,
    pub(crate) value: u128,
}

/// What executing one op did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Retired; PC advances by 4.
    Next,
    /// Retired; PC was set (a branch).
    Jump,
    /// Retired; PC was set to the next instruction and PSTATE or timer state may
    /// have changed: leave the block so interrupts and deadlines are rechecked.
    Resync,
    /// Not retired: an exception was taken (PC is at the vector).
    Trap,
    /// Not retired, no state changed: return [`Cpu::exit`] (a stage-2 abort).
    Fault,
    /// Retired (PC already past it): return [`Cpu::exit`].
    Exit,
    /// Not executed: the slot at PC is not decoded yet.
    NotDecoded,
}

/// Where a run of compiled blocks may go on: blocks of code page `page`
/// (decode-cache slab `slab`, ops in `arena`) while the retired count stays
/// below `stop`.
#[derive(Debug)]
pub(crate) struct Chain<'a> {
    pub(crate) page: u64,
    pub(crate) slab: usize,
    pub(crate) stop: u64,
    pub(crate) arena: &'a [Op],
}

/// One vCPU: architectural state plus its decoded-instruction cache.
#[derive(Debug)]
pub struct Cpu {
    /// X0..X30, the zero slot, the live SP and the sink (see `decode::reg`).
    pub(crate) regs: [u64; reg::FILE],
    pub(crate) pc: u64,
    pub(crate) pstate: Pstate,
    /// The banked stack pointer not in use (the live one is `regs[SP]`).
    pub(crate) sp_el0: u64,
    pub(crate) sp_el1: u64,
    pub(crate) sys: SysRegs,
    pub(crate) timer: Timer,
    pub(crate) monitor: Option<Monitor>,
    pub(crate) irq_line: bool,
    pub(crate) retired: u64,
    /// The exit a [`Flow::Fault`] or [`Flow::Exit`] returns (kept out of
    /// `Flow` so that every op returns its flow in a register).
    pub(crate) exit: Exit,
    pub(crate) config: CpuConfig,
    pub(crate) cache: DecodeCache,
    pub(crate) mmu: Mmu,
    /// Compiled blocks ([`Engine::Compiler`]); out of `self` while guest
    /// code runs, as the arena is.
    pub(crate) compiled: Option<Box<CompiledBlocks>>,
    /// Guest pages compiled code accesses with host loads and stores.
    pub(crate) direct: DirectPages,
}

impl Cpu {
    /// A vCPU in its reset state: EL1h, D, A, I, F masked, MMU off, registers 0.
    pub fn new(config: CpuConfig) -> Cpu {
        Cpu {
            regs: [0; reg::FILE],
            pc: 0,
            pstate: Pstate::reset(),
            sp_el0: 0,
            sp_el1: 0,
            sys: SysRegs::reset(),
            timer: Timer::new(config.time_scale),
            monitor: None,
            irq_line: false,
            retired: 0,
            exit: Exit::Budget,
            config,
            cache: DecodeCache::new(),
            mmu: Mmu::new(),
            compiled: match config.engine {
                Engine::Interpreter => None,
                Engine::Compiler { after } => {
                    Some(Box::new(CompiledBlocks::new(after, Cpu::LAYOUT)))
                }
            },
            direct: DirectPages::new(),
        }
    }

    /// Runs until an exit, for at most `budget` steps (a step is a retired
    /// instruction or an exception entry). Never returns with a half-executed
    /// instruction: on an exit caused by an access, no architectural state of
    /// that instruction has changed, so the host can retry it.
    pub fn run<B: Bus>(&mut self, bus: &mut B, budget: u64) -> Exit {
        // The block arena is out of the cache while guest code runs, so the
        // run loop borrows a block's ops while ops borrow `self` mutably.
        // Host pages the bus hands out are valid for one run only.
        self.direct.flush();
        let mut arena = std::mem::take(&mut self.cache.arena);
        let mut compiled = self.compiled.take();
        let exit = self.run_with(bus, budget, &mut arena, compiled.as_deref_mut());
        self.cache.arena = arena;
        self.compiled = compiled;
        exit
    }

    /// [`Cpu::run`] with the block arena taken out of the cache.
    #[inline(always)]
    fn run_with<B: Bus>(
        &mut self,
        bus: &mut B,
        budget: u64,
        arena: &mut Vec<Op>,
        mut compiled: Option<&mut CompiledBlocks>,
    ) -> Exit {
        let mut left = budget;
        loop {
            if left == 0 {
                return Exit::Budget;
            }
            if bus.kicked() {
                return Exit::Kicked;
            }
            // An interrupt is taken at the instruction boundary, before the
            // instruction there can raise anything (SPSR keeps PSTATE.IL).
            if self.irq_line && self.pstate.daif & bits::I == 0 {
                self.take_exception(Exception::Irq);
                left -= 1;
                continue;
            }
            if self.pstate.il {
                self.sync_exception(Esr::new(ec::ILLEGAL_STATE, 0), None);
                left -= 1;
                continue;
            }
            if self.pc & 3 != 0 {
                self.sync_exception(Esr::new(ec::PC_ALIGNMENT, 0), Some(self.pc));
                left -= 1;
                continue;
            }
            let deadline = self.timer.next_deadline().and_then(|d| {
                self.timer
                    .instructions_until(self.retired, d)
                    .map(|n| (d, n))
            });
            let limit = deadline.map_or(left, |(_, n)| n.min(left));
            let (steps, exit) = self.run_page(bus, limit, arena, compiled.as_deref_mut());
            left -= steps;
            if let Some(exit) = exit {
                return exit;
            }
            if let Some((d, _)) = deadline
                && self.counter() >= d
            {
                return Exit::TimerDeadline;
            }
        }
    }

    /// Executes up to `limit` steps without leaving the current code page.
    #[inline]
    fn run_page<B: Bus>(
        &mut self,
        bus: &mut B,
        limit: u64,
        arena: &mut Vec<Op>,
        mut compiled: Option<&mut CompiledBlocks>,
    ) -> (u64, Option<Exit>) {
        let page = self.pc & !0xFFF;
        // The decode cache is keyed by PA page, so code mapped twice decodes once.
        let pa_page = if self.sys.sctlr_el1 & crate::sysreg::SCTLR_M == 0 {
            page
        } else {
            match self.translate_code_page(bus) {
                Ok(pa_page) => pa_page,
                Err(f) => return self.fetch_translation_fault(f),
            }
        };
        let epoch_before = self.cache.block_epoch;
        let slab = self.cache.page(pa_page >> 12);
        if self.cache.block_epoch != epoch_before {
            // A new code page (its blocks were forgotten): no direct store
            // may skip its decode-cache check.
            self.direct.flush();
        }
        // Every step in here retires an instruction except the last one when
        // it is an exception entry, so the retired count is the step count.
        let start = self.retired;
        let stop = start + limit;
        // The count lives in a register here; `self.retired` gets it on the
        // way out, and MRS/MSR (the only ops that read it) get it passed.
        let mut retired = start;
        while retired < stop {
            // A word index within the page.
            #[allow(clippy::cast_possible_truncation)]
            let index = ((self.pc >> 2) as usize) & (OPS_PER_PAGE - 1);
            let block = match self.cache.block(slab, index) {
                Some(b) => Some(b),
                None => self.cache.build_block(slab, index, arena),
            };
            let flow = match block {
                // The whole block fits in the budget: run it without a
                // per-op lookup, budget or page-end check.
                Some(b) if b.len as u64 <= stop - retired => {
                    // Only the block's last op can read the count (MRS, MSR).
                    let last = retired + b.len as u64 - 1;
                    let ops = &arena[b.start..b.start + b.len];
                    let (flow, taken) = if let Some(blocks) = compiled.as_deref_mut()
                        && let Some(f) = blocks.entry(b, index, ops, self.cache.arena_generation)
                    {
                        let chain = Chain {
                            page,
                            slab,
                            stop,
                            arena,
                        };
                        self.run_compiled(bus, blocks, f, &mut retired, &chain)
                    } else {
                        let mut rest = ops.iter();
                        let mut flow = Flow::Next;
                        for op in rest.by_ref() {
                            flow = self.exec(bus, op, last);
                            if flow != Flow::Next {
                                break;
                            }
                            self.pc = self.pc.wrapping_add(4);
                        }
                        // The ops taken from the slice: all of them but the last
                        // retired, and the last too unless it trapped or faulted
                        // (PC may be at a vector now, so count from the slice).
                        (flow, (b.len - rest.len()) as u64)
                    };
                    match flow {
                        // The block ended at a branch not taken or the page end.
                        Flow::Next => {
                            retired += taken;
                            if self.pc & 0xFFF == 0 {
                                break;
                            }
                            continue;
                        }
                        // The common way out, handled here as below but
                        // without the general dispatch on `flow`.
                        Flow::Jump => {
                            retired += taken;
                            if self.pc & !0xFFC != page {
                                break;
                            }
                            if bus.kicked() {
                                self.retired = retired;
                                return (retired - start, Some(Exit::Kicked));
                            }
                            continue;
                        }
                        _ => {
                            retired += taken - 1;
                            flow
                        }
                    }
                }
                // One op at a time: not decoded yet, or near the budget's end.
                _ => self.exec_one(bus, slab, index, retired),
            };
            // `retired` counts the ops before the one that returned `flow`.
            #[allow(clippy::cast_possible_truncation)]
            let index = ((self.pc >> 2) as usize) & (OPS_PER_PAGE - 1);
            match flow {
                Flow::Next => {
                    self.pc = self.pc.wrapping_add(4);
                    retired += 1;
                    if index == OPS_PER_PAGE - 1 {
                        break;
                    }
                }
                Flow::Jump => {
                    retired += 1;
                    // Same page and still aligned, else the outer loop decides.
                    if self.pc & !0xFFC != page {
                        break;
                    }
                    if bus.kicked() {
                        self.retired = retired;
                        return (retired - start, Some(Exit::Kicked));
                    }
                }
                Flow::Resync => {
                    retired += 1;
                    break;
                }
                Flow::Trap => {
                    self.retired = retired;
                    return (retired - start + 1, None);
                }
                Flow::Fault => {
                    self.retired = retired;
                    return (retired - start, Some(self.exit));
                }
                Flow::Exit => {
                    self.retired = retired + 1;
                    return (retired + 1 - start, Some(self.exit));
                }
                Flow::NotDecoded => {
                    if let Some(steps) = self.fill_slot(bus, slab, index, pa_page) {
                        self.retired = retired;
                        return (retired - start + steps.0, steps.1);
                    }
                }
            }
        }
        self.retired = retired;
        (retired - start, None)
    }

    /// Executes the op in slot `index` of `slab` alone: the rare path, kept
    /// out of line so the block loop's copy of `exec` is the only inlined one.
    #[inline(never)]
    fn exec_one<B: Bus>(&mut self, bus: &mut B, slab: usize, index: usize, retired: u64) -> Flow {
        let op = self.cache.op(slab, index);
        self.exec(bus, &op, retired)
    }

    /// Fetches and decodes the word at PC into slot `index` of `slab`, or
    /// returns the extra steps and exit of a fetch that failed.
    #[cold]
    #[inline(never)]
    fn fill_slot<B: Bus>(
        &mut self,
        bus: &mut B,
        slab: usize,
        index: usize,
        pa_page: u64,
    ) -> Option<(u64, Option<Exit>)> {
        let pa = pa_page | (self.pc & 0xFFF);
        match bus.fetch(pa) {
            Ok(word) => {
                self.cache.set(slab, index, decode(word));
                None
            }
            Err(crate::BusError::Stage2Fault) => {
                let esr = Cpu::stage2_fetch_syndrome();
                let exit = self.stage2_exit(esr, self.pc, pa);
                Some((0, Some(exit)))
            }
            Err(crate::BusError::ExternalAbort) => {
                self.fetch_abort_el1();
                Some((1, None))
            }
        }
    }

    /// Not retired, no state changed: the run loop returns `exit`.
    #[cold]
    pub(crate) fn fault_exit(&mut self, exit: Exit) -> Flow {
        self.exit = exit;
        Flow::Fault
    }

    /// Retired: the run loop returns `exit`.
    pub(crate) fn exit_after(&mut self, exit: Exit) -> Flow {
        self.exit = exit;
        Flow::Exit
    }

    /// The PA page of the code page at PC (MMU on). Once per page entered, so
    /// kept out of the run loop's body.
    #[inline(never)]
    fn translate_code_page<B: Bus>(&mut self, bus: &mut B) -> Result<u64, Fault> {
        let el0 = self.pstate.el == 0;
        self.translate(bus, self.pc, AccessKind::Execute, el0)
            .map(|t| t.pa & !0xFFF)
    }

    /// The outcome of a stage-1 fault on the fetch at PC: an instruction
    /// abort to EL1 (one step), or an exit for a stage-2 fault on the walk.
    #[cold]
    fn fetch_translation_fault(&mut self, f: Fault) -> (u64, Option<Exit>) {
        if let Fault::WalkStage2 { ipa, .. } = f {
            let exit = self.stage2_exit(Cpu::stage2_walk_fetch_syndrome(), self.pc, ipa);
            return (0, Some(exit));
        }
        self.instruction_abort_el1(f.status());
        (1, None)
    }

    /// A stage-2 abort exit at virtual address `far` for IPA `ipa`. The exit
    /// goes to EL2 and back, which clears the local monitor on hardware too.
    pub(crate) fn stage2_exit(&mut self, esr: Esr, far: u64, ipa: u64) -> Exit {
        self.monitor = None;
        Exit::Stage2Abort {
            esr_el2: esr.0,
            far,
            hpfar: apf_abi::esr::hpfar_from_ipa(ipa),
        }
    }

    /// X`n` for n in 0..=30; 0 for anything else.
    pub fn x(&self, n: usize) -> u64 {
        if n < 31 { self.regs[n] } else { 0 }
    }

    /// Sets X`n` for n in 0..=30; other indices are ignored.
    pub fn set_x(&mut self, n: usize, v: u64) {
        if n < 31 {
            self.regs[n] = v;
        }
    }

    /// The current stack pointer (SP_EL0 or SP_EL1 per PSTATE).
    pub fn sp(&self) -> u64 {
        self.regs[usize::from(reg::SP)]
    }

    /// Sets the current stack pointer.
    pub fn set_sp(&mut self, v: u64) {
        self.regs[usize::from(reg::SP)] = v;
    }

    /// The program counter.
    pub fn pc(&self) -> u64 {
        self.pc
    }

    /// Sets the program counter.
    pub fn set_pc(&mut self, pc: u64) {
        self.pc = pc;
    }

    /// PSTATE in SPSR format (NZCV, SS, IL, DAIF, M\[3:0\]).
    pub fn pstate(&self) -> u64 {
        self.pstate.to_spsr()
    }

    /// Sets PSTATE from an SPSR-format value, banking SP as a mode change does.
    /// A mode this PE cannot be in (AArch32, EL2/EL3, EL0 with SPSel set) keeps
    /// the current EL and SP selection and sets PSTATE.IL, so the next
    /// instruction takes an Illegal Execution State exception.
    pub fn set_pstate(&mut self, spsr_format: u64) {
        match Pstate::from_spsr(spsr_format) {
            Some(p) => self.switch_pstate(p),
            None => {
                self.pstate.nzcv = spsr_format & bits::NZCV;
                self.pstate.daif = spsr_format & bits::DAIF;
                self.pstate.il = true;
            }
        }
    }

    /// The current exception level (0 or 1).
    pub fn el(&self) -> u8 {
        self.pstate.el
    }

    /// Sets the level of the IRQ line from the GIC; the IRQ is taken when
    /// PSTATE.I is clear.
    pub fn set_irq_line(&mut self, asserted: bool) {
        self.irq_line = asserted;
    }

    /// The virtual counter (CNTVCT_EL0; CNTPCT_EL0 reads the same).
    pub fn counter(&self) -> u64 {
        self.timer.count(self.retired)
    }

    /// Moves virtual time forward by `ticks` (an idle skip while halted in WFI).
    pub fn advance_counter(&mut self, ticks: u64) {
        self.timer.advance(ticks);
    }

    /// Instructions retired since reset.
    pub fn retired(&self) -> u64 {
        self.retired
    }

    /// The output levels of the virtual (PPI 27) and physical (PPI 30) timers.
    pub fn timer_irq_lines(&self) -> TimerLines {
        self.timer.lines(self.counter())
    }

    /// The earliest CVAL among the enabled, unmasked timers (it may be past).
    pub fn next_timer_deadline(&self) -> Option<u64> {
        self.timer.next_deadline()
    }

    /// Forgets the decoded instructions of the page holding `page_gpa`: the page
    /// left, or another agent wrote it.
    pub fn invalidate_decoded(&mut self, page_gpa: u64) {
        self.cache.invalidate_page(page_gpa >> 12);
    }

    /// Forgets every decoded page (IC IALLU, or the host dropped stage-2 mappings in
    /// a TLB shootdown, so a code page may have left guest memory and must fault back
    /// in through an instruction abort before it runs again).
    pub fn invalidate_all_decoded(&mut self) {
        self.cache.invalidate_all();
    }

    /// Translates `va` for an access of `kind` with the permissions of EL0
    /// (`el0`) or EL1. The MMU must be on (SCTLR_EL1.M = 1).
    #[inline(always)]
    pub(crate) fn translate<B: Bus>(
        &mut self,
        bus: &mut B,
        va: u64,
        kind: AccessKind,
        el0: bool,
    ) -> Result<Translation, Fault> {
        let s = &self.sys;
        // Read only on a TLB miss.
        let regs = || WalkRegs {
            tcr: s.tcr_el1,
            ttbr0: s.ttbr0_el1,
            ttbr1: s.ttbr1_el1,
            mair: s.mair_el1,
            wxn: s.sctlr_el1 & SCTLR_WXN != 0,
        };
        self.mmu.translate(bus, regs, va, kind, el0)
    }

    /// Drops every cached stage-1 translation of this vCPU. The host calls it
    /// when another vCPU broadcast a TLBI ([`Bus::broadcast`]).
    pub fn flush_tlb(&mut self) {
        self.mmu.flush();
        self.direct.flush();
    }

    /// Moves the live SP into its bank.
    pub(crate) fn store_sp_bank(&mut self) {
        let sp = self.regs[usize::from(reg::SP)];
        if self.pstate.uses_sp_el1() {
            self.sp_el1 = sp;
        } else {
            self.sp_el0 = sp;
        }
    }

    /// Makes the banked SP of the current mode live.
    pub(crate) fn load_sp_bank(&mut self) {
        self.regs[usize::from(reg::SP)] = if self.pstate.uses_sp_el1() {
            self.sp_el1
        } else {
            self.sp_el0
        };
    }
}

// The host runs each vCPU on its own thread.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Cpu>();
};
