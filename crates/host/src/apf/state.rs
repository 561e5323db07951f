//! One vCPU's APF configuration as data, for snapshots and migration.
//!
//! Only what the VMM and the guest configured is state, and whether the guest
//! owes an IRQ_ACK. Work in flight (items, queued notifications) is dropped, as
//! KVM drops its queue on migration: the restore re-enables, which queues a
//! wake-all, so the guest's sleepers wake and retry their accesses (protocol
//! §b.10, §d.14). A page-ready the guest had not acknowledged stays as the guest
//! may be taking it, and the wake-all follows its ACK.

use serde::{Deserialize, Serialize};

use super::completion::AtomicWord;
use super::engine::{ApfEngine, EnableError, UnackedReady};
use super::vcpu::ApfVcpu;
use super::vmm::{ApfCommand, ApfCommandError};
use apf_abi::control::{CONTROL_GPA_MASK, ControlWord};

/// One vCPU's APF configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApfEngineState {
    /// The VMM's SDEI event for page-not-present (0 = unset).
    pub sdei_event: u32,
    /// The VMM's page-ready PPI (0 = unset).
    pub ppi: u32,
    /// The guest's ENABLE: APF is on.
    pub enabled: bool,
    /// The guest's ENABLE: the shared block's guest-physical address.
    pub block_gpa: u64,
    /// The guest's ENABLE: send not-present for faults at EL1 too.
    pub send_always: bool,
    /// The guest's ENABLE: page-ready has its own channel (ABI 1.1).
    pub separate_ready: bool,
    /// A page-ready was raised and not acknowledged yet: the guest may be in
    /// its handler, between reading the words, clearing them and its IRQ_ACK.
    /// (Absent from snapshots older than this field: false.)
    #[serde(default)]
    pub ready_awaiting_ack: bool,
}

impl<W: AtomicWord> ApfEngine<W> {
    /// What the VMM and the guest configured.
    pub fn save_state(&self) -> ApfEngineState {
        let control = self.control();
        ApfEngineState {
            sdei_event: self.sdei_event(),
            ppi: self.ppi(),
            enabled: control.enabled,
            block_gpa: control.gpa,
            send_always: control.send_always,
            separate_ready: control.separate_ready,
            ready_awaiting_ack: self.page_ready_pending().is_some(),
        }
    }

    /// Drops everything in flight (and an undelivered not-present with it),
    /// installs `state`'s SDEI event and PPI (where set), and, if it was
    /// enabled, enables again: the shared block is claimed on the machine and
    /// a wake-all page-ready goes to the guest as soon as its channel is free,
    /// after the ACK of a page-ready the guest had not acknowledged.
    /// Restore the GIC and this vCPU's SDEI state first.
    ///
    /// A refusal (a value the control API refuses, a block that is not usable
    /// guest RAM or another vCPU's) leaves APF disabled on this vCPU.
    ///
    /// On an engine not offering APF, a guest that had enabled it keeps its
    /// channel (it gets the wake-all, and may ACK and disable) but every fault
    /// is taken synchronously from then on.
    pub fn restore_state(
        &mut self,
        vcpu: &mut impl ApfVcpu,
        state: &ApfEngineState,
    ) -> Result<(), ApfCommandError> {
        if !self.offered() {
            if !state.enabled {
                // Nothing the guest relies on: the hypercalls answer
                // NOT_SUPPORTED from now on, as on any host without APF.
                return Ok(());
            }
            // The guest enabled APF where it ran, and may have tasks asleep
            // on tokens: it cannot be told APF went away. Keep its channel
            // (the wake-all below, its IRQ_ACK, a later disable) but take
            // every fault synchronously: this host sends no not-present.
            self.accept_channel_only();
        }
        // The source's not-present was in-flight work: its item is gone, and the
        // guest re-faults on the page instead.
        for event in [state.sdei_event, self.sdei_event()] {
            if event != 0 {
                let _ = vcpu.sdei_cancel(event);
            }
        }
        // Disabled first, so the event and PPI may change.
        self.reset(vcpu);
        if state.sdei_event != 0 {
            self.command(vcpu, ApfCommand::SetSdei(u64::from(state.sdei_event)))?;
        }
        if state.ppi != 0 {
            self.command(vcpu, ApfCommand::SetIrq(u64::from(state.ppi)))?;
        }
        if state.enabled {
            if state.block_gpa & !CONTROL_GPA_MASK != 0 {
                return Err(EnableError::BadBlock(state.block_gpa).into());
            }
            let word = ControlWord {
                gpa: state.block_gpa,
                enabled: true,
                send_always: state.send_always,
                separate_ready: state.separate_ready,
            };
            // As SET_CONTROL, but a page-ready the guest may be taking stays
            // awaiting its ACK: its words, and its line the GIC's state kept.
            let word = self.check_control(word.encode())?;
            let unacked = if state.ready_awaiting_ack {
                UnackedReady::Keep
            } else {
                UnackedReady::Drop
            };
            self.apply_control(vcpu, word, unacked)?;
        }
        Ok(())
    }
}
