//! The background thread that applies what time makes true: the ticker.
//!
//! It wakes a tenth of a second after the earliest due time of any app (the
//! registry keeps apps ordered by it, and keeps an app it has just settled
//! out of the way for `RESCAN`, half a second), or after a second at most,
//! settles the apps that are due and tells their watchers; so a change caused by time
//! (`up` to `down`, removal) is stored, counted and announced within a second
//! of becoming true, whatever `--sweep-every` is. Every `--sweep-every` it also makes a
//! full pass over the apps it has not settled within that period, which
//! recomputes their due times exactly (and logs the `sweep:` summary).
//! Both work in steps of at most [`BUDGET`] slots per lock hold.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::clock;
use crate::registry::{Millis, SweepCursor, SweepStats};
use crate::view::View;

/// Slots examined per lock hold.
const BUDGET: usize = 4096;
/// The longest sleep of the ticker.
const TICK: Millis = 1000;
/// How long after an app's due time the ticker settles it: the changes that
/// come true meanwhile cost the same one scan. With the registry's `RESCAN`
/// (half a second between two settles of one app), an app whose deadlines
/// pass one after another is scanned a little more than once a second, and
/// every change is still stored and announced within a second (the two, plus
/// the scan itself).
const BATCH: Millis = 100;
/// The shortest sleep, so that due times close together cost one pass.
const MIN_SLEEP: Millis = 10;

/// Owns the ticker thread; `stop` (or drop) wakes it at once and joins it.
#[derive(Debug)]
pub struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts a thread that settles `view`'s registry as its due times come
    /// and makes a full pass every `every`; `log_every_pass` logs a summary
    /// of each full pass, not only of passes that changed something or were
    /// slow.
    pub fn spawn(view: Arc<View>, every: Duration, log_every_pass: bool) -> io::Result<Sweeper> {
        let (stop, stopped) = mpsc::channel::<()>();
        let every = u64::try_from(every.as_millis())
            .unwrap_or(Millis::MAX)
            .max(1);
        let handle = thread::Builder::new()
            .name("registro-sweep".into())
            .spawn(move || run(&view, &stopped, every, log_every_pass))?;
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

fn run(view: &View, stopped: &mpsc::Receiver<()>, every: Millis, log_every_pass: bool) {
    let mut next_full = clock::now().mono.saturating_add(every);
    loop {
        if !pass(view, stopped, None, log_every_pass) {
            return;
        }
        let now = clock::now().mono;
        if now >= next_full {
            if !pass(view, stopped, Some(every), log_every_pass) {
                return;
            }
            next_full = clock::now().mono.saturating_add(every);
        }
        let now = clock::now().mono;
        view.forget_stale_answers(now);
        let due = view.lock().next_due().unwrap_or(Millis::MAX);
        let wake = wake_at(now, due, next_full);
        if let Err(RecvTimeoutError::Disconnected) =
            stopped.recv_timeout(Duration::from_millis(wake - now))
        {
            return;
        }
    }
}

/// When the ticker wakes next, at `now`, with the earliest due time of any
/// app `due` and the next full pass at `next_full`: `BATCH` after `due`,
/// never later than a `TICK` from now nor sooner than `MIN_SLEEP`.
fn wake_at(now: Millis, due: Millis, next_full: Millis) -> Millis {
    due.saturating_add(BATCH)
        .min(next_full)
        .min(now.saturating_add(TICK))
        .max(now.saturating_add(MIN_SLEEP))
}

/// One pass: over the apps that are due, or (`full`) over every app.
/// Returns false when told to stop midway.
fn pass(view: &View, stopped: &mpsc::Receiver<()>, full: Option<Millis>, every_pass: bool) -> bool {
    let started = Instant::now();
    let mut cursor = SweepCursor::default();
    let mut stats = SweepStats::default();
    let mut longest = Duration::ZERO;
    loop {
        let mut registry = view.lock();
        let held = Instant::now();
        let now = clock::now().mono;
        let done = if let Some(every) = full {
            // Apps the ticker settled within the period need no second look.
            let recent = now.saturating_sub(every);
            registry.sweep_step(now, &mut cursor, BUDGET, &mut stats, recent)
        } else {
            registry.settle_due_step(now, &mut cursor, BUDGET, &mut stats)
        };
        let step = held.elapsed();
        longest = longest.max(step);
        // Logs and wakes watchers with the lock released.
        view.publish(registry, true);
        if done {
            break;
        }
        // Rest as long as the step took: a pass over a million instances
        // then takes at most half of one core, and the workers, which share
        // two cores with it on a small machine, are not kept waiting for
        // the CPU (a few hundred milliseconds more per pass, well within the
        // second the ticker has).
        if let Err(RecvTimeoutError::Disconnected) = stopped.recv_timeout(step) {
            return false;
        }
    }
    // Mass events beyond the log's budget become one line per app and kind.
    view.log().summarise();
    // A line when the pass changed something or took long enough to matter
    // (or, for full passes, always with `every_pass`); quiet passes stay silent.
    let changed = stats.removed + stats.marked_down + stats.apps_removed > 0;
    if (full.is_some() && every_pass) || changed || started.elapsed() >= Duration::from_millis(100)
    {
        view.log().line_waiting(format_args!(
            "sweep: checked {} in {} ms (longest lock hold {} us), removed {}, down {}",
            Plural(stats.checked, "instance"),
            started.elapsed().as_millis(),
            longest.as_micros(),
            stats.removed,
            stats.marked_down
        ));
    }
    true
}

/// `1 instance`, `2 instances`.
struct Plural(usize, &'static str);

impl std::fmt::Display for Plural {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.0 == 1 { "" } else { "s" };
        write!(f, "{} {}{s}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What makes a change caused by time stored and announced within a
    /// second, whatever `--sweep-every` is: the ticker wakes `BATCH` after
    /// the earliest due time, and at least once a second.
    #[test]
    fn the_ticker_wakes_soon_after_the_earliest_due_time() {
        let hour = 3_600_000;
        // Due in 300 ms, a full pass an hour away: awake 100 ms after it.
        assert_eq!(wake_at(1000, 1300, 1000 + hour), 1400);
        // Nothing due: once a second all the same.
        assert_eq!(wake_at(1000, Millis::MAX, 1000 + hour), 2000);
        // Due long ago (a change waiting): soon, but not in a busy loop.
        assert_eq!(wake_at(1000, 0, 1000 + hour), 1010);
        // A full pass sooner than anything due.
        assert_eq!(wake_at(1000, 1900, 1500), 1500);
        // Within a second of any due time ahead.
        for due in [1000, 1001, 1500, 1899, 1900, 1901, 5000] {
            let wake = wake_at(1000, due, 1000 + hour);
            assert!(wake > 1000 && wake <= 2000, "due {due}: wake {wake}");
            assert!(
                wake <= due + BATCH || wake == 2000,
                "due {due}: wake {wake}"
            );
        }
    }
}
