//! The lifecycle by time, as scenarios run on every store (`scenarios.rs`)
//! with the store's short periods: `starting` stays, `up` reads `down`
//! exactly when `--down-after` has passed (whatever the sweeper does), a
//! heartbeat brings it back, every status is removed after `--evict-after`,
//! a `down` instance can be replaced, an application left empty goes one
//! period later, and each of these moves the index and wakes watches.
//! Every bound is checked against when requests were sent and answered
//! (`comes_true`), never against how fast this machine is.

use std::time::Duration;

use serde_json::Value;

use crate::api::{app_body, assert_app, assert_instance, check, ids, instance_body, register};
use crate::ops::gauges_read;
use crate::scenarios::{
    app_in, comes_true, index, index_of, instance_in, parked, read, status_in, table, timed,
    Registry, Span, Watch,
};
use crate::support::Exchange;

table![
    Evict: every_status_goes_when_due_and_then_its_app,
    Down: up_reads_down_when_due_and_only_up,
];

/// The status of `app/id` as read now (`gone` when it is not there).
#[track_caller]
fn status_of(c: &mut impl Exchange, app: &str, id: &str) -> String {
    read(c, app, id).map_or("gone".into(), |v| {
        v["status"].as_str().unwrap_or("?").into()
    })
}

fn up_reads_down_when_due_and_only_up(s: &Registry) {
    let p = s.periods;
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "s", "10.0.0.1", 80);
    for id in ["w", "r", "o"] {
        register(&mut c, "web", id, "10.0.0.2", 80);
    }
    let (_, renewed) = timed(|| {
        for id in ["w", "r", "o"] {
            check(&mut c, "PUT", &format!("/apps/web/{id}"), "", 204);
        }
    });
    let up = read(&mut c, "web", "w").expect("w is present");
    for id in ["w", "r", "o"] {
        comes_true(
            &format!("{id} to read down"),
            renewed,
            p.down_after,
            p.late,
            || status_of(&mut c, "web", id) == "down",
        );
    }
    // Every server's metrics count them, within a second of each server
    // finding them due.
    let down = [
        ("registro_instances{status=\"down\"}", 3.0),
        ("registro_instances{status=\"starting\"}", 1.0),
    ];
    gauges_read(s, &down, p.late + Duration::from_secs(1));
    let down = read(&mut c, "web", "w").expect("w is present");
    assert_instance(&down, "w", "10.0.0.2", 80, "down");
    assert_eq!(
        down["lastRenewal"], up["lastRenewal"],
        "reading changed lastRenewal"
    );
    // The app and the listing agree with the instance read.
    let app = check(&mut c, "GET", "/apps/web", "", 200).json();
    assert_eq!(status_in(&app, "w").as_deref(), Some("down"), "{app}");
    let list = check(&mut c, "GET", "/apps", "", 200).json();
    assert_eq!(
        status_in(&app_in(&list, "web"), "w").as_deref(),
        Some("down")
    );
    // `s`, registered before, never had a heartbeat: it stays `starting`.
    let v = read(&mut c, "web", "s").expect("s is present");
    assert_instance(&v, "s", "10.0.0.1", 80, "starting");

    // A heartbeat brings `w` back up at once.
    let list = renew_and_list(s, &mut c, "web", "w");
    let v = instance_in(&app_in(&list, "web"), "w").expect("w is listed");
    assert!(v["lastRenewal"].as_i64() >= down["lastRenewal"].as_i64());
    // A restarted service at a new address takes a `down` id over.
    let elsewhere = instance_body("r", "10.0.0.3", 8080);
    check(&mut c, "POST", "/apps/web", &elsewhere, 201);
    let v = read(&mut c, "web", "r").expect("r is present");
    assert_instance(&v, "r", "10.0.0.3", 8080, "starting");
    renew_and_list(s, &mut c, "web", "r");
    // A `down` instance can be taken out of service, and then refuses
    // heartbeats like any other.
    check(&mut c, "DELETE", "/apps/web/o", "", 204);
    assert_eq!(status_of(&mut c, "web", "o"), "out-of-service");
    check(&mut c, "PUT", "/apps/web/o", "", 403);
    assert_eq!(ids(&mut c, "web"), ["o", "r", "s", "w"]);
}

/// Renews `app/id`, then reads every app: the instance must read `up`
/// unless this machine took longer than `--down-after` from the heartbeat
/// to the read. Returns the listing.
fn renew_and_list(s: &Registry, c: &mut impl Exchange, app: &str, id: &str) -> Value {
    let (_, beat) = timed(|| check(c, "PUT", &format!("/apps/{app}/{id}"), "", 204));
    let (list, read) = timed(|| check(c, "GET", "/apps", "", 200).json());
    let status = status_in(&app_in(&list, app), id);
    let silent = read.answered - beat.sent;
    assert!(
        status.as_deref() == Some("up") || silent >= s.periods.down_after,
        "{app}/{id}, renewed, read {status:?} {silent:?} after its heartbeat"
    );
    list
}

/// Renews the instance `busy/b` that outlives the others, and lists.
fn beat_and_list(s: &Registry, c: &mut impl Exchange) -> Value {
    renew_and_list(s, c, "busy", "b")
}

fn every_status_goes_when_due_and_then_its_app(s: &Registry) {
    let p = s.periods;
    let mut c = s.client();
    let (_, made) = timed(|| check(&mut c, "POST", "/apps", &app_body("empty"), 201));
    for app in ["web", "busy"] {
        check(&mut c, "POST", "/apps", &app_body(app), 201);
    }
    register(&mut c, "busy", "b", "10.0.0.9", 80);
    // The last change of each instance of `web` is in `renewed`.
    let (_, renewed) = timed(|| {
        register(&mut c, "web", "s", "10.0.0.1", 80);
        register(&mut c, "web", "u", "10.0.0.2", 80);
        register(&mut c, "web", "o", "10.0.0.3", 80);
        check(&mut c, "DELETE", "/apps/web/o", "", 204);
        check(&mut c, "PUT", "/apps/web/u", "", 204);
    });
    // A watch on one server of the view where `u` is up (unless this
    // machine was slower than --down-after), woken by time (or answered at
    // once, had it come later than that).
    let r = check(&mut c, "GET", "/apps/web", "", 200);
    let (before, u_was) = (index(&r), status_in(&r.json(), "u"));
    let watch = Watch::start(s.addr(1), &format!("/apps/web?index={before}&wait=60s"));

    comes_true("u to read down", renewed, p.down_after, p.late, || {
        let list = beat_and_list(s, &mut c);
        status_in(&app_in(&list, "web"), "u").as_deref() == Some("down")
    });
    let (reply, woken) = watch.answer();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let at = index(&reply);
    assert!(at > before, "time moved no index: {at} after {before}");
    if u_was.as_deref() == Some("up") {
        assert_eq!(status_in(&reply.json(), "u").as_deref(), Some("down"));
        let due = renewed.answered + p.down_after;
        let late = woken.saturating_duration_since(due);
        assert!(
            late <= p.late + p.seen_within,
            "the watch was woken {late:?} after u was due down"
        );
    }
    let v = read(&mut c, "web", "s").expect("s is present");
    assert_instance(&v, "s", "10.0.0.1", 80, "starting");

    // Every status goes after --evict-after; a watch sees the first go.
    let mut watched = s.conn(1);
    let watch = Watch::start(s.addr(1), &format!("/apps/web?index={at}&wait=60s"));
    parked(&mut watched, 1);
    let gone = comes_true(
        "every instance to go",
        renewed,
        p.evict_after,
        p.late,
        || {
            let list = beat_and_list(s, &mut c);
            assert_app(&app_in(&list, "web"), "web").is_empty()
        },
    );
    let (reply, _) = watch.answer();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(index(&reply) > at, "a removal moved no index");
    let left = assert_app(&reply.json(), "web").len();
    assert!(left < 3, "the watch saw no removal: {}", reply.body);
    check(&mut c, "PUT", "/apps/web/u", "", 404);
    check(&mut c, "DELETE", "/apps/web/s", "", 404);
    assert!(ids(&mut c, "web").is_empty());

    // An application goes --evict-after after it was left empty: `empty`
    // from its creation, `web` from its last instance's removal (which
    // came true after `renewed` was sent and before `gone` answered).
    comes_true("the empty app to go", made, p.evict_after, p.late, || {
        c.get("/apps/empty").status == 404
    });
    let emptied = Span {
        sent: renewed.sent + p.evict_after,
        answered: gone.answered,
    };
    let list_index = index_of(&mut c, "/apps");
    let now = index_of(&mut c, "/apps/web");
    let app_watch = Watch::start(s.addr(1), &format!("/apps/web?index={now}&wait=60s"));
    let list_watch = Watch::start(s.addr(1), &format!("/apps?index={list_index}&wait=60s"));
    parked(&mut watched, 2);
    comes_true("web to go", emptied, p.evict_after, p.late, || {
        app_in(&beat_and_list(s, &mut c), "web").is_null()
    });
    let w = instance_body("w", "10.0.0.1", 80);
    check(&mut c, "POST", "/apps/web", &w, 404);
    let (reply, _) = app_watch.answer();
    assert_eq!(
        reply.status, 404,
        "the watch of a removed app: {}",
        reply.body
    );
    let (reply, _) = list_watch.answer();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(index(&reply) > list_index);
    assert!(index_of(&mut c, "/apps") > list_index);
    // `busy` stayed, and every removed name is free again, at any address.
    let list = beat_and_list(s, &mut c);
    assert!(status_in(&app_in(&list, "busy"), "b").is_some(), "{list}");
    for app in ["empty", "web"] {
        check(&mut c, "POST", "/apps", &app_body(app), 201);
        register(&mut c, app, "u", "10.0.0.4", 81);
    }
    let v = read(&mut c, "web", "u").expect("registered again");
    assert_instance(&v, "u", "10.0.0.4", 81, "starting");
}
