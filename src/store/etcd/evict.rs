//! The evictor: what time has made due, marked `down` or removed.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use super::metrics::Op as MOp;
use super::mirror;
use super::{lock, Shared, CALL_TIMEOUT, MAX_TXN_OPS};
use crate::clock;
use crate::view::View;

/// How often the evictor looks at what time has made due.
const EVICT_EVERY: Duration = Duration::from_secs(1);
/// Evictions done in one pass at most (the rest wait for the next second).
const EVICT_LIMIT: usize = 10_000;

/// The evictor thread: marks `down` the `up` instances whose lease expired,
/// removes what has been silent for `--evict-after`, in transactions of at
/// most [`MAX_TXN_OPS`] operations with a compare each; a batch that fails
/// is done again one action at a time (another server may have done some).
pub(super) fn run(s: &Shared, _view: &Weak<View>) {
    while s.rest(EVICT_EVERY) {
        if !s.healthy.load(Ordering::SeqCst) {
            continue;
        }
        let now_wall = clock::now().wall;
        let actions = lock(&s.mirror).due(s.periods, now_wall, EVICT_LIMIT);
        for batch in mirror::batches(&actions, &s.prefix, now_wall, MAX_TXN_OPS) {
            if s.stopped() {
                return;
            }
            let chosen: Vec<&mirror::Action> = batch.iter().map(|&i| &actions[i]).collect();
            let (compares, ops) = mirror::txn_of(&chosen, &s.prefix, now_wall);
            match s.call(MOp::Txn, |c| c.txn(&compares, &ops, CALL_TIMEOUT)) {
                Ok(done) if done.succeeded => {}
                Ok(_) if chosen.len() > 1 => {
                    for action in chosen {
                        let (compares, ops) = mirror::txn_of(&[action], &s.prefix, now_wall);
                        if s.call(MOp::Txn, |c| c.txn(&compares, &ops, CALL_TIMEOUT))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}
