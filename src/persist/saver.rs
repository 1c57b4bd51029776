//! The saver thread: appends what the recorder buffered to the log and
//! syncs it, and writes snapshots in steps.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::codec::{self, Kind, Record};
use super::files::{log_name, sync_dir, Files, SNAPSHOT, SNAPSHOT_TMP};
use super::{app_record, Shared, BUFFER_LIMIT};
use crate::clock;
use crate::metrics::Save;
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
    pub(super) log_bytes: u64,
    /// Records taken from the buffer, not yet written.
    pub(super) pending: Vec<u8>,
    pub(super) last_flush: Instant,
    pub(super) last_mark: Instant,
    pub(super) last_snapshot: Instant,
    pub(super) snapshot_due: bool,
    pub(super) snapshot_every: Duration,
    pub(super) logged_since_snapshot: bool,
    /// No snapshot is tried before this (after a failure).
    pub(super) next_try: Instant,
    pub(super) last_complaint: Option<Instant>,
    pub(super) view: Arc<View>,
    pub(super) shared: Arc<Shared>,
    /// Held open: the `flock` lasts as long as the saver.
    pub(super) _lock: File,
}

impl Saver {
    pub(super) fn run(mut self) {
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
        self.view.log().metrics().saves.failed();
        if self.last_complaint.is_none_or(|t| t.elapsed() >= QUIET) {
            self.last_complaint = Some(Instant::now());
            self.view.log().line(format_args!(
                "data directory {}: {what} (failed saves so far: {}; retrying, still serving)",
                self.dir.display(),
                self.view.log().metrics().saves.failures()
            ));
        }
    }

    /// Starts log `self.generation`: its header written and synced, and the
    /// directory synced.
    pub(super) fn new_log(&mut self) -> io::Result<()> {
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
                self.view
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
                self.view.log().line(format_args!(
                    "data directory: snapshot of {} apps, {} instances, {bytes} bytes in {} ms (longest lock hold {} us)",
                    done.apps,
                    done.instances,
                    started.elapsed().as_millis(),
                    done.longest.as_micros()
                ));
                self.snapshot_due = false;
                self.last_snapshot = Instant::now();
                self.view
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
            let registry = self.view.lock();
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
                    codec::encode_instance_unsealed(&mut chunk, app, &s);
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
