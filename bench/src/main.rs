//! `make bench`: measures the release `registro` server against its
//! performance targets and prints a markdown report; with `--server PATH`,
//! most scenarios also run, in the same run and interleaved round by round,
//! against that second server binary, and the report sets the two side by
//! side.
//!
//! Each scenario is one file with one entry function, `run(&mut Bench)`,
//! that starts fresh server processes on loopback (`Bench::start`), drives
//! them (`load.rs`, or a driver of its own), and returns its section of the
//! report (`report::Section`). The baseline is this same binary run as a
//! child process with `--baseline-server`: a bare tiny_http server answering
//! 204.
//!
//! A new scenario: a file with `pub fn run(bench: &mut Bench) -> Result<String,
//! String>`, its name in `SCENARIOS` and its entry in `run`'s list. Servers:
//! `bench.start(b, name, flags)` for each of `bench.binaries()` (b 0 is the
//! server under test, 1 the `--server` one), `bench.fill` to register a fleet,
//! `bench.stop`. Closed-loop heartbeats: `measure(&bench.heartbeats(addr, n,
//! round), pid)`, an `Outcome` (rate, `hist`, errors, CPU); any other latency
//! goes into a `hist::Histogram` (µs). The section: `Section::new(title)`,
//! `text`, `table` and `row`, and `target(what, measured, verdict)` where the
//! verdict is `Verdict::of(ok)` or `Verdict::check(figure, test)`, followed by
//! `.at_size(false)` when the run is smaller than the size the target is
//! stated for (it then reads "not measured at this size").
//!
//! Usage: `registro-bench [--quick] [--server PATH] [--registro PATH] [--runs N]
//! [--secs S] [--per-thread K] [--sweep-every S] [--down-after S] [--fleet N]
//! [--fleet-secs S] [--fleet-interval S] [--watchers N]
//! [--only hb,fresh,mixed,sweep,memory,watch,slowloris,fleet,pipelining,etcd,dashboard,datadir]`;
//! `REGISTRO_BENCH_QUICK=1` is the same as `--quick`.

#![forbid(unsafe_code)]

mod baseline;
mod dashboard;
mod datadir;
mod etcd;
mod fleet;
mod heartbeats;
mod hist;
mod http;
mod load;
mod memory;
mod pipelining;
mod poller;
mod proc;
mod report;
mod slowloris;
mod sweep;
mod watch;

use load::{Fleet, Load, Outcome};
use proc::{ServerProc, Stop};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Concurrent connections of every heartbeat measurement.
const CONNS: usize = 32;
/// tiny_http worker threads of the baseline.
const BASELINE_WORKERS: usize = 2;
/// Every scenario, in the order they run and report.
const SCENARIOS: &str =
    "hb,fresh,mixed,sweep,memory,watch,slowloris,fleet,pipelining,etcd,dashboard,datadir";

/// What to run, and how big.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Small sizes and short windows, to check the benchmark still works.
    pub quick: bool,
    /// The server binary under test.
    pub server: PathBuf,
    /// A second server binary most scenarios also run against.
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
    /// The three fleet sizes (1,000, 100,000 and 1,000,000).
    pub sizes: [usize; 3],
    /// The fleet of the fresh-connection scenario (10,000).
    pub fresh_n: usize,
    /// The sweep scenario's `--sweep-every`, its short `--down-after`, and
    /// the long one of its quiet run.
    pub sweep_every: f64,
    pub down_after: f64,
    pub quiet_down_after: f64,
    /// Scenarios to run (all when empty).
    pub only: Vec<String>,
}

/// The full run's fleet sizes: targets are stated at these.
pub const FULL_SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

impl Settings {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    /// Rounds of the scenarios that need a fleet of the largest size of
    /// their own (memory) or take seconds per observation (sweep, watch).
    pub fn heavy_runs(&self) -> usize {
        self.runs.min(3)
    }

    /// The second server's name for the report: `before (`NAME`)`.
    pub fn before_name(&self) -> String {
        let name = self.reference.as_ref().and_then(|p| p.file_name());
        let name = name.map_or("before".into(), |f| f.to_string_lossy().into_owned());
        format!("before (`{name}`)")
    }
}

/// What every registry server started showed: its idle resident memory,
/// and each fleet registered into it.
#[derive(Default)]
pub struct Seen {
    pub idle_rss: Vec<u64>,
    pub fills: Vec<Filled>,
}

/// One fleet registered into a fresh server.
#[derive(Debug, Clone, Copy)]
pub struct Filled {
    pub n: usize,
    /// Instances registered per second.
    pub rate: f64,
    /// Resident bytes each instance added.
    pub per_instance: f64,
}

/// The run: its settings, and what all scenarios share.
pub struct Bench {
    pub s: Settings,
    began: Instant,
    /// Per binary (0: under test, 1: `--server`).
    pub seen: [Seen; 2],
    /// Server processes that did not exit cleanly when stopped.
    bad_exits: Vec<String>,
}

impl Bench {
    /// Prints one progress line on stderr, stamped with the seconds elapsed.
    pub fn progress(&self, what: std::fmt::Arguments<'_>) {
        eprintln!("[{:6.1}s] {what}", self.began.elapsed().as_secs_f64());
    }

    /// The binaries to run: (index into `seen`, path, a tag for names).
    pub fn binaries(&self) -> Vec<(usize, PathBuf, &'static str)> {
        let mut v = vec![(0, self.s.server.clone(), "")];
        if let Some(reference) = &self.s.reference {
            v.push((1, reference.clone(), " (before)"));
        }
        v
    }

    /// Starts binary `b` (see `binaries`) with extra flags, checks it
    /// answers, and records its idle resident memory.
    pub fn start(&mut self, b: usize, name: &str, extra: &[&str]) -> Result<ServerProc, String> {
        let bin = self.binaries().swap_remove(b).1;
        let mut cmd = Command::new(bin);
        cmd.args(["--addr", "127.0.0.1:0"]).args(extra);
        let server = ServerProc::start(name, cmd, Stop::Term)?;
        match load::request_once(server.addr, load::LISTING) {
            Ok((200, _)) => {}
            Ok((status, _)) => return Err(format!("{name}: GET /registro/1.0/apps: {status}")),
            Err(e) => return Err(format!("{name}: GET /registro/1.0/apps: {e}")),
        }
        self.seen[b].idle_rss.push(server.rss()?);
        Ok(server)
    }

    /// Stops a server, noting an unclean exit.
    pub fn stop(&mut self, server: ServerProc) {
        let name = server.name().to_string();
        match server.stop() {
            Ok(status) if status.success() => {}
            Ok(status) => self.bad_exits.push(format!("{name}: {status}")),
            Err(e) => self.bad_exits.push(format!("{name}: {e}")),
        }
    }

    /// Registers `fleet` into binary `b`'s fresh `server` and records the
    /// rate and the resident bytes each instance added; `up` then renews
    /// each once.
    pub fn fill(
        &mut self,
        b: usize,
        server: &ServerProc,
        fleet: Fleet,
        up: bool,
    ) -> Result<Filled, String> {
        let n = fleet.n;
        let before = server.rss()?;
        let took = load::register(server.addr, fleet)?;
        let after = server.rss()?;
        let filled = Filled {
            n,
            rate: n as f64 / took.as_secs_f64().max(1e-9),
            per_instance: after.saturating_sub(before) as f64 / n.max(1) as f64,
        };
        self.seen[b].fills.push(filled);
        self.progress(format_args!(
            "registered {} instances in {:.1} s ({}/s); resident {} -> {} ({:.0} B per instance)",
            report::count(n),
            took.as_secs_f64(),
            report::thousands(filled.rate),
            report::bytes(before),
            report::bytes(after),
            filled.per_instance
        ));
        if up {
            let took = load::renew_all(server.addr, fleet)?;
            self.progress(format_args!(
                "renewed each once (now up) in {:.1} s",
                took.as_secs_f64()
            ));
        }
        Ok(filled)
    }

    /// The heartbeat measurement of `round`: `CONNS` connections renewing
    /// `n` instances for `--secs`.
    pub fn heartbeats(&self, addr: std::net::SocketAddr, n: usize, round: usize) -> Load {
        let mut load = Load::heartbeats(addr, n, CONNS, self.s.per_thread, self.s.secs);
        load.offset = round * 7919;
        load
    }
}

/// Runs `load` against the process `pid`, noting the CPU time both sides
/// used.
pub fn measure(load: &Load, pid: u32) -> Outcome {
    measure_from(load, pid, Instant::now())
}

/// `measure`, with each request's start timed from `base`.
pub fn measure_from(load: &Load, pid: u32, base: Instant) -> Outcome {
    let cpu = || (proc::cpu_secs(Some(pid)), proc::cpu_secs(None));
    let before = cpu();
    let mut o = load::run(load, base);
    let after = cpu();
    o.server_cpu = after.0.zip(before.0).map_or(f64::NAN, |(a, b)| a - b);
    o.client_cpu = after.1.zip(before.1).map_or(f64::NAN, |(a, b)| a - b);
    o
}

/// How many connections a scenario may hold, each with its client side in
/// this process: `asked`, or (0) what the open-files limit allows less a
/// reserve, at most `most`; an error when `asked` does not fit.
pub fn connections_allowed(asked: usize, most: usize, what: &str) -> Result<usize, String> {
    let fds = proc::raise_nofile();
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().is_some_and(|a| a == "--baseline-server") {
        baseline::serve(BASELINE_WORKERS)
    } else {
        parse_args(&args).and_then(run)
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
        secs: Duration::from_millis(if quick { 50 } else { 2000 }),
        // Measured on this 2-core machine against the baseline: a thread per
        // connection costs the load generator 11-14 µs of CPU per request,
        // 4 connections per thread 7.5-9 µs and gives the highest rates; one
        // thread for all 32 costs 6.5 µs but runs them in lockstep and
        // lowers the rate.
        per_thread: 4,
        sizes: if quick {
            [100, 1_000, 3_000]
        } else {
            FULL_SIZES
        },
        fresh_n: if quick { 300 } else { 10_000 },
        sweep_every: if quick { 0.1 } else { 2.0 },
        down_after: if quick { 0.05 } else { 1.0 },
        quiet_down_after: 3600.0,
        reference: None,
        // 0: as many as the open-files limit allows (both processes have it).
        fleet_n: if quick { 500 } else { 0 },
        fleet_interval: if quick { 0.25 } else { 5.0 },
        fleet_secs: if quick { 0.5 } else { 30.0 },
        watch_n: if quick { 200 } else { 0 },
        only: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: not a number: {v:?}"))
        }
        match flag.as_str() {
            "--quick" => {}
            "--server" => s.reference = Some(PathBuf::from(value()?)),
            "--registro" => s.server = PathBuf::from(value()?),
            "--fleet" => s.fleet_n = num(flag, value()?)?,
            "--fleet-secs" => s.fleet_secs = num(flag, value()?)?,
            "--fleet-interval" => s.fleet_interval = num(flag, value()?)?,
            "--watchers" => s.watch_n = num(flag, value()?)?,
            "--runs" => s.runs = num(flag, value()?)?,
            "--secs" => s.secs = Duration::from_secs_f64(num::<f64>(flag, value()?)?.max(0.0)),
            "--per-thread" => s.per_thread = num(flag, value()?)?,
            "--sweep-every" => s.sweep_every = num(flag, value()?)?,
            "--down-after" => s.down_after = num(flag, value()?)?,
            "--only" => s.only = value()?.split(',').map(str::to_string).collect(),
            "-h" | "--help" => {
                return Err(format!(
                    "usage: registro-bench [--quick] [--server PATH (a second server to compare)] \
                     [--registro PATH (the server under test)] [--runs N] [--secs S] \
                     [--per-thread K] [--sweep-every S] [--down-after S] [--fleet N] [--fleet-secs S] \
                     [--fleet-interval S] [--watchers N] [--only {SCENARIOS}]"
                ))
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if let Some(bad) = s
        .only
        .iter()
        .find(|o| !SCENARIOS.split(',').any(|x| x == *o))
    {
        return Err(format!("--only: no scenario {bad:?} (one of {SCENARIOS})"));
    }
    if s.runs == 0 || s.per_thread == 0 || s.secs.is_zero() {
        return Err("--runs, --per-thread and --secs must be positive".to_string());
    }
    if !(s.fleet_secs > 0.0 && s.fleet_interval > 0.0) {
        return Err("--fleet-secs and --fleet-interval must be positive".to_string());
    }
    Ok(s)
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

/// A scenario's entry: its section of the report.
type Scenario = fn(&mut Bench) -> Result<String, String>;

fn run(s: Settings) -> Result<(), String> {
    if !s.server.is_file() {
        return Err(format!(
            "no server binary at {}: build it first (`cargo build --release -p registro`; `make bench` does)",
            s.server.display()
        ));
    }
    if let Some(reference) = s.reference.as_ref().filter(|p| !p.is_file()) {
        return Err(format!("--server {}: no such file", reference.display()));
    }
    let mut bench = Bench {
        s,
        began: Instant::now(),
        seen: Default::default(),
        bad_exits: Vec::new(),
    };
    bench.progress(format_args!(
        "server {}; {} runs of {:?} per figure; {CONNS} connections, {} per load thread",
        bench.s.server.display(),
        bench.s.runs,
        bench.s.secs,
        bench.s.per_thread
    ));
    let scenarios: [(&[&str], Scenario); 10] = [
        (&["hb", "fresh", "mixed"], heartbeats::run),
        (&["sweep"], sweep::run),
        (&["memory"], memory::run),
        (&["watch"], watch::run),
        (&["slowloris"], slowloris::run),
        (&["fleet"], fleet::run),
        (&["pipelining"], pipelining::run),
        (&["etcd"], etcd::run),
        (&["dashboard"], dashboard::run),
        (&["datadir"], datadir::run),
    ];
    let mut sections = String::new();
    for (names, scenario) in scenarios {
        if names.iter().any(|n| bench.s.wants(n)) {
            sections += &scenario(&mut bench)?;
        }
    }
    let quick = if bench.s.quick {
        " (quick mode: small sizes, not representative)"
    } else {
        ""
    };
    print!(
        "\n## Registro benchmark{quick}\n\nMachine: {}.  \nCommand: `make bench` \
         (`cargo run --release -p registro-bench{}`): {:.0} s in all.\n{sections}",
        report::machine(),
        if bench.s.quick { " -- --quick" } else { "" },
        bench.began.elapsed().as_secs_f64()
    );
    if bench.bad_exits.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "servers did not stop cleanly: {}",
            bench.bad_exits.join("; ")
        ))
    }
}
