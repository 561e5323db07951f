//! The asynchronous page fault engine (DESIGN §5).
//!
//! [`ApfEngine`] is one vCPU's engine: it decides what to do with a fault that
//! needs I/O, posts not-present and page-ready notifications, handles the guest's
//! ASYNC_PF hypercall and the VMM's control API. It reaches the vCPU only through
//! [`ApfVcpu`], so tests drive it with [`fake::FakeVcpu`] and a real-KVM backend
//! could drive it unchanged. Fetch completions arrive from other threads through
//! its [`CompletionPort`].

mod completion;
mod counters;
mod engine;
pub mod fake;
mod hypercall;
mod slots;
mod state;
mod vcpu;
mod vmm;

pub use completion::{AtomicWord, Completed, CompletionPort, ItemHandle};
pub use counters::{ApfCounters, ApfCountersSnapshot, SyncReason};
pub use engine::{ApfEngine, EnableError, FaultDecision};
pub use hypercall::HypercallResult;
pub use slots::GfnSlots;
pub use state::ApfEngineState;
pub use vcpu::{ApfVcpu, GuestMemoryError, SdeiCancelError, SdeiInjectError};
pub use vmm::{ApfCommand, ApfCommandError, cmd};
