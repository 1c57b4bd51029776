//! The registry: the pure state machine behind the server.
//!
//! It does no I/O, reads no clock, spawns no threads and knows nothing of JSON
//! or HTTP. Every operation takes `now` (Unix time in milliseconds), so each
//! lifecycle rule is unit-tested with injected times. The glue (`api.rs`,
//! `sweeper.rs`) wraps a [`Registry`] in a `Mutex` and turns the returned
//! [`Event`]s into log lines.
//!
//! # Exact reads
//!
//! The status a caller reads is computed from `now`, not from the last sweep:
//! with `age = now - last_renewal`, an instance with `age > evict_after` is
//! absent everywhere (reads, listings, heartbeats, re-registration), and an
//! `Up` instance with `age > down_after` reads `Down`. The sweep only makes
//! storage agree with what reads already say (and reports it as events).
//!
//! # Layout
//!
//! Apps live in a `HashMap` by name. Each app keeps its instances in a dense
//! `Vec<Slot>` and a `HashMap` from id to slot position (the id's `Arc<str>` is
//! shared by both: one allocation per id); removal is `swap_remove` plus one
//! index fix, so every per-instance operation is O(1). Addresses of up to 22
//! bytes are stored inline in the slot ([`Ip`]), so most instances cost one
//! allocation (the id) besides their slot and index entry.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Unix time in milliseconds; every operation of the registry takes it as `now`.
pub type Millis = u64;

/// The two lifecycle periods of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Periods {
    /// An `Up` instance silent for more than this reads `Down`.
    pub down_after: Millis,
    /// An instance silent for more than this is absent (and removed by the
    /// sweep); so is an app that has had no instances for more than this.
    pub evict_after: Millis,
}

/// The status of an instance, as a reader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Registered, no heartbeat yet. Never decays to `Down`.
    Starting,
    /// Heartbeating.
    Up,
    /// Was `Up`, no heartbeat for more than `down_after`.
    Down,
    /// Deliberately taken out of service; heartbeats are refused.
    OutOfService,
}

/// A copy of one instance, cheap to make (the strings are shared `Arc`s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    /// The instance id, unique within its app.
    pub id: Arc<str>,
    /// The address the instance registered with.
    pub ip: Ip,
    /// The port the instance registered with.
    pub port: u16,
    /// The effective status at the `now` of the read.
    pub status: Status,
    /// When the instance last registered, renewed or was taken out of service.
    pub last_renewal: Millis,
}

/// A copy of one app and its present instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppView {
    /// The app name.
    pub name: Arc<str>,
    /// The instances that are not expired, in the app's stable slot order.
    pub instances: Vec<InstanceView>,
}

/// Why an operation of the registry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `create_app` of a name that is already present.
    AppExists,
    /// The app is absent (never created, or removed after being empty).
    NoSuchApp,
    /// The instance is absent (never registered, or expired).
    NoSuchInstance,
    /// `register` of an id that is live (`Starting` or `Up`) at another address.
    InstanceExists,
    /// `renew` of an instance that is out of service.
    OutOfService,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::AppExists => "application already exists",
            Error::NoSuchApp => "no such application",
            Error::NoSuchInstance => "no such instance",
            Error::InstanceExists => "instance already exists at another address",
            Error::OutOfService => "instance is out of service",
        })
    }
}

impl std::error::Error for Error {}

/// Something that changed in the registry, for the caller to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An app was created (or re-created after it had expired).
    AppCreated {
        /// The app name.
        app: Arc<str>,
    },
    /// The sweep removed an app that had been empty for more than `evict_after`.
    AppRemoved {
        /// The app name.
        app: Arc<str>,
    },
    /// A new instance id was registered.
    InstanceAdded {
        /// The app name.
        app: Arc<str>,
        /// The instance id.
        id: Arc<str>,
        /// The registered address.
        ip: Ip,
        /// The registered port.
        port: u16,
    },
    /// An existing id was registered again (same address, or replacing an
    /// instance that was down, out of service or expired).
    InstanceReplaced {
        /// The app name.
        app: Arc<str>,
        /// The instance id.
        id: Arc<str>,
        /// The address now registered.
        ip: Ip,
        /// The port now registered.
        port: u16,
    },
    /// A heartbeat made an instance `Up` that was `Starting` or `Down`.
    InstanceUp {
        /// The app name.
        app: Arc<str>,
        /// The instance id.
        id: Arc<str>,
    },
    /// The sweep found an `Up` instance silent for more than `down_after`.
    InstanceDown {
        /// The app name.
        app: Arc<str>,
        /// The instance id.
        id: Arc<str>,
    },
    /// An instance was taken out of service.
    InstanceOutOfService {
        /// The app name.
        app: Arc<str>,
        /// The instance id.
        id: Arc<str>,
    },
    /// The sweep removed an instance silent for more than `evict_after`.
    InstanceRemoved {
        /// The app name.
        app: Arc<str>,
        /// The instance id.
        id: Arc<str>,
    },
}

/// Where an incremental sweep is: kept by the caller between calls of
/// [`Registry::sweep_step`]. `SweepCursor::default()` starts a new pass.
#[derive(Debug, Default)]
pub struct SweepCursor {
    /// Names and epochs of the apps present when the pass started.
    apps: Vec<(Arc<str>, u64)>,
    /// Index into `apps` of the app being swept.
    app: usize,
    /// Next slot position to examine in that app.
    slot: usize,
    /// Whether `apps` has been taken for the current pass.
    started: bool,
}

/// What a sweep did; [`Registry::sweep_step`] adds to it, the caller resets it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepStats {
    /// Instance slots examined.
    pub checked: usize,
    /// Expired instances removed.
    pub removed: usize,
    /// `Up` instances whose stored status became `Down`.
    pub marked_down: usize,
    /// Apps removed for being empty too long.
    pub apps_removed: usize,
}

/// An instance's address as registered. Up to 22 bytes (every IPv4 address
/// and most IPv6 ones, as text) are stored inline, so a million instances
/// each at its own address cost no allocation for it; longer names go on the
/// heap.
#[derive(Clone, PartialEq, Eq)]
pub struct Ip(IpRepr);

#[derive(Clone, PartialEq, Eq)]
enum IpRepr {
    Inline { len: u8, bytes: [u8; INLINE_IP] },
    Heap(Arc<str>),
}

const INLINE_IP: usize = 22;

impl Ip {
    /// Stores `ip`, inline when it fits.
    pub fn new(ip: &str) -> Ip {
        match u8::try_from(ip.len()) {
            Ok(len) if ip.len() <= INLINE_IP => {
                let mut bytes = [0; INLINE_IP];
                bytes[..ip.len()].copy_from_slice(ip.as_bytes());
                Ip(IpRepr::Inline { len, bytes })
            }
            _ => Ip(IpRepr::Heap(Arc::from(ip))),
        }
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always whole UTF-8: copied from a `&str` of exactly `len` bytes.
            IpRepr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            IpRepr::Heap(s) => s,
        }
    }
}

impl std::ops::Deref for Ip {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored instance: 56 bytes on 64-bit targets.
#[derive(Debug)]
struct Slot {
    id: Arc<str>,
    ip: Ip,
    last_renewal: Millis,
    port: u16,
    /// Stored status; `Up` may read `Down` (see [`Slot::effective`]).
    status: Status,
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 56);

impl Slot {
    /// The status a reader sees at `now`, or `None` if the instance expired.
    fn effective(&self, now: Millis, periods: Periods) -> Option<Status> {
        let age = now.saturating_sub(self.last_renewal);
        if age > periods.evict_after {
            None
        } else if self.status == Status::Up && age > periods.down_after {
            Some(Status::Down)
        } else {
            Some(self.status)
        }
    }

    fn view(&self, status: Status) -> InstanceView {
        InstanceView {
            id: self.id.clone(),
            ip: self.ip.clone(),
            port: self.port,
            status,
            last_renewal: self.last_renewal,
        }
    }
}

/// One stored app.
#[derive(Debug)]
struct App {
    name: Arc<str>,
    slots: Vec<Slot>,
    /// Id to position in `slots`; the key is the same `Arc` as the slot's id.
    index: HashMap<Arc<str>, usize>,
    /// Since when `slots` is empty; `Some` exactly when it is.
    empty_since: Option<Millis>,
    /// Distinguishes this app from an earlier one of the same name.
    epoch: u64,
}

impl App {
    fn new(name: Arc<str>, now: Millis, epoch: u64) -> App {
        App {
            name,
            slots: Vec::new(),
            index: HashMap::new(),
            empty_since: Some(now),
            epoch,
        }
    }

    /// Whether the app has been empty for more than `evict_after`.
    fn expired(&self, now: Millis, periods: Periods) -> bool {
        self.empty_since
            .is_some_and(|since| now.saturating_sub(since) > periods.evict_after)
    }

    fn view(&self, now: Millis, periods: Periods) -> AppView {
        AppView {
            name: self.name.clone(),
            instances: self
                .slots
                .iter()
                .filter_map(|slot| Some(slot.view(slot.effective(now, periods)?)))
                .collect(),
        }
    }

    /// The app name and the slot of `id` with its effective status, if the
    /// instance is present at `now`.
    fn live_slot_mut(
        &mut self,
        id: &str,
        now: Millis,
        periods: Periods,
    ) -> Result<(&Arc<str>, &mut Slot, Status), Error> {
        let pos = *self.index.get(id).ok_or(Error::NoSuchInstance)?;
        let slot = self.slots.get_mut(pos).ok_or(Error::NoSuchInstance)?;
        let status = slot.effective(now, periods).ok_or(Error::NoSuchInstance)?;
        Ok((&self.name, slot, status))
    }

    /// Removes the slot at `pos`, moving the last slot into its place.
    fn remove(&mut self, pos: usize, now: Millis) -> Slot {
        let slot = self.slots.swap_remove(pos);
        self.index.remove(&*slot.id);
        if let Some(moved) = self.slots.get(pos) {
            if let Some(moved_pos) = self.index.get_mut(&*moved.id) {
                *moved_pos = pos;
            }
        }
        if self.slots.is_empty() {
            self.empty_since = Some(now);
        }
        slot
    }
}

/// The state of the server: apps and their instances.
#[derive(Debug)]
pub struct Registry {
    periods: Periods,
    apps: HashMap<Arc<str>, App>,
    /// Stored instances across all apps (expired ones until swept).
    instances: usize,
    next_epoch: u64,
}

impl Registry {
    /// An empty registry with the given lifecycle periods.
    pub fn new(periods: Periods) -> Registry {
        Registry {
            periods,
            apps: HashMap::new(),
            instances: 0,
            next_epoch: 0,
        }
    }

    /// The lifecycle periods given to [`Registry::new`].
    pub fn periods(&self) -> Periods {
        self.periods
    }

    /// Creates an app with no instances.
    ///
    /// An app that exists answers [`Error::AppExists`], unless it has been empty
    /// for more than `evict_after`: it is then absent and is created afresh.
    pub fn create_app(&mut self, name: &str, now: Millis) -> Result<Event, Error> {
        if let Some(app) = self.apps.get(name) {
            if !app.expired(now, self.periods) {
                return Err(Error::AppExists);
            }
        }
        let name: Arc<str> = Arc::from(name);
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.apps
            .insert(name.clone(), App::new(name.clone(), now, epoch));
        Ok(Event::AppCreated { app: name })
    }

    /// The app `name` and its instances present at `now`.
    pub fn app(&self, name: &str, now: Millis) -> Result<AppView, Error> {
        Ok(self.live_app(name, now)?.view(now, self.periods))
    }

    /// Every app present at `now`, sorted by name.
    pub fn apps(&self, now: Millis) -> Vec<AppView> {
        let mut views: Vec<AppView> = self
            .apps
            .values()
            .filter(|app| !app.expired(now, self.periods))
            .map(|app| app.view(now, self.periods))
            .collect();
        views.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// One instance as it reads at `now`.
    pub fn instance(&self, app: &str, id: &str, now: Millis) -> Result<InstanceView, Error> {
        let app = self.live_app(app, now)?;
        let slot = app
            .index
            .get(id)
            .and_then(|&pos| app.slots.get(pos))
            .ok_or(Error::NoSuchInstance)?;
        let status = slot
            .effective(now, self.periods)
            .ok_or(Error::NoSuchInstance)?;
        Ok(slot.view(status))
    }

    /// Registers instance `id` of `app` at `ip:port`, as `Starting`.
    ///
    /// An id already present is replaced (same address, or an instance that is
    /// `Down`, out of service or expired): [`Event::InstanceReplaced`]. Only an
    /// instance that is `Starting` or `Up` at another address is refused with
    /// [`Error::InstanceExists`].
    pub fn register(
        &mut self,
        app: &str,
        id: &str,
        ip: &str,
        port: u16,
        now: Millis,
    ) -> Result<Event, Error> {
        let periods = self.periods;
        let app = self
            .apps
            .get_mut(app)
            .filter(|app| !app.expired(now, periods))
            .ok_or(Error::NoSuchApp)?;
        let existing = app.index.get(id).and_then(|&pos| app.slots.get_mut(pos));
        if let Some(slot) = existing {
            let same_address = *slot.ip == *ip && slot.port == port;
            let live = matches!(
                slot.effective(now, periods),
                Some(Status::Starting | Status::Up)
            );
            if live && !same_address {
                return Err(Error::InstanceExists);
            }
            if *slot.ip != *ip {
                slot.ip = Ip::new(ip);
            }
            slot.port = port;
            slot.status = Status::Starting;
            slot.last_renewal = now;
            return Ok(Event::InstanceReplaced {
                app: app.name.clone(),
                id: slot.id.clone(),
                ip: slot.ip.clone(),
                port,
            });
        }
        let id: Arc<str> = Arc::from(id);
        let ip = Ip::new(ip);
        app.index.insert(id.clone(), app.slots.len());
        app.slots.push(Slot {
            id: id.clone(),
            ip: ip.clone(),
            last_renewal: now,
            port,
            status: Status::Starting,
        });
        app.empty_since = None;
        self.instances += 1;
        Ok(Event::InstanceAdded {
            app: app.name.clone(),
            id,
            ip,
            port,
        })
    }

    /// A heartbeat: the instance becomes `Up` with `last_renewal = now`.
    ///
    /// Returns [`Event::InstanceUp`] if it was not `Up` before (`Starting` or
    /// `Down`), `None` if it was. An out-of-service instance is left unchanged
    /// and answers [`Error::OutOfService`].
    pub fn renew(&mut self, app: &str, id: &str, now: Millis) -> Result<Option<Event>, Error> {
        let periods = self.periods;
        let app = self.live_app_mut(app, now)?;
        let (name, slot, before) = app.live_slot_mut(id, now, periods)?;
        if before == Status::OutOfService {
            return Err(Error::OutOfService);
        }
        slot.status = Status::Up;
        slot.last_renewal = now;
        Ok((before != Status::Up).then(|| Event::InstanceUp {
            app: name.clone(),
            id: slot.id.clone(),
        }))
    }

    /// Takes an instance out of service, with `last_renewal = now`.
    ///
    /// Returns [`Event::InstanceOutOfService`] if it was not out of service
    /// already, `None` if it was (still `Ok`: the operation is idempotent).
    pub fn take_out_of_service(
        &mut self,
        app: &str,
        id: &str,
        now: Millis,
    ) -> Result<Option<Event>, Error> {
        let periods = self.periods;
        let app = self.live_app_mut(app, now)?;
        let (name, slot, before) = app.live_slot_mut(id, now, periods)?;
        slot.status = Status::OutOfService;
        slot.last_renewal = now;
        Ok(
            (before != Status::OutOfService).then(|| Event::InstanceOutOfService {
                app: name.clone(),
                id: slot.id.clone(),
            }),
        )
    }

    /// Does a bounded part of a sweep pass and says whether the pass is complete.
    ///
    /// Examines at most `budget` units of work (one per instance slot, one per
    /// app finished or skipped; at least one unit even if `budget` is 0), then
    /// returns `false` with its position saved in `cursor`. A pass removes
    /// expired instances ([`Event::InstanceRemoved`]), stores `Down` for `Up`
    /// instances silent for more than `down_after` ([`Event::InstanceDown`],
    /// once per decay), and removes apps empty for more than `evict_after`
    /// ([`Event::AppRemoved`]). It covers the apps present when it started;
    /// an app removed or re-created since is skipped. With no changes between
    /// calls it examines every slot exactly once. Events are appended to
    /// `events` and counts added to `stats`. On returning `true` the cursor is
    /// reset, so the next call starts a new pass.
    pub fn sweep_step(
        &mut self,
        now: Millis,
        cursor: &mut SweepCursor,
        budget: usize,
        stats: &mut SweepStats,
        events: &mut Vec<Event>,
    ) -> bool {
        let periods = self.periods;
        let budget = budget.max(1);
        if !cursor.started {
            cursor.apps = self
                .apps
                .values()
                .map(|app| (app.name.clone(), app.epoch))
                .collect();
            cursor.app = 0;
            cursor.slot = 0;
            cursor.started = true;
        }
        let mut spent = 0;
        while let Some((name, epoch)) = cursor.apps.get(cursor.app) {
            if spent >= budget {
                return false;
            }
            let Some(app) = self.apps.get_mut(name).filter(|app| app.epoch == *epoch) else {
                spent += 1;
                cursor.app += 1;
                cursor.slot = 0;
                continue;
            };
            while spent < budget && cursor.slot < app.slots.len() {
                spent += 1;
                stats.checked += 1;
                let pos = cursor.slot;
                let slot = &mut app.slots[pos];
                let age = now.saturating_sub(slot.last_renewal);
                if age > periods.evict_after {
                    // The last slot moves into `pos`: examine `pos` again.
                    let removed = app.remove(pos, now);
                    self.instances -= 1;
                    stats.removed += 1;
                    events.push(Event::InstanceRemoved {
                        app: app.name.clone(),
                        id: removed.id,
                    });
                } else {
                    if slot.status == Status::Up && age > periods.down_after {
                        slot.status = Status::Down;
                        stats.marked_down += 1;
                        events.push(Event::InstanceDown {
                            app: app.name.clone(),
                            id: slot.id.clone(),
                        });
                    }
                    cursor.slot += 1;
                }
            }
            if spent >= budget || cursor.slot < app.slots.len() {
                return false;
            }
            spent += 1;
            if app.expired(now, periods) {
                if let Some(app) = self.apps.remove(name) {
                    stats.apps_removed += 1;
                    events.push(Event::AppRemoved { app: app.name });
                }
            }
            cursor.app += 1;
            cursor.slot = 0;
        }
        *cursor = SweepCursor::default();
        true
    }

    /// Stored instances across all apps, including expired ones not yet swept.
    pub fn instance_count(&self) -> usize {
        self.instances
    }

    /// Stored apps, including expired ones not yet swept.
    pub fn app_count(&self) -> usize {
        self.apps.len()
    }

    fn live_app(&self, name: &str, now: Millis) -> Result<&App, Error> {
        self.apps
            .get(name)
            .filter(|app| !app.expired(now, self.periods))
            .ok_or(Error::NoSuchApp)
    }

    fn live_app_mut(&mut self, name: &str, now: Millis) -> Result<&mut App, Error> {
        let periods = self.periods;
        self.apps
            .get_mut(name)
            .filter(|app| !app.expired(now, periods))
            .ok_or(Error::NoSuchApp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base instant of every test; scripts give offsets from it.
    const T0: Millis = 1_795_890_765_000;
    /// The default periods of the server: 90 s to down, 10 min to removal.
    const P: Periods = Periods {
        down_after: 90_000,
        evict_after: 600_000,
    };
    /// App `web` with instance `a` at 10.0.0.1:80, both made at offset 0.
    const SETUP: &str = "
        0 create web => app-created:web
        0 register web a 10.0.0.1 80 => added:web/a@10.0.0.1:80
    ";

    fn event(e: &Event) -> String {
        match e {
            Event::AppCreated { app } => format!("app-created:{app}"),
            Event::AppRemoved { app } => format!("app-removed:{app}"),
            Event::InstanceAdded { app, id, ip, port } => format!("added:{app}/{id}@{ip}:{port}"),
            Event::InstanceReplaced { app, id, ip, port } => {
                format!("replaced:{app}/{id}@{ip}:{port}")
            }
            Event::InstanceUp { app, id } => format!("up:{app}/{id}"),
            Event::InstanceDown { app, id } => format!("down:{app}/{id}"),
            Event::InstanceOutOfService { app, id } => format!("out:{app}/{id}"),
            Event::InstanceRemoved { app, id } => format!("removed:{app}/{id}"),
        }
    }

    fn status(s: Status) -> &'static str {
        match s {
            Status::Starting => "starting",
            Status::Up => "up",
            Status::Down => "down",
            Status::OutOfService => "out-of-service",
        }
    }

    fn list(app: &AppView) -> String {
        let instances: Vec<String> = app
            .instances
            .iter()
            .map(|i| format!("{}:{}", i.id, status(i.status)))
            .collect();
        format!("{}[{}]", app.name, instances.join(" "))
    }

    fn show<T>(result: Result<T, Error>, ok: impl FnOnce(T) -> String) -> String {
        match result {
            Ok(value) => ok(value),
            Err(e) => format!("{e:?}"),
        }
    }

    fn maybe(e: Option<Event>) -> String {
        e.as_ref().map_or_else(|| "none".to_owned(), event)
    }

    /// Runs one command of a script against `reg` and describes the outcome.
    fn run(reg: &mut Registry, now: Millis, cmd: &str, args: &[&str]) -> String {
        match (cmd, args) {
            ("create", [app]) => show(reg.create_app(app, now), |e| event(&e)),
            ("register", [app, id, ip, port]) => {
                let port = port.parse().expect("port in script");
                show(reg.register(app, id, ip, port, now), |e| event(&e))
            }
            ("renew", [app, id]) => show(reg.renew(app, id, now), maybe),
            ("out", [app, id]) => show(reg.take_out_of_service(app, id, now), maybe),
            ("get", [app, id]) => show(reg.instance(app, id, now), |i| {
                let at = i.last_renewal - T0;
                format!("{} {}:{} @{at}", status(i.status), i.ip, i.port)
            }),
            ("list", [app]) => show(reg.app(app, now), |a| list(&a)),
            ("apps", []) => {
                let apps: Vec<String> = reg.apps(now).iter().map(list).collect();
                apps.join(" ")
            }
            ("counts", []) => format!(
                "{} apps {} instances",
                reg.app_count(),
                reg.instance_count()
            ),
            ("sweep", []) => {
                let mut events = Vec::new();
                let (mut cursor, mut stats) = (SweepCursor::default(), SweepStats::default());
                assert!(reg.sweep_step(now, &mut cursor, usize::MAX, &mut stats, &mut events));
                let mut events: Vec<String> = events.iter().map(event).collect();
                events.sort();
                if events.is_empty() {
                    "-".to_owned()
                } else {
                    events.join(" ")
                }
            }
            _ => panic!("unknown script command {cmd} {args:?}"),
        }
    }

    /// Runs a script on a fresh registry with periods [`P`], one step per
    /// line: `OFFSET_MS COMMAND ARGS... => EXPECTED`, the offset from [`T0`].
    #[track_caller]
    fn check(script: &str) {
        let mut reg = Registry::new(P);
        for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (step, want) = line.split_once("=>").expect("every step has =>");
            let mut words = step.split_whitespace();
            let offset: Millis = words
                .next()
                .and_then(|w| w.replace('_', "").parse().ok())
                .expect("every step starts with an offset in ms");
            let cmd = words.next().expect("every step has a command");
            let args: Vec<&str> = words.collect();
            let got = run(&mut reg, T0 + offset, cmd, &args);
            assert_eq!(got, want.trim(), "step `{line}`");
        }
    }

    /// [`check`] after [`SETUP`].
    #[track_caller]
    fn check_web(script: &str) {
        check(&format!("{SETUP}\n{script}"));
    }

    #[test]
    fn lifecycle() {
        check_web("0 get web a => starting 10.0.0.1:80 @0");
        check_web("1_000 renew web a => up:web/a \n 1_000 get web a => up 10.0.0.1:80 @1000");
        check_web("1_000 renew web a => up:web/a \n 2_000 renew web a => none");
        // Down after more than down_after, not at exactly down_after.
        check_web("1_000 renew web a => up:web/a \n 91_000 get web a => up 10.0.0.1:80 @1000");
        check_web("1_000 renew web a => up:web/a \n 91_001 get web a => down 10.0.0.1:80 @1000");
        check_web("1_000 renew web a => up:web/a \n 91_001 list web => web[a:down]");
        // Back up on renew, with an event; the same once the sweep stored Down.
        check_web("1_000 renew web a => up:web/a \n 91_001 renew web a => up:web/a");
        check_web("91_001 renew web a => up:web/a \n 91_002 get web a => up 10.0.0.1:80 @91001");
        check_web(
            "1_000 renew web a => up:web/a \n 100_000 sweep => down:web/a
             100_001 get web a => down 10.0.0.1:80 @1000 \n 100_002 renew web a => up:web/a",
        );
        // Starting never decays to down.
        check_web("599_999 get web a => starting 10.0.0.1:80 @0");
        check_web("600_000 get web a => starting 10.0.0.1:80 @0");
        check_web("600_000 sweep => -");
    }

    #[test]
    fn out_of_service() {
        check_web("5 out web a => out:web/a \n 6 get web a => out-of-service 10.0.0.1:80 @5");
        check_web("5 out web a => out:web/a \n 6 renew web a => OutOfService");
        check_web("5 out web a => out:web/a \n 6 renew web a => OutOfService \n 7 get web a => out-of-service 10.0.0.1:80 @5");
        check_web("5 out web a => out:web/a \n 8 out web a => none \n 9 get web a => out-of-service 10.0.0.1:80 @8");
        check_web("1 renew web a => up:web/a \n 5 out web a => out:web/a");
        check_web("1 renew web a => up:web/a \n 95_000 out web a => out:web/a");
        // Out of service never decays to down.
        check_web("5 out web a => out:web/a \n 200_000 sweep => - \n 200_000 get web a => out-of-service 10.0.0.1:80 @5");
    }

    #[test]
    fn eviction_of_each_status() {
        // Starting.
        check_web("600_001 get web a => NoSuchInstance \n 600_001 list web => web[]");
        check_web("600_001 renew web a => NoSuchInstance \n 600_001 out web a => NoSuchInstance");
        check_web("600_001 sweep => removed:web/a \n 600_001 counts => 1 apps 0 instances");
        // Up (reads down before it goes).
        check_web("1_000 renew web a => up:web/a \n 601_000 get web a => down 10.0.0.1:80 @1000");
        check_web("1_000 renew web a => up:web/a \n 601_001 get web a => NoSuchInstance");
        check_web("1_000 renew web a => up:web/a \n 601_001 renew web a => NoSuchInstance");
        check_web("1_000 renew web a => up:web/a \n 601_001 apps => web[]");
        // Down, stored by a sweep.
        check_web(
            "1_000 renew web a => up:web/a \n 100_000 sweep => down:web/a
             601_001 list web => web[] \n 601_001 sweep => removed:web/a",
        );
        // Out of service.
        check_web("5 out web a => out:web/a \n 600_005 get web a => out-of-service 10.0.0.1:80 @5");
        check_web("5 out web a => out:web/a \n 600_006 get web a => NoSuchInstance");
        check_web("5 out web a => out:web/a \n 600_006 out web a => NoSuchInstance");
        check_web("5 out web a => out:web/a \n 600_006 sweep => removed:web/a");
        // A stored but expired instance counts until swept.
        check_web("600_001 counts => 1 apps 1 instances \n 600_001 sweep => removed:web/a \n 600_001 counts => 1 apps 0 instances");
    }

    #[test]
    fn re_registration() {
        // Same address: idempotent, restarts as starting.
        check_web("0 register web a 10.0.0.1 80 => replaced:web/a@10.0.0.1:80");
        check_web(
            "1_000 renew web a => up:web/a \n 2_000 register web a 10.0.0.1 80 => replaced:web/a@10.0.0.1:80
             2_001 get web a => starting 10.0.0.1:80 @2000 \n 2_002 list web => web[a:starting]",
        );
        // Down (read or stored) is replaced by the new address.
        check_web(
            "0 renew web a => up:web/a \n 90_001 register web a 10.0.0.2 81 => replaced:web/a@10.0.0.2:81
             90_002 get web a => starting 10.0.0.2:81 @90001",
        );
        check_web("0 renew web a => up:web/a \n 90_001 sweep => down:web/a \n 90_002 register web a 10.0.0.2 80 => replaced:web/a@10.0.0.2:80");
        // Out of service is replaced.
        check_web(
            "5 out web a => out:web/a \n 6 register web a 10.0.0.2 81 => replaced:web/a@10.0.0.2:81
             7 get web a => starting 10.0.0.2:81 @6 \n 8 renew web a => up:web/a",
        );
        // Expired (not yet swept) is replaced.
        check_web("600_001 register web a 10.0.0.2 81 => replaced:web/a@10.0.0.2:81 \n 600_002 sweep => -");
        // Live at another address (ip or port) is refused and left unchanged.
        check_web("1 register web a 10.0.0.2 80 => InstanceExists \n 2 get web a => starting 10.0.0.1:80 @0");
        check_web("600_000 register web a 10.0.0.1 81 => InstanceExists");
        check_web("1 renew web a => up:web/a \n 2 register web a 10.0.0.1 81 => InstanceExists");
        check_web(
            "1 renew web a => up:web/a \n 90_001 register web a 10.0.0.2 80 => InstanceExists",
        );
        check_web("1 renew web a => up:web/a \n 90_002 register web a 10.0.0.2 80 => replaced:web/a@10.0.0.2:80");
        // A second id is a new instance.
        check_web("1 register web b 10.0.0.1 80 => added:web/b@10.0.0.1:80 \n 2 list web => web[a:starting b:starting]");
    }

    #[test]
    fn absent_apps_and_instances() {
        check_web("1 create web => AppExists");
        check_web("1 register db a 10.0.0.1 80 => NoSuchApp");
        check_web(
            "1 renew db a => NoSuchApp \n 1 out db a => NoSuchApp \n 1 get db a => NoSuchApp",
        );
        check_web("1 list db => NoSuchApp");
        check_web("1 renew web b => NoSuchInstance \n 1 out web b => NoSuchInstance \n 1 get web b => NoSuchInstance");
        check("0 apps => ");
    }

    #[test]
    fn listings() {
        check_web(
            "1 create db => app-created:db \n 2 create api => app-created:api
             3 apps => api[] db[] web[a:starting]",
        );
        // Registration order; a removal moves the last instance into the hole.
        let abc = "0 register web b 10.0.0.1 81 => added:web/b@10.0.0.1:81
                   0 register web c 10.0.0.1 82 => added:web/c@10.0.0.1:82
                   1 list web => web[a:starting b:starting c:starting]";
        check_web(&format!(
            "{abc} \n 550_000 renew web a => up:web/a \n 550_000 renew web c => up:web/c
             600_001 sweep => removed:web/b \n 600_001 list web => web[a:up c:up]"
        ));
        check_web(&format!(
            "{abc} \n 550_000 renew web b => up:web/b \n 550_000 renew web c => up:web/c
             600_001 sweep => removed:web/a \n 600_001 list web => web[c:up b:up]"
        ));
        // Listings omit expired instances before the sweep removes them.
        check_web(&format!(
            "{abc} \n 300_000 renew web b => up:web/b \n 600_001 list web => web[b:down]"
        ));
    }

    #[test]
    fn empty_apps() {
        // An app never given an instance.
        check(
            "0 create db => app-created:db \n 600_000 list db => db[] \n 600_000 sweep => -
             600_001 list db => NoSuchApp \n 600_001 apps => \n 600_001 counts => 1 apps 0 instances
             600_001 register db x 10.0.0.1 80 => NoSuchApp \n 600_001 sweep => app-removed:db
             600_001 counts => 0 apps 0 instances",
        );
        // An expired app is created afresh, and lives its full period again.
        check(
            "0 create db => app-created:db \n 600_001 create db => app-created:db
             1_200_001 list db => db[] \n 1_200_001 sweep => - \n 1_200_002 list db => NoSuchApp",
        );
        // Empty since its last instance was removed, not since creation.
        check_web(
            "600_001 sweep => removed:web/a \n 1_200_001 list web => web[] \n 1_200_001 sweep => -
             1_200_002 list web => NoSuchApp \n 1_200_002 create web => app-created:web",
        );
        check_web("600_001 sweep => removed:web/a \n 1_200_002 sweep => app-removed:web \n 1_200_002 counts => 0 apps 0 instances");
        // A registration makes an app non-empty; a stored expired instance keeps it.
        check(
            "0 create db => app-created:db \n 500_000 register db x 10.0.0.1 80 => added:db/x@10.0.0.1:80
             1_200_000 list db => db[] \n 1_200_000 sweep => removed:db/x \n 1_800_000 list db => db[]
             1_800_001 list db => NoSuchApp",
        );
    }

    /// Registers `n` instances `{prefix}-{i}` on one of a few ips at `now`.
    fn fill(reg: &mut Registry, app: &str, prefix: &str, n: usize, now: Millis) -> Vec<Arc<str>> {
        (0..n)
            .map(|i| {
                let id = format!("{prefix}-{i}");
                let ip = format!("10.0.{}.1", i % 3);
                let added = reg.register(app, &id, &ip, 8080, now);
                assert!(
                    matches!(added, Ok(Event::InstanceAdded { .. })),
                    "{added:?}"
                );
                Arc::from(id)
            })
            .collect()
    }

    fn ids_of(events: &[Event], kind: fn(&Event) -> Option<&Arc<str>>) -> Vec<Arc<str>> {
        let mut ids: Vec<Arc<str>> = events.iter().filter_map(kind).cloned().collect();
        ids.sort();
        ids
    }

    fn removed(e: &Event) -> Option<&Arc<str>> {
        match e {
            Event::InstanceRemoved { id, .. } => Some(id),
            _ => None,
        }
    }

    fn marked_down(e: &Event) -> Option<&Arc<str>> {
        match e {
            Event::InstanceDown { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Runs a whole pass in steps of `budget`; returns the stats, events and calls.
    fn sweep_in_steps(
        reg: &mut Registry,
        now: Millis,
        budget: usize,
    ) -> (SweepStats, Vec<Event>, usize) {
        let (mut cursor, mut stats, mut events) =
            (SweepCursor::default(), SweepStats::default(), Vec::new());
        let mut calls = 0;
        loop {
            let before = stats;
            let done = reg.sweep_step(now, &mut cursor, budget, &mut stats, &mut events);
            calls += 1;
            let checked = stats.checked - before.checked;
            let apps = stats.apps_removed - before.apps_removed;
            assert!(
                checked + apps <= budget.max(1),
                "one step did {checked} slots and {apps} apps"
            );
            if done {
                return (stats, events, calls);
            }
            assert!(calls < 1_000_000, "the pass never completes");
        }
    }

    #[test]
    fn sweep_in_small_steps_sees_every_slot_once() {
        let mut reg = Registry::new(P);
        let now = T0 + 700_000;
        let mut expired = Vec::new();
        let mut down = Vec::new();
        let mut stored = 0;
        for (app, n) in [("a", 1000), ("b", 7), ("c", 2500), ("d", 1), ("e", 0)] {
            reg.create_app(app, T0).unwrap();
            // Interleaved so swap_remove moves both kinds into holes.
            let gone = fill(&mut reg, app, &format!("{app}-gone"), n, T0);
            let fresh = fill(&mut reg, app, &format!("{app}-fresh"), n, now - 50_000);
            let sleepy = fill(&mut reg, app, &format!("{app}-down"), n / 2, T0 + 200_000);
            let up = fill(&mut reg, app, &format!("{app}-up"), n / 3, now - 1000);
            for id in sleepy.iter().chain(&up) {
                let renewed = reg.renew(
                    app,
                    id,
                    now - if sleepy.contains(id) { 500_000 } else { 1000 },
                );
                assert!(matches!(renewed, Ok(Some(Event::InstanceUp { .. }))));
            }
            stored += gone.len() + fresh.len() + sleepy.len() + up.len();
            expired.extend(gone);
            down.extend(sleepy);
        }
        // Apps empty for too long ("e" too), and one that is not.
        reg.create_app("empty", T0).unwrap();
        reg.create_app("new", now - 1).unwrap();
        expired.sort();
        down.sort();
        assert_eq!(reg.instance_count(), stored);
        assert_eq!(reg.app_count(), 7);

        let (stats, events, calls) = sweep_in_steps(&mut reg, now, 7);
        assert_eq!(stats.checked, stored);
        assert_eq!(stats.removed, expired.len());
        assert_eq!(stats.marked_down, down.len());
        assert_eq!(stats.apps_removed, 2);
        assert_eq!(ids_of(&events, removed), expired);
        assert_eq!(ids_of(&events, marked_down), down);
        for app in ["e", "empty"] {
            assert!(events.contains(&Event::AppRemoved { app: app.into() }));
        }
        assert!(calls > stored / 7, "{calls} calls for {stored} slots");
        assert_eq!(reg.instance_count(), stored - expired.len());
        assert_eq!(reg.app_count(), 5);
        for id in &down {
            let app = &id[..1];
            assert_eq!(
                reg.instance(app, id, now).map(|i| i.status),
                Ok(Status::Down)
            );
        }

        // A second pass sees what is left once and marks nothing down again.
        let (again, events, _) = sweep_in_steps(&mut reg, now, 13);
        let left = stored - expired.len();
        let want = SweepStats {
            checked: left,
            ..SweepStats::default()
        };
        assert_eq!((again, events), (want, Vec::new()));
        // A budget of 0 still makes progress.
        assert_eq!(sweep_in_steps(&mut reg, now, 0).0.checked, left);
    }

    #[test]
    fn sweep_skips_an_app_recreated_during_its_pass() {
        let mut reg = Registry::new(P);
        reg.create_app("gone", T0).unwrap();
        reg.create_app("big", T0).unwrap();
        fill(&mut reg, "big", "big", 100, T0);
        let (mut cursor, mut stats, mut events) =
            (SweepCursor::default(), SweepStats::default(), Vec::new());
        let now = T0 + 600_001;
        // The pass takes its list of apps at its first step, while nothing
        // has expired yet.
        assert!(!reg.sweep_step(T0 + 1, &mut cursor, 1, &mut stats, &mut events));
        let first = stats.checked;
        // Later "gone" has expired and is created afresh, with instances.
        assert!(matches!(
            reg.create_app("gone", now),
            Ok(Event::AppCreated { .. })
        ));
        fill(&mut reg, "gone", "new", 5, now);
        while !reg.sweep_step(now, &mut cursor, 10, &mut stats, &mut events) {}
        assert_eq!(
            stats.checked, 100,
            "the new app is not part of the old pass"
        );
        assert_eq!(stats.removed, 100 - first);
        assert_eq!(stats.apps_removed, 0);
        assert_eq!(reg.app("gone", now).map(|a| a.instances.len()), Ok(5));
        assert_eq!(reg.instance_count(), 5 + first);
        // The next pass covers it (and the slot of "big" the first step may
        // have checked before it expired).
        let (stats, _, _) = sweep_in_steps(&mut reg, now, 10);
        assert_eq!(stats.checked, 5 + first);
        assert_eq!(stats.removed, first);
    }

    #[test]
    fn registrations_during_a_pass_are_safe() {
        let mut reg = Registry::new(P);
        reg.create_app("web", T0).unwrap();
        fill(&mut reg, "web", "old", 50, T0);
        let now = T0 + 600_001;
        let (mut cursor, mut stats, mut events) =
            (SweepCursor::default(), SweepStats::default(), Vec::new());
        let mut calls = 0;
        while !reg.sweep_step(now, &mut cursor, 3, &mut stats, &mut events) {
            calls += 1;
            reg.register("web", &format!("new-{calls}"), "10.9.9.9", 1, now)
                .unwrap();
        }
        assert_eq!(stats.removed, 50);
        assert_eq!(reg.instance_count(), calls);
        assert_eq!(reg.app("web", now).map(|a| a.instances.len()), Ok(calls));
    }

    #[test]
    fn ips_inline_up_to_22_bytes_then_on_the_heap() {
        for ip in [
            "",
            "10.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "0123456789abcdef012345",
        ] {
            let stored = Ip::new(ip);
            assert!(matches!(stored.0, IpRepr::Inline { .. }), "{ip}");
            assert_eq!((stored.as_str(), stored.to_string()), (ip, ip.to_string()));
        }
        for ip in [
            "0123456789abcdef0123456",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "some-host.internal.example",
            "é".repeat(200).as_str(),
        ] {
            let stored = Ip::new(ip);
            assert!(matches!(stored.0, IpRepr::Heap(_)), "{ip}");
            assert_eq!(&*stored, ip);
        }
        assert_eq!(format!("{:?}", Ip::new("a\"b")), "\"a\\\"b\"");
        assert_eq!(Ip::new("10.0.0.1"), Ip::new("10.0.0.1"));
        assert_ne!(Ip::new("10.0.0.1"), Ip::new("10.0.0.10"));
    }

    #[test]
    fn renew_at_100k_instances() {
        let mut reg = Registry::new(P);
        reg.create_app("big", T0).unwrap();
        let ids = fill(&mut reg, "big", "instance", 100_000, T0);
        for id in &ids {
            assert!(matches!(
                reg.renew("big", id, T0 + 1),
                Ok(Some(Event::InstanceUp { .. }))
            ));
        }
        for id in &ids {
            assert_eq!(reg.renew("big", id, T0 + 2), Ok(None));
        }
        assert_eq!(reg.instance_count(), 100_000);
        let view = reg.instance("big", "instance-99999", T0 + 3).unwrap();
        assert_eq!((view.status, view.last_renewal), (Status::Up, T0 + 2));
    }

    #[test]
    fn slot_is_small() {
        assert!(
            std::mem::size_of::<Slot>() <= 56,
            "{}",
            std::mem::size_of::<Slot>()
        );
        assert_eq!(Registry::new(P).periods(), P);
    }
}
