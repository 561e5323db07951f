//! System registers: the EL1/EL0 registers this CPU owns, their access rules
//! from EL0 and EL1, the ID registers, and the host's view of them. Registers
//! the CPU does not own (the GIC CPU interface) go to the [`Bus`](crate::Bus).

use serde::{Deserialize, Serialize};

use crate::bus::SysRegId;
use crate::decode::reg;
use crate::pstate::bits;

/// The system registers the host can read and write with [`Cpu::sysreg`](crate::Cpu::sysreg) and
/// [`Cpu::set_sysreg`](crate::Cpu::set_sysreg).
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
pub(crate) const SCTLR_RESET: u64 = 0x30D0_0800;
/// SCTLR_EL1.M: the stage-1 MMU is on.
pub(crate) const SCTLR_M: u64 = 1 << 0;
/// SCTLR_EL1.A: alignment checking for Normal memory too.
pub(crate) const SCTLR_A: u64 = 1 << 1;
pub(crate) const SCTLR_C: u64 = 1 << 2;
pub(crate) const SCTLR_I: u64 = 1 << 12;
pub(crate) const SCTLR_DZE: u64 = 1 << 14;
pub(crate) const SCTLR_WXN: u64 = 1 << 19;
pub(crate) const SCTLR_SA: u64 = 1 << 3;
pub(crate) const SCTLR_SA0: u64 = 1 << 4;
pub(crate) const SCTLR_UMA: u64 = 1 << 9;
pub(crate) const SCTLR_NTWI: u64 = 1 << 16;
pub(crate) const SCTLR_NTWE: u64 = 1 << 18;
pub(crate) const SCTLR_UCT: u64 = 1 << 15;
pub(crate) const SCTLR_UCI: u64 = 1 << 26;
/// The SCTLR_EL1 bits that exist on this PE (the rest are RES0, or RES1 in
/// [`SCTLR_RESET`]). C and I are stored only (there are no caches to model);
/// the others are honoured.
pub(crate) const SCTLR_WRITABLE: u64 = SCTLR_M
    | SCTLR_A
    | SCTLR_C
    | SCTLR_SA
    | SCTLR_SA0
    | SCTLR_UMA
    | SCTLR_I
    | SCTLR_DZE
    | SCTLR_UCT
    | SCTLR_NTWI
    | SCTLR_NTWE
    | SCTLR_WXN
    | SCTLR_UCI;
/// CPACR_EL1.FPEN, the only field implemented.
pub(crate) const CPACR_FPEN: u64 = 0b11 << 20;
/// SPSR bits that exist on this PE.
pub(crate) const SPSR_MASK: u64 = bits::NZCV | bits::SS | bits::IL | bits::DAIF | bits::M;
pub(crate) const CNTKCTL_MASK: u64 = 0x3FF;
pub(crate) const CNTKCTL_EL0PCTEN: u64 = 1 << 0;
pub(crate) const CNTKCTL_EL0VCTEN: u64 = 1 << 1;
pub(crate) const CNTKCTL_EL0VTEN: u64 = 1 << 8;
pub(crate) const CNTKCTL_EL0PTEN: u64 = 1 << 9;

/// MIDR_EL1: implementer 0 (reserved for software use), architecture 0xF.
pub(crate) const MIDR: u64 = 0x000F_0000;
/// ID_AA64PFR0_EL1: EL0 and EL1 AArch64 only (no EL2/EL3), no FP, no AdvSIMD,
/// GICv3 system registers, and CSV2 = CSV3 = 1: an interpreter does not
/// speculate, so Linux needs no Spectre-v2 or Meltdown (KPTI) mitigation.
pub(crate) const ID_AA64PFR0: u64 = 0x1100_0000_01FF_0011;
/// ID_AA64ISAR0_EL1: CRC32, LSE atomics.
pub(crate) const ID_AA64ISAR0: u64 = 0x0021_0000;
/// ID_AA64ISAR1_EL1: LDAPR (FEAT_LRCPC).
pub(crate) const ID_AA64ISAR1: u64 = 0x0010_0000;
/// ID_AA64MMFR0_EL1: 40-bit PA, 16-bit ASIDs, 4 KiB granule only (TGran16 = 0,
/// TGran64 = 0xF), no mixed endianness. MMFR1..4 read as zero: no hardware
/// AF/DBM, no PAN, no VHE, 8-bit VMIDs, no CnP, 48-bit VAs.
pub(crate) const ID_AA64MMFR0: u64 = 0x0F00_0022;
/// ID_AA64DFR0_EL1: Armv8.0 debug architecture, no PMU, six breakpoints and
/// four watchpoints (BRPs = 5, WRPs = 3), whose registers are RAZ/WI so none
/// can be enabled.
pub(crate) const ID_AA64DFR0: u64 = 0x0030_5006;
/// CTR_EL0: 64-byte lines, PIPT instruction cache.
pub(crate) const CTR: u64 = 0x8444_C004;
/// DCZID_EL0: DC ZVA zeroes 64 bytes (BS = log2 of 16 words); DZP (bit 4) is
/// added at EL0 when SCTLR_EL1.DZE traps it.
pub(crate) const DCZID: u64 = 0x4;
pub(crate) const DCZID_DZP: u64 = 1 << 4;
/// DC ZVA block size in bytes.
pub(crate) const DC_ZVA_BYTES: u64 = 64;

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
    /// OSLSR_EL1.OSLK: the OS lock, set by OSLAR_EL1 (locked at cold reset).
    pub(crate) os_lock: bool,
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
            os_lock: true,
        }
    }
}

/// The EL1/EL0 system registers as a snapshot holds them (the architectural
/// names; the ID registers are constants and MPIDR/CNTFRQ are configuration,
/// so neither is here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // the names are the architectural register names
pub struct SysRegsState {
    pub sctlr_el1: u64,
    pub actlr_el1: u64,
    pub cpacr_el1: u64,
    pub ttbr0_el1: u64,
    pub ttbr1_el1: u64,
    pub tcr_el1: u64,
    pub spsr_el1: u64,
    pub elr_el1: u64,
    pub esr_el1: u64,
    pub afsr0_el1: u64,
    pub afsr1_el1: u64,
    pub far_el1: u64,
    pub par_el1: u64,
    pub mair_el1: u64,
    pub amair_el1: u64,
    pub vbar_el1: u64,
    pub contextidr_el1: u64,
    pub tpidr_el1: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub cntkctl_el1: u64,
    pub csselr_el1: u64,
    /// OSLSR_EL1.OSLK: the OS lock.
    pub os_lock: bool,
}

impl SysRegs {
    pub(crate) fn save(&self) -> SysRegsState {
        SysRegsState {
            sctlr_el1: self.sctlr_el1,
            actlr_el1: self.actlr_el1,
            cpacr_el1: self.cpacr_el1,
            ttbr0_el1: self.ttbr0_el1,
            ttbr1_el1: self.ttbr1_el1,
            tcr_el1: self.tcr_el1,
            spsr_el1: self.spsr_el1,
            elr_el1: self.elr_el1,
            esr_el1: self.esr_el1,
            afsr0_el1: self.afsr0_el1,
            afsr1_el1: self.afsr1_el1,
            far_el1: self.far_el1,
            par_el1: self.par_el1,
            mair_el1: self.mair_el1,
            amair_el1: self.amair_el1,
            vbar_el1: self.vbar_el1,
            contextidr_el1: self.contextidr_el1,
            tpidr_el1: self.tpidr_el1,
            tpidr_el0: self.tpidr_el0,
            tpidrro_el0: self.tpidrro_el0,
            cntkctl_el1: self.cntkctl_el1,
            csselr_el1: self.csselr_el1,
            os_lock: self.os_lock,
        }
    }

    /// The registers `s` describes, with the bits this PE does not implement
    /// dropped as an MSR would drop them.
    pub(crate) fn restored(s: &SysRegsState) -> SysRegs {
        SysRegs {
            sctlr_el1: (s.sctlr_el1 & SCTLR_WRITABLE) | SCTLR_RESET,
            actlr_el1: s.actlr_el1,
            cpacr_el1: s.cpacr_el1 & CPACR_FPEN,
            ttbr0_el1: s.ttbr0_el1,
            ttbr1_el1: s.ttbr1_el1,
            tcr_el1: s.tcr_el1,
            spsr_el1: s.spsr_el1 & SPSR_MASK,
            elr_el1: s.elr_el1,
            esr_el1: s.esr_el1 & 0xFFFF_FFFF,
            afsr0_el1: s.afsr0_el1,
            afsr1_el1: s.afsr1_el1,
            far_el1: s.far_el1,
            par_el1: s.par_el1,
            mair_el1: s.mair_el1,
            amair_el1: 0,
            vbar_el1: s.vbar_el1 & !0x7FF,
            contextidr_el1: s.contextidr_el1 & 0xFFFF_FFFF,
            tpidr_el1: s.tpidr_el1,
            tpidr_el0: s.tpidr_el0,
            tpidrro_el0: s.tpidrro_el0,
            cntkctl_el1: s.cntkctl_el1 & CNTKCTL_MASK,
            csselr_el1: s.csselr_el1 & 0xF,
            os_lock: s.os_lock,
        }
    }
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

/// What a successful SYS changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SysEffect {
    /// Nothing the run loop depends on.
    Plain,
    /// Translations changed: leave the block so the code page is translated again.
    Resync,
}

/// Register slot of an MRS/MSR/SYS transfer register, as the raw number.
pub(crate) fn raw_rt(slot: u8) -> u64 {
    u64::from(if slot >= reg::ZR { 31 } else { slot })
}
