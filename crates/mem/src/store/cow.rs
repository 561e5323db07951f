//! A copy-on-write store: pages read from a read-only base (a snapshot's
//! memory image, local or remote) until the guest changes them; changed pages
//! evicted later go to a store of their own (a fresh swap file). The base is
//! never written, so any number of VMs can share it.
//!
//! Slots `0..base_pages` are the base's pages, slot `n` being page `n` of the
//! image; slots from `base_pages` on are the top store's, shifted. A base page's
//! slot is never freed or handed out: the pager frees the slot of a page the
//! guest dirties, which for a base page just forgets it.
//!
//! Each base read is checked against the image's per-page checksum before its
//! completion is returned: a page that does not match fails like a bad sector,
//! and the page stays in the store.

use std::collections::HashMap;
use std::time::Duration;

use super::pair::{Side, StorePair};
use super::{IoBuf, IoCompletion, IoError, IoKind, IoRequest, Slot, Store, StoreFull, StoreInfo};
use crate::sync::{Mutex, lock};

/// The checksum a snapshot keeps for each page (CRC-32C would do as well; what
/// matters is that writer and reader agree, and both use this).
pub fn page_checksum(page: &[u8]) -> u32 {
    crc32fast::hash(page)
}

/// A read-only base under a writable top.
#[derive(Debug)]
pub struct CowStore {
    /// The base (first) and the top (second).
    pair: StorePair,
    base_pages: u32,
    /// Each base page's checksum, by page (slot) number, if the base has them.
    sums: Option<Box<[u32]>>,
    /// Checked base reads in flight: tag → (slot, buffer).
    base_reads: Mutex<HashMap<u64, (Slot, IoBuf)>>,
}

impl CowStore {
    /// `base` holds `sums.len()` pages at slots `0..sums.len()`, each with its
    /// checksum; `top` takes every page written.
    pub fn new(base: Box<dyn Store>, sums: Box<[u32]>, top: Box<dyn Store>) -> CowStore {
        let base_pages = u32::try_from(sums.len()).unwrap_or(u32::MAX);
        CowStore::with(base, base_pages, Some(sums), top)
    }

    /// A base of `base_pages` pages with no checksums (one whose transport
    /// checks its own data, e.g. a migration source's memory over TCP).
    pub fn unchecked(base: Box<dyn Store>, base_pages: u32, top: Box<dyn Store>) -> CowStore {
        CowStore::with(base, base_pages, None, top)
    }

    fn with(
        base: Box<dyn Store>,
        base_pages: u32,
        sums: Option<Box<[u32]>>,
        top: Box<dyn Store>,
    ) -> CowStore {
        CowStore {
            pair: StorePair::new(base, top),
            base_pages,
            sums,
            base_reads: Mutex::new(HashMap::new()),
        }
    }

    /// Pages the base holds (slots `0..base_pages`).
    pub fn base_pages(&self) -> u32 {
        self.base_pages
    }

    fn is_base(&self, slot: Slot) -> bool {
        slot.0 < self.base_pages
    }

    /// Fails the base reads whose page does not match its checksum.
    fn check(&self, done: &mut [IoCompletion]) {
        let Some(sums) = &self.sums else {
            return;
        };
        let mut reads = lock(&self.base_reads);
        for c in done {
            let Some((slot, buf)) = reads.remove(&c.tag) else {
                continue;
            };
            if c.result.is_err() {
                continue;
            }
            // SAFETY: the buffer is the request's, valid for 4096 bytes until
            // this completion is returned (IoBuf's contract), and the read
            // that filled it has finished.
            let page = unsafe { std::slice::from_raw_parts(buf.as_ptr(), crate::ram::PAGE) };
            let expected = sums[slot.0 as usize];
            let found = page_checksum(page);
            if found != expected {
                c.result = Err(IoError::Checksum {
                    slot: slot.0,
                    expected,
                    found,
                });
            }
        }
    }
}

impl Store for CowStore {
    fn info(&self) -> StoreInfo {
        let (base, top) = (self.pair.first.info(), self.pair.second.info());
        StoreInfo {
            description: format!(
                "copy-on-write: {} pages read from {}; written pages to {}",
                self.base_pages, base.description, top.description
            ),
            queue_depth: base.queue_depth.min(top.queue_depth),
        }
    }

    fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        let top = &self.pair.second;
        let s = top.alloc_slot()?;
        s.0.checked_add(self.base_pages).map(Slot).ok_or_else(|| {
            top.free_slot(s);
            StoreFull {
                capacity: u32::MAX - self.base_pages,
            }
        })
    }

    fn free_slot(&self, slot: Slot) {
        if !self.is_base(slot) {
            self.pair.second.free_slot(Slot(slot.0 - self.base_pages));
        }
    }

    fn submit(&self, reqs: &[IoRequest]) {
        let mut base = Vec::new();
        let mut top = Vec::new();
        for r in reqs {
            if !self.is_base(r.slot) {
                top.push(IoRequest {
                    slot: Slot(r.slot.0 - self.base_pages),
                    ..*r
                });
            } else if r.kind == IoKind::Write {
                // The pager writes only to slots it was handed: a write here is
                // a bug, and the base must not change whatever asks.
                self.pair.refuse(IoCompletion {
                    tag: r.tag,
                    result: Err(IoError::Os {
                        op: "write",
                        slot: r.slot.0,
                        errno: libc::EROFS,
                    }),
                });
            } else {
                base.push(*r);
            }
        }
        if self.sums.is_some() && !base.is_empty() {
            lock(&self.base_reads).extend(base.iter().map(|r| (r.tag, (r.slot, r.buf))));
        }
        self.pair.submit(Side::First, &base);
        self.pair.submit(Side::Second, &top);
    }

    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        self.pair.complete(out, wait, |side, done| {
            if side == Side::First {
                self.check(done);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::store::test_page::Page;

    fn run(store: &CowStore, req: IoRequest) -> Result<(), IoError> {
        store.submit(&[req]);
        let mut out = Vec::new();
        while out.is_empty() {
            store.complete(&mut out, Some(Duration::from_millis(100)));
        }
        assert_eq!(out[0].tag, req.tag);
        out.remove(0).result
    }

    /// A base of `pages` pages, page n filled with byte n+1, checksummed.
    fn base(pages: u8) -> (Box<dyn Store>, Box<[u32]>) {
        let store = MemStore::new(u32::from(pages), 4);
        let mut sums = Vec::new();
        for n in 0..pages {
            let slot = store.alloc_slot().expect("slot");
            assert_eq!(slot, Slot(u32::from(n)));
            let mut p = Page::new(n + 1);
            sums.push(page_checksum(p.bytes()));
            let req = IoRequest {
                tag: 1,
                kind: IoKind::Write,
                slot,
                buf: p.buf(),
            };
            store.submit(&[req]);
            let mut out = Vec::new();
            store.complete(&mut out, Some(Duration::from_secs(1)));
            assert!(out[0].result.is_ok());
        }
        (Box::new(store), sums.into_boxed_slice())
    }

    #[test]
    fn reads_come_from_the_base_and_writes_go_to_the_top() {
        let (b, sums) = base(3);
        let cow = CowStore::new(b, sums, Box::new(MemStore::new(8, 4)));
        let mut p = Page::new(0);
        let read = |tag, slot, buf| IoRequest {
            tag,
            kind: IoKind::Read,
            slot: Slot(slot),
            buf,
        };
        run(&cow, read(7, 2, p.buf())).expect("base read");
        assert!(p.bytes().iter().all(|&b| b == 3), "page 2 of the base");
        // A changed page is written to a fresh slot past the base.
        let slot = cow.alloc_slot().expect("a top slot");
        assert_eq!(slot, Slot(3), "top slots follow the base's");
        p.bytes().fill(0xAB);
        let w = IoRequest {
            tag: 8,
            kind: IoKind::Write,
            slot,
            buf: p.buf(),
        };
        run(&cow, w).expect("top write");
        let mut q = Page::new(0);
        run(&cow, read(9, 3, q.buf())).expect("top read");
        assert!(q.bytes().iter().all(|&b| b == 0xAB));
        // The base still holds its page.
        run(&cow, read(10, 2, q.buf())).expect("base read");
        assert!(q.bytes().iter().all(|&b| b == 3));
        // Freeing a base slot does nothing; freeing a top slot returns it.
        cow.free_slot(Slot(2));
        cow.free_slot(slot);
        assert_eq!(cow.alloc_slot().expect("slot"), Slot(3));
    }

    #[test]
    fn a_write_to_the_base_is_refused_and_changes_nothing() {
        let (b, sums) = base(2);
        let cow = CowStore::new(b, sums, Box::new(MemStore::new(8, 4)));
        let mut p = Page::new(0x55);
        let w = IoRequest {
            tag: 1,
            kind: IoKind::Write,
            slot: Slot(1),
            buf: p.buf(),
        };
        let e = run(&cow, w).expect_err("the base is read-only");
        assert!(e.to_string().contains("write of slot 1"), "{e}");
        let r = IoRequest {
            kind: IoKind::Read,
            tag: 2,
            ..w
        };
        run(&cow, r).expect("read");
        assert!(p.bytes().iter().all(|&b| b == 2), "page 1 unchanged");
    }

    #[test]
    fn a_base_page_that_fails_its_checksum_is_an_io_error() {
        let (b, mut sums) = base(2);
        sums[1] ^= 1;
        let cow = CowStore::new(b, sums, Box::new(MemStore::new(8, 4)));
        let mut p = Page::new(0);
        let buf = p.buf();
        let r = |tag, slot| IoRequest {
            tag,
            kind: IoKind::Read,
            slot: Slot(slot),
            buf,
        };
        let req = r(1, 1);
        let e = run(&cow, req).expect_err("checksum");
        assert!(
            matches!(e, IoError::Checksum { slot: 1, .. }),
            "{e:?} for the damaged page"
        );
        let req = r(2, 0);
        run(&cow, req).expect("the other page is fine");
    }
}
