//! The keeper: this server's key and its lease (so that the other servers
//! learn when it is gone), the beats of instances whose heartbeats reach
//! this server while another claims them (so that that server learns of
//! them without a write), and the quorum probe.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::client::{Compare, Op, KEEP_ALIVE_BODY};
use super::keys::{json, Key, ServerValue};
use super::metrics::Op as MOp;
use super::{lock, Shared, CALL_TIMEOUT};
use crate::clock;
use crate::view::View;

/// How often the beats are sent.
const BEAT_EVERY: Duration = Duration::from_millis(100);
/// How often, at most, a probe checks etcd's quorum.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Beats to put, waiting, at most (one per instance a heartbeat of which
/// this server answered while another server claimed it); beyond, a later
/// heartbeat asks again.
const MAX_WANTED: usize = 100_000;
/// Beats put in one round at most (a lease grant each).
const PUT_A_ROUND: usize = 64;
/// Keep-alive requests of one round at most, each of [`KEEP_ALIVE_BODY`]
/// leases (more wait for the next round).
const KEEP_A_ROUND: usize = 1_000;

/// The beats: leases to keep alive, instances whose beat to put.
#[derive(Debug, Default)]
pub struct Beats {
    keep: HashSet<i64>,
    wanted: HashSet<(String, String)>,
}

impl Shared {
    /// After a heartbeat of `app/id` (claimed by another server when
    /// `theirs`): its beat is kept alive if it has one; else one is put if
    /// another server claims it.
    pub(super) fn beat(&self, app: &str, id: &str, beat: Option<i64>, theirs: bool) {
        match beat {
            Some(lease) => {
                lock(&self.beats).keep.insert(lease);
            }
            None if theirs => {
                let mut beats = lock(&self.beats);
                if beats.wanted.len() < MAX_WANTED {
                    beats.wanted.insert((app.to_string(), id.to_string()));
                }
            }
            None => {}
        }
    }
}

/// The keeper thread: every [`BEAT_EVERY`], the beats; every `keep_every`,
/// this server's lease (when etcd has dropped it or its key, because it
/// expired while etcd was unreachable or a resumed old leader of etcd 3.4
/// revoked it, etcd-io/etcd#15247, the key is written again on a new lease
/// at once, so that the others never take this server for gone for longer
/// than that); every second, a linearizable read that probes etcd's
/// quorum, so that health recovers by itself.
pub(super) fn run(s: &Shared, _view: &Weak<View>) {
    let mut last_keep = Instant::now();
    let mut last_probe = Instant::now();
    let mut lost = false;
    while s.rest(BEAT_EVERY.min(s.keep_every)) {
        keep_beats(s);
        put_beats(s);
        let announce = s.announce.swap(false, Ordering::SeqCst);
        if announce || last_keep.elapsed() >= s.keep_every {
            last_keep = Instant::now();
            let lease = *lock(&s.lease);
            let alive = !announce
                && match s.call(MOp::KeepAlive, |c| c.keep_alive(lease, CALL_TIMEOUT)) {
                    Ok(ttl) => ttl.is_some(),
                    // Tried again next time; etcd is unreachable for now.
                    Err(_) => true,
                };
            if !alive {
                if !lost {
                    s.log.line(format_args!(
                        "store: this server's key in etcd is gone (its lease expired or was revoked); writing it again"
                    ));
                }
                lost = !announce_me(s);
            } else {
                lost = false;
            }
        }
        if last_probe.elapsed() >= PROBE_EVERY {
            let key = s.key(Key::Periods);
            // A linearizable read needs a quorum, as a change does.
            let _ = s.call(MOp::Range, |c| c.range(&key, &[], CALL_TIMEOUT));
            last_probe = Instant::now();
        }
    }
}

/// Keeps the beats of this round's heartbeats alive, a few leases a
/// request; a lease etcd did not answer for (not renewed) is sent again.
fn keep_beats(s: &Shared) {
    let mut due: Vec<i64> = {
        let mut beats = lock(&s.beats);
        if beats.keep.is_empty() {
            return;
        }
        beats.keep.drain().collect()
    };
    let mut requests = 0;
    while !due.is_empty() && requests < KEEP_A_ROUND {
        requests += 1;
        let chunk: Vec<i64> = due.iter().take(KEEP_ALIVE_BODY).copied().collect();
        match s.call(MOp::KeepAlive, |c| c.keep_alive_many(&chunk, CALL_TIMEOUT)) {
            Ok(answered) => {
                // Renewed, or expired (its key is gone: a heartbeat puts a
                // new one once the view has seen it go).
                let done: HashSet<i64> = answered.into_iter().map(|(id, _)| id).collect();
                if done.is_empty() {
                    break;
                }
                let sent: HashSet<i64> = chunk.into_iter().collect();
                due.retain(|id| !sent.contains(id) || !done.contains(id));
            }
            Err(_) => break,
        }
    }
    // Not sent: with the next round's.
    lock(&s.beats).keep.extend(due);
}

/// Puts the beats asked for: a lease each (TTL `--down-after`), on a key
/// put only while the instance's claim is the one seen and no beat exists.
fn put_beats(s: &Shared) {
    let wanted: Vec<(String, String)> = {
        let mut beats = lock(&s.beats);
        let take: Vec<(String, String)> = beats.wanted.iter().take(PUT_A_ROUND).cloned().collect();
        for w in &take {
            beats.wanted.remove(w);
        }
        take
    };
    for (app, id) in wanted {
        let claim_rev = {
            let mirror = lock(&s.mirror);
            match mirror.instance(&app, &id) {
                Ok((_, inst)) if inst.beat.is_none() => match &inst.claim {
                    Some(c) if c.claim.by != s.me => c.create_rev,
                    _ => continue,
                },
                _ => continue,
            }
        };
        let Ok((lease, _)) = s.call(MOp::Grant, |c| c.grant_ttl(s.beat_ttl, CALL_TIMEOUT)) else {
            return;
        };
        let beat = s.key(Key::Beat(app.clone(), id.clone()));
        let alive = s.key(Key::Alive(app, id));
        // A lease left unused (the compare failed) expires by itself.
        let _ = s.call(MOp::Txn, |c| {
            c.txn(
                &[
                    Compare::CreateRevision(beat.clone(), 0),
                    Compare::CreateRevision(alive, claim_rev),
                ],
                &[Op::Put(beat, Vec::new(), lease)],
                CALL_TIMEOUT,
            )
        });
    }
}

/// Writes this server's key on a new lease; whether that worked.
fn announce_me(s: &Shared) -> bool {
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
