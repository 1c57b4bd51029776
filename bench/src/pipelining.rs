//! Scenario "pipelining": 16 connections each keep 2,000
//! pipelined `GET /healthz` in flight (written 2,000 at a time, the answers
//! drained and counted by another thread), beside heartbeats on fresh
//! connections and 1,000 keep-alive clients. Each round measures the
//! heartbeats twice against the same server, without the pipelining
//! connections and then with them, so the ratio compares back to back.
//! Targets: fresh-connection heartbeats p99 < 20 ms, keep-alive heartbeats
//! at least half their rate without the pipelining connections.

use crate::hist::Histogram;
use crate::load::{self, Fleet, Load, Outcome};
use crate::report::{count, median, ms, times, Section, Verdict};
use crate::Bench;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Pipelining connections, requests in flight on each, keep-alive clients.
pub const PIPELINERS: usize = 16;
const IN_FLIGHT: usize = 2_000;
pub const KEEP_ALIVE: usize = 1_000;
/// Instances the heartbeats renew.
pub const INSTANCES: usize = 10_000;
const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// One round: the heartbeats alone, then beside the pipelining connections.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub alone_keep_alive: Outcome,
    pub alone_fresh: Outcome,
    pub with_keep_alive: Outcome,
    pub with_fresh: Outcome,
    /// Pipelined requests answered while the heartbeats were measured.
    pub pipelined: u64,
    pub pipelined_secs: f64,
}

impl Round {
    /// Keep-alive heartbeats per second beside the pipelining connections,
    /// over the rate without them.
    pub fn keep_alive_ratio(&self) -> f64 {
        self.with_keep_alive.rate() / self.alone_keep_alive.rate().max(1e-9)
    }
}

/// Runs one round against the server at `addr` (instances `0..INSTANCES`
/// registered): the two measurements of `secs` each.
pub fn round(addr: SocketAddr, secs: Duration, keep_alive: usize) -> Result<Round, String> {
    let (alone_keep_alive, alone_fresh) = heartbeats(addr, secs, keep_alive);
    let pipes = Pipelining::start(addr)?;
    let answered_before = pipes.answered();
    let t = Instant::now();
    let (with_keep_alive, with_fresh) = heartbeats(addr, secs, keep_alive);
    let pipelined = pipes.answered() - answered_before;
    let pipelined_secs = t.elapsed().as_secs_f64();
    pipes.stop();
    Ok(Round {
        alone_keep_alive,
        alone_fresh,
        with_keep_alive,
        with_fresh,
        pipelined,
        pipelined_secs,
    })
}

/// Keep-alive and fresh-connection heartbeats at once, for `secs`.
fn heartbeats(addr: SocketAddr, secs: Duration, keep_alive: usize) -> (Outcome, Outcome) {
    let mut fresh = Load::heartbeats(addr, INSTANCES, 2, 2, secs);
    (fresh.fresh, fresh.offset) = (true, INSTANCES / 2);
    let fresh = thread::spawn(move || load::run(&fresh, Instant::now()));
    let kept = Load::heartbeats(addr, INSTANCES, keep_alive, 50, secs);
    let kept = load::run(&kept, Instant::now());
    (kept, fresh.join().unwrap_or_default())
}

/// The pipelining connections: a writer and a reader thread each.
struct Pipelining {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Pipelining {
    /// Opens the connections and returns once each has had answers.
    fn start(addr: SocketAddr) -> Result<Pipelining, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let batch = REQUEST.repeat(IN_FLIGHT);
        let mut threads = Vec::new();
        let mut started = Vec::new();
        for _ in 0..PIPELINERS {
            let writer =
                TcpStream::connect(addr).map_err(|e| format!("pipelining connect: {e}"))?;
            let _ = writer.set_nodelay(true);
            let reader = writer.try_clone().map_err(|e| format!("pipelining: {e}"))?;
            // Answers counted on this connection, for its writer.
            let got = Arc::new((Mutex::new(0u64), Condvar::new()));
            started.push(Arc::clone(&got));
            let (stop_w, got_w, batch) = (Arc::clone(&stop), Arc::clone(&got), batch.clone());
            threads.push(thread::spawn(move || {
                write(writer, &batch, &got_w, &stop_w)
            }));
            let (stop_r, total) = (Arc::clone(&stop), Arc::clone(&answered));
            threads.push(thread::spawn(move || read(reader, &got, &total, &stop_r)));
        }
        let pipes = Pipelining {
            stop,
            answered,
            threads,
        };
        // Under way: each has had answers, or 5 s have passed (a server
        // that lets some connections hold every worker never answers the
        // others).
        let deadline = Instant::now() + Duration::from_secs(5);
        for got in started {
            let (lock, cv) = &*got;
            let mut n = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while *n == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                n = cv
                    .wait_timeout(n, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        Ok(pipes)
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Writes a batch whenever no more than `IN_FLIGHT` requests are unanswered.
fn write(mut stream: TcpStream, batch: &[u8], got: &(Mutex<u64>, Condvar), stop: &AtomicBool) {
    let mut sent = 0u64;
    'run: while !stop.load(Ordering::SeqCst) {
        {
            let (lock, cv) = got;
            let mut n = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while sent > *n + IN_FLIGHT as u64 {
                if stop.load(Ordering::SeqCst) {
                    break 'run;
                }
                n = cv
                    .wait_timeout(n, Duration::from_millis(50))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        if stream.write_all(batch).is_err() {
            break;
        }
        sent += IN_FLIGHT as u64;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Drains the answers, counting them, until the server closes (after the
/// writer's end of file) or the connection fails.
fn read(mut stream: TcpStream, got: &(Mutex<u64>, Condvar), total: &AtomicU64, stop: &AtomicBool) {
    const STATUS: &[u8] = b"HTTP/1.1 ";
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = vec![0u8; 1 << 16];
    let mut carry = 0usize; // bytes of a status line split across reads
    loop {
        let n = match stream.read(&mut buf[carry..]) {
            Ok(0) => break,
            Ok(n) => n + carry,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        let mut found = 0u64;
        let mut at = 0;
        while let Some(p) = buf[at..n].windows(STATUS.len()).position(|w| w == STATUS) {
            found += 1;
            at += p + STATUS.len();
        }
        // Keep the tail that may begin a status line.
        let keep = (n - at).min(STATUS.len() - 1);
        buf.copy_within(n - keep..n, 0);
        carry = keep;
        let (lock, cv) = got;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) += found;
        cv.notify_all();
        total.fetch_add(found, Ordering::SeqCst);
        if stop.load(Ordering::SeqCst) && found == 0 {
            break;
        }
    }
}

/// The fresh-connection heartbeats of every round, merged.
fn merged<'a>(rounds: impl IntoIterator<Item = &'a Outcome>) -> Histogram {
    let mut h = Histogram::default();
    rounds.into_iter().for_each(|o| h.merge(&o.hist));
    h
}

/// The scenario against the server under test, and against `--server` too
/// when given: `--runs` rounds of `--secs` per measurement (`--quick`: a
/// tenth of the keep-alive clients).
pub fn run(bench: &mut Bench) -> Result<String, String> {
    let s = bench.s.clone();
    let keep_alive = if s.quick { KEEP_ALIVE / 10 } else { KEEP_ALIVE };
    let fds = crate::proc::raise_nofile();
    let needed = 2 * (keep_alive + PIPELINERS + 64) as u64 + 256;
    if fds < needed {
        return Err(format!(
            "pipelining: needs {needed} open files; the limit is {fds}"
        ));
    }
    let mut sec = Section::new("Pipelining");
    sec.text(format_args!(
        "{PIPELINERS} connections each keeping {IN_FLIGHT} pipelined GET /healthz in flight, beside \
         fresh-connection heartbeats and {keep_alive} keep-alive clients; {} rounds of {:?} per \
         measurement, each round measuring the heartbeats without and then with the pipelining \
         connections.",
        s.runs, s.secs,
    ));
    sec.table(&[
        "Server",
        "fresh heartbeats beside them",
        "p50",
        "p99",
        "max",
        "errors or timeouts",
        "p99 alone",
        "keep-alive beside / alone, per round",
    ]);
    let mut judged = Vec::new();
    for (b, _, tag) in bench.binaries() {
        let server = bench.start(b, &format!("registro-pipelining{tag}"), &[])?;
        bench.fill(b, &server, Fleet::new(INSTANCES), true)?;
        let mut rounds = Vec::new();
        for i in 0..s.runs {
            let o = round(server.addr, s.secs, keep_alive);
            let o = match o {
                Ok(o) => o,
                Err(e) => {
                    bench.stop(server);
                    return Err(e);
                }
            };
            bench.progress(format_args!(
                "round {}: pipelining{tag}: keep-alive heartbeats {:.0}/s alone, {:.0}/s beside \
                 {PIPELINERS} pipelining connections ({:.2}x); fresh heartbeats p99 {} alone, {} \
                 beside (p50 {}, max {}, {} errors); {:.0} pipelined requests/s",
                i + 1,
                o.alone_keep_alive.rate(),
                o.with_keep_alive.rate(),
                o.keep_alive_ratio(),
                ms(o.alone_fresh.hist.quantile(0.99)),
                ms(o.with_fresh.hist.quantile(0.99)),
                ms(o.with_fresh.hist.quantile(0.5)),
                ms(o.with_fresh.hist.max()),
                o.with_fresh.errors + o.with_keep_alive.errors,
                o.pipelined as f64 / o.pipelined_secs.max(1e-9),
            ));
            rounds.push(o);
        }
        bench.stop(server);
        let beside = merged(rounds.iter().map(|r| &r.with_fresh));
        let alone = merged(rounds.iter().map(|r| &r.alone_fresh));
        let ratios: Vec<f64> = rounds.iter().map(Round::keep_alive_ratio).collect();
        let errors: u64 = rounds
            .iter()
            .map(|o| o.with_fresh.errors + o.with_keep_alive.errors)
            .sum();
        let label = if b == 0 {
            "now".to_string()
        } else {
            s.before_name()
        };
        sec.row(&[
            &label,
            &count(beside.count()),
            &ms(beside.quantile(0.5)),
            &ms(beside.quantile(0.99)),
            &ms(beside.max()),
            &errors,
            &ms(alone.quantile(0.99)),
            &ratios
                .iter()
                .map(|&x| times(x))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
        judged.push((label, beside.quantile(0.99), errors, median(ratios)));
    }
    // The targets are stated for a thousand keep-alive clients beside the
    // pipelining connections; a tenth of them is another load.
    let full = keep_alive >= KEEP_ALIVE;
    for (label, p99, errors, ratio) in judged {
        sec.target(
            format_args!("Pipelining ({label}): fresh-connection heartbeats beside them, p99 < 20 ms, no errors"),
            format_args!("p99 {}, {errors} errors", ms(p99)),
            Verdict::of(p99 < 20_000 && errors == 0).at_size(full),
        );
        sec.target(
            format_args!("Pipelining ({label}): {KEEP_ALIVE} keep-alive clients beside them >= 0.5x their rate alone"),
            format_args!("{} (median per round, {} clients)", times(ratio), count(keep_alive)),
            Verdict::check(ratio, |x| x >= 0.5).at_size(full),
        );
    }
    Ok(sec.finish())
}
