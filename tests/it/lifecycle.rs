//! The lifecycle end to end, with periods shortened to fractions of a second:
//! `starting` stays, `up` reads `down` exactly when `down_after` has passed
//! (whatever the sweeper's period), a heartbeat brings it back, every status
//! is evicted after `evict_after`, a `down` instance can be replaced, and the
//! sweeper removes applications left empty. Time is waited for by polling
//! with a deadline, never by sleeping a fixed amount.

use std::time::{Duration, Instant};

use registro::Server;
use serde_json::Value;

use crate::api::{app_body, assert_app, assert_instance, check, ids, instance_body, register};
use crate::support::{eventually, start_with, Conn};

const DEADLINE: Duration = Duration::from_secs(5);
const HOUR: Duration = Duration::from_secs(3600);

fn server(down_after_ms: u64, evict_after_ms: u64, sweep_every: Duration) -> (Server, Conn) {
    let server = start_with(|c| {
        c.down_after = Duration::from_millis(down_after_ms);
        c.evict_after = Duration::from_millis(evict_after_ms);
        c.sweep_every = sweep_every;
    });
    let conn = Conn::open(server.local_addr());
    (server, conn)
}

/// The instance as read now, or `None` on 404.
#[track_caller]
fn read(c: &mut Conn, app: &str, id: &str) -> Option<Value> {
    let r = c.get(&format!("/apps/{app}/{id}"));
    match r.status {
        200 => Some(r.json()),
        404 => None,
        s => panic!("GET {app}/{id} answered {s}: {}", r.body),
    }
}

#[track_caller]
fn status_of(c: &mut Conn, app: &str, id: &str) -> String {
    read(c, app, id)
        .and_then(|v| v["status"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("{app}/{id} is gone"))
}

#[test]
fn starting_never_decays_to_down() {
    let (_s, mut c) = server(300, 60_000, Duration::from_millis(50));
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "s", "10.0.0.1", 80);
    register(&mut c, "web", "u", "10.0.0.2", 80);
    check(&mut c, "PUT", "/apps/web/u", "", 204);
    // `u` was renewed after `s` registered: once `u` reads down, `s` has been
    // silent for longer than down_after too.
    eventually(DEADLINE, "u to read down", || {
        (status_of(&mut c, "web", "u") == "down").then_some(())
    });
    let v = read(&mut c, "web", "s").expect("s is present");
    assert_instance(&v, "s", "10.0.0.1", 80, "starting");
    // A down instance can still be taken out of service, and then refuses
    // heartbeats like any other.
    check(&mut c, "DELETE", "/apps/web/u", "", 204);
    assert_eq!(status_of(&mut c, "web", "u"), "out-of-service");
    check(&mut c, "PUT", "/apps/web/u", "", 403);
}

#[test]
fn up_reads_down_exactly_when_down_after_has_passed() {
    // The sweeper never runs during the test: the read alone decides.
    let (_s, mut c) = server(300, 60_000, HOUR);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "w", "10.0.0.1", 80);
    let renewed = Instant::now();
    check(&mut c, "PUT", "/apps/web/w", "", 204);
    let up = read(&mut c, "web", "w").expect("present");
    if renewed.elapsed() < Duration::from_millis(250) {
        assert_instance(&up, "w", "10.0.0.1", 80, "up");
    }
    eventually(DEADLINE, "w to read down", || {
        (status_of(&mut c, "web", "w") == "down").then_some(())
    });
    let waited = renewed.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "down after {waited:?}, before down_after"
    );
    // No upper bound on `waited`: with no sweep for an hour, reading `down`
    // within the deadline at all is the read's own doing, and how soon the
    // polls get to ask depends only on this machine's load.
    let down = read(&mut c, "web", "w").expect("present");
    assert_instance(&down, "w", "10.0.0.1", 80, "down");
    assert_eq!(
        down["lastRenewal"], up["lastRenewal"],
        "reading changed lastRenewal"
    );
    // The app and the listing agree with the instance read.
    let app = check(&mut c, "GET", "/apps/web", "", 200).json();
    assert_eq!(assert_app(&app, "web")[0]["status"], "down");
    let apps = check(&mut c, "GET", "/apps", "", 200).json();
    assert_eq!(apps["applications"][0]["instances"][0]["status"], "down");

    // A heartbeat brings it back up at once.
    check(&mut c, "PUT", "/apps/web/w", "", 204);
    let v = read(&mut c, "web", "w").expect("present");
    assert_instance(&v, "w", "10.0.0.1", 80, "up");
    assert!(v["lastRenewal"].as_i64() >= down["lastRenewal"].as_i64());
}

#[test]
fn every_status_is_evicted_after_evict_after() {
    // Reads are exact with or without a sweep in between.
    // The app goes one eviction period after its last instance expired:
    // long enough for a loaded machine's polls to see it empty first.
    for sweep_every in [HOUR, Duration::from_millis(50)] {
        let (_s, mut c) = server(200, 1000, sweep_every);
        check(&mut c, "POST", "/apps", &app_body("web"), 201);
        let registered = Instant::now();
        for id in ["starting", "up", "out"] {
            register(&mut c, "web", id, "10.0.0.1", 80);
        }
        check(&mut c, "PUT", "/apps/web/up", "", 204);
        check(&mut c, "DELETE", "/apps/web/out", "", 204);
        eventually(DEADLINE, "every instance to be evicted", || {
            ["starting", "up", "out"]
                .iter()
                .all(|id| read(&mut c, "web", id).is_none())
                .then_some(())
        });
        let waited = registered.elapsed();
        assert!(
            waited >= Duration::from_millis(1000),
            "evicted after {waited:?} (sweep every {sweep_every:?})"
        );
        assert!(
            ids(&mut c, "web").is_empty(),
            "evicted instances still listed"
        );
        check(&mut c, "PUT", "/apps/web/up", "", 404);
        check(&mut c, "DELETE", "/apps/web/starting", "", 404);
        // The id is free again, at any address.
        register(&mut c, "web", "up", "10.0.0.2", 81);
        let v = read(&mut c, "web", "up").expect("registered again");
        assert_instance(&v, "up", "10.0.0.2", 81, "starting");
    }
}

#[test]
fn a_down_instance_is_replaced_at_another_address() {
    let (_s, mut c) = server(200, 60_000, HOUR);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "w", "10.0.0.1", 80);
    let renewed = Instant::now();
    check(&mut c, "PUT", "/apps/web/w", "", 204);
    let elsewhere = instance_body("w", "10.0.0.2", 8080);
    // 409 while it is live (checked only if surely still within
    // down_after); once it reads down, the restarted service at a new
    // address takes the id over.
    if renewed.elapsed() < Duration::from_millis(150) {
        let r = c.post("/apps/web", &elsewhere);
        if renewed.elapsed() < Duration::from_millis(200) {
            assert_eq!(r.status, 409, "{}", r.body);
        }
    }
    eventually(DEADLINE, "w to read down", || {
        (status_of(&mut c, "web", "w") == "down").then_some(())
    });
    check(&mut c, "POST", "/apps/web", &elsewhere, 201);
    let v = read(&mut c, "web", "w").expect("present");
    assert_instance(&v, "w", "10.0.0.2", 8080, "starting");
    check(&mut c, "PUT", "/apps/web/w", "", 204);
    assert_eq!(status_of(&mut c, "web", "w"), "up");
    assert_eq!(ids(&mut c, "web"), ["w"]);
}

#[test]
fn the_sweeper_removes_applications_left_empty() {
    // `busy` is renewed at every poll: a period of 2 s lets a loaded
    // machine's polls stall without losing it.
    let (_s, mut c) = server(200, 2000, Duration::from_millis(50));
    let created = Instant::now();
    for app in ["empty", "busy", "drained"] {
        check(&mut c, "POST", "/apps", &app_body(app), 201);
    }
    register(&mut c, "busy", "b", "10.0.0.1", 80);
    register(&mut c, "drained", "d", "10.0.0.1", 80);

    // `busy` is renewed at every poll, so it never expires.
    let poll = |c: &mut Conn, app: &str| -> bool {
        check(c, "PUT", "/apps/busy/b", "", 204);
        c.get(&format!("/apps/{app}")).status == 404
    };
    eventually(DEADLINE, "the empty app to be removed", || {
        poll(&mut c, "empty").then_some(())
    });
    let waited = created.elapsed();
    assert!(
        waited >= Duration::from_millis(2000),
        "app removed after {waited:?}"
    );
    let listed = check(&mut c, "GET", "/apps", "", 200).json();
    assert!(
        listed["applications"]
            .as_array()
            .is_some_and(|a| a.iter().all(|app| app["name"] != "empty")),
        "{listed}"
    );

    // `drained` loses its instance first; it is empty from then on and goes
    // one eviction period after the instance expired, whenever that was noticed.
    eventually(DEADLINE, "d to be evicted", || {
        check(&mut c, "PUT", "/apps/busy/b", "", 204);
        read(&mut c, "drained", "d").is_none().then_some(())
    });
    let v = check(&mut c, "GET", "/apps/drained", "", 200).json();
    assert!(assert_app(&v, "drained").is_empty(), "{v}");
    eventually(DEADLINE, "the drained app to be removed", || {
        poll(&mut c, "drained").then_some(())
    });

    // Still there; `up`, or `down` if this machine took longer than
    // --down-after (200 ms) between the last renewal and this read.
    let busy = check(&mut c, "GET", "/apps/busy", "", 200).json();
    let list = assert_app(&busy, "busy");
    assert_eq!(list.len(), 1, "{busy}");
    let status = list[0]["status"].as_str().unwrap_or_default().to_string();
    assert!(status == "up" || status == "down", "{busy}");
    assert_instance(&list[0], "b", "10.0.0.1", 80, &status);
    let listed = check(&mut c, "GET", "/apps", "", 200).json();
    assert_eq!(
        listed["applications"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    // A removed name can be created again.
    check(&mut c, "POST", "/apps", &app_body("empty"), 201);
    register(&mut c, "empty", "e", "10.0.0.1", 80);
}

#[test]
fn an_empty_app_reads_absent_exactly_when_evict_after_has_passed() {
    // No sweep runs: the read alone decides, and the name is free again.
    let (_s, mut c) = server(200, 300, HOUR);
    let created = Instant::now();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    eventually(DEADLINE, "the empty app to read absent", || {
        (c.get("/apps/web").status == 404).then_some(())
    });
    let waited = created.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "absent after {waited:?}"
    );
    let apps = check(&mut c, "GET", "/apps", "", 200).json();
    assert_eq!(apps["applications"], serde_json::json!([]), "{apps}");
    check(
        &mut c,
        "POST",
        "/apps/web",
        &instance_body("w", "10.0.0.1", 80),
        404,
    );
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "w", "10.0.0.1", 80);
}
