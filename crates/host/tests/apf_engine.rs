//! The APF engine against the edge cases of `apf-protocol.md` §d (one test per
//! applicable case, named after it) and the corrections of DESIGN §5, driven with
//! the fake vCPU.

use apf_abi::Gfn;
use apf_abi::Token;
use apf_abi::control::{CONTROL_ENABLED, CONTROL_SEND_ALWAYS, CONTROL_SEPARATE_READY};
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_abi::shared::{OFF_READY_REASON, OFF_READY_TOKEN, OFF_REASON, OFF_TOKEN};
use apf_abi::smccc::{
    ASYNC_PF_FUNC_ENABLE, ASYNC_PF_FUNC_IRQ, ASYNC_PF_FUNC_IRQ_ACK, ASYNC_PF_FUNC_SDEI,
    ASYNC_PF_FUNC_SLOTS, ASYNC_PF_FUNC_VERSION, SMCCC_RET_INVALID_PARAMETER,
    SMCCC_RET_NOT_REQUIRED, SMCCC_RET_NOT_SUPPORTED, SMCCC_RET_SUCCESS, VENDOR_HYP_ASYNC_PF,
};
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{
    ApfCommand, ApfCommandError, ApfEngine, CompletionPort, EnableError, FaultDecision, ItemHandle,
    SyncReason, cmd,
};

const PPI: u32 = 17;
const BLOCK: u64 = 0x4000_1000;

/// An engine and its fake vCPU, with the guest side played by the test.
struct Rig {
    engine: ApfEngine,
    vcpu: FakeVcpu,
    separate: bool,
}

impl Rig {
    /// VMM configured, guest enabled, the enable's wake-all taken and acknowledged.
    fn enabled(separate: bool) -> Rig {
        Rig::enabled_on(0, separate)
    }

    fn enabled_on(vcpu_id: u32, separate: bool) -> Rig {
        let mut rig = Rig::configured(vcpu_id);
        rig.separate = separate;
        let flags = CONTROL_ENABLED | if separate { CONTROL_SEPARATE_READY } else { 0 };
        rig.engine
            .guest_enable(&mut rig.vcpu, BLOCK | flags)
            .expect("enable");
        assert_eq!(
            rig.guest_ppi(),
            Some(Token::WAKE_ALL),
            "enable queues a wake-all"
        );
        rig
    }

    fn configured(vcpu_id: u32) -> Rig {
        let mut engine = ApfEngine::new(vcpu_id, true);
        let mut vcpu = FakeVcpu::new(0x10000);
        engine
            .configure(&mut vcpu, SDEI_EVENT_ASYNC_PF, PPI)
            .expect("SET_SDEI, SET_IRQ");
        Rig {
            engine,
            vcpu,
            separate: false,
        }
    }

    fn fault(&mut self, gfn: u64) -> FaultDecision {
        self.engine.try_async(&mut self.vcpu, Gfn(gfn))
    }

    fn fault_async(&mut self, gfn: u64) -> (Token, u64) {
        match self.fault(gfn) {
            FaultDecision::Async { token, cookie } => (token, cookie),
            other => panic!("fault on {gfn:#x}: expected async, got {other:?}"),
        }
    }

    /// A fault whose not-present the guest takes at once; returns its cookie.
    fn fault_seen(&mut self, gfn: u64) -> (Token, u64) {
        let (token, cookie) = self.fault_async(gfn);
        assert_eq!(self.entry_sdei(), Some(token));
        (token, cookie)
    }

    fn complete(&self, cookie: u64, ok: bool) -> bool {
        let handle = ItemHandle::from_cookie(cookie).expect("a valid cookie");
        self.engine.port().complete(handle, ok)
    }

    /// Guest entry: SDEI delivery, then the guest's handler. Returns the token the
    /// handler saw.
    fn entry_sdei(&mut self) -> Option<Token> {
        self.engine.service(&mut self.vcpu);
        if self.vcpu.enter_guest(&mut self.engine) {
            self.vcpu.guest_sdei_handler(BLOCK)
        } else {
            None
        }
    }

    /// The guest's PPI handler and IRQ_ACK, if the PPI is asserted.
    fn guest_ppi(&mut self) -> Option<Token> {
        self.engine.service(&mut self.vcpu);
        if !self.vcpu.ppi(PPI) {
            return None;
        }
        let token = self.vcpu.guest_ppi_handler(BLOCK, self.separate);
        let r = self
            .engine
            .hypercall(&mut self.vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
        assert_eq!(r.status, SMCCC_RET_SUCCESS);
        token
    }

    fn counters(&self) -> apf_host::apf::ApfCountersSnapshot {
        self.engine.counters().snapshot()
    }

    fn block(&self, off: u64) -> u32 {
        self.vcpu.peek(BLOCK + off)
    }
}

// ---------------------------------------------------------------------------
// apf-protocol.md §d, one test per applicable case.

#[test]
fn d01_fault_in_guest_kernel_mode_is_synchronous_unless_send_always() {
    let mut rig = Rig::enabled(false);
    rig.vcpu.el = 1;
    assert_eq!(rig.fault(1), FaultDecision::Sync(SyncReason::KernelMode));
    assert_eq!(rig.block(OFF_REASON), 0, "nothing posted");
    assert_eq!(rig.counters().fallback(SyncReason::KernelMode), 1);

    let mut rig = Rig::configured(0);
    rig.engine
        .guest_enable(&mut rig.vcpu, BLOCK | CONTROL_ENABLED | CONTROL_SEND_ALWAYS)
        .unwrap();
    rig.guest_ppi();
    rig.vcpu.el = 1;
    assert!(matches!(rig.fault(1), FaultDecision::Async { .. }));
}

#[test]
fn d02_repeated_fault_on_a_gfn_in_flight_halts_instead_of_spinning() {
    let mut rig = Rig::enabled(false);
    let (token, cookie) = rig.fault_seen(7);
    assert_eq!(rig.fault(7), FaultDecision::Halt);
    assert_eq!(rig.engine.halted_on(), Some(Gfn(7)));
    assert_eq!(rig.counters().repeated_fault_halts, 1);
    assert!(!rig.engine.has_work(), "nothing wakes the halt yet");
    assert!(rig.complete(cookie, true));
    assert!(
        rig.engine.has_work(),
        "the completion makes the vCPU runnable"
    );
    rig.engine.service(&mut rig.vcpu);
    assert_eq!(
        rig.engine.halted_on(),
        None,
        "that page arrived: the halt ends"
    );
    assert_eq!(rig.guest_ppi(), Some(token));
}

#[test]
fn d03_queue_full_falls_back_to_a_synchronous_fault() {
    let mut rig = Rig::enabled(true);
    for gfn in 0..64 {
        rig.fault_seen(gfn);
    }
    assert_eq!(rig.engine.outstanding(), 64);
    assert_eq!(rig.fault(64), FaultDecision::Sync(SyncReason::QueueFull));
    assert_eq!(rig.counters().fallback(SyncReason::QueueFull), 1);
}

#[test]
fn d06_failed_fetch_still_sends_page_ready_and_the_retry_is_synchronous() {
    let mut rig = Rig::enabled(false);
    let (token, cookie) = rig.fault_seen(9);
    assert!(rig.complete(cookie, false));
    assert_eq!(
        rig.guest_ppi(),
        Some(token),
        "the sleeper must wake even on error"
    );
    assert_eq!(rig.counters().failed_fetches, 1);
    assert_eq!(
        rig.fault(9),
        FaultDecision::Sync(SyncReason::RetryAfterError),
        "the retry resolves synchronously so the error reaches the guest"
    );
    assert!(
        matches!(rig.fault(9), FaultDecision::Async { .. }),
        "once only"
    );
}

#[test]
fn d07_page_ready_never_precedes_the_not_present_the_guest_saw() {
    let mut rig = Rig::enabled(false);
    let (_, cookie) = rig.fault_async(3);
    assert!(rig.complete(cookie, true));
    rig.engine.service(&mut rig.vcpu);
    assert!(
        !rig.vcpu.ppi(PPI),
        "no page-ready for a token the guest never saw"
    );
    assert_eq!(rig.entry_sdei(), None, "and the not-present is gone too");
}

#[test]
fn d08_page_arriving_before_delivery_cancels_both_notifications() {
    let mut rig = Rig::enabled(false);
    let (_, cookie) = rig.fault_async(3);
    assert!(rig.vcpu.sdei.pending);
    assert!(rig.complete(cookie, true));
    rig.engine.service(&mut rig.vcpu);
    assert!(!rig.vcpu.sdei.pending, "SDEI cancelled");
    assert_eq!(
        (rig.block(OFF_REASON), rig.block(OFF_TOKEN)),
        (0, 0),
        "block withdrawn"
    );
    assert_eq!(rig.engine.outstanding(), 0);
    let c = rig.counters();
    assert_eq!(
        (c.cancelled, c.page_ready, c.not_present_delivered),
        (1, 0, 0)
    );

    // Once delivered, a normal page-ready follows.
    let (token, cookie) = rig.fault_seen(4);
    assert!(rig.complete(cookie, true));
    assert_eq!(rig.guest_ppi(), Some(token));
}

#[test]
fn d09_one_notification_in_flight_per_direction() {
    let mut rig = Rig::enabled(false);
    let (t1, c1) = rig.fault_seen(1);
    let (t2, c2) = rig.fault_seen(2);
    assert!(rig.complete(c1, true) && rig.complete(c2, true));
    rig.engine.service(&mut rig.vcpu);
    assert_eq!(rig.engine.page_ready_pending(), Some(t1));
    // Without SEPARATE_READY an unacknowledged page-ready blocks the next not-present.
    assert_eq!(rig.fault(5), FaultDecision::Sync(SyncReason::ChannelBusy));
    assert_eq!(rig.guest_ppi(), Some(t1));
    assert_eq!(
        rig.engine.page_ready_pending(),
        Some(t2),
        "the ACK let the next one through"
    );
    assert_eq!(rig.guest_ppi(), Some(t2));

    // With SEPARATE_READY it does not.
    let mut rig = Rig::enabled(true);
    let (t1, c1) = rig.fault_seen(1);
    assert!(rig.complete(c1, true));
    rig.engine.service(&mut rig.vcpu);
    assert_eq!(rig.engine.page_ready_pending(), Some(t1));
    assert!(matches!(rig.fault(5), FaultDecision::Async { .. }));
    assert_eq!(rig.block(OFF_READY_TOKEN), t1.0);
}

#[test]
fn d10_disable_with_work_outstanding_drains_everything() {
    let mut rig = Rig::enabled(true);
    let (_, c1) = rig.fault_seen(1);
    let (_, c2) = rig.fault_seen(2);
    assert!(rig.complete(c1, true));
    rig.engine.service(&mut rig.vcpu);
    assert!(rig.vcpu.ppi(PPI));
    let (_, c3) = rig.fault_async(3); // not-present still queued
    let r = rig
        .engine
        .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_ENABLE, 0, 0);
    assert_eq!(r.status, SMCCC_RET_SUCCESS);
    assert_eq!(rig.engine.outstanding(), 0);
    assert!(!rig.vcpu.ppi(PPI), "line lowered");
    assert!(!rig.vcpu.sdei.pending, "queued not-present cancelled");
    assert!(
        !rig.complete(c2, true) && !rig.complete(c3, true),
        "late completions refused"
    );
    assert_eq!(rig.counters().drained, 2, "c1 was already answered");
    assert_eq!(rig.fault(4), FaultDecision::Sync(SyncReason::Disabled));
}

#[test]
fn d11_enable_queues_a_wake_all() {
    let mut rig = Rig::configured(0);
    rig.engine
        .guest_enable(&mut rig.vcpu, BLOCK | CONTROL_ENABLED)
        .unwrap();
    assert!(rig.vcpu.ppi(PPI));
    assert_eq!(rig.block(OFF_TOKEN), Token::WAKE_ALL.0);
    assert_eq!(rig.counters().wake_all, 1);
}

#[test]
fn d12_vcpu_reset_drains_and_disables_but_keeps_the_vmm_config() {
    let mut rig = Rig::enabled(true);
    let (_, c) = rig.fault_seen(1);
    rig.engine.reset(&mut rig.vcpu);
    assert!(!rig.engine.control().enabled);
    assert_eq!(rig.engine.outstanding(), 0);
    assert!(!rig.complete(c, true));
    assert_eq!(
        (rig.engine.sdei_event(), rig.engine.ppi()),
        (SDEI_EVENT_ASYNC_PF, PPI)
    );
    assert_eq!(rig.fault(1), FaultDecision::Sync(SyncReason::Disabled));
    // The rebooted guest enables again and gets a wake-all.
    rig.engine
        .guest_enable(&mut rig.vcpu, BLOCK | CONTROL_ENABLED)
        .unwrap();
    assert_eq!(rig.block(OFF_TOKEN), Token::WAKE_ALL.0);
}

#[test]
fn d13_cpu_offline_then_online_wakes_all_sleepers() {
    let mut rig = Rig::enabled(false);
    rig.fault_seen(1);
    rig.fault_seen(2);
    assert_eq!(
        rig.engine
            .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_ENABLE, 0, 0)
            .status,
        SMCCC_RET_SUCCESS
    );
    let r = rig
        .engine
        .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_ENABLE, BLOCK | 1, 0);
    assert_eq!(r.status, SMCCC_RET_SUCCESS);
    assert_eq!(
        rig.guest_ppi(),
        Some(Token::WAKE_ALL),
        "both sleepers are woken by broadcast"
    );
}

#[test]
fn d14_live_migration_restores_state_and_wakes_all() {
    let mut src = Rig::enabled(true);
    src.fault_seen(1);
    let saved: Vec<u64> = [
        ApfCommand::GetSdei,
        ApfCommand::GetIrq,
        ApfCommand::GetControl,
    ]
    .into_iter()
    .map(|c| src.engine.command(&mut src.vcpu, c).unwrap())
    .collect();
    let mut dst = Rig {
        engine: ApfEngine::new(0, true),
        vcpu: src.vcpu.clone(),
        separate: true,
    };
    for (c, v) in [cmd::SET_SDEI, cmd::SET_IRQ, cmd::SET_CONTROL]
        .into_iter()
        .zip(&saved)
    {
        let command = ApfCommand::from_raw(c, *v).unwrap();
        dst.engine.command(&mut dst.vcpu, command).unwrap();
    }
    assert_eq!(dst.engine.control(), src.engine.control());
    assert_eq!(dst.guest_ppi(), Some(Token::WAKE_ALL));
    // SET_CONTROL re-applies even when already enabled, and wakes all again.
    dst.engine
        .command(&mut dst.vcpu, ApfCommand::SetControl(saved[2]))
        .unwrap();
    assert_eq!(dst.guest_ppi(), Some(Token::WAKE_ALL));
}

#[test]
fn d16_token_is_never_zero_even_when_the_counter_wraps() {
    let mut rig = Rig::enabled(true);
    let rounds = (1u32 << 20) + 16;
    for _ in 0..rounds {
        let (token, cookie) = rig.fault_seen(5);
        assert_ne!(token.0, 0);
        assert!(rig.complete(cookie, true));
        assert_eq!(rig.guest_ppi(), Some(token));
    }
}

#[test]
fn d17_wake_all_token_is_never_issued_for_a_fault() {
    let mut rig = Rig::enabled_on(0xFFF, true);
    let rounds = (1u32 << 20) + 16;
    for _ in 0..rounds {
        let (token, cookie) = rig.fault_seen(5);
        assert!(!token.is_wake_all());
        assert_eq!(token.vcpu(), 0xFFF);
        assert!(rig.complete(cookie, true));
        assert_eq!(rig.guest_ppi(), Some(token));
    }
}

#[test]
fn d18_guest_that_cannot_park_the_task_refaults_into_a_halt() {
    let mut rig = Rig::enabled(false);
    let (_, cookie) = rig.fault_seen(8); // the guest clears the block but does not park
    assert_eq!(
        rig.fault(8),
        FaultDecision::Halt,
        "the re-fault halts, no spin"
    );
    assert!(rig.complete(cookie, true));
    rig.engine.service(&mut rig.vcpu);
    assert_eq!(rig.engine.halted_on(), None);
}

#[test]
fn d19_bogus_and_duplicate_notifications_are_harmless() {
    let mut rig = Rig::enabled(false);
    let r = rig
        .engine
        .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
    assert_eq!(r.status, SMCCC_RET_SUCCESS);
    assert_eq!(rig.counters().spurious_acks, 1);
    let (token, cookie) = rig.fault_seen(1);
    assert!(rig.complete(cookie, true));
    assert!(!rig.complete(cookie, true), "duplicate completion refused");
    let forged = ItemHandle {
        slot: 40,
        generation: 77,
    };
    assert!(
        !rig.engine.port().complete(forged, true),
        "forged completion refused"
    );
    assert_eq!(rig.guest_ppi(), Some(token));
    assert_eq!(rig.guest_ppi(), None, "exactly one page-ready");
    assert_eq!(rig.counters().completions, 1);
}

#[test]
fn d20_shared_block_writes_that_fail_are_rolled_back_or_dropped() {
    let mut rig = Rig::configured(0);
    let r = rig
        .engine
        .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_ENABLE, 0x9000_0001, 0);
    assert_eq!(r.status, SMCCC_RET_INVALID_PARAMETER, "block outside RAM");

    let mut rig = Rig::enabled(false);
    rig.vcpu.fail_writes = true;
    assert_eq!(
        rig.fault(1),
        FaultDecision::Sync(SyncReason::BlockWriteFailed)
    );
    assert_eq!(rig.engine.outstanding(), 0);
    assert!(!rig.vcpu.sdei.pending);
    rig.vcpu.fail_writes = false;

    let (_, cookie) = rig.fault_seen(2);
    assert!(rig.complete(cookie, true));
    rig.vcpu.fail_writes = true;
    rig.engine.service(&mut rig.vcpu);
    assert!(!rig.vcpu.ppi(PPI), "no PPI without the token in the block");
    assert_eq!(rig.counters().ready_write_failed, 1);
    assert_eq!(rig.engine.outstanding(), 0, "the item does not leak");
}

#[test]
fn d21_sdei_injection_failure_rolls_back_and_never_stalls_the_block() {
    let mut rig = Rig::enabled(false);
    rig.vcpu.fail_inject = true;
    assert_eq!(rig.fault(1), FaultDecision::Sync(SyncReason::InjectFailed));
    assert_eq!(
        (rig.block(OFF_REASON), rig.block(OFF_TOKEN)),
        (0, 0),
        "block free again"
    );
    assert_eq!(rig.engine.outstanding(), 0);
    rig.vcpu.fail_inject = false;
    assert!(
        matches!(rig.fault(1), FaultDecision::Async { .. }),
        "slot was rolled back"
    );

    // The v4 stall: an older completion behind a not-present the guest will never
    // take (it masked its PE after the injection).
    let mut rig = Rig::enabled(false);
    let (t1, c1) = rig.fault_seen(1);
    let (_, c2) = rig.fault_async(2);
    rig.vcpu.sdei.pe_masked = true;
    assert!(rig.complete(c1, true));
    rig.engine.service(&mut rig.vcpu);
    assert!(
        !rig.vcpu.ppi(PPI),
        "block busy with the undelivered not-present"
    );
    assert!(rig.complete(c2, true));
    assert_eq!(
        rig.guest_ppi(),
        Some(t1),
        "withdrawing it unblocks the older page-ready"
    );
    assert_eq!(rig.counters().cancelled, 1);
}

#[test]
fn d22_no_not_present_while_an_sdei_handler_runs() {
    let mut rig = Rig::enabled(false);
    rig.fault_async(1);
    assert!(rig.vcpu.enter_guest(&mut rig.engine));
    rig.vcpu.guest_sdei_handler(BLOCK);
    rig.vcpu.sdei.running = true; // still inside the handler
    assert_eq!(rig.fault(2), FaultDecision::Sync(SyncReason::SdeiRunning));
}

#[test]
fn d24_completion_wakes_a_vcpu_halted_in_wfi() {
    let mut rig = Rig::enabled(false);
    let (token, cookie) = rig.fault_seen(1);
    assert!(!rig.engine.has_work(), "a WFI now would sleep");
    let port: std::sync::Arc<CompletionPort> = std::sync::Arc::clone(rig.engine.port());
    let handle = ItemHandle::from_cookie(cookie).unwrap();
    std::thread::spawn(move || assert!(port.complete(handle, true)))
        .join()
        .unwrap();
    assert!(
        rig.engine.has_work(),
        "a completion from another thread is seen"
    );
    assert_eq!(rig.guest_ppi(), Some(token));
}

#[test]
fn d28_no_work_item_outlives_its_vcpu() {
    let mut rig = Rig::enabled(false);
    let (_, cookie) = rig.fault_seen(1);
    let port = std::sync::Arc::clone(rig.engine.port());
    drop(rig);
    let handle = ItemHandle::from_cookie(cookie).unwrap();
    assert!(
        !port.complete(handle, true),
        "the port refuses completions for a dead vCPU"
    );
}

#[test]
fn d30_uninterruptible_sleepers_are_freed_by_a_wake_all_after_a_lost_page_ready() {
    let mut rig = Rig::enabled(false);
    let (_, cookie) = rig.fault_seen(1);
    rig.vcpu.fail_writes = true; // the page-ready is lost
    assert!(rig.complete(cookie, true));
    rig.engine.service(&mut rig.vcpu);
    rig.vcpu.fail_writes = false;
    assert_eq!(rig.guest_ppi(), None);
    // The VMM restores the control word (or the guest re-enables): wake-all.
    let word = rig
        .engine
        .command(&mut rig.vcpu, ApfCommand::GetControl)
        .unwrap();
    rig.engine
        .command(&mut rig.vcpu, ApfCommand::SetControl(word))
        .unwrap();
    assert_eq!(rig.guest_ppi(), Some(Token::WAKE_ALL));
}

#[test]
fn d33_abi_numbers_avoid_mainline_collisions() {
    assert_ne!(
        VENDOR_HYP_ASYNC_PF, 0x8600_0002,
        "function 2 is pKVM's HYP_MEMINFO"
    );
    assert_eq!(VENDOR_HYP_ASYNC_PF, 0x8600_0030);
    let mut rig = Rig::enabled(false);
    let r = rig
        .engine
        .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_VERSION, 0, 0);
    assert_eq!((r.status, r.value), (SMCCC_RET_SUCCESS, 0x01_01_00));
}

// ---------------------------------------------------------------------------
// DESIGN §5 corrections.

#[test]
fn c1_not_present_needs_every_condition() {
    type Setup = fn(&mut Rig);
    let cases: [(&str, Setup, SyncReason); 6] = [
        ("EL1", |r| r.vcpu.el = 1, SyncReason::KernelMode),
        (
            "handler running",
            |r| r.vcpu.sdei.running = true,
            SyncReason::SdeiRunning,
        ),
        (
            "PE masked",
            |r| r.vcpu.sdei.pe_masked = true,
            SyncReason::SdeiNotDeliverable,
        ),
        (
            "unregistered",
            |r| r.vcpu.sdei.registered = false,
            SyncReason::SdeiNotDeliverable,
        ),
        (
            "event disabled",
            |r| r.vcpu.sdei.enabled = false,
            SyncReason::SdeiNotDeliverable,
        ),
        (
            "channel busy",
            |r| r.vcpu.write_u32_for_test(BLOCK, 1),
            SyncReason::ChannelBusy,
        ),
    ];
    for (what, setup, reason) in cases {
        let mut rig = Rig::enabled(false);
        setup(&mut rig);
        assert_eq!(rig.fault(1), FaultDecision::Sync(reason), "{what}");
        assert!(!rig.vcpu.sdei.pending, "{what}: nothing injected");
    }
    let mut rig = Rig::enabled(false);
    assert!(
        matches!(rig.fault(1), FaultDecision::Async { .. }),
        "all conditions hold"
    );
}

trait TestPoke {
    fn write_u32_for_test(&mut self, gpa: u64, v: u32);
}
impl TestPoke for FakeVcpu {
    fn write_u32_for_test(&mut self, gpa: u64, v: u32) {
        use apf_host::apf::ApfVcpu;
        self.write_u32(gpa, v).unwrap();
    }
}

#[test]
fn c2_failure_after_queueing_rolls_back_and_sends_no_page_ready() {
    let mut rig = Rig::enabled(false);
    rig.vcpu.fail_inject = true;
    assert_eq!(rig.fault(1), FaultDecision::Sync(SyncReason::InjectFailed));
    rig.vcpu.fail_inject = false;
    rig.engine.service(&mut rig.vcpu);
    assert!(!rig.vcpu.ppi(PPI));
    assert_eq!(rig.counters().not_present, 0);
}

#[test]
fn c3_repeated_fault_halts_until_that_page_not_another() {
    let mut rig = Rig::enabled(true);
    let (_, c1) = rig.fault_seen(1);
    let (_, c2) = rig.fault_seen(2);
    assert_eq!(rig.fault(2), FaultDecision::Halt);
    assert!(rig.complete(c1, true));
    rig.engine.service(&mut rig.vcpu);
    assert_eq!(
        rig.engine.halted_on(),
        Some(Gfn(2)),
        "another page does not end the halt"
    );
    assert!(rig.complete(c2, true));
    rig.engine.service(&mut rig.vcpu);
    assert_eq!(rig.engine.halted_on(), None);
}

#[test]
fn c4_arrival_before_delivery_cancels_both() {
    let mut rig = Rig::enabled(true);
    let (_, c) = rig.fault_async(1);
    assert!(rig.complete(c, true));
    assert_eq!(rig.entry_sdei(), None);
    assert_eq!(rig.guest_ppi(), None);
    assert_eq!(rig.counters().cancelled, 1);
}

#[test]
fn c5_page_ready_waits_for_its_channel_and_for_irq_ack() {
    let mut rig = Rig::enabled(true);
    let (t1, c1) = rig.fault_seen(1);
    let (t2, c2) = rig.fault_seen(2);
    assert!(rig.complete(c1, true) && rig.complete(c2, true));
    rig.engine.service(&mut rig.vcpu);
    assert_eq!(rig.block(OFF_READY_TOKEN), t1.0);
    // The guest cleared the channel but did not ACK yet: t2 must wait.
    rig.vcpu.guest_ppi_handler(BLOCK, true);
    rig.engine.service(&mut rig.vcpu);
    assert_eq!(
        rig.block(OFF_READY_REASON),
        0,
        "no second page-ready before the ACK"
    );
    rig.engine
        .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
    assert!(rig.vcpu.ppi(PPI), "the ACK delivered the next");
    assert_eq!(rig.block(OFF_READY_TOKEN), t2.0);
    // The guest ACKs without clearing the channel: the next waits for the channel.
    let (_, c3) = rig.fault_seen(3);
    rig.engine
        .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
    assert!(rig.complete(c3, true));
    rig.engine.service(&mut rig.vcpu);
    assert!(!rig.vcpu.ppi(PPI), "channel still holds t2");
}

#[test]
fn c6_enable_reenable_and_reset_wake_all_and_drain() {
    let mut rig = Rig::enabled(false);
    let (_, c) = rig.fault_seen(1);
    let word = rig.engine.control().encode();
    rig.engine.vmm_set_control(&mut rig.vcpu, word).unwrap();
    assert!(!rig.complete(c, true), "re-enable drained the old item");
    assert_eq!(rig.guest_ppi(), Some(Token::WAKE_ALL));
    rig.fault_seen(2);
    rig.engine.reset(&mut rig.vcpu);
    assert_eq!(rig.engine.outstanding(), 0);
}

#[test]
fn c7_synchronous_fallbacks_carry_their_reason() {
    let mut rig = Rig::configured(0);
    assert_eq!(rig.fault(1), FaultDecision::Sync(SyncReason::Disabled));
    let mut off = ApfEngine::new(0, false);
    let mut vcpu = FakeVcpu::new(0x10000);
    assert_eq!(
        off.try_async(&mut vcpu, Gfn(1)),
        FaultDecision::Sync(SyncReason::NotOffered)
    );
    let c = rig.counters();
    assert_eq!(
        (c.fallback(SyncReason::Disabled), c.total_fallbacks()),
        (1, 1)
    );
}

// ---------------------------------------------------------------------------
// Bad input: every refused call changes nothing.

type State = (u64, u32, u32, usize, Vec<u8>, u32, Vec<u64>);

fn state(rig: &Rig) -> State {
    (
        rig.engine.control().encode(),
        rig.engine.sdei_event(),
        rig.engine.ppi(),
        rig.engine.outstanding(),
        rig.vcpu.ram.clone(),
        rig.vcpu.ppi_levels,
        rig.vcpu.claimed.clone(),
    )
}

/// The engine claims its shared block before it first writes it and gives it back
/// only after its last write, on every path, so the machine's record of who holds
/// which block never lags behind the engine (issue 12).
#[test]
fn the_engine_holds_its_shared_block_exactly_while_enabled() {
    const OTHER: u64 = BLOCK + 0x40;
    let flags = CONTROL_ENABLED | CONTROL_SEPARATE_READY;
    let enable = |rig: &mut Rig, raw: u64| {
        rig.engine
            .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_ENABLE, raw, 0)
            .status
    };
    let restore = |rig: &mut Rig, raw: u64| {
        rig.engine
            .command(&mut rig.vcpu, ApfCommand::SetControl(raw))
            .is_ok()
    };
    let mut rig = Rig::configured(0);
    assert_eq!(rig.vcpu.claimed, []);
    assert_eq!(enable(&mut rig, BLOCK | flags), SMCCC_RET_SUCCESS);
    assert_eq!(rig.vcpu.claimed, [BLOCK]);
    assert_eq!(
        enable(&mut rig, OTHER | flags),
        SMCCC_RET_NOT_REQUIRED,
        "already enabled"
    );
    assert_eq!(rig.vcpu.claimed, [BLOCK], "NOT_REQUIRED claims nothing");
    assert!(
        restore(&mut rig, BLOCK | flags),
        "re-applying the same block"
    );
    assert_eq!(rig.vcpu.claimed, [BLOCK]);
    assert!(restore(&mut rig, OTHER | flags), "moving");
    assert_eq!(rig.vcpu.claimed, [OTHER]);
    rig.vcpu.fail_writes = true;
    assert!(!restore(&mut rig, BLOCK | flags), "BLOCK cannot be written");
    assert_eq!(
        rig.vcpu.claimed,
        [OTHER],
        "a refused move keeps the old block"
    );
    assert_eq!(rig.engine.control().gpa, OTHER);
    rig.vcpu.fail_writes = false;
    assert_eq!(enable(&mut rig, 0), SMCCC_RET_SUCCESS);
    assert_eq!(rig.vcpu.claimed, [], "DISABLE gives it back");
    rig.vcpu.fail_writes = true;
    assert_eq!(enable(&mut rig, BLOCK | flags), SMCCC_RET_INVALID_PARAMETER);
    assert_eq!(rig.vcpu.claimed, [], "a refused ENABLE gives it back");
    rig.vcpu.fail_writes = false;
    assert_eq!(enable(&mut rig, BLOCK | flags), SMCCC_RET_SUCCESS);
    rig.engine.reset(&mut rig.vcpu);
    assert_eq!(rig.vcpu.claimed, [], "a reset (CPU_OFF) gives it back");
    rig.engine.reset(&mut rig.vcpu);
    assert_eq!(rig.vcpu.claimed, [], "a disabled reset releases nothing");
    // A migration's destination: a fresh engine restored by the VMM claims too.
    let mut dest = Rig::configured(0);
    assert!(restore(&mut dest, BLOCK | flags));
    assert_eq!(dest.vcpu.claimed, [BLOCK]);
    assert!(restore(&mut dest, 0), "restoring a disabled word");
    assert_eq!(dest.vcpu.claimed, []);
}

#[test]
fn hostile_hypercalls_get_their_error_and_change_nothing() {
    let mut rig = Rig::configured(0);
    let before = state(&rig);
    let cases: [(u64, u64, u64, i64); 7] = [
        (ASYNC_PF_FUNC_ENABLE, BLOCK | 1, 0, SMCCC_RET_SUCCESS), // placeholder, replaced below
        (
            ASYNC_PF_FUNC_ENABLE,
            BLOCK | 1 | 0x8,
            0,
            SMCCC_RET_INVALID_PARAMETER,
        ),
        (ASYNC_PF_FUNC_ENABLE, 0x1, 0x1, SMCCC_RET_INVALID_PARAMETER), // 4 GiB: outside RAM
        (
            ASYNC_PF_FUNC_ENABLE,
            0x0800_0001,
            0,
            SMCCC_RET_INVALID_PARAMETER,
        ), // GIC, not RAM
        (ASYNC_PF_FUNC_ENABLE, 0, 0, SMCCC_RET_NOT_REQUIRED),
        (6, 0, 0, SMCCC_RET_NOT_SUPPORTED),
        (u64::MAX, 0, 0, SMCCC_RET_NOT_SUPPORTED),
    ];
    for (x1, x2, x3, want) in &cases[1..] {
        let r = rig.engine.hypercall(&mut rig.vcpu, *x1, *x2, *x3);
        assert_eq!(r.status, *want, "ASYNC_PF({x1:#x}, {x2:#x}, {x3:#x})");
        assert!(
            state(&rig) == before,
            "ASYNC_PF({x1:#x}, {x2:#x}) changed state"
        );
    }
    // Enabling before the VMM configured the event and PPI.
    let mut bare = ApfEngine::new(0, true);
    let r = bare.hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_ENABLE, BLOCK | 1, 0);
    assert_eq!(r.status, SMCCC_RET_INVALID_PARAMETER);
    assert!(!bare.control().enabled);
    // Sub-function numbers use only the low 32 bits (SMC32).
    let r = rig
        .engine
        .hypercall(&mut rig.vcpu, (1 << 32) | ASYNC_PF_FUNC_SLOTS, 0, 0);
    assert_eq!((r.status, r.value), (SMCCC_RET_SUCCESS, 64));
    for (f, v) in [
        (ASYNC_PF_FUNC_SDEI, u64::from(SDEI_EVENT_ASYNC_PF)),
        (ASYNC_PF_FUNC_IRQ, 17),
    ] {
        assert_eq!(rig.engine.hypercall(&mut rig.vcpu, f, 0, 0).value, v);
    }
    // Not offered: everything is NOT_SUPPORTED.
    let mut off = ApfEngine::new(0, false);
    for f in 0..8 {
        let r = off.hypercall(&mut rig.vcpu, f, BLOCK | 1, 0);
        assert_eq!(r.status, SMCCC_RET_NOT_SUPPORTED);
    }
}

#[test]
fn hostile_control_commands_get_their_error_and_change_nothing() {
    let mut rig = Rig::enabled(false);
    let before = state(&rig);
    let refused: [(u32, u64, ApfCommandError); 8] = [
        (7, 0, ApfCommandError::UnknownCommand(7)),
        (cmd::SET_SDEI, 0, ApfCommandError::InvalidSdeiEvent(0)),
        (
            cmd::SET_SDEI,
            0x4080_0000,
            ApfCommandError::InvalidSdeiEvent(0x4080_0000),
        ),
        (
            cmd::SET_SDEI,
            0x1_4040_0001,
            ApfCommandError::InvalidSdeiEvent(0x1_4040_0001),
        ),
        (cmd::SET_IRQ, 27, ApfCommandError::InvalidPpi(27)),
        (
            cmd::SET_IRQ,
            1 << 32 | 17,
            ApfCommandError::InvalidPpi(1 << 32 | 17),
        ),
        (cmd::SET_IRQ, 18, ApfCommandError::BusyWhileEnabled),
        (
            cmd::SET_CONTROL,
            BLOCK | 0x21,
            ApfCommandError::Control(EnableError::ReservedBits(BLOCK | 0x21)),
        ),
    ];
    for (c, v, want) in refused {
        let got = ApfCommand::from_raw(c, v)
            .and_then(|command| rig.engine.command(&mut rig.vcpu, command));
        assert_eq!(got, Err(want), "command {c} value {v:#x}");
        assert!(
            state(&rig) == before,
            "command {c} value {v:#x} changed state"
        );
    }
    let mut off = ApfEngine::new(0, false);
    assert_eq!(
        off.command(&mut rig.vcpu, ApfCommand::GetVersion),
        Err(ApfCommandError::NotOffered)
    );
}

#[test]
fn a_not_present_the_guest_discards_unseen_is_owed_no_page_ready() {
    let mut rig = Rig::enabled(true);
    let (_, cookie) = rig.fault_async(4);
    // The guest unregisters the event before delivery; the platform drops the
    // queued instance and tells the engine.
    rig.vcpu.sdei.pending = false;
    rig.engine.on_not_present_discarded(&mut rig.vcpu);
    assert_eq!((rig.block(OFF_REASON), rig.block(OFF_TOKEN)), (0, 0));
    assert_eq!(
        rig.fault(4),
        FaultDecision::Halt,
        "a re-fault waits for the page"
    );
    assert!(rig.complete(cookie, true));
    rig.engine.service(&mut rig.vcpu);
    assert!(
        !rig.vcpu.ppi(PPI),
        "no page-ready for a fault the guest never saw"
    );
    assert_eq!(rig.engine.halted_on(), None);
    assert_eq!(rig.engine.outstanding(), 0);
}

#[test]
fn a_vmm_offering_abi_1_0_reports_it_and_refuses_separate_ready() {
    let mut rig = Rig::configured(0);
    rig.engine.limit_to_v1_0();
    let r = rig
        .engine
        .hypercall(&mut rig.vcpu, ASYNC_PF_FUNC_VERSION, 0, 0);
    assert_eq!(r.value, 0x01_00_00);
    let r = rig.engine.hypercall(
        &mut rig.vcpu,
        ASYNC_PF_FUNC_ENABLE,
        BLOCK | CONTROL_ENABLED | CONTROL_SEPARATE_READY,
        0,
    );
    assert_eq!(r.status, SMCCC_RET_INVALID_PARAMETER);
    assert!(!rig.engine.control().enabled);
    let r = rig.engine.hypercall(
        &mut rig.vcpu,
        ASYNC_PF_FUNC_ENABLE,
        BLOCK | CONTROL_ENABLED,
        0,
    );
    assert_eq!(r.status, SMCCC_RET_SUCCESS);
}

#[test]
fn describe_names_each_item_its_page_and_the_notifications_in_flight() {
    let mut rig = Rig::enabled(true);
    let page = |gfn: Gfn| format!("<page {:#x}>", gfn.0);
    let (t1, c1) = rig.fault_async(0x40005);
    let text = rig.engine.describe(&mut rig.vcpu, page);
    assert!(
        text.contains(&format!(
            "item(token={:#x} gfn=0x40005 InFlight: page <page 0x40005>)",
            t1.0
        )),
        "{text}"
    );
    assert!(text.contains("not_present_pending=Some("), "{text}");
    assert!(
        text.contains(&format!(
            "NotPresent=(reason Some(1), token Some({}))",
            t1.0
        )),
        "{text}"
    );
    // Delivered and fetched: the page-ready is raised and awaits its ACK.
    assert_eq!(rig.entry_sdei(), Some(t1));
    assert!(rig.complete(c1, true));
    rig.engine.service(&mut rig.vcpu);
    let text = rig.engine.describe(&mut rig.vcpu, page);
    assert!(!text.contains("item("), "{text}");
    assert!(
        text.contains(&format!("page_ready_pending=Some({})", t1.0)),
        "{text}"
    );
    assert!(
        text.contains(&format!("Ready=(reason Some(2), token Some({}))", t1.0)),
        "{text}"
    );
}
