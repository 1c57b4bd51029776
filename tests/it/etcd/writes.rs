//! API.md Part 4 "What the etcd store must also hold": no refusal from a
//! lagging view, and no 503 for a change etcd committed, with real etcd
//! members and real servers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use crate::api::{app_body, check, instance_body};
use crate::support::{Conn, Proc};

use super::cluster::{installed, Cluster};
use super::{lock, send_within};
use crate::scenarios::{converged, instance_in, status_in};

/// A server whose watch stream is on a member that hangs (SIGSTOP): a
/// registration through it is committed through another member, and is
/// answered 201, not 503, however long its view takes to have it; the same
/// registration sent again (a client retrying) is answered 201 too, not
/// 409; and both servers then read it.
#[test]
fn a_committed_change_is_never_answered_503() {
    if !installed("a_committed_change_is_never_answered_503") {
        return;
    }
    let mut cluster = Cluster::start("committed");
    let a = cluster.registro("/committed/", &[]);
    // B knows a follower first: its watch is opened there.
    let follower = (cluster.leader() + 1) % 3;
    let store = cluster.store_of(&[follower, (follower + 1) % 3, (follower + 2) % 3]);
    let b = Proc::start(&["--store", &store, "--etcd-prefix", "/committed/"]);
    let mut ca = Conn::open(a.addr);
    check(&mut ca, "POST", "/apps", &app_body("web"), 201);
    converged(&[a.addr, b.addr], Duration::from_secs(5), "the app");
    cluster.freeze(follower, true);
    let body = instance_body("x", "10.0.0.1", 80);
    for attempt in ["first", "again"] {
        let (status, text) = send_within(
            b.addr,
            "POST",
            "/registro/1.0/apps/web",
            &body,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("{attempt}: no answer within 30 s"));
        assert_eq!(status, 201, "{attempt}: {text}");
    }
    cluster.freeze(follower, false);
    let (view, _) = converged(&[a.addr, b.addr], Duration::from_secs(10), "after");
    assert_eq!(
        status_in(&view["applications"][0], "x").as_deref(),
        Some("starting"),
        "{view}"
    );
}

/// Under load, an instance registered through one server and heartbeated
/// at once through the other is never answered 404 (the other's view may
/// not have it yet: it reads etcd's current revision and waits for it
/// first). 32 clients at once, 16 instances each.
#[test]
fn an_instance_registered_elsewhere_is_never_refused_under_load() {
    if !installed("an_instance_registered_elsewhere_is_never_refused_under_load") {
        return;
    }
    const CLIENTS: usize = 32;
    const EACH: usize = 16;
    let (_cluster, a, b) = web_on_two("elsewhere");
    let wrong = Arc::new(Mutex::new(Vec::new()));
    let retried = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (wrong, retried) = (wrong.clone(), retried.clone());
            let addrs = [a.addr, b.addr];
            thread::spawn(move || {
                // Each client registers through one server and heartbeats
                // through the other, half of them each way.
                let (to, then) = (addrs[c % 2], addrs[1 - c % 2]);
                let mut reg = Conn::open(to);
                let mut beat = Conn::open(then);
                for i in 0..EACH {
                    let id = format!("c{c}-{i}");
                    let answered = |conn: &mut Conn, method: &str, path: &str, body: &str| {
                        for _ in 0..50 {
                            let r = conn.send(method, path, body);
                            if r.status != 503 {
                                return r.status;
                            }
                            retried.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(Duration::from_millis(100));
                        }
                        503
                    };
                    let registered = answered(
                        &mut reg,
                        "POST",
                        "/apps/web",
                        &instance_body(&id, "10.0.0.1", 80),
                    );
                    let beaten = answered(&mut beat, "PUT", &format!("/apps/web/{id}"), "");
                    if (registered, beaten) != (201, 204) {
                        lock(&wrong).push(format!("{id}: {registered} then {beaten}"));
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client");
    }
    let wrong = lock(&wrong).clone();
    assert!(wrong.is_empty(), "{wrong:#?}");
    let (view, _) = converged(&[a.addr, b.addr], Duration::from_secs(10), "after");
    let up = view["applications"][0]["instances"]
        .as_array()
        .map_or(0, |l| l.iter().filter(|i| i["status"] == "up").count());
    assert_eq!(up, CLIENTS * EACH, "{view}");
    println!(
        "{} instances registered through one server and up through the other; {} answers 503 retried",
        CLIENTS * EACH,
        retried.load(Ordering::Relaxed)
    );
}

/// Two servers asked at the same moment to register the same instance at
/// different addresses: one answers 201 and the other 409 (its compare
/// failed, and it was decided again from a view that has the other's),
/// never both 201 and never 503; both servers then read the address of the
/// 201. Sixteen such pairs at once, so that each server's calls to etcd
/// carry several changes, of which some fail their compares while the
/// others commit.
#[test]
fn the_same_instance_registered_through_two_servers_at_once_is_registered_once() {
    if !installed("the_same_instance_registered_through_two_servers_at_once_is_registered_once") {
        return;
    }
    const PAIRS: usize = 16;
    const EACH: usize = 16;
    let (_cluster, a, b) = web_on_two("once");
    // (instance, side, status): side 0 registers 10.0.0.1 through A, side 1
    // 10.0.0.2 through B.
    let answers = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..PAIRS)
        .flat_map(|p| {
            let together = Arc::new(Barrier::new(2));
            [(0, a.addr), (1, b.addr)].map(|(side, addr)| {
                let (together, answers) = (together.clone(), answers.clone());
                thread::spawn(move || {
                    let mut conn = Conn::open(addr);
                    for i in 0..EACH {
                        let id = format!("p{p}-{i}");
                        let ip = format!("10.0.0.{}", side + 1);
                        together.wait();
                        let r = conn.send("POST", "/apps/web", &instance_body(&id, &ip, 80));
                        lock(&answers).push((id, side, r.status));
                    }
                })
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client");
    }
    let (view, _) = converged(&[a.addr, b.addr], Duration::from_secs(10), "after");
    let answers = lock(&answers).clone();
    for p in 0..PAIRS {
        for i in 0..EACH {
            let id = format!("p{p}-{i}");
            let mut got: Vec<(u16, usize)> = answers
                .iter()
                .filter(|(x, _, _)| *x == id)
                .map(|(_, side, status)| (*status, *side))
                .collect();
            got.sort_unstable();
            let statuses: Vec<u16> = got.iter().map(|g| g.0).collect();
            assert_eq!(statuses, [201, 409], "{id}: {got:?}");
            let ip = format!("10.0.0.{}", got[0].1 + 1);
            let inst = instance_in(&view["applications"][0], &id);
            assert_eq!(
                inst.as_ref().and_then(|i| i["ip"].as_str()),
                Some(ip.as_str()),
                "{id}: {inst:?}"
            );
        }
    }
    let conflicts: f64 = [a.addr, b.addr]
        .iter()
        .filter_map(|addr| {
            crate::ops::metrics(*addr)
                .get(r#"registro_store_requests_total{op="txn",result="conflict"}"#)
                .copied()
        })
        .sum();
    println!(
        "{} instances registered at once through both servers, each once; {conflicts} calls met a failed compare",
        PAIRS * EACH
    );
}

/// A cluster and two servers over it (prefix `/NAME/`) that both read the
/// app `web`.
fn web_on_two(name: &str) -> (Cluster, Proc, Proc) {
    let cluster = Cluster::start(name);
    let (a, b) = super::pair(&cluster, &format!("/{name}/"), &[]);
    check(
        &mut Conn::open(a.addr),
        "POST",
        "/apps",
        &app_body("web"),
        201,
    );
    converged(&[a.addr, b.addr], Duration::from_secs(5), "the app");
    (cluster, a, b)
}
