//! The changes: each decided from the mirror, committed with compares
//! through the committer, then awaited in the view; a failed compare means
//! the mirror was behind, so it catches up and the change is decided again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::client::{CallError, Compare, Op};
use super::metrics::Op as MOp;
use super::mirror::{AppValue, InstValue, Key, Mirror, Stored};
use super::{lock, Shared};
use crate::clock::Now;
use crate::registry::{self, Status};
use crate::store::{Error, Registration};
use crate::view::View;

/// How long a change may wait on etcd, in all (a worker is held that long
/// at most).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Unused leases remembered for revoking (the rest expire by themselves).
const MAX_UNUSED: usize = 10_000;
/// Attempts of a change whose compare failed (a concurrent change).
const ATTEMPTS: usize = 4;

/// A plan for a change, decided from the mirror.
enum Plan {
    /// Nothing to write (another server did it).
    Done,
    /// A transaction.
    Txn(Vec<Compare>, Vec<Op>),
}

impl Shared {
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
                    let seen = if done.succeeded {
                        self.wait_events(done.revision, deadline)
                    } else {
                        self.wait_applied(done.revision, deadline)
                    };
                    if !seen {
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
        match self.current_revision(deadline) {
            Some(revision) => {
                self.wait_applied(revision, deadline);
                Ok(())
            }
            None => Err(self.unavailable()),
        }
    }

    pub(super) fn create_app(&self, name: &str, now: Now) -> Result<(), Error> {
        let s = self;
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

    pub(super) fn register(&self, new: &Registration<'_>, now: Now) -> Result<(), Error> {
        let s = self;
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

    pub(super) fn renew(&self, view: &View, app: &str, id: &str, now: Now) -> Result<(), Error> {
        let s = self;
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

    pub(super) fn take_out_of_service(&self, app: &str, id: &str, now: Now) -> Result<(), Error> {
        let s = self;
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
}

/// Whether a refusal says something is absent (the view may be behind).
fn missing(e: registry::Error) -> bool {
    matches!(
        e,
        registry::Error::NoSuchApp | registry::Error::NoSuchInstance
    )
}

/// One of the bounded places of a change waiting on etcd.
pub(super) struct Permit<'a>(&'a AtomicUsize);

impl<'a> Permit<'a> {
    pub(super) fn take(count: &'a AtomicUsize, max: usize) -> Option<Permit<'a>> {
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
