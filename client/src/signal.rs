//! Deregistering on SIGTERM and SIGINT (the `signal` feature, Unix).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::error::Error;
use crate::heartbeat::Heartbeat;

/// The signals that stop a program: `docker stop` and Kubernetes send
/// SIGTERM, Ctrl-C sends SIGINT.
const STOPPING: [i32; 2] = [SIGTERM, SIGINT];

/// Deregisters these heartbeats' instances when the process receives
/// SIGTERM or SIGINT, then ends the process as the signal would have; see
/// [`SignalStop`].
///
/// ```no_run
/// use registro_client::{stop_on_signals, Client};
///
/// let client = Client::new("http://localhost:8080/registro");
/// let (app, inst) = client.register_service("web-1", "web", "10.0.0.7", 8080)?;
/// let heartbeat = client.start_heartbeat(&app, &inst);
/// // From here, `docker stop` or Ctrl-C marks web-1 out-of-service before
/// // the process ends, so callers stop picking it at once.
/// let signals = stop_on_signals([heartbeat])?;
///
/// // ... serve until done; the heartbeats stay readable:
/// let renewed = signals.heartbeats()[0].renewals();
///
/// signals.stop()?; // a normal end: deregisters too
/// # drop(renewed);
/// # Ok::<(), registro_client::Error>(())
/// ```
pub fn stop_on_signals(
    heartbeats: impl IntoIterator<Item = Heartbeat>,
) -> Result<SignalStop, Error> {
    SignalStop::start(heartbeats.into_iter().collect())
}

/// The handle of [`stop_on_signals`]: a thread waiting for SIGTERM or SIGINT
/// with the heartbeats it stops.
///
/// On the first of these signals the thread stops every heartbeat (each
/// sends its deregistration: the instance reads `out-of-service`, and
/// callers' caches drop it at once), then ends the process as the signal's
/// default action does (exit by that signal), so that `docker stop`,
/// Kubernetes and Ctrl-C work as before. The deregistrations take at most
/// the client's timeout each (per server tried); a second signal in that
/// time waits for them.
///
/// A program that shuts down in its own way on these signals (draining
/// requests first, say) should not use this helper: it calls
/// [`Heartbeat::stop`] from its own handler (`signal-hook`, `ctrlc`).
///
/// The heartbeats stay with the handle: [`SignalStop::heartbeats`] reads
/// their renewals and errors while they run.
///
/// [`SignalStop::stop`] is the normal end: the thread ends, each heartbeat
/// is stopped and deregisters, and the signals do their default action
/// again. Dropping the handle does the same, ignoring the outcome.
#[derive(Debug)]
#[must_use = "dropping a SignalStop deregisters its heartbeats at once"]
pub struct SignalStop {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    heartbeats: Vec<Heartbeat>,
}

impl SignalStop {
    fn start(heartbeats: Vec<Heartbeat>) -> Result<SignalStop, Error> {
        let mut active = lock(&ACTIVE);
        default_when_idle().map_err(Error::signals)?;
        let mut signals = Signals::new(STOPPING).map_err(Error::signals)?;
        let handle = signals.handle();
        let stops: Vec<_> = heartbeats.iter().map(Heartbeat::inner).collect();
        let thread = thread::Builder::new()
            .name("registro-signals".to_owned())
            .spawn(move || {
                // `None` once the handle is closed: the normal end.
                let Some(signal) = signals.forever().next() else {
                    return;
                };
                for heartbeat in stops {
                    // Nothing to tell anyone: the process is ending.
                    let _ = heartbeat.halt();
                }
                // Restores the default action and raises the signal again;
                // should the process survive that, exit as a shell reports
                // a death by signal.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            })
            .map_err(Error::spawn_failed)?;
        *active += 1;
        if let Some(idle) = IDLE.get() {
            idle.store(false, Ordering::SeqCst);
        }
        Ok(SignalStop {
            handle,
            thread: Some(thread),
            heartbeats,
        })
    }

    /// The heartbeats given to [`stop_on_signals`], in that order, to read
    /// while they run: [`Heartbeat::renewals`], [`Heartbeat::last_error`],
    /// [`Heartbeat::is_running`].
    pub fn heartbeats(&self) -> &[Heartbeat] {
        &self.heartbeats
    }

    /// The normal end: stops waiting for signals, stops every heartbeat
    /// (deregistering its instance) and returns the first error of those
    /// deregistrations.
    pub fn stop(mut self) -> Result<(), Error> {
        self.halt()
    }

    fn halt(&mut self) -> Result<(), Error> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.handle.close();
        // The thread catches nothing and panics nowhere; were it to, the
        // heartbeats are still stopped below.
        drop(thread.join());
        let mut active = lock(&ACTIVE);
        *active = active.saturating_sub(1);
        if *active == 0 {
            if let Some(idle) = IDLE.get() {
                idle.store(true, Ordering::SeqCst);
            }
        }
        drop(active);
        let mut outcome = Ok(());
        for heartbeat in self.heartbeats.drain(..) {
            let stopped = heartbeat.stop();
            if outcome.is_ok() {
                outcome = stopped;
            }
        }
        outcome
    }
}

impl Drop for SignalStop {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// How many [`SignalStop`]s wait for signals.
static ACTIVE: Mutex<usize> = Mutex::new(0);

/// True while none does: the signals then do their default action.
static IDLE: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Once per process: a handler that does the signals' default action
/// while no [`SignalStop`] waits for them. Without it, a signal after the
/// last `stop` would be caught by the (unregistered, but still installed)
/// handler and ignored. Called with `ACTIVE` locked.
fn default_when_idle() -> io::Result<()> {
    if IDLE.get().is_some() {
        return Ok(());
    }
    let idle = Arc::new(AtomicBool::new(false));
    for signal in STOPPING {
        signal_hook::flag::register_conditional_default(signal, Arc::clone(&idle))?;
    }
    // Only ever set here, under `ACTIVE`'s lock.
    let _ = IDLE.set(idle);
    Ok(())
}

fn lock(active: &Mutex<usize>) -> std::sync::MutexGuard<'_, usize> {
    active
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
