//! One connection: its state, its socket and its buffers, and writing out
//! what it owes.

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use mio::net::TcpStream;

use crate::budget::Charge;
use crate::http::{Body, Parser, Request};
use crate::registry::Millis;

use super::worker::Worker;
use super::{lock, Shared};

/// Connection states (`Conn::state`).
pub(super) const IDLE: u8 = 0; // in the table, no worker has it
pub(super) const BUSY: u8 = 1; // a worker has it
pub(super) const AGAIN: u8 = 2; // a worker has it and something happened meanwhile
pub(super) const CLOSED: u8 = 3;

/// A worker keeps an output buffer up to this size for the next connection.
pub(super) const KEEP_OUT: usize = 1 << 20;

/// One connection. The poller's table holds it; a worker holds it while
/// serving it.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) slot: usize,
    /// Unique over the server's life: tells a reused slot from the old one.
    pub(super) id: u64,
    pub(super) state: AtomicU8,
    /// When it must be looked at next (monotonic ms), `NEVER` if not.
    pub(super) deadline: AtomicU64,
    /// The earliest timer queued for it (`NEVER` if none).
    pub(super) scheduled: AtomicU64,
    /// Its parked watch's topic was notified.
    pub(super) woken: AtomicBool,
    /// The peer has shut its side (an event said so): a short read no longer
    /// means the socket is empty, the end of file may be behind the data.
    pub(super) peer_closed: AtomicBool,
    /// Its request is trickling in (`NEVER` if not): a timer at this time
    /// hands it to a worker to read what has come, and events that raced
    /// with its quieting are ignored until then.
    pub(super) wake_at: AtomicU64,
    pub(super) io: Mutex<ConnIo>,
}

#[derive(Debug)]
pub(super) struct ConnIo {
    /// `None` once closed.
    pub(super) stream: Option<TcpStream>,
    pub(super) peer: Option<IpAddr>,
    /// Bytes of requests not handled yet (empty while idle).
    pub(super) pending: Vec<u8>,
    pub(super) parser: Parser,
    pub(super) continued: bool,
    /// When the request now arriving began (monotonic ms).
    pub(super) request_started: Option<Millis>,
    /// Reads of fewer than `SMALL_READ` bytes since a request was last whole.
    pub(super) small_reads: u32,
    /// Registered for writability only (trickling): arriving bytes wake no one.
    pub(super) quiet: bool,
    /// Bytes were read in the worker's present turn.
    pub(super) read_some: bool,
    /// Output the client has not taken yet, from `out_pos` on.
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    /// `out`, counted in the output budget while it is owed.
    pub(super) out_charge: Option<Charge>,
    /// A large body owed after `out`, from `tail_pos` on; while it is owed
    /// no further request is answered.
    pub(super) tail: Body,
    pub(super) tail_pos: usize,
    /// When writing first blocked, or the present window of
    /// `--request-timeout` began (see `worker::drained_enough`).
    pub(super) write_started: Option<Millis>,
    /// Bytes the client has taken since then.
    pub(super) drained: u64,
    /// What happens once the output is out.
    pub(super) after: After,
    /// Last time a request was answered (or the connection opened).
    pub(super) idle_since: Millis,
    pub(super) phase: Phase,
    /// The peer has sent end of file.
    pub(super) eof: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    Continue,
    Close,
    Linger,
}

#[derive(Debug)]
pub(super) enum Phase {
    Open,
    Parked(Box<(Request, Millis)>),
    Lingering { until: Millis, budget: usize },
}

impl Shared {
    /// Closes a connection its caller holds (state BUSY, `io` locked).
    pub(super) fn close(&self, conn: &Conn, io: &mut ConnIo) {
        io.stream = None;
        io.pending = Vec::new();
        io.out = Vec::new();
        io.out_charge = None;
        io.tail = Body::default();
        io.phase = Phase::Open;
        lock(&self.watches).unpark(conn.slot, conn.id);
        conn.state.store(CLOSED, Ordering::SeqCst);
        lock(&self.freed).push(conn.slot);
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.api.log().metrics().connection_closed();
        if self.stopping() {
            drop(lock(&self.closed_lock));
            self.closed.notify_all();
        }
    }
}

impl Worker<'_> {
    /// sends it.
    pub(super) fn stash_out(&mut self, io: &mut ConnIo) {
        if self.out.is_empty() {
            return;
        }
        if io.out.is_empty() {
            std::mem::swap(&mut io.out, &mut self.out);
            io.out_pos = 0;
        } else {
            io.out.extend_from_slice(&self.out);
            self.out.clear();
        }
    }

    /// Writes what the connection owes until done or the socket would block.
    /// False when the connection failed.
    pub(super) fn flush(&mut self, io: &mut ConnIo) -> bool {
        let ok = self.write_owed(io);
        // Small answers left owed count in the output budget (a large body
        // is counted from before its encoding, wherever it is held).
        match (io.out.capacity(), &mut io.out_charge) {
            (_, charge) if io.out.is_empty() => *charge = None,
            (held, Some(charge)) => charge.resize(held),
            (held, None) => io.out_charge = Some(self.shared.budget().charge(held)),
        }
        ok
    }

    fn write_owed(&mut self, io: &mut ConnIo) -> bool {
        self.stash_out(io);
        let Some(stream) = &io.stream else {
            return false;
        };
        let from = io.out_pos;
        let done = write_from(stream, &io.out, &mut io.out_pos);
        io.drained += (io.out_pos - from) as u64;
        match done {
            Ok(true) => {}
            Ok(false) => return true,
            Err(()) => return false,
        }
        // Written: the buffer goes back to the worker (or away if large).
        if !io.out.is_empty() {
            let mut done = std::mem::take(&mut io.out);
            io.out_pos = 0;
            done.clear();
            if done.capacity() <= KEEP_OUT && done.capacity() > self.out.capacity() {
                self.out = done;
            }
        }
        let from = io.tail_pos;
        let done = write_from(stream, &io.tail, &mut io.tail_pos);
        io.drained += (io.tail_pos - from) as u64;
        match done {
            Ok(true) => {}
            Ok(false) => return true,
            Err(()) => return false,
        }
        io.tail = Body::default();
        io.tail_pos = 0;
        true
    }
}

/// Writes `buf` from `*pos` on: `Ok(true)` once all of it is written,
/// `Ok(false)` when the socket would block, `Err` when the connection failed.
pub(super) fn write_from(stream: &TcpStream, buf: &[u8], pos: &mut usize) -> Result<bool, ()> {
    while *pos < buf.len() {
        match (&*stream).write(&buf[*pos..]) {
            Ok(0) => return Err(()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(true)
}

/// Whether the connection has output the client has not taken yet.
pub(super) fn owes(io: &ConnIo) -> bool {
    !io.out.is_empty() || !io.tail.is_empty()
}

/// Whether part of a request has arrived and not been answered.
pub(super) fn mid_request(io: &ConnIo) -> bool {
    !io.pending.is_empty()
}
