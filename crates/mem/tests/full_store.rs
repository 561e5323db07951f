//! A store with no room left: every page stays readable, and the pages the guest
//! needs are not evicted again as soon as they come in.

mod common;

use apf_mem::store::{FileStore, FileStoreConfig};
use apf_mem::{AccessSize, GuestMemory, MemConfig};
use common::{BASE, read, write};

const PAGE: u64 = 4096;

/// Every resident page dirty and unwritable, two pages in the store read in
/// turn: once the budget is extended for them they stay, as a guest's code page
/// and data page must for one instruction to complete. Evicting the one just
/// read to make room for the other (CLOCK's pick when everything else is stuck)
/// would read them back on every access.
#[test]
fn pages_brought_in_beyond_the_budget_are_not_evicted_at_once() {
    let pages = 16;
    let budget = 4;
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&FileStoreConfig {
        path: Some(dir.path().into()),
        capacity: 8,
        ..Default::default()
    })
    .unwrap();
    let mem = GuestMemory::new(
        MemConfig::new(BASE, pages * PAGE, budget * PAGE),
        Box::new(store),
    )
    .unwrap();
    let mut tlb = mem.vcpu_tlb();
    for p in 0..pages {
        write(&mut tlb, BASE + p * PAGE, AccessSize::Double, p + 1).unwrap();
        tlb.sync();
    }
    let before = mem.metrics();
    assert!(
        before.frames_over_budget > 0,
        "the store must be full: {before:?}"
    );
    for i in 0..100 {
        let p = i % 2;
        assert_eq!(
            read(&mut tlb, BASE + p * PAGE, AccessSize::Double),
            Ok(p + 1)
        );
        tlb.sync();
    }
    let after = mem.metrics();
    // Ideally 2. A hit in the TLB does not set a page's accessed bit (only a
    // fill does), so a later rotation can take page 0 or 1 for unused and read
    // it back once: 2-14 over 190 runs here. Evicting each as the other came
    // in, the old overrun by one frame, read them 100 times.
    let reads = after.io.pages_read - before.io.pages_read;
    assert!(
        reads <= 25,
        "pages 0 and 1 were read {reads} times: {after:?}"
    );
    for p in 0..pages {
        assert_eq!(
            read(&mut tlb, BASE + p * PAGE, AccessSize::Double),
            Ok(p + 1)
        );
        tlb.sync();
    }
    drop(tlb);
    mem.check_invariants().unwrap();
}
