//! The VMM control API and the guest's ASYNC_PF hypercall with arbitrary values:
//! never a panic, and every refused call leaves the engine and guest memory as they
//! were.

#![no_main]

use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{ApfCommand, ApfControl};
use libfuzzer_sys::fuzz_target;

fn word(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, v) in b.iter_mut().enumerate() {
        *v = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fn state(engine: &ApfControl, vcpu: &FakeVcpu) -> (u64, u32, u32, usize, Vec<u8>, u32) {
    (
        engine.control().encode(),
        engine.sdei_event(),
        engine.ppi(),
        engine.outstanding(),
        vcpu.ram.clone(),
        vcpu.ppi_levels,
    )
}

fuzz_target!(|data: &[u8]| {
    let offered = data.first().is_none_or(|b| b & 0x80 == 0);
    let mut engine = ApfControl::new(1, offered);
    let mut vcpu = FakeVcpu::new(0x2000);
    for call in data.get(1..).unwrap_or_default().chunks(25) {
        let before = state(&engine, &vcpu);
        let kind = call[0];
        let (a, b, c) = (word(call, 1), word(call, 9), word(call, 17));
        if kind & 1 == 0 {
            let cmd = u32::from(kind >> 1) % 9;
            let Ok(command) = ApfCommand::from_raw(cmd, a) else {
                continue;
            };
            let is_get = matches!(
                command,
                ApfCommand::GetVersion
                    | ApfCommand::GetSdei
                    | ApfCommand::GetIrq
                    | ApfCommand::GetControl
            );
            let result = engine.command(&mut vcpu, command);
            if result.is_err() || is_get {
                assert!(
                    state(&engine, &vcpu) == before,
                    "{command:?} -> {result:?} changed state"
                );
            }
        } else {
            let r = engine.hypercall(&mut vcpu, a % 8 | (b & !0xFFFF_FFFF), b, c);
            // ENABLE refused with INVALID_PARAMETER/NOT_REQUIRED/NOT_SUPPORTED changes nothing.
            if a % 8 == 4 && r.status != 0 {
                assert!(
                    state(&engine, &vcpu) == before,
                    "ENABLE({b:#x}, {c:#x}) -> {} changed state",
                    r.status
                );
            }
        }
        assert!(engine.outstanding() <= 64);
    }
});
