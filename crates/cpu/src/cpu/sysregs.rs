//! The CPU's system registers as MRS, MSR and SYS see them, and as the host
//! reads and writes them; the register set itself is in `crate::sysreg`.

use super::Cpu;
use crate::bus::{Bus, SysRegId};
use crate::pstate::{Pstate, bits};
use crate::sysreg::*;
use crate::timer::TimerId;

const NZCV: SysRegId = SysRegId::new(3, 3, 4, 2, 0);
const DAIF: SysRegId = SysRegId::new(3, 3, 4, 2, 1);
const CURRENT_EL: SysRegId = SysRegId::new(3, 0, 4, 2, 2);
const FPCR: SysRegId = SysRegId::new(3, 3, 4, 4, 0);
const FPSR: SysRegId = SysRegId::new(3, 3, 4, 4, 1);

impl Cpu {
    /// Reads a register as the host (EL2) sees it.
    pub fn sysreg(&self, r: SysReg) -> u64 {
        let count = self.counter();
        let s = &self.sys;
        match r {
            SysReg::SctlrEl1 => s.sctlr_el1,
            SysReg::ActlrEl1 => s.actlr_el1,
            SysReg::CpacrEl1 => s.cpacr_el1,
            SysReg::Ttbr0El1 => s.ttbr0_el1,
            SysReg::Ttbr1El1 => s.ttbr1_el1,
            SysReg::TcrEl1 => s.tcr_el1,
            SysReg::SpsrEl1 => s.spsr_el1,
            SysReg::ElrEl1 => s.elr_el1,
            SysReg::SpEl0 if !self.pstate.uses_sp_el1() => self.sp(),
            SysReg::SpEl0 => self.sp_el0,
            SysReg::SpEl1 if self.pstate.uses_sp_el1() => self.sp(),
            SysReg::SpEl1 => self.sp_el1,
            SysReg::EsrEl1 => s.esr_el1,
            SysReg::Afsr0El1 => s.afsr0_el1,
            SysReg::Afsr1El1 => s.afsr1_el1,
            SysReg::FarEl1 => s.far_el1,
            SysReg::ParEl1 => s.par_el1,
            SysReg::MairEl1 => s.mair_el1,
            SysReg::AmairEl1 => s.amair_el1,
            SysReg::VbarEl1 => s.vbar_el1,
            SysReg::ContextidrEl1 => s.contextidr_el1,
            SysReg::TpidrEl1 => s.tpidr_el1,
            SysReg::TpidrEl0 => s.tpidr_el0,
            SysReg::TpidrroEl0 => s.tpidrro_el0,
            SysReg::CntkctlEl1 => s.cntkctl_el1,
            SysReg::CsselrEl1 => s.csselr_el1,
            SysReg::MidrEl1 => MIDR,
            SysReg::MpidrEl1 => self.config.mpidr | (1 << 31),
            SysReg::CntfrqEl0 => self.config.cntfrq,
            SysReg::CntvctEl0 | SysReg::CntpctEl0 => count,
            SysReg::CntvCtlEl0 => self.timer.ctl(TimerId::Virt, count),
            SysReg::CntvCvalEl0 => self.timer.cval(TimerId::Virt),
            SysReg::CntvTvalEl0 => self.timer.tval(TimerId::Virt, count),
            SysReg::CntpCtlEl0 => self.timer.ctl(TimerId::Phys, count),
            SysReg::CntpCvalEl0 => self.timer.cval(TimerId::Phys),
            SysReg::CntpTvalEl0 => self.timer.tval(TimerId::Phys, count),
        }
    }

    /// Writes a register as the host (EL2) can. Read-only fields stay as they
    /// are; MPIDR_EL1 and CNTFRQ_EL0 are writable here (the host configures
    /// them); CNTVCT/CNTPCT are not (use [`Cpu::advance_counter`]).
    pub fn set_sysreg(&mut self, r: SysReg, v: u64) {
        let count = self.counter();
        let s = &mut self.sys;
        match r {
            SysReg::SctlrEl1 => s.sctlr_el1 = v & !SCTLR_M,
            SysReg::ActlrEl1 => s.actlr_el1 = v,
            SysReg::CpacrEl1 => s.cpacr_el1 = v & CPACR_FPEN,
            SysReg::Ttbr0El1 => s.ttbr0_el1 = v,
            SysReg::Ttbr1El1 => s.ttbr1_el1 = v,
            SysReg::TcrEl1 => s.tcr_el1 = v,
            SysReg::SpsrEl1 => s.spsr_el1 = v & SPSR_MASK,
            SysReg::ElrEl1 => s.elr_el1 = v,
            SysReg::SpEl0 if !self.pstate.uses_sp_el1() => self.set_sp(v),
            SysReg::SpEl0 => self.sp_el0 = v,
            SysReg::SpEl1 if self.pstate.uses_sp_el1() => self.set_sp(v),
            SysReg::SpEl1 => self.sp_el1 = v,
            SysReg::EsrEl1 => s.esr_el1 = v & 0xFFFF_FFFF,
            SysReg::Afsr0El1 => s.afsr0_el1 = v,
            SysReg::Afsr1El1 => s.afsr1_el1 = v,
            SysReg::FarEl1 => s.far_el1 = v,
            SysReg::ParEl1 => s.par_el1 = v,
            SysReg::MairEl1 => s.mair_el1 = v,
            SysReg::AmairEl1 => s.amair_el1 = v,
            SysReg::VbarEl1 => s.vbar_el1 = v & !0x7FF,
            SysReg::ContextidrEl1 => s.contextidr_el1 = v & 0xFFFF_FFFF,
            SysReg::TpidrEl1 => s.tpidr_el1 = v,
            SysReg::TpidrEl0 => s.tpidr_el0 = v,
            SysReg::TpidrroEl0 => s.tpidrro_el0 = v,
            SysReg::CntkctlEl1 => s.cntkctl_el1 = v & CNTKCTL_MASK,
            SysReg::CsselrEl1 => s.csselr_el1 = v & 0xF,
            SysReg::MidrEl1 | SysReg::CntvctEl0 | SysReg::CntpctEl0 => {}
            SysReg::MpidrEl1 => self.config.mpidr = v & !(1 << 31),
            SysReg::CntfrqEl0 => self.config.cntfrq = v,
            SysReg::CntvCtlEl0 => self.timer.set_ctl(TimerId::Virt, v),
            SysReg::CntvCvalEl0 => self.timer.set_cval(TimerId::Virt, v),
            SysReg::CntvTvalEl0 => self.timer.set_tval(TimerId::Virt, count, v),
            SysReg::CntpCtlEl0 => self.timer.set_ctl(TimerId::Phys, v),
            SysReg::CntpCvalEl0 => self.timer.set_cval(TimerId::Phys, v),
            SysReg::CntpTvalEl0 => self.timer.set_tval(TimerId::Phys, count, v),
        }
    }

    /// Whether SP alignment checking applies at the current EL.
    #[inline]
    pub(crate) fn sp_alignment_checked(&self) -> bool {
        let bit = if self.pstate.el == 0 {
            SCTLR_SA0
        } else {
            SCTLR_SA
        };
        self.sys.sctlr_el1 & bit != 0
    }

    /// Whether WFI (or WFE) at the current EL traps to EL1: at EL0 unless
    /// SCTLR_EL1.nTWI (nTWE) is set.
    pub(crate) fn wait_trapped(&self, wfe: bool) -> bool {
        let allow = if wfe { SCTLR_NTWE } else { SCTLR_NTWI };
        self.pstate.el == 0 && self.sys.sctlr_el1 & allow == 0
    }

    /// Whether CPACR_EL1.FPEN traps SIMD/FP at the current EL.
    pub(crate) fn fp_trapped(&self) -> bool {
        match (self.sys.cpacr_el1 & CPACR_FPEN) >> 20 {
            0b11 => false,
            0b01 => self.pstate.el == 0,
            _ => true,
        }
    }

    /// The EL0 access rule for an owned register; `write` for MSR.
    fn el0_check(&self, id: SysRegId, r: Option<SysReg>, write: bool) -> Result<(), SysFault> {
        if self.pstate.el != 0 {
            return Ok(());
        }
        let kctl = self.sys.cntkctl_el1;
        let allowed = |enabled: bool| {
            if enabled {
                Ok(())
            } else {
                Err(SysFault::Trapped)
            }
        };
        match r {
            Some(SysReg::TpidrEl0) => Ok(()),
            Some(SysReg::TpidrroEl0) if !write => Ok(()),
            Some(SysReg::CntfrqEl0) if !write => {
                allowed(kctl & (CNTKCTL_EL0PCTEN | CNTKCTL_EL0VCTEN) != 0)
            }
            Some(SysReg::CntvctEl0) if !write => allowed(kctl & CNTKCTL_EL0VCTEN != 0),
            Some(SysReg::CntpctEl0) if !write => allowed(kctl & CNTKCTL_EL0PCTEN != 0),
            Some(SysReg::CntvCtlEl0 | SysReg::CntvCvalEl0 | SysReg::CntvTvalEl0) => {
                allowed(kctl & CNTKCTL_EL0VTEN != 0)
            }
            Some(SysReg::CntpCtlEl0 | SysReg::CntpCvalEl0 | SysReg::CntpTvalEl0) => {
                allowed(kctl & CNTKCTL_EL0PTEN != 0)
            }
            Some(_) => Err(SysFault::Undefined),
            None if id == NZCV => Ok(()),
            None if id == DAIF => allowed(self.sys.sctlr_el1 & SCTLR_UMA != 0),
            None if id == FPCR || id == FPSR => Ok(()),
            None if id == SysRegId::new(3, 3, 0, 0, 1) && !write => {
                allowed(self.sys.sctlr_el1 & SCTLR_UCT != 0)
            }
            None if id == SysRegId::new(3, 3, 0, 0, 7) && !write => Ok(()),
            None => Err(SysFault::Undefined),
        }
    }

    /// MRS. Returns the value and whether it came from the bus.
    pub(crate) fn mrs<B: Bus>(
        &mut self,
        bus: &mut B,
        id: SysRegId,
    ) -> Result<(u64, bool), SysFault> {
        let owned = SysReg::from_id(id);
        self.el0_check(id, owned, false)?;
        if let Some(r) = owned {
            return match r {
                SysReg::SpEl0 if !self.pstate.spsel => Err(SysFault::Undefined),
                SysReg::SpEl1 => Err(SysFault::Undefined),
                _ => Ok((self.sysreg(r), false)),
            };
        }
        let value = match (id.op0, id.op1, id.crn, id.crm, id.op2) {
            (3, 3, 4, 2, 0) => self.pstate.nzcv,
            (3, 3, 4, 2, 1) => self.pstate.daif,
            (3, 0, 4, 2, 0) => u64::from(self.pstate.spsel),
            (3, 0, 4, 2, 2) => u64::from(self.pstate.el) << 2,
            (3, 3, 4, 4, 0 | 1) => return Err(self.fp_fault()),
            (3, 3, 0, 0, 1) => CTR,
            (3, 3, 0, 0, 7) => DCZID,
            (3, 0, 0, 0, 6) => 0,         // REVIDR_EL1
            (3, 1, 0, 0, 0 | 1 | 7) => 0, // CCSIDR, CLIDR (no caches to maintain), AIDR
            (3, 0, 0, 4, 0) => ID_AA64PFR0,
            (3, 0, 0, 5, 0) => ID_AA64DFR0,
            (3, 0, 0, 6, 0) => ID_AA64ISAR0,
            (3, 0, 0, 6, 1) => ID_AA64ISAR1,
            (3, 0, 0, 7, 0) => ID_AA64MMFR0,
            // The rest of the ID space reads as zero (AArch32 and unused IDs).
            (3, 0, 0, 1..=7, _) => 0,
            _ => {
                if self.pstate.el == 0 {
                    return Err(SysFault::Undefined);
                }
                return bus
                    .sysreg_read(id)
                    .map(|v| (v, true))
                    .ok_or(SysFault::Undefined);
            }
        };
        Ok((value, false))
    }

    /// MSR (register).
    pub(crate) fn msr<B: Bus>(
        &mut self,
        bus: &mut B,
        id: SysRegId,
        v: u64,
    ) -> Result<MsrEffect, SysFault> {
        let owned = SysReg::from_id(id);
        self.el0_check(id, owned, true)?;
        if let Some(r) = owned {
            return match r {
                SysReg::SpEl0 if !self.pstate.spsel => Err(SysFault::Undefined),
                SysReg::SpEl1
                | SysReg::MidrEl1
                | SysReg::MpidrEl1
                | SysReg::CntfrqEl0
                | SysReg::CntvctEl0
                | SysReg::CntpctEl0 => Err(SysFault::Undefined),
                SysReg::CntvCtlEl0
                | SysReg::CntvCvalEl0
                | SysReg::CntvTvalEl0
                | SysReg::CntpCtlEl0
                | SysReg::CntpCvalEl0
                | SysReg::CntpTvalEl0 => {
                    let before = self.timer_irq_lines();
                    self.set_sysreg(r, v);
                    Ok(if self.timer_irq_lines() == before {
                        MsrEffect::Resync
                    } else {
                        MsrEffect::TimerLines
                    })
                }
                _ => {
                    self.set_sysreg(r, v);
                    Ok(MsrEffect::Plain)
                }
            };
        }
        match (id.op0, id.op1, id.crn, id.crm, id.op2) {
            (3, 3, 4, 2, 0) => {
                self.pstate.nzcv = v & bits::NZCV;
                Ok(MsrEffect::Plain)
            }
            (3, 3, 4, 2, 1) => {
                self.pstate.daif = v & bits::DAIF;
                Ok(MsrEffect::Resync)
            }
            (3, 0, 4, 2, 0) => {
                self.set_spsel(v & 1 != 0);
                Ok(MsrEffect::Resync)
            }
            (3, 3, 4, 4, 0 | 1) => Err(self.fp_fault()),
            _ if id == CURRENT_EL => Err(SysFault::Undefined),
            (3, _, 0, _, _) => Err(SysFault::Undefined), // ID and cache-ID registers
            _ => {
                if self.pstate.el == 0 {
                    return Err(SysFault::Undefined);
                }
                if bus.sysreg_write(id, v) {
                    Ok(MsrEffect::Foreign)
                } else {
                    Err(SysFault::Undefined)
                }
            }
        }
    }

    /// FPCR/FPSR: trapped by CPACR_EL1.FPEN, else UNDEFINED (no FP here).
    fn fp_fault(&self) -> SysFault {
        if self.fp_trapped() {
            SysFault::FpTrapped
        } else {
            SysFault::Undefined
        }
    }

    /// MSR SPSel (EL1 only; UNDEFINED at EL0).
    pub(crate) fn set_spsel(&mut self, spsel: bool) {
        let p = Pstate {
            spsel,
            ..self.pstate
        };
        self.switch_pstate(p);
    }

    /// SYS: cache and TLB maintenance and address translation. `v` is Xt.
    pub(crate) fn sys_op(&mut self, id: SysRegId, v: u64) -> Result<(), SysFault> {
        let el0 = self.pstate.el == 0;
        let uci = self.sys.sctlr_el1 & SCTLR_UCI != 0;
        let el0_maintenance = if uci { Ok(()) } else { Err(SysFault::Trapped) };
        match (id.op1, id.crn, id.crm, id.op2) {
            // IC IALLUIS, IC IALLU. IC is local: another vCPU's decoded copy of
            // the page is the host's to drop (`invalidate_decoded`).
            (0, 7, 1 | 5, 0) if !el0 => {
                self.invalidate_all_decoded();
                Ok(())
            }
            // IC IVAU
            (3, 7, 5, 1) => {
                if el0 {
                    el0_maintenance?;
                }
                self.invalidate_decoded(v);
                Ok(())
            }
            // DC CVAC, CVAU, CVAP, CIVAC: memory is coherent, nothing to do.
            (3, 7, 10 | 11 | 12 | 14, 1) => {
                if el0 {
                    el0_maintenance?;
                }
                Ok(())
            }
            // DC IVAC, ISW, CSW, CISW.
            (0, 7, 6, 1 | 2) | (0, 7, 10 | 14, 2) if !el0 => Ok(()),
            // AT S1E1R, S1E1W, S1E0R, S1E0W: stage 1 is off, so PA = VA.
            (0, 7, 8, 0..=3) if !el0 => {
                self.sys.par_el1 = v & 0x0000_FFFF_FFFF_F000;
                Ok(())
            }
            // TLBI: there are no stage-1 TLBs.
            (0, 8, _, _) if !el0 => Ok(()),
            _ => Err(SysFault::Undefined),
        }
    }
}
