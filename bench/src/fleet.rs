//! Scenario "fleet" (issue 9): N clients, each with its own keep-alive
//! connection and instance, heartbeating every few seconds with jitter, as a
//! real fleet does. One thread drives every connection through a readiness
//! poller (mio), so the load generator needs no thread per connection.

use crate::hist::Histogram;
use crate::http::{find, parse_head};
use crate::load::push_heartbeat;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How the fleet behaves.
#[derive(Debug, Clone, Copy)]
pub struct FleetLoad {
    /// Clients (connections and instances).
    pub n: usize,
    /// Mean time between two heartbeats of one client.
    pub interval: Duration,
    /// Each interval is drawn uniformly within +/- this fraction of it.
    pub jitter: f64,
    /// How long the heartbeats are measured, once every client is connected.
    pub duration: Duration,
    /// Connections being opened at once during the ramp.
    pub ramp: usize,
}

/// What the fleet saw, and what the server looked like meanwhile.
#[derive(Debug, Clone, Default)]
pub struct FleetOutcome {
    /// Clients asked for, and connected (each answered once) before measuring.
    pub n: usize,
    pub connected: usize,
    /// How long connecting and the first heartbeat of every client took.
    pub ramp: Duration,
    /// Latencies of the measured heartbeats (µs).
    pub hist: Histogram,
    /// Heartbeats answered 2xx.
    pub ok: u64,
    /// Heartbeats answered with another status.
    pub non_2xx: u64,
    /// Transport errors: refused, reset or closed connections, bad answers.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Errors by kind (their message up to the first digit).
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Server threads before the fleet connected, with every client
    /// connected, and at the end.
    pub threads: [u64; 3],
    /// Server resident bytes before the fleet connected, and with every
    /// client connected and idle.
    pub rss_before: u64,
    pub rss_connected: u64,
    pub rss_end: u64,
}

impl FleetOutcome {
    /// Resident bytes per connection.
    pub fn per_connection(&self) -> f64 {
        self.rss_connected.saturating_sub(self.rss_before) as f64 / self.connected.max(1) as f64
    }

    /// Heartbeats answered per second.
    pub fn rate(&self) -> f64 {
        (self.ok + self.non_2xx) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Connecting,
    /// A heartbeat is in flight since `at`; `warm` ones are not measured.
    Sent {
        at: Instant,
        warm: bool,
    },
    Idle,
    Dead,
}

struct Client {
    stream: Option<TcpStream>,
    state: State,
    buf: Vec<u8>,
    /// When its next heartbeat is due (measured phase).
    next: Instant,
}

/// A xorshift generator: jitter needs no quality, only spread.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Raises this process's soft limit on open files to the hard limit.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// `/proc/PID/status` field `Threads:`.
pub fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs the fleet against `addr` (instances `0..n` registered already);
/// `rss` reads the server's resident bytes.
pub fn run(
    addr: SocketAddr,
    pid: u32,
    load: FleetLoad,
    rss: &dyn Fn() -> u64,
) -> io::Result<FleetOutcome> {
    let mut out = FleetOutcome {
        n: load.n,
        ..FleetOutcome::default()
    };
    out.threads[0] = threads(pid);
    out.rss_before = rss();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut clients: Vec<Client> = (0..load.n)
        .map(|_| Client {
            stream: None,
            state: State::Waiting,
            buf: Vec::new(),
            next: Instant::now(),
        })
        .collect();
    let mut request = Vec::with_capacity(128);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let fail = |out: &mut FleetOutcome, what: String| note(out, what);

    // 1. The ramp: every client connects and sends one unmeasured
    //    heartbeat, `ramp` connections at a time.
    let began = Instant::now();
    let ramp_deadline = began + Duration::from_secs(120);
    let mut next_to_open = 0;
    let mut opening = 0;
    let mut settled = 0;
    while settled < load.n && Instant::now() < ramp_deadline {
        while opening < load.ramp && next_to_open < load.n {
            let i = next_to_open;
            next_to_open += 1;
            match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    poll.registry().register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    clients[i].stream = Some(stream);
                    clients[i].state = State::Connecting;
                    opening += 1;
                }
                Err(e) => {
                    fail(&mut out, format!("connect: {e}"));
                    clients[i].state = State::Dead;
                    settled += 1;
                }
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for event in events.iter() {
            let i = event.token().0;
            let before = clients[i].state;
            drive(&mut clients[i], i, &mut request, &mut out, None);
            let after = clients[i].state;
            if before != after && matches!(after, State::Idle | State::Dead) {
                opening -= 1;
                settled += 1;
                if after == State::Idle {
                    out.connected += 1;
                }
            }
        }
    }
    out.ramp = began.elapsed();
    out.threads[1] = threads(pid);
    out.rss_connected = rss();

    // 2. The measured window: each client's first heartbeat at a random
    //    moment of the first interval, then one per interval with jitter.
    let start = Instant::now();
    let end = start + load.duration;
    let mut timers = BinaryHeap::new();
    for (i, c) in clients.iter_mut().enumerate() {
        if c.state == State::Idle {
            c.next = start + load.interval.mul_f64(rng.unit());
            timers.push(Reverse((c.next, i)));
        }
    }
    let mut in_flight = 0usize;
    loop {
        let now = Instant::now();
        while let Some(&Reverse((at, i))) = timers.peek() {
            if at > now {
                break;
            }
            timers.pop();
            if at >= end {
                continue;
            }
            let c = &mut clients[i];
            if c.state != State::Idle {
                continue; // still waiting for its last answer: skip a beat
            }
            send(c, i, &mut request, &mut out, false);
            if matches!(c.state, State::Sent { .. }) {
                in_flight += 1;
            }
            let spread = 1.0 + load.jitter * (2.0 * rng.unit() - 1.0);
            c.next = at + load.interval.mul_f64(spread);
            timers.push(Reverse((c.next, i)));
        }
        if now >= end && (in_flight == 0 || now >= end + Duration::from_secs(10)) {
            break;
        }
        let wait = timers
            .peek()
            .map_or(Duration::from_millis(100), |Reverse((at, _))| {
                at.saturating_duration_since(now)
            })
            .min(Duration::from_millis(100));
        poll.poll(&mut events, Some(wait))?;
        for event in events.iter() {
            let i = event.token().0;
            let was_sent = matches!(clients[i].state, State::Sent { .. });
            drive(&mut clients[i], i, &mut request, &mut out, Some(start));
            if was_sent && !matches!(clients[i].state, State::Sent { .. }) {
                in_flight = in_flight.saturating_sub(1);
            }
        }
    }
    out.elapsed = end.min(Instant::now()).duration_since(start);
    out.threads[2] = threads(pid);
    out.rss_end = rss();
    if in_flight > 0 {
        fail(
            &mut out,
            format!("{in_flight} heartbeats unanswered 10 s after the end"),
        );
        out.errors += in_flight as u64 - 1;
    }
    Ok(out)
}

/// Sends client `i`'s heartbeat.
fn send(c: &mut Client, i: usize, request: &mut Vec<u8>, out: &mut FleetOutcome, warm: bool) {
    let Some(stream) = c.stream.as_mut() else {
        return;
    };
    request.clear();
    push_heartbeat(request, i);
    match stream.write(request) {
        Ok(n) if n == request.len() => {
            c.state = State::Sent {
                at: Instant::now(),
                warm,
            }
        }
        Ok(_) => die(c, out, "heartbeat: short write".to_string()),
        Err(e) => die(c, out, format!("heartbeat: send: {e}")),
    }
}

fn note(out: &mut FleetOutcome, what: String) {
    out.errors += 1;
    let kind: String = what.chars().take_while(|c| !c.is_ascii_digit()).collect();
    *out.error_kinds.entry(kind).or_default() += 1;
    out.first_error.get_or_insert(what);
}

fn die(c: &mut Client, out: &mut FleetOutcome, what: String) {
    note(out, what);
    c.stream = None;
    c.state = State::Dead;
}

/// Handles readiness on client `i`: a finished connect, or answers.
fn drive(
    c: &mut Client,
    i: usize,
    request: &mut Vec<u8>,
    out: &mut FleetOutcome,
    measured_since: Option<Instant>,
) {
    if c.state == State::Connecting {
        let Some(stream) = c.stream.as_ref() else {
            return;
        };
        match stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return die(c, out, format!("connect: {e}")),
        }
        match stream.peer_addr() {
            Ok(_) => {
                let _ = stream.set_nodelay(true);
                send(c, i, request, out, true);
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return die(c, out, format!("connect: {e}")),
        }
    }
    let Some(stream) = c.stream.as_mut() else {
        return;
    };
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                return die(
                    c,
                    out,
                    "the server closed a keep-alive connection".to_string(),
                );
            }
            Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return die(c, out, format!("read: {e}")),
        }
    }
    // Whole answers in the buffer.
    while let Some(end) = find(&c.buf, b"\r\n\r\n") {
        let head = match parse_head(&c.buf[..end]) {
            Ok(head) => head,
            Err(e) => return die(c, out, format!("answer: {e}")),
        };
        let body = head.content_length.unwrap_or(0);
        if c.buf.len() < end + 4 + body {
            return;
        }
        c.buf.drain(..end + 4 + body);
        let State::Sent { at, warm } = c.state else {
            return die(c, out, "an answer nobody asked for".to_string());
        };
        c.state = State::Idle;
        c.buf = Vec::new();
        if !warm && measured_since.is_some() {
            if (200..300).contains(&head.status) {
                out.ok += 1;
                out.hist.record(at.elapsed().as_micros() as u64);
            } else {
                out.non_2xx += 1;
                out.first_error
                    .get_or_insert(format!("heartbeat: status {}", head.status));
            }
        } else if warm && !(200..300).contains(&head.status) {
            return die(c, out, format!("first heartbeat: status {}", head.status));
        }
        if head.close {
            return die(
                c,
                out,
                "the server closed a keep-alive connection".to_string(),
            );
        }
    }
}
