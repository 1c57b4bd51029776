//! The queue of connections ready to be served, and the hand-off to it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::conn::{Conn, AGAIN, BUSY, IDLE};
use super::{lock, Shared};

/// Connections ready to be served, and how many workers wait for one.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) jobs: VecDeque<Arc<Conn>>,
    pub(super) waiting: usize,
}

impl Shared {
    /// Hands `conn` to a worker, or, if one has it, tells it to look again.
    pub(super) fn dispatch(&self, conn: &Arc<Conn>, batch: &mut Vec<Arc<Conn>>) {
        loop {
            match conn.state.load(Ordering::SeqCst) {
                IDLE => {
                    if conn
                        .state
                        .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        batch.push(Arc::clone(conn));
                        return;
                    }
                }
                BUSY => {
                    if conn
                        .state
                        .compare_exchange(BUSY, AGAIN, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    pub(super) fn enqueue(&self, batch: &mut Vec<Arc<Conn>>) {
        if batch.is_empty() {
            return;
        }
        // Wake as many waiting workers as there are jobs, no more: the
        // others are busy and take the rest as they finish.
        let wake = {
            let mut queue = lock(&self.queue);
            let wake = batch.len().min(queue.waiting);
            queue.jobs.extend(batch.drain(..));
            wake
        };
        for _ in 0..wake {
            self.work.notify_one();
        }
    }

    /// Puts `conn`, whose turn on a worker is over, at the back of the queue
    /// (its state stays `BUSY`: it is still owned by the workers).
    pub(super) fn requeue(&self, conn: &Arc<Conn>) {
        let wake = {
            let mut queue = lock(&self.queue);
            queue.jobs.push_back(Arc::clone(conn));
            queue.waiting > 0
        };
        if wake {
            self.work.notify_one();
        }
    }
}
