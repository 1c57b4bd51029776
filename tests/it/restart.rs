//! Restarts (API.md Part 4): an index never reused, and `--data-dir`. Every
//! test runs the `registro` binary, stops it (SIGTERM) or kills it (SIGKILL)
//! and starts another on the same directory.

use std::time::{Duration, Instant};

use crate::support::{Conn, Proc, Reply};

/// The `Registro-Index` of a reply.
fn index(r: &Reply) -> u64 {
    r.header("registro-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Registro-Index in {r:?}"))
}

#[track_caller]
fn ok(r: Reply, status: u16) -> Reply {
    assert_eq!(r.status, status, "{r:?}");
    r
}

/// The issue's reproduction: the same changes made on a first server and on
/// a second one started after it (no `--data-dir`) give the second indexes
/// above every one the first answered, so a watch that sent an old one is
/// answered at once with the new view.
#[test]
fn the_index_after_a_restart_is_above_every_index_the_old_server_answered() {
    let mut seen = Vec::new();
    let mut first = Proc::start(&[]);
    {
        let mut c = Conn::open(first.addr);
        ok(c.post("/apps", r#"{"name":"web"}"#), 201);
        for id in ["a", "b"] {
            let body = format!(r#"{{"id":"{id}","ip":"10.0.0.1","port":80}}"#);
            ok(c.post("/apps/web", &body), 201);
        }
        ok(c.put("/apps/web/a"), 204);
        seen.push(index(&ok(c.get("/apps/web"), 200)));
        seen.push(index(&ok(c.get("/apps"), 200)));
    }
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(10)).0, Some(0));

    let second = Proc::start(&[]);
    let mut c = Conn::open(second.addr);
    let fresh = index(&ok(c.get("/apps"), 200));
    ok(c.post("/apps", r#"{"name":"web"}"#), 201);
    ok(
        c.post("/apps/web", r#"{"id":"a","ip":"10.0.0.1","port":80}"#),
        201,
    );
    ok(c.put("/apps/web/a"), 204);
    let max = seen.iter().copied().max().unwrap_or(0);
    let now = index(&ok(c.get("/apps/web"), 200));
    assert!(fresh > max && now > max, "{fresh}, {now} after {seen:?}");
    assert!(now < 1 << 53, "{now} is not exact in JSON");
    // A watch with the old server's index is answered at once.
    let started = Instant::now();
    let r = ok(c.get(&format!("/apps/web?index={max}&wait=3s")), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the watch waited"
    );
    assert_eq!(index(&r), now);
}
