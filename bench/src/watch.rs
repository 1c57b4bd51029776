//! Scenario "watch" (the watch fan-out): W watchers, each with its own
//! keep-alive connection, long-poll one app
//! (`GET /registro/1.0/apps/{app}?index=N&wait=60s`) while heartbeats renew
//! the smallest fleet; in the middle of each heartbeat window one change (a
//! new instance of the watched app) wakes them all, and each watcher's wait
//! is timed from the moment the change's request was sent until its answer
//! arrived. The same windows with no watcher connected, before they connect
//! and after they close, are the control. One thread drives every watcher
//! through a readiness poller (mio), as in the fleet scenario.

use crate::hist::Histogram;
use crate::http::{self, Conn};
use crate::load::{push_post, Fleet, Outcome};
use crate::proc::{self, ServerProc};
use crate::report::{count, median_of, ms, ms_f, summary, thousands, times, Section, Verdict};
use crate::{connections_allowed, measure, poller, Bench, CONNS};
use mio::net::TcpStream;
use mio::{Events, Poll};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The watched app (the heartbeats renew instances of the others).
const APP: &str = "watched";
/// How long each watch may wait: longer than a round.
const WAIT: &str = "60s";
/// How long connecting every watcher may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// The watch fan-out against one server.
#[derive(Default)]
struct WatchRun {
    /// Whether the server answers with `Registro-Index` (watches); when not,
    /// nothing else was measured.
    supported: bool,
    /// Watchers asked for, and connected with a watch sent.
    watchers: usize,
    connected: usize,
    /// One per change.
    rounds: Vec<WatchRound>,
    /// The same heartbeat windows with no watcher connected (before the
    /// watchers connect and after they close).
    control: Vec<Outcome>,
    /// One more change with no heartbeats running: the fan-out alone (its
    /// `load` holds only the CPU time both processes used meanwhile).
    alone: Option<WatchRound>,
}

/// One change and its fan-out: each watcher's wait from the change's
/// request being sent to its answer (µs), how long the change's own
/// request took (µs), and the heartbeats of the window around it.
struct WatchRound {
    fanout: Fanout,
    hist: Histogram,
    change_us: u64,
    load: Outcome,
}

impl WatchRound {
    /// `fanout` of the change sent at `t0`, each arrival timed from then.
    fn new(fanout: Fanout, t0: Instant, change_us: u64, load: Outcome) -> WatchRound {
        let mut hist = Histogram::default();
        for at in &fanout.arrivals {
            hist.record(at.saturating_duration_since(t0).as_micros() as u64);
        }
        WatchRound {
            fanout,
            hist,
            change_us,
            load,
        }
    }

    /// In one line.
    fn summary(&self) -> String {
        let mut s = format!(
            "{} of {} watchers answered, p50 {}, p99 {}, max {} after the change was sent (its own answer {}), \
             {} watchers lost; heartbeats meanwhile: {}",
            count(self.fanout.arrivals.len()),
            count(self.fanout.armed),
            ms(self.hist.quantile(0.5)),
            ms(self.hist.quantile(0.99)),
            ms(self.hist.max()),
            ms(self.change_us),
            self.fanout.errors,
            summary(&self.load)
        );
        if let Some(e) = &self.fanout.first_error {
            s += &format!(" (first watcher lost: {e})");
        }
        s
    }
}

/// Runs the fan-out against each binary.
pub fn run(bench: &mut Bench) -> Result<String, String> {
    let mut runs = Vec::new();
    for (b, _, tag) in bench.binaries() {
        runs.push(one(bench, b, tag)?);
    }
    Ok(render(bench, &runs))
}

fn one(bench: &mut Bench, b: usize, tag: &str) -> Result<WatchRun, String> {
    let s = bench.s.clone();
    let n = connections_allowed(s.watch_n, 10_000, "watchers:")?;
    let max = (n + 1000).to_string();
    let flags = ["--max-connections", &max, "--idle-timeout", "120"];
    let server = bench.start(b, &format!("registro-watch{tag}"), &flags)?;
    let result = watch(bench, b, &server, n);
    bench.stop(server);
    result
}

fn watch(bench: &mut Bench, b: usize, server: &ServerProc, n: usize) -> Result<WatchRun, String> {
    let s = bench.s.clone();
    let mut run = WatchRun {
        watchers: n,
        ..WatchRun::default()
    };
    crate::load::create_apps(server.addr, [APP.to_string()])?;
    let path = format!("/registro/1.0/apps/{APP}");
    let (index, _) = http::expect(server.addr, "GET", &path, None, 200)?;
    let Some(index) = index else {
        bench.progress(format_args!(
            "watch fan-out: the server sends no Registro-Index (no watches): n/a"
        ));
        return Ok(run);
    };
    run.supported = true;
    bench.fill(b, server, Fleet::new(s.sizes[0]), true)?;
    let rounds = s.heavy_runs();
    let controls = |bench: &Bench, run: &mut WatchRun, from: usize| {
        for round in from..from + rounds {
            let o = measure(
                &bench.heartbeats(server.addr, s.sizes[0], round),
                server.pid(),
            );
            bench.progress(format_args!(
                "watch control {}: heartbeats without watchers: {}",
                run.control.len() + 1,
                summary(&o)
            ));
            run.control.push(o);
        }
    };
    controls(bench, &mut run, 0);
    let t = Instant::now();
    let mut watchers = Watchers::start(server.addr, n, index)?;
    run.connected = watchers.connected;
    bench.progress(format_args!(
        "watch fan-out: {} of {} watchers connected and waiting on {APP} (index {index}) in {:.1} s",
        count(watchers.connected),
        count(n),
        t.elapsed().as_secs_f64()
    ));
    for round in 0..=rounds {
        let armed = watchers.armed;
        if !wait_metric(server.addr, "registro_watches_waiting", |v| {
            v >= armed as f64
        }) {
            bench.progress(format_args!(
                "warning: the server does not report {armed} watches waiting"
            ));
        }
        let w = if round < rounds {
            // The change in the middle of a measured window of heartbeats.
            let started = Arc::new(OnceLock::new());
            let mut load = bench.heartbeats(server.addr, s.sizes[0], rounds + round);
            load.started = Some(Arc::clone(&started));
            let pid = server.pid();
            let handle = thread::spawn(move || measure(&load, pid));
            let deadline = Instant::now() + Duration::from_secs(30);
            while started.get().is_none() && Instant::now() < deadline && !handle.is_finished() {
                thread::sleep(Duration::from_millis(1));
            }
            if let Some(&start) = started.get() {
                thread::sleep((start + s.secs / 2).saturating_duration_since(Instant::now()));
            }
            let (t0, change_us) = change(server.addr, &path, round)?;
            let o = handle
                .join()
                .map_err(|_| "watch load thread panicked".to_string())?;
            let fanout = watchers.collect(t0 + Duration::from_secs(5), armed)?;
            WatchRound::new(fanout, t0, change_us, o)
        } else {
            // One more with no heartbeats: the fan-out alone.
            let cpu = || (proc::cpu_secs(Some(server.pid())), proc::cpu_secs(None));
            let before = cpu();
            let (t0, change_us) = change(server.addr, &path, round)?;
            let fanout = watchers.collect(t0 + Duration::from_secs(5), armed)?;
            let after = cpu();
            let used = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or(f64::NAN, |(a, b)| a - b);
            let load = Outcome {
                server_cpu: used(after.0, before.0),
                client_cpu: used(after.1, before.1),
                ..Outcome::default()
            };
            WatchRound::new(fanout, t0, change_us, load)
        };
        watchers.rearm()?;
        if round < rounds {
            bench.progress(format_args!("watch fan-out {}: {}", round + 1, w.summary()));
            run.rounds.push(w);
        } else {
            bench.progress(format_args!(
                "watch fan-out with no heartbeats: {}",
                w.summary()
            ));
            run.alone = Some(w);
        }
    }
    watchers.stop()?;
    // The closes handled before the control windows after.
    wait_metric(server.addr, "registro_connections_open", |v| v <= 1.0);
    controls(bench, &mut run, 2 * rounds + 1);
    Ok(run)
}

/// Polls a gauge of the server's `/metrics` for up to 20 s until `done`;
/// false when it did not get there (or the server has no such gauge).
fn wait_metric(addr: SocketAddr, name: &str, done: impl Fn(f64) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http::expect(addr, "GET", "/metrics", None, 200);
        let value = metrics.ok().and_then(|(_, text)| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        });
        match value {
            Some(v) if done(v) => return true,
            Some(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}

/// The change of round `k`: registers instance `w-k` of the watched app at
/// `path`; returns when its request was sent and how long its answer took.
/// Written here, not through ureq: its instant is what each watcher's wait
/// is timed from, and the connection is open before it.
fn change(addr: SocketAddr, path: &str, k: usize) -> Result<(Instant, u64), String> {
    let body = format!(
        r#"{{"id":"w-{k}","ip":"10.255.0.{}","port":8080}}"#,
        k % 250 + 1
    );
    let mut request = Vec::new();
    push_post(&mut request, APP, &body);
    let mut conn = Conn::connect(addr).map_err(|e| format!("change: connect: {e}"))?;
    let t0 = Instant::now();
    conn.send(&request)
        .map_err(|e| format!("change: send: {e}"))?;
    let answer = conn.read_response().map_err(|e| format!("change: {e}"))?;
    let took = t0.elapsed().as_micros() as u64;
    if answer.status != 201 {
        return Err(format!(
            "change: POST {path}: status {} (expected 201)",
            answer.status
        ));
    }
    Ok((t0, took))
}

/// Heartbeats per second with watchers over those without (medians).
fn watch_ratio(w: &WatchRun) -> f64 {
    median_of(&w.rounds, |x| x.load.rate()) / median_of(&w.control, Outcome::rate)
}

/// The fan-out's section.
fn render(bench: &Bench, runs: &[WatchRun]) -> String {
    let s = &bench.s;
    let now = &runs[0];
    let mut sec = Section::new("");
    sec.text(format_args!(
        "Watch fan-out: {} watchers, each with its own keep-alive connection, driven from one \
         load-generator thread (mio), wait on one app (`GET /registro/1.0/apps/{APP}?index=N&wait=60s`, N from a \
         first GET) while {CONNS} connections renew {} instances of other apps. In the middle of each of {} \
         heartbeat windows of {} s one change is made (a new instance of the watched app), and each watcher's \
         wait is timed from the change's request being sent until its answer was read; the one load-generator \
         thread reads every answer, so the slowest include its own reading. Control: the same windows with no \
         watcher connected ({} before they connect, {} after they close); the ratio is of the medians.",
        count(now.watchers),
        count(s.sizes[0]),
        now.rounds.len(),
        s.secs.as_secs_f64(),
        now.rounds.len(),
        now.rounds.len()
    ));
    sec.table(&[
        "Server",
        "watchers connected",
        "answered, each change",
        "p50",
        "p99",
        "max, each change",
        "watchers lost",
        "the change's own request",
        "heartbeats/s with watchers",
        "without",
        "ratio",
    ]);
    let labels = ["now".to_string(), s.before_name()];
    for (label, w) in labels.iter().zip(runs) {
        if !w.supported {
            let _ = writeln!(
                sec,
                "| {label} | n/a: no `Registro-Index`, no watches (a watch is answered at once) | | | | | | | | | |"
            );
            continue;
        }
        let each = |f: &dyn Fn(&WatchRound) -> String| {
            w.rounds.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        sec.row(&[
            label,
            &format_args!("{} of {}", count(w.connected), count(w.watchers)),
            &each(&|x| count(x.fanout.arrivals.len())),
            &ms_f(median_of(&w.rounds, |x| x.hist.quantile(0.5) as f64)),
            &ms_f(median_of(&w.rounds, |x| x.hist.quantile(0.99) as f64)),
            &each(&|x| ms(x.hist.max())),
            &w.rounds.iter().map(|x| x.fanout.errors).sum::<u64>(),
            &ms_f(median_of(&w.rounds, |x| x.change_us as f64)),
            &thousands(median_of(&w.rounds, |x| x.load.rate())),
            &thousands(median_of(&w.control, Outcome::rate)),
            &times(watch_ratio(w)),
        ]);
    }
    for (label, w) in labels.iter().zip(runs) {
        if let Some(x) = &w.alone {
            let _ = writeln!(
                sec,
                "| {label}, one more change with no heartbeats running (CPU meanwhile: server {:.0} ms, load generator {:.0} ms) | | {} | {} | {} | {} | {} | {} | | | |",
                x.load.server_cpu * 1e3,
                x.load.client_cpu * 1e3,
                count(x.fanout.arrivals.len()),
                ms(x.hist.quantile(0.5)),
                ms(x.hist.quantile(0.99)),
                ms(x.hist.max()),
                x.fanout.errors,
                ms(x.change_us)
            );
        }
    }
    let slowest = now.rounds.iter().map(|x| x.hist.max()).max();
    let fewest = now.rounds.iter().map(|x| x.fanout.arrivals.len()).min();
    let limited = if now.watchers < 10_000 && !s.quick {
        format!(
            " (W = {}: what the open-files limit allows)",
            count(now.watchers)
        )
    } else {
        String::new()
    };
    let measured = match (fewest, slowest) {
        (Some(fewest), Some(slowest)) if now.supported => format!(
            "at least {} of {} answered at every change, the slowest after {}",
            count(fewest),
            count(now.watchers),
            ms(slowest)
        ),
        _ => "n/a".to_string(),
    };
    let all_answered = now.connected == now.watchers
        && now.rounds.iter().all(|x| {
            x.fanout.errors == 0
                && x.fanout.arrivals.len() == now.watchers
                && x.hist.max() <= 100_000
        });
    let measured_any = now.supported && !now.rounds.is_empty();
    sec.target(
        format_args!(
            "All {} watchers answered within 100 ms of the change{limited}",
            count(now.watchers)
        ),
        measured,
        if measured_any {
            Verdict::of(all_answered)
        } else {
            Verdict::NotMeasured
        },
    );
    let ratio = watch_ratio(now);
    sec.target(
        "Heartbeats with the watchers waiting and answered >= 0.9x the same windows without",
        times(ratio),
        Verdict::check(ratio, |x| x >= 0.9),
    );
    let errors: u64 = now
        .control
        .iter()
        .chain(now.rounds.iter().map(|x| &x.load))
        .map(|o| o.errors)
        .sum();
    sec.target(
        "No heartbeat errors beside the watchers",
        errors,
        Verdict::of(errors == 0),
    );
    sec.finish()
}

/// `GET /registro/1.0/apps/watched?index=N&wait=60s`.
fn push_watch(out: &mut Vec<u8>, index: u64) {
    out.clear();
    let _ = write!(
        out,
        "GET /registro/1.0/apps/{APP}?index={index}&wait={WAIT} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    );
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

    /// The answers to one change, which found `armed` watchers waiting,
    /// waiting for the last until `until`.
    pub fn collect(&mut self, until: Instant, armed: usize) -> Result<Fanout, String> {
        self.cmd
            .send(Cmd::Collect { until })
            .map_err(|_| format!("watchers: {}", self.join_error()))?;
        match self.reports.recv() {
            Ok(Report::Fanout(f)) => Ok(Fanout { armed, ..f }),
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
        while opening < poller::RAMP && next < n {
            let w = &mut watchers[next];
            match poller::open(&poll, addr, next) {
                Ok(stream) => {
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
    match w.stream.as_ref().map(poller::connected) {
        Some(Ok(true)) => arm(w, index, request, seen),
        Some(Err(e)) => seen.fail(w, format!("connect: {e}")),
        _ => {}
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
    loop {
        let head = match http::head(&w.buf) {
            Ok(Some(head)) if w.buf.len() >= head.len + head.body => head,
            Ok(_) => return,
            Err(e) => return seen.fail(w, format!("answer: {e}")),
        };
        w.buf.drain(..head.len + head.body);
        let Some(index) = head.index else {
            return seen.fail(w, "answer: no Registro-Index".to_string());
        };
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
