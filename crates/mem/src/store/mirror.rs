//! A migration destination's copy of its source's memory ([`Mirror`]) and the
//! store that reads through it ([`MirrorStore`]).
//!
//! Slot `n` is page `n` of the source's RAM. A page the mirror holds is read
//! from the local mirror file; any other is read from the remote store (the
//! source's memory over NBD) and, once read, written into the mirror as well
//! (copy-on-read), so it is fetched over the network once. A background copier
//! fills in the rest with [`Mirror::put`]. When the mirror holds every page it
//! wants, the source is no longer needed. The store is read-only: it is the base
//! of a [`CowStore`](super::CowStore), whose top takes the pages the guest writes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::pair::{Side, StorePair};
use super::{
    FileStore, IoBuf, IoCompletion, IoError, IoKind, IoRequest, Latency, LatencyStore, Slot, Store,
    StoreFull, StoreInfo, StoreOpenError,
};
use crate::ram::PAGE;
use crate::sync::{AtomicU64, Mutex, Ordering, lock};

/// One bit per page.
#[derive(Debug)]
struct PageBits(Box<[AtomicU64]>);

impl PageBits {
    fn new(pages: u32) -> PageBits {
        PageBits((0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }
    fn word(&self, page: u32) -> Option<(&AtomicU64, u64)> {
        self.0
            .get((page / 64) as usize)
            .map(|w| (w, 1u64 << (page % 64)))
    }
    /// Sets the bit; true if it was clear.
    fn set(&self, page: u32) -> bool {
        self.word(page)
            .is_some_and(|(w, b)| w.fetch_or(b, Ordering::AcqRel) & b == 0)
    }
    fn clear(&self, page: u32) {
        if let Some((w, b)) = self.word(page) {
            w.fetch_and(!b, Ordering::AcqRel);
        }
    }
    fn get(&self, page: u32) -> bool {
        self.word(page)
            .is_some_and(|(w, b)| w.load(Ordering::Acquire) & b != 0)
    }
}

/// How a page came into the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorOrigin {
    /// Read because the guest needed it.
    Demand,
    /// Copied in the background (or in a pre-copy round).
    Copy,
}

/// What a mirror holds and how it got there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorCounts {
    /// Pages wanted from the source.
    pub wanted: u64,
    /// Of those, pages held now.
    pub held: u64,
    /// Pages put by demand reads (copy-on-read), counted each time.
    pub demand: u64,
    /// Pages put by the copier, counted each time (a page copied again after
    /// the source changed it counts again).
    pub copied: u64,
    /// Pages a write into the mirror file failed for (they stay remote).
    pub write_errors: u64,
}

/// The local copy of a remote memory image, shared by the [`MirrorStore`]
/// reading through it and the copier filling it.
#[derive(Debug)]
pub struct Mirror {
    file: File,
    pages: u32,
    wanted: PageBits,
    held: PageBits,
    demand: AtomicU64,
    copied: AtomicU64,
    write_errors: AtomicU64,
}

impl Mirror {
    /// Pages of the image.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Declares that page `page` holds data at the source and must be taken.
    pub fn want(&self, page: u32) {
        self.wanted.set(page);
    }

    /// Whether the mirror holds page `page`.
    pub fn holds(&self, page: u32) -> bool {
        self.held.get(page)
    }

    /// Forgets page `page`: the source changed it after it was copied.
    pub fn forget(&self, page: u32) {
        self.held.clear(page);
    }

    /// Writes page `page` into the mirror; from then on it is read locally.
    pub fn put(&self, page: u32, data: &[u8], origin: MirrorOrigin) -> io::Result<()> {
        if page >= self.pages || data.len() != PAGE {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        if let Err(e) = self.file.write_all_at(data, u64::from(page) * PAGE as u64) {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        // After the write: a read routed here by the bit finds the data.
        self.held.set(page);
        match origin {
            MirrorOrigin::Demand => &self.demand,
            MirrorOrigin::Copy => &self.copied,
        }
        .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Pages wanted and not held, in order.
    pub fn missing(&self) -> Vec<u32> {
        (0..self.pages)
            .filter(|&p| self.wanted.get(p) && !self.held.get(p))
            .collect()
    }

    /// The counts now.
    pub fn counts(&self) -> MirrorCounts {
        let (mut wanted, mut held) = (0, 0);
        for p in 0..self.pages {
            if self.wanted.get(p) {
                wanted += 1;
                held += u64::from(self.held.get(p));
            }
        }
        MirrorCounts {
            wanted,
            held,
            demand: self.demand.load(Ordering::Relaxed),
            copied: self.copied.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }
}

/// Reads pages from the [`Mirror`] when it holds them, else from the remote
/// store, copying what it reads there into the mirror.
#[derive(Debug)]
pub struct MirrorStore {
    /// The remote (first) and the mirror file (second).
    pair: StorePair,
    mirror: Arc<Mirror>,
    /// Remote reads in flight: tag → (slot, buffer), to copy on completion.
    remote_reads: Mutex<HashMap<u64, (Slot, IoBuf)>>,
}

impl MirrorStore {
    /// A mirror of `pages` pages of `remote` in a new file in `dir` (removed
    /// from the directory at once; it lives while the store does), read at
    /// `queue_depth` with `latency` added to each read, as the host's own
    /// swap has (the mirror holds what does not fit in the host's memory).
    pub fn create(
        remote: Box<dyn Store>,
        pages: u32,
        dir: &Path,
        queue_depth: usize,
        latency: Duration,
    ) -> Result<(MirrorStore, Arc<Mirror>), StoreOpenError> {
        let path = dir.join(format!(
            "apf-mirror-{}-{:x}",
            std::process::id(),
            std::ptr::from_ref(&remote).cast::<u8>() as usize
        ));
        let create = |source| StoreOpenError::Create {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(create)?;
        let opened = file
            .set_len(u64::from(pages) * PAGE as u64)
            .map_err(create)
            .and_then(|()| FileStore::open_image(&path, queue_depth, false));
        let _ = std::fs::remove_file(&path);
        let local: Box<dyn Store> = if latency.is_zero() {
            Box::new(opened?)
        } else {
            Box::new(LatencyStore::new(
                Box::new(opened?),
                Latency::Fixed(latency),
            ))
        };
        let mirror = Arc::new(Mirror {
            file,
            pages,
            wanted: PageBits::new(pages),
            held: PageBits::new(pages),
            demand: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        });
        Ok((
            MirrorStore {
                pair: StorePair::new(remote, local),
                mirror: Arc::clone(&mirror),
                remote_reads: Mutex::new(HashMap::new()),
            },
            mirror,
        ))
    }

    /// Copies the pages just read from the remote into the mirror.
    fn copy_on_read(&self, done: &[IoCompletion]) {
        let mut reads = lock(&self.remote_reads);
        for c in done {
            let Some((slot, buf)) = reads.remove(&c.tag) else {
                continue;
            };
            if c.result.is_err() || self.mirror.holds(slot.0) {
                continue;
            }
            // SAFETY: the buffer is the request's, valid for 4096 bytes until
            // this completion is returned (IoBuf's contract), and the read
            // that filled it has finished.
            let page = unsafe { std::slice::from_raw_parts(buf.as_ptr(), PAGE) };
            // A failed write leaves the page remote: the copier tries again.
            let _ = self.mirror.put(slot.0, page, MirrorOrigin::Demand);
        }
    }
}

impl Store for MirrorStore {
    fn info(&self) -> StoreInfo {
        let remote = self.pair.first.info();
        StoreInfo {
            description: format!(
                "{} pages mirrored from {}",
                self.mirror.pages, remote.description
            ),
            queue_depth: remote.queue_depth,
        }
    }

    fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        Err(StoreFull { capacity: 0 })
    }

    fn free_slot(&self, _slot: Slot) {}

    fn submit(&self, reqs: &[IoRequest]) {
        let mut remote = Vec::new();
        let mut local = Vec::new();
        for r in reqs {
            if r.kind == IoKind::Write || r.slot.0 >= self.mirror.pages {
                self.pair.refuse(IoCompletion {
                    tag: r.tag,
                    result: Err(IoError::Os {
                        op: IoError::op_name(r.kind),
                        slot: r.slot.0,
                        errno: if r.kind == IoKind::Write {
                            libc::EROFS
                        } else {
                            libc::EINVAL
                        },
                    }),
                });
            } else if self.mirror.holds(r.slot.0) {
                local.push(*r);
            } else {
                remote.push(*r);
            }
        }
        if !remote.is_empty() {
            lock(&self.remote_reads).extend(remote.iter().map(|r| (r.tag, (r.slot, r.buf))));
        }
        self.pair.submit(Side::First, &remote);
        self.pair.submit(Side::Second, &local);
    }

    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        self.pair.complete(out, wait, |side, done| {
            if side == Side::First {
                self.copy_on_read(done);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::store::test_page::Page;

    fn run(store: &dyn Store, kind: IoKind, slot: u32, page: &mut Page) -> Result<(), IoError> {
        let req = IoRequest {
            tag: 9,
            kind,
            slot: Slot(slot),
            buf: page.buf(),
        };
        store.submit(&[req]);
        let mut out = Vec::new();
        while out.is_empty() {
            store.complete(&mut out, Some(Duration::from_millis(100)));
        }
        out.remove(0).result
    }

    /// A remote of `pages` pages, page n filled with n+1.
    fn remote(pages: u8) -> Box<dyn Store> {
        let store = MemStore::new(u32::from(pages), 4);
        for n in 0..pages {
            let slot = store.alloc_slot().expect("slot");
            let mut p = Page::new(0);
            p.bytes().fill(n + 1);
            run(&store, IoKind::Write, slot.0, &mut p).expect("write");
        }
        Box::new(store)
    }

    #[test]
    fn a_remote_read_is_copied_and_the_next_read_is_local() {
        let (store, mirror) =
            MirrorStore::create(remote(4), 4, &std::env::temp_dir(), 4, Duration::ZERO)
                .expect("mirror");
        for p in 0..4 {
            mirror.want(p);
        }
        let mut page = Page::new(0);
        run(&store, IoKind::Read, 2, &mut page).expect("remote read");
        assert!(page.bytes().iter().all(|&b| b == 3));
        assert!(mirror.holds(2), "copied on read");
        assert_eq!(mirror.missing(), vec![0, 1, 3]);
        // The mirror file now answers: a copy put there wins over the remote.
        let mut other = Page::new(0);
        other.bytes().fill(0x77);
        mirror
            .put(1, other.bytes(), MirrorOrigin::Copy)
            .expect("put");
        run(&store, IoKind::Read, 1, &mut page).expect("local read");
        assert!(
            page.bytes().iter().all(|&b| b == 0x77),
            "read from the mirror"
        );
        run(&store, IoKind::Read, 2, &mut page).expect("local read");
        assert!(page.bytes().iter().all(|&b| b == 3));
        let c = mirror.counts();
        assert_eq!((c.wanted, c.held, c.demand, c.copied), (4, 2, 1, 1));
        // A forgotten page is read from the remote again.
        mirror.forget(1);
        run(&store, IoKind::Read, 1, &mut page).expect("remote read");
        assert!(page.bytes().iter().all(|&b| b == 2));
        assert_eq!(mirror.counts().demand, 2);
    }

    #[test]
    fn writes_and_slots_past_the_image_are_refused() {
        let (store, mirror) =
            MirrorStore::create(remote(2), 2, &std::env::temp_dir(), 4, Duration::ZERO)
                .expect("mirror");
        let mut page = Page::new(0);
        let e = run(&store, IoKind::Write, 0, &mut page).expect_err("read-only");
        assert!(
            matches!(
                e,
                IoError::Os {
                    errno: libc::EROFS,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = run(&store, IoKind::Read, 2, &mut page).expect_err("past the end");
        assert!(
            matches!(
                e,
                IoError::Os {
                    errno: libc::EINVAL,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(store.alloc_slot().is_err(), "a base hands out no slots");
        assert!(mirror.put(2, page.bytes(), MirrorOrigin::Copy).is_err());
        assert_eq!(mirror.counts().held, 0);
    }
}
