//! API.md, route by route: every row of the route table with its success and
//! each failure status, the exact JSON shapes, and every rule of Part 2
//! (error bodies, 405 with `Allow`, re-registration, validation limits, path
//! decoding, HEAD, keep-alive, `Expect: 100-continue`, chunked bodies).
//!
//! What reaches the store is a scenario, run on every store
//! (`scenarios.rs`); how requests are read and framed is tested on memory.
//! Requests go over kept-alive connections, so every test also shows that
//! the server keeps serving a connection after a 4xx.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use registro::Server;
use serde_json::{json, Value};

use crate::scenarios::{app_in, seen, table, Registry};
use crate::support::{agent, base, raw, start, Conn, Exchange, Reply};

table![
    Still: get_apps_lists_every_app,
    Still: post_apps_creates_an_app,
    Still: get_app_shows_its_instances,
    Still: post_app_registers_an_instance,
    Still: body_errors_state_each_fields_rule_in_words,
    Still: get_instance_shows_one_instance,
    Still: put_renews_an_instance,
    Still: delete_takes_an_instance_out_of_service,
    Still: reregistration_rules,
    Still: unsupported_methods_answer_405_with_allow,
    Still: a_trailing_slash_and_a_query_string_are_ignored,
    Still: path_segments_are_percent_decoded,
    Still: head_answers_like_get_without_a_body,
    Still: original_client_flow,
];

/// A fresh server and one keep-alive connection to it.
fn fresh() -> (Server, Conn) {
    let server = start();
    let conn = Conn::open(server.local_addr());
    (server, conn)
}

/// Sends `METHOD /registro/1.0PATH` with `body` and checks the status, and
/// that the answer is well formed for it (see [`well_formed`]).
#[track_caller]
pub(crate) fn check(
    c: &mut impl Exchange,
    method: &str,
    path: &str,
    body: &str,
    status: u16,
) -> Reply {
    let r = c.send(method, path, body);
    assert_eq!(
        r.status, status,
        "{method} {path} {body:.100} answered {}",
        r.body
    );
    well_formed(&r, method);
    r
}

/// Every error carries `Content-Type: application/json` and a body that is
/// exactly `{"error": "<non-empty message>"}` (no body for HEAD); a 200
/// carries JSON; a 204 carries nothing; every body ends with a newline.
#[track_caller]
pub(crate) fn well_formed(r: &Reply, method: &str) {
    if r.status >= 400 || r.status == 200 {
        let ct = r.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "{} answered with Content-Type {ct:?}",
            r.status
        );
    }
    if r.status >= 400 && method != "HEAD" {
        let v = r.json();
        let keys: Vec<&String> = v
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["error"], "error body {:?}", r.body);
        assert!(!r.error().trim().is_empty(), "empty error message");
    }
    if r.status == 204 {
        assert!(r.body.is_empty(), "204 with a body {:?}", r.body);
    }
    if !r.body.is_empty() {
        assert!(
            r.body.ends_with('\n'),
            "a body without its final newline: {:?}",
            r.body
        );
    }
}

pub(crate) fn now_secs() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// An Instance is exactly `{"id", "ip", "port", "status", "lastRenewal"}`,
/// `lastRenewal` whole Unix seconds near now.
#[track_caller]
pub(crate) fn assert_instance(v: &Value, id: &str, ip: &str, port: u16, status: &str) {
    let keys: BTreeSet<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("instance is not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["id", "ip", "port", "status", "lastRenewal"]),
        "{v}"
    );
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["ip"], ip, "{v}");
    assert_eq!(v["port"], port, "{v}");
    assert_eq!(v["status"], status, "{v}");
    let renewed = v["lastRenewal"]
        .as_i64()
        .unwrap_or_else(|| panic!("lastRenewal is not whole seconds: {v}"));
    assert!(
        (renewed - now_secs()).abs() <= 5,
        "lastRenewal {renewed} is not near now ({})",
        now_secs()
    );
}

/// `GET PATH` answers 200 with exactly this instance ([`assert_instance`]).
#[track_caller]
pub(crate) fn assert_reads(
    c: &mut impl Exchange,
    path: &str,
    id: &str,
    ip: &str,
    port: u16,
    status: &str,
) {
    let v = check(c, "GET", path, "", 200).json();
    assert_instance(&v, id, ip, port, status);
}

/// An App is `{"name", "instances"}`; `instances` may be left out when empty
/// (as the original did). Returns the instances.
#[track_caller]
pub(crate) fn assert_app(v: &Value, name: &str) -> Vec<Value> {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("app is not an object: {v}"));
    assert!(
        obj.keys().all(|k| k == "name" || k == "instances"),
        "unexpected fields in {v}"
    );
    assert_eq!(v["name"], name, "{v}");
    match obj.get("instances") {
        None => Vec::new(),
        Some(Value::Array(list)) => list.clone(),
        Some(other) => panic!("instances is not a list: {other}"),
    }
}

/// The instance ids of app `name`, sorted.
#[track_caller]
pub(crate) fn ids(c: &mut impl Exchange, name: &str) -> Vec<String> {
    let app = check(c, "GET", &format!("/apps/{name}"), "", 200).json();
    assert_app(&app, name);
    ids_in(&app)
}

/// The instance ids of an App's JSON, sorted.
pub(crate) fn ids_in(app: &Value) -> Vec<String> {
    let list = app["instances"].as_array().into_iter().flatten();
    let mut ids: Vec<String> = list
        .map(|i| i["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

pub(crate) fn app_body(name: &str) -> String {
    json!({ "name": name }).to_string()
}

pub(crate) fn instance_body(id: &str, ip: &str, port: u16) -> String {
    json!({ "id": id, "ip": ip, "port": port }).to_string()
}

/// Registers instance `id` of `app` at `ip:port`, expecting 201.
#[track_caller]
pub(crate) fn register(c: &mut impl Exchange, app: &str, id: &str, ip: &str, port: u16) -> Reply {
    check(
        c,
        "POST",
        &format!("/apps/{app}"),
        &instance_body(id, ip, port),
        201,
    )
}

/// A request line and headers for `target` (a whole path), with a body.
fn request(method: &str, target: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// --- One test per row of the route table ---------------------------------

fn get_apps_lists_every_app(s: &Registry) {
    let mut c = s.client();
    let r = check(&mut c, "GET", "/apps", "", 200);
    assert_eq!(r.json(), json!({ "applications": [] }));

    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    check(&mut c, "POST", "/apps", &app_body("db"), 201);
    let b = instance_body("web-1", "10.0.0.7", 8080);
    check(&mut c, "POST", "/apps/web", &b, 201);

    let v = check(&mut c, "GET", "/apps", "", 200).json();
    let keys: Vec<&String> = v
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys, ["applications"], "{v}");
    let apps = v["applications"].as_array().cloned().unwrap_or_default();
    assert_eq!(apps.len(), 2, "{v}");
    let find = |name: &str| {
        apps.iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed in {v}"))
    };
    assert!(assert_app(find("db"), "db").is_empty());
    let web = assert_app(find("web"), "web");
    assert_eq!(web.len(), 1, "{v}");
    assert_instance(&web[0], "web-1", "10.0.0.7", 8080, "starting");
}

fn post_apps_creates_an_app(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    assert!(assert_app(&check(&mut c, "GET", "/apps/web", "", 200).json(), "web").is_empty());
    check(&mut c, "POST", "/apps", &app_body("web"), 409);

    // 255 bytes is the longest name, counted in bytes: 127 two-byte
    // characters and one more byte.
    let long = "n".repeat(255);
    let wide = format!("{}x", "é".repeat(127));
    let unknown = r#"{"name": "extra", "instances": [1], "owner": {"team": "x"}}"#;
    for (body, status) in [
        (app_body(&long), 201),
        (app_body(&wide), 201),
        (unknown.to_string(), 201),
        (app_body("a b ü"), 201),
        (app_body(&"n".repeat(256)), 400),
        (app_body(&"é".repeat(128)), 400),
        (app_body(""), 400),
        (app_body("a/b"), 400),
        (app_body("/"), 400),
        (String::new(), 400),
        ("web".into(), 400),
        ("{".into(), 400),
        ("{}".into(), 400),
        ("[]".into(), 400),
        ("null".into(), 400),
        (r#"["web"]"#.into(), 400),
        (r#"{"name": 5}"#.into(), 400),
        (r#"{"name": null}"#.into(), 400),
        (r#"{"name": ["web"]}"#.into(), 400),
        (r#"{"name": {"n": "web"}}"#.into(), 400),
        (r#"{"nom": "web"}"#.into(), 400),
        (r#"{"name": "web2"} trailing"#.into(), 400),
    ] {
        check(&mut c, "POST", "/apps", &body, status);
    }
    // Invalid UTF-8 inside the JSON string.
    let r = s.conn(0).send_raw(
        b"POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\n{\"name\":\"\xff\"}",
        false,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    well_formed(&r, "POST");

    // The refused requests created nothing.
    let listed: BTreeSet<String> = check(&mut c, "GET", "/apps", "", 200).json()["applications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| a["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected: BTreeSet<String> = ["web", long.as_str(), wide.as_str(), "extra", "a b ü"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(listed, expected);
}

fn get_app_shows_its_instances(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "GET", "/apps/web", "", 404);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let v = check(&mut c, "GET", "/apps/web", "", 200).json();
    assert!(assert_app(&v, "web").is_empty());

    register(&mut c, "web", "web-1", "10.0.0.7", 8080);
    register(&mut c, "web", "web-2", "10.0.0.8", 9090);
    check(&mut c, "PUT", "/apps/web/web-2", "", 204);
    let v = check(&mut c, "GET", "/apps/web", "", 200).json();
    let mut list = assert_app(&v, "web");
    list.sort_by_key(|i| i["id"].as_str().unwrap_or_default().to_string());
    assert_eq!(list.len(), 2, "{v}");
    assert_instance(&list[0], "web-1", "10.0.0.7", 8080, "starting");
    assert_instance(&list[1], "web-2", "10.0.0.8", 9090, "up");

    // Names are exact: no case folding, no prefix match.
    check(&mut c, "GET", "/apps/WEB", "", 404);
    check(&mut c, "GET", "/apps/we", "", 404);
}

fn post_app_registers_an_instance(s: &Registry) {
    let mut c = s.client();
    let ok = instance_body("web-1", "10.0.0.7", 8080);
    check(&mut c, "POST", "/apps/web", &ok, 404);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    check(&mut c, "POST", "/apps/web", &ok, 201);
    assert_reads(
        &mut c,
        "/apps/web/web-1",
        "web-1",
        "10.0.0.7",
        8080,
        "starting",
    );

    let long = "i".repeat(255);
    for (body, status) in [
        (instance_body("p1", "10.0.0.1", 1), 201),
        (instance_body("p65535", "10.0.0.1", 65535), 201),
        (instance_body(&long, "10.0.0.1", 80), 201),
        (instance_body("v6", "::1", 80), 201),
        (instance_body("name", "db.internal", 80), 201),
        // Unknown fields are ignored, a status among them.
        (
            r#"{"id": "extra", "ip": "10.0.0.1", "port": 80, "status": "up", "x": [1]}"#.into(),
            201,
        ),
        (instance_body("p0", "10.0.0.1", 0), 400),
        (
            r#"{"id": "p", "ip": "10.0.0.1", "port": 65536}"#.into(),
            400,
        ),
        (
            r#"{"id": "p", "ip": "10.0.0.1", "port": 4294967376}"#.into(),
            400,
        ),
        (r#"{"id": "p", "ip": "10.0.0.1", "port": -1}"#.into(), 400),
        (r#"{"id": "p", "ip": "10.0.0.1", "port": 80.5}"#.into(), 400),
        (r#"{"id": "p", "ip": "10.0.0.1", "port": "80"}"#.into(), 400),
        (r#"{"id": "p", "ip": "10.0.0.1", "port": null}"#.into(), 400),
        (r#"{"id": 7, "ip": "10.0.0.1", "port": 80}"#.into(), 400),
        (r#"{"id": "p", "ip": 10, "port": 80}"#.into(), 400),
        (r#"{"id": "p", "ip": ["10.0.0.1"], "port": 80}"#.into(), 400),
        (r#"{"ip": "10.0.0.1", "port": 80}"#.into(), 400),
        (r#"{"id": "p", "port": 80}"#.into(), 400),
        (r#"{"id": "p", "ip": "10.0.0.1"}"#.into(), 400),
        (instance_body("p", "", 80), 400),
        (instance_body("", "10.0.0.1", 80), 400),
        (instance_body(&"i".repeat(256), "10.0.0.1", 80), 400),
        (instance_body("a/b", "10.0.0.1", 80), 400),
        (String::new(), 400),
        ("{".into(), 400),
        ("[]".into(), 400),
        ("null".into(), 400),
        ("web-1".into(), 400),
        (r#"["p", "10.0.0.1", 80]"#.into(), 400),
    ] {
        check(&mut c, "POST", "/apps/web", &body, status);
    }
    let mut expected = vec![
        "web-1".to_string(),
        "p1".into(),
        "p65535".into(),
        long,
        "v6".into(),
        "name".into(),
        "extra".into(),
    ];
    expected.sort();
    assert_eq!(
        ids(&mut c, "web"),
        expected,
        "a refused registration left a trace"
    );
    assert_reads(
        &mut c,
        "/apps/web/extra",
        "extra",
        "10.0.0.1",
        80,
        "starting",
    );
    assert_reads(
        &mut c,
        "/apps/web/p65535",
        "p65535",
        "10.0.0.1",
        65535,
        "starting",
    );
}

/// A body that breaks a rule is answered with the rule in words, never in
/// the terms of the Rust types behind it (`invalid type: string "8080",
/// expected u64`).
fn body_errors_state_each_fields_rule_in_words(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let mut says = |path: &str, body: &str, message: &str| {
        let r = check(&mut c, "POST", path, body, 400);
        assert_eq!(r.error(), message, "POST {path} {body}");
    };
    let port = "port must be a number from 1 to 65535";
    for (value, shown) in [
        (r#""8080""#, r#"the string "8080""#),
        ("80.5", "80.5"),
        ("-1", "-1"),
        ("70000", "70000"),
        ("null", "null"),
    ] {
        let body = format!(r#"{{"id": "a", "ip": "10.0.0.1", "port": {value}}}"#);
        says("/apps/web", &body, &format!("{port}, not {shown}"));
    }
    let missing = "port is missing: it must be a number from 1 to 65535";
    says("/apps/web", r#"{"id": "a", "ip": "10.0.0.1"}"#, missing);
    let id = "id must be a string of 1 to 255 bytes without '/', not 7";
    says(
        "/apps/web",
        r#"{"id": 7, "ip": "10.0.0.1", "port": 80}"#,
        id,
    );
    let ip = "ip must be a string that is not empty (the address the instance is reached at), not a list";
    says(
        "/apps/web",
        r#"{"id": "a", "ip": ["10.0.0.1"], "port": 80}"#,
        ip,
    );
    let example = r#"{"id": "web-1", "ip": "10.0.0.7", "port": 8080}"#;
    let empty = format!("the request body is empty; send a JSON object such as {example}");
    says("/apps/web", "", &empty);
    let list = format!("the request body must be a JSON object such as {example}, not a list");
    says("/apps/web", r#"["a", "10.0.0.1", 80]"#, &list);
    let name = "name must be a string of 1 to 255 bytes without '/'";
    says("/apps", r#"{"name": 5}"#, &format!("{name}, not 5"));
    let missing = "name is missing: it must be a string of 1 to 255 bytes without '/'";
    says("/apps", r#"{"nom": "web"}"#, missing);
    // Not JSON at all: where, and what a body looks like.
    let r = check(&mut c, "POST", "/apps", "{name: web}", 400);
    assert!(
        r.error()
            .starts_with("the request body is not valid JSON (")
            && r.error()
                .ends_with(r#"send a JSON object such as {"name": "web"}"#),
        "{}",
        r.error()
    );
}

/// `METHOD /apps/web/web-1` answers 404 without the app, then without the
/// instance; then `web-1` is registered at 10.0.0.7:8080.
fn not_found_until_registered(c: &mut impl Exchange, method: &str) {
    check(c, method, "/apps/web/web-1", "", 404);
    check(c, "POST", "/apps", &app_body("web"), 201);
    check(c, method, "/apps/web/web-1", "", 404);
    register(c, "web", "web-1", "10.0.0.7", 8080);
}

/// `web-1` (registered by [`not_found_until_registered`]) reads `status`.
#[track_caller]
fn web_1_reads(c: &mut impl Exchange, status: &str) {
    assert_reads(c, "/apps/web/web-1", "web-1", "10.0.0.7", 8080, status);
}

fn get_instance_shows_one_instance(s: &Registry) {
    let mut c = s.client();
    not_found_until_registered(&mut c, "GET");
    web_1_reads(&mut c, "starting");
    check(&mut c, "GET", "/apps/web/web-2", "", 404);
    check(&mut c, "GET", "/apps/db/web-1", "", 404);
}

fn put_renews_an_instance(s: &Registry) {
    let mut c = s.client();
    not_found_until_registered(&mut c, "PUT");
    check(&mut c, "PUT", "/apps/web/web-1", "", 204);
    web_1_reads(&mut c, "up");
    // Up stays up; a request body is ignored.
    check(
        &mut c,
        "PUT",
        "/apps/web/web-1",
        "{\"status\": \"down\"}",
        204,
    );
    check(&mut c, "PUT", "/apps/web/web-1", "not json", 204);
    web_1_reads(&mut c, "up");

    check(&mut c, "DELETE", "/apps/web/web-1", "", 204);
    check(&mut c, "PUT", "/apps/web/web-1", "", 403);
    // The refused heartbeat changed nothing.
    web_1_reads(&mut c, "out-of-service");
    check(&mut c, "PUT", "/apps/web/web-2", "", 404);
}

fn delete_takes_an_instance_out_of_service(s: &Registry) {
    let mut c = s.client();
    not_found_until_registered(&mut c, "DELETE");
    register(&mut c, "web", "up-1", "10.0.0.7", 8080);
    check(&mut c, "PUT", "/apps/web/up-1", "", 204);
    for id in ["up-1", "web-1"] {
        let path = format!("/apps/web/{id}");
        check(&mut c, "DELETE", &path, "", 204);
        assert_reads(&mut c, &path, id, "10.0.0.7", 8080, "out-of-service");
    }
    // Out of service is still listed.
    assert_eq!(ids(&mut c, "web"), ["up-1", "web-1"]);
}

// --- Part 2 ---------------------------------------------------------------

/// API.md Part 2's re-registration rules.
fn reregistration_rules(s: &Registry) {
    let c = &mut s.client();
    check(c, "POST", "/apps", &app_body("web"), 201);
    let here = instance_body("w", "10.0.0.1", 80);

    // Same address while starting: idempotent.
    check(c, "POST", "/apps/web", &here, 201);
    check(c, "POST", "/apps/web", &here, 201);
    assert_reads(c, "/apps/web/w", "w", "10.0.0.1", 80, "starting");

    // Same address while up: back to starting.
    check(c, "PUT", "/apps/web/w", "", 204);
    check(c, "POST", "/apps/web", &here, 201);
    assert_reads(c, "/apps/web/w", "w", "10.0.0.1", 80, "starting");

    // Live at another address (port or ip differ): 409, and nothing changes.
    for (ip, port) in [("10.0.0.1", 81), ("10.0.0.2", 80), ("10.0.0.2", 81)] {
        check(c, "POST", "/apps/web", &instance_body("w", ip, port), 409);
    }
    check(c, "PUT", "/apps/web/w", "", 204);
    check(
        c,
        "POST",
        "/apps/web",
        &instance_body("w", "10.0.0.2", 80),
        409,
    );
    assert_reads(c, "/apps/web/w", "w", "10.0.0.1", 80, "up");

    // Out of service: replaced at the new address, and heartbeats work again.
    check(c, "DELETE", "/apps/web/w", "", 204);
    register(c, "web", "w", "10.0.0.9", 9090);
    assert_reads(c, "/apps/web/w", "w", "10.0.0.9", 9090, "starting");
    check(c, "PUT", "/apps/web/w", "", 204);
    // Out of service, same address: back too.
    check(c, "DELETE", "/apps/web/w", "", 204);
    register(c, "web", "w", "10.0.0.9", 9090);
    check(c, "PUT", "/apps/web/w", "", 204);
    assert_eq!(ids(c, "web"), ["w"], "re-registration duplicated the id");
}

fn unsupported_methods_answer_405_with_allow(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "w", "10.0.0.1", 80);

    let collection: &[&str] = &["GET", "POST"];
    let instance: &[&str] = &["GET", "PUT", "DELETE"];
    for (path, refused, allowed) in [
        (
            "/apps",
            &["PUT", "DELETE", "PATCH", "OPTIONS", "BREW"][..],
            collection,
        ),
        ("/apps/", &["PUT", "DELETE", "PATCH"][..], collection),
        (
            "/apps/web",
            &["PUT", "DELETE", "PATCH", "OPTIONS"][..],
            collection,
        ),
        ("/apps/nope", &["PUT", "DELETE", "PATCH"][..], collection),
        (
            "/apps/web/w",
            &["POST", "PATCH", "OPTIONS", "BREW"][..],
            instance,
        ),
        ("/apps/web/nope", &["POST", "PATCH"][..], instance),
        ("/apps/nope/nope/", &["POST", "PATCH"][..], instance),
    ] {
        for method in refused {
            let r = check(&mut c, method, path, "", 405);
            let allow: BTreeSet<String> = r
                .header("allow")
                .unwrap_or_else(|| panic!("405 without Allow for {method} {path}"))
                .split(',')
                .map(|m| m.trim().to_string())
                .collect();
            for m in allowed {
                assert!(
                    allow.contains(*m),
                    "{method} {path}: Allow {allow:?} lacks {m}"
                );
            }
            assert!(!allow.contains(*method), "{method} {path}: Allow {allow:?}");
        }
    }
    // Nothing refused changed anything.
    assert_reads(&mut c, "/apps/web/w", "w", "10.0.0.1", 80, "starting");
    assert_eq!(ids(&mut c, "web"), ["w"]);
}

#[test]
fn unknown_routes_answer_404_with_json() {
    let (_s, mut c) = fresh();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    // `/` is the dashboard (API.md Part 3, tested in ops.rs).
    for target in [
        "/registro",
        "/registro/",
        "/registro/1.0",
        "/registro/1.0/",
        "/registro/2.0/apps",
        "/registro/1.0x/apps",
        "/registro/1.0/applications",
        "/registro/1.0/app",
        "/registro/1.0/web",
        "/registro/1.0/apps/web/w/extra",
        "/registro/1.0/apps/web/w/extra/more",
        "/registro/1.0/apps//w",
        "/apps",
        "/favicon",
        "*",
    ] {
        for method in ["GET", "POST", "PUT"] {
            let r = c.send_raw(&request(method, target, ""), false);
            assert_eq!(r.status, 404, "{method} {target}: {}", r.body);
            well_formed(&r, method);
        }
    }
}

/// A trailing slash, a query string (unknown parameters, a `status` where
/// it filters nothing) or both change no answer of the route table.
fn a_trailing_slash_and_a_query_string_are_ignored(s: &Registry) {
    let mut c = s.client();
    let shapes: [fn(&str) -> String; 4] = [
        |p| format!("{p}/"),
        |p| format!("{p}?name=other&status=down&x"),
        |p| format!("{p}/?x"),
        |p| format!("{p}?"),
    ];
    for (k, shape) in shapes.into_iter().enumerate() {
        let (app, list) = (format!("/apps/web{k}"), shape("/apps"));
        let (w, nope) = (shape(&format!("{app}/w")), shape(&format!("{app}/nope")));
        check(&mut c, "GET", &list, "", 200);
        check(&mut c, "POST", &list, &app_body(&format!("web{k}")), 201);
        check(&mut c, "POST", &list, &app_body(&format!("web{k}")), 409);
        check(&mut c, "GET", &shape(&app), "", 200);
        let body = instance_body("w", "10.0.0.1", 80);
        check(&mut c, "POST", &shape(&app), &body, 201);
        check(&mut c, "PUT", &w, "", 204);
        assert_reads(&mut c, &w, "w", "10.0.0.1", 80, "up");
        check(&mut c, "DELETE", &w, "", 204);
        check(&mut c, "PUT", &w, "", 403);
        check(&mut c, "GET", &shape("/apps/nope"), "", 404);
        check(&mut c, "GET", &nope, "", 404);
        let apps = check(&mut c, "GET", "/apps", "", 200).json();
        assert_eq!(ids_in(&app_in(&apps, &format!("web{k}"))), ["w"], "{apps}");
        let listed = apps["applications"].as_array().map(Vec::len);
        assert_eq!(listed, Some(k + 1), "{apps}");
    }
    // An instance's route reads no query at all, not even its escapes.
    check(&mut c, "PUT", "/apps/web0/w?x=%zz", "", 403);
}

fn path_segments_are_percent_decoded(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web app"), 201);
    let v = check(&mut c, "GET", "/apps/web%20app", "", 200).json();
    assert_app(&v, "web app");
    check(
        &mut c,
        "POST",
        "/apps/web%20app",
        &instance_body("n° 1", "10.0.0.1", 80),
        201,
    );
    assert_reads(
        &mut c,
        "/apps/web%20app/n%C2%B0%201",
        "n° 1",
        "10.0.0.1",
        80,
        "starting",
    );
    check(&mut c, "PUT", "/apps/web%20app/n%c2%b0%201", "", 204);
    let v = check(&mut c, "GET", "/apps/web%20app", "", 200).json();
    assert_instance(&assert_app(&v, "web app")[0], "n° 1", "10.0.0.1", 80, "up");

    check(&mut c, "POST", "/apps", &app_body("café"), 201);
    assert_app(
        &check(&mut c, "GET", "/apps/caf%C3%A9", "", 200).json(),
        "café",
    );
    // Escapes of ordinary characters decode too.
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    assert_app(
        &check(&mut c, "GET", "/apps/%77%65%62", "", 200).json(),
        "web",
    );
    // A decoded '/' is part of the name, and no name has one.
    check(&mut c, "GET", "/apps/web%2Fx", "", 404);

    for (method, path) in [
        ("GET", "/apps/%zz"),
        ("GET", "/apps/%4"),
        ("GET", "/apps/%"),
        ("GET", "/apps/web%2"),
        ("GET", "/apps/%ff"),
        ("GET", "/apps/caf%C3"),
        ("GET", "/apps/%C3%28"),
        ("GET", "/apps/%E2%82"),
        ("GET", "/apps/%ED%A0%80"),
        ("POST", "/apps/%ff"),
        ("GET", "/apps/web/%zz"),
        ("PUT", "/apps/web/%ff"),
        ("DELETE", "/apps/web/%G0"),
    ] {
        check(&mut c, method, path, "", 400);
    }
}

fn head_answers_like_get_without_a_body(s: &Registry) {
    let mut c = s.client();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "w", "10.0.0.1", 80);
    for (path, status) in [
        ("/apps", 200),
        ("/apps/web", 200),
        ("/apps/web/w", 200),
        ("/apps/nope", 404),
        ("/apps/web/nope", 404),
    ] {
        let get = check(&mut c, "GET", path, "", status);
        // Conn reads no body after HEAD: were one sent, the next response
        // would not parse.
        let head = check(&mut c, "HEAD", path, "", status);
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "HEAD {path}"
        );
        assert_eq!(head.header("content-type"), get.header("content-type"));
    }
    check(&mut c, "GET", "/apps", "", 200);
}

#[test]
fn keep_alive_and_connection_close() {
    let (s, mut c) = fresh();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    for i in 0..20 {
        let id = format!("w{i}");
        register(&mut c, "web", &id, "10.0.0.1", 80);
        check(&mut c, "PUT", &format!("/apps/web/{id}"), "", 204);
    }
    assert_eq!(ids(&mut c, "web").len(), 20);

    // Pipelined: two requests in one write, two answers in order.
    let two = [
        request("GET", "/registro/1.0/apps/web/w1", ""),
        request("GET", "/registro/1.0/apps/nope", ""),
    ]
    .concat();
    let first = c.send_raw(&two, false);
    assert_eq!(first.status, 200, "{}", first.body);
    let second = c.read(false).expect("second pipelined answer");
    assert_eq!(second.status, 404, "{}", second.body);
    check(&mut c, "GET", "/apps", "", 200);

    // HTTP/1.1 with Connection: close, and HTTP/1.0 by default, close after
    // one answer.
    for req in [
        "GET /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /registro/1.0/apps HTTP/1.0\r\n\r\n",
    ] {
        let mut c = Conn::open(s.local_addr());
        let r = c.send_raw(req.as_bytes(), false);
        assert_eq!(r.status, 200, "{req:?}: {}", r.body);
        assert!(c.closed(), "{req:?}: the connection stayed open");
    }
}

#[test]
fn expect_100_continue() {
    let (s, mut c) = fresh();
    let body = app_body("web");
    c.write(
        format!(
            "POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let interim = c.read(true).expect("an interim answer");
    assert_eq!(interim.status, 100, "{interim:?}");
    let r = c.send_raw(body.as_bytes(), false);
    assert_eq!(r.status, 201, "{}", r.body);
    check(&mut c, "GET", "/apps/web", "", 200);

    // With a chunked body, on a fresh connection.
    let mut c = Conn::open(s.local_addr());
    c.write(b"POST /registro/1.0/apps/web HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.read(true).map(|r| r.status), Some(100));
    let b = instance_body("w", "10.0.0.1", 80);
    let r = c.send_raw(
        format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len()).as_bytes(),
        false,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    check(&mut c, "GET", "/apps/web/w", "", 200);
}

#[test]
fn chunked_request_bodies() {
    let (_s, mut c) = fresh();
    let r = c.send_raw(
        b"POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\n{\"nam\r\n8;ext=1\r\ne\": \"web\r\n2\r\n\"}\r\n0\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let b = instance_body("w", "10.0.0.1", 80);
    let (x, y) = b.split_at(10);
    let r = c.send_raw(
        format!(
            "POST /registro/1.0/apps/web HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:X}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\nX-Trailer: 1\r\n\r\n",
            x.len(),
            y.len()
        )
        .as_bytes(),
        false,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_reads(&mut c, "/apps/web/w", "w", "10.0.0.1", 80, "starting");
    // A chunked body that is not the JSON asked for is a 400 like any other.
    let r = c.send_raw(
        b"POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}x\r\n0\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    well_formed(&r, "POST");
    check(&mut c, "GET", "/apps", "", 200);
}

/// `{"name": NAME, "pad": "xxx..."}` of exactly `len` bytes.
fn padded(name: &str, len: usize) -> String {
    let shell = json!({ "name": name, "pad": "" }).to_string();
    let body = json!({ "name": name, "pad": "x".repeat(len - shell.len()) }).to_string();
    assert_eq!(body.len(), len);
    body
}

#[test]
fn bodies_up_to_64_kib() {
    let (s, mut c) = fresh();
    check(&mut c, "POST", "/apps", &padded("big", 64 * 1024), 201);
    check(&mut c, "GET", "/apps/big", "", 200);
    let instance = {
        let shell = r#"{"id":"w","ip":"10.0.0.1","port":80,"pad":""}"#;
        format!(
            r#"{{"id":"w","ip":"10.0.0.1","port":80,"pad":"{}"}}"#,
            "y".repeat(64 * 1024 - shell.len())
        )
    };
    assert_eq!(instance.len(), 64 * 1024);
    check(&mut c, "POST", "/apps/big", &instance, 201);

    // One byte more: 413, with Content-Length or chunked.
    let over = padded("bigger", 64 * 1024 + 1);
    let r = raw(
        s.local_addr(),
        &request("POST", "/registro/1.0/apps", &over),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    well_formed(&r, "POST");
    let (x, y) = over.split_at(40_000);
    let chunked = format!(
        "POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\n\r\n",
        x.len(),
        y.len()
    );
    let r = raw(s.local_addr(), chunked.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    well_formed(&r, "POST");
    check(&mut c, "GET", "/apps/bigger", "", 404);
    assert_eq!(ids(&mut c, "big"), ["w"]);
}

#[test]
fn error_statuses_keep_the_connection_usable() {
    // The API's own refusals (400, 403, 404, 405, 409) leave the connection
    // open: one connection sees all of them and a success after each.
    let (_s, mut c) = fresh();
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    register(&mut c, "web", "w", "10.0.0.1", 80);
    check(&mut c, "DELETE", "/apps/web/w", "", 204);
    for (method, path, body, status) in [
        ("POST", "/apps", "{", 400),
        ("PUT", "/apps/web/w", "", 403),
        ("GET", "/apps/nope", "", 404),
        ("PATCH", "/apps", "", 405),
        ("POST", "/apps", r#"{"name":"web"}"#, 409),
    ] {
        check(&mut c, method, path, body, status);
        check(&mut c, "GET", "/apps/web", "", 200);
    }
}

// --- The original client's flow, with an HTTP client library -------------

fn original_client_flow(s: &Registry) {
    // Each service with a server of its own, as behind a balancer.
    let roots = [base(s.addr(0)), base(s.addr(1))];
    let agent = agent();
    let status = |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| -> (u16, String) {
        let mut r = r.expect("the request completes");
        let body = r.body_mut().read_to_string().unwrap_or_default();
        (r.status().as_u16(), body)
    };
    // Two services of the same app start one after the other: only the
    // first creates the app.
    for (k, (root, (id, port))) in roots
        .iter()
        .zip([("web-1", 8080u16), ("web-2", 8081)])
        .enumerate()
    {
        // The second starts once the registry has the first everywhere
        // (within the second Part 4 allows a server to see another's).
        if k == 1 {
            seen(s.addr(0), s.addr(1), s.periods.seen_within);
        }
        let (code, body) = status(agent.get(format!("{root}/apps")).call());
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).expect("JSON listing");
        let present = v["applications"]
            .as_array()
            .is_some_and(|apps| apps.iter().any(|a| a["name"] == "web"));
        assert_eq!(present, id == "web-2", "{v}");
        if !present {
            let (code, _) = status(
                agent
                    .post(format!("{root}/apps"))
                    .send_json(json!({"name": "web"})),
            );
            assert_eq!(code, 201);
        }
        let (code, _) = status(
            agent
                .post(format!("{root}/apps/web"))
                .send_json(json!({"id": id, "ip": "10.0.0.7", "port": port})),
        );
        assert_eq!(code, 201);
        let (code, body) = status(agent.put(format!("{root}/apps/web/{id}")).send_empty());
        assert_eq!((code, body.as_str()), (204, ""));
    }
    let [one, two] = &roots;
    let (code, body) = status(agent.get(format!("{two}/apps/web/web-1")).call());
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON instance");
    assert_instance(&v, "web-1", "10.0.0.7", 8080, "up");

    // Shutdown of web-1, then a late heartbeat.
    let (code, body) = status(agent.delete(format!("{one}/apps/web/web-1")).call());
    assert_eq!((code, body.as_str()), (204, ""));
    let (code, body) = status(agent.put(format!("{two}/apps/web/web-1")).send_empty());
    assert_eq!(code, 403, "{body}");
    let (code, body) = status(agent.get(format!("{two}/apps/web")).call());
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON app");
    let mut list = assert_app(&v, "web");
    list.sort_by_key(|i| i["id"].as_str().unwrap_or_default().to_string());
    assert_instance(&list[0], "web-1", "10.0.0.7", 8080, "out-of-service");
    assert_instance(&list[1], "web-2", "10.0.0.7", 8081, "up");
}

#[test]
fn fresh_connections_and_raw_reads_agree() {
    // The same answers over a new connection per request (the original
    // client's HTTP library often did that).
    let server = start();
    let addr = server.local_addr();
    let r = raw(
        addr,
        &request("POST", "/registro/1.0/apps", &app_body("web")),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = raw(addr, &request("GET", "/registro/1.0/apps", ""));
    assert_eq!(r.status, 200);
    assert_eq!(assert_app(&r.json()["applications"][0], "web").len(), 0);
    // HEAD over a raw connection: headers only, then the server closes or
    // waits; either way no body bytes arrive before the next response.
    let mut c = Conn::open(addr);
    c.write(b"HEAD /registro/1.0/apps/web HTTP/1.1\r\nHost: t\r\n\r\nGET /registro/1.0/apps/nope HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read(true).map(|r| r.status), Some(200));
    assert_eq!(c.read(false).map(|r| r.status), Some(404));
}

#[test]
fn absolute_form_targets_are_served() {
    // RFC 9112 3.2.2: a server must accept a request target in absolute
    // form (Go's net/http, the original's server, does).
    let (s, mut c) = fresh();
    let addr = s.local_addr();
    let r = c.send_raw(
        &request(
            "POST",
            &format!("http://{addr}/registro/1.0/apps"),
            &app_body("web"),
        ),
        false,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c.send_raw(
        &request("GET", &format!("http://{addr}/registro/1.0/apps/web"), ""),
        false,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    check(&mut c, "GET", "/apps/web", "", 200);
}
