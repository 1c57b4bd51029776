//! The registry: the pure state machine behind the server.
//!
//! It does no I/O, reads no clock, spawns no threads and knows nothing of JSON
//! or HTTP. Every operation takes `now`, milliseconds on a monotonic clock
//! (`clock::Now::mono`), so a step of the system clock changes no status and
//! each lifecycle rule is unit-tested with injected times. The glue (`api.rs`,
//! `sweeper.rs`) wraps a [`Registry`] in a `Mutex`, logs the [`Event`]s and
//! tells watchers which apps changed.
//!
//! # Exact reads
//!
//! The status a caller reads is computed from `now`, not from the last pass of
//! anything: with `age = now - last_renewal`, an instance with
//! `age > evict_after` is absent everywhere, and an `Up` instance with
//! `age > down_after` reads `Down`. Reads of apps first *settle* them: the
//! transitions that time has made true are stored (and reported as events),
//! so the change index a reader is given always matches the view it is given.
//!
//! # Change index and due times
//!
//! A global counter, bumped by every change of what a read would answer
//! (anything but `lastRenewal`); each app keeps the value of its last change,
//! and the list answers the global one. Each app keeps `next_due`, a lower
//! bound of the earliest moment time changes something in it (an `Up`
//! instance going `Down`, an instance expiring, the empty app expiring). A
//! registration or a heartbeat that changes a status only lowers it (O(1)
//! plus one ordered-set update); a plain heartbeat only moves deadlines later,
//! so it leaves the bound valid and touches nothing. The apps are kept ordered
//! by `next_due`, so the ticker ([`Registry::settle_due_step`]) finds what is
//! due without scanning, settles it in steps of bounded work and recomputes
//! the bound exactly.
//!
//! # Layout
//!
//! Apps live in a `HashMap` by name, their names also in a `BTreeSet`
//! (listings come out sorted; a full pass resumes after the last name it
//! did, so it copies no list of names). Each
//! app keeps its instances in a dense `Vec<Slot>` and a `HashMap` from id to
//! slot position (the id's `Arc<str>` is shared by both: one allocation per
//! id); removal is `swap_remove` plus one index fix, so every per-instance
//! operation is O(1). Addresses of up to 22 bytes are stored inline in the
//! slot ([`Ip`]). Metadata lives in a side map of the app, by id, so an
//! instance without metadata pays nothing for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

/// Milliseconds on the monotonic clock; every operation takes it as `now`.
pub type Millis = u64;

/// An instance's metadata: string keys to string values, in key order.
pub type Metadata = BTreeMap<String, String>;

/// The two lifecycle periods of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Periods {
    /// An `Up` instance silent for more than this reads `Down`.
    pub down_after: Millis,
    /// An instance silent for more than this is absent (and removed by the
    /// sweep); so is an app that has had no instances for more than this.
    pub evict_after: Millis,
}

impl Periods {
    /// Periods that are never reached: a mirror's (see [`Registry::mirror`]).
    pub const NEVER: Periods = Periods {
        down_after: Millis::MAX / 4,
        evict_after: Millis::MAX / 2,
    };

    /// The server's defaults, 90 s to down and 10 min to removal, as tests
    /// use them.
    #[cfg(test)]
    pub const DEFAULT: Periods = Periods {
        down_after: 90_000,
        evict_after: 600_000,
    };
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

impl Status {
    /// Every status, in the order of [`Counts`].
    pub const ALL: [Status; 4] = [
        Status::Starting,
        Status::Up,
        Status::Down,
        Status::OutOfService,
    ];

    fn ix(self) -> usize {
        match self {
            Status::Starting => 0,
            Status::Up => 1,
            Status::Down => 2,
            Status::OutOfService => 3,
        }
    }
}

/// A set of statuses: which instances a read answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusSet(u8);

impl StatusSet {
    /// Every status.
    pub const ALL: StatusSet = StatusSet(0b1111);
    /// No status.
    pub const NONE: StatusSet = StatusSet(0);

    /// This set with `status` added.
    pub fn with(self, status: Status) -> StatusSet {
        StatusSet(self.0 | 1 << status.ix())
    }

    /// Whether `status` is in the set.
    pub fn contains(self, status: Status) -> bool {
        self.0 & 1 << status.ix() != 0
    }
}

/// Exact counts of what is stored; settled within the ticker's second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Apps.
    pub apps: usize,
    /// Instances `starting`.
    pub starting: usize,
    /// Instances `up`.
    pub up: usize,
    /// Instances `down`.
    pub down: usize,
    /// Instances `out-of-service`.
    pub out_of_service: usize,
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
    /// When (monotonic) the instance last registered, renewed or was taken
    /// out of service.
    pub last_renewal: Millis,
    /// Its metadata; `None` when empty.
    pub metadata: Option<Arc<Metadata>>,
}

/// A copy of one app and its present instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppView {
    /// The app name.
    pub name: Arc<str>,
    /// The instances that are present and of a status asked for, in the
    /// app's stable slot order.
    pub instances: Vec<InstanceView>,
    /// The change index of the app.
    pub index: u64,
}

/// One app in a summary: its index and its instances counted by status,
/// without the instances themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSummary {
    /// The app name.
    pub name: Arc<str>,
    /// The change index of the app.
    pub index: u64,
    /// Its present instances by status, in the order of [`Status::ALL`].
    pub counts: [usize; 4],
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
    /// An app that had been empty for more than `evict_after` was removed.
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
    /// An `Up` instance was found silent for more than `down_after`.
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
    /// An instance silent for more than `evict_after` was removed.
    InstanceRemoved {
        /// The app name.
        app: Arc<str>,
        /// The instance id.
        id: Arc<str>,
    },
}

/// Where a stepped pass is: kept by the caller between calls of
/// [`Registry::settle_due_step`] or [`Registry::sweep_step`].
/// `SweepCursor::default()` starts a new pass.
#[derive(Debug, Default)]
pub struct SweepCursor {
    /// The app being scanned, if one is.
    scan: Option<Scan>,
    /// A full pass: the name of the last app it started (`None`: none yet).
    after: Option<Arc<str>>,
}

/// The scan of one app in steps.
#[derive(Debug)]
struct Scan {
    name: Arc<str>,
    epoch: u64,
    /// The app's `settles` when the scan started; a read that settled the
    /// whole app since has made the scan moot.
    settles: u64,
    /// Next slot position to examine.
    pos: usize,
    /// The earliest due time of the slots examined.
    due: Millis,
}

/// What a pass did; the stepped passes add to it, the caller resets it.
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

/// An app's own state, as the data directory saves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppState {
    /// Its change index.
    pub index: u64,
    /// When it became empty (its last instance's expiry, or its creation),
    /// if it has no instances.
    pub empty_since: Option<Millis>,
    /// The latest expiry of its instances removed so far.
    pub gone_at: Millis,
}

/// An instance's state as a store holds it, its status not made effective
/// at any `now`: what the data directory saves and reads back, and what
/// the etcd mirror gives [`Registry::apply_instance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored<'a> {
    /// The instance id.
    pub id: &'a str,
    /// Its address.
    pub ip: &'a str,
    /// Its port.
    pub port: u16,
    /// Its status as stored (in memory, `Up` may read `Down` by now; a
    /// mirror's status is as read, no decay applies to it).
    pub status: Status,
    /// Its last renewal (monotonic).
    pub last_renewal: Millis,
    /// Its metadata, if any.
    pub metadata: Option<&'a Arc<Metadata>>,
}

/// What [`Registry::snapshot_step`] hands its visitor.
#[derive(Debug)]
pub enum Item<'a> {
    /// An app, before its instances.
    App(&'a str, AppState),
    /// An instance of the app named.
    Instance(&'a str, Stored<'a>),
}

/// Where a snapshot in steps is (see [`Registry::snapshot_step`]).
/// `SnapshotCursor::default()` starts a new one.
#[derive(Debug, Default)]
pub struct SnapshotCursor {
    /// The last app started.
    after: Option<Arc<str>>,
    /// The app being visited: its epoch and how many of its slots are left
    /// (visited from the last down, see `snapshot_step`).
    scan: Option<(Arc<str>, u64, usize)>,
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

    /// The first moment at which time changes what this slot reads.
    fn due(&self, periods: Periods) -> Millis {
        let after = if self.status == Status::Up {
            periods.down_after
        } else {
            periods.evict_after
        };
        self.last_renewal.saturating_add(after).saturating_add(1)
    }

    /// The first moment at which the slot is absent.
    fn expiry(&self, periods: Periods) -> Millis {
        self.last_renewal
            .saturating_add(periods.evict_after)
            .saturating_add(1)
    }
}

/// One stored app.
#[derive(Debug)]
struct App {
    name: Arc<str>,
    slots: Vec<Slot>,
    /// Id to position in `slots`; the key is the same `Arc` as the slot's id.
    ids: HashMap<Arc<str>, usize>,
    /// Metadata of the instances that have some, by id.
    metadata: HashMap<Arc<str>, Arc<Metadata>>,
    /// The moment the app last became empty (its last instance's expiry, or
    /// its creation); `Some` exactly when `slots` is empty.
    empty_since: Option<Millis>,
    /// The latest expiry of the instances removed so far.
    gone_at: Millis,
    /// Distinguishes this app from an earlier one of the same name.
    epoch: u64,
    /// The change index of its last change.
    index: u64,
    /// Its stored instances by stored status (exact once settled), so that
    /// a summary costs O(apps).
    counts: [usize; 4],
    /// A lower bound of the first moment time changes something here;
    /// `Millis::MAX` while a stepped scan is under way (and nothing lowered it).
    next_due: Millis,
    /// Whole settles done by reads; a stepped scan started before one is moot.
    settles: u64,
    /// Whether a stepped scan is under way.
    scanning: bool,
    /// When it was last settled whole (or created).
    settled_at: Millis,
    /// Its key in `Book::due`: `next_due`, but no sooner than [`RESCAN`]
    /// after `settled_at` (`Millis::MAX` when absent from the set).
    due_key: Millis,
}

/// The shortest time between two settles of one app by the ticker. An app
/// whose deadlines pass one after another (a large fleet decaying) is then
/// scanned about once a second rather than back to back, while reads, which
/// settle by `next_due`, stay exact.
pub const RESCAN: Millis = 500;

/// The bookkeeping beside the apps, split off so that an app and it can be
/// borrowed together.
#[derive(Debug, Default)]
struct Book {
    /// The global change index.
    index: u64,
    /// Apps by `next_due`, for those with a finite one.
    due: BTreeSet<(Millis, Arc<str>)>,
    /// Stored instances by stored status.
    counts: [usize; 4],
    /// Names of the apps changed since the last [`Registry::drain_changes`].
    changed: Vec<Arc<str>>,
    /// Events of settles, for the caller to log.
    events: Vec<Event>,
    /// The app a stepped scan is under way in, if any (one at a time: the
    /// ticker's).
    scanning: Option<Arc<str>>,
}

impl Book {
    fn bump(&mut self, app: &mut App) {
        self.index += 1;
        app.index = self.index;
        if self.changed.last() != Some(&app.name) {
            self.changed.push(app.name.clone());
        }
    }

    /// Sets the app's due time, keeping the ordered set in step (its key
    /// there is no sooner than [`RESCAN`] after the app's last settle).
    fn set_due(&mut self, app: &mut App, at: Millis) {
        app.next_due = at;
        let key = if at == Millis::MAX {
            Millis::MAX
        } else {
            at.max(app.settled_at.saturating_add(RESCAN))
        };
        if app.due_key == key {
            return;
        }
        if app.due_key != Millis::MAX {
            self.due.remove(&(app.due_key, app.name.clone()));
        }
        app.due_key = key;
        if key != Millis::MAX {
            self.due.insert((key, app.name.clone()));
        }
    }

    /// Lowers the app's due time to `at` if that is earlier.
    fn lower_due(&mut self, app: &mut App, at: Millis) {
        if at < app.next_due {
            self.set_due(app, at);
        }
    }

    fn restate(&mut self, from: Status, to: Status) {
        restate(&mut self.counts, from, to);
    }
}

/// Moves one instance from `from` to `to` in counts by status.
fn restate(counts: &mut [usize; 4], from: Status, to: Status) {
    counts[from.ix()] -= 1;
    counts[to.ix()] += 1;
}

impl App {
    fn new(name: Arc<str>, now: Millis, epoch: u64) -> App {
        App {
            name,
            slots: Vec::new(),
            ids: HashMap::new(),
            metadata: HashMap::new(),
            empty_since: Some(now),
            gone_at: 0,
            epoch,
            index: 0,
            counts: [0; 4],
            next_due: Millis::MAX,
            settles: 0,
            scanning: false,
            settled_at: now,
            due_key: Millis::MAX,
        }
    }

    fn state(&self) -> AppState {
        AppState {
            index: self.index,
            empty_since: self.empty_since,
            gone_at: self.gone_at,
        }
    }

    fn stored<'a>(&'a self, slot: &'a Slot) -> Stored<'a> {
        Stored {
            id: &slot.id,
            ip: slot.ip.as_str(),
            port: slot.port,
            status: slot.status,
            last_renewal: slot.last_renewal,
            metadata: if self.metadata.is_empty() {
                None
            } else {
                self.metadata.get(&slot.id)
            },
        }
    }

    /// Adds instance `new.id` (not in the app) as given (empty metadata is
    /// none), counted in `book`: the event it makes. The caller moves the
    /// index and the due time.
    fn add(&mut self, book: &mut Book, new: Stored<'_>) -> Event {
        let id: Arc<str> = Arc::from(new.id);
        let ip = Ip::new(new.ip);
        self.ids.insert(id.clone(), self.slots.len());
        if let Some(m) = new.metadata.filter(|m| !m.is_empty()) {
            self.metadata.insert(id.clone(), m.clone());
        }
        self.slots.push(Slot {
            id: id.clone(),
            ip: ip.clone(),
            last_renewal: new.last_renewal,
            port: new.port,
            status: new.status,
        });
        self.empty_since = None;
        book.counts[new.status.ix()] += 1;
        self.counts[new.status.ix()] += 1;
        Event::InstanceAdded {
            app: self.name.clone(),
            id,
            ip,
            port: new.port,
        }
    }

    /// When the app, if empty, expires.
    fn empty_due(&self, periods: Periods) -> Millis {
        self.empty_since.map_or(Millis::MAX, |since| {
            since.saturating_add(periods.evict_after).saturating_add(1)
        })
    }

    /// Whether the app has been empty for more than `evict_after`.
    fn expired(&self, now: Millis, periods: Periods) -> bool {
        now >= self.empty_due(periods)
    }

    fn view(&self, now: Millis, periods: Periods, filter: StatusSet) -> AppView {
        // Sized once for every slot (an upper bound): a view of a large app
        // is not regrown and copied as it fills.
        let mut instances = Vec::with_capacity(self.slots.len());
        instances.extend(self.slots.iter().filter_map(|slot| {
            let status = slot.effective(now, periods)?;
            filter
                .contains(status)
                .then(|| self.instance_view(slot, status))
        }));
        AppView {
            name: self.name.clone(),
            instances,
            index: self.index,
        }
    }

    fn instance_view(&self, slot: &Slot, status: Status) -> InstanceView {
        InstanceView {
            id: slot.id.clone(),
            ip: slot.ip.clone(),
            port: slot.port,
            status,
            last_renewal: slot.last_renewal,
            metadata: if self.metadata.is_empty() {
                None
            } else {
                self.metadata.get(&slot.id).cloned()
            },
        }
    }

    /// The slot of `id` and its effective status, if present at `now`.
    fn live_slot_mut(
        &mut self,
        id: &str,
        now: Millis,
        periods: Periods,
    ) -> Result<(usize, Status), Error> {
        let pos = *self.ids.get(id).ok_or(Error::NoSuchInstance)?;
        let slot = self.slots.get(pos).ok_or(Error::NoSuchInstance)?;
        let status = slot.effective(now, periods).ok_or(Error::NoSuchInstance)?;
        Ok((pos, status))
    }

    /// Removes the slot at `pos`, moving the last slot into its place.
    fn remove(&mut self, pos: usize, book: &mut Book, periods: Periods) -> Slot {
        let slot = self.slots.swap_remove(pos);
        self.ids.remove(&*slot.id);
        if !self.metadata.is_empty() {
            self.metadata.remove(&*slot.id);
        }
        if let Some(moved) = self.slots.get(pos) {
            if let Some(moved_pos) = self.ids.get_mut(&*moved.id) {
                *moved_pos = pos;
            }
        }
        book.counts[slot.status.ix()] -= 1;
        self.counts[slot.status.ix()] -= 1;
        self.gone_at = self.gone_at.max(slot.expiry(periods));
        if self.slots.is_empty() {
            self.empty_since = Some(self.gone_at);
        }
        slot
    }

    /// Stores what time has made true in the slots from `*pos`, for at most
    /// `budget` slots; adds the due times of the slots kept to `due`.
    /// Returns the slots examined.
    #[allow(clippy::too_many_arguments)]
    fn settle_slots(
        &mut self,
        book: &mut Book,
        periods: Periods,
        now: Millis,
        pos: &mut usize,
        budget: usize,
        due: &mut Millis,
        stats: &mut SweepStats,
    ) -> usize {
        let mut spent = 0;
        let mut changed = false;
        while spent < budget && *pos < self.slots.len() {
            spent += 1;
            let slot = &mut self.slots[*pos];
            match slot.effective(now, periods) {
                None => {
                    // The last slot moves into `pos`: examine `pos` again.
                    let removed = self.remove(*pos, book, periods);
                    stats.removed += 1;
                    changed = true;
                    book.events.push(Event::InstanceRemoved {
                        app: self.name.clone(),
                        id: removed.id,
                    });
                    continue;
                }
                Some(Status::Down) if slot.status == Status::Up => {
                    slot.status = Status::Down;
                    book.restate(Status::Up, Status::Down);
                    restate(&mut self.counts, Status::Up, Status::Down);
                    stats.marked_down += 1;
                    changed = true;
                    book.events.push(Event::InstanceDown {
                        app: self.name.clone(),
                        id: slot.id.clone(),
                    });
                }
                Some(_) => {}
            }
            *due = (*due).min(slot.due(periods));
            *pos += 1;
        }
        stats.checked += spent;
        if changed {
            book.bump(self);
        }
        spent
    }
}

/// The budget units of starting (and finishing) one app in a stepped pass.
const APP_COST: usize = 8;

/// The state of the server: apps and their instances.
#[derive(Debug)]
pub struct Registry {
    periods: Periods,
    apps: HashMap<Arc<str>, App>,
    /// The names of `apps`, in order: for sorted listings and for a full
    /// pass to resume after the last name it did.
    names: BTreeSet<Arc<str>>,
    book: Book,
    next_epoch: u64,
}

impl Registry {
    /// An empty registry with the given lifecycle periods.
    pub fn new(periods: Periods) -> Registry {
        Registry {
            periods,
            apps: HashMap::new(),
            names: BTreeSet::new(),
            book: Book {
                index: 1,
                ..Book::default()
            },
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
        if let Some(app) = self.apps.get_mut(name) {
            if !app.expired(now, self.periods) {
                return Err(Error::AppExists);
            }
            self.book.set_due(app, Millis::MAX);
        }
        let name: Arc<str> = Arc::from(name);
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let mut app = App::new(name.clone(), now, epoch);
        self.book.bump(&mut app);
        let due = app.empty_due(self.periods);
        self.book.set_due(&mut app, due);
        self.apps.insert(name.clone(), app);
        self.names.insert(name.clone());
        Ok(Event::AppCreated { app: name })
    }

    /// The app `name` and its instances present at `now` of a status in
    /// `filter`, once the app is settled. With `unless_index`, answers
    /// `Ok(None)` when the app's index is that one (a watch keeps waiting).
    pub fn app(
        &mut self,
        name: &str,
        now: Millis,
        filter: StatusSet,
        unless_index: Option<u64>,
    ) -> Result<Option<AppView>, Error> {
        self.settle(name, now);
        let app = self.live_app(name, now)?;
        if unless_index == Some(app.index) {
            return Ok(None);
        }
        Ok(Some(app.view(now, self.periods, filter)))
    }

    /// Every app present at `now`, sorted by name, with its instances of a
    /// status in `filter`, and the global index, once everything due is
    /// settled. With `unless_index`, answers `None` when the global index is
    /// that one.
    pub fn apps(
        &mut self,
        now: Millis,
        filter: StatusSet,
        unless_index: Option<u64>,
    ) -> Option<(Vec<AppView>, u64)> {
        let periods = self.periods;
        self.listing(now, unless_index, |app| app.view(now, periods, filter))
    }

    /// Every app present at `now`, in name order, as `each` makes it, and
    /// the global index, once everything due is settled; `None` when the
    /// global index is `unless_index`.
    fn listing<T>(
        &mut self,
        now: Millis,
        unless_index: Option<u64>,
        each: impl Fn(&App) -> T,
    ) -> Option<(Vec<T>, u64)> {
        self.settle_due(now);
        if unless_index == Some(self.book.index) {
            return None;
        }
        Some((self.present(now).map(each).collect(), self.book.index))
    }

    /// The apps present at `now`, in name order.
    fn present(&self, now: Millis) -> impl Iterator<Item = &App> + '_ {
        let periods = self.periods;
        self.names
            .iter()
            .filter_map(|name| self.apps.get(name))
            .filter(move |app| !app.expired(now, periods))
    }

    /// Every app present at `now`, sorted by name, with its index and its
    /// instances counted by status (not copied), and the global index, once
    /// everything due is settled: O(apps) beside the settling. With
    /// `unless_index`, answers `None` when the global index is that one.
    pub fn summary(
        &mut self,
        now: Millis,
        unless_index: Option<u64>,
    ) -> Option<(Vec<AppSummary>, u64)> {
        self.listing(now, unless_index, |app| AppSummary {
            name: app.name.clone(),
            index: app.index,
            counts: app.counts,
        })
    }

    /// Settles every app that is due at `now`, so that what is stored is
    /// what reads at `now`.
    fn settle_due(&mut self, now: Millis) {
        // An app's key in the due set is its `next_due`, or RESCAN after its
        // last settle if that is later: every app due by `now` is among the
        // keys up to `now + RESCAN`, and `settle` checks `next_due` exactly.
        let horizon = now.saturating_add(RESCAN);
        let due: Vec<Arc<str>> = self
            .book
            .due
            .iter()
            .take_while(|(at, _)| *at <= horizon)
            .map(|(_, name)| name.clone())
            .collect();
        for name in due {
            self.settle(&name, now);
        }
        if let Some(name) = self.book.scanning.clone() {
            self.settle(&name, now);
        }
    }

    /// The global change index.
    pub fn index(&self) -> u64 {
        self.book.index
    }

    /// Raises the global change index to `floor` if it is lower (never
    /// lowers it): a new server starts above every index an earlier one
    /// could have handed out, so that no index names two views (API.md
    /// Part 4). The caller chooses `floor` (the start time, a saved index).
    pub fn raise_index(&mut self, floor: u64) {
        self.book.index = self.book.index.max(floor);
    }

    /// One instance as it reads at `now`.
    pub fn instance(&self, app: &str, id: &str, now: Millis) -> Result<InstanceView, Error> {
        let app = self.live_app(app, now)?;
        let slot = app
            .ids
            .get(id)
            .and_then(|&pos| app.slots.get(pos))
            .ok_or(Error::NoSuchInstance)?;
        let status = slot
            .effective(now, self.periods)
            .ok_or(Error::NoSuchInstance)?;
        Ok(app.instance_view(slot, status))
    }

    /// Registers instance `id` of `app` at `ip:port` with `metadata` (`None`
    /// for none), as `Starting`.
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
        metadata: Option<Arc<Metadata>>,
        now: Millis,
    ) -> Result<Event, Error> {
        let periods = self.periods;
        let book = &mut self.book;
        let app = self
            .apps
            .get_mut(app)
            .filter(|app| !app.expired(now, periods))
            .ok_or(Error::NoSuchApp)?;
        let metadata = metadata.filter(|m| !m.is_empty());
        if let Some(&pos) = app.ids.get(id) {
            let slot = &mut app.slots[pos];
            let same_address = *slot.ip == *ip && slot.port == port;
            let before = slot.effective(now, periods);
            if matches!(before, Some(Status::Starting | Status::Up)) && !same_address {
                return Err(Error::InstanceExists);
            }
            if *slot.ip != *ip {
                slot.ip = Ip::new(ip);
            }
            slot.port = port;
            book.restate(slot.status, Status::Starting);
            restate(&mut app.counts, slot.status, Status::Starting);
            slot.status = Status::Starting;
            slot.last_renewal = now;
            let event = Event::InstanceReplaced {
                app: app.name.clone(),
                id: slot.id.clone(),
                ip: slot.ip.clone(),
                port,
            };
            let id = slot.id.clone();
            let old = match &metadata {
                Some(m) => app.metadata.insert(id, m.clone()),
                None => app.metadata.remove(&id),
            };
            if !(before == Some(Status::Starting) && same_address && old == metadata) {
                book.bump(app);
            }
            return Ok(event);
        }
        let new = Stored {
            id,
            ip,
            port,
            status: Status::Starting,
            last_renewal: now,
            metadata: metadata.as_ref(),
        };
        let added = app.add(book, new);
        book.bump(app);
        book.lower_due(
            app,
            now.saturating_add(periods.evict_after).saturating_add(1),
        );
        Ok(added)
    }

    /// A heartbeat: the instance becomes `Up` with `last_renewal = now` (or
    /// keeps a later one it already has).
    ///
    /// Returns [`Event::InstanceUp`] if it was not `Up` before (`Starting` or
    /// `Down`), `None` if it was. An out-of-service instance is left unchanged
    /// and answers [`Error::OutOfService`].
    pub fn renew(&mut self, app: &str, id: &str, now: Millis) -> Result<Option<Event>, Error> {
        let periods = self.periods;
        let book = &mut self.book;
        let app = Self::live_app_mut(&mut self.apps, periods, app, now)?;
        let (pos, before) = app.live_slot_mut(id, now, periods)?;
        if before == Status::OutOfService {
            return Err(Error::OutOfService);
        }
        let slot = &mut app.slots[pos];
        // A heartbeat that waited on the lock may carry an older time than
        // one already stored: `last_renewal` never moves backwards.
        let now = now.max(slot.last_renewal);
        slot.last_renewal = now;
        if before == Status::Up {
            // Deadlines only move later: `next_due` stays a lower bound.
            return Ok(None);
        }
        book.restate(slot.status, Status::Up);
        restate(&mut app.counts, slot.status, Status::Up);
        slot.status = Status::Up;
        let event = Event::InstanceUp {
            app: app.name.clone(),
            id: slot.id.clone(),
        };
        book.bump(app);
        book.lower_due(
            app,
            now.saturating_add(periods.down_after).saturating_add(1),
        );
        Ok(Some(event))
    }

    /// Takes an instance out of service, with `last_renewal = now`.
    ///
    /// Returns [`Event::InstanceOutOfService`] if it was not out of service
    /// already, `None` if it was (still `Ok`: the operation is idempotent,
    /// and leaves `last_renewal`, so its expiry, as they were).
    pub fn take_out_of_service(
        &mut self,
        app: &str,
        id: &str,
        now: Millis,
    ) -> Result<Option<Event>, Error> {
        let periods = self.periods;
        let book = &mut self.book;
        let app = Self::live_app_mut(&mut self.apps, periods, app, now)?;
        let (pos, before) = app.live_slot_mut(id, now, periods)?;
        let slot = &mut app.slots[pos];
        if before == Status::OutOfService {
            // Idempotent: a second DELETE does not extend its life.
            return Ok(None);
        }
        // Its one deadline, expiry from now, is later than any it had.
        book.restate(slot.status, Status::OutOfService);
        restate(&mut app.counts, slot.status, Status::OutOfService);
        slot.status = Status::OutOfService;
        slot.last_renewal = now.max(slot.last_renewal);
        let event = Event::InstanceOutOfService {
            app: app.name.clone(),
            id: slot.id.clone(),
        };
        book.bump(app);
        Ok(Some(event))
    }

    /// Settles the whole app `name` if something in it is due (or a stepped
    /// scan of it is under way): stores what time has made true, removes the
    /// app if it has expired, and recomputes its due time exactly.
    fn settle(&mut self, name: &str, now: Millis) {
        let periods = self.periods;
        let Some(app) = self.apps.get_mut(name) else {
            return;
        };
        if app.next_due > now && !app.scanning {
            return;
        }
        app.settles += 1;
        app.scanning = false;
        app.settled_at = now;
        if self.book.scanning.as_deref() == Some(name) {
            self.book.scanning = None;
        }
        let mut due = Millis::MAX;
        let mut stats = SweepStats::default();
        app.settle_slots(
            &mut self.book,
            periods,
            now,
            &mut 0,
            usize::MAX,
            &mut due,
            &mut stats,
        );
        self.book.set_due(app, Millis::MAX);
        self.finish_app(name, now, due, &mut stats);
    }

    /// Ends the settle of an app: sets its due time from `due` (the earliest
    /// of its slots) and removes it if it is empty and expired.
    fn finish_app(&mut self, name: &str, now: Millis, due: Millis, stats: &mut SweepStats) {
        let periods = self.periods;
        let Some(app) = self.apps.get_mut(name) else {
            return;
        };
        app.scanning = false;
        app.settled_at = now;
        if self.book.scanning.as_deref() == Some(name) {
            self.book.scanning = None;
        }
        if app.expired(now, periods) {
            self.book.set_due(app, Millis::MAX);
            if let Some(mut app) = self.apps.remove(name) {
                self.names.remove(name);
                self.book.bump(&mut app);
                stats.apps_removed += 1;
                self.book.events.push(Event::AppRemoved { app: app.name });
            }
            return;
        }
        // `next_due` holds what registrations lowered it to meanwhile.
        let due = app.next_due.min(due).min(app.empty_due(periods));
        self.book.set_due(app, due);
    }

    /// Does a bounded part of settling the apps that are due at `now` and says
    /// whether none is left: the ticker's work. At most about `budget` units
    /// (one per slot examined, eight per app started; at least one), then `false` with
    /// the position kept in `cursor`. Events are kept for [`Registry::drain_changes`].
    pub fn settle_due_step(
        &mut self,
        now: Millis,
        cursor: &mut SweepCursor,
        budget: usize,
        stats: &mut SweepStats,
    ) -> bool {
        self.pass_step(now, cursor, budget, stats, None)
    }

    /// Does a bounded part of a full pass over every app (as
    /// [`Registry::settle_due_step`] for the apps that are due) and says
    /// whether the pass is complete. It covers the apps in name order, each
    /// once, including apps created during the pass after the last name done,
    /// but skips those settled whole after `skip_settled_after` (the ticker
    /// did them already: a pass only makes due times exact, so it need not
    /// repeat recent work). With no changes between calls it examines every
    /// other slot exactly once. On returning `true` the cursor is reset, so
    /// the next call starts a new pass.
    pub fn sweep_step(
        &mut self,
        now: Millis,
        cursor: &mut SweepCursor,
        budget: usize,
        stats: &mut SweepStats,
        skip_settled_after: Millis,
    ) -> bool {
        self.pass_step(now, cursor, budget, stats, Some(skip_settled_after))
    }

    fn pass_step(
        &mut self,
        now: Millis,
        cursor: &mut SweepCursor,
        budget: usize,
        stats: &mut SweepStats,
        full: Option<Millis>,
    ) -> bool {
        let periods = self.periods;
        let budget = budget.max(1);
        let mut spent = 0;
        loop {
            if spent >= budget {
                return false;
            }
            let Some(scan) = &mut cursor.scan else {
                // Start the next app: a few ordered-set updates, which cost
                // about as much as examining several slots.
                spent += APP_COST;
                let next = if full.is_some() {
                    let from = match &cursor.after {
                        Some(name) => Bound::Excluded(&**name),
                        None => Bound::Unbounded,
                    };
                    self.names
                        .range::<str, _>((from, Bound::Unbounded))
                        .next()
                        .cloned()
                } else {
                    self.book
                        .due
                        .first()
                        .filter(|(at, _)| *at <= now)
                        .map(|(_, name)| name.clone())
                };
                let Some(name) = next else {
                    *cursor = SweepCursor::default();
                    return true;
                };
                let Some(app) = self.apps.get_mut(&name) else {
                    // Cannot happen: the due set names stored apps only.
                    self.book.due.retain(|(_, n)| *n != name);
                    continue;
                };
                if full.is_some() {
                    cursor.after = Some(name.clone());
                }
                if full.is_some_and(|after| app.settled_at > after) {
                    continue;
                }
                self.book.set_due(app, Millis::MAX);
                app.scanning = true;
                self.book.scanning = Some(name.clone());
                cursor.scan = Some(Scan {
                    name: name.clone(),
                    epoch: app.epoch,
                    settles: app.settles,
                    pos: 0,
                    due: Millis::MAX,
                });
                continue;
            };
            let Some(app) = self
                .apps
                .get_mut(&scan.name)
                .filter(|app| app.epoch == scan.epoch && app.settles == scan.settles)
            else {
                // Removed, re-created or settled whole by a read since.
                cursor.scan = None;
                self.book.scanning = None;
                continue;
            };
            spent += app.settle_slots(
                &mut self.book,
                periods,
                now,
                &mut scan.pos,
                budget - spent,
                &mut scan.due,
                stats,
            );
            if scan.pos < app.slots.len() {
                return false;
            }
            let (name, due) = (scan.name.clone(), scan.due);
            cursor.scan = None;
            self.finish_app(&name, now, due, stats);
        }
    }

    /// The earliest time the ticker has an app to settle, if any (it sleeps
    /// until then): an app's due time, or [`RESCAN`] after its last settle.
    pub fn next_due(&self) -> Option<Millis> {
        self.book.due.first().map(|(at, _)| *at)
    }

    /// Moves the names of the apps changed since the last call into `apps`
    /// (each once in a row; the list's index changed when any did), and the
    /// events of settles into `events`.
    pub fn drain_changes(&mut self, apps: &mut Vec<Arc<str>>, events: &mut Vec<Event>) {
        apps.append(&mut self.book.changed);
        events.append(&mut self.book.events);
    }

    /// Queues the event of a write with those of settles, for
    /// [`Registry::drain_changes`] (so the caller logs them in order).
    pub fn push_event(&mut self, event: Event) {
        self.book.events.push(event);
    }

    /// Stored apps and instances by stored status (exact once settled).
    pub fn counts(&self) -> Counts {
        let [starting, up, down, out_of_service] = self.book.counts;
        Counts {
            apps: self.apps.len(),
            starting,
            up,
            down,
            out_of_service,
        }
    }

    /// Stored instances across all apps, including expired ones not yet settled.
    pub fn instance_count(&self) -> usize {
        self.book.counts.iter().sum()
    }

    /// Stored apps, including expired ones not yet settled.
    pub fn app_count(&self) -> usize {
        self.apps.len()
    }

    /// A registry that only mirrors a store's state (`--store etcd`): its
    /// periods are never reached, so nothing in it decays by itself; time's
    /// changes arrive as [`Registry::apply_instance`] and removals.
    pub fn mirror() -> Registry {
        Registry::new(Periods::NEVER)
    }

    /// Makes app `name` present (created empty at `now` if absent); returns
    /// whether it was absent. The caller sets its index.
    pub fn apply_app(&mut self, name: &str, now: Millis) -> bool {
        if self.apps.contains_key(name) {
            return false;
        }
        let name: Arc<str> = Arc::from(name);
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let app = App::new(name.clone(), now, epoch);
        self.apps.insert(name.clone(), app);
        self.names.insert(name.clone());
        self.book.changed.push(name.clone());
        self.book.events.push(Event::AppCreated { app: name });
        true
    }

    /// Removes app `name` and its instances, if present.
    pub fn apply_remove_app(&mut self, name: &str) {
        let Some(mut app) = self.apps.remove(name) else {
            return;
        };
        self.names.remove(name);
        self.book.set_due(&mut app, Millis::MAX);
        for slot in &app.slots {
            self.book.counts[slot.status.ix()] -= 1;
        }
        if self.book.scanning.as_deref() == Some(name) {
            self.book.scanning = None;
        }
        self.book.changed.push(app.name.clone());
        self.book.events.push(Event::AppRemoved { app: app.name });
    }

    /// Stores instance `state.id` of `app` exactly as given (the app is
    /// created if absent), with the event its change makes: added, replaced
    /// (another address or metadata, or back to `Starting`), up, down, out of
    /// service; none if only `last_renewal` changed. Returns whether what a
    /// read answers changed. The caller sets the index.
    pub fn apply_instance(&mut self, app: &str, state: Stored<'_>, now: Millis) -> bool {
        self.apply_app(app, now);
        let Some(app) = self.apps.get_mut(app) else {
            return false;
        };
        let book = &mut self.book;
        let metadata = state.metadata.filter(|m| !m.is_empty()).cloned();
        let Some(&pos) = app.ids.get(state.id) else {
            let added = app.add(book, state);
            book.events.push(added);
            return true;
        };
        let slot = &mut app.slots[pos];
        slot.last_renewal = state.last_renewal;
        let moved = *slot.ip != *state.ip || slot.port != state.port;
        let old = app.metadata.get(&slot.id).cloned();
        let remeta = old != metadata;
        let before = slot.status;
        if !moved && !remeta && before == state.status {
            return false;
        }
        if moved {
            slot.ip = Ip::new(state.ip);
            slot.port = state.port;
        }
        if remeta {
            match &metadata {
                Some(m) => app.metadata.insert(slot.id.clone(), m.clone()),
                None => app.metadata.remove(&slot.id),
            };
        }
        book.restate(before, state.status);
        restate(&mut app.counts, before, state.status);
        slot.status = state.status;
        let (name, id) = (app.name.clone(), slot.id.clone());
        book.events.push(match state.status {
            _ if moved || remeta || (state.status == Status::Starting) => Event::InstanceReplaced {
                app: name,
                id,
                ip: slot.ip.clone(),
                port: slot.port,
            },
            Status::Up => Event::InstanceUp { app: name, id },
            Status::Down => Event::InstanceDown { app: name, id },
            Status::OutOfService | Status::Starting => {
                Event::InstanceOutOfService { app: name, id }
            }
        });
        true
    }

    /// Removes instance `id` of `app`, if present; returns whether it was.
    pub fn apply_remove_instance(&mut self, app: &str, id: &str) -> bool {
        let periods = self.periods;
        let Some(app) = self.apps.get_mut(app) else {
            return false;
        };
        let Some(&pos) = app.ids.get(id) else {
            return false;
        };
        let removed = app.remove(pos, &mut self.book, periods);
        self.book.events.push(Event::InstanceRemoved {
            app: app.name.clone(),
            id: removed.id,
        });
        true
    }

    /// Sets an app's change index (a store's revision), telling its
    /// watchers if it changed.
    pub fn set_app_index(&mut self, app: &str, index: u64) {
        if let Some(app) = self.apps.get_mut(app) {
            if app.index != index {
                app.index = index;
                if self.book.changed.last() != Some(&app.name) {
                    self.book.changed.push(app.name.clone());
                }
            }
        }
    }

    /// Sets the global change index; it never decreases.
    pub fn set_index(&mut self, index: u64) {
        self.book.index = self.book.index.max(index);
    }

    /// A heartbeat's time, shown as `lastRenewal`, changing nothing else.
    pub fn touch(&mut self, app: &str, id: &str, last_renewal: Millis) {
        if let Some(app) = self.apps.get_mut(app) {
            if let Some(&pos) = app.ids.get(id) {
                app.slots[pos].last_renewal = last_renewal;
            }
        }
    }

    /// The state of app `name` as stored, if it is.
    pub fn app_state(&self, name: &str) -> Option<AppState> {
        self.apps.get(name).map(App::state)
    }

    /// Instance `id` of `app` as stored (expired or not), if it is.
    pub fn stored(&self, app: &str, id: &str) -> Option<Stored<'_>> {
        let app = self.apps.get(app)?;
        let slot = app.slots.get(*app.ids.get(id)?)?;
        Some(app.stored(slot))
    }

    /// Visits a bounded part of what is stored, for a snapshot written in
    /// steps, and says whether the snapshot is complete: about `budget`
    /// units (one per instance, eight per app), the position kept in
    /// `cursor`. Apps go in name order, each app before its instances.
    ///
    /// The caller records every change made between steps (the data
    /// directory's log): what a snapshot misses or sees twice because of a
    /// change must be in that log. The one miss a change could cause without
    /// being named is a slot moved by a removal (`swap_remove` moves the last
    /// slot into the hole); so an app's slots are visited from the last
    /// down: a slot moved is one already visited, into a place yet to be.
    pub fn snapshot_step(
        &self,
        cursor: &mut SnapshotCursor,
        budget: usize,
        visit: &mut dyn FnMut(Item<'_>),
    ) -> bool {
        let budget = budget.max(1);
        let mut spent = 0;
        while spent < budget {
            let Some((name, epoch, left)) = &mut cursor.scan else {
                spent += APP_COST;
                let from = match &cursor.after {
                    Some(name) => Bound::Excluded(&**name),
                    None => Bound::Unbounded,
                };
                let Some(app) = self
                    .names
                    .range::<str, _>((from, Bound::Unbounded))
                    .next()
                    .and_then(|name| self.apps.get(name))
                else {
                    *cursor = SnapshotCursor::default();
                    return true;
                };
                cursor.after = Some(app.name.clone());
                visit(Item::App(&app.name, app.state()));
                cursor.scan = Some((app.name.clone(), app.epoch, app.slots.len()));
                continue;
            };
            let Some(app) = self.apps.get(&**name).filter(|app| app.epoch == *epoch) else {
                // Removed (or removed and created again) since: logged.
                cursor.scan = None;
                continue;
            };
            *left = (*left).min(app.slots.len());
            while spent < budget && *left > 0 {
                *left -= 1;
                spent += 1;
                visit(Item::Instance(&app.name, app.stored(&app.slots[*left])));
            }
            if *left == 0 {
                cursor.scan = None;
            }
        }
        false
    }

    /// Puts app `name` back as saved (created if absent, its instances
    /// kept if present), due to be settled at `now`: loading a data
    /// directory. The index is not raised: see [`Registry::raise_index`].
    pub fn load_app(&mut self, name: &str, state: AppState, now: Millis) {
        if !self.apps.contains_key(name) {
            let name: Arc<str> = Arc::from(name);
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            self.apps
                .insert(name.clone(), App::new(name.clone(), now, epoch));
            self.names.insert(name);
        }
        let Some(app) = self.apps.get_mut(name) else {
            return;
        };
        app.index = state.index;
        app.gone_at = state.gone_at;
        app.empty_since = if app.slots.is_empty() {
            Some(state.empty_since.unwrap_or(now))
        } else {
            None
        };
        self.book.set_due(app, now);
    }

    /// Puts instances back as saved (each an [`InstanceView`] of its stored
    /// status and renewal, its id's allocation kept), each replacing one of
    /// the same id: loading a data directory. The app
    /// must have been loaded (else [`Error::NoSuchApp`]). Its tables are
    /// sized once and each instance costs one hash (a million load in a
    /// fraction of a second).
    pub fn load_instances(
        &mut self,
        app: &str,
        saved: impl ExactSizeIterator<Item = InstanceView>,
        now: Millis,
    ) -> Result<(), Error> {
        let book = &mut self.book;
        let app = self.apps.get_mut(app).ok_or(Error::NoSuchApp)?;
        app.slots.reserve(saved.len());
        app.ids.reserve(saved.len());
        for saved in saved {
            let status = saved.status;
            let id = match app.ids.entry(saved.id) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    let slot = &mut app.slots[*e.get()];
                    book.counts[slot.status.ix()] -= 1;
                    app.counts[slot.status.ix()] -= 1;
                    slot.ip = saved.ip;
                    slot.port = saved.port;
                    slot.status = status;
                    slot.last_renewal = saved.last_renewal;
                    slot.id.clone()
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    let id = e.key().clone();
                    e.insert(app.slots.len());
                    app.slots.push(Slot {
                        id: id.clone(),
                        ip: saved.ip,
                        last_renewal: saved.last_renewal,
                        port: saved.port,
                        status,
                    });
                    id
                }
            };
            book.counts[status.ix()] += 1;
            app.counts[status.ix()] += 1;
            match saved.metadata.filter(|m| !m.is_empty()) {
                Some(m) => {
                    app.metadata.insert(id, m);
                }
                None if !app.metadata.is_empty() => {
                    app.metadata.remove(&id);
                }
                None => {}
            }
            app.empty_since = None;
        }
        book.set_due(app, now);
        Ok(())
    }

    fn live_app(&self, name: &str, now: Millis) -> Result<&App, Error> {
        self.apps
            .get(name)
            .filter(|app| !app.expired(now, self.periods))
            .ok_or(Error::NoSuchApp)
    }

    fn live_app_mut<'a>(
        apps: &'a mut HashMap<Arc<str>, App>,
        periods: Periods,
        name: &str,
        now: Millis,
    ) -> Result<&'a mut App, Error> {
        apps.get_mut(name)
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
    const P: Periods = Periods::DEFAULT;
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

    fn metadata(pairs: &str) -> Option<Arc<Metadata>> {
        let map: Metadata = pairs
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Arc::new(map))
    }

    fn events(reg: &mut Registry) -> String {
        let (mut apps, mut events) = (Vec::new(), Vec::new());
        reg.drain_changes(&mut apps, &mut events);
        let mut events: Vec<String> = events.iter().map(event).collect();
        events.sort();
        if events.is_empty() {
            "-".to_owned()
        } else {
            events.join(" ")
        }
    }

    /// Runs one command of a script against `reg` and describes the outcome.
    fn run(reg: &mut Registry, now: Millis, cmd: &str, args: &[&str]) -> String {
        let all = StatusSet::ALL;
        let out = match (cmd, args) {
            ("create", [app]) => show(reg.create_app(app, now), |e| event(&e)),
            ("register", [app, id, ip, port, rest @ ..]) => {
                let port = port.parse().expect("port in script");
                let meta = rest.first().and_then(|m| metadata(m));
                show(reg.register(app, id, ip, port, meta, now), |e| event(&e))
            }
            ("renew", [app, id]) => show(reg.renew(app, id, now), maybe),
            ("out", [app, id]) => show(reg.take_out_of_service(app, id, now), maybe),
            ("get", [app, id]) => show(reg.instance(app, id, now), |i| {
                let at = i.last_renewal - T0;
                let meta = i.metadata.map_or(String::new(), |m| format!(" {m:?}"));
                format!("{} {}:{} @{at}{meta}", status(i.status), i.ip, i.port)
            }),
            ("list", [app]) => show(reg.app(app, now, all, None), |a| list(&a.expect("a view"))),
            ("apps", []) => {
                let (apps, _) = reg.apps(now, all, None).expect("a view");
                let apps: Vec<String> = apps.iter().map(list).collect();
                apps.join(" ")
            }
            ("index", [app]) => show(reg.app(app, now, all, None), |a| {
                a.map_or(0, |a| a.index).to_string()
            }),
            ("index", []) => reg.apps(now, all, None).map_or(0, |(_, i)| i).to_string(),
            ("counts", []) => format!(
                "{} apps {} instances",
                reg.app_count(),
                reg.instance_count()
            ),
            ("statuses", []) => {
                let c = reg.counts();
                format!(
                    "{} apps {} starting {} up {} down {} out",
                    c.apps, c.starting, c.up, c.down, c.out_of_service
                )
            }
            ("summary", []) => {
                let (apps, _) = reg.summary(now, None).expect("a summary");
                let apps: Vec<String> = apps
                    .iter()
                    .map(|a| format!("{}:{:?}", a.name, a.counts))
                    .collect();
                apps.join(" ")
            }
            ("due", []) => reg
                .next_due()
                .map_or("never".to_owned(), |at| (at - T0).to_string()),
            ("sweep", []) => {
                events(reg);
                let (mut cursor, mut stats) = (SweepCursor::default(), SweepStats::default());
                assert!(reg.sweep_step(now, &mut cursor, usize::MAX, &mut stats, Millis::MAX));
                return events(reg);
            }
            ("tick", []) => {
                events(reg);
                let (mut cursor, mut stats) = (SweepCursor::default(), SweepStats::default());
                assert!(reg.settle_due_step(now, &mut cursor, usize::MAX, &mut stats));
                return events(reg);
            }
            _ => panic!("unknown script command {cmd} {args:?}"),
        };
        // Events of settles done by reads are not part of a step's outcome.
        events(reg);
        out
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
            counts_agree(&reg, line);
        }
    }

    /// Each app's counters are its slots' stored statuses, and add up to
    /// the registry's.
    #[track_caller]
    fn counts_agree(reg: &Registry, step: &str) {
        let mut sum = [0; 4];
        for app in reg.apps.values() {
            let mut own = [0; 4];
            for slot in &app.slots {
                own[slot.status.ix()] += 1;
            }
            assert_eq!(app.counts, own, "{}'s counts after `{step}`", app.name);
            for (s, n) in sum.iter_mut().zip(own) {
                *s += n;
            }
        }
        assert_eq!(reg.book.counts, sum, "the registry's counts after `{step}`");
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
    fn a_late_heartbeat_never_moves_last_renewal_backwards() {
        // A heartbeat whose time was read before it waited on the lock
        // comes after a later one: its time is older, and is ignored.
        check_web("2_000 renew web a => up:web/a \n 1_500 renew web a => none \n 2_001 get web a => up 10.0.0.1:80 @2000");
        check_web("2_000 renew web a => up:web/a \n 1_500 renew web a => none \n 92_001 get web a => down 10.0.0.1:80 @2000");
        // Down since 91_001 by the later one: an older time does not raise it.
        check_web("1_000 renew web a => up:web/a \n 95_000 renew web a => up:web/a \n 94_000 renew web a => none \n 95_001 get web a => up 10.0.0.1:80 @95000");
    }

    #[test]
    fn a_second_delete_does_not_extend_an_out_of_service_life() {
        check_web("5 out web a => out:web/a \n 8 out web a => none \n 9 get web a => out-of-service 10.0.0.1:80 @5");
        // Deleting again and again keeps the first expiry.
        check_web("5 out web a => out:web/a \n 600_000 out web a => none \n 600_006 get web a => NoSuchInstance");
    }

    #[test]
    fn out_of_service() {
        check_web("5 out web a => out:web/a \n 6 get web a => out-of-service 10.0.0.1:80 @5");
        check_web("5 out web a => out:web/a \n 6 renew web a => OutOfService");
        check_web("5 out web a => out:web/a \n 6 renew web a => OutOfService \n 7 get web a => out-of-service 10.0.0.1:80 @5");
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
             601_001 sweep => removed:web/a \n 601_001 list web => web[]",
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
             600_000 counts => 1 apps 0 instances \n 600_001 register db x 10.0.0.1 80 => NoSuchApp
             600_001 counts => 1 apps 0 instances \n 600_001 tick => -
             600_499 tick => - \n 600_500 tick => app-removed:db
             600_500 counts => 0 apps 0 instances",
        );
        // (The ticker leaves an app it settled alone for RESCAN: the sweep
        // at 600_000 settled it, so the tick finds it at 600_500. Reads, like
        // the registration above, were exact all along.)
        // A read settles it: the app is gone from storage as from the answer.
        check(
            "0 create db => app-created:db \n 600_001 list db => NoSuchApp \n 600_001 apps =>
             600_001 counts => 0 apps 0 instances",
        );
        // An expired app is created afresh, and lives its full period again.
        check(
            "0 create db => app-created:db \n 600_001 create db => app-created:db
             1_200_001 list db => db[] \n 1_200_001 sweep => - \n 1_200_002 list db => NoSuchApp",
        );
        // Empty since its last instance expired (at 600_001), not since
        // creation, and not since whenever a sweep, tick or read noticed.
        for noticed in [
            "600_001 sweep",
            "660_000 sweep",
            "1_199_000 tick",
            "900_000 list web",
        ] {
            check_web(&format!(
                "{noticed} => {} \n 1_200_001 list web => web[]
                 1_200_002 list web => NoSuchApp \n 1_200_002 create web => app-created:web",
                if noticed.ends_with("list web") {
                    "web[]"
                } else {
                    "removed:web/a"
                }
            ));
        }
        check_web("1_200_002 list web => NoSuchApp");
        check_web("1_200_002 tick => app-removed:web removed:web/a \n 1_200_002 counts => 0 apps 0 instances");
        // A registration makes an app non-empty; its emptiness dates from
        // the expiry of the last instance, whenever it was removed.
        check(
            "0 create db => app-created:db \n 500_000 register db x 10.0.0.1 80 => added:db/x@10.0.0.1:80
             1_200_000 list db => db[] \n 1_700_001 list db => db[]
             1_700_002 list db => NoSuchApp",
        );
        // With two instances, from the later expiry.
        check_web(
            "100_000 register web b 10.0.0.1 81 => added:web/b@10.0.0.1:81
             1_000_000 tick => removed:web/a removed:web/b \n 1_300_001 list web => web[]
             1_300_002 list web => NoSuchApp",
        );
    }

    #[test]
    fn change_index() {
        // Made by the app's creation (2) and the registration (3).
        check_web("1 index web => 3 \n 1 index => 3");
        // A status change changes it; a plain heartbeat does not.
        check_web("1_000 renew web a => up:web/a \n 1_000 index web => 4 \n 2_000 renew web a => none \n 2_000 index web => 4");
        // Up to down by time, as soon as a read can see it, once.
        check_web("1_000 renew web a => up:web/a \n 91_000 index web => 4 \n 91_001 index web => 5 \n 91_002 index => 5");
        check_web(
            "1_000 renew web a => up:web/a \n 91_001 tick => down:web/a \n 91_001 index web => 5",
        );
        // Back up.
        check_web("1_000 renew web a => up:web/a \n 91_001 renew web a => up:web/a \n 91_002 index web => 5");
        // Out of service, once.
        check_web("5 out web a => out:web/a \n 6 index web => 4 \n 7 out web a => none \n 8 index web => 4");
        // Re-registration: unchanged when it changes nothing but the time;
        // changed by another address, status or metadata.
        check_web("1 register web a 10.0.0.1 80 => replaced:web/a@10.0.0.1:80 \n 2 index web => 3");
        check_web("1 register web a 10.0.0.1 80 zone=eu => replaced:web/a@10.0.0.1:80 \n 2 index web => 4
                   3 register web a 10.0.0.1 80 zone=eu => replaced:web/a@10.0.0.1:80 \n 4 index web => 4
                   5 register web a 10.0.0.1 80 zone=us => replaced:web/a@10.0.0.1:80 \n 6 index web => 5
                   7 register web a 10.0.0.1 80 => replaced:web/a@10.0.0.1:80 \n 8 index web => 6");
        check_web("1 renew web a => up:web/a \n 2 register web a 10.0.0.1 80 => replaced:web/a@10.0.0.1:80 \n 3 index web => 5");
        check_web("1 out web a => out:web/a \n 2 register web a 10.0.0.2 80 => replaced:web/a@10.0.0.2:80 \n 3 index web => 5");
        // Removal by time.
        check_web("600_000 index web => 3 \n 600_001 index web => 4");
        // Another app's change moves the list's index, not this app's.
        check_web(
            "1 create db => app-created:db \n 2 index web => 3 \n 2 index => 4 \n 2 index db => 4",
        );
        // Refusals change nothing.
        check_web("1 register web a 10.0.0.9 80 => InstanceExists \n 1 create web => AppExists \n 2 index => 3");
        // An app's removal moves the list's index.
        check("0 create db => app-created:db \n 1 index => 2 \n 600_001 index => 3 \n 600_001 apps =>");
    }

    #[test]
    fn due_times() {
        // A new instance: due at its expiry; the empty app's own due time
        // (earlier) stays a valid lower bound.
        check("0 create db => app-created:db \n 0 due => 600001 \n 5 register db x 10.0.0.1 80 => added:db/x@10.0.0.1:80 \n 5 due => 600001");
        check_web("0 due => 600001 \n 600_001 tick => removed:web/a \n 600_001 due => 1200002");
        // A heartbeat that makes it up lowers it; a plain one does not touch it.
        check_web("1_000 renew web a => up:web/a \n 1_000 due => 91001 \n 2_000 renew web a => none \n 2_000 due => 91001");
        // When it comes, the tick finds nothing to do and sets it exactly.
        check_web("1_000 renew web a => up:web/a \n 2_000 renew web a => none \n 91_001 tick => - \n 91_001 due => 92001");
        check_web(
            "1_000 renew web a => up:web/a \n 92_001 tick => down:web/a \n 92_001 due => 601001",
        );
        // Out of service: due at its expiry.
        check_web("1_000 renew web a => up:web/a \n 2_000 out web a => out:web/a \n 91_001 tick => - \n 91_001 due => 602001");
        // An app removed has none.
        check("0 create db => app-created:db \n 600_001 tick => app-removed:db \n 600_001 due => never");
    }

    #[test]
    fn counts_by_status() {
        check_web(
            "0 statuses => 1 apps 1 starting 0 up 0 down 0 out
             0 register web b 10.0.0.1 81 => added:web/b@10.0.0.1:81 \n 0 register web c 10.0.0.1 82 => added:web/c@10.0.0.1:82
             1 renew web a => up:web/a \n 1 renew web b => up:web/b \n 2 out web c => out:web/c
             3 statuses => 1 apps 0 starting 2 up 0 down 1 out
             50_000 renew web b => none \n 91_001 tick => down:web/a
             91_001 statuses => 1 apps 0 starting 1 up 1 down 1 out
             91_002 renew web a => up:web/a \n 91_002 statuses => 1 apps 0 starting 2 up 0 down 1 out
             91_003 register web c 10.0.0.1 82 => replaced:web/c@10.0.0.1:82
             91_004 statuses => 1 apps 1 starting 2 up 0 down 0 out
             1_000_000 tick => removed:web/a removed:web/b removed:web/c
             1_000_000 statuses => 1 apps 0 starting 0 up 0 down 0 out",
        );
    }

    /// Each app's counts by status, as a summary reads them, follow every
    /// change of a status (time's too) and add up to the registry's.
    #[test]
    fn summaries_count_each_app_by_status() {
        check_web(
            "0 create db => app-created:db \n 0 summary => db:[0, 0, 0, 0] web:[1, 0, 0, 0]
             0 register web b 10.0.0.1 81 => added:web/b@10.0.0.1:81 \n 0 register db x 10.0.0.9 5432 => added:db/x@10.0.0.9:5432
             1 renew web a => up:web/a \n 2 out web b => out:web/b
             3 summary => db:[1, 0, 0, 0] web:[0, 1, 0, 1]
             91_001 summary => db:[1, 0, 0, 0] web:[0, 0, 1, 1]
             91_002 renew web a => up:web/a \n 91_003 register web b 10.0.0.1 81 => replaced:web/b@10.0.0.1:81
             91_004 summary => db:[1, 0, 0, 0] web:[1, 1, 0, 0]
             600_001 summary => db:[0, 0, 0, 0] web:[1, 0, 1, 0]
             1_200_002 summary => web:[0, 0, 0, 0]",
        );
        let mut reg = Registry::new(P);
        reg.create_app("web", T0).unwrap();
        reg.register("web", "a", "10.0.0.1", 80, None, T0).unwrap();
        let (summary, index) = reg.summary(T0, None).expect("a summary");
        assert_eq!(
            (summary[0].index, index),
            (reg.apps["web"].index, reg.index())
        );
        assert_eq!(reg.summary(T0, Some(index)), None, "a watch waits");
    }

    #[test]
    fn metadata_is_kept_replaced_and_dropped_with_its_instance() {
        check_web(
            "1 register web b 10.0.0.2 80 zone=eu,v=1 => added:web/b@10.0.0.2:80
             2 get web b => starting 10.0.0.2:80 @1 {\"v\": \"1\", \"zone\": \"eu\"}
             2 get web a => starting 10.0.0.1:80 @0
             3 register web b 10.0.0.2 80 zone=us => replaced:web/b@10.0.0.2:80
             4 get web b => starting 10.0.0.2:80 @3 {\"zone\": \"us\"}
             5 register web b 10.0.0.2 80 => replaced:web/b@10.0.0.2:80
             6 get web b => starting 10.0.0.2:80 @5",
        );
        let mut reg = Registry::new(P);
        reg.create_app("web", T0).unwrap();
        let meta = Some(Arc::new(Metadata::from([("k".into(), "v".into())])));
        reg.register("web", "a", "10.0.0.1", 80, meta, T0).unwrap();
        assert_eq!(reg.apps["web"].metadata.len(), 1);
        let (mut cursor, mut stats) = (SweepCursor::default(), SweepStats::default());
        assert!(reg.settle_due_step(T0 + 600_001, &mut cursor, 10, &mut stats));
        assert_eq!((stats.removed, reg.apps["web"].metadata.len()), (1, 0));
    }

    /// Registers `n` instances `{prefix}-{i}` on one of a few ips at `now`.
    fn fill(reg: &mut Registry, app: &str, prefix: &str, n: usize, now: Millis) -> Vec<Arc<str>> {
        (0..n)
            .map(|i| {
                let id = format!("{prefix}-{i}");
                let ip = format!("10.0.{}.1", i % 3);
                let added = reg.register(app, &id, &ip, 8080, None, now);
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
            let done = reg.sweep_step(now, &mut cursor, budget, &mut stats, Millis::MAX);
            reg.drain_changes(&mut Vec::new(), &mut events);
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
    fn a_pass_copies_no_names_and_sees_apps_created_after_its_position() {
        let mut reg = Registry::new(P);
        for name in ["b", "d"] {
            reg.create_app(name, T0).unwrap();
            fill(&mut reg, name, name, 10, T0);
        }
        let now = T0 + 600_001;
        let (mut cursor, mut stats) = (SweepCursor::default(), SweepStats::default());
        // The first step starts "b" and examines a few of its slots only.
        assert!(!reg.sweep_step(now, &mut cursor, 10, &mut stats, Millis::MAX));
        assert_eq!(stats.checked, 2);
        // Created meanwhile: "a" is behind the pass, "c" ahead of it.
        for name in ["a", "c"] {
            reg.create_app(name, T0).unwrap();
            fill(&mut reg, name, name, 5, T0);
        }
        while !reg.sweep_step(now, &mut cursor, 4, &mut stats, Millis::MAX) {}
        assert_eq!(stats.checked, 10 + 5 + 10);
        assert_eq!(stats.removed, 25);
        assert_eq!(reg.instance_count(), 5);
    }

    #[test]
    fn a_listing_settles_an_app_the_ticker_left_alone_for_rescan() {
        let periods = Periods {
            down_after: 100,
            evict_after: 600_000,
        };
        let mut reg = Registry::new(periods);
        reg.create_app("web", T0).unwrap();
        reg.register("web", "a", "10.0.0.1", 80, None, T0).unwrap();
        reg.renew("web", "a", T0).unwrap();
        // A full pass settles "web" at +50: the ticker leaves it until +550.
        let (mut cursor, mut stats) = (SweepCursor::default(), SweepStats::default());
        while !reg.sweep_step(T0 + 50, &mut cursor, 4096, &mut stats, Millis::MAX) {}
        let (_, before) = reg.apps(T0 + 50, StatusSet::ALL, None).unwrap();
        // At +200 "a" reads down: the listing's index says so too.
        let (views, after) = reg.apps(T0 + 200, StatusSet::ALL, None).unwrap();
        assert_eq!(views[0].instances[0].status, Status::Down);
        assert!(after > before, "index {before} -> {after}");
        assert_eq!(views[0].index, after);
    }

    /// Issue 13, item 8: the first step of a pass used to copy the name of
    /// every app into its cursor (O(apps) under the lock: 51 ms with a
    /// million apps). A copy shows as one more reference to each name.
    #[test]
    fn a_step_copies_no_app_names() {
        let mut reg = Registry::new(P);
        for i in 0..1000 {
            let name = format!("app-{i:04}");
            reg.create_app(&name, T0).unwrap();
            fill(&mut reg, &name, "i", 1, T0);
        }
        let (views, _) = reg.apps(T0, StatusSet::ALL, None).unwrap();
        let refs = |views: &[AppView]| -> Vec<usize> {
            views.iter().map(|v| Arc::strong_count(&v.name)).collect()
        };
        let before = refs(&views);
        let now = T0 + 600_001;
        let (mut full, mut due) = (SweepCursor::default(), SweepCursor::default());
        let mut stats = SweepStats::default();
        assert!(!reg.sweep_step(now, &mut full, 10, &mut stats, Millis::MAX));
        assert!(!reg.settle_due_step(now, &mut due, 10, &mut stats));
        let grown = refs(&views)
            .iter()
            .zip(&before)
            .filter(|(after, before)| after > before)
            .count();
        // Each step starts at most two apps (a budget of 10, eight an app)
        // and may keep their names; the old first step kept all 1,000.
        assert!(grown <= 4, "{grown} app names copied by two steps");
    }

    #[test]
    fn a_full_pass_skips_apps_settled_within_its_period() {
        let mut reg = Registry::new(P);
        for name in ["a", "b"] {
            reg.create_app(name, T0).unwrap();
            fill(&mut reg, name, name, 10, T0);
        }
        reg.renew("a", "a-0", T0 + 1).unwrap();
        let now = T0 + 90_002;
        let (mut cursor, mut stats) = (SweepCursor::default(), SweepStats::default());
        // The ticker settles "a" (a-0 went down); "b" is not due.
        assert!(reg.settle_due_step(now, &mut cursor, 100, &mut stats));
        assert_eq!((stats.checked, stats.marked_down), (10, 1));
        let mut stats = SweepStats::default();
        assert!(reg.sweep_step(now + 5, &mut cursor, 100, &mut stats, now - 1));
        assert_eq!(stats.checked, 10, "only b");
        let mut stats = SweepStats::default();
        assert!(reg.sweep_step(now + 9, &mut cursor, 100, &mut stats, now - 1));
        assert_eq!(stats.checked, 0, "both settled since");
        assert!(reg.sweep_step(now + 9, &mut cursor, 100, &mut stats, now + 4));
        assert_eq!(stats.checked, 10, "a settled before");
    }

    /// App `big` with 100 instances, all expired at the `now` returned, and
    /// a stepped scan that has spent a budget of 17 on it (not done yet):
    /// the registry, `now`, and the scan's cursor and stats.
    fn big_app_scan_begun() -> (Registry, Millis, SweepCursor, SweepStats) {
        let mut reg = Registry::new(P);
        reg.create_app("big", T0).unwrap();
        fill(&mut reg, "big", "big", 100, T0);
        let now = T0 + 600_001;
        let (mut cursor, mut stats) = (SweepCursor::default(), SweepStats::default());
        assert!(!reg.settle_due_step(now, &mut cursor, 17, &mut stats));
        (reg, now, cursor, stats)
    }

    #[test]
    fn a_read_that_settles_an_app_makes_a_stepped_scan_of_it_moot() {
        let (mut reg, now, mut cursor, mut stats) = big_app_scan_begun();
        assert_eq!(stats.removed, 9);
        let view = reg.app("big", now, StatusSet::ALL, None).unwrap().unwrap();
        assert!(view.instances.is_empty());
        assert_eq!(reg.instance_count(), 0);
        while !reg.settle_due_step(now, &mut cursor, 10, &mut stats) {}
        assert_eq!(stats.removed, 9);
        // Empty since its instances expired (T0 + 600_001): gone one period later.
        assert_eq!(reg.next_due(), Some(T0 + 1_200_002));
    }

    #[test]
    fn a_list_read_settles_the_app_a_stepped_scan_is_in() {
        let (mut reg, now, _, _) = big_app_scan_begun();
        let before = reg.index();
        let (views, index) = reg.apps(now, StatusSet::ALL, None).unwrap();
        assert!(views[0].instances.is_empty());
        assert_eq!(reg.instance_count(), 0);
        // The index answered is that of the settled view.
        assert!(index > before);
        assert_eq!(reg.apps(now, StatusSet::ALL, Some(index)), None);
    }

    #[test]
    fn registrations_during_a_pass_are_safe() {
        let mut reg = Registry::new(P);
        reg.create_app("web", T0).unwrap();
        fill(&mut reg, "web", "old", 50, T0);
        let now = T0 + 600_001;
        let (mut cursor, mut stats) = (SweepCursor::default(), SweepStats::default());
        let mut calls = 0;
        while !reg.settle_due_step(now, &mut cursor, 3, &mut stats) {
            calls += 1;
            reg.register("web", &format!("new-{calls}"), "10.9.9.9", 1, None, now)
                .unwrap();
        }
        assert_eq!(stats.removed, 50);
        assert_eq!(reg.instance_count(), calls);
        let view = reg.app("web", now, StatusSet::ALL, None).unwrap().unwrap();
        assert_eq!(view.instances.len(), calls);
        // The registrations' deadlines were kept: the first is due next.
        assert_eq!(reg.next_due(), Some(now + 600_001));
    }

    /// A fleet that heartbeats on time, driven for ten simulated minutes as
    /// the ticker drives the registry (`sweeper.rs`): settles due apps half
    /// a second after their due time, a full pass every minute skipping what
    /// was settled within it. Returns the slots examined.
    fn ticker_work_for_a_healthy_fleet(n: u64) -> usize {
        const PERIOD: Millis = 30_000;
        const END: Millis = 600_000;
        const STEP: Millis = 100;
        let mut reg = Registry::new(P);
        for a in 0..8 {
            reg.create_app(&format!("app{a}"), T0).unwrap();
        }
        let ids: Vec<(String, String)> = (0..n)
            .map(|i| (format!("app{}", i % 8), format!("i-{i}")))
            .collect();
        for (app, id) in &ids {
            reg.register(app, id, "10.0.0.1", 80, None, T0).unwrap();
        }
        let (mut next_full, mut wake) = (T0 + 60_000, T0 + 1000);
        let mut stats = SweepStats::default();
        for t in (T0..T0 + END).step_by(STEP as usize) {
            // Instance k renews at phase k * PERIOD / n of every period.
            let from = (t - T0) % PERIOD;
            let lo = (from * n).div_ceil(PERIOD);
            let hi = ((from + STEP) * n).div_ceil(PERIOD).min(n);
            for k in lo..hi {
                let (app, id) = &ids[k as usize];
                let at = t - from + k * PERIOD / n;
                assert!(reg.renew(app, id, at).is_ok());
            }
            while wake <= t + STEP {
                let now = wake;
                let mut cursor = SweepCursor::default();
                while !reg.settle_due_step(now, &mut cursor, 4096, &mut stats) {}
                if now >= next_full {
                    while !reg.sweep_step(now, &mut cursor, 4096, &mut stats, now - 60_000) {}
                    next_full = now + 60_000;
                }
                let due = reg.next_due().unwrap_or(Millis::MAX);
                wake = (due + 500).min(next_full).min(now + 1000).max(now + 10);
            }
        }
        let counts = reg.counts();
        assert_eq!((counts.up, counts.down), (n as usize, 0));
        stats.checked
    }

    #[test]
    fn a_healthy_fleet_costs_the_ticker_no_more_than_a_sweep_a_minute() {
        // The old sweeper examined every slot once a minute: 10 passes.
        let n = 10_000;
        let checked = ticker_work_for_a_healthy_fleet(n);
        assert!(checked <= 10 * n as usize, "{checked} slots examined");
        assert!(checked >= 9 * n as usize, "{checked} slots examined");
    }

    #[test]
    fn a_decaying_fleet_is_scanned_about_once_a_second_and_settled_within_one() {
        // Heartbeats every 12 s against --down-after 1 s: some instance of the
        // app falls due every few milliseconds, for ever. The ticker (woken a
        // tenth of a second after the earliest due time, as sweeper.rs does)
        // must not scan the app back to back, and must still store every
        // `down` within a second of it becoming true.
        const PERIOD: Millis = 12_000;
        const END: Millis = 60_000;
        const STEP: Millis = 10;
        let n: u64 = 2_000;
        let periods = Periods {
            down_after: 1_000,
            evict_after: 600_000,
        };
        let mut reg = Registry::new(periods);
        reg.create_app("web", T0).unwrap();
        let ids: Vec<String> = (0..n).map(|i| format!("i-{i}")).collect();
        for id in &ids {
            reg.register("web", id, "10.0.0.1", 80, None, T0).unwrap();
        }
        let mut wake = T0 + 1000;
        let mut stats = SweepStats::default();
        let mut renewed: Vec<Option<Millis>> = vec![None; n as usize];
        let mut passes = 0;
        for t in (T0..T0 + END).step_by(STEP as usize) {
            let from = (t - T0) % PERIOD;
            let lo = (from * n).div_ceil(PERIOD);
            let hi = ((from + STEP) * n).div_ceil(PERIOD).min(n);
            for k in lo..hi {
                let at = t - from + k * PERIOD / n;
                assert!(reg.renew("web", &ids[k as usize], at).is_ok());
                renewed[k as usize] = Some(at);
            }
            while wake <= t + STEP {
                let now = wake;
                let mut cursor = SweepCursor::default();
                let before = stats.checked;
                while !reg.settle_due_step(now, &mut cursor, 4096, &mut stats) {}
                passes += usize::from(stats.checked > before);
                // Whatever became `down` more than a second ago is stored.
                let late = renewed
                    .iter()
                    .flatten()
                    .filter(|&&r| r + periods.down_after + 1_000 < now)
                    .count();
                assert!(reg.counts().down >= late, "at +{} ms", now - T0);
                let due = reg.next_due().unwrap_or(Millis::MAX);
                wake = (due + 100).min(now + 1000).max(now + 10);
            }
        }
        let seconds = (END / 1000) as usize;
        assert!(passes <= 2 * seconds, "{passes} passes in {seconds} s");
        assert!(
            stats.checked <= 2 * n as usize * seconds,
            "{} slots examined in {seconds} s",
            stats.checked
        );
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

    /// Every instance a snapshot in steps of `budget` visits, as `app/id`.
    fn snapshot_in_steps(
        reg: &mut Registry,
        budget: usize,
        mut between: impl FnMut(&mut Registry, usize),
    ) -> Vec<String> {
        let mut cursor = SnapshotCursor::default();
        let mut seen = Vec::new();
        for step in 0.. {
            let done = reg.snapshot_step(&mut cursor, budget, &mut |item| {
                if let Item::Instance(app, s) = item {
                    seen.push(format!("{app}/{}", s.id));
                }
            });
            if done {
                break;
            }
            between(reg, step);
        }
        seen
    }

    #[test]
    fn a_snapshot_in_steps_visits_every_instance_once() {
        let mut reg = Registry::new(P);
        reg.create_app("web", T0).unwrap();
        reg.create_app("db", T0).unwrap();
        fill(&mut reg, "web", "w", 100, T0);
        fill(&mut reg, "db", "d", 10, T0);
        let mut seen = snapshot_in_steps(&mut reg, 7, |_, _| {});
        seen.sort();
        let mut want: Vec<String> = (0..100)
            .map(|i| format!("web/w-{i}"))
            .chain((0..10).map(|i| format!("db/d-{i}")))
            .collect();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_removal_between_steps_makes_a_snapshot_miss_no_instance_that_stays() {
        // Removals move the last slot into the hole: visited from the last
        // down, the moved one was seen already (or is seen twice), never
        // missed. Expire the first slots (renewed earliest) mid-snapshot.
        let mut reg = Registry::new(P);
        reg.create_app("web", T0).unwrap();
        for i in 0..50u64 {
            let id = format!("i{i}");
            reg.register("web", &id, "10.0.0.1", 80, None, T0 + i)
                .unwrap();
        }
        let later = T0 + P.evict_after + 10;
        let seen = snapshot_in_steps(&mut reg, 5, |reg, step| {
            if step == 2 {
                let view = reg
                    .app("web", later, StatusSet::ALL, None)
                    .unwrap()
                    .unwrap();
                assert_eq!(view.instances.len(), 40);
            }
        });
        for i in 10..50 {
            assert!(seen.contains(&format!("web/i{i}")), "i{i} missed: {seen:?}");
        }
    }

    #[test]
    fn a_loaded_instance_reads_as_saved() {
        let mut reg = Registry::new(P);
        let state = AppState {
            index: 42,
            empty_since: None,
            gone_at: 0,
        };
        reg.load_app("web", state, T0);
        let saved = |id: &str, status, last_renewal, metadata| InstanceView {
            id: Arc::from(id),
            ip: Ip::new("10.0.0.1"),
            port: 80,
            status,
            last_renewal,
            metadata,
        };
        let batch = vec![
            saved("a", Status::Up, T0 - 100_000, metadata("k=v")),
            saved("b", Status::OutOfService, T0 - 1, None),
        ];
        reg.load_instances("web", batch.into_iter(), T0).unwrap();
        let again = vec![saved("b", Status::Starting, T0 - 2, None)];
        reg.load_instances("web", again.into_iter(), T0).unwrap();
        counts_agree(&reg, "loaded");
        let other = vec![saved("c", Status::Up, T0, None)];
        assert_eq!(
            reg.load_instances("db", other.into_iter(), T0),
            Err(Error::NoSuchApp)
        );
        let view = reg.app("web", T0, StatusSet::ALL, None).unwrap().unwrap();
        // `a` renewed 100 s ago reads down; the settle that found it is a change.
        assert_eq!(list(&view), "web[a:down b:starting]");
        counts_agree(&reg, "settled after loading");
        assert!(view.index > 1 && reg.index() == view.index);
        assert_eq!(view.instances[0].metadata, metadata("k=v"));
        assert_eq!(
            reg.counts(),
            Counts {
                apps: 1,
                starting: 1,
                up: 0,
                down: 1,
                out_of_service: 0
            }
        );
        let mut reg = Registry::new(P);
        reg.load_app("web", state, T0);
        assert_eq!(
            reg.app("web", T0, StatusSet::ALL, None)
                .unwrap()
                .unwrap()
                .index,
            42
        );
        assert!(reg
            .app("web", T0 + P.evict_after + 1, StatusSet::ALL, None)
            .is_err());
    }

    #[test]
    fn the_index_is_raised_never_lowered() {
        let mut reg = Registry::new(P);
        reg.raise_index(1_000);
        assert_eq!(reg.index(), 1_000);
        reg.raise_index(10);
        assert_eq!(reg.index(), 1_000);
        reg.create_app("web", T0).unwrap();
        assert_eq!(reg.index(), 1_001);
        let view = reg.app("web", T0, StatusSet::ALL, None).unwrap().unwrap();
        assert_eq!(view.index, 1_001);
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

    /// A mirror stores what it is given, at the index it is given, logs the
    /// events of the difference and never decays by itself.
    #[test]
    fn a_mirror_applies_states_with_explicit_indexes() {
        let mut reg = Registry::mirror();
        let mut apps = Vec::new();
        let mut events = Vec::new();
        let mut drain = |reg: &mut Registry| {
            apps.clear();
            events.clear();
            reg.drain_changes(&mut apps, &mut events);
            let names: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
            let events: Vec<String> = events.iter().map(event).collect();
            (names.join(","), events.join(" "))
        };
        let a = |status, ip, last_renewal| Stored {
            id: "a",
            ip,
            port: 80,
            status,
            metadata: None,
            last_renewal,
        };
        assert!(reg.apply_app("web", T0));
        assert!(!reg.apply_app("web", T0));
        reg.set_app_index("web", 7);
        reg.set_index(7);
        assert_eq!(drain(&mut reg), ("web".into(), "app-created:web".into()));
        assert!(reg.apply_instance("web", a(Status::Starting, "10.0.0.1", T0), T0));
        reg.set_app_index("web", 9);
        assert_eq!(
            drain(&mut reg),
            ("web".into(), "added:web/a@10.0.0.1:80".into())
        );
        // Only the time: no event, no change.
        assert!(!reg.apply_instance("web", a(Status::Starting, "10.0.0.1", T0 + 5), T0));
        assert_eq!(drain(&mut reg), (String::new(), String::new()));
        for (status, ip, want) in [
            (Status::Up, "10.0.0.1", "up:web/a"),
            (Status::Down, "10.0.0.1", "down:web/a"),
            (Status::OutOfService, "10.0.0.1", "out:web/a"),
            (Status::Starting, "10.0.0.2", "replaced:web/a@10.0.0.2:80"),
        ] {
            assert!(reg.apply_instance("web", a(status, ip, T0), T0));
            assert_eq!(drain(&mut reg).1, want);
            counts_agree(&reg, want);
        }
        // Years later nothing has decayed; the indexes are the ones given.
        let far = T0 + 10 * 365 * 86_400_000;
        let view = reg.app("web", far, StatusSet::ALL, None).unwrap().unwrap();
        assert_eq!((list(&view), view.index), ("web[a:starting]".into(), 9));
        assert_eq!(reg.apps(far, StatusSet::ALL, None).unwrap().1, 7);
        reg.set_index(3);
        assert_eq!(reg.index(), 7, "the index never decreases");
        reg.touch("web", "a", T0 + 42);
        assert_eq!(reg.instance("web", "a", far).unwrap().last_renewal, T0 + 42);
        assert!(reg.apply_remove_instance("web", "a"));
        assert!(!reg.apply_remove_instance("web", "a"));
        assert_eq!(reg.counts().starting, 0);
        // An instance of an app not yet seen creates it.
        assert!(reg.apply_instance("db", a(Status::Up, "10.0.0.3", T0), T0));
        assert_eq!(reg.counts().up, 1);
        counts_agree(&reg, "db/a up");
        drain(&mut reg);
        reg.apply_remove_app("db");
        assert_eq!(drain(&mut reg), ("db".into(), "app-removed:db".into()));
        assert_eq!(
            (reg.counts().up, reg.app_count(), reg.next_due()),
            (0, 1, None)
        );
    }
}
