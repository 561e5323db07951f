//! The GFN slot table: which guest frames have an asynchronous fault in flight.
//!
//! A 64-entry open-addressing hash with linear probing and backward-shift deletion
//! (Knuth's Algorithm R), as KVM keeps it. It can never fill: at most
//! [`ASYNC_PF_PER_VCPU`] faults are outstanding, and each has one entry.

use apf_abi::{ASYNC_PF_PER_VCPU, Gfn};

const SLOTS: usize = ASYNC_PF_PER_VCPU;
const MASK: usize = SLOTS - 1;
const EMPTY: u64 = u64::MAX;
const _: () = assert!(SLOTS.is_power_of_two());

/// The table. Stores GFNs; `u64::MAX` marks a free entry and is never a GFN
/// (it would be an address beyond 2^76).
#[derive(Debug, Clone)]
pub struct GfnSlots {
    entries: [u64; SLOTS],
    len: usize,
}

impl Default for GfnSlots {
    fn default() -> Self {
        GfnSlots {
            entries: [EMPTY; SLOTS],
            len: 0,
        }
    }
}

/// Multiplicative (Fibonacci) hash of a GFN down to 6 bits.
fn home(gfn: u64) -> usize {
    let folded = gfn ^ (gfn >> 32);
    let mixed = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The top 6 bits are the best mixed; the shift leaves a value below 64.
    usize::try_from(mixed >> (64 - SLOTS.trailing_zeros())).unwrap_or(0)
}

impl GfnSlots {
    /// Number of GFNs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `gfn`. Returns false if it is already present or the table is full (both
    /// are caller bugs the engine never commits; they are reported, not panicked on).
    pub fn add(&mut self, gfn: Gfn) -> bool {
        if gfn.0 == EMPTY || self.len == SLOTS || self.contains(gfn) {
            return false;
        }
        // Entries are raw frame numbers so that `EMPTY` can mark a free one.
        let gfn = gfn.0;
        let mut i = home(gfn);
        while self.entries[i] != EMPTY {
            i = (i + 1) & MASK;
        }
        self.entries[i] = gfn;
        self.len += 1;
        true
    }

    fn find(&self, gfn: u64) -> Option<usize> {
        if gfn == EMPTY {
            return None;
        }
        let mut i = home(gfn);
        for _ in 0..SLOTS {
            match self.entries[i] {
                e if e == gfn => return Some(i),
                EMPTY => return None,
                _ => i = (i + 1) & MASK,
            }
        }
        None
    }

    /// Whether `gfn` is present.
    pub fn contains(&self, gfn: Gfn) -> bool {
        self.find(gfn.0).is_some()
    }

    /// Removes `gfn`; returns whether it was present. Later entries of the probe
    /// chain are shifted back so that no lookup meets a false hole.
    pub fn remove(&mut self, gfn: Gfn) -> bool {
        let Some(mut hole) = self.find(gfn.0) else {
            return false;
        };
        let mut j = hole;
        loop {
            self.entries[hole] = EMPTY;
            loop {
                j = (j + 1) & MASK;
                if self.entries[j] == EMPTY {
                    self.len -= 1;
                    return true;
                }
                let k = home(self.entries[j]);
                // Entry j may stay where it is if its home lies cyclically in (hole, j].
                let stays = if hole <= j {
                    hole < k && k <= j
                } else {
                    hole < k || k <= j
                };
                if !stays {
                    break;
                }
            }
            self.entries[hole] = self.entries[j];
            hole = j;
        }
    }

    /// Forgets every GFN.
    pub fn clear(&mut self) {
        *self = GfnSlots::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// GFNs that all hash to the same home slot, to exercise long probe chains.
    fn colliding(n: usize) -> Vec<u64> {
        let target = home(0);
        (0u64..).filter(|&g| home(g) == target).take(n).collect()
    }

    #[test]
    fn delete_from_a_collision_chain_keeps_the_rest_findable() {
        let gfns = colliding(10);
        let mut t = GfnSlots::default();
        for &g in &gfns {
            assert!(t.add(Gfn(g)));
        }
        assert!(t.remove(Gfn(gfns[0])));
        for &g in &gfns[1..] {
            assert!(
                t.contains(Gfn(g)),
                "{g:#x} lost after deleting the chain head"
            );
        }
        assert!(!t.contains(Gfn(gfns[0])));
        assert_eq!(t.len(), 9);
    }

    #[test]
    fn wrap_around_chains_survive_deletion() {
        // Fill the table completely: every probe chain wraps somewhere.
        let mut t = GfnSlots::default();
        let gfns: Vec<u64> = (0..64u64).map(|i| i * 7919 + 3).collect();
        for &g in &gfns {
            assert!(t.add(Gfn(g)));
        }
        assert!(!t.add(Gfn(999_999)), "a full table refuses");
        for (n, &g) in gfns.iter().enumerate() {
            assert!(t.remove(Gfn(g)));
            for &rest in &gfns[n + 1..] {
                assert!(t.contains(Gfn(rest)));
            }
        }
        assert!(t.is_empty());
    }

    #[test]
    fn duplicates_and_the_empty_marker_are_refused() {
        let mut t = GfnSlots::default();
        assert!(t.add(Gfn(5)));
        assert!(!t.add(Gfn(5)));
        assert!(!t.add(Gfn(u64::MAX)));
        assert!(!t.contains(Gfn(u64::MAX)));
        assert!(!t.remove(Gfn(6)));
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((any::<bool>(), 0u64..200), 0..400)) {
            let mut t = GfnSlots::default();
            let mut model = HashSet::new();
            for (insert, g) in ops {
                if insert {
                    let fits = model.len() < SLOTS && !model.contains(&g);
                    prop_assert_eq!(t.add(Gfn(g)), fits);
                    if fits { model.insert(g); }
                } else {
                    prop_assert_eq!(t.remove(Gfn(g)), model.remove(&g));
                }
                prop_assert_eq!(t.len(), model.len());
                for g in 0u64..200 {
                    prop_assert_eq!(t.contains(Gfn(g)), model.contains(&g));
                }
            }
        }
    }
}
