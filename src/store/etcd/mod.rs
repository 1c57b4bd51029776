//! The etcd store (`--store etcd://HOST:PORT[,...]`): the registry kept in
//! an etcd v3 cluster under a key prefix, so that any number of servers
//! serve one registry.
//!
//! Each server keeps a local view (the `Registry` of the `View`, in mirror
//! mode) fed by one watch of the prefix; reads and watches cost etcd
//! nothing. A change is a transaction with compares (safe to retry),
//! answered once committed and applied to this server's view, and waits
//! for that without a worker thread. Liveness is counted in the servers'
//! memory: an `up` instance has a claim naming the server that decides when
//! it has been silent for `--down-after`; a plain heartbeat writes nothing
//! and sends nothing to etcd. Each server's own key is on a lease, so that
//! the others learn when it is gone and take its claims over. See `keys.rs`
//! for the keys, `liveness.rs` for the rules and ARCHITECTURE.md for the
//! reasons. The rooms: `write.rs` (the changes), `commit.rs` (the waiting
//! changes and the committer threads), `keep.rs` (this server's key and
//! lease, the quorum probe), `evict.rs` (the thread applying `liveness.rs`),
//! `watch.rs` (the watch thread), `client.rs` (etcd's gateway), `keys.rs`,
//! `mirror.rs` and `liveness.rs` (pure: the keys, the view, the rules).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub mod client;
mod commit;
mod evict;
mod keep;
pub mod keys;
pub mod liveness;
mod metrics;
pub mod mirror;
#[cfg(test)]
mod property;
mod watch;
mod write;

use self::client::{CallError, Client, Compare, Op};
use self::commit::{Pipeline, Woken};
use self::keys::{json, Key, ServerValue, StoredPeriods};
use self::liveness::Timing;
use self::metrics::{Op as MOp, Outcome, StoreMetrics};
use self::mirror::Mirror;
use super::{Error, Progress, Registration, Store};
use crate::clock::{self, Now};
use crate::log::Log;
use crate::registry::{Periods, Registry};
use crate::view::View;

/// One call to etcd by a background thread.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting at start, checking the periods and reading the registry.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long no call to etcd must succeed before the store counts as
/// unreachable (503s, `/healthz` 503).
const UNHEALTHY_AFTER: u64 = 3_000;
/// etcd's default `--max-txn-ops`.
pub(super) const MAX_TXN_OPS: usize = 128;
/// Committer threads: one call's round trip does not idle etcd.
const COMMITTERS: usize = 2;
/// How long a read about to answer 404 waits for the view to catch up.
const READ_CATCH_UP: Duration = Duration::from_secs(3);

/// What `--store etcd://...` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `HOST:PORT` of each member.
    pub members: Vec<String>,
    /// The key prefix.
    pub prefix: String,
    /// The server's periods (checked against the registry's).
    pub periods: Periods,
    /// The server's worker threads: at most half wait for the view to catch
    /// up before a read answers 404.
    pub threads: usize,
}

/// The store: a handle on its shared state.
#[derive(Debug)]
pub struct Etcd {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    client: Client,
    prefix: String,
    /// This server's id, under `servers/` (drawn at start).
    me: String,
    /// This server's lease (its key is on it), and its TTL in seconds.
    lease: Mutex<i64>,
    server_ttl: i64,
    /// How often the lease is kept alive.
    keep_every: Duration,
    /// The liveness rules' times.
    timing: Timing,
    /// Set when this server's key was found gone: written again at once.
    announce: AtomicBool,
    /// The TTL in seconds of an instance's beat: `--down-after`, rounded up.
    beat_ttl: i64,
    /// The beats to keep alive, and those to put (see `keep.rs`).
    beats: Mutex<keep::Beats>,
    mirror: Mutex<Mirror>,
    /// How far the view has applied etcd's revisions, and its waiters.
    applied: Mutex<Applied>,
    applied_changed: Condvar,
    /// When (monotonic ms) the view last heard from etcd, and which member
    /// its watch is on (an index into the members).
    contact: AtomicU64,
    watching: AtomicUsize,
    /// The reads of etcd's current revision before a 404 (one at a time).
    probes: Mutex<Probes>,
    probed: Condvar,
    /// Workers waiting for the view to catch up before a 404, and the most.
    catchers: AtomicUsize,
    max_catchers: usize,
    healthy: AtomicBool,
    /// When (monotonic ms) a call to etcd last succeeded.
    last_ok: AtomicU64,
    /// Why etcd is unreachable, while it is.
    why: Mutex<String>,
    stop: AtomicBool,
    stop_lock: Mutex<()>,
    stop_signal: Condvar,
    restart_watch: AtomicBool,
    /// The changes waiting on etcd, and the committers' wake-up.
    pipeline: Mutex<Pipeline>,
    queued: Condvar,
    woken: Woken,
    /// Numbers drawn for changes (see `keys::InstValue::change`).
    seed: u64,
    drawn: AtomicU64,
    metrics: StoreMetrics,
    log: Log,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How far the view has applied etcd's revisions.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Applied {
    /// The revision of the last events applied (or of the last range).
    pub(super) events: i64,
    /// The highest revision a progress answer of the watch vouched for
    /// (everything up to it has been sent).
    pub(super) progress: i64,
}

/// The reads of etcd's current revision that 404s wait on: one at a time,
/// and each serves every caller that arrived before it started.
#[derive(Debug, Default)]
struct Probes {
    /// How many have started.
    started: u64,
    running: bool,
    /// The last one's number and result.
    last: Option<(u64, Option<i64>)>,
}

/// One of the bounded places of a worker waiting for the view.
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
        // This server's key, on its lease: the others learn when it is gone.
        let seed = RandomState::new().build_hasher().finish();
        let me = format!("{:016x}", seed ^ u64::from(std::process::id()));
        let wanted_ttl = i64::try_from(settings.periods.down_after.div_ceil(3_000))
            .unwrap_or(i64::MAX)
            .max(1);
        let (lease, server_ttl) = client
            .grant_ttl(wanted_ttl, START_TIMEOUT)
            .map_err(unreachable)?;
        let server_ttl = server_ttl.max(1);
        client
            .txn(
                &[],
                &[Op::Put(
                    Key::Server(me.clone()).bytes(&prefix),
                    json(&ServerValue {
                        since: clock::now().wall,
                    }),
                    lease,
                )],
                START_TIMEOUT,
            )
            .map_err(unreachable)?;
        let end = client::prefix_end(prefix.as_bytes());
        let (kvs, revision) = client
            .range(prefix.as_bytes(), &end, START_TIMEOUT)
            .map_err(unreachable)?;
        let mut view = Registry::mirror();
        let now = clock::now();
        let mirror = Mirror::from_range(&prefix, &kvs, revision, &mut view, now, None);
        // The view starts as it is: no event of its making is logged.
        let (mut apps, mut events) = (Vec::new(), Vec::new());
        view.drain_changes(&mut apps, &mut events);
        let keep_every =
            Duration::from_millis(u64::try_from(server_ttl * 250).unwrap_or(250).min(1_000));
        let timing = Timing::new(
            settings.periods,
            u64::try_from(server_ttl * 1000).unwrap_or(u64::MAX),
            u64::try_from(keep_every.as_millis()).unwrap_or(1_000),
        );
        let shared = Arc::new(Shared {
            client,
            prefix,
            me,
            lease: Mutex::new(lease),
            server_ttl,
            keep_every,
            timing,
            announce: AtomicBool::new(false),
            beat_ttl: i64::try_from(settings.periods.down_after.div_ceil(1_000))
                .unwrap_or(i64::MAX)
                .max(1),
            beats: Mutex::new(keep::Beats::default()),
            mirror: Mutex::new(mirror),
            applied: Mutex::new(Applied {
                events: revision,
                progress: revision,
            }),
            applied_changed: Condvar::new(),
            contact: AtomicU64::new(clock::now().mono),
            watching: AtomicUsize::new(0),
            probes: Mutex::new(Probes::default()),
            probed: Condvar::new(),
            catchers: AtomicUsize::new(0),
            max_catchers: (settings.threads / 2).max(1),
            healthy: AtomicBool::new(true),
            last_ok: AtomicU64::new(clock::now().mono),
            why: Mutex::new(String::new()),
            stop: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_signal: Condvar::new(),
            restart_watch: AtomicBool::new(false),
            pipeline: Mutex::new(Pipeline::default()),
            queued: Condvar::new(),
            woken: Woken::default(),
            seed,
            drawn: AtomicU64::new(0),
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
        let mut bodies: Vec<(&str, Body)> = vec![
            ("registro-watch", watch::run),
            ("registro-keep", keep::run),
            ("registro-evict", evict::run),
        ];
        bodies.extend((0..COMMITTERS).map(|_| ("registro-commit", commit::run as Body)));
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
        drop(lock(&self.shared.pipeline));
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

    /// Waits until the view has applied `revision` (its events, or a
    /// progress answer vouching for it), until `deadline`.
    fn wait_applied(&self, revision: i64, deadline: Instant) -> bool {
        let mut applied = lock(&self.applied);
        while applied.events.max(applied.progress) < revision {
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

    /// The view has applied the events (or the range) up to `revision`:
    /// the changes waiting for it are answered or decided again.
    fn set_applied(&self, revision: i64, view: &Weak<View>) {
        self.advance(view, |a| &mut a.events, revision);
    }

    /// The watch's member has sent everything up to `revision`.
    fn set_progress(&self, revision: i64, view: &Weak<View>) {
        self.advance(view, |a| &mut a.progress, revision);
    }

    /// Moves one of the view's revisions forward (never back), and hands
    /// the changes waiting on it what follows.
    fn advance(&self, view: &Weak<View>, which: fn(&mut Applied) -> &mut i64, revision: i64) {
        let applied = {
            let mut applied = lock(&self.applied);
            let field = which(&mut applied);
            if revision <= *field {
                return;
            }
            *field = revision;
            self.applied_changed.notify_all();
            *applied
        };
        self.applied_to(applied, view);
    }

    /// etcd's current revision (a linearizable read, which needs a quorum),
    /// by `deadline`. Callers share the reads: one runs at a time, and it
    /// serves every caller that arrived before it started.
    fn current_revision(&self, deadline: Instant) -> Option<i64> {
        let mut probes = lock(&self.probes);
        let arrived = probes.started;
        loop {
            if let Some((number, result)) = probes.last {
                if number > arrived {
                    return result;
                }
            }
            if !probes.running {
                probes.running = true;
                probes.started += 1;
                let number = probes.started;
                drop(probes);
                let key = self.key(Key::Periods);
                let left = deadline.saturating_duration_since(Instant::now());
                let result = self
                    .call(MOp::Range, |c| c.range(&key, &[], left))
                    .ok()
                    .map(|(_, revision)| revision);
                let mut probes = lock(&self.probes);
                probes.running = false;
                probes.last = Some((number, result));
                self.probed.notify_all();
                return result;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stopped() {
                return None;
            }
            probes = self
                .probed
                .wait_timeout(probes, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits, by `deadline`, until the view has applied every change etcd
    /// had committed when this was called, so that a change just made
    /// through another server is seen. False when that could not be known
    /// (etcd unreachable, no answer in time).
    fn caught_up(&self, deadline: Instant) -> bool {
        self.current_revision(deadline)
            .is_some_and(|revision| self.wait_applied(revision, deadline))
    }

    /// Whether the view counts as behind at `now`: it has not heard from
    /// etcd for [`watch::STALL_AFTER`].
    fn behind(&self, now: u64) -> bool {
        now.saturating_sub(self.contact.load(Ordering::SeqCst)) >= watch::STALL_AFTER
    }

    /// A number for a change (see `keys::InstValue::change`): distinct
    /// for every change of every server, never 0.
    fn nonce(&self) -> u64 {
        let n = self.drawn.fetch_add(1, Ordering::Relaxed);
        // splitmix64 of the seed and a counter.
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).max(1)
    }

    fn key(&self, key: Key) -> Vec<u8> {
        key.bytes(&self.prefix)
    }
}

impl Store for Etcd {
    fn create_app(&self, _view: &View, name: &str, now: Now) -> Result<Progress, Error> {
        self.shared.create_app(name, now)
    }

    fn register(&self, _view: &View, new: &Registration<'_>, now: Now) -> Result<Progress, Error> {
        self.shared.register(new, now)
    }

    fn renew(&self, view: &View, app: &str, id: &str, now: Now) -> Result<Progress, Error> {
        self.shared.renew(view, app, id, now)
    }

    fn take_out_of_service(
        &self,
        _view: &View,
        app: &str,
        id: &str,
        now: Now,
    ) -> Result<Progress, Error> {
        self.shared.take_out_of_service(app, id, now)
    }

    fn finish(&self, ticket: u64) -> Option<Result<(), Error>> {
        self.shared.take_answer(ticket)
    }

    fn health(&self) -> Result<(), &'static str> {
        let s = &self.shared;
        if !s.healthy.load(Ordering::SeqCst) {
            Err("store unreachable")
        } else if s.behind(clock::now().mono) {
            Err("view behind")
        } else {
            Ok(())
        }
    }

    fn last_contact(&self) -> Option<u64> {
        let contact = self.shared.contact.load(Ordering::SeqCst);
        Some(clock::now().mono.saturating_sub(contact))
    }

    fn catch_up(&self) -> bool {
        let s = &self.shared;
        if !s.healthy.load(Ordering::SeqCst) {
            // Reads answer the last view while etcd is unreachable.
            return false;
        }
        let Some(_permit) = Permit::take(&s.catchers, s.max_catchers) else {
            return false;
        };
        s.caught_up(Instant::now() + READ_CATCH_UP)
    }

    fn render_metrics(&self, out: &mut String) {
        let s = &self.shared;
        s.metrics.render(out);
        let silent = clock::now()
            .mono
            .saturating_sub(s.contact.load(Ordering::SeqCst));
        metrics::render_view(
            out,
            silent,
            s.client.members(),
            s.watching.load(Ordering::SeqCst),
        );
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
