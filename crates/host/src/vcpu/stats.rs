//! Per-vCPU accounting: where the time went and why the vCPU left the guest.

use std::time::Duration;

/// Exits by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// HVC calls.
    pub hvc: u64,
    /// SMC calls.
    pub smc: u64,
    /// WFI.
    pub wfi: u64,
    /// WFE.
    pub wfe: u64,
    /// Stage-2 aborts.
    pub stage2: u64,
    /// MMIO accesses (handled without leaving the slice).
    pub mmio: u64,
    /// Timer deadlines.
    pub timer: u64,
    /// Slice budget used up.
    pub budget: u64,
    /// Kicked by another thread or by an interrupt-controller access.
    pub kicked: u64,
}

impl ExitCounts {
    /// All exits (MMIO accesses are not exits).
    pub fn total(&self) -> u64 {
        self.hvc
            + self.smc
            + self.wfi
            + self.wfe
            + self.stage2
            + self.timer
            + self.budget
            + self.kicked
    }
}

/// Stage-2 faults by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// The page was resident or untouched: mapped without I/O.
    pub mapped: u64,
    /// Resolved asynchronously (not-present sent).
    pub asynchronous: u64,
    /// Resolved synchronously (the vCPU waited).
    pub synchronous: u64,
    /// Repeated faults on a page in flight: halted until it came.
    pub halted: u64,
    /// Pages that could not be read: an external abort went to the guest.
    pub lost: u64,
    /// Accesses outside RAM and devices: an external abort went to the guest.
    pub unmapped: u64,
}

/// One vCPU's time split and counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VcpuStats {
    /// Wall time from the thread's start to its end.
    pub total: Duration,
    /// Running guest code.
    pub guest: Duration,
    /// Halted in WFI with nothing to do (or powered off).
    pub idle: Duration,
    /// Blocked for a page: synchronous fetches and repeated-fault halts.
    pub blocked: Duration,
    /// Instructions retired.
    pub instructions: u64,
    /// Exits by kind.
    pub exits: ExitCounts,
    /// Stage-2 faults by outcome.
    pub faults: FaultCounts,
}

impl VcpuStats {
    /// Time in the host: neither guest, idle nor blocked.
    pub fn host(&self) -> Duration {
        self.total
            .saturating_sub(self.guest + self.idle + self.blocked)
    }
}
