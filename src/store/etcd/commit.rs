//! The committer: changes handed over by the workers, sent several to a
//! transaction.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::client::{self, CallError, Compare, Op};
use super::metrics::{Op as MOp, Outcome};
use super::{lock, Shared, CALL_TIMEOUT, MAX_TXN_OPS};
use crate::view::View;

impl Shared {
    /// Hands a transaction to the committer and waits for its outcome
    /// until `deadline` (`None`: not known by then; it may still commit,
    /// which a retry's compare then finds).
    pub(super) fn commit(
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
    pub(super) fn txn(
        &self,
        compares: &[Compare],
        ops: &[Op],
    ) -> Result<client::TxnResult, CallError> {
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
}

/// A change waiting for the committer.
#[derive(Debug)]
pub(super) struct Job {
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

/// The committer thread: sends the changes waiting, several in one
/// transaction (etcd's cost, the gateway's and Raft's, is per call, not per
/// change). Two committers, each with half the batch in flight, measured
/// within this machine's noise of one (319 to 909 registrations a second
/// against 538), so one it is: fewer, fuller transactions when etcd's CPU
/// is the limit. If a transaction's compares fail, its changes are sent
/// again one by one, so that each gets its own outcome.
pub(super) fn run(s: &Shared, _view: &Weak<View>) {
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
