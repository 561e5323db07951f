//! The exception model: entry and return from each EL and SP selection, vector
//! offsets, the ESR of each exception class, SP banking, interrupts, the timer,
//! exclusives, the decode cache, and the stage-2 abort syndrome of each
//! load/store class (ESR values as in research/aarch64-notes.md).

use apf_cpu::{
    AccessSize, AtomicOp, Bus, BusError, Cpu, CpuConfig, Esr, Exception, Exit, RamBus, SysReg,
    SysRegId,
};

const RAM: u64 = 0x4000_0000;
const RAM_LEN: usize = 0x10000;
const CODE: u64 = RAM;
const VBAR: u64 = RAM + 0x8000;
const DATA: u64 = RAM + 0xC000;

/// A vCPU at EL1h on `words` at CODE, with VBAR set.
fn machine(words: &[u32]) -> (Cpu, RamBus) {
    let mut bus = RamBus::with_region(RAM, RAM_LEN);
    assert!(bus.load_words(CODE, words));
    let mut cpu = Cpu::new(CpuConfig::default());
    cpu.set_pc(CODE);
    cpu.set_sysreg(SysReg::VbarEl1, VBAR);
    (cpu, bus)
}

/// PSTATE values in SPSR format.
const EL0T: u64 = 0b0000;
const EL1T: u64 = 0b0100;
const EL1H: u64 = 0b0101;
const DAIF: u64 = 0xF << 6;

fn esr(cpu: &Cpu) -> u64 {
    cpu.sysreg(SysReg::EsrEl1)
}

#[test]
fn reset_state_is_el1h_masked() {
    let cpu = Cpu::new(CpuConfig::default());
    assert_eq!(cpu.el(), 1);
    assert_eq!(cpu.pstate(), EL1H | DAIF);
    assert_eq!(cpu.sysreg(SysReg::SctlrEl1) & 1, 0, "MMU off");
    assert_eq!(cpu.sysreg(SysReg::MpidrEl1), 1 << 31);
}

#[test]
fn vector_offsets_by_source_and_kind() {
    let kinds = [
        (
            Exception::Synchronous {
                esr: Esr::undefined(),
                far: None,
            },
            0x000,
        ),
        (Exception::Irq, 0x080),
        (Exception::Fiq, 0x100),
        (
            Exception::SError {
                esr: Esr(0xBE00_0000),
            },
            0x180,
        ),
    ];
    for (mode, base) in [(EL1T, 0x000), (EL1H, 0x200), (EL0T, 0x400)] {
        for (e, offset) in kinds {
            let mut cpu = Cpu::new(CpuConfig::default());
            cpu.set_sysreg(SysReg::VbarEl1, VBAR);
            let before = mode | (0b1001 << 28) | (1 << 6);
            cpu.set_pstate(before);
            cpu.set_pc(0x1234_5678);
            cpu.take_exception(e);
            assert_eq!(cpu.pc(), VBAR + base + offset, "mode {mode:#b} {e:?}");
            assert_eq!(cpu.sysreg(SysReg::ElrEl1), 0x1234_5678);
            assert_eq!(cpu.sysreg(SysReg::SpsrEl1), before);
            // EL1h, DAIF all masked, NZCV kept.
            assert_eq!(cpu.pstate(), EL1H | DAIF | (0b1001 << 28));
        }
    }
}

#[test]
fn vbar_low_bits_are_res0() {
    let mut cpu = Cpu::new(CpuConfig::default());
    cpu.set_sysreg(SysReg::VbarEl1, VBAR | 0x7FF);
    assert_eq!(cpu.sysreg(SysReg::VbarEl1), VBAR);
}

#[test]
fn sp_banking_across_exception_entry_and_return() {
    let mut cpu = Cpu::new(CpuConfig::default());
    cpu.set_sysreg(SysReg::VbarEl1, VBAR);
    cpu.set_sysreg(SysReg::SpEl1, 0x1000);
    cpu.set_sysreg(SysReg::SpEl0, 0x2000);
    assert_eq!(cpu.sp(), 0x1000, "EL1h uses SP_EL1");
    cpu.set_pstate(EL1T);
    assert_eq!(cpu.sp(), 0x2000, "EL1t uses SP_EL0");
    cpu.set_pstate(EL0T);
    assert_eq!(cpu.sp(), 0x2000);
    cpu.set_sp(0x2100);
    cpu.take_exception(Exception::Irq);
    assert_eq!(cpu.sp(), 0x1000);
    assert_eq!(
        cpu.sysreg(SysReg::SpEl0),
        0x2100,
        "EL0's SP saved in SP_EL0"
    );
    cpu.set_sp(0x1100);
    // ERET back to EL0t.
    let (mut cpu2, mut bus) = machine(&[0xD69F_03E0]); // eret
    cpu2.set_sysreg(SysReg::SpEl1, 0x1100);
    cpu2.set_sysreg(SysReg::SpEl0, 0x2100);
    cpu2.set_sysreg(SysReg::SpsrEl1, EL0T);
    cpu2.set_sysreg(SysReg::ElrEl1, 0x40_0000);
    cpu2.run(&mut bus, 1);
    assert_eq!((cpu2.el(), cpu2.pc(), cpu2.sp()), (0, 0x40_0000, 0x2100));
    assert_eq!(cpu2.sysreg(SysReg::SpEl1), 0x1100);
}

#[test]
fn msr_spsel_switches_stack_pointer() {
    // msr spsel, #0 ; msr spsel, #1
    let (mut cpu, mut bus) = machine(&[0xD500_40BF, 0xD500_41BF]);
    cpu.set_sysreg(SysReg::SpEl1, 0x1000);
    cpu.set_sysreg(SysReg::SpEl0, 0x2000);
    cpu.run(&mut bus, 1);
    assert_eq!((cpu.pstate() & 0xF, cpu.sp()), (EL1T, 0x2000));
    cpu.run(&mut bus, 1);
    assert_eq!((cpu.pstate() & 0xF, cpu.sp()), (EL1H, 0x1000));
}

#[test]
fn eret_to_each_mode_and_illegal_return() {
    for (mode, el) in [(EL0T, 0), (EL1T, 1), (EL1H, 1)] {
        let (mut cpu, mut bus) = machine(&[0xD69F_03E0]);
        let spsr = mode | (0b0110 << 28) | (1 << 7);
        cpu.set_sysreg(SysReg::SpsrEl1, spsr);
        cpu.set_sysreg(SysReg::ElrEl1, CODE + 0x100);
        cpu.run(&mut bus, 1);
        assert_eq!(cpu.el(), el);
        assert_eq!(cpu.pstate(), spsr);
        assert_eq!(cpu.pc(), CODE + 0x100);
    }
    // Return to EL2h: illegal. EL stays 1, PSTATE.IL is set, PC = ELR, and the
    // next step takes an Illegal Execution State exception there.
    let (mut cpu, mut bus) = machine(&[0xD69F_03E0]);
    cpu.set_sysreg(SysReg::SpsrEl1, 0b1001);
    cpu.set_sysreg(SysReg::ElrEl1, CODE + 0x100);
    cpu.run(&mut bus, 1);
    assert_eq!(cpu.el(), 1);
    assert_ne!(cpu.pstate() & (1 << 20), 0, "PSTATE.IL");
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x3A00_0000);
    assert_eq!(cpu.sysreg(SysReg::ElrEl1), CODE + 0x100);
    assert_eq!(cpu.pc(), VBAR + 0x200);
    assert_eq!(cpu.pstate() & (1 << 20), 0, "entry clears IL");
}

#[test]
fn eret_at_el0_is_undefined() {
    let (mut cpu, mut bus) = machine(&[0xD69F_03E0]);
    cpu.set_pstate(EL0T);
    cpu.run(&mut bus, 1);
    assert_eq!((esr(&cpu), cpu.pc()), (0x0200_0000, VBAR + 0x400));
}

/// Runs one word and returns (ESR_EL1, ELR_EL1, PC) after the exception it takes.
fn trap(word: u32, mode: u64) -> (u64, u64, u64) {
    let (mut cpu, mut bus) = machine(&[word]);
    cpu.set_pstate(mode);
    let exit = cpu.run(&mut bus, 1);
    assert_eq!(exit, Exit::Budget, "{word:#x}");
    assert_eq!(cpu.el(), 1, "{word:#x} took no exception");
    (esr(&cpu), cpu.sysreg(SysReg::ElrEl1), cpu.pc())
}

#[test]
fn syndromes_of_each_exception_class() {
    // SVC: EC 0x15, preferred return = next instruction.
    assert_eq!(
        trap(0xD400_0841, EL0T),
        (0x5600_0042, CODE + 4, VBAR + 0x400)
    );
    assert_eq!(
        trap(0xD400_0841, EL1H),
        (0x5600_0042, CODE + 4, VBAR + 0x200)
    );
    // HVC and SMC at EL0: UNDEFINED, return = the instruction.
    assert_eq!(trap(0xD402_4682, EL0T), (0x0200_0000, CODE, VBAR + 0x400));
    assert_eq!(trap(0xD400_00E3, EL0T), (0x0200_0000, CODE, VBAR + 0x400));
    // BRK: EC 0x3C with the immediate.
    assert_eq!(trap(0xD420_1320, EL1T), (0xF200_0099, CODE, VBAR));
    // UDF.
    assert_eq!(trap(0, EL1H), (0x0200_0000, CODE, VBAR + 0x200));
    // FP with CPACR_EL1.FPEN = 0: EC 0x07.
    assert_eq!(trap(0x1E22_2820, EL1H).0, 0x1E00_0000);
    // MRS CNTVCT_EL0 at EL0 with CNTKCTL_EL1.EL0VCTEN = 0: EC 0x18, ISS encodes
    // op0 3, op2 2, op1 3, CRn 14, Rt 3, CRm 0, read.
    assert_eq!(trap(0xD53B_E043, EL0T).0, 0x6234_F861);
    // MSR DAIFClr at EL0 with SCTLR_EL1.UMA = 0: EC 0x18 too.
    assert_eq!(trap(0xD503_42FF, EL0T).0 >> 26, 0x18);
    // MSR SPSel at EL0: UNDEFINED.
    assert_eq!(trap(0xD500_40BF, EL0T).0, 0x0200_0000);
    // WFI and WFE at EL0 with SCTLR_EL1.nTWI/nTWE clear: EC 0x01, CV, COND 0xE, TI.
    assert_eq!(trap(0xD503_207F, EL0T), (0x07E0_0000, CODE, VBAR + 0x400));
    assert_eq!(trap(0xD503_205F, EL0T).0, 0x07E0_0001);
}

#[test]
fn wfi_at_el0_exits_when_not_trapped() {
    let (mut cpu, mut bus) = machine(&[0xD503_207F]);
    let sctlr = cpu.sysreg(SysReg::SctlrEl1);
    cpu.set_sysreg(SysReg::SctlrEl1, sctlr | (1 << 16));
    cpu.set_pstate(EL0T);
    assert_eq!(cpu.run(&mut bus, 1), Exit::Wfi);
    assert_eq!((cpu.el(), cpu.pc()), (0, CODE + 4));
}

#[test]
fn fp_enabled_makes_simd_undefined_not_trapped() {
    let (mut cpu, mut bus) = machine(&[0x1E22_2820]);
    cpu.set_sysreg(SysReg::CpacrEl1, 0b11 << 20);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x0200_0000);
    // FPEN = 0b01 traps EL0 only.
    let (mut cpu, mut bus) = machine(&[0x1E22_2820]);
    cpu.set_sysreg(SysReg::CpacrEl1, 0b01 << 20);
    cpu.set_pstate(EL0T);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x1E00_0000);
}

#[test]
fn hvc_smc_wfi_wfe_exit_past_the_instruction() {
    let cases = [
        (0xD402_4682, Exit::Hvc { imm: 0x1234 }),
        (0xD400_00E3, Exit::Smc { imm: 7 }),
        (0xD503_207F, Exit::Wfi),
        (0xD503_205F, Exit::Wfe),
    ];
    for (word, want) in cases {
        let (mut cpu, mut bus) = machine(&[word]);
        assert_eq!(cpu.run(&mut bus, 10), want);
        assert_eq!(cpu.pc(), CODE + 4);
        assert_eq!(cpu.el(), 1);
        assert_eq!(cpu.retired(), 1);
    }
}

#[test]
fn alignment_faults() {
    // PC alignment: EC 0x22, FAR = PC.
    let (mut cpu, mut bus) = machine(&[]);
    cpu.set_pc(CODE + 2);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x8A00_0000);
    assert_eq!(cpu.sysreg(SysReg::FarEl1), CODE + 2);
    // SP alignment with SCTLR_EL1.SA: EC 0x26.
    let (mut cpu, mut bus) = machine(&[0xF940_03E0]); // ldr x0, [sp]
    cpu.set_sysreg(SysReg::SctlrEl1, cpu.sysreg(SysReg::SctlrEl1) | (1 << 3));
    cpu.set_sp(DATA + 8);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x9A00_0000);
    // Unaligned data access (Device memory): DFSC 0x21, FAR = address.
    let (mut cpu, mut bus) = machine(&[0xF840_1041]); // ldur x1, [x2, #1]
    cpu.set_x(2, DATA);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x9600_0021, "EC 0x25 from EL1");
    assert_eq!(cpu.sysreg(SysReg::FarEl1), DATA + 1);
    let (mut cpu, mut bus) = machine(&[0xB900_00C5]); // str w5, [x6]
    cpu.set_pstate(EL0T);
    cpu.set_x(6, DATA + 2);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x9200_0061, "EC 0x24 from EL0, WnR");
}

#[test]
fn external_aborts_are_taken_to_el1() {
    // A load from nothing: EC 0x24 from EL0, DFSC 0x10.
    let (mut cpu, mut bus) = machine(&[0xB940_0020]); // ldr w0, [x1]
    cpu.set_pstate(EL0T);
    cpu.set_x(1, 0x10);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x9200_0010);
    assert_eq!(cpu.sysreg(SysReg::FarEl1), 0x10);
    // A fetch from nothing at EL1: EC 0x21, IFSC 0x10, FAR = PC.
    let (mut cpu, mut bus) = machine(&[]);
    cpu.set_pc(0x1000);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x8600_0010);
    assert_eq!(cpu.sysreg(SysReg::FarEl1), 0x1000);
    assert_eq!(cpu.sysreg(SysReg::ElrEl1), 0x1000);
}

/// Runs `words` (at EL0) with the page at DATA unmapped at stage 2 after
/// `setup_steps` steps; returns the exit and checks nothing changed.
fn stage2(words: &[u32], setup_steps: u64) -> (u64, u64, u64) {
    let (mut cpu, mut bus) = machine(words);
    cpu.set_pstate(EL0T);
    for r in 0..31 {
        cpu.set_x(r, 0x100 + r as u64);
    }
    cpu.set_x(1, DATA + 8);
    if setup_steps > 0 {
        assert_eq!(cpu.run(&mut bus, setup_steps), Exit::Budget);
    }
    bus.set_unmapped(DATA, true);
    let regs: Vec<u64> = (0..31).map(|r| cpu.x(r)).collect();
    let (pc, pstate, sp) = (cpu.pc(), cpu.pstate(), cpu.sp());
    let retired = cpu.retired();
    match cpu.run(&mut bus, 10) {
        Exit::Stage2Abort {
            esr_el2,
            far,
            hpfar,
        } => {
            let after: Vec<u64> = (0..31).map(|r| cpu.x(r)).collect();
            assert_eq!(after, regs, "registers changed by a faulting access");
            assert_eq!((cpu.pc(), cpu.pstate(), cpu.sp()), (pc, pstate, sp));
            assert_eq!(cpu.retired(), retired);
            (esr_el2, far, hpfar)
        }
        other => panic!("expected a stage-2 abort, got {other:?}"),
    }
}

#[test]
fn stage2_syndrome_of_each_load_store_class() {
    let hpfar = (DATA >> 12) << 4;
    let cases: [(&str, &[u32], u64, u64); 14] = [
        // aarch64-notes: word load from EL0 = 0x93800006 at level 2; level 3 here.
        ("ldr w0, [x1]", &[0xB940_0020], 0, 0x9380_0007),
        ("ldr x5, [x1]", &[0xF940_0025], 0, 0x93C5_8007),
        ("ldrsb w7, [x1]", &[0x39C0_0027], 0, 0x9327_0007),
        ("ldrsw x9, [x1]", &[0xB980_0029], 0, 0x93A9_8007),
        ("strb w2, [x1]", &[0x3900_0022], 0, 0x9302_0047),
        ("str x30, [x1]", &[0xF900_003E], 0, 0x93DE_8047),
        ("ldar x4, [x1]", &[0xC8DF_FC24], 0, 0x93C4_C007),
        ("stlr w4, [x1]", &[0x889F_FC24], 0, 0x9384_4047),
        // Pairs, writeback forms, exclusives and atomics: ISV = 0.
        ("ldp x2, x3, [x1]", &[0xA940_0C22], 0, 0x9200_0007),
        ("stp x2, x3, [x1]", &[0xA900_0C22], 0, 0x9200_0047),
        ("ldr x2, [x1], #8", &[0xF840_8422], 0, 0x9200_0007),
        ("ldxr x2, [x1]", &[0xC85F_7C22], 0, 0x9200_0007),
        ("ldadd x2, x3, [x1]", &[0xF822_0023], 0, 0x9200_0047),
        ("cas x2, x3, [x1]", &[0xC8A2_7C23], 0, 0x9200_0047),
    ];
    for (name, words, setup, want) in cases {
        let (esr_el2, far, hp) = stage2(words, setup);
        assert_eq!(esr_el2, want, "{name}: ESR_EL2 {esr_el2:#x}");
        assert_eq!((far, hp), (DATA + 8, hpfar), "{name}");
    }
    // STXR after a successful LDXR (the store is the access that faults).
    let (esr_el2, far, _) = stage2(&[0xC85F_7C22, 0xC803_7C22], 1);
    assert_eq!((esr_el2, far), (0x9200_0047, DATA + 8));
}

#[test]
fn stage2_fetch_abort() {
    let (mut cpu, mut bus) = machine(&[0xD503_201F]);
    bus.set_unmapped(CODE, true);
    assert_eq!(
        cpu.run(&mut bus, 5),
        Exit::Stage2Abort {
            esr_el2: 0x8200_0007,
            far: CODE,
            hpfar: (CODE >> 12) << 4
        }
    );
    assert_eq!(cpu.pc(), CODE);
    bus.set_unmapped(CODE, false);
    assert_eq!(cpu.run(&mut bus, 1), Exit::Budget);
    assert_eq!(cpu.pc(), CODE + 4, "the retried fetch succeeds");
}

#[test]
fn store_pair_across_a_page_writes_nothing_when_the_second_page_faults() {
    // stp x2, x3, [x1] with x1 at the last doubleword of a page.
    let (mut cpu, mut bus) = machine(&[0xA900_0C22]);
    cpu.set_x(1, DATA - 8);
    cpu.set_x(2, 0x1111);
    cpu.set_x(3, 0x2222);
    bus.set_unmapped(DATA, true);
    let exit = cpu.run(&mut bus, 1);
    assert!(matches!(exit, Exit::Stage2Abort { far, .. } if far == DATA));
    assert_eq!(
        bus.read(DATA - 8, AccessSize::Double),
        Ok(0),
        "first half written"
    );
    bus.set_unmapped(DATA, false);
    assert_eq!(cpu.run(&mut bus, 1), Exit::Budget);
    assert_eq!(bus.read(DATA - 8, AccessSize::Double), Ok(0x1111));
    assert_eq!(bus.read(DATA, AccessSize::Double), Ok(0x2222));
}

#[test]
fn irq_is_taken_when_unmasked() {
    // nop ; msr daifclr, #2 ; nop
    let (mut cpu, mut bus) = machine(&[0xD503_201F, 0xD503_42FF, 0xD503_201F]);
    cpu.set_irq_line(true);
    assert_eq!(cpu.run(&mut bus, 1), Exit::Budget);
    assert_eq!(cpu.pc(), CODE + 4, "masked: not taken");
    assert_eq!(cpu.run(&mut bus, 2), Exit::Budget);
    assert_eq!(cpu.pc(), VBAR + 0x280, "IRQ from EL1h");
    assert_eq!(cpu.sysreg(SysReg::ElrEl1), CODE + 8);
    assert_eq!(cpu.sysreg(SysReg::SpsrEl1), EL1H | (0b1101 << 6));
    // From EL0 the IRQ goes to the lower-EL vector.
    let (mut cpu, mut bus) = machine(&[0xD503_201F]);
    cpu.set_pstate(EL0T);
    cpu.set_irq_line(true);
    cpu.run(&mut bus, 1);
    assert_eq!((cpu.pc(), cpu.sysreg(SysReg::ElrEl1)), (VBAR + 0x480, CODE));
}

#[test]
fn timer_deadline_exit_is_exact() {
    let words = [
        0xD280_0C81, // mov x1, #100
        0xD280_0022, // mov x2, #1
        0xD51B_E341, // msr cntv_cval_el0, x1
        0xD51B_E322, // msr cntv_ctl_el0, x2
        0x1400_0000, // b .
    ];
    let (mut cpu, mut bus) = machine(&words);
    assert_eq!(cpu.run(&mut bus, 1000), Exit::TimerDeadline);
    assert_eq!(cpu.counter(), 100);
    assert_eq!(cpu.next_timer_deadline(), Some(100));
    assert!(cpu.timer_irq_lines().virt);
    assert!(!cpu.timer_irq_lines().phys);
    // The level stays asserted; the deadline does not fire again.
    assert_eq!(cpu.run(&mut bus, 50), Exit::Budget);
    assert_eq!(cpu.counter(), 150);
    assert_eq!(cpu.sysreg(SysReg::CntvCtlEl0), 0b101, "ENABLE | ISTATUS");
}

#[test]
fn counter_reads_mid_block_see_every_instruction_before_them() {
    // The run loop keeps the retired count in a register; MRS must still see
    // the exact count, after straight-line code and after a taken branch.
    let words = [
        0xD503_201F, // nop
        0x9100_0421, // add x1, x1, #1
        0xD53B_E040, // mrs x0, cntvct_el0      (2 retired before it)
        0x1400_0002, // b +8
        0xD503_201F, // nop (skipped)
        0xD53B_E043, // mrs x3, cntvct_el0      (4 retired before it)
        0xD51B_E344, // msr cntv_cval_el0, x4   (a deadline never reached)
        0xD53B_E045, // mrs x5, cntvct_el0      (6 retired before it)
        0xD400_0002, // hvc #0
    ];
    let (mut cpu, mut bus) = machine(&words);
    cpu.set_x(4, u64::MAX);
    assert_eq!(cpu.run(&mut bus, 1000), Exit::Hvc { imm: 0 });
    assert_eq!((cpu.x(0), cpu.x(3), cpu.x(5)), (2, 4, 6));
    assert_eq!(cpu.retired(), 8);
    assert_eq!(cpu.counter(), 8);
}

#[test]
fn timer_write_that_changes_the_level_exits() {
    let words = [
        0xD280_0022, // mov x2, #1
        0xD51B_E322, // msr cntv_ctl_el0, x2   (CVAL 0 is already past)
        0xD503_201F, // nop
    ];
    let (mut cpu, mut bus) = machine(&words);
    assert_eq!(cpu.run(&mut bus, 10), Exit::TimerDeadline);
    assert_eq!(cpu.pc(), CODE + 8, "after the MSR");
    assert!(cpu.timer_irq_lines().virt);
}

#[test]
fn time_scale_and_idle_skip() {
    let config = CpuConfig {
        time_scale: apf_cpu::TimeScale {
            ticks: std::num::NonZeroU32::new(1).unwrap(),
            instructions: std::num::NonZeroU32::new(4).unwrap(),
        },
        ..CpuConfig::default()
    };
    let mut bus = RamBus::with_region(RAM, RAM_LEN);
    assert!(bus.load_words(CODE, &[0x1400_0000])); // b .
    let mut cpu = Cpu::new(config);
    cpu.set_pc(CODE);
    cpu.run(&mut bus, 400);
    assert_eq!((cpu.retired(), cpu.counter()), (400, 100));
    cpu.advance_counter(1000);
    assert_eq!(cpu.counter(), 1100);
    assert_eq!(cpu.sysreg(SysReg::CntvctEl0), 1100);
}

#[test]
fn exclusive_pair_succeeds_unless_memory_changed() {
    let words = [
        0xC85F_7C22, // ldxr x2, [x1]
        0x9100_0442, // add x2, x2, #1
        0xC803_7C22, // stxr w3, x2, [x1]
    ];
    let (mut cpu, mut bus) = machine(&words);
    cpu.set_x(1, DATA);
    bus.write(DATA, AccessSize::Double, 41).unwrap();
    cpu.run(&mut bus, 3);
    assert_eq!(cpu.x(3), 0, "stxr succeeded");
    assert_eq!(bus.read(DATA, AccessSize::Double), Ok(42));

    let (mut cpu, mut bus) = machine(&words);
    cpu.set_x(1, DATA);
    cpu.run(&mut bus, 2);
    // Another agent writes between the load and the store.
    bus.write(DATA, AccessSize::Double, 7).unwrap();
    cpu.run(&mut bus, 1);
    assert_eq!(cpu.x(3), 1, "stxr failed");
    assert_eq!(bus.read(DATA, AccessSize::Double), Ok(7));

    // An exception between them clears the monitor.
    let (mut cpu, mut bus) = machine(&words);
    cpu.set_x(1, DATA);
    cpu.run(&mut bus, 2);
    cpu.take_exception(Exception::Irq);
    cpu.set_pc(CODE + 8);
    cpu.set_pstate(EL1H);
    cpu.run(&mut bus, 1);
    assert_eq!(cpu.x(3), 1);
}

#[test]
fn lse_atomics_through_the_bus() {
    let (mut cpu, mut bus) = machine(&[0xF822_0023, 0xC8A2_7C23]); // ldadd x2, x3 ; cas x2, x3
    cpu.set_x(1, DATA);
    cpu.set_x(2, 5);
    bus.write(DATA, AccessSize::Double, 10).unwrap();
    cpu.run(&mut bus, 1);
    assert_eq!((cpu.x(3), bus.read(DATA, AccessSize::Double)), (10, Ok(15)));
    // cas x2, x3, [x1]: x2 = 5 != 15, so no store; x2 gets the old value.
    cpu.run(&mut bus, 1);
    assert_eq!((cpu.x(2), bus.read(DATA, AccessSize::Double)), (15, Ok(15)));
    assert_eq!(AtomicOp::Add.apply(AccessSize::Double, 10, 5), 15);
}

#[test]
fn own_stores_to_code_are_seen() {
    let words = [
        0xD503_201F, // nop          <- overwritten with mov x0, #5
        0xB900_00C5, // str w5, [x6]
        0x17FF_FFFE, // b .-8
    ];
    let (mut cpu, mut bus) = machine(&words);
    cpu.set_x(5, 0xD280_00A0);
    cpu.set_x(6, CODE);
    cpu.run(&mut bus, 4);
    assert_eq!(cpu.x(0), 5);
}

#[test]
fn host_writes_need_invalidate_decoded() {
    let (mut cpu, mut bus) = machine(&[0xD280_00A0]); // mov x0, #5
    cpu.run(&mut bus, 1);
    assert!(bus.load_words(CODE, &[0xD280_00E0])); // mov x0, #7
    cpu.set_pc(CODE);
    cpu.run(&mut bus, 1);
    assert_eq!(cpu.x(0), 5, "the decoded copy is still in use");
    cpu.invalidate_decoded(CODE);
    cpu.set_pc(CODE);
    cpu.run(&mut bus, 1);
    assert_eq!(cpu.x(0), 7);
    // IC IALLU has the same effect from inside the guest.
    assert!(bus.load_words(CODE, &[0xD280_00A0, 0xD508_751F, 0xD503_201F]));
    cpu.invalidate_decoded(CODE);
    cpu.set_pc(CODE);
    cpu.run(&mut bus, 2);
    assert!(bus.load_words(CODE, &[0xD280_00E0]));
    cpu.set_pc(CODE);
    cpu.run(&mut bus, 1);
    assert_eq!(cpu.x(0), 7);
}

/// A bus that kicks once a foreign system register is written.
#[derive(Debug)]
struct KickOnWrite {
    ram: RamBus,
    kicked: bool,
}

impl Bus for KickOnWrite {
    fn fetch(&mut self, addr: u64) -> Result<u32, BusError> {
        self.ram.fetch(addr)
    }
    fn read(&mut self, addr: u64, size: AccessSize) -> Result<u64, BusError> {
        self.ram.read(addr, size)
    }
    fn write(&mut self, addr: u64, size: AccessSize, value: u64) -> Result<(), BusError> {
        self.ram.write(addr, size, value)
    }
    fn compare_exchange(
        &mut self,
        addr: u64,
        size: AccessSize,
        old: u64,
        new: u64,
    ) -> Result<u64, BusError> {
        self.ram.compare_exchange(addr, size, old, new)
    }
    fn compare_exchange_pair(&mut self, addr: u64, old: u128, new: u128) -> Result<u128, BusError> {
        self.ram.compare_exchange_pair(addr, old, new)
    }
    fn atomic_rmw(
        &mut self,
        addr: u64,
        size: AccessSize,
        op: AtomicOp,
        operand: u64,
    ) -> Result<u64, BusError> {
        self.ram.atomic_rmw(addr, size, op, operand)
    }
    fn sysreg_read(&mut self, reg: SysRegId) -> Option<u64> {
        self.ram.sysreg_read(reg)
    }
    fn sysreg_write(&mut self, reg: SysRegId, value: u64) -> bool {
        self.kicked = true;
        self.ram.sysreg_write(reg, value)
    }
    fn kicked(&self) -> bool {
        self.kicked
    }
}

#[test]
fn gic_registers_go_to_the_bus() {
    let iar1 = SysRegId::new(3, 0, 12, 12, 0);
    let eoir1 = SysRegId::new(3, 0, 12, 12, 1);
    // mrs x0, icc_iar1_el1 ; msr icc_eoir1_el1, x0 ; nop
    let (mut cpu, mut ram) = machine(&[0xD538_CC00, 0xD518_CC20, 0xD503_201F]);
    ram.sysregs.insert(iar1, 27);
    ram.sysregs.insert(eoir1, 0);
    let mut bus = KickOnWrite { ram, kicked: false };
    assert_eq!(cpu.run(&mut bus, 10), Exit::Kicked);
    assert_eq!(cpu.x(0), 27);
    assert_eq!(cpu.pc(), CODE + 8, "kicked right after the MSR retired");
    assert_eq!(bus.ram.sysregs[&eoir1], 27);
    // A register nobody owns is UNDEFINED; at EL0 the GIC registers are too.
    let (mut cpu, mut bus) = machine(&[0xD538_CC00]);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x0200_0000);
    let (mut cpu, mut bus) = machine(&[0xD538_CC00]);
    bus.sysregs.insert(iar1, 27);
    cpu.set_pstate(EL0T);
    cpu.run(&mut bus, 1);
    assert_eq!(esr(&cpu), 0x0200_0000);
}

#[test]
fn id_and_identity_registers() {
    let mut cpu = Cpu::new(CpuConfig {
        mpidr: 0x0102,
        ..CpuConfig::default()
    });
    assert_eq!(cpu.sysreg(SysReg::MpidrEl1), 0x8000_0102);
    assert_eq!(cpu.sysreg(SysReg::CntfrqEl0), 100_000_000);
    // SCTLR_EL1 keeps M and the other implemented bits; RES1 bits stay set
    // and RES0 bits (EE, E0E, EnIA...) stay clear.
    cpu.set_sysreg(SysReg::SctlrEl1, 0x8300_0001 | (1 << 19) | (1 << 14));
    assert_eq!(
        cpu.sysreg(SysReg::SctlrEl1),
        0x30D0_0801 | (1 << 19) | (1 << 14)
    );
}

#[test]
fn budget_counts_steps_and_kick_stops() {
    let (mut cpu, mut bus) = machine(&[0x9100_0400, 0x17FF_FFFF]); // add x0,x0,#1 ; b .-4
    assert_eq!(cpu.run(&mut bus, 1001), Exit::Budget);
    assert_eq!(cpu.retired(), 1001);
    assert_eq!(cpu.x(0), 501);
    bus.kick = true;
    assert_eq!(cpu.run(&mut bus, 10), Exit::Kicked);
    assert_eq!(cpu.retired(), 1001);
}
