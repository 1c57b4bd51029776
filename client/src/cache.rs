use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::error::Error;
use crate::stop::Stop;
use crate::types::{Application, Instance, Status};
use crate::watch::Watch;

/// The first wait after a failure (the waits then double).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait after failures.
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
/// if let Some(inst) = cache.pick("web")? {
///     println!("calling {}:{}", inst.ip, inst.port);
/// }
/// // Only those in one zone:
/// let near = cache.pick_where("db", |i| i.meta("zone") == Some("eu-1"))?;
/// // The whole view, and how old it is:
/// let snap = cache.snapshot("web")?;
/// println!("{} instances, confirmed {:?} ago", snap.app.instances.len(), snap.age);
/// cache.stop();
/// # drop(near);
/// # Ok::<(), registro_client::Error>(())
/// ```
///
/// An application the cache was not given is an error
/// ([`Error::NotCached`], most likely a typo), never taken for one with no
/// instance `up` (`Ok(None)`):
///
/// ```no_run
/// # let client = registro_client::Client::new("http://localhost:8080/registro");
/// let cache = client.cache(["web"]);
/// assert!(cache.pick("wbe").is_err());   // not watched: a typo
/// assert!(cache.watches("web") && !cache.watches("wbe"));
/// ```
///
/// Each application has a thread that watches it (see [`Watch`]). What
/// that costs the registry:
///
/// - Against Registro (which sends change indexes and holds watches), each
///   request is a long poll the registry holds until the application
///   changes or 60 seconds pass ([`ClientBuilder::watch_wait`]). **An idle
///   cache makes one request per application per minute**; a change reaches
///   it as soon as the registry makes it, at the cost of one request (the
///   new view) per change.
/// - An application the registry does not know yet is read every second
///   until it exists (a watch cannot be held on it).
/// - Against a registry that sends no index (the original Go server), or
///   answers long polls at once, the application is read every second.
///
/// The token of the client ([`ClientBuilder::token`]) is sent, and a client
/// with several servers ([`ClientBuilder::url`]) moves on to the next when
/// one fails, carrying the index across.
///
/// While the registry is unreachable the cache keeps serving the last view
/// it had; [`Snapshot::age`] says how long ago the registry last confirmed
/// it and [`Snapshot::error`] why it has not since. An application the
/// registry does not know has no instances (it may appear later); any
/// other 404 (`no such route`: a root URL without `/registro`) is an error
/// in the snapshot.
///
/// [`Cache::stop`], or dropping the cache, interrupts the long polls in
/// flight and joins the threads at once (in milliseconds, whatever the
/// wait).
///
/// [`ClientBuilder::watch_wait`]: crate::ClientBuilder::watch_wait
/// [`ClientBuilder::token`]: crate::ClientBuilder::token
/// [`ClientBuilder::url`]: crate::ClientBuilder::url
#[derive(Debug)]
pub struct Cache {
    views: Arc<Mutex<BTreeMap<String, View>>>,
    /// One per thread: stopping interrupts its long poll and pause.
    stops: Vec<Stop>,
    threads: Vec<JoinHandle<()>>,
}

/// One application as the cache holds it.
#[derive(Debug, Default)]
struct View {
    /// The last good view, if any.
    app: Option<Application>,
    /// When the registry last confirmed it.
    confirmed: Option<Instant>,
    /// A long poll is held by the registry after a good answer: the view is
    /// current (a change would have answered it).
    held: bool,
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
    /// How long the view has gone unconfirmed: zero while the registry
    /// holds the cache's long poll (it would answer at once on a change),
    /// under a second while a registry that holds no watches answers, and
    /// from a failure on, the time since the registry last answered.
    pub age: Duration,
    /// Why the latest attempt to refresh the view failed, if it did.
    pub error: Option<Error>,
}

impl Cache {
    pub(crate) fn start<I>(client: &Client, apps: I) -> Cache
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let views: Arc<Mutex<BTreeMap<String, View>>> = Arc::default();
        let mut stops = Vec::new();
        let mut threads = Vec::new();
        for name in apps {
            let name = name.as_ref();
            if lock(&views).contains_key(name) {
                continue;
            }
            let mut watch = Watch::new(client, name);
            // The first view, before returning.
            let first = watch.step(Duration::ZERO, client.timeout());
            let failed = first.is_err();
            lock(&views).insert(name.to_owned(), View::default());
            record(&views, name, first);
            let stop = watch.stop_handle().clone();
            let shared = Arc::clone(&views);
            let app = name.to_owned();
            let spawned = thread::Builder::new()
                .name(format!("registro-cache-{}", name.replace('\0', "")))
                .spawn(move || {
                    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        follow(watch, failed, &shared);
                    }));
                    if let Err(panic) = caught {
                        if let Some(view) = lock(&shared).get_mut(&app) {
                            view.error = Some(Error::panicked(&*panic));
                        }
                    }
                });
            match spawned {
                Ok(handle) => {
                    stops.push(stop);
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
            stops,
            threads,
        }
    }

    /// The next `up` instance of the application, round-robin: `Ok(None)`
    /// if it has none up (or the registry has not answered yet: see
    /// [`Cache::snapshot`] for why). An application the cache does not
    /// watch is an [`Error::NotCached`], so a misspelt name is not taken
    /// for "none up".
    pub fn pick(&self, app: impl AsRef<str>) -> Result<Option<Instance>, Error> {
        self.pick_where(app, |_| true)
    }

    /// The next `up` instance of the application for which `keep` is true,
    /// round-robin: e.g. `|i| i.meta("zone") == Some("eu-1")`. `Ok(None)`
    /// and errors as [`Cache::pick`].
    pub fn pick_where(
        &self,
        app: impl AsRef<str>,
        keep: impl Fn(&Instance) -> bool,
    ) -> Result<Option<Instance>, Error> {
        let mut views = lock(&self.views);
        let app = app.as_ref();
        let Some(view) = views.get_mut(app) else {
            return Err(not_cached(app, &views));
        };
        let Some(known) = view.app.as_ref() else {
            return Ok(None);
        };
        let candidates: Vec<&Instance> = known
            .instances
            .iter()
            .filter(|i| i.status == Status::Up && keep(i))
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        let chosen = candidates[view.next % candidates.len()].clone();
        view.next = view.next.wrapping_add(1);
        Ok(Some(chosen))
    }

    /// A copy of the application's view, with its age and the latest
    /// error; an [`Error::NotCached`] if the cache does not watch it.
    ///
    /// Before the registry has answered once (it is unreachable, or the
    /// root URL is wrong), the snapshot has an application without
    /// instances, an age of `Duration::MAX` and the error that says why.
    pub fn snapshot(&self, app: impl AsRef<str>) -> Result<Snapshot, Error> {
        let views = lock(&self.views);
        let app = app.as_ref();
        let Some(view) = views.get(app) else {
            return Err(not_cached(app, &views));
        };
        let age = match view.confirmed {
            Some(_) if view.held => Duration::ZERO,
            Some(at) => at.elapsed(),
            None => Duration::MAX,
        };
        Ok(Snapshot {
            app: view.app.clone().unwrap_or_else(|| Application::new(app)),
            age,
            error: view.error.clone(),
        })
    }

    /// Whether the cache watches the application of this name (it was
    /// given to [`Client::cache`]).
    pub fn watches(&self, app: impl AsRef<str>) -> bool {
        lock(&self.views).contains_key(app.as_ref())
    }

    /// The names of the applications the cache watches.
    pub fn apps(&self) -> Vec<String> {
        lock(&self.views).keys().cloned().collect()
    }

    /// Stops and joins the threads: interrupts their long polls and pauses,
    /// so it returns within milliseconds whatever the wait.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        // Every stop first, so the threads end together.
        for stop in self.stops.drain(..) {
            stop.stop();
        }
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

/// A cache thread: keeps one application's view current until stopped.
fn follow(mut watch: Watch, mut failed: bool, views: &Mutex<BTreeMap<String, View>>) {
    let name = watch.app().to_owned();
    let stop = watch.stop_handle().clone();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let pause = if failed {
            let pause = backoff;
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
            pause
        } else {
            backoff = FIRST_BACKOFF;
            if watch.polling() {
                // No index (the original server, or an app it does not
                // know), or indexes without held watches: read every second.
                watch.poll_interval()
            } else {
                Duration::ZERO
            }
        };
        if stop.sleep(pause) {
            return;
        }
        let held = watch.holds();
        if held {
            set_held(views, &name, true);
        }
        let (wait, margin) = (watch.client().wait(), watch.client().timeout());
        let outcome = watch.step(wait, margin);
        if stop.is_stopped() {
            // The interruption's error is no news.
            return;
        }
        failed = outcome.is_err();
        record(views, &name, outcome);
    }
}

fn not_cached(app: &str, views: &BTreeMap<String, View>) -> Error {
    Error::NotCached {
        app: app.to_owned(),
        cached: views.keys().cloned().collect(),
    }
}

fn set_held(views: &Mutex<BTreeMap<String, View>>, name: &str, held: bool) {
    if let Some(view) = lock(views).get_mut(name) {
        view.held = held;
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
    view.held = false;
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
