//! Guest memory over a real swap file: io_uring with and without O_DIRECT, the
//! pread/pwrite thread fallback, and bad input (a path that cannot be created, a
//! full store, a file-size limit).

mod common;

use std::path::Path;

use apf_mem::store::{
    Backend, FileStore, FileStoreConfig, Latency, LatencyStore, Store, StoreOpenError,
};
use apf_mem::{AccessSize, GuestMemory, MemConfig, MemMetrics};
use common::{BASE, read, write};

const PAGE: u64 = 4096;

fn open(dir: &Path, direct: bool, backend: Backend) -> FileStore {
    let cfg = FileStoreConfig {
        path: Some(dir.to_path_buf()),
        queue_depth: 16,
        direct,
        backend,
        ..Default::default()
    };
    FileStore::open(&cfg).expect("swap file")
}

/// Writes a stamp into every page of 8× the budget, reads them all back.
fn round_trip(store: Box<dyn Store>) -> MemMetrics {
    let pages = 512;
    let mem = GuestMemory::new(MemConfig::new(BASE, pages * PAGE, 64 * PAGE), store).unwrap();
    let mut tlb = mem.vcpu_tlb();
    for p in 0..pages {
        write(
            &mut tlb,
            BASE + p * PAGE + 16,
            AccessSize::Double,
            p ^ 0x5A5A_0000,
        )
        .unwrap();
        tlb.sync();
    }
    for p in 0..pages {
        assert_eq!(
            read(&mut tlb, BASE + p * PAGE + 16, AccessSize::Double),
            Ok(p ^ 0x5A5A_0000),
            "page {p}"
        );
        tlb.sync();
    }
    drop(tlb);
    mem.check_invariants().unwrap();
    let m = mem.metrics();
    assert!(
        m.io.pages_written >= pages - 64 && m.io.pages_read >= pages - 64,
        "{m:?}"
    );
    assert!(mem.host_resident_pages().unwrap() <= 64);
    m
}

fn require_io_uring(store: &FileStore) -> bool {
    if store.uses_io_uring() {
        return true;
    }
    let why = store.info().description;
    assert!(
        std::env::var_os("APF_REQUIRE_ORACLES").is_none(),
        "io_uring required but {why}"
    );
    eprintln!("skipping the io_uring part: {why}");
    false
}

#[test]
fn io_uring_with_o_direct() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, Backend::Auto);
    if !store.is_direct() {
        eprintln!(
            "skipping the O_DIRECT part: the filesystem refused it ({})",
            store.info()
        );
    }
    if !require_io_uring(&store) {
        return;
    }
    assert!(
        store.info().description.contains("io_uring"),
        "{}",
        store.info()
    );
    round_trip(Box::new(store));
}

/// With O_DIRECT, the slots handed out are blocks the file system holds written
/// (a chunk ahead), so page writes are overwrites io_uring issues at once.
#[test]
fn o_direct_slots_are_written_ahead() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("swap");
    let store = FileStore::open(&FileStoreConfig {
        path: Some(file.clone()),
        ..Default::default()
    })
    .expect("swap file");
    if !store.is_direct() {
        eprintln!(
            "skipping: the filesystem refused O_DIRECT ({})",
            store.info()
        );
        return;
    }
    let slots: Vec<_> = (0..300).map(|_| store.alloc_slot().unwrap()).collect();
    let meta = std::fs::metadata(&file).unwrap();
    let last = u64::from(slots.iter().map(|s| s.0).max().unwrap());
    assert!(meta.len() > (last + 1) * PAGE, "{} bytes", meta.len());
    // Allocated, not a hole: every byte up to the end is backed by blocks.
    assert!(meta.blocks() * 512 >= meta.len(), "{meta:?}");
}

#[test]
fn io_uring_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), false, Backend::Auto);
    assert!(!store.is_direct());
    assert!(
        store.info().description.contains("buffered"),
        "{}",
        store.info()
    );
    if !require_io_uring(&store) {
        return;
    }
    round_trip(Box::new(store));
}

#[test]
fn thread_fallback_without_io_uring() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), true, Backend::Threads);
    assert!(!store.uses_io_uring());
    assert!(
        store.info().description.contains("threads"),
        "{}",
        store.info()
    );
    round_trip(Box::new(store));
}

#[test]
fn latency_is_added_on_top_of_real_io() {
    let dir = tempfile::tempdir().unwrap();
    let added = std::time::Duration::from_millis(2);
    let store = LatencyStore::new(open(dir.path(), true, Backend::Auto), Latency::Fixed(added));
    assert!(
        store.info().description.contains("fixed latency"),
        "{}",
        store.info()
    );
    let m = round_trip(Box::new(store));
    // Every read took at least the added latency: nothing lands in a bucket below 1 ms.
    let below: u64 = m.read_latency.buckets[..10].iter().sum();
    assert_eq!(below, 0, "{:?}", m.read_latency);
}

#[test]
fn o_direct_refused_falls_back_to_buffered_and_says_so() {
    // tmpfs refuses O_DIRECT on older kernels; where it accepts it there is
    // nothing to fall back from.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipping: no /dev/shm");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let store = open(dir.path(), true, Backend::Auto);
    if store.is_direct() {
        eprintln!(
            "skipping: this kernel's tmpfs accepts O_DIRECT ({})",
            store.info()
        );
        return;
    }
    assert!(
        store.info().description.contains("O_DIRECT refused"),
        "{}",
        store.info()
    );
    round_trip(Box::new(store));
}

#[test]
fn a_store_path_that_cannot_be_created_is_a_clear_error() {
    let cfg = FileStoreConfig {
        path: Some("/nonexistent-apf-dir/sub/swap".into()),
        ..Default::default()
    };
    let e = FileStore::open(&cfg).unwrap_err();
    assert!(matches!(e, StoreOpenError::Create { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent-apf-dir/sub/swap") && msg.contains("No such file"),
        "{msg}"
    );
    let e = FileStore::open(&FileStoreConfig {
        queue_depth: 0,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "queue depth 0 is out of range: use 1 to 4096"
    );
}

/// Writes a stamp to more pages than the budget and the store together can
/// hold, then reads every one back: nothing is lost, the pages the store had no
/// room for stay resident beyond the budget, and the report says why.
fn overfill(store: Box<dyn Store>) -> MemMetrics {
    let pages = 64;
    let mut cfg = MemConfig::new(BASE, pages * PAGE, 4 * PAGE);
    cfg.batch_pages = 2;
    let mem = GuestMemory::new(cfg, store).unwrap();
    let mut tlb = mem.vcpu_tlb();
    for p in 0..pages {
        write(&mut tlb, BASE + p * PAGE, AccessSize::Double, p + 1).unwrap();
        tlb.sync();
    }
    for p in 0..pages {
        assert_eq!(
            read(&mut tlb, BASE + p * PAGE, AccessSize::Double),
            Ok(p + 1),
            "page {p}"
        );
        tlb.sync();
    }
    drop(tlb);
    mem.check_invariants().unwrap();
    let m = mem.metrics();
    assert!(m.frames_over_budget > 0, "{m:?}");
    assert!(m.frames_peak > m.budget_pages, "{m:?}");
    m
}

#[test]
fn a_full_store_overruns_the_budget_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileStoreConfig {
        path: Some(dir.path().into()),
        capacity: 8,
        ..Default::default()
    };
    let m = overfill(Box::new(FileStore::open(&cfg).unwrap()));
    let why = m.over_budget_reason.clone().unwrap_or_default();
    assert!(why.contains("store full: all 8 slots"), "{why}");
    assert_eq!(
        m.io.write_errors, 0,
        "a slot is taken before a write: {m:?}"
    );
}

/// The child half of `a_file_size_limit_overruns_the_budget_and_loses_nothing`.
#[test]
fn file_size_limit_child() {
    if std::env::var_os("APF_FSIZE_CHILD").is_none() {
        return;
    }
    // SAFETY: plain libc calls on this (child) process: writes past the limit
    // then fail with EFBIG instead of raising SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let limit = libc::rlimit {
        rlim_cur: 16 * PAGE,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit for this process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    let dir = tempfile::tempdir().unwrap();
    let m = overfill(Box::new(open(dir.path(), true, Backend::Auto)));
    let why = m.over_budget_reason.clone().unwrap_or_default();
    assert!(why.contains("store full"), "{why}");
    // With O_DIRECT the file is written ahead of its slots, so the limit is met
    // when a slot is handed out and no page write fails; buffered, the first
    // writes past the limit fail. Either way the store then hands out only the
    // slots the file holds, so no more writes are tried that cannot land.
    assert!(m.io.write_errors <= 2, "one batch at most: {m:?}");
}

#[test]
fn a_file_size_limit_overruns_the_budget_and_loses_nothing() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "file_size_limit_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("APF_FSIZE_CHILD", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "{text}");
}
