//! API.md Part 4 "High availability on etcd", end to end with real
//! components: a three-member etcd cluster on loopback (`cluster.rs`) and
//! `registro` processes of the real binary on it with `--store etcd://...`.
//!
//! Parts 1 to 3 on two servers of one registry are the scenarios that run
//! on every store (`scenarios.rs`): changes through one server seen by
//! reads and watches on the other, with the same index, and time passing.
//! Here: SIGKILL of a server, of the etcd leader and of a follower while
//! heartbeats, registrations and reads run; etcd stopped altogether and
//! started again; a registry outliving its servers; a watch lost past a
//! compaction; a server whose periods differ from the registry's; a view
//! that never falls behind silently (`view.rs`); no false `down` and no
//! index reused (`liveness.rs`); no refusal from a lagging view and no 503
//! for a committed change (`writes.rs`); and the chaos test (`chaos.rs`,
//! `make chaos`), a short run of which is here.
//!
//! Without etcd installed these tests print one SKIP line, and fail when
//! `CI=true`. Time is waited for by polling with a deadline.

mod chaos;
pub mod cluster;
mod liveness;
mod view;
mod writes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{app_body, check, instance_body, register};
use crate::scenarios::{converged, lock, status_in, view};
use crate::support::{eventually, Conn, Proc};
use cluster::{installed, refused, Cluster};

/// Two `registro` servers on `cluster` under `prefix`, with `args` added.
fn pair(cluster: &Cluster, prefix: &str, args: &[&str]) -> (Proc, Proc) {
    (
        cluster.registro(prefix, args),
        cluster.registro(prefix, args),
    )
}

/// A connection to `addr`, through which the app `web` was created.
fn with_web(addr: SocketAddr) -> Conn {
    let mut c = Conn::open(addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    c
}

/// One request through a fresh connection: the status and the body, or
/// `None` when the server could not be reached or did not answer within 3 s.
fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    send_within(addr, method, path, body, Duration::from_secs(3))
}

fn send_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .middleware(crate::support::checked)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let result = crate::support::request(&agent, method, &url, body);
    let mut r = result.ok()?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    Some((status, text))
}

/// Waits until `/healthz` on `addr` answers `status`; its body.
fn healthz_turns(addr: SocketAddr, status: u16, deadline: Duration) -> String {
    eventually(deadline, &format!("/healthz {status}"), || {
        let (s, body) = send(addr, "GET", "/healthz", "")?;
        (s == status).then_some(body)
    })
}

/// The harness itself: a leader is found, a killed member comes back.
#[test]
fn the_cluster_elects_again_after_its_leader_is_killed() {
    if !installed("the_cluster_elects_again_after_its_leader_is_killed") {
        return;
    }
    let mut cluster = Cluster::start("harness");
    let first = cluster.leader();
    cluster.kill(first);
    let second = cluster.leader();
    assert_ne!(first, second);
    cluster.restart(first);
    assert!(cluster.leader() < 3);
}

/// Whom a test kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Registro,
    Leader,
    Follower,
    /// SIGSTOP of the leader: it hangs instead of refusing connections.
    FrozenLeader,
}

/// What the clients saw while something was killed.
#[derive(Default)]
struct Seen {
    /// Each heartbeat round: when it ended, and whether every instance's
    /// heartbeat succeeded (through one server or the other).
    rounds: Vec<(Instant, bool)>,
    /// Answers that must never come: 403/404 to a heartbeat, anything but
    /// 201/503 to a registration, a failed read on a survivor.
    wrong: Vec<String>,
    /// Registrations answered 201.
    acknowledged: Vec<String>,
    /// Heartbeating instances read with another status than `up`.
    not_up: BTreeMap<String, String>,
}

const FLEET: usize = 20;

/// Heartbeats (every instance, about every 100 ms), registrations (one
/// after another) and reads (both servers in turn) run on three threads
/// while `victim` is killed; then nothing acknowledged may be missing, no
/// heartbeating instance may have read anything but `up`, and heartbeats
/// must work again within 5 s of the kill.
fn survives(victim: Victim) {
    let test = format!("kill_{victim:?}").to_lowercase();
    let mut cluster = Cluster::start(&test);
    let prefix = format!("/{test}/");
    // A down instance within 6 s would be a real error: heartbeats must be
    // back within 5 s.
    let periods = ["--down-after", "6s", "--evict-after", "60s"];
    let (a, b) = pair(&cluster, &prefix, &periods);
    let addrs = [a.addr, b.addr];
    let mut c = Conn::open(a.addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    check(&mut c, "POST", "/apps", &app_body("new"), 201);
    let fleet: Vec<String> = (0..FLEET).map(|i| format!("i-{i}")).collect();
    for id in &fleet {
        register(&mut c, "web", id, "10.0.0.1", 80);
        check(&mut c, "PUT", &format!("/apps/web/{id}"), "", 204);
    }
    converged(&addrs, Duration::from_secs(3), "the fleet");

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    // The server killed, if it is one: its failures are expected.
    let dead: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let mut threads = Vec::new();
    {
        let (seen, stop, fleet) = (seen.clone(), stop.clone(), fleet.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut all = true;
                for (k, id) in fleet.iter().enumerate() {
                    // Each instance starts with a server of its own and
                    // moves on to the other when it fails, as the client does.
                    let path = format!("/registro/1.0/apps/web/{id}");
                    let mut ok = false;
                    for j in 0..2 {
                        match send(addrs[(k + j) % 2], "PUT", &path, "") {
                            Some((204, _)) => {
                                ok = true;
                                break;
                            }
                            Some((503, _)) | None => {}
                            Some((s, body)) => lock(&seen)
                                .wrong
                                .push(format!("heartbeat {id}: {s} {body}")),
                        }
                    }
                    all &= ok;
                }
                lock(&seen).rounds.push((Instant::now(), all));
                thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    {
        let (seen, stop) = (seen.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("n-{n}");
                let body = instance_body(&id, "10.0.0.2", 80);
                match send(addrs[n % 2], "POST", "/registro/1.0/apps/new", &body) {
                    Some((201, _)) => lock(&seen).acknowledged.push(id),
                    Some((503, _)) | None => {}
                    Some((s, body)) => lock(&seen).wrong.push(format!("register {id}: {s} {body}")),
                }
                n += 1;
            }
        }));
    }
    {
        let (seen, stop, dead) = (seen.clone(), stop.clone(), dead.clone());
        threads.push(thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let addr = addrs[n % 2];
                n += 1;
                match send(addr, "GET", "/registro/1.0/apps/web", "") {
                    Some((200, body)) => {
                        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                        let mut seen = lock(&seen);
                        for i in v["instances"].as_array().into_iter().flatten() {
                            let status = i["status"].as_str().unwrap_or_default();
                            if status != "up" {
                                let id = i["id"].as_str().unwrap_or_default();
                                seen.not_up.insert(id.to_owned(), status.to_owned());
                            }
                        }
                        let listed = v["instances"].as_array().map_or(0, Vec::len);
                        if listed != FLEET {
                            seen.wrong.push(format!("{listed} instances listed: {v}"));
                        }
                    }
                    _ if *lock(&dead) == Some(addr) => {}
                    other => lock(&seen).wrong.push(format!("read on {addr}: {other:?}")),
                }
                thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    // Some rounds before the kill.
    eventually(Duration::from_secs(10), "heartbeat rounds", || {
        (lock(&seen).rounds.iter().filter(|r| r.1).count() >= 3).then_some(())
    });
    let mut a = Some(a);
    let killed = Instant::now();
    let member = match victim {
        Victim::Registro => {
            *lock(&dead) = Some(addrs[0]);
            let mut a = a.take().expect("server a");
            a.signal("KILL");
            let _ = a.wait_exit(Duration::from_secs(5));
            None
        }
        Victim::Leader => {
            let i = cluster.leader();
            cluster.kill(i);
            Some(i)
        }
        Victim::Follower => {
            let i = (cluster.leader() + 1) % 3;
            cluster.kill(i);
            Some(i)
        }
        Victim::FrozenLeader => {
            let i = cluster.leader();
            cluster.freeze(i, true);
            Some(i)
        }
    };
    // Watch for longer than --down-after after the kill.
    eventually(
        Duration::from_secs(30),
        "8 s of load after the kill",
        || {
            let s = lock(&seen);
            let late = s
                .rounds
                .iter()
                .filter(|r| r.0 > killed + Duration::from_secs(8));
            (late.count() >= 3).then_some(())
        },
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a client thread");
    }
    let seen = Arc::try_unwrap(seen)
        .ok()
        .expect("no other owner")
        .into_inner()
        .expect("seen");
    assert!(seen.wrong.is_empty(), "{victim:?}: {:#?}", seen.wrong);
    assert!(
        seen.not_up.is_empty(),
        "{victim:?}: heartbeating instances read {:?}",
        seen.not_up
    );
    let back = seen
        .rounds
        .iter()
        .find(|(at, ok)| *at > killed && *ok)
        .map(|(at, _)| *at - killed);
    assert!(
        back.is_some_and(|d| d <= Duration::from_secs(5)),
        "{victim:?}: heartbeats worked again {back:?} after the kill"
    );
    let failed_late: Vec<Duration> = seen
        .rounds
        .iter()
        .filter(|(at, ok)| *at > killed + Duration::from_secs(5) && !ok)
        .map(|(at, _)| *at - killed)
        .collect();
    assert!(
        failed_late.is_empty(),
        "{victim:?}: heartbeat rounds failed at {failed_late:?} after the kill"
    );
    assert!(
        !seen.acknowledged.is_empty(),
        "{victim:?}: no registration acknowledged"
    );

    // Bring the victim back; every acknowledged change is on every server.
    let a = match (a, member) {
        (Some(a), Some(i)) if victim == Victim::FrozenLeader => {
            cluster.freeze(i, false);
            a
        }
        (Some(a), Some(i)) => {
            cluster.restart(i);
            a
        }
        _ => {
            let periods: Vec<&str> = periods.to_vec();
            cluster.registro(&prefix, &periods)
        }
    };
    let addrs = [a.addr, b.addr];
    let (view, _) = converged(&addrs, Duration::from_secs(5), "after the kill");
    let new = view["applications"]
        .as_array()
        .and_then(|apps| apps.iter().find(|app| app["name"] == "new"))
        .cloned()
        .unwrap_or(Value::Null);
    let present: BTreeSet<String> = new["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str().map(String::from))
        .collect();
    let lost: Vec<&String> = seen
        .acknowledged
        .iter()
        .filter(|id| !present.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{victim:?}: acknowledged registrations lost: {lost:?}"
    );
    println!(
        "{victim:?}: {} registrations acknowledged, heartbeats back after {back:?}",
        seen.acknowledged.len()
    );
}

/// A test a victim, each `survives` where etcd is installed.
macro_rules! survival {
    ($($test:ident: $victim:ident),* $(,)?) => {$(
        #[test]
        fn $test() {
            if installed(stringify!($test)) {
                survives(Victim::$victim);
            }
        }
    )*};
}

survival! {
    kill_9_of_a_registro_server_loses_nothing: Registro,
    kill_9_of_the_etcd_leader_loses_nothing: Leader,
    kill_9_of_an_etcd_follower_loses_nothing: Follower,
    a_hanging_etcd_leader_loses_nothing: FrozenLeader,
}

#[test]
fn without_etcd_changes_answer_503_reads_answer_and_it_recovers() {
    if !installed("without_etcd_changes_answer_503_reads_answer_and_it_recovers") {
        return;
    }
    let mut cluster = Cluster::start("outage");
    let (a, b) = pair(&cluster, "/outage/", &[]);
    let mut ca = with_web(a.addr);
    register(&mut ca, "web", "w", "10.0.0.1", 80);
    check(&mut ca, "PUT", "/apps/web/w", "", 204);
    let (before, _) = converged(&[a.addr, b.addr], Duration::from_secs(3), "before");

    cluster.kill_all();
    for p in [&a, &b] {
        let addr = p.addr;
        // /healthz says so within a few seconds, for a load balancer: first
        // perhaps that the view is behind (its watch hears nothing), then
        // that etcd is unreachable (no call succeeds).
        eventually(Duration::from_secs(10), "/healthz 503", || {
            let (s, body) = send(addr, "GET", "/healthz", "")?;
            let v: Value = serde_json::from_str(&body).expect("JSON");
            let status = v["status"].as_str().unwrap_or("").to_string();
            match status.as_str() {
                "store unreachable" | "view behind" => assert_eq!(s, 503, "{body}"),
                _ => assert_eq!((s, status.as_str()), (200, "ok"), "{body}"),
            }
            (status == "store unreachable").then_some(())
        });
        // Changes and heartbeats: 503 with a JSON error.
        for (method, path, body) in [
            ("POST", "/registro/1.0/apps", app_body("db")),
            (
                "POST",
                "/registro/1.0/apps/web",
                instance_body("x", "10.0.0.9", 80),
            ),
            ("PUT", "/registro/1.0/apps/web/w", String::new()),
            ("DELETE", "/registro/1.0/apps/web/w", String::new()),
        ] {
            let (s, text) = send_within(addr, method, path, &body, Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{method} {path}: no answer within 10 s"));
            assert_eq!(s, 503, "{method} {path}: {text}");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {path}: {text}"
            );
        }
        // Reads answer the last view.
        let (s, text) = send(addr, "GET", "/registro/1.0/apps/web/w", "").expect("a read");
        assert_eq!(s, 200, "{text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["status"], "up", "{v}");
        let (view, _) = view(addr);
        assert_eq!(view, before, "the last view changed while etcd was away");
    }

    // etcd comes back: both servers recover without a restart.
    cluster.restart_all();
    for p in [&a, &b] {
        let addr = p.addr;
        healthz_turns(addr, 200, Duration::from_secs(20));
        eventually(Duration::from_secs(10), "a heartbeat to work again", || {
            let (s, _) = send(addr, "PUT", "/registro/1.0/apps/web/w", "")?;
            (s == 204).then_some(())
        });
    }
    let mut cb = Conn::open(b.addr);
    check(&mut cb, "POST", "/apps", &app_body("db"), 201);
    let (view, _) = converged(&[a.addr, b.addr], Duration::from_secs(5), "after");
    let names: Vec<&str> = view["applications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["db", "web"], "{view}");
    assert_eq!(view["applications"][1]["instances"][0]["status"], "up");
}

#[test]
fn the_registry_outlives_every_server() {
    if !installed("the_registry_outlives_every_server") {
        return;
    }
    let cluster = Cluster::start("outlives");
    let (a, b) = pair(&cluster, "/outlives/", &[]);
    let mut ca = with_web(a.addr);
    check(&mut ca, "POST", "/apps", &app_body("db"), 201);
    let meta = json!({"id": "m", "ip": "10.0.0.3", "port": 81, "metadata": {"zone": "eu-1"}});
    check(&mut ca, "POST", "/apps/web", &meta.to_string(), 201);
    register(&mut ca, "web", "up", "10.0.0.1", 80);
    check(&mut ca, "PUT", "/apps/web/up", "", 204);
    register(&mut ca, "web", "out", "10.0.0.2", 80);
    check(&mut ca, "DELETE", "/apps/web/out", "", 204);
    let (before, index) = converged(&[a.addr, b.addr], Duration::from_secs(3), "before");
    for mut p in [a, b] {
        p.signal("KILL");
        let _ = p.wait_exit(Duration::from_secs(5));
    }
    // A new server on the same prefix serves the same registry, at an
    // index no lower, and takes heartbeats of what was up.
    let c = cluster.registro("/outlives/", &[]);
    let (after, later) = view(c.addr);
    assert_eq!(after, before);
    assert!(later >= index, "the index went back: {index} then {later}");
    let mut cc = Conn::open(c.addr);
    check(&mut cc, "PUT", "/apps/web/up", "", 204);
    check(&mut cc, "PUT", "/apps/web/out", "", 403);
    assert_eq!(view(c.addr), (before, later));
    // The store's own metrics (API.md Part 4).
    let r = cc.send_raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", false);
    for name in [
        "registro_store_requests_total{",
        "registro_store_request_duration_seconds",
    ] {
        assert!(r.body.contains(name), "no {name} in /metrics:\n{}", r.body);
    }
}

#[test]
fn a_server_that_lost_its_watch_past_a_compaction_catches_up() {
    if !installed("a_server_that_lost_its_watch_past_a_compaction_catches_up") {
        return;
    }
    let mut cluster = Cluster::start("compaction");
    // B knows only member 2: killing it cuts B's watch stream.
    let a = cluster.registro("/compaction/", &[]);
    let store = cluster.store_of(&[2]);
    let b = Proc::start(&["--store", &store, "--etcd-prefix", "/compaction/"]);
    let mut ca = with_web(a.addr);
    register(&mut ca, "web", "gone", "10.0.0.1", 80);
    converged(&[a.addr, b.addr], Duration::from_secs(3), "before");
    cluster.kill(2);
    // Changes B's stream never carried, then the history they were in goes.
    check(&mut ca, "POST", "/apps", &app_body("db"), 201);
    register(&mut ca, "web", "new", "10.0.0.2", 80);
    check(&mut ca, "PUT", "/apps/web/new", "", 204);
    check(&mut ca, "DELETE", "/apps/web/gone", "", 204);
    cluster.compact();
    // B still answers reads meanwhile, with what it last saw.
    let (s, _) = send(b.addr, "GET", "/registro/1.0/apps/web/gone", "").expect("a read");
    assert_eq!(s, 200);
    cluster.restart(2);
    let (view, _) = converged(&[a.addr, b.addr], Duration::from_secs(10), "after");
    let web = &view["applications"][1];
    assert_eq!(status_in(web, "new").as_deref(), Some("up"), "{view}");
    assert_eq!(
        status_in(web, "gone").as_deref(),
        Some("out-of-service"),
        "{view}"
    );
    // And B's own changes work again.
    let mut cb = Conn::open(b.addr);
    eventually(Duration::from_secs(10), "a change through B", || {
        (cb.post("/apps", &app_body("cache")).status == 201).then_some(())
    });
}

#[test]
fn a_server_with_other_periods_or_bad_store_flags_exits_1() {
    if !installed("a_server_with_other_periods_or_bad_store_flags_exits_1") {
        return;
    }
    let cluster = Cluster::start("periods");
    let prefix = "/periods/";
    let _first = cluster.registro(prefix, &["--down-after", "5s", "--evict-after", "60s"]);
    // The same periods: a second server joins.
    let _second = cluster.registro(prefix, &["--down-after", "5s", "--evict-after", "60s"]);
    let store = cluster.store();
    let with = |extra: &[&str]| -> Vec<String> {
        let mut args = cluster.args(prefix);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    for (args, needle) in [
        (
            with(&["--down-after", "6s", "--evict-after", "60s"]),
            "down-after",
        ),
        (
            with(&["--down-after", "5s", "--evict-after", "61s"]),
            "evict-after",
        ),
        // The defaults (90 s, 10 min) are other periods too.
        (with(&[]), "down-after|evict-after"),
        (
            with(&[
                "--data-dir",
                &cluster.root().join("data").display().to_string(),
            ]),
            "data-dir",
        ),
        (
            vec!["--store".to_string(), "etcd://".to_string()],
            "--store",
        ),
        (
            vec!["--store".to_string(), "redis://127.0.0.1:1".to_string()],
            "--store",
        ),
        (
            vec![
                "--store".to_string(),
                store.replace("etcd://", "etcd://127.0.0.1:notaport,"),
            ],
            "--store",
        ),
    ] {
        let (code, stderr) = refused(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line: {stderr}");
        assert!(
            needle.split('|').any(|n| lines[0].contains(n)),
            "{args:?}: {stderr}"
        );
    }
    // A mismatch says what the registry's periods are.
    let (_, stderr) = refused(&with(&["--down-after", "6s", "--evict-after", "60s"]));
    assert!(stderr.contains('5'), "{stderr}");
}
