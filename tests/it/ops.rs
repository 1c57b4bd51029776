//! The operator's side: `/healthz`, `/metrics` (checked by `promtool` and
//! scraped by a real Prometheus), the dashboard in a real headless Chromium,
//! and a stop that a stalled stderr cannot hold.
//!
//! The tests that need Prometheus or Chromium print one SKIP line naming
//! what to install where those are missing, and fail when `CI=true`.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A child process killed and reaped on drop.
struct Killed(Child);

impl Killed {
    /// Starts `command` with no input and its output discarded.
    fn spawn(command: &mut Command) -> Killed {
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
fn register(c: &mut impl Exchange, app: &str, id: &str, ip: &str, port: u16) -> support::Reply {
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

fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
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
    let (write, read) = (dir.path().join("tokens"), dir.path().join("read-tokens"));
    std::fs::write(&write, format!("{writer}\n")).unwrap();
    std::fs::write(&read, format!("{reader}\n")).unwrap();
    let server = support::start_with(|c| {
        c.tokens = registro::TokenFiles {
            write: Some(write),
            read: Some(read.clone()),
        }
    });
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

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: registro\n    authorization:\n      type: Bearer\n      \
             credentials_file: {}\n    static_configs:\n      - targets: ['{addr}']\n",
            read.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let _prometheus = Killed::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
    );
    let agent = support::agent();
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=registro_instances");
    let up = eventually(
        Duration::from_secs(60),
        "Prometheus to have scraped",
        || {
            let body = agent
                .get(&url)
                .call()
                .ok()?
                .into_body()
                .read_to_string()
                .ok()?;
            let reply: serde_json::Value = serde_json::from_str(&body).ok()?;
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

// ---------------------------------------------------------------------------
// The dashboard in a real headless Chromium, driven through WebDriver

/// A WebDriver session on a chromedriver of our own; both end on drop.
struct Browser {
    agent: ureq::Agent,
    session: String,
    _driver: Killed,
    _profile: TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Killed::spawn(Command::new("chromedriver").arg(format!("--port={port}")));
        // A browser starting on a busy machine takes its time: WebDriver
        // commands get longer than the API's 10 s (no speed is asserted).
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver to be ready", || {
            let body = agent.get(format!("{base}/status")).call().ok()?;
            let status: serde_json::Value =
                serde_json::from_str(&body.into_body().read_to_string().ok()?).ok()?;
            status["value"]["ready"].as_bool()?.then_some(())
        });
        let profile = TempDir::new("chromium");
        let mut args = vec![
            "--headless=new".to_string(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-quic".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1100,720".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        // Chromium refuses to run as root with its sandbox.
        if std::env::var("USER").as_deref() == Ok("root") || is_root() {
            args.push("--no-sandbox".into());
        }
        let mut options = serde_json::json!({ "args": args });
        if let Some(binary) = support::which("chromium") {
            options["binary"] = binary.display().to_string().into();
        }
        let new = serde_json::json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
            }}
        });
        let reply = send(&agent, "POST", &format!("{base}/session"), Some(new));
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_string();
        Browser {
            agent,
            session: format!("{base}/session/{session}"),
            _driver: driver,
            _profile: profile,
        }
    }

    fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        send(
            &self.agent,
            method,
            &format!("{}{path}", self.session),
            body,
        )
    }

    fn open(&self, url: &str) {
        self.command("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn run(&self, script: &str) -> serde_json::Value {
        let reply = self.command(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({ "script": script, "args": [] })),
        );
        reply["value"].clone()
    }

    /// The status shown for instance `id` of `app`, if it is shown.
    fn status(&self, app: &str, id: &str) -> Option<String> {
        let script = format!(
            "for (const s of document.querySelectorAll('section[data-app]')) {{ \
               if (s.getAttribute('data-app') !== {app}) continue; \
               for (const r of s.querySelectorAll('tr[data-instance]')) {{ \
                 if (r.getAttribute('data-instance') === {id}) \
                   return r.querySelector('.status').textContent; }} }} \
             return null;",
            app = serde_json::Value::from(app),
            id = serde_json::Value::from(id),
        );
        self.run(&script).as_str().map(str::to_string)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.session).call();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let reply = match (method, body) {
        ("POST", body) => agent
            .post(url)
            .send_json(body.unwrap_or_else(|| serde_json::json!({}))),
        ("DELETE", _) => agent.delete(url).call(),
        (_, _) => agent.get(url).call(),
    }
    .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
    let text = reply
        .into_body()
        .read_to_string()
        .expect("a WebDriver answer");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("WebDriver answer ({e}): {text}"))
}

/// Standard base64, as WebDriver's screenshots come.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn dashboard_shows_the_fleet_live_in_chromium() {
    if !installed(
        "dashboard_shows_the_fleet_live_in_chromium",
        &["chromium", "chromedriver"],
        "chromium chromium-driver",
    ) {
        return;
    }
    let proc = Proc::start(&["--down-after", "1", "--evict-after", "600"]);
    let addr = proc.addr;
    let mut c = Conn::open(addr);
    assert_eq!(
        register(&mut c, "web", "web-1", "10.0.0.7", 8080).status,
        201
    );

    let browser = Browser::start();
    browser.open(&format!("http://{addr}/"));
    // Marks this page: a reload would lose the marker; alerts are recorded.
    browser.run(
        "window.__sameDocument = true; window.__alerts = []; \
                 window.alert = (m) => window.__alerts.push(String(m));",
    );
    let seen = |status: &str| {
        eventually(
            Duration::from_secs(10),
            &format!("web-1 shown {status}"),
            || (browser.status("web", "web-1")? == status).then_some(()),
        );
    };
    seen("starting");
    // Heartbeats until the page shows `up` (it reads at least once a second).
    let until = Instant::now() + Duration::from_secs(10);
    while browser.status("web", "web-1").as_deref() != Some("up") {
        assert!(Instant::now() < until, "web-1 never shown up");
        assert_eq!(c.put("/apps/web/web-1").status, 204);
        thread::sleep(Duration::from_millis(200));
    }
    // Silence: `down` after --down-after 1, without a reload.
    seen("down");

    let evil = "<img src=x onerror=alert(1)>";
    assert_eq!(register(&mut c, evil, "<b>i-1", "10.0.0.8", 81).status, 201);
    eventually(Duration::from_secs(10), "the odd app shown", || {
        browser.status(evil, "<b>i-1")
    });
    let page = browser.run(
        "return { names: [...document.querySelectorAll('.app-name')].map(e => e.textContent), \
                  imgs: document.querySelectorAll('img').length, \
                  bold: document.querySelectorAll('main b').length, \
                  alerts: window.__alerts, same: window.__sameDocument === true, \
                  text: document.body.innerText };",
    );
    assert!(
        page["names"].as_array().unwrap().contains(&evil.into()),
        "{page}"
    );
    assert_eq!(page["imgs"], 0, "an img element was made from a name");
    assert_eq!(page["bold"], 0, "a b element was made from an id");
    assert_eq!(page["alerts"], serde_json::json!([]), "alert ran");
    assert_eq!(page["same"], true, "the page was reloaded");
    assert!(page["text"].as_str().unwrap().contains("<b>i-1"), "{page}");
    let no_alert = browser.command("GET", "/alert/text", None);
    assert_eq!(no_alert["value"]["error"], "no such alert", "{no_alert}");

    // The filter box hides what does not match.
    browser.run(
        "const f = document.getElementById('filter'); f.value = 'web-1'; \
         f.dispatchEvent(new Event('input'));",
    );
    let shown = browser.run(
        "return [...document.querySelectorAll('section[data-app]')].map(s => s.getAttribute('data-app'));",
    );
    assert_eq!(shown, serde_json::json!(["web"]));

    if let Ok(path) = std::env::var("REGISTRO_SCREENSHOT") {
        screenshot(&browser, &mut c, &path);
    }
}

/// A few more apps in every status, then the page as a PNG at `path` (for
/// the README: `REGISTRO_SCREENSHOT=docs/dashboard.png`).
fn screenshot(browser: &Browser, c: &mut Conn, path: &str) {
    browser.run(
        "const f = document.getElementById('filter'); f.value = ''; \
         f.dispatchEvent(new Event('input'));",
    );
    for (app, id, ip, zone) in [
        ("checkout", "checkout-a", "10.0.1.4", "eu-1"),
        ("checkout", "checkout-b", "10.0.1.5", "eu-2"),
        ("search", "search-1", "10.0.2.9", "us-1"),
        ("search", "search-2", "10.0.2.10", "us-1"),
    ] {
        let created = c.send("POST", "/apps", &app_body(app)).status;
        assert!(created == 201 || created == 409, "{created}");
        let body = serde_json::json!({"id": id, "ip": ip, "port": 8443,
                                      "metadata": {"zone": zone, "version": "1.4.2"}});
        assert_eq!(
            c.post(&format!("/apps/{app}"), &body.to_string()).status,
            201
        );
    }
    assert_eq!(c.put("/apps/checkout/checkout-a").status, 204);
    assert_eq!(c.put("/apps/checkout/checkout-b").status, 204);
    assert_eq!(c.put("/apps/search/search-1").status, 204);
    assert_eq!(c.delete("/apps/search/search-2").status, 204);
    eventually(Duration::from_secs(5), "the new apps shown", || {
        (browser.status("checkout", "checkout-b")? == "up").then_some(())
    });
    let png = browser.command("GET", "/screenshot", None);
    let bytes = base64(png["value"].as_str().expect("a screenshot"));
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(path, bytes).expect("screenshot written");
}

/// Registers `per_app` instances `i-NNNN` (each `starting`, metadata
/// `zone`) in each of `apps` apps `app-K`, on one kept-alive connection.
fn fill_fleet(c: &mut Conn, apps: usize, per_app: usize) {
    for a in 0..apps {
        assert_eq!(c.post("/apps", &app_body(&format!("app-{a}"))).status, 201);
        for i in 0..per_app {
            let body = serde_json::json!({
                "id": format!("i-{i:04}"), "ip": "10.1.0.1", "port": 1000 + i,
                "metadata": {"zone": format!("z-{}", i % 3)},
            });
            assert_eq!(
                c.post(&format!("/apps/app-{a}"), &body.to_string()).status,
                201
            );
        }
    }
}

/// What the page shows of a large registry and how it follows a change:
/// every app with its counts and the total at once, at most a page of
/// rows per app until more are asked for, and a change updates the one
/// row it touched: every other row stays the same node, unmutated (a page
/// that rebuilt its rows, or re-rendered them all, fails this whatever the
/// machine's speed). Also the dashboard items of a user's first hour: no
/// heartbeat yet for `starting`, the count under a filter, the placeholder
/// at 1200 px, and no 404 for an icon.
#[test]
fn dashboard_updates_only_the_rows_a_change_touched_in_chromium() {
    if !installed(
        "dashboard_updates_only_the_rows_a_change_touched_in_chromium",
        &["chromium", "chromedriver"],
        "chromium chromium-driver",
    ) {
        return;
    }
    const APPS: usize = 3;
    const PER_APP: usize = 2_000;
    let proc = Proc::start(&[]);
    let addr = proc.addr;
    let mut c = Conn::open(addr);
    fill_fleet(&mut c, APPS, PER_APP);

    let browser = Browser::start();
    browser.command(
        "POST",
        "/window/rect",
        Some(serde_json::json!({"width": 1200, "height": 800})),
    );
    browser.open(&format!("http://{addr}/"));
    // Rows for what is in view: a page of the first app; none yet for the
    // last, a few screens below.
    let rows = "return [...document.querySelectorAll('section[data-app]')].map(s => \
                  s.getAttribute('data-app') + ':' + s.querySelectorAll('tr[data-instance]').length);";
    let summary = eventually(Duration::from_secs(20), "every app and the total", || {
        let page = browser.run(
            "return { apps: [...document.querySelectorAll('section[data-app]')].map(s => s.getAttribute('data-app')), \
                      total: document.querySelector('#totals [data-total]')?.getAttribute('data-total'), \
                      first: document.querySelectorAll('section[data-app=\"app-0\"] tr[data-instance]').length, \
                      count: document.querySelector('section[data-app=\"app-1\"] .count')?.textContent };",
        );
        (page["first"] == 100).then_some(page)
    });
    assert_eq!(
        summary,
        serde_json::json!({"apps": ["app-0", "app-1", "app-2"], "total": "6000",
                           "first": 100, "count": "2,000 instances"})
    );
    assert_eq!(
        browser.run(rows),
        serde_json::json!(["app-0:100", "app-1:0", "app-2:0"]),
        "rows read out of view"
    );
    browser.run("document.querySelector('section[data-app=\"app-2\"]').scrollIntoView();");
    eventually(Duration::from_secs(10), "app-2's rows once in view", || {
        (browser.run(rows)[2] == "app-2:100").then_some(())
    });
    browser.run("window.scrollTo(0, 0);");
    // Starting instances never sent a heartbeat, and the page says so.
    let last = browser
        .run("return document.querySelector('tr[data-instance=\"i-0005\"] td.ago').textContent;");
    assert_eq!(last, "no heartbeat yet");

    // Every row and every cell of it marked; every mutation under <main>
    // recorded by the row it happened in.
    let watch = "window.__touched = new Set(); \
         for (const tr of document.querySelectorAll('tr[data-instance]')) { \
           tr.__mark = true; for (const td of tr.children) td.__mark = true; } \
         window.__observer?.disconnect(); \
         window.__observer = new MutationObserver((records) => { for (const r of records) { \
           let n = r.target; while (n && !(n.tagName === 'TR' && n.hasAttribute('data-instance'))) n = n.parentNode; \
           window.__touched.add(n ? n.closest('section').getAttribute('data-app') + '/' + n.getAttribute('data-instance') : 'outside rows'); } }); \
         window.__observer.observe(document.querySelector('main'), \
           { subtree: true, childList: true, characterData: true, attributes: true });";
    let untouched_except = |app: &str, id: &str| {
        let check = browser.run(
            "const rows = [...document.querySelectorAll('tr[data-instance]')]; \
             return { unmarked: rows.filter(tr => !tr.__mark || [...tr.children].some(td => !td.__mark)).length, \
                      rows: rows.length, touched: [...window.__touched].filter(t => t !== 'outside rows').sort() };",
        );
        assert_eq!(check["unmarked"], 0, "rows were rebuilt: {check}");
        assert_eq!(
            check["touched"],
            serde_json::json!([format!("{app}/{id}")]),
            "{check}"
        );
        check
    };

    // Unfiltered: the first instance of the first app turns up.
    browser.run(watch);
    assert_eq!(c.put("/apps/app-0/i-0000").status, 204);
    eventually(Duration::from_secs(10), "app-0/i-0000 shown up", || {
        (browser.status("app-0", "i-0000")? == "up").then_some(())
    });
    untouched_except("app-0", "i-0000");
    let head = browser.run(
        "return [...document.querySelectorAll('section[data-app=\"app-0\"] .app-counts .status')].map(b => b.textContent);",
    );
    assert_eq!(head, serde_json::json!(["1 up", "1,999 starting"]));

    // Filtered to an instance deep in the list: the app says how many of
    // its instances are shown, and the change shows in that one row.
    browser.run(
        "const f = document.getElementById('filter'); f.value = 'app-2 i-1999'; \
         f.dispatchEvent(new Event('input'));",
    );
    let filtered = browser.run(
        "return { apps: [...document.querySelectorAll('section[data-app]')].map(s => s.getAttribute('data-app')), \
                  rows: [...document.querySelectorAll('tr[data-instance]')].map(r => r.getAttribute('data-instance')), \
                  count: document.querySelector('section[data-app=\"app-2\"] .count').textContent };",
    );
    assert_eq!(
        filtered,
        serde_json::json!({"apps": ["app-2"], "rows": ["i-1999"], "count": "1 of 2,000 instances"})
    );
    browser.run(watch);
    assert_eq!(c.delete("/apps/app-2/i-1999").status, 204);
    eventually(
        Duration::from_secs(10),
        "app-2/i-1999 shown out of service",
        || (browser.status("app-2", "i-1999")? == "out of service").then_some(()),
    );
    untouched_except("app-2", "i-1999");

    // Unfiltered again, then more rows of one app on request: the rows that
    // were shown stay the same nodes.
    browser.run(
        "const f = document.getElementById('filter'); f.value = ''; \
         f.dispatchEvent(new Event('input')); \
         for (const tr of document.querySelectorAll('tr[data-instance]')) tr.__mark = true; \
         document.querySelector('section[data-app=\"app-1\"] button.more').click();",
    );
    let more = browser.run(
        "const rows = [...document.querySelectorAll('section[data-app=\"app-1\"] tr[data-instance]')]; \
         return { rows: rows.length, marked: rows.filter(tr => tr.__mark).length, \
                  first: rows[0].getAttribute('data-instance'), last: rows[rows.length - 1].getAttribute('data-instance') };",
    );
    assert_eq!(
        more,
        serde_json::json!({"rows": 600, "marked": 100, "first": "i-0000", "last": "i-0599"})
    );

    // The placeholder fits its box at 1200 px (and at a few other widths).
    for width in [1200, 1000, 1600] {
        browser.command(
            "POST",
            "/window/rect",
            Some(serde_json::json!({"width": width, "height": 800})),
        );
        let fit = browser.run(
            "const f = document.getElementById('filter'); const cs = getComputedStyle(f); \
             const ctx = document.createElement('canvas').getContext('2d'); ctx.font = cs.font; \
             return { text: Math.ceil(ctx.measureText(f.placeholder).width), \
                      room: f.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight), \
                      viewport: window.innerWidth };",
        );
        let (text, room) = (fit["text"].as_f64().unwrap(), fit["room"].as_f64().unwrap());
        assert!(text <= room, "placeholder cut at {width} px: {fit}");
    }

    // The browser asked for no icon that was not there.
    let samples = metrics(addr);
    let not_found: Vec<&String> = samples
        .iter()
        .filter(|(k, v)| {
            k.starts_with("registro_http_requests_total") && k.contains("code=\"404\"") && **v > 0.0
        })
        .map(|(k, _)| k)
        .collect();
    assert!(not_found.is_empty(), "404s answered: {not_found:?}");
}

/// Under `--read-token-file` the page asks for a token on its first 401,
/// then shows the registry and follows it live with that token (on the
/// summary's watch and each app's read alike).
#[test]
fn dashboard_asks_for_a_read_token_in_chromium() {
    if !installed(
        "dashboard_asks_for_a_read_token_in_chromium",
        &["chromium", "chromedriver"],
        "chromium chromium-driver",
    ) {
        return;
    }
    let dir = TempDir::new("auth");
    let read = dir.file("read", "reader-token\n");
    let server = support::start_with(|c| {
        c.tokens = registro::TokenFiles {
            write: None,
            read: Some(read),
        }
    });
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    assert_eq!(register(&mut c, "web", "web-1", "10.0.0.7", 80).status, 201);
    let browser = Browser::start();
    browser.open(&format!("http://{addr}/"));
    eventually(Duration::from_secs(10), "the token prompt", || {
        let shown = browser.run(
            "return document.getElementById('auth').classList.contains('shown') && \
                    document.getElementById('live').textContent;",
        );
        (shown == "a token is needed").then_some(())
    });
    assert_eq!(
        browser.status("web", "web-1"),
        None,
        "shown without a token"
    );
    browser.run(
        "document.getElementById('token').value = 'reader-token'; \
         document.getElementById('auth').requestSubmit();",
    );
    eventually(
        Duration::from_secs(10),
        "web-1 shown with the token",
        || (browser.status("web", "web-1")? == "starting").then_some(()),
    );
    assert_eq!(c.put("/apps/web/web-1").status, 204);
    eventually(Duration::from_secs(10), "web-1 shown up", || {
        (browser.status("web", "web-1")? == "up").then_some(())
    });
    let live = browser.run("return document.getElementById('live').textContent;");
    assert_eq!(live, "live (watching changes)");
}
