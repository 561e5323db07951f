//! What the APF engine needs from a vCPU, and nothing more.
//!
//! The engine never sees the interpreter: a real-KVM backend could implement this
//! trait over its own vCPU and drive the engine unchanged.

use thiserror::Error;

/// A guest memory access the platform could not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("guest memory access at {gpa:#x} failed")]
pub struct GuestMemoryError {
    /// The guest-physical address.
    pub gpa: u64,
}

/// Why an SDEI event could not be queued for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SdeiInjectError {
    /// Not registered, not enabled, or the PE is masked.
    #[error("SDEI event {0:#x} is not deliverable (unregistered, disabled or PE masked)")]
    NotDeliverable(u32),
    /// An instance is already pending or running.
    #[error("SDEI event {0:#x} is already pending or running")]
    Busy(u32),
}

/// Why a queued SDEI event could not be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SdeiCancelError {
    /// The event already reached the guest (delivered or running).
    #[error("SDEI event {0:#x} was already delivered")]
    AlreadyDelivered(u32),
    /// Nothing was pending.
    #[error("SDEI event {0:#x} is not pending")]
    NotPending(u32),
}

/// The vCPU as the APF engine sees it.
pub trait ApfVcpu {
    /// Exception level of the context that took the fault (0 or 1).
    fn exception_level(&self) -> u8;
    /// Whether any SDEI handler is running on this vCPU.
    fn sdei_running(&self) -> bool;
    /// Whether `event` could be delivered now: registered, enabled, PE unmasked.
    fn sdei_deliverable(&self, event: u32) -> bool;
    /// Queues `event` for delivery at the next guest entry.
    fn sdei_inject(&mut self, event: u32) -> Result<(), SdeiInjectError>;
    /// Removes a queued, undelivered instance of `event`.
    fn sdei_cancel(&mut self, event: u32) -> Result<(), SdeiCancelError>;
    /// Drives the level of a PPI on this vCPU.
    fn set_ppi_level(&mut self, intid: u32, level: bool);
    /// Reserves `[gpa, gpa + len)` as this vCPU's shared block if it may be one:
    /// ordinary guest RAM, not device memory, overlapping no block another vCPU
    /// holds. Checked and reserved in one step, so two vCPUs cannot both get it.
    /// The engine claims a block before its first access and releases it after
    /// its last; while it moves it holds both.
    fn claim_shared_block(&mut self, gpa: u64, len: u64) -> bool;
    /// Gives back one claim of the block at `gpa`.
    fn release_shared_block(&mut self, gpa: u64);
    /// Reads a little-endian u32 from guest memory.
    fn read_u32(&mut self, gpa: u64) -> Result<u32, GuestMemoryError>;
    /// Writes a little-endian u32 to guest memory.
    fn write_u32(&mut self, gpa: u64, value: u32) -> Result<(), GuestMemoryError>;
}
