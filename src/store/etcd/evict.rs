//! The evictor: the liveness rules (`liveness.rs`) applied to the mirror
//! every few hundred milliseconds, their writes handed to the committers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::commit::Decision;
use super::liveness::{self, Action};
use super::{lock, Shared};
use crate::clock;
use crate::view::View;

/// Writes decided in one pass at most (the rest wait for the next).
const EVICT_LIMIT: usize = 10_000;
/// An action handed over is not handed over again for this long (its
/// write may still be on its way).
const AGAIN_AFTER: Duration = Duration::from_secs(2);

/// The evictor thread: every `timing.every()`, what the rules make due
/// (claims released or taken over, instances marked `down`, what
/// `--evict-after` removes), each as a change with its compares; one that
/// fails is dropped, and decided anew from the mirror next time.
pub(super) fn run(s: &Shared, _view: &Weak<View>) {
    let every = Duration::from_millis(s.timing.every());
    let mut handed: HashMap<(String, String), Instant> = HashMap::new();
    while s.rest(every) {
        if !s.healthy.load(Ordering::SeqCst) {
            continue;
        }
        let now = clock::now();
        let actions = {
            let mut mirror = lock(&s.mirror);
            let forget = s.timing.orphan.saturating_add(s.timing.down_after);
            mirror.forget_gone(now.mono.saturating_sub(forget));
            liveness::due(&mirror, &s.me, s.timing, now, EVICT_LIMIT)
        };
        let at = Instant::now();
        handed.retain(|_, t| at.duration_since(*t) < AGAIN_AFTER);
        for action in actions {
            let key = match &action {
                Action::Claim { app, id, .. }
                | Action::MarkDown { app, id, .. }
                | Action::RemoveInstance { app, id, .. } => (app.clone(), id.clone()),
                Action::RemoveApp { app, .. } => (app.clone(), String::new()),
            };
            if handed.contains_key(&key) {
                continue;
            }
            handed.insert(key, at);
            let mut txn = Some(action.ops(&s.prefix, now.wall));
            s.submit_quietly(Box::new(move |_, _| match txn.take() {
                Some((compares, ops)) => Decision::Txn(compares, ops),
                None => Decision::Done(Ok(())),
            }));
        }
    }
}
