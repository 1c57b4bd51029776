//! `--data-dir DIR`: the registry kept on disk, so that a restart forgets
//! nothing (API.md Part 4). A room of its own: the registry stays pure, the
//! API calls one hook (the recorder), the server owns a [`DataDir`].
//!
//! - The **recorder**, called by `Api::publish` with the registry locked,
//!   turns each change into an absolute-state record (an instance with its
//!   whole state, a removal, an app's state) appended to a bounded buffer.
//!   Heartbeats that change no status are not written.
//! - The **saver** thread appends the buffer to the current log
//!   (`log.GENERATION`) as soon as it holds something, and syncs it (what
//!   comes during a sync goes with the next write), so a crash loses at most
//!   the changes of the last sync, well under a second. A failed save is logged,
//!   counted and retried (into a new log); the server keeps serving.
//! - Every `--snapshot-every` (5 minutes; if anything was logged since), when the log passes
//!   [`LOG_LIMIT`], and at a clean stop, it writes a **snapshot** in steps
//!   of [`STEP`] instances per lock hold (copied under the lock, checksummed
//!   after; resting twice as long as a step took),
//!   to `snapshot.tmp`, syncs it, renames it to `snapshot`, syncs the
//!   directory, and deletes the logs it covers. A new log starts when the
//!   snapshot does; replaying it over the snapshot is idempotent.
//! - At start, [`DataDir::open`] locks the directory (`lock`, `flock`), reads
//!   the snapshot and the logs after it, and loads the registry before the
//!   server serves. A torn tail of a log (a crash mid-write) is ignored with a
//!   log line; any other file that cannot be read stops the start with one
//!   line naming it, and is left as it is.

mod codec;
mod replay;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use codec::{Kind, Record};
use replay::Replay;

use crate::api::Api;
use crate::clock;
use crate::log::Log;
use crate::metrics::Save;
use crate::registry::{self, Event, Item, Registry, SnapshotCursor};

/// The saver appends what the recorder buffered as soon as there is some
/// (group commit: what comes during a sync goes with the next write); it
/// wakes this often anyway, to write a mark and to check for a snapshot due.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// With nothing to append, a mark of the time is still written this often,
/// so that after a crash the time the server ran is counted.
const MARK_EVERY: Duration = Duration::from_secs(5);
/// A log this long is compacted into a snapshot at once.
pub const LOG_LIMIT: u64 = 64 << 20;
/// The most bytes of records waiting for the saver. Past it (a disk that
/// stalls for a long time) the records are dropped and a snapshot, which
/// holds everything, is made instead.
pub const BUFFER_LIMIT: usize = 64 << 20;
/// Instances (or eighths of an app) visited per lock hold of a snapshot.
pub const STEP: usize = 2048;
/// After a failed snapshot, the wait before the next try.
const RETRY: Duration = Duration::from_secs(10);
/// A failed save is logged at most this often.
const QUIET: Duration = Duration::from_secs(10);

const LOCK: &str = "lock";
const SNAPSHOT: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const LOG_PREFIX: &str = "log.";

/// What the recorder hands the saver.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    /// Records were dropped: only a snapshot can cover them.
    overflowed: bool,
    stop: bool,
}

struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
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
fn fail(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl DataDir {
    /// Opens `dir` (created if absent), locks it, loads what it holds into
    /// `api`'s registry, raises the index above any saved or handed out
    /// before, installs the recorder and starts the saver. The error is one
    /// line naming the file and why.
    pub fn open(dir: &Path, snapshot_every: Duration, api: &Arc<Api>) -> io::Result<DataDir> {
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
                let (generation, n) = read_snapshot(path, &mut replay)?;
                bytes_read += n;
                generation
            }
            None => 0,
        };
        let mut logs_read = 0;
        let log = api.log();
        for (generation, path) in &files.logs {
            if *generation < snapshot_gen {
                continue; // covered by the snapshot; deleted by the next one
            }
            bytes_read += read_log(path, &mut replay, log)?;
            logs_read += 1;
        }
        let (apps, instances) = replay.counts();
        let saved_index = replay.index();
        let writer = clock::index_floor();
        {
            let mut registry = api.lock();
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
            pending: Vec::new(),
            last_flush: Instant::now(),
            last_mark: Instant::now(),
            last_snapshot: Instant::now(),
            snapshot_due: logs_read > 0,
            snapshot_every,
            logged_since_snapshot: false,
            next_try: Instant::now(),
            last_complaint: None,
            api: Arc::clone(api),
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
        api.log().metrics().saves.enable();
        api.log().line(format_args!(
            "data directory {shown}: {apps} apps, {instances} instances, index {} \
             (read {bytes_read} bytes from {} and {logs_read} logs in {} ms)",
            api.lock().index(),
            if files.snapshot.is_some() {
                "a snapshot"
            } else {
                "no snapshot"
            },
            started.elapsed().as_millis()
        ));
        let shared = Arc::clone(&saver.shared);
        let recorder_shared = Arc::clone(&shared);
        api.set_recorder(Box::new(move |registry: &Registry, events: &[Event]| {
            record(&recorder_shared, registry, events);
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
/// `registry` now, appended to the buffer.
fn record(shared: &Shared, registry: &Registry, events: &[Event]) {
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
                codec::encode(&record, &mut out);
            }
            Event::InstanceAdded { app, id, .. }
            | Event::InstanceReplaced { app, id, .. }
            | Event::InstanceUp { app, id }
            | Event::InstanceDown { app, id }
            | Event::InstanceOutOfService { app, id } => {
                apps.push(app);
                // Absent: removed later in the same batch, which says so.
                if let Some(s) = registry.stored(app, id) {
                    codec::encode_instance(
                        &mut out,
                        app,
                        s.id,
                        s.ip,
                        s.port,
                        s.status,
                        s.last_renewal,
                        s.metadata,
                    );
                }
            }
            Event::InstanceRemoved { app, id } => {
                apps.push(app);
                let record = Record::InstanceRemoved {
                    app: app.clone(),
                    id: id.clone(),
                };
                codec::encode(&record, &mut out);
            }
        }
    }
    apps.sort_unstable();
    apps.dedup();
    for name in apps {
        if let Some(state) = registry.app_state(name) {
            codec::encode(&app_record(name, state), &mut out);
        }
    }
    let mut buffer = shared.lock();
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

fn app_record(name: &str, state: registry::AppState) -> Record {
    Record::App {
        name: Arc::from(name),
        index: state.index,
        empty_since: state.empty_since,
        gone_at: state.gone_at,
    }
}

/// The files of a data directory.
struct Files {
    snapshot: Option<PathBuf>,
    /// By generation.
    logs: Vec<(u64, PathBuf)>,
}

impl Files {
    fn list(dir: &Path) -> io::Result<Files> {
        let mut files = Files {
            snapshot: None,
            logs: Vec::new(),
        };
        let entries = fs::read_dir(dir).map_err(|e| {
            fail(format!(
                "cannot list the data directory {}: {e}",
                dir.display()
            ))
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                fail(format!(
                    "cannot list the data directory {}: {e}",
                    dir.display()
                ))
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == SNAPSHOT {
                files.snapshot = Some(entry.path());
            } else if let Some(generation) = name
                .strip_prefix(LOG_PREFIX)
                .and_then(|g| g.parse::<u64>().ok())
            {
                files.logs.push((generation, entry.path()));
            }
        }
        files.logs.sort();
        Ok(files)
    }
}

fn log_name(generation: u64) -> String {
    format!("{LOG_PREFIX}{generation:016}")
}

/// Why a file cannot be read, as the one line of a failed start.
fn unreadable(path: &Path, why: impl std::fmt::Display) -> io::Error {
    fail(format!(
        "cannot read {}: {why}; it is left as it is (move it away to start without it)",
        path.display()
    ))
}

/// Checks a file's header record; answers its generation.
fn header(path: &Path, bytes: &[u8], want: Kind) -> io::Result<(u64, usize)> {
    let not_ours = || unreadable(path, "it is not a Registro data file (no valid header)");
    match codec::decode(bytes) {
        Ok(Some((
            Record::Header {
                kind,
                version,
                generation,
                ..
            },
            n,
        ))) => {
            if version != codec::VERSION {
                let age = if version < codec::VERSION {
                    "an older"
                } else {
                    "a newer"
                };
                return Err(unreadable(
                    path,
                    format_args!(
                        "it is in {age} format (version {version}; this server reads version {})",
                        codec::VERSION
                    ),
                ));
            }
            if kind != want {
                return Err(not_ours());
            }
            Ok((generation, n))
        }
        _ => Err(not_ours()),
    }
}

/// Reads a snapshot whole into `replay`; answers its generation and size.
/// A snapshot is renamed into place whole, so anything short of a valid
/// end record is damage, not a crash.
fn read_snapshot(path: &Path, replay: &mut Replay) -> io::Result<(u64, u64)> {
    let bytes = fs::read(path).map_err(|e| unreadable(path, e))?;
    let (generation, mut at) = header(path, &bytes, Kind::Snapshot)?;
    replay.apply(
        Record::Header {
            kind: Kind::Snapshot,
            version: codec::VERSION,
            generation,
            writer: header_writer(&bytes),
        },
        Kind::Snapshot,
    );
    let mut ended = false;
    loop {
        match codec::decode(&bytes[at..]) {
            Ok(Some((record, n))) => {
                if ended {
                    return Err(unreadable(path, "there are records after its end"));
                }
                ended = matches!(record, Record::End { .. });
                replay.apply(record, Kind::Snapshot);
                at += n;
            }
            Ok(None) if ended => return Ok((generation, bytes.len() as u64)),
            Ok(None) => return Err(unreadable(path, "it is cut short (no end record)")),
            Err(bad) => return Err(unreadable(path, format_args!("at byte {at}, {bad}"))),
        }
    }
}

fn header_writer(bytes: &[u8]) -> u64 {
    match codec::decode(bytes) {
        Ok(Some((Record::Header { writer, .. }, _))) => writer,
        _ => 0,
    }
}

/// Reads a log into `replay`, up to a torn tail (logged); answers its size.
fn read_log(path: &Path, replay: &mut Replay, log: &Log) -> io::Result<u64> {
    let bytes = fs::read(path).map_err(|e| unreadable(path, e))?;
    if matches!(codec::decode(&bytes), Ok(None) | Err(codec::Bad::Truncated)) {
        // A log whose header a crash cut short: it holds nothing.
        log.line(format_args!(
            "data directory: {}: ignored, a new log whose first write a crash cut short ({} bytes)",
            path.display(),
            bytes.len()
        ));
        return Ok(0);
    }
    let (_, mut at) = header(path, &bytes, Kind::Log)?;
    replay.apply(
        Record::Header {
            kind: Kind::Log,
            version: codec::VERSION,
            generation: 0,
            writer: header_writer(&bytes),
        },
        Kind::Log,
    );
    loop {
        match codec::decode(&bytes[at..]) {
            Ok(Some((record, n))) => {
                if matches!(record, Record::Header { .. } | Record::End { .. }) {
                    return Err(unreadable(
                        path,
                        format_args!("at byte {at}, a record out of place"),
                    ));
                }
                replay.apply(record, Kind::Log);
                at += n;
            }
            Ok(None) => return Ok(bytes.len() as u64),
            Err(bad) => {
                // The end of what a crash let the disk keep: expected.
                log.line(format_args!(
                    "data directory: {}: ignored the last {} bytes, a write cut short by a crash ({bad})",
                    path.display(),
                    bytes.len() - at
                ));
                return Ok(at as u64);
            }
        }
    }
}

/// Syncs a directory, so that a file created, renamed or removed in it
/// stays so after a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What a snapshot wrote.
#[derive(Debug, Default)]
struct Written {
    apps: u64,
    instances: u64,
    bytes: u64,
    /// The longest lock hold of a step.
    longest: Duration,
}

/// The saver thread's state.
struct Saver {
    dir: PathBuf,
    writer: u64,
    /// The generation of the current log.
    generation: u64,
    log: Option<File>,
    log_bytes: u64,
    /// Records taken from the buffer, not yet written.
    pending: Vec<u8>,
    last_flush: Instant,
    last_mark: Instant,
    last_snapshot: Instant,
    snapshot_due: bool,
    snapshot_every: Duration,
    logged_since_snapshot: bool,
    /// No snapshot is tried before this (after a failure).
    next_try: Instant,
    last_complaint: Option<Instant>,
    api: Arc<Api>,
    shared: Arc<Shared>,
    /// Held open: the `flock` lasts as long as the saver.
    _lock: File,
}

impl Saver {
    fn run(mut self) {
        loop {
            let stop = {
                let mut buffer = self.shared.lock();
                if !buffer.stop && buffer.bytes.is_empty() && !buffer.overflowed {
                    buffer = self
                        .shared
                        .wake
                        .wait_timeout(buffer, FLUSH_EVERY)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                buffer.stop
            };
            let saved = self.flush();
            if stop {
                self.snapshot(true);
                return;
            }
            if !saved {
                // A full disk: try again in a while, not in a loop.
                let _ = self.rest(FLUSH_EVERY);
                continue;
            }
            let log_long = self.log_bytes > LOG_LIMIT;
            let periodic =
                self.logged_since_snapshot && self.last_snapshot.elapsed() >= self.snapshot_every;
            if (self.snapshot_due || log_long || periodic) && Instant::now() >= self.next_try {
                self.snapshot(false);
            }
        }
    }

    fn complain(&mut self, what: fmt::Arguments<'_>) {
        self.api.log().metrics().saves.failed();
        if self.last_complaint.is_none_or(|t| t.elapsed() >= QUIET) {
            self.last_complaint = Some(Instant::now());
            self.api.log().line(format_args!(
                "data directory {}: {what} (failed saves so far: {}; retrying, still serving)",
                self.dir.display(),
                self.api.log().metrics().saves.failures()
            ));
        }
    }

    /// Starts log `self.generation`: its header written and synced, and the
    /// directory synced.
    fn new_log(&mut self) -> io::Result<()> {
        let path = self.dir.join(log_name(self.generation));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut bytes = Vec::new();
        codec::encode(
            &Record::Header {
                kind: Kind::Log,
                version: codec::VERSION,
                generation: self.generation,
                writer: self.writer,
            },
            &mut bytes,
        );
        let written = file
            .write_all(&bytes)
            .and_then(|()| file.sync_data())
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = written {
            // Ours and empty: nothing is lost by removing it.
            let _ = fs::remove_file(&path);
            return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        }
        self.log = Some(file);
        self.log_bytes = bytes.len() as u64;
        Ok(())
    }

    /// Appends what the recorder buffered to the log, with a mark of the
    /// time, and syncs it. On failure the records are kept for the next try,
    /// which starts a new log (the failed one may end in a torn record).
    /// Says whether nothing is left to write.
    fn flush(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        {
            let mut buffer = shared.lock();
            if buffer.overflowed {
                buffer.overflowed = false;
                self.snapshot_due = true;
                self.pending.clear();
                self.complain(format_args!(
                    "more than {} MiB of changes waited for the disk: dropped, a snapshot will hold them",
                    BUFFER_LIMIT >> 20
                ));
            }
            if self.pending.is_empty() {
                std::mem::swap(&mut self.pending, &mut buffer.bytes);
            } else {
                self.pending.extend_from_slice(&buffer.bytes);
                buffer.bytes.clear();
            }
        }
        if self.pending.len() > BUFFER_LIMIT {
            self.pending = Vec::new();
            self.snapshot_due = true;
        }
        if self.pending.is_empty() && self.last_mark.elapsed() < MARK_EVERY {
            return true;
        }
        let started = Instant::now();
        if self.log.is_none() {
            self.generation += 1;
            if let Err(e) = self.new_log() {
                self.complain(format_args!("cannot start a new log: {e}"));
                return false;
            }
        }
        let mut mark = Vec::with_capacity(codec::FRAME + 9);
        codec::encode(
            &Record::Mark {
                mono: clock::now().mono,
            },
            &mut mark,
        );
        let Some(file) = self.log.as_mut() else {
            return false;
        };
        let written = file
            .write_all(&mark)
            .and_then(|()| file.write_all(&self.pending))
            .and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                let n = (mark.len() + self.pending.len()) as u64;
                self.log_bytes += n;
                self.logged_since_snapshot |= !self.pending.is_empty();
                self.pending.clear();
                self.last_flush = Instant::now();
                self.last_mark = self.last_flush;
                self.api
                    .log()
                    .metrics()
                    .saves
                    .saved(Save::Log, started.elapsed(), n);
                true
            }
            Err(e) => {
                self.log = None;
                let path = self.dir.join(log_name(self.generation));
                self.complain(format_args!("cannot append to {}: {e}", path.display()));
                false
            }
        }
    }

    /// Writes the whole registry: a new log first (changes from now on go
    /// there), then the snapshot in steps to a temporary file, synced and
    /// renamed into place; then the logs before the new one are deleted.
    /// `clean`: the last one, at a stop; nothing changes meanwhile, so it
    /// takes no rests and deletes the new log too.
    fn snapshot(&mut self, clean: bool) {
        let started = Instant::now();
        self.flush();
        let previous = self.generation;
        self.generation += 1;
        if let Err(e) = self.new_log() {
            self.generation = previous;
            self.next_try = Instant::now() + RETRY;
            self.complain(format_args!("cannot start a new log for a snapshot: {e}"));
            return;
        }
        self.logged_since_snapshot = false;
        let tmp = self.dir.join(SNAPSHOT_TMP);
        match self.write_snapshot(&tmp, clean) {
            Ok(done) => {
                let bytes = done.bytes;
                self.api.log().line(format_args!(
                    "data directory: snapshot of {} apps, {} instances, {bytes} bytes in {} ms (longest lock hold {} us)",
                    done.apps,
                    done.instances,
                    started.elapsed().as_millis(),
                    done.longest.as_micros()
                ));
                self.snapshot_due = false;
                self.last_snapshot = Instant::now();
                self.api
                    .log()
                    .metrics()
                    .saves
                    .saved(Save::Snapshot, started.elapsed(), bytes);
                let generation = self.generation;
                if clean {
                    self.log = None;
                }
                self.remove_logs(|g| g < generation || (clean && g == generation));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                let _ = fs::remove_file(&tmp);
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                self.next_try = Instant::now() + RETRY;
                self.logged_since_snapshot = true;
                self.complain(format_args!("cannot write a snapshot: {e}"));
            }
        }
    }

    fn write_snapshot(&mut self, tmp: &Path, clean: bool) -> io::Result<Written> {
        let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", tmp.display()));
        let mut file = io::BufWriter::with_capacity(1 << 20, File::create(tmp).map_err(with_path)?);
        let mut chunk = Vec::with_capacity(STEP * 64);
        codec::encode(
            &Record::Header {
                kind: Kind::Snapshot,
                version: codec::VERSION,
                generation: self.generation,
                writer: self.writer,
            },
            &mut chunk,
        );
        let mut cursor = SnapshotCursor::default();
        let mut done = Written::default();
        loop {
            let registry = self.api.lock();
            let held = Instant::now();
            let mono = clock::now().mono;
            // Copied under the lock, checksummed after it.
            let from = chunk.len();
            codec::encode_unsealed(&Record::Mark { mono }, &mut chunk);
            let finished = registry.snapshot_step(&mut cursor, STEP, &mut |item| match item {
                Item::App(name, state) => {
                    done.apps += 1;
                    codec::encode_unsealed(&app_record(name, state), &mut chunk);
                }
                Item::Instance(app, s) => {
                    done.instances += 1;
                    codec::encode_instance_unsealed(
                        &mut chunk,
                        app,
                        s.id,
                        s.ip,
                        s.port,
                        s.status,
                        s.last_renewal,
                        s.metadata,
                    );
                }
            });
            if finished {
                let end = Record::End {
                    mono,
                    index: registry.index(),
                    clean,
                };
                codec::encode_unsealed(&end, &mut chunk);
            }
            drop(registry);
            let step = held.elapsed();
            codec::seal_all(&mut chunk[from..]);
            done.longest = done.longest.max(step);
            file.write_all(&chunk).map_err(with_path)?;
            done.bytes += chunk.len() as u64;
            chunk.clear();
            if finished {
                break;
            }
            if !clean {
                // Rest twice as long as the step took (the ticker rests as
                // long: a snapshot can wait, heartbeats should not), and
                // keep the log's second meanwhile. A stop ends this
                // snapshot: the last one, made at once, replaces it.
                if self.rest(step * 2) {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
                }
                if !self.shared.lock().bytes.is_empty() {
                    self.flush();
                }
            }
        }
        let file = file.into_inner().map_err(|e| with_path(e.into_error()))?;
        file.sync_all().map_err(with_path)?;
        drop(file);
        let path = self.dir.join(SNAPSHOT);
        fs::rename(tmp, &path).map_err(with_path)?;
        sync_dir(&self.dir)?;
        Ok(done)
    }

    /// Waits `d` unless a stop is asked for; says whether one is.
    fn rest(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut buffer = self.shared.lock();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if buffer.stop || left.is_zero() {
                return buffer.stop;
            }
            buffer = self
                .shared
                .wake
                .wait_timeout(buffer, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn remove_logs(&mut self, covered: impl Fn(u64) -> bool) {
        let Ok(files) = Files::list(&self.dir) else {
            return;
        };
        for (generation, path) in files.logs {
            if covered(generation) {
                let _ = fs::remove_file(path);
            }
        }
        let _ = sync_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Metadata, Periods, StatusSet};

    const P: Periods = Periods {
        down_after: 90_000,
        evict_after: 600_000,
    };
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
            record(&shared, reg, &events);
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
            Item::App(name, state) => codec::encode(&app_record(name, state), &mut snapshot),
            Item::Instance(app, s) => codec::encode_instance(
                &mut snapshot,
                app,
                s.id,
                s.ip,
                s.port,
                s.status,
                s.last_renewal,
                s.metadata,
            ),
        }) {}
        codec::encode(
            &Record::End {
                mono: now,
                index: reg.index(),
                clean: true,
            },
            &mut snapshot,
        );
        let mut back = replayed(&snapshot, Kind::Snapshot, now, 5_000_000);
        assert_eq!(show(&mut back, 5_000_000), want);
    }

    fn header_of(kind: Kind, version: u16) -> Vec<u8> {
        let mut bytes = Vec::new();
        let header = Record::Header {
            kind,
            version,
            generation: 3,
            writer: 9,
        };
        codec::encode(&header, &mut bytes);
        bytes
    }

    #[track_caller]
    fn check(bytes: &[u8], want: Kind, expected: Result<u64, &str>) {
        let path = Path::new("/data/snapshot");
        let got = header(path, bytes, want)
            .map(|(generation, _)| generation)
            .map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g, e),
            (Err(e), Err(part)) => {
                assert!(e.contains(part) && e.contains("/data/snapshot"), "{e}");
                assert!(e.contains("left as it is"), "{e}");
            }
            (got, expected) => panic!("{got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn a_header_names_the_file_and_why_it_cannot_be_read() {
        check(
            &header_of(Kind::Snapshot, codec::VERSION),
            Kind::Snapshot,
            Ok(3),
        );
        check(
            &header_of(Kind::Snapshot, codec::VERSION + 1),
            Kind::Snapshot,
            Err("a newer format (version 2; this server reads version 1)"),
        );
        check(
            &header_of(Kind::Snapshot, 0),
            Kind::Snapshot,
            Err("an older format (version 0;"),
        );
        check(
            &header_of(Kind::Log, codec::VERSION),
            Kind::Snapshot,
            Err("not a Registro data file"),
        );
        check(b"", Kind::Log, Err("not a Registro data file"));
        check(
            b"\x7fELF\x02\x01\x01",
            Kind::Log,
            Err("not a Registro data file"),
        );
    }
}
