//! System registers: the EL1/EL0 registers this CPU owns, their access rules
//! from EL0 and EL1, the ID registers, and the host's view of them. Registers
//! the CPU does not own (the GIC CPU interface) go to the [`Bus`].

use crate::Cpu;
use crate::bus::{Bus, SysRegId};
use crate::decode::reg;
use crate::pstate::{Pstate, bits};
use crate::timer::TimerId;

/// The system registers the host can read and write with [`Cpu::sysreg`] and
/// [`Cpu::set_sysreg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the names are the architectural register names
pub enum SysReg {
    SctlrEl1,
    ActlrEl1,
    CpacrEl1,
    Ttbr0El1,
    Ttbr1El1,
    TcrEl1,
    SpsrEl1,
    ElrEl1,
    SpEl0,
    SpEl1,
    EsrEl1,
    Afsr0El1,
    Afsr1El1,
    FarEl1,
    ParEl1,
    MairEl1,
    AmairEl1,
    VbarEl1,
    ContextidrEl1,
    TpidrEl1,
    TpidrEl0,
    TpidrroEl0,
    CntkctlEl1,
    CsselrEl1,
    MidrEl1,
    MpidrEl1,
    CntfrqEl0,
    CntvctEl0,
    CntpctEl0,
    CntvCtlEl0,
    CntvCvalEl0,
    CntvTvalEl0,
    CntpCtlEl0,
    CntpCvalEl0,
    CntpTvalEl0,
}

impl SysReg {
    /// Every register, for iteration.
    pub const ALL: [SysReg; 35] = [
        SysReg::SctlrEl1,
        SysReg::ActlrEl1,
        SysReg::CpacrEl1,
        SysReg::Ttbr0El1,
        SysReg::Ttbr1El1,
        SysReg::TcrEl1,
        SysReg::SpsrEl1,
        SysReg::ElrEl1,
        SysReg::SpEl0,
        SysReg::SpEl1,
        SysReg::EsrEl1,
        SysReg::Afsr0El1,
        SysReg::Afsr1El1,
        SysReg::FarEl1,
        SysReg::ParEl1,
        SysReg::MairEl1,
        SysReg::AmairEl1,
        SysReg::VbarEl1,
        SysReg::ContextidrEl1,
        SysReg::TpidrEl1,
        SysReg::TpidrEl0,
        SysReg::TpidrroEl0,
        SysReg::CntkctlEl1,
        SysReg::CsselrEl1,
        SysReg::MidrEl1,
        SysReg::MpidrEl1,
        SysReg::CntfrqEl0,
        SysReg::CntvctEl0,
        SysReg::CntpctEl0,
        SysReg::CntvCtlEl0,
        SysReg::CntvCvalEl0,
        SysReg::CntvTvalEl0,
        SysReg::CntpCtlEl0,
        SysReg::CntpCvalEl0,
        SysReg::CntpTvalEl0,
    ];

    /// The MRS/MSR encoding.
    pub const fn id(self) -> SysRegId {
        let (op0, op1, crn, crm, op2) = match self {
            SysReg::SctlrEl1 => (3, 0, 1, 0, 0),
            SysReg::ActlrEl1 => (3, 0, 1, 0, 1),
            SysReg::CpacrEl1 => (3, 0, 1, 0, 2),
            SysReg::Ttbr0El1 => (3, 0, 2, 0, 0),
            SysReg::Ttbr1El1 => (3, 0, 2, 0, 1),
            SysReg::TcrEl1 => (3, 0, 2, 0, 2),
            SysReg::SpsrEl1 => (3, 0, 4, 0, 0),
            SysReg::ElrEl1 => (3, 0, 4, 0, 1),
            SysReg::SpEl0 => (3, 0, 4, 1, 0),
            SysReg::SpEl1 => (3, 4, 4, 1, 0),
            SysReg::EsrEl1 => (3, 0, 5, 2, 0),
            SysReg::Afsr0El1 => (3, 0, 5, 1, 0),
            SysReg::Afsr1El1 => (3, 0, 5, 1, 1),
            SysReg::FarEl1 => (3, 0, 6, 0, 0),
            SysReg::ParEl1 => (3, 0, 7, 4, 0),
            SysReg::MairEl1 => (3, 0, 10, 2, 0),
            SysReg::AmairEl1 => (3, 0, 10, 3, 0),
            SysReg::VbarEl1 => (3, 0, 12, 0, 0),
            SysReg::ContextidrEl1 => (3, 0, 13, 0, 1),
            SysReg::TpidrEl1 => (3, 0, 13, 0, 4),
            SysReg::TpidrEl0 => (3, 3, 13, 0, 2),
            SysReg::TpidrroEl0 => (3, 3, 13, 0, 3),
            SysReg::CntkctlEl1 => (3, 0, 14, 1, 0),
            SysReg::CsselrEl1 => (3, 2, 0, 0, 0),
            SysReg::MidrEl1 => (3, 0, 0, 0, 0),
            SysReg::MpidrEl1 => (3, 0, 0, 0, 5),
            SysReg::CntfrqEl0 => (3, 3, 14, 0, 0),
            SysReg::CntpctEl0 => (3, 3, 14, 0, 1),
            SysReg::CntvctEl0 => (3, 3, 14, 0, 2),
            SysReg::CntpTvalEl0 => (3, 3, 14, 2, 0),
            SysReg::CntpCtlEl0 => (3, 3, 14, 2, 1),
            SysReg::CntpCvalEl0 => (3, 3, 14, 2, 2),
            SysReg::CntvTvalEl0 => (3, 3, 14, 3, 0),
            SysReg::CntvCtlEl0 => (3, 3, 14, 3, 1),
            SysReg::CntvCvalEl0 => (3, 3, 14, 3, 2),
        };
        SysRegId::new(op0, op1, crn, crm, op2)
    }

    /// The register with encoding `id`, if the CPU owns one.
    pub fn from_id(id: SysRegId) -> Option<SysReg> {
        SysReg::ALL.into_iter().find(|r| r.id() == id)
    }
}

/// Reset value of SCTLR_EL1: the RES1 bits (29, 28, 23, 22, 20, 11), MMU off,
/// no alignment or SP alignment checking.
const SCTLR_RESET: u64 = 0x30D0_0800;
/// SCTLR_EL1.M is RAZ/WI: the stage-1 MMU is not implemented.
const SCTLR_M: u64 = 1 << 0;
const SCTLR_SA: u64 = 1 << 3;
const SCTLR_SA0: u64 = 1 << 4;
const SCTLR_UMA: u64 = 1 << 9;
const SCTLR_NTWI: u64 = 1 << 16;
const SCTLR_NTWE: u64 = 1 << 18;
const SCTLR_UCT: u64 = 1 << 15;
const SCTLR_UCI: u64 = 1 << 26;
/// CPACR_EL1.FPEN, the only field implemented.
const CPACR_FPEN: u64 = 0b11 << 20;
/// SPSR bits that exist on this PE.
const SPSR_MASK: u64 = bits::NZCV | bits::SS | bits::IL | bits::DAIF | bits::M;
const CNTKCTL_MASK: u64 = 0x3FF;
const CNTKCTL_EL0PCTEN: u64 = 1 << 0;
const CNTKCTL_EL0VCTEN: u64 = 1 << 1;
const CNTKCTL_EL0VTEN: u64 = 1 << 8;
const CNTKCTL_EL0PTEN: u64 = 1 << 9;

/// MIDR_EL1: implementer 0 (reserved for software use), architecture 0xF.
const MIDR: u64 = 0x000F_0000;
/// ID_AA64PFR0_EL1: EL0 and EL1 AArch64 only, no FP, no AdvSIMD, GICv3 system registers.
const ID_AA64PFR0: u64 = 0x01FF_0011;
/// ID_AA64ISAR0_EL1: CRC32, LSE atomics.
const ID_AA64ISAR0: u64 = 0x0021_0000;
/// ID_AA64ISAR1_EL1: LDAPR (FEAT_LRCPC).
const ID_AA64ISAR1: u64 = 0x0010_0000;
/// ID_AA64MMFR0_EL1: 40-bit PA, 4 KiB granule only.
const ID_AA64MMFR0: u64 = 0x0F00_0002;
/// ID_AA64DFR0_EL1: Armv8.0 debug architecture.
const ID_AA64DFR0: u64 = 0x6;
/// CTR_EL0: 64-byte lines, PIPT instruction cache.
const CTR: u64 = 0x8444_C004;
/// DCZID_EL0: DC ZVA prohibited (it would fault on Device memory anyway).
const DCZID: u64 = 0x14;

/// The EL1/EL0 registers this CPU keeps.
#[derive(Debug, Clone)]
pub(crate) struct SysRegs {
    pub(crate) sctlr_el1: u64,
    pub(crate) actlr_el1: u64,
    pub(crate) cpacr_el1: u64,
    pub(crate) ttbr0_el1: u64,
    pub(crate) ttbr1_el1: u64,
    pub(crate) tcr_el1: u64,
    pub(crate) spsr_el1: u64,
    pub(crate) elr_el1: u64,
    pub(crate) esr_el1: u64,
    pub(crate) afsr0_el1: u64,
    pub(crate) afsr1_el1: u64,
    pub(crate) far_el1: u64,
    pub(crate) par_el1: u64,
    pub(crate) mair_el1: u64,
    pub(crate) amair_el1: u64,
    pub(crate) vbar_el1: u64,
    pub(crate) contextidr_el1: u64,
    pub(crate) tpidr_el1: u64,
    pub(crate) tpidr_el0: u64,
    pub(crate) tpidrro_el0: u64,
    pub(crate) cntkctl_el1: u64,
    pub(crate) csselr_el1: u64,
}

impl SysRegs {
    pub(crate) fn reset() -> SysRegs {
        SysRegs {
            sctlr_el1: SCTLR_RESET,
            actlr_el1: 0,
            cpacr_el1: 0,
            ttbr0_el1: 0,
            ttbr1_el1: 0,
            tcr_el1: 0,
            spsr_el1: 0,
            elr_el1: 0,
            esr_el1: 0,
            afsr0_el1: 0,
            afsr1_el1: 0,
            far_el1: 0,
            par_el1: 0,
            mair_el1: 0,
            amair_el1: 0,
            vbar_el1: 0,
            contextidr_el1: 0,
            tpidr_el1: 0,
            tpidr_el0: 0,
            tpidrro_el0: 0,
            cntkctl_el1: 0,
            csselr_el1: 0,
        }
    }
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
}

/// What a successful MSR changed, so the run loop knows what to recheck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MsrEffect {
    /// Nothing the run loop depends on.
    Plain,
    /// PSTATE or a timer deadline changed: recheck interrupts and deadlines.
    Resync,
    /// A timer output level changed: exit so the host can update the GIC.
    TimerLines,
    /// The write went to the bus: check for a kick.
    Foreign,
}

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

/// Register slot of an MRS/MSR/SYS transfer register, as the raw number.
pub(crate) fn raw_rt(slot: u8) -> u64 {
    u64::from(if slot >= reg::ZR { 31 } else { slot })
}
