//! Scenario "datadir": what `--data-dir` costs. At each fleet size
//! the same binary runs twice, with `--data-dir` and without; both get the
//! same heartbeats and the same churn (a registration every 10 ms, so that
//! there is something to log), measured back to back, the order alternating
//! round by round: the steady cost. Then the server with the directory is
//! stopped (its last snapshot) and started again on it, with
//! `--snapshot-every 1s` (snapshot after snapshot): the time from the spawn
//! to the first answer (and the CPU time that took), the disk used per
//! instance, and the same rounds again, for the slowest heartbeat while
//! snapshots are written beside the server without a directory.
//!
//! At 100,000 instances (`--quick`: its one size), slow readers: on a fresh
//! server of each binary, 40 connections ask for the full listing and never
//! read (a 4 KiB receive buffer); the server's resident memory before and at
//! its peak while they hold their answers, against the output budget
//! (`--output-budget`, 256 MiB by default), and heartbeats measured
//! meanwhile.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::http::Conn;
use crate::load::{self, Fleet, Outcome};
use crate::proc::{ServerProc, Stop};
use crate::report::{Section, Verdict};
use crate::{measure, report, Bench, FULL_SIZES};

/// Between two churn registrations.
const CHURN_EVERY: Duration = Duration::from_millis(10);
/// Clients that ask for the full listing and never read.
const SLOW_READERS: usize = 40;
/// The server's default `--output-budget`.
const BUDGET: u64 = 256 << 20;
/// The fleet the slow readers' target is stated for.
const SLOW_AT: usize = FULL_SIZES[1];

/// One fleet size.
struct Size {
    n: usize,
    with: Vec<Outcome>,
    without: Vec<Outcome>,
    /// Rounds while snapshots are written, and their controls.
    saving: Vec<Outcome>,
    control: Vec<Outcome>,
    /// The longest lock hold of a snapshot step the server logged (µs).
    lock_us: u64,
    /// Bytes in the directory after a clean stop, the stop's duration, and
    /// the time from spawn to the first answer of a server started on it.
    disk: u64,
    stop: Duration,
    restart: Duration,
    restart_cpu: f64,
    /// Slow readers, per binary (at one size only).
    slow: Vec<Slow>,
}

/// Slow readers on one binary's server.
struct Slow {
    /// `now`, or the second server's name.
    label: String,
    /// The bytes of the full listing.
    listing: usize,
    /// Resident bytes before the slow readers asked, and the most while
    /// they held their answers.
    before: u64,
    peak: u64,
    /// Heartbeats meanwhile.
    beside: Outcome,
}

/// Runs the scenario and answers its section of the report (`--quick`:
/// at the largest of its sizes only).
pub fn run(bench: &mut Bench) -> Result<String, String> {
    let all = bench.s.sizes;
    let sizes = if bench.s.quick { &all[2..] } else { &all[..] };
    let slow_at = if bench.s.quick { all[2] } else { SLOW_AT };
    let mut done = Vec::new();
    for &n in sizes {
        let dir =
            std::env::temp_dir().join(format!("registro-bench-data-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dir_arg = dir.to_str().ok_or("temp dir is not UTF-8")?.to_string();
        let result = measure_size(bench, n, &dir, &dir_arg);
        let _ = std::fs::remove_dir_all(&dir);
        let mut size = result?;
        if n == slow_at {
            for (b, _, tag) in bench.binaries() {
                size.slow.push(slow_readers(bench, b, tag, n)?);
            }
        }
        done.push(size);
    }
    Ok(render(&done))
}

/// Slow readers on a fresh server of binary `b` holding `n` instances.
fn slow_readers(bench: &mut Bench, b: usize, tag: &str, n: usize) -> Result<Slow, String> {
    let server = bench.start(b, &format!("registro-{n}-slow-readers{tag}"), &[])?;
    let measured = (|| {
        load::register(server.addr, Fleet::new(n))?;
        load::renew_all(server.addr, Fleet::new(n))?;
        // Once before, so that the baseline holds what one listing leaves;
        // then long enough for a server that shares answers to have let go
        // of it (250 ms, and the ticker's second), so that the slow readers
        // find nothing encoded.
        let (_, listing) = load::request_once(server.addr, load::LISTING)
            .map_err(|e| format!("slow readers: the listing: {e}"))?;
        thread::sleep(Duration::from_millis(1500));
        let before = server.rss()?;
        let readers = (0..SLOW_READERS)
            .map(|_| never_reads(server.addr))
            .collect::<Result<Vec<_>, _>>()?;
        let peak = Peak::start(server.pid());
        let beside = measure(&bench.heartbeats(server.addr, n, 0), server.pid());
        let peak = peak.stop().max(before);
        drop(readers);
        Ok::<_, String>(Slow {
            label: if b == 0 {
                "now".to_string()
            } else {
                bench.s.before_name()
            },
            listing,
            before,
            peak,
            beside,
        })
    })();
    bench.stop(server);
    let slow = measured?;
    bench.progress(format_args!(
        "datadir {}{tag}: {SLOW_READERS} slow readers of a {} listing: resident {} -> {} at most; heartbeats meanwhile: {}",
        report::count(n),
        report::bytes(slow.listing as u64),
        report::bytes(slow.before),
        report::bytes(slow.peak),
        report::summary(&slow.beside)
    ));
    Ok(slow)
}

/// A connection with a 4 KiB receive buffer that asks for the full
/// listing and reads nothing.
fn never_reads(addr: SocketAddr) -> Result<std::net::TcpStream, String> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let socket = rustix::net::socket(family, SocketType::STREAM, None)
        .map_err(|e| format!("slow readers: socket: {e}"))?;
    // Before connecting, so that the window it offers stays small.
    sockopt::set_socket_recv_buffer_size(&socket, 4096)
        .map_err(|e| format!("slow readers: SO_RCVBUF: {e}"))?;
    rustix::net::connect(&socket, &addr).map_err(|e| format!("slow readers: connect: {e}"))?;
    let mut stream = std::net::TcpStream::from(socket);
    std::io::Write::write_all(&mut stream, load::LISTING)
        .map_err(|e| format!("slow readers: send: {e}"))?;
    Ok(stream)
}

/// The most resident memory of a process, sampled every 10 ms.
struct Peak {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<u64>,
}

impl Peak {
    fn start(pid: u32) -> Peak {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
                if let Some(rss) = status.ok().and_then(|s| crate::proc::parse_rss(&s)) {
                    peak = peak.max(rss);
                }
                thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        Peak { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

fn measure_size(bench: &mut Bench, n: usize, dir: &Path, dir_arg: &str) -> Result<Size, String> {
    let flags = ["--data-dir", dir_arg];
    let with = bench.start(0, &format!("registro-{n}-data-dir"), &flags)?;
    let without = bench.start(0, &format!("registro-{n}"), &[])?;
    for server in [&with, &without] {
        load::register(server.addr, Fleet::new(n))?;
        load::renew_all(server.addr, Fleet::new(n))?;
    }
    bench.progress(format_args!(
        "datadir {}: both servers filled",
        report::count(n)
    ));
    let mut out = Size {
        n,
        with: Vec::new(),
        without: Vec::new(),
        saving: Vec::new(),
        control: Vec::new(),
        lock_us: 0,
        disk: 0,
        stop: Duration::ZERO,
        restart: Duration::ZERO,
        restart_cpu: 0.0,
        slow: Vec::new(),
    };
    let mut churned = 0;
    rounds(
        bench,
        n,
        [&with, &without],
        [&mut out.with, &mut out.without],
        &mut churned,
        "",
    );
    let stopping = Instant::now();
    bench.stop(with);
    out.stop = stopping.elapsed();
    out.disk = dir_bytes(dir);
    let spawned = Instant::now();
    let mut cmd = Command::new(&bench.s.server);
    cmd.args(["--addr", "127.0.0.1:0"])
        .args(flags)
        .args(["--snapshot-every", "1s"]);
    let again = ServerProc::start_within(
        &format!("registro-{n}-restarted"),
        cmd,
        Stop::Term,
        Duration::from_secs(600),
    )?;
    out.restart = spawned.elapsed();
    out.restart_cpu = crate::proc::cpu_secs(Some(again.pid())).unwrap_or(f64::NAN);
    let (status, body) =
        load::request_once(again.addr, load::LISTING).map_err(|e| format!("restarted: {e}"))?;
    bench.progress(format_args!(
            "datadir {}: stop {} ms, {} on disk ({:.0} B per instance), restart to serving {} ms ({:.2} s of CPU; listing {status}, {} bytes)",
            report::thousands(n as f64),
            out.stop.as_millis(),
            report::bytes(out.disk),
            out.disk as f64 / n as f64,
            out.restart.as_millis(),
            out.restart_cpu,
            body
    ));
    let into = [&mut out.saving, &mut out.control];
    rounds(
        bench,
        n,
        [&again, &without],
        into,
        &mut churned,
        " (snapshots)",
    );
    out.lock_us = longest_hold(&again.tail());
    bench.stop(again);
    bench.stop(without);
    Ok(out)
}

/// `--runs` rounds of heartbeats with churn on each of `servers` (the one
/// with a directory first) into `into`, back to back, the order alternating.
fn rounds(
    bench: &Bench,
    n: usize,
    servers: [&ServerProc; 2],
    into: [&mut Vec<Outcome>; 2],
    churned: &mut usize,
    what: &str,
) {
    for round in 0..bench.s.runs {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let server = servers[k];
            let churn = Churn::start(server.addr, *churned);
            let o = measure(&bench.heartbeats(server.addr, n, round), server.pid());
            *churned = churn.stop(*churned);
            bench.progress(format_args!(
                "round {}: datadir {}{}{what}: {}",
                round + 1,
                report::count(n),
                if k == 0 { " with --data-dir" } else { "" },
                report::summary(&o)
            ));
            into[k].push(o);
        }
    }
}

/// The largest `longest lock hold N us` of the snapshot lines in `tail`.
fn longest_hold(tail: &str) -> u64 {
    tail.split("longest lock hold ")
        .skip(1)
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Registrations of new instances at a steady pace on one connection.
struct Churn {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<usize>,
}

impl Churn {
    fn start(addr: SocketAddr, from: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let Ok(mut conn) = Conn::connect(addr) else {
                return 0;
            };
            let mut done = 0;
            let mut buf = Vec::new();
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                buf.clear();
                let body = format!(
                    r#"{{"id":"churn-{}","ip":"10.9.9.9","port":80}}"#,
                    from + done
                );
                load::push_post(&mut buf, "churn", &body);
                if conn.send(&buf).is_err() || conn.read_response().is_err() {
                    break;
                }
                done += 1;
                next += CHURN_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            done
        });
        // The app, once (a 409 when it exists already is fine).
        let _ = load::create_apps(addr, ["churn".to_string()]);
        Churn { stop, thread }
    }

    fn stop(self, before: usize) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        before + self.thread.join().unwrap_or(0)
    }
}

fn median_rate(v: &[Outcome]) -> f64 {
    report::median(v.iter().map(Outcome::rate).collect())
}

fn worst(v: &[Outcome]) -> u64 {
    v.iter().map(|o| o.hist.max()).max().unwrap_or(0)
}

fn render(sizes: &[Size]) -> String {
    let mut sec = Section::new("--data-dir");
    sec.text(
        "The same binary with `--data-dir` and without, measured back to back, a registration \
         every 10 ms on each; then the one with the directory stopped, started again on it with \
         `--snapshot-every 1s` (a snapshot after another), and measured again.",
    );
    sec.table(&[
        "instances",
        "heartbeats/s with",
        "without",
        "ratio (median per round)",
        "max while snapshots are written",
        "max without",
        "longest snapshot lock hold",
        "disk per instance",
        "stop",
        "start to serving",
    ]);
    for z in sizes {
        let ratio = report::median(report::ratios(&z.with, &z.without));
        sec.row(&[
            &report::thousands(z.n as f64),
            &report::thousands(median_rate(&z.with)),
            &report::thousands(median_rate(&z.without)),
            &report::times(ratio),
            &report::ms(worst(&z.saving)),
            &report::ms(worst(&z.control)),
            &if z.lock_us == 0 {
                "unseen (no snapshot line among the log's last)".to_string()
            } else {
                report::ms(z.lock_us)
            },
            &format!("{:.0} B", z.disk as f64 / z.n as f64),
            &format!("{} ms", z.stop.as_millis()),
            &format!(
                "{} ms ({} CPU)",
                z.restart.as_millis(),
                if z.restart_cpu.is_finite() {
                    format!("{:.2} s", z.restart_cpu)
                } else {
                    "unknown".to_string()
                }
            ),
        ]);
    }
    let slow: Vec<(usize, &Slow)> = sizes
        .iter()
        .flat_map(|z| z.slow.iter().map(move |s| (z.n, s)))
        .collect();
    if !slow.is_empty() {
        sec.text(format_args!(
            "Slow readers: on a fresh server, {SLOW_READERS} connections ask for the full listing \
             and never read; resident memory before and at its peak while they hold their \
             answers, against the default output budget ({} MiB), and heartbeats meanwhile.",
            BUDGET >> 20
        ));
        sec.table(&[
            "server",
            "instances",
            "listing",
            "resident before",
            "peak",
            "growth",
            "heartbeats/s meanwhile",
            "p99",
            "errors",
        ]);
        for (n, s) in &slow {
            sec.row(&[
                &s.label,
                &report::thousands(*n as f64),
                &report::bytes(s.listing as u64),
                &report::bytes(s.before),
                &report::bytes(s.peak),
                &report::bytes(s.peak - s.before),
                &report::thousands(s.beside.rate()),
                &report::ms(s.beside.hist.quantile(0.99)),
                &s.beside.errors,
            ]);
        }
    }
    for z in sizes {
        let ratio = report::median(report::ratios(&z.with, &z.without));
        sec.target(
            format_args!(
                "Heartbeats with --data-dir >= 0.95x without, {} instances",
                report::thousands(z.n as f64)
            ),
            format_args!("{} (median per round)", report::times(ratio)),
            Verdict::check(ratio, |x| x >= 0.95),
        );
    }
    if let Some(z) = sizes.last() {
        sec.target(
            "A start with 1,000,000 instances on disk serves within 5 s of CPU time",
            format_args!(
                "{:.2} s of CPU, {} ms in all, at {}",
                z.restart_cpu,
                z.restart.as_millis(),
                report::thousands(z.n as f64)
            ),
            Verdict::check(z.restart_cpu, |x| x < 5.0).at_size(z.n >= FULL_SIZES[2]),
        );
    }
    for (n, s) in slow.iter().filter(|(_, s)| s.label == "now") {
        let growth = s.peak - s.before;
        sec.target(
            format_args!(
                "{SLOW_READERS} clients of the full listing of {} that never read: resident growth <= the output budget ({} MiB), heartbeats answered meanwhile",
                report::thousands(SLOW_AT as f64),
                BUDGET >> 20
            ),
            format_args!(
                "{} for a {} listing, {} heartbeat errors",
                report::bytes(growth),
                report::bytes(s.listing as u64),
                s.beside.errors
            ),
            Verdict::of(growth <= BUDGET && s.beside.errors == 0).at_size(*n >= SLOW_AT),
        );
    }
    sec.finish()
}
