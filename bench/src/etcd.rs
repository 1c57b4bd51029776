//! Scenario "etcd": two `registro` servers on one registry kept
//! in a three-member etcd cluster on loopback (Debian's `etcd`, started
//! here with its default timeouts, each member with its own data directory
//! under the temporary directory, killed when the scenario ends).
//!
//! Measured: etcd's own write rate on the same cluster, before and after
//! Registro's writes (keys a second in transactions of 128 puts, and lease
//! grants a second, each from 32 clients on the gateway spread over the
//! members); registrations through both servers from 32 clients (16 on
//! each, one request at a time); every instance's first heartbeat (a
//! status change, so a write), the same way; both as ratios of etcd's
//! 128-put rate, and the answers 503 they got (sent again, and counted);
//! steady heartbeats closed loop (32 connections, half to each server)
//! with p50/p99; then fleets of growing size at a 30 s heartbeat, each
//! instance renewed once per period on a schedule spread evenly over it
//! (open loop: a heartbeat's latency counts from when it was due, so a
//! server that falls behind shows it), until one misses (an error, or a p99
//! of 50 ms or more); every instance of the largest fleet restarted at once
//! (registered again, then its first heartbeat) and the time until both
//! servers read all of them `up`; and the largest fleet carried once more
//! with the etcd leader killed a third into the period. `--fleet N`
//! measures that one fleet size instead of the growing ones.
//!
//! The servers run with `--down-after 300s --evict-after 3600s`: growing
//! the fleet takes minutes, during which the instances already registered
//! are not renewed, and none may go down in between.

use crate::hist::Histogram;
use crate::http::{self, Conn};
use crate::load::{self, push_heartbeat, push_register, Fleet, Load, Outcome, APPS};
use crate::report::{count, ms, thousands, Section, Verdict};
use crate::{Bench, CONNS};
use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The paced fleet: connections per server.
const FLEET_CONNS: usize = 32;
/// Each server's `--threads`: half of them may wait on etcd at once, and
/// etcd commits concurrent changes together.
const SERVER_THREADS: usize = 16;
/// Concurrent clients of Registro's writes, and of etcd's own measurement.
const CLIENTS: usize = 32;
/// Clients (each a thread with one connection) of the measurement with as
/// many writes in flight as etcd's own 128-put measurement has keys, in
/// multiples of [`CLIENTS`]; also of a restart of the whole fleet.
const DEEP: usize = 128;
/// Puts in one transaction of etcd's own measurement (etcd's default
/// `--max-txn-ops`), and the size of each value (an instance's is about it).
const TXN_PUTS: usize = 128;
const VALUE_BYTES: usize = 120;
/// Registrations and first heartbeats must reach this share of etcd's
/// 128-put rate.
const RATIO_TARGET: f64 = 0.5;
/// A client's pause before it sends again a change answered 503, and how
/// many 503s in a row it takes before it gives up.
const BACKOFF: Duration = Duration::from_millis(10);
const MAX_TRIES: u32 = 3_000;
/// How long a restarted fleet may take to read `up` before the scenario
/// gives up waiting (and says so).
const RESTART_LIMIT: Duration = Duration::from_secs(30 * 60);
/// The fleet's p99 target, and the sizes its targets are stated for.
const P99_TARGET_US: u64 = 50_000;
const TARGET_REGISTRATIONS: usize = 50_000;
const TARGET_FLEET: usize = 100_000;

/// A member of the cluster.
struct Member {
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// Three etcd members on loopback, killed on drop.
struct Cluster {
    root: PathBuf,
    members: Vec<Member>,
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// `POST /v3/maintenance/status` of one member: (member id, leader id).
fn status(port: u16) -> Option<(String, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (_, text) = http::expect(addr, "POST", "/v3/maintenance/status", Some("{}"), 200).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let field = |name: &str| Some(v["header"][name].as_str().or(v[name].as_str())?.to_string());
    Some((field("member_id")?, field("leader")?))
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let root = std::env::temp_dir().join(format!(
            "registro-bench-etcd-{}-{}",
            std::process::id(),
            free_port()?
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut members = Vec::new();
        for _ in 0..3 {
            members.push(Member {
                client: free_port()?,
                peer: free_port()?,
                child: None,
            });
        }
        let mut cluster = Cluster { root, members };
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        cluster.leader(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let initial: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .map(|(k, m)| format!("m{k}=http://127.0.0.1:{}", m.peer))
            .collect();
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.root.join(format!("m{i}.log")))
            .map_err(|e| format!("etcd log: {e}"))?;
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.root.join(format!("m{i}")))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start etcd: {e}"))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// The index of the leading member, once every running member agrees.
    fn leader(&self, within: Duration) -> Result<usize, String> {
        let end = Instant::now() + within;
        loop {
            let seen: Vec<(usize, Option<(String, String)>)> = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.child.is_some())
                .map(|(i, m)| (i, status(m.client)))
                .collect();
            let leaders: Vec<&String> = seen
                .iter()
                .filter_map(|(_, s)| s.as_ref().map(|s| &s.1))
                .collect();
            let agreed = leaders.len() == seen.len() && leaders.windows(2).all(|w| w[0] == w[1]);
            if let (true, Some(i)) = (
                agreed,
                seen.iter()
                    .find(|(_, s)| s.as_ref().is_some_and(|(me, l)| me == l && l != "0"))
                    .map(|(i, _)| *i),
            ) {
                return Ok(i);
            }
            if Instant::now() > end {
                return Err(format!("etcd elected no leader within {within:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn store(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// One fleet size at one period.
struct FleetRun {
    n: usize,
    period: Duration,
    hist: Histogram,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// With the leader killed: when, after the start.
    killed_at: Option<Duration>,
    /// The longest a heartbeat that was due after the kill waited from its
    /// due time to its answer (failures included, until the next success).
    worst_after_kill_us: u64,
}

impl FleetRun {
    fn carried(&self) -> bool {
        self.errors == 0 && self.ok > 0 && self.hist.quantile(0.99) < P99_TARGET_US
    }
}

/// Everything the scenario measured.
#[derive(Default)]
struct EtcdRun {
    /// (instances, time, 503s sent again) of the registration target's run.
    registration: Option<(usize, Duration, u64)>,
    /// The same for every instance's first heartbeat.
    first_beats: Option<(usize, Duration, u64)>,
    /// Both again for as many other instances, from `CLIENTS * DEEP`
    /// clients.
    deep_registration: Option<(usize, Duration, u64)>,
    deep_first_beats: Option<(usize, Duration, u64)>,
    /// Steady heartbeats, closed loop, one per round.
    heartbeats: Vec<Outcome>,
    /// Fleets at the 30 s period, growing.
    fleets: Vec<FleetRun>,
    /// Why the fleet stopped growing, when a registration failed.
    growth_error: Option<String>,
    /// The largest carried fleet again, with the leader killed.
    leader_killed: Option<FleetRun>,
    /// etcd's own rate, before Registro's registrations and after its
    /// first heartbeats.
    own: Vec<Own>,
    /// Every instance of the largest fleet restarted at once.
    restart: Option<Result<Restart, String>>,
}

/// etcd's own write rate, on the gateway, from [`CLIENTS`] clients.
#[derive(Debug, Clone, Copy, Default)]
struct Own {
    /// Keys a second, written in transactions of [`TXN_PUTS`] puts.
    keys: f64,
    /// Keys a second, written in transactions of one put.
    single: f64,
    /// Lease grants a second.
    grants: f64,
    /// Calls that did not answer 200.
    errors: u64,
}

/// A fleet restarted at once.
#[derive(Debug, Clone, Copy)]
struct Restart {
    n: usize,
    /// Every instance registered again (`starting`), then every one's first
    /// heartbeat (`up`).
    registered: Duration,
    beaten: Duration,
    /// From the first registration until both servers read every one `up`.
    all_up: Duration,
    /// Answers 503, sent again.
    retried: u64,
}

/// Base64 (standard, padded), as etcd's gateway takes keys and values.
fn b64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// etcd's own rate on `cluster` for `window` each: transactions of
/// [`TXN_PUTS`] puts of new keys (under a prefix of their own, `round`
/// apart), then lease grants (with a TTL that outlasts the run, so that no
/// expiry costs etcd anything while Registro is measured), each from
/// [`CLIENTS`] threads spread over the members, as Registro's servers
/// reach them: through the HTTP/JSON gateway, on keep-alive connections.
fn own_rate(cluster: &Cluster, window: Duration, round: usize) -> Own {
    let value = b64(&[b'v'; VALUE_BYTES]);
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client).collect();
    let errors = AtomicU64::new(0);
    // Calls a second of `puts` puts each (0: lease grants).
    let rate = |puts: usize| -> f64 {
        let grant = puts == 0;
        let done = AtomicU64::new(0);
        let start = Instant::now();
        thread::scope(|scope| {
            for t in 0..CLIENTS {
                let (done, errors, value, port) = (&done, &errors, &value, ports[t % ports.len()]);
                scope.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(10)))
                        .build()
                        .into();
                    let path = if grant { "lease/grant" } else { "kv/txn" };
                    let url = format!("http://127.0.0.1:{port}/v3/{path}");
                    let mut k = 0usize;
                    while start.elapsed() < window {
                        let body = if grant {
                            r#"{"TTL":"7200"}"#.to_string()
                        } else {
                            let puts: Vec<String> = (0..puts)
                                .map(|_| {
                                    k += 1;
                                    let key =
                                        b64(format!("/registro-bench-etcd-own/{round}/{t}/{k}")
                                            .as_bytes());
                                    format!(
                                        r#"{{"request_put":{{"key":"{key}","value":"{value}"}}}}"#
                                    )
                                })
                                .collect();
                            format!(r#"{{"success":[{}]}}"#, puts.join(","))
                        };
                        let ok = agent
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .send(&body)
                            .ok()
                            .and_then(|mut r| {
                                let status = r.status().as_u16();
                                r.body_mut().read_to_string().ok()?;
                                (status == 200).then_some(())
                            });
                        match ok {
                            Some(()) => done.fetch_add(1, Ordering::Relaxed),
                            None => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
        });
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64().max(1e-9)
    };
    let keys = rate(TXN_PUTS) * TXN_PUTS as f64;
    let single = rate(1);
    let grants = rate(0);
    Own {
        keys,
        single,
        grants,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// The mean of etcd's own rates measured in this run.
fn own_mean(r: &EtcdRun) -> Option<Own> {
    let n = r.own.len() as f64;
    (!r.own.is_empty()).then(|| Own {
        keys: r.own.iter().map(|o| o.keys).sum::<f64>() / n,
        single: r.own.iter().map(|o| o.single).sum::<f64>() / n,
        grants: r.own.iter().map(|o| o.grants).sum::<f64>() / n,
        errors: r.own.iter().map(|o| o.errors).sum(),
    })
}

/// Every one of the `n` instances restarted at once: registered again
/// (the same address: `starting` again), then each one's first heartbeat,
/// through both servers from [`CLIENTS`] clients; done when both servers
/// read none of them other than `up`.
fn restart_all(addrs: [SocketAddr; 2], n: usize) -> Result<Restart, String> {
    let start = Instant::now();
    let (registered, a) = pipelined(addrs, 0..n, false, CLIENTS * DEEP)?;
    let (beaten, b) = pipelined(addrs, 0..n, true, CLIENTS * DEEP)?;
    let path = "/registro/1.0/apps?status=starting,down,out-of-service";
    loop {
        let mut left = 0;
        for addr in addrs {
            let (_, text) = http::expect(addr, "GET", path, None, 200)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e}"))?;
            left += v["applications"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a["instances"].as_array().map_or(0, Vec::len))
                .sum::<usize>();
        }
        if left == 0 {
            break;
        }
        if start.elapsed() > RESTART_LIMIT {
            return Err(format!(
                "{left} instances still not up on the two servers after {:.0} s",
                start.elapsed().as_secs_f64()
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(Restart {
        n,
        registered,
        beaten,
        all_up: start.elapsed(),
        retried: a + b,
    })
}

/// Runs the scenario and returns its section; without etcd installed, a
/// note (an error when `CI=true`, where it must run).
pub fn run(bench: &mut Bench) -> Result<String, String> {
    if crate::proc::which("etcd").is_none() {
        let why = "the etcd scenario was skipped: no `etcd` on PATH (apt-get install etcd-server)";
        if std::env::var("CI").as_deref() == Ok("true") {
            return Err(why.to_string());
        }
        return Ok(format!("\n{why}\n"));
    }
    let mut cluster = Cluster::start()?;
    bench.progress(format_args!("etcd: three members on {}", cluster.store()));
    let prefix = format!("/registro-bench-{}/", std::process::id());
    let threads = SERVER_THREADS.to_string();
    let store = cluster.store();
    let flags = [
        "--store",
        &store,
        "--etcd-prefix",
        &prefix,
        "--down-after",
        "1h",
        "--evict-after",
        "2h",
        "--threads",
        &threads,
    ];
    let a = bench.start(0, "registro (etcd) a", &flags)?;
    let b = bench.start(0, "registro (etcd) b", &flags)?;
    let mut run = EtcdRun::default();
    let result = measure_on(bench, &mut cluster, [a.addr, b.addr], &mut run);
    let failed = run
        .fleets
        .iter()
        .chain(&run.leader_killed)
        .any(|f| f.errors > 0);
    if failed || result.is_err() {
        for server in [&a, &b] {
            bench.progress(format_args!(
                "etcd: the last lines of {}: {}",
                server.name(),
                server.tail()
            ));
        }
    }
    bench.stop(a);
    bench.stop(b);
    result.map(|()| render(&bench.s, &run))
}

fn measure_on(
    bench: &Bench,
    cluster: &mut Cluster,
    addrs: [SocketAddr; 2],
    run: &mut EtcdRun,
) -> Result<(), String> {
    let s = &bench.s;
    let (registrations, sizes, period) = if s.quick {
        (300, vec![300], Duration::from_millis(500))
    } else if s.fleet_n > 0 {
        // `--fleet N`: that one size only (growing takes minutes a step).
        let n = s.fleet_n;
        (
            n.min(TARGET_REGISTRATIONS),
            vec![n],
            Duration::from_secs(30),
        )
    } else {
        let sizes = vec![50_000, 100_000, 150_000, 200_000];
        (TARGET_REGISTRATIONS, sizes, Duration::from_secs(30))
    };
    load::create_apps(addrs[0], (0..APPS).map(|a| format!("app-{a}")))?;
    let window = if s.quick {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(5)
    };
    let own = own_rate(cluster, window, 0);
    bench.progress(format_args!("etcd: {}", own_line(&own)));
    run.own.push(own);
    let (took, retried) = pipelined(addrs, 0..registrations, false, CLIENTS)?;
    run.registration = Some((registrations, took, retried));
    bench.progress(format_args!(
            "etcd: registered {} instances through both servers in {:.1} s ({}/s; {retried} answers 503 sent again)",
            thousands(registrations as f64),
            took.as_secs_f64(),
            thousands(registrations as f64 / took.as_secs_f64().max(1e-9))
        ),
    );
    let (took, retried) = pipelined(addrs, 0..registrations, true, CLIENTS)?;
    run.first_beats = Some((registrations, took, retried));
    bench.progress(format_args!(
        "etcd: first heartbeat of each (now up) in {:.1} s ({retried} answers 503 sent again)",
        took.as_secs_f64()
    ));
    // As many in flight as etcd's own measurement has keys: the next
    // `registrations` instances.
    let deep = registrations..2 * registrations;
    let (took, retried) = pipelined(addrs, deep.clone(), false, CLIENTS * DEEP)?;
    run.deep_registration = Some((registrations, took, retried));
    let (took, retried) = pipelined(addrs, deep, true, CLIENTS * DEEP)?;
    run.deep_first_beats = Some((registrations, took, retried));
    bench.progress(format_args!(
        "etcd: {} more registered and renewed from {} clients in {:.1} s and {:.1} s",
        thousands(registrations as f64),
        (CLIENTS * DEEP).min(registrations),
        run.deep_registration.map_or(0.0, |r| r.1.as_secs_f64()),
        took.as_secs_f64()
    ));
    let own = own_rate(cluster, window, 1);
    bench.progress(format_args!("etcd, again: {}", own_line(&own)));
    run.own.push(own);
    for round in 0..s.runs {
        // Closed loop, `CONNS` connections, half to each server.
        let mut load = Load::heartbeats(addrs[0], registrations, CONNS, s.per_thread, s.secs);
        load.addrs = addrs.to_vec();
        load.offset = round * 2 * (registrations / 4).max(1);
        let o = load::run(&load, Instant::now());
        bench.progress(format_args!(
            "etcd: heartbeats, round {}: {}",
            round + 1,
            crate::report::summary(&o)
        ));
        run.heartbeats.push(o);
    }
    let mut have = 2 * registrations;
    for &n in &sizes {
        if n > have {
            let grown = pipelined(addrs, have..n, false, CLIENTS * DEEP).and_then(|(took, _)| {
                pipelined(addrs, have..n, true, CLIENTS * DEEP).map(|_| took)
            });
            match grown {
                Ok(took) => bench.progress(format_args!(
                    "etcd: fleet grown to {} ({} registered in {:.1} s)",
                    thousands(n as f64),
                    thousands((n - have) as f64),
                    took.as_secs_f64()
                )),
                Err(e) => {
                    // The largest fleet is the last one carried.
                    run.growth_error = Some(format!("growing to {}: {e}", thousands(n as f64)));
                    bench.progress(format_args!("etcd: growing the fleet to {n} failed: {e}"));
                    break;
                }
            }
            have = n;
        }
        let f = paced(addrs, n, period, None);
        bench.progress(format_args!("etcd: {}", fleet_line(&f)));
        let carried = f.carried();
        run.fleets.push(f);
        if !carried {
            break;
        }
    }
    let largest = run
        .fleets
        .iter()
        .filter(|f| f.carried())
        .map(|f| f.n)
        .max()
        .unwrap_or(sizes[0]);
    let restart = restart_all(addrs, have);
    match &restart {
        Ok(r) => bench.progress(format_args!(
            "etcd: {} instances restarted at once: all up on both servers after {:.1} s ({} answers 503 sent again)",
            thousands(r.n as f64),
            r.all_up.as_secs_f64(),
            r.retried
        )),
        Err(e) => bench.progress(format_args!("etcd: the restarted fleet: {e}")),
    }
    run.restart = Some(restart);
    let leader = cluster.leader(Duration::from_secs(30))?;
    let f = paced(
        addrs,
        largest,
        period,
        Some((period / 3, &mut || cluster.kill(leader))),
    );
    bench.progress(format_args!("etcd: leader killed: {}", fleet_line(&f)));
    run.leader_killed = Some(f);
    Ok(())
}

/// Registers (or, with `renew`, renews once) instances `range` through
/// both servers from `clients` client threads, half on each, each with one
/// keep-alive connection and one request at a time. An answer 503 is sent
/// again after [`BACKOFF`], as a client does (sent again at once, the 503s
/// of a bound on changes in flight come back faster than any write): how
/// long it took, and how many answers 503 there were.
fn pipelined(
    addrs: [SocketAddr; 2],
    range: std::ops::Range<usize>,
    renew: bool,
    clients: usize,
) -> Result<(Duration, u64), String> {
    // A client without an instance of its own would only connect.
    let clients = clients.min(range.len()).max(1);
    let fleet = Fleet::new(range.end);
    let expected = if renew { 204 } else { 201 };
    let start = Instant::now();
    let refused = AtomicU64::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let client = |c: usize| -> Result<(), String> {
        let addr = addrs[c % addrs.len()];
        let mut conn = Conn::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
        let mut buf = Vec::new();
        for i in (range.start + c..range.end).step_by(clients) {
            let mut tries = 0;
            loop {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                buf.clear();
                if renew {
                    push_heartbeat(&mut buf, i);
                } else {
                    push_register(&mut buf, fleet, i);
                }
                let r = conn
                    .send(&buf)
                    .and_then(|()| conn.read_response())
                    .map_err(|e| format!("i-{i:07} through {addr}: {e}"))?;
                if r.status == expected {
                    break;
                }
                if r.status != 503 || tries >= MAX_TRIES {
                    return Err(format!(
                        "i-{i:07} through {addr}: status {} (expected {expected}; {tries} answers 503 before)",
                        r.status
                    ));
                }
                tries += 1;
                refused.fetch_add(1, Ordering::Relaxed);
                thread::sleep(BACKOFF);
            }
        }
        Ok(())
    };
    let results: Vec<Result<(), String>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (client, failed) = (&client, &failed);
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || {
                        let r = client(c);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                    .map_err(|e| format!("client thread: {e}"))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w?.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect::<Result<(), String>>()?;
    Ok((start.elapsed(), refused.load(Ordering::Relaxed)))
}

fn own_line(o: &Own) -> String {
    format!(
        "etcd itself, {CLIENTS} clients: {} keys/s in transactions of {TXN_PUTS} puts, {} in transactions of one, {} lease grants/s ({} calls failed)",
        thousands(o.keys),
        thousands(o.single),
        thousands(o.grants),
        o.errors
    )
}

/// What one connection of the paced fleet saw.
#[derive(Default)]
struct Paced {
    hist: Histogram,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    worst_after_kill_us: u64,
}

/// Instance `k` of `n` (0 <= k < n) renewed once at `start + k * period / n`,
/// instance `k` on connection `k % conns` (the connections split between
/// the servers); `kill` runs at its offset into the period.
fn paced(
    addrs: [SocketAddr; 2],
    n: usize,
    period: Duration,
    kill: Option<(Duration, &mut dyn FnMut())>,
) -> FleetRun {
    let conns = 2 * FLEET_CONNS;
    let start = Instant::now() + Duration::from_millis(200);
    let killed = Arc::new(std::sync::OnceLock::<Instant>::new());
    let workers: Vec<thread::JoinHandle<Paced>> = (0..conns)
        .map(|c| {
            let killed = Arc::clone(&killed);
            thread::spawn(move || paced_part(addrs[c % 2], n, c, conns, start, period, &killed))
        })
        .collect();
    let mut killed_at = None;
    if let Some((after, kill)) = kill {
        let at = start + after;
        thread::sleep(at.saturating_duration_since(Instant::now()));
        kill();
        let _ = killed.set(Instant::now());
        killed_at = Some(after);
    }
    let mut run = FleetRun {
        n,
        period,
        hist: Histogram::default(),
        ok: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        killed_at,
        worst_after_kill_us: 0,
    };
    for w in workers {
        let p = w.join().unwrap_or_else(|_| Paced {
            errors: 1,
            first_error: Some("a fleet thread panicked".into()),
            ..Paced::default()
        });
        run.hist.merge(&p.hist);
        run.ok += p.ok;
        run.errors += p.errors;
        if run.first_error.is_none() {
            run.first_error = p.first_error;
        }
        run.worst_after_kill_us = run.worst_after_kill_us.max(p.worst_after_kill_us);
    }
    run.elapsed = start.elapsed();
    run
}

fn paced_part(
    addr: SocketAddr,
    n: usize,
    c: usize,
    conns: usize,
    start: Instant,
    period: Duration,
    killed: &std::sync::OnceLock<Instant>,
) -> Paced {
    let mut out = Paced::default();
    // Connected before the period starts; again after a failure.
    let mut conn: Option<Conn> = Conn::connect(addr).ok();
    let mut buf = Vec::with_capacity(128);
    let spacing = period.as_secs_f64() / n.max(1) as f64;
    // The first heartbeat after the kill that failed, while none has worked since.
    let mut failing_since: Option<Instant> = None;
    for k in (c..n).step_by(conns) {
        let due = start + Duration::from_secs_f64(k as f64 * spacing);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        buf.clear();
        push_heartbeat(&mut buf, k);
        let result = match conn.as_mut() {
            Some(open) => Ok(open),
            None => Conn::connect(addr).map(|open| conn.insert(open)),
        }
        .and_then(|open| {
            open.send(&buf)?;
            open.read_response()
        });
        let done = Instant::now();
        let waited = done.saturating_duration_since(due).as_micros() as u64;
        let after_kill = killed.get().is_some_and(|at| due >= *at);
        match result {
            Ok(r) if r.status == 204 => {
                out.ok += 1;
                out.hist.record(waited);
                if after_kill {
                    let since = failing_since.take().unwrap_or(due);
                    let worst = done.saturating_duration_since(since).as_micros() as u64;
                    out.worst_after_kill_us = out.worst_after_kill_us.max(worst);
                }
            }
            other => {
                out.errors += 1;
                let e = match other {
                    Ok(r) => format!("i-{k:07} through {addr}: status {}", r.status),
                    Err(e) => {
                        conn = None;
                        format!("i-{k:07} through {addr}: {e}")
                    }
                };
                out.first_error.get_or_insert(e);
                if after_kill {
                    failing_since.get_or_insert(due);
                }
            }
        }
    }
    out
}

fn fleet_line(f: &FleetRun) -> String {
    let mut s = format!(
        "{} instances at a {} s heartbeat ({}/s due): {} answered 204 ({}/s), p50 {}, p99 {}, max {}, {} errors",
        thousands(f.n as f64),
        f.period.as_secs_f64(),
        thousands(f.n as f64 / f.period.as_secs_f64()),
        thousands(f.ok as f64),
        thousands(f.ok as f64 / f.elapsed.as_secs_f64().max(1e-9)),
        ms(f.hist.quantile(0.5)),
        ms(f.hist.quantile(0.99)),
        ms(f.hist.max()),
        f.errors
    );
    if let Some(at) = f.killed_at {
        let _ = write!(
            s,
            "; leader killed at {:.1} s, longest wait of a heartbeat due after it {}",
            at.as_secs_f64(),
            ms(f.worst_after_kill_us)
        );
    }
    if let Some(e) = &f.first_error {
        let _ = write!(s, " (first error: {e})");
    }
    s
}

/// The scenario's section of the report.
fn render(s: &crate::Settings, r: &EtcdRun) -> String {
    let mut sec = Section::new("");
    let _ = writeln!(
        sec,
        "\n### High availability on etcd (two servers with --threads {SERVER_THREADS}, a three-member etcd cluster on loopback{})",
        if s.quick { "; quick mode" } else { "" }
    );
    sec.table(&["Measurement", "Figure"]);
    let per_s = |n: usize, took: Duration| n as f64 / took.as_secs_f64().max(1e-9);
    let own = own_mean(r);
    // A rate as a share of etcd's own 128-put rate in this run.
    let ratio = |rate: f64| {
        own.filter(|o| o.keys > 0.0)
            .map_or(f64::NAN, |o| rate / o.keys)
    };
    for (i, o) in r.own.iter().enumerate() {
        sec.row(&[
            &format_args!(
                "etcd itself, {CLIENTS} clients on its gateway, {}",
                if i == 0 {
                    "before Registro's writes"
                } else {
                    "after them"
                }
            ),
            &format_args!(
                "{} keys/s in transactions of {TXN_PUTS} puts; {} in transactions of one; {} lease grants/s{}",
                thousands(o.keys),
                thousands(o.single),
                thousands(o.grants),
                if o.errors > 0 {
                    format!("; {} calls failed", count(o.errors))
                } else {
                    String::new()
                }
            ),
        ]);
    }
    // As many clients as instances at most (so fewer in quick mode).
    let deep_n = r.deep_registration.map_or(0, |d| d.0);
    let deep = format!("{} clients", count((CLIENTS * DEEP).min(deep_n)));
    let writes = [
        (
            "Registrations",
            r.registration,
            format!("{CLIENTS} clients"),
        ),
        (
            "First heartbeats",
            r.first_beats,
            format!("{CLIENTS} clients"),
        ),
        ("Registrations", r.deep_registration, deep.clone()),
        ("First heartbeats", r.deep_first_beats, deep),
    ];
    for (what, measured, from) in &writes {
        let Some((n, took, retried)) = measured else {
            continue;
        };
        let rate = per_s(*n, *took);
        sec.row(&[
            &format_args!(
                "{what} of {} instances through both servers, {from}{}",
                count(*n),
                if what.starts_with("First") {
                    " (starting to up: a write)"
                } else {
                    ""
                }
            ),
            &format_args!(
                "{:.1} s ({}/s, {:.3}x etcd's {TXN_PUTS}-put rate, {:.2}x its one-put rate, {:.2}x its lease grants; {} answers 503 sent again)",
                took.as_secs_f64(),
                thousands(rate),
                ratio(rate),
                own.filter(|o| o.single > 0.0).map_or(f64::NAN, |o| rate / o.single),
                own.filter(|o| o.grants > 0.0).map_or(f64::NAN, |o| rate / o.grants),
                count(*retried)
            ),
        ]);
    }
    for (i, o) in r.heartbeats.iter().enumerate() {
        sec.row(&[
            &format_args!(
                "Heartbeats, {CONNS} connections half to each server, round {}",
                i + 1
            ),
            &format_args!(
                "{}/s, p50 {}, p99 {}, errors {}",
                thousands(o.rate()),
                ms(o.hist.quantile(0.5)),
                ms(o.hist.quantile(0.99)),
                o.errors
            ),
        ]);
    }
    for f in &r.fleets {
        let _ = writeln!(sec, "| Fleet: {} |", fleet_line(f));
    }
    if let Some(e) = &r.growth_error {
        let _ = writeln!(sec, "| The fleet stopped growing: {e} |");
    }
    match &r.restart {
        Some(Ok(x)) => sec.row(&[
            &format_args!(
                "Every one of the {} instances restarted at once (registered again, then a first heartbeat)",
                count(x.n)
            ),
            &format_args!(
                "all `up` on both servers after {:.1} s (registrations {:.1} s, first heartbeats {:.1} s; {} answers 503 sent again)",
                x.all_up.as_secs_f64(),
                x.registered.as_secs_f64(),
                x.beaten.as_secs_f64(),
                count(x.retried)
            ),
        ]),
        Some(Err(e)) => sec.row(&[&"Every instance restarted at once", &e]),
        None => {}
    }
    if let Some(f) = &r.leader_killed {
        let _ = writeln!(
            sec,
            "| Fleet with the etcd leader killed: {} |",
            fleet_line(f)
        );
    }
    let full = !s.quick;
    for (what, measured, from) in &writes {
        if let Some((n, took, _)) = *measured {
            let x = ratio(per_s(n, took));
            sec.target(
                format_args!(
                    "{what} from {from} through two servers: >= {RATIO_TARGET}x etcd's rate for {TXN_PUTS}-put transactions, in the same run"
                ),
                format_args!(
                    "{x:.3}x ({}/s against {} keys/s)",
                    thousands(per_s(n, took)),
                    own.map_or("?".into(), |o| thousands(o.keys))
                ),
                Verdict::check(x, |x| x >= RATIO_TARGET).at_size(full),
            );
        }
    }
    if writes.iter().any(|w| w.1.is_some()) {
        let refused: u64 = writes.iter().filter_map(|w| w.1).map(|w| w.2).sum();
        sec.target(
            "No answer 503 from a healthy cluster (registrations and first heartbeats)",
            format_args!("{} answers 503", count(refused)),
            Verdict::of(refused == 0),
        );
    }
    if let Some((n, took, _)) = r.registration {
        sec.target(
            format_args!(
                "{} registrations in under 60 s",
                count(TARGET_REGISTRATIONS)
            ),
            format_args!("{:.1} s for {}", took.as_secs_f64(), count(n)),
            Verdict::of(took.as_secs_f64() < 60.0).at_size(n >= TARGET_REGISTRATIONS),
        );
    }
    let largest = r.fleets.iter().filter(|f| f.carried()).map(|f| f.n).max();
    let biggest_tried = r.fleets.iter().map(|f| f.n).max().unwrap_or(0);
    sec.target(
        format_args!(
            "A fleet of >= {} at a 30 s heartbeat, 0 errors, p99 < 50 ms",
            count(TARGET_FLEET)
        ),
        format_args!(
            "largest carried: {} of those tried (up to {})",
            largest.map_or("none".to_string(), count),
            count(biggest_tried)
        ),
        // Errors are judged at any size; a slow p99 of a small fleet is the
        // machine's, shown in its row.
        Verdict::of(largest.is_some_and(|n| n >= TARGET_FLEET))
            .at_size(biggest_tried >= TARGET_FLEET || r.fleets.iter().any(|f| f.errors > 0)),
    );
    if let Some(f) = &r.leader_killed {
        sec.target(
            "The same with the leader killed: 0 errors",
            format_args!("{} errors, p99 {}", f.errors, ms(f.hist.quantile(0.99))),
            Verdict::of(f.errors == 0),
        );
    }
    sec.finish()
}
