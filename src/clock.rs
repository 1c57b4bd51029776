//! The server's clocks. The registry measures ages and deadlines on a
//! monotonic clock (`mono`, milliseconds since the process started), so a
//! step of the system clock (NTP, a resumed VM) changes no status; the wall
//! clock (`wall`, Unix milliseconds) is only for showing `lastRenewal`.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::registry::Millis;

/// One reading of both clocks, taken together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds on the monotonic clock since the process started.
    pub mono: Millis,
    /// Unix time in milliseconds, as the system clock says now.
    pub wall: Millis,
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Reads both clocks.
pub fn now() -> Now {
    at(Instant::now())
}

/// Both clocks, the monotonic one as of `mono` (an `Instant` the caller has
/// just read, and needs for itself too).
pub fn at(mono: Instant) -> Now {
    Now {
        mono: mono_of(mono),
        wall: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// The monotonic reading of `t` (0 for an instant before the first reading).
pub fn mono_of(t: Instant) -> Millis {
    u64::try_from(t.saturating_duration_since(start()).as_millis()).unwrap_or(u64::MAX)
}

/// The `Instant` of a monotonic reading.
pub fn instant_of(mono: Millis) -> Instant {
    start() + std::time::Duration::from_millis(mono)
}

/// The lowest index a server started now may hand out: the wall clock in
/// microseconds. An earlier server started at `t` handed out `t` plus one
/// per change, so, unless it made more than a change a microsecond or the
/// clock went back, every index it answered is below this. Microseconds stay
/// below 2^53 (exact in JSON and JavaScript) until the year 2255.
pub fn index_floor() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .clamp(1, (1 << 53) - 1)
}
