//! Parts 1 to 3 of API.md as scenarios that take the servers by address,
//! so the same checks run against the in-memory store and against etcd.
//!
//! Each scenario gets servers of its own with an empty registry and the
//! periods it asks for, and makes its changes and reads through one of them
//! (the runner rotates which). The checks are those of `api.rs`,
//! `discovery.rs`, `lifecycle.rs` and `watch.rs` that depend on the store:
//! the route table, re-registration, metadata, filters, the change index,
//! time passing and watches; the HTTP layer's own (framing, parsing,
//! limits) does not change with the store and stays there.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{
    app_body, assert_app, assert_instance, check, ids, instance_body, register, well_formed,
};
use crate::support::{eventually, Conn, Reply};

/// The periods a scenario's servers run with.
#[derive(Clone, Copy, Debug)]
pub struct Periods {
    pub down_after: Duration,
    pub evict_after: Duration,
}

impl Periods {
    /// `--down-after` and `--evict-after` as flags.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--down-after".into(),
            format!("{}ms", self.down_after.as_millis()),
            "--evict-after".into(),
            format!("{}ms", self.evict_after.as_millis()),
        ]
    }
}

const PRODUCTION: Periods = Periods {
    down_after: Duration::from_secs(90),
    evict_after: Duration::from_secs(600),
};

/// Short periods that etcd can keep: a lease's TTL is whole seconds, at
/// least 1 s with the test cluster's election timeout, and its expiry is
/// found within half a second; eviction comes well after `down`, so an
/// instance still `starting` is there when another reads `down`.
const SHORT: Periods = Periods {
    down_after: Duration::from_secs(1),
    evict_after: Duration::from_secs(4),
};

/// For checks made once an instance reads `down`, with every other status
/// still present: eviction far away.
const DOWN_SOON: Periods = Periods {
    down_after: Duration::from_secs(1),
    evict_after: Duration::from_secs(20),
};

/// One scenario: a name, its periods, and the checks, given the addresses
/// of every server of one registry (changes go through the first).
pub struct Scenario {
    pub name: &'static str,
    pub periods: Periods,
    pub run: fn(&[SocketAddr]),
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "route table",
        periods: PRODUCTION,
        run: route_table,
    },
    Scenario {
        name: "re-registration",
        periods: PRODUCTION,
        run: reregistration,
    },
    Scenario {
        name: "metadata",
        periods: PRODUCTION,
        run: metadata,
    },
    Scenario {
        name: "the index moves with every change and only then",
        periods: PRODUCTION,
        run: index_steps,
    },
    Scenario {
        name: "watches",
        periods: PRODUCTION,
        run: watches,
    },
    Scenario {
        name: "status filters",
        periods: DOWN_SOON,
        run: status_filters,
    },
    Scenario {
        name: "time passing: down, removal, the empty app",
        periods: SHORT,
        run: time_passing,
    },
    Scenario {
        name: "operations",
        periods: PRODUCTION,
        run: operations,
    },
];

/// The `Registro-Index` of an answer.
#[track_caller]
pub fn index(r: &Reply) -> u64 {
    r.header("registro-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Registro-Index in {:?}", r.headers))
}

#[track_caller]
pub fn index_of(c: &mut Conn, path: &str) -> u64 {
    index(&check(c, "GET", path, "", 200))
}

/// The status of `id` in an App's JSON, `None` when it is not listed.
pub fn status_in(app: &Value, id: &str) -> Option<String> {
    app["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .and_then(|i| i["status"].as_str())
        .map(str::to_owned)
}

fn route_table(addrs: &[SocketAddr]) {
    let mut c = Conn::open(addrs[0]);
    let r = check(&mut c, "GET", "/apps", "", 200);
    assert_eq!(r.json(), json!({ "applications": [] }));

    // POST /apps
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    check(&mut c, "POST", "/apps", &app_body("web"), 409);
    for bad in [
        "",
        "{",
        "{}",
        r#"{"name": 5}"#,
        &app_body("a/b"),
        &app_body(""),
    ] {
        check(&mut c, "POST", "/apps", bad, 400);
    }
    check(&mut c, "POST", "/apps", &app_body("db"), 201);

    // GET /apps/{app}
    check(&mut c, "GET", "/apps/nope", "", 404);
    assert!(assert_app(&check(&mut c, "GET", "/apps/web", "", 200).json(), "web").is_empty());

    // POST /apps/{app}
    let w1 = instance_body("web-1", "10.0.0.7", 8080);
    check(&mut c, "POST", "/apps/nope", &w1, 404);
    check(&mut c, "POST", "/apps/web", &w1, 201);
    check(
        &mut c,
        "POST",
        "/apps/web",
        &instance_body("web-1", "10.0.0.8", 8080),
        409,
    );
    for bad in [
        instance_body("p0", "10.0.0.1", 0),
        instance_body("", "10.0.0.1", 80),
        instance_body("p", "", 80),
        r#"{"id": "p", "ip": "10.0.0.1"}"#.to_string(),
    ] {
        check(&mut c, "POST", "/apps/web", &bad, 400);
    }
    register(&mut c, "web", "web-2", "10.0.0.8", 9090);

    // GET /apps/{app}/{id}
    let v = check(&mut c, "GET", "/apps/web/web-1", "", 200).json();
    assert_instance(&v, "web-1", "10.0.0.7", 8080, "starting");
    check(&mut c, "GET", "/apps/web/nope", "", 404);
    check(&mut c, "GET", "/apps/nope/web-1", "", 404);

    // PUT /apps/{app}/{id}
    check(&mut c, "PUT", "/apps/web/web-2", "", 204);
    check(&mut c, "PUT", "/apps/web/web-2", "", 204);
    let v = check(&mut c, "GET", "/apps/web/web-2", "", 200).json();
    assert_instance(&v, "web-2", "10.0.0.8", 9090, "up");
    check(&mut c, "PUT", "/apps/web/nope", "", 404);
    check(&mut c, "PUT", "/apps/nope/web-2", "", 404);

    // DELETE /apps/{app}/{id}
    check(&mut c, "DELETE", "/apps/web/web-1", "", 204);
    let v = check(&mut c, "GET", "/apps/web/web-1", "", 200).json();
    assert_instance(&v, "web-1", "10.0.0.7", 8080, "out-of-service");
    check(&mut c, "PUT", "/apps/web/web-1", "", 403);
    check(&mut c, "DELETE", "/apps/web/nope", "", 404);

    // GET /apps, with everything above.
    let v = check(&mut c, "GET", "/apps", "", 200).json();
    let apps = v["applications"].as_array().cloned().unwrap_or_default();
    assert_eq!(apps.len(), 2, "{v}");
    let web = apps
        .iter()
        .find(|a| a["name"] == "web")
        .unwrap_or_else(|| panic!("web not listed: {v}"));
    let mut list = assert_app(web, "web");
    list.sort_by_key(|i| i["id"].as_str().unwrap_or_default().to_string());
    assert_instance(&list[0], "web-1", "10.0.0.7", 8080, "out-of-service");
    assert_instance(&list[1], "web-2", "10.0.0.8", 9090, "up");
    assert_eq!(ids(&mut c, "db"), Vec::<String>::new());

    // 405 with Allow, 404 with JSON: answered without the store, the same.
    let r = check(&mut c, "PATCH", "/apps/web/web-2", "", 405);
    assert!(r.header("allow").is_some_and(|a| a.contains("PUT")));
    check(&mut c, "DELETE", "/apps", "", 405);
    let r = c.send_raw(
        b"GET /registro/1.0/apps/web/web-2/x HTTP/1.1\r\nHost: t\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 404);
    well_formed(&r, "GET");
    // Percent-decoding and a trailing slash reach the same store entries.
    check(&mut c, "POST", "/apps/", &app_body("web app"), 201);
    check(
        &mut c,
        "POST",
        "/apps/web%20app",
        &instance_body("n° 1", "10.0.0.1", 80),
        201,
    );
    check(&mut c, "PUT", "/apps/web%20app/n%C2%B0%201/", "", 204);
    let v = check(&mut c, "GET", "/apps/web%20app/n%c2%b0%201", "", 200).json();
    assert_instance(&v, "n° 1", "10.0.0.1", 80, "up");
}

fn reregistration(addrs: &[SocketAddr]) {
    crate::api::reregistration(&mut Conn::open(addrs[0]));
}

fn with_metadata(id: &str, metadata: Value) -> String {
    json!({"id": id, "ip": "10.0.0.1", "port": 80, "metadata": metadata}).to_string()
}

fn metadata(addrs: &[SocketAddr]) {
    let mut c = Conn::open(addrs[0]);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let meta = json!({"zone": "eu-1", "version": "1.4.2"});
    let created = check(
        &mut c,
        "POST",
        "/apps/web",
        &with_metadata("a", meta.clone()),
        201,
    );
    assert_eq!(created.json()["metadata"], meta, "{}", created.body);
    register(&mut c, "web", "b", "10.0.0.2", 80);
    let one = check(&mut c, "GET", "/apps/web/a", "", 200).json();
    assert_eq!(one["metadata"], meta, "{one}");
    let app = check(&mut c, "GET", "/apps/web", "", 200).json();
    let b = app["instances"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["id"] == "b"))
        .cloned()
        .unwrap_or_else(|| panic!("b not listed: {app}"));
    assert!(
        b.as_object().is_some_and(|o| !o.contains_key("metadata")),
        "{b}"
    );
    // Refused metadata leaves no trace.
    let r = check(
        &mut c,
        "POST",
        "/apps/web",
        &with_metadata("c", json!({"k": 1})),
        400,
    );
    assert!(r.error().contains("must be a string"), "{}", r.error());
    check(&mut c, "GET", "/apps/web/c", "", 404);
    // A re-registration replaces it.
    for (body, want) in [
        (
            with_metadata("a", json!({"zone": "us-2"})),
            json!({"zone": "us-2"}),
        ),
        (instance_body("a", "10.0.0.1", 80), Value::Null),
        (with_metadata("a", json!({"k": "v"})), json!({"k": "v"})),
        (with_metadata("a", json!({})), Value::Null),
    ] {
        check(&mut c, "POST", "/apps/web", &body, 201);
        let one = check(&mut c, "GET", "/apps/web/a", "", 200).json();
        assert_eq!(one["metadata"], want, "after {body}: {one}");
    }
    // The largest metadata allowed is kept whole.
    let big: Value = Value::Object(
        (0..8)
            .map(|i| (format!("k{i}"), Value::String("v".repeat(1000))))
            .collect(),
    );
    check(
        &mut c,
        "POST",
        "/apps/web",
        &with_metadata("big", big.clone()),
        201,
    );
    let one = check(&mut c, "GET", "/apps/web/big", "", 200).json();
    assert_eq!(one["metadata"], big);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Moved {
    app: bool,
    list: bool,
}

fn index_steps(addrs: &[SocketAddr]) {
    let mut c = Conn::open(addrs[0]);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let both = Moved {
        app: true,
        list: true,
    };
    let list = Moved {
        app: false,
        list: true,
    };
    let none = Moved {
        app: false,
        list: false,
    };
    let a = instance_body("a", "10.0.0.1", 80);
    let a_meta = with_metadata("a", json!({"z": "1"}));
    let a_moved = instance_body("a", "10.0.0.2", 81);
    let a_elsewhere = instance_body("a", "10.0.0.9", 80);
    let b = instance_body("b", "10.0.0.2", 81);
    let db = app_body("db");
    let d = instance_body("d", "10.0.0.2", 81);
    let steps: &[(&str, &str, &str, u16, Moved)] = &[
        ("POST", "/apps/web", &a, 201, both),
        ("POST", "/apps/web", &a, 201, none),
        ("PUT", "/apps/web/a", "", 204, both),
        ("PUT", "/apps/web/a", "", 204, none),
        ("GET", "/apps/web/a", "", 200, none),
        ("POST", "/apps/web", &a_meta, 201, both),
        ("POST", "/apps/web", &a_meta, 201, none),
        ("PUT", "/apps/web/a", "", 204, both),
        ("POST", "/apps/web", &a_elsewhere, 409, none),
        ("DELETE", "/apps/web/a", "", 204, both),
        ("DELETE", "/apps/web/a", "", 204, none),
        ("PUT", "/apps/web/a", "", 403, none),
        ("POST", "/apps/web", &a_moved, 201, both),
        ("POST", "/apps/web", &b, 201, both),
        ("POST", "/apps", &db, 201, list),
        ("POST", "/apps", &db, 409, none),
        ("POST", "/apps/db", &d, 201, list),
        ("PUT", "/apps/db/d", "", 204, list),
        ("PUT", "/apps/nope/a", "", 404, none),
    ];
    for (method, path, body, status, want) in steps {
        let (app, all) = (index_of(&mut c, "/apps/web"), index_of(&mut c, "/apps"));
        check(&mut c, method, path, body, *status);
        let (app2, all2) = (index_of(&mut c, "/apps/web"), index_of(&mut c, "/apps"));
        assert!(app2 >= app && all2 >= all, "an index went back");
        let moved = Moved {
            app: app2 != app,
            list: all2 != all,
        };
        assert_eq!(moved, *want, "{method} {path} {body}");
        assert!(all2 >= app2, "the list's index is below an app's");
        assert!(all2 < 1 << 53, "an index above 2^53: {all2}");
    }
}

/// `GET /registro/1.0PATH` answered on a thread of its own, with how long
/// it took.
fn watch(addr: SocketAddr, path: &str) -> thread::JoinHandle<(Reply, Duration)> {
    let mut conn = Conn::open(addr);
    let path = path.to_owned();
    let sent = Instant::now();
    thread::spawn(move || {
        let reply = conn.get(&path);
        (reply, sent.elapsed())
    })
}

/// Waits until the server counts `n` parked watches.
pub fn parked(c: &mut Conn, n: usize) {
    let want = format!("registro_watches_waiting {n}");
    eventually(Duration::from_secs(5), &want, || {
        let r = c.send_raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", false);
        r.body.lines().any(|l| l.trim() == want).then_some(())
    });
}

/// A change: what it is, how it is made, the status it leaves `b` in.
type Change = (&'static str, fn(&mut Conn), Option<&'static str>);

fn watches(addrs: &[SocketAddr]) {
    let addr = addrs[0];
    let mut c = Conn::open(addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "a", "10.0.0.1", 80);
    check(&mut c, "PUT", "/apps/web/a", "", 204);
    // A plain renewal and another app's change wake no watch of this app.
    let before = index_of(&mut c, "/apps/web");
    let quiet = watch(addr, &format!("/apps/web?index={before}&wait=1500ms"));
    parked(&mut c, 1);
    for _ in 0..5 {
        check(&mut c, "PUT", "/apps/web/a", "", 204);
    }
    check(&mut c, "POST", "/apps", &app_body("db"), 201);
    let (reply, took) = quiet.join().expect("watch thread");
    assert!(
        took >= Duration::from_millis(1500),
        "answered after {took:?}"
    );
    assert_eq!(
        (reply.status, index(&reply)),
        (200, before),
        "{}",
        reply.body
    );
    // Each kind of change wakes a watch of the app and of the list.
    let changes: [Change; 3] = [
        (
            "register",
            |c| {
                register(c, "web", "b", "10.0.0.2", 80);
            },
            Some("starting"),
        ),
        (
            "first heartbeat",
            |c| {
                check(c, "PUT", "/apps/web/b", "", 204);
            },
            Some("up"),
        ),
        (
            "DELETE",
            |c| {
                check(c, "DELETE", "/apps/web/b", "", 204);
            },
            Some("out-of-service"),
        ),
    ];
    for (what, change, seen) in changes {
        let app = index_of(&mut c, "/apps/web");
        let all = index_of(&mut c, "/apps");
        let w = watch(addr, &format!("/apps/web?index={app}&wait=30s"));
        let l = watch(addr, &format!("/apps?index={all}&wait=30s"));
        parked(&mut c, 2);
        let changed = Instant::now();
        change(&mut c);
        for (h, path) in [(w, "/apps/web"), (l, "/apps")] {
            let (reply, _) = h.join().expect("watch thread");
            let late = changed.elapsed();
            assert!(
                late < Duration::from_secs(2),
                "{what}: {path} after {late:?}"
            );
            assert_eq!(reply.status, 200, "{what}: {}", reply.body);
            assert!(index(&reply) > app.min(all), "{what}: {path}");
            let v = reply.json();
            let web = if path == "/apps" {
                v["applications"]
                    .as_array()
                    .and_then(|a| a.iter().find(|a| a["name"] == "web"))
                    .cloned()
                    .unwrap_or(Value::Null)
            } else {
                v
            };
            assert_eq!(status_in(&web, "b").as_deref(), seen, "{what}: {web}");
        }
    }
    // A watch of an app that does not exist: 404 at once.
    let r = check(&mut c, "GET", "/apps/nope?index=1&wait=30s", "", 404);
    assert!(r.error().contains("no such application"), "{}", r.error());
}

fn status_filters(addrs: &[SocketAddr]) {
    let mut c = Conn::open(addrs[0]);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    check(&mut c, "POST", "/apps", &app_body("db"), 201);
    for id in ["starting", "up", "down", "out"] {
        register(&mut c, "web", id, "10.0.0.1", 80);
    }
    register(&mut c, "db", "d", "10.0.0.1", 80);
    check(&mut c, "PUT", "/apps/web/down", "", 204);
    check(&mut c, "DELETE", "/apps/web/out", "", 204);
    eventually(Duration::from_secs(5), "web/down to read down", || {
        check(&mut c, "PUT", "/apps/web/up", "", 204);
        let v = check(&mut c, "GET", "/apps/web/down", "", 200).json();
        (v["status"] == "down").then_some(())
    });
    check(&mut c, "PUT", "/apps/web/up", "", 204);
    let filtered = |c: &mut Conn, query: &str| -> Vec<String> {
        let v = check(c, "GET", &format!("/apps/web{query}"), "", 200).json();
        let mut ids: Vec<String> = v["instances"]
            .as_array()
            .unwrap_or_else(|| panic!("no instances list in {v}"))
            .iter()
            .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let cases: &[(&str, &[&str])] = &[
        ("", &["down", "out", "starting", "up"]),
        ("?status=up", &["up"]),
        ("?status=up,starting", &["starting", "up"]),
        ("?status=down", &["down"]),
        ("?status=out-of-service", &["out"]),
    ];
    for (query, want) in cases {
        check(&mut c, "PUT", "/apps/web/up", "", 204);
        assert_eq!(filtered(&mut c, query), *want, "{query}");
    }
    let all = check(&mut c, "GET", "/apps?status=out-of-service", "", 200).json();
    let db = all["applications"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "db"))
        .cloned();
    assert_eq!(db, Some(json!({"name": "db", "instances": []})), "{all}");
    check(&mut c, "GET", "/apps/web?status=ready", "", 400);
}

/// The instance as read now, or `None` on 404.
#[track_caller]
pub fn read(c: &mut Conn, app: &str, id: &str) -> Option<Value> {
    let r = c.get(&format!("/apps/{app}/{id}"));
    match r.status {
        200 => Some(r.json()),
        404 => None,
        s => panic!("GET {app}/{id} answered {s}: {}", r.body),
    }
}

fn time_passing(addrs: &[SocketAddr]) {
    let p = SHORT;
    let mut c = Conn::open(addrs[0]);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    check(&mut c, "POST", "/apps", &app_body("empty"), 201);
    let created = Instant::now();
    register(&mut c, "web", "s", "10.0.0.1", 80);
    register(&mut c, "web", "u", "10.0.0.2", 80);
    register(&mut c, "web", "o", "10.0.0.3", 80);
    check(&mut c, "DELETE", "/apps/web/o", "", 204);
    let renewed = Instant::now();
    check(&mut c, "PUT", "/apps/web/u", "", 204);
    let before = index_of(&mut c, "/apps/web");
    // `u` reads down once down_after has passed, not before, within 2 s.
    eventually(Duration::from_secs(5), "u to read down", || {
        let v = read(&mut c, "web", "u")?;
        (v["status"] == "down").then_some(())
    });
    let waited = renewed.elapsed();
    assert!(waited >= p.down_after, "down after {waited:?}");
    assert!(
        waited < p.down_after + Duration::from_secs(2),
        "down only after {waited:?}"
    );
    assert!(
        index_of(&mut c, "/apps/web") > before,
        "down moved no index"
    );
    // `starting` never decays.
    let v = read(&mut c, "web", "s").expect("s is present");
    assert_instance(&v, "s", "10.0.0.1", 80, "starting");
    // Every status is removed after evict_after.
    eventually(Duration::from_secs(10), "every instance to go", || {
        ["s", "u", "o"]
            .iter()
            .all(|id| read(&mut c, "web", id).is_none())
            .then_some(())
    });
    let waited = renewed.elapsed();
    assert!(waited >= p.evict_after, "removed after {waited:?}");
    check(&mut c, "PUT", "/apps/web/u", "", 404);
    // The app that never had an instance goes one period after it was made.
    eventually(Duration::from_secs(10), "the empty app to go", || {
        (c.get("/apps/empty").status == 404).then_some(())
    });
    assert!(created.elapsed() >= p.evict_after);
    // The name is free again.
    check(&mut c, "POST", "/apps", &app_body("empty"), 201);
    register(&mut c, "empty", "e", "10.0.0.1", 80);
}

fn operations(addrs: &[SocketAddr]) {
    let mut c = Conn::open(addrs[0]);
    let r = c.send_raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", false);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "a", "10.0.0.1", 80);
    check(&mut c, "PUT", "/apps/web/a", "", 204);
    let r = c.send_raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", false);
    assert_eq!(r.status, 200);
    for line in ["registro_apps 1", "registro_instances{status=\"up\"} 1"] {
        assert!(
            r.body.lines().any(|l| l.trim() == line),
            "no {line:?} in /metrics:\n{}",
            r.body
        );
    }
    let r = c.send_raw(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", false);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        r.headers
    );
}

/// What a registry looks like from one server: the listing with every
/// `lastRenewal` left out (heartbeats are not replicated), and its index.
pub fn view(addr: SocketAddr) -> (Value, u64) {
    let mut c = Conn::open(addr);
    let r = check(&mut c, "GET", "/apps", "", 200);
    let mut v = r.json();
    if let Some(apps) = v["applications"].as_array_mut() {
        apps.sort_by_key(|a| a["name"].as_str().unwrap_or_default().to_owned());
        for app in apps {
            if let Some(list) = app["instances"].as_array_mut() {
                list.sort_by_key(|i| i["id"].as_str().unwrap_or_default().to_owned());
                for i in list {
                    if let Some(o) = i.as_object_mut() {
                        o.remove("lastRenewal");
                    }
                }
            }
        }
    }
    (v, index(&r))
}

/// Waits until every server answers the same listing with the same index.
pub fn converged(addrs: &[SocketAddr], deadline: Duration, what: &str) -> (Value, u64) {
    let end = Instant::now() + deadline;
    loop {
        let views: Vec<(Value, u64)> = addrs.iter().map(|a| view(*a)).collect();
        if views.windows(2).all(|w| w[0] == w[1]) {
            return views[0].clone();
        }
        assert!(
            Instant::now() < end,
            "{what}: the servers disagree after {deadline:?}: {views:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
