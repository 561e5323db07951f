//! Guest memory with the in-memory store: faults, dirty tracking, eviction under
//! pressure, host access, asynchronous fetches, bad configurations.

mod common;

use std::sync::{Arc, Mutex};

use apf_abi::{Gfn, Gpa};
use apf_mem::store::MemStore;
use apf_mem::{
    AccessSize, FetchError, FetchSink, FetchStart, GuestMemory, HostAccessError, MemConfig,
    MemError, Resolve, TlbMiss,
};
use common::{BASE, read, write};

const PAGE: u64 = 4096;

fn memory(pages: u64, budget_pages: u64) -> Arc<GuestMemory> {
    let cfg = MemConfig::new(BASE, pages * PAGE, budget_pages * PAGE);
    GuestMemory::new(cfg, Box::new(MemStore::new(1 << 20, 8))).expect("guest memory")
}

#[test]
fn untouched_pages_read_zero_and_cost_no_io() {
    let mem = memory(16, 16);
    let mut tlb = mem.vcpu_tlb();
    assert_eq!(tlb.read(BASE, AccessSize::Double), Err(TlbMiss));
    assert_eq!(tlb.resolve(Gpa(BASE + 8), false), Resolve::Mapped);
    assert_eq!(tlb.read(BASE + 8, AccessSize::Double), Ok(0));
    assert_eq!(tlb.fetch_insn(BASE + 4), Ok(0));
    let m = mem.metrics();
    assert_eq!(m.faults.zero_fill, 1);
    assert_eq!(m.io.reads_submitted, 0);
    assert_eq!(m.pages.resident, 1);
    assert_eq!(m.pages.untouched, 15);
    drop(tlb);
    mem.check_invariants().unwrap();
}

#[test]
fn first_write_to_a_clean_page_faults_and_marks_it_dirty() {
    let mem = memory(4, 4);
    let mut tlb = mem.vcpu_tlb();
    assert_eq!(tlb.resolve(Gpa(BASE), false), Resolve::Mapped);
    // Mapped for reading only: the write misses.
    assert_eq!(tlb.write(BASE, AccessSize::Word, 7), Err(TlbMiss));
    assert_eq!(tlb.resolve(Gpa(BASE), true), Resolve::Mapped);
    tlb.write(BASE, AccessSize::Word, 0xDEAD_BEEF).unwrap();
    assert_eq!(tlb.read(BASE, AccessSize::Word), Ok(0xDEAD_BEEF));
    assert_eq!(tlb.read(BASE, AccessSize::Byte), Ok(0xEF));
    assert_eq!(tlb.read(BASE + 2, AccessSize::Half), Ok(0xDEAD));
    assert_eq!(mem.metrics().faults.write_protect, 1);
    // A dirty page is mapped writable straight away on the next fill.
    tlb.flush();
    assert_eq!(tlb.resolve(Gpa(BASE), false), Resolve::Mapped);
    tlb.write(BASE + 8, AccessSize::Double, 1).unwrap();
}

#[test]
fn misaligned_accesses_never_hit() {
    let mem = memory(1, 1);
    let mut tlb = mem.vcpu_tlb();
    assert_eq!(tlb.resolve(Gpa(BASE), true), Resolve::Mapped);
    assert_eq!(tlb.read(BASE + 1, AccessSize::Half), Err(TlbMiss));
    assert_eq!(tlb.read(BASE + 4, AccessSize::Double), Err(TlbMiss));
    assert_eq!(tlb.write(BASE + 2, AccessSize::Word, 0), Err(TlbMiss));
    assert_eq!(tlb.compare_exchange_pair(BASE + 8, 0, 1), Err(TlbMiss));
    assert!(tlb.read(BASE + 4, AccessSize::Word).is_ok());
}

#[test]
fn atomics_act_on_guest_memory() {
    let mem = memory(2, 2);
    let mut tlb = mem.vcpu_tlb();
    write(&mut tlb, BASE, AccessSize::Double, 5).unwrap();
    assert_eq!(tlb.compare_exchange(BASE, AccessSize::Double, 5, 9), Ok(5));
    assert_eq!(tlb.compare_exchange(BASE, AccessSize::Double, 5, 11), Ok(9));
    assert_eq!(tlb.atomic_rmw(BASE, AccessSize::Byte, |v| v + 0x1FF), Ok(9));
    assert_eq!(
        read(&mut tlb, BASE, AccessSize::Double),
        Ok(8),
        "byte add wraps within the byte"
    );
    let old = (1u128 << 64) | 8;
    write(&mut tlb, BASE + 8, AccessSize::Double, 1).unwrap();
    assert_eq!(tlb.compare_exchange_pair(BASE, old, 42 << 64 | 7), Ok(old));
    assert_eq!(read(&mut tlb, BASE, AccessSize::Double), Ok(7));
    assert_eq!(read(&mut tlb, BASE + 8, AccessSize::Double), Ok(42));
}

#[test]
fn addresses_outside_ram_are_not_ram() {
    let mem = memory(2, 2);
    let mut tlb = mem.vcpu_tlb();
    assert_eq!(tlb.resolve(Gpa(BASE - 8), false), Resolve::NotRam);
    assert_eq!(tlb.resolve(Gpa(BASE + 2 * PAGE), false), Resolve::NotRam);
    assert!(mem.contains(Gpa(BASE), 2 * PAGE));
    assert!(!mem.contains(Gpa(BASE), 2 * PAGE + 1));
    assert!(!mem.contains(Gpa(u64::MAX - 1), 4));
    let mut buf = [0u8; 8];
    assert_eq!(
        mem.read_bytes(Gpa(BASE + 2 * PAGE - 4), &mut buf),
        Err(HostAccessError::NotRam {
            gpa: Gpa(BASE + 2 * PAGE - 4),
            len: 8
        })
    );
    let sink = Arc::new(Recorder::default());
    assert_eq!(mem.start_fetch(Gfn(0), sink.clone(), 1), FetchStart::NotRam);
    assert!(sink.calls.lock().unwrap().is_empty());
    assert_eq!(
        tlb.fetch_blocking(Gfn(1)),
        Err(FetchError::NotRam { gfn: Gfn(1) })
    );
}

/// Writes a stamp to every page of more RAM than the budget, then reads them back.
#[test]
fn pages_survive_eviction_and_come_back() {
    let pages = 256;
    let mem = memory(pages, 16);
    let mut tlb = mem.vcpu_tlb();
    for p in 0..pages {
        write(
            &mut tlb,
            BASE + p * PAGE + 8 * (p % 512),
            AccessSize::Double,
            p * 31 + 1,
        )
        .unwrap();
        tlb.sync();
    }
    for p in (0..pages).rev() {
        assert_eq!(
            read(
                &mut tlb,
                BASE + p * PAGE + 8 * (p % 512),
                AccessSize::Double
            ),
            Ok(p * 31 + 1),
            "page {p}"
        );
        tlb.sync();
    }
    drop(tlb);
    let m = mem.metrics();
    assert!(m.frames_used <= 16, "{m:?}");
    assert!(
        m.io.pages_written >= pages - 16,
        "dirty pages were written: {m:?}"
    );
    assert!(m.io.pages_read >= pages - 16, "and read back: {m:?}");
    assert!(
        m.evict.dropped_clean > 0,
        "pages read back and evicted again were clean: {m:?}"
    );
    mem.check_invariants().unwrap();
}

#[test]
fn a_page_read_back_synchronously_is_one_fault() {
    let mem = memory(16, 2);
    let mut tlb = mem.vcpu_tlb();
    for p in 0..16 {
        write(&mut tlb, BASE + p * PAGE, AccessSize::Double, 100 + p).unwrap();
        tlb.sync();
    }
    let gpa = (0..16)
        .map(|p| BASE + p * PAGE)
        .find(|&gpa| tlb.resolve(Gpa(gpa), false) != Resolve::Mapped)
        .expect("a page in the store");
    let before = mem.metrics().faults;
    // The run loop's way: the fault, the page read on this thread, the retry.
    assert_eq!(
        tlb.resolve(Gpa(gpa), false),
        Resolve::NeedsFetch(Gpa(gpa).gfn())
    );
    tlb.fetch_blocking(Gpa(gpa).gfn()).unwrap();
    assert_eq!(
        tlb.read(gpa, AccessSize::Double),
        Ok(100 + (gpa - BASE) / PAGE)
    );
    let after = mem.metrics().faults;
    assert_eq!(after.needs_fetch, before.needs_fetch + 1);
    assert_eq!(
        after.resident, before.resident,
        "the page fetched was mapped, not faulted again"
    );
}

#[test]
fn never_written_pages_leave_without_io() {
    let mem = memory(64, 4);
    let mut tlb = mem.vcpu_tlb();
    for p in 0..64 {
        assert_eq!(read(&mut tlb, BASE + p * PAGE, AccessSize::Word), Ok(0));
        tlb.sync();
    }
    drop(tlb);
    let m = mem.metrics();
    assert_eq!(m.io.writes_submitted, 0, "{m:?}");
    assert_eq!(m.io.reads_submitted, 0, "{m:?}");
    assert!(m.evict.dropped_zero >= 60, "{m:?}");
    mem.check_invariants().unwrap();
}

#[test]
fn host_access_spans_pages_and_fetches_what_it_needs() {
    let mem = memory(32, 2);
    let data: Vec<u8> = (0..3 * 4096u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    mem.write_bytes(Gpa(BASE + PAGE - 100), &data).unwrap();
    // Push those pages out.
    let mut tlb = mem.vcpu_tlb();
    for p in 8..32 {
        write(&mut tlb, BASE + p * PAGE, AccessSize::Byte, 1).unwrap();
        tlb.sync();
    }
    let mut back = vec![0u8; data.len()];
    tlb.read_bytes(Gpa(BASE + PAGE - 100), &mut back).unwrap();
    assert_eq!(back, data);
    drop(tlb);
    assert!(mem.metrics().io.pages_read >= 3);
    mem.check_invariants().unwrap();
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(u64, Result<(), FetchError>)>>,
}

impl FetchSink for Recorder {
    fn fetch_done(&self, cookie: u64, result: Result<(), FetchError>) {
        self.calls.lock().unwrap().push((cookie, result));
    }
}

#[test]
fn one_read_per_page_however_many_ask() {
    let mem = memory(16, 2);
    let mut tlb = mem.vcpu_tlb();
    for p in 0..16 {
        write(&mut tlb, BASE + p * PAGE, AccessSize::Double, 100 + p).unwrap();
        tlb.sync();
    }
    // Find a page that is out.
    let gfn = (0..16)
        .map(|p| Gfn(Gpa(BASE).gfn().0 + p))
        .find(|&g| tlb.resolve(g.gpa(), false) != Resolve::Mapped)
        .unwrap();
    let reads_before = mem.metrics().io.reads_submitted;
    let sink = Arc::new(Recorder::default());
    let first = mem.start_fetch(gfn, sink.clone(), 1);
    let second = mem.start_fetch(gfn, sink.clone(), 2);
    assert_eq!(first, FetchStart::Started);
    assert!(matches!(
        second,
        FetchStart::Joined | FetchStart::AlreadyResident
    ));
    // Collect like a running vCPU would, between slices.
    while sink.calls.lock().unwrap().len() < if second == FetchStart::Joined { 2 } else { 1 } {
        tlb.sync();
        std::thread::yield_now();
    }
    let mut calls = sink.calls.lock().unwrap().clone();
    calls.sort_by_key(|c| c.0);
    assert!(calls.iter().all(|c| c.1.is_ok()), "{calls:?}");
    assert_eq!(calls[0].0, 1);
    assert_eq!(mem.metrics().io.reads_submitted, reads_before + 1);
    assert_eq!(
        mem.start_fetch(gfn, sink.clone(), 3),
        FetchStart::AlreadyResident
    );
    assert_eq!(
        read(&mut tlb, gfn.gpa().0, AccessSize::Double),
        Ok(100 + (gfn.0 - Gpa(BASE).gfn().0))
    );
}

#[test]
fn bad_configurations_are_refused_with_the_value() {
    let store = || Box::new(MemStore::new(16, 1));
    let e = GuestMemory::new(MemConfig::new(BASE, 16 * PAGE, 100), store()).unwrap_err();
    assert!(matches!(e, MemError::Budget(100)));
    assert!(e.to_string().contains("budget_bytes = 100"), "{e}");
    let e = GuestMemory::new(MemConfig::new(BASE, 0, PAGE), store()).unwrap_err();
    assert!(matches!(e, MemError::RamSize(0)), "{e}");
    let e = GuestMemory::new(MemConfig::new(BASE, PAGE + 1, PAGE), store()).unwrap_err();
    assert!(e.to_string().contains("0x1001"), "{e}");
    let e = GuestMemory::new(MemConfig::new(BASE + 1, PAGE, PAGE), store()).unwrap_err();
    assert!(matches!(e, MemError::RamBase { .. }), "{e}");
    let e =
        GuestMemory::new(MemConfig::new(u64::MAX - PAGE + 1, 2 * PAGE, PAGE), store()).unwrap_err();
    assert!(matches!(e, MemError::RamBase { .. }), "{e}");
    let e = GuestMemory::new(MemConfig::new(BASE, 1 << 62, PAGE), store()).unwrap_err();
    assert!(matches!(e, MemError::Map { .. }), "{e}");
}

#[test]
fn evicted_pages_give_their_memory_back() {
    let pages = 2048;
    let budget = 64;
    let mem = memory(pages, budget);
    let mut tlb = mem.vcpu_tlb();
    for p in 0..pages {
        write(&mut tlb, BASE + p * PAGE, AccessSize::Double, p + 1).unwrap();
        tlb.sync();
    }
    let host = mem.host_resident_pages().unwrap();
    assert!(
        host <= budget,
        "{host} pages held by the host for a budget of {budget}"
    );
    let m = mem.metrics();
    assert_eq!(
        host, m.frames_used,
        "the kernel holds exactly the frames in use: {m:?}"
    );
    drop(tlb);
    mem.check_invariants().unwrap();
}

/// The check waits for a read still in flight (here 50 ms of added latency) to
/// end and be acted on, so a completion cannot move a page it has counted.
#[test]
fn the_invariant_check_waits_for_reads_in_flight() {
    use apf_mem::store::{Latency, LatencyStore, Slot};
    let cfg = MemConfig::new(BASE, 16 * PAGE, 16 * PAGE);
    let slow = LatencyStore::new(
        MemStore::new(1 << 20, 8),
        Latency::Fixed(std::time::Duration::from_millis(50)),
    );
    let mem = GuestMemory::new(cfg, Box::new(slow)).expect("guest memory");
    // A page whose copy is in the store, as a lazy restore places its image;
    // frames are free, so its read starts at once.
    let gfn = Gpa(BASE).gfn();
    mem.place_in_store(gfn, Slot(0)).unwrap();
    let sink = Arc::new(Recorder::default());
    assert_eq!(mem.start_fetch(gfn, sink.clone(), 7), FetchStart::Started);
    assert_eq!(mem.metrics().in_flight, 1);
    mem.check_invariants().unwrap();
    assert_eq!(mem.metrics().in_flight, 0);
    assert_eq!(mem.metrics().pages.resident, 1);
    assert_eq!(*sink.calls.lock().unwrap(), vec![(7, Ok(()))]);
}
