//! Property test against a plain map: several vCPU threads read and write unique
//! stamps under heavy eviction pressure and injected store faults (errors, short
//! reads, lost and duplicated completions, a full disk); no read returns a torn,
//! stale or foreign value, and afterwards every word equals the oracle.
//!
//! Each 8-byte word has one writer (word % threads), so the oracle is exact: the
//! writer's last stamp. Stamps grow per writer, so a reader seeing a word's value
//! go backwards has read stale data.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use apf_mem::store::{FaultConfig, FaultyStore, MemStore};
use apf_mem::{AccessSize, GuestMemory, MemConfig, MemMetrics, VcpuTlb};
use common::{AccessFail, BASE, read, write};
use proptest::prelude::*;

const PAGE: u64 = 4096;
const THREADS: u64 = 3;
/// Words used per page (spread over the page).
const WORDS_PER_PAGE: u64 = 4;

fn word_gpa(word: u64) -> u64 {
    let page = word / WORDS_PER_PAGE;
    BASE + page * PAGE + (word % WORDS_PER_PAGE) * 1000 / 8 * 8
}

fn stamp(writer: u64, seq: u64) -> u64 {
    (writer + 1) << 32 | seq
}

/// Retries an access whose fetch failed (an injected error): the page is still
/// in the store, so a later attempt must succeed.
fn retry<T>(tlb: &mut VcpuTlb, mut f: impl FnMut(&mut VcpuTlb) -> Result<T, AccessFail>) -> T {
    for _ in 0..10_000 {
        match f(tlb) {
            Ok(v) => return v,
            Err(AccessFail::Fetch(_)) => {
                tlb.sync();
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    panic!("an access kept failing");
}

fn run(
    ops: Vec<Vec<(u64, bool)>>,
    pages: u64,
    budget: u64,
    faults: FaultConfig,
) -> Result<MemMetrics, TestCaseError> {
    let words = pages * WORDS_PER_PAGE;
    let mut cfg = MemConfig::new(BASE, pages * PAGE, budget * PAGE);
    cfg.io_timeout = Duration::from_millis(20);
    let store = FaultyStore::new(MemStore::new(1 << 16, 4), faults);
    let mem = GuestMemory::new(cfg, Box::new(store)).unwrap();
    let handles: Vec<_> = ops
        .into_iter()
        .enumerate()
        .map(|(t, ops)| {
            let mut tlb = mem.vcpu_tlb();
            std::thread::spawn(move || {
                let t = t as u64;
                let mut seq = 0;
                let mut mine: HashMap<u64, u64> = HashMap::new();
                let mut seen: HashMap<u64, u64> = HashMap::new();
                for (w, is_write) in ops {
                    let w = w % words;
                    let gpa = word_gpa(w);
                    if is_write && w % THREADS == t {
                        seq += 1;
                        retry(&mut tlb, |tlb| {
                            write(tlb, gpa, AccessSize::Double, stamp(t, seq))
                        });
                        mine.insert(w, stamp(t, seq));
                    } else {
                        let v = retry(&mut tlb, |tlb| read(tlb, gpa, AccessSize::Double));
                        let owner = w % THREADS;
                        if owner == t {
                            assert_eq!(
                                v,
                                mine.get(&w).copied().unwrap_or(0),
                                "thread {t} word {w}: own write lost"
                            );
                        } else {
                            assert!(
                                v == 0 || v >> 32 == owner + 1,
                                "word {w}: {v:#x} is not its writer's stamp"
                            );
                            let last = seen.entry(w).or_insert(0);
                            assert!(v >= *last, "word {w} went back from {:#x} to {v:#x}", *last);
                            *last = v;
                        }
                    }
                    tlb.sync();
                }
                mine
            })
        })
        .collect();
    let mut oracle: HashMap<u64, u64> = HashMap::new();
    for h in handles {
        oracle.extend(
            h.join()
                .map_err(|_| TestCaseError::fail("a vCPU thread panicked"))?,
        );
    }
    let mut tlb = mem.vcpu_tlb();
    for w in 0..words {
        let v = retry(&mut tlb, |tlb| read(tlb, word_gpa(w), AccessSize::Double));
        prop_assert_eq!(v, oracle.get(&w).copied().unwrap_or(0), "word {}", w);
        tlb.sync();
    }
    drop(tlb);
    mem.check_invariants()
        .map_err(|e| TestCaseError::fail(format!("{e}: {:?}", mem.metrics())))?;
    let m = mem.metrics();
    prop_assert!(m.frames_used <= budget + m.frames_over_budget);
    Ok(m)
}

fn thread_ops() -> impl Strategy<Value = Vec<Vec<(u64, bool)>>> {
    proptest::collection::vec(
        proptest::collection::vec((0u64..1 << 20, any::<bool>()), 50..200),
        3usize,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matches_a_map_under_eviction(ops in thread_ops(), pages in 4u64..48, budget in 1u64..6) {
        let m = run(ops, pages, budget, FaultConfig::default())?;
        prop_assert_eq!(m.io.read_errors + m.io.write_errors + m.io.stray_completions, 0);
    }

    #[test]
    fn matches_a_map_under_eviction_and_store_faults(ops in thread_ops(), pages in 4u64..48, budget in 1u64..6, seed: u64) {
        let faults = FaultConfig {
            seed,
            read_error: 0.05,
            write_error: 0.05,
            short_read: 0.05,
            lost: 0.02,
            duplicate: 0.05,
            ..FaultConfig::default()
        };
        run(ops, pages, budget, faults)?;
    }

    #[test]
    fn matches_a_map_when_the_store_fills(ops in thread_ops(), pages in 4u64..48, budget in 1u64..6, full in 0u32..8) {
        let faults = FaultConfig {
            full_from_slot: Some(full),
            ..FaultConfig::default()
        };
        run(ops, pages, budget, faults)?;
    }
}

/// A store with room for 3 pages under a 4-page budget and 40 pages written:
/// every page written is read back intact, the pages that could not leave stay
/// resident beyond the budget, and the report says so and why.
#[test]
fn a_full_store_loses_nothing_and_overruns_the_budget() {
    let ops: Vec<(u64, bool)> = (0..40 * WORDS_PER_PAGE)
        .map(|w| (w * THREADS, true))
        .collect();
    let faults = FaultConfig {
        full_from_slot: Some(3),
        ..FaultConfig::default()
    };
    let m = run(vec![ops], 40, 4, faults).unwrap();
    assert!(m.io.write_errors > 0, "{m:?}");
    assert!(m.frames_over_budget > 0, "{m:?}");
    assert!(m.frames_peak > m.budget_pages, "{m:?}");
    let why = m.over_budget_reason.unwrap_or_default();
    assert!(why.contains("No space left on device"), "{why}");
}

/// The faults really happen (a fixed seed and one vCPU, so the run is the same
/// each time) and are all survived.
#[test]
fn every_kind_of_store_fault_is_survived() {
    let ops: Vec<(u64, bool)> = (0..3000u64)
        .map(|i| ((i * 7919) % 160 * THREADS, i % 3 != 0))
        .collect();
    let faults = FaultConfig {
        seed: 42,
        read_error: 0.1,
        write_error: 0.1,
        short_read: 0.1,
        lost: 0.05,
        duplicate: 0.1,
        ..FaultConfig::default()
    };
    let m = run(vec![ops], 40, 4, faults).unwrap();
    assert!(m.io.read_errors > 0, "{m:?}");
    assert!(m.io.write_errors > 0, "{m:?}");
    assert!(m.io.timeouts > 0, "lost completions time out: {m:?}");
    assert!(m.io.stray_completions > 0, "duplicates are ignored: {m:?}");
    assert!(m.fetch.failed > 0 && m.evict.aborted > 0, "{m:?}");
}
