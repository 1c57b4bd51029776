//! Scenario "fleet": N clients (as many as the open-files limit allows),
//! each with its own keep-alive connection and instance, heartbeating every
//! few seconds with jitter (+/- 10%), as a real fleet does. One thread
//! drives every connection through a readiness poller (mio), so the load
//! generator needs no thread per connection.

use crate::hist::Histogram;
use crate::http;
use crate::load::{push_heartbeat, Fleet};
use crate::proc::ServerProc;
use crate::report::{bytes, count, ms, Section, Verdict};
use crate::{connections_allowed, poller, Bench};
use mio::net::TcpStream;
use mio::{Events, Poll};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// The fleet the targets are stated for.
const TARGET_FLEET: usize = 15_000;

/// Runs the fleet against the server under test and returns its section.
pub fn run(bench: &mut Bench) -> Result<String, String> {
    let s = bench.s.clone();
    let n = connections_allowed(s.fleet_n, 100_000, "the fleet of")?;
    let max = (n + 1000).to_string();
    // As Go's net/http keeps idle connections: longer than the ramp.
    let idle = (s.fleet_interval * 4.0).max(90.0).to_string();
    let flags = ["--max-connections", &max, "--idle-timeout", &idle];
    let server = bench.start(0, "registro-fleet", &flags)?;
    bench.fill(0, &server, Fleet::new(n), true)?;
    let load = FleetLoad {
        n,
        interval: Duration::from_secs_f64(s.fleet_interval),
        jitter: 0.1,
        duration: Duration::from_secs_f64(s.fleet_secs),
        ramp: poller::RAMP,
    };
    bench.progress(format_args!(
        "fleet: {} clients, one heartbeat each every {} s (+/- 10%), {} s",
        count(n),
        s.fleet_interval,
        s.fleet_secs
    ));
    let o = drive_fleet(&server, load).map_err(|e| format!("fleet: {e}"));
    bench.stop(server);
    let o = o?;
    bench.progress(format_args!(
        "fleet: {} of {} connected in {:.1} s; {}{}",
        count(o.connected),
        count(o.n),
        o.ramp.as_secs_f64(),
        o.first_error
            .as_deref()
            .map_or("no errors".into(), |e| format!("first error: {e}")),
        o.error_kinds
            .iter()
            .map(|(k, n)| format!("; {n} x {k:?}"))
            .collect::<String>()
    ));
    Ok(render(&o))
}

fn render(o: &FleetOutcome) -> String {
    let mut sec = Section::new("");
    sec.text(format_args!(
        "Fleet: {} clients, each with its own keep-alive connection and instance, one load-generator thread; \
         {} connected in {:.1} s, then heartbeats for {:.1} s.",
        count(o.n),
        count(o.connected),
        o.ramp.as_secs_f64(),
        o.elapsed.as_secs_f64()
    ));
    sec.table(&[
        "heartbeats",
        "per second",
        "p50",
        "p99",
        "max",
        "non-2xx",
        "errors",
        "server threads (before / connected / end)",
        "resident before -> connected",
        "per connection",
    ]);
    let threads = format!("{} / {} / {}", o.threads[0], o.threads[1], o.threads[2]);
    sec.row(&[
        &count(o.ok + o.non_2xx),
        &count(o.rate() as u64),
        &ms(o.hist.quantile(0.5)),
        &ms(o.hist.quantile(0.99)),
        &ms(o.hist.max()),
        &o.non_2xx,
        &o.errors,
        &threads,
        &format_args!("{} -> {}", bytes(o.rss_before), bytes(o.rss_connected)),
        &format_args!("{:.0} B", o.per_connection()),
    ]);
    let p99 = o.hist.quantile(0.99) as f64;
    let clean = o.errors == 0 && o.non_2xx == 0;
    sec.target(
        "Fleet >= 15,000 connections, 0 errors, 0 non-2xx",
        format_args!(
            "{} connected, {} errors, {} non-2xx",
            count(o.connected),
            o.errors,
            o.non_2xx
        ),
        // A smaller fleet asked for (`--quick`, `--fleet`) shows errors, not the size.
        Verdict::of(o.connected >= TARGET_FLEET && clean).at_size(o.n >= TARGET_FLEET || !clean),
    );
    sec.target(
        "Fleet heartbeat p99 < 10 ms",
        ms(p99 as u64),
        Verdict::check(p99, |p| p < 10_000.0),
    );
    sec.target(
        "Server threads independent of connections",
        &threads,
        Verdict::of(o.threads[0] == o.threads[1] && o.threads[1] == o.threads[2]),
    );
    sec.target(
        "At most 2 KiB resident per idle connection",
        format_args!("{:.0} B", o.per_connection()),
        Verdict::of(o.per_connection() <= 2048.0),
    );
    sec.finish()
}

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

/// Drives the fleet against `server` (instances `0..n` registered).
fn drive_fleet(server: &ServerProc, load: FleetLoad) -> io::Result<FleetOutcome> {
    let addr = server.addr;
    let rss = || server.rss().unwrap_or(0);
    let mut out = FleetOutcome {
        n: load.n,
        ..FleetOutcome::default()
    };
    out.threads[0] = server.threads();
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
            match poller::open(&poll, addr, i) {
                Ok(stream) => {
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
    out.threads[1] = server.threads();
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
    out.threads[2] = server.threads();
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
        match c.stream.as_ref().map(poller::connected) {
            Some(Ok(true)) => send(c, i, request, out, true),
            Some(Err(e)) => return die(c, out, format!("connect: {e}")),
            _ => return,
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
    loop {
        let head = match http::head(&c.buf) {
            Ok(Some(head)) if c.buf.len() >= head.len + head.body => head,
            Ok(_) => return,
            Err(e) => return die(c, out, format!("answer: {e}")),
        };
        c.buf.drain(..head.len + head.body);
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
