//! The VMM control API: the series' `KVM_ARM_ASYNC_PF_COMMAND` commands, so a VMM
//! can configure APF and save and restore it across a migration.
//!
//! Restore order: SET_SDEI, SET_IRQ, then SET_CONTROL, which re-enables APF and
//! queues a wake-all so the guest's sleepers from the source host wake and retry.

use super::completion::AtomicWord;
use super::engine::{ApfEngine, EnableError};
use super::vcpu::ApfVcpu;
use apf_abi::ppi::is_valid_apf_ppi;
use thiserror::Error;

/// The series' command numbers.
pub mod cmd {
    /// GET_VERSION.
    pub const GET_VERSION: u32 = 0;
    /// GET_SDEI.
    pub const GET_SDEI: u32 = 1;
    /// GET_IRQ.
    pub const GET_IRQ: u32 = 2;
    /// GET_CONTROL.
    pub const GET_CONTROL: u32 = 3;
    /// SET_SDEI.
    pub const SET_SDEI: u32 = 4;
    /// SET_IRQ.
    pub const SET_IRQ: u32 = 5;
    /// SET_CONTROL.
    pub const SET_CONTROL: u32 = 6;
}

/// One control-API command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApfCommand {
    /// The APF interface version.
    GetVersion,
    /// The SDEI event used for page-not-present.
    GetSdei,
    /// The PPI used for page-ready.
    GetIrq,
    /// The guest's control word.
    GetControl,
    /// Set the SDEI event (a KVM-owned virtual event, 0x4040_0000..=0x407F_FFFF).
    SetSdei(u64),
    /// Set the PPI (see [`is_valid_apf_ppi`]).
    SetIrq(u64),
    /// Restore a control word: re-enables and wakes all.
    SetControl(u64),
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ApfCommandError {
    /// Not one of the commands 0..=6.
    #[error("unknown APF command {0}")]
    UnknownCommand(u32),
    /// The VMM did not offer APF on this vCPU.
    #[error("APF is not offered on this vCPU")]
    NotOffered,
    /// Not a KVM-owned virtual SDEI event number.
    #[error("SDEI event {0:#x} is not a virtual event (0x40400000..=0x407fffff)")]
    InvalidSdeiEvent(u64),
    /// Not a PPI that page-ready may use.
    #[error("INTID {0} cannot carry page-ready (PPIs 16-22, 24, 31)")]
    InvalidPpi(u64),
    /// The SDEI event or PPI cannot change while the guest has APF enabled.
    #[error("cannot change the SDEI event or PPI while APF is enabled; disable first")]
    BusyWhileEnabled,
    /// SET_CONTROL was refused.
    #[error("SET_CONTROL refused: {0}")]
    Control(#[from] EnableError),
}

impl ApfCommand {
    /// Decodes a raw command number and value.
    pub fn from_raw(command: u32, value: u64) -> Result<ApfCommand, ApfCommandError> {
        Ok(match command {
            cmd::GET_VERSION => ApfCommand::GetVersion,
            cmd::GET_SDEI => ApfCommand::GetSdei,
            cmd::GET_IRQ => ApfCommand::GetIrq,
            cmd::GET_CONTROL => ApfCommand::GetControl,
            cmd::SET_SDEI => ApfCommand::SetSdei(value),
            cmd::SET_IRQ => ApfCommand::SetIrq(value),
            cmd::SET_CONTROL => ApfCommand::SetControl(value),
            other => return Err(ApfCommandError::UnknownCommand(other)),
        })
    }
}

fn virtual_event(value: u64) -> Option<u32> {
    let event = u32::try_from(value).ok()?;
    (event >> 22 == (0x4040_0000 >> 22)).then_some(event)
}

impl<W: AtomicWord> ApfEngine<W> {
    /// The VMM's set-up before the guest runs: SET_SDEI, then SET_IRQ.
    pub fn configure(
        &mut self,
        vcpu: &mut impl ApfVcpu,
        sdei_event: u32,
        ppi: u32,
    ) -> Result<(), ApfCommandError> {
        self.command(vcpu, ApfCommand::SetSdei(u64::from(sdei_event)))?;
        self.command(vcpu, ApfCommand::SetIrq(u64::from(ppi)))?;
        Ok(())
    }

    /// Runs a control-API command; returns the value a GET reads (0 for a SET).
    pub fn command(
        &mut self,
        vcpu: &mut impl ApfVcpu,
        command: ApfCommand,
    ) -> Result<u64, ApfCommandError> {
        if !self.offered() {
            return Err(ApfCommandError::NotOffered);
        }
        match command {
            ApfCommand::GetVersion => Ok(u64::from(self.version())),
            ApfCommand::GetSdei => Ok(u64::from(self.sdei_event())),
            ApfCommand::GetIrq => Ok(u64::from(self.ppi())),
            ApfCommand::GetControl => Ok(self.control().encode()),
            ApfCommand::SetSdei(value) => {
                let event = virtual_event(value).ok_or(ApfCommandError::InvalidSdeiEvent(value))?;
                if self.control().enabled && event != self.sdei_event() {
                    return Err(ApfCommandError::BusyWhileEnabled);
                }
                self.set_sdei_event(event);
                Ok(0)
            }
            ApfCommand::SetIrq(value) => {
                let ppi = u32::try_from(value)
                    .ok()
                    .filter(|_| is_valid_apf_ppi(value))
                    .ok_or(ApfCommandError::InvalidPpi(value))?;
                if self.control().enabled && ppi != self.ppi() {
                    return Err(ApfCommandError::BusyWhileEnabled);
                }
                self.set_ppi(ppi);
                Ok(0)
            }
            ApfCommand::SetControl(raw) => {
                self.vmm_set_control(vcpu, raw)?;
                Ok(0)
            }
        }
    }
}
