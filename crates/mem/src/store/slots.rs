//! Slot allocation: a free list over a growing range of slots.

use std::sync::Mutex;

use super::{Slot, StoreFull};

/// Hands out slots, lowest never-used first once the free list is empty, up to a
/// capacity.
#[derive(Debug)]
pub struct SlotAllocator {
    inner: Mutex<Slots>,
    capacity: u32,
}

#[derive(Debug)]
struct Slots {
    free: Vec<u32>,
    next_unused: u32,
    in_use: u32,
}

impl SlotAllocator {
    /// An allocator of at most `capacity` slots.
    pub fn new(capacity: u32) -> SlotAllocator {
        SlotAllocator {
            inner: Mutex::new(Slots {
                free: Vec::new(),
                next_unused: 0,
                in_use: 0,
            }),
            capacity,
        }
    }

    /// Takes a slot.
    pub fn alloc(&self) -> Result<Slot, StoreFull> {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = if let Some(v) = s.free.pop() {
            v
        } else if s.next_unused < self.capacity {
            s.next_unused += 1;
            s.next_unused - 1
        } else {
            return Err(StoreFull {
                capacity: self.capacity,
            });
        };
        s.in_use += 1;
        Ok(Slot(slot))
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
        s.free.push(slot.0);
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
}
