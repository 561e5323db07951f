//! The GIC's state as data, for snapshots and migration: the distributor and
//! redistributors ([`GicState`], shared) and each vCPU's CPU interface
//! ([`IccState`], owned by its thread).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::bank::IrqBankState;
use super::cpu_interface::BPR1_MIN;
use super::{CTLR_ENABLE_GRP0, CTLR_ENABLE_GRP1, Gic, GicCpuInterface, PRIORITY_MASK, Word};
use crate::regs::MPIDR_AFFINITY_MASK;

/// One redistributor: its SGIs and PPIs, and GICR_WAKER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedistributorState {
    /// GICR_WAKER.ProcessorSleep.
    pub processor_sleep: bool,
    /// SGIs (bits 0..16) and PPIs (bits 16..32).
    pub sgi_ppi: IrqBankState,
}

/// The distributor and every redistributor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GicState {
    /// GICD_CTLR's EnableGrp0 and EnableGrp1 (ARE and DS always read as one).
    pub ctlr: u64,
    /// SPIs 32..64 as bank bits 0..32.
    pub spis: IrqBankState,
    /// GICD_IROUTER<32..64>: the affinity each SPI is routed to.
    pub spi_routes: [u64; 32],
    /// One per vCPU, in vCPU order.
    pub redistributors: Vec<RedistributorState>,
}

/// Why a [`GicState`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum GicStateError {
    /// The state was saved from a GIC with another number of vCPUs.
    #[error(
        "the saved GIC has {saved} vCPUs and this one {here}: build the machine with {saved} vCPUs"
    )]
    VcpuCount {
        /// vCPUs in the saved state.
        saved: usize,
        /// vCPUs of this GIC.
        here: usize,
    },
}

/// One vCPU's CPU interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IccState {
    /// ICC_PMR_EL1.
    pub pmr: u8,
    /// ICC_BPR1_EL1.
    pub bpr1: u8,
    /// ICC_IGRPEN1_EL1.Enable.
    pub igrpen1: bool,
    /// ICC_CTLR_EL1.EOImode.
    pub eoimode: bool,
    /// ICC_AP1R0_EL1: bit n = an interrupt of group priority n × 8 is active
    /// (the running priority follows from it).
    pub active_priorities: u32,
}

impl<W: Word> Gic<W> {
    /// The distributor's and redistributors' state. Consistent when no vCPU
    /// runs and no device drives a line meanwhile.
    pub fn save_state(&self) -> GicState {
        GicState {
            ctlr: self.ctlr.get(),
            spis: self.spis.save(),
            spi_routes: std::array::from_fn(|k| self.routes[k].get()),
            redistributors: self
                .redists
                .iter()
                .map(|r| RedistributorState {
                    processor_sleep: r.sleep.get() != 0,
                    sgi_ppi: r.bank.save(),
                })
                .collect(),
        }
    }

    /// Installs `state` (before the vCPUs run) and kicks every connected vCPU.
    /// Refused, with nothing changed, when it has another number of vCPUs.
    pub fn restore_state(&self, state: &GicState) -> Result<(), GicStateError> {
        if state.redistributors.len() != self.vcpus() {
            return Err(GicStateError::VcpuCount {
                saved: state.redistributors.len(),
                here: self.vcpus(),
            });
        }
        self.ctlr
            .set(state.ctlr & (CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1));
        self.spis.restore(&state.spis);
        for (route, &saved) in self.routes.iter().zip(&state.spi_routes) {
            route.set(saved & MPIDR_AFFINITY_MASK);
        }
        for (r, saved) in self.redists.iter().zip(&state.redistributors) {
            r.sleep.set(u64::from(saved.processor_sleep));
            r.bank.restore(&saved.sgi_ppi);
        }
        self.kick_all();
        Ok(())
    }
}

impl<W: Word> GicCpuInterface<W> {
    /// This CPU interface's registers.
    pub fn save_state(&self) -> IccState {
        IccState {
            pmr: self.pmr,
            bpr1: self.bpr1,
            igrpen1: self.igrpen1,
            eoimode: self.eoimode,
            active_priorities: self.active_priorities,
        }
    }

    /// Installs `state`; bits the registers do not implement are dropped as an
    /// MSR would drop them. Kicks the vCPU, whose line may have changed.
    pub fn restore_state(&mut self, state: &IccState) {
        self.pmr = state.pmr & PRIORITY_MASK;
        self.bpr1 = (state.bpr1 & 7).max(BPR1_MIN);
        self.igrpen1 = state.igrpen1;
        self.eoimode = state.eoimode;
        self.active_priorities = state.active_priorities;
        self.gic.kick(self.vcpu);
    }
}
