//! The APF engine driven by arbitrary operation sequences against the guest model
//! the property test uses (`crates/host/tests/support/engine_model.rs`).

#![no_main]

#[path = "../../crates/host/tests/support/engine_model.rs"]
mod engine_model;

use engine_model::Op;
use libfuzzer_sys::fuzz_target;

fn decode(data: &[u8]) -> Vec<Op> {
    data.chunks(2)
        .map(|c| {
            let (a, b) = (c[0], c.get(1).copied().unwrap_or(0));
            match a % 13 {
                0..=2 => Op::Fault {
                    gfn: u64::from(b % 96),
                    el1: a & 0x80 != 0 && b & 1 != 0,
                },
                3 | 4 => Op::Complete {
                    pick: usize::from(b),
                    ok: b & 0x80 == 0 || a & 0x40 == 0,
                    twice: b & 0x40 != 0,
                },
                5 => Op::Entry,
                6 => Op::TakeReady,
                7 => Op::Ack,
                8 => {
                    if b & 1 == 0 {
                        Op::SpuriousAck
                    } else {
                        Op::Enable {
                            separate: b & 2 != 0,
                        }
                    }
                }
                9 => match b % 3 {
                    0 => Op::Disable,
                    1 => Op::Reset,
                    _ => Op::VmmReenable,
                },
                10 => Op::MaskPe(b & 1 != 0),
                11 => Op::FailWrites(b & 1 != 0),
                _ => Op::FailInject(b & 1 != 0),
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let ops = decode(data);
    if let Err(e) = engine_model::run(&ops) {
        panic!("{e}\nops: {ops:?}");
    }
});
