//! DESIGN §5.8: every engine decision is a `tracing` event named after KVM's
//! tracepoints. In its own test binary because tracing caches callsite interest
//! process-wide, which races with tests running on threads without a subscriber.

use apf_abi::Gfn;
use apf_abi::control::CONTROL_ENABLED;
use apf_abi::sdei::SDEI_EVENT_ASYNC_PF;
use apf_abi::smccc::ASYNC_PF_FUNC_IRQ_ACK;
use apf_host::apf::fake::FakeVcpu;
use apf_host::apf::{ApfEngine, FaultDecision, ItemHandle};

/// A subscriber that records event names, to check that decisions are traced.
mod trace_capture {
    use std::sync::{Arc, Mutex};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    #[derive(Clone, Default)]
    pub struct Names(pub Arc<Mutex<Vec<String>>>);

    impl Subscriber for Names {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            self.0
                .lock()
                .unwrap()
                .push(event.metadata().name().to_string());
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

#[test]
fn c8_every_decision_is_a_named_trace_event() {
    let names = trace_capture::Names::default();
    tracing::subscriber::with_default(names.clone(), || {
        let block = 0x4000_1000;
        let mut engine = ApfEngine::new(0, true);
        let mut vcpu = FakeVcpu::new(0x10000);
        engine
            .configure(&mut vcpu, SDEI_EVENT_ASYNC_PF, 17)
            .unwrap();
        engine
            .guest_enable(&mut vcpu, block | CONTROL_ENABLED)
            .unwrap();
        vcpu.guest_ppi_handler(block, false);
        engine.hypercall(&mut vcpu, ASYNC_PF_FUNC_IRQ_ACK, 0, 0);
        vcpu.el = 1;
        engine.try_async(&mut vcpu, Gfn(9));
        vcpu.el = 0;
        let FaultDecision::Async { cookie, .. } = engine.try_async(&mut vcpu, Gfn(1)) else {
            panic!("expected an async fault");
        };
        vcpu.enter_guest(&mut engine);
        vcpu.guest_sdei_handler(block);
        assert_eq!(engine.try_async(&mut vcpu, Gfn(1)), FaultDecision::Halt);
        engine
            .port()
            .complete(ItemHandle::from_cookie(cookie).unwrap(), true);
        engine.service(&mut vcpu);
    });
    let got = names.0.lock().unwrap().clone();
    for want in [
        "try_async_get_page",
        "async_pf_not_present",
        "async_pf_repeated_fault",
        "async_pf_completed",
        "async_pf_ready",
    ] {
        assert!(got.iter().any(|n| n == want), "no {want} event in {got:?}");
    }
}
