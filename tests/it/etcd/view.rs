//! API.md Part 4 "What the etcd store must also hold": a view that never
//! falls behind silently, and no refusal from a lagging view. A server whose
//! watched member hangs (SIGSTOP: a GC pause, a stalled VM) says so on
//! `/healthz`, moves its watch and catches up; every read says how long ago
//! the view heard from etcd; a read never answers 404 for an instance that
//! another server has registered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::cluster::{installed, Cluster};
use super::{pair, send, with_web};
use crate::api::{app_body, check, instance_body};
use crate::support::{eventually, Conn, Reply};

/// The member whose client port `addr`'s `/metrics` names as watched.
fn watched(addr: SocketAddr, cluster: &Cluster) -> usize {
    let (_, text) = send(addr, "GET", "/metrics", "").expect("/metrics answers");
    let line = text
        .lines()
        .find(|l| l.starts_with("registro_store_watch_member{") && l.ends_with(" 1"))
        .unwrap_or_else(|| panic!("no watched member in /metrics:\n{text}"));
    (0..3)
        .find(|&i| line.contains(&format!("127.0.0.1:{}\"", cluster.client_port(i))))
        .unwrap_or_else(|| panic!("{line} names no member of the cluster"))
}

fn health(addr: SocketAddr) -> (u16, String) {
    let (status, body) = send(addr, "GET", "/healthz", "").expect("/healthz answers");
    (status, body.trim().to_string())
}

/// The milliseconds `Registro-Last-Contact` says on a read.
fn last_contact(r: &Reply) -> u64 {
    r.header("registro-last-contact")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a read without Registro-Last-Contact: {r:?}"))
}

#[test]
fn a_paused_watched_member_is_noticed_left_and_caught_up() {
    if !installed("a_paused_watched_member_is_noticed_left_and_caught_up") {
        return;
    }
    let mut cluster = Cluster::start("paused-watch");
    let (a, b) = pair(&cluster, "/paused/", &[]);
    let mut ca = with_web(a.addr);
    check(
        &mut ca,
        "POST",
        "/apps/web",
        &instance_body("i-1", "10.0.0.1", 80),
        201,
    );
    let read = check(&mut Conn::open(b.addr), "GET", "/apps/web", "", 200);
    assert!(last_contact(&read) < 60_000, "{read:?}");
    assert_eq!(health(b.addr), (200, r#"{"status":"ok"}"#.into()));
    let member = watched(b.addr, &cluster);
    cluster.freeze(member, true);
    let paused = Instant::now();
    // Noticed: `/healthz` turns 503, so a load balancer routes around it
    // (within 3 s on an idle machine; here, only that it happens).
    eventually(
        Duration::from_secs(20),
        "/healthz to say the view is behind",
        || {
            let (status, body) = health(b.addr);
            (status == 503 && body == r#"{"status":"view behind"}"#).then_some(())
        },
    );
    let noticed = paused.elapsed();
    // Moved, and caught up: healthy again while the member still hangs.
    eventually(Duration::from_secs(20), "the watch to move", || {
        (watched(b.addr, &cluster) != member).then_some(())
    });
    eventually(Duration::from_secs(20), "/healthz to be ok again", || {
        (health(b.addr).0 == 200).then_some(())
    });
    // A change through the other server is read on this one, not 404.
    let mut ca = Conn::open(a.addr);
    eventually(Duration::from_secs(20), "a registration through A", || {
        let r = ca.send("POST", "/apps/web", &instance_body("i-2", "10.0.0.2", 80));
        (r.status == 201).then_some(())
    });
    let read = check(&mut Conn::open(b.addr), "GET", "/apps/web/i-2", "", 200);
    assert!(last_contact(&read) < 60_000, "{read:?}");
    cluster.freeze(member, false);
    eprintln!("view behind noticed {noticed:?} after the pause");
}

#[test]
fn a_read_never_answers_404_for_what_another_server_registered() {
    if !installed("a_read_never_answers_404_for_what_another_server_registered") {
        return;
    }
    let cluster = Cluster::start("fresh-reads");
    let (a, b) = pair(&cluster, "/fresh/", &[]);
    let mut ca = Conn::open(a.addr);
    let mut cb = Conn::open(b.addr);
    for k in 0..40 {
        // A new app each time: its first read on B may precede B's watch.
        let app = format!("app-{k}");
        check(&mut ca, "POST", "/apps", &app_body(&app), 201);
        check(&mut cb, "GET", &format!("/apps/{app}"), "", 200);
        let id = format!("i-{k}");
        check(
            &mut ca,
            "POST",
            &format!("/apps/{app}"),
            &instance_body(&id, "10.0.0.1", 80),
            201,
        );
        check(&mut cb, "GET", &format!("/apps/{app}/{id}"), "", 200);
        // A heartbeat through B of what A registered: never 404 either.
        check(&mut cb, "PUT", &format!("/apps/{app}/{id}"), "", 204);
    }
    // What does not exist still answers 404, once the view has caught up.
    let r = cb.get("/apps/nothing-here");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(last_contact(&r) < 60_000, "{r:?}");
}
