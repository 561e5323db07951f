//! Reading many slots of a store at its queue depth into buffers of its own:
//! an eager restore reads a snapshot's image this way, through the same store
//! (and the same added latency) a lazy restore reads it through.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{IoBuf, IoCompletion, IoError, IoKind, IoRequest, Slot, Store};
use crate::ram::{GuestRam, PAGE};

/// How long to wait for completions at once before looking again.
const WAIT: Duration = Duration::from_millis(100);

/// Tags of every call's requests, never reused: a read that completes after
/// its call gave up on it (a slow store, not a lost completion) must not be
/// taken for a later call's request on the same store.
static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

/// Why [`read_slots`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum BulkReadError<E> {
    /// The buffers could not be mapped.
    #[error("cannot map {pages} pages of read buffers: {source}")]
    Buffers {
        /// Pages asked for.
        pages: usize,
        /// Why.
        source: std::io::Error,
    },
    /// A read failed.
    #[error("{0}")]
    Io(IoError),
    /// No completion came for this long: the store lost one.
    #[error("{0} reads did not complete within {1:?}")]
    Stalled(usize, Duration),
    /// The visitor stopped.
    #[error("{0}")]
    Visit(E),
}

/// Reads every slot of `slots` from `store`, up to its queue depth at once,
/// and calls `visit` with each page as its read completes (in completion
/// order). Stops at the first error; requests still in flight are then waited
/// for (up to `timeout` each) before the buffers are released. Requests the
/// store has not completed within `timeout` keep their buffers for good: the
/// store may still write them.
pub fn read_slots<E>(
    store: &dyn Store,
    slots: &[Slot],
    timeout: Duration,
    mut visit: impl FnMut(Slot, &[u8]) -> Result<(), E>,
) -> Result<(), BulkReadError<E>> {
    let depth = store.info().queue_depth.clamp(1, slots.len().max(1));
    let buffers = GuestRam::new(depth * PAGE).map_err(|source| BulkReadError::Buffers {
        pages: depth,
        source,
    })?;
    let mut free: Vec<usize> = (0..depth).collect();
    // tag → (slot, buffer index)
    let mut inflight: HashMap<u64, (Slot, usize)> = HashMap::new();
    let mut next = slots.iter();
    let mut done: Vec<IoCompletion> = Vec::new();
    let mut page = vec![0u8; PAGE];
    let mut result = Ok(());
    loop {
        if result.is_ok() {
            let mut batch = Vec::new();
            while let Some(b) = free.pop() {
                let Some(&slot) = next.next() else {
                    free.push(b);
                    break;
                };
                let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
                inflight.insert(tag, (slot, b));
                let ptr = NonNull::new(buffers.page_ptr(b)).expect("mapped");
                batch.push(IoRequest {
                    tag,
                    kind: IoKind::Read,
                    slot,
                    // SAFETY: page `b` of our own mapping, page-aligned and 4096
                    // bytes; it is in no other request until this one completes
                    // (it returns to `free` only then), and the mapping outlives
                    // every request: this function waits for them all.
                    buf: unsafe { IoBuf::new(ptr) },
                });
            }
            if !batch.is_empty() {
                store.submit(&batch);
            }
        }
        if inflight.is_empty() {
            return result;
        }
        done.clear();
        let mut waited = Duration::ZERO;
        while store.complete(&mut done, Some(WAIT)) == 0 {
            waited += WAIT;
            if waited >= timeout {
                // A store that lost a completion has finished with its buffer
                // (the Store contract), but a slow one has not: its late read
                // must land in memory nobody else is given. The buffers stay
                // mapped (leaked: `depth` pages, once per stall).
                std::mem::forget(buffers);
                return Err(BulkReadError::Stalled(inflight.len(), timeout));
            }
        }
        for c in &done {
            let Some((slot, b)) = inflight.remove(&c.tag) else {
                continue;
            };
            free.push(b);
            if result.is_err() {
                continue;
            }
            if let Err(e) = &c.result {
                result = Err(BulkReadError::Io(e.clone()));
                continue;
            }
            // SAFETY: the read into page `b` has completed and no request
            // holds it now.
            unsafe { crate::ram::copy_from_shared(buffers.page_ptr(b), &mut page) };
            if let Err(e) = visit(slot, &page) {
                result = Err(BulkReadError::Visit(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::MemStore;
    use crate::store::{StoreFull, StoreInfo};

    /// A store whose slot n holds a page of byte n, for n in 0..pages.
    fn store_with_pages(pages: u8, depth: usize) -> MemStore {
        let store = MemStore::new(u32::from(pages), depth);
        let src = GuestRam::new(usize::from(pages) * PAGE).unwrap();
        let mut reqs = Vec::new();
        for n in 0..pages {
            let slot = store.alloc_slot().unwrap();
            // SAFETY: page n of our mapping, written before the request.
            unsafe { crate::ram::copy_to_shared(&[n; PAGE], src.page_ptr(usize::from(n))) };
            reqs.push(IoRequest {
                tag: u64::from(n),
                kind: IoKind::Write,
                slot,
                // SAFETY: page n of our mapping, used by this request only.
                buf: unsafe { IoBuf::new(NonNull::new(src.page_ptr(usize::from(n))).unwrap()) },
            });
        }
        store.submit(&reqs);
        let mut out = Vec::new();
        while out.len() < usize::from(pages) {
            store.complete(&mut out, Some(WAIT));
        }
        store
    }

    fn holds_its_own_byte(slot: Slot, page: &[u8]) -> Result<(), String> {
        match page.iter().find(|&&b| u32::from(b) != slot.0) {
            Some(b) => Err(format!("slot {} read back byte {b}", slot.0)),
            None => Ok(()),
        }
    }

    #[test]
    fn every_slot_is_read_once_with_its_contents() {
        let store = store_with_pages(64, 4);
        let want: Vec<Slot> = (0..64).rev().map(Slot).collect();
        let mut seen = Vec::new();
        read_slots(&store, &want, Duration::from_secs(5), |slot, page| {
            seen.push(slot);
            holds_its_own_byte(slot, page)
        })
        .unwrap();
        seen.sort();
        assert_eq!(seen, (0..64).map(Slot).collect::<Vec<_>>());
        let e = read_slots(&store, &want, Duration::from_secs(5), |slot, _| {
            if slot.0 == 10 { Err("stop") } else { Ok(()) }
        })
        .unwrap_err();
        assert!(matches!(e, BulkReadError::Visit("stop")));
    }

    /// When [`Parked`] lets its requests through.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Release {
        Never,
        /// The oldest one at each `complete`.
        OldestOneAtATime,
        /// All at the next `complete`, the newest first.
        AllNewestFirst,
    }

    /// A slow store: requests wait, buffers and all, until the test lets them
    /// through to the memory store behind it.
    #[derive(Debug)]
    struct Parked {
        inner: MemStore,
        parked: Mutex<Vec<IoRequest>>,
        release: Mutex<Release>,
    }

    impl Store for Parked {
        fn info(&self) -> StoreInfo {
            self.inner.info()
        }
        fn alloc_slot(&self) -> Result<Slot, StoreFull> {
            self.inner.alloc_slot()
        }
        fn free_slot(&self, slot: Slot) {
            self.inner.free_slot(slot);
        }
        fn submit(&self, reqs: &[IoRequest]) {
            self.parked.lock().unwrap().extend_from_slice(reqs);
        }
        fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
            let through: Vec<IoRequest> = {
                let mut parked = self.parked.lock().unwrap();
                match *self.release.lock().unwrap() {
                    Release::Never => Vec::new(),
                    Release::OldestOneAtATime if parked.is_empty() => Vec::new(),
                    Release::OldestOneAtATime => vec![parked.remove(0)],
                    Release::AllNewestFirst => parked.drain(..).rev().collect(),
                }
            };
            if through.is_empty() {
                return self.inner.complete(out, wait);
            }
            self.inner.submit(&through);
            self.inner.complete(out, None)
        }
    }

    /// Reads slot 1 with nothing let through, so the call gives up with the
    /// read still in the store; then reads slot 2 with the requests let
    /// through by `release`, the stalled one among them.
    fn read_slot_2_after_a_stall(release: Release) -> Result<(), BulkReadError<String>> {
        let store = Parked {
            inner: store_with_pages(4, 4),
            parked: Mutex::new(Vec::new()),
            release: Mutex::new(Release::Never),
        };
        let e = read_slots(&store, &[Slot(1)], WAIT * 3, holds_its_own_byte).unwrap_err();
        assert!(matches!(e, BulkReadError::Stalled(1, _)), "{e}");
        *store.release.lock().unwrap() = release;
        read_slots(
            &store,
            &[Slot(2)],
            Duration::from_secs(5),
            holds_its_own_byte,
        )
    }

    #[test]
    fn a_read_that_ends_after_its_call_gave_up_writes_a_buffer_no_later_call_uses() {
        // Slot 2's read lands first, then the stalled read of slot 1: into the
        // first call's buffer, which must not be the second's.
        read_slot_2_after_a_stall(Release::AllNewestFirst).unwrap();
    }

    #[test]
    fn a_read_that_ends_after_its_call_gave_up_is_not_taken_for_a_later_calls_read() {
        // The stalled read of slot 1 completes before slot 2's has run: its
        // completion must not end that read.
        read_slot_2_after_a_stall(Release::OldestOneAtATime).unwrap();
    }
}
