//! A FIFO with an express lane, for requests some thread is blocked on.

use std::collections::VecDeque;

/// A FIFO with an express lane. A request a thread is blocked on stops a whole
/// vCPU (a synchronous fault) or a host access, where an asynchronous one only
/// parks one guest process: it goes ahead of every asynchronous request queued,
/// in order among its kind. There is at most one per blocked thread, so the rest
/// cannot starve behind them.
#[derive(Debug)]
pub(crate) struct ExpressFifo<T> {
    express: VecDeque<T>,
    rest: VecDeque<T>,
}

impl<T> ExpressFifo<T> {
    pub(crate) fn new() -> Self {
        ExpressFifo {
            express: VecDeque::new(),
            rest: VecDeque::new(),
        }
    }

    /// Queues `item` at the back of its lane.
    pub(crate) fn push(&mut self, item: T, express: bool) {
        if express {
            self.express.push_back(item);
        } else {
            self.rest.push_back(item);
        }
    }

    /// Moves the first ordinary item that `is_it` picks to the back of the express
    /// lane (a blocked thread now waits for it too).
    pub(crate) fn promote(&mut self, is_it: impl Fn(&T) -> bool) {
        if let Some(at) = self.rest.iter().position(is_it)
            && let Some(item) = self.rest.remove(at)
        {
            self.express.push_back(item);
        }
    }

    /// The next item: express first.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.express.pop_front().or_else(|| self.rest.pop_front())
    }

    /// Whether `is_it` picks an item of either lane.
    pub(crate) fn contains(&self, is_it: impl Fn(&T) -> bool) -> bool {
        self.express.iter().chain(&self.rest).any(is_it)
    }

    pub(crate) fn len(&self) -> usize {
        self.express.len() + self.rest.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::ExpressFifo;

    fn drain(q: &mut ExpressFifo<u32>) -> Vec<u32> {
        std::iter::from_fn(|| q.pop_front()).collect()
    }

    #[test]
    fn express_items_go_first_and_each_lane_keeps_its_order() {
        let mut q = ExpressFifo::new();
        for (item, express) in [(1, false), (2, true), (3, false), (4, true), (5, false)] {
            q.push(item, express);
        }
        assert_eq!(q.len(), 5);
        assert_eq!(drain(&mut q), [2, 4, 1, 3, 5]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_promoted_item_joins_the_back_of_the_express_lane() {
        let mut q = ExpressFifo::new();
        for (item, express) in [(1, false), (2, true), (3, false), (4, false)] {
            q.push(item, express);
        }
        q.promote(|&i| i == 3);
        q.promote(|&i| i == 2); // already express: nothing moves
        q.promote(|&i| i == 9); // not queued: nothing happens
        assert_eq!(drain(&mut q), [2, 3, 1, 4]);
    }
}
