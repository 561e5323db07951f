//! Reading many slots of a store at its queue depth into buffers of its own:
//! an eager restore reads a snapshot's image this way, through the same store
//! (and the same added latency) a lazy restore reads it through.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::time::Duration;

use super::{IoBuf, IoCompletion, IoError, IoKind, IoRequest, Slot, Store};
use crate::ram::{GuestRam, PAGE};

/// How long to wait for completions at once before looking again.
const WAIT: Duration = Duration::from_millis(100);

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
/// for (up to `timeout` each) before the buffers are released.
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
    let mut tag = 0u64;
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
                tag += 1;
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
                // The buffers stay mapped: a store that lost a completion has
                // finished with its buffer (the Store contract).
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
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn every_slot_is_read_once_with_its_contents() {
        let store = MemStore::new(64, 4);
        let src = GuestRam::new(64 * PAGE).unwrap();
        let mut reqs = Vec::new();
        for n in 0..64u8 {
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
        while out.len() < 64 {
            store.complete(&mut out, Some(WAIT));
        }
        let want: Vec<Slot> = (0..64).rev().map(Slot).collect();
        let mut seen = Vec::new();
        read_slots(&store, &want, Duration::from_secs(5), |slot, page| {
            assert!(page.iter().all(|&b| u32::from(b) == slot.0), "{slot:?}");
            seen.push(slot);
            Ok::<(), ()>(())
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
}
