//! Event lines on stderr, one per event, stamped in UTC as the original did
//! (`2006/01/02 15:04:05 message`), and the HTTP `Date` header's format.

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::registry::Event;

/// Writes one line, `YYYY/MM/DD HH:MM:SS message`, to stderr in a single write.
pub fn line(message: fmt::Arguments<'_>) {
    let secs = unix_secs(SystemTime::now());
    let text = format!("{} {}\n", Civil::from_unix(secs), message);
    // A closed stderr must not take the server down: the line is dropped.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Logs one registry event (names are quoted and escaped, so a client's
/// strings cannot forge log lines).
pub fn event(event: &Event) {
    match event {
        Event::AppCreated { app } => line(format_args!("application {app:?} created")),
        Event::AppRemoved { app } => line(format_args!(
            "application {app:?} removed: no instances for the eviction period"
        )),
        Event::InstanceAdded { app, id, ip, port } => line(format_args!(
            "instance {id:?} of {app:?} added at {ip:?} port {port}"
        )),
        Event::InstanceReplaced { app, id, ip, port } => line(format_args!(
            "instance {id:?} of {app:?} registered again at {ip:?} port {port}"
        )),
        Event::InstanceUp { app, id } => line(format_args!("instance {id:?} of {app:?} is up")),
        Event::InstanceDown { app, id } => line(format_args!(
            "instance {id:?} of {app:?} is down: no heartbeat"
        )),
        Event::InstanceOutOfService { app, id } => {
            line(format_args!("instance {id:?} of {app:?} is out of service"))
        }
        Event::InstanceRemoved { app, id } => line(format_args!(
            "instance {id:?} of {app:?} removed: no heartbeat for the eviction period"
        )),
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
