//! Pages kept in host memory: for tests (and the model checker), never a real
//! configuration's swap. I/O happens at submission; completions queue until
//! collected.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::{IoCompletion, IoKind, IoRequest, Slot, SlotAllocator, Store, StoreFull, StoreInfo};
use crate::ram::PAGE;
use crate::sync::{Condvar, Mutex, lock, wait_timeout};

/// A store in host memory.
#[derive(Debug)]
pub struct MemStore {
    slots: SlotAllocator,
    state: Mutex<MemState>,
    ready: Condvar,
    depth: usize,
}

#[derive(Debug, Default)]
struct MemState {
    pages: HashMap<u32, Box<[u8]>>,
    done: VecDeque<IoCompletion>,
}

impl MemStore {
    /// A store of `capacity` slots running `depth` requests at once.
    pub fn new(capacity: u32, depth: usize) -> MemStore {
        MemStore {
            slots: SlotAllocator::new(capacity),
            state: Mutex::new(MemState::default()),
            ready: Condvar::new(),
            depth: depth.max(1),
        }
    }
}

impl Store for MemStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            description: "memory (tests only)".into(),
            queue_depth: self.depth,
        }
    }

    fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        self.slots.alloc()
    }

    fn free_slot(&self, slot: Slot) {
        lock(&self.state).pages.remove(&slot.0);
        self.slots.free(slot);
    }

    fn submit(&self, reqs: &[IoRequest]) {
        let mut st = lock(&self.state);
        for r in reqs {
            match r.kind {
                IoKind::Write => {
                    let mut page = vec![0u8; PAGE].into_boxed_slice();
                    // SAFETY: IoBuf's contract: the buffer is valid for 4096 bytes.
                    unsafe { crate::ram::copy_from_shared(r.buf.as_ptr(), &mut page) };
                    st.pages.insert(r.slot.0, page);
                }
                IoKind::Read => {
                    let zero = [0u8; PAGE];
                    let src = st.pages.get(&r.slot.0).map_or(&zero[..], |p| &p[..]);
                    // SAFETY: IoBuf's contract: the buffer is valid and ours until completion.
                    unsafe { crate::ram::copy_to_shared(src, r.buf.as_ptr()) };
                }
            }
            st.done.push_back(IoCompletion {
                tag: r.tag,
                result: Ok(()),
            });
        }
        drop(st);
        self.ready.notify_all();
    }

    fn complete(&self, out: &mut Vec<IoCompletion>, wait_for: Option<Duration>) -> usize {
        let mut st = lock(&self.state);
        if let Some(d) = wait_for
            && st.done.is_empty()
        {
            // Completions exist from submission on, so a caller that waits with
            // something in flight never sleeps here.
            st = wait_timeout(&self.ready, st, d);
        }
        let n = st.done.len();
        out.extend(st.done.drain(..));
        n
    }
}
