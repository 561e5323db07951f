//! A vCPU thread stopped mid-run, its state and the machine's saved, and a
//! second machine restored from them runs on to the same end as a run that was
//! never interrupted: registers, memory, the timer and the GIC's pending
//! interrupt survive, SDEI stays registered, and APF comes back enabled with a
//! wake-all.

use apf_abi::platform::{RAM_BASE, UART_INTID};
use apf_abi::ppi::{APF_DEFAULT_PPI, PPI_TIMER_VIRT};
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_abi::shared::{OFF_READY_REASON, OFF_READY_TOKEN, REASON_PAGE_READY};
use apf_abi::{Gpa, Token};
use apf_cpu::CpuConfig;
use apf_host::apf::ApfEngineState;
use apf_host::gic::{Gic, Kick, SpiLine};
use apf_host::machine::{Machine, StartRequest, StopReason};
use apf_host::uart::Pl011;
use apf_host::vcpu::{self, VcpuSpec, VcpuState, VcpuTotals};
use apf_mem::store::MemStore;
use apf_mem::{GuestMemory, MemConfig};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const RAM: u64 = 1 << 20;
const VECTORS: u64 = RAM_BASE + 0x800;
const BLOCK: u64 = RAM_BASE + 0x3000;
const DATA: u64 = RAM_BASE + 0x4000;
/// The guest waits here for the test's go.
const GO: u64 = DATA;
/// The guest writes 1 here when it waits.
const WAITING: u64 = DATA + 8;
/// Where the guest keeps its results (the loop's value, the IAR it read, ...).
const RESULTS: std::ops::Range<u64> = DATA + 0x10..DATA + 0x28;

/// At EL1 with the MMU off: registers the APF SDEI event (x20 = its status),
/// enables and unmasks it, enables APF with the block at BLOCK and a separate
/// page-ready channel (x21 = status), acknowledges the enable's wake-all and
/// empties the block; enables group 1, PPI 27 (the virtual timer) and the CPU
/// interface; arms the virtual timer 100 ticks ahead with IRQs masked; runs a
/// 1000-round loop into x22 (stored at DATA + 0x10); writes 1 to WAITING and
/// spins until GO is non-zero; then unmasks IRQs. The timer's IRQ handler
/// stores the IAR (x24) at DATA + 0x20, masks the timer and EOIs; the main line
/// stores x24 + 1 at DATA + 0x18 and calls PSCI SYSTEM_OFF.
const MAIN: [u32; 69] = [
    0xd2a8_0009, // 0: mov x9, #0x40000000
    0x9120_012a, // 4: add x10, x9, #0x800
    0xd518_c00a, // 8: msr vbar_el1, x10
    0xd280_0420, // c: mov x0, #0x21
    0xf2b8_8000, // 10: movk x0, #0xc400, lsl
    0xd280_0021, // 14: mov x1, #0x1
    0xf2a8_0801, // 18: movk x1, #0x4040, lsl
    0x9130_0122, // 1c: add x2, x9, #0xc00
    0xd280_0aa3, // 20: mov x3, #0x55
    0xd280_0004, // 24: mov x4, #0x0
    0xd400_0002, // 28: hvc #0x0
    0xaa00_03f4, // 2c: mov x20, x0
    0xd280_0440, // 30: mov x0, #0x22
    0xf2b8_8000, // 34: movk x0, #0xc400, lsl
    0xd280_0021, // 38: mov x1, #0x1
    0xf2a8_0801, // 3c: movk x1, #0x4040, lsl
    0xd400_0002, // 40: hvc #0x0
    0xd280_0580, // 44: mov x0, #0x2c
    0xf2b8_8000, // 48: movk x0, #0xc400, lsl
    0xd400_0002, // 4c: hvc #0x0
    0xd280_0600, // 50: mov x0, #0x30
    0xf2b0_c000, // 54: movk x0, #0x8600, lsl
    0xd280_0081, // 58: mov x1, #0x4
    0x9140_0d22, // 5c: add x2, x9, #0x3,
    0x9100_1442, // 60: add x2, x2, #0x5
    0xd280_0003, // 64: mov x3, #0x0
    0xd400_0002, // 68: hvc #0x0
    0xaa00_03f5, // 6c: mov x21, x0
    0xd280_0600, // 70: mov x0, #0x30
    0xf2b0_c000, // 74: movk x0, #0x8600, lsl
    0xd280_00a1, // 78: mov x1, #0x5
    0xd400_0002, // 7c: hvc #0x0
    0x9140_0d2b, // 80: add x11, x9, #0x3,
    0xa900_7d7f, // 84: stp xzr, xzr, [x11]
    0xd2a1_000b, // 88: mov x11, #0x8000000
    0x5280_004c, // 8c: mov w12, #0x2
    0xb900_016c, // 90: str w12, [x11]
    0xd2a1_016b, // 94: mov x11, #0x80b0000
    0x52a1_000c, // 98: mov w12, #0x8000000
    0xb900_816c, // 9c: str w12, [x11, #128]
    0xb901_016c, // a0: str w12, [x11, #256]
    0xd280_1e0c, // a4: mov x12, #0xf0
    0xd518_460c, // a8: msr icc_pmr_el1, x12
    0xd280_002c, // ac: mov x12, #0x1
    0xd518_ccec, // b0: msr icc_igrpen1_el1, x12
    0xd280_0c8c, // b4: mov x12, #0x64
    0xd51b_e30c, // b8: msr cntv_tval_el0, x12
    0xd280_002c, // bc: mov x12, #0x1
    0xd51b_e32c, // c0: msr cntv_ctl_el0, x12
    0xd280_00f6, // c4: mov x22, #0x7
    0xd280_000d, // c8: mov x13, #0x0
    0x8b16_0ad6, // cc: add x22, x22, x22,
    0x8b0d_02d6, // d0: add x22, x22, x13
    0x9100_05ad, // d4: add x13, x13, #0x1
    0xf10f_a1bf, // d8: cmp x13, #0x3e8
    0x54ff_ff81, // dc: b.ne cc <loop>
    0x9140_112e, // e0: add x14, x9, #0x4,
    0xf900_09d6, // e4: str x22, [x14, #16]
    0xd280_002c, // e8: mov x12, #0x1
    0xf900_05cc, // ec: str x12, [x14, #8]
    0xf940_01cc, // f0: ldr x12, [x14]
    0xb4ff_ffec, // f4: cbz x12, f0 <wait>
    0xd503_42ff, // f8: msr daifclr, #0x2
    0x9100_0717, // fc: add x23, x24, #0x1
    0xf900_0dd7, // 100: str x23, [x14, #24]
    0xd280_0100, // 104: mov x0, #0x8
    0xf2b0_8000, // 108: movk x0, #0x8400, lsl
    0xd400_0002, // 10c: hvc #0x0
    0x1400_0000, // 110: b 110 <wait+0x20>
];

/// The IRQ vector (current EL, SP_ELx) at VECTORS + 0x280.
const IRQ_HANDLER: [u32; 6] = [
    0xd538_cc18, // a80: mrs x24, icc_iar1_el1
    0xf920_1138, // a84: str x24, [x9, #16416]
    0xd280_0059, // a88: mov x25, #0x2
    0xd51b_e339, // a8c: msr cntv_ctl_el0, x25
    0xd518_cc38, // a90: msr icc_eoir1_el1, x24
    0xd69f_03e0, // a94: eret
];

/// How long any wait for the guest may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

struct Rig {
    machine: Arc<Machine>,
    memory: Arc<GuestMemory>,
    handle: std::thread::JoinHandle<VcpuTotals>,
}

fn words_to_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn new_machine() -> (Arc<Machine>, Arc<GuestMemory>) {
    let gic = Arc::new(Gic::new(1).unwrap());
    let line = SpiLine::new(Arc::clone(&gic), UART_INTID).unwrap();
    let uart = Pl011::new(Box::new(std::io::sink()), Box::new(line));
    let machine = Arc::new(Machine::new(gic, uart, RAM_BASE..RAM_BASE + RAM));
    let pages = u32::try_from(RAM / 4096).unwrap();
    let memory = GuestMemory::new(
        MemConfig::new(RAM_BASE, RAM, RAM),
        Box::new(MemStore::new(pages, 4)),
    )
    .unwrap();
    (machine, memory)
}

/// Starts vCPU 0 of a new machine: from the program at RAM_BASE, or from
/// `resume` over `image` after `restore` set up the machine.
fn start(resume: Option<(VcpuState, &[u8])>, restore: impl FnOnce(&Machine, &GuestMemory)) -> Rig {
    let (machine, memory) = new_machine();
    match resume {
        None => {
            memory
                .write_bytes(Gpa(RAM_BASE), &words_to_bytes(&MAIN))
                .unwrap();
            memory
                .write_bytes(Gpa(VECTORS + 0x280), &words_to_bytes(&IRQ_HANDLER))
                .unwrap();
        }
        Some((_, image)) => memory.write_bytes(Gpa(RAM_BASE), image).unwrap(),
    }
    restore(&machine, &memory);
    let spec = VcpuSpec {
        index: 0,
        cpu: CpuConfig::default(),
        apf_offered: true,
        apf_sdei_event: SDEI_EVENT_ASYNC_PF,
        apf_ppi: APF_DEFAULT_PPI,
        apf_separate_ready: true,
        boot: Some(StartRequest {
            entry: RAM_BASE,
            context: 0,
            counter: 0,
        }),
        resume: resume.map(|(state, _)| Box::new(state)),
        slice: 10_000,
        halt_poll: Duration::from_micros(50),
    };
    let barrier = Arc::new(Barrier::new(2));
    let thread = vcpu::spawn(
        spec,
        Arc::clone(&machine),
        Arc::clone(&barrier),
        Arc::clone(&memory),
    )
    .unwrap();
    machine.set_wakers(vec![Arc::clone(&thread.waker)]);
    let kick: Arc<dyn Kick> = thread.waker.clone();
    machine.gic.connect(0, kick).unwrap();
    barrier.wait();
    Rig {
        machine,
        memory,
        handle: thread.handle,
    }
}

fn read_u64(memory: &GuestMemory, gpa: u64) -> u64 {
    let mut b = [0u8; 8];
    memory.read_bytes(Gpa(gpa), &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn read_u32(memory: &GuestMemory, gpa: u64) -> u32 {
    let mut b = [0u8; 4];
    memory.read_bytes(Gpa(gpa), &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn bytes(memory: &GuestMemory, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut b = vec![0u8; usize::try_from(range.end - range.start).unwrap()];
    memory.read_bytes(Gpa(range.start), &mut b).unwrap();
    b
}

/// Waits (yielding, with a deadline) until the guest says it waits for GO.
fn until_waiting(rig: &Rig) {
    let begin = Instant::now();
    while read_u64(&rig.memory, WAITING) != 1 {
        assert!(
            begin.elapsed() < DEADLINE && !rig.handle.is_finished(),
            "the guest never reached its wait"
        );
        std::thread::yield_now();
    }
}

fn go(rig: &Rig) {
    rig.memory
        .write_bytes(Gpa(GO), &1u64.to_le_bytes())
        .unwrap();
}

/// Joins the vCPU once the guest powered the machine off.
fn until_system_off(rig: Rig) -> (VcpuTotals, Arc<Machine>, Arc<GuestMemory>) {
    let begin = Instant::now();
    while !rig.handle.is_finished() {
        assert!(begin.elapsed() < DEADLINE, "the guest never powered off");
        std::thread::yield_now();
    }
    assert_eq!(rig.machine.stop_reason(), Some(StopReason::SystemOff));
    (rig.handle.join().unwrap(), rig.machine, rig.memory)
}

#[test]
fn a_vcpu_resumed_on_a_second_machine_ends_like_an_uninterrupted_run() {
    // The reference: never stopped.
    let reference = start(None, |_, _| {});
    until_waiting(&reference);
    go(&reference);
    let (uninterrupted, _, ref_memory) = until_system_off(reference);

    // Stopped while the guest waits, with the timer's IRQ pending and masked.
    let first = start(None, |_, _| {});
    until_waiting(&first);
    first.machine.stop(StopReason::Host);
    let totals = first.handle.join().unwrap();
    let saved = *totals.state;
    let machine_state = first.machine.save_state();
    let image = bytes(&first.memory, RAM_BASE..RAM_BASE + RAM);
    assert_eq!(saved.cpu.x[20], 0, "SDEI REGISTER succeeded");
    assert_eq!(saved.cpu.x[21], 0, "APF ENABLE succeeded");
    assert_ne!(saved.cpu.timer.virt_ctl & 1, 0, "the timer is armed");
    assert_ne!(
        machine_state.gic.redistributors[0].sgi_ppi.level & (1 << PPI_TIMER_VIRT),
        0,
        "the timer's PPI is pending in the GIC"
    );
    assert!(saved.apf.enabled);
    let apf_event = saved
        .sdei
        .events
        .iter()
        .find(|e| e.event == SDEI_EVENT_ASYNC_PF);
    assert!(apf_event.is_some_and(|e| e.registered && e.enabled) && !saved.sdei.masked);
    let saved_json: VcpuState =
        serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
    assert_eq!(saved_json, saved);

    // A second machine restored from the saved state and image.
    let second = start(Some((saved, &image)), |machine, _| {
        machine.restore_state(&machine_state).unwrap();
    });
    assert_eq!(
        second.machine.shared_block_holder(Gpa(BLOCK)),
        Some(0),
        "the restored engine claimed its block"
    );
    go(&second);
    let (resumed, _, memory) = until_system_off(second);

    let (a, b) = (&resumed.state, &uninterrupted.state);
    assert_eq!(a.cpu.x, b.cpu.x);
    assert_eq!((a.cpu.pc, a.cpu.pstate), (b.cpu.pc, b.cpu.pstate));
    assert_eq!((&a.icc, &a.sdei), (&b.icc, &b.sdei));
    // APF's configuration too; but the resumed vCPU has the restore's wake-all
    // raised and unacknowledged (below).
    assert_eq!(
        a.apf,
        ApfEngineState {
            ready_awaiting_ack: true,
            ..b.apf
        }
    );
    assert_eq!(bytes(&memory, RESULTS), bytes(&ref_memory, RESULTS));
    assert_eq!(
        read_u64(&memory, DATA + 0x20),
        u64::from(PPI_TIMER_VIRT),
        "the IRQ taken was the timer's"
    );
    // The restore re-enabled APF, which sent a wake-all (the guest, with the
    // PPI disabled, leaves it unread); the reference's block stayed empty.
    assert_eq!(
        read_u32(&memory, BLOCK + OFF_READY_REASON),
        REASON_PAGE_READY
    );
    assert_eq!(
        read_u32(&memory, BLOCK + OFF_READY_TOKEN),
        Token::WAKE_ALL.0
    );
    assert_eq!(read_u32(&ref_memory, BLOCK + OFF_READY_TOKEN), 0);
}
