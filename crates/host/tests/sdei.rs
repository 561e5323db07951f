//! SDEI virtualization: every call with good and hostile arguments, dispatch
//! and completion register effects, and a model-based property test against
//! the handler state table of SDEI 1.0 (DEN 0054A §6.1.2).

use apf_abi::sdei::*;
use apf_host::apf::{SdeiCancelError, SdeiInjectError};
use apf_host::regs::{PSTATE_EL1H_MASKED, PlainRegs};
use apf_host::sdei::{SDEI_EVENT_SW_SIGNALED, SdeiEvents, SdeiOutcome, SdeiVcpu};
use proptest::prelude::*;

const APF: u32 = SDEI_EVENT_ASYNC_PF;
const SW: u32 = SDEI_EVENT_SW_SIGNALED;
const ENTRY: u64 = 0x4010_0000;
const ARG: u64 = 0xA5A5_0000_1234;

fn ret(v: i64) -> SdeiOutcome {
    SdeiOutcome::Return(v.cast_unsigned())
}

/// Makes SDEI call `id` with x1..x5 = `args` from a fresh register file.
fn call(sdei: &mut SdeiVcpu, id: u32, args: &[u64]) -> SdeiOutcome {
    let mut regs = PlainRegs::default();
    regs.x[0] = u64::from(id);
    for (i, a) in args.iter().enumerate() {
        regs.x[i + 1] = *a;
    }
    sdei.call(id, &mut regs)
}

fn status(sdei: &mut SdeiVcpu, event: u32) -> u64 {
    match call(sdei, SDEI_EVENT_STATUS, &[u64::from(event)]) {
        SdeiOutcome::Return(v) => v,
        other => panic!("STATUS returned {other:?}"),
    }
}

/// A PE with `event` registered at ENTRY with ARG, enabled, and unmasked.
fn ready(event: u32) -> SdeiVcpu {
    let mut s = SdeiVcpu::new();
    let e = u64::from(event);
    assert_eq!(
        call(
            &mut s,
            SDEI_EVENT_REGISTER,
            &[e, ENTRY, ARG, SDEI_RM_ANY, 0]
        ),
        ret(0)
    );
    assert_eq!(call(&mut s, SDEI_EVENT_ENABLE, &[e]), ret(0));
    assert_eq!(call(&mut s, SDEI_PE_UNMASK, &[]), ret(0));
    s
}

/// An interrupted EL0 context with every register distinct.
fn interrupted() -> PlainRegs {
    let mut r = PlainRegs::default();
    for (n, x) in r.x.iter_mut().enumerate() {
        *x = 0x1000 + n as u64;
    }
    r.pc = 0x0040_1234;
    r.pstate = 0x6000_0000; // EL0t with Z and C set
    r.elr_el1 = 0xE1E1;
    r.spsr_el1 = 0x5A5A;
    r
}

#[test]
fn version_is_1_0() {
    let mut s = SdeiVcpu::new();
    assert_eq!(
        call(&mut s, SDEI_VERSION, &[]),
        SdeiOutcome::Return(1 << 48)
    );
}

#[test]
fn a_pe_starts_masked_and_mask_reports_whether_it_changed() {
    let mut s = SdeiVcpu::new();
    assert!(s.is_masked());
    assert_eq!(call(&mut s, SDEI_PE_MASK, &[]), ret(0), "already masked");
    assert_eq!(call(&mut s, SDEI_PE_UNMASK, &[]), ret(0));
    assert!(!s.is_masked());
    assert_eq!(call(&mut s, SDEI_PE_MASK, &[]), ret(1), "was unmasked");
    assert_eq!(call(&mut s, SDEI_PE_MASK, &[]), ret(0));
}

#[test]
fn register_checks_every_argument() {
    let mut s = SdeiVcpu::new();
    let apf = u64::from(APF);
    let bad_events = [
        0,
        1,
        u64::from(SDEI_EVENT_VIRT_BASE + 2),
        (1 << 32) | apf,
        u64::MAX,
    ];
    for e in bad_events {
        assert_eq!(
            call(&mut s, SDEI_EVENT_REGISTER, &[e, ENTRY, ARG, 0, 0]),
            ret(SDEI_INVALID_PARAMETERS),
            "event {e:#x}"
        );
    }
    for entry in [0, ENTRY + 2, ENTRY + 1] {
        assert_eq!(
            call(&mut s, SDEI_EVENT_REGISTER, &[apf, entry, ARG, 0, 0]),
            ret(SDEI_INVALID_PARAMETERS),
            "entry {entry:#x}"
        );
    }
    for flags in [2, 3, 1 << 63] {
        assert_eq!(
            call(&mut s, SDEI_EVENT_REGISTER, &[apf, ENTRY, ARG, flags, 0]),
            ret(SDEI_INVALID_PARAMETERS),
            "flags {flags:#x}"
        );
    }
    assert_eq!(
        status(&mut s, APF),
        0,
        "failed registrations change nothing"
    );
    // RM_PE with any affinity: a private event always targets this PE.
    assert_eq!(
        call(
            &mut s,
            SDEI_EVENT_REGISTER,
            &[apf, ENTRY, ARG, SDEI_RM_PE, u64::MAX]
        ),
        ret(0)
    );
    assert_eq!(
        status(&mut s, APF),
        SDEI_STATUS_REGISTERED,
        "registered and disabled"
    );
    assert_eq!(
        call(&mut s, SDEI_EVENT_REGISTER, &[apf, ENTRY, ARG, 0, 0]),
        ret(SDEI_DENIED),
        "already registered"
    );
    assert_eq!(status(&mut s, SW), 0, "the other event is untouched");
}

#[test]
fn enable_and_disable_need_a_registered_known_event() {
    let mut s = SdeiVcpu::new();
    for id in [SDEI_EVENT_ENABLE, SDEI_EVENT_DISABLE] {
        assert_eq!(call(&mut s, id, &[u64::from(APF)]), ret(SDEI_DENIED));
        assert_eq!(call(&mut s, id, &[7]), ret(SDEI_INVALID_PARAMETERS));
    }
    call(
        &mut s,
        SDEI_EVENT_REGISTER,
        &[u64::from(APF), ENTRY, 0, 0, 0],
    );
    assert_eq!(call(&mut s, SDEI_EVENT_ENABLE, &[u64::from(APF)]), ret(0));
    assert_eq!(
        call(&mut s, SDEI_EVENT_ENABLE, &[u64::from(APF)]),
        ret(0),
        "idempotent"
    );
    assert_eq!(
        status(&mut s, APF),
        SDEI_STATUS_REGISTERED | SDEI_STATUS_ENABLED
    );
    assert_eq!(call(&mut s, SDEI_EVENT_DISABLE, &[u64::from(APF)]), ret(0));
    assert_eq!(status(&mut s, APF), SDEI_STATUS_REGISTERED);
}

#[test]
fn dispatch_saves_the_context_and_enters_the_handler() {
    let mut s = ready(APF);
    let mut regs = interrupted();
    let before = regs.clone();
    s.inject(APF).unwrap();
    assert_eq!(s.deliver(&mut regs), Some(APF));
    assert_eq!(regs.x[0], u64::from(APF));
    assert_eq!(regs.x[1], ARG);
    assert_eq!(regs.x[2], before.pc);
    assert_eq!(regs.x[3], before.pstate);
    assert!(
        regs.x[4..18].iter().all(|&x| x == 0),
        "x4..x17 are zeroed: {:?}",
        &regs.x[4..18]
    );
    assert_eq!(
        regs.x[18..],
        before.x[18..],
        "x18..x30 are the handler's to preserve"
    );
    assert_eq!(regs.pc, ENTRY);
    assert_eq!(regs.pstate, PSTATE_EL1H_MASKED);
    assert_eq!(regs.pstate, 0x3C5, "EL1h, D A I F set");
    assert_eq!(
        (regs.elr_el1, regs.spsr_el1),
        (before.elr_el1, before.spsr_el1)
    );
    assert!(s.is_running());
    assert_eq!(status(&mut s, APF), 0b111);
    assert_eq!(s.deliver(&mut regs), None, "nothing more to deliver");
}

#[test]
fn context_reads_the_interrupted_registers_only_inside_a_handler() {
    let mut s = ready(APF);
    assert_eq!(call(&mut s, SDEI_EVENT_CONTEXT, &[0]), ret(SDEI_DENIED));
    for bad in [18, 19, u64::MAX] {
        assert_eq!(
            call(&mut s, SDEI_EVENT_CONTEXT, &[bad]),
            ret(SDEI_INVALID_PARAMETERS)
        );
    }
    let mut regs = interrupted();
    s.inject(APF).unwrap();
    s.deliver(&mut regs).unwrap();
    for n in 0..18u64 {
        assert_eq!(
            call(&mut s, SDEI_EVENT_CONTEXT, &[n]),
            SdeiOutcome::Return(0x1000 + n)
        );
    }
    assert_eq!(
        call(&mut s, SDEI_EVENT_CONTEXT, &[18]),
        ret(SDEI_INVALID_PARAMETERS)
    );
}

#[test]
fn complete_restores_the_interrupted_context() {
    let mut s = ready(APF);
    let mut regs = interrupted();
    let before = regs.clone();
    s.inject(APF).unwrap();
    s.deliver(&mut regs).unwrap();
    // The handler uses x0..x17 freely and calls COMPLETE from elsewhere.
    for x in &mut regs.x[..18] {
        *x = 0xDEAD;
    }
    regs.pc = ENTRY + 0x40;
    regs.x[0] = u64::from(SDEI_EVENT_COMPLETE);
    regs.x[1] = 0; // status: handled
    assert_eq!(
        s.call(SDEI_EVENT_COMPLETE, &mut regs),
        SdeiOutcome::Completed {
            event: APF,
            resumed: false
        }
    );
    assert_eq!(
        regs, before,
        "x0..x17, PC and PSTATE restored; ELR/SPSR untouched"
    );
    assert!(!s.is_running());
    assert_eq!(
        status(&mut s, APF),
        SDEI_STATUS_REGISTERED | SDEI_STATUS_ENABLED
    );
}

#[test]
fn complete_and_resume_enters_the_resume_address_as_if_an_exception_was_taken() {
    let mut s = ready(APF);
    let mut regs = interrupted();
    let before = regs.clone();
    s.inject(APF).unwrap();
    s.deliver(&mut regs).unwrap();
    let resume = 0x4008_0480; // VBAR_EL1 + 0x480: IRQ from a lower EL
    regs.x[0] = u64::from(SDEI_EVENT_COMPLETE_AND_RESUME);
    regs.x[1] = resume;
    assert_eq!(
        s.call(SDEI_EVENT_COMPLETE_AND_RESUME, &mut regs),
        SdeiOutcome::Completed {
            event: APF,
            resumed: true
        }
    );
    assert_eq!(regs.x, before.x, "x0..x17 restored, the rest untouched");
    assert_eq!(regs.elr_el1, before.pc);
    assert_eq!(regs.spsr_el1, before.pstate);
    assert_eq!(regs.pstate, PSTATE_EL1H_MASKED);
    assert_eq!(regs.pc, resume);
}

#[test]
fn complete_outside_a_handler_or_to_a_misaligned_address_is_denied() {
    let mut s = ready(APF);
    let mut regs = interrupted();
    for id in [SDEI_EVENT_COMPLETE, SDEI_EVENT_COMPLETE_AND_RESUME] {
        let before = regs.clone();
        assert_eq!(s.call(id, &mut regs), ret(SDEI_DENIED));
        assert_eq!(regs, before, "a refused call changes no register");
    }
    s.inject(APF).unwrap();
    s.deliver(&mut regs).unwrap();
    regs.x[1] = 0x4008_0482;
    let in_handler = regs.clone();
    assert_eq!(
        s.call(SDEI_EVENT_COMPLETE_AND_RESUME, &mut regs),
        ret(SDEI_DENIED)
    );
    assert_eq!(regs, in_handler);
    assert!(s.is_running(), "the handler still runs");
}

#[test]
fn nothing_is_dispatched_while_masked_disabled_or_running() {
    let mut s = ready(APF);
    let mut regs = interrupted();
    s.inject(APF).unwrap();
    call(&mut s, SDEI_PE_MASK, &[]);
    assert_eq!(s.deliver(&mut regs), None);
    call(&mut s, SDEI_PE_UNMASK, &[]);
    call(&mut s, SDEI_EVENT_DISABLE, &[u64::from(APF)]);
    assert_eq!(s.deliver(&mut regs), None, "disabled: stays pending");
    assert_eq!(regs, interrupted());
    call(&mut s, SDEI_EVENT_ENABLE, &[u64::from(APF)]);
    assert_eq!(
        s.deliver(&mut regs),
        Some(APF),
        "delivered once enabled again"
    );
}

#[test]
fn critical_events_go_first_and_nothing_nests() {
    let mut s = ready(SW);
    call(
        &mut s,
        SDEI_EVENT_REGISTER,
        &[u64::from(APF), ENTRY + 0x100, 7, 0, 0],
    );
    call(&mut s, SDEI_EVENT_ENABLE, &[u64::from(APF)]);
    s.inject(SW).unwrap();
    s.inject(APF).unwrap();
    let mut regs = interrupted();
    assert_eq!(s.deliver(&mut regs), Some(APF), "critical first");
    assert_eq!(regs.pc, ENTRY + 0x100);
    assert_eq!(s.deliver(&mut regs), None, "the normal event waits");
    assert_eq!(
        s.call(SDEI_EVENT_COMPLETE, &mut regs),
        SdeiOutcome::Completed {
            event: APF,
            resumed: false
        }
    );
    assert_eq!(regs, interrupted());
    assert_eq!(s.deliver(&mut regs), Some(SW));
    assert_eq!(regs.x[1], ARG);
}

#[test]
fn inject_needs_a_deliverable_idle_event() {
    let mut s = SdeiVcpu::new();
    assert_eq!(
        s.inject(0x1234),
        Err(SdeiInjectError::NotDeliverable(0x1234))
    );
    assert_eq!(
        s.inject(APF),
        Err(SdeiInjectError::NotDeliverable(APF)),
        "unregistered"
    );
    call(
        &mut s,
        SDEI_EVENT_REGISTER,
        &[u64::from(APF), ENTRY, 0, 0, 0],
    );
    assert_eq!(
        s.inject(APF),
        Err(SdeiInjectError::NotDeliverable(APF)),
        "disabled"
    );
    call(&mut s, SDEI_EVENT_ENABLE, &[u64::from(APF)]);
    assert!(!s.can_inject(APF));
    assert_eq!(
        s.inject(APF),
        Err(SdeiInjectError::NotDeliverable(APF)),
        "PE masked"
    );
    call(&mut s, SDEI_PE_UNMASK, &[]);
    assert!(s.can_inject(APF));
    assert_eq!(s.inject(APF), Ok(()));
    assert_eq!(
        s.inject(APF),
        Err(SdeiInjectError::Busy(APF)),
        "already pending"
    );
    let mut regs = interrupted();
    s.deliver(&mut regs);
    assert_eq!(s.inject(APF), Err(SdeiInjectError::Busy(APF)), "running");
}

#[test]
fn cancel_withdraws_only_an_undelivered_instance() {
    let mut s = ready(APF);
    assert_eq!(s.cancel(APF), Err(SdeiCancelError::NotPending(APF)));
    assert_eq!(s.cancel(99), Err(SdeiCancelError::NotPending(99)));
    s.inject(APF).unwrap();
    assert_eq!(s.cancel(APF), Ok(()));
    let mut regs = interrupted();
    assert_eq!(s.deliver(&mut regs), None, "cancelled: nothing to deliver");
    s.inject(APF).unwrap();
    s.deliver(&mut regs).unwrap();
    assert_eq!(s.cancel(APF), Err(SdeiCancelError::AlreadyDelivered(APF)));
}

#[test]
fn unregister_is_pending_while_the_handler_runs() {
    let mut s = ready(APF);
    let apf = u64::from(APF);
    let mut regs = interrupted();
    s.inject(APF).unwrap();
    s.deliver(&mut regs).unwrap();
    assert_eq!(
        call(&mut s, SDEI_EVENT_UNREGISTER, &[apf]),
        ret(SDEI_PENDING)
    );
    assert_eq!(
        status(&mut s, APF),
        SDEI_STATUS_RUNNING,
        "unregistered, still running"
    );
    assert_eq!(
        call(&mut s, SDEI_EVENT_UNREGISTER, &[apf]),
        ret(SDEI_PENDING),
        "still pending"
    );
    assert_eq!(call(&mut s, SDEI_EVENT_ENABLE, &[apf]), ret(SDEI_DENIED));
    assert_eq!(
        call(&mut s, SDEI_EVENT_REGISTER, &[apf, ENTRY, 0, 0, 0]),
        ret(SDEI_DENIED)
    );
    assert!(matches!(
        s.call(SDEI_EVENT_COMPLETE, &mut regs),
        SdeiOutcome::Completed { .. }
    ));
    assert_eq!(status(&mut s, APF), 0, "unregistration done at COMPLETE");
    assert_eq!(
        call(&mut s, SDEI_EVENT_UNREGISTER, &[apf]),
        ret(SDEI_DENIED)
    );
    assert_eq!(
        call(&mut s, SDEI_EVENT_UNREGISTER, &[1 << 40]),
        ret(SDEI_INVALID_PARAMETERS)
    );
    assert_eq!(
        call(&mut s, SDEI_EVENT_REGISTER, &[apf, ENTRY, 0, 0, 0]),
        ret(0)
    );
}

#[test]
fn unregister_drops_a_pending_instance_and_says_so() {
    let mut s = ready(APF);
    s.inject(APF).unwrap();
    let out = call(&mut s, SDEI_EVENT_UNREGISTER, &[u64::from(APF)]);
    let SdeiOutcome::Discarded { ret: code, events } = out else {
        panic!("{out:?}")
    };
    assert_eq!(code, 0);
    assert!(events.contains(APF) && !events.contains(SW));
    assert_eq!(events.iter().collect::<Vec<_>>(), vec![APF]);
    let mut regs = interrupted();
    assert_eq!(s.deliver(&mut regs), None);
    assert_eq!(s.cancel(APF), Err(SdeiCancelError::NotPending(APF)));
}

#[test]
fn get_info_describes_private_signaled_events() {
    let mut s = SdeiVcpu::new();
    for (event, priority) in [(APF, SDEI_PRIORITY_CRITICAL), (SW, SDEI_PRIORITY_NORMAL)] {
        let e = u64::from(event);
        assert_eq!(
            call(&mut s, SDEI_EVENT_GET_INFO, &[e, SDEI_INFO_TYPE]),
            SdeiOutcome::Return(SDEI_TYPE_PRIVATE)
        );
        assert_eq!(
            call(&mut s, SDEI_EVENT_GET_INFO, &[e, SDEI_INFO_SIGNALED]),
            SdeiOutcome::Return(1)
        );
        assert_eq!(
            call(&mut s, SDEI_EVENT_GET_INFO, &[e, SDEI_INFO_PRIORITY]),
            SdeiOutcome::Return(priority)
        );
        for info in [SDEI_INFO_ROUTING_MODE, SDEI_INFO_ROUTING_AFF, 5, u64::MAX] {
            assert_eq!(
                call(&mut s, SDEI_EVENT_GET_INFO, &[e, info]),
                ret(SDEI_INVALID_PARAMETERS),
                "info {info}"
            );
        }
    }
    assert_eq!(
        call(&mut s, SDEI_EVENT_GET_INFO, &[0, SDEI_INFO_TYPE]),
        ret(SDEI_INVALID_PARAMETERS)
    );
}

#[test]
fn routing_binding_and_sdei_1_1_calls_are_refused() {
    let mut s = ready(APF);
    for args in [
        [u64::from(APF), SDEI_RM_ANY, 0],
        [u64::from(APF), SDEI_RM_PE, 0],
        [42, 0, 0],
    ] {
        assert_eq!(
            call(&mut s, SDEI_EVENT_ROUTING_SET, &args),
            ret(SDEI_INVALID_PARAMETERS)
        );
    }
    for id in [
        SDEI_INTERRUPT_BIND,
        SDEI_INTERRUPT_RELEASE,
        0xC400_002F,
        0xC400_0030,
        SDEI_LAST,
    ] {
        assert_eq!(call(&mut s, id, &[27]), ret(SDEI_NOT_SUPPORTED), "{id:#x}");
    }
    assert_eq!(
        status(&mut s, APF),
        SDEI_STATUS_REGISTERED | SDEI_STATUS_ENABLED
    );
}

#[test]
fn private_reset_unregisters_everything_but_a_running_handler() {
    let mut s = ready(APF);
    call(
        &mut s,
        SDEI_EVENT_REGISTER,
        &[u64::from(SW), ENTRY, 0, 0, 0],
    );
    call(&mut s, SDEI_EVENT_ENABLE, &[u64::from(SW)]);
    s.inject(SW).unwrap();
    assert_eq!(
        call(&mut s, SDEI_SHARED_RESET, &[]),
        ret(0),
        "no shared events"
    );
    let out = call(&mut s, SDEI_PRIVATE_RESET, &[]);
    let SdeiOutcome::Discarded { ret: code, events } = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (code, events.contains(SW), events.contains(APF)),
        (0, true, false)
    );
    assert_eq!((status(&mut s, APF), status(&mut s, SW)), (0, 0));
    assert_eq!(
        call(&mut s, SDEI_PRIVATE_RESET, &[]),
        ret(0),
        "nothing registered is fine"
    );

    let mut s = ready(APF);
    call(
        &mut s,
        SDEI_EVENT_REGISTER,
        &[u64::from(SW), ENTRY, 0, 0, 0],
    );
    let mut regs = interrupted();
    s.inject(APF).unwrap();
    s.deliver(&mut regs).unwrap();
    assert_eq!(call(&mut s, SDEI_PRIVATE_RESET, &[]), ret(SDEI_DENIED));
    assert_eq!(status(&mut s, SW), 0, "the idle event was unregistered");
    assert_eq!(
        status(&mut s, APF),
        SDEI_STATUS_RUNNING,
        "the running one is pending"
    );
    assert!(!s.is_masked(), "PRIVATE_RESET leaves the PE mask alone");
}

#[test]
fn reset_returns_to_power_on_state() {
    let mut s = ready(APF);
    s.inject(APF).unwrap();
    let mut regs = interrupted();
    s.deliver(&mut regs).unwrap();
    s.reset();
    assert_eq!(s, SdeiVcpu::new());
    assert!(s.is_masked() && !s.is_running());
    assert_eq!(SdeiEvents::default().iter().count(), 0);
}

// ---- model-based test against the specification's state table ----

/// Handler states as (running, enabled, registered) bits, R E G = 4 2 1.
type St = u8;
/// The spec's transitions (DEN 0054A §6.1.2; rows for the impossible states
/// "enabled but not registered" are omitted). `None` = not permitted.
fn table(state: St, action: Action) -> Option<St> {
    use Action::*;
    const X: Option<St> = None;
    let same = Some(state);
    match (state, action) {
        (0b000, Register) => Some(0b001),
        (0b000, _) => X,
        (0b100, Complete) => Some(0b000),
        (0b100, Context) => same,
        (0b100, _) => X,
        (0b001, Enable) => Some(0b011),
        (0b001, Disable) => same,
        (0b001, Unregister) => Some(0b000),
        (0b001, _) => X,
        (0b101, Enable) => Some(0b111),
        (0b101, Disable | Context) => same,
        (0b101, Unregister) => Some(0b100),
        (0b101, Complete) => Some(0b001),
        (0b101, _) => X,
        (0b011, Enable) => same,
        (0b011, Disable) => Some(0b001),
        (0b011, Unregister) => Some(0b000),
        (0b011, Dispatch) => Some(0b111),
        (0b011, _) => X,
        (0b111, Enable | Context) => same,
        (0b111, Disable) => Some(0b101),
        (0b111, Unregister) => Some(0b100),
        (0b111, Complete) => Some(0b011),
        (_, _) => X,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Register,
    Enable,
    Disable,
    Unregister,
    Context,
    Complete,
    Dispatch,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Register(usize, bool),
    Enable(usize),
    Disable(usize),
    Unregister(usize),
    Status(usize),
    Context(u64),
    Complete(bool),
    Mask,
    Unmask,
    Inject(usize),
    Cancel(usize),
    Deliver,
    PrivateReset,
}

/// Events the ops name: ours (index 0, 1) and one that does not exist.
const NAMES: [u32; 3] = [SW, APF, 0x4040_0007];

fn op() -> impl Strategy<Value = Op> {
    // Mostly our two events, sometimes one that does not exist; the calls that
    // move a handler towards running are weighted up so deep states are reached.
    let ev = prop_oneof![4 => 0..2usize, 1 => Just(2usize)];
    prop_oneof![
        3 => (ev.clone(), prop::bool::weighted(0.9)).prop_map(|(e, ok)| Op::Register(e, ok)),
        3 => ev.clone().prop_map(Op::Enable),
        1 => ev.clone().prop_map(Op::Disable),
        2 => ev.clone().prop_map(Op::Unregister),
        1 => ev.clone().prop_map(Op::Status),
        1 => (0..20u64).prop_map(Op::Context),
        2 => any::<bool>().prop_map(Op::Complete),
        1 => Just(Op::Mask),
        3 => Just(Op::Unmask),
        3 => ev.clone().prop_map(Op::Inject),
        1 => ev.prop_map(Op::Cancel),
        3 => Just(Op::Deliver),
        1 => Just(Op::PrivateReset),
    ]
}

/// The reference: per-event spec state, a pending flag, the PE mask, and which
/// event (if any) runs.
struct Model {
    state: [St; 2],
    pending: [bool; 2],
    masked: bool,
    running: Option<usize>,
}

impl Model {
    fn apply(&mut self, e: usize, a: Action) -> bool {
        match table(self.state[e], a) {
            Some(next) => {
                self.state[e] = next;
                true
            }
            None => false,
        }
    }
    fn unregister(&mut self, e: usize) -> i64 {
        let running = self.state[e] & 0b100 != 0;
        if self.apply(e, Action::Unregister) {
            self.pending[e] = false;
            if running { SDEI_PENDING } else { 0 }
        } else if running {
            SDEI_PENDING
        } else {
            SDEI_DENIED
        }
    }
}

fn x0(out: SdeiOutcome) -> i64 {
    match out {
        SdeiOutcome::Return(v) | SdeiOutcome::Discarded { ret: v, .. } => v.cast_signed(),
        SdeiOutcome::Completed { .. } => i64::MIN,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]
    #[test]
    fn the_handler_state_machine_follows_the_spec(ops in prop::collection::vec(op(), 1..60)) {
        let mut s = SdeiVcpu::new();
        let mut m = Model { state: [0; 2], pending: [false; 2], masked: true, running: None };
        let mut regs = interrupted();
        for op in ops {
            let known = |e: usize| e < 2;
            match op {
                Op::Register(e, ok) => {
                    let entry = if ok { ENTRY } else { ENTRY + 2 };
                    let got = x0(call(&mut s, SDEI_EVENT_REGISTER, &[u64::from(NAMES[e]), entry, 0, 0, 0]));
                    let want = if !known(e) || !ok {
                        SDEI_INVALID_PARAMETERS
                    } else if m.apply(e, Action::Register) {
                        0
                    } else {
                        SDEI_DENIED
                    };
                    prop_assert_eq!(got, want, "{:?}", op);
                }
                Op::Enable(e) | Op::Disable(e) => {
                    let (id, a) = if matches!(op, Op::Enable(_)) {
                        (SDEI_EVENT_ENABLE, Action::Enable)
                    } else {
                        (SDEI_EVENT_DISABLE, Action::Disable)
                    };
                    let got = x0(call(&mut s, id, &[u64::from(NAMES[e])]));
                    let want = if !known(e) { SDEI_INVALID_PARAMETERS } else if m.apply(e, a) { 0 } else { SDEI_DENIED };
                    prop_assert_eq!(got, want, "{:?}", op);
                }
                Op::Unregister(e) => {
                    let got = x0(call(&mut s, SDEI_EVENT_UNREGISTER, &[u64::from(NAMES[e])]));
                    let want = if known(e) { m.unregister(e) } else { SDEI_INVALID_PARAMETERS };
                    prop_assert_eq!(got, want, "{:?}", op);
                }
                Op::Status(e) => {
                    let got = x0(call(&mut s, SDEI_EVENT_STATUS, &[u64::from(NAMES[e])]));
                    let want = if known(e) { i64::from(m.state[e]) } else { SDEI_INVALID_PARAMETERS };
                    prop_assert_eq!(got, want, "{:?}", op);
                }
                Op::Context(n) => {
                    let got = x0(call(&mut s, SDEI_EVENT_CONTEXT, &[n]));
                    let want = if n >= 18 {
                        SDEI_INVALID_PARAMETERS
                    } else if m.running.is_some_and(|e| m.apply(e, Action::Context)) {
                        (0x1000 + n).cast_signed()
                    } else {
                        SDEI_DENIED
                    };
                    prop_assert_eq!(got, want, "{:?}", op);
                }
                Op::Complete(resume) => {
                    let id = if resume { SDEI_EVENT_COMPLETE_AND_RESUME } else { SDEI_EVENT_COMPLETE };
                    // Outside a handler the registers are the interrupted context itself:
                    // call from a scratch copy so a refused call cannot disturb it.
                    let mut caller = regs.clone();
                    caller.x[1] = 0x4008_0480;
                    let got = s.call(id, &mut caller);
                    if m.running.is_some() {
                        regs = caller;
                    }
                    match m.running.take() {
                        Some(e) => {
                            prop_assert!(m.apply(e, Action::Complete));
                            prop_assert_eq!(got, SdeiOutcome::Completed { event: NAMES[e], resumed: resume });
                            prop_assert_eq!(regs.x, interrupted().x);
                            regs = interrupted();
                        }
                        None => prop_assert_eq!(x0(got), SDEI_DENIED),
                    }
                }
                Op::Mask => {
                    prop_assert_eq!(x0(call(&mut s, SDEI_PE_MASK, &[])), i64::from(!m.masked));
                    m.masked = true;
                }
                Op::Unmask => {
                    prop_assert_eq!(x0(call(&mut s, SDEI_PE_UNMASK, &[])), 0);
                    m.masked = false;
                }
                Op::Inject(e) => {
                    let got = s.inject(NAMES[e]);
                    let deliverable = known(e) && m.state[e] & 0b011 == 0b011 && !m.masked;
                    let want = if !deliverable {
                        Err(SdeiInjectError::NotDeliverable(NAMES[e]))
                    } else if m.pending[e] || m.running == Some(e) {
                        Err(SdeiInjectError::Busy(NAMES[e]))
                    } else {
                        m.pending[e] = true;
                        Ok(())
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Cancel(e) => {
                    let got = s.cancel(NAMES[e]);
                    let want = if known(e) && m.pending[e] {
                        m.pending[e] = false;
                        Ok(())
                    } else if m.running == Some(e) {
                        Err(SdeiCancelError::AlreadyDelivered(NAMES[e]))
                    } else {
                        Err(SdeiCancelError::NotPending(NAMES[e]))
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Deliver => {
                    let got = s.deliver(&mut regs);
                    // Critical (index 1) first; only registered+enabled events, never nested.
                    let want = if m.masked || m.running.is_some() {
                        None
                    } else {
                        [1, 0].into_iter().find(|&e| m.pending[e] && m.state[e] == 0b011)
                    };
                    if let Some(e) = want {
                        prop_assert!(m.apply(e, Action::Dispatch));
                        m.pending[e] = false;
                        m.running = Some(e);
                        prop_assert_eq!(regs.pc, ENTRY);
                    }
                    prop_assert_eq!(got, want.map(|e| NAMES[e]));
                }
                Op::PrivateReset => {
                    let got = x0(call(&mut s, SDEI_PRIVATE_RESET, &[]));
                    let mut want = 0;
                    for e in 0..2 {
                        if m.unregister(e) == SDEI_PENDING {
                            want = SDEI_DENIED;
                        }
                    }
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(s.is_running(), m.running.is_some());
            prop_assert_eq!(s.is_masked(), m.masked);
        }
    }
}
