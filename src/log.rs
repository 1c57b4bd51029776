//! Event lines on stderr, stamped in UTC as the original did
//! (`2006/01/02 15:04:05 message`) and written by a thread of their own; and
//! the HTTP `Date` header's format.
//!
//! Under mass events the log stays readable: at most [`BUDGET`] event lines
//! a second are written one by one; beyond that events are counted per app
//! and kind, and [`Log::summarise`] (called by the logger thread every
//! second, at shutdown, and by whoever ends a batch of events, such as a
//! sweep) writes one line per app and kind:
//! `41,772 more instances of "web" went down: no heartbeat; first "web-101"`.
//! The metrics carry the exact counts.
//!
//! Nothing waits on stderr for long: lines go through a bounded queue; a
//! full queue drops (and counts) a connection thread's line at once and the
//! sweeper's after a short wait; a stop gives a stalled stderr a moment and
//! then leaves the writer thread to the process's exit.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;
use crate::registry::Event;

/// Lines waiting for the logger thread; past this, a line is dropped (and
/// counted) rather than making its thread wait.
const QUEUE: usize = 8192;
/// Event lines written one by one per second; the rest are summarised.
pub const BUDGET: u32 = 100;
/// Summary lines per summary; beyond them, what is left is summed by kind.
const SUMMARY_LINES: usize = 50;
/// How long the sweeper waits for room in a full queue before dropping.
const WAIT_FOR_ROOM: Duration = Duration::from_millis(50);
/// How long a stop waits for a writer that makes no progress.
const STALL: Duration = Duration::from_millis(250);
/// The most bytes written in one `write_all`.
const BATCH: usize = 64 * 1024;

/// Owns the thread that writes log lines to stderr, so that no connection
/// thread ever waits on a slow stderr (a full pipe, a stalled terminal).
/// `close` (or drop) writes what is queued and joins it, unless stderr
/// makes no progress for [`STALL`]: then what is left is dropped.
#[derive(Debug)]
pub struct Logger {
    log: Log,
    handle: Option<JoinHandle<()>>,
}

/// A handle to log through: cheap to clone. With logging off it writes
/// nothing but still counts events in the metrics.
#[derive(Debug, Clone)]
pub struct Log {
    shared: Option<Arc<Shared>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when lines are queued or the log is closed.
    queued: Condvar,
    /// Signalled when the writer took lines, wrote a batch or finished.
    progressed: Condvar,
    budget: Mutex<Budget>,
}

#[derive(Debug, Default)]
struct State {
    lines: VecDeque<String>,
    closed: bool,
    /// Batches written so far.
    progress: u64,
    /// The writer thread has returned.
    done: bool,
    /// Lines dropped since the last one saying so was written.
    dropped: u64,
    /// A waiting line gave up; no one waits again until a batch is written.
    stalled: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Logger {
    /// Starts the logger thread writing to stderr, or none when `enabled`
    /// is false.
    pub fn start(enabled: bool) -> io::Result<Logger> {
        Logger::start_with(enabled.then(stderr), Arc::new(Metrics::new()), BUDGET)
    }

    /// Starts the logger thread writing to `out` (none when `None`),
    /// counting into `metrics`, `budget` event lines a second.
    fn start_with(
        out: Option<Box<dyn Write + Send>>,
        metrics: Arc<Metrics>,
        budget: u32,
    ) -> io::Result<Logger> {
        let Some(mut out) = out else {
            return Ok(Logger {
                log: Log {
                    shared: None,
                    metrics,
                },
                handle: None,
            });
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            queued: Condvar::new(),
            progressed: Condvar::new(),
            budget: Mutex::new(Budget::new(budget)),
        });
        let writer = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("registro-log".into())
            .spawn(move || write_lines(&writer, &mut out))?;
        Ok(Logger {
            log: Log {
                shared: Some(shared),
                metrics,
            },
            handle: Some(handle),
        })
    }

    /// A handle for the threads that log.
    pub fn log(&self) -> Log {
        self.log.clone()
    }

    /// Writes every line queued so far and joins the thread (see [`Logger`]).
    pub fn close(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let Some(shared) = self.log.shared.take() else {
            return;
        };
        let mut state = lock(&shared.state);
        state.closed = true;
        shared.queued.notify_all();
        shared.progressed.notify_all();
        while !state.done {
            let before = state.progress;
            let (next, waited) = shared
                .progressed
                .wait_timeout(state, STALL)
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            if waited.timed_out() && !state.done && state.progress == before {
                // stderr is stalled: the writer is blocked in a write that
                // may never return. It holds nothing anyone needs; the
                // process's exit ends it.
                let lost = state.lines.len() as u64;
                for _ in 0..lost {
                    self.log.metrics.log_line_dropped();
                }
                self.handle.take();
                return;
            }
        }
        drop(state);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        self.finish();
    }
}

/// stderr through a descriptor of its own, so that a write blocked on a
/// stalled stderr holds no lock of the standard library's `Stderr`.
fn stderr() -> Box<dyn Write + Send> {
    match io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(io::stderr()),
    }
}

/// The logger thread: takes what is queued, up to [`BATCH`] bytes, and
/// writes it in one `write_all`; every second, and at the end, it adds the
/// summaries of what went over the budget.
fn write_lines(shared: &Shared, out: &mut dyn Write) {
    let mut next_summary = Instant::now() + Duration::from_secs(1);
    let mut batch = String::new();
    loop {
        let (dropped, last) = {
            let left = next_summary.saturating_duration_since(Instant::now());
            let (mut state, _) = shared
                .queued
                .wait_timeout_while(lock(&shared.state), left, |s| {
                    s.lines.is_empty() && !s.closed
                })
                .unwrap_or_else(PoisonError::into_inner);
            while batch.len() < BATCH {
                let Some(line) = state.lines.pop_front() else {
                    break;
                };
                batch.push_str(&line);
            }
            shared.progressed.notify_all();
            let last = state.closed && state.lines.is_empty();
            (std::mem::take(&mut state.dropped), last)
        };
        if last || Instant::now() >= next_summary {
            next_summary = Instant::now() + Duration::from_secs(1);
            let now = crate::clock::now().mono;
            for line in lock(&shared.budget).summarise(now, last) {
                batch.push_str(&stamped(format_args!("{line}")));
            }
        }
        if dropped > 0 {
            batch.push_str(&stamped(format_args!(
                "{} log lines dropped: stderr did not keep up",
                Thousands(dropped)
            )));
        }
        if !batch.is_empty() {
            // A closed stderr must not take the server down: the lines are lost.
            let _ = out.write_all(batch.as_bytes());
            let _ = out.flush();
            batch.clear();
        }
        let mut state = lock(&shared.state);
        state.progress += 1;
        state.stalled = false;
        if last {
            state.done = true;
        }
        shared.progressed.notify_all();
        if last {
            return;
        }
    }
}

fn stamped(message: fmt::Arguments<'_>) -> String {
    let secs = unix_secs(SystemTime::now());
    format!("{} {}\n", Civil::from_unix(secs), message)
}

impl Log {
    /// A handle that writes nothing and counts into `metrics`.
    #[allow(dead_code)] // for tests of the modules that log
    pub fn off(metrics: Arc<Metrics>) -> Log {
        Log {
            shared: None,
            metrics,
        }
    }

    /// The server's counters (the log counts the events it sees).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queues one line, `YYYY/MM/DD HH:MM:SS message`, without ever waiting:
    /// when the queue is full the line is dropped and counted.
    pub fn line(&self, message: fmt::Arguments<'_>) {
        self.push(stamped(message), false);
    }

    /// Queues one line, waiting a moment for room: for the sweeper, which
    /// holds no lock while it logs. A stalled stderr costs it one short
    /// wait, not one per line.
    pub fn line_waiting(&self, message: fmt::Arguments<'_>) {
        self.push(stamped(message), true);
    }

    fn push(&self, line: String, wait: bool) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut state = lock(&shared.state);
        if wait && !state.stalled && !state.closed {
            let full = |s: &mut State| s.lines.len() >= QUEUE && !s.closed;
            let timeout;
            (state, timeout) = shared
                .progressed
                .wait_timeout_while(state, WAIT_FOR_ROOM, full)
                .unwrap_or_else(PoisonError::into_inner);
            if timeout.timed_out() {
                state.stalled = true;
            }
        }
        if state.lines.len() >= QUEUE || state.closed {
            state.dropped += 1;
            drop(state);
            self.metrics.log_line_dropped();
            return;
        }
        state.lines.push_back(line);
        shared.queued.notify_one();
    }

    /// Logs one registry event within the budget (names are quoted and
    /// escaped, so a client's strings cannot forge log lines); past the
    /// budget the event is counted for the next summary. `wait` as in
    /// [`Log::line_waiting`].
    pub fn event(&self, event: &Event, wait: bool) {
        // Every eviction is an event passing here, so the count is exact
        // whatever the budget lets through. (Registrations are counted by
        // the API as it accepts them: a view fed by etcd sees other
        // servers' registrations too, and not a repeated one that changes
        // nothing it shows.)
        if let Event::InstanceRemoved { .. } = event {
            self.metrics.evicted(1);
        }
        let Some(shared) = &self.shared else {
            return;
        };
        let now = crate::clock::now().mono;
        if !lock(&shared.budget).admit(event, now) {
            return;
        }
        self.push(stamped(format_args!("{}", Describe(event))), wait);
    }

    /// Queues one summary line per app and kind of the events that went
    /// over the budget since the last summary, unless there was one less
    /// than a second ago (the logger's next second then brings it). Call it
    /// when a batch of events ends (a sweep's pass); the logger thread also
    /// calls it every second and at the end.
    pub fn summarise(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let now = crate::clock::now().mono;
        let lines = lock(&shared.budget).summarise(now, false);
        for line in lines {
            self.push(stamped(format_args!("{line}")), true);
        }
    }
}

/// What kind of event, for counting those over the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    AppCreated,
    AppRemoved,
    Added,
    Replaced,
    Up,
    Down,
    OutOfService,
    Removed,
}

impl Kind {
    /// The kind, its app (none for the apps' own events) and the name to
    /// show as the first one.
    fn of(event: &Event) -> (Kind, Option<&Arc<str>>, &Arc<str>) {
        match event {
            Event::AppCreated { app } => (Kind::AppCreated, None, app),
            Event::AppRemoved { app } => (Kind::AppRemoved, None, app),
            Event::InstanceAdded { app, id, .. } => (Kind::Added, Some(app), id),
            Event::InstanceReplaced { app, id, .. } => (Kind::Replaced, Some(app), id),
            Event::InstanceUp { app, id } => (Kind::Up, Some(app), id),
            Event::InstanceDown { app, id } => (Kind::Down, Some(app), id),
            Event::InstanceOutOfService { app, id } => (Kind::OutOfService, Some(app), id),
            Event::InstanceRemoved { app, id } => (Kind::Removed, Some(app), id),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Kind::AppCreated => "created",
            Kind::AppRemoved => "removed: no instances for the eviction period",
            Kind::Added => "added",
            Kind::Replaced => "registered again",
            Kind::Up => "came up",
            Kind::Down => "went down: no heartbeat",
            Kind::OutOfService => "taken out of service",
            Kind::Removed => "removed: no heartbeat for the eviction period",
        }
    }
}

/// What events over the budget are counted by: their kind and app.
type Key = (Kind, Option<Arc<str>>);

#[derive(Debug)]
struct Over {
    count: u64,
    first: Arc<str>,
}

/// The per-second budget of event lines and the count of what went over
/// it. Plain data taking `now` (monotonic milliseconds), tested without a
/// clock.
#[derive(Debug)]
struct Budget {
    per_second: u32,
    second: u64,
    used: u32,
    /// Events over the budget by kind and app, in order of first arrival.
    over: HashMap<Key, usize>,
    order: Vec<(Key, Over)>,
    /// When the last summary was made, if one was.
    summarised: Option<u64>,
}

impl Budget {
    fn new(per_second: u32) -> Budget {
        Budget {
            per_second,
            second: 0,
            used: 0,
            over: HashMap::new(),
            order: Vec::new(),
            summarised: None,
        }
    }

    /// Whether `event` at `now` gets a line of its own; if not it is counted.
    fn admit(&mut self, event: &Event, now: u64) -> bool {
        let second = now / 1000;
        if second != self.second {
            self.second = second;
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            return true;
        }
        let (kind, app, name) = Kind::of(event);
        let key = (kind, app.cloned());
        match self.over.get(&key) {
            Some(&i) => self.order[i].1.count += 1,
            None => {
                self.over.insert(key.clone(), self.order.len());
                self.order.push((
                    key,
                    Over {
                        count: 1,
                        first: Arc::clone(name),
                    },
                ));
            }
        }
        false
    }

    /// The summary lines of what went over the budget, and a fresh count:
    /// one line per app and kind, at most [`SUMMARY_LINES`]; the rest
    /// summed by kind. At most one summary a second (`now` in ms), unless
    /// `last`: within a second of the previous one there is none, and the
    /// count goes on.
    fn summarise(&mut self, now: u64, last: bool) -> Vec<String> {
        if self.order.is_empty()
            || !last
                && self
                    .summarised
                    .is_some_and(|at| now < at.saturating_add(1000))
        {
            return Vec::new();
        }
        self.summarised = Some(now);
        self.over.clear();
        let mut lines = Vec::new();
        let mut rest: Vec<(Kind, u64, u64)> = Vec::new();
        for (i, ((kind, app), over)) in self.order.drain(..).enumerate() {
            let n = Thousands(over.count);
            let (verb, first) = (kind.verb(), over.first);
            if i < SUMMARY_LINES || app.is_none() {
                lines.push(match app {
                    None => format!("{n} more applications {verb}; first {first:?}"),
                    Some(app) => format!("{n} more instances of {app:?} {verb}; first {first:?}"),
                });
                continue;
            }
            match rest.iter_mut().find(|(k, _, _)| *k == kind) {
                Some((_, count, apps)) => {
                    *count += over.count;
                    *apps += 1;
                }
                None => rest.push((kind, over.count, 1)),
            }
        }
        for (kind, count, apps) in rest {
            lines.push(format!(
                "{} more instances of {} other applications {}",
                Thousands(count),
                Thousands(apps),
                kind.verb()
            ));
        }
        lines
    }
}

/// A count with thousands separators: `41,872`.
struct Thousands(u64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// The text of an event's line, written straight into the stamped line.
struct Describe<'a>(&'a Event);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe(self.0, f)
    }
}

fn describe(event: &Event, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match event {
        Event::AppCreated { app } => write!(f, "application {app:?} created"),
        Event::AppRemoved { app } => {
            write!(
                f,
                "application {app:?} removed: no instances for the eviction period"
            )
        }
        Event::InstanceAdded { app, id, ip, port } => {
            write!(f, "instance {id:?} of {app:?} added at {ip:?} port {port}")
        }
        Event::InstanceReplaced { app, id, ip, port } => {
            write!(
                f,
                "instance {id:?} of {app:?} registered again at {ip:?} port {port}"
            )
        }
        Event::InstanceUp { app, id } => write!(f, "instance {id:?} of {app:?} is up"),
        Event::InstanceDown { app, id } => {
            write!(f, "instance {id:?} of {app:?} is down: no heartbeat")
        }
        Event::InstanceOutOfService { app, id } => {
            write!(f, "instance {id:?} of {app:?} is out of service")
        }
        Event::InstanceRemoved { app, id } => {
            write!(
                f,
                "instance {id:?} of {app:?} removed: no heartbeat for the eviction period"
            )
        }
    }
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110's IMF-fixdate).
pub fn http_date(now: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = unix_secs(now);
    let c = Civil::from_unix(secs);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[((secs / 86_400) % 7) as usize],
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A UTC calendar date and time of day.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
}

impl Civil {
    /// Converts Unix seconds to a proleptic Gregorian date (Howard Hinnant's
    /// days-to-civil algorithm, restricted to dates after 1970).
    fn from_unix(secs: u64) -> Civil {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
}

impl fmt::Display for Civil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[track_caller]
    fn check(unix: u64, expected: &str) {
        assert_eq!(Civil::from_unix(unix).to_string(), expected);
    }

    #[test]
    fn civil_dates() {
        check(0, "1970/01/01 00:00:00");
        check(951_782_400, "2000/02/29 00:00:00");
        check(1_795_890_765, "2026/11/28 18:32:45");
        check(4_107_542_399, "2100/02/28 23:59:59");
        check(4_107_542_400, "2100/03/01 00:00:00");
    }

    fn down(app: &str, id: &str) -> Event {
        Event::InstanceDown {
            app: app.into(),
            id: id.into(),
        }
    }

    fn created(app: &str) -> Event {
        Event::AppCreated { app: app.into() }
    }

    #[test]
    fn summaries_come_at_most_once_a_second() {
        let mut budget = Budget::new(1);
        assert!(budget.admit(&down("web", "a"), 0));
        assert!(!budget.admit(&down("web", "b"), 10));
        let first = "1 more instances of \"web\" went down: no heartbeat; first \"b\"";
        assert_eq!(budget.summarise(100, false), [first]);
        // Within a second of the last summary (a sweep's pass ending): none
        // yet, and what comes meanwhile is still counted.
        assert!(!budget.admit(&down("web", "c"), 200));
        assert!(budget.summarise(600, false).is_empty());
        assert!(!budget.admit(&down("web", "d"), 700));
        let both = "2 more instances of \"web\" went down: no heartbeat; first \"c\"";
        assert_eq!(budget.summarise(1100, false), [both]);
        // Nothing to say is no summary: it does not hold the next one back.
        assert!(budget.summarise(2200, false).is_empty());
        assert!(budget.admit(&down("web", "e"), 2250));
        assert!(!budget.admit(&down("web", "f"), 2260));
        assert_eq!(budget.summarise(2300, false).len(), 1);
        // At the stop, whenever it comes.
        assert!(!budget.admit(&down("web", "g"), 2400));
        assert_eq!(budget.summarise(2500, true).len(), 1);
    }

    /// Events offered at `now` (ms): which got a line, and the summary after.
    #[track_caller]
    fn check_budget(per_second: u32, events: &[(u64, Event)], lines: usize, summary: &[&str]) {
        let mut budget = Budget::new(per_second);
        let admitted = events
            .iter()
            .filter(|(now, e)| budget.admit(e, *now))
            .count();
        assert_eq!(admitted, lines, "lines of their own");
        assert_eq!(budget.summarise(10_000, false), summary);
        assert!(
            budget.summarise(20_000, false).is_empty(),
            "a summary starts a fresh count"
        );
    }

    #[test]
    fn mass_events_are_summarised_per_app_and_kind() {
        let web: Vec<(u64, Event)> = (1..=41_872)
            .map(|i| (5_000 + i / 100, down("web", &format!("web-{i}"))))
            .collect();
        check_budget(
            100,
            &web,
            100,
            &[r#"41,772 more instances of "web" went down: no heartbeat; first "web-101""#],
        );
        // Within the budget: every event has its line, nothing to summarise.
        check_budget(3, &[(0, down("a", "1")), (10, down("a", "2"))], 2, &[]);
        // The budget is per second of the monotonic clock.
        check_budget(
            1,
            &[
                (999, down("a", "1")),
                (1_000, down("a", "2")),
                (1_999, down("a", "3")),
            ],
            2,
            &[r#"1 more instances of "a" went down: no heartbeat; first "3""#],
        );
        // Per app and kind, in order of first arrival; apps' own events by kind.
        check_budget(
            0,
            &[
                (0, down("b", "b-1")),
                (0, created("x")),
                (0, down("a", "a-1")),
                (0, down("b", "b-2")),
                (0, created("y")),
            ],
            0,
            &[
                r#"2 more instances of "b" went down: no heartbeat; first "b-1""#,
                r#"2 more applications created; first "x""#,
                r#"1 more instances of "a" went down: no heartbeat; first "a-1""#,
            ],
        );
    }

    #[test]
    fn names_in_summaries_are_quoted_and_escaped() {
        check_budget(
            0,
            &[(0, down("w\n\"eb", "i\n1"))],
            0,
            &[r#"1 more instances of "w\n\"eb" went down: no heartbeat; first "i\n1""#],
        );
    }

    #[test]
    fn summaries_are_bounded_however_many_apps() {
        let events: Vec<(u64, Event)> = (0..10_000)
            .map(|i| (0, down(&format!("app-{i}"), "x")))
            .collect();
        let mut budget = Budget::new(0);
        for (now, e) in &events {
            budget.admit(e, *now);
        }
        let lines = budget.summarise(10_000, false);
        assert_eq!(lines.len(), SUMMARY_LINES + 1);
        assert_eq!(
            lines[SUMMARY_LINES],
            "9,950 more instances of 9,950 other applications went down: no heartbeat"
        );
    }

    #[test]
    fn thousands() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (41_872, "41,872"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(Thousands(n).to_string(), s);
        }
    }

    /// A writer that blocks in its first write until the test lets it go,
    /// as a write to a full pipe nobody reads does.
    struct Stalled(std::sync::mpsc::Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stderr_cannot_hold_the_stop() {
        let (release, stalled) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let logger = Logger::start_with(
            Some(Box::new(Stalled(stalled))),
            Arc::clone(&metrics),
            1_000_000,
        )
        .unwrap();
        let log = logger.log();
        let started = Instant::now();
        for i in 0..20_000 {
            log.line(format_args!("line {i}"));
            log.event(&created(&format!("app-{i}")), true);
        }
        let logging = started.elapsed();
        logger.close();
        let stopping = started.elapsed() - logging;
        let _ = release.send(());
        // A writer that blocked them would hold both for ever; the bounds
        // are loose so that a busy machine formatting 40,000 lines in a
        // debug build does not fail them (the binary's stop is held to 1 s
        // end to end in tests/it/ops.rs).
        assert!(logging < Duration::from_secs(5), "logging took {logging:?}");
        assert!(stopping < Duration::from_secs(2), "close took {stopping:?}");
        let text = metrics.render(&crate::metrics::Counts::default());
        assert!(
            !text.contains("registro_log_lines_dropped_total 0\n"),
            "lines dropped are counted:\n{text}"
        );
    }

    #[test]
    fn http_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
