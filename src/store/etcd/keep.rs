//! The keeper: this server's key and its lease (so that the other servers
//! learn when it is gone), and the quorum probe.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::client::Op;
use super::keys::{json, Key, ServerValue};
use super::metrics::Op as MOp;
use super::{lock, Shared, CALL_TIMEOUT};
use crate::clock;
use crate::view::View;

/// How often, at most, a probe checks etcd's quorum.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The keeper thread: keeps this server's lease alive every
/// `keep_every`; when etcd has dropped the lease or the key (it expired
/// while etcd was unreachable, or a resumed old leader of etcd 3.4 revoked
/// it, etcd-io/etcd#15247), writes the key again on a new lease at once, so
/// that the others never take this server for gone for longer than that.
/// Probes etcd's quorum with a linearizable read every second, so that
/// health recovers by itself.
pub(super) fn run(s: &Shared, _view: &Weak<View>) {
    let mut last_probe = Instant::now();
    let mut lost = false;
    while s.rest(s.keep_every) {
        let lease = *lock(&s.lease);
        let alive = if s.announce.swap(false, Ordering::SeqCst) {
            false
        } else {
            match s.call(MOp::KeepAlive, |c| c.keep_alive(lease, CALL_TIMEOUT)) {
                Ok(Some(_)) => true,
                Ok(None) => false,
                // Tried again next time; etcd is unreachable for now.
                Err(_) => continue,
            }
        };
        if !alive {
            if !lost {
                s.log.line(format_args!(
                    "store: this server's key in etcd is gone (its lease expired or was revoked); writing it again"
                ));
            }
            lost = !announce(s);
        } else if lost {
            lost = false;
        }
        if last_probe.elapsed() >= PROBE_EVERY {
            let key = s.key(Key::Periods);
            // A linearizable read needs a quorum, as a change does.
            let _ = s.call(MOp::Range, |c| c.range(&key, &[], CALL_TIMEOUT));
            last_probe = Instant::now();
        }
    }
}

/// Writes this server's key on a new lease; whether that worked.
fn announce(s: &Shared) -> bool {
    let Ok((lease, _)) = s.call(MOp::Grant, |c| c.grant_ttl(s.server_ttl, CALL_TIMEOUT)) else {
        s.announce.store(true, Ordering::SeqCst);
        return false;
    };
    let put = Op::Put(
        s.key(Key::Server(s.me.clone())),
        json(&ServerValue {
            since: clock::now().wall,
        }),
        lease,
    );
    match s.call(MOp::Txn, |c| c.txn(&[], &[put], CALL_TIMEOUT)) {
        Ok(_) => {
            *lock(&s.lease) = lease;
            true
        }
        Err(_) => {
            s.announce.store(true, Ordering::SeqCst);
            false
        }
    }
}
