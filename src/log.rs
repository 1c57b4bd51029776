//! Event lines on stderr, one per event, stamped in UTC as the original did
//! (`2006/01/02 15:04:05 message`) and written by a thread of their own; and
//! the HTTP `Date` header's format.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::registry::Event;

/// Lines waiting for the logger thread; past this, a connection thread's
/// line is dropped (and counted) rather than making it wait.
const QUEUE: usize = 8192;

type Queue = SyncSender<Option<String>>;

/// Owns the thread that writes log lines to stderr, so that no connection
/// thread ever waits on a slow stderr (a full pipe, a stalled terminal).
/// `close` (or drop) writes what is queued and joins it.
#[derive(Debug)]
pub struct Logger {
    log: Log,
    handle: Option<JoinHandle<()>>,
}

/// A handle to log through: cheap to clone, a no-op when logging is off.
#[derive(Debug, Clone)]
pub struct Log {
    queue: Option<Queue>,
    dropped: Arc<AtomicU64>,
}

impl Logger {
    /// Starts the logger thread, or none when `enabled` is false.
    pub fn start(enabled: bool) -> io::Result<Logger> {
        let dropped = Arc::new(AtomicU64::new(0));
        if !enabled {
            return Ok(Logger {
                log: Log {
                    queue: None,
                    dropped,
                },
                handle: None,
            });
        }
        let (queue, lines) = mpsc::sync_channel::<Option<String>>(QUEUE);
        let counter = Arc::clone(&dropped);
        let handle = thread::Builder::new()
            .name("registro-log".into())
            .spawn(move || write_lines(&lines, &counter))?;
        Ok(Logger {
            log: Log {
                queue: Some(queue),
                dropped,
            },
            handle: Some(handle),
        })
    }

    /// A handle for the threads that log.
    pub fn log(&self) -> Log {
        self.log.clone()
    }

    /// Writes every line queued so far and joins the thread.
    pub fn close(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(queue) = self.log.queue.take() {
            let _ = queue.send(None);
        }
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

/// The logger thread: batches what is queued into one write.
fn write_lines(lines: &Receiver<Option<String>>, dropped: &AtomicU64) {
    let mut batch = String::new();
    while let Ok(first) = lines.recv() {
        let mut last = first.is_none();
        batch.extend(first);
        while !last && batch.len() < 64 * 1024 {
            match lines.try_recv() {
                Ok(Some(line)) => batch.push_str(&line),
                Ok(None) => last = true,
                Err(_) => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push_str(&stamped(format_args!(
                "{lost} log lines dropped: stderr did not keep up"
            )));
        }
        // A closed stderr must not take the server down: the lines are lost.
        let _ = io::stderr().lock().write_all(batch.as_bytes());
        batch.clear();
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
    /// Queues one line, `YYYY/MM/DD HH:MM:SS message`, without ever waiting:
    /// when the queue is full the line is dropped and counted.
    pub fn line(&self, message: fmt::Arguments<'_>) {
        if let Some(queue) = &self.queue {
            if let Err(TrySendError::Full(_)) = queue.try_send(Some(stamped(message))) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues one line, waiting for room: for the sweeper, which holds no
    /// lock while it logs and whose events should all be written.
    pub fn line_waiting(&self, message: fmt::Arguments<'_>) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(Some(stamped(message)));
        }
    }

    /// Logs one registry event (names are quoted and escaped, so a client's
    /// strings cannot forge log lines); `wait` as in [`Log::line_waiting`].
    pub fn event(&self, event: &Event, wait: bool) {
        if wait {
            self.line_waiting(format_args!("{}", Describe(event)));
        } else {
            self.line(format_args!("{}", Describe(event)));
        }
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

    #[test]
    fn http_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
