//! SDEI 1.0 (Arm DEN 0054A) virtualized for one vCPU: the platform plays the
//! firmware that dispatches software delegated exceptions to the guest.
//!
//! Models: two private, signaled events — [`SDEI_EVENT_SW_SIGNALED`] (normal
//! priority, for tests and the VMM) and the APF page-not-present event
//! [`SDEI_EVENT_ASYNC_PF`] (critical) — each with the spec's handler state
//! machine (registered / enabled / running, §6.1), the PE mask (a PE starts
//! masked), and the whole SDEI 1.0 call set with its return codes. The host
//! queues an event with [`SdeiVcpu::inject`]; [`SdeiVcpu::deliver`], called before
//! every guest entry, dispatches it into the guest's handler.
//!
//! Dispatch (decided here, as the spec leaves some of it open): the interrupted
//! x0..x17, PC and PSTATE are saved; the handler starts at its entry point in
//! EL1h with DAIF masked, with x0 = event, x1 = registered argument, x2 =
//! interrupted PC, x3 = interrupted PSTATE and x4..x17 = 0 (as KVM's SDEI series
//! does, so the handler never sees stale values that look meaningful). ELR_EL1 and
//! SPSR_EL1 are left alone at dispatch. COMPLETE restores the saved context;
//! COMPLETE_AND_RESUME restores x0..x17, puts the interrupted PC and PSTATE in
//! ELR_EL1 and SPSR_EL1 and enters the resume address in EL1h with DAIF masked,
//! as if an exception had been taken there (the v7 series' semantics).
//!
//! Leaves out: shared events (SHARED_RESET succeeds with nothing to do,
//! ROUTING_SET answers INVALID_PARAMETERS), interrupt binding (NOT_SUPPORTED),
//! the SDEI 1.1 calls, and nesting: a handler runs only when no other handler
//! runs, so a critical event waits for a running normal one to complete rather
//! than preempting it. The engine never injects while a handler runs
//! (DESIGN §5.1), so nesting would never be exercised.
//!
//! Arguments are checked exactly: an event number with bits set above bit 31 is
//! no event, an entry point or resume address must be 4-byte aligned, and
//! reserved REGISTER flag bits must be zero. For a private event the routing
//! mode (RM_ANY or RM_PE) and the affinity are ignored: it always targets the
//! calling PE.

use crate::apf::{SdeiCancelError, SdeiInjectError};
use crate::regs::{GuestRegs, PSTATE_EL1H_MASKED};
use apf_abi::sdei::{
    SDEI_DENIED, SDEI_EVENT_ASYNC_PF, SDEI_EVENT_COMPLETE, SDEI_EVENT_COMPLETE_AND_RESUME,
    SDEI_EVENT_CONTEXT, SDEI_EVENT_DISABLE, SDEI_EVENT_ENABLE, SDEI_EVENT_GET_INFO,
    SDEI_EVENT_REGISTER, SDEI_EVENT_ROUTING_SET, SDEI_EVENT_STATUS, SDEI_EVENT_UNREGISTER,
    SDEI_EVENT_VIRT_BASE, SDEI_INFO_PRIORITY, SDEI_INFO_ROUTING_AFF, SDEI_INFO_ROUTING_MODE,
    SDEI_INFO_SIGNALED, SDEI_INFO_TYPE, SDEI_INTERRUPT_BIND, SDEI_INTERRUPT_RELEASE,
    SDEI_INVALID_PARAMETERS, SDEI_NOT_SUPPORTED, SDEI_PE_MASK, SDEI_PE_UNMASK, SDEI_PENDING,
    SDEI_PRIORITY_CRITICAL, SDEI_PRIORITY_NORMAL, SDEI_PRIVATE_RESET, SDEI_RM_PE, SDEI_SAVED_REGS,
    SDEI_SHARED_RESET, SDEI_STATUS_ENABLED, SDEI_STATUS_REGISTERED, SDEI_STATUS_RUNNING,
    SDEI_SUCCESS, SDEI_TYPE_PRIVATE, SDEI_VERSION, SDEI_VERSION_1_0,
};
use serde::{Deserialize, Serialize};

/// A private, signaled event of normal priority (KVM's software-signaled event
/// number), delivered only when the host injects it.
pub const SDEI_EVENT_SW_SIGNALED: u32 = SDEI_EVENT_VIRT_BASE;

/// An SDEI event priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    Normal,
    Critical,
}

/// The platform's events, in the order of [`SdeiEvents`] bits.
const EVENTS: [(u32, Priority); 2] = [
    (SDEI_EVENT_SW_SIGNALED, Priority::Normal),
    (SDEI_EVENT_ASYNC_PF, Priority::Critical),
];

/// The index in [`EVENTS`] of event `number` as a guest passes it (a whole
/// register: anything above bit 31 makes it no event).
fn event_index(number: u64) -> Option<usize> {
    EVENTS.iter().position(|&(n, _)| u64::from(n) == number)
}

/// A set of this platform's SDEI events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SdeiEvents(u8);

impl SdeiEvents {
    fn insert(&mut self, index: usize) {
        self.0 |= 1 << index;
    }
    /// Whether event `number` is in the set.
    pub fn contains(self, number: u32) -> bool {
        event_index(u64::from(number)).is_some_and(|i| self.0 & (1 << i) != 0)
    }
    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The event numbers in the set.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        EVENTS
            .iter()
            .enumerate()
            .filter(move |&(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, &(n, _))| n)
    }
}

/// What an SDEI call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdeiOutcome {
    /// Write this to x0 and resume the caller.
    Return(u64),
    /// Write `ret` to x0 and resume the caller; queued, undelivered instances of
    /// `events` were dropped with their registration (UNREGISTER, PRIVATE_RESET).
    /// Whoever injected them learns they will never be delivered.
    Discarded {
        /// The call's return value.
        ret: u64,
        /// The events whose pending instance was dropped.
        events: SdeiEvents,
    },
    /// The running handler of `event` completed: the registers already hold the
    /// context to resume (x0 is not written).
    Completed {
        /// The event whose handler finished.
        event: u32,
        /// COMPLETE_AND_RESUME (true) or COMPLETE (false).
        resumed: bool,
    },
}

fn code(c: i64) -> SdeiOutcome {
    SdeiOutcome::Return(c.cast_unsigned())
}

/// One event's handler state on this PE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Handler {
    registered: bool,
    enabled: bool,
    entry: u64,
    arg: u64,
    /// Injected by the host, not yet dispatched.
    pending: bool,
}

/// The context a running handler interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dispatch {
    event: usize,
    x: [u64; SDEI_SAVED_REGS],
    pc: u64,
    pstate: u64,
}

/// One event's handler state on a PE, as a snapshot holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdeiEventState {
    /// The event number.
    pub event: u32,
    /// REGISTER succeeded and no UNREGISTER since.
    pub registered: bool,
    /// ENABLE (after REGISTER).
    pub enabled: bool,
    /// The handler's entry point.
    pub entry: u64,
    /// The argument the handler gets in x1.
    pub arg: u64,
    /// Injected by the host, not yet dispatched.
    pub pending: bool,
}

/// A running handler and the context it interrupted, as a snapshot holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdeiRunningState {
    /// The event whose handler runs.
    pub event: u32,
    /// The interrupted x0..x17.
    pub x: [u64; SDEI_SAVED_REGS],
    /// The interrupted PC.
    pub pc: u64,
    /// The interrupted PSTATE (SPSR format).
    pub pstate: u64,
}

/// One vCPU's SDEI state as a snapshot holds it: enough to resume inside a
/// handler (COMPLETE then returns to the interrupted context).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdeiVcpuState {
    /// PE_MASK in effect.
    pub masked: bool,
    /// Every event of the platform.
    pub events: Vec<SdeiEventState>,
    /// The handler in progress, if any.
    pub running: Option<SdeiRunningState>,
}

/// Why an [`SdeiVcpuState`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SdeiStateError {
    /// The state names an event this platform does not have.
    #[error("saved SDEI state names event {0:#x}, which this platform does not offer")]
    UnknownEvent(u32),
    /// The state lists an event twice.
    #[error("saved SDEI state lists event {0:#x} twice")]
    DuplicateEvent(u32),
}

/// SDEI state of one vCPU. Owned by the vCPU's thread: every event is private,
/// so nothing here is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdeiVcpu {
    masked: bool,
    handlers: [Handler; EVENTS.len()],
    running: Option<Dispatch>,
}

impl Default for SdeiVcpu {
    fn default() -> Self {
        SdeiVcpu::new()
    }
}

impl SdeiVcpu {
    /// A PE as it powers on: masked, nothing registered, nothing pending.
    pub fn new() -> SdeiVcpu {
        SdeiVcpu {
            masked: true,
            handlers: [Handler::default(); EVENTS.len()],
            running: None,
        }
    }

    /// Back to the power-on state (vCPU reset). Pending instances are dropped; the
    /// APF engine is reset with the vCPU, so nobody is told.
    pub fn reset(&mut self) {
        *self = SdeiVcpu::new();
    }

    /// This vCPU's SDEI state.
    pub fn save_state(&self) -> SdeiVcpuState {
        SdeiVcpuState {
            masked: self.masked,
            events: EVENTS
                .iter()
                .zip(&self.handlers)
                .map(|(&(event, _), h)| SdeiEventState {
                    event,
                    registered: h.registered,
                    enabled: h.enabled,
                    entry: h.entry,
                    arg: h.arg,
                    pending: h.pending,
                })
                .collect(),
            running: self.running.map(|d| SdeiRunningState {
                event: EVENTS[d.event].0,
                x: d.x,
                pc: d.pc,
                pstate: d.pstate,
            }),
        }
    }

    /// Installs `state`; an event it does not list is unregistered. Refused,
    /// with nothing changed, if it names an event this platform lacks.
    pub fn restore_state(&mut self, state: &SdeiVcpuState) -> Result<(), SdeiStateError> {
        let index =
            |event: u32| event_index(u64::from(event)).ok_or(SdeiStateError::UnknownEvent(event));
        let mut handlers = [Handler::default(); EVENTS.len()];
        let mut seen = [false; EVENTS.len()];
        for e in &state.events {
            let i = index(e.event)?;
            if std::mem::replace(&mut seen[i], true) {
                return Err(SdeiStateError::DuplicateEvent(e.event));
            }
            handlers[i] = Handler {
                registered: e.registered,
                enabled: e.enabled,
                entry: e.entry,
                arg: e.arg,
                pending: e.pending,
            };
        }
        let running = match state.running {
            Some(r) => Some(Dispatch {
                event: index(r.event)?,
                x: r.x,
                pc: r.pc,
                pstate: r.pstate,
            }),
            None => None,
        };
        *self = SdeiVcpu {
            masked: state.masked,
            handlers,
            running,
        };
        Ok(())
    }

    /// Whether the PE is masked.
    pub fn is_masked(&self) -> bool {
        self.masked
    }

    /// Whether a handler is running (dispatched and not completed).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn running_is(&self, index: usize) -> bool {
        self.running.is_some_and(|d| d.event == index)
    }

    /// Whether `event` could be injected now: it is one of ours, registered and
    /// enabled, and the PE is unmasked.
    pub fn can_inject(&self, event: u32) -> bool {
        event_index(u64::from(event)).is_some_and(|i| {
            let h = &self.handlers[i];
            h.registered && h.enabled && !self.masked
        })
    }

    /// Queues `event` for dispatch at the next [`SdeiVcpu::deliver`].
    pub fn inject(&mut self, event: u32) -> Result<(), SdeiInjectError> {
        let Some(i) = event_index(u64::from(event)) else {
            return Err(SdeiInjectError::NotDeliverable(event));
        };
        if !self.can_inject(event) {
            return Err(SdeiInjectError::NotDeliverable(event));
        }
        if self.handlers[i].pending || self.running_is(i) {
            return Err(SdeiInjectError::Busy(event));
        }
        self.handlers[i].pending = true;
        Ok(())
    }

    /// Withdraws a queued, undelivered instance of `event`.
    pub fn cancel(&mut self, event: u32) -> Result<(), SdeiCancelError> {
        let Some(i) = event_index(u64::from(event)) else {
            return Err(SdeiCancelError::NotPending(event));
        };
        if self.handlers[i].pending {
            self.handlers[i].pending = false;
            Ok(())
        } else if self.running_is(i) {
            Err(SdeiCancelError::AlreadyDelivered(event))
        } else {
            Err(SdeiCancelError::NotPending(event))
        }
    }

    /// Whether [`SdeiVcpu::deliver`] would dispatch something now: the run loop's
    /// wake-up test for a vCPU halted in WFI.
    pub fn has_deliverable(&self) -> bool {
        !self.masked
            && self.running.is_none()
            && self
                .handlers
                .iter()
                .any(|h| h.pending && h.registered && h.enabled)
    }

    /// Called before guest entry: if an event is pending, registered and enabled,
    /// the PE is unmasked and no handler runs, dispatches it (critical events
    /// first) and returns its number.
    pub fn deliver(&mut self, regs: &mut impl GuestRegs) -> Option<u32> {
        if self.masked || self.running.is_some() {
            return None;
        }
        let ready = |prio: Priority| {
            (0..EVENTS.len()).find(|&i| {
                let h = &self.handlers[i];
                EVENTS[i].1 == prio && h.pending && h.registered && h.enabled
            })
        };
        let index = ready(Priority::Critical).or_else(|| ready(Priority::Normal))?;
        let handler = &mut self.handlers[index];
        handler.pending = false;
        let mut saved = Dispatch {
            event: index,
            x: [0; SDEI_SAVED_REGS],
            pc: regs.pc(),
            pstate: regs.pstate(),
        };
        for (n, slot) in saved.x.iter_mut().enumerate() {
            *slot = regs.x(n);
            regs.set_x(n, 0);
        }
        let event = EVENTS[index].0;
        regs.set_x(0, u64::from(event));
        regs.set_x(1, handler.arg);
        regs.set_x(2, saved.pc);
        regs.set_x(3, saved.pstate);
        regs.set_pstate(PSTATE_EL1H_MASKED);
        regs.set_pc(handler.entry);
        tracing::debug!(
            event,
            entry = handler.entry,
            interrupted_pc = saved.pc,
            "sdei_dispatch"
        );
        self.running = Some(saved);
        Some(event)
    }

    /// Handles SDEI function `function_id`, reading its arguments from x1..x5.
    /// Only COMPLETE and COMPLETE_AND_RESUME change registers (on success).
    pub fn call(&mut self, function_id: u32, regs: &mut impl GuestRegs) -> SdeiOutcome {
        let (x1, x2, x3, x4) = (regs.x(1), regs.x(2), regs.x(3), regs.x(4));
        match function_id {
            SDEI_VERSION => SdeiOutcome::Return(SDEI_VERSION_1_0),
            SDEI_EVENT_REGISTER => code(self.register(x1, x2, x3, x4)),
            SDEI_EVENT_ENABLE => code(self.set_enabled(x1, true)),
            SDEI_EVENT_DISABLE => code(self.set_enabled(x1, false)),
            SDEI_EVENT_CONTEXT => self.context(x1),
            SDEI_EVENT_COMPLETE => self.complete(regs, None),
            SDEI_EVENT_COMPLETE_AND_RESUME => self.complete(regs, Some(x1)),
            SDEI_EVENT_UNREGISTER => match event_index(x1) {
                None => code(SDEI_INVALID_PARAMETERS),
                Some(i) => {
                    let (ret, dropped) = self.unregister(i);
                    let mut events = SdeiEvents::default();
                    if dropped {
                        events.insert(i);
                    }
                    Self::with_discards(ret, events)
                }
            },
            SDEI_EVENT_STATUS => self.status(x1),
            SDEI_EVENT_GET_INFO => self.get_info(x1, x2),
            // Every event here is private; routing applies to shared events only.
            SDEI_EVENT_ROUTING_SET => code(SDEI_INVALID_PARAMETERS),
            SDEI_PE_MASK => {
                let changed = !self.masked;
                self.masked = true;
                SdeiOutcome::Return(u64::from(changed))
            }
            SDEI_PE_UNMASK => {
                self.masked = false;
                code(SDEI_SUCCESS)
            }
            SDEI_PRIVATE_RESET => self.private_reset(),
            SDEI_SHARED_RESET => code(SDEI_SUCCESS),
            SDEI_INTERRUPT_BIND | SDEI_INTERRUPT_RELEASE => code(SDEI_NOT_SUPPORTED),
            _ => code(SDEI_NOT_SUPPORTED),
        }
    }

    fn with_discards(ret: i64, events: SdeiEvents) -> SdeiOutcome {
        if events.is_empty() {
            code(ret)
        } else {
            SdeiOutcome::Discarded {
                ret: ret.cast_unsigned(),
                events,
            }
        }
    }

    fn register(&mut self, event: u64, entry: u64, arg: u64, flags: u64) -> i64 {
        if entry == 0 || !entry.is_multiple_of(4) || flags > SDEI_RM_PE {
            return SDEI_INVALID_PARAMETERS;
        }
        let Some(i) = event_index(event) else {
            return SDEI_INVALID_PARAMETERS;
        };
        // Denied while registered, and while an unregistered handler still runs.
        if self.handlers[i].registered || self.running_is(i) {
            return SDEI_DENIED;
        }
        self.handlers[i] = Handler {
            registered: true,
            enabled: false,
            entry,
            arg,
            pending: false,
        };
        SDEI_SUCCESS
    }

    fn set_enabled(&mut self, event: u64, enabled: bool) -> i64 {
        let Some(i) = event_index(event) else {
            return SDEI_INVALID_PARAMETERS;
        };
        let h = &mut self.handlers[i];
        if !h.registered {
            return SDEI_DENIED;
        }
        h.enabled = enabled;
        SDEI_SUCCESS
    }

    fn context(&self, index: u64) -> SdeiOutcome {
        let Some(n) = usize::try_from(index).ok().filter(|&n| n < SDEI_SAVED_REGS) else {
            return code(SDEI_INVALID_PARAMETERS);
        };
        match &self.running {
            Some(d) => SdeiOutcome::Return(d.x[n]),
            None => code(SDEI_DENIED),
        }
    }

    fn complete(&mut self, regs: &mut impl GuestRegs, resume: Option<u64>) -> SdeiOutcome {
        if resume.is_some_and(|addr| !addr.is_multiple_of(4)) {
            return code(SDEI_DENIED);
        }
        let Some(saved) = self.running.take() else {
            return code(SDEI_DENIED);
        };
        for (n, &v) in saved.x.iter().enumerate() {
            regs.set_x(n, v);
        }
        match resume {
            None => {
                regs.set_pc(saved.pc);
                regs.set_pstate(saved.pstate);
            }
            Some(addr) => {
                regs.set_elr_el1(saved.pc);
                regs.set_spsr_el1(saved.pstate);
                regs.set_pstate(PSTATE_EL1H_MASKED);
                regs.set_pc(addr);
            }
        }
        let event = EVENTS[saved.event].0;
        tracing::debug!(event, resumed = resume.is_some(), "sdei_complete");
        SdeiOutcome::Completed {
            event,
            resumed: resume.is_some(),
        }
    }

    /// Unregisters event `index`: the return code and whether a pending
    /// instance was dropped.
    fn unregister(&mut self, index: usize) -> (i64, bool) {
        let running = self.running_is(index);
        let h = &mut self.handlers[index];
        if !h.registered {
            return (if running { SDEI_PENDING } else { SDEI_DENIED }, false);
        }
        let dropped = h.pending;
        *h = Handler::default();
        (if running { SDEI_PENDING } else { SDEI_SUCCESS }, dropped)
    }

    fn private_reset(&mut self) -> SdeiOutcome {
        let mut ret = SDEI_SUCCESS;
        let mut events = SdeiEvents::default();
        for i in 0..EVENTS.len() {
            let (r, dropped) = self.unregister(i);
            // An event that was not registered is fine; one whose handler still
            // runs fails the reset (its unregistration stays pending).
            if r == SDEI_PENDING {
                ret = SDEI_DENIED;
            }
            if dropped {
                events.insert(i);
            }
        }
        Self::with_discards(ret, events)
    }

    fn status(&self, event: u64) -> SdeiOutcome {
        let Some(i) = event_index(event) else {
            return code(SDEI_INVALID_PARAMETERS);
        };
        let h = &self.handlers[i];
        let mut status = 0;
        if h.registered {
            status |= SDEI_STATUS_REGISTERED;
        }
        if h.enabled {
            status |= SDEI_STATUS_ENABLED;
        }
        if self.running_is(i) {
            status |= SDEI_STATUS_RUNNING;
        }
        SdeiOutcome::Return(status)
    }

    fn get_info(&self, event: u64, info: u64) -> SdeiOutcome {
        let Some(i) = event_index(event) else {
            return code(SDEI_INVALID_PARAMETERS);
        };
        match info {
            SDEI_INFO_TYPE => SdeiOutcome::Return(SDEI_TYPE_PRIVATE),
            SDEI_INFO_SIGNALED => SdeiOutcome::Return(1),
            SDEI_INFO_PRIORITY => SdeiOutcome::Return(match EVENTS[i].1 {
                Priority::Normal => SDEI_PRIORITY_NORMAL,
                Priority::Critical => SDEI_PRIORITY_CRITICAL,
            }),
            // Routing mode and affinity describe shared events only.
            SDEI_INFO_ROUTING_MODE | SDEI_INFO_ROUTING_AFF => code(SDEI_INVALID_PARAMETERS),
            _ => code(SDEI_INVALID_PARAMETERS),
        }
    }
}
