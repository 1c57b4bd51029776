//! When an instance reads `down`, and what time removes: the rules every
//! server applies to the mirror, pure (time is passed in).
//!
//! Heartbeats are counted in the memory of the server that answers them
//! (`seen` in the mirror); no heartbeat that changes no status writes to
//! etcd. The instance's claim names the server that decides: while that
//! server sees heartbeats nothing is written. Heartbeats that reach other
//! servers keep the instance's beat alive (a lease, kept alive without a
//! write, on a key the first of them put); while the beat exists, the
//! claim's server knows that someone has seen a heartbeat. Once it has seen
//! none for `--down-after` less the release time, and there is no beat, it
//! releases the claim (a write); a server that has seen one since takes the
//! claim over (a write); else, `--down-after` after its last heartbeat and
//! at least the release time after the release, the claim's server marks
//! the instance `down` (a write with a revision of its own). When the
//! claim's server is gone (its key, on its lease, expired), a server that
//! has seen a heartbeat takes the claim over, and the others mark the
//! instance `down` once the gone server's last heartbeat could be
//! `--down-after` old.
//!
//! So `down` comes from time only: nothing etcd does to a lease (a resumed
//! old leader of etcd 3.4 revoking leases it wrongly believes expired,
//! etcd-io/etcd#15247) makes an instance read `down`; a server whose own
//! lease was revoked writes its key again at once.

use super::client::{Compare, Op};
use super::keys::{json, AppValue, Claim, InstValue, Key, Stored};
use super::mirror::{InstRec, Mirror};
use crate::clock::Now;
use crate::registry::{Millis, Periods};

/// The times the rules use, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `--down-after`.
    pub down_after: Millis,
    /// `--evict-after`.
    pub evict_after: Millis,
    /// How long before `down_after` of silence a claim is released, which
    /// is also the time the other servers have to take it over.
    pub release: Millis,
    /// How long after a claim's server is found gone the others mark its
    /// instance `down` (when none of them has seen a heartbeat): its last
    /// heartbeat is then at least `down_after` old.
    pub orphan: Millis,
}

impl Timing {
    /// The timing of a registry with `periods`, on a server whose own key
    /// is on a lease of `server_ttl` renewed every `keep_every`.
    pub fn new(periods: Periods, server_ttl: Millis, keep_every: Millis) -> Timing {
        let d = periods.down_after;
        let release = (d / 5).clamp(300, 10_000).min(d);
        // A gone server's key expired `server_ttl` after its last
        // keep-alive, which came at most `keep_every` before it went: its
        // last heartbeat is `down_after` old `orphan` after the expiry.
        let orphan = d
            .saturating_sub(server_ttl)
            .saturating_add(keep_every)
            .max(release);
        Timing {
            down_after: d,
            evict_after: periods.evict_after,
            release,
            orphan,
        }
    }

    /// How often the rules are applied.
    pub fn every(&self) -> Millis {
        (self.release / 3).clamp(50, 1_000)
    }
}

/// One thing to write, with the compares that make it safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Release this server's claim, or take a claim over (or back).
    Claim {
        /// App.
        app: String,
        /// Instance.
        id: String,
        /// Its claim's `mod_revision` as seen.
        claim_rev: i64,
        /// The new claim.
        claim: Claim,
    },
    /// Mark an instance `down` (its claim goes).
    MarkDown {
        /// App.
        app: String,
        /// Instance.
        id: String,
        /// Its key's `mod_revision` as seen.
        mod_rev: i64,
        /// Its claim's `mod_revision` as seen.
        claim_rev: i64,
        /// The new value.
        value: InstValue,
    },
    /// Remove an instance (and note the time in its app's key).
    RemoveInstance {
        /// App.
        app: String,
        /// Instance.
        id: String,
        /// Its key's `mod_revision` as seen.
        mod_rev: i64,
    },
    /// Remove an app without instances.
    RemoveApp {
        /// App.
        app: String,
        /// Its key's `mod_revision` as seen.
        mod_rev: i64,
    },
}

/// What this server (`me`) has to write at `now`; at most `limit` actions.
pub fn due(mirror: &Mirror, me: &str, t: Timing, now: Now, limit: usize) -> Vec<Action> {
    let mut out = Vec::new();
    let mut names: Vec<_> = mirror.apps.keys().collect();
    names.sort_unstable();
    for name in names {
        let rec = &mirror.apps[name];
        if rec.instances.is_empty()
            && rec.create_rev > 0
            && now.wall > rec.since.saturating_add(t.evict_after)
        {
            out.push(Action::RemoveApp {
                app: name.to_string(),
                mod_rev: rec.mod_rev,
            });
        }
        for (id, inst) in &rec.instances {
            if out.len() >= limit {
                return out;
            }
            if let Some(action) = due_one(mirror, me, t, now, name, id, inst) {
                out.push(action);
            }
        }
    }
    out
}

fn due_one(
    mirror: &Mirror,
    me: &str,
    t: Timing,
    now: Now,
    app: &str,
    id: &str,
    inst: &InstRec,
) -> Option<Action> {
    let removal = || {
        (now.wall > inst.value.renewed.saturating_add(t.evict_after)).then(|| {
            Action::RemoveInstance {
                app: app.into(),
                id: id.into(),
                mod_rev: inst.mod_rev,
            }
        })
    };
    let held = match &inst.claim {
        Some(c) if inst.value.status != Stored::OutOfService => c,
        _ => return removal(),
    };
    let silent = inst
        .seen
        .map_or(Millis::MAX, |seen| now.mono.saturating_sub(seen));
    // A heartbeat more recent than a releasing server's last one.
    let fresh = silent < t.down_after.saturating_sub(t.release);
    let claim = |claim: Claim| Action::Claim {
        app: app.into(),
        id: id.into(),
        claim_rev: held.mod_rev,
        claim,
    };
    let take = || {
        claim(Claim {
            by: me.into(),
            released: false,
            change: 0,
            ..held.claim.clone()
        })
    };
    let mark_down = || {
        let mut value = inst.value.clone();
        value.status = Stored::Down;
        // Its last heartbeat: as this server saw it, else at least
        // `down_after` ago.
        let ago = if inst.seen.is_some() {
            silent
        } else {
            t.down_after
        };
        value.renewed = now.wall.saturating_sub(ago).max(held.claim.at);
        value.vrev = 0;
        value.change = 0;
        Action::MarkDown {
            app: app.into(),
            id: id.into(),
            mod_rev: inst.mod_rev,
            claim_rev: held.mod_rev,
            value,
        }
    };
    let released_for = inst.released_at.map_or(0, |at| now.mono.saturating_sub(at));
    // Another server has seen a heartbeat within its beat's TTL.
    let vouched = inst.beat.is_some();
    let silent_for_good = silent >= t.down_after && !vouched;
    if held.claim.by == me {
        return match (held.claim.released, fresh) {
            (false, true) => None,
            (false, false) => (!vouched).then(|| {
                claim(Claim {
                    released: true,
                    change: 0,
                    ..held.claim.clone()
                })
            }),
            (true, true) => Some(take()),
            (true, false) => (silent_for_good && released_for >= t.release).then(mark_down),
        };
    }
    if let Some(gone) = mirror.gone_since(&held.claim.by) {
        if fresh {
            return Some(take());
        }
        let orphaned_for = now.mono.saturating_sub(gone);
        return (silent_for_good && orphaned_for >= t.orphan).then(mark_down);
    }
    // Another server's claim: taken over only once released, by a server
    // that has seen a heartbeat since (that server marks it down else).
    (held.claim.released && fresh).then(take)
}

impl Action {
    /// The compares and operations of this action under `prefix`.
    pub fn ops(&self, prefix: &str, now_wall: u64) -> (Vec<Compare>, Vec<Op>) {
        match self {
            Action::Claim {
                app,
                id,
                claim_rev,
                claim,
            } => {
                let key = Key::Alive(app.clone(), id.clone()).bytes(prefix);
                (
                    vec![Compare::ModRevision(key.clone(), *claim_rev)],
                    vec![Op::Put(key, json(claim), 0)],
                )
            }
            Action::MarkDown {
                app,
                id,
                mod_rev,
                claim_rev,
                value,
            } => {
                let key = Key::Inst(app.clone(), id.clone()).bytes(prefix);
                let alive = Key::Alive(app.clone(), id.clone()).bytes(prefix);
                (
                    vec![
                        Compare::ModRevision(key.clone(), *mod_rev),
                        Compare::ModRevision(alive.clone(), *claim_rev),
                    ],
                    vec![Op::Put(key, json(value), 0), Op::Delete(alive)],
                )
            }
            Action::RemoveInstance { app, id, mod_rev } => {
                let key = Key::Inst(app.clone(), id.clone()).bytes(prefix);
                let since = json(&AppValue {
                    since: now_wall,
                    change: 0,
                });
                (
                    vec![Compare::ModRevision(key.clone(), *mod_rev)],
                    vec![
                        Op::Delete(key),
                        Op::Delete(Key::Alive(app.clone(), id.clone()).bytes(prefix)),
                        Op::Delete(Key::Beat(app.clone(), id.clone()).bytes(prefix)),
                        Op::Put(Key::App(app.clone()).bytes(prefix), since, 0),
                    ],
                )
            }
            Action::RemoveApp { app, mod_rev } => {
                let key = Key::App(app.clone()).bytes(prefix);
                let inst = format!("{prefix}inst/{app}/").into_bytes();
                let alive = format!("{prefix}alive/{app}/").into_bytes();
                let beat = format!("{prefix}beat/{app}/").into_bytes();
                (
                    // Not removed while an instance is registered in it.
                    vec![
                        Compare::ModRevision(key.clone(), *mod_rev),
                        Compare::Empty(inst.clone()),
                    ],
                    vec![
                        Op::Delete(key),
                        Op::DeletePrefix(inst),
                        Op::DeletePrefix(alive),
                        Op::DeletePrefix(beat),
                        Op::Put(Key::Removed.bytes(prefix), Vec::new(), 0),
                    ],
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mirror::tests::{a, app_value, claimed, inst, now, web, History, P, WALL};
    use super::*;
    use crate::registry::Registry;

    const T: Timing = Timing {
        down_after: 3_000,
        evict_after: 60_000,
        release: 600,
        orphan: 2_250,
    };

    fn at(ms: Millis) -> Now {
        Now {
            mono: now().mono + ms,
            wall: WALL + ms,
        }
    }

    /// A registry with `web/a` up, claimed by `by` (released or not), and
    /// servers `s1` and `s2`.
    fn mirror(by: &str, released: bool) -> Mirror {
        let h = claimed(by, released);
        let mut view = Registry::mirror();
        Mirror::from_range(P, &h.range(), h.rev, &mut view, now(), None)
    }

    fn seen(m: &mut Mirror, at_ms: Option<Millis>) {
        m.instance_mut("web", "a").unwrap().seen = at_ms.map(|ms| now().mono + ms);
    }

    fn kind(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Claim { claim, .. } => {
                    format!("claim by {} released {}", claim.by, claim.released)
                }
                Action::MarkDown { .. } => "down".into(),
                Action::RemoveInstance { .. } => "remove".into(),
                Action::RemoveApp { .. } => "remove app".into(),
            })
            .collect()
    }

    /// The claim's server: nothing while it sees heartbeats; a release
    /// once it has seen none for `down_after - release`; back on a
    /// heartbeat; `down` once `down_after` has passed and the release has
    /// been out for `release`.
    #[test]
    fn the_claims_server_releases_then_marks_down() {
        let mut m = mirror("s1", false);
        seen(&mut m, Some(0));
        assert!(due(&m, "s1", T, at(2_399), 100).is_empty());
        assert_eq!(
            kind(&due(&m, "s1", T, at(2_400), 100)),
            ["claim by s1 released true"]
        );
        // The other server does nothing with a claim that is not released.
        assert!(due(&m, "s2", T, at(2_400), 100).is_empty());
        let mut m = mirror("s1", true);
        seen(&mut m, Some(0));
        // The release was seen at 0 (the range); a heartbeat since takes it back.
        seen(&mut m, Some(1_000));
        assert_eq!(
            kind(&due(&m, "s1", T, at(1_500), 100)),
            ["claim by s1 released false"]
        );
        seen(&mut m, Some(0));
        assert!(due(&m, "s1", T, at(2_999), 100).is_empty());
        let downs = due(&m, "s1", T, at(3_000), 100);
        assert_eq!(kind(&downs), ["down"]);
        let Action::MarkDown { value, .. } = &downs[0] else {
            unreachable!()
        };
        // Its last heartbeat, as this server knew it.
        assert_eq!(
            (value.status, value.renewed, value.vrev),
            (Stored::Down, WALL, 0)
        );
        // Released late (seen only now): the others get `release` to act.
        m.instance_mut("web", "a").unwrap().released_at = Some(at(2_900).mono);
        assert!(due(&m, "s1", T, at(3_000), 100).is_empty());
        let downs = due(&m, "s1", T, at(3_500), 100);
        assert_eq!(kind(&downs), ["down"]);
        // Marked later than due: still its last heartbeat's time.
        let Action::MarkDown { value, .. } = &downs[0] else {
            unreachable!()
        };
        assert_eq!(value.renewed, WALL);
    }

    /// Another server takes a released claim over when it has seen a
    /// heartbeat more recent than the releasing server's last.
    #[test]
    fn a_released_claim_goes_to_a_server_that_saw_a_heartbeat() {
        let mut m = mirror("s1", true);
        seen(&mut m, Some(1_000));
        assert_eq!(
            kind(&due(&m, "s2", T, at(2_000), 100)),
            ["claim by s2 released false"]
        );
        // Seen too long ago: not taken; s1 marks it down.
        assert!(due(&m, "s2", T, at(3_400), 100).is_empty());
        seen(&mut m, None);
        assert!(due(&m, "s2", T, at(9_000), 100).is_empty());
    }

    /// A beat (another server saw a heartbeat within its TTL) keeps the
    /// claim's server from releasing, and anyone from marking it `down`.
    #[test]
    fn a_beat_keeps_the_claim() {
        let mut m = mirror("s1", false);
        seen(&mut m, Some(0));
        m.instance_mut("web", "a").unwrap().beat = Some(77);
        assert!(due(&m, "s1", T, at(9_000), 100).is_empty());
        let mut m = mirror("s1", true);
        seen(&mut m, Some(0));
        m.instance_mut("web", "a").unwrap().beat = Some(77);
        assert!(due(&m, "s1", T, at(9_000), 100).is_empty());
        m.servers.remove("s1");
        assert!(due(&m, "s2", T, at(9_000), 100).is_empty());
        // Gone: the rules apply again.
        m.instance_mut("web", "a").unwrap().beat = None;
        assert_eq!(kind(&due(&m, "s2", T, at(9_000), 100)), ["down"]);
    }

    /// A gone server's claims: taken over by a server that saw a heartbeat,
    /// marked `down` by any other once `orphan` has passed since it was
    /// found gone, never by one that saw a heartbeat within `down_after`.
    #[test]
    fn a_gone_servers_claims_are_taken_over_or_marked_down() {
        let mut m = mirror("s1", false);
        m.servers.remove("s1");
        m.gone.insert("s1".into(), at(1_000).mono);
        seen(&mut m, Some(500));
        assert_eq!(
            kind(&due(&m, "s2", T, at(1_000), 100)),
            ["claim by s2 released false"]
        );
        seen(&mut m, None);
        assert!(due(&m, "s2", T, at(3_249), 100).is_empty());
        assert_eq!(kind(&due(&m, "s2", T, at(3_250), 100)), ["down"]);
        seen(&mut m, Some(1_000));
        assert!(due(&m, "s2", T, at(3_500), 100).is_empty());
        assert_eq!(kind(&due(&m, "s2", T, at(4_000), 100)), ["down"]);
        // A claim that names no server (an older version's) is gone since the start.
        let m = mirror("", false);
        assert_eq!(kind(&due(&m, "s2", T, at(2_250), 100)), ["down"]);
    }

    /// Without a claim, time only removes: an instance silent for
    /// `evict_after`, then its empty app.
    #[test]
    fn time_removes_what_has_no_claim() {
        let mut h = History::new();
        h.txn(
            &[
                (web(), app_value(WALL)),
                (Key::App("empty".into()), app_value(WALL)),
            ],
            &[],
        );
        h.txn(&[(a(), inst(Stored::Down, "10.0.0.1", WALL))], &[]);
        let mut view = Registry::mirror();
        let m = Mirror::from_range(P, &h.range(), h.rev, &mut view, now(), None);
        assert!(due(&m, "s1", T, at(60_000), 100).is_empty());
        assert_eq!(
            kind(&due(&m, "s1", T, at(60_001), 100)),
            ["remove app", "remove"]
        );
        assert_eq!(due(&m, "s1", T, at(60_001), 1).len(), 1);
    }

    #[test]
    fn the_timing_follows_the_periods() {
        let t = Timing::new(
            Periods {
                down_after: 90_000,
                evict_after: 600_000,
            },
            30_000,
            1_000,
        );
        assert_eq!((t.release, t.orphan, t.every()), (10_000, 61_000, 1_000));
        let t = Timing::new(
            Periods {
                down_after: 3_000,
                evict_after: 60_000,
            },
            1_000,
            250,
        );
        assert_eq!((t.release, t.orphan, t.every()), (600, 2_250, 200));
    }
}
