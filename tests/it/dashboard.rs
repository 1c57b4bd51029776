//! The API additions the dashboard reads: `GET /registro/1.0/apps?view=summary`
//! (each app's name, index and counts by status, without instances), plain
//! and as a watch, against the real server. The page itself is tested in a
//! real Chromium in `ops.rs`.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{app_body, check, register};
use crate::support::{eventually, start, Conn, Reply};

fn index(r: &Reply) -> u64 {
    r.header("registro-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Registro-Index in {:?}", r.headers))
}

fn counts(starting: u64, up: u64, down: u64, oos: u64) -> Value {
    json!({"starting": starting, "up": up, "down": down, "out-of-service": oos})
}

#[test]
fn summary_counts_each_app_by_status_without_instances() {
    let server = start();
    let mut c = Conn::open(server.local_addr());
    let empty = check(&mut c, "GET", "/apps?view=summary", "", 200);
    assert_eq!(empty.json(), json!({"applications": []}));
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    check(&mut c, "POST", "/apps", &app_body("db"), 201);
    for id in ["a", "b", "c"] {
        register(&mut c, "web", id, "10.0.0.1", 80);
    }
    check(&mut c, "PUT", "/apps/web/a", "", 204);
    check(&mut c, "DELETE", "/apps/web/c", "", 204);

    let summary = check(&mut c, "GET", "/apps?view=summary", "", 200);
    let list = check(&mut c, "GET", "/apps", "", 200);
    let app = check(&mut c, "GET", "/apps/web", "", 200);
    assert_eq!(summary.header("content-type"), Some("application/json"));
    // The list's index, each app's own index, sorted by name as the list.
    assert_eq!(index(&summary), index(&list));
    assert_eq!(
        summary.json(),
        json!({"applications": [
            {"name": "db", "index": index(&check(&mut c, "GET", "/apps/db", "", 200)),
             "total": 0, "counts": counts(0, 0, 0, 0)},
            {"name": "web", "index": index(&app), "total": 3, "counts": counts(1, 1, 0, 1)},
        ]}),
        "{}",
        summary.body
    );
    // A status filter of the list does not change what a summary counts;
    // `view=full` is the list; another view is refused in words.
    let filtered = check(&mut c, "GET", "/apps?view=summary&status=up", "", 200);
    assert_eq!(filtered.json(), summary.json());
    let full = check(&mut c, "GET", "/apps?view=full", "", 200);
    assert_eq!(full.json()["applications"][1]["instances"][0]["id"], "a");
    let bad = check(&mut c, "GET", "/apps?view=tiny", "", 400);
    assert!(
        bad.error().contains("unknown view \"tiny\""),
        "{}",
        bad.body
    );
    let bad = check(&mut c, "GET", "/apps?view=summary&index=x", "", 400);
    assert!(bad.error().contains("index must be"), "{}", bad.body);
    // HEAD and the methods of the list.
    check(&mut c, "HEAD", "/apps?view=summary", "", 200);
    check(&mut c, "PUT", "/apps?view=summary", "", 405);
}

#[test]
fn a_summary_watch_waits_for_a_change_of_any_app() {
    let server = start();
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "a", "10.0.0.1", 80);
    let seen = index(&check(&mut c, "GET", "/apps?view=summary", "", 200));

    // Nothing changes: answered at `wait` with the same index.
    let sent = Instant::now();
    let same = check(
        &mut c,
        "GET",
        &format!("/apps?view=summary&index={seen}&wait=300ms"),
        "",
        200,
    );
    assert_eq!(index(&same), seen);
    assert!(sent.elapsed() >= Duration::from_millis(300));

    // A heartbeat that makes `a` up wakes it, with the new counts.
    let watch = thread::spawn(move || {
        Conn::open(addr).get(&format!("/apps?view=summary&index={seen}&wait=30s"))
    });
    // The watch is parked once the server counts it.
    eventually(Duration::from_secs(5), "the watch parked", || {
        let r = c.send_raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", false);
        r.body
            .lines()
            .any(|l| l.trim() == "registro_watches_waiting 1")
            .then_some(())
    });
    check(&mut c, "PUT", "/apps/web/a", "", 204);
    let woken = watch.join().expect("the watch thread");
    assert_eq!(woken.status, 200);
    assert!(index(&woken) > seen);
    assert_eq!(
        woken.json()["applications"][0]["counts"],
        counts(0, 1, 0, 0)
    );
    // A plain heartbeat changes no index: a summary watch keeps waiting.
    let now = index(&woken);
    check(&mut c, "PUT", "/apps/web/a", "", 204);
    let again = check(
        &mut c,
        "GET",
        &format!("/apps?view=summary&index={now}&wait=200ms"),
        "",
        200,
    );
    assert_eq!(index(&again), now);
}
