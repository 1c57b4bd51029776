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

use std::fmt::Write as _;
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
use crate::{measure, report, Bench};

/// Between two churn registrations.
const CHURN_EVERY: Duration = Duration::from_millis(10);

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
}

/// Runs the scenario and answers its section of the report (`--quick`:
/// at the largest of its sizes only).
pub fn run(bench: &mut Bench) -> Result<String, String> {
    let all = bench.s.sizes;
    let sizes = if bench.s.quick { &all[2..] } else { &all[..] };
    let mut done = Vec::new();
    for &n in sizes {
        let dir =
            std::env::temp_dir().join(format!("registro-bench-data-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dir_arg = dir.to_str().ok_or("temp dir is not UTF-8")?.to_string();
        let result = measure_size(bench, n, &dir, &dir_arg);
        let _ = std::fs::remove_dir_all(&dir);
        done.push(result?);
    }
    Ok(render(&done))
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
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## --data-dir\n\nThe same binary with `--data-dir` and without, measured back to back, a registration every 10 ms on each; then the one with the directory stopped, started again on it with `--snapshot-every 1s` (a snapshot after another), and measured again.\n"
    );
    let _ = writeln!(
        out,
        "| instances | heartbeats/s with | without | ratio (>= 0.95x) | max while snapshots are written | max without | longest snapshot lock hold | disk per instance | stop | start to serving (< 5 s at 1M) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for z in sizes {
        let (w, wo) = (median_rate(&z.with), median_rate(&z.without));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2}x | {} | {} | {} | {:.0} B | {} ms | {} ms ({} CPU) |",
            report::thousands(z.n as f64),
            report::thousands(w),
            report::thousands(wo),
            w / wo.max(1e-9),
            report::ms(worst(&z.saving)),
            report::ms(worst(&z.control)),
            if z.lock_us == 0 {
                "unseen (no snapshot line among the log's last)".to_string()
            } else {
                report::ms(z.lock_us)
            },
            z.disk as f64 / z.n as f64,
            z.stop.as_millis(),
            z.restart.as_millis(),
            if z.restart_cpu.is_finite() {
                format!("{:.2} s", z.restart_cpu)
            } else {
                "unknown".to_string()
            }
        );
    }
    out
}
