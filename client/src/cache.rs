use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::error::Error;
use crate::types::{Application, Instance, Status};
use crate::watch::Watch;

/// The longest a cache's long poll asks the registry to wait, so that its
/// thread notices a stop within a second.
const CACHE_WAIT: Duration = Duration::from_millis(400);

/// The most a cache's request may take beyond its wait (less if the
/// client's timeout is shorter): a registry slower than this counts as
/// unreachable for the cache, which keeps its last view.
const CACHE_MARGIN: Duration = Duration::from_millis(500);

/// The longest wait after failures (the waits double up to it).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A discovery cache, from [`Client::cache`]: the current view of a few
/// applications, kept up to date by background threads, to pick an
/// instance from without a request.
///
/// ```no_run
/// use registro_client::Client;
///
/// let client = Client::new("http://localhost:8080/registro");
/// let cache = client.cache(&["web", "db"]);
/// // Round-robin over the `up` instances of `web`:
/// if let Some(inst) = cache.pick("web") {
///     println!("calling {}:{}", inst.ip, inst.port);
/// }
/// // Only those in one zone:
/// let near = cache.pick_where("db", |i| i.meta("zone") == Some("eu-1"));
/// // The whole view, and how old it is:
/// if let Some(snap) = cache.snapshot("web") {
///     println!("{} instances, confirmed {:?} ago", snap.app.instances.len(), snap.age);
/// }
/// cache.stop();
/// # drop(near);
/// ```
///
/// Each application has a thread that watches it (see [`Watch`]): against
/// a registry that sends change indexes, a change reaches the cache as soon
/// as the registry makes it (each long poll lasts under half a second, so
/// an idle cache makes about two small requests a second per application;
/// a registry that sends indexes but answers at once is asked as often);
/// against one that sends none (the original Go server), it reads the
/// application every second. The token of the client
/// ([`ClientBuilder::token`](crate::ClientBuilder::token)) is sent.
///
/// While the registry is unreachable the cache keeps serving the last view
/// it had; [`Snapshot::age`] says how long ago the registry last confirmed
/// it and [`Snapshot::error`] why it has not since. An application the
/// registry does not know has no instances (it may appear later).
///
/// [`Cache::stop`], or dropping the cache, stops and joins the threads
/// within a second.
#[derive(Debug)]
pub struct Cache {
    views: Arc<Mutex<BTreeMap<String, View>>>,
    /// Dropping them wakes the threads, which then end.
    wakes: Vec<mpsc::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

/// One application as the cache holds it.
#[derive(Debug, Default)]
struct View {
    /// The last good view, if any.
    app: Option<Application>,
    /// When the registry last confirmed it.
    confirmed: Option<Instant>,
    error: Option<Error>,
    /// The round-robin position.
    next: usize,
}

/// A copy of one application's view in the [`Cache`], from
/// [`Cache::snapshot`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Snapshot {
    /// The application as the registry last reported it: every instance,
    /// whatever its status.
    pub app: Application,
    /// How long ago the registry last confirmed this view: under a second
    /// while it answers, growing while it does not.
    pub age: Duration,
    /// Why the latest attempt to refresh the view failed, if it did.
    pub error: Option<Error>,
}

impl Cache {
    pub(crate) fn start(client: &Client, apps: &[&str]) -> Cache {
        let views: Arc<Mutex<BTreeMap<String, View>>> = Arc::default();
        let mut wakes = Vec::new();
        let mut threads = Vec::new();
        let margin = client.timeout().min(CACHE_MARGIN);
        for &name in apps {
            if lock(&views).contains_key(name) {
                continue;
            }
            let mut watch = Watch::new(client.clone(), name);
            // The first view, before returning.
            let first = watch.step(Duration::ZERO, client.timeout());
            let failed = first.is_err();
            lock(&views).insert(name.to_owned(), View::default());
            record(&views, name, first);
            let (wake, asleep) = mpsc::channel();
            let shared = Arc::clone(&views);
            let app = name.to_owned();
            let spawned = thread::Builder::new()
                .name(format!("registro-cache-{}", name.replace('\0', "")))
                .spawn(move || {
                    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        follow(watch, failed, margin, &asleep, &shared);
                    }));
                    if let Err(panic) = caught {
                        if let Some(view) = lock(&shared).get_mut(&app) {
                            view.error = Some(Error::panicked(&*panic));
                        }
                    }
                });
            match spawned {
                Ok(handle) => {
                    wakes.push(wake);
                    threads.push(handle);
                }
                Err(e) => {
                    if let Some(view) = lock(&views).get_mut(name) {
                        view.error = Some(Error::spawn_failed(e));
                    }
                }
            }
        }
        Cache {
            views,
            wakes,
            threads,
        }
    }

    /// The next `up` instance of the application, round-robin; `None` if it
    /// has none (or is not one the cache watches).
    pub fn pick(&self, app: &str) -> Option<Instance> {
        self.pick_where(app, |_| true)
    }

    /// The next `up` instance of the application for which `keep` is true,
    /// round-robin: e.g. `|i| i.meta("zone") == Some("eu-1")`.
    pub fn pick_where(&self, app: &str, keep: impl Fn(&Instance) -> bool) -> Option<Instance> {
        let mut views = lock(&self.views);
        let view = views.get_mut(app)?;
        let candidates: Vec<&Instance> = view
            .app
            .as_ref()?
            .instances
            .iter()
            .filter(|i| i.status == Status::Up && keep(i))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let chosen = candidates[view.next % candidates.len()].clone();
        view.next = view.next.wrapping_add(1);
        Some(chosen)
    }

    /// A copy of the application's view, with its age; `None` if the cache
    /// does not watch it or has not yet been able to read it.
    pub fn snapshot(&self, app: &str) -> Option<Snapshot> {
        let views = lock(&self.views);
        let view = views.get(app)?;
        Some(Snapshot {
            app: view.app.clone()?,
            age: view.confirmed.map_or(Duration::MAX, |at| at.elapsed()),
            error: view.error.clone(),
        })
    }

    /// The names of the applications the cache watches.
    pub fn apps(&self) -> Vec<String> {
        lock(&self.views).keys().cloned().collect()
    }

    /// Stops and joins the threads (within a second).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.wakes.clear();
        for handle in self.threads.drain(..) {
            // Panics are caught inside the thread.
            drop(handle.join());
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A cache thread: keeps one application's view current until woken.
fn follow(
    mut watch: Watch,
    mut failed: bool,
    margin: Duration,
    asleep: &mpsc::Receiver<()>,
    views: &Mutex<BTreeMap<String, View>>,
) {
    let poll_every = crate::watch::DEFAULT_POLL_EVERY;
    let mut backoff = Duration::from_millis(100);
    loop {
        let pause = if failed {
            let pause = backoff;
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
            pause
        } else {
            backoff = Duration::from_millis(100);
            if watch.index().is_none() {
                // A registry without indexes (the original): read every second.
                poll_every
            } else if watch.polling() {
                // Indexes but no held watches (this server before its
                // connection layer parks them): ask as often as the long
                // polls would, so a change still arrives within half a second.
                CACHE_WAIT
            } else {
                Duration::ZERO
            }
        };
        match asleep.recv_timeout(pause) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let outcome = watch.step(CACHE_WAIT, margin);
        failed = outcome.is_err();
        let name = watch.app().to_owned();
        record(views, &name, outcome);
    }
}

/// Records the outcome of one request for `name`'s view.
fn record(
    views: &Mutex<BTreeMap<String, View>>,
    name: &str,
    outcome: Result<Option<Application>, Error>,
) {
    let mut views = lock(views);
    let Some(view) = views.get_mut(name) else {
        return;
    };
    match outcome {
        Ok(changed) => {
            if let Some(app) = changed {
                view.app = Some(app);
            }
            view.confirmed = Some(Instant::now());
            view.error = None;
        }
        Err(e) => view.error = Some(e),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
