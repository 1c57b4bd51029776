//! `make bench`: measures the release `registro` server against the targets
//! of issues 6 and 9 and prints a markdown table; with `--server PATH`, every
//! scenario but the fleet also runs, in the same run and interleaved round by
//! round, against that second server binary (the server as it was before
//! issue 9), and the report sets the two side by side.
//!
//! Each scenario runs against a fresh server process on loopback, driven by
//! the load generator in `load.rs` (std only: keep-alive HTTP/1.1 on
//! `TcpStream`). The baseline is this same binary run as a child process
//! with `--baseline-server`: a bare tiny_http server answering 204.
//!
//! Usage: `registro-bench [--quick] [--server PATH] [--registro PATH] [--runs N]
//! [--secs S] [--per-thread K] [--sweep-every S] [--down-after S] [--fleet N]
//! [--fleet-secs S] [--fleet-interval S] [--watchers N]
//! [--only hb,fresh,mixed,sweep,memory,watch,slowloris,fleet,pipelining,etcd,dashboard,datadir,dns]`;
//! `REGISTRO_BENCH_QUICK=1` is the same as `--quick`.

#![forbid(unsafe_code)]

mod baseline;
mod dashboard;
mod datadir;
mod dns;
mod etcd;
mod fleet;
mod hist;
mod http;
mod load;
mod pipelining;
mod proc;
mod report;
mod slowloris;
mod watch;

use load::{Fleet, Load, Outcome, Reader, ReaderOutcome};
use proc::{ServerProc, Stop, Sweep};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Concurrent connections of every heartbeat measurement (issue 6).
const CONNS: usize = 32;
/// Registration: connections, and requests pipelined on each at a time.
const REG_CONNS: usize = 8;
const REG_DEPTH: usize = 8;
/// Instances per address in the shared-address memory run.
const SHARED: usize = 16;
/// tiny_http worker threads of the baseline.
const BASELINE_WORKERS: usize = 2;

/// What to run, and how big.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tiny sizes and short windows, to check the benchmark still works.
    pub quick: bool,
    /// The server binary under test.
    pub server: PathBuf,
    /// A second server binary every earlier scenario also runs against.
    pub reference: Option<PathBuf>,
    /// The fleet scenario: clients (0: the open-files limit less 1,000),
    /// seconds between heartbeats, seconds measured.
    pub fleet_n: usize,
    pub fleet_interval: f64,
    pub fleet_secs: f64,
    /// The watch fan-out scenario's watchers (0: 10,000, or what the
    /// open-files limit allows).
    pub watch_n: usize,
    /// Rounds of each heartbeat measurement.
    pub runs: usize,
    /// Length of one heartbeat measurement.
    pub secs: Duration,
    /// Connections per load thread.
    pub per_thread: usize,
    /// The fleet sizes of scenario 1 (1,000, 100,000 and 1,000,000).
    pub sizes: [usize; 3],
    /// The fleet of the fresh-connection scenario (10,000).
    pub fresh_n: usize,
    /// The sweep scenario's `--sweep-every`, its short `--down-after`, and
    /// the long one of its quiet run.
    pub sweep_every: f64,
    pub down_after: f64,
    pub quiet_down_after: f64,
    /// Scenario groups to run (all when empty).
    pub only: Vec<String>,
}

impl Settings {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

/// Everything measured, run by run.
#[derive(Default)]
pub struct Results {
    /// Resident memory of each freshly started registry server.
    pub idle_rss: Vec<u64>,
    /// (instances, instances registered per second).
    pub registrations: Vec<(usize, f64)>,
    /// Scenario 2, one per round.
    pub baseline: Vec<Outcome>,
    /// Scenario 1: per size, one per round.
    pub heartbeats: [Vec<Outcome>; 3],
    /// Scenario 3.
    pub fresh: Vec<Outcome>,
    /// Scenario 4: heartbeats and the listing reader.
    pub mixed: Vec<(Outcome, ReaderOutcome)>,
    /// Scenario 5: bytes per instance at the largest size.
    pub per_instance: Vec<f64>,
    /// The same with `SHARED` instances per address (one run).
    pub per_instance_shared: Option<f64>,
    /// Scenario 6, once per `--down-after`.
    pub sweeps: Vec<SweepRun>,
    /// Server processes that did not exit cleanly (0) when stopped.
    pub bad_exits: Vec<String>,
    /// The same scenarios against the `--server` binary.
    pub before: Option<Box<Results>>,
    /// The fleet scenario.
    pub fleet: Option<fleet::FleetOutcome>,
    /// The watch fan-out scenario.
    pub watch: Option<WatchRun>,
    /// The slowloris scenario.
    pub slowloris: Option<SlowRun>,
}

/// Heartbeats beside idle and slowloris connections (issue 9), one server.
#[derive(Default)]
pub struct SlowRun {
    /// One per round.
    pub rounds: Vec<slowloris::SlowRound>,
    /// Server threads with none of the connections, and with them all.
    pub threads: [u64; 2],
    /// Server resident bytes likewise.
    pub rss: [u64; 2],
    /// Idle and slow connections held, and how many of them the server
    /// still held open at the end.
    pub held: [usize; 2],
    pub still_open: usize,
}

/// The watch fan-out (issue 10) against one server.
#[derive(Default)]
pub struct WatchRun {
    /// Whether the server answers with `Registro-Index` (watches); when not,
    /// nothing else was measured.
    pub supported: bool,
    /// Watchers asked for, and connected with a watch sent.
    pub watchers: usize,
    pub connected: usize,
    /// One per change: the fan-out, each watcher's wait from the change's
    /// request being sent to its answer (µs), how long the change's own
    /// request took (µs), and the heartbeats of the window around it.
    pub rounds: Vec<WatchRound>,
    /// The same heartbeat windows with no watcher connected (before the
    /// watchers connect and after they close).
    pub control: Vec<Outcome>,
    /// One more change with no heartbeats running: the fan-out alone (its
    /// `load` holds only the CPU time both processes used meanwhile).
    pub alone: Option<WatchRound>,
}

/// One change and its fan-out.
pub struct WatchRound {
    pub fanout: watch::Fanout,
    pub hist: hist::Histogram,
    pub change_us: u64,
    pub load: Outcome,
}

impl WatchRound {
    /// `fanout` of the change sent at `t0`, each arrival timed from then.
    fn new(fanout: watch::Fanout, t0: Instant, change_us: u64, load: Outcome) -> WatchRound {
        let mut hist = hist::Histogram::default();
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
}

/// The sweeps seen while heartbeats ran against one server.
pub struct SweepRun {
    /// The server's `--down-after`.
    pub down_after: f64,
    /// Each logged pass of the ticker that overlapped the load (a pass
    /// longer than the load counts for its part inside), with the slowest
    /// heartbeat that overlapped it (µs).
    pub sweeps: Vec<(Sweep, u64)>,
    /// The heartbeat load.
    pub load: Outcome,
    /// The slowest heartbeat of the same load that overlapped no sweep.
    pub control: Option<u64>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().is_some_and(|a| a == "--baseline-server") {
        baseline::serve(BASELINE_WORKERS)
    } else {
        parse_args(&args).and_then(|s| run(&s))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registro-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<Settings, String> {
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("REGISTRO_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut s = Settings {
        quick,
        server: default_server()?,
        runs: if quick { 3 } else { 5 },
        secs: if quick {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(2)
        },
        // Measured on this 2-core machine against the baseline: a thread per
        // connection costs the load generator 11-14 µs of CPU per request,
        // 4 connections per thread 7.5-9 µs and gives the highest rates; one
        // thread for all 32 costs 6.5 µs but runs them in lockstep and
        // lowers the rate.
        per_thread: 4,
        sizes: if quick {
            [100, 1_000, 3_000]
        } else {
            [1_000, 100_000, 1_000_000]
        },
        fresh_n: if quick { 300 } else { 10_000 },
        sweep_every: if quick { 0.1 } else { 2.0 },
        down_after: if quick { 0.05 } else { 1.0 },
        quiet_down_after: 3600.0,
        reference: None,
        // 0: as many as the open-files limit allows (both processes have it).
        fleet_n: if quick { 500 } else { 0 },
        fleet_interval: if quick { 0.5 } else { 5.0 },
        fleet_secs: if quick { 2.0 } else { 30.0 },
        watch_n: if quick { 200 } else { 0 },
        only: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--quick" => {}
            "--server" => s.reference = Some(PathBuf::from(value("--server")?)),
            "--registro" => s.server = PathBuf::from(value("--registro")?),
            "--fleet" => s.fleet_n = parse_num(&value("--fleet")?, "--fleet")?,
            "--fleet-secs" => s.fleet_secs = parse_num(&value("--fleet-secs")?, "--fleet-secs")?,
            "--fleet-interval" => {
                s.fleet_interval = parse_num(&value("--fleet-interval")?, "--fleet-interval")?
            }
            "--watchers" => s.watch_n = parse_num(&value("--watchers")?, "--watchers")?,
            "--runs" => s.runs = parse_num(&value("--runs")?, "--runs")?,
            "--secs" => s.secs = Duration::from_secs_f64(parse_num(&value("--secs")?, "--secs")?),
            "--per-thread" => s.per_thread = parse_num(&value("--per-thread")?, "--per-thread")?,
            "--sweep-every" => s.sweep_every = parse_num(&value("--sweep-every")?, "--sweep-every")?,
            "--down-after" => s.down_after = parse_num(&value("--down-after")?, "--down-after")?,
            "--only" => s.only = value("--only")?.split(',').map(str::to_string).collect(),
            "-h" | "--help" => {
                return Err(
                    "usage: registro-bench [--quick] [--server PATH (a second server to compare)] \
                     [--registro PATH (the server under test)] [--runs N] [--secs S] \
                     [--per-thread K] [--sweep-every S] [--down-after S] [--fleet N] [--fleet-secs S] \
                     [--fleet-interval S] [--watchers N] \
                     [--only hb,fresh,mixed,sweep,memory,watch,slowloris,fleet,pipelining,etcd,dashboard,datadir,dns]"
                        .to_string(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if s.runs == 0 || s.per_thread == 0 || s.secs.is_zero() {
        return Err("--runs, --per-thread and --secs must be positive".to_string());
    }
    if !(s.fleet_secs > 0.0 && s.fleet_interval > 0.0) {
        return Err("--fleet-secs and --fleet-interval must be positive".to_string());
    }
    Ok(s)
}

fn parse_num<T: std::str::FromStr>(v: &str, name: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name}: not a number: {v:?}"))
}

/// `registro` next to this binary (both live in `target/release`).
fn default_server() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own path: {e}"))?;
    let dir = exe.parent().ok_or("own path has no directory")?;
    // Test binaries live one level down, in `deps/`.
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    Ok(dir.join("registro"))
}

fn run(s: &Settings) -> Result<(), String> {
    if !s.server.is_file() {
        return Err(format!(
            "no server binary at {}: build it first (`cargo build --release -p registro`; `make bench` does)",
            s.server.display()
        ));
    }
    if let Some(reference) = s.reference.as_ref().filter(|p| !p.is_file()) {
        return Err(format!("--server {}: no such file", reference.display()));
    }
    let began = Instant::now();
    let mut r = Results::default();
    if s.reference.is_some() {
        r.before = Some(Box::default());
    }
    progress(
        began,
        format_args!(
            "server {}; {} runs of {:?} per figure; {CONNS} connections, {} per load thread",
            s.server.display(),
            s.runs,
            s.secs,
            s.per_thread
        ),
    );
    if s.wants("hb") || s.wants("fresh") || s.wants("mixed") {
        scenarios_1_to_4(s, &mut r, began)?;
    }
    // The long scenarios run against each server in turn.
    let mut rb = r.before.take();
    let mut servers = vec![(s.clone(), &mut r)];
    if let (Some(reference), Some(rb)) = (&s.reference, rb.as_deref_mut()) {
        let mut s2 = s.clone();
        s2.server = reference.clone();
        servers.push((s2, rb));
    }
    for (s, r) in servers {
        if s.wants("sweep") {
            // A quiet sweep (nothing expires) and a busy one (every instance not
            // renewed in the last `down_after` goes down, one event each).
            scenario_sweep(&s, r, s.quiet_down_after, began)?;
            scenario_sweep(&s, r, s.down_after, began)?;
        }
        if s.wants("memory") {
            scenario_memory(&s, r, began)?;
        }
        if s.wants("watch") {
            scenario_watch(&s, r, began)?;
        }
    }
    if let Some(mut rb) = rb {
        r.bad_exits.append(&mut rb.bad_exits);
        r.before = Some(rb);
    }
    if s.wants("slowloris") {
        scenario_slowloris(s, &mut r, began)?;
    }
    if s.wants("fleet") {
        scenario_fleet(s, &mut r, began)?;
    }
    let piped = match s.wants("pipelining") {
        true => pipelining::scenario(s, &mut r, began)?,
        false => String::new(),
    };
    if s.wants("etcd") {
        etcd::scenario(s, began)?;
    }
    let dashboard = if s.wants("dashboard") {
        dashboard::scenario(s, began)?
    } else {
        String::new()
    };
    let datadir = s
        .wants("datadir")
        .then(|| datadir::scenario(s, began))
        .transpose()?;
    let dns = s
        .wants("dns")
        .then(|| dns::scenario(s, began))
        .transpose()?;
    let elapsed = began.elapsed();
    print!("{}{piped}{dashboard}", report::render(s, &r, elapsed));
    print!("{}", datadir.unwrap_or_default());
    print!("{}", dns.unwrap_or_default());
    if r.bad_exits.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "servers did not stop cleanly: {}",
            r.bad_exits.join("; ")
        ))
    }
}

/// Prints one progress line on stderr, stamped with the seconds elapsed.
fn progress(began: Instant, what: std::fmt::Arguments<'_>) {
    eprintln!("[{:6.1}s] {what}", began.elapsed().as_secs_f64());
}

/// Starts the registry server with extra flags, checks it answers, and
/// records its idle resident memory.
fn start_registry(
    s: &Settings,
    r: &mut Results,
    name: &str,
    extra: &[String],
) -> Result<ServerProc, String> {
    start_binary(&s.server, r, name, extra)
}

/// Starts the server binary `bin` with extra flags, as `start_registry` does.
fn start_binary(
    bin: &std::path::Path,
    r: &mut Results,
    name: &str,
    extra: &[String],
) -> Result<ServerProc, String> {
    let mut cmd = Command::new(bin);
    cmd.args(["--addr", "127.0.0.1:0"]).args(extra);
    let server = ServerProc::start(name, cmd, Stop::Term)?;
    match load::request_once(server.addr, load::LISTING) {
        Ok((200, _)) => {}
        Ok((status, _)) => return Err(format!("{name}: GET /registro/1.0/apps answered {status}")),
        Err(e) => return Err(format!("{name}: GET /registro/1.0/apps: {e}")),
    }
    r.idle_rss.push(server.rss()?);
    Ok(server)
}

fn start_baseline() -> Result<ServerProc, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own path: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--baseline-server");
    let server = ServerProc::start("baseline", cmd, Stop::CloseStdin)?;
    match load::request_once(server.addr, load::LISTING) {
        Ok((204, _)) => Ok(server),
        Ok((status, _)) => Err(format!("baseline answered {status}")),
        Err(e) => Err(format!("baseline: {e}")),
    }
}

/// Registers `fleet`, records the rate and returns the resident bytes each
/// instance added; `up` then renews each once.
fn fill(
    server: &ServerProc,
    fleet: Fleet,
    r: &mut Results,
    up: bool,
    began: Instant,
) -> Result<f64, String> {
    let n = fleet.n;
    let before = server.rss()?;
    let took = load::register(server.addr, fleet, REG_CONNS, REG_DEPTH)?;
    let rate = n as f64 / took.as_secs_f64().max(1e-9);
    r.registrations.push((n, rate));
    let after = server.rss()?;
    let per = after.saturating_sub(before) as f64 / n.max(1) as f64;
    progress(
        began,
        format_args!(
            "registered {} instances in {:.1} s ({}/s); resident {} -> {} ({per:.0} B per instance)",
            report::thousands(n as f64),
            took.as_secs_f64(),
            report::thousands(rate),
            report::bytes(before),
            report::bytes(after)
        ),
    );
    if up {
        let took = load::renew_all(server.addr, fleet, REG_CONNS, REG_DEPTH)?;
        progress(
            began,
            format_args!(
                "renewed each once (now up) in {:.1} s ({}/s)",
                took.as_secs_f64(),
                report::thousands(n as f64 / took.as_secs_f64().max(1e-9))
            ),
        );
    }
    Ok(per)
}

fn heartbeat_load(s: &Settings, addr: std::net::SocketAddr, n: usize, offset: usize) -> Load {
    Load {
        addr,
        fleet: Fleet::new(n),
        conns: CONNS,
        per_thread: s.per_thread,
        duration: s.secs,
        fresh: false,
        offset,
        samples: false,
        stop: None,
        started: None,
    }
}

/// Runs `load` against `server`, noting the CPU time both sides used.
fn measure(load: &Load, server: &ServerProc, base: Instant) -> Outcome {
    measure_pid(load, server.pid(), base)
}

fn measure_pid(load: &Load, pid: u32, base: Instant) -> Outcome {
    let cpu = || (proc::cpu_secs(Some(pid)), proc::cpu_secs(None));
    let before = cpu();
    let mut o = load::run(load, base);
    let after = cpu();
    o.server_cpu = after.0.zip(before.0).map_or(f64::NAN, |(a, b)| a - b);
    o.client_cpu = after.1.zip(before.1).map_or(f64::NAN, |(a, b)| a - b);
    o
}

fn stop(server: ServerProc, r: &mut Results, name: &str) {
    match server.stop() {
        Ok(status) if status.success() => {}
        Ok(status) => r.bad_exits.push(format!("{name}: {status}")),
        Err(e) => r.bad_exits.push(format!("{name}: {e}")),
    }
}

/// Scenarios 1 and 2 interleaved round by round (so drift on a shared
/// machine hits the baseline and every size alike), with what a ratio
/// compares measured back to back (the baseline and the smallest size; the
/// two servers at each size, when a second one is given), then 3 and 4,
/// likewise interleaved.
fn scenarios_1_to_4(s: &Settings, r: &mut Results, began: Instant) -> Result<(), String> {
    with_before(r, |r, rb| scenarios_1_to_4_both(s, r, rb, began))
}

/// Runs `f` with the results of the server under test and, if a second
/// server is compared, of that one; the second's bad exits join the first's.
fn with_before(
    r: &mut Results,
    f: impl FnOnce(&mut Results, Option<&mut Results>) -> Result<(), String>,
) -> Result<(), String> {
    let mut rb = r.before.take();
    let result = f(r, rb.as_deref_mut());
    if let Some(mut rb) = rb {
        r.bad_exits.append(&mut rb.bad_exits);
        r.before = Some(rb);
    }
    result
}

/// The binaries to run: the server under test, and the reference if any,
/// each with the results it fills.
fn binaries<'a>(
    s: &Settings,
    r: &'a mut Results,
    rb: Option<&'a mut Results>,
) -> Vec<(PathBuf, &'static str, &'a mut Results)> {
    let mut v = vec![(s.server.clone(), "", r)];
    if let (Some(reference), Some(rb)) = (&s.reference, rb) {
        v.push((reference.clone(), " (before)", rb));
    }
    v
}

fn scenarios_1_to_4_both(
    s: &Settings,
    r: &mut Results,
    rb: Option<&mut Results>,
    began: Instant,
) -> Result<(), String> {
    let hb = s.wants("hb");
    let mut both = binaries(s, r, rb);
    let baseline = if hb { Some(start_baseline()?) } else { None };
    // (which binary, size index, size, server)
    let mut sized = Vec::new();
    if hb {
        for (b, (bin, tag, res)) in both.iter_mut().enumerate() {
            for (k, &n) in s.sizes.iter().enumerate() {
                let server = start_binary(bin, res, &format!("registro-{n}{tag}"), &[])?;
                let per = fill(&server, Fleet::new(n), res, true, began)?;
                if k == 2 {
                    res.per_instance.push(per);
                }
                sized.push((b, k, n, server));
            }
        }
    }
    if let Some(base) = &baseline {
        // One group per size: the two servers back to back, and the baseline
        // beside the smallest, so that each ratio compares measurements a
        // few seconds apart, not a round apart (the machine's speed drifts).
        // The groups rotate and each group's order reverses round by round.
        let groups: Vec<Vec<Option<usize>>> = (0..s.sizes.len())
            .map(|k| {
                let servers = sized.iter().enumerate().filter(|(_, x)| x.1 == k);
                let mut group: Vec<Option<usize>> = servers.map(|(i, _)| Some(i)).collect();
                if k == 0 {
                    group.insert(0, None);
                }
                group
            })
            .collect();
        for round in 0..s.runs {
            for g in 0..groups.len() {
                let mut group = groups[(g + round) % groups.len()].clone();
                if round % 2 == 1 {
                    group.reverse();
                }
                for slot in group {
                    let (label, server, n, at) = match slot {
                        None => ("baseline".to_string(), base, s.sizes[0], None),
                        Some(i) => {
                            let (b, k, n, server) = &sized[i];
                            (
                                format!(
                                    "heartbeats {}{}",
                                    report::thousands(*n as f64),
                                    both[*b].1
                                ),
                                server,
                                *n,
                                Some((*b, *k)),
                            )
                        }
                    };
                    let o = measure(
                        &heartbeat_load(s, server.addr, n, round * 7919),
                        server,
                        Instant::now(),
                    );
                    progress(
                        began,
                        format_args!("round {}: {label}: {}", round + 1, report::summary(&o)),
                    );
                    match at {
                        None => both[0].2.baseline.push(o),
                        Some((b, k)) => both[b].2.heartbeats[k].push(o),
                    }
                }
            }
        }
    }
    if let Some(base) = baseline {
        stop(base, both[0].2, "baseline");
    }
    // Scenario 4 on the mid-sized servers (or fresh ones), rounds interleaved.
    let mut mixed = Vec::new();
    for (b, k, n, server) in sized {
        if k == 1 && s.wants("mixed") {
            mixed.push((b, server));
        } else {
            let name = format!("registro-{n}{}", both[b].1);
            stop(server, both[b].2, &name);
        }
    }
    if s.wants("mixed") && !hb {
        for (b, (bin, tag, res)) in both.iter_mut().enumerate() {
            let server = start_binary(bin, res, &format!("registro-mixed{tag}"), &[])?;
            fill(&server, Fleet::new(s.sizes[1]), res, true, began)?;
            mixed.push((b, server));
        }
    }
    for round in 0..s.runs {
        for j in 0..mixed.len() {
            let (b, server) = &mixed[(j + round) % mixed.len()];
            let tag = both[*b].1;
            scenario_mixed_round(s, both[*b].2, server, round, tag, began);
        }
    }
    for (b, server) in mixed {
        stop(server, both[b].2, "registro-mixed");
    }
    if s.wants("fresh") {
        let mut fresh = Vec::new();
        for (b, (bin, tag, res)) in both.iter_mut().enumerate() {
            let server = start_binary(bin, res, &format!("registro-fresh{tag}"), &[])?;
            fill(&server, Fleet::new(s.fresh_n), res, true, began)?;
            fresh.push((b, server));
        }
        for round in 0..s.runs {
            for j in 0..fresh.len() {
                let (b, server) = &fresh[(j + round) % fresh.len()];
                let mut load = heartbeat_load(s, server.addr, s.fresh_n, round * 7919);
                load.fresh = true;
                let o = measure(&load, server, Instant::now());
                progress(
                    began,
                    format_args!(
                        "round {}: fresh connections{}: {}",
                        round + 1,
                        both[*b].1,
                        report::summary(&o)
                    ),
                );
                both[*b].2.fresh.push(o);
            }
        }
        for (b, server) in fresh {
            stop(server, both[b].2, "registro-fresh");
        }
    }
    Ok(())
}

/// Scenario 4, one round: heartbeats while one more client reads the full
/// listing in a loop.
fn scenario_mixed_round(
    s: &Settings,
    r: &mut Results,
    server: &ServerProc,
    round: usize,
    tag: &str,
    began: Instant,
) {
    let reader = Reader::start(server.addr, s.secs * 3 + Duration::from_secs(5));
    let o = measure(
        &heartbeat_load(s, server.addr, s.sizes[1], round * 7919),
        server,
        Instant::now(),
    );
    let listing = reader.finish();
    progress(
        began,
        format_args!(
            "round {}: heartbeats while listing{tag}: {}; {} listings of {} (p50 {}), {} errors",
            round + 1,
            report::summary(&o),
            listing.listings,
            report::bytes(listing.bytes as u64),
            report::ms(listing.hist.quantile(0.5)),
            listing.errors
        ),
    );
    r.mixed.push((o, listing));
}

/// How many connections a scenario may hold, each with its client side in
/// this process: `asked`, or (0) what the open-files limit allows less a
/// reserve, at most `most`; an error when `asked` does not fit.
fn connections_allowed(asked: usize, most: usize, what: &str) -> Result<usize, String> {
    let fds = fleet::raise_nofile();
    let n = match asked {
        0 => usize::try_from(fds.saturating_sub(1000))
            .unwrap_or(most)
            .min(most),
        n => n,
    };
    if (n as u64) + 256 > fds {
        return Err(format!(
            "{what} {n} connections need {} open files; the limit is {fds}",
            n + 256
        ));
    }
    Ok(n)
}

/// Heartbeats beside 2,000 idle and 300 slowloris connections (issue 9):
/// both servers hold their connections at once and are measured in turn,
/// round by round, each round trickling only to the server measured.
fn scenario_slowloris(s: &Settings, r: &mut Results, began: Instant) -> Result<(), String> {
    with_before(r, |r, rb| scenario_slowloris_both(s, r, rb, began))
}

fn scenario_slowloris_both(
    s: &Settings,
    r: &mut Results,
    rb: Option<&mut Results>,
    began: Instant,
) -> Result<(), String> {
    let heartbeats = if s.quick { 20 } else { 100 };
    let (idle, slow) = if s.quick {
        (slowloris::IDLE / 10, slowloris::SLOW / 10)
    } else {
        (slowloris::IDLE, slowloris::SLOW)
    };
    let fds = fleet::raise_nofile();
    let needed = 2 * 2 * (idle + slow) as u64 + 256;
    if fds < needed {
        return Err(format!(
            "slowloris: needs {needed} open files; the limit is {fds}"
        ));
    }
    let mut both = binaries(s, r, rb);
    // Slow senders are held for the whole scenario, not cut off at 10 s.
    let flags = ["--request-timeout".to_string(), "600".to_string()];
    let mut held = Vec::new();
    for (bin, tag, res) in both.iter_mut() {
        let server = start_binary(bin, res, &format!("registro-slowloris{tag}"), &flags)?;
        fill(&server, Fleet::new(1), res, true, began)?;
        let pid = server.pid();
        let before = (fleet::threads(pid), server.rss()?);
        let connections =
            slowloris::hold(server.addr, idle, slow).map_err(|e| format!("slowloris{tag}: {e}"))?;
        let run = SlowRun {
            held: [idle, slow],
            threads: [before.0, fleet::threads(pid)],
            rss: [before.1, server.rss()?],
            ..SlowRun::default()
        };
        progress(
            began,
            format_args!(
                "slowloris{tag}: {idle} idle + {slow} slow connections held; server threads {} -> {}, resident {} -> {}",
                run.threads[0],
                run.threads[1],
                report::bytes(run.rss[0]),
                report::bytes(run.rss[1])
            ),
        );
        held.push((server, connections, run, pid));
    }
    for round in 0..s.runs {
        for j in 0..held.len() {
            let b = (j + round) % held.len();
            let (_, connections, run, pid) = &mut held[b];
            let cpu_before = proc::cpu_secs(Some(*pid));
            let mut o = connections.round(heartbeats);
            o.server_cpu = proc::cpu_secs(Some(*pid))
                .zip(cpu_before)
                .map_or(f64::NAN, |(a, b)| a - b);
            progress(
                began,
                format_args!(
                    "round {}: slowloris{}: {} heartbeats, p50 {}, p99 {}, max {}, {} errors, {} bytes trickled, server CPU {:.1} us per byte",
                    round + 1,
                    both[b].1,
                    o.hist.count(),
                    report::ms(o.hist.quantile(0.5)),
                    report::ms(o.hist.quantile(0.99)),
                    report::ms(o.hist.max()),
                    o.errors,
                    o.trickled,
                    o.server_cpu * 1e6 / o.trickled.max(1) as f64
                ),
            );
            run.rounds.push(o);
        }
    }
    for (b, (server, connections, mut run, _)) in held.into_iter().enumerate() {
        run.still_open = connections.still_open();
        drop(connections);
        let name = format!("registro-slowloris{}", both[b].1);
        stop(server, both[b].2, &name);
        both[b].2.slowloris = Some(run);
    }
    Ok(())
}

/// The fleet (issue 9): `fleet_n` clients, each with its own keep-alive
/// connection and instance, heartbeating every `fleet_interval` seconds
/// (+/- 10%) for `fleet_secs`, from one load-generator thread.
fn scenario_fleet(s: &Settings, r: &mut Results, began: Instant) -> Result<(), String> {
    let n = connections_allowed(s.fleet_n, 100_000, "the fleet of")?;
    let flags = [
        "--max-connections".to_string(),
        (n + 1000).to_string(),
        "--idle-timeout".to_string(),
        // As Go's net/http keeps idle connections: longer than the ramp.
        (s.fleet_interval * 4.0).max(90.0).to_string(),
    ];
    let server = start_registry(s, r, "registro-fleet", &flags)?;
    fill(&server, Fleet::new(n), r, true, began)?;
    let load = fleet::FleetLoad {
        n,
        interval: Duration::from_secs_f64(s.fleet_interval),
        jitter: 0.1,
        duration: Duration::from_secs_f64(s.fleet_secs),
        ramp: 256,
    };
    progress(
        began,
        format_args!(
            "fleet: {} clients, one heartbeat each every {} s (+/- 10%), {} s",
            report::thousands(n as f64),
            s.fleet_interval,
            s.fleet_secs
        ),
    );
    let rss = || server.rss().unwrap_or(0);
    let o = fleet::run(server.addr, server.pid(), load, &rss).map_err(|e| format!("fleet: {e}"))?;
    progress(began, format_args!("fleet: {}", report::fleet_summary(&o)));
    r.fleet = Some(o);
    stop(server, r, "registro-fleet");
    Ok(())
}

/// Scenario 6: heartbeats at full speed over the largest fleet while the
/// sweeper runs every `sweep_every`; each sweep is matched with the slowest
/// heartbeat whose flight overlapped it.
fn scenario_sweep(
    s: &Settings,
    r: &mut Results,
    down_after: f64,
    began: Instant,
) -> Result<(), String> {
    let n = s.sizes[2];
    let flags = [
        "--sweep-every".to_string(),
        s.sweep_every.to_string(),
        "--down-after".to_string(),
        down_after.to_string(),
        // Longer than --down-after, as the server requires; nothing is
        // evicted within a run either way.
        "--evict-after".to_string(),
        (2.0 * down_after).max(600.0).to_string(),
        // One summary line per pass, even when nothing changed.
        "--log-sweeps".to_string(),
    ];
    let server = start_registry(s, r, "registro-sweep", &flags)?;
    let per = fill(&server, Fleet::new(n), r, false, began)?;
    r.per_instance.push(per);
    let every = Duration::from_secs_f64(s.sweep_every);
    let want = heavy_runs(s);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let mut load = heartbeat_load(s, server.addr, n, 0);
    load.samples = true;
    load.stop = Some(Arc::clone(&stop_flag));
    load.duration = every * 20 + Duration::from_secs(2);
    let started = Arc::new(OnceLock::new());
    load.started = Some(Arc::clone(&started));
    let deadline = Instant::now() + load.duration;
    server.drain_sweeps();
    let pid = server.pid();
    let base = Instant::now();
    let handle = std::thread::spawn(move || measure_pid(&load, pid, base));
    // Each sweep as a window of µs after `base`; the line is read just
    // after the pass ends, and its duration is in whole ms: 1 ms of slack.
    let window = |sweep: &Sweep| {
        let end = sweep.at.saturating_duration_since(base).as_micros() as u64;
        (end.saturating_sub((sweep.ms * 1000.0) as u64 + 1000), end)
    };
    // A sweep counts when it began after the measurement started.
    let started_us = || {
        started
            .get()
            .map(|t| t.saturating_duration_since(base).as_micros() as u64)
    };
    let mut seen = Vec::new();
    let mut complete = 0;
    while complete < want {
        let Some(sweep) = server.next_sweep(deadline) else {
            break;
        };
        if started_us().is_some_and(|t| window(&sweep).0 >= t) {
            complete += 1;
        }
        seen.push(sweep);
    }
    stop_flag.store(true, Ordering::Relaxed);
    let o = handle
        .join()
        .map_err(|_| "sweep load thread panicked".to_string())?;
    let first = started_us().unwrap_or(u64::MAX);
    let last = o
        .samples
        .iter()
        .map(|x| x.start_us + x.latency_us)
        .max()
        .unwrap_or(0);
    let overlaps = |x: &load::Sample, (start, end): (u64, u64)| {
        x.start_us < end && x.start_us + x.latency_us > start
    };
    // The ticker logs a pass when it ends, and its due-time settling goes on
    // as long as instances keep falling due (with a short --down-after,
    // while the heartbeats run): a pass still going when the load stopped
    // is waited for, until a line of a pass that began after the load.
    let settle = Instant::now() + every + Duration::from_secs(5);
    while let Some(sweep) = server.next_sweep(settle) {
        let after = window(&sweep).0 >= last;
        seen.push(sweep);
        if after {
            break;
        }
    }
    let mut run = SweepRun {
        down_after,
        sweeps: Vec::new(),
        load: Outcome::default(),
        control: None,
    };
    for sweep in &seen {
        let (start, end) = window(sweep);
        if end <= first || start >= last {
            continue; // outside the measurement
        }
        // A pass longer than the measurement counts for its part inside.
        let (start, end) = (start.max(first), end.min(last));
        let worst = o
            .samples
            .iter()
            .filter(|x| overlaps(x, (start, end)))
            .map(|x| x.latency_us)
            .max()
            .unwrap_or(0);
        progress(
            began,
            format_args!(
                "sweep of {} instances: {:.0} ms, longest lock hold {:.0} us, down {}, removed {}; worst heartbeat meanwhile {}",
                sweep.checked, sweep.ms, sweep.lock_us, sweep.down, sweep.removed, report::ms(worst)
            ),
        );
        run.sweeps.push((*sweep, worst));
    }
    run.control = o
        .samples
        .iter()
        .filter(|x| !seen.iter().any(|sw| overlaps(x, window(sw))))
        .map(|x| x.latency_us)
        .max();
    progress(
        began,
        format_args!(
            "heartbeats while sweeping: {}; worst heartbeat outside sweeps {}",
            report::summary(&o),
            run.control.map_or("n/a".to_string(), report::ms)
        ),
    );
    run.load = o;
    run.load.samples = Vec::new();
    if run.sweeps.len() < want {
        progress(
            began,
            format_args!("warning: only {} whole sweeps observed", run.sweeps.len()),
        );
    }
    r.sweeps.push(run);
    stop(server, r, "registro-sweep");
    Ok(())
}

/// Runs for the scenarios that each need a fleet of the largest size of
/// their own (memory) or take seconds per observation (sweep).
fn heavy_runs(s: &Settings) -> usize {
    s.runs.min(3)
}

/// Scenario 5's remaining runs: the largest fleet registered into fresh
/// servers until there are `heavy_runs` per-instance figures; then once
/// more with 16 instances per address (as on shared hosts), since an
/// address shared by several instances may be stored once.
fn scenario_memory(s: &Settings, r: &mut Results, began: Instant) -> Result<(), String> {
    while r.per_instance.len() < heavy_runs(s) {
        let server = start_registry(s, r, "registro-memory", &[])?;
        let per = fill(&server, Fleet::new(s.sizes[2]), r, false, began)?;
        r.per_instance.push(per);
        stop(server, r, "registro-memory");
    }
    let server = start_registry(s, r, "registro-memory-shared", &[])?;
    let fleet = Fleet {
        n: s.sizes[2],
        hosts: s.sizes[2] / SHARED,
    };
    r.per_instance_shared = Some(fill(&server, fleet, r, false, began)?);
    stop(server, r, "registro-memory-shared");
    Ok(())
}

/// One request on a new connection that the server closes after answering:
/// the status, the head and the body.
fn exchange(addr: std::net::SocketAddr, request: &str) -> Result<(u16, Vec<u8>, Vec<u8>), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, http::IO_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(http::IO_TIMEOUT))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut all = Vec::new();
    stream
        .read_to_end(&mut all)
        .map_err(|e| format!("read: {e}"))?;
    let end =
        http::find(&all, b"\r\n\r\n").ok_or("no whole answer before the connection closed")?;
    let head = http::parse_head(&all[..end]).map_err(|e| format!("answer: {e}"))?;
    let body = all.split_off(end + 4);
    all.truncate(end);
    Ok((head.status, all, body))
}

/// `POST` of a JSON body; the answer must be 201.
fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> Result<(), String> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    match exchange(addr, &request) {
        Ok((201, _, _)) => Ok(()),
        Ok((status, _, _)) => Err(format!("POST {path}: status {status} (expected 201)")),
        Err(e) => Err(format!("POST {path}: {e}")),
    }
}

/// A gauge or counter of the server's `/metrics`, when it has one.
fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let (status, _, body) = exchange(addr, request).ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        let value = l.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Polls `/metrics` until `name` satisfies `done` or `limit` passes;
/// false when it did not (or the server has no such metric).
fn wait_metric(
    addr: std::net::SocketAddr,
    name: &str,
    limit: Duration,
    done: impl Fn(f64) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match metric(addr, name) {
            Some(v) if done(v) => return true,
            None => return false,
            Some(_) if Instant::now() >= deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The watch fan-out (issue 10): heartbeats renew the smallest fleet while
/// `watch_n` watchers, each on its own connection, wait on one more app;
/// in the middle of each watched window one change (a new instance of that
/// app) wakes them all, and each watcher's wait is timed from the moment
/// the change's request was sent until its answer arrived. The same windows
/// with no watcher connected, before they connect and after they close, are
/// the control.
fn scenario_watch(s: &Settings, r: &mut Results, began: Instant) -> Result<(), String> {
    let n = connections_allowed(s.watch_n, 10_000, "watchers:")?;
    let flags = [
        "--max-connections".to_string(),
        (n + 1000).to_string(),
        "--idle-timeout".to_string(),
        "120".to_string(),
    ];
    let server = start_registry(s, r, "registro-watch", &flags)?;
    let mut run = WatchRun {
        watchers: n,
        ..WatchRun::default()
    };
    post(
        server.addr,
        "/registro/1.0/apps",
        &format!(r#"{{"name":"{}"}}"#, watch::APP),
    )?;
    let path = format!("/registro/1.0/apps/{}", watch::APP);
    let (status, head, _) = exchange(
        server.addr,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {path}: status {status} (expected 200)"));
    }
    let Some(index) = watch::index_of(&head).map_err(|e| format!("GET {path}: {e}"))? else {
        progress(
            began,
            format_args!("watch fan-out: the server sends no Registro-Index (no watches): n/a"),
        );
        r.watch = Some(run);
        stop(server, r, "registro-watch");
        return Ok(());
    };
    run.supported = true;
    fill(&server, Fleet::new(s.sizes[0]), r, true, began)?;
    let rounds = heavy_runs(s);
    let hb = |round: usize| heartbeat_load(s, server.addr, s.sizes[0], round * 7919);
    for round in 0..rounds {
        let o = measure(&hb(round), &server, Instant::now());
        progress(
            began,
            format_args!(
                "watch control {}: heartbeats without watchers: {}",
                round + 1,
                report::summary(&o)
            ),
        );
        run.control.push(o);
    }
    let t = Instant::now();
    let mut watchers = watch::Watchers::start(server.addr, n, index)?;
    run.connected = watchers.connected;
    progress(
        began,
        format_args!(
            "watch fan-out: {} of {} watchers connected and waiting on {} (index {index}) in {:.1} s",
            report::thousands(watchers.connected as f64),
            report::thousands(n as f64),
            watch::APP,
            t.elapsed().as_secs_f64()
        ),
    );
    for round in 0..rounds {
        let armed = watchers.armed;
        let waiting = |v: f64| v >= armed as f64;
        if !wait_metric(
            server.addr,
            "registro_watches_waiting",
            Duration::from_secs(20),
            waiting,
        ) {
            progress(
                began,
                format_args!("warning: the server does not report {armed} watches waiting"),
            );
        }
        let started = Arc::new(OnceLock::new());
        let mut load = hb(rounds + round);
        load.started = Some(Arc::clone(&started));
        let pid = server.pid();
        let handle = std::thread::spawn(move || measure_pid(&load, pid, Instant::now()));
        // The change, in the middle of the measured window.
        let deadline = Instant::now() + Duration::from_secs(30);
        let start = loop {
            if let Some(&at) = started.get() {
                break Some(at);
            }
            if Instant::now() >= deadline || handle.is_finished() {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if let Some(start) = start {
            std::thread::sleep((start + s.secs / 2).saturating_duration_since(Instant::now()));
        }
        let (t0, change_us) = change(server.addr, &path, round)?;
        let o = handle
            .join()
            .map_err(|_| "watch load thread panicked".to_string())?;
        let mut fanout = watchers.collect(t0 + Duration::from_secs(5))?;
        watchers.rearm()?;
        fanout.armed = armed;
        let w = WatchRound::new(fanout, t0, change_us, o);
        progress(
            began,
            format_args!("watch fan-out {}: {}", round + 1, report::watch_summary(&w)),
        );
        run.rounds.push(w);
    }
    // One more change with no heartbeats: the fan-out alone.
    let armed = watchers.armed;
    wait_metric(
        server.addr,
        "registro_watches_waiting",
        Duration::from_secs(20),
        |v| v >= armed as f64,
    );
    let cpu = || (proc::cpu_secs(Some(server.pid())), proc::cpu_secs(None));
    let cpu_before = cpu();
    let (t0, change_us) = change(server.addr, &path, rounds)?;
    let mut fanout = watchers.collect(t0 + Duration::from_secs(5))?;
    let cpu_after = cpu();
    watchers.rearm()?;
    fanout.armed = armed;
    let w = WatchRound::new(
        fanout,
        t0,
        change_us,
        Outcome {
            server_cpu: cpu_after
                .0
                .zip(cpu_before.0)
                .map_or(f64::NAN, |(a, b)| a - b),
            client_cpu: cpu_after
                .1
                .zip(cpu_before.1)
                .map_or(f64::NAN, |(a, b)| a - b),
            ..Outcome::default()
        },
    );
    progress(
        began,
        format_args!(
            "watch fan-out with no heartbeats: {}",
            report::watch_summary(&w)
        ),
    );
    run.alone = Some(w);
    watchers.stop()?;
    // The closes handled before the control windows after.
    wait_metric(
        server.addr,
        "registro_connections_open",
        Duration::from_secs(20),
        |v| v <= 1.0,
    );
    for round in 0..rounds {
        let o = measure(&hb(2 * rounds + round), &server, Instant::now());
        progress(
            began,
            format_args!(
                "watch control {}: heartbeats without watchers: {}",
                rounds + round + 1,
                report::summary(&o)
            ),
        );
        run.control.push(o);
    }
    r.watch = Some(run);
    stop(server, r, "registro-watch");
    Ok(())
}

/// The change of round `k`: registers instance `w-k` of the watched app at
/// `path`; returns when its request was sent and how long its answer took.
fn change(addr: std::net::SocketAddr, path: &str, k: usize) -> Result<(Instant, u64), String> {
    let body = format!(
        r#"{{"id":"w-{k}","ip":"10.255.0.{}","port":8080}}"#,
        k % 250 + 1
    );
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = http::Conn::connect(addr).map_err(|e| format!("change: connect: {e}"))?;
    let t0 = Instant::now();
    conn.send(request.as_bytes())
        .map_err(|e| format!("change: send: {e}"))?;
    let answer = conn
        .read_response(None)
        .map_err(|e| format!("change: {e}"))?;
    let took = t0.elapsed().as_micros() as u64;
    if answer.status != 201 {
        return Err(format!(
            "change: POST {path}: status {} (expected 201)",
            answer.status
        ));
    }
    Ok((t0, took))
}
