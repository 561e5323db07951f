//! Property test of the APF engine against the guest model in
//! `support/engine_model.rs`: random sequences of faults, completions (some failed,
//! some duplicated), guest entries, page-ready handling, IRQ_ACKs, enable, disable,
//! reset, SEPARATE_READY on and off, PE masking and failing block writes or
//! injections.

#[path = "support/engine_model.rs"]
mod engine_model;

use engine_model::Op;
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..96, prop::bool::weighted(0.1)).prop_map(|(gfn, el1)| Op::Fault { gfn, el1 }),
        5 => (any::<usize>(), prop::bool::weighted(0.9), prop::bool::weighted(0.1))
            .prop_map(|(pick, ok, twice)| Op::Complete { pick, ok, twice }),
        5 => Just(Op::Entry),
        4 => Just(Op::TakeReady),
        4 => Just(Op::Ack),
        1 => Just(Op::SpuriousAck),
        1 => any::<bool>().prop_map(|separate| Op::Enable { separate }),
        1 => Just(Op::Disable),
        1 => Just(Op::Reset),
        1 => any::<bool>().prop_map(Op::MaskPe),
        1 => prop::bool::weighted(0.3).prop_map(Op::FailWrites),
        1 => prop::bool::weighted(0.3).prop_map(Op::FailInject),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_guest_model(ops in prop::collection::vec(op(), 1..160)) {
        if let Err(e) = engine_model::run(&ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}
