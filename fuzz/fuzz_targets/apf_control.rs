//! The VMM control API and the guest's ASYNC_PF hypercall with arbitrary values,
//! interleaved with faults, fetch completions and guest entries so that commands
//! also land while work is in flight.
//!
//! Invariants: never a panic; every refused call and every GET leaves the engine
//! and guest memory as they were; at most 64 items; the PPI is high exactly while
//! a page-ready awaits IRQ_ACK; and a save (GET_SDEI, GET_IRQ, GET_CONTROL)
//! restored into a fresh engine in the documented order (SET_SDEI, SET_IRQ,
//! SET_CONTROL) reads back the same, as a migration needs.

#![no_main]

use apf_abi::Gfn;
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{ApfCommand, ApfEngine, FaultDecision, ItemHandle};
use libfuzzer_sys::fuzz_target;

fn word(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, v) in b.iter_mut().enumerate() {
        *v = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fn state(engine: &ApfEngine, vcpu: &FakeVcpu) -> (u64, u32, u32, usize, Vec<u8>, u32) {
    (
        engine.control().encode(),
        engine.sdei_event(),
        engine.ppi(),
        engine.outstanding(),
        vcpu.ram.clone(),
        vcpu.ppi_levels,
    )
}

/// What a VMM saves of a vCPU's APF state, in restore order.
fn saved(engine: &mut ApfEngine, vcpu: &mut FakeVcpu) -> Option<[ApfCommand; 3]> {
    let mut get = |c| engine.command(vcpu, c).ok();
    Some([
        ApfCommand::SetSdei(get(ApfCommand::GetSdei)?),
        ApfCommand::SetIrq(get(ApfCommand::GetIrq)?),
        ApfCommand::SetControl(get(ApfCommand::GetControl)?),
    ])
}

/// Restores `save` into a fresh engine over a copy of the guest's memory and
/// checks that it reads back the same.
fn check_restore(engine: &mut ApfEngine, vcpu: &FakeVcpu) {
    let mut source = vcpu.clone();
    let Some(save) = saved(engine, &mut source) else {
        return;
    };
    let mut target = ApfEngine::new(1, true);
    let mut target_vcpu = vcpu.clone();
    for command in save {
        let unset = matches!(command, ApfCommand::SetSdei(0) | ApfCommand::SetIrq(0));
        let r = target.command(&mut target_vcpu, command);
        // A VMM that never configured APF saves zeros, which are not settable.
        assert!(r.is_ok() || unset, "restoring {command:?}: {r:?}");
    }
    let again = saved(&mut target, &mut target_vcpu);
    let before = saved(engine, &mut source);
    if engine.sdei_event() != 0 && engine.ppi() != 0 {
        assert_eq!(again, before, "restored state reads back the same");
    }
}

fuzz_target!(|data: &[u8]| {
    let offered = data.first().is_none_or(|b| b & 0x80 == 0);
    let mut engine = ApfEngine::new(1, offered);
    let mut vcpu = FakeVcpu::new(0x2000);
    let mut inflight: Vec<ItemHandle> = Vec::new();
    for call in data.get(1..).unwrap_or_default().chunks(25) {
        let before = state(&engine, &vcpu);
        let kind = call[0];
        let (a, b, c) = (word(call, 1), word(call, 9), word(call, 17));
        match kind % 8 {
            0 | 1 => {
                let cmd = u32::from(kind >> 3) % 9;
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
            }
            2 | 3 => {
                let r = engine.hypercall(&mut vcpu, (a % 8) | (b & !0xFFFF_FFFF), b, c);
                // ENABLE refused with INVALID_PARAMETER/NOT_REQUIRED/NOT_SUPPORTED
                // changes nothing.
                if a % 8 == 4 && r.status != 0 {
                    assert!(
                        state(&engine, &vcpu) == before,
                        "ENABLE({b:#x}, {c:#x}) -> {} changed state",
                        r.status
                    );
                }
            }
            4 => {
                vcpu.el = u8::from(a & 1 == 1);
                if let FaultDecision::Async { cookie, .. } =
                    engine.try_async(&mut vcpu, Gfn(0x40000 + b % 128))
                {
                    inflight.push(ItemHandle::from_cookie(cookie).expect("own cookie"));
                }
                engine.end_halt();
            }
            5 => {
                if !inflight.is_empty() {
                    let k = usize::try_from(a % inflight.len() as u64).unwrap_or(0);
                    let h = inflight.swap_remove(k);
                    engine.port().complete(h, b & 1 == 0);
                }
            }
            6 => {
                engine.service(&mut vcpu);
                vcpu.enter_guest(&mut engine);
            }
            _ => {
                let control = engine.control();
                if control.enabled {
                    vcpu.guest_sdei_handler(control.gpa);
                    vcpu.guest_ppi_handler(control.gpa, control.separate_ready);
                }
            }
        }
        assert!(engine.outstanding() <= 64);
        let ppi = engine.ppi();
        assert_eq!(
            ppi != 0 && vcpu.ppi(ppi),
            engine.page_ready_pending().is_some(),
            "the page-ready line is high exactly while a page-ready awaits IRQ_ACK"
        );
        assert_eq!(vcpu.ppi_levels & !(1u32 << ppi), 0, "no other line raised");
        check_restore(&mut engine, &vcpu);
    }
});
