//! The server's counters and their Prometheus text exposition (format
//! 0.0.4), written by hand: a handful of fixed families need no metrics
//! library, and counting stays a relaxed atomic add on a fixed table.
//!
//! Label sets are bounded by construction: routes are templates
//! ([`Route`]), methods one of six ([`Method`]), status codes one of a fixed
//! list (anything else by its class, `5xx`), so no client can grow the
//! table.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Instances by status and the number of apps, as the registry reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Apps present.
    pub apps: u64,
    /// Instances registered without a heartbeat yet.
    pub starting: u64,
    /// Instances heartbeating.
    pub up: u64,
    /// Instances silent for more than `--down-after`.
    pub down: u64,
    /// Instances taken out of service.
    pub out_of_service: u64,
}

/// The route of a request as its template, never the raw path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/`: the dashboard.
    Dashboard,
    /// `/healthz`.
    Healthz,
    /// `/metrics`.
    Metrics,
    /// `/registro/1.0/apps`.
    Apps,
    /// `/registro/1.0/apps/{app}`.
    App,
    /// `/registro/1.0/apps/{app}/{id}`.
    Instance,
    /// `/registro/1.0/sd/prometheus`.
    SdPrometheus,
    /// `/registro/1.0/openapi.json`.
    OpenApi,
    /// Anything else (answered 404).
    Other,
}

const ROUTES: [Route; 9] = [
    Route::Dashboard,
    Route::Healthz,
    Route::Metrics,
    Route::Apps,
    Route::App,
    Route::Instance,
    Route::SdPrometheus,
    Route::OpenApi,
    Route::Other,
];

impl Route {
    /// The template of a request target (the query is ignored).
    pub fn of(target: &str) -> Route {
        let path = target.split(['?', '#']).next().unwrap_or("");
        match path {
            "/" => return Route::Dashboard,
            "/healthz" => return Route::Healthz,
            "/metrics" => return Route::Metrics,
            "/registro/1.0/sd/prometheus" | "/registro/1.0/sd/prometheus/" => {
                return Route::SdPrometheus
            }
            "/registro/1.0/openapi.json" | "/registro/1.0/openapi.json/" => return Route::OpenApi,
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/registro/1.0/apps") else {
            return Route::Other;
        };
        if rest.is_empty() || rest == "/" {
            return Route::Apps;
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Route::Other;
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        match rest.split('/').count() {
            1 => Route::App,
            2 => Route::Instance,
            _ => Route::Other,
        }
    }

    /// The label value.
    pub fn template(self) -> &'static str {
        match self {
            Route::Dashboard => "/",
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
            Route::Apps => "/registro/1.0/apps",
            Route::App => "/registro/1.0/apps/{app}",
            Route::Instance => "/registro/1.0/apps/{app}/{id}",
            Route::SdPrometheus => "/registro/1.0/sd/prometheus",
            Route::OpenApi => "/registro/1.0/openapi.json",
            Route::Other => "other",
        }
    }
}

/// The method label: the five the API uses, every other one is `other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Other,
}

const METHODS: [Method; 6] = [
    Method::Get,
    Method::Head,
    Method::Post,
    Method::Put,
    Method::Delete,
    Method::Other,
];

impl Method {
    fn of(method: &str) -> Method {
        match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other => "other",
        }
    }
}

/// The status codes counted one by one; any other is counted by its class.
const CODES: [u16; 21] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 409, 411, 413, 414, 415, 429, 431, 500, 501,
    503, 505,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const CODE_SLOTS: usize = CODES.len() + CLASSES.len();

fn code_slot(status: u16) -> usize {
    match CODES.iter().position(|&c| c == status) {
        Some(i) => i,
        None => CODES.len() + usize::from(status.clamp(100, 599) / 100 - 1),
    }
}

fn code_label(slot: usize) -> String {
    match CODES.get(slot) {
        Some(code) => code.to_string(),
        None => CLASSES[slot - CODES.len()].to_string(),
    }
}

/// Upper bounds of the duration histogram's buckets, in microseconds.
const BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000, 30_000_000,
];

#[derive(Default)]
struct Histogram {
    /// Observations per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, us: u64) {
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

/// What the data directory's saver last did, how often it failed, and since
/// when a change has waited for the disk: the store consults that before
/// taking a change (API.md Part 4: a change answered 2xx and unsaved for
/// more than [`NOT_SAVING_AFTER`] turns changes and `/healthz` to 503).
#[derive(Debug, Default)]
pub struct Saves {
    enabled: std::sync::atomic::AtomicBool,
    /// `[log, snapshot]`: microseconds and bytes of the last save.
    last_us: [AtomicU64; 2],
    last_bytes: [AtomicU64; 2],
    failures: AtomicU64,
    /// Monotonic ms of the oldest change recorded and not yet on disk (0:
    /// none). Set by the recorder, moved on by the saver, both under the
    /// data directory's buffer lock.
    unsaved_since: AtomicU64,
}

/// How long a change answered 2xx may wait for the disk before the data
/// directory counts as not saving.
pub const NOT_SAVING_AFTER: u64 = 1000;

/// The kind of a save: an append to the log, or a whole snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Save {
    /// Changes appended to the log and synced.
    Log,
    /// The whole registry written, synced and renamed into place.
    Snapshot,
}

impl Saves {
    /// Shows the families (a server with `--data-dir`).
    pub fn enable(&self) {
        self.enabled.store(true, Relaxed);
    }

    /// A save that succeeded.
    pub fn saved(&self, kind: Save, took: Duration, bytes: u64) {
        let i = kind as usize;
        self.last_us[i].store(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.last_bytes[i].store(bytes, Relaxed);
    }

    /// A save that failed (it is retried).
    pub fn failed(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// Saves that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// A change was recorded at `now` (monotonic ms): if everything before
    /// it was on disk, it is the oldest unsaved one.
    pub fn unsaved(&self, now: u64) {
        let _ = self
            .unsaved_since
            .compare_exchange(0, now.max(1), Relaxed, Relaxed);
    }

    /// What is on disk now: everything (`None`), or everything recorded
    /// before `oldest`.
    pub fn saved_but(&self, oldest: Option<u64>) {
        self.unsaved_since
            .store(oldest.map_or(0, |t| t.max(1)), Relaxed);
    }

    /// When the oldest change not yet on disk was recorded.
    pub fn oldest_unsaved(&self) -> Option<u64> {
        Some(self.unsaved_since.load(Relaxed)).filter(|&t| t != 0)
    }

    /// How long the oldest change not yet on disk has waited at `now`.
    pub fn unsaved_for(&self, now: u64) -> Option<u64> {
        match self.unsaved_since.load(Relaxed) {
            0 => None,
            since => Some(now.saturating_sub(since)),
        }
    }

    /// Whether every change has reached the disk within
    /// [`NOT_SAVING_AFTER`], at `now`.
    pub fn saving(&self, now: u64) -> bool {
        self.unsaved_for(now)
            .is_none_or(|waited| waited <= NOT_SAVING_AFTER)
    }

    fn render(&self, o: &mut String) {
        if !self.enabled.load(Relaxed) {
            return;
        }
        let kinds = ["log", "snapshot"];
        let name = "registro_data_dir_last_save_seconds";
        family(
            o,
            name,
            "gauge",
            "Time the last save to --data-dir took, by kind (log: changes appended and synced; snapshot: the whole registry).",
        );
        for (i, kind) in kinds.iter().enumerate() {
            let us = self.last_us[i].load(Relaxed);
            let _ = writeln!(o, "{name}{{kind=\"{kind}\"}} {}", seconds(us));
        }
        let name = "registro_data_dir_last_save_bytes";
        family(
            o,
            name,
            "gauge",
            "Bytes written by the last save to --data-dir, by kind.",
        );
        for (i, kind) in kinds.iter().enumerate() {
            sample(
                o,
                name,
                &format!("kind=\"{kind}\""),
                self.last_bytes[i].load(Relaxed),
            );
        }
        let name = "registro_data_dir_save_failures_total";
        family(
            o,
            name,
            "counter",
            "Saves to --data-dir that failed (each is retried).",
        );
        sample(o, name, "", self.failures());
        let now = crate::clock::now().mono;
        let name = "registro_data_dir_saving";
        family(
            o,
            name,
            "gauge",
            "1 while --data-dir saves every change within a second; 0 once a change answered 2xx has waited longer (changes and /healthz then answer 503).",
        );
        sample(o, name, "", u64::from(self.saving(now)));
        let name = "registro_data_dir_unsaved_seconds";
        family(
            o,
            name,
            "gauge",
            "How long the oldest change answered 2xx and not yet on disk has waited (0: none).",
        );
        // A change recorded this very millisecond reads 0.001: 0 means none.
        let waited = self.unsaved_for(now).map_or(0, |ms| ms.max(1));
        let _ = writeln!(o, "{name} {}", seconds(waited.saturating_mul(1000)));
    }
}

/// Shards of the counters: each thread counts into its own (threads are
/// dealt shards in turn), so two cores rarely write the same cache line.
const SHARDS: usize = 8;

/// One thread's share of every counter; gauges are kept as two counters
/// (opened, closed) so that each shard only ever adds.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    registrations: AtomicU64,
    heartbeats: AtomicU64,
    evictions: AtomicU64,
    connections_opened: AtomicU64,
    connections_closed: AtomicU64,
    connections_rejected: AtomicU64,
    watches_parked: AtomicU64,
    watches_unparked: AtomicU64,
    log_lines_dropped: AtomicU64,
    /// `[route][method][code slot]`.
    requests: [[[AtomicU64; CODE_SLOTS]; METHODS.len()]; ROUTES.len()],
    durations: [Histogram; ROUTES.len()],
}

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % SHARDS
    };
}

/// Every counter of the server. Shared as an `Arc`; every update is one to
/// three relaxed atomic adds into the calling thread's shard, so counting
/// costs a request nothing it would notice; a scrape sums the shards.
pub struct Metrics {
    shards: Box<[Shard]>,
    /// The data directory's saves (shown only with `--data-dir`).
    pub saves: Saves,
    /// Families kept by the rooms that count them (DNS queries, with
    /// `--dns-addr`), rendered after these.
    families: Mutex<Vec<Arc<dyn Family>>>,
    /// Unix seconds when the server started.
    started: f64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// A family of metrics that another room keeps and renders.
pub trait Family: Send + Sync {
    /// Its lines in the text exposition format.
    fn render(&self, o: &mut String);
}

impl Metrics {
    /// Shows `family` on every scrape from now on.
    pub fn add(&self, family: Arc<dyn Family>) {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(family);
    }

    /// Every counter at zero, the start time now.
    pub fn new() -> Metrics {
        let now = crate::clock::now();
        Metrics {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            saves: Saves::default(),
            families: Mutex::new(Vec::new()),
            // The wall time of the clock's origin, which is the process's
            // first clock reading: the start of the process, give or take.
            started: now
                .wall
                .saturating_sub(now.mono.saturating_sub(crate::clock::backdate()))
                as f64
                / 1000.0,
        }
    }

    fn shard(&self) -> &Shard {
        &self.shards[SHARD.with(|s| *s) % self.shards.len()]
    }

    /// The sum of one counter over the shards.
    fn total(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .fold(0, |sum, s| sum.wrapping_add(counter(s).load(Relaxed)))
    }

    /// An instance was registered (new or again).
    pub fn registered(&self) {
        self.shard().registrations.fetch_add(1, Relaxed);
    }

    /// The sweep removed `n` expired instances.
    pub fn evicted(&self, n: u64) {
        self.shard().evictions.fetch_add(n, Relaxed);
    }

    /// A log line could not be written (stderr did not keep up).
    pub fn log_line_dropped(&self) {
        self.shard().log_lines_dropped.fetch_add(1, Relaxed);
    }
}

// To be called by `api.rs` (`heartbeat` after a renewal succeeds) and by the
// connection layer (`request` once an answer is written, `connection_*` as
// connections are admitted, closed or refused, `watch_*` as watches are
// parked and answered); reached through `api.log().metrics()`.
impl Metrics {
    /// A heartbeat (renewal) was accepted.
    pub fn heartbeat(&self) {
        self.shard().heartbeats.fetch_add(1, Relaxed);
    }

    /// A request was answered: `status` after `elapsed` spent handling it
    /// (the handler's time; for a watch, its last handling, not its wait).
    /// A request refused before its method and target were read passes `""`
    /// for both (counted as method `other`, route `other`).
    pub fn request(&self, method: &str, target: &str, status: u16, elapsed: Duration) {
        let route = Route::of(target) as usize;
        let method = Method::of(method) as usize;
        let shard = self.shard();
        shard.requests[route][method][code_slot(status)].fetch_add(1, Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        shard.durations[route].observe(us);
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.shard().connections_opened.fetch_add(1, Relaxed);
    }

    /// An accepted connection was closed.
    pub fn connection_closed(&self) {
        self.shard().connections_closed.fetch_add(1, Relaxed);
    }

    /// A connection was refused (503) by `--max-connections`.
    pub fn connection_rejected(&self) {
        self.shard().connections_rejected.fetch_add(1, Relaxed);
    }

    /// A watch started waiting.
    pub fn watch_parked(&self) {
        self.shard().watches_parked.fetch_add(1, Relaxed);
    }

    /// A waiting watch was answered or dropped.
    pub fn watch_unparked(&self) {
        self.shard().watches_unparked.fetch_add(1, Relaxed);
    }
}

impl Metrics {
    /// The exposition of every family, `counts` for the registry's gauges.
    pub fn render(&self, counts: &Counts) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        family(o, "registro_apps", "gauge", "Applications present.");
        sample(o, "registro_apps", "", counts.apps);
        family(
            o,
            "registro_instances",
            "gauge",
            "Instances present, by status.",
        );
        for (status, n) in [
            ("starting", counts.starting),
            ("up", counts.up),
            ("down", counts.down),
            ("out-of-service", counts.out_of_service),
        ] {
            sample(o, "registro_instances", &format!("status=\"{status}\""), n);
        }
        // A gauge kept as two counters; a scrape between the two adds of
        // one thread's pair cannot read below zero.
        let open = self
            .total(|s| &s.connections_opened)
            .saturating_sub(self.total(|s| &s.connections_closed));
        let watches = self
            .total(|s| &s.watches_parked)
            .saturating_sub(self.total(|s| &s.watches_unparked));
        for (name, kind, help, value) in [
            (
                "registro_registrations_total",
                "counter",
                "Instance registrations accepted (new or again).",
                self.total(|s| &s.registrations),
            ),
            (
                "registro_heartbeats_total",
                "counter",
                "Heartbeats (renewals) accepted.",
                self.total(|s| &s.heartbeats),
            ),
            (
                "registro_evictions_total",
                "counter",
                "Instances removed after the eviction period without a heartbeat.",
                self.total(|s| &s.evictions),
            ),
            (
                "registro_connections_open",
                "gauge",
                "Client connections open.",
                open,
            ),
            (
                "registro_connections_rejected_total",
                "counter",
                "Connections refused with 503 because of --max-connections.",
                self.total(|s| &s.connections_rejected),
            ),
            (
                "registro_watches_waiting",
                "gauge",
                "Watch requests (?index=) waiting for a change.",
                watches,
            ),
            (
                "registro_log_lines_dropped_total",
                "counter",
                "Log lines dropped because stderr did not keep up.",
                self.total(|s| &s.log_lines_dropped),
            ),
        ] {
            family(o, name, kind, help);
            sample(o, name, "", value);
        }
        self.render_requests(o);
        self.saves.render(o);
        for f in self
            .families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            f.render(o);
        }
        family(
            o,
            "registro_build_info",
            "gauge",
            "The running version (always 1).",
        );
        sample(
            o,
            "registro_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            1,
        );
        process(o, self.started);
        out
    }

    fn render_requests(&self, o: &mut String) {
        let name = "registro_http_requests_total";
        family(
            o,
            name,
            "counter",
            "HTTP requests answered, by route template, method and status code.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (m, method) in METHODS.iter().enumerate() {
                for c in 0..CODE_SLOTS {
                    let n = self.total(|s| &s.requests[r][m][c]);
                    if n > 0 {
                        let labels = format!(
                            "route=\"{}\",method=\"{}\",code=\"{}\"",
                            route.template(),
                            method.label(),
                            code_label(c)
                        );
                        sample(o, name, &labels, n);
                    }
                }
            }
        }
        let name = "registro_http_request_duration_seconds";
        family(
            o,
            name,
            "histogram",
            "Time spent handling a request (a watch: its last handling, not its wait), by route template.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            let counts: Vec<u64> = (0..=BUCKETS_US.len())
                .map(|i| self.total(|s| &s.durations[r].buckets[i]))
                .collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let template = route.template();
            let mut cumulative = 0;
            for (i, n) in counts.iter().enumerate() {
                cumulative += n;
                let le = match BUCKETS_US.get(i) {
                    Some(&us) => seconds(us),
                    None => "+Inf".to_string(),
                };
                let labels = format!("route=\"{template}\",le=\"{le}\"");
                sample(o, &format!("{name}_bucket"), &labels, cumulative);
            }
            let labels = format!("route=\"{template}\"");
            let _ = writeln!(
                o,
                "{name}_sum{{{labels}}} {}",
                seconds(self.total(|s| &s.durations[r].sum_us))
            );
            sample(o, &format!("{name}_count"), &labels, cumulative);
        }
    }
}

/// Microseconds as decimal seconds, exactly (`0.00025`, `1`).
fn seconds(us: u64) -> String {
    let (whole, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(o: &mut String, name: &str, labels: &str, value: u64) {
    if labels.is_empty() {
        let _ = writeln!(o, "{name} {value}");
    } else {
        let _ = writeln!(o, "{name}{{{labels}}} {value}");
    }
}

/// The standard `process_*` families, from `/proc/self` (Linux); a family
/// whose source cannot be read is left out.
fn process(o: &mut String, started: f64) {
    if let Some(bytes) = resident_bytes() {
        family(
            o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        sample(o, "process_resident_memory_bytes", "", bytes);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        let n = dir.count().saturating_sub(1) as u64;
        family(
            o,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        sample(o, "process_open_fds", "", n);
    }
    if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        family(
            o,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
        );
        sample(o, "process_max_fds", "", limit);
    }
    if let Some(secs) = cpu_seconds() {
        family(
            o,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        let _ = writeln!(o, "process_cpu_seconds_total {secs}");
    }
    family(
        o,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    let _ = writeln!(o, "process_start_time_seconds {started:.3}");
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// User plus system time from `/proc/self/stat`, whose fields 14 and 15 are
/// in `USER_HZ` ticks, 100 per second on Linux.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields after its closing parenthesis, where field 3 starts.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_route(target: &str, expected: &str) {
        assert_eq!(Route::of(target).template(), expected, "{target}");
    }

    #[test]
    fn routes_are_templates() {
        check_route("/", "/");
        check_route("/?x=1", "/");
        check_route("/healthz", "/healthz");
        check_route("/metrics", "/metrics");
        check_route("/registro/1.0/apps", "/registro/1.0/apps");
        check_route("/registro/1.0/apps/", "/registro/1.0/apps");
        check_route("/registro/1.0/apps?index=3&wait=30s", "/registro/1.0/apps");
        check_route("/registro/1.0/apps/web", "/registro/1.0/apps/{app}");
        check_route(
            "/registro/1.0/apps/w%2Feb?status=up",
            "/registro/1.0/apps/{app}",
        );
        check_route(
            "/registro/1.0/apps/web/i-1",
            "/registro/1.0/apps/{app}/{id}",
        );
        check_route("/registro/1.0/apps/web/i-1/x", "other");
        check_route(
            "/registro/1.0/sd/prometheus?app=web&status=up",
            "/registro/1.0/sd/prometheus",
        );
        check_route(
            "/registro/1.0/sd/prometheus/",
            "/registro/1.0/sd/prometheus",
        );
        check_route("/registro/1.0/sd/prometheusx", "other");
        check_route("/registro/1.0/openapi.json", "/registro/1.0/openapi.json");
        check_route("/registro/1.0/appsx", "other");
        check_route("/etc/passwd", "other");
        check_route("*", "other");
    }

    #[test]
    fn label_sets_are_bounded() {
        let m = Metrics::new();
        m.request("BREW", "/coffee/1", 418, Duration::from_millis(3));
        m.request(
            "GET",
            "/registro/1.0/apps/a-unique-name",
            200,
            Duration::ZERO,
        );
        m.request(
            "PUT",
            "/registro/1.0/apps/web/i-9",
            204,
            Duration::from_secs(99),
        );
        let text = m.render(&Counts::default());
        assert!(
            text.contains(
                "registro_http_requests_total{route=\"other\",method=\"other\",code=\"4xx\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "registro_http_requests_total{route=\"/registro/1.0/apps/{app}\",method=\"GET\",code=\"200\"} 1"
        ));
        assert!(!text.contains("a-unique-name") && !text.contains("coffee"));
        assert!(text.contains(
            "registro_http_request_duration_seconds_bucket{route=\"other\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "registro_http_request_duration_seconds_bucket{route=\"/registro/1.0/apps/{app}/{id}\",le=\"30\"} 0"
        ));
        assert!(text.contains(
            "registro_http_request_duration_seconds_bucket{route=\"/registro/1.0/apps/{app}/{id}\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains(
            "registro_http_request_duration_seconds_sum{route=\"/registro/1.0/apps/{app}/{id}\"} 99\n"
        ));
    }

    #[test]
    fn gauges_and_counters() {
        let m = Metrics::new();
        m.registered();
        m.heartbeat();
        m.heartbeat();
        m.evicted(3);
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.connection_closed();
        m.connection_closed(); // never below zero
        m.watch_parked();
        let counts = Counts {
            apps: 2,
            starting: 1,
            up: 5,
            down: 0,
            out_of_service: 7,
        };
        let text = m.render(&counts);
        for line in [
            "registro_apps 2",
            "registro_instances{status=\"starting\"} 1",
            "registro_instances{status=\"up\"} 5",
            "registro_instances{status=\"down\"} 0",
            "registro_instances{status=\"out-of-service\"} 7",
            "registro_registrations_total 1",
            "registro_heartbeats_total 2",
            "registro_evictions_total 3",
            "registro_connections_open 0",
            "registro_watches_waiting 1",
            "# TYPE registro_http_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(100), "0.0001");
        assert_eq!(seconds(250_000), "0.25");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(1_500_001), "1.500001");
    }
}
