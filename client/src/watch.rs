use std::time::{Duration, Instant};

use crate::client::{route, Client, Method};
use crate::error::Error;
use crate::stop::{Stop, Stopper};
use crate::types::Application;

/// How often a watch reads the application when the registry sends no
/// change index (the original Go server), unless told otherwise.
pub(crate) const DEFAULT_POLL_EVERY: Duration = Duration::from_secs(1);

/// A blocking watch on one application, from [`Client::watch`]: an iterator
/// that yields the application each time it changes.
///
/// The first item is the application as it is now; each further one comes
/// when something other than a `lastRenewal` changed: an instance added,
/// removed, re-registered elsewhere or with other metadata, or its status
/// changing (including `up` to `down` by time passing).
///
/// ```no_run
/// use registro_client::Client;
///
/// let client = Client::new("http://localhost:8080/registro");
/// for app in client.watch("web").take(3) {
///     let app = app?;
///     println!("web now has {} instances up", app.available().count());
/// }
/// # Ok::<(), registro_client::Error>(())
/// ```
///
/// [`Watch::next_timeout`] gives up after a while instead of blocking until
/// the next change, and [`Watch::stopper`] stops a watch iterated on
/// another thread, at once:
///
/// ```no_run
/// # let client = registro_client::Client::new("http://localhost:8080/registro");
/// let watch = client.watch("web");
/// let stopper = watch.stopper();
/// let follower = std::thread::spawn(move || {
///     for app in watch {
///         // ... each change of `web` ...
/// #       drop(app);
///     }
/// });
/// // Later: ends the loop within milliseconds, even mid-wait.
/// stopper.stop();
/// follower.join().ok();
/// ```
///
/// How it waits: against a registry that sends a change index
/// (`Registro-Index`), each request is a long poll (`?index=N&wait=60s`,
/// see [`ClientBuilder::watch_wait`](crate::ClientBuilder::watch_wait))
/// that the registry answers as soon as the application changes, so a
/// change arrives at once and an idle watch costs one request a wait.
/// Against a registry that sends no index (the original Go server), the
/// watch reads the application every second ([`Watch::poll_every`]) and
/// reports when its view differs; so it does against a registry that sends
/// an index but answers long polls at once.
///
/// A different index than the one sent, lower included (a restarted
/// registry, or another server of a client with several), or a view that
/// differs whatever the index, is a change: the watch yields the new view
/// whole. After a failed request the next one is a plain read, not a long
/// poll on an index the registry may no longer mean the same by.
///
/// An application the registry does not know ([`Error::is_unknown_app`])
/// reads as one with no instances (it may be created later); the registry
/// cannot hold a watch on it, so it is read every `poll_every` until it
/// exists. Any other error (an unreachable registry, a 401, a 404 `no such
/// route` from a wrong root URL) is yielded as `Err`, and the next request
/// waits the polling interval first, so a loop over a watch never spins.
#[derive(Debug)]
#[must_use = "a watch does nothing until it is iterated"]
pub struct Watch {
    /// A clone of the client with a pool of its own, which `stop` shuts.
    client: Client,
    stop: Stop,
    app: String,
    /// The index of the registry's last answer, if it sends them.
    index: Option<u64>,
    /// The last view, to compare against.
    last: Option<Application>,
    poll_every: Duration,
    /// No request before this (polling, or after an error).
    not_before: Option<Instant>,
    /// The latest long poll came back unchanged well before its wait: the
    /// registry sends indexes but does not hold watches, so ask no faster
    /// than when polling.
    early: bool,
    /// The latest request failed: the next is a plain read.
    reread: bool,
}

impl Watch {
    pub(crate) fn new(client: &Client, app: &str) -> Watch {
        let client = client.own_pool();
        let stop = Stop::new(client.agent().clone());
        Watch {
            client,
            stop,
            app: app.to_owned(),
            index: None,
            last: None,
            poll_every: DEFAULT_POLL_EVERY,
            not_before: None,
            early: false,
            reread: false,
        }
    }

    /// How often to read the application when the registry sends no change
    /// index, and how long to wait after an error; 1 second by default.
    pub fn poll_every(mut self, every: Duration) -> Watch {
        self.poll_every = every.max(Duration::from_millis(1));
        self
    }

    /// A handle that stops this watch from another thread; see [`Stopper`].
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// The name of the application watched.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The registry's change index of the latest answer, if it sends one.
    pub fn index(&self) -> Option<u64> {
        self.index
    }

    /// The application as last seen, if it has been read yet.
    pub fn current(&self) -> Option<&Application> {
        self.last.as_ref()
    }

    /// The application the next time it changes (at once the first time),
    /// or `None` if it did not change within `timeout` or the watch was
    /// stopped ([`Watch::stopper`]).
    ///
    /// Returns within `timeout` plus the client's timeout (per server
    /// tried), or at once when stopped.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Application>, Error> {
        self.next_until(Instant::now().checked_add(timeout))
    }

    /// The next change, waiting until `deadline` (forever for `None`).
    fn next_until(&mut self, deadline: Option<Instant>) -> Result<Option<Application>, Error> {
        loop {
            if self.stop.is_stopped() {
                return Ok(None);
            }
            let now = Instant::now();
            if let Some(at) = self.not_before.filter(|at| *at > now) {
                if deadline.is_some_and(|d| d <= at) {
                    // Nothing may be asked before the deadline.
                    if let Some(d) = deadline.filter(|d| *d > now) {
                        self.stop.sleep(d - now);
                    }
                    return Ok(None);
                }
                self.stop.sleep(at - now);
                continue;
            }
            let wait = deadline.map_or(self.client.wait(), |d| {
                d.saturating_duration_since(now).min(self.client.wait())
            });
            let sent = Instant::now();
            let outcome = self.step(wait, self.client.timeout());
            if self.stop.is_stopped() {
                return Ok(None);
            }
            // "No change" well before the wait, even from a registry that
            // holds watches (a wait under 100 ms near the deadline is no
            // long poll, and leaves `early` as it was): paced, never spun.
            let quick_and_unchanged = matches!(outcome, Ok(None)) && sent.elapsed() < wait / 2;
            if self.polling() || outcome.is_err() || quick_and_unchanged {
                self.not_before = Instant::now().checked_add(self.poll_every);
            }
            if let Some(app) = outcome? {
                return Ok(Some(app));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// Whether the next request should wait the polling interval: the
    /// registry sends no index, or does not hold a watch.
    pub(crate) fn polling(&self) -> bool {
        self.index.is_none() || self.early
    }

    /// Whether the next request is a long poll the registry holds.
    pub(crate) fn holds(&self) -> bool {
        !self.polling() && !self.reread
    }

    /// The poll interval, for the cache's pauses.
    pub(crate) fn poll_interval(&self) -> Duration {
        self.poll_every
    }

    /// The stop, for the cache that runs this watch on a thread.
    pub(crate) fn stop_handle(&self) -> &Stop {
        &self.stop
    }

    /// The client's long-poll wait and timeout, for the cache.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// One request: a long poll of at most `wait` when the registry sends
    /// indexes (and the last request did not fail), else a plain read; the
    /// application if it changed. The request may take `wait` plus
    /// `margin`. Never sleeps otherwise.
    pub(crate) fn step(
        &mut self,
        wait: Duration,
        margin: Duration,
    ) -> Result<Option<Application>, Error> {
        let outcome = self.ask(wait, margin);
        self.reread = outcome.is_err();
        outcome
    }

    fn ask(&mut self, wait: Duration, margin: Duration) -> Result<Option<Application>, Error> {
        let mut url = route(&["apps", &self.app]);
        let asked = self.index.filter(|_| !self.reread);
        let timeout = match asked {
            Some(index) => {
                url.push_str(&format!("?index={index}&wait={}ms", wait.as_millis()));
                wait.saturating_add(margin)
            }
            None => margin,
        };
        let sent = Instant::now();
        let long_poll = asked.is_some() && wait >= Duration::from_millis(100);
        let (app, index) = match self.client.exchange(&Method::Get, &url, 200, Some(timeout)) {
            Ok(reply) => {
                let app: Application = serde_json::from_slice(&reply.body)
                    .map_err(|e| Error::invalid_response(&reply.server, e))?;
                (app, reply.index)
            }
            Err(e) if e.is_unknown_app() => (Application::new(&self.app), None),
            Err(e) => return Err(e),
        };
        // The view itself is compared too: a restarted registry that
        // predates indexes never reused may answer the old number for
        // another view.
        let changed =
            self.index != index || self.last.as_ref().is_none_or(|last| !last.same_view(&app));
        if long_poll {
            self.early = !changed && sent.elapsed() < wait / 2;
        } else if index.is_none() {
            self.early = false;
        }
        self.index = index;
        self.last = Some(app.clone());
        Ok(changed.then_some(app))
    }
}

impl Iterator for Watch {
    type Item = Result<Application, Error>;

    /// Blocks until the application changes (the first time: reads it now);
    /// `None` only once the watch is stopped ([`Watch::stopper`]).
    fn next(&mut self) -> Option<Result<Application, Error>> {
        loop {
            match self.next_until(None) {
                Ok(Some(app)) => return Some(Ok(app)),
                Ok(None) if self.stop.is_stopped() => return None,
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
