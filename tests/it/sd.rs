//! Prometheus service discovery (`GET /registro/1.0/sd/prometheus`, API.md
//! Part 5): the HTTP SD format over HTTP, and a real Prometheus whose
//! `http_sd_configs` point at the server, with a read token, relabelling
//! from metadata, and dropping an instance that goes `down`.
//!
//! The Prometheus test prints one SKIP line naming what to install where
//! Prometheus is missing, and fails when `CI=true`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::app_body;
use crate::ops::Prometheus;
use crate::support::{self, eventually, Conn, Reply, TempDir};

/// Sends `METHOD /registro/1.0PATH` with `body` and, if given, a bearer token.
fn send(c: &mut Conn, method: &str, path: &str, body: &str, token: Option<&str>) -> Reply {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    c.send_raw(
        format!(
            "{method} /registro/1.0{path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
        method == "HEAD",
    )
}

/// Creates `app` if new and registers `id` at `ip:port` with `metadata`.
fn register(
    c: &mut Conn,
    token: Option<&str>,
    app: &str,
    id: &str,
    addr: (&str, u16),
    metadata: Value,
) {
    let created = send(c, "POST", "/apps", &app_body(app), token).status;
    assert!(
        created == 201 || created == 409,
        "creating {app}: {created}"
    );
    let body = json!({"id": id, "ip": addr.0, "port": addr.1, "metadata": metadata}).to_string();
    let r = send(c, "POST", &format!("/apps/{app}"), &body, token);
    assert_eq!(r.status, 201, "registering {app}/{id}: {}", r.body);
}

fn renew(c: &mut Conn, token: Option<&str>, app: &str, id: &str) {
    let r = send(c, "PUT", &format!("/apps/{app}/{id}"), "", token);
    assert_eq!(r.status, 204, "heartbeat of {app}/{id}: {}", r.body);
}

/// The SD answer as (target, labels) pairs, in the order given.
fn groups(r: &Reply) -> Vec<(String, BTreeMap<String, String>)> {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let groups = r.json();
    groups
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", r.body))
        .iter()
        .map(|g| {
            let targets = g["targets"].as_array().expect("targets");
            assert_eq!(targets.len(), 1, "one target a group: {g}");
            let labels = g["labels"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string label").to_string()))
                .collect();
            (targets[0].as_str().expect("a string").to_string(), labels)
        })
        .collect()
}

fn targets(r: &Reply) -> Vec<String> {
    groups(r).into_iter().map(|(t, _)| t).collect()
}

#[test]
fn target_groups_carry_the_labels_of_up_instances() {
    let server = support::start();
    let mut c = Conn::open(server.local_addr());
    register(
        &mut c,
        None,
        "web",
        "w-1",
        ("10.0.0.1", 80),
        json!({"zone": "eu-1", "metrics-path": "/m"}),
    );
    register(&mut c, None, "web", "w-2", ("::1", 8080), json!({}));
    register(&mut c, None, "web", "w-3", ("10.0.0.3", 80), json!({}));
    register(
        &mut c,
        None,
        "db",
        "d-1",
        ("db.internal", 5432),
        json!({"a-b": "dash", "a_b": "exact", "a.b": "dot"}),
    );
    for (app, id) in [("web", "w-1"), ("web", "w-2"), ("db", "d-1")] {
        renew(&mut c, None, app, id);
    }
    // w-3 stays `starting`: not a target unless asked for.
    let all = groups(&c.get("/sd/prometheus"));
    let label = |app: &str, id: &str| {
        BTreeMap::from([
            ("__meta_registro_app".to_string(), app.to_string()),
            ("__meta_registro_instance".to_string(), id.to_string()),
            ("__meta_registro_status".to_string(), "up".to_string()),
        ])
    };
    let mut d1 = label("db", "d-1");
    d1.insert("__meta_registro_metadata_a_b".into(), "exact".into());
    let mut w1 = label("web", "w-1");
    w1.insert("__meta_registro_metadata_zone".into(), "eu-1".into());
    w1.insert("__meta_registro_metadata_metrics_path".into(), "/m".into());
    assert_eq!(
        all,
        vec![
            ("db.internal:5432".to_string(), d1),
            ("10.0.0.1:80".to_string(), w1),
            ("[::1]:8080".to_string(), label("web", "w-2")),
        ]
    );

    // ?status= as on the listing; ?app= narrows, repeated; unknown apps add nothing.
    assert_eq!(
        targets(&c.get("/sd/prometheus?status=starting")),
        ["10.0.0.3:80"]
    );
    assert_eq!(
        targets(&c.get("/sd/prometheus?status=up,starting&app=web")),
        ["10.0.0.1:80", "[::1]:8080", "10.0.0.3:80"]
    );
    assert_eq!(
        targets(&c.get("/sd/prometheus?app=db&app=nope&app=db")),
        ["db.internal:5432"]
    );
    assert_eq!(
        targets(&c.get("/sd/prometheus?app=nope")),
        Vec::<String>::new()
    );
    let bad = c.get("/sd/prometheus?status=UP");
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("unknown status"), "{}", bad.body);

    // Out of service: gone from the default answer.
    assert_eq!(c.delete("/apps/web/w-1").status, 204);
    assert_eq!(
        targets(&c.get("/sd/prometheus")),
        ["db.internal:5432", "[::1]:8080"]
    );
    let head = send(&mut c, "HEAD", "/sd/prometheus", "", None);
    assert_eq!(head.status, 200);
    let post = c.post("/sd/prometheus", "{}");
    assert_eq!(
        (post.status, post.header("allow")),
        (405, Some("GET, HEAD"))
    );

    // Counted under its template, whatever the query.
    let metrics = c.send_raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", false);
    let counted = "registro_http_requests_total{route=\"/registro/1.0/sd/prometheus\",method=\"GET\",code=\"200\"}";
    let line = metrics
        .body
        .lines()
        .find(|l| l.starts_with(counted))
        .unwrap_or_else(|| panic!("no SD requests in\n{}", metrics.body));
    assert!(line.ends_with(" 6"), "{line}");
}

/// Where reads need a token, so does discovery: 401 with the challenge
/// without one, the targets with a read token.
#[test]
fn discovery_needs_a_read_token_where_reads_do() {
    let dir = TempDir::new("sd-tokens");
    let (tokens, _) = support::token_files(&dir, "w-token", "r-token");
    let server = support::start_with(|c| c.tokens = tokens);
    let mut c = Conn::open(server.local_addr());
    register(
        &mut c,
        Some("w-token"),
        "web",
        "w-1",
        ("10.0.0.1", 80),
        json!({}),
    );
    renew(&mut c, Some("w-token"), "web", "w-1");
    let refused = c.get("/sd/prometheus");
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"registro\"")
    );
    let read = send(&mut c, "GET", "/sd/prometheus", "", Some("r-token"));
    assert_eq!(targets(&read), ["10.0.0.1:80"]);
}

/// A real Prometheus discovers the instances through `http_sd_configs`
/// with a read token, relabels from metadata, and drops the instance that
/// goes `down` within a refresh.
#[test]
fn prometheus_discovers_up_instances_and_drops_one_that_goes_down() {
    if !support::installed(
        "sd::prometheus_discovers_up_instances_and_drops_one_that_goes_down",
        &["prometheus"],
        "prometheus",
    ) {
        return;
    }
    let dir = TempDir::new("prometheus-sd");
    let (writer, reader) = ("w-sd-test", "r-sd-test");
    let (tokens, read) = support::token_files(&dir, writer, reader);
    // Heartbeats every 200 ms keep instances up for 5 s.
    let server = support::start_with(|c| {
        c.down_after = Duration::from_secs(5);
        c.evict_after = Duration::from_secs(600);
        c.tokens = tokens;
    });
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    // Targets on loopback that answer nothing Prometheus cares about.
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a loopback port"))
        .collect();
    let port = |k: usize| listeners[k].local_addr().expect("port").port();
    let w = Some(writer);
    register(
        &mut c,
        w,
        "web",
        "w-1",
        ("127.0.0.1", port(0)),
        json!({"zone": "eu-1", "metrics-path": "/custom"}),
    );
    register(
        &mut c,
        w,
        "web",
        "w-2",
        ("127.0.0.1", port(1)),
        json!({"zone": "eu-2"}),
    );
    register(&mut c, w, "db", "d-1", ("127.0.0.1", port(2)), json!({}));
    register(&mut c, w, "db", "d-2", ("127.0.0.1", 9), json!({}));
    for (app, id) in [("web", "w-1"), ("web", "w-2"), ("db", "d-1")] {
        renew(&mut c, w, app, id);
    }
    // d-2 stays `starting`: never a target. Without the token: 401.
    let refused = c.get("/sd/prometheus");
    assert_eq!(refused.status, 401, "{}", refused.body);

    let (beating, stop_w2) = (
        Stop(Arc::new(AtomicBool::new(true))),
        Arc::new(AtomicBool::new(false)),
    );
    let heartbeats = {
        let (beating, stop_w2) = (Arc::clone(&beating.0), Arc::clone(&stop_w2));
        let mut c = Conn::open(addr);
        thread::spawn(move || {
            while beating.load(Ordering::Relaxed) {
                if !stop_w2.load(Ordering::Relaxed) {
                    renew(&mut c, w, "web", "w-2");
                }
                renew(&mut c, w, "web", "w-1");
                renew(&mut c, w, "db", "d-1");
                thread::sleep(Duration::from_millis(200));
            }
        })
    };

    // docs/prometheus.md's configuration: the read token, and labels
    // relabelled from the instance's metadata.
    let config = format!(
        "global:\n  scrape_interval: 1m\n\
         scrape_configs:\n\
         \x20 - job_name: registro-sd\n\
         \x20   http_sd_configs:\n\
         \x20     - url: http://{addr}/registro/1.0/sd/prometheus\n\
         \x20       refresh_interval: 1s\n\
         \x20       authorization:\n\
         \x20         type: Bearer\n\
         \x20         credentials_file: {}\n\
         \x20   relabel_configs:\n\
         \x20     - source_labels: [__meta_registro_app]\n\
         \x20       target_label: app\n\
         \x20     - source_labels: [__meta_registro_instance]\n\
         \x20       target_label: instance\n\
         \x20     - source_labels: [__meta_registro_metadata_zone]\n\
         \x20       target_label: zone\n\
         \x20     - source_labels: [__meta_registro_metadata_metrics_path]\n\
         \x20       regex: (.+)\n\
         \x20       target_label: __metrics_path__\n",
        read.display()
    );
    let prometheus = Prometheus::start(dir.path(), &config);
    // instance -> (app, zone, scrape URL, the status label as discovered)
    let seen = || -> Option<BTreeMap<String, (String, String, String, String)>> {
        let reply = prometheus.get("/api/v1/targets?state=active")?;
        let targets = reply["data"]["activeTargets"].as_array()?;
        Some(
            targets
                .iter()
                .map(|t| {
                    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
                    let labels = &t["labels"];
                    (
                        text(&labels["instance"]),
                        (
                            text(&labels["app"]),
                            text(&labels["zone"]),
                            text(&t["scrapeUrl"]),
                            text(&t["discoveredLabels"]["__meta_registro_status"]),
                        ),
                    )
                })
                .collect(),
        )
    };
    let entry = |app: &str, zone: &str, port: u16, path: &str| {
        (
            app.to_string(),
            zone.to_string(),
            format!("http://127.0.0.1:{port}{path}"),
            "up".to_string(),
        )
    };
    let every_up = BTreeMap::from([
        ("w-1".to_string(), entry("web", "eu-1", port(0), "/custom")),
        ("w-2".to_string(), entry("web", "eu-2", port(1), "/metrics")),
        ("d-1".to_string(), entry("db", "", port(2), "/metrics")),
    ]);
    let mut last = None;
    eventually(
        Duration::from_secs(60),
        "Prometheus to discover the up instances",
        || {
            last = seen();
            (last.as_ref() == Some(&every_up)).then_some(())
        },
    );

    // w-2 falls silent: `down` after 5 s, and gone from Prometheus' targets
    // at its next refresh.
    stop_w2.store(true, Ordering::Relaxed);
    let mut rest = every_up.clone();
    rest.remove("w-2");
    eventually(Duration::from_secs(60), "Prometheus to drop w-2", || {
        (seen().as_ref() == Some(&rest)).then_some(())
    });
    let down = send(
        &mut c,
        "GET",
        "/sd/prometheus?status=down",
        "",
        Some(reader),
    );
    assert_eq!(targets(&down), [format!("127.0.0.1:{}", port(1))]);
    drop(beating);
    heartbeats.join().expect("the heartbeat thread");
}

/// A flag that reads `false` once dropped: the heartbeat thread stops
/// within a round even when the test fails before its end.
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}
