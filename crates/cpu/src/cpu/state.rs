//! The vCPU's architectural state as data, for snapshots and migration.

use serde::{Deserialize, Serialize};

use super::Cpu;
use crate::cache::DecodeCache;
use crate::decode::reg;
use crate::mmu::Mmu;
use crate::pstate::{Pstate, bits};
use crate::sysreg::{SysRegs, SysRegsState};
use crate::timer::TimerState;

/// PSTATE as a snapshot holds it: one field per architectural field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PstateState {
    /// N, Z, C, V in bits 3..0.
    pub nzcv: u8,
    /// D, A, I, F in bits 3..0.
    pub daif: u8,
    /// The exception level: 0 or 1.
    pub el: u8,
    /// PSTATE.SP: at EL1, SP_EL1 is the live stack pointer (always false at EL0).
    pub spsel: bool,
    /// PSTATE.IL: the next instruction takes an Illegal Execution State exception.
    pub il: bool,
    /// PSTATE.SS (software step; kept, not acted on).
    pub ss: bool,
}

/// Everything of one vCPU a stopped VM needs to resume: the registers, PSTATE,
/// the EL1/EL0 system registers, the timers and the IRQ line. Derived state (the
/// decoded-instruction cache, the stage-1 TLB, the exclusive monitor) is not
/// here: restoring drops it. The configuration ([`CpuConfig`](crate::CpuConfig):
/// MPIDR, CNTFRQ, time scale) is not here either: it stays the vCPU's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuState {
    /// X0..X30.
    pub x: [u64; 31],
    /// SP_EL0 (live when `pstate` is EL0 or EL1t).
    pub sp_el0: u64,
    /// SP_EL1 (live when `pstate` is EL1h).
    pub sp_el1: u64,
    /// The program counter: the next instruction to execute.
    pub pc: u64,
    /// PSTATE.
    pub pstate: PstateState,
    /// The system registers.
    pub sys: SysRegsState,
    /// The counter and the two EL1 timers.
    pub timer: TimerState,
    /// The level of the IRQ line from the GIC.
    pub irq_line: bool,
    /// Instructions retired since reset.
    pub retired: u64,
}

/// A [`CpuState`] this vCPU cannot be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuStateError {
    /// PSTATE names an exception level and stack pointer this PE does not have.
    Mode {
        /// PSTATE.EL as saved.
        el: u8,
        /// PSTATE.SP as saved.
        spsel: bool,
    },
    /// PSTATE.NZCV or PSTATE.DAIF has bits beyond the four it holds.
    Flags {
        /// NZCV as saved.
        nzcv: u8,
        /// DAIF as saved.
        daif: u8,
    },
}

impl std::fmt::Display for CpuStateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            CpuStateError::Mode { el, spsel } => write!(
                f,
                "saved PSTATE has EL {el} with SPSel {spsel}: this vCPU has only EL0t, EL1t and EL1h"
            ),
            CpuStateError::Flags { nzcv, daif } => write!(
                f,
                "saved PSTATE has NZCV {nzcv:#x} / DAIF {daif:#x}: each is 4 bits (at most 0xf)"
            ),
        }
    }
}

impl std::error::Error for CpuStateError {}

// Bit 28 (V) and bit 6 (F) are where the 4-bit fields start in SPSR format.
const NZCV_SHIFT: u32 = 28;
const DAIF_SHIFT: u32 = 6;

impl PstateState {
    fn save(p: Pstate) -> PstateState {
        // Each field is 4 bits once shifted down.
        #[allow(clippy::cast_possible_truncation)]
        let nibble = |v: u64, shift: u32| ((v >> shift) & 0xF) as u8;
        PstateState {
            nzcv: nibble(p.nzcv, NZCV_SHIFT),
            daif: nibble(p.daif, DAIF_SHIFT),
            el: p.el,
            spsel: p.spsel,
            il: p.il,
            ss: p.ss,
        }
    }

    fn restored(&self) -> Result<Pstate, CpuStateError> {
        if self.el > 1 || (self.el == 0 && self.spsel) {
            return Err(CpuStateError::Mode {
                el: self.el,
                spsel: self.spsel,
            });
        }
        if self.nzcv > 0xF || self.daif > 0xF {
            return Err(CpuStateError::Flags {
                nzcv: self.nzcv,
                daif: self.daif,
            });
        }
        Ok(Pstate {
            nzcv: (u64::from(self.nzcv) << NZCV_SHIFT) & bits::NZCV,
            daif: (u64::from(self.daif) << DAIF_SHIFT) & bits::DAIF,
            el: self.el,
            spsel: self.spsel,
            il: self.il,
            ss: self.ss,
        })
    }
}

impl Cpu {
    /// This vCPU's architectural state. Call it between [`Cpu::run`]s: `run`
    /// never stops mid-instruction, so the state is always a clean point.
    pub fn save_state(&self) -> CpuState {
        let mut x = [0; 31];
        x.copy_from_slice(&self.regs[..31]);
        let sp = self.regs[usize::from(reg::SP)];
        let (sp_el0, sp_el1) = if self.pstate.uses_sp_el1() {
            (self.sp_el0, sp)
        } else {
            (sp, self.sp_el1)
        };
        CpuState {
            x,
            sp_el0,
            sp_el1,
            pc: self.pc,
            pstate: PstateState::save(self.pstate),
            sys: self.sys.save(),
            timer: self.timer.save(self.retired),
            irq_line: self.irq_line,
            retired: self.retired,
        }
    }

    /// Replaces this vCPU's architectural state with `state`, keeping its
    /// configuration. The decoded-instruction cache, the stage-1 TLB and the
    /// exclusive monitor start empty (clearing the monitor is allowed at any
    /// time). Bits a register does not implement are dropped as an MSR would.
    /// Nothing changes when the state is refused.
    pub fn restore_state(&mut self, state: &CpuState) -> Result<(), CpuStateError> {
        let pstate = state.pstate.restored()?;
        self.regs = [0; reg::FILE];
        self.regs[..31].copy_from_slice(&state.x);
        self.pstate = pstate;
        self.sp_el0 = state.sp_el0;
        self.sp_el1 = state.sp_el1;
        self.load_sp_bank();
        self.pc = state.pc;
        self.sys = SysRegs::restored(&state.sys);
        self.retired = state.retired;
        self.timer.restore(&state.timer, state.retired);
        self.irq_line = state.irq_line;
        self.monitor = None;
        self.cache = DecodeCache::new();
        self.mmu = Mmu::new();
        self.mmu
            .sync(self.sys.tcr_el1, self.sys.ttbr0_el1, self.sys.ttbr1_el1);
        Ok(())
    }
}
