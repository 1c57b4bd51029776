//! Reading the records back: a snapshot, then the logs after it, in order,
//! into plain state, then into a [`Registry`]. Pure: no I/O, no clock.
//!
//! Records are absolute state, so replaying a log over a snapshot written in
//! steps while the log was being written is idempotent: for every instance
//! the last record wins, and a change made after the snapshot visited it is
//! in the log.
//!
//! # Time
//!
//! Times in records are the writer's monotonic milliseconds. Replay keeps a
//! virtual clock `v`: a [`Record::Mark`] of the same writer moves it on by
//! the time since that writer's previous mark; a new writer (a restart)
//! moves it not at all, so the time the server was down is not counted. A
//! time `t` read under the latest mark `m` is `v - (m - t)`. At the end the
//! registry's `now` stands for `v`.
//!
//! Heartbeats that change no status are not logged, so after a crash an `up`
//! instance's last renewal is unknown: it counts as renewed at the last mark
//! (at most a few seconds before the crash). After a clean stop the last
//! file is a snapshot made at the stop, which has every renewal exactly.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use super::codec::{Kind, Record};
use crate::registry::{AppState, InstanceView, Ip, Metadata, Millis, Registry, Status};

/// An instance as replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Instance {
    /// Where it goes in its app's order: slots are visited by a snapshot
    /// from the last down (so they count down), new ids logged count up.
    order: i64,
    ip: Ip,
    port: u16,
    status: Status,
    /// On the virtual clock.
    renewal: i64,
    metadata: Option<Arc<Metadata>>,
}

#[derive(Debug)]
struct App {
    name: Arc<str>,
    index: u64,
    empty_since: Option<i64>,
    gone_at: i64,
    instances: HashMap<Arc<str>, Instance>,
}

/// The state read so far.
#[derive(Debug, Default)]
pub struct Replay {
    /// Apps in the order first read (`None`: removed since), found by name
    /// through `by_name`, the last one used kept aside (a snapshot lists an
    /// app's instances together: one string compare, not a hash, each).
    apps: Vec<Option<App>>,
    by_name: HashMap<Arc<str>, usize>,
    last: Option<usize>,
    index: u64,
    /// The virtual clock.
    v: i64,
    /// The writer of the file being read, and its latest mark (`None`
    /// before its first).
    writer: Option<u64>,
    mark: Option<u64>,
    /// Whether the state is that of a clean stop: a clean snapshot with
    /// nothing after it.
    clean: bool,
    /// Records applied.
    pub records: u64,
    /// The next order of an instance a snapshot lists, and of one a log adds.
    down: i64,
    up: i64,
}

impl Replay {
    /// Applies one record of a file of `kind`.
    pub fn apply(&mut self, record: Record, kind: Kind) {
        self.records += 1;
        if kind == Kind::Log && !matches!(record, Record::Header { .. }) {
            self.clean = false;
        }
        match record {
            Record::Header { writer, .. } => {
                if self.writer != Some(writer) {
                    self.writer = Some(writer);
                    self.mark = None;
                }
            }
            Record::Mark { mono } => self.mark(mono),
            Record::End { mono, index, clean } => {
                self.mark(mono);
                self.index = self.index.max(index);
                self.clean = clean;
            }
            Record::App { name, state } => {
                let empty_since = state.empty_since.map(|t| self.time(t));
                let gone_at = self.time(state.gone_at);
                self.index = self.index.max(state.index);
                let app = self.app(name);
                app.index = state.index;
                app.empty_since = empty_since;
                app.gone_at = gone_at;
            }
            Record::AppRemoved { name, index } => {
                self.index = self.index.max(index);
                if let Some(i) = self.by_name.remove(&name) {
                    self.apps[i] = None;
                }
            }
            Record::Instance(record) => {
                let renewal = self.time(record.renewal);
                let order = if kind == Kind::Snapshot {
                    self.down - 1
                } else {
                    self.up + 1
                };
                let instance = Instance {
                    order,
                    ip: Ip::new(&record.ip),
                    port: record.port,
                    status: record.status,
                    renewal,
                    metadata: record.metadata,
                };
                match self.app(record.app).instances.entry(record.id) {
                    Entry::Occupied(mut e) => {
                        let order = e.get().order;
                        *e.get_mut() = Instance { order, ..instance };
                    }
                    Entry::Vacant(e) => {
                        e.insert(instance);
                        if kind == Kind::Snapshot {
                            self.down -= 1;
                        } else {
                            self.up += 1;
                        }
                    }
                }
            }
            Record::InstanceRemoved { app, id } => {
                if let Some(&i) = self.by_name.get(&app) {
                    if let Some(app) = &mut self.apps[i] {
                        app.instances.remove(&id);
                    }
                }
            }
        }
    }

    /// The app `name`, created empty if absent.
    fn app(&mut self, name: Arc<str>) -> &mut App {
        let i = match self.last {
            Some(i) if self.apps[i].as_ref().is_some_and(|a| a.name == name) => i,
            _ => match self.by_name.entry(name) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    let i = self.apps.len();
                    self.apps.push(Some(App {
                        name: e.key().clone(),
                        index: 0,
                        empty_since: None,
                        gone_at: 0,
                        instances: HashMap::new(),
                    }));
                    e.insert(i);
                    i
                }
            },
        };
        self.last = Some(i);
        // Present: `last` and `by_name` only ever name present apps.
        self.apps[i].get_or_insert_with(unreachable_app)
    }

    fn mark(&mut self, mono: u64) {
        match self.mark {
            Some(last) if mono > last => {
                self.v = self.v.saturating_add(signed(mono - last));
                self.mark = Some(mono);
            }
            Some(_) => {}
            None => self.mark = Some(mono),
        }
    }

    /// A writer's time `t` on the virtual clock.
    fn time(&self, t: u64) -> i64 {
        match self.mark {
            Some(mark) => self.v.saturating_sub(signed(mark) - signed(t)),
            None => self.v,
        }
    }

    /// The largest index read.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Apps and instances read.
    pub fn counts(&self) -> (usize, usize) {
        let apps = self.apps.iter().flatten();
        let instances = apps.clone().map(|a| a.instances.len()).sum();
        (apps.count(), instances)
    }

    /// Puts what was read into `registry`, with the registry's `now`
    /// standing for the virtual clock's last reading (times before the
    /// registry's origin are taken as its origin).
    pub fn load(self, registry: &mut Registry, now: Millis) {
        let v = self.v;
        let at = |t: i64| -> Millis { now.saturating_sub(u64::try_from(v - t).unwrap_or(0)) };
        for app in self.apps.into_iter().flatten() {
            let name = app.name;
            registry.load_app(
                &name,
                AppState {
                    index: app.index,
                    empty_since: app.empty_since.map(at),
                    gone_at: at(app.gone_at),
                },
                now,
            );
            let mut instances: Vec<_> = app.instances.into_iter().collect();
            instances.sort_unstable_by_key(|(_, i)| i.order);
            let clean = self.clean;
            let saved = instances.into_iter().map(|(id, i)| InstanceView {
                id,
                ip: i.ip,
                port: i.port,
                status: i.status,
                last_renewal: if i.status == Status::Up && !clean {
                    now
                } else {
                    at(i.renewal)
                },
                metadata: i.metadata,
            });
            // The app was loaded just above.
            let _ = registry.load_instances(&name, saved, now);
        }
    }
}

/// An app where none can be missing; never made.
fn unreachable_app() -> App {
    App {
        name: Arc::from(""),
        index: 0,
        empty_since: None,
        gone_at: 0,
        instances: HashMap::new(),
    }
}

fn signed(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::codec::InstanceRecord;
    use crate::registry::{Periods, StatusSet};

    const P: Periods = super::super::TEST_PERIODS;
    /// The loading server's `now`.
    const NOW: Millis = 5_000_000_000;

    fn header(kind: Kind, writer: u64) -> (Record, Kind) {
        (
            Record::Header {
                kind,
                version: super::super::codec::VERSION,
                generation: 1,
                writer,
            },
            kind,
        )
    }

    fn inst(id: &str, status: Status, renewal: u64) -> Record {
        Record::Instance(InstanceRecord {
            app: "web".into(),
            id: id.into(),
            ip: "10.0.0.1".into(),
            port: 80,
            status,
            renewal,
            metadata: None,
        })
    }

    fn app(index: u64) -> Record {
        Record::App {
            name: "web".into(),
            state: AppState {
                index,
                empty_since: None,
                gone_at: 0,
            },
        }
    }

    /// Replays `records`, loads them at `NOW` and answers each instance as
    /// `id:status:age-in-seconds`, with the app's index.
    fn replay(records: Vec<(Record, Kind)>) -> (String, u64) {
        let mut r = Replay::default();
        for (record, kind) in records {
            r.apply(record, kind);
        }
        let mut reg = Registry::new(P);
        r.load(&mut reg, NOW);
        let Ok(Some(view)) = reg.app("web", NOW, StatusSet::ALL, None) else {
            return ("no app".into(), 0);
        };
        let mut out: Vec<String> = view
            .instances
            .iter()
            .map(|i| {
                let status = format!("{:?}", i.status).to_lowercase();
                format!("{}:{status}:{}", i.id, (NOW - i.last_renewal) / 1000)
            })
            .collect();
        out.sort();
        (out.join(" "), view.index)
    }

    use Kind::{Log, Snapshot};

    #[test]
    fn a_clean_snapshot_keeps_every_age_and_the_downtime_is_not_counted() {
        let s = Snapshot;
        let got = replay(vec![
            header(s, 1),
            (Record::Mark { mono: 100_000 }, s),
            (app(7), s),
            (inst("a", Status::Up, 80_000), s),
            (inst("b", Status::Down, 0), s),
            (inst("c", Status::OutOfService, 95_000), s),
            (Record::Mark { mono: 110_000 }, s),
            (
                Record::End {
                    mono: 120_000,
                    index: 7,
                    clean: true,
                },
                s,
            ),
        ]);
        assert_eq!(got, ("a:up:40 b:down:120 c:outofservice:25".into(), 7));
    }

    #[test]
    fn after_a_crash_an_up_instance_counts_as_renewed_at_the_last_mark() {
        let got = replay(vec![
            header(Snapshot, 1),
            (Record::Mark { mono: 100_000 }, Snapshot),
            (app(7), Snapshot),
            (inst("a", Status::Up, 0), Snapshot),
            (inst("b", Status::Starting, 90_000), Snapshot),
            (
                Record::End {
                    mono: 100_000,
                    index: 7,
                    clean: false,
                },
                Snapshot,
            ),
            header(Log, 1),
            // A log of the same writer: its time counts.
            (Record::Mark { mono: 130_000 }, Log),
            (app(8), Log),
            (inst("c", Status::Down, 125_000), Log),
            (Record::Mark { mono: 140_000 }, Log),
        ]);
        assert_eq!(got, ("a:up:0 b:starting:50 c:down:15".into(), 8));
    }

    #[test]
    fn the_time_between_two_writers_is_not_counted() {
        let got = replay(vec![
            header(Log, 1),
            (Record::Mark { mono: 50_000 }, Log),
            (app(3), Log),
            (inst("a", Status::Down, 40_000), Log),
            header(Log, 2),
            // The second process's clock starts anywhere.
            (Record::Mark { mono: 7_000 }, Log),
            (Record::Mark { mono: 9_000 }, Log),
        ]);
        assert_eq!(got, ("a:down:12".into(), 3));
    }

    #[test]
    fn the_last_record_wins_and_removals_stick() {
        let s = Snapshot;
        let got = replay(vec![
            header(s, 1),
            (Record::Mark { mono: 10_000 }, s),
            (app(5), s),
            (inst("a", Status::Up, 10_000), s),
            (inst("b", Status::Starting, 10_000), s),
            (
                Record::End {
                    mono: 10_000,
                    index: 6,
                    clean: false,
                },
                s,
            ),
            header(Log, 1),
            // Written before the snapshot's step reached them: older, then
            // the newer states after.
            (Record::Mark { mono: 9_000 }, Log),
            (inst("a", Status::Starting, 9_000), Log),
            (inst("a", Status::Up, 9_500), Log),
            (
                Record::InstanceRemoved {
                    app: "web".into(),
                    id: "b".into(),
                },
                Log,
            ),
            (app(6), Log),
        ]);
        assert_eq!(got, ("a:up:0".into(), 6));
        let got = replay(vec![
            header(Log, 1),
            (Record::Mark { mono: 1 }, Log),
            (app(5), Log),
            (inst("a", Status::Up, 1), Log),
            (
                Record::AppRemoved {
                    name: "web".into(),
                    index: 9,
                },
                Log,
            ),
        ]);
        assert_eq!(got, ("no app".into(), 0));
    }
}
