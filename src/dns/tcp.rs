//! The TCP thread: one mio poller serving every DNS connection (RFC 7766),
//! each a table entry, never a thread. Bounds: at most `MAX_CONNECTIONS`
//! open (more are closed as they are accepted); a query must arrive, and an
//! answer be taken, within `DEADLINE` of the last answer (or of the accept);
//! a query is at most `MAX_QUERY` bytes (longer: the connection is closed);
//! one answer (at most 64 KiB) is owed at a time, the next query read only
//! once it is written; `TURN` queries a connection per turn, then the others
//! have theirs.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::answer::Transport;
use super::wire::MAX_QUERY;
use super::{Rng, Shared};

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Time for a query to arrive, and for an answer to be taken.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Queries answered on one connection before the others get a turn.
const TURN: usize = 16;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet answered (at most a query and one read more).
    input: Vec<u8>,
    /// The answer owed (length-prefixed) and how much of it is written.
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
}

pub(super) struct Poller {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
    conns: Vec<Option<Conn>>,
    /// Connections whose turn ended with work left (edge-triggered: no
    /// event will come for it).
    again: Vec<usize>,
    /// When a failed accept is tried again.
    retry_accept: Option<Instant>,
    rng: Rng,
}

enum Step {
    Keep,
    Close,
}

impl Poller {
    pub(super) fn new(listener: StdListener) -> io::Result<Poller> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Poller {
            poll,
            listener,
            waker,
            conns: Vec::new(),
            again: Vec::new(),
            retry_accept: None,
            rng: Rng::new(),
        })
    }

    pub(super) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    pub(super) fn run(mut self, shared: &Shared) {
        super::demote();
        let mut events = Events::with_capacity(256);
        while !shared.stopping() {
            let now = Instant::now();
            let timeout = if self.again.is_empty() {
                let next = self
                    .conns
                    .iter()
                    .flatten()
                    .map(|c| c.deadline)
                    .chain(self.retry_accept)
                    .min();
                next.map_or(Duration::from_secs(1), |at| {
                    at.saturating_duration_since(now)
                        .min(Duration::from_secs(1))
                })
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    shared
                        .view
                        .log()
                        .line(format_args!("DNS: TCP poll failed: {e}"));
                    return;
                }
            }
            let mut ready: Vec<usize> = std::mem::take(&mut self.again);
            for event in &events {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(i) => ready.push(i),
                }
            }
            if self.retry_accept.is_some_and(|at| at <= Instant::now()) {
                self.accept();
            }
            ready.sort_unstable();
            ready.dedup();
            for i in ready {
                if shared.stopping() {
                    break;
                }
                if let Step::Close = self.serve(i, shared) {
                    self.close(i);
                }
            }
            let now = Instant::now();
            for i in 0..self.conns.len() {
                if self.conns[i].as_ref().is_some_and(|c| c.deadline <= now) {
                    self.close(i);
                }
            }
        }
    }

    fn accept(&mut self) {
        self.retry_accept = None;
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let Some(i) = self.free_slot() else {
                        // Full: closed at once, so the asker tries another
                        // server rather than waiting.
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(i), interest)
                        .is_err()
                    {
                        continue;
                    }
                    self.conns[i] = Some(Conn {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        written: 0,
                        deadline: Instant::now() + DEADLINE,
                    });
                    // Bytes may have arrived with the connection.
                    self.again.push(i);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: no new event will come for
                    // the connections waiting, so try again shortly.
                    if !matches!(e.kind(), ErrorKind::ConnectionAborted) {
                        self.retry_accept = Some(Instant::now() + Duration::from_millis(100));
                        return;
                    }
                }
            }
        }
    }

    fn free_slot(&mut self) -> Option<usize> {
        if let Some(i) = self.conns.iter().position(Option::is_none) {
            return Some(i);
        }
        if self.conns.len() < MAX_CONNECTIONS {
            self.conns.push(None);
            return Some(self.conns.len() - 1);
        }
        None
    }

    fn close(&mut self, i: usize) {
        if let Some(mut conn) = self.conns.get_mut(i).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// Serves connection `i` until its socket would block, it must close,
    /// or its turn is over.
    fn serve(&mut self, i: usize, shared: &Shared) -> Step {
        let Some(Some(conn)) = self.conns.get_mut(i) else {
            return Step::Keep;
        };
        let mut answered = 0;
        loop {
            if conn.written < conn.output.len() {
                match conn.stream.write(&conn.output[conn.written..]) {
                    Ok(0) => return Step::Close,
                    Ok(n) => conn.written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Keep,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
                continue;
            }
            conn.output.clear();
            conn.written = 0;
            if conn.input.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([conn.input[0], conn.input[1]]));
                if len > MAX_QUERY {
                    return Step::Close;
                }
                if conn.input.len() >= 2 + len {
                    if answered == TURN {
                        self.again.push(i);
                        return Step::Keep;
                    }
                    answered += 1;
                    let query = &conn.input[2..2 + len];
                    // A message that gets no answer (an answer, not a
                    // query) ends the connection: the asker would wait.
                    let Some(answer) = shared.answer(query, Transport::Tcp, &mut self.rng) else {
                        return Step::Close;
                    };
                    conn.input.drain(..2 + len);
                    conn.output
                        .extend_from_slice(&(answer.len() as u16).to_be_bytes());
                    conn.output.extend_from_slice(&answer);
                    conn.deadline = Instant::now() + DEADLINE;
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            match conn.stream.read(&mut chunk) {
                Ok(0) => return Step::Close,
                Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Keep,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
    }
}
