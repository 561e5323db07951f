//! Straight-line blocks against single steps: random loops of ALU ops, loads
//! and stores (immediate and register offset, sign-extending loads, pre- and
//! post-index writeback), forward branches, counter reads and a faulting load
//! run once with a budget of one step per call (the single-op path), and with
//! each engine once with a large budget (whole blocks) and once with small odd
//! budgets (blocks that do not fit fall back to single ops). The compiler
//! compiles every block at its first entry, so every compiled op is compared
//! with the interpreter's. Every run must end in the same state: the
//! registers, PC, PSTATE, the retired count, the exception registers and the
//! data memory.

use apf_cpu::{Cpu, CpuConfig, Engine, Exit, RamBus, SysReg};

const RAM: u64 = 0x4000_0000;
const RAM_LEN: usize = 0x20000;
const CODE: u64 = RAM;
const VBAR: u64 = RAM + 0x10000;
const DATA: u64 = RAM + 0x18000;
/// Nothing is mapped here: a load from it is a data abort to EL1.
const HOLE: u64 = 0x7000_0000;
/// HVC #0 ends a program; HVC #1 in every vector ends it after an exception.
const HVC0: u32 = 0xD400_0002;
const HVC1: u32 = 0xD400_0022;
/// Times each program's body runs.
const PASSES: u64 = 3;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

/// One random instruction: destinations are X0..X7; X28 is the data base and
/// X25 a pointer into the data that writeback moves.
fn instruction(rng: &mut Rng, faulting_load: bool) -> u32 {
    let sf = rng.below_u32(2);
    let (rd, rn, rm, ra) = (
        rng.below_u32(8),
        rng.below_u32(8),
        rng.below_u32(8),
        rng.below_u32(8),
    );
    let width = if sf == 1 { 64 } else { 32 };
    match rng.below_u32(20) {
        // ADD/ADDS/SUB/SUBS (immediate)
        0 => {
            sf << 31
                | rng.below_u32(4) << 29
                | 0x1100_0000
                | rng.below_u32(4096) << 10
                | rn << 5
                | rd
        }
        // ADD/SUB (shifted register), LSL/LSR/ASR, unshifted half the time
        1 => {
            sf << 31
                | rng.below_u32(4) << 29
                | 0x0B00_0000
                | rng.below_u32(3) << 22
                | rm << 16
                | (rng.below_u32(width) * rng.below_u32(2)) << 10
                | rn << 5
                | rd
        }
        // AND/ORR/EOR/ANDS (shifted register), with and without N, unshifted half the time
        2 => {
            sf << 31
                | rng.below_u32(4) << 29
                | 0x0A00_0000
                | rng.below_u32(4) << 22
                | rng.below_u32(2) << 21
                | rm << 16
                | (rng.below_u32(width) * rng.below_u32(2)) << 10
                | rn << 5
                | rd
        }
        // MOVZ/MOVK
        3 => {
            sf << 31
                | [0, 2, 3][rng.below_u32(3) as usize] << 29
                | 0x1280_0000
                | rng.below_u32(2 + 2 * sf) << 21
                | rng.below_u32(65536) << 5
                | rd
        }
        // SBFM/UBFM
        4 => {
            let opc = if rng.below_u32(2) == 0 { 0 } else { 2 };
            sf << 31
                | opc << 29
                | 0x1300_0000
                | sf << 22
                | rng.below_u32(width) << 16
                | rng.below_u32(width) << 10
                | rn << 5
                | rd
        }
        // MADD/MSUB
        5 => sf << 31 | 0x1B00_0000 | rm << 16 | rng.below_u32(2) << 15 | ra << 10 | rn << 5 | rd,
        // CSEL/CSINC/CSINV/CSNEG
        6 => {
            sf << 31
                | rng.below_u32(2) << 30
                | 0x1A80_0000
                | rm << 16
                | rng.below_u32(14) << 12
                | rng.below_u32(2) << 10
                | rn << 5
                | rd
        }
        // LDR/STR (unsigned offset) of every size, from X28
        7 | 8 => {
            let size = rng.below_u32(4);
            size << 30
                | 0x3900_0000
                | rng.below_u32(2) << 22
                | rng.below_u32(64) << 10
                | 28 << 5
                | rd
        }
        // LDP/STP X (signed offset) from X28, distinct registers
        9 => {
            let rt2 = (rd + 1 + rng.below_u32(7)) % 8;
            0xA900_0000
                | rng.below_u32(2) << 22
                | rng.below_u32(32) << 15
                | rt2 << 10
                | 28 << 5
                | rd
        }
        // B.cond over the next instruction
        10 => 0x5400_0000 | 2 << 5 | rng.below_u32(14),
        // CBZ/CBNZ over the next instruction
        11 => sf << 31 | 0x3400_0000 | rng.below_u32(2) << 24 | 2 << 5 | rn,
        // MRS Xd, CNTVCT_EL0: reads the retired count
        12 => 0xD53B_E040 | rd,
        // AND/ORR/EOR/ANDS (immediate) with a valid bitmask of 64- or 32-bit elements
        14 => {
            let (immr, imms) = (rng.below_u32(width), rng.below_u32(width - 1));
            sf << 31
                | rng.below_u32(4) << 29
                | 0x1200_0000
                | sf << 22
                | immr << 16
                | imms << 10
                | rn << 5
                | rd
        }
        // MOV (ORR from XZR/WZR, unshifted)
        13 => sf << 31 | 0x2A00_0000 | rm << 16 | 31 << 5 | rd,
        // LDRSB/LDRSH (unsigned offset) to X or W, from X28
        15 => {
            let size = rng.below_u32(2);
            size << 30
                | 0x3900_0000
                | (2 + rng.below_u32(2)) << 22
                | rng.below_u32(64) << 10
                | 28 << 5
                | rd
        }
        // LDR/STR (register) of every size from X28, the sign-extending loads
        // of bytes and halfwords too; the index X26 (small) under each extend
        16 => {
            let size = rng.below_u32(4);
            let opc = if size < 2 {
                rng.below_u32(4)
            } else {
                rng.below_u32(2)
            };
            let option = match rng.below_u32(4) {
                0 => 2, // UXTW
                1 => 3, // LSL
                2 => 6, // SXTW
                _ => 7, // SXTX
            };
            size << 30
                | 0x3820_0800
                | opc << 22
                | 26 << 16
                | option << 13
                | rng.below_u32(2) << 12
                | 28 << 5
                | rd
        }
        // TBZ/TBNZ over the next instruction
        17 => {
            let bit = rng.below_u32(64);
            (bit >> 5) << 31 | 0x3600_0000 | rng.below_u32(2) << 24 | (bit & 31) << 19 | 2 << 5 | rn
        }
        // LDR/STR X, pre- or post-index by -8 or 8 on X25
        18 => {
            let imm9 = if rng.below_u32(2) == 0 { 8 } else { 0x1F8 };
            3 << 30
                | 0x3800_0400
                | rng.below_u32(2) << 22
                | imm9 << 12
                | rng.below_u32(2) << 11
                | 25 << 5
                | rd
        }
        // LDR Xd, [X27]: a data abort (rarely: it ends the program), else NOP
        _ if faulting_load && rng.below_u32(80) == 0 => 0xF940_0000 | 27 << 5 | rd,
        _ => 0xD503_201F,
    }
}

/// A compare (CMP or TST, register or immediate, often of equal or small
/// values) and right after it an op that reads the flags it set: B.cond over
/// the next instruction, or CSEL/CSINC, under every condition.
fn compare_and_use(rng: &mut Rng) -> [u32; 2] {
    let sf = rng.below_u32(2);
    let rn = rng.below_u32(8);
    // Equal operands half the time (the conditions that differ only there).
    let rm = if rng.below_u32(2) == 0 {
        rn
    } else {
        rng.below_u32(8)
    };
    let compare = match rng.below_u32(3) {
        // CMP Xn, Xm / CMP Wn, Wm
        0 => sf << 31 | 0x6B00_001F | rm << 16 | rn << 5,
        // CMP Xn, #imm / CMP Wn, #imm
        1 => sf << 31 | 0x7100_001F | rng.below_u32(4096) << 10 | rn << 5,
        // TST Xn, #1 << k / TST Wn, #1 << k (ANDS to ZR, one-bit mask)
        _ => {
            let width = if sf == 1 { 64 } else { 32 };
            let k = rng.below_u32(width);
            let immr = (width - k) % width;
            sf << 31 | 0x7200_001F | sf << 22 | immr << 16 | rn << 5
        }
    };
    let cond = rng.below_u32(16);
    let reader = if rng.below_u32(2) == 0 {
        0x5400_0000 | 2 << 5 | cond
    } else {
        let rd = rng.below_u32(8);
        sf << 31 | 0x1A80_0000 | rm << 16 | cond << 12 | rng.below_u32(2) << 10 | rn << 5 | rd
    };
    [compare, reader]
}

fn program(seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed);
    // Long enough to cross page ends; a fault possible in half the programs.
    let len = 50 + rng.below_u32(3000);
    let faulting = rng.below_u32(2) == 0;
    let mut words: Vec<u32> = (0..len)
        .flat_map(|_| {
            if rng.below_u32(12) == 0 {
                compare_and_use(&mut rng).to_vec()
            } else {
                vec![instruction(&mut rng, faulting)]
            }
        })
        .collect();
    // SUBS X9, X9, #1; B.NE to the start: X9 = PASSES runs the body that many
    // times, and only code run before is in blocks. The NOP is what a last
    // forward branch skips.
    words.push(0xD503_201F);
    words.push(0xF100_0529);
    let back = -i32::try_from(words.len()).unwrap();
    words.push(0x5400_0001 | (back.cast_unsigned() & 0x7_FFFF) << 5);
    words.push(HVC0);
    words
}

/// A vCPU at EL1h on `words` run by `engine`, X0..X7 and the data seeded.
fn machine(words: &[u32], seed: u64, engine: Engine) -> (Cpu, RamBus) {
    let mut bus = RamBus::with_region(RAM, RAM_LEN);
    assert!(bus.load_words(CODE, words));
    assert!(bus.load_words(VBAR, &[HVC1; 0x800 / 4]));
    let mut rng = Rng(seed ^ 0xDA7A);
    let data: Vec<u8> = (0..0x400).map(|_| rng.next().to_le_bytes()[0]).collect();
    assert!(bus.load(DATA, &data));
    let mut cpu = Cpu::new(CpuConfig {
        engine,
        ..CpuConfig::default()
    });
    cpu.set_pc(CODE);
    cpu.set_sysreg(SysReg::VbarEl1, VBAR);
    for i in 0..8 {
        cpu.set_x(i, rng.next());
    }
    cpu.set_x(9, PASSES);
    cpu.set_x(27, HOLE);
    cpu.set_x(28, DATA);
    cpu.set_x(25, DATA + 0x200);
    // A register-offset index: scaled by up to 8, it stays in the compared data.
    cpu.set_x(26, rng.next() & 0x3F);
    (cpu, bus)
}

/// Everything a run can change.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    x: Vec<u64>,
    pc: u64,
    pstate: u64,
    retired: u64,
    exception: [u64; 3],
    data: Vec<u8>,
}

/// Runs `words` to its HVC with `engine`, `budget(call)` steps per call to
/// [`Cpu::run`].
fn run(words: &[u32], seed: u64, engine: Engine, budget: impl Fn(u64) -> u64) -> Outcome {
    let (mut cpu, mut bus) = machine(words, seed, engine);
    let mut calls = 0;
    loop {
        match cpu.run(&mut bus, budget(calls)) {
            Exit::Hvc { .. } => break,
            Exit::Budget => calls += 1,
            exit => panic!("seed {seed:#x}: unexpected exit {exit:?}"),
        }
        assert!(calls < 100_000, "seed {seed:#x}: the program does not end");
    }
    Outcome {
        x: (0..31).map(|i| cpu.x(i)).collect(),
        pc: cpu.pc(),
        pstate: cpu.pstate(),
        retired: cpu.retired(),
        exception: [SysReg::ElrEl1, SysReg::EsrEl1, SysReg::FarEl1].map(|r| cpu.sysreg(r)),
        data: bus.slice(DATA, 0x400).unwrap().to_vec(),
    }
}

#[test]
fn blocks_end_in_the_state_single_steps_do() {
    let mut faulted = 0;
    for seed in 0..200u64 {
        let words = program(seed);
        let stepped = run(&words, seed, Engine::Interpreter, |_| 1);
        for engine in [Engine::Interpreter, Engine::Compiler { after: 0 }] {
            let blocks = run(&words, seed, engine, |_| 1 << 40);
            assert_eq!(
                stepped, blocks,
                "seed {seed:#x}: {engine:?} blocks vs single steps"
            );
            // Budgets that end inside blocks: 3, 7, 11, ... steps per call.
            let odd = run(&words, seed, engine, |call| 3 + 4 * (call % 5));
            assert_eq!(
                stepped, odd,
                "seed {seed:#x}: {engine:?} small budgets vs single steps"
            );
        }
        faulted += u32::from(stepped.exception[2] == HOLE);
    }
    // The comparison covered precise data aborts in the middle of blocks.
    assert!(faulted >= 10, "only {faulted} programs faulted");
}
