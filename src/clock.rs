//! The server's clocks. The registry measures ages and deadlines on a
//! monotonic clock (`mono`, milliseconds), so a
//! step of the system clock (NTP, a resumed VM) changes no status (its origin
//! is put 30 days back, so that a registry loaded from disk can hold renewals
//! made before the start); the wall
//! clock (`wall`, Unix milliseconds) is only for showing `lastRenewal`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::registry::Millis;

/// One reading of both clocks, taken together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds on the monotonic clock since its origin, [`backdate`]
    /// before the process's first reading.
    pub mono: Millis,
    /// Unix time in milliseconds, as the system clock says now.
    pub wall: Millis,
}

/// How far before the process's first clock reading the monotonic origin is
/// put, where the platform allows it: a registry loaded from `--data-dir`
/// can then hold renewals up to this long before the start (an instance
/// renewed 20 s before the stop reads renewed 20 s before the start).
const BACKDATE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The origin of `mono`, and how long before the first reading it is.
fn origin() -> &'static (Instant, Millis) {
    static ORIGIN: OnceLock<(Instant, Millis)> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let first = Instant::now();
        match first.checked_sub(BACKDATE) {
            Some(start) => (start, millis(BACKDATE)),
            None => (first, 0),
        }
    })
}

fn start() -> Instant {
    origin().0
}

/// How long before the process's first clock reading `mono` counts from
/// (30 days where the platform's clock allows it, else 0): `now.mono` less
/// this is the time since the start.
pub fn backdate() -> Millis {
    origin().1
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads both clocks.
pub fn now() -> Now {
    at(Instant::now())
}

/// Both clocks, the monotonic one as of `mono` (an `Instant` the caller has
/// just read, and needs for itself too).
pub fn at(mono: Instant) -> Now {
    static HELD: AtomicU64 = AtomicU64::new(0);
    let mono = mono_of(mono);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Now {
        mono,
        wall: steady_wall(&HELD, mono, wall),
    }
}

/// How far the wall clock may move from the offset held between the two
/// clocks before the offset follows it (a step or a slew of the system
/// clock): more than reading both clocks one after the other ever differs.
const WALL_SLACK: Millis = 100;

/// The wall clock as `mono` plus the offset `held` between the two clocks,
/// which follows `wall` (just read) only once it is [`WALL_SLACK`] away.
/// Read one after the other, the two clocks give offsets a millisecond
/// apart from one call to the next, so one moment (a registration) would
/// show as `lastRenewal` in one second in one answer and the next second
/// in another.
fn steady_wall(held: &AtomicU64, mono: Millis, wall: Millis) -> Millis {
    let offset = wall.saturating_sub(mono);
    let kept = held.load(Relaxed);
    if kept == 0 || kept.abs_diff(offset) > WALL_SLACK {
        held.store(offset, Relaxed);
        return mono.saturating_add(offset);
    }
    mono.saturating_add(kept)
}

/// The monotonic reading of `t` (0 for an instant before the first reading).
pub fn mono_of(t: Instant) -> Millis {
    u64::try_from(t.saturating_duration_since(start()).as_millis()).unwrap_or(u64::MAX)
}

/// The `Instant` of a monotonic reading.
pub fn instant_of(mono: Millis) -> Instant {
    start() + Duration::from_millis(mono)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Readings a millisecond apart in offset keep one offset, so a moment
    /// shows the same wall time from every reading; a step of the wall
    /// clock beyond the slack is followed at once.
    #[test]
    fn the_wall_clock_holds_its_offset_until_it_steps() {
        let held = AtomicU64::new(0);
        assert_eq!(steady_wall(&held, 1_000, 5_000_000), 5_000_000);
        // 1 ms later on the monotonic clock, 2 ms on the wall clock.
        assert_eq!(steady_wall(&held, 1_001, 5_000_002), 5_000_001);
        assert_eq!(steady_wall(&held, 1_002, 5_000_001), 5_000_002);
        // The wall clock stepped 10 s forward, then 10 s back.
        assert_eq!(steady_wall(&held, 1_003, 5_010_003), 5_010_003);
        assert_eq!(steady_wall(&held, 1_004, 5_000_004), 5_000_004);
    }
}
