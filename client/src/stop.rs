use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What stops one watch (and a cache's thread): a flag its pauses wait on,
/// and the connection pool its long polls use, which the stop shuts down so
/// that a request in flight returns at once instead of at the end of its
/// wait.
///
/// Each watch has a pool of its own (`Client::own_pool`), so a stop
/// interrupts that watch only, never the client's other requests.
#[derive(Debug, Clone)]
pub(crate) struct Stop(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    stopped: Mutex<bool>,
    woken: Condvar,
    agent: ureq::Agent,
}

impl Stop {
    pub(crate) fn new(agent: ureq::Agent) -> Stop {
        Stop(Arc::new(Shared {
            stopped: Mutex::new(false),
            woken: Condvar::new(),
            agent,
        }))
    }

    /// Stops: wakes a pause, interrupts the request in flight (ureq's
    /// `Agent::shutdown` closes the pool's sockets, in use or idle) and
    /// refuses new ones. Idempotent.
    pub(crate) fn stop(&self) {
        *lock(&self.0.stopped) = true;
        self.0.woken.notify_all();
        self.0.agent.clone().shutdown();
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *lock(&self.0.stopped)
    }

    /// Waits `pause`, or less if stopped; whether stopped.
    pub(crate) fn sleep(&self, pause: Duration) -> bool {
        let deadline = Instant::now().checked_add(pause);
        let mut stopped = lock(&self.0.stopped);
        loop {
            if *stopped {
                return true;
            }
            let left = match deadline {
                Some(at) => match at.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
                // A pause too long to name: wait a day at a time.
                None => Duration::from_secs(86_400),
            };
            stopped = match self.0.woken.wait_timeout(stopped, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// A handle that stops a [`Watch`](crate::Watch) from another thread, from
/// [`Watch::stopper`](crate::Watch::stopper).
///
/// [`Stopper::stop`] interrupts the watch's long poll in flight and wakes a
/// pause, so a thread iterating the watch gets `None` at once (within
/// milliseconds, not at the end of the registry's wait). Clones stop the
/// same watch.
#[derive(Debug, Clone)]
pub struct Stopper(pub(crate) Stop);

impl Stopper {
    /// Stops the watch: its iterator ends, [`Watch::next_timeout`](crate::Watch::next_timeout)
    /// returns `Ok(None)` at once, now and from then on.
    pub fn stop(&self) {
        self.0.stop();
    }

    /// Whether [`Stopper::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.is_stopped()
    }
}

fn lock(flag: &Mutex<bool>) -> MutexGuard<'_, bool> {
    flag.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_ends_at_its_time_or_at_the_stop() {
        let stop = Stop::new(ureq::Agent::new_with_defaults());
        assert!(!stop.sleep(Duration::from_millis(1)));
        assert!(!stop.sleep(Duration::ZERO));
        let other = stop.clone();
        let waiter = std::thread::spawn(move || other.sleep(Duration::MAX));
        stop.stop();
        assert!(matches!(waiter.join(), Ok(true)));
        assert!(stop.is_stopped());
        // Stopped: every later pause returns at once.
        assert!(stop.sleep(Duration::MAX));
    }
}
