//! A memory image written from one guest memory and restored into another
//! lazily, over a copy-on-write store of real files: every page comes back,
//! pages the second guest changes go to its own swap file, and the image is
//! never written.

#![allow(clippy::cast_possible_truncation)] // small page numbers and test patterns

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use apf_abi::{Gfn, Gpa};
use apf_mem::store::{CowStore, FileStore, FileStoreConfig, Slot, page_checksum};
use apf_mem::{GuestMemory, MemConfig, PlaceError};

const BASE: u64 = 0x4000_0000;
const PAGE: usize = 4096;
const PAGES: u64 = 256;

fn swap(dir: &Path) -> Box<FileStore> {
    Box::new(
        FileStore::open(&FileStoreConfig {
            path: Some(dir.to_path_buf()),
            queue_depth: 8,
            ..FileStoreConfig::default()
        })
        .expect("swap file"),
    )
}

/// Page n's contents: a pattern that differs for every page and generation.
fn pattern(n: u64, generation: u8) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (n as u8).wrapping_mul(31) ^ (i as u8) ^ generation)
        .collect()
}

fn gpa(n: u64) -> Gpa {
    Gpa(BASE + n * PAGE as u64)
}

/// A digest of a whole file, from its pages' checksums in order.
fn file_digest(path: &Path) -> u32 {
    std::fs::read(path)
        .expect("read image")
        .chunks(PAGE)
        .fold(0u32, |acc, c| acc.rotate_left(5) ^ page_checksum(c))
}

/// Writes every third page of a 256-page memory under a 32-page budget (so
/// most go to the swap file), exports it to `image`, and returns each page's
/// checksum (0 for holes) and which pages were touched.
fn export(dir: &Path, image: &Path) -> (Vec<u32>, Vec<bool>) {
    let cfg = MemConfig::new(BASE, PAGES * PAGE as u64, 32 * PAGE as u64);
    let mem = GuestMemory::new(cfg, swap(dir)).expect("memory");
    for n in (0..PAGES).step_by(3) {
        mem.write_bytes(gpa(n), &pattern(n, 1)).expect("write");
    }
    assert!(
        mem.metrics().io.pages_written > 0,
        "the budget forced pages out"
    );
    let file = File::create(image).expect("image");
    file.set_len(PAGES * PAGE as u64).expect("size");
    let mut sums = vec![0u32; PAGES as usize];
    let mut touched = vec![false; PAGES as usize];
    mem.for_each_touched_page(|gfn: Gfn, page| {
        let n = gfn.0 - Gpa(BASE).gfn().0;
        sums[n as usize] = page_checksum(page);
        touched[n as usize] = true;
        file.write_all_at(page, n * PAGE as u64)
    })
    .expect("export");
    mem.check_invariants().expect("invariants after the export");
    (sums, touched)
}

fn restore(dir: &Path, image: &Path, sums: &[u32], touched: &[bool]) -> Arc<GuestMemory> {
    let base = FileStore::open_image(image, 8, true).expect("image store");
    let cow = CowStore::new(Box::new(base), sums.into(), swap(dir));
    let cfg = MemConfig::new(BASE, PAGES * PAGE as u64, 16 * PAGE as u64);
    let mem = GuestMemory::new(cfg, Box::new(cow)).expect("memory");
    for (n, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
        mem.place_in_store(gpa(n as u64).gfn(), Slot(n as u32))
            .expect("untouched");
    }
    mem
}

#[test]
fn an_exported_memory_restores_lazily_and_its_image_is_never_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("memory");
    let (sums, touched) = export(dir.path(), &image);
    assert_eq!(touched.iter().filter(|t| **t).count(), 86);
    let before = file_digest(&image);

    let mem = restore(dir.path(), &image, &sums, &touched);
    let m = mem.metrics();
    assert_eq!(
        m.pages.in_store, 86,
        "every touched page starts in the store"
    );
    assert_eq!(m.io.reads_submitted, 0, "nothing read before it is wanted");
    // Change every sixth page: under a 16-page budget these go to the top.
    for n in (0..PAGES).step_by(6) {
        mem.write_bytes(gpa(n), &pattern(n, 2)).expect("write");
    }
    let mut page = vec![0u8; PAGE];
    for n in 0..PAGES {
        mem.read_bytes(gpa(n), &mut page).expect("read");
        let want = if n % 6 == 0 {
            pattern(n, 2)
        } else if n % 3 == 0 {
            pattern(n, 1)
        } else {
            vec![0; PAGE]
        };
        assert!(page == want, "page {n} came back wrong");
    }
    let m = mem.metrics();
    assert!(
        m.io.pages_written > 0,
        "changed pages were written (to the top)"
    );
    assert_eq!(m.io.read_errors, 0);
    mem.check_invariants().expect("invariants");
    assert_eq!(
        mem.place_in_store(gpa(0).gfn(), Slot(0)),
        Err(PlaceError::Touched(gpa(0).gfn())),
        "a page with contents cannot be replaced"
    );
    drop(mem);
    assert_eq!(file_digest(&image), before, "the image is unchanged");
}

#[test]
fn two_restores_share_one_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("memory");
    let (sums, touched) = export(dir.path(), &image);
    let before = file_digest(&image);
    let a = restore(dir.path(), &image, &sums, &touched);
    let b = restore(dir.path(), &image, &sums, &touched);
    for n in (0..PAGES).step_by(3) {
        a.write_bytes(gpa(n), &pattern(n, 7)).expect("write a");
    }
    let mut page = vec![0u8; PAGE];
    for n in (0..PAGES).step_by(3) {
        b.read_bytes(gpa(n), &mut page).expect("read b");
        assert!(page == pattern(n, 1), "b sees the image, not a's changes");
        a.read_bytes(gpa(n), &mut page).expect("read a");
        assert!(page == pattern(n, 7), "a sees its own changes");
    }
    drop((a, b));
    assert_eq!(file_digest(&image), before, "the image is unchanged");
}

#[test]
fn a_damaged_image_page_fails_its_read_and_stays_in_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("memory");
    let (sums, touched) = export(dir.path(), &image);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .expect("open");
    file.write_all_at(&[0xFF], 9 * PAGE as u64 + 100)
        .expect("damage");
    let mem = restore(dir.path(), &image, &sums, &touched);
    let mut page = vec![0u8; PAGE];
    let e = mem.read_bytes(gpa(9), &mut page).expect_err("damaged");
    assert!(e.to_string().contains("fails its checksum"), "{e}");
    mem.read_bytes(gpa(6), &mut page).expect("the others read");
    assert!(page == pattern(6, 1));
    assert_eq!(mem.metrics().io.read_errors, 1);
    mem.check_invariants().expect("invariants");
}
