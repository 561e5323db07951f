//! Model-checked (shuttle) access vs eviction vs install of one page across two
//! vCPUs. Built with `--features shuttle`, the crate's page locks, shootdown
//! epochs, fetch pipeline, reclaimer and reaper run on shuttle's primitives, so
//! shuttle explores interleavings of the real protocol code.
//!
//! Guest RAM is 3 pages with a budget of 2 and a reclaimer that evicts down to an
//! empty budget each time it runs, so page 0 is evicted, rescued, dropped and
//! fetched back under every schedule. Both vCPUs keep a counter in page 0 and read
//! each other's: a lost write or a stale or torn read shows as a counter going
//! backwards or a final value missing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use apf_mem::store::MemStore;
use apf_mem::{AccessSize, GuestMemory, MemConfig, VcpuTlb};
use common::{BASE, read, write};

const PAGE: u64 = 4096;
const ROUNDS: u64 = 3;

fn vcpu(mut tlb: VcpuTlb, me: u64) {
    let mine = BASE + 8 * me;
    let theirs = BASE + 8 * (1 - me);
    let other_page = BASE + PAGE * (1 + me);
    let mut last_seen = 0;
    for round in 1..=ROUNDS {
        write(&mut tlb, mine, AccessSize::Double, round).unwrap();
        tlb.sync();
        // Touch another page: with two frames, someone's page 0 has to go.
        write(&mut tlb, other_page, AccessSize::Double, round).unwrap();
        tlb.sync();
        assert_eq!(
            read(&mut tlb, mine, AccessSize::Double).unwrap(),
            round,
            "vCPU {me} lost its own write"
        );
        let seen = read(&mut tlb, theirs, AccessSize::Double).unwrap();
        assert!(
            seen >= last_seen && seen <= ROUNDS,
            "vCPU {me} saw {seen} after {last_seen}"
        );
        last_seen = seen;
        tlb.sync();
    }
}

fn scenario() {
    let mut cfg = MemConfig::new(BASE, 3 * PAGE, 2 * PAGE);
    cfg.batch_pages = 1;
    cfg.reaper_grace = None;
    cfg.io_timeout = Duration::from_secs(3600);
    let mem = GuestMemory::new(cfg, Box::new(MemStore::new(64, 2))).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|me| {
            let tlb = mem.vcpu_tlb();
            shuttle::thread::spawn(move || vcpu(tlb, me))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut tlb = mem.vcpu_tlb();
    for me in 0..2 {
        assert_eq!(
            read(&mut tlb, BASE + 8 * me, AccessSize::Double).unwrap(),
            ROUNDS
        );
        assert_eq!(
            read(&mut tlb, BASE + PAGE * (1 + me), AccessSize::Double).unwrap(),
            ROUNDS
        );
    }
    drop(tlb);
    mem.check_invariants().unwrap();
    let m = mem.metrics();
    assert!(m.evict.chosen > 0, "the scenario must evict: {m:?}");
    drop(Arc::clone(&mem));
}

#[test]
fn access_evict_install_random_schedules() {
    shuttle::check_random(scenario, 5000);
}

#[test]
fn access_evict_install_pct_schedules() {
    shuttle::check_pct(scenario, 5000, 3);
}
