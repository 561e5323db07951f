//! Device state as data: each device's state, saved and restored into a fresh
//! device, behaves as the original (and survives serde); states from another
//! machine shape are refused.

use apf_abi::Token;
use apf_abi::control::{CONTROL_ENABLED, CONTROL_SEPARATE_READY};
use apf_abi::platform::{GICD_BASE, GICR_BASE, GICR_SGI_OFFSET, RAM_BASE, UART_BASE, UART_INTID};
use apf_abi::psci::PSCI_CPU_ON;
use apf_abi::sdei::{
    SDEI_EVENT_ASYNC_PF, SDEI_EVENT_COMPLETE, SDEI_EVENT_ENABLE, SDEI_EVENT_REGISTER,
    SDEI_PE_UNMASK,
};
use apf_abi::shared::{
    OFF_READY_REASON, OFF_READY_TOKEN, OFF_REASON, OFF_TOKEN, REASON_PAGE_READY,
};
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{ApfEngine, ApfEngineState, FaultDecision, ItemHandle};
use apf_host::gic::{Gic, GicCpuInterface, GicState, GicStateError, IccReg, IrqLine, SpiLine};
use apf_host::machine::{Machine, MachineState, MachineStateError, StartRequest};
use apf_host::psci::{PowerState, Psci, PsciOutcome, PsciStateError};
use apf_host::regs::{GuestRegs, PlainRegs};
use apf_host::sdei::{SdeiOutcome, SdeiStateError, SdeiVcpu, SdeiVcpuState};
use apf_host::uart::Pl011;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const RAM: u64 = 1 << 20;

fn json_round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}

/// A GIC with an enabled, prioritised, routed SPI and PPI, an edge SPI config,
/// a pending PPI and an active SPI, and vCPU 1 awake.
fn programmed_gic() -> Arc<Gic> {
    let gic = Arc::new(Gic::new(2).unwrap());
    let sgi = |vcpu: u64| GICR_BASE + vcpu * 0x2_0000 + GICR_SGI_OFFSET;
    assert!(gic.mmio_write(GICD_BASE, 4, 0b10)); // EnableGrp1
    assert!(gic.mmio_write(GICD_BASE + 0x84, 4, 0b11)); // IGROUPR1: SPIs 32, 33
    assert!(gic.mmio_write(GICD_BASE + 0x104, 4, 0b11)); // ISENABLER1
    assert!(gic.mmio_write(GICD_BASE + 0x400 + 33, 1, 0x40)); // IPRIORITYR
    assert!(gic.mmio_write(GICD_BASE + 0xC08, 4, 0b10)); // ICFGR2: SPI 32 edge
    assert!(gic.mmio_write(GICD_BASE + 0x6000 + 8 * 33, 8, 1)); // SPI 33 to vCPU 1
    assert!(gic.mmio_write(GICD_BASE + 0x304, 4, 0b1)); // ISACTIVER1: SPI 32
    assert!(gic.mmio_write(sgi(1) + 0x80, 4, 1 << 27)); // IGROUPR0: PPI 27
    assert!(gic.mmio_write(sgi(1) + 0x100, 4, 1 << 27)); // ISENABLER0
    assert!(gic.mmio_write(sgi(1) + 0x400 + 27, 1, 0x20));
    assert!(gic.mmio_write(GICR_BASE + 0x2_0000 + 0x14, 4, 0)); // GICR_WAKER: awake
    gic.set_ppi_level(1, 27, true).unwrap();
    gic
}

fn cpu_interface(gic: &Arc<Gic>, vcpu: usize) -> GicCpuInterface {
    let mut icc = GicCpuInterface::new(Arc::clone(gic), vcpu).unwrap();
    assert!(icc.write(IccReg::Pmr, 0xF0));
    assert!(icc.write(IccReg::Igrpen1, 1));
    icc
}

#[test]
fn gic_state_restored_signals_and_acknowledges_as_the_original() {
    let gic = programmed_gic();
    let saved = gic.save_state();
    assert_eq!(saved.redistributors[1].sgi_ppi.level, 1 << 27);
    assert!(!saved.redistributors[1].processor_sleep);

    let fresh = Arc::new(Gic::new(2).unwrap());
    fresh.restore_state(&json_round_trip(&saved)).unwrap();
    assert_eq!(fresh.save_state(), saved);
    for addr in [
        GICD_BASE + 0xC08,
        GICD_BASE + 0x6000 + 8 * 33,
        GICD_BASE + 0x304,
        GICR_BASE + 0x2_0000 + 0x14,
    ] {
        assert_eq!(
            fresh.mmio_read(addr, 4),
            gic.mmio_read(addr, 4),
            "{addr:#x}"
        );
    }
    // The pending PPI is what vCPU 1's interface signals and acknowledges.
    let (mut a, mut b) = (cpu_interface(&gic, 1), cpu_interface(&fresh, 1));
    assert!(b.irq_line());
    assert_eq!(b.read(IccReg::Iar1), Some(27));
    assert_eq!(a.read(IccReg::Iar1), Some(27));
    assert_eq!(fresh.save_state(), gic.save_state());
}

#[test]
fn gic_state_of_another_vcpu_count_is_refused_and_changes_nothing() {
    let saved = programmed_gic().save_state();
    let three = Gic::new(3).unwrap();
    let before = three.save_state();
    assert_eq!(
        three.restore_state(&saved),
        Err(GicStateError::VcpuCount { saved: 2, here: 3 })
    );
    assert_eq!(three.save_state(), before);
    let text = three.restore_state(&saved).unwrap_err().to_string();
    assert!(text.contains("with 2 vCPUs"), "{text}");
}

#[test]
fn cpu_interface_state_keeps_mask_binary_point_and_running_priority() {
    let gic = programmed_gic();
    let mut icc = cpu_interface(&gic, 1);
    assert!(icc.write(IccReg::Bpr1, 5));
    assert!(icc.write(IccReg::Ctlr, 0b10)); // EOImode 1
    assert_eq!(icc.read(IccReg::Iar1), Some(27)); // running priority 0x20
    let saved = json_round_trip(&icc.save_state());
    assert_eq!(saved.active_priorities, 1 << (0x20 >> 3));

    let mut fresh = GicCpuInterface::new(Arc::clone(&gic), 1).unwrap();
    fresh.restore_state(&saved);
    for reg in [
        IccReg::Pmr,
        IccReg::Bpr1,
        IccReg::Ctlr,
        IccReg::Igrpen1,
        IccReg::Rpr,
    ] {
        assert_eq!(fresh.read(reg), icc.read(reg), "{reg:?}");
    }
    assert_eq!(fresh.read(IccReg::Rpr), Some(0x20));
}

/// An interrupt line that records its level.
#[derive(Default)]
struct Recorder(Arc<AtomicBool>);

impl IrqLine for Recorder {
    fn set_level(&self, high: bool) {
        self.0.store(high, Ordering::SeqCst);
    }
}

#[test]
fn uart_state_keeps_the_programmed_registers_and_the_pending_interrupt() {
    let uart = Pl011::new(Box::new(std::io::sink()), Box::new(Recorder::default()));
    for (off, v) in [
        (0x24, 13),
        (0x28, 1),
        (0x2C, 0x70),
        (0x30, 0x301),
        (0x38, 1 << 5),
    ] {
        assert!(uart.mmio_write(UART_BASE + off, 4, v));
    }
    assert!(uart.mmio_write(UART_BASE, 1, u64::from(b'x'))); // raises TXRIS
    let saved = json_round_trip(&uart.save_state());

    let line = Arc::new(AtomicBool::new(false));
    let fresh = Pl011::new(
        Box::new(std::io::sink()),
        Box::new(Recorder(Arc::clone(&line))),
    );
    fresh.restore_state(&saved);
    assert!(
        line.load(Ordering::SeqCst),
        "the pending TX interrupt drives the line"
    );
    for off in [0x24, 0x28, 0x2C, 0x30, 0x38, 0x3C, 0x40] {
        assert_eq!(
            fresh.mmio_read(UART_BASE + off, 4),
            uart.mmio_read(UART_BASE + off, 4),
            "{off:#x}"
        );
    }
    assert!(fresh.mmio_write(UART_BASE + 0x44, 4, 1 << 5)); // UARTICR
    assert!(!line.load(Ordering::SeqCst));
}

#[test]
fn psci_state_keeps_each_power_state_and_refuses_another_vcpu_count() {
    let ram = RAM_BASE..RAM_BASE + RAM;
    let psci = Psci::new(3, ram.clone());
    assert!(matches!(
        psci.call(0, PSCI_CPU_ON, [1, RAM_BASE, 0]),
        PsciOutcome::Act(_)
    ));
    let saved = json_round_trip(&psci.save_state());
    assert_eq!(
        saved.power,
        [PowerState::On, PowerState::OnPending, PowerState::Off]
    );
    let fresh = Psci::new(3, ram.clone());
    fresh.restore_state(&saved).unwrap();
    for i in 0..3 {
        assert_eq!(fresh.power_state(i), psci.power_state(i));
    }
    assert!(fresh.mark_on(1), "the restored CPU_ON can complete");
    assert_eq!(
        Psci::new(2, ram).restore_state(&saved),
        Err(PsciStateError::VcpuCount { saved: 3, here: 2 })
    );
}

/// A vCPU inside the APF event's handler, interrupted at PC 0x1234 with x0..x17
/// = 100 + n.
fn inside_sdei_handler() -> (SdeiVcpu, PlainRegs) {
    let mut sdei = SdeiVcpu::new();
    let mut regs = PlainRegs::default();
    let call = |sdei: &mut SdeiVcpu, regs: &mut PlainRegs, f, args: [u64; 4]| {
        for (n, a) in args.into_iter().enumerate() {
            regs.set_x(n + 1, a);
        }
        sdei.call(f, regs)
    };
    let ev = u64::from(SDEI_EVENT_ASYNC_PF);
    call(
        &mut sdei,
        &mut regs,
        SDEI_EVENT_REGISTER,
        [ev, 0x8000, 0x77, 0],
    );
    call(&mut sdei, &mut regs, SDEI_EVENT_ENABLE, [ev, 0, 0, 0]);
    call(&mut sdei, &mut regs, SDEI_PE_UNMASK, [0; 4]);
    sdei.inject(SDEI_EVENT_ASYNC_PF).unwrap();
    for n in 0..31 {
        regs.set_x(n, 100 + n as u64);
    }
    regs.set_pc(0x1234);
    regs.set_pstate(0); // EL0t
    assert_eq!(sdei.deliver(&mut regs), Some(SDEI_EVENT_ASYNC_PF));
    (sdei, regs)
}

#[test]
fn sdei_state_taken_inside_a_handler_completes_to_the_interrupted_context() {
    let (mut sdei, mut regs) = inside_sdei_handler();
    assert_eq!((regs.pc(), regs.x(1)), (0x8000, 0x77));
    let saved: SdeiVcpuState = json_round_trip(&sdei.save_state());
    assert!(saved.running.is_some());

    let mut fresh = SdeiVcpu::new();
    fresh.restore_state(&saved).unwrap();
    assert_eq!(fresh, sdei);
    let mut fresh_regs = regs.clone();
    for (s, r) in [(&mut sdei, &mut regs), (&mut fresh, &mut fresh_regs)] {
        assert!(matches!(
            s.call(SDEI_EVENT_COMPLETE, r),
            SdeiOutcome::Completed { .. }
        ));
        assert_eq!((r.pc(), r.x(17), r.el()), (0x1234, 117, 0));
    }
    assert_eq!(fresh_regs, regs);
    // Registered and enabled still: the next instance is deliverable.
    assert!(fresh.can_inject(SDEI_EVENT_ASYNC_PF));
}

#[test]
fn sdei_state_naming_an_unknown_event_is_refused() {
    let (sdei, _) = inside_sdei_handler();
    let mut bad = sdei.save_state();
    bad.events[0].event = 0x4040_1234;
    let mut fresh = SdeiVcpu::new();
    assert_eq!(
        fresh.restore_state(&bad),
        Err(SdeiStateError::UnknownEvent(0x4040_1234))
    );
    assert_eq!(fresh, SdeiVcpu::new());
    let mut twice = sdei.save_state();
    twice.events[0].event = twice.events[1].event;
    assert!(fresh.restore_state(&twice).is_err());
}

const BLOCK: u64 = 0x4000_1000;
const APF_PPI: u32 = 17;

/// An engine a guest enabled with the separate ready channel, its enable's
/// wake-all taken and acknowledged.
fn enabled_engine() -> (ApfEngine, FakeVcpu) {
    let mut engine = ApfEngine::new(0, true);
    let mut vcpu = FakeVcpu::new(0x10000);
    engine
        .configure(&mut vcpu, SDEI_EVENT_ASYNC_PF, APF_PPI)
        .unwrap();
    engine
        .guest_enable(&mut vcpu, BLOCK | CONTROL_ENABLED | CONTROL_SEPARATE_READY)
        .unwrap();
    assert_eq!(vcpu.guest_ppi_handler(BLOCK, true), Some(Token::WAKE_ALL));
    assert!(engine.irq_ack(&mut vcpu));
    (engine, vcpu)
}

#[test]
fn apf_state_keeps_the_configuration_drops_work_and_wakes_all() {
    let (mut engine, mut vcpu) = enabled_engine();
    // Work in flight at the save: a not-present queued, not yet delivered.
    assert!(matches!(
        engine.try_async(&mut vcpu, apf_abi::Gfn(0x40005)),
        FaultDecision::Async { .. }
    ));
    let saved = json_round_trip(&engine.save_state());
    assert_eq!(
        saved,
        ApfEngineState {
            sdei_event: SDEI_EVENT_ASYNC_PF,
            ppi: APF_PPI,
            enabled: true,
            block_gpa: BLOCK,
            send_always: false,
            separate_ready: true,
            ready_awaiting_ack: false,
        }
    );

    // The target: same memory (the guest's block as the source left it), the
    // undelivered not-present still queued in its restored SDEI state.
    let mut target = vcpu.clone();
    target.claimed.clear();
    target.ppi_levels = 0;
    let mut fresh = ApfEngine::new(0, true);
    fresh.restore_state(&mut target, &saved).unwrap();
    assert_eq!(
        fresh.save_state(),
        ApfEngineState {
            ready_awaiting_ack: true,
            ..saved
        },
        "the configuration, and the wake-all now awaits its ACK"
    );
    assert_eq!(target.claimed, [BLOCK], "the block is claimed again");
    assert!(!target.sdei.pending, "the source's not-present is dropped");
    assert_eq!(
        (
            target.peek(BLOCK + OFF_REASON),
            target.peek(BLOCK + OFF_TOKEN)
        ),
        (0, 0),
        "and its words with it, so the channel is free for the next"
    );
    assert_eq!(fresh.outstanding(), 0);
    assert!(target.ppi(APF_PPI), "page-ready raised");
    assert_eq!(target.peek(BLOCK + OFF_READY_REASON), REASON_PAGE_READY);
    assert_eq!(target.peek(BLOCK + OFF_READY_TOKEN), Token::WAKE_ALL.0);
    assert_eq!(target.guest_ppi_handler(BLOCK, true), Some(Token::WAKE_ALL));
    assert!(fresh.irq_ack(&mut target));
    assert!(!target.ppi(APF_PPI));

    // A host that does not offer APF: the guest that enabled it keeps its
    // channel (its sleepers get the wake-all, and it may ACK), but no fault is
    // taken asynchronously any more.
    let mut target = vcpu.clone();
    target.claimed.clear();
    target.ppi_levels = 0;
    let mut not_offered = ApfEngine::new(0, false);
    not_offered.restore_state(&mut target, &saved).unwrap();
    assert_eq!(target.peek(BLOCK + OFF_READY_TOKEN), Token::WAKE_ALL.0);
    assert!(target.ppi(APF_PPI), "the wake-all is raised");
    assert!(not_offered.irq_ack(&mut target), "and acknowledged");
    assert!(
        matches!(
            not_offered.try_async(&mut target, apf_abi::Gfn(0x40006)),
            FaultDecision::Sync(apf_host::apf::SyncReason::NotOffered)
        ),
        "faults are synchronous"
    );
    let mut not_offered = ApfEngine::new(0, false);
    assert!(
        not_offered
            .restore_state(&mut target, &ApfEngineState::default())
            .is_ok(),
        "an unconfigured state restores anywhere"
    );
    let mut misaligned = saved;
    misaligned.block_gpa += 4;
    let mut other = ApfEngine::new(0, true);
    assert!(other.restore_state(&mut target, &misaligned).is_err());
    assert!(!other.control().enabled);
}

/// A fault on `gfn` taken asynchronously, its not-present taken by the guest,
/// its fetch completed and serviced: returns its token (its page-ready sent if
/// the channel was free).
fn fault_fetched(engine: &mut ApfEngine, vcpu: &mut FakeVcpu, gfn: u64) -> Token {
    let FaultDecision::Async { token, cookie } = engine.try_async(vcpu, apf_abi::Gfn(gfn)) else {
        panic!("the fault on {gfn:#x} is taken asynchronously");
    };
    assert!(vcpu.enter_guest(engine));
    assert_eq!(vcpu.guest_sdei_handler(BLOCK), Some(token));
    assert!(
        engine
            .port()
            .complete(ItemHandle::from_cookie(cookie).unwrap(), true)
    );
    engine.service(vcpu);
    token
}

/// The source's vCPU with a page-ready for a fetched page raised, and the
/// guest's handler stopped by the save at `stage` of taking it.
fn saved_in_page_ready_handler(stage: HandlerStage) -> (FakeVcpu, ApfEngineState, Token) {
    let (mut engine, mut vcpu) = enabled_engine();
    let token = fault_fetched(&mut engine, &mut vcpu, 0x40005);
    assert!(vcpu.ppi(APF_PPI));
    if stage == HandlerStage::Cleared {
        assert_eq!(vcpu.guest_ppi_handler(BLOCK, true), Some(token));
    }
    let saved = json_round_trip(&engine.save_state());
    assert!(saved.ready_awaiting_ack);
    // The target: the guest's memory, and its line as the GIC's state keeps it.
    vcpu.claimed.clear();
    (vcpu, saved, token)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandlerStage {
    /// It has read the page-ready's words, not cleared them.
    Read,
    /// It has cleared them and not called IRQ_ACK yet.
    Cleared,
}

/// A save while the guest's page-ready handler runs. The restored engine must
/// leave that page-ready as it is, awaiting the guest's ACK, and send its
/// wake-all after it: written over the words the guest is taking, the
/// wake-all would be wiped by the guest's clear or lowered by its ACK, the
/// guest would never take it, and every later page-ready on the vCPU would
/// wait behind it in the channel (the shape of two hangs, a restored and a
/// migrated guest's).
#[test]
fn a_page_ready_the_guest_is_taking_at_the_save_is_acknowledged_before_the_wake_all() {
    for stage in [HandlerStage::Read, HandlerStage::Cleared] {
        let (mut target, saved, token) = saved_in_page_ready_handler(stage);
        let mut fresh = ApfEngine::new(0, true);
        fresh.restore_state(&mut target, &saved).unwrap();
        let ready = (
            target.peek(BLOCK + OFF_READY_REASON),
            target.peek(BLOCK + OFF_READY_TOKEN),
        );
        match stage {
            HandlerStage::Read => assert_eq!(ready, (REASON_PAGE_READY, token.0), "kept"),
            HandlerStage::Cleared => assert_eq!(ready, (0, 0), "no wake-all before the ACK"),
        }
        assert!(target.ppi(APF_PPI), "{stage:?}: awaiting the ACK");
        // The handler goes on where the save stopped it: it clears the words
        // it read, and ACKs.
        if stage == HandlerStage::Read {
            assert_eq!(target.guest_ppi_handler(BLOCK, true), Some(token));
        }
        assert!(fresh.irq_ack(&mut target), "{stage:?}");
        assert!(target.ppi(APF_PPI), "{stage:?}: the wake-all is raised");
        assert_eq!(
            target.guest_ppi_handler(BLOCK, true),
            Some(Token::WAKE_ALL),
            "{stage:?}"
        );
        assert!(fresh.irq_ack(&mut target));
        assert!(!target.ppi(APF_PPI));
        // And page-readies flow again.
        let token = fault_fetched(&mut fresh, &mut target, 0x40006);
        assert_eq!(
            target.guest_ppi_handler(BLOCK, true),
            Some(token),
            "{stage:?}"
        );
    }
}

fn machine(vcpus: usize) -> Machine {
    let gic = Arc::new(Gic::new(vcpus).unwrap());
    let line = SpiLine::new(Arc::clone(&gic), UART_INTID).unwrap();
    let uart = Pl011::new(Box::new(std::io::sink()), Box::new(line));
    Machine::new(gic, uart, RAM_BASE..RAM_BASE + RAM)
}

#[test]
fn machine_state_keeps_gic_uart_psci_and_a_pending_cpu_on() {
    let m = machine(2);
    assert!(m.mmio_write(UART_BASE + 0x38, 4, 1 << 5));
    assert!(m.mmio_write(UART_BASE, 1, u64::from(b'!')));
    assert!(m.mmio_write(GICD_BASE + 0x104, 4, 1 << 1)); // enable SPI 33 (the UART)
    assert!(matches!(
        m.psci.call(0, PSCI_CPU_ON, [1, RAM_BASE, 5]),
        PsciOutcome::Act(_)
    ));
    let request = StartRequest {
        entry: RAM_BASE,
        context: 5,
        counter: 99,
    };
    m.request_start(1, request);
    let saved: MachineState = json_round_trip(&m.save_state());
    assert_eq!(saved.gic.spis.level, 1 << 1, "the UART's line is high");

    let fresh = machine(2);
    fresh.restore_state(&saved).unwrap();
    assert_eq!(fresh.save_state(), saved);
    assert_eq!(fresh.take_start(1), Some(request));
    assert_eq!(fresh.psci.power_state(1), Some(PowerState::OnPending));

    let three = machine(3);
    let err = three.restore_state(&saved).unwrap_err();
    assert_eq!(err, MachineStateError::VcpuCount { saved: 2, here: 3 });
    assert_eq!(three.psci.power_state(1), Some(PowerState::Off));
    let _: GicState = saved.gic;
}
