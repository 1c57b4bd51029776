//! The changes: how each is decided from the mirror (into a transaction
//! with compares, an answer, or a wait for the view to catch up), and the
//! store's entry points that decide them once in the worker (a plain
//! heartbeat, a refusal: answered at once) or hand them to the committers.
//!
//! Every change writes a number drawn for it into the values it writes,
//! so that one decided again after etcd's answer was lost finds it in the
//! view and answers that it is done; and a registration, a first heartbeat
//! or an app's creation is one operation (a new instance's registration
//! deletes no claim: a claim exists only while its instance does).

use std::sync::atomic::Ordering;

use super::client::{Compare, Op};
use super::commit::{Decide, Decision};
use super::keys::{json, AppValue, Claim, InstValue, Key, Stored};
use super::mirror::Mirror;
use super::{lock, Shared};
use crate::clock::Now;
use crate::registry::{self, Metadata, Status};
use crate::store::{Answer, Error, Progress, Registration};
use crate::view::View;
use std::sync::Arc;

/// A registration, owned (it outlives the request's worker).
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub app: String,
    pub id: String,
    pub ip: String,
    pub port: u16,
    pub metadata: Option<Arc<Metadata>>,
}

/// The creation of app `name` (key `key`).
pub fn create_app(key: Vec<u8>, name: String, now: Now, change: u64) -> Decide {
    Box::new(move |mirror: &mut Mirror, _| {
        match mirror.apps.get(name.as_str()).filter(|a| a.create_rev > 0) {
            Some(app) if app.change == change => Decision::Done(Ok(())),
            Some(_) => Decision::Done(Err(registry::Error::AppExists.into())),
            None => Decision::Txn(
                vec![Compare::CreateRevision(key.clone(), 0)],
                vec![Op::Put(
                    key.clone(),
                    json(&AppValue {
                        since: now.wall,
                        change,
                    }),
                    0,
                )],
            ),
        }
    })
}

/// A registration (API.md Part 2's rules).
pub fn register(prefix: String, new: NewInstance, now: Now, change: u64) -> Decide {
    let app_key = Key::App(new.app.clone()).bytes(&prefix);
    let inst_key = Key::Inst(new.app.clone(), new.id.clone()).bytes(&prefix);
    let alive_key = Key::Alive(new.app.clone(), new.id.clone()).bytes(&prefix);
    Box::new(move |mirror: &mut Mirror, _| {
        let Some(app) = mirror
            .apps
            .get(new.app.as_str())
            .filter(|a| a.create_rev > 0)
        else {
            return Decision::Missing(registry::Error::NoSuchApp);
        };
        let inst = app.instances.get(new.id.as_str());
        if inst.is_some_and(|i| i.value.change == change) {
            return Decision::Done(Ok(()));
        }
        if let Some(inst) = inst {
            let same = inst.value.ip == new.ip && inst.value.port == new.port;
            if matches!(inst.status(), Status::Starting | Status::Up) && !same {
                return Decision::Done(Err(registry::Error::InstanceExists.into()));
            }
        }
        let mut value = InstValue {
            ip: new.ip.clone(),
            port: new.port,
            status: Stored::Starting,
            metadata: new.metadata.clone(),
            renewed: now.wall,
            vrev: 0,
            change,
        };
        let in_app = Compare::CreateRevision(app_key.clone(), app.create_rev);
        let Some(inst) = inst else {
            return Decision::Txn(
                vec![in_app, Compare::CreateRevision(inst_key.clone(), 0)],
                vec![Op::Put(inst_key.clone(), json(&value), 0)],
            );
        };
        if inst.status() == Status::Starting
            && inst.value.ip == new.ip
            && inst.value.port == new.port
            && inst.value.metadata.as_deref().filter(|m| !m.is_empty()) == new.metadata.as_deref()
        {
            // The same registration again: only its time changes, and no
            // index moves (as in memory).
            value.vrev = inst.visible_rev();
            return Decision::Txn(
                vec![in_app, Compare::ModRevision(inst_key.clone(), inst.mod_rev)],
                vec![Op::Put(inst_key.clone(), json(&value), 0)],
            );
        }
        Decision::Txn(
            vec![in_app, Compare::ModRevision(inst_key.clone(), inst.mod_rev)],
            vec![
                Op::Put(inst_key.clone(), json(&value), 0),
                Op::Delete(alive_key.clone()),
            ],
        )
    })
}

/// A heartbeat: counted in this server's memory while the instance is
/// `up`; else its first one, which claims it for this server (`me`).
pub fn renew(prefix: String, app: String, id: String, me: String, now: Now, change: u64) -> Decide {
    let inst_key = Key::Inst(app.clone(), id.clone()).bytes(&prefix);
    let alive_key = Key::Alive(app.clone(), id.clone()).bytes(&prefix);
    Box::new(move |mirror: &mut Mirror, _| {
        let (status, create_rev) = match mirror.instance(&app, &id) {
            Ok((_, inst)) => (inst.status(), inst.create_rev),
            Err(e) => return Decision::Missing(e),
        };
        if let Some(inst) = mirror.instance_mut(&app, &id) {
            inst.seen = Some(inst.seen.map_or(now.mono, |s| s.max(now.mono)));
        }
        match status {
            Status::OutOfService => Decision::Done(Err(registry::Error::OutOfService.into())),
            Status::Up => Decision::Done(Ok(())),
            Status::Starting | Status::Down => Decision::Txn(
                vec![
                    Compare::CreateRevision(inst_key.clone(), create_rev),
                    Compare::CreateRevision(alive_key.clone(), 0),
                ],
                vec![Op::Put(
                    alive_key.clone(),
                    json(&Claim {
                        by: me.clone(),
                        at: now.wall,
                        released: false,
                        change,
                    }),
                    0,
                )],
            ),
        }
    })
}

/// Taking an instance out of service.
pub fn take_out_of_service(
    prefix: String,
    app: String,
    id: String,
    now: Now,
    change: u64,
) -> Decide {
    let inst_key = Key::Inst(app.clone(), id.clone()).bytes(&prefix);
    let alive_key = Key::Alive(app.clone(), id.clone()).bytes(&prefix);
    Box::new(move |mirror: &mut Mirror, _| {
        let inst = match mirror.instance(&app, &id) {
            Ok((_, inst)) => inst,
            Err(e) => return Decision::Missing(e),
        };
        if inst.value.change == change {
            return Decision::Done(Ok(()));
        }
        let mut value = inst.value.clone();
        value.status = Stored::OutOfService;
        value.renewed = now.wall;
        value.change = change;
        // Out of service again: only its time changes, no index moves.
        value.vrev = if inst.status() == Status::OutOfService {
            inst.visible_rev()
        } else {
            0
        };
        Decision::Txn(
            vec![Compare::ModRevision(inst_key.clone(), inst.mod_rev)],
            vec![
                Op::Put(inst_key.clone(), json(&value), 0),
                Op::Delete(alive_key.clone()),
            ],
        )
    })
}

impl Shared {
    /// Decides a change once here: an answer at once, or handed to the
    /// committers (a ticket to wait on).
    fn change(&self, mut decide: Decide, now: Now) -> Result<Progress, Error> {
        let first = decide(&mut lock(&self.mirror), now);
        match first {
            Decision::Done(result) => result.map(|()| Progress::Done),
            Decision::Txn(..) | Decision::Missing(_) => self.submit(decide).map(Progress::Waiting),
        }
    }

    pub(super) fn create_app(&self, name: &str, now: Now) -> Result<Progress, Error> {
        let key = self.key(Key::App(name.into()));
        self.change(create_app(key, name.into(), now, self.nonce()), now)
    }

    pub(super) fn register(&self, new: &Registration<'_>, now: Now) -> Result<Progress, Error> {
        let new = NewInstance {
            app: new.app.into(),
            id: new.id.into(),
            ip: new.ip.into(),
            port: new.port,
            metadata: new.metadata.clone(),
        };
        self.change(register(self.prefix.clone(), new, now, self.nonce()), now)
    }

    pub(super) fn renew(&self, view: &View, app: &str, id: &str, now: Now) -> Answer {
        if !self.healthy.load(Ordering::SeqCst) {
            // So that its client tries another server.
            return Err(self.unavailable());
        }
        view.log().metrics().heartbeat();
        {
            // A plain heartbeat: counted here, nothing sent to etcd.
            let mut mirror = lock(&self.mirror);
            if let Some(inst) = mirror.instance_mut(app, id) {
                match inst.status() {
                    Status::Up => {
                        inst.seen = Some(inst.seen.map_or(now.mono, |s| s.max(now.mono)));
                        let theirs = inst.claim.as_ref().is_some_and(|c| c.claim.by != self.me);
                        let beat = inst.beat;
                        drop(mirror);
                        // Told to the claim's server through the beat.
                        self.beat(app, id, beat, theirs);
                        view.lock().touch(app, id, now.mono);
                        return Ok(Progress::Done);
                    }
                    Status::OutOfService => return Err(registry::Error::OutOfService.into()),
                    Status::Starting | Status::Down => {}
                }
            }
        }
        let decide = renew(
            self.prefix.clone(),
            app.into(),
            id.into(),
            self.me.clone(),
            now,
            self.nonce(),
        );
        self.submit(decide).map(Progress::Waiting)
    }

    pub(super) fn take_out_of_service(&self, app: &str, id: &str, now: Now) -> Answer {
        let decide = take_out_of_service(
            self.prefix.clone(),
            app.into(),
            id.into(),
            now,
            self.nonce(),
        );
        self.change(decide, now)
    }
}
