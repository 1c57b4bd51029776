//! The load generator: the bench's fleet of instances and its requests,
//! pipelined registration, closed-loop heartbeats from a fixed set of
//! keep-alive (or fresh) connections, and a reader fetching the full listing
//! in a loop. Every loop here stops at a deadline and after a bounded number
//! of requests.

use crate::hist::Histogram;
use crate::http::{self, Conn};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Instances are spread round-robin over this many applications.
pub const APPS: usize = 8;
/// Registration: connections, and requests pipelined on each at a time.
pub const REG_CONNS: usize = 8;
pub const REG_DEPTH: usize = 8;
/// No thread sends more requests than this in one measurement.
const MAX_REQUESTS_PER_THREAD: u64 = 100_000_000;
/// A connection that fails this often in one measurement is given up.
const MAX_RECONNECTS: u32 = 1_000;

/// The instances of one benchmark: instance `i` (0 <= i < n) has id
/// `i-{i:07}` (9 bytes up to ten million), belongs to app `app-{i % APPS}`
/// and listens on port 8080 of a 10.x.y.z address.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// How many instances.
    pub n: usize,
    /// How many distinct addresses: 0 gives every instance its own (one
    /// pod, one IP); `h` puts instance `i` on host `i % h`.
    pub hosts: usize,
}

impl Fleet {
    /// `n` instances, each at its own address.
    pub fn new(n: usize) -> Fleet {
        Fleet { n, hosts: 0 }
    }
}

fn push_instance_path(out: &mut Vec<u8>, i: usize) {
    let _ = write!(out, "/registro/1.0/apps/app-{}/i-{i:07}", i % APPS);
}

/// `PUT /registro/1.0/apps/app-A/i-NNNNNNN`: one heartbeat.
pub fn push_heartbeat(out: &mut Vec<u8>, i: usize) {
    out.extend_from_slice(b"PUT ");
    push_instance_path(out, i);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
}

/// The same heartbeat from a client that will not reuse the connection,
/// as one without a pool says: the server closes first (so the TIME_WAIT
/// state, and its cost, stays with the server, as in production).
pub fn push_heartbeat_close(out: &mut Vec<u8>, i: usize) {
    out.extend_from_slice(b"PUT ");
    push_instance_path(out, i);
    out.extend_from_slice(
        b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

/// `POST /registro/1.0/apps/{app}` with a JSON `body`.
pub fn push_post(out: &mut Vec<u8>, app: &str, body: &str) {
    let _ = write!(
        out,
        "POST /registro/1.0/apps/{app} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// `POST /registro/1.0/apps/app-A` registering instance `i` of `fleet`.
pub fn push_register(out: &mut Vec<u8>, fleet: Fleet, i: usize) {
    let host = if fleet.hosts == 0 { i } else { i % fleet.hosts };
    let body = format!(
        r#"{{"id":"i-{i:07}","ip":"10.{}.{}.{}","port":8080}}"#,
        (host >> 16) & 255,
        (host >> 8) & 255,
        host & 255
    );
    push_post(out, &format!("app-{}", i % APPS), &body);
}

/// The full listing of every application and instance.
pub const LISTING: &[u8] = b"GET /registro/1.0/apps HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Sends one request on a new connection and returns the status and body length.
pub fn request_once(addr: SocketAddr, request: &[u8]) -> io::Result<(u16, usize)> {
    let mut conn = Conn::connect(addr)?;
    conn.send(request)?;
    let r = conn.read_response()?;
    Ok((r.status, r.body))
}

/// Creates the apps `names` (201; 409, it exists already, is fine too).
pub fn create_apps(
    addr: SocketAddr,
    names: impl IntoIterator<Item = String>,
) -> Result<(), String> {
    for name in names {
        let body = format!(r#"{{"name":"{name}"}}"#);
        match http::call(addr, "POST", "/registro/1.0/apps", Some(&body))? {
            (201 | 409, _, _) => {}
            (status, _, text) => return Err(format!("create {name}: status {status}: {text}")),
        }
    }
    Ok(())
}

/// Registers `fleet` (creating its apps first) over `REG_CONNS` keep-alive
/// connections, each pipelining `REG_DEPTH` requests at a time. Every
/// answer must be 201. Returns how long the instances took.
pub fn register(addr: SocketAddr, fleet: Fleet) -> Result<Duration, String> {
    create_apps(addr, (0..APPS.min(fleet.n)).map(|a| format!("app-{a}")))?;
    let push = |out: &mut Vec<u8>, i| push_register(out, fleet, i);
    Ok(pipelined(&[addr], 0..fleet.n, REG_CONNS, REG_DEPTH, 201, push)?.0)
}

/// Renews every instance of `fleet` once, pipelined like `register`, so
/// that all are `up` (a first heartbeat is also a status change the
/// server logs; later ones are the steady state being measured).
pub fn renew_all(addr: SocketAddr, fleet: Fleet) -> Result<Duration, String> {
    Ok(pipelined(
        &[addr],
        0..fleet.n,
        REG_CONNS,
        REG_DEPTH,
        204,
        push_heartbeat,
    )?
    .0)
}

/// Sends the request `push` writes for each instance of `range`, over
/// `conns` connections to each of `addrs`, each pipelining `depth` at a
/// time; every answer must be `expected`, but a 503 (a store's bound on
/// changes in flight, as etcd's) is sent again later, as a client does.
/// Returns how long it took and how many 503s were sent again.
pub fn pipelined(
    addrs: &[SocketAddr],
    range: Range<usize>,
    conns: usize,
    depth: usize,
    expected: u16,
    push: impl Fn(&mut Vec<u8>, usize) + Sync,
) -> Result<(Duration, u64), String> {
    let start = Instant::now();
    let failed = AtomicBool::new(false);
    let retried = AtomicU64::new(0);
    let stride = (conns * addrs.len()).clamp(1, range.len().max(1));
    let part = |t: usize| -> Result<(), String> {
        let addr = addrs[t % addrs.len()];
        let mut conn = Conn::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let mut pending: std::collections::VecDeque<usize> =
            (range.start + t..range.end).step_by(stride).collect();
        let limit = 100 * pending.len() as u64 + 1000;
        let (mut buf, mut batch, mut tries) = (Vec::new(), Vec::new(), 0u64);
        while !pending.is_empty() && !failed.load(Ordering::Relaxed) {
            buf.clear();
            batch.clear();
            while batch.len() < depth.max(1) {
                let Some(i) = pending.pop_front() else { break };
                push(&mut buf, i);
                batch.push(i);
            }
            conn.send(&buf).map_err(|e| format!("send: {e}"))?;
            for &i in &batch {
                let r = conn
                    .read_response()
                    .map_err(|e| format!("i-{i:07} through {addr}: {e}"))?;
                if r.status == 503 && tries < limit {
                    pending.push_back(i);
                    retried.fetch_add(1, Ordering::Relaxed);
                    tries += 1;
                } else if r.status != expected {
                    return Err(format!(
                        "i-{i:07} through {addr}: status {} (expected {expected})",
                        r.status
                    ));
                }
            }
        }
        Ok(())
    };
    let results: Vec<Result<(), String>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..stride)
            .map(|t| {
                let (part, failed) = (&part, &failed);
                scope.spawn(move || {
                    let r = part(t);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a pipelining thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect::<Result<(), String>>()?;
    Ok((start.elapsed(), retried.load(Ordering::Relaxed)))
}

/// One heartbeat measurement.
#[derive(Debug, Clone)]
pub struct Load {
    /// The servers: connection `j` goes to `addrs[j % addrs.len()]`.
    pub addrs: Vec<SocketAddr>,
    /// The instances to renew, round-robin.
    pub fleet: Fleet,
    /// Concurrent connections (each has one request in flight).
    pub conns: usize,
    /// Connections driven by each load thread.
    pub per_thread: usize,
    /// How long to measure.
    pub duration: Duration,
    /// A new TCP connection for every request.
    pub fresh: bool,
    /// Where in the fleet the round-robin starts.
    pub offset: usize,
    /// Keep every request's start and latency (for the sweep scenario).
    pub samples: bool,
    /// Ends the measurement before `duration` when set.
    pub stop: Option<Arc<AtomicBool>>,
    /// Receives the instant the measurement started (after connecting).
    pub started: Option<Arc<OnceLock<Instant>>>,
}

impl Load {
    /// Closed-loop heartbeats on `conns` keep-alive connections to `addr`
    /// over the first `n` instances, for `duration`.
    pub fn heartbeats(
        addr: SocketAddr,
        n: usize,
        conns: usize,
        per_thread: usize,
        duration: Duration,
    ) -> Load {
        Load {
            addrs: vec![addr],
            fleet: Fleet::new(n),
            conns,
            per_thread,
            duration,
            fresh: false,
            offset: 0,
            samples: false,
            stop: None,
            started: None,
        }
    }

    fn addr(&self, conn: usize) -> SocketAddr {
        self.addrs[conn % self.addrs.len()]
    }
}

/// One request: when it started (µs after `Outcome::base`) and its latency (µs).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Start, in µs after the measurement's base instant.
    pub start_us: u64,
    /// Latency in µs.
    pub latency_us: u64,
}

/// What one measurement saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Latencies of the successful requests.
    pub hist: Histogram,
    /// Requests answered with the expected status.
    pub ok: u64,
    /// Requests that failed or got another status.
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// From the start signal to the last thread's end.
    pub elapsed: Duration,
    /// Every request, when `Load::samples` was set.
    pub samples: Vec<Sample>,
    /// CPU seconds the server and the load generator used meanwhile.
    pub server_cpu: f64,
    pub client_cpu: f64,
}

impl Outcome {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: Outcome) {
        self.hist.merge(&other.hist);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.samples.extend(other.samples);
    }
}

/// Runs `load` and returns what it saw. `base` is the instant sample
/// starts are measured from.
pub fn run(load: &Load, base: Instant) -> Outcome {
    let mut total = Outcome::default();
    // Connections are opened (and, for keep-alive, warmed with one
    // unmeasured heartbeat) one at a time before the clock starts: a burst of
    // simultaneous connects can leave a connection unserved for a while in
    // some servers (tiny_http's pool hands a burst of new connections to too
    // few threads), which is not what this scenario measures.
    let mut buf = Vec::with_capacity(128);
    let mut conns: Vec<Option<Conn>> = (0..load.conns)
        .map(|id| {
            let opened = Conn::connect(load.addr(id)).and_then(|mut conn| {
                if !load.fresh {
                    buf.clear();
                    push_heartbeat(&mut buf, (load.offset + id) % load.fleet.n.max(1));
                    conn.send(&buf)?;
                    conn.read_response()?;
                }
                Ok(conn)
            });
            opened
                .map_err(|e| {
                    total.errors += 1;
                    total.first_error.get_or_insert(format!("connect: {e}"));
                })
                .ok()
        })
        .collect();
    let per_thread = load.per_thread.max(1);
    let threads = load.conns.div_ceil(per_thread).max(1);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<JoinHandle<(Outcome, Instant)>> = (0..threads)
        .map(|t| {
            let first = t * per_thread;
            let ids: Vec<usize> = (first..(first + per_thread).min(load.conns)).collect();
            let mine: Vec<_> = conns.drain(..ids.len().min(conns.len())).collect();
            let load = load.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || worker(&load, &ids, mine, &barrier, base))
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    if let Some(started) = &load.started {
        let _ = started.set(start);
    }
    let mut end = start;
    for w in workers {
        match w.join() {
            Ok((outcome, finished)) => {
                total.merge(outcome);
                end = end.max(finished);
            }
            Err(_) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| "load thread panicked".to_string());
            }
        }
    }
    total.elapsed = end.duration_since(start);
    total
}

/// Drives connections `conns` (number `ids`, each renewing instances
/// `offset + id + k * conns`) until the deadline.
fn worker(
    load: &Load,
    ids: &[usize],
    mut conns: Vec<Option<Conn>>,
    barrier: &Barrier,
    base: Instant,
) -> (Outcome, Instant) {
    let mut out = Outcome::default();
    let fail = |out: &mut Outcome, e: String| {
        out.errors += 1;
        out.first_error.get_or_insert(e);
    };
    let mut reconnects = 0u32;
    // Past the warm-up heartbeat.
    let mut next: Vec<usize> = ids
        .iter()
        .map(|&id| load.offset + id + load.conns)
        .collect();
    let mut sent_at = vec![Instant::now(); ids.len()];
    let mut in_flight = vec![false; ids.len()];
    let mut buf = Vec::with_capacity(128);
    let n = load.fleet.n.max(1);
    let mut requests = 0u64;

    barrier.wait();
    let deadline = Instant::now() + load.duration;
    // Each connection is re-armed as soon as its answer is read, so every
    // connection has a request in flight nearly all the time; after the
    // deadline the answers still in flight are read and nothing is sent.
    let mut sending = true;
    loop {
        for (j, slot) in conns.iter_mut().enumerate() {
            if in_flight[j] {
                in_flight[j] = false;
                let Some(conn) = slot.as_mut() else { continue };
                let addr = load.addr(ids[j]);
                match conn.read_response() {
                    Ok(r) => {
                        let done = Instant::now();
                        if r.status == 204 {
                            let latency_us = done.duration_since(sent_at[j]).as_micros() as u64;
                            out.ok += 1;
                            out.hist.record(latency_us);
                            if load.samples {
                                let start_us = sent_at[j].duration_since(base).as_micros() as u64;
                                out.samples.push(Sample {
                                    start_us,
                                    latency_us,
                                });
                            }
                        } else {
                            fail(
                                &mut out,
                                format!("heartbeat: status {} (expected 204)", r.status),
                            );
                        }
                        if load.fresh {
                            // Let the server close first; a failure here is
                            // the next connect's problem.
                            let _ = conn.wait_eof();
                        } else if r.close {
                            reconnect(slot, addr, &mut reconnects, &mut out);
                        }
                    }
                    Err(e) => {
                        fail(&mut out, format!("heartbeat: {e}"));
                        if !load.fresh {
                            reconnect(slot, addr, &mut reconnects, &mut out);
                        }
                    }
                }
            }
            if !sending {
                continue;
            }
            let Some(conn) = slot.as_mut() else { continue };
            sent_at[j] = Instant::now();
            if load.fresh {
                if let Err(e) = conn.reconnect(load.addr(ids[j])) {
                    fail(&mut out, format!("connect: {e}"));
                    continue;
                }
            }
            buf.clear();
            if load.fresh {
                push_heartbeat_close(&mut buf, next[j] % n);
            } else {
                push_heartbeat(&mut buf, next[j] % n);
            }
            next[j] += load.conns;
            requests += 1;
            match conn.send(&buf) {
                Ok(()) => in_flight[j] = true,
                Err(e) => {
                    fail(&mut out, format!("send: {e}"));
                    reconnect(slot, load.addr(ids[j]), &mut reconnects, &mut out);
                }
            }
        }
        let stopped = load
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed));
        if sending && (stopped || requests >= MAX_REQUESTS_PER_THREAD || Instant::now() >= deadline)
        {
            sending = false;
        }
        if !in_flight.iter().any(|&f| f) && (!sending || conns.iter().all(Option::is_none)) {
            break;
        }
    }
    (out, Instant::now())
}

/// Replaces a broken connection, giving up after `MAX_RECONNECTS`.
fn reconnect(slot: &mut Option<Conn>, addr: SocketAddr, count: &mut u32, out: &mut Outcome) {
    *count += 1;
    let ok = *count <= MAX_RECONNECTS && slot.as_mut().is_some_and(|c| c.reconnect(addr).is_ok());
    if !ok {
        out.errors += 1;
        out.first_error
            .get_or_insert_with(|| "reconnect failed".to_string());
        *slot = None;
    }
}

/// What the listing reader saw.
#[derive(Debug, Clone, Default)]
pub struct ReaderOutcome {
    /// Full listings read.
    pub listings: u64,
    /// Bytes of the last listing.
    pub bytes: usize,
    /// Failed listings.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Latency of each listing.
    pub hist: Histogram,
}

/// A thread fetching the full listing in a loop until stopped.
pub struct Reader {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ReaderOutcome>,
}

impl Reader {
    /// Starts fetching; it stops by itself after `limit`.
    pub fn start(addr: SocketAddr, limit: Duration) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || read_listings(addr, &flag, Instant::now() + limit));
        Reader { stop, handle }
    }

    /// Stops the loop after the listing in flight and returns what it saw.
    pub fn finish(self) -> ReaderOutcome {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| ReaderOutcome {
            errors: 1,
            first_error: Some("reader thread panicked".to_string()),
            ..ReaderOutcome::default()
        })
    }
}

fn read_listings(addr: SocketAddr, stop: &AtomicBool, deadline: Instant) -> ReaderOutcome {
    let mut out = ReaderOutcome::default();
    let mut conn = match Conn::connect(addr) {
        Ok(c) => c,
        Err(e) => {
            out.errors = 1;
            out.first_error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && out.listings < 1_000_000 {
        let t = Instant::now();
        let result = conn.send(LISTING).and_then(|()| conn.read_response());
        match result {
            Ok(r) if r.status == 200 => {
                out.listings += 1;
                out.bytes = r.body;
                out.hist.record(t.elapsed().as_micros() as u64);
            }
            other => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| match other {
                    Ok(r) => format!("listing: status {} (expected 200)", r.status),
                    Err(e) => format!("listing: {e}"),
                });
                failures += 1;
                if failures > MAX_RECONNECTS || conn.reconnect(addr).is_err() {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_well_formed() {
        let mut b = Vec::new();
        push_heartbeat(&mut b, 1_234_567);
        assert_eq!(
            String::from_utf8_lossy(&b),
            "PUT /registro/1.0/apps/app-7/i-1234567 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        );
        b.clear();
        push_register(&mut b, Fleet::new(300), 258);
        let body = r#"{"id":"i-0000258","ip":"10.0.1.2","port":8080}"#;
        assert_eq!(
            String::from_utf8_lossy(&b),
            format!(
                "POST /registro/1.0/apps/app-2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        );
    }
}
