//! API.md Part 4 "What the etcd store must also hold": no false `down`
//! while heartbeats flow, and no index reused, with real etcd members and
//! real servers.
//!
//! A false `down` is a read that answers `down` for an instance whose last
//! heartbeat was answered 204 less than `--down-after` minus one second
//! before the read was sent (the second covers the clocks of a loaded
//! machine: a heartbeat answered 204 is counted from its answer).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::api::{app_body, check, register};
use crate::support::{eventually, Conn, Proc};

use super::cluster::{installed, Cluster};
use super::lock;
use crate::scenarios::{converged, index, status_in};

/// A fleet's clients: one heartbeating every instance every second through
/// two servers in turn (a round-robin balancer), a reader on each server.
struct Fleet {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// What the clients share.
struct Shared {
    addrs: [SocketAddr; 2],
    ids: Vec<String>,
    down_after: Duration,
    /// A 503 is tried once more on the other server, as the client does
    /// (etcd electing a leader), instead of counting as wrong.
    elections: bool,
    /// Every instance's last 204 (`None` before its first).
    beats: Mutex<Vec<Option<Instant>>>,
    /// What must not have been answered: one line each.
    wrong: Mutex<Vec<String>>,
    rounds: AtomicUsize,
    reads: AtomicUsize,
    stop: AtomicBool,
}

impl Fleet {
    /// `fleet` instances registered through the first server; once every
    /// one has had its first 204 and two more rounds ran, the readers start.
    fn start(addrs: [SocketAddr; 2], fleet: usize, down_after: Duration, elections: bool) -> Fleet {
        let mut c = Conn::open(addrs[0]);
        check(&mut c, "POST", "/apps", &app_body("web"), 201);
        let ids: Vec<String> = (0..fleet).map(|i| format!("i-{i}")).collect();
        for id in &ids {
            register(&mut c, "web", id, "10.0.0.1", 80);
        }
        converged(&addrs, Duration::from_secs(5), "the fleet registered");
        let shared = Arc::new(Shared {
            addrs,
            ids,
            down_after,
            elections,
            beats: Mutex::new(vec![None; fleet]),
            wrong: Mutex::new(Vec::new()),
            rounds: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let beating = Arc::clone(&shared);
        let mut fleet = Fleet {
            threads: vec![thread::spawn(move || beating.heartbeat())],
            shared,
        };
        eventually(
            Duration::from_secs(30),
            "every instance's first 204",
            || {
                lock(&fleet.shared.beats)
                    .iter()
                    .all(Option::is_some)
                    .then_some(())
            },
        );
        // A steady state: the first round (every instance's first
        // heartbeat, a write each) may take longer than a second.
        fleet.wait_rounds(2);
        for k in 0..2 {
            let reading = Arc::clone(&fleet.shared);
            fleet
                .threads
                .push(thread::spawn(move || reading.read(reading.addrs[k])));
        }
        fleet
    }

    /// Waits until `n` more rounds of heartbeats have run.
    fn wait_rounds(&self, n: usize) {
        let from = self.shared.rounds.load(Ordering::Relaxed);
        eventually(Duration::from_secs(120), "rounds of heartbeats", || {
            (self.shared.rounds.load(Ordering::Relaxed) >= from + n).then_some(())
        });
    }

    /// Stops the clients; fails with the wrong answers they saw, if any.
    #[track_caller]
    fn check(self, what: &str) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a client thread");
        }
        let wrong = lock(&self.shared.wrong).clone();
        let rounds = self.shared.rounds.load(Ordering::Relaxed);
        let reads = self.shared.reads.load(Ordering::Relaxed);
        assert!(
            wrong.is_empty(),
            "{what}: {} wrong answers in {rounds} rounds of heartbeats and {reads} reads, first: {:#?}",
            wrong.len(),
            &wrong[..wrong.len().min(20)]
        );
        println!("{what}: {rounds} rounds of heartbeats, {reads} reads, no false down");
    }
}

impl Shared {
    /// Each round is one burst per server (the requests pipelined on one
    /// connection, as a client with many instances sends them), then a
    /// pause until the second is over.
    fn heartbeat(&self) {
        let mut conns = [Conn::open(self.addrs[0]), Conn::open(self.addrs[1])];
        let mut round = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            for (s, conn) in conns.iter_mut().enumerate() {
                let mine: Vec<usize> = (0..self.ids.len())
                    .filter(|k| (k + round) % 2 == s)
                    .collect();
                let mut burst = Vec::new();
                for &k in &mine {
                    let id = &self.ids[k];
                    burst.extend_from_slice(
                        format!("PUT /registro/1.0/apps/web/{id} HTTP/1.1\r\nHost: t\r\n\r\n")
                            .as_bytes(),
                    );
                }
                conn.write(&burst);
                let mut again = Vec::new();
                for &k in &mine {
                    let r = conn.read(false).expect("an answer to a heartbeat");
                    match r.status {
                        503 if self.elections => again.push(k),
                        _ => self.note(k, r.status, &r.body),
                    }
                }
                if !again.is_empty() {
                    let mut other = Conn::open(self.addrs[1 - s]);
                    for k in again {
                        let r = other.put(&format!("/apps/web/{}", self.ids[k]));
                        if r.status != 503 {
                            self.note(k, r.status, &r.body);
                        }
                    }
                }
            }
            round += 1;
            self.rounds.store(round, Ordering::Relaxed);
            if let Some(left) = Duration::from_secs(1).checked_sub(began.elapsed()) {
                thread::sleep(left);
            }
        }
    }

    fn note(&self, k: usize, status: u16, body: &str) {
        if status == 204 {
            lock(&self.beats)[k] = Some(Instant::now());
        } else {
            lock(&self.wrong).push(format!("heartbeat {}: {status} {body}", self.ids[k]));
        }
    }

    /// Reads `/apps/web` on `addr` about every 200 ms; an instance read
    /// `down` within `down_after` - 1 s of its last 204 (answered before the
    /// read was sent) is wrong.
    fn read(&self, addr: SocketAddr) {
        let mut c = Conn::open(addr);
        let position: BTreeMap<&str, usize> = self
            .ids
            .iter()
            .enumerate()
            .map(|(k, id)| (id.as_str(), k))
            .collect();
        while !self.stop.load(Ordering::Relaxed) {
            let before: Vec<Option<Instant>> = lock(&self.beats).clone();
            let sent = Instant::now();
            let r = c.get("/apps/web");
            self.reads.fetch_add(1, Ordering::Relaxed);
            if r.status != 200 {
                lock(&self.wrong).push(format!("read on {addr}: {} {}", r.status, r.body));
                continue;
            }
            for i in r.json()["instances"].as_array().into_iter().flatten() {
                if i["status"] != "down" {
                    continue;
                }
                let id = i["id"].as_str().unwrap_or_default();
                let Some(last) = position.get(id).and_then(|&k| before[k]) else {
                    continue;
                };
                let ago = sent.saturating_duration_since(last);
                if ago + Duration::from_secs(1) < self.down_after {
                    lock(&self.wrong).push(format!(
                        "{id} read down on {addr} {ago:?} after its last 204"
                    ));
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The steady state of a fleet behind a round-robin balancer: two servers,
/// 300 instances, one client heartbeating each every second through the
/// servers in turn, `--down-after 3s`. Every heartbeat must answer 204 and
/// no read may answer `down` for any of them.
#[test]
fn steady_heartbeats_through_two_servers_never_read_down() {
    if !installed("steady_heartbeats_through_two_servers_never_read_down") {
        return;
    }
    let cluster = Cluster::start("steady");
    // The leader first: the servers' calls go to it while it answers (a
    // member a server knows first is the one it uses).
    let leader = cluster.leader();
    let store = cluster.store_of(&[leader, (leader + 1) % 3, (leader + 2) % 3]);
    let flags = [
        "--store",
        &store,
        "--etcd-prefix",
        "/steady/",
        "--down-after",
        "3s",
        "--evict-after",
        "60s",
    ];
    let (a, b) = (Proc::start(&flags), Proc::start(&flags));
    let fleet = Fleet::start([a.addr, b.addr], 300, Duration::from_secs(3), false);
    fleet.wait_rounds(25);
    fleet.check("steady");
}

/// A paused etcd leader (SIGSTOP, a GC pause or a stalled VM, longer than
/// `--down-after`), then resumed: etcd 3.4.23's resumed old leader revokes
/// the leases it believes expired (etcd-io/etcd#15247). No heartbeating
/// instance may read `down` on either server, during the pause or after.
#[test]
fn a_paused_then_resumed_etcd_leader_marks_nobody_down() {
    if !installed("a_paused_then_resumed_etcd_leader_marks_nobody_down") {
        return;
    }
    let mut cluster = Cluster::start("paused");
    let (a, b) = super::pair(
        &cluster,
        "/paused/",
        &["--down-after", "3s", "--evict-after", "60s"],
    );
    let fleet = Fleet::start([a.addr, b.addr], 95, Duration::from_secs(3), true);
    let leader = cluster.leader();
    cluster.freeze(leader, true);
    // Longer than --down-after, and than every lease's TTL: the other two
    // elect a leader meanwhile.
    let paused = Instant::now();
    fleet.wait_rounds(5);
    eventually(Duration::from_secs(60), "a pause of 5 s", || {
        (paused.elapsed() >= Duration::from_secs(5)).then_some(())
    });
    cluster.freeze(leader, false);
    fleet.wait_rounds(8);
    fleet.check("a paused leader");
}

/// Every server stopped while an instance fell silent: the first server
/// started afterwards reads it `down`, at an index above the one it read
/// `up` at (the change that marks it `down` has a revision of its own), so
/// that a watch holding the old index wakes.
#[test]
fn down_after_every_server_stopped_comes_at_a_new_index() {
    if !installed("down_after_every_server_stopped_comes_at_a_new_index") {
        return;
    }
    let cluster = Cluster::start("reuse");
    let flags = ["--down-after", "2s", "--evict-after", "60s"];
    let mut a = cluster.registro("/reuse/", &flags);
    let mut c = Conn::open(a.addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "x", "10.0.0.1", 80);
    check(&mut c, "PUT", "/apps/web/x", "", 204);
    let r = check(&mut c, "GET", "/apps/web", "", 200);
    assert_eq!(status_in(&r.json(), "x").as_deref(), Some("up"));
    let up_at = index(&r);
    a.signal("KILL");
    let _ = a.wait_exit(Duration::from_secs(5));
    // No server runs while every lease a server kept in etcd expires.
    eventually(Duration::from_secs(30), "every lease to expire", || {
        (cluster.leases() == 0).then_some(())
    });
    let b = cluster.registro("/reuse/", &flags);
    // A watch holding the index `x` read up at wakes with it down.
    let mut w = Conn::open(b.addr);
    let r = w.get(&format!("/apps/web?index={up_at}&wait=8s"));
    assert_eq!(r.status, 200, "{}", r.body);
    let down_at = index(&r);
    assert_eq!(
        status_in(&r.json(), "x").as_deref(),
        Some("down"),
        "the watch of index {up_at} answered at {down_at}: {}",
        r.body
    );
    assert!(
        down_at > up_at,
        "x read down at index {down_at}, up at {up_at}"
    );
}

/// Behind a balancer that sends each heartbeat to the next of three
/// servers (each server sees an instance only every third heartbeat, once
/// per `--down-after`), heartbeats that change no status write nothing:
/// once every instance is up and has been seen by every server, etcd's
/// revision stays where it is. (Only a window in which every instance's
/// heartbeats came less than `--down-after` - 1 s apart counts: on a
/// machine too loaded for that, another window is tried.)
#[test]
fn heartbeats_spread_over_three_servers_write_nothing() {
    if !installed("heartbeats_spread_over_three_servers_write_nothing") {
        return;
    }
    const FLEET: usize = 30;
    let cluster = Cluster::start("spread");
    let flags = ["--down-after", "3s", "--evict-after", "60s"];
    let servers: Vec<Proc> = (0..3)
        .map(|_| cluster.registro("/spread/", &flags))
        .collect();
    let mut conns: Vec<Conn> = servers.iter().map(|p| Conn::open(p.addr)).collect();
    check(&mut conns[0], "POST", "/apps", &app_body("web"), 201);
    let ids: Vec<String> = (0..FLEET).map(|i| format!("i-{i}")).collect();
    for id in &ids {
        register(&mut conns[0], "web", id, "10.0.0.1", 80);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|p| p.addr).collect();
    converged(&addrs, Duration::from_secs(5), "the fleet registered");
    let mut last: Vec<Option<Instant>> = vec![None; FLEET];
    let mut round = 0;
    // One round: every instance's heartbeat through the next server; the
    // longest gap between two heartbeats of one instance.
    let mut beat = |conns: &mut Vec<Conn>| {
        let began = Instant::now();
        let mut gap = Duration::ZERO;
        for (k, id) in ids.iter().enumerate() {
            check(
                &mut conns[(k + round) % 3],
                "PUT",
                &format!("/apps/web/{id}"),
                "",
                204,
            );
            let now = Instant::now();
            if let Some(before) = last[k] {
                gap = gap.max(now - before);
            }
            last[k] = Some(now);
        }
        round += 1;
        if let Some(left) = Duration::from_secs(1).checked_sub(began.elapsed()) {
            thread::sleep(left);
        }
        gap
    };
    // Every instance up and seen by every server.
    for _ in 0..6 {
        beat(&mut conns);
    }
    let (writes, gap) = eventually(Duration::from_secs(120), "a steady window", || {
        let before = cluster.revision();
        let gap = (0..9).map(|_| beat(&mut conns)).max().unwrap_or_default();
        let writes = cluster.revision() - before;
        (gap + Duration::from_secs(1) < Duration::from_secs(3)).then_some((writes, gap))
    });
    assert_eq!(
        writes, 0,
        "{writes} writes in 9 rounds of {FLEET} heartbeats (gaps up to {gap:?})"
    );
}
