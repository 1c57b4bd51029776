//! The mirror's index rules as one property: any history the write
//! protocol can make, applied through the watch (in answers of one or more
//! revisions), gives at every revision the view and the indexes that a
//! range read at that revision gives; and the list's index moves exactly
//! when what a reader sees moves (every visible change has a revision of
//! its own, and nothing else moves it).
//!
//! The histories are random but lawful: each transaction is what one of
//! the protocol's changes writes (`write.rs`, `liveness.rs`), decided from
//! the keys as they are, and several changes of different instances may
//! share a transaction, as the committers send them.

use std::collections::HashMap;
use std::sync::Arc;

use super::keys::{AppValue, Claim, InstValue, Key, Stored};
use super::mirror::tests::{now, History, P, WALL};
use super::mirror::Mirror;
use crate::registry::{Metadata, Registry, Status, StatusSet};
use crate::rng::Rng;

const APPS: [&str; 3] = ["a0", "a1", "a2"];
const IDS: [&str; 3] = ["i0", "i1", "i2"];
const IPS: [&str; 2] = ["10.0.0.1", "10.0.0.2"];
const SERVERS: [&str; 2] = ["s1", "s2"];

/// An instance's keys as they are, decoded.
#[derive(Clone)]
struct Inst {
    value: InstValue,
    mod_rev: i64,
    claim: Option<(Claim, i64)>,
}

impl Inst {
    fn status(&self) -> Status {
        match (self.value.status, &self.claim) {
            (Stored::OutOfService, _) => Status::OutOfService,
            (_, Some(_)) => Status::Up,
            (Stored::Starting, None) => Status::Starting,
            (Stored::Up | Stored::Down, None) => Status::Down,
        }
    }

    fn visible_rev(&self) -> i64 {
        let own = if self.value.vrev > 0 {
            self.value.vrev
        } else {
            self.mod_rev
        };
        own.max(self.claim.as_ref().map_or(0, |(_, created)| *created))
    }
}

/// The keys of a history's current state, as the write protocol reads
/// them to decide a change.
fn state(h: &History) -> HashMap<String, HashMap<String, Inst>> {
    let mut apps: HashMap<String, HashMap<String, Inst>> = HashMap::new();
    let kvs = h.range();
    for kv in &kvs {
        if let Some(Key::App(app)) = Key::parse(P, &kv.key) {
            apps.entry(app).or_default();
        }
    }
    for kv in &kvs {
        if let Some(Key::Inst(app, id)) = Key::parse(P, &kv.key) {
            let value: InstValue = serde_json::from_slice(&kv.value).expect("an instance value");
            let inst = Inst {
                value,
                mod_rev: kv.mod_revision,
                claim: None,
            };
            apps.entry(app).or_default().insert(id, inst);
        }
    }
    for kv in &kvs {
        if let Some(Key::Alive(app, id)) = Key::parse(P, &kv.key) {
            if let Some(inst) = apps.get_mut(&app).and_then(|a| a.get_mut(&id)) {
                inst.claim = Some((Claim::read(&kv.value), kv.create_revision));
            }
        }
    }
    apps
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON")
}

fn metadata(rng: &mut Rng) -> Option<Arc<Metadata>> {
    match rng.below(3) {
        0 => None,
        k => {
            let mut m = Metadata::new();
            m.insert("zone".into(), format!("z{k}"));
            Some(Arc::new(m))
        }
    }
}

/// The puts and deletes of one transaction.
type Writes = (Vec<(Key, Vec<u8>)>, Vec<Key>);

/// One change the protocol could make now, for instance `id` of `app`
/// (or for the app, or a server): its puts and deletes; `None` when the
/// drawn change does not apply to the state.
fn change(
    rng: &mut Rng,
    apps: &HashMap<String, HashMap<String, Inst>>,
    app: &str,
    id: &str,
    wall: u64,
) -> Option<Writes> {
    let inst_key = || Key::Inst(app.into(), id.into());
    let alive_key = || Key::Alive(app.into(), id.into());
    let beat_key = || Key::Beat(app.into(), id.into());
    let instances = apps.get(app);
    let inst = instances.and_then(|i| i.get(id));
    let claim = |by: &str, released: bool| Claim {
        by: by.into(),
        at: wall,
        released,
        change: 0,
    };
    match rng.below(12) {
        // Create the app.
        0 => (instances.is_none()).then(|| {
            let value = json(&AppValue {
                since: wall,
                change: 0,
            });
            (vec![(Key::App(app.into()), value)], vec![])
        }),
        // Register (Part 2's rules): new, the same again, or replacing.
        1 | 2 => {
            instances?;
            let ip = rng.pick(&IPS);
            let metadata = metadata(rng);
            let mut value = InstValue {
                ip: ip.into(),
                port: 80,
                status: Stored::Starting,
                metadata: metadata.clone(),
                renewed: wall,
                vrev: 0,
                change: 0,
            };
            let Some(inst) = inst else {
                return Some((vec![(inst_key(), json(&value))], vec![]));
            };
            let same = inst.value.ip == ip;
            if matches!(inst.status(), Status::Starting | Status::Up) && !same {
                return None; // 409
            }
            if inst.status() == Status::Starting && same && inst.value.metadata == metadata {
                value.vrev = inst.visible_rev();
                return Some((vec![(inst_key(), json(&value))], vec![]));
            }
            Some((vec![(inst_key(), json(&value))], vec![alive_key()]))
        }
        // A first heartbeat: claimed by the server it reached.
        3 => {
            let inst = inst?;
            matches!(inst.status(), Status::Starting | Status::Down).then(|| {
                let by = rng.pick(&SERVERS);
                (vec![(alive_key(), json(&claim(by, false)))], vec![])
            })
        }
        // The claim released, then taken over: nothing a reader sees.
        4 => {
            let (held, _) = inst?.claim.as_ref()?;
            let next = if held.released {
                let by = rng.pick(&SERVERS);
                claim(by, false)
            } else {
                Claim {
                    released: true,
                    ..held.clone()
                }
            };
            Some((vec![(alive_key(), json(&next))], vec![]))
        }
        // Marked down by the claim's server (or a survivor).
        5 => {
            let inst = inst?;
            (inst.claim.is_some() && inst.value.status != Stored::OutOfService).then(|| {
                let value = InstValue {
                    status: Stored::Down,
                    renewed: wall.saturating_sub(3_000),
                    vrev: 0,
                    change: 0,
                    ..inst.value.clone()
                };
                (vec![(inst_key(), json(&value))], vec![alive_key()])
            })
        }
        // Taken out of service (again: only its time moves).
        6 => {
            let inst = inst?;
            let vrev = if inst.status() == Status::OutOfService {
                inst.visible_rev()
            } else {
                0
            };
            let value = InstValue {
                status: Stored::OutOfService,
                renewed: wall,
                vrev,
                change: 0,
                ..inst.value.clone()
            };
            Some((vec![(inst_key(), json(&value))], vec![alive_key()]))
        }
        // Removed by time, noted in its app's key.
        7 => {
            inst?;
            let since = json(&AppValue {
                since: wall,
                change: 0,
            });
            Some((
                vec![(Key::App(app.into()), since)],
                vec![inst_key(), alive_key(), beat_key()],
            ))
        }
        // An empty app removed, noted in the `removed` key.
        8 => {
            let instances = instances?;
            instances.is_empty().then(|| {
                let mut deletes = vec![Key::App(app.into())];
                deletes.extend(IDS.iter().flat_map(|id| {
                    [
                        Key::Alive(app.into(), (*id).into()),
                        Key::Beat(app.into(), (*id).into()),
                    ]
                }));
                (vec![(Key::Removed, Vec::new())], deletes)
            })
        }
        // A beat vouching for a heartbeat, or its lease's expiry.
        9 => {
            inst?;
            if rng.below(2) == 0 {
                Some((vec![(beat_key(), Vec::new())], vec![]))
            } else {
                Some((vec![], vec![beat_key()]))
            }
        }
        // A server's key written, or gone with its lease.
        _ => {
            let server = Key::Server((rng.pick(&SERVERS)).into());
            if rng.below(2) == 0 {
                Some((vec![(server, b"{}".to_vec())], vec![]))
            } else {
                Some((vec![], vec![server]))
            }
        }
    }
}

/// What a reader sees, but `lastRenewal` (which only the server that
/// answered a heartbeat knows): each app's index and instances, and the
/// list's index.
type Seen = (Vec<(String, u64, Vec<String>)>, u64);

fn seen(view: &mut Registry) -> Seen {
    let (apps, index) = view
        .apps(now().mono, StatusSet::ALL, None)
        .expect("a read without a watch answers");
    let apps = apps
        .into_iter()
        .map(|app| {
            let mut instances: Vec<String> = app
                .instances
                .iter()
                .map(|i| {
                    format!(
                        "{} {}:{} {:?} {:?}",
                        i.id, i.ip, i.port, i.status, i.metadata
                    )
                })
                .collect();
            instances.sort();
            (app.name.to_string(), app.index, instances)
        })
        .collect();
    (apps, index)
}

/// One random lawful history of `steps` transactions, checked as the
/// module says; panics naming the seed and revision that differ.
fn check(seed: u64, steps: usize) {
    let mut rng = Rng::seeded(seed);
    let mut h = History::new();
    for step in 0..steps {
        let apps = state(&h);
        let wall = WALL + step as u64 * 1_000;
        // One to three changes of different instances in one transaction.
        let mut puts: Vec<(Key, Vec<u8>)> = Vec::new();
        let mut deletes: Vec<Key> = Vec::new();
        let mut touched: Vec<(String, String)> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let (app, id) = (rng.pick(&APPS), rng.pick(&IDS));
            // A change of an app's own keys goes alone with its app.
            if touched.iter().any(|(a, _)| a == app) {
                continue;
            }
            if let Some((p, d)) = change(&mut rng, &apps, app, id, wall) {
                puts.extend(p);
                deletes.extend(d);
                touched.push((app.into(), id.into()));
            }
        }
        if puts.is_empty() && deletes.is_empty() {
            continue;
        }
        h.txn(&puts, &deletes);
    }
    let mut mirror = Mirror::new(P, now().mono);
    let mut view = Registry::mirror();
    let mut before: Option<Seen> = None;
    let mut k = 0;
    while k < h.answers.len() {
        // One watch answer may carry several revisions' events.
        let n = (1 + rng.below(3)).min(h.answers.len() - k);
        let events: Vec<_> = h.answers[k..k + n].iter().flatten().cloned().collect();
        mirror.apply(&events, &mut view, now());
        mirror.sync(&mut view);
        k += n;
        let revision = k as i64 + 1;
        let watched = seen(&mut view);
        let mut fresh = Registry::mirror();
        let ranged = Mirror::from_range(P, &h.ranges[k - 1], revision, &mut fresh, now(), None);
        assert_eq!(
            watched,
            seen(&mut fresh),
            "seed {seed}: the watched view and a range differ at revision {revision}"
        );
        assert_eq!(
            mirror.index, ranged.index,
            "seed {seed}: indexes differ at revision {revision}"
        );
        // Whether the index moved with what a reader sees can be told
        // only across one revision (two may undo each other).
        if let Some((apps, index)) = before.as_ref().filter(|_| n == 1) {
            let moved = watched.1 != *index;
            let changed = watched
                .0
                .iter()
                .map(|(n, _, i)| (n, i))
                .ne(apps.iter().map(|(n, _, i)| (n, i)));
            assert_eq!(
                moved, changed,
                "seed {seed}: at revision {revision} the list's index {} while what a reader sees {}",
                if moved { "moved" } else { "stayed" },
                if changed { "changed" } else { "did not" }
            );
        }
        if let Some((_, index)) = &before {
            assert!(watched.1 >= *index, "seed {seed}: the index went back");
        }
        before = Some(watched);
    }
}

#[test]
fn a_watched_history_reads_as_a_range_at_every_revision() {
    for seed in 1..=300 {
        check(seed, 60);
    }
}
