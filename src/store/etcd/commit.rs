//! The changes waiting on etcd, and the committer threads that send them.
//!
//! A change waits without a worker thread: the worker that took the
//! request hands it over and parks the request on its ticket (see
//! `Store::finish`); it is woken when the change is answered. A change is
//! decided from the mirror, sent with others in one call (each in a nested
//! transaction of its own: its compares hold or fail alone), and answered
//! once this server's view has applied its revision. A failed compare means
//! the mirror was behind: the change is decided again once the view has
//! reached the revision that failed it. A change that finds its app or
//! instance absent is decided again once the view has reached etcd's
//! current revision (one linearizable read serves every change waiting for
//! it), so an instance registered through another server a moment ago is
//! found. When etcd's answer is lost, the change is decided again after
//! such a read: it finds the number it wrote in the view if its write was
//! committed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::client::{CallError, Compare, Op};
use super::keys::Key;
use super::metrics::{Op as MOp, Outcome};
use super::mirror::Mirror;
use super::{lock, Applied, Shared, CALL_TIMEOUT, MAX_TXN_OPS};
use crate::clock::{self, Now};
use crate::registry;
use crate::store::Error;
use crate::view::{Topic, View};

/// How long a change may wait to be committed (queued, sent, decided
/// again after concurrent changes) before it answers 503.
pub const COMMIT_WITHIN: Duration = Duration::from_secs(5);
/// How long a committed change waits for this server's view before it is
/// answered anyway (it is committed: a 503 would be false).
pub const VIEW_WITHIN: Duration = Duration::from_secs(10);
/// Decisions made while one batch is filled at most (the mirror's lock is
/// held meanwhile, and heartbeats take it).
const DECIDE_A_BATCH: usize = 4 * MAX_TXN_OPS;
/// Decisions of one change at most (each after a concurrent change).
const DECISIONS: u32 = 8;
/// The raw bytes of the values of one call at most (etcd refuses a request
/// over 1.5 MiB by default; base64 adds a third).
const CALL_BYTES: usize = 900 * 1024;
/// Answers kept for requests that did not come back for them (a client
/// that went away) at most this long.
const KEEP_ANSWERS: Duration = Duration::from_secs(60);
/// A backlog of changes is refused (503) beyond this many seconds of what
/// the committers have been measured to send, and never below
/// [`MIN_BACKLOG`] changes.
const BACKLOG_SECONDS: f64 = 3.0;
const MIN_BACKLOG: usize = 1024;

/// What a change decided from the mirror.
pub enum Decision {
    /// Nothing (more) to write: the answer.
    Done(Result<(), Error>),
    /// A transaction to send.
    Txn(Vec<Compare>, Vec<Op>),
    /// Its app or instance is not in the view: decided again once the view
    /// has caught up with etcd, and answered with this if still absent.
    Missing(registry::Error),
}

/// How a change decides, each time: from the mirror, at `now`.
pub type Decide = Box<dyn FnMut(&mut Mirror, Now) -> Decision + Send>;

/// A change waiting on etcd.
pub struct Change {
    /// Its ticket (0: nobody waits for its answer).
    ticket: u64,
    decide: Decide,
    /// Answered 503 unless committed by then.
    deadline: Instant,
    /// The view has caught up with etcd since it found something absent.
    caught_up: bool,
    decisions: u32,
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Change")
            .field("ticket", &self.ticket)
            .field("decisions", &self.decisions)
            .finish_non_exhaustive()
    }
}

/// What a change waits for once the view has reached a revision.
#[derive(Debug)]
enum Then {
    /// Committed: answered.
    Answer(Instant),
    /// Decided again.
    Decide,
}

/// The changes between the workers, the committers and the watch.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// To decide and send.
    queue: VecDeque<Change>,
    /// Waiting for a linearizable read (then for the view to reach it).
    catching: Vec<Change>,
    /// Waiting for the view to reach a revision, by (revision, arrival).
    waiting: BTreeMap<(i64, u64), (Change, Then)>,
    arrivals: u64,
    /// Answers not yet taken, with when they were given.
    answers: HashMap<u64, (Result<(), Error>, Instant)>,
    next_ticket: u64,
    /// Changes the committers have been measured to send a second, when busy.
    rate: f64,
    /// When [`Shared::expire`] last looked.
    expired: Option<Instant>,
}

impl Pipeline {
    fn backlog(&self) -> usize {
        self.queue.len() + self.catching.len() + self.waiting.len()
    }

    fn limit(&self) -> usize {
        ((self.rate * BACKLOG_SECONDS) as usize).max(MIN_BACKLOG)
    }
}

impl Shared {
    /// Hands a change over: `Ok(ticket)` to wait on, or the 503 to answer
    /// at once (etcd unreachable, or a backlog larger than a few seconds of
    /// what the committers send).
    pub(super) fn submit(&self, decide: Decide) -> Result<u64, Error> {
        if !self.healthy.load(Ordering::SeqCst) {
            return Err(self.unavailable());
        }
        let mut p = lock(&self.pipeline);
        if p.backlog() >= p.limit() {
            return Err(Error::Unavailable(format!(
                "the registry's store (etcd) has {} changes waiting, more than {} s of what it takes; try again",
                p.backlog(),
                BACKLOG_SECONDS
            )));
        }
        p.next_ticket += 1;
        let ticket = p.next_ticket;
        self.queue(p, ticket, decide);
        Ok(ticket)
    }

    /// A change nobody waits for (the evictor's).
    pub(super) fn submit_quietly(&self, decide: Decide) {
        self.queue(lock(&self.pipeline), 0, decide);
    }

    /// Queues a change (ticket 0: nobody waits for it) and wakes a committer.
    fn queue(&self, mut p: std::sync::MutexGuard<'_, Pipeline>, ticket: u64, decide: Decide) {
        p.queue.push_back(Change {
            ticket,
            decide,
            deadline: Instant::now() + COMMIT_WITHIN,
            caught_up: false,
            decisions: 0,
        });
        drop(p);
        self.queued.notify_one();
    }

    /// The answer to the change of `ticket`, once there is one.
    pub(super) fn take_answer(&self, ticket: u64) -> Option<Result<(), Error>> {
        lock(&self.pipeline).answers.remove(&ticket).map(|(r, _)| r)
    }

    /// Answers a change: kept for its request, which is woken.
    fn answer(&self, p: &mut Pipeline, change: Change, result: Result<(), Error>) {
        if change.ticket == 0 {
            return;
        }
        p.answers.insert(change.ticket, (result, Instant::now()));
        self.woken.lock_push(change.ticket);
    }

    /// Wakes the requests whose changes were answered (outside the
    /// pipeline's lock).
    fn wake(&self, view: &Weak<View>) {
        let tickets = self.woken.take();
        if tickets.is_empty() {
            return;
        }
        if let Some(view) = view.upgrade() {
            let topics: Vec<Topic> = tickets.into_iter().map(Topic::Change).collect();
            view.wake(&topics);
        }
    }

    /// Called by the watch as the view moves on: a committed change is
    /// answered once the view has applied its own events (a progress answer
    /// stands in for none: etcd 3.4 may send one ahead of the events,
    /// etcd-io/etcd#15220); one to decide again needs the view to have
    /// reached the revision, by events or progress.
    pub(super) fn applied_to(&self, applied: Applied, view: &Weak<View>) {
        let mut p = lock(&self.pipeline);
        let mut decide = false;
        let reached = applied.events.max(applied.progress);
        let ready: Vec<(i64, u64)> = p
            .waiting
            .iter()
            .take_while(|(key, _)| key.0 <= reached)
            .filter(|(key, (_, then))| match then {
                Then::Answer(_) => key.0 <= applied.events,
                Then::Decide => true,
            })
            .map(|(key, _)| *key)
            .collect();
        for key in ready {
            let Some((change, then)) = p.waiting.remove(&key) else {
                continue;
            };
            match then {
                Then::Answer(_) => self.answer(&mut p, change, Ok(())),
                Then::Decide => {
                    p.queue.push_back(change);
                    decide = true;
                }
            }
        }
        drop(p);
        if decide {
            self.queued.notify_one();
        }
        self.wake(view);
    }

    /// What waits too long: a change not committed by its deadline answers
    /// 503; a committed one the view has not applied within
    /// [`VIEW_WITHIN`] is answered anyway; answers nobody took are dropped.
    fn expire(&self, p: &mut Pipeline, now: Instant) {
        if p.expired
            .is_some_and(|at| now.duration_since(at) < Duration::from_millis(100))
        {
            return;
        }
        p.expired = Some(now);
        let mut i = 0;
        while i < p.queue.len() {
            if p.queue[i].deadline <= now {
                if let Some(change) = p.queue.remove(i) {
                    self.answer(p, change, Err(late()));
                }
            } else {
                i += 1;
            }
        }
        let due: Vec<(i64, u64)> = p
            .waiting
            .iter()
            .filter(|(_, (change, then))| match then {
                Then::Answer(at) => now.duration_since(*at) >= VIEW_WITHIN,
                Then::Decide => change.deadline <= now,
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some((change, then)) = p.waiting.remove(&key) {
                let result = match then {
                    Then::Answer(_) => Ok(()),
                    Then::Decide => Err(late()),
                };
                self.answer(p, change, result);
            }
        }
        p.answers
            .retain(|_, (_, at)| now.duration_since(*at) < KEEP_ANSWERS);
    }

    fn wait_for(&self, p: &mut Pipeline, revision: i64, change: Change, then: Then) {
        p.arrivals += 1;
        let arrival = p.arrivals;
        p.waiting.insert((revision, arrival), (change, then));
    }
}

fn late() -> Error {
    Error::Unavailable(format!(
        "the registry's store (etcd) did not commit the change within {} s; try again",
        COMMIT_WITHIN.as_secs()
    ))
}

/// The change of one batch and what it sends.
struct Sending {
    change: Change,
    compares: Vec<Compare>,
    ops: Vec<Op>,
}

impl Sending {
    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.ops.iter().map(|op| match op {
            Op::Put(k, _, _) | Op::Delete(k) | Op::DeletePrefix(k) => k.as_slice(),
        })
    }

    fn compared(&self) -> impl Iterator<Item = &[u8]> {
        self.compares.iter().map(|c| match c {
            Compare::ModRevision(k, _) | Compare::CreateRevision(k, _) | Compare::Empty(k) => {
                k.as_slice()
            }
        })
    }

    fn prefixes(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::DeletePrefix(_)))
    }

    fn width(&self) -> usize {
        self.compares.len().max(self.ops.len())
    }

    fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v, _) => k.len() + v.len(),
                Op::Delete(k) | Op::DeletePrefix(k) => k.len(),
            })
            .sum()
    }
}

/// A batch being filled: nested transactions whose count plus the widest
/// one stays within etcd's limit, and whose compares (one that two changes
/// share counted once) and operations each stay within it too, so that the
/// batch can also go as one flat transaction; no key changed by one and
/// compared or changed by another (etcd refuses a key changed twice in one
/// call, and a compare must see the state its change was decided on), one
/// that deletes a prefix alone, and the values within [`CALL_BYTES`].
#[derive(Default)]
struct Batch {
    sending: Vec<Sending>,
    changed: HashSet<Vec<u8>>,
    compared: HashSet<Vec<u8>>,
    width: usize,
    bytes: usize,
    /// Every change's compares, each once (etcd checks a flat call's
    /// compares in any order).
    compares: HashSet<Compare>,
    ops: usize,
}

impl Batch {
    /// Whether `s` may join; it does if so.
    fn offer(&mut self, s: Sending) -> Result<(), Sending> {
        let width = self.width.max(s.width());
        // Its compares the batch does not have yet, each counted once.
        let new = s
            .compares
            .iter()
            .enumerate()
            .filter(|&(i, c)| !self.compares.contains(c) && !s.compares[..i].contains(c))
            .count();
        let fits = self.sending.len() + 1 + width <= MAX_TXN_OPS
            && self.compares.len() + new <= MAX_TXN_OPS
            && self.ops + s.ops.len() <= MAX_TXN_OPS
            && self.bytes + s.bytes() <= CALL_BYTES
            && !(s.prefixes() || self.sending.iter().any(Sending::prefixes));
        if self.sending.is_empty() {
            return self.take(s, width);
        }
        let clash = s
            .keys()
            .any(|k| self.changed.contains(k) || self.compared.contains(k))
            || s.compared().any(|k| self.changed.contains(k));
        if !fits || clash {
            return Err(s);
        }
        self.take(s, width)
    }

    fn take(&mut self, s: Sending, width: usize) -> Result<(), Sending> {
        self.changed.extend(s.keys().map(<[u8]>::to_vec));
        self.compared.extend(s.compared().map(<[u8]>::to_vec));
        self.compares.extend(s.compares.iter().cloned());
        self.ops += s.ops.len();
        self.width = width;
        self.bytes += s.bytes();
        self.sending.push(s);
        Ok(())
    }

    /// The batch as one flat transaction: its compares, then every
    /// change's operations.
    fn flat(&self) -> (Vec<Compare>, Vec<Op>) {
        let ops = self.sending.iter().flat_map(|s| s.ops.iter().cloned());
        (self.compares.iter().cloned().collect(), ops.collect())
    }

    fn is_full(&self) -> bool {
        self.sending.len() + 1 + self.width > MAX_TXN_OPS
            || self.compares.len() >= MAX_TXN_OPS
            || self.ops >= MAX_TXN_OPS
            || self.bytes >= CALL_BYTES
    }
}

/// A committer thread: decides the changes waiting, sends them in one call
/// of nested transactions, and hands them to the watch to be answered once
/// the view has their revision. Several run at once, so that one call's
/// round trip does not idle etcd (a change decided while a change of the
/// same key is in flight fails its compare and is decided again).
pub(super) fn run(s: &Shared, view: &Weak<View>) {
    loop {
        let (batch, catching) = {
            let mut p = lock(&s.pipeline);
            loop {
                if s.stopped() {
                    return;
                }
                s.expire(&mut p, Instant::now());
                if !p.queue.is_empty() || !p.catching.is_empty() {
                    break;
                }
                drop(p);
                s.wake(view);
                p = lock(&s.pipeline);
                if p.queue.is_empty() && p.catching.is_empty() && !s.stopped() {
                    p = s
                        .queued
                        .wait_timeout(p, Duration::from_millis(100))
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
            let catching = std::mem::take(&mut p.catching);
            let batch = s.fill(&mut p);
            (batch, catching)
        };
        s.wake(view);
        if !catching.is_empty() {
            s.catch_up(catching);
        }
        if !batch.sending.is_empty() {
            s.send(batch);
        }
        s.wake(view);
        // The watch may have applied these revisions already.
        let applied = *lock(&s.applied);
        s.applied_to(applied, view);
    }
}

impl Shared {
    /// Decides the changes at the head of the queue into a batch.
    fn fill(&self, p: &mut Pipeline) -> Batch {
        let mut batch = Batch::default();
        let mut kept = VecDeque::new();
        let mut mirror = lock(&self.mirror);
        let now = clock::now();
        // The locks are held for a bounded number of decisions.
        let mut decided = 0;
        while decided < DECIDE_A_BATCH {
            let Some(mut change) = p.queue.pop_front() else {
                break;
            };
            decided += 1;
            change.decisions += 1;
            match (change.decide)(&mut mirror, now) {
                Decision::Done(result) => self.answer(p, change, result),
                Decision::Missing(e) if change.caught_up => {
                    self.answer(p, change, Err(e.into()));
                }
                Decision::Missing(_) => p.catching.push(change),
                Decision::Txn(..) if change.decisions > DECISIONS => {
                    self.answer(
                        p,
                        change,
                        Err(Error::Unavailable(
                            "the change kept meeting concurrent changes of the same instance; try again"
                                .into(),
                        )),
                    );
                }
                Decision::Txn(compares, ops) => {
                    let sending = Sending {
                        change,
                        compares,
                        ops,
                    };
                    if let Err(back) = batch.offer(sending) {
                        // Decided again next time, from a newer mirror.
                        let mut change = back.change;
                        change.decisions -= 1;
                        kept.push_back(change);
                        if batch.is_full() {
                            break;
                        }
                    }
                }
            }
        }
        // What was not taken keeps its place at the head, in its order.
        while let Some(change) = kept.pop_back() {
            p.queue.push_front(change);
        }
        batch
    }

    /// One linearizable read: the changes waiting for it are decided again
    /// once the view has reached its revision.
    fn catch_up(&self, changes: Vec<Change>) {
        let key = self.key(Key::Periods);
        let result = self.call(MOp::Range, |c| c.range(&key, &[], CALL_TIMEOUT));
        let mut p = lock(&self.pipeline);
        match result {
            Ok((_, revision)) => {
                for mut change in changes {
                    change.caught_up = true;
                    self.wait_for(&mut p, revision, change, Then::Decide);
                }
            }
            Err(_) => {
                for change in changes {
                    self.answer(&mut p, change, Err(self.unavailable()));
                }
            }
        }
    }

    /// Sends one batch, and hands each change to what follows its outcome.
    ///
    /// A batch goes first as one flat transaction (every change's
    /// compares, then every operation), which costs etcd about two-thirds
    /// of the nested form (measured here: 20,000 against 12,900 keys a
    /// second in calls of 60 changes from 4 clients). Only when a compare
    /// fails (a concurrent change: rare) or etcd refuses it does a batch of
    /// several changes go again nested, where each change's compares hold
    /// or fail alone. Nothing of a failed or refused call was written, so
    /// a change is committed by at most one of the two.
    fn send(&self, batch: Batch) {
        let started = Instant::now();
        let n = batch.sending.len();
        let (compares, ops) = batch.flat();
        let flat = self.timed(|| {
            self.client
                .txn(&compares, &ops, CALL_TIMEOUT)
                .map(|r| (r.revision, vec![r.succeeded; n]))
        });
        let result = match flat {
            Ok((_, ref done)) if n > 1 && !done[0] => self.nested(&batch),
            Err(CallError::Refused(..)) if n > 1 => self.nested(&batch),
            sent => sent,
        };
        let took = started.elapsed();
        match &result {
            Err(CallError::Unreachable(why)) => self.health(Err(why)),
            _ => self.health(Ok(())),
        }
        let mut p = lock(&self.pipeline);
        let sample = n as f64 / took.as_secs_f64().max(0.001);
        p.rate = if p.rate == 0.0 {
            sample
        } else {
            p.rate * 0.9 + sample * 0.1
        };
        match result {
            Ok((revision, done)) => {
                let now = Instant::now();
                for (sending, ok) in batch.sending.into_iter().zip(done) {
                    let then = if ok { Then::Answer(now) } else { Then::Decide };
                    self.wait_for(&mut p, revision, sending.change, then);
                }
            }
            // Its outcome is unknown: decided again after a read, when the
            // view shows whether it was committed.
            Err(CallError::Unreachable(_)) => {
                for sending in batch.sending {
                    let mut change = sending.change;
                    change.caught_up = false;
                    p.catching.push(change);
                }
            }
            Err(CallError::Refused(_, why)) => {
                for sending in batch.sending {
                    self.answer(
                        &mut p,
                        sending.change,
                        Err(Error::Unavailable(format!(
                            "the registry's store (etcd) refused the change: {why}"
                        ))),
                    );
                }
            }
        }
    }
}

impl Shared {
    /// The batch with each change in a nested transaction of its own.
    fn nested(&self, batch: &Batch) -> Result<(i64, Vec<bool>), CallError> {
        let txns: Vec<(&[Compare], &[Op])> = batch
            .sending
            .iter()
            .map(|s| (s.compares.as_slice(), s.ops.as_slice()))
            .collect();
        self.timed(|| self.client.txns(&txns, CALL_TIMEOUT))
    }

    /// One transaction call, its outcome and time recorded.
    fn timed(
        &self,
        call: impl FnOnce() -> Result<(i64, Vec<bool>), CallError>,
    ) -> Result<(i64, Vec<bool>), CallError> {
        let started = Instant::now();
        let result = call();
        let outcome = match &result {
            Ok((_, done)) if done.iter().all(|d| *d) => Outcome::Ok,
            Ok(_) => Outcome::Conflict,
            Err(CallError::Refused(..)) => Outcome::Refused,
            Err(CallError::Unreachable(_)) => Outcome::Unreachable,
        };
        self.metrics.record(MOp::Txn, outcome, started.elapsed());
        result
    }
}

/// Tickets of answered changes, for their requests to be woken.
#[derive(Debug, Default)]
pub struct Woken(std::sync::Mutex<Vec<u64>>);

impl Woken {
    fn lock_push(&self, ticket: u64) {
        lock(&self.0).push(ticket);
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.0))
    }
}

/// Shared by the tests of the batch's rules.
#[cfg(test)]
mod tests {
    use super::*;

    fn sending(compared: &[&str], changed: &[&str]) -> Sending {
        Sending {
            change: Change {
                ticket: 0,
                decide: Box::new(|_, _| Decision::Done(Ok(()))),
                deadline: Instant::now(),
                caught_up: false,
                decisions: 0,
            },
            compares: compared
                .iter()
                .map(|k| Compare::ModRevision(k.as_bytes().to_vec(), 1))
                .collect(),
            ops: changed
                .iter()
                .map(|k| Op::Delete(k.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// Changes of different keys share a call; a change of a key another
    /// one compares or changes waits for the next, as does a prefix's
    /// deletion and what would pass etcd's 128 operations.
    #[test]
    fn a_batch_shares_no_changed_key_and_stays_within_etcds_limit_nested_and_flat() {
        let mut b = Batch::default();
        assert!(b.offer(sending(&["app", "a"], &["a"])).is_ok());
        assert!(b.offer(sending(&["app", "b"], &["b"])).is_ok());
        assert!(b.offer(sending(&["a"], &["a"])).is_err());
        assert!(b.offer(sending(&["c"], &["app"])).is_err());
        assert!(b.offer(sending(&["d"], &["d"])).is_ok());
        let mut wide = sending(&[], &["p"]);
        wide.ops = vec![Op::DeletePrefix(b"p/".to_vec())];
        assert!(b.offer(wide).is_err());
        // Changes of 2 compares each, one of them shared (an app's): the
        // nested form's limit, 126 + the widest (2) = 128, comes before the
        // flat form's (127 compares).
        let mut b = Batch::default();
        for i in 0..130 {
            let k = format!("k{i}");
            let _ = b.offer(sending(&["app", &k], &[&k]));
        }
        assert_eq!(b.sending.len(), 126);
        assert_eq!(b.flat().0.len(), 127);
        assert!(b.is_full());
        // Two compares each of their own: the flat form's 128 compares.
        let mut b = Batch::default();
        for i in 0..130 {
            let k = format!("k{i}");
            let _ = b.offer(sending(&[&k, &format!("x{i}")], &[&k]));
        }
        assert_eq!(b.sending.len(), 64);
        assert!(b.is_full());
        // One change wider than the limit still goes (alone): etcd says why.
        let mut b = Batch::default();
        assert!(b.offer(sending(&[], &["a"; 200])).is_ok());
        assert!(b.offer(sending(&[], &["b"])).is_err());
    }
}
