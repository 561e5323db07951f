//! Differential test of instruction semantics against QEMU user mode.
//!
//! Seeded random instructions per encoding class run twice: through the
//! interpreter at EL0 over a [`RamBus`], and through `oracle/runner.c` under
//! `qemu-aarch64 -cpu cortex-a76` (Armv8.2 with LSE, CRC32, LDAPR: the
//! extensions this CPU implements). X0–X30, SP, PC, NZCV, TPIDR_EL0, the bytes of
//! the data region that changed, and the outcome (completed, UNDEFINED,
//! breakpoint, data fault with its address) must agree.
//!
//! Not compared, with the reason:
//! - CONSTRAINED UNPREDICTABLE forms (see [`constrained_unpredictable`]): the
//!   architecture lets QEMU and this CPU choose different outcomes.
//! - Accesses this CPU faults as unaligned: with the stage-1 MMU off all our
//!   memory is Device memory, while Linux user space runs on Normal memory.
//! - Accesses to addresses with a nonzero top byte: Linux runs EL0 with the top
//!   byte ignored (TCR_EL1.TBI0 = 1); this CPU, stage-1 MMU off, uses all 64 bits.
//! - Memory after a faulting access: a pair may be half-written on QEMU, which
//!   the architecture permits; this CPU writes nothing (so the host can retry).
//! - SVC (it would make real system calls), SIMD/FP (UNDEFINED here, real on
//!   QEMU), and system-register accesses other than the targeted set below
//!   (Linux lets EL0 read ID and cache-type registers that EL1 controls here).
//! - Immediate branches to themselves (a loop on QEMU; one step here).
//! - Register branches in the fully random class: Linux runs EL0 with the top
//!   byte of addresses ignored, which canonicalises a tagged branch target.
//!
//! The seed is random per run and printed; set `APF_DIFF_SEED` to replay one,
//! `APF_DIFF_CASES` to change the cases per class.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use apf_cpu::{Cpu, CpuConfig, Esr, Exception, Exit, RamBus, SysReg};

const DATA: u64 = 0x0000_1000_0000_0000;
const DATA_LEN: usize = 32 * 1024;
const CODE: u64 = 0x0000_2000_0000_0000;
const SLOT: u64 = CODE + 2048;
const MAX_WORDS: usize = 4;
const BRK0: u32 = 0xD420_0000;
const MAGIC: u64 = 0x0041_5046_4449_4646;
const SIGILL: u32 = 4;
const SIGTRAP: u32 = 5;
const SIGBUS: u32 = 7;
const SIGSEGV: u32 = 11;
const SIGVTALRM: u32 = 26;
/// Compared cases per class by default: every class x 12,000 > 100k.
const DEFAULT_CASES_PER_CLASS: usize = 12_000;
const BATCH: usize = 6_000;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

/// An encoding class: how its words and their registers are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    DataProcessingImmediate,
    DataProcessingRegister,
    BranchImmediate,
    BranchRegister,
    ExceptionGeneration,
    System,
    LoadStoreImmediate,
    LoadStoreRegisterOffset,
    LoadStorePair,
    LoadLiteral,
    Exclusive,
    Atomic,
    Random,
}

const CLASSES: [Class; 13] = [
    Class::DataProcessingImmediate,
    Class::DataProcessingRegister,
    Class::BranchImmediate,
    Class::BranchRegister,
    Class::ExceptionGeneration,
    Class::System,
    Class::LoadStoreImmediate,
    Class::LoadStoreRegisterOffset,
    Class::LoadStorePair,
    Class::LoadLiteral,
    Class::Exclusive,
    Class::Atomic,
    Class::Random,
];

impl Class {
    /// Share of the per-class case count (some classes have little to vary).
    fn weight(self) -> (usize, usize) {
        match self {
            Class::ExceptionGeneration | Class::BranchRegister | Class::LoadLiteral => (1, 4),
            Class::System => (1, 2),
            _ => (1, 1),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    class: Class,
    words: Vec<u32>,
    x: [u64; 31],
    sp: u64,
    nzcv: u64,
    tpidr: u64,
}

/// What happened, in terms both sides can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The words ran; PC is wherever they left it.
    Completed,
    /// UNDEFINED or trapped to EL1 (SIGILL on Linux).
    Undefined,
    /// BRK (SIGTRAP at the instruction).
    Breakpoint,
    /// A data access faulted (SIGSEGV), at this address.
    DataFault(u64),
    /// Still running after the oracle's watchdog expired (a loop).
    Hung,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    kind: Kind,
    x: [u64; 31],
    sp: u64,
    pc: u64,
    nzcv: u64,
    tpidr: u64,
    diffs: Vec<(u32, u8)>,
}

fn data_pointer(rng: &mut Rng) -> u64 {
    let p = DATA + 0x2000 + rng.below(0x4000);
    if rng.chance(8) { p } else { p & !0xF }
}

fn any_value(rng: &mut Rng) -> u64 {
    const BOUNDARY: [u64; 12] = [
        0,
        1,
        u64::MAX,
        0x8000_0000_0000_0000,
        0x7FFF_FFFF_FFFF_FFFF,
        0x7FFF_FFFF,
        0x8000_0000,
        0xFFFF_FFFF,
        0x1_0000_0000,
        0xFFFF_FFFF_8000_0000,
        0x8000_0000_0000_0001,
        0xFF,
    ];
    match rng.below(7) {
        0 | 1 => rng.next(),
        2 => rng.below(64),
        3 => BOUNDARY[usize::try_from(rng.below(12)).unwrap_or(0)],
        4 => data_pointer(rng),
        5 => (rng.next() & 0xFFFF_FFFF) | 0x8000_0000,
        _ => 0u64.wrapping_sub(rng.below(64)),
    }
}

fn field(w: u32, lo: u32, width: u32) -> u32 {
    (w >> lo) & ((1 << width) - 1)
}

fn new_case(class: Class, rng: &mut Rng, words: Vec<u32>) -> Case {
    let mut x = [0u64; 31];
    for v in &mut x {
        *v = any_value(rng);
    }
    Case {
        class,
        words,
        x,
        sp: data_pointer(rng) & !0xF,
        nzcv: u64::from(rng.bits(4)) << 28,
        tpidr: rng.next(),
    }
}

/// Points the base register of a load/store word at the data region.
fn point_base(case: &mut Case, w: u32, rng: &mut Rng) {
    let rn = field(w, 5, 5) as usize;
    if rn == 31 {
        case.sp = data_pointer(rng) & !0xF;
    } else {
        case.x[rn] = data_pointer(rng);
    }
}

/// A signed immediate of `width` bits, small and nonzero most of the time.
fn small_offset(rng: &mut Rng, width: u32, reach: u64) -> u32 {
    loop {
        let v = if rng.chance(8) {
            rng.bits(width)
        } else {
            let magnitude = 1 + rng.below(reach);
            let signed = if rng.chance(2) {
                0u64.wrapping_sub(magnitude)
            } else {
                magnitude
            };
            u32::try_from(signed & ((1 << width) - 1)).unwrap_or(1)
        };
        if v != 0 {
            return v;
        }
    }
}

fn generate(class: Class, rng: &mut Rng) -> Case {
    match class {
        Class::DataProcessingImmediate => {
            let w = (rng.bits(32) & !(0b111 << 26)) | (0b100 << 26);
            new_case(class, rng, vec![w])
        }
        Class::DataProcessingRegister => {
            let mut w = (rng.bits(32) & !(0b111 << 25)) | (0b101 << 25);
            // A third fully random; the rest steered to allocated op1/op2
            // groups, so most words are instructions rather than UNDEFINED.
            match rng.below(3) {
                0 => {}
                1 => w &= !(1 << 28), // logical, add/sub shifted and extended
                _ => {
                    const OP2: [u32; 8] = [
                        0b0000, 0b0010, 0b0100, 0b0110, 0b1000, 0b1001, 0b1101, 0b1110,
                    ];
                    let op2 = OP2[usize::try_from(rng.below(8)).unwrap_or(0)];
                    w = (w & !(0xF << 21)) | (1 << 28) | (op2 << 21);
                    let steer = !rng.chance(4);
                    match op2 {
                        0b0000 => w &= !(0x3F << 10),
                        0b0010 if steer => w = (w | (1 << 29)) & !(1 << 10) & !(1 << 4),
                        0b0100 if steer => w &= !(1 << 29) & !(1 << 11),
                        0b0110 => {
                            w &= !(1 << 29);
                            if steer {
                                // 1-source: opcode2 = 0, opcode RBIT..CLS;
                                // 2-source: UDIV..RORV and CRC32.
                                const TWO: [u32; 14] =
                                    [2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23];
                                let opcode = if w & (1 << 30) != 0 {
                                    w &= !(0x1F << 16);
                                    u32::try_from(rng.below(6)).unwrap_or(0)
                                } else {
                                    TWO[usize::try_from(rng.below(14)).unwrap_or(0)]
                                };
                                w = (w & !(0x3F << 10)) | (opcode << 10);
                            }
                        }
                        o if o & 0b1000 != 0 => w &= !(0b11 << 29),
                        _ => {}
                    }
                }
            }
            new_case(class, rng, vec![w])
        }
        Class::BranchImmediate => {
            let w = match rng.below(4) {
                0 => (rng.bits(1) << 31) | (0b00101 << 26) | small_offset(rng, 26, 500),
                1 => {
                    let o0 = u32::from(rng.chance(8));
                    0x5400_0000 | (small_offset(rng, 19, 500) << 5) | (o0 << 4) | rng.bits(4)
                }
                2 => {
                    (rng.bits(1) << 31)
                        | (0b011010 << 25)
                        | (rng.bits(1) << 24)
                        | (small_offset(rng, 19, 500) << 5)
                        | rng.bits(5)
                }
                _ => {
                    (rng.bits(1) << 31)
                        | (0b011011 << 25)
                        | (rng.bits(1) << 24)
                        | (rng.bits(5) << 19)
                        | (small_offset(rng, 14, 500) << 5)
                        | rng.bits(5)
                }
            };
            new_case(class, rng, vec![w])
        }
        Class::BranchRegister => {
            let opc = match rng.below(8) {
                0..=2 => rng.below(3),
                3 => 4,
                4 => 5,
                _ => rng.below(16),
            };
            let opc = u32::try_from(opc).unwrap_or(0);
            let (op2, op3, op4) = if rng.chance(6) {
                (rng.bits(5), rng.bits(6), rng.bits(5))
            } else {
                (0x1F, 0, 0)
            };
            let rn = rng.bits(5);
            let w = 0xD600_0000 | (opc << 21) | (op2 << 16) | (op3 << 10) | (rn << 5) | op4;
            let mut case = new_case(class, rng, vec![w]);
            if rn < 31 {
                case.x[rn as usize] = match rng.below(4) {
                    0 | 1 => loop {
                        let t = CODE + 4 * rng.below(1024);
                        if t != SLOT {
                            break t;
                        }
                    },
                    2 => (CODE + rng.below(4096)) | 1,
                    _ => rng.below(1 << 40) & !3,
                };
            }
            case
        }
        Class::ExceptionGeneration => loop {
            let w = 0xD400_0000 | rng.bits(24);
            // SVC would make a real system call on the oracle.
            if w & 0x00E0_001F != 0x0000_0001 {
                break new_case(class, rng, vec![w]);
            }
        },
        Class::System => {
            let rt = if rng.chance(8) { rng.bits(5) } else { 31 };
            let w = match rng.below(9) {
                // Hints, any CRm:op2.
                0 | 1 => 0xD503_2000 | (rng.bits(7) << 5) | rt,
                // Barriers and CLREX, any CRm and op2.
                2 | 3 => 0xD503_3000 | (rng.bits(4) << 8) | (rng.bits(3) << 5) | rt,
                // MRS/MSR NZCV.
                4 => 0xD51B_4200 | (rng.bits(1) << 21) | rng.bits(5),
                // MRS/MSR TPIDR_EL0.
                5 => 0xD51B_D040 | (rng.bits(1) << 21) | rng.bits(5),
                // MSR DAIFSet/DAIFClr: trapped at EL0.
                6 => 0xD503_40DF | (rng.bits(1) << 5) | (rng.bits(4) << 8),
                // MRS/MSR of an EL1 register (op1 = 0) outside the ID space
                // (CRn = 0, which Linux emulates for EL0): UNDEFINED at EL0.
                7 => {
                    let crn = 1 + rng.bits(4) % 15;
                    0xD510_0000
                        | (rng.bits(1) << 21)
                        | (rng.bits(1) << 19)
                        | (crn << 12)
                        | (rng.bits(7) << 5)
                        | rng.bits(5)
                }
                // MSR (immediate), any field but SSBS (op1 = 3, op2 = 1), which
                // the oracle's Cortex-A76 implements (FEAT_SSBS) and this CPU does not.
                _ => loop {
                    let (op1, op2) = (rng.bits(3), rng.bits(3));
                    if (op1, op2) != (3, 1) {
                        break 0xD500_401F | (op1 << 16) | (rng.bits(4) << 8) | (op2 << 5);
                    }
                },
            };
            new_case(class, rng, vec![w])
        }
        Class::LoadStoreImmediate => {
            let mut w = (rng.bits(32) & !(0b111111 << 24)) | (0b111000 << 24);
            if rng.chance(2) {
                w |= 1 << 24; // unsigned offset
            } else {
                w &= !(1 << 21);
                if rng.chance(2) {
                    // Align the unscaled offset to the access size half the time.
                    let size = field(w, 30, 2);
                    w &= !(((1 << size) - 1) << 12);
                }
            }
            let mut case = new_case(class, rng, vec![w]);
            point_base(&mut case, w, rng);
            case
        }
        Class::LoadStoreRegisterOffset => {
            let mut w = (rng.bits(32) & !(0b111111 << 24)) | (0b111000 << 24) | (1 << 21);
            w = (w & !(0b11 << 10)) | (0b10 << 10);
            if !rng.chance(8) {
                w |= 1 << 14; // option<1> = 0 is reserved
            }
            let mut case = new_case(class, rng, vec![w]);
            let rm = field(w, 16, 5) as usize;
            if rm < 31 {
                let size = field(w, 30, 2);
                let index = rng.below(64);
                case.x[rm] = if rng.chance(4) {
                    0u64.wrapping_sub(index)
                } else {
                    index
                };
                if field(w, 12, 1) == 0 {
                    case.x[rm] <<= size;
                }
            }
            point_base(&mut case, w, rng);
            case
        }
        Class::LoadStorePair => {
            let w = (rng.bits(32) & !(0b11111 << 25) & !(1 << 26)) | (0b10100 << 25);
            let mut case = new_case(class, rng, vec![w]);
            point_base(&mut case, w, rng);
            case
        }
        Class::LoadLiteral => {
            let imm = if rng.chance(8) {
                rng.bits(19)
            } else {
                small_offset(rng, 19, 500)
            };
            let w = (rng.bits(2) << 30) | (0b011000 << 24) | (imm << 5) | rng.bits(5);
            new_case(class, rng, vec![w])
        }
        Class::Exclusive => exclusive(rng),
        Class::Atomic => {
            // o3:opc: mostly the allocated LD<op> (0xxx), SWP (1000), LDAPR (1100).
            let op = match rng.below(8) {
                0 => rng.bits(4),
                1 => 0b1000,
                2 => 0b1100,
                _ => rng.bits(3),
            };
            let w = (rng.bits(2) << 30)
                | (0b111000 << 24)
                | (rng.bits(2) << 22)
                | (1 << 21)
                | (rng.bits(5) << 16)
                | (op << 12)
                | (rng.bits(10));
            let mut case = new_case(class, rng, vec![w]);
            point_base(&mut case, w, rng);
            case
        }
        Class::Random => loop {
            let w = rng.bits(32);
            let op0 = field(w, 25, 4);
            let simd_fp =
                op0 & 0b0111 == 0b0111 || (op0 & 0b0101 == 0b0100 && field(w, 26, 1) == 1);
            let svc = w & 0xFFE0_001F == 0xD400_0001;
            let system = w >> 22 == 0x354;
            let register_branch = w >> 25 == 0b110_1011;
            if !(simd_fp || svc || system || register_branch || branches_to_itself(w)) {
                break new_case(class, rng, vec![w]);
            }
        },
    }
}

/// An immediate branch with offset 0: a loop on QEMU when taken.
fn branches_to_itself(w: u32) -> bool {
    let b = w & 0x7C00_0000 == 0x1400_0000 && field(w, 0, 26) == 0;
    let b_cond = w & 0xFF00_0000 == 0x5400_0000 && field(w, 5, 19) == 0;
    let cbz = w & 0x7E00_0000 == 0x3400_0000 && field(w, 5, 19) == 0;
    let tbz = w & 0x7E00_0000 == 0x3600_0000 && field(w, 5, 14) == 0;
    b || b_cond || cbz || tbz
}

/// An exclusive-class case: either an LDXR/STXR pair or a single word of the
/// class with its should-be-one fields set.
fn exclusive(rng: &mut Rng) -> Case {
    let rn = rng.bits(5);
    if rng.chance(2) {
        let pair = rng.chance(3);
        let size = if pair { 2 | rng.bits(1) } else { rng.bits(2) };
        let o1 = u32::from(pair);
        let base = (size << 30) | (0b001000 << 24) | (o1 << 21);
        let (rt, rt2) = (rng.bits(5), rng.bits(5));
        let rs = rng.bits(5);
        let load = base
            | (1 << 22)
            | (rng.bits(1) << 15)
            | (rn << 5)
            | rt
            | if pair {
                (31 << 16) | (rt2 << 10)
            } else {
                (31 << 16) | (31 << 10)
            };
        let (st_rt, st_rt2) = (rng.bits(5), rng.bits(5));
        let store_rn = if rng.chance(6) { rng.bits(5) } else { rn };
        let store = base
            | (rng.bits(1) << 15)
            | (rs << 16)
            | (store_rn << 5)
            | st_rt
            | if pair { st_rt2 << 10 } else { 31 << 10 };
        let mut words = vec![load];
        if rng.chance(8) {
            words.push(0xD503_305F); // clrex
        }
        words.push(store);
        let mut case = new_case(Class::Exclusive, rng, words);
        point_base(&mut case, load, rng);
        if store_rn != rn {
            point_base(&mut case, store, rng);
        }
        return case;
    }
    let size = rng.bits(2);
    let (o2, l, o1, o0) = (rng.bits(1), rng.bits(1), rng.bits(1), rng.bits(1));
    let (mut rs, mut rt2) = (rng.bits(5), rng.bits(5));
    match (o2, o1) {
        (0, 0) => {
            rt2 = 31;
            if l == 1 {
                rs = 31;
            }
        }
        (0, 1) if size >= 2 => {
            if l == 1 {
                rs = 31;
            }
        }
        (1, 0) => {
            rs = 31;
            rt2 = 31;
        }
        _ => rt2 = 31, // CAS, CASP
    }
    let w = (size << 30)
        | (0b001000 << 24)
        | (o2 << 23)
        | (l << 22)
        | (o1 << 21)
        | (rs << 16)
        | (o0 << 15)
        | (rt2 << 10)
        | (rn << 5)
        | rng.bits(5);
    let mut case = new_case(Class::Exclusive, rng, vec![w]);
    point_base(&mut case, w, rng);
    case
}

/// Forms whose outcome the architecture leaves CONSTRAINED UNPREDICTABLE, and
/// encodings with should-be-one fields not set.
fn constrained_unpredictable(w: u32) -> bool {
    let rt = field(w, 0, 5);
    let rn = field(w, 5, 5);
    let rt2 = field(w, 10, 5);
    let rs = field(w, 16, 5);
    let ldst = field(w, 25, 4) & 0b0101 == 0b0100 && field(w, 26, 1) == 0;
    if !ldst {
        // SMULH/UMULH with Ra != 31 (should-be-one).
        let mulh = w & 0xFF60_0000 == 0x9B40_0000 && field(w, 15, 1) == 0;
        return mulh && rt2 != 31;
    }
    match field(w, 27, 3) {
        // Single register, immediate forms with writeback: Rt == Rn.
        0b111 if field(w, 24, 1) == 0 && field(w, 21, 1) == 0 => {
            let wb = field(w, 10, 2) == 0b01 || field(w, 10, 2) == 0b11;
            wb && rn == rt && rn != 31
        }
        0b101 => {
            let load = field(w, 22, 1) == 1;
            let wb = field(w, 23, 2) == 0b01 || field(w, 23, 2) == 0b11;
            (load && rt == rt2) || (wb && rn != 31 && (rn == rt || rn == rt2))
        }
        0b001 if field(w, 24, 1) == 0 => {
            let (o2, l, o1) = (field(w, 23, 1), field(w, 22, 1), field(w, 21, 1));
            let pair = o2 == 0 && o1 == 1 && field(w, 31, 1) == 1;
            match (o2, o1) {
                (0, _) if o1 == 0 || pair => {
                    if l == 1 {
                        rs != 31 || (!pair && rt2 != 31) || (pair && rt == rt2)
                    } else {
                        (!pair && rt2 != 31)
                            || rs == rt
                            || (rs == rn && rn != 31)
                            || (pair && rs == rt2)
                    }
                }
                (1, 0) => rs != 31 || rt2 != 31,
                _ => rt2 != 31, // CAS, CASP
            }
        }
        _ => false,
    }
}

/// A sequence is CONSTRAINED UNPREDICTABLE if one of its words is, or if a
/// store-exclusive's size differs from the load-exclusive's before it.
fn excluded(case: &Case) -> bool {
    if case.words.iter().any(|&w| constrained_unpredictable(w)) {
        return true;
    }
    if case.words.len() >= 2 {
        let (first, last) = (case.words[0], case.words[case.words.len() - 1]);
        return field(first, 30, 2) != field(last, 30, 2);
    }
    false
}

/// The interpreter side: one CPU and bus reused for every case.
struct Interp {
    cpu: Cpu,
    bus: RamBus,
    pattern: Vec<u8>,
}

impl Interp {
    fn new(pattern: Vec<u8>) -> Interp {
        let mut bus = RamBus::new();
        bus.add_region(DATA, DATA_LEN);
        bus.add_region(CODE, 4096);
        assert!(bus.load_words(CODE, &[BRK0; 1024]));
        let mut cpu = Cpu::new(CpuConfig::default());
        cpu.set_sysreg(SysReg::VbarEl1, 0x7000_0000);
        // FP enabled, so SIMD/FP words are UNDEFINED rather than trapped.
        cpu.set_sysreg(SysReg::CpacrEl1, 0b11 << 20);
        // WFI and WFE do not trap at EL0, as Linux configures it (nTWI, nTWE).
        let sctlr = cpu.sysreg(SysReg::SctlrEl1);
        cpu.set_sysreg(SysReg::SctlrEl1, sctlr | (1 << 16) | (1 << 18));
        Interp { cpu, bus, pattern }
    }

    fn run(&mut self, case: &Case) -> Outcome {
        let cpu = &mut self.cpu;
        assert!(self.bus.load(DATA, &self.pattern));
        let mut slot = [BRK0; MAX_WORDS];
        slot[..case.words.len()].copy_from_slice(&case.words);
        assert!(self.bus.load_words(SLOT, &slot));
        cpu.invalidate_decoded(CODE);
        // An exception entry clears the exclusive monitor, as the return from
        // the oracle's signal handler does on QEMU.
        cpu.take_exception(Exception::Irq);
        cpu.set_pstate(case.nzcv);
        for (i, v) in case.x.iter().enumerate() {
            cpu.set_x(i, *v);
        }
        cpu.set_sysreg(SysReg::SpEl0, case.sp);
        cpu.set_sysreg(SysReg::TpidrEl0, case.tpidr);
        cpu.set_pc(SLOT);
        let mut kind = Kind::Completed;
        for _ in 0..case.words.len() {
            let exit = cpu.run(&mut self.bus, 1);
            assert!(
                matches!(exit, Exit::Budget | Exit::Wfi | Exit::Wfe),
                "unexpected exit {exit:?} at EL0"
            );
            if cpu.el() == 1 {
                let esr = Esr(cpu.sysreg(SysReg::EsrEl1));
                kind = match esr.ec() {
                    0x00 | 0x18 | 0x07 => Kind::Undefined,
                    0x3C => Kind::Breakpoint,
                    0x24 if esr.0 & 0x3F == 0x21 => return unaligned(),
                    0x24 => Kind::DataFault(cpu.sysreg(SysReg::FarEl1)),
                    ec => panic!("unexpected exception class {ec:#x} (ESR {:#x})", esr.0),
                };
                break;
            }
            if !(SLOT..SLOT + 4 * MAX_WORDS as u64).contains(&cpu.pc()) {
                break;
            }
        }
        let (pc, nzcv) = if kind == Kind::Completed {
            (cpu.pc(), cpu.pstate() & 0xF000_0000)
        } else {
            (
                cpu.sysreg(SysReg::ElrEl1),
                cpu.sysreg(SysReg::SpsrEl1) & 0xF000_0000,
            )
        };
        let mut x = [0u64; 31];
        for (i, v) in x.iter_mut().enumerate() {
            *v = cpu.x(i);
        }
        let data = self.bus.slice(DATA, DATA_LEN).unwrap_or(&[]);
        let diffs = data
            .iter()
            .zip(&self.pattern)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, _))| (u32::try_from(i).unwrap_or(u32::MAX), *a))
            .take(256)
            .collect();
        Outcome {
            kind,
            x,
            sp: cpu.sysreg(SysReg::SpEl0),
            pc,
            nzcv,
            tpidr: cpu.sysreg(SysReg::TpidrEl0),
            diffs,
        }
    }
}

/// Marker outcome for a case this CPU faults as unaligned (not compared).
fn unaligned() -> Outcome {
    Outcome {
        kind: Kind::DataFault(u64::MAX),
        x: [0; 31],
        sp: 0,
        pc: u64::MAX,
        nzcv: 0,
        tpidr: 0,
        diffs: Vec::new(),
    }
}

fn is_unaligned(o: &Outcome) -> bool {
    o.pc == u64::MAX
}

fn require_oracles() -> bool {
    std::env::var("APF_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

fn tool_present(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn build_runner() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("oracle/runner.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("apf-cpu-oracle-runner");
    let status = Command::new("aarch64-linux-gnu-gcc")
        .args([
            "-static",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fno-stack-protector",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run aarch64-linux-gnu-gcc");
    assert!(status.success(), "building {} failed", src.display());
    out
}

fn push_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn run_oracle(runner: &Path, pattern: &[u8], cases: &[&Case]) -> Vec<Outcome> {
    let mut input = Vec::with_capacity(40 + pattern.len() + cases.len() * 296);
    for v in [MAGIC, cases.len() as u64, DATA, DATA_LEN as u64, CODE] {
        push_u64(&mut input, v);
    }
    input.extend_from_slice(pattern);
    for c in cases {
        input.extend_from_slice(&u32::try_from(c.words.len()).unwrap_or(0).to_le_bytes());
        for i in 0..MAX_WORDS {
            input.extend_from_slice(&c.words.get(i).copied().unwrap_or(0).to_le_bytes());
        }
        input.extend_from_slice(&0u32.to_le_bytes());
        for v in c.x {
            push_u64(&mut input, v);
        }
        for v in [c.sp, c.nzcv, c.tpidr] {
            push_u64(&mut input, v);
        }
    }
    let mut child = Command::new("qemu-aarch64")
        .args(["-cpu", "cortex-a76"])
        .arg(runner)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu-aarch64");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("wait for qemu-aarch64");
    writer
        .join()
        .expect("writer thread")
        .expect("write to the oracle");
    assert!(
        output.status.success(),
        "oracle failed: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_results(&output.stdout, cases)
}

fn parse_results(mut out: &[u8], cases: &[&Case]) -> Vec<Outcome> {
    let mut take = |n: usize| -> &[u8] {
        assert!(out.len() >= n, "oracle output is truncated");
        let (head, rest) = out.split_at(n);
        out = rest;
        head
    };
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let mut results = Vec::with_capacity(cases.len());
    for case in cases {
        let head = take(8 + 36 * 8);
        let signo = u32_at(head, 0);
        let n_diffs = u32_at(head, 4) as usize;
        let mut x = [0u64; 31];
        for (i, v) in x.iter_mut().enumerate() {
            *v = u64_at(head, 8 + 8 * i);
        }
        let (sp, pc, pstate, tpidr, fault) = (
            u64_at(head, 8 + 31 * 8),
            u64_at(head, 8 + 32 * 8),
            u64_at(head, 8 + 33 * 8),
            u64_at(head, 8 + 34 * 8),
            u64_at(head, 8 + 35 * 8),
        );
        let body = take(n_diffs * 8);
        let diffs = (0..n_diffs)
            .map(|i| {
                (
                    u32_at(body, 8 * i),
                    u8::try_from(u32_at(body, 8 * i + 4) & 0xFF).unwrap_or(0),
                )
            })
            .collect();
        let words_end = SLOT + 4 * case.words.len() as u64;
        let kind = match signo {
            SIGILL => Kind::Undefined,
            SIGTRAP if (SLOT..words_end).contains(&pc) => Kind::Breakpoint,
            // A fault with PC on one of the words is the word's own data access;
            // anywhere else (including inside a word) it is the fetch after a branch.
            SIGSEGV | SIGBUS if (SLOT..words_end).contains(&pc) && pc & 3 == 0 => {
                Kind::DataFault(fault)
            }
            SIGTRAP | SIGSEGV | SIGBUS => Kind::Completed,
            SIGVTALRM => Kind::Hung,
            other => panic!("oracle reported signal {other}"),
        };
        results.push(Outcome {
            kind,
            x,
            sp,
            pc,
            nzcv: pstate & 0xF000_0000,
            tpidr,
            diffs,
        });
    }
    results
}

/// Differences between the two outcomes, as text; empty when they agree.
fn compare(ours: &Outcome, theirs: &Outcome) -> String {
    let mut d = String::new();
    let same_kind = match (ours.kind, theirs.kind) {
        // Outside the 47-bit user address space QEMU reports no fault address.
        (Kind::DataFault(a), Kind::DataFault(b)) => a >> 47 != 0 || a == b,
        (a, b) => a == b,
    };
    if !same_kind {
        d += &format!(" kind: ours {:?} qemu {:?};", ours.kind, theirs.kind);
    }
    for i in 0..31 {
        if ours.x[i] != theirs.x[i] {
            d += &format!(" x{i}: ours {:#x} qemu {:#x};", ours.x[i], theirs.x[i]);
        }
    }
    for (name, a, b) in [
        ("sp", ours.sp, theirs.sp),
        ("pc", ours.pc, theirs.pc),
        ("nzcv", ours.nzcv, theirs.nzcv),
        ("tpidr", ours.tpidr, theirs.tpidr),
    ] {
        if a != b {
            d += &format!(" {name}: ours {a:#x} qemu {b:#x};");
        }
    }
    // After a fault the architecture allows a partly written pair on QEMU.
    if ours.kind == Kind::Completed && ours.diffs != theirs.diffs {
        d += &format!(" memory: ours {:x?} qemu {:x?};", ours.diffs, theirs.diffs);
    }
    d
}

#[derive(Debug, Default)]
struct Tally {
    compared: usize,
    /// Of the compared: ran to completion, UNDEFINED, breakpoint or data fault.
    completed: usize,
    undefined: usize,
    faulted: usize,
    unaligned: usize,
    tagged: usize,
    unpredictable: usize,
}

#[test]
fn interpreter_matches_qemu_user_mode() {
    let have_tools = tool_present("qemu-aarch64") && tool_present("aarch64-linux-gnu-gcc");
    if !have_tools {
        assert!(
            !require_oracles(),
            "APF_REQUIRE_ORACLES=1 but qemu-aarch64 or aarch64-linux-gnu-gcc is missing"
        );
        println!("skipped: qemu-aarch64 or aarch64-linux-gnu-gcc not installed");
        return;
    }
    let seed = std::env::var("APF_DIFF_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() << 30 ^ u64::from(d.subsec_nanos()))
        });
    let per_class = std::env::var("APF_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES_PER_CLASS);
    println!("differential test seed: APF_DIFF_SEED={seed:#x}");
    let runner = build_runner();
    let mut rng = Rng(seed);
    let pattern: Vec<u8> = (0..DATA_LEN).map(|_| (rng.next() & 0xFF) as u8).collect();
    let mut interp = Interp::new(pattern.clone());

    let mut tallies: BTreeMap<Class, Tally> = BTreeMap::new();
    let mut pending: Vec<(Case, Outcome)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut total_failures = 0usize;
    let mut check = |pending: &mut Vec<(Case, Outcome)>,
                     tallies: &mut BTreeMap<Class, Tally>,
                     failures: &mut Vec<String>| {
        let cases: Vec<&Case> = pending.iter().map(|(c, _)| c).collect();
        let theirs = run_oracle(&runner, &pattern, &cases);
        for ((case, ours), theirs) in pending.iter().zip(&theirs) {
            let tally = tallies.entry(case.class).or_default();
            tally.compared += 1;
            match ours.kind {
                Kind::Completed => tally.completed += 1,
                Kind::Undefined | Kind::Breakpoint => tally.undefined += 1,
                Kind::DataFault(_) | Kind::Hung => tally.faulted += 1,
            }
            let diff = compare(ours, theirs);
            if !diff.is_empty() {
                total_failures += 1;
                if failures.len() < 30 {
                    failures.push(format!("{:?} words {:08x?}:{diff}", case.class, case.words));
                }
            }
        }
        pending.clear();
    };
    for class in CLASSES {
        let (num, den) = class.weight();
        let want = per_class * num / den;
        let mut accepted = 0;
        while accepted < want {
            let case = generate(class, &mut rng);
            let tally = tallies.entry(class).or_default();
            if excluded(&case) {
                tally.unpredictable += 1;
                continue;
            }
            let ours = interp.run(&case);
            if is_unaligned(&ours) {
                tally.unaligned += 1;
                continue;
            }
            if matches!(ours.kind, Kind::DataFault(a) if a >> 56 != 0) {
                tally.tagged += 1;
                continue;
            }
            accepted += 1;
            pending.push((case, ours));
            if pending.len() == BATCH {
                check(&mut pending, &mut tallies, &mut failures);
            }
        }
    }
    if !pending.is_empty() {
        check(&mut pending, &mut tallies, &mut failures);
    }
    let mut total = 0;
    println!(
        "{:<26} {:>9} {:>10} {:>10} {:>8} {:>10} {:>7} {:>14}",
        "class",
        "compared",
        "completed",
        "undef/brk",
        "faulted",
        "unaligned",
        "tagged",
        "unpredictable"
    );
    for (class, t) in &tallies {
        total += t.compared;
        println!(
            "{:<26} {:>9} {:>10} {:>10} {:>8} {:>10} {:>7} {:>14}",
            format!("{class:?}"),
            t.compared,
            t.completed,
            t.undefined,
            t.faulted,
            t.unaligned,
            t.tagged,
            t.unpredictable
        );
    }
    println!("total compared: {total}");
    assert!(
        failures.is_empty(),
        "{total_failures} mismatches against QEMU (APF_DIFF_SEED={seed:#x}), first ones:\n{}",
        failures.join("\n")
    );
    assert!(
        total >= 100_000 || per_class < DEFAULT_CASES_PER_CLASS,
        "only {total} cases compared"
    );
}
