//! The keeper: lease keep-alives, batched, and the quorum probe.

use std::sync::Weak;
use std::time::{Duration, Instant};

use super::metrics::Op as MOp;
use super::mirror::Key;
use super::{lock, Shared, CALL_TIMEOUT};
use crate::view::View;

/// How often queued keep-alives are sent.
pub const KEEP_EVERY: Duration = Duration::from_millis(100);
/// Leases per keep-alive request.
const KEEP_BATCH: usize = 1000;
/// How often, when no keep-alive has gone, a probe checks etcd's quorum.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The keeper thread: sends the queued keep-alives, batched, and probes
/// etcd's quorum when there are none, so that health recovers by itself.
pub(super) fn run(s: &Shared, _view: &Weak<View>) {
    let mut last_contact = Instant::now();
    while s.rest(KEEP_EVERY) {
        let unused = std::mem::take(&mut *lock(&s.unused));
        for lease in unused {
            if s.call(MOp::Revoke, |c| c.revoke(lease, CALL_TIMEOUT))
                .is_err()
            {
                break;
            }
        }
        let due: Vec<i64> = lock(&s.leases).drain().collect();
        if !due.is_empty() {
            for (i, batch) in due.chunks(KEEP_BATCH).enumerate() {
                if s.call(MOp::KeepAlive, |c| c.keep_alive(batch, CALL_TIMEOUT))
                    .is_err()
                {
                    // Sent again next time (heartbeats meanwhile answer 503).
                    lock(&s.leases).extend(due[i * KEEP_BATCH..].iter().copied());
                    break;
                }
                last_contact = Instant::now();
            }
        } else if last_contact.elapsed() >= PROBE_EVERY {
            let key = s.key(Key::Periods);
            // A linearizable read needs a quorum, as a change does.
            if s.call(MOp::Range, |c| c.range(&key, &[], CALL_TIMEOUT))
                .is_ok()
            {
                last_contact = Instant::now();
            }
        }
    }
}
