//! The saver thread: appends what the recorder buffered to the log and
//! syncs it, and writes snapshots in steps.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::codec::{self, Kind, Record, Seal};
use super::disk::Disk;
use super::files::{log_name, Files, SNAPSHOT, SNAPSHOT_TMP};
use super::{app_record, Shared, BUFFER_LIMIT};
use crate::clock;
use crate::metrics::{Save, NOT_SAVING_AFTER};
use crate::registry::{Item, SnapshotCursor};
use crate::view::View;

/// The saver appends what the recorder buffered as soon as there is some
/// (group commit: what comes during a sync goes with the next write); it
/// wakes this often anyway, to write a mark and to check for a snapshot due.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// With nothing to append, a mark of the time is still written this often,
/// so that after a crash the time the server ran is counted.
pub(super) const MARK_EVERY: Duration = Duration::from_secs(5);
/// A log this long is compacted into a snapshot at once.
pub(super) const LOG_LIMIT: u64 = 64 << 20;
/// Instances (or eighths of an app) visited per lock hold of a snapshot.
pub(super) const STEP: usize = 2048;
/// After a failed snapshot, the wait before the next try.
pub(super) const RETRY: Duration = Duration::from_secs(10);
/// A failed save is logged at most this often.
pub(super) const QUIET: Duration = Duration::from_secs(10);

/// A snapshot's file is synced every this many bytes as it is written
/// while the server runs, so that its last sync is short and the log's
/// next append waits for no long one (the last snapshot, at a stop, has no
/// appends beside it: one sync).
pub(super) const SNAPSHOT_SYNC: u64 = 8 << 20;

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
pub(super) struct Saver {
    pub(super) dir: PathBuf,
    pub(super) writer: u64,
    /// The generation of the current log.
    pub(super) generation: u64,
    pub(super) log: Option<File>,
    /// The length of the current log up to its last whole record.
    pub(super) log_bytes: u64,
    /// A write or a sync of the current log failed: it may end in part of a
    /// record. It is cut back to `log_bytes` before anything else is
    /// written to it, and no new log starts before then, so that only the
    /// newest log can ever end torn (what a start takes for a crash).
    pub(super) torn: bool,
    /// Records taken from the buffer, not yet written.
    pub(super) pending: Vec<u8>,
    /// When the buffer was last taken (monotonic ms): what it holds now
    /// was recorded after.
    pub(super) taken: u64,
    /// Records were dropped (more than `BUFFER_LIMIT` waited): the oldest
    /// of them was recorded then; only a snapshot saves them.
    pub(super) dropped_since: Option<u64>,
    /// How many times records were dropped: a snapshot saves those dropped
    /// before it started.
    pub(super) drops: u64,
    pub(super) last_flush: Instant,
    pub(super) last_mark: Instant,
    pub(super) last_snapshot: Instant,
    pub(super) snapshot_due: bool,
    pub(super) snapshot_every: Duration,
    pub(super) logged_since_snapshot: bool,
    /// No snapshot is tried before this (after a failure).
    pub(super) next_try: Instant,
    pub(super) last_complaint: Option<Instant>,
    /// The last failure, for the line that says saving stopped.
    pub(super) last_error: String,
    /// Since when a change has waited too long (a line said so).
    pub(super) not_saving: Option<Instant>,
    pub(super) disk: Disk,
    pub(super) view: Arc<View>,
    pub(super) shared: Arc<Shared>,
    /// Held open: the `flock` lasts as long as the saver.
    pub(super) _lock: File,
}

impl Saver {
    pub(super) fn run(mut self) {
        loop {
            let stop = self.wait(FLUSH_EVERY, true);
            let saved = self.flush();
            self.report();
            if stop {
                self.snapshot(true);
                return;
            }
            if !saved {
                // A full disk: try again in a while, not in a loop, and
                // in time to say when a change has waited too long.
                let now = clock::now().mono;
                let waited = self.saves().unsaved_for(now).unwrap_or(0);
                let due = Duration::from_millis((NOT_SAVING_AFTER + 1).saturating_sub(waited));
                self.wait(
                    if due.is_zero() {
                        FLUSH_EVERY
                    } else {
                        due.min(FLUSH_EVERY)
                    },
                    false,
                );
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

    /// Waits up to `d` (`for_work`: until there is something to write),
    /// unless a stop is asked for; says whether one is.
    fn wait(&self, d: Duration, for_work: bool) -> bool {
        let until = Instant::now() + d;
        let mut buffer = self.shared.lock();
        loop {
            let work = for_work
                && (!buffer.bytes.is_empty() || buffer.overflowed || !self.pending.is_empty());
            let left = until.saturating_duration_since(Instant::now());
            if buffer.stop || work || left.is_zero() {
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

    fn saves(&self) -> &crate::metrics::Saves {
        &self.view.log().metrics().saves
    }

    fn complain(&mut self, what: fmt::Arguments<'_>) {
        self.saves().failed();
        self.last_error = what.to_string();
        if self.last_complaint.is_none_or(|t| t.elapsed() >= QUIET) {
            self.last_complaint = Some(Instant::now());
            self.view.log().line(format_args!(
                "data directory {}: {what} (failed saves so far: {}; retrying)",
                self.dir.display(),
                self.saves().failures()
            ));
        }
    }

    /// Says in a line when changes start to wait for the disk for longer
    /// than the contract allows (changes and `/healthz` answer 503 from
    /// then on), and when that is over.
    fn report(&mut self) {
        let now = clock::now().mono;
        let saving = self.saves().saving(now);
        match (saving, self.not_saving) {
            (false, None) => {
                self.not_saving = Some(Instant::now());
                let waited = self.saves().unsaved_for(now).unwrap_or(0);
                self.view.log().line(format_args!(
                    "data directory {}: not saving: a change answered {waited} ms ago is not on \
                     disk ({}); changes and /healthz answer 503 until a save succeeds",
                    self.dir.display(),
                    self.last_error
                ));
            }
            (true, Some(since)) => {
                self.not_saving = None;
                self.view.log().line(format_args!(
                    "data directory {}: saving again after {} ms; changes are taken again",
                    self.dir.display(),
                    since.elapsed().as_millis()
                ));
            }
            _ => {}
        }
    }

    /// Starts log `self.generation`: its header written and synced, and the
    /// directory synced.
    pub(super) fn new_log(&mut self) -> io::Result<()> {
        let path = self.dir.join(log_name(self.generation));
        let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let mut file = self.disk.create_new(&path).map_err(with_path)?;
        let mut bytes = Vec::new();
        codec::encode(
            &Record::Header {
                kind: Kind::Log,
                version: codec::VERSION,
                generation: self.generation,
                writer: self.writer,
            },
            &mut bytes,
            Seal::Now,
        );
        let written = self
            .disk
            .append(&mut file, &bytes)
            .and_then(|()| self.disk.sync(&file))
            .and_then(|()| self.disk.sync_dir(&self.dir));
        if let Err(e) = written {
            // Ours and without a record: nothing is lost by removing it.
            let _ = fs::remove_file(&path);
            return Err(with_path(e));
        }
        self.log = Some(file);
        self.log_bytes = bytes.len() as u64;
        self.torn = false;
        Ok(())
    }

    /// Takes what the recorder buffered, then appends it to the log with a
    /// mark of the time, and syncs it. On failure the records are kept for
    /// the next try, and the log is cut back to its last whole record
    /// first. Says whether nothing is left to write.
    fn flush(&mut self) -> bool {
        let shared = Arc::clone(&self.shared);
        {
            let mut buffer = shared.lock();
            if buffer.overflowed {
                buffer.overflowed = false;
                self.pending.clear();
                self.dropped();
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
            self.taken = clock::now().mono;
        }
        if self.pending.len() > BUFFER_LIMIT {
            self.pending = Vec::new();
            self.dropped();
        }
        if self.pending.is_empty() && !self.torn && self.last_mark.elapsed() < MARK_EVERY {
            self.settle_unsaved();
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
            Seal::Now,
        );
        let path = self.dir.join(log_name(self.generation));
        let Some(file) = self.log.as_mut() else {
            return false;
        };
        if self.torn {
            if let Err(e) = self.disk.cut(file, self.log_bytes) {
                self.complain(format_args!(
                    "cannot cut {} back to its last whole record: {e}",
                    path.display()
                ));
                return false;
            }
            self.torn = false;
        }
        let written = self
            .disk
            .append(file, &mark)
            .and_then(|()| self.disk.append(file, &self.pending))
            .and_then(|()| self.disk.sync(file));
        if let Err(e) = written {
            self.torn = true;
            self.complain(format_args!("cannot append to {}: {e}", path.display()));
            return false;
        }
        let n = (mark.len() + self.pending.len()) as u64;
        self.log_bytes += n;
        self.logged_since_snapshot |= !self.pending.is_empty();
        self.pending.clear();
        self.last_flush = Instant::now();
        self.last_mark = self.last_flush;
        self.saves().saved(Save::Log, started.elapsed(), n);
        self.settle_unsaved();
        true
    }

    /// Records were dropped: a snapshot is due, and until one is written
    /// they count as unsaved since the oldest of them.
    fn dropped(&mut self) {
        self.snapshot_due = true;
        self.drops += 1;
        let oldest = self.saves().oldest_unsaved().unwrap_or(self.taken);
        self.dropped_since = Some(self.dropped_since.map_or(oldest, |d| d.min(oldest)));
    }

    /// After a write: what is not on disk yet is what the buffer took in
    /// since `taken`, and what was dropped.
    fn settle_unsaved(&self) {
        let buffer = self.shared.lock();
        let waiting = (!buffer.bytes.is_empty() || buffer.overflowed).then_some(self.taken);
        let oldest = match (waiting, self.dropped_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.saves().saved_but(oldest);
    }

    /// Writes the whole registry: a new log first (changes from now on go
    /// there), then the snapshot in steps to a temporary file, synced and
    /// renamed into place; then the logs before the new one are deleted.
    /// `clean`: the last one, at a stop; nothing changes meanwhile, so it
    /// takes no rests and deletes the new log too.
    fn snapshot(&mut self, clean: bool) {
        let started = Instant::now();
        if !self.flush() {
            // The log may end in part of a record: no new log starts
            // before it is whole again (and the disk takes nothing anyway).
            self.next_try = Instant::now() + RETRY;
            if clean {
                self.view.log().line(format_args!(
                    "data directory {}: stopping with {} bytes of changes not on disk ({})",
                    self.dir.display(),
                    self.pending.len(),
                    self.last_error
                ));
            }
            return;
        }
        let drops = self.drops;
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
                let generation = self.generation;
                if clean {
                    self.log = None;
                }
                let removed = self.remove_logs(|g| g < generation || (clean && g == generation));
                let bytes = done.bytes;
                self.view.log().line(format_args!(
                    "data directory: snapshot of {} apps, {} instances, {bytes} bytes in {} ms \
                     (longest lock hold {} us){removed}",
                    done.apps,
                    done.instances,
                    started.elapsed().as_millis(),
                    done.longest.as_micros()
                ));
                self.last_snapshot = Instant::now();
                if self.drops == drops {
                    // Nothing was dropped while it was written: it holds
                    // everything dropped before.
                    self.snapshot_due = false;
                    self.dropped_since = None;
                }
                self.saves().saved(Save::Snapshot, started.elapsed(), bytes);
                self.settle_unsaved();
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
        let mut file = self.disk.create(tmp).map_err(with_path)?;
        let mut chunk = Vec::with_capacity(STEP * 64);
        codec::encode(
            &Record::Header {
                kind: Kind::Snapshot,
                version: codec::VERSION,
                generation: self.generation,
                writer: self.writer,
            },
            &mut chunk,
            Seal::Now,
        );
        let mut cursor = SnapshotCursor::default();
        let mut done = Written::default();
        let mut unsynced = 0;
        loop {
            let registry = self.view.lock();
            let held = Instant::now();
            let mono = clock::now().mono;
            // Copied under the lock, checksummed after it.
            let from = chunk.len();
            codec::encode(&Record::Mark { mono }, &mut chunk, Seal::Later);
            let finished = registry.snapshot_step(&mut cursor, STEP, &mut |item| match item {
                Item::App(name, state) => {
                    done.apps += 1;
                    codec::encode(&app_record(name, state), &mut chunk, Seal::Later);
                }
                Item::Instance(app, s) => {
                    done.instances += 1;
                    codec::encode_instance(&mut chunk, app, &s, Seal::Later);
                }
            });
            if finished {
                let end = Record::End {
                    mono,
                    index: registry.index(),
                    clean,
                };
                codec::encode(&end, &mut chunk, Seal::Later);
            }
            drop(registry);
            let step = held.elapsed();
            codec::seal_all(&mut chunk[from..]);
            done.longest = done.longest.max(step);
            self.disk.append(&mut file, &chunk).map_err(with_path)?;
            done.bytes += chunk.len() as u64;
            unsynced += chunk.len() as u64;
            chunk.clear();
            if finished {
                break;
            }
            if unsynced >= SNAPSHOT_SYNC && !clean {
                self.disk.sync(&file).map_err(with_path)?;
                unsynced = 0;
            }
            if !clean {
                // Rest twice as long as the step took (the ticker rests as
                // long: a snapshot can wait, heartbeats should not), and
                // keep the log's second meanwhile. A stop ends this
                // snapshot: the last one, made at once, replaces it.
                if self.wait(step * 2, false) {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
                }
                if !self.shared.lock().bytes.is_empty() {
                    self.flush();
                    self.report();
                }
            }
        }
        self.disk.sync(&file).map_err(with_path)?;
        drop(file);
        self.disk
            .rename(tmp, &self.dir.join(SNAPSHOT))
            .map_err(with_path)?;
        self.disk.sync_dir(&self.dir)?;
        Ok(done)
    }

    /// Removes the logs a snapshot covers; answers what to add to its line.
    fn remove_logs(&mut self, covered: impl Fn(u64) -> bool) -> String {
        let Ok(files) = Files::list(&self.dir) else {
            return String::new();
        };
        let mut removed = Vec::new();
        for (generation, path) in files.logs {
            if covered(generation) && fs::remove_file(&path).is_ok() {
                removed.push(log_name(generation));
            }
        }
        let _ = self.disk.sync_dir(&self.dir);
        match removed.as_slice() {
            [] => String::new(),
            [one] => format!("; removed {one}, which it covers"),
            [first, .., last] => format!(
                "; removed the {} logs it covers, {first} to {last}",
                removed.len()
            ),
        }
    }
}
