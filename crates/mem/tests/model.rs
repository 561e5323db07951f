//! Model-checked (shuttle) access vs eviction vs install of one page across two
//! vCPUs, and the dirty log's rounds against a writing vCPU. Built with `--features shuttle`, the crate's page locks, shootdown
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

use apf_abi::Gpa;
use apf_mem::store::MemStore;
use apf_mem::{AccessSize, GuestMemory, MemConfig, VcpuTlb};
use common::{BASE, read, write};
use shuttle::sync::atomic::{AtomicBool, Ordering};

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

// --- The dirty log under pre-copy rounds -----------------------------------
//
// One vCPU writes a few pages through its TLB (syncing between slices and
// parking for a halt, as the vCPU loop does), and once a round through the
// host path (as device emulation on a vCPU thread does), while a migration
// thread takes the dirty log and copies the pages taken to a destination,
// round after round. After the writer ends, a final take and copy must leave
// the destination equal to guest memory: a write the log missed, or one that
// landed after its page was copied without being logged again, shows as a
// page that differs. Run with room for every page (the log alone: evictions
// would clean pages and hide a missed write) and with one frame short (the
// reclaimer's shootdowns race the log's). Two orderings have windows too
// narrow for these schedules to hit often (a take clears before it shoots
// down; a host write is logged after its bytes): unit tests in `tlb.rs` and
// `memory.rs` pin them down.

const LOG_PAGES: u64 = 3;
const LOG_WRITE_ROUNDS: u64 = 2;
/// Most takes while the writer runs (the migration thread stops taking once
/// the writer has ended).
const LOG_TAKES: usize = 8;
/// Where in page 0 the host-side write goes.
const HOST_WRITE_AT: usize = 16;

fn page_gpa(page: u64) -> Gpa {
    Gpa(BASE + page * PAGE)
}

fn writer(mut tlb: VcpuTlb, done: &AtomicBool) {
    for round in 1..=LOG_WRITE_ROUNDS {
        for page in 0..LOG_PAGES {
            // A slice reads a page, then writes it twice: the writes may hit
            // the entry the read filled, the second the one the first filled.
            // A plain access is no scheduling point for shuttle, so yield
            // between them: other threads run in the middle of a slice on real
            // hardware too.
            let last = read(&mut tlb, BASE + page * PAGE + 8, AccessSize::Double).unwrap();
            assert_eq!(last, round - 1, "page {page} lost a write");
            shuttle::thread::yield_now();
            write(&mut tlb, BASE + page * PAGE, AccessSize::Double, round).unwrap();
            shuttle::thread::yield_now();
            write(&mut tlb, BASE + page * PAGE + 8, AccessSize::Double, round).unwrap();
            tlb.sync();
        }
        let at = Gpa(page_gpa(0).0 + HOST_WRITE_AT as u64);
        tlb.write_bytes(at, &round.to_le_bytes()).unwrap();
        // A halt: parked, the vCPU holds no shootdown up and flushes on waking.
        tlb.park();
        tlb.unpark();
    }
    done.store(true, Ordering::SeqCst);
}

/// Copies the pages taken from the log into `dest`; returns how many.
fn copy_round(mem: &GuestMemory, dest: &mut [Vec<u8>]) -> usize {
    let taken = mem.take_dirty_log();
    for gfn in taken.iter() {
        let page = usize::try_from(gfn.0 - page_gpa(0).gfn().0).unwrap();
        mem.read_bytes(gfn.gpa(), &mut dest[page]).unwrap();
    }
    taken.len()
}

fn dirty_log_scenario(budget_pages: u64) {
    let mut cfg = MemConfig::new(BASE, LOG_PAGES * PAGE, budget_pages * PAGE);
    cfg.batch_pages = 1;
    cfg.reaper_grace = None;
    cfg.io_timeout = Duration::from_secs(3600);
    let mem = GuestMemory::new(cfg, Box::new(MemStore::new(64, 2))).unwrap();
    // Before any vCPU exists: the start's shootdown waits for nobody.
    mem.start_dirty_log();
    let tlb = mem.vcpu_tlb();
    let done = Arc::new(AtomicBool::new(false));
    let vcpu = shuttle::thread::spawn({
        let done = Arc::clone(&done);
        move || writer(tlb, &done)
    });
    let migration = shuttle::thread::spawn({
        let mem = Arc::clone(&mem);
        move || {
            // Round 0 copies everything; later rounds what the log took.
            let mut dest = Vec::new();
            for page in 0..LOG_PAGES {
                let mut d = vec![0u8; 4096];
                mem.read_bytes(page_gpa(page), &mut d).unwrap();
                dest.push(d);
            }
            for _ in 0..LOG_TAKES {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                copy_round(&mem, &mut dest);
            }
            dest
        }
    });
    vcpu.join().unwrap();
    let mut dest = migration.join().unwrap();
    // The source's vCPUs have stopped: the last round.
    copy_round(&mem, &mut dest);
    mem.stop_dirty_log();
    let want = LOG_WRITE_ROUNDS.to_le_bytes();
    let mut page = vec![0u8; 4096];
    for (i, d) in dest.iter().enumerate() {
        mem.read_bytes(page_gpa(i as u64), &mut page).unwrap();
        assert_eq!(page[..16], [want, want].concat(), "page {i}'s last writes");
        assert!(
            *d == page,
            "page {i}: the destination differs from the source"
        );
    }
    assert_eq!(
        dest[0][HOST_WRITE_AT..HOST_WRITE_AT + 8],
        want,
        "the host write"
    );
    assert_eq!(copy_round(&mem, &mut dest), 0, "the checks wrote nothing");
    mem.check_invariants().unwrap();
}

#[test]
fn dirty_log_rounds_random_schedules() {
    shuttle::check_random(|| dirty_log_scenario(LOG_PAGES), 1000);
    shuttle::check_random(|| dirty_log_scenario(LOG_PAGES - 1), 1000);
}

#[test]
fn dirty_log_rounds_pct_schedules() {
    shuttle::check_pct(|| dirty_log_scenario(LOG_PAGES), 1000, 3);
    shuttle::check_pct(|| dirty_log_scenario(LOG_PAGES - 1), 1000, 3);
}
