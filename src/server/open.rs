//! An open connection on a worker: requests in, answers out.

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::api::Outcome;
use crate::clock;
use crate::http::{self, Parsed, Parser, Request, Response};
use crate::registry::Millis;

use super::conn::{owes, After, Conn, ConnIo, Phase};
use super::pace::SMALL_READ;
use super::worker::{Verdict, Worker, LINGER, LINGER_BYTES, TURN_REQUESTS};
use super::{date, date_at, lock, millis, mono, NEVER};

/// Answers queued before they are written out, when requests are pipelined.
pub(super) const OUT_BATCH: usize = 64 * 1024;
/// A body this large is sent from its own buffer after its head, not
/// copied behind it.
pub(super) const TAIL_BODY: usize = 64 * 1024;

impl Worker<'_> {
    /// Handles one request; `Some` when it was parked.
    pub(super) fn answer(
        &mut self,
        conn: &Conn,
        io: &mut ConnIo,
        request: Request,
        answer_now: bool,
        first_deadline: Option<Millis>,
    ) -> Option<Verdict> {
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        // One reading of each clock serves the handler, the duration
        // metric, the idle timer and the `Date` header.
        let started = Instant::now();
        let now = clock::at(started);
        let (response, done) = match self.shared.api.handle(&request, now, answer_now) {
            Outcome::Respond(response) => {
                let done = Instant::now();
                self.shared.api.log().metrics().request(
                    &request.method,
                    &request.target,
                    response.status,
                    done.saturating_duration_since(started),
                );
                (response, done)
            }
            Outcome::Wait(wait) => {
                // A watch woken for nothing keeps the deadline it first had.
                let deadline = clock::mono_of(wait.deadline).min(first_deadline.unwrap_or(NEVER));
                lock(&self.shared.watches).park(conn.slot, conn.id, wait.topic);
                io.phase = Phase::Parked(Box::new((request, deadline)));
                if self.shared.epoch.load(Ordering::SeqCst) != epoch {
                    // Something changed between the look and the parking.
                    conn.woken.store(true, Ordering::SeqCst);
                    return Some(Verdict::Keep(0));
                }
                return Some(Verdict::Keep(deadline));
            }
        };
        let keep_alive = request.keep_alive && !self.shared.stopping();
        let out = if io.out.is_empty() {
            &mut self.out
        } else {
            &mut io.out
        };
        let date = date_at(now.wall / 1000);
        // Nothing is answered while a large body is owed (`handle_all`
        // stops), so no answer can overtake one.
        debug_assert!(io.tail.is_empty());
        if response.body.len() >= TAIL_BODY && !request.is_head() {
            // A large listing is written from the buffer it was encoded
            // into: no second copy, and no second allocation to fault in.
            http::encode_head(out, &response, keep_alive, &date);
            io.tail = response.body;
            io.tail_pos = 0;
        } else {
            http::encode_response(out, &response, request.is_head(), keep_alive, &date);
        }
        if !keep_alive {
            io.after = After::Close;
        }
        io.idle_since = clock::mono_of(done);
        None
    }

    /// An open connection: write what is owed, handle what has arrived, read
    /// what is there, until the socket would block.
    pub(super) fn open(&mut self, conn: &Conn, io: &mut ConnIo, now: Millis) -> Verdict {
        let mut drained = false;
        loop {
            // 1. What is owed goes out first.
            if !self.flush(io) {
                return Verdict::Close;
            }
            if owes(io) {
                let started = *io.write_started.get_or_insert(now);
                return Verdict::Keep(started + millis(self.shared.config.request_timeout));
            }
            io.write_started = None;
            match io.after {
                After::Continue => {}
                After::Close => return Verdict::Close,
                After::Linger => {
                    if let Some(stream) = &io.stream {
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                    io.pending = Vec::new();
                    io.phase = Phase::Lingering {
                        until: now + LINGER,
                        budget: LINGER_BYTES,
                    };
                    return self.step(conn, io);
                }
            }
            // 2. Requests already here.
            if !io.pending.is_empty() {
                let pending = std::mem::take(&mut io.pending);
                let used = self.handle_all(conn, io, &pending);
                if matches!(io.phase, Phase::Parked(_)) {
                    io.pending = pending[used..].to_vec();
                    return self.step_parked_keep(conn, io);
                }
                if used < pending.len() {
                    let mut pending = pending;
                    pending.drain(..used);
                    io.pending = pending;
                }
                if !self.out.is_empty() || io.after != After::Continue {
                    self.stash_out(io);
                    continue;
                }
            }
            if self.turn_spent() && (!(drained || io.eof) || !io.pending.is_empty()) {
                // Its turn is over with more to do: to the back of the queue.
                self.yielded = true;
                break;
            }
            if io.eof {
                if io.pending.is_empty() {
                    return Verdict::Close;
                }
                let response = Response::error(
                    400,
                    "malformed request: connection closed inside the request",
                );
                http::encode_response(&mut self.out, &response, false, false, &date());
                io.pending = Vec::new();
                io.after = After::Close;
                self.stash_out(io);
                continue;
            }
            if drained {
                break;
            }
            // 4. Read what is there.
            let Some(stream) = &io.stream else {
                return Verdict::Close;
            };
            let n = match (&*stream).read(&mut self.scratch) {
                Ok(0) => {
                    io.eof = true;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Verdict::Close,
            };
            // A short read emptied the socket: edge-triggered readiness
            // reports the next bytes as a new event. Unless the peer has shut
            // its side: its end of file may have come with these bytes, in
            // the same event, and only another read sees it.
            drained = n < self.scratch.len() && !conn.peer_closed.load(Ordering::SeqCst);
            io.read_some = true;
            self.turn_bytes += n;
            if n < SMALL_READ {
                io.small_reads = io.small_reads.saturating_add(1);
            }
            if io.pending.is_empty() {
                let scratch = std::mem::take(&mut self.scratch);
                let used = self.handle_all(conn, io, &scratch[..n]);
                if used < n {
                    io.pending = scratch[used..n].to_vec();
                }
                self.scratch = scratch;
                if matches!(io.phase, Phase::Parked(_)) {
                    return self.step_parked_keep(conn, io);
                }
                self.stash_out(io);
            } else {
                io.pending.extend_from_slice(&self.scratch[..n]);
            }
        }
        if io.pending.is_empty() {
            // A stop closes a connection between requests.
            if self.shared.stopping() {
                return Verdict::Close;
            }
            io.request_started = None;
            io.pending = Vec::new();
            Verdict::Keep(io.idle_since.max(now) + millis(self.shared.config.idle_timeout))
        } else {
            let started = *io.request_started.get_or_insert(now);
            Verdict::Keep(started + millis(self.shared.config.request_timeout))
        }
    }

    /// returns how many bytes they took. Answers go to `self.out` (or to the
    /// connection's output, if some is still owed).
    pub(super) fn handle_all(&mut self, conn: &Conn, io: &mut ConnIo, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() && io.after == After::Continue {
            if self.out.len() + io.out.len() > OUT_BATCH
                || !io.tail.is_empty()
                || self.turn_requests >= TURN_REQUESTS
            {
                break;
            }
            match io.parser.parse(&data[used..]) {
                Ok(Parsed::Complete {
                    mut request,
                    consumed,
                }) => {
                    used += consumed;
                    io.parser = Parser::default();
                    io.continued = false;
                    io.request_started = None;
                    io.small_reads = 0;
                    request.peer = io.peer;
                    self.turn_requests += 1;
                    if let Some(verdict) =
                        self.answer(conn, io, request, self.shared.stopping(), None)
                    {
                        let _ = verdict;
                        return used;
                    }
                }
                Ok(Parsed::Partial { continue_due }) => {
                    if continue_due && !io.continued {
                        io.continued = true;
                        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    if io.request_started.is_none() {
                        io.request_started = Some(mono());
                    }
                    return used;
                }
                Err(e) => {
                    io.parser = Parser::default();
                    match e.status() {
                        Some(status) => {
                            self.shared
                                .api
                                .log()
                                .metrics()
                                .request("", "", status, Duration::ZERO);
                            let response = Response::error(status, e.to_string());
                            let out = if io.out.is_empty() {
                                &mut self.out
                            } else {
                                &mut io.out
                            };
                            http::encode_response(out, &response, false, false, &date());
                            io.after = After::Linger;
                        }
                        None => io.after = After::Close,
                    }
                    return data.len();
                }
            }
        }
        used
    }
}
