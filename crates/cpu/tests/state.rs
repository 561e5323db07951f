//! Saving and restoring a vCPU's state: a run interrupted by a save and
//! continued on a fresh vCPU ends where the uninterrupted run ends; the state
//! survives serde; a state the vCPU cannot be in is refused.

use std::num::NonZeroU32;

use apf_cpu::{Cpu, CpuConfig, CpuState, CpuStateError, Exit, RamBus, SysReg, TimeScale};

const RAM: u64 = 0x4000_0000;
const RAM_LEN: usize = 0x10000;
const CODE: u64 = RAM;
const DATA: u64 = RAM + 0xC000;
/// The loop runs this many times and stores one doubleword each time.
const ROUNDS: usize = 120;

/// A loop that mixes X0, stores it, takes an SVC (whose handler at VBAR +
/// 0x200 counts in X5 and returns), arms the virtual timer on the way in and
/// switches to SP_EL0 at the end, then HVC #0:
///
/// ```text
///   mov x0, #7 ; mov x1, #120 ; mov x2, #DATA ; msr tpidr_el1, x1
///   mrs x3, cntvct_el0 ; add x3, x3, #150 ; msr cntv_cval_el0, x3
///   mov x4, #1 ; msr cntv_ctl_el0, x4
/// loop:
///   add x0, x0, x1 ; eor x0, x0, x0, lsl #3 ; str x0, [x2], #8 ; svc #1
///   subs x1, x1, #1 ; b.ne loop
///   mrs x6, cntvct_el0 ; msr spsel, #0 ; mov sp, x2 ; hvc #0
/// .org 0x200
///   add x5, x5, #1 ; mrs x7, elr_el1 ; eret
/// ```
fn program() -> Vec<u32> {
    let mut words = vec![
        0xd280_00e0,
        0xd280_0f01,
        0xd298_0002,
        0xf2a8_0002,
        0xd518_d081,
        0xd53b_e043,
        0x9102_5863,
        0xd51b_e343,
        0xd280_0024,
        0xd51b_e324,
        0x8b01_0000,
        0xca00_0c00,
        0xf800_8440,
        0xd400_0021,
        0xf100_0421,
        0x54ff_ff61,
        0xd53b_e046,
        0xd500_40bf,
        0x9100_005f,
        0xd400_0002,
    ];
    words.resize(0x200 / 4, 0);
    words.extend([0x9100_04a5, 0xd538_4027, 0xd69f_03e0]);
    words
}

fn machine() -> (Cpu, RamBus) {
    let mut bus = RamBus::with_region(RAM, RAM_LEN);
    assert!(bus.load_words(CODE, &program()));
    let mut cpu = Cpu::new(CpuConfig::default());
    cpu.set_pc(CODE);
    cpu.set_sysreg(SysReg::VbarEl1, CODE);
    cpu.set_sysreg(SysReg::SpEl1, RAM + 0x8000);
    (cpu, bus)
}

/// Runs `steps` single steps (or to the HVC), feeding the virtual timer's
/// level to the IRQ line as the host does. IRQs stay masked, so the line is
/// state the save must carry. Returns whether the HVC was reached.
fn step(cpu: &mut Cpu, bus: &mut RamBus, steps: usize) -> bool {
    for _ in 0..steps {
        match cpu.run(bus, 1) {
            Exit::Hvc { imm: 0 } => return true,
            Exit::TimerDeadline | Exit::Budget => cpu.set_irq_line(cpu.timer_irq_lines().virt),
            other => panic!("unexpected exit {other:?} at {:#x}", cpu.pc()),
        }
    }
    false
}

fn run_to_end(cpu: &mut Cpu, bus: &mut RamBus) {
    assert!(step(cpu, bus, 10_000), "the program did not reach its HVC");
}

fn data(bus: &RamBus) -> Vec<u8> {
    bus.slice(DATA, ROUNDS * 8).unwrap().to_vec()
}

#[test]
fn a_run_continued_from_a_saved_state_ends_like_the_uninterrupted_run() {
    let (mut original, mut bus) = machine();
    assert!(!step(&mut original, &mut bus, 500), "saved mid-way");
    let saved = original.save_state();
    assert!(saved.timer.virt_ctl & 1 == 1, "the timer is armed");
    assert!(saved.x[5] > 10, "inside the loop, after some SVCs");

    // A fresh vCPU on a copy of memory, with its decode cache cold.
    let (mut resumed, mut bus2) = machine();
    assert!(bus2.load(DATA, &data(&bus)));
    resumed.restore_state(&saved).unwrap();
    assert_eq!(
        resumed.save_state(),
        saved,
        "restore installs what was saved"
    );

    run_to_end(&mut original, &mut bus);
    run_to_end(&mut resumed, &mut bus2);
    let end = original.save_state();
    assert_eq!(resumed.save_state(), end);
    assert_eq!(data(&bus2), data(&bus));
    // The run really went through the timer, the SVCs and the SP switch.
    assert!(end.irq_line, "the virtual timer fired and its line is high");
    assert_eq!(end.x[5], ROUNDS as u64);
    assert!(!end.pstate.spsel);
    assert_eq!(end.sp_el0, DATA + 8 * ROUNDS as u64);
    assert_eq!(end.sys.tpidr_el1, ROUNDS as u64);
}

#[test]
fn state_survives_json() {
    let (mut cpu, mut bus) = machine();
    step(&mut cpu, &mut bus, 321);
    let state = cpu.save_state();
    let text = serde_json::to_string(&state).unwrap();
    let back: CpuState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, state);
}

#[test]
fn the_counter_survives_a_different_time_scale() {
    let (mut cpu, mut bus) = machine();
    step(&mut cpu, &mut bus, 200);
    cpu.advance_counter(1000);
    let state = cpu.save_state();
    let slow = TimeScale {
        ticks: NonZeroU32::MIN,
        instructions: NonZeroU32::new(4).unwrap(),
    };
    let mut other = Cpu::new(CpuConfig {
        mpidr: 3,
        time_scale: slow,
        ..CpuConfig::default()
    });
    other.restore_state(&state).unwrap();
    assert_eq!(other.counter(), cpu.counter());
    assert_eq!(other.timer_irq_lines(), cpu.timer_irq_lines());
    assert_eq!(other.sysreg(SysReg::MpidrEl1), 3 | (1 << 31), "config kept");
}

#[test]
fn a_state_the_vcpu_cannot_be_in_is_refused_and_changes_nothing() {
    let (mut cpu, mut bus) = machine();
    step(&mut cpu, &mut bus, 50);
    let before = cpu.save_state();
    let mut bad = before.clone();
    bad.x[0] ^= 1;
    bad.pstate.el = 2;
    assert_eq!(
        cpu.restore_state(&bad),
        Err(CpuStateError::Mode {
            el: 2,
            spsel: before.pstate.spsel
        })
    );
    bad.pstate.el = 0;
    bad.pstate.spsel = true;
    assert!(matches!(
        cpu.restore_state(&bad),
        Err(CpuStateError::Mode { el: 0, spsel: true })
    ));
    bad.pstate = before.pstate;
    bad.pstate.daif = 0x10;
    let err = cpu.restore_state(&bad).unwrap_err();
    assert!(err.to_string().contains("DAIF 0x10"), "{err}");
    assert_eq!(cpu.save_state(), before);
}
