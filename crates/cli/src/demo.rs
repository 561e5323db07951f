//! `apf engine-demo`: the APF engine walked through a few faults with a fake vCPU.

use apf_abi::Gfn;
use apf_abi::control::{CONTROL_ENABLED, CONTROL_SEPARATE_READY};
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_abi::smccc::{ASYNC_PF_FUNC_ENABLE, ASYNC_PF_FUNC_IRQ_ACK};
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{ApfEngine, FaultDecision, ItemHandle};

/// Takes `faults` faults, completes them in reverse on another thread, and prints
/// every step and the counters.
pub fn engine_demo(faults: u64) -> Result<(), String> {
    const BLOCK: u64 = 0x4000_0400;
    let mut engine = ApfEngine::new(0, true);
    let mut vcpu = FakeVcpu::new(0x1000);
    engine
        .configure(&mut vcpu, SDEI_EVENT_ASYNC_PF, 17)
        .map_err(|e| e.to_string())?;
    let raw = BLOCK | CONTROL_ENABLED | CONTROL_SEPARATE_READY;
    let r = engine.hypercall(&mut vcpu, ASYNC_PF_FUNC_ENABLE, raw, 0);
    println!("guest ENABLE({raw:#x}) -> {}", r.status);
    let mut in_flight = Vec::new();
    for gfn in 0..faults {
        match engine.try_async(&mut vcpu, Gfn(0x40000 + gfn)) {
            FaultDecision::Async { token, cookie } => {
                println!(
                    "fault gfn {:#x}: not-present, token {:#x}",
                    0x40000 + gfn,
                    token.0
                );
                vcpu.enter_guest(&mut engine);
                vcpu.guest_sdei_handler(BLOCK);
                in_flight.push(cookie);
            }
            other => println!("fault gfn {:#x}: {other:?}", 0x40000 + gfn),
        }
    }
    let port = std::sync::Arc::clone(engine.port());
    let worker = std::thread::spawn(move || {
        for cookie in in_flight.into_iter().rev() {
            if let Some(handle) = ItemHandle::from_cookie(cookie) {
                port.complete(handle, true);
            }
        }
    });
    worker
        .join()
        .map_err(|_| "the completion thread panicked".to_string())?;
    loop {
        engine.service(&mut vcpu);
        if !vcpu.ppi(17) {
            break;
        }
        if let Some(token) = vcpu.guest_ppi_handler(BLOCK, true) {
            println!("page-ready token {:#x}", token.0);
        }
        engine.hypercall(&mut vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
    }
    println!("{:#?}", engine.counters().snapshot());
    Ok(())
}
