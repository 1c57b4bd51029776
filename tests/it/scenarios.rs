//! Every scenario of API.md Parts 1 to 3, run alike on every store, so that
//! a behaviour cannot differ between stores without a test failing: the
//! memory store (an in-process server), a data directory (the `registro`
//! binary with `--data-dir`) and etcd (two `registro` servers on a real
//! three-member cluster, `etcd/cluster.rs`).
//!
//! A scenario is a function of one fresh [`Registry`]: the addresses of its
//! servers (one server: the same address for all) and its periods. Its
//! [`Client`] makes each change through the next server and each read
//! through a server that did not make the last change, so that on etcd
//! every read shows what another server committed: once that server's
//! view has it, which API.md Part 4 allows up to a second (the client
//! waits for the reading server's index to reach the changing server's,
//! and fails if it takes longer); its watches wait on one server for
//! changes made through another. A scenario that depends on
//! time says how ([`Timing`]) and takes its periods from the store under
//! test: etcd's leases are whole seconds, the memory store counts
//! milliseconds.
//!
//! The scenarios stand in the files of their area, in each file's
//! `SCENARIOS`: `api.rs` (the route table, Part 2's rules), `discovery.rs`
//! (metadata, filters, the index), `watch.rs`, `lifecycle.rs` (time),
//! `ops.rs` and `concurrency.rs`. What the store cannot change (framing,
//! parsing, limits, signals, flags) stays plain tests there, on memory.
//!
//! Scenarios run a few at a time, each on servers of its own; a failure
//! names its scenario, and the others still run. `REGISTRO_SCENARIO=TEXT`
//! runs only those whose name contains TEXT.

use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::check;
use crate::etcd::cluster::{self, Cluster};
use crate::support::{eventually, start_with, Conn, Exchange, Proc, Reply, TempDir};

/// What a scenario needs of time.
#[derive(Clone, Copy, Debug)]
pub enum Timing {
    /// The production periods: nothing changes by itself while it runs.
    Still,
    /// Instances read `down` soon; none is removed while it runs.
    Down,
    /// Instances read `down` soon and are removed soon after.
    Evict,
}

/// The periods of one registry, and how closely its store keeps to them.
#[derive(Clone, Copy, Debug)]
pub struct Periods {
    pub down_after: Duration,
    pub evict_after: Duration,
    /// How long after it is due a change by time may still read as not
    /// yet made (etcd finds an expired lease late; memory is exact).
    pub late: Duration,
    /// How soon a change made through one server wakes a watch on another.
    pub seen_within: Duration,
}

/// One scenario: its name, what it needs of time, its checks.
pub struct Scenario {
    pub name: &'static str,
    pub timing: Timing,
    pub run: fn(&Registry),
}

/// `table![Timing: function, ...]`: a file's `SCENARIOS`, each named after
/// its function.
macro_rules! table {
    ($($timing:ident: $run:ident),* $(,)?) => {
        pub const SCENARIOS: &[$crate::scenarios::Scenario] = &[$(
            $crate::scenarios::Scenario {
                name: concat!(module_path!(), "::", stringify!($run)),
                timing: $crate::scenarios::Timing::$timing,
                run: $run,
            }
        ),*];
    };
}
pub(crate) use table;

/// Every scenario, in the order they are started: the longest first.
fn every() -> impl Iterator<Item = &'static Scenario> {
    [
        crate::lifecycle::SCENARIOS,
        crate::concurrency::SCENARIOS,
        crate::watch::SCENARIOS,
        crate::discovery::SCENARIOS,
        crate::api::SCENARIOS,
        crate::ops::SCENARIOS,
    ]
    .into_iter()
    .flatten()
}

/// The servers of one registry, as a scenario sees them.
pub struct Registry {
    addrs: Vec<SocketAddr>,
    pub periods: Periods,
}

impl Registry {
    /// Server `k` of the registry, counted round (any `k` names one).
    pub fn addr(&self, k: usize) -> SocketAddr {
        self.addrs[k % self.addrs.len()]
    }

    /// Every server of the registry, once each.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A connection to server `k`.
    pub fn conn(&self, k: usize) -> Conn {
        Conn::open(self.addr(k))
    }

    /// A client that spreads its requests over every server.
    pub fn client(&self) -> Client {
        Client {
            conns: self.addrs.iter().map(|a| Conn::open(*a)).collect(),
            addrs: self.addrs.clone(),
            changes: 0,
            last: 0,
            unseen: None,
            seen_within: self.periods.seen_within,
        }
    }
}

/// Requests to every server of a registry, as clients behind a balancer
/// send them: each change through the next server in turn, each read
/// through a server that did not make the last change (on one server, one
/// connection serves all).
pub struct Client {
    conns: Vec<Conn>,
    addrs: Vec<SocketAddr>,
    changes: usize,
    last: usize,
    /// The server that made changes no other server has been seen to
    /// have yet.
    unseen: Option<usize>,
    seen_within: Duration,
}

impl Client {
    /// Waits until server `k` has every change server `from` has.
    fn sync(&mut self, from: usize, k: usize) {
        seen(self.addrs[from], self.addrs[k], self.seen_within);
    }
}

/// Waits until server `to` has every change server `from` has (its list's
/// index has reached `from`'s), and fails if that takes longer than
/// `within` (API.md Part 4: a change is seen on every server within 1 s).
pub fn seen(from: SocketAddr, to: SocketAddr, within: Duration) {
    if from == to {
        return;
    }
    let target = index(&Conn::open(from).get("/apps"));
    let started = Instant::now();
    let mut reader = Conn::open(to);
    loop {
        let at = index(&reader.get("/apps"));
        if at >= target {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{to} did not have {from}'s changes within {within:?} (index {at}, not {target})"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

impl Exchange for Client {
    fn send(&mut self, method: &str, path: &str, body: &str) -> Reply {
        let n = self.conns.len();
        let k = if matches!(method, "GET" | "HEAD") {
            let k = (self.last + 1) % n;
            if let Some(from) = self.unseen.take().filter(|&from| from != k) {
                self.sync(from, k);
            }
            k
        } else {
            self.last = self.changes % n;
            self.changes += 1;
            self.unseen = Some(self.last);
            self.last
        };
        self.conns[k].send(method, path, body)
    }
}

/// Where a scenario's registry is kept.
enum Store<'a> {
    Memory,
    DataDir,
    Etcd(&'a Cluster),
}

/// A registry's running servers, stopped (and its data removed) on drop.
enum Servers {
    InProcess(registro::Server),
    Procs(Vec<Proc>, #[allow(dead_code)] Option<TempDir>),
}

impl Store<'_> {
    fn periods(&self, timing: Timing) -> Periods {
        let (soon, evict, late, seen_within) = match self {
            // A silent instance is found by its claim's server within one
            // pass of the evictor (at most 1 s) and marked `down` by a
            // change, which may take up to its commit bound (5 s) on a
            // loaded machine; eviction comes well after that, so that an
            // instance is seen `down` before it goes.
            Store::Etcd(_) => (1_000, 9_000, 6_000, 1_000),
            // Reads are exact to the millisecond; a woken watch is
            // answered at once, but this machine may be loaded.
            Store::Memory | Store::DataDir => (300, 3_000, 20, 10_000),
        };
        let (down_after, evict_after) = match timing {
            Timing::Still => (90_000, 600_000),
            Timing::Down => (soon, 600_000),
            Timing::Evict => (soon, evict),
        };
        let ms = Duration::from_millis;
        Periods {
            down_after: ms(down_after),
            evict_after: ms(evict_after),
            late: ms(late),
            seen_within: ms(seen_within),
        }
    }

    /// Servers for the `k`-th scenario. The memory store's sweeper runs
    /// once an hour (reads are exact and watches woken whatever it does);
    /// the data directory's every 100 ms (what it removes is written).
    fn start(&self, p: &Periods, k: usize) -> Servers {
        let mut flags = vec![
            "--down-after".to_string(),
            format!("{}ms", p.down_after.as_millis()),
            "--evict-after".to_string(),
            format!("{}ms", p.evict_after.as_millis()),
        ];
        match self {
            Store::Memory => Servers::InProcess(start_with(|c| {
                c.down_after = p.down_after;
                c.evict_after = p.evict_after;
                c.sweep_every = Duration::from_secs(3600);
            })),
            Store::DataDir => {
                let dir = TempDir::new("scenario");
                flags.extend(["--sweep-every".into(), "100ms".into(), "--data-dir".into()]);
                flags.push(dir.path().display().to_string());
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                Servers::Procs(vec![Proc::start(&flags)], Some(dir))
            }
            Store::Etcd(cluster) => {
                let prefix = format!("/scenario-{k}/");
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                let pair = (0..2).map(|_| cluster.registro(&prefix, &flags)).collect();
                Servers::Procs(pair, None)
            }
        }
    }
}

impl Servers {
    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Servers::InProcess(s) => vec![s.local_addr()],
            Servers::Procs(procs, _) => procs.iter().map(|p| p.addr).collect(),
        }
    }
}

/// Runs every scenario on `store`, `at_once` at a time; fails listing
/// each scenario that failed.
fn run_every(store: &Store, at_once: usize) {
    let only = std::env::var("REGISTRO_SCENARIO").unwrap_or_default();
    let todo: Vec<&Scenario> = every().filter(|s| s.name.contains(&only)).collect();
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..at_once {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(s) = todo.get(k) else { break };
                let began = Instant::now();
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                    let periods = store.periods(s.timing);
                    let servers = store.start(&periods, k);
                    let registry = Registry {
                        addrs: servers.addrs(),
                        periods,
                    };
                    (s.run)(&registry);
                    converged(&registry.addrs, Duration::from_secs(3), s.name);
                }));
                let took = began.elapsed();
                println!(
                    "{}: {took:.1?}{}",
                    s.name,
                    if outcome.is_ok() { "" } else { ", FAILED" }
                );
                if let Err(e) = outcome {
                    let why = e
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| e.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic without a message");
                    lock(&failed).push(format!("{}: {why}", s.name));
                }
            });
        }
    });
    let failed = lock(&failed);
    assert!(
        failed.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failed.len(),
        todo.len(),
        failed.join("\n")
    );
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn every_scenario_on_memory() {
    run_every(&Store::Memory, 4);
}

#[test]
fn every_scenario_on_a_data_dir() {
    run_every(&Store::DataDir, 4);
}

#[test]
fn every_scenario_on_etcd() {
    if cluster::installed("every_scenario_on_etcd") {
        run_every(&Store::Etcd(&Cluster::start("scenarios")), 4);
    }
}

// --- What scenarios share ------------------------------------------------

/// The `Registro-Index` of an answer.
#[track_caller]
pub fn index(r: &Reply) -> u64 {
    r.header("registro-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Registro-Index in {:?}", r.headers))
}

/// The `Registro-Index` of a GET of `path`, which must answer 200.
#[track_caller]
pub fn index_of(c: &mut impl Exchange, path: &str) -> u64 {
    index(&check(c, "GET", path, "", 200))
}

/// The instance `id` in an App's JSON, `None` when it is not listed.
pub fn instance_in(app: &Value, id: &str) -> Option<Value> {
    app["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
}

/// The status of `id` in an App's JSON, `None` when it is not listed.
pub fn status_in(app: &Value, id: &str) -> Option<String> {
    instance_in(app, id).and_then(|i| i["status"].as_str().map(str::to_owned))
}

/// The App `name` in a listing of `/apps`, `Null` when it is not listed.
pub fn app_in(list: &Value, name: &str) -> Value {
    list["applications"]
        .as_array()
        .and_then(|apps| apps.iter().find(|a| a["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The instance as read now, or `None` on 404.
#[track_caller]
pub fn read(c: &mut impl Exchange, app: &str, id: &str) -> Option<Value> {
    let r = c.get(&format!("/apps/{app}/{id}"));
    match r.status {
        200 => Some(r.json()),
        404 => None,
        s => panic!("GET {app}/{id} answered {s}: {}", r.body),
    }
}

/// Waits until the server counts `n` parked watches (through `/metrics`),
/// so that a change made next must wake them rather than be seen on arrival.
pub fn parked(c: &mut Conn, n: usize) {
    let want = format!("registro_watches_waiting {n}");
    // A deadline for a loaded machine: passing costs none of it.
    eventually(Duration::from_secs(60), &want, || {
        let r = c.send_raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", false);
        r.body.lines().any(|l| l.trim() == want).then_some(())
    });
}

/// A request in flight on a connection of its own (a watch).
pub struct Watch(JoinHandle<(Reply, Instant)>);

impl Watch {
    /// `GET /registro/1.0PATH` on `addr`, answered on another thread.
    pub fn start(addr: SocketAddr, path: &str) -> Watch {
        let mut conn = Conn::open(addr);
        let path = path.to_owned();
        Watch(thread::spawn(move || {
            let reply = conn.get(&path);
            (reply, Instant::now())
        }))
    }

    /// The answer and when it came.
    pub fn answer(self) -> (Reply, Instant) {
        self.0.join().expect("the watch thread")
    }
}

/// When a request was sent and when its answer came: the server handled
/// it in between, however loaded this machine is.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub sent: Instant,
    pub answered: Instant,
}

/// Runs `f` (a request) and the span it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Span) {
    let sent = Instant::now();
    let v = f();
    let answered = Instant::now();
    (v, Span { sent, answered })
}

/// Polls `read` until it answers `true`, holding each answer to the promise
/// that what it reads comes true `after` the request `cause` was handled,
/// and reads so within `late` of that: a `true` answered sooner than
/// `after` past `cause`'s sending came too soon, a `false` sent later than
/// `after + late` past `cause`'s answer too late. Neither depends on this
/// machine's speed. Returns the span of the first `true`.
#[track_caller]
pub fn comes_true(
    what: &str,
    cause: Span,
    after: Duration,
    late: Duration,
    mut read: impl FnMut() -> bool,
) -> Span {
    let due = cause.answered + after + late;
    eventually(after + late + Duration::from_secs(10), what, || {
        let (yes, span) = timed(&mut read);
        let waited = span.answered - cause.sent;
        assert!(
            !yes || waited >= after,
            "{what} after {waited:?}, before {after:?}"
        );
        assert!(
            yes || span.sent < due,
            "{what}: not yet {:?} after it was due",
            span.sent - (due - late)
        );
        yes.then_some(span)
    })
}

/// What a registry looks like from one server: the listing with every
/// `lastRenewal` left out (heartbeats are not replicated), and its index.
pub fn view(addr: SocketAddr) -> (Value, u64) {
    let mut c = Conn::open(addr);
    let r = check(&mut c, "GET", "/apps", "", 200);
    let mut v = r.json();
    if let Some(apps) = v["applications"].as_array_mut() {
        apps.sort_by_key(|a| a["name"].as_str().unwrap_or_default().to_owned());
        for app in apps {
            if let Some(list) = app["instances"].as_array_mut() {
                list.sort_by_key(|i| i["id"].as_str().unwrap_or_default().to_owned());
                for i in list {
                    if let Some(o) = i.as_object_mut() {
                        o.remove("lastRenewal");
                    }
                }
            }
        }
    }
    (v, index(&r))
}

/// Waits until every server answers the same listing with the same index.
pub fn converged(addrs: &[SocketAddr], deadline: Duration, what: &str) -> (Value, u64) {
    let end = Instant::now() + deadline;
    loop {
        let views: Vec<(Value, u64)> = addrs.iter().map(|a| view(*a)).collect();
        if views.windows(2).all(|w| w[0] == w[1]) {
            return views[0].clone();
        }
        assert!(
            Instant::now() < end,
            "{what}: the servers disagree after {deadline:?}: {views:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
