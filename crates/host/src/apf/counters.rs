//! Counters for every notification and every fallback reason.
//!
//! Plain relaxed atomics: the vCPU thread is the only writer, and reports read them
//! from other threads while the VM runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a fault was not handled asynchronously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SyncReason {
    /// The VMM does not offer APF to this guest.
    NotOffered,
    /// The guest has not enabled APF.
    Disabled,
    /// The fault came from EL1 and SEND_ALWAYS is off.
    KernelMode,
    /// An SDEI handler is running on the vCPU.
    SdeiRunning,
    /// The APF event is not registered, not enabled, or the PE is masked.
    SdeiNotDeliverable,
    /// The not-present channel still holds an earlier notification.
    ChannelBusy,
    /// 64 faults are already outstanding.
    QueueFull,
    /// Writing the shared block failed; rolled back.
    BlockWriteFailed,
    /// SDEI injection failed after the block was written; rolled back.
    InjectFailed,
    /// The last asynchronous fetch of this page failed: resolve it synchronously so
    /// the error reaches the guest.
    RetryAfterError,
    /// The page was fetched but evicted again before its page-ready went out.
    RefaultBeforeReady,
}

impl SyncReason {
    /// Every reason, for reports.
    pub const ALL: [SyncReason; 11] = [
        SyncReason::NotOffered,
        SyncReason::Disabled,
        SyncReason::KernelMode,
        SyncReason::SdeiRunning,
        SyncReason::SdeiNotDeliverable,
        SyncReason::ChannelBusy,
        SyncReason::QueueFull,
        SyncReason::BlockWriteFailed,
        SyncReason::InjectFailed,
        SyncReason::RetryAfterError,
        SyncReason::RefaultBeforeReady,
    ];

    /// A short name for reports and traces.
    pub const fn name(self) -> &'static str {
        match self {
            SyncReason::NotOffered => "not_offered",
            SyncReason::Disabled => "disabled",
            SyncReason::KernelMode => "kernel_mode",
            SyncReason::SdeiRunning => "sdei_running",
            SyncReason::SdeiNotDeliverable => "sdei_not_deliverable",
            SyncReason::ChannelBusy => "channel_busy",
            SyncReason::QueueFull => "queue_full",
            SyncReason::BlockWriteFailed => "block_write_failed",
            SyncReason::InjectFailed => "inject_failed",
            SyncReason::RetryAfterError => "retry_after_error",
            SyncReason::RefaultBeforeReady => "refault_before_ready",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// One vCPU's APF counters.
#[derive(Debug, Default)]
pub struct ApfCounters {
    /// Not-present notifications injected (SDEI queued).
    pub not_present: AtomicU64,
    /// Not-present notifications that reached the guest (SDEI delivered).
    pub not_present_delivered: AtomicU64,
    /// Page-ready notifications sent for a fault.
    pub page_ready: AtomicU64,
    /// Wake-all page-readies sent.
    pub wake_all: AtomicU64,
    /// Faults whose page arrived before their not-present was delivered: both
    /// notifications cancelled.
    pub cancelled: AtomicU64,
    /// Repeated faults on a page in flight: the vCPU halted in the host.
    pub repeated_fault_halts: AtomicU64,
    /// Fetch completions taken from the port.
    pub completions: AtomicU64,
    /// Of those, failed fetches.
    pub failed_fetches: AtomicU64,
    /// IRQ_ACK calls that lowered a pending page-ready.
    pub acks: AtomicU64,
    /// IRQ_ACK calls with nothing pending.
    pub spurious_acks: AtomicU64,
    /// Page-readies dropped because the shared block could not be written.
    pub ready_write_failed: AtomicU64,
    /// Work items discarded by disable or reset.
    pub drained: AtomicU64,
    /// Gauge: work items outstanding now (fetch in flight or page-ready owed).
    pub outstanding: AtomicU64,
    /// Gauge: the most work items ever outstanding at once.
    pub outstanding_peak: AtomicU64,
    fallbacks: [AtomicU64; SyncReason::ALL.len()],
}

/// A plain copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApfCountersSnapshot {
    /// See [`ApfCounters::not_present`].
    pub not_present: u64,
    /// See [`ApfCounters::not_present_delivered`].
    pub not_present_delivered: u64,
    /// See [`ApfCounters::page_ready`].
    pub page_ready: u64,
    /// See [`ApfCounters::wake_all`].
    pub wake_all: u64,
    /// See [`ApfCounters::cancelled`].
    pub cancelled: u64,
    /// See [`ApfCounters::repeated_fault_halts`].
    pub repeated_fault_halts: u64,
    /// See [`ApfCounters::completions`].
    pub completions: u64,
    /// See [`ApfCounters::failed_fetches`].
    pub failed_fetches: u64,
    /// See [`ApfCounters::acks`].
    pub acks: u64,
    /// See [`ApfCounters::spurious_acks`].
    pub spurious_acks: u64,
    /// See [`ApfCounters::ready_write_failed`].
    pub ready_write_failed: u64,
    /// See [`ApfCounters::drained`].
    pub drained: u64,
    /// See [`ApfCounters::outstanding`].
    pub outstanding: u64,
    /// See [`ApfCounters::outstanding_peak`].
    pub outstanding_peak: u64,
    /// Synchronous fallbacks by reason, in [`SyncReason::ALL`] order.
    pub fallbacks: [u64; SyncReason::ALL.len()],
}

impl ApfCountersSnapshot {
    /// Fallbacks for one reason.
    pub fn fallback(&self, reason: SyncReason) -> u64 {
        self.fallbacks[reason.index()]
    }

    /// All synchronous fallbacks.
    pub fn total_fallbacks(&self) -> u64 {
        self.fallbacks.iter().sum()
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ApfCounters {
    pub(crate) fn fallback(&self, reason: SyncReason) {
        bump(&self.fallbacks[reason.index()]);
    }

    /// Records the number of work items outstanding now.
    pub(crate) fn set_outstanding(&self, n: u64) {
        self.outstanding.store(n, Ordering::Relaxed);
        self.outstanding_peak.fetch_max(n, Ordering::Relaxed);
    }

    /// Takes a snapshot.
    pub fn snapshot(&self) -> ApfCountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ApfCountersSnapshot {
            not_present: r(&self.not_present),
            not_present_delivered: r(&self.not_present_delivered),
            page_ready: r(&self.page_ready),
            wake_all: r(&self.wake_all),
            cancelled: r(&self.cancelled),
            repeated_fault_halts: r(&self.repeated_fault_halts),
            completions: r(&self.completions),
            failed_fetches: r(&self.failed_fetches),
            acks: r(&self.acks),
            spurious_acks: r(&self.spurious_acks),
            ready_write_failed: r(&self.ready_write_failed),
            drained: r(&self.drained),
            outstanding: r(&self.outstanding),
            outstanding_peak: r(&self.outstanding_peak),
            fallbacks: std::array::from_fn(|i| r(&self.fallbacks[i])),
        }
    }
}
