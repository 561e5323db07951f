//! Slot allocation: a free list over a growing range of slots, which shrinks when
//! the file system behind them runs out of room.

use std::sync::Mutex;

use super::{Slot, StoreFull};

/// Hands out slots, lowest never-used first once the free list is empty, up to a
/// capacity.
#[derive(Debug)]
pub struct SlotAllocator {
    inner: Mutex<Slots>,
}

#[derive(Debug)]
struct Slots {
    free: Vec<u32>,
    next_unused: u32,
    in_use: u32,
    /// Slots from here on are not handed out: the capacity, lowered by
    /// [`SlotAllocator::refuse_from`].
    limit: u32,
}

impl SlotAllocator {
    /// An allocator of at most `capacity` slots.
    pub fn new(capacity: u32) -> SlotAllocator {
        SlotAllocator {
            inner: Mutex::new(Slots {
                free: Vec::new(),
                next_unused: 0,
                in_use: 0,
                limit: capacity,
            }),
        }
    }

    /// Takes a slot.
    pub fn alloc(&self) -> Result<Slot, StoreFull> {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Freed slots at or past the limit were freed before it fell: drop them.
        let limit = s.limit;
        s.free.retain(|&v| v < limit);
        let slot = if let Some(v) = s.free.pop() {
            v
        } else if s.next_unused < s.limit {
            s.next_unused += 1;
            s.next_unused - 1
        } else {
            return Err(StoreFull { capacity: s.limit });
        };
        s.in_use += 1;
        Ok(Slot(slot))
    }

    /// The file system had no room for a write to `slot`: slots from `slot` on
    /// are not handed out again. Those that hold pages stay valid until freed.
    /// Space is found only in slots written before (a file system has room for
    /// a block it already holds), so the store shrinks to them; it does not
    /// grow back if room is made later.
    pub fn refuse_from(&self, slot: Slot) {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.limit = s.limit.min(slot.0);
    }

    /// Returns a slot taken with [`SlotAllocator::alloc`].
    pub fn free(&self, slot: Slot) {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        debug_assert!(
            slot.0 < s.next_unused && !s.free.contains(&slot.0),
            "double free of {slot:?}"
        );
        s.in_use -= 1;
        if slot.0 < s.limit {
            s.free.push(slot.0);
        }
    }

    /// Slots now taken.
    pub fn in_use(&self) -> u32 {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_freed_slots_and_stops_at_capacity() {
        let a = SlotAllocator::new(2);
        let s0 = a.alloc().unwrap();
        let s1 = a.alloc().unwrap();
        assert_ne!(s0, s1);
        assert_eq!(a.alloc(), Err(StoreFull { capacity: 2 }));
        a.free(s0);
        assert_eq!(a.in_use(), 1);
        assert_eq!(a.alloc(), Ok(s0));
        assert_eq!(a.in_use(), 2);
    }

    #[test]
    fn a_refused_slot_and_those_after_it_are_not_handed_out_again() {
        let a = SlotAllocator::new(8);
        let slots: Vec<Slot> = (0..5).map(|_| a.alloc().unwrap()).collect();
        a.free(slots[1]);
        a.free(slots[3]);
        a.refuse_from(slots[3]);
        // Slot 3 (freed before the refusal) and 4 (freed after) are gone; slot 1
        // was written before and is still good.
        a.free(slots[4]);
        assert_eq!(a.alloc(), Ok(slots[1]));
        assert_eq!(a.alloc(), Err(StoreFull { capacity: 3 }));
        assert_eq!(a.in_use(), 3);
        // A later refusal below the limit lowers it further.
        a.refuse_from(Slot(1));
        a.free(slots[2]);
        a.free(slots[1]);
        assert_eq!(a.alloc(), Err(StoreFull { capacity: 1 }));
        assert_eq!(a.in_use(), 1);
    }
}
