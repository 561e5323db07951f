//! `run_linux` with a stand-in kernel: an Image whose code checks the boot
//! protocol (x0 points at a device tree, x1..x3 are 0), prints a script on the
//! PL011 and then powers off, resets or spins. The console protocol, the
//! process outcomes and the ways a run ends are checked without Linux.

use apf_vm::config::{ByteSize, ProcessConfig, StoreConfig, StoreKind, VmConfig, WorkloadKind};
use apf_vm::workload::expected_checksum;
use apf_vm::{LinuxGuest, RunEnd, RunOptions, boot_block, run_linux};
use std::time::Duration;

/// What the stand-in does after printing.
#[derive(Clone, Copy)]
enum Then {
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET.
    Reset,
    /// Spin forever.
    Spin,
}

/// The code at 0x40 (assembled with aarch64-linux-gnu-as):
/// ```text
///     ldr w5, [x0]; mov w6, #0xedfe0dd0 (movz+movk); cmp w5, w6; b.ne spin
///     orr x7, x1, x2; orr x7, x7, x3; cbnz x7, spin
///     mov x0, #0x9000000; adr x1, msg
/// 1:  ldrb w2, [x1], #1; cbz w2, 2f; strb w2, [x0]; b 1b
/// 2:  mov w0, #0x84000000; add w0, w0, #8 (or #9); hvc #0 (or b .)
/// spin: b .
/// msg: .asciz "..."
/// ```
const CODE: [u32; 18] = [
    0xb940_0005,
    0x5281_ba06,
    0x72bd_bfc6,
    0x6b06_00bf,
    0x5400_01a1,
    0xaa02_0027,
    0xaa03_00e7,
    0xb500_0147,
    0xd2a1_2000,
    0x1000_0121,
    0x3840_1422,
    0x3400_0062,
    0x3900_0002,
    0x17ff_fffd,
    0x52b0_8000,
    0x1100_2000,
    0xd400_0002,
    0x1400_0000,
];
const ADD_8: usize = 15;
const HVC: usize = 16;

fn stand_in_kernel(message: &str, then: Then) -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b 0x40
    bytes[0x10..0x18].copy_from_slice(&0x10_0000u64.to_le_bytes()); // image_size
    bytes[0x18..0x20].copy_from_slice(&0b1010u64.to_le_bytes()); // LE, 4K, anywhere
    bytes[0x38..0x3C].copy_from_slice(b"ARM\x64");
    let mut code = CODE;
    match then {
        Then::PowerOff => {}
        Then::Reset => code[ADD_8] = 0x1100_2400, // add w0, w0, #9
        Then::Spin => code[HVC] = 0x1400_0000,    // b .
    }
    for word in code {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    bytes.extend_from_slice(message.as_bytes());
    bytes.push(0);
    bytes
}

fn config(processes: Vec<ProcessConfig>) -> VmConfig {
    VmConfig {
        vcpus: 2,
        ram: ByteSize(64 << 20),
        budget: ByteSize(64 << 20),
        store: StoreConfig {
            kind: StoreKind::Mem,
            ..StoreConfig::default()
        },
        processes,
        seed: 3,
        ..VmConfig::default()
    }
}

fn calc(vcpu: u32, work: u64) -> ProcessConfig {
    ProcessConfig {
        kind: WorkloadKind::Calc,
        vcpu,
        mem: ByteSize(0),
        work,
        write_pct: 100,
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn run(config: &VmConfig, message: &str, then: Then) -> apf_vm::VmRun {
    let guest = LinuxGuest {
        kernel: stand_in_kernel(message, then),
        initrd: Some(vec![0x5a; 4096]),
        append: "console=ttyAMA0".into(),
    };
    run_linux(
        config,
        guest,
        RunOptions {
            timeout: TIMEOUT,
            echo_console: false,
            ..Default::default()
        },
    )
    .expect("the VM runs")
}

#[test]
fn the_inits_lines_become_process_outcomes() {
    let c = config(vec![calc(0, 40), calc(1, 40), calc(0, 0)]);
    let block = boot_block(&c);
    let done = expected_checksum(&block.procs[0], 40).unwrap();
    let at_3 = expected_checksum(&block.procs[1], 3).unwrap();
    let script = format!(
        "[    0.000000] Booting Linux on physical CPU 0x0\n\
         apf-proc 1 killed 9 3 {at_3:016x}\n\
         [    1.000000] random: crng init done apf-proc 0 done 40 {done:016x}\n\
         apf-init done\n"
    );
    let r = run(&c, &script, Then::PowerOff);
    assert_eq!(r.end, RunEnd::SystemOff, "console:\n{}", r.uart);
    assert!(r.uart.contains("apf-init done"), "{}", r.uart);
    assert_eq!(r.kernel_panic, None);
    let p = &r.processes;
    assert_eq!(p.len(), 3);
    assert_eq!(
        (p[0].progress, p[0].checksum, p[0].checksum_ok),
        (40, done, true)
    );
    assert!(p[1].killed() && p[1].checksum_ok, "{:?}", p[1]);
    assert_eq!(p[1].kill_signal, Some(9));
    assert!(!p[2].killed() && !p[2].checksum_ok, "no line: not finished");
    assert_eq!(p[2].ended_at, None);
}

#[test]
fn a_panic_ends_the_run_without_waiting_for_the_timeout() {
    let c = config(vec![]);
    let line = "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000004";
    let script = format!(
        "[    2.000000] {line}\n[    2.000001] CPU: 0 PID: 1 Comm: init\n[    2.000002] ---[ end {line} ]---\n"
    );
    let r = run(&c, &script, Then::Spin);
    assert_eq!(r.end, RunEnd::KernelPanic, "{}", r.uart);
    assert_eq!(r.kernel_panic.as_deref(), Some(line));
    assert!(r.wall < TIMEOUT / 2, "ended after {:?}", r.wall);

    // panic=-1: the kernel resets after the panic line.
    let r = run(&c, &format!("{line}\n"), Then::Reset);
    assert_eq!(r.end, RunEnd::KernelPanic);
    assert_eq!(r.kernel_panic.as_deref(), Some(line));
}

#[test]
fn a_reset_without_a_panic_is_a_reset() {
    let r = run(&config(vec![]), "reboot: Restarting system\n", Then::Reset);
    assert_eq!(r.end, RunEnd::SystemReset, "{}", r.uart);
    assert_eq!(r.kernel_panic, None);
    assert!(r.processes.is_empty());
}
