//! `ApfEngine`: one vCPU's asynchronous page fault engine.
//!
//! The state machine of `apf-protocol.md` §b with the corrections of DESIGN §5:
//!
//! ```text
//!  fault ──try_async──► Sync(reason)            the vCPU waits on the same fetch
//!                   ├─► Halt                     repeated fault: wait for that page
//!                   └─► Async: token, slot, block {token, reason=1}, SDEI queued
//!                          │ (any failure rolls all of it back → Sync)
//!     SDEI delivered ──────┤ on_not_present_delivered
//!     fetch completes ─────┤ CompletionPort::complete (any thread) ─► done FIFO
//!                          ▼ service (vCPU thread, before entry)
//!          not-present still queued? ─► cancel both: silent
//!          ready channel free and no page-ready awaiting ACK?
//!                          ▼
//!          block {token, reason=2}, PPI high ─► IRQ_ACK ─► PPI low, next
//! ```
//!
//! Everything here runs on the vCPU's own thread except
//! [`CompletionPort::complete`]. Nothing allocates after construction: work items
//! live in a fixed array of 64, the done FIFO is a 64-entry ring.

use super::completion::{AtomicWord, Completed, CompletionPort};
use super::counters::{ApfCounters, SyncReason, bump};
use super::slots::GfnSlots;
use super::vcpu::ApfVcpu;
use apf_abi::control::ControlWord;
use apf_abi::shared::{
    Channel, REASON_NONE, REASON_PAGE_NOT_PRESENT, REASON_PAGE_READY, SHARED_HOST_WINDOW,
};
use apf_abi::{ASYNC_PF_PER_VCPU, Gfn, Token};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use thiserror::Error;

const N: usize = ASYNC_PF_PER_VCPU;
/// Failed fetches remembered so that the retry resolves synchronously.
const RECENT_FAILURES: usize = 8;

/// What the caller should do with a fault that needs I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDecision {
    /// Start the fetch with `cookie` as its completion cookie and resume the guest:
    /// the not-present notification is queued.
    Async {
        /// The token the guest will see.
        token: Token,
        /// Pass to [`CompletionPort::complete`] via
        /// [`ItemHandle::from_cookie`](super::ItemHandle::from_cookie).
        cookie: u64,
    },
    /// A repeated fault on a page already in flight: halt the vCPU in the host until
    /// [`ApfEngine::halted_on`] clears (that page arrived) or an interrupt is pending.
    Halt,
    /// Resolve synchronously: the vCPU waits for the fetch itself.
    Sync(SyncReason),
}

/// Why a control word was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EnableError {
    /// The VMM does not offer APF to this guest.
    #[error("APF is not offered to this guest")]
    NotOffered,
    /// Reserved control bits were set.
    #[error("control word {0:#x} sets reserved bits 5:3")]
    ReservedBits(u64),
    /// Enabling before the VMM set the SDEI event and the PPI.
    #[error("enabling before the VMM set the SDEI event ({sdei:#x}) and PPI ({ppi})")]
    NotConfigured {
        /// The SDEI event number (0 = unset).
        sdei: u32,
        /// The PPI (0 = unset).
        ppi: u32,
    },
    /// The shared block is outside guest RAM, in device memory, or overlaps another
    /// vCPU's block.
    #[error("shared block at {0:#x} is not usable guest RAM")]
    BadBlock(u64),
    /// The enabled bit did not change (guest ENABLE only; NOT_REQUIRED).
    #[error("APF is already {}", if *.0 { "enabled" } else { "disabled" })]
    Unchanged(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemState {
    Free,
    /// Queued; the fetch is in flight.
    InFlight,
    /// The fetch finished; waiting in the done FIFO for its page-ready.
    Done,
}

#[derive(Debug, Clone, Copy)]
struct WorkItem {
    gfn: Gfn,
    token: Token,
    state: ItemState,
    /// A page-ready is owed: false once the guest threw the not-present away
    /// unseen (it unregistered the event while the instance was queued).
    owed: bool,
}

impl WorkItem {
    const FREE: WorkItem = WorkItem {
        gfn: Gfn(0),
        token: Token(0),
        state: ItemState::Free,
        owed: false,
    };
}

/// FIFO of slot indices, capacity 64.
#[derive(Debug, Clone)]
struct DoneFifo {
    ring: [u8; N],
    head: usize,
    len: usize,
}

impl DoneFifo {
    const fn new() -> Self {
        DoneFifo {
            ring: [0; N],
            head: 0,
            len: 0,
        }
    }
    fn push(&mut self, slot: u8) {
        debug_assert!(self.len < N);
        self.ring[(self.head + self.len) % N] = slot;
        self.len += 1;
    }
    fn front(&self) -> Option<u8> {
        (self.len > 0).then(|| self.ring[self.head])
    }
    fn pop(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % N;
            self.len -= 1;
        }
    }
    fn clear(&mut self) {
        self.len = 0;
    }
    /// Removes `slot` wherever it is, keeping the order of the rest.
    fn remove(&mut self, slot: u8) {
        let mut kept = 0;
        for i in 0..self.len {
            let s = self.ring[(self.head + i) % N];
            if s != slot {
                self.ring[(self.head + kept) % N] = s;
                kept += 1;
            }
        }
        self.len = kept;
    }
}

fn channel_addrs(block: u64, channel: Channel) -> (u64, u64) {
    (
        block + channel.reason_offset(),
        block + channel.token_offset(),
    )
}

fn clear_channel_at(vcpu: &mut impl ApfVcpu, block: u64, channel: Channel) -> bool {
    let (reason, token) = channel_addrs(block, channel);
    vcpu.write_u32(reason, REASON_NONE).is_ok() && vcpu.write_u32(token, 0).is_ok()
}

/// What an enable does with a page-ready the guest has not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UnackedReady {
    /// Dropped with the rest of the work: the guest's own ENABLE, a disable, a
    /// reset.
    Drop,
    /// Kept awaiting the guest's IRQ_ACK, its words and line as they are: a VMM
    /// re-enable or a restore may land while the guest is taking it (reading its
    /// words, clearing them, about to ACK), and a wake-all written over it
    /// would be wiped by the guest's clear or lowered by its ACK. The wake-all
    /// follows that ACK.
    Keep,
}

/// Claims the block at `gpa` and empties its channels: from here on the host
/// owns them, and words left behind before a disable must not hold them busy
/// (a page-ready kept by [`UnackedReady::Keep`] stays). The claim comes before
/// the first write, so the block written is never another vCPU's; a refusal
/// gives it back and changes nothing else.
fn take_block(vcpu: &mut impl ApfVcpu, gpa: u64, unacked: UnackedReady) -> Result<(), EnableError> {
    if !vcpu.claim_shared_block(gpa, SHARED_HOST_WINDOW) {
        return Err(EnableError::BadBlock(gpa));
    }
    let empty = |vcpu: &mut _, channel| {
        let (reason, _) = channel_addrs(gpa, channel);
        let kept = unacked == UnackedReady::Keep
            && ApfVcpu::read_u32(vcpu, reason) == Ok(REASON_PAGE_READY);
        kept || clear_channel_at(vcpu, gpa, channel)
    };
    if empty(vcpu, Channel::NotPresent) && empty(vcpu, Channel::Ready) {
        return Ok(());
    }
    vcpu.release_shared_block(gpa);
    Err(EnableError::BadBlock(gpa))
}

enum ReadyOutcome {
    Delivered,
    ChannelBusy,
    WriteFailed,
}

/// One vCPU's APF state: the VMM's configuration (SDEI event, PPI), the guest's
/// control word, the work items and the notification state.
#[derive(Debug)]
pub struct ApfEngine<W: AtomicWord = AtomicU64> {
    vcpu_id: u32,
    offered: bool,
    /// Faults may be taken asynchronously; false on an engine that keeps a
    /// restored guest's channel without offering APF
    /// ([`ApfEngine::restore_state`]).
    async_faults: bool,
    /// The VMM offers ABI 1.1 (the separate page-ready channel); else 1.0.
    separate_ready_offered: bool,
    sdei_event: u32,
    ppi: u32,
    control: ControlWord,
    next_id: u32,
    slots: GfnSlots,
    items: [WorkItem; N],
    /// Bit n set: item slot n is free.
    free: u64,
    done: DoneFifo,
    wake_all_pending: bool,
    /// The item whose not-present SDEI is queued but not yet delivered.
    not_present_pending: Option<u8>,
    /// The token of the page-ready awaiting IRQ_ACK.
    page_ready_pending: Option<Token>,
    halted_on: Option<Gfn>,
    recent_failures: [Option<Gfn>; RECENT_FAILURES],
    port: Arc<CompletionPort<W>>,
    counters: Arc<ApfCounters>,
}

impl ApfEngine {
    /// A vCPU's engine. `offered` says whether the VMM offers APF to this guest at
    /// all (when false, every hypercall answers NOT_SUPPORTED). The VMM must set the
    /// SDEI event and PPI (control API) before the guest can enable.
    pub fn new(vcpu_id: u32, offered: bool) -> Self {
        ApfEngine::new_generic(vcpu_id, offered)
    }
}

impl<W: AtomicWord> ApfEngine<W> {
    /// [`ApfEngine::new`] with another atomic word type: the model-checked tests run
    /// the engine on shuttle's atomics.
    /// vCPU ids above 0xFFF alias in the token's 12 bits: harmless, tokens only
    /// need to be unique per vCPU.
    pub fn new_generic(vcpu_id: u32, offered: bool) -> Self {
        ApfEngine {
            vcpu_id: vcpu_id & apf_abi::token::TOKEN_MAX_VCPU,
            offered,
            async_faults: true,
            separate_ready_offered: true,
            sdei_event: 0,
            ppi: 0,
            control: ControlWord::DISABLED,
            next_id: 0,
            slots: GfnSlots::default(),
            items: [WorkItem::FREE; N],
            free: u64::MAX,
            done: DoneFifo::new(),
            wake_all_pending: false,
            not_present_pending: None,
            page_ready_pending: None,
            halted_on: None,
            recent_failures: [None; RECENT_FAILURES],
            port: Arc::new(CompletionPort::default()),
            counters: Arc::new(ApfCounters::default()),
        }
    }

    /// The port fetch completions are delivered to (from any thread).
    pub fn port(&self) -> &Arc<CompletionPort<W>> {
        &self.port
    }

    /// The counters (readable from any thread).
    pub fn counters(&self) -> &Arc<ApfCounters> {
        &self.counters
    }

    /// Whether the VMM offers APF to this guest.
    pub fn offered(&self) -> bool {
        self.offered
    }

    /// Accepts the ABI's calls (so a restored guest's channel keeps working)
    /// but takes every fault synchronously.
    pub(crate) fn accept_channel_only(&mut self) {
        self.offered = true;
        self.async_faults = false;
    }

    /// The VMM offers only ABI 1.0: VERSION reports 1.0.0 and SEPARATE_READY is a
    /// reserved bit, as the series had it.
    pub fn limit_to_v1_0(&mut self) {
        self.separate_ready_offered = false;
    }

    /// The interface version this vCPU reports.
    pub fn version(&self) -> u32 {
        if self.separate_ready_offered {
            apf_abi::APF_VERSION
        } else {
            0x01_00_00
        }
    }

    /// The guest's current control word.
    pub fn control(&self) -> ControlWord {
        self.control
    }

    /// The VMM-chosen SDEI event (0 = unset).
    pub fn sdei_event(&self) -> u32 {
        self.sdei_event
    }

    /// The VMM-chosen page-ready PPI (0 = unset).
    pub fn ppi(&self) -> u32 {
        self.ppi
    }

    /// Work items outstanding (fetch in flight or awaiting page-ready).
    pub fn outstanding(&self) -> usize {
        N - self.free.count_ones() as usize
    }

    /// The GFN this vCPU is halted on after a repeated fault, until it arrives.
    pub fn halted_on(&self) -> Option<Gfn> {
        self.halted_on
    }

    /// Ends a repeated-fault halt early (an interrupt became pending).
    pub fn end_halt(&mut self) {
        self.halted_on = None;
    }

    /// The token of the page-ready awaiting IRQ_ACK, if any.
    pub fn page_ready_pending(&self) -> Option<Token> {
        self.page_ready_pending
    }

    /// Whether [`ApfEngine::service`] has anything to do: completions to collect or
    /// page-readies to send. The run loop's "runnable" test for a halted vCPU.
    pub fn has_work(&self) -> bool {
        self.port.has_ready()
            || (self.page_ready_pending.is_none() && (self.wake_all_pending || self.done.len > 0))
    }

    /// One line on what this engine holds now: its work items, the
    /// notifications queued and pending, and the words of its channels in
    /// guest memory. A run whose guest hung says from this whether a fetch
    /// never ended, a page-ready never went out, or the guest never took one.
    /// `page` describes an item's page (its state in guest memory).
    pub fn describe(&self, vcpu: &mut impl ApfVcpu, page: impl Fn(Gfn) -> String) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "enabled={} block={:#x} separate_ready={}",
            self.control.enabled, self.control.gpa, self.control.separate_ready
        );
        for item in self.items.iter().filter(|i| i.state != ItemState::Free) {
            let _ = write!(
                s,
                " item(token={:#x} gfn={:#x} {:?}{}: page {})",
                item.token.0,
                item.gfn.0,
                item.state,
                if item.owed { "" } else { " unowed" },
                page(item.gfn)
            );
        }
        let done: Vec<u8> = (0..self.done.len)
            .map(|i| self.done.ring[(self.done.head + i) % N])
            .collect();
        let _ = write!(
            s,
            " done={done:?} completions_waiting={} wake_all_pending={} \
             not_present_pending={:?} page_ready_pending={:?} halted_on={:?}",
            self.port.has_ready(),
            self.wake_all_pending,
            self.not_present_pending,
            self.page_ready_pending.map(|t| t.0),
            self.halted_on.map(|g| g.0),
        );
        if self.control.enabled {
            for channel in [Channel::NotPresent, Channel::Ready] {
                let (reason, token) = self.block_addr(channel);
                let _ = write!(
                    s,
                    " {channel:?}=(reason {:?}, token {:?})",
                    vcpu.read_u32(reason).ok(),
                    vcpu.read_u32(token).ok()
                );
            }
        }
        s
    }

    fn alloc_token(&mut self) -> Token {
        loop {
            self.next_id = self.next_id.wrapping_add(1) & 0xF_FFFF;
            if let Some(token) = Token::compose(self.next_id, self.vcpu_id) {
                return token;
            }
        }
    }

    fn block_addr(&self, channel: Channel) -> (u64, u64) {
        (
            self.control.gpa + channel.reason_offset(),
            self.control.gpa + channel.token_offset(),
        )
    }

    fn channel_free(&self, vcpu: &mut impl ApfVcpu, channel: Channel) -> Option<bool> {
        let (reason, token) = self.block_addr(channel);
        let r = vcpu.read_u32(reason).ok()?;
        let t = vcpu.read_u32(token).ok()?;
        Some(r == REASON_NONE && t == 0)
    }

    /// Writes `{token, reason}` to a channel, token first. On failure the channel is
    /// cleared again as far as possible and false returned.
    fn post(&self, vcpu: &mut impl ApfVcpu, channel: Channel, reason: u32, token: Token) -> bool {
        let (r_addr, t_addr) = self.block_addr(channel);
        if vcpu.write_u32(t_addr, token.0).is_ok() && vcpu.write_u32(r_addr, reason).is_ok() {
            return true;
        }
        // Best effort: the write that just failed will likely fail again, and then
        // nothing was posted there either.
        self.clear_channel(vcpu, channel);
        false
    }

    /// Clears a channel; returns whether both words were written.
    fn clear_channel(&self, vcpu: &mut impl ApfVcpu, channel: Channel) -> bool {
        clear_channel_at(vcpu, self.control.gpa, channel)
    }

    fn fallback(&self, gfn: Gfn, reason: SyncReason) -> FaultDecision {
        self.counters.fallback(reason);
        tracing::trace!(name: "try_async_get_page", target: "apf", vcpu = self.vcpu_id, gfn = gfn.0,
            decision = "sync", reason = reason.name());
        FaultDecision::Sync(reason)
    }

    fn item_of_gfn(&self, gfn: Gfn) -> Option<usize> {
        if !self.slots.contains(gfn) {
            return None;
        }
        self.items
            .iter()
            .position(|i| i.state != ItemState::Free && i.gfn == gfn)
    }

    /// Decides how to handle a stage-2 fault on `gfn` that needs I/O (DESIGN §5.1–5.3,
    /// §5.7). A completed fetch maps the page, so the guest's retry of the
    /// faulting instruction just runs: nothing of the fault needs keeping.
    pub fn try_async(&mut self, vcpu: &mut impl ApfVcpu, gfn: Gfn) -> FaultDecision {
        if !self.offered || !self.async_faults {
            return self.fallback(gfn, SyncReason::NotOffered);
        }
        if !self.control.enabled {
            return self.fallback(gfn, SyncReason::Disabled);
        }
        if let Some(failed) = self.recent_failures.iter_mut().find(|f| **f == Some(gfn)) {
            *failed = None;
            return self.fallback(gfn, SyncReason::RetryAfterError);
        }
        if vcpu.exception_level() != 0 && !self.control.send_always {
            return self.fallback(gfn, SyncReason::KernelMode);
        }
        if let Some(index) = self.item_of_gfn(gfn) {
            if self.items[index].state == ItemState::Done {
                return self.fallback(gfn, SyncReason::RefaultBeforeReady);
            }
            self.halted_on = Some(gfn);
            bump(&self.counters.repeated_fault_halts);
            tracing::trace!(name: "try_async_get_page", target: "apf", vcpu = self.vcpu_id, gfn = gfn.0,
                decision = "halt");
            tracing::trace!(name: "async_pf_repeated_fault", target: "apf", vcpu = self.vcpu_id,
                gfn = gfn.0, token = self.items[index].token.0);
            return FaultDecision::Halt;
        }
        if vcpu.sdei_running() {
            return self.fallback(gfn, SyncReason::SdeiRunning);
        }
        if !vcpu.sdei_deliverable(self.sdei_event) {
            return self.fallback(gfn, SyncReason::SdeiNotDeliverable);
        }
        if self.not_present_pending.is_some()
            || self.channel_free(vcpu, Channel::NotPresent) != Some(true)
        {
            return self.fallback(gfn, SyncReason::ChannelBusy);
        }
        if self.free == 0 {
            return self.fallback(gfn, SyncReason::QueueFull);
        }
        let slot = u8::try_from(self.free.trailing_zeros()).unwrap_or(0);
        let token = self.alloc_token();
        if !self.post(vcpu, Channel::NotPresent, REASON_PAGE_NOT_PRESENT, token) {
            return self.fallback(gfn, SyncReason::BlockWriteFailed);
        }
        if vcpu.sdei_inject(self.sdei_event).is_err() {
            // DESIGN §5.2: roll back the block (and there is no slot or item yet), so
            // no page-ready is ever sent for this fault and the channel is free.
            // (Writing the same words just succeeded.)
            self.clear_channel(vcpu, Channel::NotPresent);
            return self.fallback(gfn, SyncReason::InjectFailed);
        }
        self.slots.add(gfn);
        self.free &= !(1 << slot);
        self.items[usize::from(slot)] = WorkItem {
            gfn,
            token,
            state: ItemState::InFlight,
            owed: true,
        };
        self.not_present_pending = Some(slot);
        let handle = self.port.arm(slot);
        self.counters.set_outstanding(self.outstanding() as u64);
        bump(&self.counters.not_present);
        tracing::trace!(name: "try_async_get_page", target: "apf", vcpu = self.vcpu_id, gfn = gfn.0,
            decision = "async");
        tracing::trace!(name: "async_pf_not_present", target: "apf", vcpu = self.vcpu_id, gfn = gfn.0,
            token = token.0);
        FaultDecision::Async {
            token,
            cookie: handle.to_cookie(),
        }
    }

    /// The platform delivered the APF SDEI event to the guest.
    pub fn on_not_present_delivered(&mut self) {
        if self.not_present_pending.take().is_some() {
            bump(&self.counters.not_present_delivered);
        }
    }

    /// The guest unregistered the APF event (UNREGISTER, PRIVATE_RESET) while the
    /// not-present was still queued, and the platform dropped it. The guest never
    /// saw the fault: withdraw the words and owe it no page-ready (§5.2's "not
    /// injected"); a re-fault on the page halts until it arrives.
    pub fn on_not_present_discarded(&mut self, vcpu: &mut impl ApfVcpu) {
        let Some(slot) = self.not_present_pending.take() else {
            return;
        };
        self.clear_channel(vcpu, Channel::NotPresent);
        self.items[usize::from(slot)].owed = false;
    }

    fn take_completion(&mut self, c: Completed) {
        let item = &mut self.items[usize::from(c.slot)];
        if item.state != ItemState::InFlight {
            return;
        }
        item.state = ItemState::Done;
        let gfn = item.gfn;
        let token = item.token;
        self.done.push(c.slot);
        bump(&self.counters.completions);
        if !c.ok {
            bump(&self.counters.failed_fetches);
            let spot = self
                .recent_failures
                .iter()
                .position(Option::is_none)
                .unwrap_or(0);
            self.recent_failures[spot] = Some(gfn);
        }
        if self.halted_on == Some(gfn) {
            self.halted_on = None;
        }
        // `waited_ns`: since the fetch finished on its thread, so `apf trace` can
        // place the page-in itself and show how long the vCPU took to notice it.
        let waited_ns = u64::try_from(c.waited.as_nanos()).unwrap_or(u64::MAX);
        tracing::trace!(name: "async_pf_completed", target: "apf", vcpu = self.vcpu_id, gfn = gfn.0,
            token = token.0, ok = c.ok, waited_ns);
    }

    fn release(&mut self, slot: u8) {
        let item = &mut self.items[usize::from(slot)];
        self.slots.remove(item.gfn);
        *item = WorkItem::FREE;
        self.free |= 1 << slot;
        self.port.disarm(slot);
        self.counters.set_outstanding(self.outstanding() as u64);
    }

    fn ready_channel(&self) -> Channel {
        if self.control.separate_ready {
            Channel::Ready
        } else {
            Channel::NotPresent
        }
    }

    fn send_ready(&mut self, vcpu: &mut impl ApfVcpu, token: Token) -> ReadyOutcome {
        let channel = self.ready_channel();
        match self.channel_free(vcpu, channel) {
            Some(true) => {}
            Some(false) => return ReadyOutcome::ChannelBusy,
            None => return ReadyOutcome::WriteFailed,
        }
        if !self.post(vcpu, channel, REASON_PAGE_READY, token) {
            return ReadyOutcome::WriteFailed;
        }
        vcpu.set_ppi_level(self.ppi, true);
        self.page_ready_pending = Some(token);
        tracing::trace!(name: "async_pf_ready", target: "apf", vcpu = self.vcpu_id,
            token = token.0);
        ReadyOutcome::Delivered
    }

    /// DESIGN §5.4: if the page of the not-present still queued for delivery has
    /// arrived, cancel both notifications; the guest never learns of the fault. This
    /// also frees the channel if the guest masked its PE after the injection, which
    /// in the series could hold the block busy forever (§d.21).
    fn withdraw_arrived_not_present(&mut self, vcpu: &mut impl ApfVcpu) {
        let Some(slot) = self.not_present_pending else {
            return;
        };
        if self.items[usize::from(slot)].state != ItemState::Done {
            return;
        }
        // Withdraw the words first: if that fails, leave everything as it is and
        // try again at the next service (or the guest takes the not-present).
        if !self.clear_channel(vcpu, Channel::NotPresent) {
            return;
        }
        self.not_present_pending = None;
        if vcpu.sdei_cancel(self.sdei_event).is_ok() {
            self.done.remove(slot);
            self.release(slot);
            bump(&self.counters.cancelled);
            return;
        }
        // Delivered after all, before the platform's notice reached us: the guest's
        // handler will read the channel, so put the words back; a page-ready follows.
        let token = self.items[usize::from(slot)].token;
        self.post(vcpu, Channel::NotPresent, REASON_PAGE_NOT_PRESENT, token);
        bump(&self.counters.not_present_delivered);
    }

    /// Collects completions and sends what page-readies can go (DESIGN §5.4, §5.5).
    /// Call before every guest entry and when a halted vCPU is woken; it costs one
    /// atomic load when there is nothing to do.
    pub fn service(&mut self, vcpu: &mut impl ApfVcpu) {
        if self.port.has_ready() {
            let port = Arc::clone(&self.port);
            port.collect(|c| self.take_completion(c));
        }
        self.withdraw_arrived_not_present(vcpu);
        while self.page_ready_pending.is_none() {
            if self.wake_all_pending {
                match self.send_ready(vcpu, Token::WAKE_ALL) {
                    ReadyOutcome::ChannelBusy => return,
                    ReadyOutcome::Delivered => bump(&self.counters.wake_all),
                    ReadyOutcome::WriteFailed => bump(&self.counters.ready_write_failed),
                }
                self.wake_all_pending = false;
                continue;
            }
            let Some(slot) = self.done.front() else {
                return;
            };
            if !self.items[usize::from(slot)].owed {
                self.done.pop();
                self.release(slot);
                bump(&self.counters.cancelled);
                continue;
            }
            let token = self.items[usize::from(slot)].token;
            match self.send_ready(vcpu, token) {
                ReadyOutcome::ChannelBusy => return,
                ReadyOutcome::Delivered => bump(&self.counters.page_ready),
                ReadyOutcome::WriteFailed => bump(&self.counters.ready_write_failed),
            }
            self.done.pop();
            self.release(slot);
        }
    }

    /// The guest's IRQ_ACK: lowers the PPI and lets the next page-ready through.
    /// Returns true if a page-ready was pending.
    pub fn irq_ack(&mut self, vcpu: &mut impl ApfVcpu) -> bool {
        if self.page_ready_pending.take().is_none() {
            bump(&self.counters.spurious_acks);
            return false;
        }
        vcpu.set_ppi_level(self.ppi, false);
        bump(&self.counters.acks);
        self.service(vcpu);
        true
    }

    /// Discards every work item and notification (disable, reset, re-enable).
    fn drain(&mut self, vcpu: &mut impl ApfVcpu) {
        if self.not_present_pending.take().is_some() && vcpu.sdei_cancel(self.sdei_event).is_ok() {
            self.clear_channel(vcpu, Channel::NotPresent);
        }
        if self.page_ready_pending.take().is_some() {
            vcpu.set_ppi_level(self.ppi, false);
        }
        for slot in 0..N {
            if self.items[slot].state != ItemState::Free {
                self.release(u8::try_from(slot).unwrap_or(0));
                bump(&self.counters.drained);
            }
        }
        // Completions that raced in are refused now; clear their ready bits.
        let port = Arc::clone(&self.port);
        port.collect(|_| {});
        self.done.clear();
        self.slots.clear();
        self.wake_all_pending = false;
        self.halted_on = None;
        self.recent_failures = [None; RECENT_FAILURES];
    }

    pub(super) fn check_control(&self, raw: u64) -> Result<ControlWord, EnableError> {
        if !self.offered {
            return Err(EnableError::NotOffered);
        }
        let word = ControlWord::decode(raw).map_err(|_| EnableError::ReservedBits(raw))?;
        if word.separate_ready && !self.separate_ready_offered {
            return Err(EnableError::ReservedBits(raw));
        }
        if word.enabled && (self.sdei_event == 0 || self.ppi == 0) {
            return Err(EnableError::NotConfigured {
                sdei: self.sdei_event,
                ppi: self.ppi,
            });
        }
        Ok(word)
    }

    /// Switches to `word`, whose block (if enabled) is already taken. The old
    /// block is released last: draining may still write it, and until then no
    /// other vCPU may have it.
    fn switch_to(&mut self, vcpu: &mut impl ApfVcpu, word: ControlWord, unacked: UnackedReady) {
        self.drain(vcpu);
        let old = std::mem::replace(&mut self.control, word);
        if old.enabled {
            vcpu.release_shared_block(old.gpa);
        }
        if word.enabled {
            // DESIGN §5.6: sleepers from before (a previous enable, the source host of
            // a migration) wake and retry.
            self.wake_all_pending = true;
            if unacked == UnackedReady::Keep {
                // Its token, while its words are still there; once the guest
                // cleared them only the ACK is left to come.
                self.page_ready_pending = Some(self.ready_in_channel(vcpu).unwrap_or(Token(0)));
                vcpu.set_ppi_level(self.ppi, true);
            }
            self.service(vcpu);
        }
    }

    /// The page-ready in the ready channel, if it holds one.
    fn ready_in_channel(&self, vcpu: &mut impl ApfVcpu) -> Option<Token> {
        let (reason, token) = self.block_addr(self.ready_channel());
        if vcpu.read_u32(reason) != Ok(REASON_PAGE_READY) {
            return None;
        }
        vcpu.read_u32(token).ok().map(Token)
    }

    pub(super) fn apply_control(
        &mut self,
        vcpu: &mut impl ApfVcpu,
        word: ControlWord,
        unacked: UnackedReady,
    ) -> Result<(), EnableError> {
        if word.enabled {
            take_block(vcpu, word.gpa, unacked)?;
        }
        self.switch_to(vcpu, word, unacked);
        Ok(())
    }

    /// The guest's ENABLE (series semantics: NOT_REQUIRED when the enabled bit does
    /// not change). Refused words change nothing: no block is claimed for them.
    pub fn guest_enable(&mut self, vcpu: &mut impl ApfVcpu, raw: u64) -> Result<(), EnableError> {
        let word = self.check_control(raw)?;
        if word.enabled == self.control.enabled {
            return Err(EnableError::Unchanged(word.enabled));
        }
        self.apply_control(vcpu, word, UnackedReady::Drop)
    }

    /// The VMM's SET_CONTROL (restore): always re-applies, and an enabling word
    /// queues a wake-all even if APF was already enabled. It claims its block as
    /// the guest's ENABLE does (a restored engine is the only record the machine
    /// gets); moving to another block keeps the old one until it is drained. A
    /// page-ready the guest has not acknowledged in the same block and layout
    /// stays awaiting its ACK ([`UnackedReady::Keep`]).
    pub fn vmm_set_control(
        &mut self,
        vcpu: &mut impl ApfVcpu,
        raw: u64,
    ) -> Result<(), EnableError> {
        let word = self.check_control(raw)?;
        let same_channels = self.control.enabled
            && word.enabled
            && word.gpa == self.control.gpa
            && word.separate_ready == self.control.separate_ready;
        let unacked = if same_channels && self.page_ready_pending.is_some() {
            UnackedReady::Keep
        } else {
            UnackedReady::Drop
        };
        self.apply_control(vcpu, word, unacked)
    }

    /// Sets the SDEI event number (VMM). Validated by the control API.
    pub(crate) fn set_sdei_event(&mut self, event: u32) {
        self.sdei_event = event;
    }

    /// Sets the page-ready PPI (VMM). Validated by the control API.
    pub(crate) fn set_ppi(&mut self, ppi: u32) {
        self.ppi = ppi;
    }

    /// vCPU reset (PSCI CPU_ON after CPU_OFF, SYSTEM_RESET): drains everything and
    /// disables APF, as x86 does and the arm64 series did not (§d.12). The VMM's SDEI
    /// event and PPI stay; the guest's next ENABLE queues the wake-all. The shared
    /// block is given back.
    pub fn reset(&mut self, vcpu: &mut impl ApfVcpu) {
        self.switch_to(vcpu, ControlWord::DISABLED, UnackedReady::Drop);
    }
}

impl<W: AtomicWord> Drop for ApfEngine<W> {
    /// No work item outlives its vCPU (§d.28): completions still on their way are
    /// refused by the port, which the fetch path may keep alive a little longer.
    fn drop(&mut self) {
        for slot in 0..N {
            if self.items[slot].state != ItemState::Free {
                self.port.disarm(u8::try_from(slot).unwrap_or(0));
            }
        }
    }
}
