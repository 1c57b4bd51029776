//! Timers: when the poller looks at a connection next.

use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

use crate::registry::Millis;

use super::conn::Conn;
use super::{lock, Shared, NEVER};

impl Shared {
    /// Makes sure the poller looks at `conn` by `at`.
    pub(super) fn schedule(&self, conn: &Conn, at: Millis) {
        conn.deadline.store(at, Ordering::SeqCst);
        self.arm(conn, at);
    }

    /// Makes sure a timer fires for `conn` by `at`.
    pub(super) fn arm(&self, conn: &Conn, at: Millis) {
        if at >= conn.scheduled.load(Ordering::SeqCst) {
            return; // an earlier timer will look, and find this one
        }
        let mut timers = lock(&self.timers);
        if at < conn.scheduled.load(Ordering::SeqCst) {
            conn.scheduled.store(at, Ordering::SeqCst);
            timers.push(at, conn.slot, conn.id);
            if at < timers.armed {
                timers.armed = at;
                drop(timers);
                let _ = self.waker.wake();
            }
        }
    }
}

/// Timers: a heap of (when, slot, connection id), at most a few per
/// connection (a later deadline does not add one: the earlier timer, when it
/// fires, finds the connection's real deadline and queues that).
#[derive(Debug)]
pub(super) struct Timers {
    pub(super) heap: BinaryHeap<std::cmp::Reverse<(Millis, usize, u64)>>,
    /// When the poller will wake next at the latest.
    pub(super) armed: Millis,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            armed: NEVER,
        }
    }
}

impl Timers {
    pub(super) fn push(&mut self, at: Millis, slot: usize, id: u64) {
        self.heap.push(std::cmp::Reverse((at, slot, id)));
    }

    /// The next timer due at `now`, if any.
    pub(super) fn pop_due(&mut self, now: Millis) -> Option<(usize, u64)> {
        match self.heap.peek() {
            Some(std::cmp::Reverse((at, _, _))) if *at <= now => self
                .heap
                .pop()
                .map(|std::cmp::Reverse((_, slot, id))| (slot, id)),
            _ => None,
        }
    }

    pub(super) fn next(&self) -> Millis {
        self.heap
            .peek()
            .map_or(NEVER, |std::cmp::Reverse((at, _, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_deadline_order_and_not_before() {
        let mut t = Timers::default();
        assert_eq!(t.next(), NEVER);
        t.push(500, 1, 10);
        t.push(100, 2, 20);
        t.push(300, 3, 30);
        assert_eq!(t.next(), 100);
        assert_eq!(t.pop_due(99), None);
        assert_eq!(t.pop_due(300), Some((2, 20)));
        assert_eq!(t.pop_due(300), Some((3, 30)));
        assert_eq!(t.pop_due(300), None);
        assert_eq!(t.next(), 500);
        assert_eq!(t.pop_due(u64::MAX - 1), Some((1, 10)));
    }
}
