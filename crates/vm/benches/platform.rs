//! Platform costs measured on whole VMs:
//! - exits per second of a guest that spins on HVC (SMCCC_VERSION), the cost of
//!   one trip guest → host → guest through the run loop and the SMCCC dispatcher;
//! - halt-to-wake latency of a vCPU in WFI woken by another vCPU's SGI.

use apf_vm::config::{ByteSize, StoreConfig, StoreKind, VmConfig};
use apf_vm::{RunEnd, RunOptions, run_image};
use criterion::{Criterion, criterion_group, criterion_main};
use std::time::{Duration, Instant};

/// `count` HVC #0 calls of SMCCC_VERSION, then PSCI SYSTEM_OFF.
fn hvc_spin_image(count: u16) -> Vec<u8> {
    let words: [u32; 9] = [
        0xD280_0001 | (u32::from(count) << 5), // movz x1, #count
        0xD2B0_0000,                           // movz x0, #0x8000, lsl #16 (SMCCC_VERSION)
        0xD400_0002,                           // hvc #0
        0xF100_0421,                           // subs x1, x1, #1
        0x54FF_FFA1,                           // b.ne -12 (back to the movz x0)
        0xD280_0100,                           // movz x0, #0x8
        0xF2B0_8000,                           // movk x0, #0x8400, lsl #16 (SYSTEM_OFF)
        0xD400_0002,                           // hvc #0
        0x1400_0000,                           // b .
    ];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn config(vcpus: u32) -> VmConfig {
    VmConfig {
        vcpus,
        ram: ByteSize(64 << 20),
        budget: ByteSize(64 << 20),
        store: StoreConfig {
            kind: StoreKind::Mem,
            ..StoreConfig::default()
        },
        processes: Vec::new(),
        ..VmConfig::default()
    }
}

fn exits(c: &mut Criterion) {
    const CALLS: u16 = 50_000;
    let image = hvc_spin_image(CALLS);
    let config = config(1);
    let mut group = c.benchmark_group("platform");
    group.sample_size(10);
    group.bench_function("hvc_exit_round_trip", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let run = run_image(&config, &image, RunOptions::default()).expect("runs");
                assert_eq!(run.end, RunEnd::SystemOff);
                assert!(run.vcpus[0].stats.exits.hvc > u64::from(CALLS));
                total += t.elapsed() / u32::from(CALLS);
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, exits);
criterion_main!(benches);
