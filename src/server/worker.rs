//! A worker thread: takes a connection from the queue and serves it until
//! its socket would block.

use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use crate::http::{self, Response};
use crate::registry::Millis;

use super::conn::{mid_request, owes, After, Conn, ConnIo, Phase, BUSY, IDLE};
use super::{date, lock, mono, Shared};

/// Bytes read from a socket at once (one buffer per worker).
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// After an error answer, what is still read and discarded, and for how long.
pub(super) const LINGER_BYTES: usize = 256 * 1024;
pub(super) const LINGER: Millis = 100;
/// A connection's turn on a worker: once it has had this many requests
/// answered, or this many bytes read, and has more to do, it goes to the
/// back of the queue. A client pipelining without end (or sending bodies
/// without end) then costs the others one turn in each round of the queue
/// (about 128 small requests, a few hundred microseconds), not the worker.
pub(super) const TURN_REQUESTS: usize = 128;
pub(super) const TURN_BYTES: usize = READ_CHUNK;

/// What a worker decided about a connection.
pub(super) enum Verdict {
    Keep(Millis),
    Close,
}

/// A worker thread: serves the connections the poller hands it, one at a
/// time, never blocking on a socket.
pub(super) struct Worker<'a> {
    pub(super) shared: &'a Shared,
    pub(super) scratch: Box<[u8]>,
    pub(super) out: Vec<u8>,
    /// Requests answered and bytes read in the present turn.
    pub(super) turn_requests: usize,
    pub(super) turn_bytes: usize,
    /// The turn ended with work left: the connection goes to the back of
    /// the queue, not back to the poller.
    pub(super) yielded: bool,
}

impl<'a> Worker<'a> {
    pub(super) fn new(shared: &'a Shared) -> Worker<'a> {
        Worker {
            shared,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            turn_requests: 0,
            turn_bytes: 0,
            yielded: false,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let conn = {
                let mut queue = lock(&self.shared.queue);
                loop {
                    if let Some(conn) = queue.jobs.pop_front() {
                        break conn;
                    }
                    if self.shared.exit.load(Ordering::SeqCst) {
                        return;
                    }
                    queue.waiting += 1;
                    queue = self
                        .shared
                        .work
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                    queue.waiting -= 1;
                }
            };
            // A bug that panics a handler closes that connection only; the
            // worker goes on (the pool is fixed: it must not shrink).
            let served = panic::catch_unwind(AssertUnwindSafe(|| self.serve(&conn)));
            if served.is_err() {
                let mut io = lock(&conn.io);
                if io.stream.is_some() {
                    self.close(&conn, &mut io);
                }
            }
        }
    }

    /// Serves `conn` until it would block, then gives it back to the poller
    /// (or closes it). An event that came meanwhile makes it look again.
    pub(super) fn serve(&mut self, conn: &Arc<Conn>) {
        self.turn_requests = 0;
        self.turn_bytes = 0;
        self.yielded = false;
        loop {
            let verdict = {
                let mut io = lock(&conn.io);
                let verdict = self.step(conn, &mut io);
                if let Verdict::Close = verdict {
                    self.close(conn, &mut io);
                    return;
                }
                self.shared.pace(conn, &mut io);
                verdict
            };
            if let Verdict::Keep(at) = verdict {
                self.shared.schedule(conn, at);
            }
            if std::mem::take(&mut self.yielded) {
                // Its turn is over and it has more to do: the next turn
                // looks at everything, so an event meanwhile (AGAIN) is moot.
                conn.state.store(BUSY, Ordering::SeqCst);
                self.shared.requeue(conn);
                return;
            }
            // Given back; an event, timer or stop that came meanwhile (AGAIN)
            // makes it look once more. The poller dispatches every connection
            // at the stop and at the cut, so none is missed.
            if conn
                .state
                .compare_exchange(BUSY, IDLE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return;
            }
            conn.state.store(BUSY, Ordering::SeqCst);
        }
    }

    /// Whether the present turn is over.
    pub(super) fn turn_spent(&self) -> bool {
        self.turn_requests >= TURN_REQUESTS || self.turn_bytes >= TURN_BYTES
    }

    pub(super) fn close(&mut self, conn: &Conn, io: &mut ConnIo) {
        self.shared.close(conn, io);
    }

    /// Does everything that can be done now without blocking.
    pub(super) fn step(&mut self, conn: &Conn, io: &mut ConnIo) -> Verdict {
        let now = mono();
        let shared = self.shared;
        if io.stream.is_none() {
            return Verdict::Close;
        }
        if shared.cut.load(Ordering::SeqCst) {
            if !owes(io) && io.after == After::Continue && mid_request(io) {
                // A request still arriving when the grace ran out: told to
                // come back, never blamed for it.
                let response = Response::error(503, "the server is stopping; try again");
                let mut out = Vec::new();
                let _ = http::write_response(&mut out, &response, false, false, &date());
                if let Some(stream) = &io.stream {
                    let _ = (&*stream).write(&out);
                }
            }
            return Verdict::Close;
        }
        let due = conn.deadline.load(Ordering::SeqCst) <= now;
        match &mut io.phase {
            Phase::Lingering { until, budget } => {
                let (until, mut left) = (*until, *budget);
                if due || now >= until {
                    return Verdict::Close;
                }
                let Some(stream) = &io.stream else {
                    return Verdict::Close;
                };
                loop {
                    match (&*stream).read(&mut self.scratch) {
                        Ok(0) => return Verdict::Close,
                        Ok(n) if n >= left => return Verdict::Close,
                        Ok(n) => left -= n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Verdict::Close,
                    }
                }
                io.phase = Phase::Lingering {
                    until,
                    budget: left,
                };
                return Verdict::Keep(until);
            }
            Phase::Parked(_) => return self.parked(conn, io, now),
            Phase::Open => {}
        }
        if due {
            // Idle too long, a request too slow to arrive, or an answer too
            // slow to be taken: closed without a word, as before.
            return Verdict::Close;
        }
        self.open(conn, io, now)
    }
}
