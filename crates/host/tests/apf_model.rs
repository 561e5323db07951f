//! Property test of the APF engine against the guest model in
//! `support/engine_model.rs`: random sequences of faults, completions (some failed,
//! some duplicated), guest entries, page-ready handling, IRQ_ACKs, enable, disable,
//! reset, the VMM re-applying the control word (as a restore does), SEPARATE_READY
//! on and off, PE masking and failing block writes or injections.

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
        1 => Just(Op::VmmReenable),
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

/// A re-enable (as a restore does) while the guest owes an ACK for a page-ready
/// it took, with another task asleep: the guest's ACK must not swallow the
/// wake-all, or that task sleeps for good.
#[test]
fn an_ack_owed_across_a_reenable_leaves_no_sleeper() {
    let fault = |gfn| Op::Fault { gfn, el1: false };
    let ops = [
        // The enable's own wake-all, taken and acknowledged.
        Op::TakeReady,
        Op::Ack,
        fault(1),
        Op::Entry,
        fault(2),
        Op::Entry,
        Op::Complete {
            pick: 0,
            ok: true,
            twice: false,
        },
        Op::TakeReady,
        Op::VmmReenable,
        Op::Ack,
        fault(3),
        Op::Entry,
    ];
    engine_model::run(&ops).unwrap();
}
