//! Scenario "slowloris": 2,000 idle keep-alive connections and 300 slow
//! senders, each trickling one more header byte every 20 ms, held open
//! against a server while heartbeats on fresh connections are timed, each
//! sent as a round of trickled bytes begins, so that every heartbeat meets a
//! burst of 300 slowloris events. The trickling thread yields its core after
//! each byte, as 300 separate clients would not hold one. With `--server`,
//! both servers hold their connections at once and are measured in turn,
//! round by round, each round trickling only to the server measured.

use crate::hist::Histogram;
use crate::http::Conn;
use crate::load::{push_heartbeat_close, request_once, Fleet, LISTING};
use crate::proc::{self, ServerProc};
use crate::report::{bytes, count, median, ms, Section, Verdict};
use crate::Bench;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// Idle keep-alive connections and slow senders (`--quick` holds a
/// tenth), and the trickle period.
const IDLE: usize = 2000;
const SLOW: usize = 300;
const TRICKLE: Duration = Duration::from_millis(20);
/// Connections opened before their first request is sent, so the accept
/// queue never overflows.
const BATCH: usize = 100;

/// One server with every connection held.
#[derive(Default)]
struct SlowRun {
    /// One per round.
    rounds: Vec<SlowRound>,
    /// Server threads with none of the connections, and with them all.
    threads: [u64; 2],
    /// Server resident bytes likewise.
    rss: [u64; 2],
    /// Idle and slow connections held, and how many of them the server
    /// still held open at the end.
    held: [usize; 2],
    still_open: usize,
}

/// Runs the scenario against each binary and returns its section.
pub fn run(bench: &mut Bench) -> Result<String, String> {
    let heartbeats = if bench.s.quick { 10 } else { 100 };
    let (idle, slow) = if bench.s.quick {
        (IDLE / 10, SLOW / 10)
    } else {
        (IDLE, SLOW)
    };
    let fds = proc::raise_nofile();
    let needed = 2 * 2 * (idle + slow) as u64 + 256;
    if fds < needed {
        return Err(format!(
            "slowloris: needs {needed} open files; the limit is {fds}"
        ));
    }
    // Slow senders are held for the whole scenario, not cut off at 10 s.
    let flags = ["--request-timeout", "600"];
    let mut held: Vec<(ServerProc, Held, SlowRun)> = Vec::new();
    for (b, _, tag) in bench.binaries() {
        let server = bench.start(b, &format!("registro-slowloris{tag}"), &flags)?;
        bench.fill(b, &server, Fleet::new(1), true)?;
        let before = (server.threads(), server.rss()?);
        let connections =
            hold(server.addr, idle, slow).map_err(|e| format!("slowloris{tag}: {e}"))?;
        let run = SlowRun {
            held: [idle, slow],
            threads: [before.0, server.threads()],
            rss: [before.1, server.rss()?],
            ..SlowRun::default()
        };
        bench.progress(format_args!(
            "slowloris{tag}: {idle} idle + {slow} slow connections held; server threads {} -> {}, resident {} -> {}",
            run.threads[0],
            run.threads[1],
            bytes(run.rss[0]),
            bytes(run.rss[1])
        ));
        held.push((server, connections, run));
    }
    for round in 0..bench.s.runs {
        for j in 0..held.len() {
            let k = (j + round) % held.len();
            let (server, connections, run) = &mut held[k];
            let cpu_before = proc::cpu_secs(Some(server.pid()));
            let mut o = connections.round(heartbeats);
            let cpu_after = proc::cpu_secs(Some(server.pid()));
            o.server_cpu = cpu_after.zip(cpu_before).map_or(f64::NAN, |(a, b)| a - b);
            bench.progress(format_args!(
                "round {}: {}: {} heartbeats, p50 {}, p99 {}, max {}, {} errors, {} bytes trickled, server CPU {:.1} us per byte",
                round + 1,
                server.name(),
                o.hist.count(),
                ms(o.hist.quantile(0.5)),
                ms(o.hist.quantile(0.99)),
                ms(o.hist.max()),
                o.errors,
                o.trickled,
                o.server_cpu * 1e6 / o.trickled.max(1) as f64
            ));
            run.rounds.push(o);
        }
    }
    let mut runs = Vec::new();
    for (server, connections, mut run) in held {
        run.still_open = connections.still_open();
        drop(connections);
        bench.stop(server);
        runs.push(run);
    }
    Ok(render(bench, &runs))
}

/// Every heartbeat of the rounds in one histogram.
fn all(run: &SlowRun) -> Histogram {
    let mut all = Histogram::default();
    run.rounds.iter().for_each(|round| all.merge(&round.hist));
    all
}

/// The median over rounds of quantile `q` now over quantile `q` before in
/// the same round: rounds run back to back, so a pair shares the machine's
/// load, where one noisy round would set the quantile of all rounds merged.
fn ratio(now: &SlowRun, before: &SlowRun, q: f64) -> f64 {
    let pairs = now.rounds.iter().zip(&before.rounds);
    median(
        pairs
            .map(|(n, b)| n.hist.quantile(q) as f64 / b.hist.quantile(q).max(1) as f64)
            .collect(),
    )
}

fn render(bench: &Bench, runs: &[SlowRun]) -> String {
    let now = &runs[0];
    let [idle, slow] = now.held;
    let mut sec = Section::new("");
    sec.text(format_args!(
        "Slowloris: {idle} idle keep-alive connections and {slow} slow senders (half a request, then one \
         more header byte each every 20 ms) held against the server; in each of {} rounds, heartbeats on fresh \
         connections (connect to answer), each sent as a round of trickled bytes begins. Both servers hold their \
         connections at once; rounds alternate, trickling only to the server measured.",
        bench.s.runs
    ));
    sec.table(&[
        "Server",
        "heartbeats",
        "p50",
        "p99",
        "max",
        "errors",
        "server threads (none / all held)",
        "resident (none / all held)",
        "server CPU per trickled byte",
        "connections still open",
    ]);
    for (label, run) in ["now", "before"].iter().zip(runs) {
        let hist = all(run);
        let errors: u64 = run.rounds.iter().map(|x| x.errors).sum();
        let trickled: u64 = run.rounds.iter().map(|x| x.trickled).sum();
        let cpu: f64 = run.rounds.iter().map(|x| x.server_cpu).sum();
        sec.row(&[
            label,
            &count(hist.count()),
            &ms(hist.quantile(0.5)),
            &ms(hist.quantile(0.99)),
            &ms(hist.max()),
            &errors,
            &format_args!("{} / {}", run.threads[0], run.threads[1]),
            &format_args!("{} / {}", bytes(run.rss[0]), bytes(run.rss[1])),
            &format_args!("{:.1} µs", cpu * 1e6 / trickled.max(1) as f64),
            &format_args!(
                "{} of {}",
                count(run.still_open),
                count(run.held[0] + run.held[1])
            ),
        ]);
    }
    sec.target(
        "Slowloris: server threads no more than with none",
        format_args!("{} / {}", now.threads[0], now.threads[1]),
        Verdict::of(now.threads[1] <= now.threads[0]),
    );
    if let Some(b) = runs.get(1) {
        let (hn, hb) = (all(now), all(b));
        let merged = |q: f64| hn.quantile(q) as f64 / hb.quantile(q).max(1) as f64;
        let (p50, p99) = (ratio(now, b, 0.5), ratio(now, b, 0.99));
        sec.target(
            "Slowloris: heartbeat latency as before (p50 and p99 at most 1.1x, median per round)",
            format_args!(
                "p50 {p50:.2}x, p99 {p99:.2}x (all rounds merged: {:.2}x, {:.2}x)",
                merged(0.5),
                merged(0.99)
            ),
            Verdict::of(p50 <= 1.1 && p99 <= 1.1),
        );
    }
    let errors: u64 = now.rounds.iter().map(|x| x.errors).sum();
    sec.target(
        "Slowloris: every heartbeat answered, every connection held",
        format_args!(
            "{errors} errors, {} of {} open",
            count(now.still_open),
            count(idle + slow)
        ),
        Verdict::of(errors == 0 && now.still_open == idle + slow),
    );
    sec.finish()
}

/// The connections held against one server.
struct Held {
    addr: SocketAddr,
    idle: Vec<TcpStream>,
    slow: Vec<TcpStream>,
}

/// One measured round against one server.
#[derive(Debug, Clone, Default)]
struct SlowRound {
    /// Each heartbeat, connect to answer (µs).
    hist: Histogram,
    /// Heartbeats not answered 204, or failed.
    errors: u64,
    first_error: Option<String>,
    /// Bytes the slow senders sent during the round.
    trickled: u64,
    /// CPU seconds the server used during the round.
    server_cpu: f64,
}

/// Opens `n_idle` idle and `n_slow` slow connections against `addr`;
/// instance 0 of the bench fleet must be registered there.
fn hold(addr: SocketAddr, n_idle: usize, n_slow: usize) -> Result<Held, String> {
    let mut idle = Vec::with_capacity(n_idle);
    while idle.len() < n_idle {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH.min(n_idle - idle.len()) {
            let mut conn = Conn::connect(addr).map_err(|e| format!("idle connect: {e}"))?;
            conn.send(LISTING).map_err(|e| format!("idle send: {e}"))?;
            batch.push(conn);
        }
        for mut conn in batch {
            let r = conn
                .read_response()
                .map_err(|e| format!("idle answer: {e}"))?;
            if r.status != 200 {
                return Err(format!(
                    "an idle connection's listing answered {}",
                    r.status
                ));
            }
            idle.push(conn.into_inner());
        }
    }
    let mut slow = Vec::with_capacity(n_slow);
    while slow.len() < n_slow {
        for _ in 0..BATCH.min(n_slow - slow.len()) {
            let mut stream = TcpStream::connect(addr).map_err(|e| format!("slow connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            stream
                .write_all(b"GET /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                .map_err(|e| format!("slow send: {e}"))?;
            slow.push(stream);
        }
        // A request queued behind the batch: answered, so it was accepted.
        request_once(addr, LISTING).map_err(|e| format!("after a batch: {e}"))?;
    }
    Ok(Held { addr, idle, slow })
}

impl Held {
    /// Connections the server still holds open (no end of file, nothing to
    /// read).
    fn still_open(&self) -> usize {
        self.idle
            .iter()
            .chain(&self.slow)
            .filter(|s| open(s))
            .count()
    }

    /// Times `n` heartbeats, each on a fresh connection as a round of
    /// trickled bytes begins.
    fn round(&mut self, n: usize) -> SlowRound {
        let writers: Vec<TcpStream> = self
            .slow
            .iter()
            .filter_map(|s| s.try_clone().ok())
            .collect();
        let (stop, stopped) = mpsc::channel::<()>();
        let (tick, ticks) = mpsc::channel::<()>();
        let trickler = thread::spawn(move || {
            let mut writers = writers;
            let mut sent = 0u64;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TRICKLE) {
                let _ = tick.send(());
                for w in &mut writers {
                    if w.write_all(b"a").is_ok() {
                        sent += 1;
                    }
                    // 300 slow clients are 300 senders, not one thread
                    // holding a core for the 2.4 ms of a burst: without the
                    // yield, whichever server thread the scheduler queued
                    // behind this one waited out the burst, and the figures
                    // measured that (p99 2.5 ms now, 1.2 ms before, whose
                    // 300 woken threads kept preempting this one).
                    thread::yield_now();
                }
            }
            sent
        });
        let mut out = SlowRound::default();
        let mut request = Vec::new();
        for i in 0..n {
            if ticks.recv_timeout(Duration::from_secs(5)).is_err() {
                out.errors += 1;
                out.first_error
                    .get_or_insert_with(|| "the trickler stopped".to_string());
                break;
            }
            request.clear();
            push_heartbeat_close(&mut request, 0);
            let t = Instant::now();
            match request_once(self.addr, &request) {
                Ok((204, _)) => out.hist.record(t.elapsed().as_micros() as u64),
                Ok((status, _)) => {
                    out.errors += 1;
                    out.first_error
                        .get_or_insert_with(|| format!("heartbeat {i}: {status}"));
                }
                Err(e) => {
                    out.errors += 1;
                    out.first_error
                        .get_or_insert_with(|| format!("heartbeat {i}: {e}"));
                }
            }
        }
        let _ = stop.send(());
        out.trickled = trickler.join().unwrap_or(0);
        out
    }
}

fn open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = matches!(stream.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    let _ = stream.set_nonblocking(false);
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_the_rounds() {
        let run = |rounds: &[&[u64]]| SlowRun {
            rounds: rounds
                .iter()
                .map(|lat| {
                    let mut round = SlowRound::default();
                    lat.iter().for_each(|&us| round.hist.record(us));
                    round
                })
                .collect(),
            ..SlowRun::default()
        };
        // One round where the machine stalled both servers: merged, it
        // would set both quantiles; paired, it is one ratio of three.
        let now = run(&[&[200; 100], &[4000; 100], &[300; 100]]);
        let before = run(&[&[100; 100], &[3000; 100], &[300; 100]]);
        let near = |a: f64, b: f64| (a - b).abs() < 0.05;
        assert!(near(ratio(&now, &before, 0.5), 4000.0 / 3000.0));
        assert!(near(ratio(&now, &before, 0.99), 4000.0 / 3000.0));
        let calm = run(&[&[100; 100], &[3000; 100], &[600; 100]]);
        assert!(near(ratio(&now, &calm, 0.5), 1.33));
        assert!(near(ratio(&calm, &now, 0.99), 0.75));
    }
}
