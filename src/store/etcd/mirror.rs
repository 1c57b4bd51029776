//! The mirror: the keys under the prefix as last seen (see `keys.rs`),
//! applied to a [`Registry`] view from a range or from watch events, with
//! the indexes every server computes alike. No I/O, no clock: `now` is
//! passed in, so every rule is unit-tested.
//!
//! What a reader sees of an instance is a function of its keys only: out
//! of service if stored so, else `up` while its claim exists, else
//! `starting` or `down` as stored. Indexes: an instance's visible revision
//! is the larger of its key's `mod_revision` (or, for a write that changes
//! nothing a reader sees, the `vrev` it carries) and its claim's
//! `create_revision` (a claim rewritten by a release or a takeover changes
//! nothing a reader sees); an app's index is the largest of its key's
//! `mod_revision` and its instances' visible revisions, and of the
//! revisions its instances were removed at (each removal also writes the
//! app's key); the list's is the largest of those and the `removed` key's.
//! A server that watched every event and one that ranged the keys later
//! compute the same numbers, and each change a reader sees has a revision
//! of its own: marking an instance `down` is a write.
//!
//! Besides the keys, the mirror holds what only this server knows: when it
//! last answered a heartbeat of each instance (`seen`), when it saw a claim
//! released, and since when each server it saw go is gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::client::{Kv, WatchEvent};
use super::keys::{AppValue, Claim, InstValue, Key, Stored};
use crate::clock::Now;
use crate::registry::{self, Millis, Registry, Status};

/// An instance's claim as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRec {
    /// Its value.
    pub claim: Claim,
    /// Its key's `mod_revision`.
    pub mod_rev: i64,
    /// Its key's `create_revision`: when the instance went `up`.
    pub create_rev: i64,
}

/// An instance in the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstRec {
    /// Its value.
    pub value: InstValue,
    /// Its key's `mod_revision`.
    pub mod_rev: i64,
    /// Its key's `create_revision`.
    pub create_rev: i64,
    /// Its claim, while it is `up`.
    pub claim: Option<ClaimRec>,
    /// When (monotonic ms) this server last answered a heartbeat of it.
    pub seen: Option<Millis>,
    /// When (monotonic ms) this server saw its claim released.
    pub released_at: Option<Millis>,
    /// The lease of its beat key, while that exists: some server has seen
    /// a heartbeat of it within the lease's TTL.
    pub beat: Option<i64>,
}

impl InstRec {
    /// The status a reader sees.
    pub fn status(&self) -> Status {
        match (self.value.status, &self.claim) {
            (Stored::OutOfService, _) => Status::OutOfService,
            (_, Some(_)) => Status::Up,
            (Stored::Starting, None) => Status::Starting,
            (Stored::Up | Stored::Down, None) => Status::Down,
        }
    }

    /// The revision of the last change a reader sees.
    pub fn visible_rev(&self) -> i64 {
        let own = if self.value.vrev > 0 {
            self.value.vrev
        } else {
            self.mod_rev
        };
        own.max(self.claim.as_ref().map_or(0, |c| c.create_rev))
    }

    /// The wall ms of its last renewal as stored: its registration, or
    /// the heartbeat that made it `up`.
    fn renewed_wall(&self) -> u64 {
        let at = self.claim.as_ref().map_or(0, |c| c.claim.at);
        self.value.renewed.max(at)
    }
}

/// An app in the mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppRec {
    /// Its key's `create_revision` (0: its key is not seen yet).
    pub create_rev: i64,
    /// Its key's `mod_revision`.
    pub mod_rev: i64,
    /// Its value's `since`.
    pub since: u64,
    /// Its index (see the module's documentation).
    pub index: i64,
    /// The number its value was written with (see `InstValue::change`).
    pub change: u64,
    /// Its instances by id.
    pub instances: HashMap<Arc<str>, InstRec>,
}

/// The keys under the prefix, as last seen, and the indexes.
#[derive(Debug, Default)]
pub struct Mirror {
    /// The prefix.
    pub prefix: String,
    /// Apps by name.
    pub apps: HashMap<Arc<str>, AppRec>,
    /// The `removed` key's `mod_revision`.
    pub removed_rev: i64,
    /// The list's index.
    pub index: i64,
    /// The revision of the last event applied (or of the range).
    pub revision: i64,
    /// The servers whose key exists.
    pub servers: HashSet<String>,
    /// Servers whose key went away, and when (monotonic ms) this server
    /// learned it. A claim by a server in neither set is taken as gone
    /// since `started`.
    pub gone: HashMap<String, Millis>,
    /// When this server began to mirror (monotonic ms).
    pub started: Millis,
    /// Apps whose index changed since the last [`Mirror::sync`].
    touched: Vec<Arc<str>>,
}

/// The monotonic reading of a wall-clock time stored by some server.
pub fn mono_of_wall(wall: u64, now: Now) -> Millis {
    now.mono.saturating_sub(now.wall.saturating_sub(wall))
}

impl Mirror {
    /// An empty mirror of the keys under `prefix`, begun at `now`.
    pub fn new(prefix: &str, now: Millis) -> Mirror {
        Mirror {
            prefix: prefix.to_string(),
            started: now,
            ..Mirror::default()
        }
    }

    /// The mirror of a range's keys at `revision`; the view is made to
    /// match it (what it has that the range has not is removed, the rest
    /// applied: only differences make events). What only this server knows
    /// (see the module's documentation) is kept from `previous`.
    pub fn from_range(
        prefix: &str,
        kvs: &[Kv],
        revision: i64,
        view: &mut Registry,
        now: Now,
        previous: Option<Mirror>,
    ) -> Mirror {
        let mut mirror = Mirror::new(prefix, now.mono);
        // Apps first, then instances, then claims: the order of a watch's
        // events for the same state.
        let mut sorted: Vec<(u8, &Kv, Key)> = kvs
            .iter()
            .filter_map(|kv| {
                let key = Key::parse(prefix, &kv.key)?;
                let rank = match key {
                    Key::Periods | Key::Removed | Key::App(_) | Key::Server(_) => 0,
                    Key::Inst(..) => 1,
                    Key::Alive(..) | Key::Beat(..) => 2,
                };
                Some((rank, kv, key))
            })
            .collect();
        sorted.sort_by_key(|(rank, _, _)| *rank);
        for (_, kv, key) in sorted {
            mirror.put(key, kv, now);
        }
        if let Some(old) = previous {
            mirror.started = old.started;
            for (id, at) in old.gone {
                if !mirror.servers.contains(&id) {
                    mirror.gone.insert(id, at);
                }
            }
            // Servers gone while this one was not watching: gone from now.
            for id in old.servers {
                if !mirror.servers.contains(&id) {
                    mirror.gone.entry(id).or_insert(now.mono);
                }
            }
            for (name, app) in old.apps {
                let Some(rec) = mirror.apps.get_mut(&name) else {
                    continue;
                };
                for (id, old) in app.instances {
                    if let Some(inst) = rec.instances.get_mut(&id) {
                        inst.seen = old.seen;
                        if inst.claim.as_ref().is_some_and(|c| c.claim.released) {
                            inst.released_at = old.released_at.or(Some(now.mono));
                        }
                    }
                }
            }
        }
        // What the view has and the range has not.
        let mut gone: Vec<(String, Option<String>)> = Vec::new();
        if let Some((apps, _)) = view.apps(now.mono, registry::StatusSet::ALL, None) {
            for app in apps {
                match mirror.apps.get(&app.name) {
                    None => gone.push((app.name.to_string(), None)),
                    Some(rec) => gone.extend(
                        app.instances
                            .iter()
                            .filter(|i| !rec.instances.contains_key(&i.id))
                            .map(|i| (app.name.to_string(), Some(i.id.to_string()))),
                    ),
                }
            }
        }
        for (app, id) in gone {
            match id {
                None => view.apply_remove_app(&app),
                Some(id) => {
                    view.apply_remove_instance(&app, &id);
                }
            }
        }
        for (name, rec) in &mirror.apps {
            view.apply_app(name, now.mono);
            for (id, inst) in &rec.instances {
                view.apply_instance(name, applied(id, inst, now), now.mono);
            }
        }
        mirror.touched = mirror.apps.keys().cloned().collect();
        mirror.index = mirror
            .apps
            .values()
            .map(|a| a.index)
            .max()
            .unwrap_or(0)
            .max(mirror.removed_rev);
        mirror.revision = revision;
        mirror.sync(view);
        mirror
    }

    /// Applies a put of `key` (no view change; see [`Mirror::apply`]):
    /// the app whose instances it concerns, if any.
    fn put(&mut self, key: Key, kv: &Kv, now: Now) -> Option<Arc<str>> {
        let rev = kv.mod_revision;
        match key {
            Key::Periods => None,
            Key::Removed => {
                self.removed_rev = rev;
                None
            }
            Key::Server(id) => {
                self.gone.remove(&id);
                self.servers.insert(id);
                None
            }
            Key::App(name) => {
                let value = serde_json::from_slice::<AppValue>(&kv.value).ok();
                let name = self.intern(&name);
                let app = self.apps.entry(name.clone()).or_default();
                app.create_rev = kv.create_revision;
                app.mod_rev = rev;
                app.since = value.as_ref().map_or(0, |v| v.since);
                app.change = value.map_or(0, |v| v.change);
                app.index = app.index.max(rev);
                Some(name)
            }
            Key::Inst(app, id) => {
                let value: InstValue = serde_json::from_slice(&kv.value).ok()?;
                let name = self.intern(&app);
                let rec = self.apps.entry(name.clone()).or_default();
                let id: Arc<str> = rec
                    .instances
                    .get_key_value(id.as_str())
                    .map_or_else(|| Arc::from(id.as_str()), |(k, _)| k.clone());
                let old = rec.instances.remove(&id);
                let inst = InstRec {
                    value,
                    mod_rev: rev,
                    create_rev: kv.create_revision,
                    claim: old.as_ref().and_then(|o| o.claim.clone()),
                    seen: old.as_ref().and_then(|o| o.seen),
                    released_at: old.as_ref().and_then(|o| o.released_at),
                    beat: old.and_then(|o| o.beat),
                };
                rec.index = rec.index.max(inst.visible_rev());
                rec.instances.insert(id, inst);
                Some(name)
            }
            Key::Beat(app, id) => {
                // Nothing a reader sees.
                let inst = self.instance_mut(&app, &id)?;
                inst.beat = Some(kv.lease);
                None
            }
            Key::Alive(app, id) => {
                let rec = self.apps.get_mut(app.as_str())?;
                let inst = rec.instances.get_mut(id.as_str())?;
                let claim = Claim::read(&kv.value);
                inst.released_at = match (claim.released, inst.released_at) {
                    (false, _) => None,
                    (true, Some(at)) => Some(at),
                    (true, None) => Some(now.mono),
                };
                inst.claim = Some(ClaimRec {
                    claim,
                    mod_rev: rev,
                    create_rev: kv.create_revision,
                });
                rec.index = rec.index.max(inst.visible_rev());
                self.apps
                    .get_key_value(app.as_str())
                    .map(|(k, _)| k.clone())
            }
        }
    }

    fn intern(&self, name: &str) -> Arc<str> {
        self.apps
            .get_key_value(name)
            .map_or_else(|| Arc::from(name), |(k, _)| k.clone())
    }

    /// Applies the events of one watch answer to the mirror and the view.
    /// The view's instances are updated once all are applied: a change
    /// written as two keys in one transaction (an instance and its claim)
    /// shows as one change, never as its halves.
    pub fn apply(&mut self, events: &[WatchEvent], view: &mut Registry, now: Now) {
        let mut instances: Vec<(Arc<str>, String)> = Vec::new();
        for event in events {
            let Some(key) = Key::parse(&self.prefix, &event.kv.key) else {
                continue;
            };
            let rev = event.kv.mod_revision;
            self.revision = self.revision.max(rev);
            // What a reader sees moves the list's index; see the module's
            // documentation for what it does not.
            let visible = match &key {
                Key::Periods | Key::Server(_) | Key::Beat(..) => 0,
                Key::Inst(..) if !event.delete => {
                    serde_json::from_slice::<InstValue>(&event.kv.value).map_or(rev, |v| {
                        if v.vrev > 0 {
                            v.vrev
                        } else {
                            rev
                        }
                    })
                }
                Key::Alive(..) if !event.delete && event.kv.create_revision != rev => 0,
                _ => rev,
            };
            if !event.delete {
                let id = match &key {
                    Key::Inst(_, id) | Key::Alive(_, id) => Some(id.clone()),
                    _ => None,
                };
                let is_app = matches!(key, Key::App(_));
                let is_removed = matches!(key, Key::Removed);
                if let Some(name) = self.put(key, &event.kv, now) {
                    self.index = self.index.max(visible);
                    if is_app {
                        view.apply_app(&name, now.mono);
                    }
                    if let Some(id) = id {
                        instances.push((name.clone(), id));
                    }
                    self.touched.push(name);
                } else if is_removed {
                    // An app went with it.
                    self.index = self.index.max(visible);
                }
                continue;
            }
            match key {
                Key::Periods => {}
                Key::Beat(app, id) => {
                    if let Some(inst) = self.instance_mut(&app, &id) {
                        inst.beat = None;
                    }
                }
                Key::Removed => self.index = self.index.max(rev),
                Key::Server(id) => {
                    if self.servers.remove(&id) {
                        self.gone.insert(id, now.mono);
                    }
                }
                Key::App(name) => {
                    if self.apps.remove(name.as_str()).is_some() {
                        self.index = self.index.max(rev);
                        view.apply_remove_app(&name);
                    }
                }
                Key::Inst(app, id) => {
                    if let Some(rec) = self.apps.get_mut(app.as_str()) {
                        if rec.instances.remove(id.as_str()).is_some() {
                            rec.index = rec.index.max(rev);
                            self.index = self.index.max(rev);
                            let name = self.intern(&app);
                            instances.push((name.clone(), id));
                            self.touched.push(name);
                        }
                    }
                }
                Key::Alive(app, id) => {
                    if let Some(rec) = self.apps.get_mut(app.as_str()) {
                        if let Some(inst) = rec.instances.get_mut(id.as_str()) {
                            if inst.claim.take().is_some() {
                                inst.released_at = None;
                                rec.index = rec.index.max(rev);
                                self.index = self.index.max(rev);
                                let name = self.intern(&app);
                                instances.push((name.clone(), id));
                                self.touched.push(name);
                            }
                        }
                    }
                }
            }
        }
        instances.sort_unstable();
        instances.dedup();
        for (app, id) in instances {
            match self
                .apps
                .get(&app)
                .and_then(|a| a.instances.get(id.as_str()))
            {
                Some(inst) => {
                    view.apply_instance(&app, applied(&id, inst, now), now.mono);
                }
                None => {
                    view.apply_remove_instance(&app, &id);
                }
            }
        }
    }

    /// Gives the view the indexes of the apps touched since the last call
    /// and the list's.
    pub fn sync(&mut self, view: &mut Registry) {
        self.touched.sort_unstable();
        self.touched.dedup();
        for name in self.touched.drain(..) {
            if let Some(rec) = self.apps.get(&name) {
                view.set_app_index(&name, u64::try_from(rec.index).unwrap_or(0));
            }
        }
        view.set_index(u64::try_from(self.index).unwrap_or(0));
    }

    /// An instance, or why it is not there.
    pub fn instance(&self, app: &str, id: &str) -> Result<(&AppRec, &InstRec), registry::Error> {
        let rec = self.apps.get(app).ok_or(registry::Error::NoSuchApp)?;
        let inst = rec
            .instances
            .get(id)
            .ok_or(registry::Error::NoSuchInstance)?;
        Ok((rec, inst))
    }

    /// An instance to change what only this server knows of it.
    pub fn instance_mut(&mut self, app: &str, id: &str) -> Option<&mut InstRec> {
        self.apps.get_mut(app)?.instances.get_mut(id)
    }

    /// Since when (monotonic ms) server `id` is gone as far as this server
    /// knows; `None` while its key exists.
    pub fn gone_since(&self, id: &str) -> Option<Millis> {
        if self.servers.contains(id) {
            return None;
        }
        Some(self.gone.get(id).copied().unwrap_or(self.started))
    }

    /// Forgets servers gone long enough ago that no claim of theirs is
    /// waited on any more.
    pub fn forget_gone(&mut self, before: Millis) {
        self.gone.retain(|_, at| *at >= before);
    }
}

/// The view's state of an instance of the mirror.
pub fn applied<'a>(id: &'a str, inst: &'a InstRec, now: Now) -> registry::Stored<'a> {
    let stored = mono_of_wall(inst.renewed_wall(), now);
    registry::Stored {
        id,
        ip: &inst.value.ip,
        port: inst.value.port,
        status: inst.status(),
        metadata: inst.value.metadata.as_ref(),
        last_renewal: inst.seen.map_or(stored, |seen| seen.max(stored)),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::registry::StatusSet;

    pub const P: &str = "/r/";
    pub const WALL: u64 = 1_795_890_765_000;

    pub fn now() -> Now {
        Now {
            mono: 1_000_000,
            wall: WALL,
        }
    }

    /// The history of a small registry as etcd would record it: the event
    /// lists of each revision.
    pub struct History {
        pub rev: i64,
        kvs: HashMap<Vec<u8>, Kv>,
        pub answers: Vec<Vec<WatchEvent>>,
        /// What a range answered after each transaction.
        pub ranges: Vec<Vec<Kv>>,
    }

    impl History {
        pub fn new() -> History {
            History {
                rev: 1,
                kvs: HashMap::new(),
                answers: Vec::new(),
                ranges: Vec::new(),
            }
        }

        /// One transaction: puts (key, value) and deletes.
        pub fn txn(&mut self, puts: &[(Key, Vec<u8>)], deletes: &[Key]) {
            self.rev += 1;
            let mut events = Vec::new();
            for (key, value) in puts {
                let bytes = key.bytes(P);
                let create = self
                    .kvs
                    .get(&bytes)
                    .map_or(self.rev, |kv| kv.create_revision);
                let kv = Kv {
                    key: bytes.clone(),
                    value: value.clone(),
                    create_revision: create,
                    mod_revision: self.rev,
                    lease: 0,
                };
                self.kvs.insert(bytes, kv.clone());
                events.push(WatchEvent { delete: false, kv });
            }
            for key in deletes {
                let bytes = key.bytes(P);
                if self.kvs.remove(&bytes).is_some() {
                    events.push(WatchEvent {
                        delete: true,
                        kv: Kv {
                            key: bytes,
                            mod_revision: self.rev,
                            ..Kv::default()
                        },
                    });
                }
            }
            self.answers.push(events);
            self.ranges.push(self.range());
        }

        pub fn range(&self) -> Vec<Kv> {
            self.kvs.values().cloned().collect()
        }
    }

    pub fn inst(status: Stored, ip: &str, renewed: u64) -> Vec<u8> {
        serde_json::to_vec(&InstValue {
            ip: ip.into(),
            port: 80,
            status,
            metadata: None,
            renewed,
            vrev: 0,
            change: 0,
        })
        .unwrap()
    }

    pub fn claim(by: &str, released: bool) -> Vec<u8> {
        serde_json::to_vec(&Claim {
            by: by.into(),
            at: WALL,
            released,
            change: 0,
        })
        .unwrap()
    }

    pub fn app_value(since: u64) -> Vec<u8> {
        serde_json::to_vec(&AppValue { since, change: 0 }).unwrap()
    }

    pub fn web() -> Key {
        Key::App("web".into())
    }
    pub fn a() -> Key {
        Key::Inst("web".into(), "a".into())
    }
    pub fn alive() -> Key {
        Key::Alive("web".into(), "a".into())
    }
    pub fn server(id: &str) -> Key {
        Key::Server(id.into())
    }

    /// `web` with `a` starting, claimed by `by` (released or not), and
    /// servers `s1` and `s2`.
    pub fn claimed(by: &str, released: bool) -> History {
        let mut h = History::new();
        h.txn(
            &[
                (web(), app_value(WALL)),
                (server("s1"), b"{}".to_vec()),
                (server("s2"), b"{}".to_vec()),
            ],
            &[],
        );
        h.txn(&[(a(), inst(Stored::Starting, "10.0.0.1", WALL))], &[]);
        h.txn(&[(alive(), claim(by, released))], &[]);
        h
    }

    fn events(view: &mut Registry) -> Vec<String> {
        let (mut apps, mut events) = (Vec::new(), Vec::new());
        view.drain_changes(&mut apps, &mut events);
        events.iter().map(|e| format!("{e:?}")).collect()
    }

    fn status(view: &mut Registry) -> (Option<Status>, u64, u64) {
        let s = view.instance("web", "a", now().mono).ok().map(|i| i.status);
        let app = view
            .app("web", now().mono, StatusSet::ALL, None)
            .ok()
            .flatten();
        (s, app.map_or(0, |a| a.index), view.index())
    }

    /// A heartbeat writes the claim; a release and a takeover rewrite it
    /// and change nothing a reader sees; marking the instance `down` is a
    /// change of its own, at a revision of its own. At every step a range
    /// gives the same statuses and indexes as the watch.
    #[test]
    fn a_watched_history_and_a_range_agree() {
        let mut h = History::new();
        h.txn(
            &[(web(), app_value(WALL)), (server("s1"), b"{}".to_vec())],
            &[],
        );
        h.txn(&[(a(), inst(Stored::Starting, "10.0.0.1", WALL))], &[]);
        h.txn(&[(alive(), claim("s1", false))], &[]);
        h.txn(&[(alive(), claim("s1", true))], &[]); // released
        h.txn(&[(alive(), claim("s2", false))], &[]); // taken over
        h.txn(&[(a(), inst(Stored::Down, "10.0.0.1", WALL))], &[alive()]);
        h.txn(&[(alive(), claim("s2", false))], &[]); // up again
        let want = [
            (None, 2, 2),
            (Some(Status::Starting), 3, 3),
            (Some(Status::Up), 4, 4),
            (Some(Status::Up), 4, 4),
            (Some(Status::Up), 4, 4),
            (Some(Status::Down), 7, 7),
            (Some(Status::Up), 8, 8),
        ];
        let mut mirror = Mirror::new(P, now().mono);
        let mut view = Registry::mirror();
        let mut seen = Vec::new();
        for (i, answer) in h.answers.iter().enumerate() {
            mirror.apply(answer, &mut view, now());
            mirror.sync(&mut view);
            seen.push(events(&mut view));
            assert_eq!(status(&mut view), want[i], "after revision {}", i + 2);
            assert_eq!(mirror.revision, i as i64 + 2);
            // A range at this revision agrees.
            let mut fresh = Registry::mirror();
            let ranged = Mirror::from_range(P, &h.ranges[i], i as i64 + 2, &mut fresh, now(), None);
            assert_eq!(status(&mut fresh), want[i], "ranged at revision {}", i + 2);
            assert_eq!(ranged.index, mirror.index);
        }
        assert_eq!(
            seen[2],
            vec!["InstanceUp { app: \"web\", id: \"a\" }".to_string()]
        );
        assert!(seen[3].is_empty() && seen[4].is_empty(), "{seen:?}");
        assert_eq!(
            seen[5],
            vec!["InstanceDown { app: \"web\", id: \"a\" }".to_string()]
        );
        // The servers: s1 is known, s2 never was (gone since the start).
        assert_eq!(mirror.gone_since("s1"), None);
        assert_eq!(mirror.gone_since("s2"), Some(now().mono));
        // A range that misses what the view has removes it.
        let mut h2 = History::new();
        h2.txn(&[(Key::App("db".into()), app_value(WALL))], &[]);
        let mut fresh = Registry::mirror();
        Mirror::from_range(P, &h.range(), h.rev, &mut fresh, now(), None);
        Mirror::from_range(P, &h2.range(), h2.rev, &mut fresh, now(), None);
        assert_eq!(status(&mut fresh).0, None);
        assert!(fresh.app("db", now().mono, StatusSet::ALL, None).is_ok());
    }

    /// What only this server knows survives a range (a compacted watch):
    /// its heartbeats, the release it saw, the servers it saw go.
    #[test]
    fn a_range_keeps_what_only_this_server_knows() {
        let mut h = claimed("s1", true);
        let mut view = Registry::mirror();
        let mut mirror = Mirror::from_range(P, &h.range(), h.rev, &mut view, now(), None);
        let inst = mirror.instance_mut("web", "a").unwrap();
        inst.seen = Some(999_000);
        assert_eq!(inst.released_at, Some(now().mono));
        inst.released_at = Some(998_000);
        h.txn(&[], &[server("s2")]);
        let later = Now {
            mono: now().mono + 5_000,
            wall: WALL + 5_000,
        };
        let again = Mirror::from_range(P, &h.range(), h.rev, &mut view, later, Some(mirror));
        let (_, inst) = again.instance("web", "a").unwrap();
        assert_eq!(
            (inst.seen, inst.released_at),
            (Some(999_000), Some(998_000))
        );
        assert_eq!(again.gone_since("s2"), Some(later.mono));
        assert_eq!(again.gone_since("s1"), None);
        assert_eq!(again.started, now().mono);
    }
}
