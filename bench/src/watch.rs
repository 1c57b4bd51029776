//! Scenario "watch fan-out" (issue 10): W watchers, each with its own
//! keep-alive connection, long-poll one app
//! (`GET /registro/1.0/apps/{app}?index=N&wait=60s`) while heartbeats run on
//! other instances; one change (a new instance of the watched app) wakes
//! them all. One thread drives every watcher through a readiness poller
//! (mio), as in the fleet scenario, and notes when each answer arrived; the
//! caller times them from the moment the change's request was sent.

use crate::http::{find, header, parse_head};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The watched app (the heartbeats renew instances of the others).
pub const APP: &str = "watched";
/// How long each watch may wait: longer than a round.
const WAIT: &str = "60s";
/// Connections being opened at once.
const RAMP: usize = 256;
/// How long connecting every watcher may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// `GET /registro/1.0/apps/watched?index=N&wait=60s`.
fn push_watch(out: &mut Vec<u8>, index: u64) {
    out.clear();
    let _ = write!(
        out,
        "GET /registro/1.0/apps/{APP}?index={index}&wait={WAIT} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    );
}

/// The `Registro-Index` of an answer head, if it has a valid one.
pub fn index_of(head: &[u8]) -> Result<Option<u64>, String> {
    match header(head, "registro-index") {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| format!("bad Registro-Index {:?}", String::from_utf8_lossy(v))),
    }
}

/// What one change's fan-out saw.
#[derive(Debug, Clone, Default)]
pub struct Fanout {
    /// Watchers parked when the change was made.
    pub armed: usize,
    /// When each answer carrying a new index arrived.
    pub arrivals: Vec<Instant>,
    /// Watchers lost (closed, reset, bad or non-200 answers) since the last
    /// fan-out.
    pub errors: u64,
    pub first_error: Option<String>,
}

enum Cmd {
    /// Wait until every armed watcher has answered or `until`, and report
    /// the fan-out.
    Collect {
        until: Instant,
    },
    /// Send a new watch on every watcher answered, on the index it was given.
    Rearm,
    Stop,
}

enum Report {
    /// Every watcher connected and sent its first watch (or failed).
    Ready {
        connected: usize,
    },
    Fanout(Fanout),
    /// Re-armed: this many watchers are waiting.
    Armed(usize),
}

/// The watchers' thread, and the channels to it.
pub struct Watchers {
    cmd: Sender<Cmd>,
    reports: Receiver<Report>,
    handle: Option<JoinHandle<io::Result<()>>>,
    /// Watchers connected with a watch sent.
    pub connected: usize,
    /// Watchers waiting now.
    pub armed: usize,
}

impl Watchers {
    /// Connects `n` watchers to `addr` and sends each a watch on `index`;
    /// returns once all are connected (or failed).
    pub fn start(addr: SocketAddr, n: usize, index: u64) -> Result<Watchers, String> {
        let (cmd, cmds) = mpsc::channel();
        let (tx, reports) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("bench-watchers".into())
            .spawn(move || drive(addr, n, index, &cmds, &tx))
            .map_err(|e| format!("cannot start the watchers' thread: {e}"))?;
        let mut w = Watchers {
            cmd,
            reports,
            handle: Some(handle),
            connected: 0,
            armed: 0,
        };
        match w.reports.recv() {
            Ok(Report::Ready { connected }) => {
                w.connected = connected;
                w.armed = connected;
                Ok(w)
            }
            Ok(_) => Err("watchers: unexpected report".to_string()),
            Err(_) => Err(format!("watchers: {}", w.join_error())),
        }
    }

    /// The answers to one change, waiting for the last until `until`.
    pub fn collect(&mut self, until: Instant) -> Result<Fanout, String> {
        self.cmd
            .send(Cmd::Collect { until })
            .map_err(|_| format!("watchers: {}", self.join_error()))?;
        match self.reports.recv() {
            Ok(Report::Fanout(f)) => Ok(f),
            Ok(_) => Err("watchers: unexpected report".to_string()),
            Err(_) => Err(format!("watchers: {}", self.join_error())),
        }
    }

    /// Sends a new watch on every watcher answered, on the index it was
    /// given; `armed` then counts the watchers waiting.
    pub fn rearm(&mut self) -> Result<(), String> {
        self.cmd
            .send(Cmd::Rearm)
            .map_err(|_| format!("watchers: {}", self.join_error()))?;
        match self.reports.recv() {
            Ok(Report::Armed(n)) => {
                self.armed = n;
                Ok(())
            }
            Ok(_) => Err("watchers: unexpected report".to_string()),
            Err(_) => Err(format!("watchers: {}", self.join_error())),
        }
    }

    /// Closes every watcher and joins the thread.
    pub fn stop(mut self) -> Result<(), String> {
        let _ = self.cmd.send(Cmd::Stop);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => Err(format!("watchers: {e}")),
            Some(Err(_)) => Err("watchers: the thread panicked".to_string()),
            _ => Ok(()),
        }
    }

    /// Why the thread is gone.
    fn join_error(&mut self) -> String {
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e.to_string(),
            Some(Err(_)) => "the thread panicked".to_string(),
            _ => "the thread ended".to_string(),
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        let _ = self.cmd.send(Cmd::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    /// Its watch on `index` is in flight.
    Armed(u64),
    /// Answered with the new index `0`, waiting to be re-armed.
    Answered(u64),
    Dead,
}

struct Watcher {
    stream: Option<TcpStream>,
    state: State,
    buf: Vec<u8>,
}

/// What the loop has seen since the last fan-out.
#[derive(Default)]
struct Seen {
    fanout: Fanout,
    /// Watchers armed.
    armed: usize,
}

impl Seen {
    fn fail(&mut self, w: &mut Watcher, what: String) {
        if matches!(w.state, State::Armed(_)) {
            self.armed = self.armed.saturating_sub(1);
        }
        self.fanout.errors += 1;
        self.fanout.first_error.get_or_insert(what);
        w.stream = None;
        w.state = State::Dead;
    }
}

/// The watchers' thread.
fn drive(
    addr: SocketAddr,
    n: usize,
    index: u64,
    cmds: &Receiver<Cmd>,
    reports: &Sender<Report>,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut watchers: Vec<Watcher> = (0..n)
        .map(|_| Watcher {
            stream: None,
            state: State::Dead,
            buf: Vec::new(),
        })
        .collect();
    let mut seen = Seen::default();
    let mut request = Vec::with_capacity(128);

    // 1. Connect, `RAMP` at a time; each sends its watch once connected.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut next = 0;
    let mut opening = 0;
    while (next < n || opening > 0) && Instant::now() < deadline {
        while opening < RAMP && next < n {
            let w = &mut watchers[next];
            match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    poll.registry().register(
                        &mut stream,
                        Token(next),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    w.stream = Some(stream);
                    w.state = State::Connecting;
                    opening += 1;
                }
                Err(e) => seen.fail(w, format!("connect: {e}")),
            }
            next += 1;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let i = event.token().0;
            let w = &mut watchers[i];
            if w.state == State::Connecting {
                connected(w, index, &mut request, &mut seen);
                if w.state != State::Connecting {
                    opening -= 1;
                }
            }
            if matches!(w.state, State::Armed(_)) {
                read(w, &mut request, &mut seen);
            }
        }
    }
    let connected = seen.armed;
    if reports.send(Report::Ready { connected }).is_err() {
        return Ok(());
    }

    // 2. Answers as they come; fan-outs and re-arming on command.
    let mut collect_until: Option<Instant> = None;
    loop {
        if collect_until.is_none() {
            // Block only when nothing is waiting to be read.
            let cmd = if seen.armed == 0 {
                match cmds.recv_timeout(Duration::from_millis(100)) {
                    Ok(cmd) => Some(cmd),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            } else {
                match cmds.try_recv() {
                    Ok(cmd) => Some(cmd),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            };
            match cmd {
                Some(Cmd::Collect { until }) => collect_until = Some(until),
                Some(Cmd::Rearm) => {
                    for w in watchers.iter_mut() {
                        if let State::Answered(index) = w.state {
                            arm(w, index, &mut request, &mut seen);
                        }
                    }
                    if reports.send(Report::Armed(seen.armed)).is_err() {
                        return Ok(());
                    }
                }
                Some(Cmd::Stop) => return Ok(()),
                None => {}
            }
        }
        if let Some(until) = collect_until {
            if seen.armed == 0 || Instant::now() >= until {
                let fanout = std::mem::take(&mut seen.fanout);
                if reports.send(Report::Fanout(fanout)).is_err() {
                    return Ok(());
                }
                collect_until = None;
                continue;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(5)))?;
        for event in events.iter() {
            let w = &mut watchers[event.token().0];
            if matches!(w.state, State::Armed(_) | State::Answered(_)) {
                read(w, &mut request, &mut seen);
            }
        }
    }
}

/// A connect finished (or failed): send the first watch.
fn connected(w: &mut Watcher, index: u64, request: &mut Vec<u8>, seen: &mut Seen) {
    let Some(stream) = w.stream.as_ref() else {
        return;
    };
    match stream.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => return seen.fail(w, format!("connect: {e}")),
    }
    match stream.peer_addr() {
        Ok(_) => {
            let _ = stream.set_nodelay(true);
            arm(w, index, request, seen);
        }
        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
        Err(e) => seen.fail(w, format!("connect: {e}")),
    }
}

/// Sends a watch on `index`.
fn arm(w: &mut Watcher, index: u64, request: &mut Vec<u8>, seen: &mut Seen) {
    let Some(stream) = w.stream.as_mut() else {
        return;
    };
    push_watch(request, index);
    match stream.write(request) {
        Ok(n) if n == request.len() => {
            w.state = State::Armed(index);
            seen.armed += 1;
        }
        Ok(_) => seen.fail(w, "watch: short write".to_string()),
        Err(e) => seen.fail(w, format!("watch: send: {e}")),
    }
}

/// Reads what arrived on `w` and handles whole answers. A watcher expects
/// one answer at a time, so once the buffer ends with a whole one it stops
/// reading: the poller is edge-triggered, and new bytes raise a new event.
/// (One read a watcher instead of two matters when one thread reads 10,000.)
fn read(w: &mut Watcher, request: &mut Vec<u8>, seen: &mut Seen) {
    let mut chunk = [0u8; 4096];
    loop {
        let Some(stream) = w.stream.as_mut() else {
            return;
        };
        match stream.read(&mut chunk) {
            Ok(0) => {
                return seen.fail(w, "the server closed a watching connection".to_string());
            }
            Ok(n) => w.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return seen.fail(w, format!("read: {e}")),
        }
        let arrived = Instant::now();
        answers(w, arrived, request, seen);
        if w.state == State::Dead {
            return;
        }
        if w.buf.is_empty() {
            w.buf = Vec::new();
            return;
        }
    }
}

/// Handles the whole answers in `w`'s buffer.
fn answers(w: &mut Watcher, arrived: Instant, request: &mut Vec<u8>, seen: &mut Seen) {
    while let Some(end) = find(&w.buf, b"\r\n\r\n") {
        let head = match parse_head(&w.buf[..end]) {
            Ok(head) => head,
            Err(e) => return seen.fail(w, format!("answer: {e}")),
        };
        if head.chunked {
            return seen.fail(w, "answer: chunked (not expected)".to_string());
        }
        let body = head.content_length.unwrap_or(0);
        if w.buf.len() < end + 4 + body {
            return;
        }
        let index = match index_of(&w.buf[..end]) {
            Ok(Some(index)) => index,
            Ok(None) => return seen.fail(w, "answer: no Registro-Index".to_string()),
            Err(e) => return seen.fail(w, format!("answer: {e}")),
        };
        w.buf.drain(..end + 4 + body);
        if head.status != 200 {
            return seen.fail(w, format!("watch: status {}", head.status));
        }
        if head.close {
            return seen.fail(w, "the server closed a watching connection".to_string());
        }
        match w.state {
            // Its wait ran out with nothing changed: watch again.
            State::Armed(armed) if armed == index => {
                seen.armed -= 1;
                arm(w, index, request, seen);
            }
            State::Armed(_) => {
                seen.armed -= 1;
                seen.fanout.arrivals.push(arrived);
                w.state = State::Answered(index);
            }
            _ => return seen.fail(w, "an answer nobody asked for".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(head: &str, expected: Result<Option<u64>, ()>) {
        assert_eq!(
            index_of(head.as_bytes()).map_err(|_| ()),
            expected,
            "{head}"
        );
    }

    #[test]
    fn registro_index() {
        check(
            "HTTP/1.1 200 OK\r\nRegistro-Index: 42\r\nContent-Length: 2",
            Ok(Some(42)),
        );
        check("HTTP/1.1 200 OK\r\nregistro-index:7", Ok(Some(7)));
        check("HTTP/1.1 200 OK\r\nContent-Length: 2", Ok(None));
        // The status line is no header.
        check("Registro-Index: 1\r\nContent-Length: 2", Ok(None));
        check("HTTP/1.1 200 OK\r\nRegistro-Index: -1", Err(()));
        check("HTTP/1.1 200 OK\r\nRegistro-Index: many", Err(()));
    }

    #[test]
    fn watch_request() {
        let mut out = b"left over".to_vec();
        push_watch(&mut out, 12);
        assert_eq!(
            out,
            b"GET /registro/1.0/apps/watched?index=12&wait=60s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        );
    }
}
