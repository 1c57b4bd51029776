use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::client::Client;
use crate::error::Error;
use crate::types::{Application, Instance};

/// The shortest interval a heartbeat accepts, so that a zero cannot make it
/// spin.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The longest first wait after a failed beat (the waits then double up to
/// the interval).
const MAX_FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// A thread that keeps one instance registered and `up`, started by
/// [`Client::start_heartbeat`].
///
/// The first renewal happens before `start_heartbeat` returns, so the
/// instance reads `up` as soon as you have the handle, and a failure of
/// that renewal is in [`Heartbeat::last_error`] at once. The thread then
/// renews every interval plus a random jitter of up to 10 % (so a fleet
/// started together does not beat in lock-step). Any interval is accepted:
/// the arithmetic saturates, so `Duration::MAX` means "renew once".
///
/// What the thread does with each answer:
///
/// - **404**: the registry restarted and forgot everything, or evicted the
///   instance. It registers the application and the instance again (with
///   the instance's metadata) and renews, so the instance is back within
///   one interval.
/// - **409** while registering again: another live process holds the id at
///   another address. The heartbeat reports it ([`Heartbeat::last_error`]
///   has the 409) and does *not* renew, which would keep the other
///   process's registration alive; it tries to register again every
///   interval, which succeeds once the other instance is down.
/// - **403**: an operator took the instance out of service. The heartbeat
///   stops renewing and never registers the instance again on its own, even
///   once the registry has forgotten it; `last_error` keeps the 403 and
///   [`Heartbeat::is_running`] turns false, and [`Heartbeat::stop`] sends
///   no deregistration (the instance is out already). Register again (a new
///   `register_service` and heartbeat) to come back.
/// - **401** ([`Error::Unauthorized`]), or **403** for a token that may only
///   read ([`Error::Forbidden`]): tried again after a full interval, not
///   sooner.
/// - A client of several servers ([`ClientBuilder::url`](crate::ClientBuilder::url))
///   moves to the next after a connection error, a timeout or a 503 within
///   the same beat, so the beat succeeds and the period is kept.
/// - Anything else (an unreachable registry, an unexpected status): retried
///   with a backoff that starts short and doubles up to the interval; it
///   never ends the thread.
///
/// The thread prints nothing. Should it ever end unexpectedly (a panic,
/// which would be a bug), `is_running` says so and `last_error` holds
/// [`Error::Panicked`].
///
/// [`Heartbeat::stop`] wakes the thread at once, joins it and deregisters
/// the instance (the registry marks it out-of-service). Dropping the
/// `Heartbeat` does the same and ignores the deregistration's outcome, so
/// the handle must be kept for as long as the instance should stay up:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # fn main() -> Result<(), registro_client::Error> {
/// let client = registro_client::Client::new("http://localhost:8080/registro");
/// let (app, inst) = client.register_service("web-1", "web", "10.0.0.7", 8080)?;
/// client.start_heartbeat(&app, &inst); // dropped at once: deregistered
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping a Heartbeat stops it and deregisters the instance; keep it while the instance should stay up"]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

/// A heartbeat's handle, shared with [`stop_on_signals`]'s thread, which
/// stops it on a signal while the program keeps the [`Heartbeat`] to read.
///
/// [`stop_on_signals`]: crate::stop_on_signals
#[derive(Debug)]
pub(crate) struct Inner {
    /// Dropping it wakes the thread, which then ends; `None` once stopped.
    wake: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Mutex<Progress>>,
    client: Client,
    app: Application,
    instance: Instance,
    interval: Duration,
}

/// What the thread reports to the handle.
#[derive(Debug, Default)]
struct Progress {
    last_error: Option<Error>,
    renewals: u64,
    /// The registry answered 403: the instance is out of service already.
    refused: bool,
}

impl Heartbeat {
    pub(crate) fn start(
        client: Client,
        app: &str,
        instance: &Instance,
        interval: Duration,
    ) -> Heartbeat {
        let interval = interval.max(MIN_INTERVAL);
        let (wake, asleep) = mpsc::channel();
        let shared = Arc::new(Mutex::new(Progress::default()));
        let mut beat = Beat {
            client: client.clone(),
            app: Application::new(app),
            instance: instance.clone(),
            registering: false,
        };
        let mut schedule = Schedule::new(interval, RandomState::new());
        // The first beat, here, so that the instance is up on return.
        let first = beat.once(&|| false);
        let next = report(&shared, &mut schedule, first);
        let thread = next.and_then(|wait| {
            let progress = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                // A NUL in a thread name would make `spawn` panic.
                .name(format!(
                    "registro-heartbeat-{}",
                    instance.id.replace('\0', "")
                ))
                .spawn(move || {
                    guarded(&progress, || {
                        run(beat, schedule, wait, &asleep, &progress);
                    });
                });
            match spawned {
                Ok(handle) => Some(handle),
                Err(e) => {
                    // Out of threads: nothing will renew; say so.
                    lock(&shared).last_error = Some(Error::spawn_failed(e));
                    None
                }
            }
        });
        Heartbeat {
            inner: Arc::new(Inner {
                wake: Mutex::new(Some(wake)),
                thread: Mutex::new(thread),
                shared,
                client,
                app: Application::new(app),
                instance: instance.clone(),
                interval,
            }),
        }
    }

    /// Stops the heartbeat: wakes the thread (it never waits out the
    /// interval), joins it, then deregisters the instance and returns how
    /// that went.
    ///
    /// The registry marks the instance out-of-service and refuses its
    /// heartbeats; it is removed after the registry's eviction period.
    /// `stop` returns within one client timeout plus the deregistration's
    /// request: a request in flight is waited for, and a re-registration
    /// in progress looks for the stop between its requests.
    ///
    /// After a 403 (an operator took the instance out of service) nothing
    /// is sent: the instance is out of service already, and a DELETE would
    /// only extend its stay in the registry. `stop` then returns `Ok`.
    pub fn stop(self) -> Result<(), Error> {
        self.inner.halt()
    }

    /// The error of the latest beat, or `None` if it succeeded.
    ///
    /// A beat is one renewal, or after a 404 the re-registration and
    /// renewal. After a 403 this stays the 403 (the heartbeat has stopped
    /// renewing).
    pub fn last_error(&self) -> Option<Error> {
        lock(&self.inner.shared).last_error.clone()
    }

    /// Whether the thread is still renewing: false after a 403 (the
    /// instance was taken out of service), after a failure to start the
    /// thread, or should the thread ever end unexpectedly; `last_error`
    /// then says why.
    pub fn is_running(&self) -> bool {
        lock(&self.inner.thread)
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// How many renewals the registry has accepted so far.
    pub fn renewals(&self) -> u64 {
        lock(&self.inner.shared).renewals
    }

    /// The interval between renewals (before jitter).
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// The application and instance it keeps up.
    pub fn instance(&self) -> (&Application, &Instance) {
        (&self.inner.app, &self.inner.instance)
    }

    /// The shared handle, for `stop_on_signals`' thread.
    #[cfg_attr(not(all(unix, feature = "signal")), allow(dead_code))]
    pub(crate) fn inner(&self) -> Arc<Inner> {
        Arc::clone(&self.inner)
    }
}

impl Inner {
    /// Wakes and joins the thread, then deregisters. The first call does
    /// it (`stop`, `drop`, or a signal's thread); later ones return `Ok` at
    /// once.
    pub(crate) fn halt(&self) -> Result<(), Error> {
        let Some(wake) = lock(&self.wake).take() else {
            return Ok(());
        };
        drop(wake);
        let thread = lock(&self.thread).take();
        if let Some(handle) = thread {
            // `guarded` catches panics, so the join cannot fail; were it to,
            // deregistering is still the right thing to do.
            drop(handle.join());
        }
        if lock(&self.shared).refused {
            return Ok(());
        }
        self.client.delete_instance(&self.app, &self.instance)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let _ = self.inner.halt();
    }
}

/// How one beat went.
#[derive(Debug)]
enum Outcome {
    Renewed,
    Failed(Error),
    /// 403: taken out of service; renewing ends.
    Refused(Error),
    /// The handle asked the thread to stop between two requests.
    Stopped,
}

/// One beat's requests, and whether the instance needs registering again.
struct Beat {
    client: Client,
    app: Application,
    instance: Instance,
    /// A renewal answered 404, or a registration failed: the next beat
    /// registers before it renews.
    registering: bool,
}

impl Beat {
    /// Renews; after a 404, registers the application and instance again and
    /// renews once more. `stopped` is asked between requests.
    fn once(&mut self, stopped: &dyn Fn() -> bool) -> Outcome {
        if !self.registering {
            match self.renew() {
                Err(e) if e.is_not_found() => self.registering = true,
                other => return other.into(),
            }
            if stopped() {
                return Outcome::Stopped;
            }
        }
        if let Err(e) = self.client.ensure_app(&self.app.name) {
            return Outcome::Failed(e);
        }
        if stopped() {
            return Outcome::Stopped;
        }
        // A 409 (another live process holds the id at another address) is
        // an error like any other: the next beat registers again rather
        // than renewing someone else's registration.
        if let Err(e) = self.client.post_instance(&self.app.name, &self.instance) {
            return Outcome::Failed(e);
        }
        self.registering = false;
        if stopped() {
            return Outcome::Stopped;
        }
        match self.renew() {
            Err(e) if e.is_not_found() => {
                self.registering = true;
                Outcome::Failed(e)
            }
            other => other.into(),
        }
    }

    fn renew(&self) -> Result<(), Error> {
        self.client.renew_instance(&self.app, &self.instance)
    }
}

impl From<Result<(), Error>> for Outcome {
    fn from(result: Result<(), Error>) -> Outcome {
        match result {
            Ok(()) => Outcome::Renewed,
            Err(e @ Error::Status { code: 403, .. }) => Outcome::Refused(e),
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// Records a beat's outcome; the wait before the next beat, or `None` when
/// there is none.
fn report(shared: &Mutex<Progress>, schedule: &mut Schedule, outcome: Outcome) -> Option<Duration> {
    let mut progress = lock(shared);
    match outcome {
        Outcome::Renewed => {
            progress.renewals += 1;
            progress.last_error = None;
            Some(schedule.after_success())
        }
        Outcome::Failed(e) => {
            let wait = schedule.after_failure(&e);
            progress.last_error = Some(e);
            Some(wait)
        }
        Outcome::Refused(e) => {
            progress.last_error = Some(e);
            progress.refused = true;
            None
        }
        Outcome::Stopped => None,
    }
}

/// The heartbeat thread: wait, beat, repeat until woken or refused.
fn run(
    mut beat: Beat,
    mut schedule: Schedule,
    mut wait: Duration,
    asleep: &mpsc::Receiver<()>,
    shared: &Mutex<Progress>,
) {
    let stopped = || !matches!(asleep.try_recv(), Err(TryRecvError::Empty));
    loop {
        match asleep.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let outcome = beat.once(&stopped);
        match report(shared, &mut schedule, outcome) {
            Some(next) => wait = next,
            None => return,
        }
    }
}

/// Runs `body`, recording a panic in `shared` instead of letting the thread
/// end without a word.
fn guarded(shared: &Mutex<Progress>, body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        lock(shared).last_error = Some(Error::panicked(&*panic));
    }
}

/// When to beat next: the pure part of the thread's loop.
#[derive(Debug)]
struct Schedule {
    interval: Duration,
    backoff: Duration,
    seed: RandomState,
    beats: u64,
}

impl Schedule {
    fn new(interval: Duration, seed: RandomState) -> Schedule {
        Schedule {
            interval,
            backoff: first_backoff(interval),
            seed,
            beats: 0,
        }
    }

    /// The wait after a successful beat: the interval plus jitter.
    fn after_success(&mut self) -> Duration {
        self.backoff = first_backoff(self.interval);
        self.interval.saturating_add(self.jitter())
    }

    /// The wait after a failed beat: the current backoff, which doubles for
    /// the next failure, never above the interval; after a 401 the whole
    /// interval (a refused token is not fixed by asking again soon).
    fn after_failure(&mut self, error: &Error) -> Duration {
        if matches!(error, Error::Unauthorized { .. } | Error::Forbidden { .. }) {
            return self.interval.saturating_add(self.jitter());
        }
        let wait = self.backoff;
        self.backoff = self.backoff.saturating_mul(2).min(self.interval);
        wait.saturating_add(self.jitter().min(wait / 10))
    }

    /// Up to a tenth of the interval, different at every beat and in every
    /// process (the seed is `RandomState`'s per-process random keys).
    fn jitter(&mut self) -> Duration {
        self.beats += 1;
        let hash = self.seed.hash_one(self.beats);
        // The top 53 bits as a fraction in [0, 1).
        let fraction = (hash >> 11) as f64 / (1u64 << 53) as f64;
        // At most a tenth of the interval: cannot overflow.
        self.interval.mul_f64(fraction / 10.0)
    }
}

fn first_backoff(interval: Duration) -> Duration {
    (interval / 8).clamp(MIN_INTERVAL, MAX_FIRST_BACKOFF)
}

/// A mutex's value (the progress, the thread's handle), even if a panic
/// poisoned the lock (nothing here panics while holding one, and the data
/// stays consistent anyway).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A request that timed out.
    fn timeout() -> Error {
        Error::from_ureq(
            "http://h:1/registro",
            ureq::Error::Timeout(ureq::Timeout::Global),
            ms(1),
        )
    }

    #[test]
    fn handles_can_be_shared_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Heartbeat>();
        check::<Client>();
        check::<Error>();
    }

    #[test]
    fn waits_an_interval_plus_at_most_a_tenth() {
        let mut s = Schedule::new(Duration::from_secs(30), RandomState::new());
        let waits: Vec<Duration> = (0..1000).map(|_| s.after_success()).collect();
        for w in &waits {
            assert!(
                *w >= Duration::from_secs(30) && *w < Duration::from_secs(33),
                "{w:?}"
            );
        }
        // Jittered: not all the same, and spread over the range.
        let min = waits.iter().min().copied().unwrap_or_default();
        let max = waits.iter().max().copied().unwrap_or_default();
        assert!(max - min > Duration::from_secs(2), "{min:?}..{max:?}");
    }

    #[test]
    fn seeds_differ_between_schedules() {
        let a: Vec<Duration> = {
            let mut s = Schedule::new(ms(1000), RandomState::new());
            (0..8).map(|_| s.after_success()).collect()
        };
        let b: Vec<Duration> = {
            let mut s = Schedule::new(ms(1000), RandomState::new());
            (0..8).map(|_| s.after_success()).collect()
        };
        assert_ne!(a, b);
    }

    #[track_caller]
    fn check_backoff(interval: Duration, expected_floors: &[Duration]) {
        let mut s = Schedule::new(interval, RandomState::new());
        for floor in expected_floors {
            let w = s.after_failure(&timeout());
            assert!(
                w >= *floor && w <= *floor + *floor / 10,
                "{w:?} not in {floor:?} + 10%"
            );
        }
    }

    #[test]
    fn backs_off_up_to_the_interval() {
        let s = Duration::from_secs;
        check_backoff(s(30), &[s(1), s(2), s(4), s(8), s(16), s(30), s(30)]);
        check_backoff(ms(80), &[ms(10), ms(20), ms(40), ms(80), ms(80)]);
        check_backoff(ms(1), &[ms(1), ms(1), ms(1)]);
    }

    #[test]
    fn huge_intervals_saturate() {
        // Issue 13 item 10: `interval + jitter` overflowed and panicked.
        for interval in [
            Duration::MAX,
            Duration::MAX - ms(1),
            Duration::from_secs(u64::MAX / 2),
        ] {
            let mut s = Schedule::new(interval, RandomState::new());
            for _ in 0..3 {
                assert!(s.after_success() >= interval);
                assert!(s.after_failure(&timeout()) <= interval);
            }
        }
    }

    #[test]
    fn a_refused_token_waits_the_whole_interval() {
        let mut s = Schedule::new(ms(800), RandomState::new());
        let refused = Error::Unauthorized {
            message: None,
            server: "http://h:1/registro".into(),
        };
        for _ in 0..3 {
            let w = s.after_failure(&refused);
            assert!(w >= ms(800) && w < ms(880), "{w:?}");
        }
        assert!(s.after_failure(&timeout()) < ms(111));
    }

    #[test]
    fn a_panic_in_the_thread_is_reported() {
        let shared = Mutex::new(Progress::default());
        guarded(&shared, || {});
        assert!(lock(&shared).last_error.is_none());
        guarded(&shared, || panic!("bug {}", 7));
        let e = lock(&shared).last_error.clone();
        assert!(
            matches!(&e, Some(Error::Panicked(m)) if m == "bug 7"),
            "{e:?}"
        );
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("the background thread panicked: bug 7")
        );
    }

    #[test]
    fn success_resets_the_backoff() {
        let mut s = Schedule::new(ms(800), RandomState::new());
        assert!(s.after_failure(&timeout()) < ms(111));
        assert!(s.after_failure(&timeout()) < ms(221));
        assert!(s.after_success() >= ms(800));
        assert!(s.after_failure(&timeout()) < ms(111));
    }
}
