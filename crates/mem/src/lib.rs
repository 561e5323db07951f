//! apf-mem: guest RAM, stage-2 page state, per-vCPU software TLBs, reclaim under a
//! host budget, backing stores with real I/O, and the fetch pipeline (DESIGN §6).
//!
//! - [`GuestMemory`] owns guest RAM (one anonymous mapping; evicted pages are given
//!   back to the host) and every page's state: untouched, resident (clean or
//!   dirty), evicting, dropping, in the store, fetching.
//! - [`VcpuTlb`] is one vCPU's software TLB: hits are a tag compare and an atomic
//!   access; misses go through [`VcpuTlb::resolve`], the stage-2 fault path.
//! - A page leaves memory only after a TLB shootdown every running vCPU has
//!   acknowledged ([`VcpuTlb::sync`]) or a parked one cannot delay.
//! - The reclaimer keeps resident pages under the budget with CLOCK, evicting in
//!   batches; dirty pages are written to the [`store::Store`], clean ones dropped.
//! - [`GuestMemory::start_fetch`] (asynchronous, for APF) and
//!   [`VcpuTlb::fetch_blocking`] bring pages back, one read per page however many
//!   ask, read straight into place and published atomically.
//! - [`GuestMemory::start_dirty_log`] / [`GuestMemory::take_dirty_log`] log the
//!   pages written between takes (pre-copy migration's rounds).
//!
//! The parts, each owning its state, depend one way (`tests/layering.rs`):
//! `tlb` → `memory` (composes) → `reclaim` → `pager` (page table, every state
//! transition) → `io` (the I/O engine over the store: queue, depth, tags,
//! timeouts, the collecting role; no page states) → `fifo`; `frames` (the
//! budget and the reclaimer's kick), `dirty_log` (whose takes shoot down) and
//! `shootdown` below them, on `sync`.
//! `export` (guest RAM as an NBD export, for a migration's source) sits on
//! `memory` and `store`.

mod dirty_log;
mod export;
mod fifo;
mod frames;
mod io;
mod memory;
pub mod metrics;
mod page;
mod pager;
mod ram;
mod reclaim;
mod shootdown;
pub mod store;
pub mod store_bench;
mod sync;
mod tlb;

pub use dirty_log::DirtyPages;
pub use export::GuestRamSource;
pub use memory::{
    ExportError, GuestMemory, HostAccessError, InvariantError, MemConfig, MemError, PlaceError,
};
pub use metrics::MemMetrics;
pub use pager::{FetchError, FetchSink, FetchStart};
pub use store::Store;
pub use tlb::{AccessSize, Resolve, TLB_ENTRIES, TlbMiss, VcpuTlb};
