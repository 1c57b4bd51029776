//! The view: the registry a server answers from, behind its lock, with what
//! every change of it must reach (the log, the recorder of `--data-dir`, the
//! shared watch answers, the wake-up of watches).
//!
//! It sits below both the API (which reads it and sends writes to a store)
//! and the stores (which change it: the memory store in place, the etcd
//! store from its watch), so that neither calls the other back: a store
//! knows nothing of HTTP, the API nothing of where the registry is kept.
//! Every change of the view goes through [`View::publish`].

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

pub mod answers;

use crate::log::Log;
use crate::registry::{self, Counts, Millis, Registry};

/// Called with the topics whose index changed, so that the connection layer
/// can wake the requests waiting on them. Must not block.
pub type Notify = Box<dyn Fn(&[Topic]) + Send + Sync>;

/// Called by [`View::publish`] with the registry and the events drained from
/// it, while the registry's lock is still held (so what it records is in the
/// order of the changes). Must be quick and must not lock the registry.
pub type Recorder = Box<dyn Fn(&Registry, &[registry::Event]) + Send + Sync>;

/// What a watch waits on: the whole list (`/apps`) or one application.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `GET /registro/1.0/apps?index=N`: any change anywhere.
    All,
    /// `GET /registro/1.0/apps/{app}?index=N`: a change of that app.
    App(Arc<str>),
}

/// The registry behind its lock, and the hooks its changes reach.
pub struct View {
    registry: Mutex<Registry>,
    recorder: OnceLock<Recorder>,
    log: Log,
    notify: OnceLock<Notify>,
    answers: answers::Answers,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").finish_non_exhaustive()
    }
}

/// What one publish changed: the apps (for watchers) and events (for the log).
#[derive(Default)]
struct Changes {
    apps: Vec<Arc<str>>,
    events: Vec<registry::Event>,
}

impl View {
    /// The view of `registry`, logging one line per event to `log`.
    pub fn new(registry: Registry, log: Log) -> View {
        View {
            registry: Mutex::new(registry),
            recorder: OnceLock::new(),
            log,
            notify: OnceLock::new(),
            answers: answers::Answers::default(),
        }
    }

    /// Sets the hook told about index changes (once; later calls are ignored).
    pub fn set_notify(&self, notify: Notify) {
        let _ = self.notify.set(notify);
    }

    /// Sets the hook told about every change while the registry is locked
    /// (once; later calls are ignored). See [`Recorder`].
    pub fn set_recorder(&self, recorder: Recorder) {
        let _ = self.recorder.set(recorder);
    }

    /// Locks the registry. A panic elsewhere while it was held cannot leave it
    /// half-updated (every operation completes before it returns), so a
    /// poisoned lock is taken over rather than propagated.
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where events are logged.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The encoded answers that watchers of one change share.
    pub fn answers(&self) -> &answers::Answers {
        &self.answers
    }

    /// Apps and instances by status, exact within the ticker's second: kept
    /// as counters, so a scrape scans nothing.
    pub fn counts(&self) -> Counts {
        self.lock().counts()
    }

    /// Releases the lock, then logs the events of what `registry` did and
    /// tells the watchers of the apps it changed (and of the list). `waiting`
    /// as in [`Log::event`].
    pub fn publish(&self, mut registry: MutexGuard<'_, Registry>, waiting: bool) {
        let mut changes = Changes::default();
        registry.drain_changes(&mut changes.apps, &mut changes.events);
        if !changes.apps.is_empty() || !changes.events.is_empty() {
            if let Some(recorder) = self.recorder.get() {
                recorder(&registry, &changes.events);
            }
        }
        drop(registry);
        self.publish_changes(changes, waiting);
    }

    /// Lets go of the shared watch answers too old to be shared at `now`
    /// (the ticker calls it every second at most).
    pub fn forget_stale_answers(&self, now: Millis) {
        self.answers.forget_stale(now);
    }

    fn publish_changes(&self, mut changes: Changes, waiting: bool) {
        for event in &changes.events {
            self.log.event(event, waiting);
        }
        if changes.apps.is_empty() {
            return;
        }
        self.answers.changed();
        if let Some(notify) = self.notify.get() {
            // A step of the ticker may change hundreds of apps, some twice:
            // sorted and deduplicated, not searched once per app.
            changes.apps.sort_unstable();
            changes.apps.dedup();
            let topics: Vec<Topic> = std::iter::once(Topic::All)
                .chain(changes.apps.into_iter().map(Topic::App))
                .collect();
            notify(&topics);
        }
    }
}
