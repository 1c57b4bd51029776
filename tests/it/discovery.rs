//! API.md Part 3's discovery: metadata, status filters and the change index
//! (`Registro-Index`, `?index=`, `?wait=`), as scenarios run on every store
//! (`scenarios.rs`). The watches that actually wait are in `watch.rs`,
//! changes by time in `lifecycle.rs`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{app_body, check, ids_in, instance_body, register};
use crate::scenarios::{app_in, index_of, table, Registry};
use crate::support::{eventually, start, Conn, Exchange};

table![
    Down: status_filters_on_both_lists,
    Still: metadata_round_trips_and_is_replaced_by_a_reregistration,
    Still: metadata_limits,
    Still: the_index_changes_with_every_change_and_only_then,
    Still: a_watch_with_another_index_answers_at_once,
    Still: location_escapes_dot_segments,
];

pub(crate) fn with_metadata(id: &str, metadata: Value) -> String {
    json!({"id": id, "ip": "10.0.0.1", "port": 80, "metadata": metadata}).to_string()
}

fn metadata_round_trips_and_is_replaced_by_a_reregistration(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let meta = json!({"zone": "eu-1", "version": "1.4.2", "": "x"});
    // An empty key is refused; the rest of this body is the one kept below.
    check(&mut c, "POST", "/apps/web", &with_metadata("a", meta), 400);
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
    assert_eq!(app["instances"][0]["metadata"], meta, "{app}");
    // Without metadata the field is left out, as a Part 1 client expects.
    let b = &app["instances"][1];
    assert!(
        b.as_object().is_some_and(|o| !o.contains_key("metadata")),
        "{app}"
    );
    let all = check(&mut c, "GET", "/apps", "", 200).json();
    assert_eq!(
        all["applications"][0]["instances"][0]["metadata"], meta,
        "{all}"
    );

    // A re-registration replaces it: with other metadata, with none, `{}`.
    for (body, want) in [
        (
            with_metadata("a", json!({"zone": "us-2"})),
            json!({"zone": "us-2"}),
        ),
        (instance_body("a", "10.0.0.1", 80), Value::Null),
        (with_metadata("a", json!({"k": "v"})), json!({"k": "v"})),
        (with_metadata("a", json!({})), Value::Null),
        (with_metadata("a", json!({"k": "v"})), json!({"k": "v"})),
        (with_metadata("a", Value::Null), Value::Null),
    ] {
        check(&mut c, "POST", "/apps/web", &body, 201);
        let one = check(&mut c, "GET", "/apps/web/a", "", 200).json();
        assert_eq!(one["metadata"], want, "after {body}: {one}");
    }
}

fn entries(n: usize, value_len: usize) -> Value {
    Value::Object(
        (0..n)
            .map(|i| (format!("k{i}"), Value::String("v".repeat(value_len))))
            .collect(),
    )
}

/// Each limit, at the edge and past it: what is accepted is kept whole,
/// what is refused says why and leaves no trace.
fn metadata_limits(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let cases = [
        (entries(64, 10), Ok(())),
        (entries(65, 1), Err("65 entries; at most 64")),
        (json!({ "k".repeat(128): "v" }), Ok(())),
        (
            json!({ "k".repeat(129): "v" }),
            Err("keys must be 1 to 128 bytes"),
        ),
        (
            json!({"": "v"}),
            Err("keys must be 1 to 128 bytes long, not 0"),
        ),
        (json!({"k": "v".repeat(1024)}), Ok(())),
        (
            json!({"k": "v".repeat(1025)}),
            Err("1025 bytes long; at most 1024"),
        ),
        // Eight values of 1000 bytes fit in 8 KiB of JSON; nine do not.
        (entries(8, 1000), Ok(())),
        (entries(9, 1000), Err("bytes of JSON; at most 8192")),
        (json!({"k": 1}), Err("value of \"k\" must be a string")),
        (json!({"k": null}), Err("must be a string")),
        (json!({"k": {"nested": "x"}}), Err("must be a string")),
        (json!(["zone", "eu"]), Err("must be a JSON object")),
        (json!("zone=eu"), Err("must be a JSON object")),
    ];
    for (k, (metadata, expected)) in cases.into_iter().enumerate() {
        let path = format!("/apps/web/i{k}");
        let body = with_metadata(&format!("i{k}"), metadata.clone());
        match expected {
            Ok(()) => {
                check(&mut c, "POST", "/apps/web", &body, 201);
                let one = check(&mut c, "GET", &path, "", 200).json();
                assert_eq!(one["metadata"], metadata, "{body:.200}");
            }
            Err(part) => {
                let r = check(&mut c, "POST", "/apps/web", &body, 400);
                assert!(r.error().contains(part), "{body:.200}: {}", r.error());
                check(&mut c, "GET", &path, "", 404);
            }
        }
    }
}

/// The ids (sorted) of app `web` read through `query`.
#[track_caller]
fn filtered(c: &mut impl Exchange, query: &str) -> Vec<String> {
    let app = check(c, "GET", &format!("/apps/web{query}"), "", 200).json();
    // The list answers the same instances.
    let all = check(c, "GET", &format!("/apps{query}"), "", 200).json();
    let listed = app_in(&all, "web");
    for v in [&app, &listed] {
        assert!(v["instances"].is_array(), "no instances list in {v}");
    }
    assert_eq!(ids_in(&listed), ids_in(&app), "{query}");
    ids_in(&app)
}

fn status_filters_on_both_lists(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    check(&mut c, "POST", "/apps", &app_body("db"), 201);
    for id in ["starting", "up", "down", "out"] {
        register(&mut c, "web", id, "10.0.0.1", 80);
    }
    register(&mut c, "db", "d", "10.0.0.1", 80);
    check(&mut c, "PUT", "/apps/web/down", "", 204);
    check(&mut c, "DELETE", "/apps/web/out", "", 204);
    let p = s.periods;
    let deadline = p.down_after + p.late + Duration::from_secs(5);
    eventually(deadline, "web/down to read down", || {
        check(&mut c, "PUT", "/apps/web/up", "", 204);
        let v = check(&mut c, "GET", "/apps/web/down", "", 200).json();
        (v["status"] == "down").then_some(())
    });
    check(&mut c, "PUT", "/apps/web/up", "", 204);

    let cases: &[(&str, &[&str])] = &[
        ("", &["down", "out", "starting", "up"]),
        ("?status=up", &["up"]),
        ("?status=up,starting", &["starting", "up"]),
        ("?status=down", &["down"]),
        ("?status=out-of-service", &["out"]),
        ("?status=up&status=down", &["down", "up"]),
        ("?status=up%2Cdown", &["down", "up"]),
        ("?status=up&foo=bar", &["up"]),
        ("?zone=eu", &["down", "out", "starting", "up"]),
    ];
    for (query, want) in cases {
        // `up` reads down --down-after past its last heartbeat: renewed
        // before each read, and read again where this machine took longer.
        let mut got = Vec::new();
        for _ in 0..20 {
            check(&mut c, "PUT", "/apps/web/up", "", 204);
            got = filtered(&mut c, query);
            if got == *want {
                break;
            }
        }
        assert_eq!(got, *want, "{query}");
    }
    // An app with none left is listed, with `"instances": []`.
    let all = check(&mut c, "GET", "/apps?status=up", "", 200).json();
    assert_eq!(
        app_in(&all, "db"),
        json!({"name": "db", "instances": []}),
        "{all}"
    );
    let db = check(&mut c, "GET", "/apps/db?status=down", "", 200).json();
    assert_eq!(db, json!({"name": "db", "instances": []}));
    let bad = [
        "?status=UP",
        "?status=",
        "?status=up,",
        "?status=ready",
        "?status=%zz",
    ];
    refused_on_both_lists(&mut c, &bad, &["status", "escape"]);
}

/// Each query answers 400 on the list and on an app, with an error that
/// says one of `says`.
#[track_caller]
fn refused_on_both_lists(c: &mut impl Exchange, queries: &[&str], says: &[&str]) {
    for query in queries {
        for path in ["/apps", "/apps/web"] {
            let e = check(c, "GET", &format!("{path}{query}"), "", 400).error();
            assert!(says.iter().any(|s| e.contains(s)), "{path}{query}: {e}");
        }
    }
}

/// Which indexes a step changes: of the app `web`, of the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Moved {
    app: bool,
    list: bool,
}

fn the_index_changes_with_every_change_and_only_then(s: &Registry) {
    let mut c = s.client();
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
    let a_elsewhere = instance_body("a", "10.0.0.9", 80);
    let a_moved = instance_body("a", "10.0.0.2", 81);
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
        // The list's index is the latest of any change, and exact in JSON.
        assert!(all2 >= app2);
        assert!(all2 < 1 << 53, "an index above 2^53: {all2}");
    }
}

fn a_watch_with_another_index_answers_at_once(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let index = index_of(&mut c, "/apps/web");
    for path in ["/apps/web", "/apps"] {
        for other in [0, index + 1, u64::MAX] {
            let r = check(
                &mut c,
                "GET",
                &format!("{path}?index={other}&wait=10m"),
                "",
                200,
            );
            assert!(r.header("registro-index").is_some(), "{path}");
        }
    }
    // A watch of an app that does not exist: 404 at once.
    let r = check(&mut c, "GET", &format!("/apps/db?index={index}"), "", 404);
    assert!(r.error().contains("no such application"), "{}", r.error());
}

#[test]
fn bad_watch_parameters_answer_400() {
    let server = start();
    let mut c = Conn::open(server.local_addr());
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let bad = [
        "?index=x",
        "?index=-1",
        "?index=",
        "?index=1&wait=1h",
        "?index=1&wait=601s",
        "?index=1&wait=11m",
        "?index=1&wait=fast",
        "?index=1&wait=1.5s",
    ];
    refused_on_both_lists(&mut c, &bad, &["index must", "wait must"]);
}

fn location_escapes_dot_segments(s: &Registry) {
    let mut c = s.client();
    for (name, encoded) in [("..", "%2E%2E"), (".", "%2E")] {
        let r = check(&mut c, "POST", "/apps", &app_body(name), 201);
        let location = format!("/registro/1.0/apps/{encoded}");
        assert_eq!(r.header("location"), Some(location.as_str()));
        check(&mut c, "GET", &format!("/apps/{encoded}"), "", 200);
        let r = check(
            &mut c,
            "POST",
            &format!("/apps/{encoded}"),
            &instance_body("..", "10.0.0.1", 80),
            201,
        );
        assert_eq!(
            r.header("location"),
            Some(format!("{location}/%2E%2E").as_str())
        );
    }
}

#[test]
fn time_changes_are_stored_within_a_second_whatever_sweep_every() {
    // Nothing reads the app: only the ticker can notice, and the log says
    // when it did.
    let server = crate::support::Proc::start(&[
        "--down-after",
        "0.3",
        "--evict-after",
        "1",
        "--sweep-every",
        "3600",
    ]);
    let mut c = Conn::open(server.addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "a", "10.0.0.1", 80);
    // `renewed` is taken before the heartbeat is sent, so every change
    // comes true after it: the lower bounds hold on any machine. Noticing
    // them at all, with no full pass due for an hour, is the ticker's doing;
    // that it wakes within a second of a due time is `wake_at`'s unit test
    // (a bound on this machine's scheduling here would only measure load).
    let renewed = std::time::Instant::now();
    check(&mut c, "PUT", "/apps/web/a", "", 204);
    // The instance reads `down` from 0.3 s to 1 s; a ticker that first runs
    // after that (a machine stalled for the whole window) finds it removed
    // and logs only that, so the `down` line is checked when it comes.
    let noticed = Duration::from_secs(10);
    let first = crate::support::eventually(noticed, "a down or removed line", || {
        server.lines().into_iter().find(|l| {
            l.contains("\"a\" of \"web\" is down") || l.contains("\"a\" of \"web\" removed")
        })
    });
    let down = renewed.elapsed();
    server.wait_line("\"a\" of \"web\" removed", noticed);
    let removed = renewed.elapsed();
    server.wait_line("application \"web\" removed", noticed);
    let gone = renewed.elapsed();
    println!("{first:?} after {down:?}, removed after {removed:?}, app removed after {gone:?}");
    assert!(down >= Duration::from_millis(300) && removed >= Duration::from_millis(1000));
    assert!(gone >= Duration::from_millis(2000));
}
