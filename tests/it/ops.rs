//! The operator's side: `/healthz`, `/metrics` (checked by `promtool` and
//! scraped by a real Prometheus), and a stop that a stalled stderr cannot
//! hold. The dashboard in a real headless Chromium is in `dashboard.rs`.
//!
//! The tests that need Prometheus print one SKIP line naming
//! what to install where those are missing, and fail when `CI=true`.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{app_body, instance_body};
use crate::scenarios::{table, Registry};
use crate::support::{self, eventually, read_reply, Conn, Exchange, Proc, TempDir};

table![Still: metrics_count_the_registry];

// ---------------------------------------------------------------------------
// Helpers

/// Whether every program is installed (see [`support::installed`]).
fn installed(test: &str, programs: &[&str], packages: &str) -> bool {
    support::installed(&format!("ops::{test}"), programs, packages)
}

/// A loopback port free a moment ago (for programs that cannot report the
/// port they bound).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A child process killed and reaped on drop.
pub(crate) struct Killed(pub(crate) Child);

impl Killed {
    /// Starts `command` with no input and its output discarded.
    pub(crate) fn spawn(command: &mut Command) -> Killed {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{:?} does not start: {e}", command.get_program()));
        Killed(child)
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prometheus with `config` (written to `dir`, its data kept there too) on
/// a free loopback port, killed when dropped.
pub(crate) struct Prometheus {
    _child: Killed,
    port: u16,
    /// A plain agent: the contract check of `support::agent` is for
    /// Registro's answers, and this port may be one that a server of
    /// another test had.
    agent: ureq::Agent,
}

impl Prometheus {
    pub(crate) fn start(dir: &Path, config: &str) -> Prometheus {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("prometheus.yml");
        let port = free_port();
        let child = Killed::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        );
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Prometheus {
            _child: child,
            port,
            agent,
        }
    }

    /// The JSON its HTTP API answers to `GET path`; `None` while it does
    /// not answer 200 with JSON.
    pub(crate) fn get(&self, path: &str) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut answer = self.agent.get(&url).call().ok()?;
        serde_json::from_str(&answer.body_mut().read_to_string().ok()?).ok()
    }
}

/// A path segment, percent-encoded but for RFC 3986's unreserved bytes.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Creates `app` (if new) and registers instance `id` of it; the answer to
/// the registration.
pub(crate) fn register(
    c: &mut impl Exchange,
    app: &str,
    id: &str,
    ip: &str,
    port: u16,
) -> support::Reply {
    let created = c.send("POST", "/apps", &app_body(app)).status;
    assert!(
        created == 201 || created == 409,
        "creating {app:?}: {created}"
    );
    c.send(
        "POST",
        &format!("/apps/{}", segment(app)),
        &instance_body(id, ip, port),
    )
}

fn get(addr: SocketAddr, path: &str) -> support::Reply {
    Conn::open(addr).send_raw(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
        false,
    )
}

/// The samples of an exposition, `name{labels}` to value; checks the shape
/// of every line on the way.
fn samples(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

pub(crate) fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let reply = get(addr, "/metrics");
    assert_eq!(reply.status, 200);
    samples(&reply.body)
}

#[track_caller]
fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} missing"))
}

// ---------------------------------------------------------------------------
// /healthz and the routes' methods

#[track_caller]
fn check_route(
    addr: SocketAddr,
    method: &str,
    path: &str,
    status: u16,
    content_type: &str,
    body_has: &str,
) {
    let head = method == "HEAD";
    let reply = Conn::open(addr).send_raw(
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        head,
    );
    assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some(content_type),
        "{method} {path}"
    );
    assert!(reply.body.contains(body_has), "{method} {path}: {reply:?}");
    if status == 405 {
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
        assert!(reply.error().contains(method));
    }
    if head {
        let length: usize = reply.header("content-length").unwrap().parse().unwrap();
        assert!(length > 0, "HEAD tells the length of the GET's body");
    }
}

#[test]
fn operator_routes() {
    let server = support::start();
    let addr = server.local_addr();
    let json = "application/json";
    let html = "text/html; charset=utf-8";
    let text = "text/plain; version=0.0.4; charset=utf-8";
    check_route(addr, "GET", "/healthz", 200, json, "");
    assert_eq!(get(addr, "/healthz").json()["status"], "ok");
    check_route(addr, "HEAD", "/healthz", 200, json, "");
    check_route(
        addr,
        "GET",
        "/metrics",
        200,
        text,
        "# TYPE registro_apps gauge",
    );
    check_route(addr, "HEAD", "/metrics", 200, text, "");
    check_route(addr, "GET", "/", 200, html, "<title>Registro</title>");
    check_route(
        addr,
        "GET",
        "/?filter=web",
        200,
        html,
        "<title>Registro</title>",
    );
    check_route(addr, "HEAD", "/", 200, html, "");
    for path in ["/", "/healthz", "/metrics", "/favicon.ico"] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            check_route(addr, method, path, 405, json, "not allowed");
        }
    }
    // A browser's request for an icon is not a 404 (the page has its own).
    for method in ["GET", "HEAD"] {
        let reply = Conn::open(addr).send_raw(
            format!("{method} /favicon.ico HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
            true,
        );
        assert_eq!(reply.status, 204, "{method} /favicon.ico: {reply:?}");
    }
    // Other paths are the registry's: still its 404.
    assert_eq!(get(addr, "/index.html").status, 404);
}

// ---------------------------------------------------------------------------
// /metrics

const FAMILIES: [&str; 17] = [
    "registro_apps",
    "registro_instances",
    "registro_registrations_total",
    "registro_heartbeats_total",
    "registro_evictions_total",
    "registro_http_requests_total",
    "registro_http_request_duration_seconds",
    "registro_connections_open",
    "registro_connections_rejected_total",
    "registro_watches_waiting",
    "registro_build_info",
    "registro_log_lines_dropped_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_cpu_seconds_total",
    "process_start_time_seconds",
    "process_max_fds",
];

/// What `/metrics` says of the registry on each of its servers: the gauges
/// of apps and instances by status (exact within a second), and the
/// counters, summed over the servers, of what was done through them.
fn metrics_count_the_registry(s: &Registry) {
    let mut c = s.client();
    for &addr in s.addrs() {
        let r = get(addr, "/healthz");
        assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
        let r = get(addr, "/");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(value(&metrics(addr), "registro_apps"), 0.0);
    }
    let odd = "we<b>\"b\\";
    for (app, id) in [("web", "w-1"), ("web", "w-2"), ("db", "d-1"), (odd, "o-1")] {
        assert_eq!(register(&mut c, app, id, "10.0.0.1", 80).status, 201);
    }
    // Again at the same address: a registration too.
    assert_eq!(register(&mut c, "web", "w-1", "10.0.0.1", 80).status, 201);
    assert_eq!(c.send("PUT", "/apps/web/w-1", "").status, 204);
    assert_eq!(c.send("DELETE", "/apps/db/d-1", "").status, 204);
    assert_eq!(c.get(&format!("/apps/{}", segment(odd))).status, 200);
    let gauges = [
        ("registro_apps", 3.0),
        ("registro_instances{status=\"starting\"}", 2.0),
        ("registro_instances{status=\"up\"}", 1.0),
        ("registro_instances{status=\"down\"}", 0.0),
        ("registro_instances{status=\"out-of-service\"}", 1.0),
    ];
    // Exact within a second (API.md Part 3).
    gauges_read(s, &gauges, Duration::from_secs(1));
    let per_server: Vec<HashMap<String, f64>> = s.addrs().iter().map(|a| metrics(*a)).collect();
    let route = "route=\"/registro/1.0/apps/{app}/{id}\"";
    let requests = |method: &str| {
        format!("registro_http_requests_total{{{route},method=\"{method}\",code=\"204\"}}")
    };
    let wrong: Vec<String> = [
        ("registro_registrations_total".to_string(), 5.0),
        ("registro_heartbeats_total".into(), 1.0),
        (requests("PUT"), 1.0),
        (requests("DELETE"), 1.0),
    ]
    .into_iter()
    .filter_map(|(series, expected)| {
        let counts: Vec<f64> = per_server
            .iter()
            .map(|m| m.get(&series).copied().unwrap_or(0.0))
            .collect();
        let total: f64 = counts.iter().sum();
        (total != expected).then(|| format!("{series}: {counts:?} (not {expected} in all)"))
    })
    .collect();
    assert!(wrong.is_empty(), "counted on each server: {wrong:#?}");
}

/// Every server of the registry has each gauge at its value `within`.
#[track_caller]
pub(crate) fn gauges_read(s: &Registry, gauges: &[(&str, f64)], within: Duration) {
    for &addr in s.addrs() {
        eventually(within, &format!("{gauges:?}"), || {
            let m = metrics(addr);
            gauges.iter().all(|(g, n)| value(&m, g) == *n).then_some(())
        });
    }
}

#[test]
fn metrics_describe_the_process_with_routes_as_templates() {
    let server = support::start();
    let addr = server.local_addr();
    let text = get(addr, "/metrics").body;
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing in\n{text}"
        );
    }
    let before = metrics(addr);
    assert_eq!(
        value(
            &before,
            &format!(
                "registro_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(value(&before, "process_resident_memory_bytes") > 1e5);
    assert!(value(&before, "process_open_fds") >= 3.0);
    let start = value(&before, "process_start_time_seconds");
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start <= wall && start > wall - 600.0,
        "started at {start}, now {wall}"
    );

    let mut c = Conn::open(addr);
    let odd = "we<b>\"b\\";
    assert_eq!(register(&mut c, odd, "w-1", "10.0.0.1", 80).status, 201);
    assert_eq!(c.put(&format!("/apps/{}/w-1", segment(odd))).status, 204);
    // `c`, kept alive, and the scrape's own connection; an earlier scrape's
    // close may still be on its way to the server.
    eventually(Duration::from_secs(3), "two open", || {
        let m = metrics(addr);
        (value(&m, "registro_connections_open") == 2.0).then_some(())
    });
    // No raw path or client string is a label: routes are templates.
    let text = get(addr, "/metrics").body;
    for raw in ["w-1", "/apps/we", "we<b>"] {
        assert!(!text.contains(raw), "{raw:?} in\n{text}");
    }
    for (series, _) in metrics(addr) {
        if let Some(labels) = series.strip_prefix("registro_http_requests_total{") {
            let route = labels.split('"').nth(1).unwrap();
            assert!(
                [
                    "/",
                    "/healthz",
                    "/metrics",
                    "/registro/1.0/apps",
                    "/registro/1.0/apps/{app}",
                    "/registro/1.0/apps/{app}/{id}",
                    "other"
                ]
                .contains(&route),
                "{series}"
            );
        }
    }
}

#[test]
fn evictions_are_counted() {
    let server = support::start_with(|c| {
        c.down_after = Duration::from_secs(1);
        c.evict_after = Duration::from_secs(2);
        c.sweep_every = Duration::from_millis(100);
    });
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    assert_eq!(register(&mut c, "web", "w-1", "10.0.0.1", 80).status, 201);
    eventually(Duration::from_secs(10), "the eviction", || {
        (value(&metrics(addr), "registro_evictions_total") == 1.0).then_some(())
    });
}

#[test]
fn promtool_accepts_the_exposition() {
    if !installed(
        "promtool_accepts_the_exposition",
        &["promtool"],
        "prometheus",
    ) {
        return;
    }
    let server = support::start();
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    assert_eq!(register(&mut c, "web", "w-1", "10.0.0.1", 80).status, 201);
    assert_eq!(c.put("/apps/web/w-1").status, 204);
    let text = get(addr, "/metrics").body;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\non\n{text}");
    assert!(said.trim().is_empty(), "promtool has remarks: {said}");
}

#[test]
fn prometheus_scrapes_the_server() {
    if !installed(
        "prometheus_scrapes_the_server",
        &["prometheus"],
        "prometheus",
    ) {
        return;
    }
    // Reads need a token, as with --read-token-file: the scrape
    // configuration of docs/operations.md, `authorization:` and all.
    let dir = TempDir::new("prometheus");
    let (writer, reader) = ("w-prometheus-test", "r-prometheus-test");
    let (tokens, read) = support::token_files(&dir, writer, reader);
    let server = support::start_with(|c| c.tokens = tokens);
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    let mut send = |method: &str, path: &str, body: &str| {
        c.send_raw(
            format!(
                "{method} /registro/1.0{path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {writer}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
            false,
        )
        .status
    };
    assert_eq!(send("POST", "/apps", &app_body("web")), 201);
    let instance = instance_body("w-1", "10.0.0.1", 80);
    assert_eq!(send("POST", "/apps/web", &instance), 201);
    assert_eq!(send("PUT", "/apps/web/w-1", ""), 204);
    assert_eq!(
        get(addr, "/metrics").status,
        401,
        "/metrics without a token"
    );

    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: registro\n    authorization:\n      type: Bearer\n      \
         credentials_file: {}\n    static_configs:\n      - targets: ['{addr}']\n",
        read.display()
    );
    let prometheus = Prometheus::start(dir.path(), &config);
    let up = eventually(
        Duration::from_secs(60),
        "Prometheus to have scraped",
        || {
            let reply = prometheus.get("/api/v1/query?query=registro_instances")?;
            let results = reply["data"]["result"].as_array()?;
            results
                .iter()
                .find(|r| r["metric"]["status"] == "up")
                .map(|r| r["value"][1].as_str().unwrap_or("").to_string())
        },
    );
    assert_eq!(
        up, "1",
        "registro_instances{{status=\"up\"}} as Prometheus read it"
    );
}

// ---------------------------------------------------------------------------
// A stalled stderr (issue 13, item 3)

/// The server's stderr is a pipe nobody reads, filled to the brim; thousands
/// of events are logged; SIGTERM must still end it with 0 within a second.
#[test]
fn sigterm_exits_promptly_when_stderr_is_stalled() {
    // The reader end stays open in `sleep`, which never reads it.
    let mut sink = Killed(
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("sleep runs"),
    );
    let pipe: std::os::fd::OwnedFd = sink.0.stdin.take().unwrap().into();
    let mut fill = std::fs::File::from(pipe.try_clone().unwrap());
    // Fills the pipe (64 KiB on Linux); blocks until `sleep` is killed.
    let filler = thread::spawn(move || {
        let chunk = [b'#'; 4096];
        while fill.write_all(&chunk).is_ok() {}
    });
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_registro"))
            .args(["--addr", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(pipe))
            .spawn()
            .expect("registro runs"),
    );
    eventually(Duration::from_secs(10), "registro to listen", || {
        TcpStream::connect(addr).ok()
    });

    // 12,000 pipelined app creations, each an event to log.
    const N: usize = 12_000;
    let stream = support::connect(addr, Duration::from_secs(20));
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..N {
            let body = format!("{{\"name\":\"app-{i}\"}}");
            all.extend_from_slice(
                format!(
                    "POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        writer.write_all(&all).unwrap();
    });
    let mut reader = BufReader::new(stream);
    for i in 0..N {
        let reply = read_reply(&mut reader).unwrap_or_else(|| panic!("answer {i}"));
        assert_eq!(reply.status, 201, "answer {i}");
    }
    sender.join().unwrap();

    let asked = Instant::now();
    support::send_signal(server.0.id(), "TERM");
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break Some(status);
        }
        if asked.elapsed() > Duration::from_secs(3) {
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let took = asked.elapsed();
    drop(sink); // ends the filler's write
    filler.join().unwrap();
    let status = status.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM"));
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
}

// ---------------------------------------------------------------------------
// The log under mass events

#[test]
fn mass_events_are_summarised_in_the_log() {
    let proc = Proc::start(&[]);
    let mut c = Conn::open(proc.addr);
    const N: usize = 1_500;
    let started = Instant::now();
    for i in 0..N {
        assert_eq!(
            register(&mut c, "web", &format!("web-{i}"), "10.0.0.1", 80).status,
            201
        );
    }
    let seconds = started.elapsed().as_secs() as usize + 2;
    let count = |lines: &[String]| {
        let single = lines
            .iter()
            .filter(|l| l.contains("of \"web\" added at"))
            .count();
        let summarised: usize = lines
            .iter()
            .filter(|l| l.contains(" more instances of \"web\" added; first \"web-"))
            .filter_map(|l| {
                let before = l.split(" more instances").next()?;
                before
                    .rsplit(' ')
                    .next()?
                    .replace(',', "")
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        (single, summarised)
    };
    // Every instance is on a line of its own or in a summary, within a second.
    let (single, _) = eventually(Duration::from_secs(3), "every event logged", || {
        let (single, summarised) = count(&proc.lines());
        (single + summarised == N).then_some((single, summarised))
    });
    assert!(
        single <= 100 * seconds,
        "{single} lines of their own in {seconds} s"
    );
}
