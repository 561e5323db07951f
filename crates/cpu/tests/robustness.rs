//! Bad input never panics the interpreter: random instruction words, run from
//! random register state at EL0 and EL1 over RAM, sparse memory and unmapped
//! pages, always come back with an exit.

use apf_cpu::{Cpu, CpuConfig, RamBus, SysReg};
use proptest::prelude::*;

const RAM: u64 = 0x4000_0000;

fn run_words(words: &[u32], regs: &[u64], el1: bool, fp: bool, unmap: bool) {
    let mut bus = RamBus::with_region(RAM, 0x4000);
    assert!(bus.load_words(RAM, words));
    if unmap {
        bus.set_unmapped(RAM + 0x2000, true);
    }
    let mut cpu = Cpu::new(CpuConfig::default());
    cpu.set_sysreg(SysReg::VbarEl1, RAM + 0x3000);
    if fp {
        cpu.set_sysreg(SysReg::CpacrEl1, 0b11 << 20);
    }
    for (i, v) in regs.iter().enumerate() {
        // Half the registers point into RAM so loads and stores reach memory.
        let v = if i % 2 == 0 { RAM + (v & 0x3FF8) } else { *v };
        cpu.set_x(i, v);
    }
    cpu.set_sp(RAM + 0x1000);
    cpu.set_pstate(if el1 { 0b0101 } else { 0 });
    cpu.set_pc(RAM);
    // Whatever exit it takes (the property is that it returns at all), the
    // state can still be read.
    let _ = cpu.run(&mut bus, 256);
    let _ = (
        cpu.pstate(),
        cpu.counter(),
        cpu.timer_irq_lines(),
        cpu.next_timer_deadline(),
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn random_words_never_panic(
        words in prop::collection::vec(any::<u32>(), 1..64),
        regs in prop::collection::vec(any::<u64>(), 31),
        el1 in any::<bool>(),
        fp in any::<bool>(),
        unmap in any::<bool>(),
    ) {
        run_words(&words, &regs, el1, fp, unmap);
    }

    /// Words from the system and load/store spaces, which carry the most
    /// special cases, with all registers pointing into RAM.
    #[test]
    fn system_and_memory_words_never_panic(
        low in prop::collection::vec(any::<u32>(), 1..32),
        kind in prop::collection::vec(0u32..4, 1..32),
        el1 in any::<bool>(),
    ) {
        let words: Vec<u32> = low.iter().zip(kind.iter().cycle()).map(|(&w, &k)| match k {
            0 => 0xD500_0000 | (w & 0x003F_FFFF),          // system
            1 => 0x0800_0000 | (w & !(1 << 26)),          // exclusives, pairs, literal, all sizes
            2 => 0x3800_0000 | (w & 0xC0FF_FFFF),          // single-register and atomics
            _ => 0xD400_0000 | (w & 0x00FF_FFFF),          // exception generation
        }).collect();
        let regs: Vec<u64> = (0..31u64).map(|i| i * 0x88).collect();
        run_words(&words, &regs, el1, false, false);
    }
}
