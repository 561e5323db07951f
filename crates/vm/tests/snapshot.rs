//! Snapshots of the built-in guest mid-run, restored eagerly and lazily with APF
//! off and on: every process finishes with the checksum of the whole run's
//! work (the replay covers both sides of the snapshot), the image is never
//! written, and damaged or mismatched snapshots are refused with their own error.
//! Counts and correctness are asserted, never timings.

use apf_abi::boot::proc_state;
use apf_vm::config::{
    ByteSize, ProcessConfig, SnapshotPoint, Span, StoreConfig, VmConfig, WorkloadKind,
};
use apf_vm::snapshot::{
    ImageSource, MEMORY_FILE, RestoreMode, Restored, STATE_FILE, Snapshot, SnapshotError,
    SnapshotOf, take_snapshot,
};
use apf_vm::{RunEnd, RunOptions, VmError};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// 2 vCPUs, a scan and a calc on each; RAM 4× the budget; 200 µs added to
/// every store I/O, so a snapshot early on finds fetches in flight. Snapshots
/// are taken at a share of the scans' work, never at a time: how far a scan
/// gets in 600 ms depends on the host (on a fast one it had ended).
fn config(apf: bool) -> VmConfig {
    let processes = (0..2)
        .flat_map(|vcpu| {
            [
                ProcessConfig {
                    kind: WorkloadKind::Scan,
                    vcpu,
                    mem: ByteSize(20 << 20),
                    work: 2500,
                    write_pct: 100,
                },
                ProcessConfig {
                    kind: WorkloadKind::Calc,
                    vcpu,
                    mem: ByteSize(0),
                    work: 0,
                    write_pct: 100,
                },
            ]
        })
        .collect();
    VmConfig {
        vcpus: 2,
        ram: ByteSize(64 << 20),
        budget: ByteSize(16 << 20),
        apf,
        separate_ready: true,
        store: StoreConfig {
            latency: Span(Duration::from_micros(200)),
            ..StoreConfig::default()
        },
        processes,
        duration: None,
        seed: 11,
    }
}

fn options() -> RunOptions {
    RunOptions {
        timeout: Duration::from_secs(300),
        echo_console: false,
        ..Default::default()
    }
}

fn snapshot(config: &VmConfig, at: SnapshotPoint, dir: &Path) -> Snapshot {
    let taken = take_snapshot(config, SnapshotOf::BuiltIn, at, dir, options(), &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("the snapshot is taken");
    assert!(taken.pages_held > 0 && taken.pages_held < taken.pages);
    Snapshot::open(dir).expect("the snapshot reads back")
}

fn restore(snap: &Snapshot, mode: RestoreMode, apf: bool) -> Restored {
    let config = VmConfig {
        apf,
        ..snap.config().clone()
    };
    snap.restore(mode, &config, &ImageSource::Local, options(), &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("the snapshot restores")
}

/// Every process done with the right checksum, no page lost, memory consistent,
/// and each scan did all its work (some before the snapshot, the rest after).
fn assert_finished(snap: &Snapshot, r: &Restored, what: &str) {
    let run = &r.run;
    // A run that does not end says what each vCPU and page was waiting for.
    assert_eq!(
        run.end,
        RunEnd::SystemOff,
        "{what}: console:\n{}\nprocesses: {:?}\nvcpus: {:?}\nmemory: {:?}\ninvariants: {:?}",
        run.uart,
        run.processes,
        run.vcpus,
        run.mem,
        run.mem_invariants
    );
    assert_eq!(run.lost_pages(), 0, "{what}");
    run.mem_invariants.as_ref().expect("memory invariants");
    let before = &snap.state().progress;
    for p in &run.processes {
        assert_eq!(p.state, proc_state::DONE, "{what}: {p:?}\n{}", run.uart);
        assert!(p.checksum_ok, "{what}: checksum of {p:?}");
        assert!(p.progress >= before.progress[p.index], "{what}: {p:?}");
        if p.kind == WorkloadKind::Scan {
            assert_eq!(p.progress, 2500, "{what}: {p:?}");
        }
    }
}

fn not_present(r: &Restored) -> u64 {
    r.run.vcpus.iter().map(|v| v.apf.not_present).sum()
}

fn image_digest(dir: &Path) -> u32 {
    crc32fast::hash(&std::fs::read(dir.join(MEMORY_FILE)).expect("image"))
}

#[test]
fn snapshots_mid_run_restore_eagerly_and_lazily_with_apf_off_and_on() {
    for percent in [10, 50] {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = snapshot(&config(true), SnapshotPoint::WorkDone(percent), dir.path());
        let scans_mid_work = snap
            .state()
            .progress
            .progress
            .iter()
            .zip(&snap.config().processes)
            .filter(|(done, p)| p.kind == WorkloadKind::Scan && **done < p.work)
            .count();
        assert_eq!(scans_mid_work, 2, "both scans were mid-work at {percent}%");
        let digest = image_digest(dir.path());

        let eager = restore(&snap, RestoreMode::Eager, true);
        assert_finished(&snap, &eager, "eager");
        assert_eq!(eager.loaded_pages, eager.image_pages);

        let lazy_off = restore(&snap, RestoreMode::Lazy, false);
        assert_finished(&snap, &lazy_off, "lazy, APF off");
        assert_eq!(lazy_off.loaded_pages, 0);
        assert!(lazy_off.run.mem.io.pages_read > 0, "lazy reads on demand");
        assert_eq!(not_present(&lazy_off), 0, "APF off: no not-present");

        let lazy_on = restore(&snap, RestoreMode::Lazy, true);
        assert_finished(&snap, &lazy_on, "lazy, APF on");
        assert!(
            not_present(&lazy_on) > 0,
            "APF on: the image's pages come in behind not-present"
        );
        assert_eq!(
            image_digest(dir.path()),
            digest,
            "the image is never written"
        );
    }
}

#[test]
fn two_restores_of_one_snapshot_run_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = snapshot(&config(true), SnapshotPoint::WorkDone(25), dir.path());
    let digest = image_digest(dir.path());
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| restore(&snap, RestoreMode::Lazy, true));
        let b = s.spawn(|| restore(&snap, RestoreMode::Lazy, false));
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert_finished(&snap, &a, "restore a");
    assert_finished(&snap, &b, "restore b");
    assert_eq!(
        image_digest(dir.path()),
        digest,
        "the shared image is never written"
    );
}

#[test]
fn a_snapshot_taken_with_apf_off_restores_with_apf_on_and_the_other_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    let off = snapshot(&config(false), SnapshotPoint::WorkDone(25), dir.path());
    let r = restore(&off, RestoreMode::Lazy, true);
    assert_finished(&off, &r, "taken off, restored on");

    let dir = tempfile::tempdir().expect("tempdir");
    let on = snapshot(&config(true), SnapshotPoint::WorkDone(25), dir.path());
    let r = restore(&on, RestoreMode::Lazy, false);
    assert_finished(&on, &r, "taken on, restored off");
    assert_eq!(not_present(&r), 0);
}

fn open_err(dir: &Path) -> SnapshotError {
    Snapshot::open(dir).expect_err("refused")
}

#[test]
fn damaged_and_mismatched_snapshots_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = snapshot(&config(true), SnapshotPoint::WorkDone(10), dir.path());
    let state = std::fs::read(dir.path().join(STATE_FILE)).expect("state");
    let image = dir.path().join(MEMORY_FILE);
    let fresh = |name: &str| {
        let d = dir.path().parent().unwrap().join(format!(
            "{}-{name}",
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(STATE_FILE), &state).unwrap();
        std::fs::hard_link(&image, d.join(MEMORY_FILE))
            .or_else(|_| std::fs::copy(&image, d.join(MEMORY_FILE)).map(|_| ()))
            .unwrap();
        d
    };

    let e = open_err(&dir.path().join("nothing-here"));
    assert!(matches!(e, SnapshotError::Missing { .. }), "{e}");
    assert!(e.is_input());

    let d = fresh("version");
    let mut text = state.clone();
    let at = text.iter().position(|&b| b == b' ').unwrap() + 1;
    text[at] = b'9';
    std::fs::write(d.join(STATE_FILE), &text).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, SnapshotError::Version { .. }), "{e}");

    let d = fresh("state-bit");
    let mut text = state.clone();
    let last = text.len() - 2;
    text[last] ^= 0x01;
    std::fs::write(d.join(STATE_FILE), &text).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, SnapshotError::StateChecksum { .. }), "{e}");

    let d = fresh("state-cut");
    std::fs::write(d.join(STATE_FILE), &state[..state.len() / 2]).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");

    let d = fresh("memory-cut");
    std::fs::remove_file(d.join(MEMORY_FILE)).unwrap();
    std::fs::copy(&image, d.join(MEMORY_FILE)).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join(MEMORY_FILE))
        .unwrap();
    f.set_len(4096 * 10).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");

    // A damaged page: refused by an eager restore before the first instruction.
    let d = fresh("page");
    std::fs::remove_file(d.join(MEMORY_FILE)).unwrap();
    std::fs::copy(&image, d.join(MEMORY_FILE)).unwrap();
    let (first, _) = snap.state().memory.held().next().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.join(MEMORY_FILE))
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, first * 4096 + 7).unwrap();
    f.write_all_at(&[byte[0] ^ 0xFF], first * 4096 + 7).unwrap();
    let damaged = Snapshot::open(&d).expect("the state is whole");
    let e = damaged
        .restore(
            RestoreMode::Eager,
            damaged.config(),
            &ImageSource::Local,
            options(),
            &mut |_| ControlFlow::Continue(()),
        )
        .expect_err("refused");
    assert!(
        matches!(e, VmError::Snapshot(SnapshotError::PageChecksum { page, .. }) if page == first),
        "{e}"
    );

    // Less RAM than the snapshot holds.
    let small = VmConfig {
        ram: ByteSize(32 << 20),
        ..snap.config().clone()
    };
    let e = snap.check_config(&small).expect_err("refused");
    assert!(e.to_string().contains("less than"), "{e}");

    // An output directory that is not empty is not overwritten.
    let e = take_snapshot(
        &config(true),
        SnapshotOf::BuiltIn,
        SnapshotPoint::After(Duration::from_millis(50)),
        dir.path(),
        options(),
        &mut |_| ControlFlow::Continue(()),
    )
    .expect_err("refused");
    assert!(e.to_string().contains("not empty"), "{e}");
    assert_eq!(std::fs::read(dir.path().join(STATE_FILE)).unwrap(), state);
}

/// A lazy restore whose guest ends while its prefetcher still reads (a slow
/// store: 5 ms a read): the run is counted and checked only once the prefetcher
/// has stopped and its reads have ended, so nothing is in flight in the
/// figures and the page counts agree with a scan of the pages.
#[test]
fn a_lazy_restore_is_counted_after_its_prefetcher_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = snapshot(&config(true), SnapshotPoint::WorkDone(50), dir.path());
    let mut config = snap.config().clone();
    config.store.latency = Span(Duration::from_millis(5));
    config.budget = config.ram;
    let r = snap
        .restore(
            RestoreMode::LazyPrefetch,
            &config,
            &ImageSource::Local,
            options(),
            &mut |_| ControlFlow::Continue(()),
        )
        .expect("the snapshot restores");
    assert_finished(&snap, &r, "lazy+prefetch");
    let io = &r.run.mem.io;
    eprintln!(
        "prefetched {} of {} image pages; read {}, submitted {}, in flight {}; wall {:?}",
        r.prefetched_pages,
        r.image_pages,
        io.pages_read,
        io.reads_submitted,
        r.run.mem.in_flight,
        r.run.wall
    );
    assert!(r.prefetched_pages > 0, "the prefetcher ran");
    assert_eq!(r.run.mem.in_flight, 0, "nothing in flight once counted");
    assert_eq!(
        io.reads_submitted,
        io.pages_read + io.read_errors,
        "every read submitted has ended"
    );
    assert!(
        io.pages_read >= r.prefetched_pages,
        "the prefetcher's reads are in the count: {io:?}"
    );
}

/// A share of the work the run can never reach is refused before anything runs
/// or is written, with a message that says what to give instead.
#[test]
fn snapshot_points_a_run_cannot_reach_are_refused_before_anything_is_written() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("snap");
    let endless = VmConfig {
        processes: config(true)
            .processes
            .into_iter()
            .map(|p| ProcessConfig { work: 0, ..p })
            .collect(),
        duration: Some(Span(Duration::from_secs(1))),
        ..config(true)
    };
    for (config, percent, says) in [
        (config(true), 0, "from 1% to 99%"),
        (config(true), 100, "from 1% to 99%"),
        (endless, 30, "no process has work"),
    ] {
        let e = take_snapshot(
            &config,
            SnapshotOf::BuiltIn,
            SnapshotPoint::WorkDone(percent),
            &dir,
            options(),
            &mut |_| ControlFlow::Continue(()),
        )
        .expect_err("refused");
        assert!(
            e.to_string().contains(&format!("snapshot at {percent}%: "))
                && e.to_string().contains(says),
            "{e}"
        );
        assert!(!dir.exists(), "nothing written for {percent}%");
    }
}
