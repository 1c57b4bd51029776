//! The etcd store's pure part: the key layout, the values' JSON, a mirror
//! of the keys under the prefix that applies watch events to a
//! [`Registry`] view, and what the evictor has to do at a given time. No
//! I/O, no clock: `now` is passed in, so every rule is unit-tested.
//!
//! Keys under the prefix `P` (names and ids contain no `/`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `P periods` | `{"down_after_ms","evict_after_ms"}` | the first server (create-if-absent) |
//! | `P apps/APP` | `{"since"}`: wall ms of its creation or last eviction | create app, evictor |
//! | `P inst/APP/ID` | [`InstValue`] | register, first heartbeat, take out of service, evictor |
//! | `P alive/APP/ID` | empty, on the instance's lease | first heartbeat (lease TTL `--down-after`) |
//! | `P removed` | empty | the evictor, with each app it removes |
//!
//! An instance reads `up` while its stored status is `up` and its alive key
//! exists; the lease's expiry deletes that key, and every server reads
//! `down` from its watch. Plain heartbeats only keep the lease alive.
//!
//! Indexes: an app's index is the largest of its key's `mod_revision` and
//! its instances' visible revisions (an instance's `mod_revision`, or for a
//! value the evictor rewrote to `down`, the revision its alive key was
//! deleted at, kept in `vrev`); the list's is the largest of those and the
//! `removed` key's. A server that watched every event and one that ranged
//! the keys later compute the same numbers.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::client::{Kv, WatchEvent};
use crate::clock::Now;
use crate::registry::{Applied, Metadata, Millis, Periods, Registry, Status};

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The registry's periods.
    Periods,
    /// The marker of app removals.
    Removed,
    /// An application.
    App(String),
    /// An instance's state.
    Inst(String, String),
    /// An instance's liveness, on its lease.
    Alive(String, String),
}

impl Key {
    /// The bytes of this key under `prefix`.
    pub fn bytes(&self, prefix: &str) -> Vec<u8> {
        match self {
            Key::Periods => format!("{prefix}periods"),
            Key::Removed => format!("{prefix}removed"),
            Key::App(app) => format!("{prefix}apps/{app}"),
            Key::Inst(app, id) => format!("{prefix}inst/{app}/{id}"),
            Key::Alive(app, id) => format!("{prefix}alive/{app}/{id}"),
        }
        .into_bytes()
    }

    /// Parses a key under `prefix`; `None` for a key of no meaning here.
    pub fn parse(prefix: &str, key: &[u8]) -> Option<Key> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
        let two = |s: &str| {
            let (app, id) = s.split_once('/')?;
            (!app.is_empty() && !id.is_empty() && !id.contains('/'))
                .then(|| (app.to_string(), id.to_string()))
        };
        match rest {
            "periods" => Some(Key::Periods),
            "removed" => Some(Key::Removed),
            _ => {
                if let Some(app) = rest.strip_prefix("apps/") {
                    return (!app.is_empty() && !app.contains('/')).then(|| Key::App(app.into()));
                }
                if let Some((app, id)) = rest.strip_prefix("inst/").and_then(two) {
                    return Some(Key::Inst(app, id));
                }
                let (app, id) = rest.strip_prefix("alive/").and_then(two)?;
                Some(Key::Alive(app, id))
            }
        }
    }
}

/// The periods as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPeriods {
    /// `--down-after` in milliseconds.
    pub down_after_ms: u64,
    /// `--evict-after` in milliseconds.
    pub evict_after_ms: u64,
}

impl From<Periods> for StoredPeriods {
    fn from(p: Periods) -> StoredPeriods {
        StoredPeriods {
            down_after_ms: p.down_after,
            evict_after_ms: p.evict_after,
        }
    }
}

/// The value of an app's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppValue {
    /// Wall ms of its creation or of the last eviction in it.
    pub since: u64,
}

/// A stored status: `up` reads `down` once the alive key is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stored {
    /// Registered, no heartbeat yet.
    Starting,
    /// Heartbeating (while its alive key exists).
    Up,
    /// Its lease expired; `renewed` estimates its last heartbeat.
    Down,
    /// Taken out of service.
    OutOfService,
}

/// The value of an instance's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstValue {
    /// Address.
    pub ip: String,
    /// Port.
    pub port: u16,
    /// Stored status.
    pub status: Stored,
    /// Metadata (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Arc<Metadata>>,
    /// Wall ms of the registration, the first heartbeat or the taking out of
    /// service (for `down`: the lease's expiry less `--down-after`).
    pub renewed: u64,
    /// For a value the evictor rewrote to `down`: the revision of the
    /// deletion of the alive key, which is the visible change.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vrev: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// An instance in the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstRec {
    /// Its value.
    pub value: InstValue,
    /// Its key's `mod_revision`.
    pub mod_rev: i64,
    /// The lease of its alive key, if that exists.
    pub alive: Option<i64>,
    /// The revision its alive key was last deleted at (0: not seen).
    pub gone_rev: i64,
}

impl InstRec {
    /// The status a reader sees.
    pub fn status(&self) -> Status {
        match (self.value.status, self.alive) {
            (Stored::Starting, _) => Status::Starting,
            (Stored::Up, Some(_)) => Status::Up,
            (Stored::Up, None) | (Stored::Down, _) => Status::Down,
            (Stored::OutOfService, _) => Status::OutOfService,
        }
    }

    /// The revision of the last change a reader sees.
    pub fn visible_rev(&self) -> i64 {
        if self.value.vrev > 0 {
            self.value.vrev
        } else {
            self.mod_rev
        }
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
    /// Apps whose index changed since the last [`Mirror::sync`].
    touched: Vec<Arc<str>>,
}

/// The monotonic reading of a wall-clock time stored by some server.
pub fn mono_of_wall(wall: u64, now: Now) -> Millis {
    now.mono.saturating_sub(now.wall.saturating_sub(wall))
}

impl Mirror {
    /// An empty mirror of the keys under `prefix`.
    pub fn new(prefix: &str) -> Mirror {
        Mirror {
            prefix: prefix.to_string(),
            ..Mirror::default()
        }
    }

    /// The mirror of a range's keys at `revision`; the view is made to
    /// match it (what it has that the range has not is removed, the rest
    /// applied: only differences make events).
    pub fn from_range(
        prefix: &str,
        kvs: &[Kv],
        revision: i64,
        view: &mut Registry,
        now: Now,
    ) -> Mirror {
        let mut mirror = Mirror::new(prefix);
        // Apps first, then instances, then alive keys: the order of a
        // watch's events for the same state.
        let mut sorted: Vec<(u8, &Kv, Key)> = kvs
            .iter()
            .filter_map(|kv| {
                let key = Key::parse(prefix, &kv.key)?;
                let rank = match key {
                    Key::Periods | Key::Removed | Key::App(_) => 0,
                    Key::Inst(..) => 1,
                    Key::Alive(..) => 2,
                };
                Some((rank, kv, key))
            })
            .collect();
        sorted.sort_by_key(|(rank, _, _)| *rank);
        for (_, kv, key) in sorted {
            mirror.put(key, kv);
        }
        // What the view has and the range has not.
        let mut gone: Vec<(String, Option<String>)> = Vec::new();
        if let Some((apps, _)) = view.apps(now.mono, crate::registry::StatusSet::ALL, None) {
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

    /// Applies a put of `key` (no view change; see [`Mirror::apply`]).
    fn put(&mut self, key: Key, kv: &Kv) -> Option<Arc<str>> {
        let rev = kv.mod_revision;
        match key {
            Key::Periods => None,
            Key::Removed => {
                self.removed_rev = rev;
                None
            }
            Key::App(name) => {
                let since = serde_json::from_slice::<AppValue>(&kv.value).map_or(0, |v| v.since);
                let name = self.intern(&name);
                let app = self.apps.entry(name.clone()).or_default();
                app.create_rev = kv.create_revision;
                app.mod_rev = rev;
                app.since = since;
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
                let (alive, gone_rev) = rec
                    .instances
                    .get(&id)
                    .map_or((None, 0), |i| (i.alive, i.gone_rev));
                let inst = InstRec {
                    value,
                    mod_rev: rev,
                    alive,
                    gone_rev,
                };
                rec.index = rec.index.max(inst.visible_rev());
                rec.instances.insert(id, inst);
                Some(name)
            }
            Key::Alive(app, id) => {
                let rec = self.apps.get_mut(app.as_str())?;
                let inst = rec.instances.get_mut(id.as_str())?;
                inst.alive = Some(kv.lease);
                inst.gone_rev = 0;
                rec.index = rec.index.max(rev);
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
    /// written as two keys in one transaction (an instance and its alive
    /// key) shows as one change, never as its halves.
    pub fn apply(&mut self, events: &[WatchEvent], view: &mut Registry, now: Now) {
        let mut instances: Vec<(Arc<str>, String)> = Vec::new();
        for event in events {
            let Some(key) = Key::parse(&self.prefix, &event.kv.key) else {
                continue;
            };
            let rev = event.kv.mod_revision;
            self.revision = self.revision.max(rev);
            // Every change is visible but a period's, and the evictor's
            // rewrite of an instance as `down` (its `vrev` is older).
            let visible = match &key {
                Key::Periods => 0,
                Key::Inst(..) if !event.delete => {
                    serde_json::from_slice::<InstValue>(&event.kv.value).map_or(rev, |v| {
                        if v.vrev > 0 {
                            v.vrev
                        } else {
                            rev
                        }
                    })
                }
                _ => rev,
            };
            self.index = self.index.max(visible);
            if !event.delete {
                let id = match &key {
                    Key::Inst(_, id) | Key::Alive(_, id) => Some(id.clone()),
                    _ => None,
                };
                let is_app = matches!(key, Key::App(_));
                if let Some(name) = self.put(key, &event.kv) {
                    if is_app {
                        view.apply_app(&name, now.mono);
                    }
                    if let Some(id) = id {
                        instances.push((name.clone(), id));
                    }
                    self.touched.push(name);
                }
                continue;
            }
            match key {
                Key::Periods | Key::Removed => {}
                Key::App(name) => {
                    if self.apps.remove(name.as_str()).is_some() {
                        view.apply_remove_app(&name);
                    }
                }
                Key::Inst(app, id) => {
                    if let Some(rec) = self.apps.get_mut(app.as_str()) {
                        if rec.instances.remove(id.as_str()).is_some() {
                            rec.index = rec.index.max(rev);
                            let name = self.intern(&app);
                            instances.push((name.clone(), id));
                            self.touched.push(name);
                        }
                    }
                }
                Key::Alive(app, id) => {
                    if let Some(rec) = self.apps.get_mut(app.as_str()) {
                        if let Some(inst) = rec.instances.get_mut(id.as_str()) {
                            inst.alive = None;
                            inst.gone_rev = rev;
                            rec.index = rec.index.max(rev);
                            let name = self.intern(&app);
                            instances.push((name.clone(), id));
                            self.touched.push(name);
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
    pub fn instance(
        &self,
        app: &str,
        id: &str,
    ) -> Result<(&AppRec, &InstRec), crate::registry::Error> {
        let rec = self
            .apps
            .get(app)
            .ok_or(crate::registry::Error::NoSuchApp)?;
        let inst = rec
            .instances
            .get(id)
            .ok_or(crate::registry::Error::NoSuchInstance)?;
        Ok((rec, inst))
    }

    /// What the evictor has to do at wall time `now_wall`: `up` instances
    /// whose lease expired are marked `down` (for their eviction time), the
    /// others removed once silent for more than `evict_after`, and apps
    /// without instances removed once `evict_after` has passed since their
    /// creation or last eviction. At most `limit` actions.
    pub fn due(&self, periods: Periods, now_wall: u64, limit: usize) -> Vec<Action> {
        let mut out = Vec::new();
        let mut names: Vec<&Arc<str>> = self.apps.keys().collect();
        names.sort_unstable();
        for name in names {
            let rec = &self.apps[name];
            if rec.instances.is_empty()
                && rec.create_rev > 0
                && now_wall > rec.since.saturating_add(periods.evict_after)
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
                match (inst.value.status, inst.alive) {
                    (Stored::Up, Some(_)) => {}
                    (Stored::Up, None) => {
                        let mut value = inst.value.clone();
                        value.status = Stored::Down;
                        value.renewed = now_wall.saturating_sub(periods.down_after);
                        value.vrev = if inst.gone_rev > 0 {
                            inst.gone_rev
                        } else {
                            inst.mod_rev
                        };
                        out.push(Action::MarkDown {
                            app: name.to_string(),
                            id: id.to_string(),
                            mod_rev: inst.mod_rev,
                            value,
                        });
                    }
                    _ if now_wall > inst.value.renewed.saturating_add(periods.evict_after) => {
                        out.push(Action::RemoveInstance {
                            app: name.to_string(),
                            id: id.to_string(),
                            mod_rev: inst.mod_rev,
                        });
                    }
                    _ => {}
                }
            }
            if out.len() >= limit {
                return out;
            }
        }
        out
    }
}

/// The view's state of an instance of the mirror.
fn applied<'a>(id: &'a str, inst: &'a InstRec, now: Now) -> Applied<'a> {
    Applied {
        id,
        ip: &inst.value.ip,
        port: inst.value.port,
        status: inst.status(),
        metadata: inst.value.metadata.clone(),
        last_renewal: mono_of_wall(inst.value.renewed, now),
    }
}

/// One thing the evictor does, with the compare that makes it safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Rewrite an `up` instance whose alive key is gone as `down`.
    MarkDown {
        /// App.
        app: String,
        /// Instance.
        id: String,
        /// Its key's `mod_revision` as seen.
        mod_rev: i64,
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

impl Action {
    /// The compares and operations of this action.
    pub fn ops(
        &self,
        prefix: &str,
        now_wall: u64,
    ) -> (Vec<super::client::Compare>, Vec<super::client::Op>) {
        use super::client::{Compare, Op};
        let since = serde_json::to_vec(&AppValue { since: now_wall }).unwrap_or_default();
        match self {
            Action::MarkDown {
                app,
                id,
                mod_rev,
                value,
            } => {
                let key = Key::Inst(app.clone(), id.clone()).bytes(prefix);
                let value = serde_json::to_vec(value).unwrap_or_default();
                (
                    vec![Compare::ModRevision(key.clone(), *mod_rev)],
                    vec![Op::Put(key, value, 0)],
                )
            }
            Action::RemoveInstance { app, id, mod_rev } => {
                let key = Key::Inst(app.clone(), id.clone()).bytes(prefix);
                (
                    vec![Compare::ModRevision(key.clone(), *mod_rev)],
                    vec![
                        Op::Delete(key),
                        Op::Delete(Key::Alive(app.clone(), id.clone()).bytes(prefix)),
                        Op::Put(Key::App(app.clone()).bytes(prefix), since, 0),
                    ],
                )
            }
            Action::RemoveApp { app, mod_rev } => {
                let key = Key::App(app.clone()).bytes(prefix);
                let inst = format!("{prefix}inst/{app}/").into_bytes();
                let alive = format!("{prefix}alive/{app}/").into_bytes();
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
                        Op::Put(Key::Removed.bytes(prefix), Vec::new(), 0),
                    ],
                )
            }
        }
    }
}

/// Groups actions into transactions of at most `max_ops` operations (and
/// compares) each, keeping their order.
pub fn batches(actions: &[Action], prefix: &str, now_wall: u64, max_ops: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut ops = 0;
    for (i, action) in actions.iter().enumerate() {
        let n = {
            let (compares, ops) = action.ops(prefix, now_wall);
            compares.len().max(ops.len())
        };
        match out.last_mut() {
            Some(batch) if ops + n <= max_ops && batch.len() < max_ops => {
                batch.push(i);
                ops += n;
            }
            _ => {
                out.push(vec![i]);
                ops = n;
            }
        }
    }
    out
}

/// The compares and operations of a batch of actions in one transaction
/// (an app's key is put once however many of its instances go).
pub fn txn_of(
    actions: &[&Action],
    prefix: &str,
    now_wall: u64,
) -> (Vec<super::client::Compare>, Vec<super::client::Op>) {
    use super::client::Op;
    let mut compares = Vec::with_capacity(actions.len());
    let mut ops: Vec<Op> = Vec::new();
    let mut put = std::collections::HashSet::new();
    for action in actions {
        let (action_compares, action_ops) = action.ops(prefix, now_wall);
        compares.extend(action_compares);
        for op in action_ops {
            if let Op::Put(key, _, _) = &op {
                if !put.insert(key.clone()) {
                    continue;
                }
            }
            ops.push(op);
        }
    }
    (compares, ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::StatusSet;

    const P: &str = "/r/";
    const WALL: u64 = 1_795_890_765_000;
    const PERIODS: Periods = Periods {
        down_after: 90_000,
        evict_after: 600_000,
    };

    fn now() -> Now {
        Now {
            mono: 1_000_000,
            wall: WALL,
        }
    }

    /// The history of a small registry as etcd would record it: the event
    /// lists of each revision.
    struct History {
        rev: i64,
        kvs: HashMap<Vec<u8>, Kv>,
        answers: Vec<Vec<WatchEvent>>,
    }

    impl History {
        fn new() -> History {
            History {
                rev: 1,
                kvs: HashMap::new(),
                answers: Vec::new(),
            }
        }

        /// One transaction: puts (key, value, lease) and deletes.
        fn txn(&mut self, puts: &[(Key, Vec<u8>, i64)], deletes: &[Key]) {
            self.rev += 1;
            let mut events = Vec::new();
            for (key, value, lease) in puts {
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
                    lease: *lease,
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
        }

        fn range(&self) -> Vec<Kv> {
            self.kvs.values().cloned().collect()
        }
    }

    fn inst(status: Stored, ip: &str, renewed: u64) -> Vec<u8> {
        serde_json::to_vec(&InstValue {
            ip: ip.into(),
            port: 80,
            status,
            metadata: None,
            renewed,
            vrev: 0,
        })
        .unwrap()
    }

    fn app_value(since: u64) -> Vec<u8> {
        serde_json::to_vec(&AppValue { since }).unwrap()
    }

    fn web() -> Key {
        Key::App("web".into())
    }
    fn a() -> Key {
        Key::Inst("web".into(), "a".into())
    }
    fn alive() -> Key {
        Key::Alive("web".into(), "a".into())
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

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        for key in [Key::Periods, Key::Removed, web(), a(), alive()] {
            assert_eq!(Key::parse(P, &key.bytes(P)), Some(key));
        }
        for bad in [
            "/other/apps/web",
            "/r/apps/",
            "/r/inst/web",
            "/r/inst/web/a/b",
            "/r/x",
        ] {
            assert_eq!(Key::parse(P, bad.as_bytes()), None, "{bad}");
        }
    }

    /// A heartbeat writes the instance and its alive key in one revision:
    /// the view shows one change (up), never the half where it reads down;
    /// the lease's expiry then reads down; a range at any point gives the
    /// same statuses and indexes as the watch.
    #[test]
    fn a_watched_history_and_a_range_agree() {
        let mut h = History::new();
        h.txn(&[(web(), app_value(WALL), 0)], &[]);
        h.txn(
            &[
                (web(), app_value(WALL), 0),
                (a(), inst(Stored::Starting, "10.0.0.1", WALL), 0),
            ],
            &[alive()],
        );
        h.txn(
            &[
                (a(), inst(Stored::Up, "10.0.0.1", WALL), 0),
                (alive(), Vec::new(), 77),
            ],
            &[],
        );
        h.txn(&[], &[alive()]); // the lease expired
        let mut mirror = Mirror::new(P);
        let mut view = Registry::mirror();
        let mut seen = Vec::new();
        for (i, answer) in h.answers.iter().enumerate() {
            mirror.apply(answer, &mut view, now());
            mirror.sync(&mut view);
            seen.push((events(&mut view), status(&mut view)));
            assert_eq!(mirror.revision, i as i64 + 2);
        }
        assert_eq!(seen[0].0.len(), 1);
        assert_eq!(seen[1].1, (Some(Status::Starting), 3, 3));
        assert_eq!(
            seen[2].0,
            vec!["InstanceUp { app: \"web\", id: \"a\" }".to_string()]
        );
        assert_eq!(seen[2].1, (Some(Status::Up), 4, 4));
        assert_eq!(mirror.instance("web", "a").unwrap().1.alive, None);
        assert_eq!(seen[3].1, (Some(Status::Down), 5, 5));
        // The evictor marks it down, keeping the deletion's revision as its
        // visible one: no index moves.
        let due = mirror.due(PERIODS, WALL + 1_000, 100);
        let Some(Action::MarkDown { value, .. }) = due.first() else {
            panic!("{due:?}")
        };
        assert_eq!((value.vrev, value.renewed), (5, WALL + 1_000 - 90_000));
        h.txn(&[(a(), serde_json::to_vec(value).unwrap(), 0)], &[]);
        mirror.apply(h.answers.last().unwrap(), &mut view, now());
        mirror.sync(&mut view);
        assert_eq!(status(&mut view), (Some(Status::Down), 5, 5));
        assert!(events(&mut view).is_empty());
        // A range now gives the same view and indexes.
        let mut fresh = Registry::mirror();
        let ranged = Mirror::from_range(P, &h.range(), h.rev, &mut fresh, now());
        assert_eq!(status(&mut fresh), (Some(Status::Down), 5, 5));
        assert_eq!((ranged.index, ranged.revision), (5, 6));
        // A range that misses what the view has removes it.
        let mut h2 = History::new();
        h2.txn(&[(Key::App("db".into()), app_value(WALL), 0)], &[]);
        Mirror::from_range(P, &h2.range(), h2.rev, &mut fresh, now());
        assert_eq!(status(&mut fresh).0, None);
        assert!(fresh.app("db", now().mono, StatusSet::ALL, None).is_ok());
    }

    #[test]
    fn the_evictor_removes_what_time_made_due_and_batches_within_etcd_limits() {
        let mut h = History::new();
        h.txn(&[(web(), app_value(WALL), 0)], &[]);
        h.txn(&[(Key::App("empty".into()), app_value(WALL), 0)], &[]);
        let mut puts = Vec::new();
        for i in 0..100 {
            let key = Key::Inst("web".into(), format!("i{i:03}"));
            puts.push((key, inst(Stored::Starting, "10.0.0.1", WALL), 0));
        }
        puts.push((a(), inst(Stored::Up, "10.0.0.1", WALL), 0));
        puts.push((alive(), Vec::new(), 9));
        h.txn(&puts, &[]);
        let mut view = Registry::mirror();
        let mirror = Mirror::from_range(P, &h.range(), h.rev, &mut view, now());
        // Nothing is due before the eviction period.
        assert!(mirror.due(PERIODS, WALL + 600_000, 1_000).is_empty());
        let due = mirror.due(PERIODS, WALL + 600_001, 1_000);
        let removed = due
            .iter()
            .filter(|a| matches!(a, Action::RemoveInstance { .. }))
            .count();
        // The heartbeating instance (alive key) stays; the empty app goes.
        assert_eq!((due.len(), removed), (101, 100));
        assert!(matches!(&due[0], Action::RemoveApp { app, .. } if app == "empty"));
        assert_eq!(mirror.due(PERIODS, WALL + 600_001, 10).len(), 10);
        let batches = batches(&due, P, WALL, 128);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 101);
        for batch in &batches {
            let chosen: Vec<&Action> = batch.iter().map(|&i| &due[i]).collect();
            let (compares, ops) = txn_of(&chosen, P, WALL);
            assert!(compares.len() <= 128 && ops.len() <= 128, "{}", ops.len());
            // The app's key is put once per transaction.
            let app_puts = ops
                .iter()
                .filter(|op| matches!(op, super::super::client::Op::Put(k, _, _) if *k == web().bytes(P)))
                .count();
            assert!(app_puts <= 1);
        }
    }
}
