//! Taking exceptions to EL1 and returning from them, on the CPU's state
//! (D1.10 "Exception entry", D1.11 "Exception return"); the kinds are in
//! `crate::exception`.

use apf_abi::esr::{DataAbort, Esr, InstructionAbort, ec, fsc};

use super::Cpu;
use crate::exception::{AccessInfo, Exception};
use crate::pstate::{Pstate, bits};

impl Cpu {
    /// Takes exception `e` to EL1 exactly as the architecture does: SPSR_EL1 =
    /// PSTATE, ELR_EL1 = PC, ESR_EL1 and FAR_EL1 where the kind has them, PSTATE =
    /// EL1h with D, A, I, F masked, PC = VBAR_EL1 + the vector offset for the
    /// source EL and SP and the kind. The local exclusive monitor is cleared.
    pub fn take_exception(&mut self, e: Exception) {
        let from = match (self.pstate.el, self.pstate.spsel) {
            (0, _) => 0x400,
            (_, false) => 0x000,
            (_, true) => 0x200,
        };
        self.sys.spsr_el1 = self.pstate.to_spsr();
        self.sys.elr_el1 = self.pc;
        match e {
            Exception::Synchronous { esr, far } => {
                self.sys.esr_el1 = esr.0;
                if let Some(far) = far {
                    self.sys.far_el1 = far;
                }
            }
            Exception::SError { esr } => self.sys.esr_el1 = esr.0,
            Exception::Irq | Exception::Fiq => {}
        }
        self.switch_pstate(Pstate {
            nzcv: self.pstate.nzcv,
            daif: bits::DAIF,
            el: 1,
            spsel: true,
            il: false,
            ss: false,
        });
        self.monitor = None;
        self.pc = self.sys.vbar_el1.wrapping_add(from + e.vector_offset());
    }

    /// ERET from EL1: restores PSTATE from SPSR_EL1 and PC from ELR_EL1. A return
    /// to a mode this PE cannot be in is an illegal exception return: EL and SP
    /// stay, PSTATE.IL is set, and the next instruction takes an Illegal
    /// Execution State exception.
    pub(crate) fn exception_return(&mut self) {
        let spsr = self.sys.spsr_el1;
        match Pstate::from_spsr(spsr) {
            Some(target) => self.switch_pstate(target),
            None => {
                self.pstate.nzcv = spsr & bits::NZCV;
                self.pstate.daif = spsr & bits::DAIF;
                self.pstate.il = true;
            }
        }
        self.monitor = None;
        self.pc = self.sys.elr_el1;
    }

    /// Installs `p`, moving the live SP to its bank and loading the new one.
    pub(crate) fn switch_pstate(&mut self, p: Pstate) {
        // With the MMU on, what a direct page allows depends on the EL.
        if p.el != self.pstate.el && self.sys.sctlr_el1 & crate::sysreg::SCTLR_M != 0 {
            self.direct.flush();
        }
        self.store_sp_bank();
        self.pstate = p;
        self.load_sp_bank();
    }

    /// Synchronous exception with syndrome `esr` at the current PC.
    pub(crate) fn sync_exception(&mut self, esr: Esr, far: Option<u64>) {
        self.take_exception(Exception::Synchronous { esr, far });
    }

    /// UNDEFINED instruction at the current PC.
    pub(crate) fn undefined(&mut self) {
        self.sync_exception(Esr::undefined(), None);
    }

    /// A data abort taken to EL1 (alignment, external) for the access at `addr`.
    pub(crate) fn data_abort_el1(&mut self, addr: u64, write: bool, status: u32) {
        let class = if self.pstate.el == 0 {
            ec::DABT_LOWER
        } else {
            ec::DABT_CURRENT
        };
        let abort = DataAbort {
            syndrome: None,
            write,
            s1ptw: false,
            cache_maintenance: false,
            external: false,
            far_not_valid: false,
            dfsc: status,
        };
        self.sync_exception(abort.encode(class), Some(addr));
    }

    /// The ESR_EL2 of a stage-2 translation fault on a data access.
    pub(crate) fn stage2_data_syndrome(info: AccessInfo) -> Esr {
        DataAbort {
            syndrome: info.syndrome,
            write: info.write,
            s1ptw: false,
            cache_maintenance: false,
            external: false,
            far_not_valid: false,
            dfsc: fsc::TRANSLATION_L3,
        }
        .encode(ec::DABT_LOWER)
    }

    /// The ESR_EL2 of a stage-2 translation fault on an instruction fetch.
    pub(crate) fn stage2_fetch_syndrome() -> Esr {
        InstructionAbort {
            s1ptw: false,
            external: false,
            far_not_valid: false,
            ifsc: fsc::TRANSLATION_L3,
        }
        .encode(ec::IABT_LOWER)
    }

    /// A synchronous external abort on the fetch at the current PC.
    pub(crate) fn fetch_abort_el1(&mut self) {
        self.instruction_abort_el1(fsc::SYNC_EXTERNAL);
    }

    /// An instruction abort with fault status `status` on the fetch at the current PC.
    pub(crate) fn instruction_abort_el1(&mut self, status: u32) {
        let class = if self.pstate.el == 0 {
            ec::IABT_LOWER
        } else {
            ec::IABT_CURRENT
        };
        let abort = InstructionAbort {
            s1ptw: false,
            external: false,
            far_not_valid: false,
            ifsc: status,
        };
        self.sync_exception(abort.encode(class), Some(self.pc));
    }

    /// The ESR_EL2 of a stage-2 fault on a descriptor read of a data access's
    /// stage-1 walk: S1PTW, WnR = 0 (the walk reads), ISV = 0. `maintenance`
    /// (CM) marks an AT instruction's walk.
    pub(crate) fn stage2_walk_data_syndrome(maintenance: bool) -> Esr {
        DataAbort {
            syndrome: None,
            write: false,
            s1ptw: true,
            cache_maintenance: maintenance,
            external: false,
            far_not_valid: false,
            dfsc: fsc::TRANSLATION_L3,
        }
        .encode(ec::DABT_LOWER)
    }

    /// The ESR_EL2 of a stage-2 fault on a descriptor read of an instruction
    /// fetch's stage-1 walk.
    pub(crate) fn stage2_walk_fetch_syndrome() -> Esr {
        InstructionAbort {
            s1ptw: true,
            external: false,
            far_not_valid: false,
            ifsc: fsc::TRANSLATION_L3,
        }
        .encode(ec::IABT_LOWER)
    }
}
