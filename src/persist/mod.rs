//! `--data-dir DIR`: the registry kept on disk, so that a restart forgets
//! nothing (API.md Part 4). A room of its own: the registry stays pure, the
//! API calls one hook (the recorder), the server owns a [`DataDir`].
//!
//! - The **recorder**, called by `View::publish` with the registry locked,
//!   turns each change into an absolute-state record (an instance with its
//!   whole state, a removal, an app's state) appended to a bounded buffer.
//!   Heartbeats that change no status are not written.
//! - The **saver** thread appends the buffer to the current log
//!   (`log.GENERATION`) as soon as it holds something, and syncs it (what
//!   comes during a sync goes with the next write), so a crash loses at most
//!   the changes of the last sync, well under a second. A failed save is logged,
//!   counted and retried (into a new log); the server keeps serving.
//! - Every `--snapshot-every` (5 minutes; if anything was logged since), when the log passes
//!   `LOG_LIMIT`, and at a clean stop, it writes a **snapshot** in steps
//!   of `STEP` instances per lock hold (copied under the lock, checksummed
//!   after; resting twice as long as a step took),
//!   to `snapshot.tmp`, syncs it, renames it to `snapshot`, syncs the
//!   directory, and deletes the logs it covers. A new log starts when the
//!   snapshot does; replaying it over the snapshot is idempotent.
//! - At start, [`DataDir::open`] locks the directory (`lock`, `flock`), reads
//!   the snapshot and the logs after it, and loads the registry before the
//!   server serves. A torn tail of a log (a crash mid-write) is ignored with a
//!   log line; any other file that cannot be read stops the start with one
//!   line naming it, and is left as it is.
//!
//! Here: [`DataDir`] and the recorder. `codec.rs`: the records and their
//! framing. `replay.rs`: records back into a registry (pure). `files.rs`:
//! the files' names and reading them. `saver.rs`: the thread.

mod codec;
mod disk;
mod files;
mod replay;
mod saver;

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use codec::{Kind, Record, Seal};
use disk::Disk;
pub use disk::DiskFaults;
use files::{read_log, read_snapshot, sync_dir, Files, LogEnd, LOCK};
use replay::Replay;
use saver::Saver;

use crate::clock;
use crate::metrics::Saves;
use crate::registry::{self, Event, Registry};
use crate::view::View;

/// The most bytes of records waiting for the saver. Past it (a disk that
/// stalls for a long time) the records are dropped and a snapshot, which
/// holds everything, is made instead.
pub(super) const BUFFER_LIMIT: usize = 64 << 20;

/// What the recorder hands the saver.
#[derive(Default)]
pub(super) struct Buffer {
    pub(super) bytes: Vec<u8>,
    /// Records were dropped: only a snapshot can cover them.
    pub(super) overflowed: bool,
    pub(super) stop: bool,
}

pub(super) struct Shared {
    buffer: Mutex<Buffer>,
    pub(super) wake: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The data directory, open and locked, with its saver thread. `stop` (or
/// drop) flushes every change and writes a last snapshot.
pub struct DataDir {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir").finish_non_exhaustive()
    }
}

/// A start that cannot go on: one line for the operator.
pub(super) fn fail(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl DataDir {
    /// Opens `dir` (created if absent), locks it, loads what it holds into
    /// `view`'s registry, raises the index above any saved or handed out
    /// before, installs the recorder and starts the saver. The error is one
    /// line naming the file and why. `faults`: a test's switch that fails
    /// the saver's writes.
    pub fn open(
        dir: &Path,
        snapshot_every: Duration,
        faults: Option<DiskFaults>,
        view: &Arc<View>,
    ) -> io::Result<DataDir> {
        let started = Instant::now();
        let shown = dir.display();
        fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create the data directory {shown}: {e}")))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| {
                fail(format!(
                    "the data directory {shown} is not writable ({}: {e})",
                    lock_path.display()
                ))
            })?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                fail(format!(
                    "the data directory {shown} is in use by another registro (it holds {}: {e})",
                    lock_path.display()
                ))
            },
        )?;
        let files = Files::list(dir)?;
        let mut replay = Replay::default();
        let mut bytes_read = 0;
        let snapshot_gen = match &files.snapshot {
            Some(path) => {
                let (generation, n) =
                    read_snapshot(path, &mut |r| replay.apply(r, Kind::Snapshot))?;
                bytes_read += n;
                generation
            }
            None => 0,
        };
        // What the start found and does, said once the whole directory is
        // known to be readable (a start that fails says one line only).
        let mut lines: Vec<String> = Vec::new();
        let mut repair: Option<(&Path, LogEnd)> = None;
        let mut logs_read = 0;
        let newest = files.logs.last().map(|(g, _)| *g);
        for (generation, path) in &files.logs {
            if *generation < snapshot_gen {
                // A crash came between a snapshot and the removal of the
                // logs it covers: read whole (or the start stops), not
                // replayed, removed by the next snapshot.
                read_log(path, false, &mut |_| {})?;
                lines.push(format!(
                    "{}: covered by the snapshot (a crash came before it was removed); \
                     checked, not replayed; the next snapshot removes it",
                    path.display()
                ));
                continue;
            }
            let newest = Some(*generation) == newest;
            let end = read_log(path, newest, &mut |r| replay.apply(r, Kind::Log))?;
            match end {
                LogEnd::Whole(n) => bytes_read += n,
                LogEnd::Torn { at, .. } => bytes_read += at,
                LogEnd::CutHeader(_) => {}
            }
            if !matches!(end, LogEnd::Whole(_)) {
                repair = Some((path, end));
            }
            logs_read += 1;
        }
        if let Some(tmp) = &files.snapshot_tmp {
            lines.push(format!(
                "{}: ignored, a snapshot a crash or a failed write left unfinished \
                 (what it holds is in the snapshot and logs); the next snapshot replaces it",
                tmp.display()
            ));
        }
        for other in &files.others {
            lines.push(format!(
                "{}: ignored, not a file Registro writes; left as it is",
                other.display()
            ));
        }
        // Everything is read: only now is anything changed. A torn tail is
        // cut off (so that the log stays whole once a newer one exists),
        // a cut header removed.
        if let Some((path, end)) = repair {
            lines.push(repair_log(path, &end)?);
        }
        let log = view.log();
        for line in &lines {
            log.line(format_args!("data directory: {line}"));
        }
        let (apps, instances) = replay.counts();
        let saved_index = replay.index();
        let writer = clock::index_floor();
        {
            let mut registry = view.lock();
            replay.load(&mut registry, clock::now().mono);
            registry.raise_index(saved_index.saturating_add(1).max(writer));
        }
        let generation = files
            .logs
            .last()
            .map_or(0, |(g, _)| *g)
            .max(snapshot_gen)
            .saturating_add(1);
        let mut saver = Saver {
            dir: dir.to_path_buf(),
            writer,
            generation,
            log: None,
            log_bytes: 0,
            torn: false,
            pending: Vec::new(),
            taken: 0,
            dropped_since: None,
            drops: 0,
            last_flush: Instant::now(),
            last_mark: Instant::now(),
            last_snapshot: Instant::now(),
            snapshot_due: logs_read > 0,
            snapshot_every,
            logged_since_snapshot: false,
            next_try: Instant::now(),
            last_complaint: None,
            last_error: String::new(),
            not_saving: None,
            disk: Disk { faults },
            view: Arc::clone(view),
            shared: Arc::new(Shared {
                buffer: Mutex::new(Buffer::default()),
                wake: Condvar::new(),
            }),
            _lock: lock,
        };
        // A directory that cannot be written, a full disk: found now, not
        // at the first change.
        saver
            .new_log()
            .map_err(|e| fail(format!("cannot write to the data directory {shown}: {e}")))?;
        view.log().metrics().saves.enable();
        view.log().line(format_args!(
            "data directory {shown}: {apps} apps, {instances} instances, index {} \
             (read {bytes_read} bytes from {} and {logs_read} logs in {} ms)",
            view.lock().index(),
            if files.snapshot.is_some() {
                "a snapshot"
            } else {
                "no snapshot"
            },
            started.elapsed().as_millis()
        ));
        let shared = Arc::clone(&saver.shared);
        let recorder_shared = Arc::clone(&shared);
        let metrics = Arc::clone(view.log().metrics());
        view.set_recorder(Box::new(move |registry: &Registry, events: &[Event]| {
            record(&recorder_shared, &metrics.saves, registry, events);
        }));
        let thread = thread::Builder::new()
            .name("registro-save".into())
            .spawn(move || saver.run())?;
        Ok(DataDir {
            shared,
            thread: Some(thread),
        })
    }

    /// Flushes every change recorded, writes a last snapshot (so that every
    /// renewal is kept exactly) and joins the saver. Call it once nothing
    /// changes the registry any more (the workers and the ticker joined).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The recorder: the changes `events` name, as records of their state in
/// `registry` now, appended to the buffer; `saves` learns since when a
/// change waits for the disk.
fn record(shared: &Shared, saves: &Saves, registry: &Registry, events: &[Event]) {
    if events.is_empty() {
        return;
    }
    let mut out = Vec::with_capacity(96 * events.len());
    let mut apps: Vec<&str> = Vec::new();
    for event in events {
        match event {
            Event::AppCreated { app } => apps.push(app),
            Event::AppRemoved { app } => {
                let record = Record::AppRemoved {
                    name: app.clone(),
                    index: registry.index(),
                };
                codec::encode(&record, &mut out, Seal::Now);
            }
            Event::InstanceAdded { app, id, .. }
            | Event::InstanceReplaced { app, id, .. }
            | Event::InstanceUp { app, id }
            | Event::InstanceDown { app, id }
            | Event::InstanceOutOfService { app, id } => {
                apps.push(app);
                // Absent: removed later in the same batch, which says so.
                if let Some(s) = registry.stored(app, id) {
                    codec::encode_instance(&mut out, app, &s, Seal::Now);
                }
            }
            Event::InstanceRemoved { app, id } => {
                apps.push(app);
                let record = Record::InstanceRemoved {
                    app: app.clone(),
                    id: id.clone(),
                };
                codec::encode(&record, &mut out, Seal::Now);
            }
        }
    }
    apps.sort_unstable();
    apps.dedup();
    for name in apps {
        if let Some(state) = registry.app_state(name) {
            codec::encode(&app_record(name, state), &mut out, Seal::Now);
        }
    }
    let mut buffer = shared.lock();
    // Under the buffer's lock, as the saver settles it.
    saves.unsaved(clock::now().mono);
    let first = buffer.bytes.is_empty();
    if buffer.bytes.len() + out.len() > BUFFER_LIMIT {
        buffer.bytes = Vec::new();
        buffer.overflowed = true;
    } else {
        buffer.bytes.extend_from_slice(&out);
    }
    if first {
        // The saver writes at once (what comes while it syncs waits for
        // the next write): one wake per write, not per change.
        shared.wake.notify_one();
    }
}

/// Makes the newest log whole again after a crash cut its last write
/// short: the torn tail cut off, or a log with only part of a header
/// removed. Answers the line that says so.
fn repair_log(path: &Path, end: &LogEnd) -> io::Result<String> {
    let shown = path.display();
    let cannot = |e: io::Error| fail(format!("cannot repair {shown} after a crash: {e}"));
    match end {
        LogEnd::Torn { at, len, why } => {
            let file = OpenOptions::new().write(true).open(path).map_err(cannot)?;
            file.set_len(*at).map_err(cannot)?;
            file.sync_all().map_err(cannot)?;
            Ok(format!(
                "{shown}: its last {len} bytes, from byte {at}, are a write a crash cut short \
                 ({why}); cut off"
            ))
        }
        LogEnd::CutHeader(len) => {
            fs::remove_file(path).map_err(cannot)?;
            if let Some(dir) = path.parent() {
                sync_dir(dir).map_err(cannot)?;
            }
            Ok(format!(
                "{shown}: removed, a new log whose first write a crash cut short \
                 ({len} bytes, no record)"
            ))
        }
        LogEnd::Whole(_) => Ok(format!("{shown}: whole")),
    }
}

pub(super) fn app_record(name: &str, state: registry::AppState) -> Record {
    Record::App {
        name: Arc::from(name),
        state,
    }
}

/// The periods the tests of the data directory run with: the defaults.
#[cfg(test)]
const TEST_PERIODS: registry::Periods = registry::Periods::DEFAULT;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Item, Metadata, SnapshotCursor, StatusSet};

    const P: registry::Periods = TEST_PERIODS;
    const T0: u64 = 40_000_000_000;

    /// The registry as a reader sees it at `now`: `app[id:status@age-in-s]`.
    fn show(reg: &mut Registry, now: u64) -> String {
        let (apps, _) = reg.apps(now, StatusSet::ALL, None).unwrap_or_default();
        apps.iter()
            .map(|a| {
                let mut ids: Vec<String> = a
                    .instances
                    .iter()
                    .map(|i| {
                        let meta = i.metadata.as_ref().map_or(0, |m| m.len());
                        let age = (now - i.last_renewal) / 1000;
                        format!("{}:{:?}@{age}+{meta}", i.id, i.status)
                    })
                    .collect();
                ids.sort();
                format!("{}[{}]", a.name, ids.join(" "))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Replays `bytes` (records after a header of `kind` and a mark at
    /// `mark`) into a registry at `now`.
    fn replayed(bytes: &[u8], kind: Kind, mark: u64, now: u64) -> Registry {
        let mut replay = Replay::default();
        replay.apply(
            Record::Header {
                kind,
                version: codec::VERSION,
                generation: 1,
                writer: 7,
            },
            kind,
        );
        replay.apply(Record::Mark { mono: mark }, kind);
        let mut at = 0;
        while let Some((record, n)) = codec::decode(&bytes[at..]).expect("a record") {
            replay.apply(record, kind);
            at += n;
        }
        let mut reg = Registry::new(P);
        let index = replay.index();
        replay.load(&mut reg, now);
        reg.raise_index(index + 1);
        reg
    }

    #[test]
    fn what_the_recorder_and_a_snapshot_write_reads_back_as_the_registry() {
        let shared = Shared {
            buffer: Mutex::new(Buffer::default()),
            wake: Condvar::new(),
        };
        let mut reg = Registry::new(P);
        let mut apps = Vec::new();
        let mut events = Vec::new();
        let mut step = |reg: &mut Registry, f: &dyn Fn(&mut Registry) -> Option<Event>| {
            if let Some(e) = f(reg) {
                reg.push_event(e);
            }
            reg.drain_changes(&mut apps, &mut events);
            record(&shared, &Saves::default(), reg, &events);
            events.clear();
        };
        let mut meta = Metadata::new();
        meta.insert("zone".into(), "eu".into());
        let meta = Arc::new(meta);
        step(&mut reg, &|r| r.create_app("web", T0).ok());
        step(&mut reg, &|r| r.create_app("gone", T0).ok());
        step(&mut reg, &|r| {
            r.register("web", "a", "10.0.0.1", 80, Some(meta.clone()), T0)
                .ok()
        });
        step(&mut reg, &|r| {
            r.register("web", "b", "10.0.0.2", 80, None, T0).ok()
        });
        step(&mut reg, &|r| {
            r.register("web", "c", "10.0.0.3", 80, None, T0).ok()
        });
        step(&mut reg, &|r| {
            r.renew("web", "a", T0 + 1_000).ok().flatten()
        });
        step(&mut reg, &|r| {
            r.renew("web", "b", T0 + 1_000).ok().flatten()
        });
        step(&mut reg, &|r| {
            r.take_out_of_service("web", "c", T0 + 2_000).ok().flatten()
        });
        // `b` goes down, found by a read at T0 + 100 s; `a` heartbeats
        // meanwhile (unlogged: it changes no status).
        let _ = reg.renew("web", "a", T0 + 80_000);
        step(&mut reg, &|r| {
            let _ = r.apps(T0 + 100_000, StatusSet::ALL, None);
            None
        });
        let now = T0 + 100_000;
        let want = show(&mut reg, now);
        assert_eq!(
            want,
            "gone[] web[a:Up@20+1 b:Down@99+0 c:OutOfService@98+0]"
        );
        let log = std::mem::take(&mut shared.lock().bytes);
        // After a crash at `now`: `a` counts as renewed then, the rest exact.
        let mut back = replayed(&log, Kind::Log, now, 1_000_000);
        assert_eq!(
            show(&mut back, 1_000_000),
            "gone[] web[a:Up@0+1 b:Down@99+0 c:OutOfService@98+0]"
        );
        assert!(back.index() > reg.index());

        // A clean snapshot keeps `a`'s renewal exactly too.
        let mut snapshot = Vec::new();
        let mut cursor = SnapshotCursor::default();
        while !reg.snapshot_step(&mut cursor, 3, &mut |item| match item {
            Item::App(name, state) => {
                codec::encode(&app_record(name, state), &mut snapshot, Seal::Now)
            }
            Item::Instance(app, s) => codec::encode_instance(&mut snapshot, app, &s, Seal::Now),
        }) {}
        codec::encode(
            &Record::End {
                mono: now,
                index: reg.index(),
                clean: true,
            },
            &mut snapshot,
            Seal::Now,
        );
        let mut back = replayed(&snapshot, Kind::Snapshot, now, 5_000_000);
        assert_eq!(show(&mut back, 5_000_000), want);
    }
}
