//! The CPU's system registers as MRS, MSR and SYS see them, and as the host
//! reads and writes them; the register set itself is in `crate::sysreg`.

use apf_abi::esr::{DataAbort, ec};

use super::{Cpu, SysFault};
use crate::bus::{AccessSize, Broadcast, Bus, BusError, SysRegId};
use crate::mmu::{AccessKind, Fault, PA_BITS};
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
            SysReg::SctlrEl1 => {
                s.sctlr_el1 = (v & SCTLR_WRITABLE) | SCTLR_RESET;
                // Cached permissions depend on WXN; M on or off starts afresh.
                self.mmu.flush();
                self.direct.flush();
            }
            SysReg::ActlrEl1 => s.actlr_el1 = v,
            SysReg::CpacrEl1 => s.cpacr_el1 = v & CPACR_FPEN,
            // Entries are ASID-tagged: a new TTBR only changes the current ASID.
            SysReg::Ttbr0El1 => {
                s.ttbr0_el1 = v;
                self.mmu
                    .sync(self.sys.tcr_el1, self.sys.ttbr0_el1, self.sys.ttbr1_el1);
                // Direct pages are not ASID-tagged.
                self.direct.flush();
            }
            SysReg::Ttbr1El1 => {
                s.ttbr1_el1 = v;
                self.mmu
                    .sync(self.sys.tcr_el1, self.sys.ttbr0_el1, self.sys.ttbr1_el1);
                self.direct.flush();
            }
            SysReg::TcrEl1 => {
                s.tcr_el1 = v;
                self.mmu
                    .sync(self.sys.tcr_el1, self.sys.ttbr0_el1, self.sys.ttbr1_el1);
                self.mmu.flush();
                self.direct.flush();
            }
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
            SysReg::MairEl1 => {
                s.mair_el1 = v;
                self.mmu.flush();
                self.direct.flush();
            }
            // No IMPLEMENTATION DEFINED attributes: RAZ/WI.
            SysReg::AmairEl1 => {}
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
            (3, 3, 0, 0, 7) => {
                let trapped = self.pstate.el == 0 && self.sys.sctlr_el1 & SCTLR_DZE == 0;
                DCZID | if trapped { DCZID_DZP } else { 0 }
            }
            (3, 0, 0, 0, 6) => 0,         // REVIDR_EL1
            (3, 1, 0, 0, 0 | 1 | 7) => 0, // CCSIDR, CLIDR (no caches to maintain), AIDR
            (3, 0, 0, 4, 0) => ID_AA64PFR0,
            (3, 0, 0, 5, 0) => ID_AA64DFR0,
            (3, 0, 0, 6, 0) => ID_AA64ISAR0,
            (3, 0, 0, 6, 1) => ID_AA64ISAR1,
            (3, 0, 0, 7, 0) => ID_AA64MMFR0,
            // The rest of the ID space reads as zero (AArch32 and unused IDs).
            (3, 0, 0, 1..=7, _) => 0,
            _ if self.pstate.el == 0 => return Err(SysFault::Undefined),
            // OSLAR_EL1 is write-only.
            (2, 0, 1, 0, 4) => return Err(SysFault::Undefined),
            // OSLSR_EL1: OSLM = 0b10 (the OS lock is implemented), OSLK.
            (2, 0, 1, 1, 4) => 0b1000 | (u64::from(self.sys.os_lock) << 1),
            _ if debug_raz_wi(id) || pmu_raz_wi(id) => 0,
            _ => {
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
                // Translation controls: the code page is translated again.
                SysReg::SctlrEl1
                | SysReg::Ttbr0El1
                | SysReg::Ttbr1El1
                | SysReg::TcrEl1
                | SysReg::MairEl1 => {
                    self.set_sysreg(r, v);
                    Ok(MsrEffect::Resync)
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
            _ if self.pstate.el == 0 => Err(SysFault::Undefined),
            // OSLAR_EL1: sets or clears the OS lock. OSLSR_EL1 is read-only.
            (2, 0, 1, 0, 4) => {
                self.sys.os_lock = v & 1 != 0;
                Ok(MsrEffect::Plain)
            }
            (2, 0, 1, 1, 4) => Err(SysFault::Undefined),
            _ if debug_raz_wi(id) || pmu_raz_wi(id) => Ok(MsrEffect::Plain),
            _ => {
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
    pub(crate) fn sys_op<B: Bus>(
        &mut self,
        bus: &mut B,
        id: SysRegId,
        v: u64,
    ) -> Result<SysEffect, SysFault> {
        let el0 = self.pstate.el == 0;
        let uci = self.sys.sctlr_el1 & SCTLR_UCI != 0;
        let el0_maintenance = if uci { Ok(()) } else { Err(SysFault::Trapped) };
        match (id.op1, id.crn, id.crm, id.op2) {
            // IC IALLUIS (CRm 1, broadcast), IC IALLU (CRm 5, this PE only).
            (0, 7, crm @ (1 | 5), 0) if !el0 => {
                self.invalidate_all_decoded();
                if crm == 1 {
                    self.broadcast(bus, Broadcast::AllCode);
                }
                Ok(SysEffect::Plain)
            }
            // IC IVAU: the decoded copies are keyed by PA, and the architecture
            // makes this one reach every PE. Linux only names mapped code; if
            // the VA does not translate, every page is dropped.
            (3, 7, 5, 1) => {
                if el0 {
                    el0_maintenance?;
                }
                let pa = if self.sys_mmu_on() {
                    self.translate(bus, v, AccessKind::Read, false)
                        .ok()
                        .map(|t| t.pa)
                } else {
                    Some(v)
                };
                match pa {
                    Some(pa) => {
                        self.invalidate_decoded(pa);
                        self.broadcast(bus, Broadcast::CodePage(pa));
                    }
                    None => {
                        self.invalidate_all_decoded();
                        self.broadcast(bus, Broadcast::AllCode);
                    }
                }
                Ok(SysEffect::Plain)
            }
            // DC ZVA.
            (3, 7, 4, 1) => {
                if el0 && self.sys.sctlr_el1 & SCTLR_DZE == 0 {
                    return Err(SysFault::Trapped);
                }
                self.dc_zva(bus, v).map(|()| SysEffect::Plain)
            }
            // DC CVAC, CVAU, CVAP, CIVAC: memory is coherent, nothing to do.
            (3, 7, 10 | 11 | 12 | 14, 1) => {
                if el0 {
                    el0_maintenance?;
                }
                Ok(SysEffect::Plain)
            }
            // DC IVAC, ISW, CSW, CISW.
            (0, 7, 6, 1 | 2) | (0, 7, 10 | 14, 2) if !el0 => Ok(SysEffect::Plain),
            // AT S1E1R, S1E1W, S1E0R, S1E0W.
            (0, 7, 8, op2 @ 0..=3) if !el0 => {
                let kind = if op2 & 1 == 0 {
                    AccessKind::Read
                } else {
                    AccessKind::Write
                };
                self.address_translate(bus, v, kind, op2 >= 2)?;
                Ok(SysEffect::Plain)
            }
            // TLBI, the EL1 forms without FEAT_TLBIRANGE and FEAT_TLBIOS:
            // CRm 3 inner shareable, 7 local.
            (0, 8, crm @ (3 | 7), op2 @ (0 | 1 | 2 | 3 | 5 | 7)) if !el0 => {
                self.tlbi(op2, v);
                if crm == 3 {
                    self.broadcast(bus, Broadcast::Tlb);
                }
                Ok(SysEffect::Resync)
            }
            _ => Err(SysFault::Undefined),
        }
    }

    /// Sends `op` to the other vCPUs; applies, in full, what reached this one
    /// while it waited.
    fn broadcast<B: Bus>(&mut self, bus: &mut B, op: Broadcast) {
        if bus.broadcast(op) {
            self.flush_tlb();
            self.invalidate_all_decoded();
        }
    }

    fn sys_mmu_on(&self) -> bool {
        self.sys.sctlr_el1 & SCTLR_M != 0
    }

    /// TLBI with op2 `op2` (VMALLE1, VAE1, ASIDE1, VAAE1, VALE1, VAALE1) and
    /// operand `v`. The by-VA forms drop the page under every ASID (more than
    /// asked, which is always allowed).
    fn tlbi(&mut self, op2: u8, v: u64) {
        // Direct pages are few and untagged: every TLBI forgets them all.
        self.direct.flush();
        match op2 {
            0 => self.mmu.flush(),
            2 => {
                let asid = self.mmu.asid_bits(self.sys.tcr_el1, v);
                self.mmu.flush_asid(asid);
            }
            _ => {
                // VA[55:12] in bits 43:0, sign-extended from VA bit 55 as the
                // TLB's tags are.
                let page = v & 0x0000_0FFF_FFFF_FFFF;
                let vpn = if page & (1 << 43) != 0 {
                    page | 0x000F_F000_0000_0000
                } else {
                    page
                };
                self.mmu.flush_page(vpn);
            }
        }
    }

    /// AT S1E*: translates `va` and writes PAR_EL1. A stage-2 fault on the
    /// walk exits to the host (ESR with S1PTW and CM) like a walk for an access.
    fn address_translate<B: Bus>(
        &mut self,
        bus: &mut B,
        va: u64,
        kind: AccessKind,
        el0: bool,
    ) -> Result<(), SysFault> {
        // PAR_EL1 bit 11 is RES1.
        const PAR_RES1: u64 = 1 << 11;
        let pa_mask = ((1u64 << PA_BITS) - 1) & !0xFFF;
        if !self.sys_mmu_on() {
            // Flat, Device-nGnRnE (attribute 0), outer shareable.
            self.sys.par_el1 = (va & pa_mask) | (0b10 << 7) | PAR_RES1;
            return Ok(());
        }
        self.sys.par_el1 = match self.translate(bus, va, kind, el0) {
            Ok(t) => {
                // Device memory is reported outer shareable.
                let sh = if t.device { 0b10 } else { u64::from(t.sh) };
                (u64::from(t.attr) << 56) | (t.pa & pa_mask) | (sh << 7) | PAR_RES1
            }
            Err(Fault::WalkStage2 { ipa, .. }) => {
                let esr = Cpu::stage2_walk_data_syndrome(true);
                return Err(SysFault::Exit(self.stage2_exit(esr, va, ipa)));
            }
            Err(f) => 1 | (u64::from(f.status()) << 1) | PAR_RES1,
        };
        Ok(())
    }

    /// DC ZVA: zeroes the 64-byte block holding `va`. Normal memory only;
    /// with the MMU off everything is Device, so it is an alignment fault.
    fn dc_zva<B: Bus>(&mut self, bus: &mut B, va: u64) -> Result<(), SysFault> {
        let block = va & !(DC_ZVA_BYTES - 1);
        let el0 = self.pstate.el == 0;
        let pa = if !self.sys_mmu_on() {
            None
        } else {
            match self.translate(bus, block, AccessKind::Write, el0) {
                Ok(t) if !t.device => Some(t.pa),
                Ok(_) => None,
                Err(Fault::WalkStage2 { ipa, .. }) => {
                    let esr = Cpu::stage2_walk_data_syndrome(false);
                    return Err(SysFault::Exit(self.stage2_exit(esr, va, ipa)));
                }
                Err(f) => {
                    self.data_abort_el1(va, true, f.status());
                    return Err(SysFault::Aborted);
                }
            }
        };
        let Some(pa) = pa else {
            self.data_abort_el1(va, true, apf_abi::esr::fsc::ALIGNMENT);
            return Err(SysFault::Aborted);
        };
        // One page, so one stage-2 mapping: if the first write succeeds, the
        // rest do, and a fault on the first leaves memory as it was.
        for k in 0..DC_ZVA_BYTES / 8 {
            let at = pa + 8 * k;
            match bus.write(at, AccessSize::Double, 0) {
                Ok(()) => {}
                Err(BusError::Stage2Fault) => {
                    let esr = DataAbort {
                        syndrome: None,
                        write: true,
                        s1ptw: false,
                        cache_maintenance: false,
                        external: false,
                        far_not_valid: false,
                        dfsc: apf_abi::esr::fsc::TRANSLATION_L3,
                    }
                    .encode(ec::DABT_LOWER);
                    return Err(SysFault::Exit(self.stage2_exit(esr, va, at)));
                }
                Err(BusError::ExternalAbort) => {
                    self.data_abort_el1(va, true, apf_abi::esr::fsc::SYNC_EXTERNAL);
                    return Err(SysFault::Aborted);
                }
            }
        }
        self.cache.stored(pa, DC_ZVA_BYTES);
        Ok(())
    }
}

/// The self-hosted debug registers Linux resets at boot, RAZ/WI (so no
/// breakpoint or watchpoint can be enabled): DBGBVR/BCR/WVR/WCR<n>_EL1 for
/// n = 0..15, MDSCR_EL1, MDCCINT_EL1, OSDLR_EL1, DBGPRCR_EL1 and the claim tags.
fn debug_raz_wi(id: SysRegId) -> bool {
    matches!(
        (id.op0, id.op1, id.crn, id.crm, id.op2),
        (2, 0, 0, _, 4..=7) | (2, 0, 0, 2, 0 | 2) | (2, 0, 1, 3 | 4, 4) | (2, 0, 7, 8 | 9, 6)
    )
}

/// The PMU registers Linux touches: PMCR_EL0, PMCNTENCLR_EL0, PMOVSCLR_EL0,
/// PMCEID0/1_EL0, PMUSERENR_EL0 and PMINTENCLR_EL1. ID_AA64DFR0_EL1.PMUVer = 0
/// makes them UNDEFINED architecturally; reading zero (no counters, nothing
/// enabled) tells software the same thing without an exception, so EL1 gets
/// RAZ/WI.
fn pmu_raz_wi(id: SysRegId) -> bool {
    matches!(
        (id.op0, id.op1, id.crn, id.crm, id.op2),
        (3, 3, 9, 12, 0 | 2 | 3 | 6 | 7) | (3, 3, 9, 14, 0) | (3, 0, 9, 14, 2)
    )
}
