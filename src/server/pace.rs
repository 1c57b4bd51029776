//! Trickle pacing: a request arriving a few bytes at a time costs a worker
//! one turn per period, not one per byte.

use std::sync::atomic::Ordering;

use mio::{Interest, Token};

use crate::registry::Millis;

use super::conn::{mid_request, owes, Conn, ConnIo, Phase};
use super::poller::FIRST_CONN;
use super::{mono, Shared, NEVER};

/// A request that has come in `SLOW_READS` reads of fewer than `SMALL_READ`
/// bytes each and is still not whole is trickling (slowloris, or a person
/// typing): after each read its socket wakes no one for `TRICKLE_MS`, so it
/// costs a worker at most one turn in that time, not one per byte.
pub(super) const SLOW_READS: u32 = 8;
pub(super) const SMALL_READ: usize = 64;
pub(super) const TRICKLE_MS: Millis = 50;
/// Trickling connections wait `TRICKLE_MS` plus up to this much more, by
/// connection id: slow senders that began together (one attacker's batch)
/// are read at spread-out times, not all in the same millisecond, where a
/// request arriving behind them would wait for all of their reads.
pub(super) const TRICKLE_SPREAD: u64 = 32;

impl Shared {
    /// A trickling request just read from: its socket stops waking the
    /// poller, and a timer hands it to a worker in `TRICKLE_MS` to read what
    /// came meanwhile. If nothing came, or the request is whole, its bytes
    /// wake it again. Called by the worker holding `conn` after each step.
    pub(super) fn pace(&self, conn: &Conn, io: &mut ConnIo) {
        let trickling = std::mem::take(&mut io.read_some)
            && io.small_reads >= SLOW_READS
            && matches!(io.phase, Phase::Open)
            && mid_request(io)
            && !owes(io);
        if trickling != io.quiet {
            let interest = if trickling {
                Interest::WRITABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            if let Some(stream) = &mut io.stream {
                // A failure leaves it woken by every byte, as before.
                if self
                    .registry
                    .reregister(stream, Token(conn.slot + FIRST_CONN), interest)
                    .is_ok()
                {
                    io.quiet = trickling;
                }
            }
        }
        if trickling {
            let at = mono() + TRICKLE_MS + conn.id % TRICKLE_SPREAD;
            conn.wake_at.store(at, Ordering::SeqCst);
            self.arm(conn, at);
        } else if conn.wake_at.load(Ordering::SeqCst) != NEVER {
            conn.wake_at.store(NEVER, Ordering::SeqCst);
        }
    }
}
