//! The dashboard: the API additions it reads (`GET /registro/1.0/apps?view=summary`:
//! each app's name, index and counts by status, without instances, plain
//! and as a watch) against the real server, then the page itself in a real
//! headless Chromium, driven over WebDriver and, for the documented
//! screenshot recipe, run as `chromium --headless` alone.
//!
//! The Chromium tests print one SKIP line naming what to install where
//! `chromium` or `chromedriver` is missing, and fail when `CI=true`.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{app_body, check, register};
use crate::ops::{self, free_port, metrics, Killed};
use crate::support::{self, eventually, start, Conn, Proc, Reply, TempDir};

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

/// docs/operations.md says how large the page is: the real size, to the
/// nearest KB.
#[test]
fn the_docs_give_the_pages_real_size() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::metadata(root.join("src/dashboard.html"))
        .expect("the page")
        .len();
    let doc = std::fs::read_to_string(root.join("docs/operations.md")).expect("the doc");
    let (before, _) = doc
        .split_once(" KB (`src/dashboard.html`)")
        .expect("the page's size in docs/operations.md");
    let said: u64 = before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number of KB");
    let real = (page + 512) / 1024;
    assert_eq!(said, real, "the page is {page} bytes");
}

// ---------------------------------------------------------------------------
// The dashboard in a real headless Chromium, driven through WebDriver

/// Whether `chromium` and `chromedriver` are installed (see
/// [`support::installed`]).
fn chromium(test: &str) -> bool {
    support::installed(
        &format!("dashboard::{test}"),
        &["chromium", "chromedriver"],
        "chromium chromium-driver",
    )
}

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

#[test]
fn dashboard_shows_the_fleet_live_in_chromium() {
    if !chromium("dashboard_shows_the_fleet_live_in_chromium") {
        return;
    }
    let proc = Proc::start(&["--down-after", "1", "--evict-after", "600"]);
    let addr = proc.addr;
    let mut c = Conn::open(addr);
    assert_eq!(
        ops::register(&mut c, "web", "web-1", "10.0.0.7", 8080).status,
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
    assert_eq!(
        ops::register(&mut c, evil, "<b>i-1", "10.0.0.8", 81).status,
        201
    );
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
    if !chromium("dashboard_updates_only_the_rows_a_change_touched_in_chromium") {
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
    if !chromium("dashboard_asks_for_a_read_token_in_chromium") {
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
    assert_eq!(
        ops::register(&mut c, "web", "web-1", "10.0.0.7", 80).status,
        201
    );
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

// ---------------------------------------------------------------------------
// A realistic registry: what the README's picture shows, and what a user's
// first screen is tested on. A few hundred instances in ten apps, most
// `up`, a few gone silent (`down`), one taken out, two just registered.

/// The apps and their sizes.
const FLEET: [(&str, usize); 10] = [
    ("api-gateway", 12),
    ("auth", 6),
    ("billing", 8),
    ("catalog", 40),
    ("checkout", 18),
    ("inventory", 45),
    ("notifications", 10),
    ("payments", 16),
    ("search", 50),
    ("web", 48),
];

/// A fleet in a server of its own (`--down-after 4s`), its `up` instances
/// kept up by a thread of heartbeats until dropped. On a machine so busy
/// that a round of heartbeats takes longer than that, more instances read
/// `down`: the tests assert what holds either way.
struct Fleet {
    proc: Proc,
    /// `(app, id)` of the instances that went silent, now `down`.
    down: Vec<(String, String)>,
    /// `(app, id)` of the instance taken out of service.
    out: (String, String),
    renewer: Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>,
}

impl Fleet {
    fn start() -> Fleet {
        let proc = Proc::start(&["--down-after", "4", "--evict-after", "600"]);
        let mut c = Conn::open(proc.addr);
        let (mut up, mut down) = (Vec::new(), Vec::new());
        let mut out = None;
        for (a, (app, size)) in FLEET.iter().enumerate() {
            let version = ["2.14.1", "1.9.0", "3.2.7", "0.48.2", "5.0.3"][a % 5];
            for n in 0..*size {
                // Ids as an orchestrator makes them: the app and a short hash.
                let hash = (n as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(a as u32 * 40_503)
                    >> 12;
                let id = format!("{app}-{:05x}", hash & 0xf_ffff);
                let zone = ["eu-west-1a", "eu-west-1b", "eu-west-1c"][n % 3];
                let canary = *app == "checkout" && n == 4;
                let port = if *app == "api-gateway" { 8443 } else { 8080 };
                let body = json!({
                    "id": id,
                    "ip": format!("10.{}.{}.{}", 10 + a, n / 200, 10 + n % 200),
                    "port": port,
                    "metadata": {
                        "zone": zone,
                        "version": if canary { "2.15.0-rc1" } else { version },
                    },
                });
                let created = c.post("/apps", &app_body(app)).status;
                assert!(created == 201 || created == 409, "{created}");
                assert_eq!(
                    c.post(&format!("/apps/{app}"), &body.to_string()).status,
                    201
                );
                let who = (app.to_string(), id);
                match (*app, n) {
                    ("payments", 2 | 5 | 11) | ("search", 8) => down.push(who),
                    ("web", 3) => out = Some(who),
                    ("web", 46 | 47) => {} // registered just now: starting
                    _ => up.push(who),
                }
            }
        }
        let out = out.expect("web has an instance taken out");
        for (app, id) in up.iter().chain(&down).chain([&out]) {
            assert_eq!(c.put(&format!("/apps/{app}/{id}")).status, 204);
        }
        assert_eq!(c.delete(&format!("/apps/{}/{}", out.0, out.1)).status, 204);
        // Heartbeats for the `up` ones, every second (a quarter of
        // --down-after), all sent at once then answered, until dropped.
        let (stop, stopped) = mpsc::channel::<()>();
        let addr = proc.addr;
        let round: String = up
            .iter()
            .map(|(app, id)| {
                format!("PUT /registro/1.0/apps/{app}/{id} HTTP/1.1\r\nHost: t\r\n\r\n")
            })
            .collect();
        let beats = up.len();
        let renewer = thread::spawn(move || {
            let mut c = Conn::open(addr);
            loop {
                c.write(round.as_bytes());
                for _ in 0..beats {
                    c.read(false);
                }
                match stopped.recv_timeout(Duration::from_secs(1)) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        });
        let fleet = Fleet {
            proc,
            down,
            out,
            renewer: Some((stop, renewer)),
        };
        // The silent ones read down once --down-after has passed.
        eventually(Duration::from_secs(30), "the silent instances down", || {
            let summary = c.get("/apps?view=summary").json();
            let down = |name: &str| {
                summary["applications"]
                    .as_array()?
                    .iter()
                    .find(|a| a["name"] == name)?["counts"]["down"]
                    .as_u64()
            };
            (down("payments")? >= 3 && down("search")? >= 1).then_some(())
        });
        fleet
    }

    fn url(&self, query: &str) -> String {
        format!("http://{}/{query}", self.proc.addr)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.renewer.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

/// What a user opens the dashboard for, on its first screen (1280 x 800)
/// of a few hundred instances in ten apps: every app with its counts, and
/// what is `down`: apps with down instances first, their down instances
/// first. An out-of-service instance says when it was deregistered rather
/// than passing the DELETE off as a heartbeat. Fold all and unfold all;
/// an app's card in the overview leads to it.
#[test]
fn the_first_screen_shows_every_app_and_what_is_down_in_chromium() {
    if !chromium("the_first_screen_shows_every_app_and_what_is_down_in_chromium") {
        return;
    }
    let fleet = Fleet::start();
    let browser = Browser::start();
    browser.command(
        "POST",
        "/window/rect",
        Some(json!({"width": 1280, "height": 800})),
    );
    browser.open(&fleet.url(""));
    let first_screen = "const vh = innerHeight; \
        const onScreen = (e) => { const r = e.getBoundingClientRect(); return r.top >= 0 && r.bottom <= vh; }; \
        const cards = [...document.querySelectorAll('#ov-list li[data-app]')]; \
        const sections = [...document.querySelectorAll('section[data-app]')]; \
        const downRows = [...document.querySelectorAll('tr[data-instance] .status[data-status=\"down\"]')]; \
        return { \
          cards: cards.map(c => c.getAttribute('data-app')), \
          cardsOnScreen: cards.filter(onScreen).length, \
          cardText: Object.fromEntries(cards.map(c => [c.getAttribute('data-app'), c.textContent])), \
          sections: sections.map(s => [s.getAttribute('data-app'), \
            parseInt(s.querySelector('h2 .status[data-status=\"down\"]')?.textContent ?? '0', 10)]), \
          downShown: downRows.map(b => b.closest('tr').getAttribute('data-instance')), \
          downOnScreen: downRows.filter(onScreen).length, \
          rows: sections.map(s => [...s.querySelectorAll('tr[data-instance] .status')].map(b => b.getAttribute('data-status'))), \
        };";
    let page = eventually(Duration::from_secs(30), "the first screen", || {
        let page = browser.run(first_screen);
        (page["cards"].as_array()?.len() == FLEET.len() && page["downOnScreen"].as_u64()? > 0)
            .then_some(page)
    });
    // Every app, with its counts, on the first screen.
    let mut names: Vec<&str> = FLEET.iter().map(|(name, _)| *name).collect();
    let cards: Vec<&str> = page["cards"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut sorted = cards.clone();
    sorted.sort_unstable();
    names.sort_unstable();
    assert_eq!(sorted, names, "{page}");
    assert_eq!(page["cardsOnScreen"], FLEET.len(), "{page}");
    assert!(
        page["cardText"]["payments"]
            .as_str()
            .unwrap()
            .contains(" down"),
        "{page}"
    );
    assert!(
        page["cardText"]["web"]
            .as_str()
            .unwrap()
            .contains("1 out of service"),
        "{page}"
    );
    // Apps with down instances first (by name), then the others (by name);
    // the overview in the same order. Whatever else went down on a busy
    // machine, the order holds.
    let sections: Vec<(String, u64)> = page["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_u64().unwrap()))
        .collect();
    let mut expected = sections.clone();
    expected.sort_by(|a, b| (a.1 == 0, &a.0).cmp(&(b.1 == 0, &b.0)));
    assert_eq!(sections, expected, "{page}");
    assert_eq!(
        cards,
        sections.iter().map(|s| s.0.as_str()).collect::<Vec<_>>()
    );
    assert!(sections[0].1 > 0, "{page}");
    // Within each app, down instances before the others.
    for rows in page["rows"].as_array().unwrap() {
        let statuses: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let first_other = statuses.iter().position(|s| *s != "down");
        let last_down = statuses.iter().rposition(|s| *s == "down");
        if let (Some(other), Some(down)) = (first_other, last_down) {
            assert!(down < other, "a down row after another: {statuses:?}");
        }
    }
    // The silent ones of the first app are on the first screen.
    let shown: Vec<&str> = page["downShown"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let first = &sections[0].0;
    for (app, id) in fleet.down.iter().filter(|(app, _)| app == first) {
        assert!(shown.contains(&id.as_str()), "{app}/{id} not shown: {page}");
    }

    // Out of service: the time of the deregistration, said as such.
    let (app, id) = &fleet.out;
    browser.run(&format!(
        "const f = document.getElementById('filter'); f.value = '{id}'; \
         f.dispatchEvent(new Event('input'));"
    ));
    let last = eventually(Duration::from_secs(10), "the taken-out row", || {
        let text = browser.run(&format!(
            "return document.querySelector('section[data-app=\"{app}\"] tr[data-instance=\"{id}\"] td.ago')?.textContent ?? null;"
        ));
        text.as_str().map(str::to_string)
    });
    assert!(
        last.starts_with("deregistered ") && last.ends_with(" ago"),
        "{last:?}"
    );
    browser.run(
        "const f = document.getElementById('filter'); f.value = ''; \
         f.dispatchEvent(new Event('input'));",
    );

    // Fold all: only the counts stay; unfold all: the rows come back.
    let rows = "return document.querySelectorAll('tr[data-instance]').length;";
    browser.run("document.getElementById('fold-all').click();");
    let folded = browser.run(
        "return { rows: document.querySelectorAll('tr[data-instance]').length, \
                  open: [...document.querySelectorAll('section .fold')].filter(b => b.getAttribute('aria-expanded') === 'true').length, \
                  counts: document.querySelectorAll('section h2 .app-counts .status').length };",
    );
    assert_eq!(folded["rows"], 0, "{folded}");
    assert_eq!(folded["open"], 0, "{folded}");
    assert!(folded["counts"].as_u64().unwrap() >= 10, "{folded}");
    browser.run("document.getElementById('unfold-all').click();");
    eventually(Duration::from_secs(10), "rows after unfold all", || {
        (browser.run(rows).as_u64()? > 0).then_some(())
    });

    // An app's card leads to its section, on screen.
    browser.run("document.querySelector('#ov-list li[data-app=\"web\"] button').click();");
    let top = browser.run(
        "return document.querySelector('section[data-app=\"web\"]').getBoundingClientRect().top;",
    );
    let top = top.as_f64().unwrap();
    assert!((-1.0..100.0).contains(&top), "web's section at {top}");
    eventually(Duration::from_secs(10), "web's rows once shown", || {
        let n = browser.run(
            "return document.querySelectorAll('section[data-app=\"web\"] tr[data-instance]').length;",
        );
        (n.as_u64()? == 48).then_some(())
    });
}

/// The headless recipe of docs/dashboard.md: with `?live=0` the page reads
/// the registry once and holds no watch, so `chromium --headless
/// --virtual-time-budget` finishes, with every app and the down instances
/// in the page (a held watch keeps virtual time still: without `live=0` it
/// never ends). With `REGISTRO_SCREENSHOT=docs/dashboard.png` this is also
/// how the README's picture is made.
#[test]
fn a_headless_screenshot_with_live_0_finishes() {
    if !chromium("a_headless_screenshot_with_live_0_finishes") {
        return;
    }
    let fleet = Fleet::start();
    let dir = TempDir::new("headless");
    let png = dir.path().join("dashboard.png");
    let headless = |what: &str| -> String {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,800",
            "--virtual-time-budget=10000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(what)
        .arg(fleet.url("?live=0"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        // Chromium refuses to run as root with its sandbox.
        if is_root() {
            cmd.arg("--no-sandbox");
        }
        let mut child = Killed(cmd.spawn().expect("chromium starts"));
        let mut out = child.0.stdout.take().expect("stdout");
        let reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
            text
        });
        let status = eventually(Duration::from_secs(90), "chromium to finish", || {
            child.0.try_wait().expect("try_wait")
        });
        assert!(status.success(), "chromium {what}: {status:?}");
        reader.join().expect("the reader")
    };
    let dom = headless("--dump-dom");
    for (app, _) in FLEET {
        assert!(
            dom.contains(&format!("<section data-app=\"{app}\"")),
            "{app} missing"
        );
    }
    for (app, id) in fleet.down.iter().filter(|(app, _)| app == "payments") {
        assert!(
            dom.contains(&format!("tr data-instance=\"{id}\"")),
            "{app}/{id} missing"
        );
    }
    assert!(dom.contains("not live: ?live=0"), "the live line");
    assert!(!dom.contains("connecting"), "never read");
    // It held no watch.
    assert_eq!(metrics(fleet.proc.addr)["registro_watches_waiting"], 0.0);

    headless(&format!("--screenshot={}", png.display()));
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    if let Ok(path) = std::env::var("REGISTRO_SCREENSHOT") {
        std::fs::write(&path, &bytes).expect("screenshot written");
        println!("the dashboard of a realistic registry: {path}");
    }
}
