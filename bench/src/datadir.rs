//! `--only datadir` (issue 18): what `--data-dir` costs. At each fleet size
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
use std::io::Write as _;
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
use crate::{heartbeat_load, measure, progress, report, Settings, REG_CONNS, REG_DEPTH};

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

/// Runs the scenario and answers its section of the report.
pub fn scenario(s: &Settings, began: Instant) -> Result<String, String> {
    let mut sizes = Vec::new();
    for &n in &s.sizes {
        sizes.push(size(s, n, began)?);
    }
    Ok(render(&sizes))
}

fn start(s: &Settings, name: &str, extra: &[&str]) -> Result<ServerProc, String> {
    let mut cmd = Command::new(&s.server);
    cmd.args(["--addr", "127.0.0.1:0"]).args(extra);
    let server = ServerProc::start(name, cmd, Stop::Term)?;
    match load::request_once(server.addr, load::LISTING) {
        Ok((200, _)) => Ok(server),
        Ok((status, _)) => Err(format!("{name}: GET /registro/1.0/apps answered {status}")),
        Err(e) => Err(format!("{name}: GET /registro/1.0/apps: {e}")),
    }
}

fn size(s: &Settings, n: usize, began: Instant) -> Result<Size, String> {
    let dir = std::env::temp_dir().join(format!("registro-bench-data-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().ok_or("temp dir is not UTF-8")?.to_string();
    let result = measure_size(s, n, &dir, &dir_arg, began);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure_size(
    s: &Settings,
    n: usize,
    dir: &Path,
    dir_arg: &str,
    began: Instant,
) -> Result<Size, String> {
    let flags = ["--data-dir", dir_arg];
    let with = start(s, &format!("registro-{n}-data-dir"), &flags)?;
    let without = start(s, &format!("registro-{n}"), &[])?;
    for server in [&with, &without] {
        load::register(server.addr, Fleet::new(n), REG_CONNS, REG_DEPTH)?;
        load::renew_all(server.addr, Fleet::new(n), REG_CONNS, REG_DEPTH)?;
    }
    progress(
        began,
        format_args!(
            "datadir {}: both servers filled",
            report::thousands(n as f64)
        ),
    );
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
        s,
        n,
        [&with, &without],
        &mut out.with,
        &mut out.without,
        &mut churned,
        "",
        began,
    );
    let stopping = Instant::now();
    with.stop()
        .map_err(|e| format!("registro-{n}-data-dir: {e}"))?;
    out.stop = stopping.elapsed();
    out.disk = dir_bytes(dir);
    let spawned = Instant::now();
    let mut cmd = Command::new(&s.server);
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
    progress(
        began,
        format_args!(
            "datadir {}: stop {} ms, {} on disk ({:.0} B per instance), restart to serving {} ms ({:.2} s of CPU; listing {status}, {} bytes)",
            report::thousands(n as f64),
            out.stop.as_millis(),
            report::bytes(out.disk),
            out.disk as f64 / n as f64,
            out.restart.as_millis(),
            out.restart_cpu,
            body
        ),
    );
    rounds(
        s,
        n,
        [&again, &without],
        &mut out.saving,
        &mut out.control,
        &mut churned,
        " (snapshots)",
        began,
    );
    out.lock_us = longest_hold(&again.tail());
    let _ = again.stop();
    let _ = without.stop();
    Ok(out)
}

/// `s.runs` rounds of heartbeats with churn on each of `servers` (the one
/// with a directory first), back to back, the order alternating.
#[allow(clippy::too_many_arguments)]
fn rounds(
    s: &Settings,
    n: usize,
    servers: [&ServerProc; 2],
    with: &mut Vec<Outcome>,
    without: &mut Vec<Outcome>,
    churned: &mut usize,
    what: &str,
    began: Instant,
) {
    for round in 0..s.runs {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let server = servers[k];
            let churn = Churn::start(server.addr, *churned);
            let o = measure(
                &heartbeat_load(s, server.addr, n, round * 7919),
                server,
                Instant::now(),
            );
            *churned = churn.stop(*churned);
            progress(
                began,
                format_args!(
                    "round {}: datadir {}{}{what}: {}",
                    round + 1,
                    report::thousands(n as f64),
                    if k == 0 { " with --data-dir" } else { "" },
                    report::summary(&o)
                ),
            );
            if k == 0 {
                with.push(o);
            } else {
                without.push(o);
            }
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
                let _ = write!(
                    buf,
                    "POST /registro/1.0/apps/churn HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if conn.send(&buf).is_err() || conn.read_response(None).is_err() {
                    break;
                }
                done += 1;
                next += CHURN_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            done
        });
        // The app, once (a 409 when it exists already is fine).
        let create = b"POST /registro/1.0/apps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 16\r\n\r\n{\"name\":\"churn\"}";
        let _ = load::request_once(addr, create);
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
