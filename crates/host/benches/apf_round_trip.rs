//! The engine's own cost per APF round trip with the fake vCPU:
//! fault → not-present → SDEI delivery → guest handler → completion →
//! page-ready → guest PPI handler → IRQ_ACK. No I/O, no CPU: just the engine.

use apf_abi::Gfn;
use apf_abi::control::{CONTROL_ENABLED, CONTROL_SEPARATE_READY};
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_abi::smccc::{ASYNC_PF_FUNC_ENABLE, ASYNC_PF_FUNC_IRQ_ACK};
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{ApfEngine, FaultDecision, ItemHandle};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const BLOCK: u64 = 0x4000_0400;

fn setup(separate: bool) -> (ApfEngine, FakeVcpu) {
    let mut engine = ApfEngine::new(0, true);
    let mut vcpu = FakeVcpu::new(0x1000);
    engine
        .configure(&mut vcpu, SDEI_EVENT_ASYNC_PF, 17)
        .unwrap();
    let flags = CONTROL_ENABLED | if separate { CONTROL_SEPARATE_READY } else { 0 };
    engine.hypercall(&mut vcpu, ASYNC_PF_FUNC_ENABLE, BLOCK | flags, 0);
    vcpu.guest_ppi_handler(BLOCK, separate);
    engine.hypercall(&mut vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
    (engine, vcpu)
}

fn round_trip(engine: &mut ApfEngine, vcpu: &mut FakeVcpu, gfn: u64, separate: bool) {
    let FaultDecision::Async { cookie, .. } = engine.try_async(vcpu, Gfn(gfn)) else {
        panic!("not async");
    };
    vcpu.enter_guest(engine);
    black_box(vcpu.guest_sdei_handler(BLOCK));
    let handle = ItemHandle::from_cookie(cookie).expect("cookie");
    engine.port().complete(handle, true);
    engine.service(vcpu);
    black_box(vcpu.guest_ppi_handler(BLOCK, separate));
    engine.hypercall(vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("apf_round_trip");
    group.throughput(Throughput::Elements(1));
    for separate in [false, true] {
        let name = if separate {
            "separate_ready"
        } else {
            "shared_channel"
        };
        let (mut engine, mut vcpu) = setup(separate);
        let mut gfn = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                gfn = (gfn + 1) & 0xFFFF;
                round_trip(&mut engine, &mut vcpu, gfn, separate);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
