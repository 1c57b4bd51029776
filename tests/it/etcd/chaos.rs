//! The chaos test (`make chaos`; a short run in `make test`): three etcd
//! members and three `registro` servers on loopback, about 100 instances
//! heartbeating every second through clients that fail over, readers on
//! every server every 200 ms, a stream of registrations, removals from
//! service and new apps, and a nemesis that kills (SIGKILL) a server or an
//! etcd member (the leader half the time) and restarts it, or pauses
//! (SIGSTOP) and resumes (SIGCONT) the leader or the member a server
//! watches. Every operation is recorded (`history.rs`); the checks
//! (`checks.rs`) then read the history alone.
//!
//! Variables: `REGISTRO_CHAOS_SEED` (the nemesis's and the churn's choices;
//! printed on every run), `REGISTRO_CHAOS_SECONDS` and
//! `REGISTRO_CHAOS_FAULTS` (the faults are spread over the seconds, at
//! least 6 s apart), `REGISTRO_CHAOS_INSTANCES`, `REGISTRO_CHAOS_DOWN_AFTER`
//! (seconds). The history, the servers' and the members' logs are left in
//! `target/tmp/chaos-SEED/`.

mod checks;
mod history;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;

use super::cluster::{free_port, installed, Cluster};
use crate::fuzz::Rng;
use crate::support::Proc;
use history::{at, id, ip, port, End, Event, Fault, History, Micros, Op, Outcome, View, APP};

/// How often each instance heartbeats.
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// How often each reader reads its server.
const READ_EVERY: Duration = Duration::from_millis(200);
/// One attempt's timeout, after which the client tries the next server.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The servers.
const SERVERS: usize = 3;
/// Time left after a fault is healed before the next begins: the 3 s in
/// which every server must catch up, and a read after them.
const AFTER_HEAL: Duration = Duration::from_secs(4);
/// The shortest time between two faults' beginnings.
const MIN_SLOT: u64 = 6;
/// The longest a fault lasts.
const MAX_FAULT: Duration = Duration::from_secs(8);
/// How long, once changes stop, the servers are given to agree (the check
/// wants 3 s; the rest says how late they were).
const AGREE_WITHIN: Duration = Duration::from_secs(15);

/// What a run does: from the environment, with the short run of `make
/// test` as the default.
#[derive(Debug, Clone)]
struct Settings {
    seed: u64,
    seconds: u64,
    faults: u64,
    instances: u32,
    down_after: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str, default: u64| -> u64 {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
                _ => default,
            }
        };
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000);
        let s = Settings {
            seed: var("REGISTRO_CHAOS_SEED", clock),
            seconds: var("REGISTRO_CHAOS_SECONDS", 40),
            faults: var("REGISTRO_CHAOS_FAULTS", 4),
            instances: var("REGISTRO_CHAOS_INSTANCES", 100) as u32,
            down_after: var("REGISTRO_CHAOS_DOWN_AFTER", 3),
        };
        assert!(
            s.faults == 0 || s.seconds / s.faults >= MIN_SLOT,
            "REGISTRO_CHAOS_SECONDS / REGISTRO_CHAOS_FAULTS must be at least {MIN_SLOT} (a fault, and time to heal)"
        );
        assert!(s.instances > 0, "REGISTRO_CHAOS_INSTANCES must be above 0");
        assert!(
            s.down_after >= 2,
            "REGISTRO_CHAOS_DOWN_AFTER must be at least 2"
        );
        s
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An instance's heartbeat thread.
struct Beater {
    retired: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// What the clients share: the servers' addresses (fixed: a restarted
/// server comes back on its port), the history, the stop flags.
struct Ctx {
    start: Instant,
    addrs: Vec<SocketAddr>,
    events: Mutex<Vec<Event>>,
    stop: AtomicBool,
    stop_churn: AtomicBool,
    beaters: Mutex<BTreeMap<u32, Beater>>,
    next_id: AtomicU32,
}

/// An agent that hands every status back and gives up after [`TIMEOUT`].
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .build()
        .into()
}

/// What a failed request says, in a word or two.
fn failure(e: ureq::Error) -> String {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::Timeout(_) => "timeout".into(),
        ureq::Error::ConnectionFailed => "refused".into(),
        ureq::Error::Io(e) => match e.kind() {
            K::ConnectionRefused => "refused".into(),
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                "reset".into()
            }
            K::TimedOut | K::WouldBlock => "timeout".into(),
            kind => format!("io {kind:?}"),
        },
        e => e.to_string().chars().take(60).collect(),
    }
}

impl Ctx {
    fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps until `deadline`; false if the run (or `also`) stopped first.
    fn wait_until(&self, deadline: Instant, also: &AtomicBool) -> bool {
        loop {
            if self.stopped() || also.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            thread::sleep((deadline - now).min(Duration::from_millis(50)));
        }
    }

    /// One attempt of `op` on server `server`, recorded.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        agent: &ureq::Agent,
        process: &str,
        op: &Op,
        attempt: u8,
        server: usize,
        method: &str,
        path: &str,
        body: &str,
    ) -> (Outcome, Option<View>) {
        let url = format!("http://{}{path}", self.addrs[server]);
        let sent = self.now();
        let result = crate::support::request(agent, method, &url, body);
        let (outcome, view) = match result {
            Err(e) => (Outcome::Failed(failure(e)), None),
            Ok(mut r) => {
                let status = r.status().as_u16();
                let header = |name: &str| -> Option<u64> {
                    r.headers().get(name)?.to_str().ok()?.trim().parse().ok()
                };
                let (index, last_contact) =
                    (header("Registro-Index"), header("Registro-Last-Contact"));
                match r.body_mut().read_to_string() {
                    Err(e) => (Outcome::Failed(failure(e)), None),
                    Ok(text) => {
                        let v: serde_json::Value =
                            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                        let why = v["error"].as_str().map(String::from);
                        let view = match op {
                            Op::Read { all } if status == 200 => Some(View {
                                index,
                                last_contact,
                                ..View::parse(&v, *all)
                            }),
                            _ => None,
                        };
                        (Outcome::Status(status, why), view)
                    }
                }
            }
        };
        let answered = self.now();
        lock(&self.events).push(Event {
            process: process.into(),
            op: op.clone(),
            attempt,
            server,
            sent,
            answered,
            outcome: outcome.clone(),
            view: view.clone(),
        });
        (outcome, view)
    }

    /// `op` through the servers in turn from `first`, moving on after a
    /// connection error, a timeout or a 503: the last outcome and the
    /// server that gave it.
    #[allow(clippy::too_many_arguments)]
    fn op(
        &self,
        agent: &ureq::Agent,
        process: &str,
        op: Op,
        first: usize,
        method: &str,
        path: &str,
        body: &str,
    ) -> (Outcome, usize) {
        let mut last = (Outcome::Failed("not sent".into()), first);
        for k in 0..self.addrs.len() {
            let server = (first + k) % self.addrs.len();
            let (outcome, _) =
                self.attempt(agent, process, &op, k as u8, server, method, path, body);
            let again = outcome.fails_over();
            last = (outcome, server);
            if !again {
                break;
            }
        }
        last
    }

    /// Registers instance `n` through the servers from `first`.
    fn register(&self, agent: &ureq::Agent, process: &str, n: u32, first: usize) -> Outcome {
        let body = json!({"id": id(n), "ip": ip(n), "port": port(n)}).to_string();
        let path = format!("/registro/1.0/apps/{APP}");
        self.op(agent, process, Op::Register(n), first, "POST", &path, &body)
            .0
    }

    /// Starts instance `n`'s heartbeats.
    fn spawn_beater(self: &Arc<Self>, n: u32, count: u32) {
        let retired = Arc::new(AtomicBool::new(false));
        let ctx = Arc::clone(self);
        let flag = Arc::clone(&retired);
        // Spread over the second, so that heartbeats do not come in waves.
        let offset = BEAT_EVERY * (n % count) / count;
        let thread = thread::spawn(move || ctx.beat(n, offset, &flag));
        lock(&self.beaters).insert(n, Beater { retired, thread });
    }

    /// Instance `n`'s heartbeat every second until stopped or retired.
    /// Even instances stay with a server that works, as the Rust client
    /// does; odd ones start each heartbeat on the next server, as behind a
    /// round-robin balancer. Both move on after a connection error, a
    /// timeout or a 503.
    fn beat(&self, n: u32, offset: Duration, retired: &AtomicBool) {
        let agent = agent();
        let servers = self.addrs.len();
        let process = format!("hb-{n}");
        let path = format!("/registro/1.0/apps/{APP}/{}", id(n));
        let sticky = n % 2 == 0;
        let mut current = n as usize % servers;
        let mut next = Instant::now() + offset;
        for beat in 0.. {
            if !self.wait_until(next, retired) {
                return;
            }
            next += BEAT_EVERY;
            next = next.max(Instant::now());
            let first = if sticky {
                current
            } else {
                (n as usize + beat as usize) % servers
            };
            let (outcome, server) = self.op(
                &agent,
                &process,
                Op::Heartbeat(n, beat),
                first,
                "PUT",
                &path,
                "",
            );
            current = if outcome.fails_over() {
                (server + 1) % servers
            } else {
                server
            };
        }
    }

    /// Reads `GET /apps/chaos` on server `k` every 200 ms until stopped.
    fn read(&self, k: usize) {
        let agent = agent();
        let process = format!("reader-{k}");
        let path = format!("/registro/1.0/apps/{APP}");
        let never = AtomicBool::new(false);
        let mut next = Instant::now();
        while self.wait_until(next, &never) {
            next += READ_EVERY;
            next = next.max(Instant::now());
            self.attempt(
                &agent,
                &process,
                &Op::Read { all: false },
                0,
                k,
                "GET",
                &path,
                "",
            );
        }
    }

    /// About once a second: registers a new instance (which then
    /// heartbeats), takes one out of service (its heartbeats stopped
    /// first), or creates an app.
    fn churn(self: &Arc<Self>, seed: u64, count: u32) {
        let agent = agent();
        let mut rng = Rng::seeded(seed ^ 0x5eed_c4a0_5c4a_0500);
        let mut apps = 0;
        let never = AtomicBool::new(false);
        let mut next = Instant::now();
        loop {
            next += Duration::from_millis(600 + rng.below(800) as u64);
            if !self.wait_until(next, &never) || self.stop_churn.load(Ordering::SeqCst) {
                return;
            }
            let first = rng.below(self.addrs.len());
            let roll = rng.below(20);
            let live = lock(&self.beaters).len() as u32;
            if roll < 2 {
                apps += 1;
                let body = json!({"name": format!("extra-{apps}")}).to_string();
                let op = Op::CreateApp(format!("extra-{apps}"));
                self.op(
                    &agent,
                    "churn",
                    op,
                    first,
                    "POST",
                    "/registro/1.0/apps",
                    &body,
                );
            } else if roll < 11 || live <= count / 2 {
                let n = self.next_id.fetch_add(1, Ordering::SeqCst);
                if self.register(&agent, "churn", n, first).status() == Some(201) {
                    self.spawn_beater(n, count);
                }
            } else {
                let pick = rng.below(live.max(1) as usize);
                let gone = {
                    let mut beaters = lock(&self.beaters);
                    let n = beaters.keys().nth(pick).copied();
                    n.and_then(|n| beaters.remove(&n).map(|b| (n, b)))
                };
                let Some((n, beater)) = gone else { continue };
                beater.retired.store(true, Ordering::SeqCst);
                let _ = beater.thread.join();
                let path = format!("/registro/1.0/apps/{APP}/{}", id(n));
                self.op(
                    &agent,
                    "churn",
                    Op::OutOfService(n),
                    first,
                    "DELETE",
                    &path,
                    "",
                );
            }
        }
    }
}

/// What the nemesis does to one process.
#[derive(Clone, Copy, Debug)]
enum Kind {
    KillRegistro,
    KillMember,
    PauseLeader,
    PauseWatched,
}

/// The processes: the etcd cluster, the servers (each on a fixed port, with
/// its arguments, to restart it), and where their logs go.
struct Fleet {
    cluster: Cluster,
    servers: Vec<Option<Proc>>,
    args: Vec<Vec<String>>,
    dir: PathBuf,
}

impl Fleet {
    fn start(settings: &Settings, dir: &Path) -> Fleet {
        let cluster = Cluster::start("chaos");
        let evict = (settings.seconds + 300).max(600);
        let mut fleet = Fleet {
            cluster,
            servers: Vec::new(),
            args: Vec::new(),
            dir: dir.to_path_buf(),
        };
        for k in 0..SERVERS {
            // Each server lists the members from another one, so that their
            // watches start on different members.
            let order: Vec<usize> = (0..3).map(|m| (m + k) % 3).collect();
            let args = vec![
                "--addr".to_string(),
                format!("127.0.0.1:{}", free_port()),
                "--store".into(),
                fleet.cluster.store_of(&order),
                "--etcd-prefix".into(),
                "/chaos/".into(),
                "--down-after".into(),
                format!("{}s", settings.down_after),
                "--evict-after".into(),
                format!("{evict}s"),
            ];
            fleet.args.push(args);
            let proc = fleet
                .launch(k)
                .unwrap_or_else(|| panic!("registro {k} did not start"));
            fleet.servers.push(Some(proc));
        }
        fleet
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.args
            .iter()
            .map(|a| a[1].parse().expect("an address"))
            .collect()
    }

    /// Starts server `k` (a few tries: its port may be briefly busy).
    fn launch(&self, k: usize) -> Option<Proc> {
        let args: Vec<&str> = self.args[k].iter().map(String::as_str).collect();
        for _ in 0..3 {
            if let Ok(p) = std::panic::catch_unwind(AssertUnwindSafe(|| Proc::start_exact(&args))) {
                return Some(p);
            }
            thread::sleep(Duration::from_secs(1));
        }
        None
    }

    /// Appends server `k`'s log lines so far to its log file.
    fn save_log(&self, k: usize, proc: &Proc) {
        use std::io::Write;
        let path = self.dir.join(format!("registro-{k}.log"));
        if let Ok(mut f) = std::fs::File::options()
            .create(true)
            .append(true)
            .open(path)
        {
            for line in proc.lines() {
                let _ = writeln!(f, "{line}");
            }
            let _ = writeln!(f, "---- (process ended)");
        }
    }

    /// One fault of `kind` lasting `length`: what it was, when it began,
    /// when it was healed.
    fn fault(&mut self, kind: Kind, length: Duration, rng: &mut Rng, ctx: &Ctx) -> Fault {
        // Every choice is drawn whatever the state, so a seed replays them.
        let server = rng.below(SERVERS);
        let leader_half = rng.chance(2);
        let follower = rng.below(2);
        let began;
        let what;
        match kind {
            Kind::KillRegistro => {
                let proc = self.servers[server].take();
                began = ctx.now();
                if let Some(mut p) = proc {
                    p.signal("KILL");
                    let _ = p.wait_exit(Duration::from_secs(10));
                    self.save_log(server, &p);
                }
                thread::sleep(length);
                self.servers[server] = self.launch(server);
                what = format!(
                    "kill -9 of registro {server}, restarted after {:.1} s{}",
                    length.as_secs_f64(),
                    if self.servers[server].is_none() {
                        " (the restart FAILED)"
                    } else {
                        ""
                    }
                );
            }
            Kind::KillMember => {
                let leader = self.cluster.leader();
                let m = if leader_half {
                    leader
                } else {
                    (leader + 1 + follower) % 3
                };
                began = ctx.now();
                self.cluster.kill(m);
                thread::sleep(length);
                self.cluster.restart(m);
                what = format!(
                    "kill -9 of etcd m{} ({}), restarted after {:.1} s",
                    m + 1,
                    if m == leader {
                        "the leader"
                    } else {
                        "a follower"
                    },
                    length.as_secs_f64()
                );
            }
            Kind::PauseLeader | Kind::PauseWatched => {
                let leader = self.cluster.leader();
                let watched = match kind {
                    Kind::PauseWatched => self.servers[server].as_ref().and_then(|p| {
                        watched_member(ctx.addrs[server], p.child.id(), &self.client_ports())
                    }),
                    _ => None,
                };
                let m = watched.map_or(leader, |(m, _)| m);
                began = ctx.now();
                self.cluster.freeze(m, true);
                thread::sleep(length);
                self.cluster.freeze(m, false);
                let role = if m == leader {
                    "the leader"
                } else {
                    "a follower"
                };
                what = match (kind, watched) {
                    (Kind::PauseWatched, Some((_, from))) => format!(
                        "SIGSTOP of etcd m{} ({role}, which registro {server}'s watch is on, per {from}) for {:.1} s",
                        m + 1,
                        length.as_secs_f64()
                    ),
                    (Kind::PauseWatched, None) => format!(
                        "SIGSTOP of etcd m{} (the leader: registro {server}'s watch was not found) for {:.1} s",
                        m + 1,
                        length.as_secs_f64()
                    ),
                    _ => format!(
                        "SIGSTOP of etcd m{} (the leader) for {:.1} s",
                        m + 1,
                        length.as_secs_f64()
                    ),
                };
            }
        }
        Fault {
            what,
            began,
            healed: ctx.now(),
        }
    }

    fn client_ports(&self) -> Vec<u16> {
        (0..3).map(|m| self.cluster.client_port(m)).collect()
    }

    /// Stops every server and keeps every log.
    fn finish(&mut self) {
        for k in 0..self.servers.len() {
            if let Some(mut p) = self.servers[k].take() {
                p.signal("KILL");
                let _ = p.wait_exit(Duration::from_secs(10));
                self.save_log(k, &p);
            }
        }
        for m in 0..3 {
            let _ = std::fs::copy(
                self.cluster.log(m),
                self.dir.join(format!("etcd-m{}.log", m + 1)),
            );
        }
    }
}

/// Which member (an index into `client_ports`) the watch of the server at
/// `addr` (process `pid`) is on, and how that was found: from its
/// `/metrics` (`registro_store_watch_member`), or where a server does not
/// say it, from its sockets with `ss`.
fn watched_member(
    addr: SocketAddr,
    pid: u32,
    client_ports: &[u16],
) -> Option<(usize, &'static str)> {
    let metrics = agent()
        .get(&format!("http://{addr}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok());
    if let Some(m) = metrics.and_then(|text| watch_in_metrics(&text, client_ports)) {
        return Some((m, "its /metrics"));
    }
    let out = Command::new("ss")
        .args(["-tinpH", "state", "established"])
        .output()
        .ok()?;
    watch_in_ss(&String::from_utf8_lossy(&out.stdout), pid, client_ports).map(|m| (m, "ss"))
}

/// The member `registro_store_watch_member{member="HOST:PORT"} 1` names.
fn watch_in_metrics(text: &str, client_ports: &[u16]) -> Option<usize> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("registro_store_watch_member{member=\"")?;
        let (member, value) = rest.split_once("\"}")?;
        if value.trim() != "1" {
            return None;
        }
        let port: u16 = member.rsplit(':').next()?.parse().ok()?;
        client_ports.iter().position(|&p| p == port)
    })
}

/// The watch's connection among the sockets of process `pid`, as `ss`
/// shows them: the connection to a member's client port that sent one
/// request (a few hundred bytes) and keeps receiving (events, and progress
/// notifications every second); pooled connections send a request per
/// answer.
fn watch_in_ss(text: &str, pid: u32, client_ports: &[u16]) -> Option<usize> {
    let owner = format!("pid={pid},");
    let mut best: Option<(u64, usize)> = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with(char::is_whitespace) {
            continue;
        }
        let info = match lines.peek() {
            Some(next) if next.starts_with(char::is_whitespace) => lines.next().unwrap_or(""),
            _ => "",
        };
        if !line.contains(&owner) {
            continue;
        }
        let peer = line.split_whitespace().nth(3).unwrap_or("");
        let Some(port) = peer.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) else {
            continue;
        };
        let Some(member) = client_ports.iter().position(|&p| p == port) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            info.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        let sent = field("bytes_sent:").unwrap_or(0);
        let quiet = field("lastrcv:").unwrap_or(u64::MAX);
        if sent <= 2048 && best.is_none_or(|(q, _)| quiet < q) {
            best = Some((quiet, member));
        }
    }
    best.map(|(_, m)| m)
}

/// The whole run: start, load, faults, quiet, checks.
fn run(settings: &Settings) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{}", settings.seed));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the chaos directory");
    println!(
        "chaos: REGISTRO_CHAOS_SEED={} (make chaos SEED={}), {} s, {} faults, {} instances, --down-after {}s",
        settings.seed,
        settings.seed,
        settings.seconds,
        settings.faults,
        settings.instances,
        settings.down_after
    );
    let mut fleet = Fleet::start(settings, &dir);
    let count = settings.instances;
    let ctx = Arc::new(Ctx {
        start: Instant::now(),
        addrs: fleet.addrs(),
        events: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        stop_churn: AtomicBool::new(false),
        beaters: Mutex::new(BTreeMap::new()),
        next_id: AtomicU32::new(count),
    });

    // The app and the fleet, through the servers in turn (with retries:
    // nothing is faulted yet, but a change may meet a busy server).
    let setup = agent();
    let app = json!({"name": APP}).to_string();
    let created = (0..5).any(|_| {
        let (o, _) = ctx.op(
            &setup,
            "setup",
            Op::CreateApp(APP.into()),
            0,
            "POST",
            "/registro/1.0/apps",
            &app,
        );
        matches!(o.status(), Some(201 | 409))
    });
    assert!(created, "setup: the app could not be created");
    for n in 0..count {
        let done = (0..5).any(|_| {
            ctx.register(&setup, "setup", n, n as usize % SERVERS)
                .status()
                == Some(201)
        });
        assert!(done, "setup: {} could not be registered", id(n));
    }
    for n in 0..count {
        ctx.spawn_beater(n, count);
    }
    let readers: Vec<JoinHandle<()>> = (0..SERVERS)
        .map(|k| {
            let ctx = Arc::clone(&ctx);
            thread::spawn(move || ctx.read(k))
        })
        .collect();
    // Until every instance has been answered 204 once (a bound, not a
    // promise: the checks judge), then the churn.
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        let up: std::collections::BTreeSet<u32> = lock(&ctx.events)
            .iter()
            .filter(|e| e.ok(204))
            .filter_map(|e| match e.op {
                Op::Heartbeat(n, _) => Some(n),
                _ => None,
            })
            .collect();
        if up.len() >= count as usize {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let churn = {
        let ctx = Arc::clone(&ctx);
        let seed = settings.seed;
        thread::spawn(move || ctx.churn(seed, count))
    };

    // The nemesis: the faults spread over the seconds, the four kinds in a
    // seeded order, each kind once in every four faults.
    let mut rng = Rng::seeded(settings.seed);
    let mut faults = Vec::new();
    let began = Instant::now();
    let slot = if settings.faults == 0 {
        Duration::from_secs(settings.seconds)
    } else {
        Duration::from_secs(settings.seconds) / settings.faults as u32
    };
    let mut kinds: Vec<Kind> = Vec::new();
    let mut next = began + Duration::from_millis(1000 + rng.below(1000) as u64);
    for _ in 0..settings.faults {
        if kinds.is_empty() {
            kinds = vec![
                Kind::KillRegistro,
                Kind::KillMember,
                Kind::PauseLeader,
                Kind::PauseWatched,
            ];
            for i in (1..kinds.len()).rev() {
                kinds.swap(i, rng.below(i + 1));
            }
        }
        let kind = kinds.pop().expect("refilled");
        let longest = slot
            .saturating_sub(AFTER_HEAL + Duration::from_secs(1))
            .min(MAX_FAULT);
        let spread = longest
            .saturating_sub(Duration::from_millis(500))
            .as_millis() as usize;
        let length = Duration::from_millis(500 + rng.below(spread.max(1)) as u64);
        let never = AtomicBool::new(false);
        ctx.wait_until(next, &never);
        let fault = fleet.fault(kind, length, &mut rng, &ctx);
        println!(
            "  {}..{}  {}",
            at(fault.began),
            at(fault.healed),
            fault.what
        );
        faults.push(fault);
        next = (next + slot).max(Instant::now() + AFTER_HEAL);
    }
    let never = AtomicBool::new(false);
    ctx.wait_until(
        next.max(began + Duration::from_secs(settings.seconds)),
        &never,
    );

    // Quiet: no more changes but heartbeats; every server must answer one
    // same view within 3 s.
    ctx.stop_churn.store(true, Ordering::SeqCst);
    let _ = churn.join();
    let quiet = ctx.now();
    let mut equal_at = None;
    let last = Instant::now() + AGREE_WITHIN;
    while Instant::now() < last {
        let round = ctx.now();
        let views: Vec<Option<View>> = (0..SERVERS)
            .map(|k| {
                let path = "/registro/1.0/apps";
                let read = Op::Read { all: true };
                ctx.attempt(&setup, "final", &read, 0, k, "GET", path, "").1
            })
            .collect();
        let agree = views.iter().all(|v| {
            v.as_ref()
                .zip(views[0].as_ref())
                .is_some_and(|(v, w)| v.same(w) && v.index == w.index)
        });
        if agree {
            equal_at = Some(round);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    ctx.stop.store(true, Ordering::SeqCst);
    for r in readers {
        let _ = r.join();
    }
    let beaters = std::mem::take(&mut *lock(&ctx.beaters));
    for (_, b) in beaters {
        let _ = b.thread.join();
    }
    fleet.finish();

    let history = History {
        events: std::mem::take(&mut *lock(&ctx.events)),
        faults,
        end: End { quiet, equal_at },
        down_after: settings.down_after * 1_000_000,
        servers: SERVERS,
    };
    let path = dir.join("history.jsonl");
    std::fs::write(&path, history.lines()).expect("write the history");
    let verdicts = checks::all(&history);
    let mut report = String::new();
    for v in &verdicts {
        let mark = if v.passed() { "PASS" } else { "FAIL" };
        report.push_str(&format!("{mark} {}: {}\n", v.name, v.summary));
        for f in &v.failures {
            report.push_str(&format!("       {f}\n"));
        }
    }
    for line in checks::stats(&history) {
        report.push_str(&format!("  {line}\n"));
    }
    report.push_str(&format!(
        "history: {} (and the servers' and the members' logs beside it)\n",
        path.display()
    ));
    println!("{report}");
    let _ = std::fs::write(dir.join("report.txt"), &report);
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|v| !v.passed())
        .map(|v| v.name)
        .collect();
    assert!(
        failed.is_empty(),
        "chaos, seed {}: failed {failed:?} (the report above, and in {})",
        settings.seed,
        dir.join("report.txt").display()
    );
}

#[test]
fn kills_and_pauses_lose_nothing_and_mark_no_live_instance_down() {
    if installed("chaos::kills_and_pauses_lose_nothing_and_mark_no_live_instance_down") {
        run(&Settings::from_env());
    }
}

#[test]
fn the_watched_member_is_read_from_metrics() {
    let text = "\
# TYPE registro_store_watch_member gauge
registro_store_watch_member{member=\"127.0.0.1:2379\"} 0
registro_store_watch_member{member=\"127.0.0.1:22379\"} 1
registro_store_watch_member{member=\"127.0.0.1:32379\"} 0
";
    assert_eq!(watch_in_metrics(text, &[32379, 2379, 22379]), Some(2));
    assert_eq!(watch_in_metrics("registro_up 1\n", &[2379]), None);
}

#[test]
fn the_watch_socket_is_found_in_ss_output() {
    // Server 41 has a pooled connection to each member and its watch on
    // the member at port 2379 (one request sent, receiving).
    let text = "\
0 0 127.0.0.1:40000 127.0.0.1:2379 users:((\"registro\",pid=41,fd=9))
\t cubic bytes_sent:289 bytes_acked:290 bytes_received:90112 lastsnd:40000 lastrcv:120 lastack:120
0 0 127.0.0.1:40002 127.0.0.1:22379 users:((\"registro\",pid=41,fd=10))
\t cubic bytes_sent:481002 bytes_acked:481003 bytes_received:70112 lastsnd:20 lastrcv:20 lastack:20
0 0 127.0.0.1:40004 127.0.0.1:32379 users:((\"registro\",pid=41,fd=11))
\t cubic bytes_sent:310 bytes_acked:311 bytes_received:400 lastsnd:9000 lastrcv:9000 lastack:9000
0 0 127.0.0.1:40006 127.0.0.1:32379 users:((\"registro\",pid=42,fd=9))
\t cubic bytes_sent:289 bytes_acked:290 bytes_received:90112 lastsnd:40000 lastrcv:10 lastack:10
";
    let ports = [32379, 2379, 22379];
    assert_eq!(watch_in_ss(text, 41, &ports), Some(1));
    assert_eq!(watch_in_ss(text, 42, &ports), Some(0));
    assert_eq!(watch_in_ss(text, 43, &ports), None);
}
