//! Whole guests made of random instruction words and random hypercalls, booted
//! on the platform (`run_image`: two vCPUs, guest memory under a small budget,
//! APF offered) for a short time.
//!
//! The image: a prologue that points VBAR_EL1 at vectors which skip the
//! offending instruction (so a random stream keeps going past UNDEFINED words
//! and aborts), the body, then PSCI SYSTEM_OFF. Body items are either raw words
//! or a hypercall: x0..x3 loaded with MOVZ/MOVK from the input (function IDs and
//! arguments biased to the ones the platform implements) and HVC #0.
//!
//! Invariants: the host never panics (a panicking vCPU thread aborts the
//! fuzzer), never touches memory outside its guest RAM mapping (AddressSanitizer
//! watches every host access; the guest reaches only the mapping), the memory
//! system's invariants hold at the end, and the run ends (libFuzzer's -timeout
//! names a hang).

#![no_main]

use apf_abi::platform::{IMAGE_LOAD_ADDR, RAM_BASE, UART_BASE};
use apf_abi::psci::*;
use apf_abi::sdei::*;
use apf_abi::smccc::*;
use apf_vm::config::{ByteSize, StoreConfig, StoreKind, VmConfig};
use apf_vm::{RunEnd, RunOptions, run_image};
use input::Input;
use libfuzzer_sys::fuzz_target;

mod input;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Where the vectors and the body start, in words from the image's base.
const VECTORS: usize = 0x200;
const BODY: usize = 0x400;
/// Most body items per image.
const MAX_ITEMS: usize = 4096;

const ERET_SKIP: [u32; 4] = [
    0xD538_403E, // mrs x30, elr_el1
    0x9100_13DE, // add x30, x30, #4
    0xD518_403E, // msr elr_el1, x30
    0xD69F_03E0, // eret
];
const HVC_0: u32 = 0xD400_0002;
const ISB: u32 = 0xD503_3FDF;
const MSR_VBAR_X0: u32 = 0xD518_C000;
const MOV_SP_X0: u32 = 0x9100_001F;

/// MOVZ/MOVK Xd with all four halfwords of `value`.
fn load(out: &mut Vec<u32>, rd: u32, value: u64) {
    for hw in 0..4u32 {
        let imm = ((value >> (16 * hw)) & 0xFFFF) as u32;
        let op = if hw == 0 { 0xD280_0000 } else { 0xF280_0000 };
        out.push(op | hw << 21 | imm << 5 | rd);
    }
}

const FUNCTIONS: [u32; 24] = [
    PSCI_CPU_ON,
    PSCI_CPU_ON,
    PSCI_CPU_OFF,
    PSCI_AFFINITY_INFO,
    PSCI_SYSTEM_RESET,
    PSCI_FEATURES,
    SMCCC_VERSION,
    VENDOR_HYP_FEATURES,
    VENDOR_HYP_ASYNC_PF,
    VENDOR_HYP_ASYNC_PF,
    VENDOR_HYP_ASYNC_PF,
    VENDOR_HYP_ASYNC_PF,
    SDEI_EVENT_REGISTER,
    SDEI_EVENT_REGISTER,
    SDEI_EVENT_ENABLE,
    SDEI_EVENT_DISABLE,
    SDEI_EVENT_CONTEXT,
    SDEI_EVENT_COMPLETE,
    SDEI_EVENT_COMPLETE_AND_RESUME,
    SDEI_EVENT_UNREGISTER,
    SDEI_PE_MASK,
    SDEI_PE_UNMASK,
    SDEI_PRIVATE_RESET,
    SDEI_VERSION,
];

const VALUES: [u64; 16] = [
    0,
    1,
    4,
    5,
    SDEI_EVENT_ASYNC_PF as u64,
    0x4040_0000,
    IMAGE_LOAD_ADDR + 4 * BODY as u64,
    IMAGE_LOAD_ADDR + 4 * VECTORS as u64,
    (RAM_BASE + 0x10_0000) | 0b101,
    (RAM_BASE + 0x10_0040) | 0b111,
    (RAM_BASE + 0x10_0000) | 0b1,
    RAM_BASE + 2 * MIB,
    UART_BASE,
    0x8000_0001,
    u64::MAX,
    0x1000,
];

impl Input<'_> {
    fn word(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn value(&mut self) -> u64 {
        let b = usize::from(self.byte());
        match b {
            _ if b < VALUES.len() * 8 => VALUES[b % VALUES.len()],
            _ if b < 240 => b as u64,
            _ => u64::from_le_bytes(self.bytes()),
        }
    }
}

fn image(input: &mut Input<'_>) -> Vec<u8> {
    let mut words = Vec::new();
    load(&mut words, 0, IMAGE_LOAD_ADDR + 4 * VECTORS as u64);
    words.push(MSR_VBAR_X0);
    words.push(ISB);
    load(&mut words, 0, RAM_BASE + 4 * MIB);
    words.push(MOV_SP_X0);
    let branch = u32::try_from(BODY - words.len()).expect("a short prologue");
    words.push(0x1400_0000 | branch);
    words.resize(VECTORS, 0);
    for _ in 0..16 {
        words.extend(ERET_SKIP);
        words.resize(words.len() + 0x80 / 4 - ERET_SKIP.len(), 0);
    }
    words.resize(BODY, 0);
    for _ in 0..MAX_ITEMS {
        if input.is_empty() {
            break;
        }
        let tag = input.byte();
        if tag < 0xC0 {
            words.push(input.word());
            continue;
        }
        let function = FUNCTIONS[usize::from(tag) % FUNCTIONS.len()];
        load(&mut words, 0, u64::from(function));
        for rd in 1..4 {
            let v = input.value();
            load(&mut words, rd, v);
        }
        words.push(HVC_0);
    }
    load(&mut words, 0, u64::from(PSCI_SYSTEM_OFF));
    words.push(HVC_0);
    words.push(0x1400_0000); // b .
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let setup = input.byte();
    let image = image(&mut input);
    let config = VmConfig {
        vcpus: 2,
        ram: ByteSize(32 * MIB),
        budget: ByteSize(if setup & 1 == 0 { MIB } else { 32 * MIB }),
        apf: setup & 2 == 0,
        separate_ready: setup & 4 == 0,
        store: StoreConfig {
            kind: StoreKind::Mem,
            latency: apf_vm::config::Span(Duration::ZERO),
            ..StoreConfig::default()
        },
        processes: Vec::new(),
        duration: None,
        seed: u64::from(setup),
    };
    let options = RunOptions {
        timeout: Duration::from_millis(20),
        echo_console: false,
        ..RunOptions::default()
    };
    let run = run_image(&config, &image, options).expect("the VM builds and every vCPU returns");
    assert_eq!(run.mem_invariants, Ok(()), "memory invariants");
    assert!(matches!(
        run.end,
        RunEnd::SystemOff | RunEnd::SystemReset | RunEnd::Timeout
    ));
});
