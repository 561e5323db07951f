//! One vCPU's GIC CPU interface: the ICC_*_EL1 system registers, the priority
//! mask and running priority, and the interrupt line into the vCPU.
//!
//! Owned by the vCPU's thread. The CPU decides whether the current exception
//! level may access these registers; this module implements what they do.

use super::bank::bits;
use super::{
    CpuInterfaceError, Gic, INTID_LIMIT, INTID_SPURIOUS, PRIORITY_MASK, SPI_FIRST, Word, field,
};
use crate::regs::affinity_of;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// The GIC system registers a group-1, EL1 guest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IccReg {
    /// ICC_PMR_EL1: priority mask.
    Pmr,
    /// ICC_IAR1_EL1: acknowledge (read-only).
    Iar1,
    /// ICC_EOIR1_EL1: end of interrupt (write-only).
    Eoir1,
    /// ICC_HPPIR1_EL1: highest priority pending interrupt (read-only).
    Hppir1,
    /// ICC_BPR1_EL1: binary point.
    Bpr1,
    /// ICC_CTLR_EL1: EOImode and identification.
    Ctlr,
    /// ICC_SRE_EL1: system register enable (always on).
    Sre,
    /// ICC_IGRPEN1_EL1: group 1 enable.
    Igrpen1,
    /// ICC_AP1R0_EL1: group 1 active priorities.
    Ap1r0,
    /// ICC_AP0R0_EL1: group 0 active priorities. Every interrupt of this GIC is
    /// group 1 (GICD_CTLR.DS = 1, the guest sees one security state), so none is
    /// ever active in group 0: RAZ/WI. Linux writes it once at boot.
    Ap0r0,
    /// ICC_DIR_EL1: deactivate (write-only).
    Dir,
    /// ICC_RPR_EL1: running priority (read-only).
    Rpr,
    /// ICC_SGI1R_EL1: generate a group 1 SGI (write-only).
    Sgi1r,
}

impl IccReg {
    /// The register with MRS/MSR encoding (op0, op1, CRn, CRm, op2), if it is
    /// one this CPU interface implements.
    pub fn decode(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Option<IccReg> {
        Some(match (op0, op1, crn, crm, op2) {
            (3, 0, 4, 6, 0) => IccReg::Pmr,
            (3, 0, 12, 8, 4) => IccReg::Ap0r0,
            (3, 0, 12, 9, 0) => IccReg::Ap1r0,
            (3, 0, 12, 11, 1) => IccReg::Dir,
            (3, 0, 12, 11, 3) => IccReg::Rpr,
            (3, 0, 12, 11, 5) => IccReg::Sgi1r,
            (3, 0, 12, 12, 0) => IccReg::Iar1,
            (3, 0, 12, 12, 1) => IccReg::Eoir1,
            (3, 0, 12, 12, 2) => IccReg::Hppir1,
            (3, 0, 12, 12, 3) => IccReg::Bpr1,
            (3, 0, 12, 12, 4) => IccReg::Ctlr,
            (3, 0, 12, 12, 5) => IccReg::Sre,
            (3, 0, 12, 12, 7) => IccReg::Igrpen1,
            _ => return None,
        })
    }
}

/// The smallest ICC_BPR1_EL1 value with 5 priority bits: group priority is then
/// every implemented bit.
pub(super) const BPR1_MIN: u8 = 3;
/// ICC_SRE_EL1: SRE, DFB and DIB, all read-as-one.
const SRE_VALUE: u64 = 0b111;
/// ICC_CTLR_EL1.PRIbits: priority bits − 1.
const CTLR_PRI_BITS: u64 = 4 << 8;
/// ICC_CTLR_EL1.EOImode.
const CTLR_EOIMODE: u64 = 1 << 1;
/// The running priority when nothing is active.
const IDLE_PRIORITY: u8 = 0xFF;

/// A vCPU's CPU interface.
pub struct GicCpuInterface<W: Word = AtomicU64> {
    pub(super) gic: Arc<Gic<W>>,
    pub(super) vcpu: usize,
    affinity: u64,
    pub(super) pmr: u8,
    pub(super) bpr1: u8,
    pub(super) igrpen1: bool,
    pub(super) eoimode: bool,
    /// ICC_AP1R0_EL1: bit n set = an interrupt of group priority n × 8 is active.
    pub(super) active_priorities: u32,
}

impl<W: Word> std::fmt::Debug for GicCpuInterface<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GicCpuInterface")
            .field("vcpu", &self.vcpu)
            .field("pmr", &self.pmr)
            .field("bpr1", &self.bpr1)
            .field("igrpen1", &self.igrpen1)
            .field("eoimode", &self.eoimode)
            .field("active_priorities", &self.active_priorities)
            .finish_non_exhaustive()
    }
}

impl<W: Word> GicCpuInterface<W> {
    /// vCPU `vcpu`'s CPU interface at reset: everything masked (PMR 0, group 1
    /// disabled), nothing active. A vCPU that powers on again gets a new one.
    pub fn new(gic: Arc<Gic<W>>, vcpu: usize) -> Result<Self, CpuInterfaceError> {
        if vcpu >= gic.vcpus() {
            return Err(CpuInterfaceError::NoSuchVcpu {
                vcpu,
                vcpus: gic.vcpus(),
            });
        }
        Ok(GicCpuInterface {
            gic,
            vcpu,
            affinity: affinity_of(vcpu),
            pmr: 0,
            bpr1: BPR1_MIN,
            igrpen1: false,
            eoimode: false,
            active_priorities: 0,
        })
    }

    /// The vCPU this interface belongs to.
    pub fn vcpu(&self) -> usize {
        self.vcpu
    }

    /// The highest-priority interrupt that could be forwarded to this PE
    /// (pending, enabled, group 1 with group 1 enabled in the distributor, not
    /// active, routed here), and its priority. Ties go to the lowest INTID.
    fn highest_pending(&self) -> Option<(u32, u8)> {
        let gic = &self.gic;
        if gic.ctlr.get() & super::CTLR_ENABLE_GRP1 == 0 {
            return None;
        }
        let mut best: Option<(u32, u8)> = None;
        let mut consider = |intid: u32, priority: u8| {
            if best.is_none_or(|(_, p)| priority < p) {
                best = Some((intid, priority));
            }
        };
        let bank = &gic.redists[self.vcpu].bank;
        for bit in bits(bank.signalable()) {
            consider(bit, bank.priority(bit));
        }
        for bit in bits(gic.spis.signalable()) {
            if gic.routes[bit as usize].get() == self.affinity {
                consider(SPI_FIRST + bit, gic.spis.priority(bit));
            }
        }
        best
    }

    /// Clears the subpriority bits the binary point excludes from preemption.
    fn group_priority(&self, priority: u8) -> u8 {
        priority & (0xFF_u8 << self.bpr1)
    }

    /// The running priority: the group priority of the highest-priority active
    /// interrupt, or 0xFF.
    fn running_priority(&self) -> u8 {
        if self.active_priorities == 0 {
            IDLE_PRIORITY
        } else {
            let level = self.active_priorities.trailing_zeros();
            u8::try_from(level << 3).unwrap_or(IDLE_PRIORITY)
        }
    }

    /// The interrupt to signal, if any: group 1 enabled here, the highest
    /// pending interrupt beats the priority mask and preempts the running
    /// priority.
    fn signalled(&self) -> Option<(u32, u8)> {
        if !self.igrpen1 {
            return None;
        }
        let (intid, priority) = self.highest_pending()?;
        if priority >= self.pmr {
            return None;
        }
        let running = self.running_priority();
        let preempts = running == IDLE_PRIORITY
            || self.group_priority(priority) < self.group_priority(running);
        preempts.then_some((intid, priority))
    }

    /// Whether this vCPU's IRQ input is asserted. Re-evaluate after every kick.
    pub fn irq_line(&self) -> bool {
        self.signalled().is_some()
    }

    /// MRS: reads `reg`; `None` for the write-only registers (UNDEFINED).
    /// Reading ICC_IAR1_EL1 acknowledges the interrupt it returns.
    pub fn read(&mut self, reg: IccReg) -> Option<u64> {
        Some(match reg {
            IccReg::Pmr => u64::from(self.pmr),
            IccReg::Iar1 => u64::from(self.acknowledge()),
            IccReg::Hppir1 => u64::from(
                self.igrpen1
                    .then(|| self.highest_pending())
                    .flatten()
                    .map_or(INTID_SPURIOUS, |(intid, _)| intid),
            ),
            IccReg::Bpr1 => u64::from(self.bpr1),
            IccReg::Ctlr => CTLR_PRI_BITS | if self.eoimode { CTLR_EOIMODE } else { 0 },
            IccReg::Sre => SRE_VALUE,
            IccReg::Igrpen1 => u64::from(self.igrpen1),
            IccReg::Ap1r0 => u64::from(self.active_priorities),
            IccReg::Ap0r0 => 0,
            IccReg::Rpr => u64::from(self.running_priority()),
            IccReg::Eoir1 | IccReg::Dir | IccReg::Sgi1r => return None,
        })
    }

    /// MSR: writes `reg`; `false` for the read-only registers (UNDEFINED).
    pub fn write(&mut self, reg: IccReg, value: u64) -> bool {
        match reg {
            IccReg::Pmr => self.pmr = value.to_le_bytes()[0] & PRIORITY_MASK,
            IccReg::Bpr1 => self.bpr1 = (value.to_le_bytes()[0] & 7).max(BPR1_MIN),
            IccReg::Ctlr => self.eoimode = value & CTLR_EOIMODE != 0,
            IccReg::Sre => {}
            IccReg::Igrpen1 => self.igrpen1 = value & 1 != 0,
            IccReg::Ap1r0 => self.active_priorities = field(value, 0, 32),
            IccReg::Ap0r0 => {}
            IccReg::Eoir1 => self.end_of_interrupt(value),
            IccReg::Dir => {
                if self.eoimode {
                    self.deactivate(value);
                }
            }
            IccReg::Sgi1r => self.gic.send_sgi(self.vcpu, value),
            IccReg::Iar1 | IccReg::Hppir1 | IccReg::Rpr => return false,
        }
        // No kick: only this vCPU's own thread accesses its CPU interface, and it
        // re-evaluates its line after the access (the bus ends the slice if the
        // line moved).
        true
    }

    /// ICC_IAR1_EL1: takes the signalled interrupt from pending to active and
    /// raises the running priority to its group priority.
    fn acknowledge(&mut self) -> u32 {
        let Some((intid, priority)) = self.signalled() else {
            return INTID_SPURIOUS;
        };
        let claimed = if intid < SPI_FIRST {
            self.gic.redists[self.vcpu].bank.activate(intid)
        } else {
            self.gic.spis.activate(intid - SPI_FIRST)
        };
        if !claimed {
            // Another PE acknowledged it (it was re-routed meanwhile).
            return INTID_SPURIOUS;
        }
        self.active_priorities |= 1 << (self.group_priority(priority) >> 3);
        intid
    }

    /// ICC_EOIR1_EL1: drops the running priority; in EOImode 0 also
    /// deactivates the interrupt. Special and unimplemented INTIDs, and an EOI
    /// with nothing active, are ignored (the architecture leaves them
    /// UNPREDICTABLE).
    fn end_of_interrupt(&mut self, value: u64) {
        let intid = value & 0xFF_FFFF;
        if intid >= u64::from(INTID_LIMIT) || self.active_priorities == 0 {
            return;
        }
        self.active_priorities &= self.active_priorities - 1;
        if !self.eoimode {
            self.deactivate(intid);
        }
    }

    fn deactivate(&self, intid: u64) {
        if let Ok(intid) = u32::try_from(intid & 0xFF_FFFF) {
            self.gic.deactivate(self.vcpu, intid);
        }
    }
}
