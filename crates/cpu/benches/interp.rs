//! Guest instructions per second on three loops: ALU, memory streaming and
//! branchy, each with the stage-1 MMU off and on (an identity map of 2 MiB
//! Normal blocks; the `_mmu` names). Criterion reports the throughput in
//! elements/s = instructions/s.

use apf_cpu::{AccessSize, Bus, Cpu, CpuConfig, Exit, RamBus, SysReg};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const RAM: u64 = 0x4000_0000;
const STEPS: u64 = 1_000_000;

const ALU: [u32; 10] = [
    0x9100_0400, // add x0, x0, #1
    0xCA00_0021, // eor x1, x1, x0
    0xD37D_F022, // lsl x2, x1, #3
    0xCB00_0043, // sub x3, x2, x0
    0xAA41_0864, // orr x4, x3, x1, lsr #2
    0x9B03_1886, // madd x6, x4, x3, x6
    0x9278_1CC7, // and x7, x6, #0xff00
    0xF100_04A5, // subs x5, x5, #1
    0x9A86_10E8, // csel x8, x7, x6, ne
    0x17FF_FFF7, // b alu
];

/// Sums one array into another, element by element, forever.
const MEMORY: [u32; 7] = [
    0xD280_0004, // outer: mov x4, #0
    0xF864_7822, // inner: ldr x2, [x1, x4, lsl #3]
    0x8B02_0000, // add x0, x0, x2
    0xF824_7860, // str x0, [x3, x4, lsl #3]
    0x9100_0484, // add x4, x4, #1
    0xEB05_009F, // cmp x4, x5
    0x54FF_FF61, // b.ne inner
];
const MEMORY_TAIL: u32 = 0x17FF_FFF9; // b outer

/// A linear congruential generator steering data-dependent branches.
const BRANCHY: [u32; 10] = [
    0x9B06_1C00, // madd x0, x0, x6, x7
    0xB640_0040, // tbz x0, #40, 1f
    0x9100_0421, // add x1, x1, #1
    0xB748_0060, // 1: tbnz x0, #41, 2f
    0x9100_0442, // add x2, x2, #1
    0x1400_0002, // b 3f
    0xD100_0442, // 2: sub x2, x2, #1
    0xB400_0043, // 3: cbz x3, 4f
    0xD100_0463, // sub x3, x3, #1
    0x17FF_FFF7, // 4: b branchy
];

/// Where the MMU-on machines keep their page tables (outside the 2 MiB of RAM
/// the workloads use).
const TABLES: u64 = RAM + 0x20_0000;

fn machine(words: &[u32], mmu: bool) -> (Cpu, RamBus) {
    let mut bus = RamBus::with_region(RAM, 0x20_0000);
    bus.add_region(TABLES, 0x3000);
    assert!(bus.load_words(RAM, words));
    let mut cpu = Cpu::new(CpuConfig::default());
    cpu.set_pc(RAM);
    if mmu {
        // Level 0 → level 1 → level 2, one 2 MiB Normal block mapping RAM to itself.
        let (l0, l1, l2) = (TABLES, TABLES + 0x1000, TABLES + 0x2000);
        let put = |bus: &mut RamBus, at: u64, v: u64| {
            bus.write(at, AccessSize::Double, v).unwrap();
        };
        put(&mut bus, l0 + 8 * ((RAM >> 39) & 0x1FF), l1 | 3);
        put(&mut bus, l1 + 8 * ((RAM >> 30) & 0x1FF), l2 | 3);
        // AF, inner shareable, AttrIndx 1, block.
        let block = RAM | (1 << 10) | (3 << 8) | (1 << 2) | 1;
        put(&mut bus, l2 + 8 * ((RAM >> 21) & 0x1FF), block);
        cpu.set_sysreg(SysReg::MairEl1, 0xFF00);
        // T0SZ = 16, EPD1, IPS 40 bits, 16-bit ASIDs.
        cpu.set_sysreg(SysReg::TcrEl1, 16 | (1 << 23) | (2 << 32) | (1 << 36));
        cpu.set_sysreg(SysReg::Ttbr0El1, l0);
        let sctlr = cpu.sysreg(SysReg::SctlrEl1);
        cpu.set_sysreg(SysReg::SctlrEl1, sctlr | 1);
    }
    (cpu, bus)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("interpreter");
    group.throughput(Throughput::Elements(STEPS));

    for (suffix, mmu) in [("", false), ("_mmu", true)] {
        let (mut cpu, mut bus) = machine(&ALU, mmu);
        group.bench_function(format!("alu{suffix}"), |b| {
            b.iter(|| assert_eq!(cpu.run(&mut bus, STEPS), Exit::Budget));
        });

        let mut words = MEMORY.to_vec();
        words.push(MEMORY_TAIL);
        let (mut cpu, mut bus) = machine(&words, mmu);
        cpu.set_x(1, RAM + 0x10_0000); // source array
        cpu.set_x(3, RAM + 0x18_0000); // destination array
        cpu.set_x(5, 8192); // 64 KiB per array
        group.bench_function(format!("memory_streaming{suffix}"), |b| {
            b.iter(|| assert_eq!(cpu.run(&mut bus, STEPS), Exit::Budget));
        });

        let (mut cpu, mut bus) = machine(&BRANCHY, mmu);
        cpu.set_x(0, 1);
        cpu.set_x(6, 6_364_136_223_846_793_005);
        cpu.set_x(7, 1_442_695_040_888_963_407);
        cpu.set_x(3, 1000);
        group.bench_function(format!("branchy{suffix}"), |b| {
            b.iter(|| assert_eq!(cpu.run(&mut bus, STEPS), Exit::Budget));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
