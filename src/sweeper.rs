//! The background thread that reclaims what has expired, in small steps so
//! that a sweep of a million instances never holds the lock for long.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::api::Api;
use crate::registry::{SweepCursor, SweepStats};
use crate::server::now_ms;

/// Slots examined per lock hold.
const BUDGET: usize = 4096;

/// Owns the sweeper thread; `stop` (or drop) wakes it at once and joins it.
#[derive(Debug)]
pub struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts a thread that sweeps `api`'s registry every `every`;
    /// `log_every_pass` logs a summary of each pass, not only of those that
    /// changed something or were slow.
    pub fn spawn(api: Arc<Api>, every: Duration, log_every_pass: bool) -> io::Result<Sweeper> {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = thread::Builder::new()
            .name("registro-sweep".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if !sweep(&api, &stopped, log_every_pass) {
                        return;
                    }
                }
            })?;
        Ok(Sweeper {
            stop: Some(stop),
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        // Dropping the sender wakes the thread, sweeping or waiting.
        self.stop.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One pass over the registry. Returns false when told to stop midway.
fn sweep(api: &Api, stopped: &mpsc::Receiver<()>, every_pass: bool) -> bool {
    let started = Instant::now();
    let mut cursor = SweepCursor::default();
    let mut stats = SweepStats::default();
    let mut events = Vec::new();
    let mut longest = Duration::ZERO;
    loop {
        let done = {
            let mut registry = api.lock();
            let held = Instant::now();
            let done = registry.sweep_step(now_ms(), &mut cursor, BUDGET, &mut stats, &mut events);
            longest = longest.max(held.elapsed());
            done
        };
        for event in events.drain(..) {
            api.log().event(&event, true);
        }
        if done {
            break;
        }
        if let Err(mpsc::TryRecvError::Disconnected) = stopped.try_recv() {
            return false;
        }
        // Let the connection threads at the lock between steps.
        thread::yield_now();
    }
    // A line when the pass changed something or took long enough to matter
    // (or always, with `every_pass`); a quiet registry's sweeps stay silent.
    let changed = stats.removed + stats.marked_down + stats.apps_removed > 0;
    if every_pass || changed || started.elapsed() >= Duration::from_millis(100) {
        api.log().line_waiting(format_args!(
            "sweep: checked {} instances in {} ms (longest lock hold {} us), removed {}, down {}",
            stats.checked,
            started.elapsed().as_millis(),
            longest.as_micros(),
            stats.removed,
            stats.marked_down
        ));
    }
    true
}
