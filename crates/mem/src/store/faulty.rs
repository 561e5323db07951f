//! Seeded fault injection on top of a real store: read and write errors, short
//! reads, lost and duplicated completions, and a full disk.
//!
//! Faults are decided when the inner store's completion arrives, so the inner I/O
//! has always finished with its buffer: a lost completion never leaves an I/O
//! running into memory its owner has given up on (the [`Store`] contract).

use std::collections::HashMap;
use std::time::Duration;

use super::rng::Rng;
use super::{IoCompletion, IoError, IoKind, IoRequest, Slot, Store, StoreFull, StoreInfo};
use crate::sync::{Mutex, lock};

/// Fault rates, each a probability per completion.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultConfig {
    /// Seed of the decisions.
    pub seed: u64,
    /// A read fails.
    pub read_error: f64,
    /// A write fails.
    pub write_error: f64,
    /// A read reports fewer than 4096 bytes.
    pub short_read: f64,
    /// A completion never arrives.
    pub lost: f64,
    /// A completion arrives twice.
    pub duplicate: f64,
    /// Every write to a slot at or past this one fails with ENOSPC, as on a
    /// full file system (which the allocator is not told of: the store keeps
    /// handing out slots it cannot fill, the worst a store can do).
    pub full_from_slot: Option<u32>,
}

/// A store with injected faults.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    cfg: FaultConfig,
    state: Mutex<FaultState>,
}

#[derive(Debug)]
struct FaultState {
    rng: Rng,
    kinds: HashMap<u64, (IoKind, Slot)>,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, cfg: FaultConfig) -> FaultyStore<S> {
        FaultyStore {
            inner,
            cfg,
            state: Mutex::new(FaultState {
                rng: Rng::new(cfg.seed),
                kinds: HashMap::new(),
            }),
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn info(&self) -> StoreInfo {
        let inner = self.inner.info();
        StoreInfo {
            description: format!("{} with injected faults {:?}", inner.description, self.cfg),
            ..inner
        }
    }

    fn alloc_slot(&self) -> Result<Slot, StoreFull> {
        self.inner.alloc_slot()
    }

    fn free_slot(&self, slot: Slot) {
        self.inner.free_slot(slot);
    }

    fn submit(&self, reqs: &[IoRequest]) {
        {
            let mut st = lock(&self.state);
            for r in reqs {
                st.kinds.insert(r.tag, (r.kind, r.slot));
            }
        }
        self.inner.submit(reqs);
    }

    fn complete(&self, out: &mut Vec<IoCompletion>, wait: Option<Duration>) -> usize {
        let mut fresh = Vec::new();
        self.inner.complete(&mut fresh, wait);
        let before = out.len();
        let mut st = lock(&self.state);
        let c = &self.cfg;
        for mut done in fresh {
            let Some((kind, slot)) = st.kinds.remove(&done.tag) else {
                continue;
            };
            let op = IoError::op_name(kind);
            if kind == IoKind::Write && c.full_from_slot.is_some_and(|full| slot.0 >= full) {
                done.result = Err(IoError::Os {
                    op,
                    slot: slot.0,
                    errno: libc::ENOSPC,
                });
            } else if done.result.is_ok() {
                let error_rate = if kind == IoKind::Read {
                    c.read_error
                } else {
                    c.write_error
                };
                if st.rng.chance(error_rate) {
                    done.result = Err(IoError::Injected { op, slot: slot.0 });
                } else if kind == IoKind::Read && st.rng.chance(c.short_read) {
                    let done_bytes = usize::try_from(st.rng.next_u64() % 4096).unwrap_or(0);
                    done.result = Err(IoError::Short {
                        op,
                        slot: slot.0,
                        done: done_bytes,
                    });
                }
            }
            if st.rng.chance(c.lost) {
                continue;
            }
            if st.rng.chance(c.duplicate) {
                out.push(done.clone());
            }
            out.push(done);
        }
        out.len() - before
    }
}
