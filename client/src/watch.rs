use std::thread;
use std::time::{Duration, Instant};

use crate::client::{Client, Method};
use crate::error::Error;
use crate::types::Application;

/// How often a watch reads the application when the registry sends no
/// change index (the original Go server), unless told otherwise.
pub(crate) const DEFAULT_POLL_EVERY: Duration = Duration::from_secs(1);

/// The longest single wait a watch asks the registry for (it asks again).
const MAX_WAIT: Duration = Duration::from_secs(60);

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
/// the next change.
///
/// How it waits: against a registry that sends a change index
/// (`Registro-Index`), each request is a long poll (`?index=N&wait=...`)
/// that the registry answers as soon as the application changes, so a
/// change arrives at once. A restarted registry starts its index over; a
/// different index than the one sent counts as a change, so the watch
/// carries on. Against a registry that sends no index (the original Go
/// server), the watch reads the application every second
/// ([`Watch::poll_every`]) and reports when its view differs; so it does
/// against a registry that sends an index but answers long polls at once.
///
/// An application the registry does not know reads as one with no
/// instances (it may be created later). An error (an unreachable registry,
/// a 401) is yielded as `Err`, and the next request waits the polling
/// interval first, so a loop over a watch never spins.
#[derive(Debug)]
#[must_use = "a watch does nothing until it is iterated"]
pub struct Watch {
    client: Client,
    app: String,
    /// The index of the registry's last answer, if it sends them.
    index: Option<u64>,
    /// The last view, to compare against when the registry sends no index.
    last: Option<Application>,
    poll_every: Duration,
    /// No request before this (polling, or after an error).
    not_before: Option<Instant>,
    /// The latest long poll came back unchanged well before its wait: the
    /// registry sends indexes but does not hold watches, so ask no faster
    /// than when polling.
    early: bool,
}

impl Watch {
    pub(crate) fn new(client: Client, app: &str) -> Watch {
        Watch {
            client,
            app: app.to_owned(),
            index: None,
            last: None,
            poll_every: DEFAULT_POLL_EVERY,
            not_before: None,
            early: false,
        }
    }

    /// How often to read the application when the registry sends no change
    /// index, and how long to wait after an error; 1 second by default.
    pub fn poll_every(mut self, every: Duration) -> Watch {
        self.poll_every = every.max(Duration::from_millis(1));
        self
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
    /// or `None` if it did not change within `timeout`.
    ///
    /// Returns within `timeout` plus the client's timeout.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Application>, Error> {
        self.next_until(Instant::now().checked_add(timeout))
    }

    /// The next change, waiting until `deadline` (forever for `None`).
    fn next_until(&mut self, deadline: Option<Instant>) -> Result<Option<Application>, Error> {
        loop {
            let now = Instant::now();
            if let Some(at) = self.not_before.filter(|at| *at > now) {
                if deadline.is_some_and(|d| d <= at) {
                    // Nothing may be asked before the deadline.
                    if let Some(d) = deadline.filter(|d| *d > now) {
                        thread::sleep(d - now);
                    }
                    return Ok(None);
                }
                thread::sleep(at - now);
                continue;
            }
            let wait =
                deadline.map_or(MAX_WAIT, |d| d.saturating_duration_since(now).min(MAX_WAIT));
            let outcome = self.step(wait, self.client.timeout());
            if self.polling() || outcome.is_err() {
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

    /// One request: a long poll of at most `wait` when the registry sends
    /// indexes, else a plain read; the application if it changed. The
    /// request may take `wait` plus `margin`. Never sleeps otherwise.
    pub(crate) fn step(
        &mut self,
        wait: Duration,
        margin: Duration,
    ) -> Result<Option<Application>, Error> {
        let mut url = self.client.url(&["apps", &self.app]);
        let timeout = match self.index {
            Some(index) => {
                url.push_str(&format!("?index={index}&wait={}ms", wait.as_millis()));
                Some(wait.saturating_add(margin))
            }
            None => Some(margin),
        };
        let sent = Instant::now();
        let long_poll = self.index.is_some() && wait >= Duration::from_millis(100);
        let (app, index) = match self.client.exchange(Method::Get, &url, 200, timeout) {
            Ok(reply) => {
                let app: Application =
                    serde_json::from_slice(&reply.body).map_err(Error::invalid_response)?;
                (app, reply.index)
            }
            Err(e) if e.is_not_found() => (Application::new(&self.app), None),
            Err(e) => return Err(e),
        };
        let changed = match (self.index, index) {
            (Some(sent), Some(got)) => sent != got,
            _ => self.last.as_ref().is_none_or(|last| !last.same_view(&app)),
        };
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
    /// never `None`.
    fn next(&mut self) -> Option<Result<Application, Error>> {
        loop {
            match self.next_until(None) {
                Ok(Some(app)) => return Some(Ok(app)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
