//! apf-host: the hypervisor side of apf (DESIGN §2, §4, §5).
//!
//! # The APF engine and its backends
//!
//! The APF logic is [`apf::ApfEngine`], one per vCPU. It does not know how the
//! vCPU runs (DESIGN §3): it sees it through [`apf::ApfVcpu`] and is told of
//! the protocol's moments by calls. This crate's backend is the interpreter
//! run loop ([`vcpu`]); [`vcpu::VcpuContext`] is its `ApfVcpu`, over the
//! machine's GIC model and software stage 2.
//!
//! A second backend, say a VMM on arm64 hardware over real KVM, where the
//! kernel takes the stage-2 fault and the VMM sees only exits, reuses the
//! engine (and, if it serves the guest's firmware calls itself, [`smccc`] and
//! [`sdei`]) without any of the run loop. It implements:
//!
//! - [`apf::ApfVcpu`] over its vCPU: the EL of the faulting context (PSTATE
//!   from `KVM_GET_ONE_REG`), the SDEI state it emulates, the page-ready PPI
//!   (`KVM_IRQ_LINE` into the in-kernel vGIC, level held until IRQ_ACK), its
//!   registry of shared blocks, and 32-bit reads and writes of guest memory
//!   through its own mapping of it.
//! - [`smccc::FirmwareVcpu`] as well, to use [`smccc::dispatch`]: the registers
//!   and the [`sdei::SdeiVcpu`]. KVM forwards the SDEI and vendor-hypervisor
//!   function IDs to the VMM as `KVM_EXIT_HYPERCALL` with the SMCCC filter
//!   (`KVM_ARM_VM_SMCCC_FILTER`, `FWD_TO_USER`); upstream KVM has no SDEI.
//!
//! and calls, at these moments:
//!
//! - **Setup** (vCPU creation): [`apf::ApfEngine::new`], `limit_to_v1_0` to
//!   offer ABI 1.0 only, `configure(sdei_event, ppi)`; give `port()` to the
//!   fetch path and `counters()` to metrics.
//! - **Fault decision**: a guest access to a page the host must fetch reaches
//!   the VMM as an exit that leaves the vCPU free to re-enter unresolved
//!   (`KVM_EXIT_MEMORY_FAULT`); a fault the kernel resolves by itself never
//!   reaches the VMM and stays synchronous. Call `try_async(gfn)`. `Async { cookie }`: start the fetch with the cookie and
//!   re-enter the guest, which takes the queued not-present first. `Halt`:
//!   wait until `halted_on()` clears or an interrupt is pending, then
//!   `end_halt()`. `Sync`: fetch, map, re-enter.
//! - **Completion** (the fetch path, any thread):
//!   `port().complete(ItemHandle::from_cookie(cookie), ok)`, then kick the vCPU
//!   out of `KVM_RUN` (`immediate_exit` or a signal) so it services it soon.
//! - **Before every guest entry**: `service()` (completions, page-readies,
//!   withdrawing a not-present whose page came first), then SDEI delivery and
//!   `on_not_present_delivered()` when the APF event went in: together
//!   [`smccc::deliver_sdei`]. A vCPU halted in WFI counts `has_work()` as
//!   runnable.
//! - **HVC exits**: [`smccc::dispatch`] for every call. It runs ASYNC_PF
//!   (VERSION, SLOTS, SDEI, IRQ, ENABLE, IRQ_ACK) on the engine, and tells it
//!   `on_not_present_discarded()` when UNREGISTER or PRIVATE_RESET drops its
//!   queued event. A backend with other firmware calls `hypercall()` for
//!   function 0x86000030 and `on_not_present_discarded()` itself. IRQ_ACK
//!   lowers the PPI and lets the next page-ready through.
//! - **SDEI COMPLETE**: nothing. The engine let go of its not-present at
//!   delivery, and asks `sdei_running()` at the next fault.
//! - **Enable, disable, reset**: the guest's ENABLE is a hypercall; vCPU reset
//!   (PSCI CPU_ON after CPU_OFF, SYSTEM_RESET) and CPU_OFF call `reset()`,
//!   which drains and disables.
//! - **Save and restore**: `command(GetVersion | GetSdei | GetIrq |
//!   GetControl)` on the source; `SetSdei`, `SetIrq`, then
//!   `SetControl` on the target, which claims the block and queues a wake-all
//!   (items in flight are not migrated: their sleepers wake and retry).
//! - **Teardown**: drop the engine; its port refuses completions that come
//!   later.
//!
//! # The seam with guest memory: one access that misses and goes asynchronous
//!
//! The run loop uses `apf-mem` in its own vocabulary ([`apf_mem::VcpuTlb`],
//! [`apf_mem::TlbMiss`], [`apf_mem::Resolve`], [`apf_mem::FetchStart`],
//! [`apf_mem::FetchError`]); nothing translates between the two crates. `⇣`
//! marks a call from host into mem, `⇡` one back; a guest load from a page that
//! is in the store, with APF enabled:
//!
//! 1. `Vcpu::step` (`vcpu/mod.rs`) runs `Cpu::run` (apf-cpu), whose load calls
//!    `Bus::read` on `VcpuBus` (`vcpu/bus.rs`).
//! 2. ⇣ `VcpuTlb::read` (mem `tlb.rs`): the probe every access makes, inlined;
//!    the tag does not match, so `Err(TlbMiss)`.
//! 3. `Machine::is_ram` (`machine.rs`): RAM, so `BusError::Stage2Fault`; the
//!    interpreter ends the slice with `Exit::Stage2Abort`.
//! 4. ⇣ `Vcpu::stage2_abort` calls `VcpuTlb::resolve` (mem `tlb.rs`):
//!    `Resolve::NeedsFetch(gfn)`. First crossing of the fault path.
//! 5. `ApfEngine::try_async` (`apf/engine.rs`): `FaultDecision::Async { cookie }`,
//!    a not-present queued for the next guest entry.
//! 6. ⇣ `GuestMemory::start_fetch(gfn, sink, cookie)` (mem `memory.rs`, then
//!    `pager.rs` queues the read on `io.rs`): `FetchStart::Started`; the vCPU
//!    re-enters the guest.
//!    Second and last crossing down.
//! 7. ⇡ Whichever thread collects the read (this vCPU's `VcpuTlb::sync` between
//!    slices, the reclaimer, or mem's reaper) installs the page and calls
//!    `FetchSink::fetch_done(cookie, result)` on `ApfFetchSink` (`vcpu/fetch_sink.rs`):
//!    `CompletionPort::complete`, then `VcpuWaker::kick`. The one crossing back.
//! 8. The vCPU's next `step`: `ApfEngine::service` turns the completion into a
//!    page-ready; the guest retries, and that new access misses the TLB once
//!    more (2) and `resolve` (4) maps the resident page: `Resolve::Mapped`.
//!
//! A failed read completes the item as failed (the error is traced in the
//! sink); the engine sends the next fault on that page down the synchronous
//! path, `VcpuTlb::fetch_blocking`, whose typed [`apf_mem::FetchError`] is
//! traced with the external abort the guest then gets.

// Safe Rust but for one vouch: `VcpuBus::host_page` hands apf-mem's host
// pages to apf-cpu's compiled code (`apf_cpu::HostPage::new`). Unsafe code
// anywhere else fails the build.
#![deny(unsafe_code)]

pub mod apf;
pub mod gic;
pub mod machine;
pub mod maintenance;
pub mod psci;
pub mod regs;
pub mod sdei;
pub mod smccc;
pub mod sync;
pub mod uart;
pub mod vcpu;
pub mod waker;
