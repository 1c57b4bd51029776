use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::mpsc::{self, RecvTimeoutError};
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
/// It renews at once, then every interval plus a random jitter of up to 10 %
/// (so a fleet started together does not beat in lock-step). When a renewal
/// answers 404, because the registry restarted and forgot everything or
/// evicted the instance, it registers the application and the instance again
/// and renews, so the instance is back within one interval. Failures (an
/// unreachable registry, an unexpected status) are retried with a backoff
/// that starts short and doubles up to the interval; they never end the
/// thread. The thread prints nothing: [`Heartbeat::last_error`] tells how the
/// latest beat went.
///
/// [`Heartbeat::stop`] wakes the thread at once, joins it and deregisters the
/// instance (the registry marks it out-of-service). Dropping the `Heartbeat`
/// does the same and ignores the deregistration's outcome.
#[derive(Debug)]
pub struct Heartbeat {
    /// Dropping it wakes the thread, which then ends.
    wake: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
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
        let beat = Beat {
            client: client.clone(),
            app: Application::new(app),
            instance: instance.clone(),
        };
        let progress = Arc::clone(&shared);
        let thread = thread::Builder::new()
            // A NUL in a thread name would make `spawn` panic.
            .name(format!(
                "registro-heartbeat-{}",
                instance.id.replace('\0', "")
            ))
            .spawn(move || run(beat, interval, asleep, progress));
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(e) => {
                // Out of threads: nothing will renew; say so through the handle.
                lock(&shared).last_error = Some(Error::spawn_failed(e));
                None
            }
        };
        Heartbeat {
            wake: Some(wake),
            thread,
            shared,
            client,
            app: Application::new(app),
            instance: instance.clone(),
            interval,
        }
    }

    /// Stops the heartbeat: wakes the thread (it never waits out the
    /// interval), joins it, then deregisters the instance and returns how
    /// that went.
    ///
    /// The registry marks the instance out-of-service and refuses its
    /// heartbeats; it is removed after the registry's eviction period. If a
    /// request is in flight when `stop` is called, `stop` waits for it (at
    /// most the client's timeout).
    pub fn stop(mut self) -> Result<(), Error> {
        self.halt()
    }

    /// The error of the latest beat, or `None` if it succeeded (or none has
    /// been attempted yet).
    ///
    /// A beat is one renewal, or after a 404 the re-registration and renewal.
    pub fn last_error(&self) -> Option<Error> {
        lock(&self.shared).last_error.clone()
    }

    /// How many renewals the registry has accepted so far.
    pub fn renewals(&self) -> u64 {
        lock(&self.shared).renewals
    }

    /// The interval between renewals (before jitter).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Wakes and joins the thread, then deregisters. Called once: by `stop`,
    /// or else by `drop`.
    fn halt(&mut self) -> Result<(), Error> {
        drop(self.wake.take());
        if let Some(handle) = self.thread.take() {
            // The thread never panics by design; were it to, deregistering is
            // still the right thing to do.
            drop(handle.join());
        }
        self.client.delete_instance(&self.app, &self.instance)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if self.wake.is_some() {
            let _ = self.halt();
        }
    }
}

/// One beat's requests.
struct Beat {
    client: Client,
    app: Application,
    instance: Instance,
}

impl Beat {
    /// Renews; after a 404, registers the application and instance again and
    /// renews once more.
    fn once(&self) -> Result<(), Error> {
        match self.client.renew_instance(&self.app, &self.instance) {
            Err(e) if e.is_not_found() => {
                self.register()?;
                self.client.renew_instance(&self.app, &self.instance)
            }
            other => other,
        }
    }

    fn register(&self) -> Result<(), Error> {
        self.client.ensure_app(&self.app.name)?;
        let Instance { id, ip, port, .. } = &self.instance;
        match self.client.new_instance(&self.app, id, ip, *port) {
            // Registered meanwhile by someone else: the renewal will tell.
            Err(e) if e.status() == Some(409) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// The heartbeat thread: beat, wait, repeat until woken.
fn run(beat: Beat, interval: Duration, asleep: mpsc::Receiver<()>, shared: Arc<Mutex<Progress>>) {
    let mut schedule = Schedule::new(interval, RandomState::new());
    let mut wait = Duration::ZERO;
    loop {
        match asleep.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let outcome = beat.once();
        let mut progress = lock(&shared);
        wait = match outcome {
            Ok(()) => {
                progress.renewals += 1;
                progress.last_error = None;
                schedule.after_success()
            }
            Err(e) => {
                progress.last_error = Some(e);
                schedule.after_failure()
            }
        };
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
        self.interval + self.jitter()
    }

    /// The wait after a failed beat: the current backoff, which doubles for
    /// the next failure, never above the interval.
    fn after_failure(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(self.interval);
        wait + self.jitter().min(wait / 10)
    }

    /// Up to a tenth of the interval, different at every beat and in every
    /// process (the seed is `RandomState`'s per-process random keys).
    fn jitter(&mut self) -> Duration {
        self.beats += 1;
        let hash = self.seed.hash_one(self.beats);
        // The top 53 bits as a fraction in [0, 1).
        let fraction = (hash >> 11) as f64 / (1u64 << 53) as f64;
        self.interval.mul_f64(fraction / 10.0)
    }
}

fn first_backoff(interval: Duration) -> Duration {
    (interval / 8).clamp(MIN_INTERVAL, MAX_FIRST_BACKOFF)
}

/// The progress, even if a panic poisoned the lock (nothing here panics
/// while holding it, and the data stays consistent anyway).
fn lock(shared: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
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
            let w = s.after_failure();
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
    fn success_resets_the_backoff() {
        let mut s = Schedule::new(ms(800), RandomState::new());
        assert!(s.after_failure() < ms(111));
        assert!(s.after_failure() < ms(221));
        assert!(s.after_success() >= ms(800));
        assert!(s.after_failure() < ms(111));
    }
}
