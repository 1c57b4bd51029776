//! The etcd store (`--store etcd://HOST:PORT[,...]`): the registry kept in
//! an etcd v3 cluster under a key prefix, so that any number of servers
//! serve one registry.
//!
//! Each server keeps a local view (the `Registry` of the `View`, in mirror
//! mode) fed by one watch of the prefix; reads and watches cost etcd
//! nothing. A change is a transaction with compares (safe to retry),
//! answered once committed and applied to this server's view. Liveness is a
//! lease per `up` instance (TTL `--down-after`) on an "alive" key: the first
//! heartbeat grants it and writes; later heartbeats only queue a keep-alive
//! that the keeper thread sends, batched, every [`KEEP_EVERY`]. Removal by
//! time is the evictor's, on every server, with compares. See
//! `mirror.rs` for the keys and ARCHITECTURE.md for the reasons.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub mod client;
mod metrics;
pub mod mirror;

use self::client::{CallError, Client, Compare, Op, Watch, WatchLine};
use self::metrics::{Op as MOp, Outcome, StoreMetrics};
use self::mirror::{AppValue, InstValue, Key, Mirror, Stored, StoredPeriods};
use super::{Error, Registration, Store};
use crate::clock::{self, Now};
use crate::log::Log;
use crate::registry::{self, Periods, Registry, Status};
use crate::view::View;

/// How long a change may wait on etcd, in all (a worker is held that long
/// at most).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// One call to etcd by a background thread.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting at start, checking the periods and reading the registry.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often queued keep-alives are sent.
pub const KEEP_EVERY: Duration = Duration::from_millis(100);
/// Leases per keep-alive request.
const KEEP_BATCH: usize = 1000;
/// How long no call to etcd must succeed before the store counts as
/// unreachable (503s, `/healthz` 503).
const UNHEALTHY_AFTER: u64 = 3_000;
/// How often, when no keep-alive has gone, a probe checks etcd's quorum.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often the evictor looks at what time has made due.
const EVICT_EVERY: Duration = Duration::from_secs(1);
/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;
/// Evictions done in one pass at most (the rest wait for the next second).
const EVICT_LIMIT: usize = 10_000;
/// Unused leases remembered for revoking (the rest expire by themselves).
const MAX_UNUSED: usize = 10_000;
/// Attempts of a change whose compare failed (a concurrent change).
const ATTEMPTS: usize = 4;

/// What `--store etcd://...` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `HOST:PORT` of each member.
    pub members: Vec<String>,
    /// The key prefix.
    pub prefix: String,
    /// The server's periods (checked against the registry's).
    pub periods: Periods,
    /// The server's worker threads: at most half wait on etcd at once.
    pub threads: usize,
}

/// The store: a handle on its shared state.
#[derive(Debug)]
pub struct Etcd {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    prefix: String,
    periods: Periods,
    /// The lease TTL in seconds: `--down-after`, rounded up.
    ttl: i64,
    mirror: Mutex<Mirror>,
    /// The revision the view has applied, and its waiters.
    applied: Mutex<i64>,
    applied_changed: Condvar,
    healthy: AtomicBool,
    /// When (monotonic ms) a call to etcd last succeeded.
    last_ok: AtomicU64,
    /// Why etcd is unreachable, while it is.
    why: Mutex<String>,
    /// Leases whose keep-alive is due.
    leases: Mutex<HashSet<i64>>,
    /// Leases granted for a heartbeat that did not use them.
    unused: Mutex<Vec<i64>>,
    writers: AtomicUsize,
    max_writers: usize,
    stop: AtomicBool,
    stop_lock: Mutex<()>,
    stop_signal: Condvar,
    restart_watch: AtomicBool,
    /// Changes waiting for the committer, and its wake-up.
    jobs: Mutex<VecDeque<Arc<Job>>>,
    queued: Condvar,
    metrics: StoreMetrics,
    log: Log,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A plan for a change, decided from the mirror.
enum Plan {
    /// Nothing to write (another server did it).
    Done,
    /// A transaction.
    Txn(Vec<Compare>, Vec<Op>),
}

impl Etcd {
    /// Connects, checks (or stores) the periods, reads the registry: the
    /// store and the view to serve from. Fails with `InvalidInput` (one line
    /// for the user) when the periods differ or etcd cannot be reached.
    pub fn open(settings: Settings, log: Log) -> io::Result<(Etcd, Registry)> {
        let bad = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        let client = Client::new(settings.members.clone());
        let listed = settings.members.join(",");
        let unreachable = |e: CallError| bad(format!("cannot use etcd at {listed}: {e}"));
        let prefix = settings.prefix.clone();
        let wanted = StoredPeriods::from(settings.periods);
        let key = Key::Periods.bytes(&prefix);
        let value = serde_json::to_vec(&wanted).unwrap_or_default();
        client
            .txn(
                &[Compare::CreateRevision(key.clone(), 0)],
                &[Op::Put(key.clone(), value, 0)],
                START_TIMEOUT,
            )
            .map_err(unreachable)?;
        let (kvs, _) = client
            .range(&key, &[], START_TIMEOUT)
            .map_err(unreachable)?;
        let stored: Option<StoredPeriods> = kvs
            .first()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        match stored {
            Some(stored) if stored == wanted => {}
            Some(stored) => {
                return Err(bad(format!(
                    "the registry under {prefix:?} in etcd has --down-after {} and --evict-after {}; \
                     this server has --down-after {} and --evict-after {}: start it with the registry's periods \
                     (or use another --etcd-prefix)",
                    show(stored.down_after_ms),
                    show(stored.evict_after_ms),
                    show(wanted.down_after_ms),
                    show(wanted.evict_after_ms),
                )))
            }
            None => {
                return Err(bad(format!(
                    "the periods stored under {prefix:?} in etcd cannot be read; remove the key {prefix}periods"
                )))
            }
        }
        let end = client::prefix_end(prefix.as_bytes());
        let (kvs, revision) = client
            .range(prefix.as_bytes(), &end, START_TIMEOUT)
            .map_err(unreachable)?;
        let mut view = Registry::mirror();
        let mirror = Mirror::from_range(&prefix, &kvs, revision, &mut view, clock::now());
        // The view starts as it is: no event of its making is logged.
        let (mut apps, mut events) = (Vec::new(), Vec::new());
        view.drain_changes(&mut apps, &mut events);
        let ttl = i64::try_from(settings.periods.down_after.div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        // etcd raises a TTL below its minimum (about 2 s with the default
        // election timeout): say so once, as instances then read `down` later.
        if let Ok((lease, granted)) = client.grant_ttl(ttl, START_TIMEOUT) {
            let _ = client.revoke(lease, START_TIMEOUT);
            if granted > ttl {
                log.line(format_args!(
                    "store: etcd grants leases of at least {granted} s, so a silent instance reads down                      about {granted} s after its last heartbeat, not after --down-after {}",
                    show(settings.periods.down_after)
                ));
            }
        }
        let shared = Arc::new(Shared {
            client,
            prefix,
            periods: settings.periods,
            ttl,
            mirror: Mutex::new(mirror),
            applied: Mutex::new(revision),
            applied_changed: Condvar::new(),
            healthy: AtomicBool::new(true),
            last_ok: AtomicU64::new(clock::now().mono),
            why: Mutex::new(String::new()),
            leases: Mutex::new(HashSet::new()),
            unused: Mutex::new(Vec::new()),
            writers: AtomicUsize::new(0),
            max_writers: (settings.threads / 2).max(1),
            stop: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_signal: Condvar::new(),
            restart_watch: AtomicBool::new(false),
            jobs: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            metrics: StoreMetrics::default(),
            log,
        });
        Ok((Etcd { shared }, view))
    }

    /// Starts the watch, keeper and evictor threads.
    pub fn spawn(&self, view: &Arc<View>) -> io::Result<Threads> {
        let mut threads = Threads {
            shared: Arc::clone(&self.shared),
            handles: Vec::new(),
        };
        type Body = fn(&Shared, &Weak<View>);
        let bodies: [(&str, Body); 4] = [
            ("registro-watch", watch),
            ("registro-commit", commit),
            ("registro-keep", keep),
            ("registro-evict", evict),
        ];
        for (name, body) in bodies {
            let shared = Arc::clone(&self.shared);
            let view = Arc::downgrade(view);
            threads.handles.push(
                thread::Builder::new()
                    .name(name.into())
                    .spawn(move || body(&shared, &view))?,
            );
        }
        Ok(threads)
    }
}

/// The store's threads; `stop` (or drop) ends and joins them.
#[derive(Debug)]
pub struct Threads {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    /// Stops every thread and waits for them.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        drop(lock(&self.shared.stop_lock));
        self.shared.stop_signal.notify_all();
        self.shared.applied_changed.notify_all();
        drop(lock(&self.shared.jobs));
        self.shared.queued.notify_all();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `90s`, `1.5s`.
fn show(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", ms as f64 / 1000.0)
    }
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d` unless stopped meanwhile; returns whether to go on.
    fn rest(&self, d: Duration) -> bool {
        let guard = lock(&self.stop_lock);
        if self.stopped() {
            return false;
        }
        let _ = self
            .stop_signal
            .wait_timeout(guard, d)
            .unwrap_or_else(PoisonError::into_inner);
        !self.stopped()
    }

    /// Notes that etcd answered (`Ok`) or not, logging each change.
    ///
    /// etcd counts as unreachable only once no call has succeeded for
    /// [`UNHEALTHY_AFTER`]: one slow call on a loaded machine, or a leader
    /// election, does not turn every heartbeat into a 503 (leases have a
    /// TTL of `--down-after`: a keep-alive late by seconds costs nothing).
    fn health(&self, result: Result<(), &str>) {
        let now = clock::now().mono;
        match result {
            Ok(()) => {
                self.last_ok.store(now, Ordering::SeqCst);
                if !self.healthy.swap(true, Ordering::SeqCst) {
                    lock(&self.why).clear();
                    self.log.line(format_args!(
                        "store: etcd is reachable again; changes are accepted"
                    ));
                    // The watch may be stuck on a member that was cut off.
                    self.restart_watch.store(true, Ordering::SeqCst);
                }
            }
            Err(why) => {
                *lock(&self.why) = why.to_string();
                let silent = now.saturating_sub(self.last_ok.load(Ordering::SeqCst));
                if silent >= UNHEALTHY_AFTER && self.healthy.swap(false, Ordering::SeqCst) {
                    self.log.line(format_args!(
                        "store: etcd is unreachable ({why}); changes and heartbeats answer 503, reads the last view"
                    ));
                }
            }
        }
    }

    fn unavailable(&self) -> Error {
        let why = lock(&self.why).clone();
        Error::Unavailable(format!(
            "the registry's store (etcd) is unreachable or has no quorum ({why}); try again or another server"
        ))
    }

    /// A call to etcd, counted, with its effect on health.
    fn call<T>(
        &self,
        op: MOp,
        f: impl FnOnce(&Client) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let started = Instant::now();
        let result = f(&self.client);
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(CallError::Refused(..)) => Outcome::Refused,
            Err(CallError::Unreachable(_)) => Outcome::Unreachable,
        };
        self.metrics.record(op, outcome, started.elapsed());
        match &result {
            Err(CallError::Unreachable(why)) => self.health(Err(why)),
            _ => self.health(Ok(())),
        }
        result
    }

    /// Waits until the view has applied `revision`, until `deadline`.
    fn wait_applied(&self, revision: i64, deadline: Instant) -> bool {
        let mut applied = lock(&self.applied);
        while *applied < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stopped() {
                return false;
            }
            applied = self
                .applied_changed
                .wait_timeout(applied, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn set_applied(&self, revision: i64) {
        let mut applied = lock(&self.applied);
        if revision > *applied {
            *applied = revision;
            self.applied_changed.notify_all();
        }
    }

    /// A change: decided from the mirror, committed with compares, then
    /// awaited in the view. A failed compare means the mirror was behind:
    /// it catches up to that revision and the change is decided again.
    fn write(
        &self,
        decide: impl FnMut(&Mirror) -> Result<Plan, registry::Error>,
    ) -> Result<(), Error> {
        let _permit = self.permit()?;
        self.write_held(decide, Instant::now() + WRITE_TIMEOUT)
    }

    /// A place among the bounded writers, if etcd is reachable and one is
    /// free; else the 503 to answer at once.
    fn permit(&self) -> Result<Permit<'_>, Error> {
        if !self.healthy.load(Ordering::SeqCst) {
            return Err(self.unavailable());
        }
        Permit::take(&self.writers, self.max_writers).ok_or_else(|| {
            Error::Unavailable(
                "too many changes are waiting on the registry's store (etcd); try again".into(),
            )
        })
    }

    /// [`Shared::write`] for a caller that holds a permit, by `deadline`.
    fn write_held(
        &self,
        mut decide: impl FnMut(&Mirror) -> Result<Plan, registry::Error>,
        deadline: Instant,
    ) -> Result<(), Error> {
        let mut caught_up = false;
        for _ in 0..ATTEMPTS {
            let decided = decide(&lock(&self.mirror));
            let (compares, ops) = match decided {
                Ok(Plan::Done) => return Ok(()),
                Ok(Plan::Txn(compares, ops)) => (compares, ops),
                Err(e) if missing(e) && !caught_up => {
                    caught_up = true;
                    self.catch_up(deadline)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(result) = self.commit(compares, ops, deadline) else {
                return Err(Error::Unavailable(format!(
                    "the registry's store (etcd) did not answer within {} s; try again",
                    WRITE_TIMEOUT.as_secs()
                )));
            };
            match result {
                Ok(done) => {
                    self.health(Ok(()));
                    if !self.wait_applied(done.revision, deadline) {
                        self.restart_watch.store(true, Ordering::SeqCst);
                        return Err(Error::Unavailable(format!(
                            "the change is {} in etcd, but this server's view has not caught up within {} s; read again shortly",
                            if done.succeeded { "committed" } else { "in conflict" },
                            WRITE_TIMEOUT.as_secs()
                        )));
                    }
                    if done.succeeded {
                        return Ok(());
                    }
                }
                Err(CallError::Unreachable(why)) => {
                    self.health(Err(&why));
                    return Err(self.unavailable());
                }
                Err(CallError::Refused(_, why)) => {
                    return Err(Error::Unavailable(format!(
                        "the registry's store (etcd) refused the change: {why}"
                    )))
                }
            }
        }
        Err(Error::Unavailable(
            "the change kept meeting concurrent changes of the same instance; try again".into(),
        ))
    }

    /// Waits until the view has applied every change etcd had committed
    /// when this was called: a change just made through another server
    /// (whose client goes on through this one) is then seen. Costs one
    /// linearizable read; used only before answering 404 to a change.
    fn catch_up(&self, deadline: Instant) -> Result<(), Error> {
        let key = self.key(Key::Periods);
        let left = deadline.saturating_duration_since(Instant::now());
        match self.call(MOp::Range, |c| c.range(&key, &[], left)) {
            Ok((_, revision)) => {
                self.wait_applied(revision, deadline);
                Ok(())
            }
            Err(_) => Err(self.unavailable()),
        }
    }

    /// Hands a transaction to the committer and waits for its outcome
    /// until `deadline` (`None`: not known by then; it may still commit,
    /// which a retry's compare then finds).
    fn commit(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
        deadline: Instant,
    ) -> Option<Result<client::TxnResult, CallError>> {
        let job = Arc::new(Job {
            compares,
            ops,
            result: Mutex::new(None),
            done: Condvar::new(),
        });
        lock(&self.jobs).push_back(Arc::clone(&job));
        self.queued.notify_one();
        let mut result = lock(&job.result);
        while result.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stopped() {
                return None;
            }
            result = job
                .done
                .wait_timeout(result, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        result.take()
    }

    /// One transaction, counted.
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<client::TxnResult, CallError> {
        let started = Instant::now();
        let result = self.client.txn(compares, ops, CALL_TIMEOUT);
        let outcome = match &result {
            Ok(r) if r.succeeded => Outcome::Ok,
            Ok(_) => Outcome::Conflict,
            Err(CallError::Refused(..)) => Outcome::Refused,
            Err(CallError::Unreachable(_)) => Outcome::Unreachable,
        };
        self.metrics.record(MOp::Txn, outcome, started.elapsed());
        result
    }

    fn key(&self, key: Key) -> Vec<u8> {
        key.bytes(&self.prefix)
    }
}

/// A change waiting for the committer.
#[derive(Debug)]
struct Job {
    compares: Vec<Compare>,
    ops: Vec<Op>,
    result: Mutex<Option<Result<client::TxnResult, CallError>>>,
    done: Condvar,
}

impl Job {
    fn finish(&self, result: Result<client::TxnResult, CallError>) {
        *lock(&self.result) = Some(result);
        self.done.notify_all();
    }

    /// The keys it compares.
    fn compared(&self) -> impl Iterator<Item = &[u8]> {
        self.compares.iter().map(|c| match c {
            Compare::ModRevision(k, _) | Compare::CreateRevision(k, _) | Compare::Empty(k) => {
                k.as_slice()
            }
        })
    }

    /// The keys it changes.
    fn changed(&self) -> impl Iterator<Item = &[u8]> {
        self.ops.iter().map(|op| match op {
            Op::Put(k, _, _) | Op::Delete(k) | Op::DeletePrefix(k) => k.as_slice(),
        })
    }
}

/// Takes from `queue` the jobs that fit in one transaction: at most
/// `max_ops` compares and operations, and no key that one job changes
/// compared or changed by another (etcd refuses a key put twice, and a
/// compare must see the state its job was decided on); the rest wait for
/// the next transaction, in their order.
fn take_batch(queue: &mut VecDeque<Arc<Job>>, max_ops: usize) -> Vec<Arc<Job>> {
    let mut batch = Vec::new();
    let mut changed: HashSet<Vec<u8>> = HashSet::new();
    let mut compared: HashSet<Vec<u8>> = HashSet::new();
    let (mut compares, mut ops) = (0, 0);
    let mut kept = VecDeque::new();
    while let Some(job) = queue.pop_front() {
        let fits = compares + job.compares.len() <= max_ops && ops + job.ops.len() <= max_ops;
        if !fits && !batch.is_empty() {
            kept.push_back(job);
            break;
        }
        let clash = job
            .changed()
            .any(|k| changed.contains(k) || compared.contains(k))
            || job.compared().any(|k| changed.contains(k));
        if clash {
            kept.push_back(job);
            continue;
        }
        changed.extend(job.changed().map(<[u8]>::to_vec));
        compared.extend(job.compared().map(<[u8]>::to_vec));
        compares += job.compares.len();
        ops += job.ops.len();
        batch.push(job);
    }
    kept.append(queue);
    *queue = kept;
    batch
}

/// Whether a refusal says something is absent (the view may be behind).
fn missing(e: registry::Error) -> bool {
    matches!(
        e,
        registry::Error::NoSuchApp | registry::Error::NoSuchInstance
    )
}

/// One of the bounded places of a change waiting on etcd.
struct Permit<'a>(&'a AtomicUsize);

impl<'a> Permit<'a> {
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Permit<'a>> {
        if count.fetch_add(1, Ordering::SeqCst) >= max {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Permit(count))
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

impl Store for Etcd {
    fn create_app(&self, _view: &View, name: &str, now: Now) -> Result<(), Error> {
        let s = &self.shared;
        let key = s.key(Key::App(name.into()));
        s.write(|mirror| {
            if mirror.apps.get(name).is_some_and(|a| a.create_rev > 0) {
                return Err(registry::Error::AppExists);
            }
            Ok(Plan::Txn(
                vec![Compare::CreateRevision(key.clone(), 0)],
                vec![Op::Put(key.clone(), json(&AppValue { since: now.wall }), 0)],
            ))
        })
    }

    fn register(&self, _view: &View, new: &Registration<'_>, now: Now) -> Result<(), Error> {
        let s = &self.shared;
        let app_key = s.key(Key::App(new.app.into()));
        let inst_key = s.key(Key::Inst(new.app.into(), new.id.into()));
        let alive_key = s.key(Key::Alive(new.app.into(), new.id.into()));
        s.write(|mirror| {
            let app = mirror
                .apps
                .get(new.app)
                .filter(|a| a.create_rev > 0)
                .ok_or(registry::Error::NoSuchApp)?;
            let inst = app.instances.get(new.id);
            if let Some(inst) = inst {
                let same = inst.value.ip == new.ip && inst.value.port == new.port;
                if matches!(inst.status(), Status::Starting | Status::Up) && !same {
                    return Err(registry::Error::InstanceExists);
                }
            }
            let mut value = InstValue {
                ip: new.ip.to_string(),
                port: new.port,
                status: Stored::Starting,
                metadata: new.metadata.clone(),
                renewed: now.wall,
                vrev: 0,
            };
            if let Some(inst) = inst.filter(|i| {
                i.status() == Status::Starting
                    && i.value.ip == new.ip
                    && i.value.port == new.port
                    && i.value.metadata.as_deref().filter(|m| !m.is_empty())
                        == new.metadata.as_deref()
            }) {
                // The same registration again: only its time changes, and
                // no index moves (as in memory), so the app's key is not
                // written either.
                value.vrev = inst.visible_rev();
                return Ok(Plan::Txn(
                    vec![
                        Compare::CreateRevision(app_key.clone(), app.create_rev),
                        Compare::ModRevision(inst_key.clone(), inst.mod_rev),
                    ],
                    vec![Op::Put(inst_key.clone(), json(&value), 0)],
                ));
            }
            Ok(Plan::Txn(
                vec![
                    Compare::CreateRevision(app_key.clone(), app.create_rev),
                    Compare::ModRevision(inst_key.clone(), inst.map_or(0, |i| i.mod_rev)),
                ],
                vec![
                    Op::Put(inst_key.clone(), json(&value), 0),
                    Op::Delete(alive_key.clone()),
                ],
            ))
        })
    }

    fn renew(&self, view: &View, app: &str, id: &str, now: Now) -> Result<(), Error> {
        let s = &self.shared;
        let look = || {
            let mirror = lock(&s.mirror);
            let (_, inst) = mirror.instance(app, id)?;
            match inst.status() {
                Status::OutOfService => Err(registry::Error::OutOfService),
                Status::Up => Ok(inst.alive),
                Status::Starting | Status::Down => Ok(None),
            }
        };
        let lease = match look() {
            Err(e) if missing(e) => {
                // Registered through another server a moment ago? (Within
                // the writers' bound: else the 404 as the view has it.)
                let Some(_permit) = Permit::take(&s.writers, s.max_writers) else {
                    return Err(e.into());
                };
                s.catch_up(Instant::now() + WRITE_TIMEOUT)?;
                look()?
            }
            result => result?,
        };
        if let Some(lease) = lease {
            // A plain heartbeat: a keep-alive, sent with others shortly.
            if !s.healthy.load(Ordering::SeqCst) {
                return Err(s.unavailable());
            }
            lock(&s.leases).insert(lease);
            view.lock().touch(app, id, now.mono);
            view.log().metrics().heartbeat();
            return Ok(());
        }
        // The lease and the change share one permit and one deadline.
        let _permit = s.permit()?;
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let ttl = s.ttl;
        let lease = s
            .call(MOp::Grant, |c| c.grant(ttl, WRITE_TIMEOUT / 2))
            .map_err(|_| s.unavailable())?;
        let inst_key = s.key(Key::Inst(app.into(), id.into()));
        let alive_key = s.key(Key::Alive(app.into(), id.into()));
        let mut kept = None;
        let written = s.write_held(
            |mirror| {
                let (_, inst) = mirror.instance(app, id)?;
                match inst.status() {
                    Status::OutOfService => Err(registry::Error::OutOfService),
                    Status::Up => {
                        // Another server's heartbeat made it up meanwhile.
                        kept = inst.alive;
                        Ok(Plan::Done)
                    }
                    Status::Starting | Status::Down => {
                        let mut value = inst.value.clone();
                        value.status = Stored::Up;
                        value.renewed = now.wall;
                        value.vrev = 0;
                        Ok(Plan::Txn(
                            vec![Compare::ModRevision(inst_key.clone(), inst.mod_rev)],
                            vec![
                                Op::Put(inst_key.clone(), json(&value), 0),
                                Op::Put(alive_key.clone(), Vec::new(), lease),
                            ],
                        ))
                    }
                }
            },
            deadline,
        );
        if written.is_err() || kept.is_some() {
            // Revoked by the keeper (else it would expire after its TTL).
            let mut unused = lock(&s.unused);
            if unused.len() < MAX_UNUSED {
                unused.push(lease);
            }
        }
        written?;
        if let Some(other) = kept {
            lock(&s.leases).insert(other);
        }
        view.log().metrics().heartbeat();
        Ok(())
    }

    fn take_out_of_service(
        &self,
        _view: &View,
        app: &str,
        id: &str,
        now: Now,
    ) -> Result<(), Error> {
        let s = &self.shared;
        let inst_key = s.key(Key::Inst(app.into(), id.into()));
        let alive_key = s.key(Key::Alive(app.into(), id.into()));
        s.write(|mirror| {
            let (_, inst) = mirror.instance(app, id)?;
            let mut value = inst.value.clone();
            value.status = Stored::OutOfService;
            value.renewed = now.wall;
            // Out of service again: only its time changes, no index moves.
            value.vrev = if inst.status() == Status::OutOfService {
                inst.visible_rev()
            } else {
                0
            };
            Ok(Plan::Txn(
                vec![Compare::ModRevision(inst_key.clone(), inst.mod_rev)],
                vec![
                    Op::Put(inst_key.clone(), json(&value), 0),
                    Op::Delete(alive_key.clone()),
                ],
            ))
        })
    }

    fn health(&self) -> Result<(), String> {
        if self.shared.healthy.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(lock(&self.shared.why).clone())
        }
    }

    fn render_metrics(&self, out: &mut String) {
        self.shared.metrics.render(out);
    }

    fn describe(&self) -> String {
        format!(
            "etcd://{} (prefix {:?})",
            self.shared.client.members().join(","),
            self.shared.prefix
        )
    }

    fn spawn(&self, view: &Arc<View>) -> io::Result<super::Threads> {
        Etcd::spawn(self, view).map(super::Threads::Etcd)
    }
}

/// The watch thread: applies every change under the prefix to the view.
/// A lost stream is opened again on the next member from the last revision
/// applied; a compacted one (or a canceled one) reads the prefix again.
fn watch(s: &Shared, weak: &Weak<View>) {
    let members = s.client.members().len().max(1);
    let mut member = s.client.current();
    let mut range_again = false;
    let mut backoff = Duration::from_millis(50);
    let mut lost = false;
    let end = client::prefix_end(s.prefix.as_bytes());
    while !s.stopped() {
        let Some(shown) = weak.upgrade() else { return };
        if range_again {
            let result = s.call(MOp::Range, |c| {
                c.range(s.prefix.as_bytes(), &end, CALL_TIMEOUT)
            });
            match result {
                Ok((kvs, revision)) => {
                    let mut view = shown.lock();
                    let mut mirror = lock(&s.mirror);
                    *mirror =
                        Mirror::from_range(&s.prefix, &kvs, revision, &mut view, clock::now());
                    drop(mirror);
                    shown.publish(view, true);
                    s.set_applied(revision);
                    range_again = false;
                }
                Err(_) => {
                    if !s.rest(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let from = lock(&s.mirror).revision + 1;
        let address = &s.client.members()[member % members];
        let started = Instant::now();
        let opened = Watch::open(address, s.prefix.as_bytes(), &end, from, CALL_TIMEOUT);
        let outcome = if opened.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Unreachable
        };
        s.metrics.record(MOp::Watch, outcome, started.elapsed());
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                if !lost {
                    s.log.line(format_args!(
                        "store: cannot watch etcd at {address} ({e}); trying the next member"
                    ));
                }
                lost = true;
                member += 1;
                drop(shown);
                if !s.rest(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if lost {
            s.log.line(format_args!(
                "store: watch restarted on etcd at {address} from revision {from}"
            ));
        }
        s.restart_watch.store(false, Ordering::SeqCst);
        backoff = Duration::from_millis(50);
        drop(shown);
        let quit = || s.stopped() || s.restart_watch.load(Ordering::SeqCst);
        loop {
            let line = match stream.next(&quit) {
                Ok(None) => {
                    if s.stopped() {
                        return;
                    }
                    lost = true;
                    s.log.line(format_args!(
                        "store: restarting the watch on etcd at {address} (no news while etcd was unreachable)"
                    ));
                    member += 1;
                    break;
                }
                Ok(Some(line)) => line,
                Err(e) => {
                    lost = true;
                    s.log.line(format_args!(
                        "store: watch stream from etcd at {address} lost ({e}); reconnecting"
                    ));
                    member += 1;
                    break;
                }
            };
            match client::watch_line(&line) {
                None | Some(WatchLine::Created) => {}
                Some(WatchLine::Progress(revision)) => {
                    let mut mirror = lock(&s.mirror);
                    mirror.revision = mirror.revision.max(revision);
                    drop(mirror);
                    s.set_applied(revision);
                }
                Some(WatchLine::Events(events, _)) => {
                    let Some(shown) = weak.upgrade() else { return };
                    let now = clock::now();
                    let mut view = shown.lock();
                    let mut mirror = lock(&s.mirror);
                    mirror.apply(&events, &mut view, now);
                    mirror.sync(&mut view);
                    let revision = mirror.revision;
                    drop(mirror);
                    shown.publish(view, true);
                    s.set_applied(revision);
                }
                Some(WatchLine::Canceled(compacted, reason)) => {
                    lost = true;
                    range_again = true;
                    s.log.line(format_args!(
                        "store: the watch was canceled by etcd ({}); reading the registry again",
                        match compacted {
                            Some(at) => format!("history compacted at revision {at}"),
                            None => reason,
                        }
                    ));
                    break;
                }
            }
        }
    }
}

/// The committer thread: sends the changes waiting, several in one
/// transaction (etcd's cost, the gateway's and Raft's, is per call, not per
/// change). Two committers, each with half the batch in flight, measured
/// within this machine's noise of one (319 to 909 registrations a second
/// against 538), so one it is: fewer, fuller transactions when etcd's CPU
/// is the limit. If a transaction's compares fail, its changes are sent
/// again one by one, so that each gets its own outcome.
fn commit(s: &Shared, _view: &Weak<View>) {
    loop {
        let mut jobs = lock(&s.jobs);
        while jobs.is_empty() {
            if s.stopped() {
                return;
            }
            jobs = s
                .queued
                .wait_timeout(jobs, Duration::from_millis(200))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let batch = take_batch(&mut jobs, MAX_TXN_OPS);
        drop(jobs);
        if let [job] = batch.as_slice() {
            job.finish(s.txn(&job.compares, &job.ops));
            continue;
        }
        let compares: Vec<Compare> = batch.iter().flat_map(|j| j.compares.clone()).collect();
        let ops: Vec<Op> = batch.iter().flat_map(|j| j.ops.clone()).collect();
        match s.txn(&compares, &ops) {
            Ok(done) if !done.succeeded => {
                for job in &batch {
                    job.finish(s.txn(&job.compares, &job.ops));
                }
            }
            result => {
                for job in &batch {
                    job.finish(result.clone());
                }
            }
        }
    }
}

/// The keeper thread: sends the queued keep-alives, batched, and probes
/// etcd's quorum when there are none, so that health recovers by itself.
fn keep(s: &Shared, _view: &Weak<View>) {
    let mut last_contact = Instant::now();
    while s.rest(KEEP_EVERY) {
        let unused = std::mem::take(&mut *lock(&s.unused));
        for lease in unused {
            if s.call(MOp::Revoke, |c| c.revoke(lease, CALL_TIMEOUT))
                .is_err()
            {
                break;
            }
        }
        let due: Vec<i64> = lock(&s.leases).drain().collect();
        if !due.is_empty() {
            for (i, batch) in due.chunks(KEEP_BATCH).enumerate() {
                if s.call(MOp::KeepAlive, |c| c.keep_alive(batch, CALL_TIMEOUT))
                    .is_err()
                {
                    // Sent again next time (heartbeats meanwhile answer 503).
                    lock(&s.leases).extend(due[i * KEEP_BATCH..].iter().copied());
                    break;
                }
                last_contact = Instant::now();
            }
        } else if last_contact.elapsed() >= PROBE_EVERY {
            let key = s.key(Key::Periods);
            // A linearizable read needs a quorum, as a change does.
            if s.call(MOp::Range, |c| c.range(&key, &[], CALL_TIMEOUT))
                .is_ok()
            {
                last_contact = Instant::now();
            }
        }
    }
}

/// The evictor thread: marks `down` the `up` instances whose lease expired,
/// removes what has been silent for `--evict-after`, in transactions of at
/// most [`MAX_TXN_OPS`] operations with a compare each; a batch that fails
/// is done again one action at a time (another server may have done some).
fn evict(s: &Shared, _view: &Weak<View>) {
    while s.rest(EVICT_EVERY) {
        if !s.healthy.load(Ordering::SeqCst) {
            continue;
        }
        let now_wall = clock::now().wall;
        let actions = lock(&s.mirror).due(s.periods, now_wall, EVICT_LIMIT);
        for batch in mirror::batches(&actions, &s.prefix, now_wall, MAX_TXN_OPS) {
            if s.stopped() {
                return;
            }
            let chosen: Vec<&mirror::Action> = batch.iter().map(|&i| &actions[i]).collect();
            let (compares, ops) = mirror::txn_of(&chosen, &s.prefix, now_wall);
            match s.call(MOp::Txn, |c| c.txn(&compares, &ops, CALL_TIMEOUT)) {
                Ok(done) if done.succeeded => {}
                Ok(_) if chosen.len() > 1 => {
                    for action in chosen {
                        let (compares, ops) = mirror::txn_of(&[action], &s.prefix, now_wall);
                        if s.call(MOp::Txn, |c| c.txn(&compares, &ops, CALL_TIMEOUT))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(compares: &[&str], ops: &[&str]) -> Arc<Job> {
        Arc::new(Job {
            compares: compares
                .iter()
                .map(|k| Compare::ModRevision(k.as_bytes().to_vec(), 1))
                .collect(),
            ops: ops
                .iter()
                .map(|k| Op::Delete(k.as_bytes().to_vec()))
                .collect(),
            result: Mutex::new(None),
            done: Condvar::new(),
        })
    }

    fn names(batch: &[Arc<Job>]) -> Vec<String> {
        batch
            .iter()
            .map(|j| String::from_utf8_lossy(j.changed().next().unwrap_or(b"-")).into_owned())
            .collect()
    }

    /// Changes of different keys share a transaction; a change of a key
    /// another one compares or changes waits for the next, as does what
    /// would pass etcd's 128 operations.
    #[test]
    fn batches_share_no_changed_key_and_stay_within_the_limit() {
        let mut queue: VecDeque<Arc<Job>> = [
            job(&["app", "a"], &["a"]),
            job(&["app", "b"], &["b"]),
            job(&["a"], &["a"]),
            job(&["c"], &["app"]),
            job(&["d"], &["d"]),
        ]
        .into_iter()
        .collect();
        assert_eq!(names(&take_batch(&mut queue, 128)), ["a", "b", "d"]);
        assert_eq!(names(&take_batch(&mut queue, 128)), ["a", "app"]);
        assert!(queue.is_empty());
        let mut queue: VecDeque<Arc<Job>> = (0..100)
            .map(|i| {
                let k = format!("k{i}");
                job(&[&k], &[&k, &format!("x{i}")])
            })
            .collect();
        let first = take_batch(&mut queue, 128);
        assert_eq!((first.len(), queue.len()), (64, 36));
        assert_eq!(names(&first)[0], "k0");
        assert_eq!(take_batch(&mut queue, 128).len(), 36);
        // One job larger than the limit still goes (alone): etcd says why.
        let mut queue: VecDeque<Arc<Job>> = [job(&[], &["a"; 200])].into_iter().collect();
        assert_eq!(take_batch(&mut queue, 128).len(), 1);
    }
}
