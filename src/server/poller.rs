//! The poller thread: the listener, the table of connections, readiness,
//! timers and woken watches.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::http::{self, Body, Parser, Response};
use crate::registry::Millis;

use super::conn::{owes, After, Conn, ConnIo, Phase, BUSY, CLOSED, IDLE};
use super::{date, lock, millis, mono, Shared, NEVER};

/// Poller tokens; connection `i` of the table is `Token(i + FIRST_CONN)`.
pub(super) const LISTENER: Token = Token(0);
pub(super) const WAKER: Token = Token(1);
pub(super) const FIRST_CONN: usize = 2;

/// The poller thread's state: the table of connections and the listener.
pub(super) struct Poller {
    pub(super) shared: Arc<Shared>,
    pub(super) poll: Poll,
    pub(super) listener: Option<TcpListener>,
    pub(super) conns: Vec<Option<Arc<Conn>>>,
    pub(super) free: Vec<usize>,
    pub(super) next_id: u64,
    /// After an accept error (EMFILE), when to try again, and the backoff.
    pub(super) retry_accept: Option<Millis>,
    pub(super) backoff: Millis,
    pub(super) last_complaint: Option<Millis>,
    /// Connections refused by `max_connections` not yet logged, and when the
    /// last such line was written.
    pub(super) refused: u64,
    pub(super) refused_logged: Option<Millis>,
    pub(super) stop_done: bool,
}

impl Poller {
    pub(super) fn new(shared: Arc<Shared>, poll: Poll, listener: TcpListener) -> Poller {
        Poller {
            shared,
            poll,
            listener: Some(listener),
            conns: Vec::new(),
            free: Vec::new(),
            next_id: 0,
            retry_accept: None,
            backoff: 1,
            last_complaint: None,
            refused: 0,
            refused_logged: None,
            stop_done: false,
        }
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut batch = Vec::new();
        loop {
            let now = mono();
            let next = {
                // Armed under the lock workers push timers under: one pushed
                // earlier than this wakes the poller.
                let mut timers = lock(&self.shared.timers);
                let mut next = timers.next().min(self.retry_accept.unwrap_or(NEVER));
                if self.refused > 0 {
                    next = next.min(self.refused_logged.map_or(now, |t| t + 1000));
                }
                timers.armed = next;
                next
            };
            let timeout = (next != NEVER).then(|| Duration::from_millis(next.saturating_sub(now)));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.shared.api.log().line(format_args!("poll failed: {e}"));
                    thread::sleep(Duration::from_millis(10));
                }
            }
            lock(&self.shared.timers).armed = 0;
            let mut accept = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    WAKER => {}
                    Token(t) => {
                        if let Some(Some(conn)) = self.conns.get(t - FIRST_CONN) {
                            let conn = Arc::clone(conn);
                            let hung_up = event.is_read_closed() || event.is_error();
                            if hung_up {
                                conn.peer_closed.store(true, Ordering::SeqCst);
                            } else if conn.wake_at.load(Ordering::SeqCst) != NEVER {
                                // Its timer reads what has come.
                                continue;
                            }
                            if !(hung_up && self.hang_up(&conn, &mut batch)) {
                                self.shared.dispatch(&conn, &mut batch);
                            }
                        }
                    }
                }
            }
            // After the hang-ups of the same batch: a connection that closed
            // before a new one arrived has made room for it.
            if accept {
                self.accept(&mut batch);
            }
            self.shared.enqueue(&mut batch);
            let now = mono();
            self.free_closed();
            self.wake_watches(&mut batch);
            self.fire_timers(now, &mut batch);
            if self.retry_accept.is_some_and(|t| t <= now) {
                self.retry_accept = None;
                self.accept(&mut batch);
            }
            if self.refused > 0 && self.refused_logged.is_none_or(|t| now >= t + 1000) {
                self.log_refused(now);
            }
            if self.shared.stopping() && !self.stop_done {
                self.stop_done = true;
                // No more connections: the kernel resets those still queued.
                if let Some(mut listener) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut listener);
                }
                self.retry_accept = None;
                for conn in self.conns.iter().flatten() {
                    self.shared.dispatch(conn, &mut batch);
                }
            }
            if self.shared.cut.load(Ordering::SeqCst) {
                for conn in self.conns.iter().flatten() {
                    self.shared.dispatch(conn, &mut batch);
                }
                self.shared.enqueue(&mut batch);
                if self.refused > 0 {
                    self.log_refused(now);
                }
                return;
            }
            self.shared.enqueue(&mut batch);
        }
    }

    /// Accepts what is queued; each new connection joins `batch`.
    pub(super) fn accept(&mut self, batch: &mut Vec<Arc<Conn>>) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.backoff = 1;
                    self.admit(stream, peer, batch);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if transient(&e) => {}
                Err(e) => {
                    // Out of descriptors (or memory): the connections wait in
                    // the kernel's backlog. With edge-triggered readiness no
                    // new event comes for them, so a timer tries again.
                    let now = mono();
                    if self.last_complaint.is_none_or(|t| now >= t + 10_000) {
                        self.shared
                            .api
                            .log()
                            .line(format_args!("cannot accept connections: {e}; retrying"));
                        self.last_complaint = Some(now);
                    }
                    self.retry_accept = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(100);
                    return;
                }
            }
        }
    }

    pub(super) fn admit(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        batch: &mut Vec<Arc<Conn>>,
    ) {
        let shared = &self.shared;
        if shared.open.load(Ordering::SeqCst) >= shared.config.max_connections {
            // Refused without ever blocking the poller.
            let body = Response::error(503, "too many connections; try again");
            let mut out = Vec::with_capacity(256);
            let _ = http::write_response(&mut out, &body, false, false, &date());
            let _ = stream.write(&out);
            self.refused += 1;
            shared.api.log().metrics().connection_rejected();
            return;
        }
        let _ = stream.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot + FIRST_CONN),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            shared
                .api
                .log()
                .line(format_args!("cannot watch a connection: {e}"));
            self.free.push(slot);
            return;
        }
        shared.open.fetch_add(1, Ordering::SeqCst);
        shared.api.log().metrics().connection_opened();
        self.next_id += 1;
        let now = mono();
        let conn = Arc::new(Conn {
            slot,
            id: self.next_id,
            state: AtomicU8::new(IDLE),
            deadline: AtomicU64::new(NEVER),
            scheduled: AtomicU64::new(NEVER),
            woken: AtomicBool::new(false),
            peer_closed: AtomicBool::new(false),
            wake_at: AtomicU64::new(NEVER),
            io: Mutex::new(ConnIo {
                stream: Some(stream),
                peer: Some(peer.ip().to_canonical()),
                pending: Vec::new(),
                parser: Parser::default(),
                continued: false,
                request_started: None,
                small_reads: 0,
                quiet: false,
                read_some: false,
                out: Vec::new(),
                out_pos: 0,
                tail: Body::default(),
                tail_pos: 0,
                write_started: None,
                after: After::Continue,
                idle_since: now,
                phase: Phase::Open,
                eof: false,
            }),
        });
        shared.schedule(&conn, now + millis(shared.config.idle_timeout));
        // Handed to a worker with this pass's batch, not at its readiness:
        // its first request is usually on its way, and the worker's wake-up
        // then overlaps its coming rather than follows it (as a thread
        // blocked in `read` did). If it has not come yet, the worker finds
        // nothing and its readiness event follows.
        shared.dispatch(&conn, batch);
        self.conns[slot] = Some(conn);
    }

    pub(super) fn log_refused(&mut self, now: Millis) {
        self.shared.api.log().line(format_args!(
            "refused {} connections with 503: --max-connections {} reached",
            self.refused, self.shared.config.max_connections
        ));
        self.refused = 0;
        self.refused_logged = Some(now);
    }

    /// A client that hung up between requests is closed here, at once, so
    /// that its slot counts as free before the next connection is admitted.
    /// True when dealt with (closed, or handed to a worker with what it sent
    /// before hanging up).
    pub(super) fn hang_up(&mut self, conn: &Arc<Conn>, batch: &mut Vec<Arc<Conn>>) -> bool {
        if conn
            .state
            .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        let mut io = lock(&conn.io);
        let between_requests = matches!(io.phase, Phase::Open)
            && io.pending.is_empty()
            && !owes(&io)
            && io.after == After::Continue;
        if between_requests {
            let mut byte = [0u8; 1];
            let peeked = match &io.stream {
                Some(stream) => stream.peek(&mut byte),
                None => Ok(0),
            };
            // Nothing left unread: it is gone. Otherwise it sent a last
            // request before closing, which a worker answers.
            if matches!(peeked, Ok(0))
                || peeked
                    .as_ref()
                    .is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock)
            {
                self.shared.close(conn, &mut io);
                return true;
            }
        }
        drop(io);
        batch.push(Arc::clone(conn));
        true
    }

    pub(super) fn lookup(&self, slot: usize, id: u64) -> Option<&Arc<Conn>> {
        self.conns
            .get(slot)
            .and_then(Option::as_ref)
            .filter(|c| c.id == id)
    }

    pub(super) fn free_closed(&mut self) {
        let freed = std::mem::take(&mut *lock(&self.shared.freed));
        for slot in freed {
            if let Some(entry) = self.conns.get_mut(slot) {
                if entry
                    .as_ref()
                    .is_some_and(|c| c.state.load(Ordering::SeqCst) == CLOSED)
                {
                    *entry = None;
                    self.free.push(slot);
                }
            }
        }
    }

    pub(super) fn wake_watches(&mut self, batch: &mut Vec<Arc<Conn>>) {
        let topics = std::mem::take(&mut *lock(&self.shared.notified));
        if topics.is_empty() {
            return;
        }
        let woken = lock(&self.shared.watches).woken(&topics);
        for (slot, id) in woken {
            if let Some(conn) = self.lookup(slot, id) {
                conn.woken.store(true, Ordering::SeqCst);
                self.shared.dispatch(conn, batch);
            }
        }
    }

    pub(super) fn fire_timers(&mut self, now: Millis, batch: &mut Vec<Arc<Conn>>) {
        let mut timers = lock(&self.shared.timers);
        while let Some((slot, id)) = timers.pop_due(now) {
            let Some(conn) = self.lookup(slot, id) else {
                continue;
            };
            conn.scheduled.store(NEVER, Ordering::SeqCst);
            let deadline = conn.deadline.load(Ordering::SeqCst);
            let wake = conn.wake_at.load(Ordering::SeqCst);
            if deadline > now && wake > now {
                let next = deadline.min(wake);
                if next != NEVER {
                    conn.scheduled.store(next, Ordering::SeqCst);
                    timers.push(next, slot, id);
                }
            } else {
                conn.wake_at.store(NEVER, Ordering::SeqCst);
                self.shared.dispatch(conn, batch);
            }
        }
    }
}

/// Errors after which `accept()` is simply called again, at once and without
/// a word: the pending connection it was taking failed (it aborted, or, as
/// Linux passes on, its network has trouble; `EPERM` is a firewall's
/// refusal), and the next one may be fine. Anything else (out of
/// descriptors or memory) backs off.
pub(super) fn transient(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let again = [
        Errno::NETDOWN,
        Errno::PROTO,
        Errno::NOPROTOOPT,
        Errno::HOSTDOWN,
        Errno::NONET,
        Errno::HOSTUNREACH,
        Errno::OPNOTSUPP,
        Errno::NETUNREACH,
        Errno::PERM,
    ];
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e
        .raw_os_error()
        .is_some_and(|n| again.iter().any(|a| a.raw_os_error() == n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    #[track_caller]
    fn check(errno: Errno, want: bool) {
        let e = io::Error::from_raw_os_error(errno.raw_os_error());
        assert_eq!(transient(&e), want, "{e}");
    }

    #[test]
    fn a_pending_connections_network_trouble_is_retried_at_once() {
        // `man 2 accept`: on Linux, errors of the pending connection's
        // network are passed on; retry them like EAGAIN.
        for errno in [
            Errno::NETDOWN,
            Errno::PROTO,
            Errno::NOPROTOOPT,
            Errno::HOSTDOWN,
            Errno::NONET,
            Errno::HOSTUNREACH,
            Errno::OPNOTSUPP,
            Errno::NETUNREACH,
            Errno::PERM, // a firewall's refusal
            Errno::CONNABORTED,
            Errno::CONNRESET,
            Errno::INTR,
        ] {
            check(errno, true);
        }
        // Out of descriptors or memory: a retry now would fail again.
        for errno in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            check(errno, false);
        }
    }
}
