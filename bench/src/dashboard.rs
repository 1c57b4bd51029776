//! The "dashboard" scenario: the dashboard page in a real headless Chromium,
//! driven over WebDriver (chromedriver), at 1,000, 20,000 and 100,000
//! instances (20 apps, each instance `starting` with metadata `zone`).
//!
//! Per size and server, three runs (`--quick`: one run at 300 instances),
//! each in a fresh browser, of:
//! - *shown*: from the navigation until the page shows every app and the
//!   total (the status badges of the header add up to the fleet);
//! - *rows*: from the navigation until the first instance's row is shown;
//! - *change*: from a heartbeat until that instance shows `up`, for the
//!   first instance of the first app, unfiltered;
//! - *filtered*: the same with the filter box narrowed to the last instance
//!   of the last app (deep in the list);
//! - the browser's memory: the page's JS heap (`performance.memory`) and
//!   the proportional set size of every Chromium process of the session.
//!
//! Each instance changed is registered again afterwards (back to
//! `starting`) and the page is seen to show it before the next run. A wait
//! longer than [`LIMIT`] is reported as missing rather than ending the run.
//! Without chromium and chromedriver the scenario prints one line and is
//! skipped.

use crate::proc::{which, ServerProc};
use crate::report::{count, Section, Verdict};
use crate::{http, load, Bench};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Apps of the fleet.
const APPS: usize = 20;
/// The longest wait for anything the page is to show.
const LIMIT: Duration = Duration::from_secs(60);
/// Runs per size.
const RUNS: usize = 3;
/// The sizes the targets are stated for: shown in < 2 s and a change in
/// < 1 s at the middle one; shown at all and a change in < 2 s at the
/// largest.
const MIDDLE: usize = 20_000;
const LARGEST: usize = 100_000;

/// One run's figures; `None` where the page did not show it within LIMIT.
#[derive(Debug, Clone, Default)]
struct Run {
    shown: Option<Duration>,
    rows: Option<Duration>,
    change: Option<Duration>,
    filtered: Option<Duration>,
    heap: Option<u64>,
    pss: Option<u64>,
}

/// Runs the scenario against the server under test and, with `--server`
/// (but in quick mode), the reference; returns its section.
pub fn run(bench: &mut Bench) -> Result<String, String> {
    let (Some(chromium), Some(driver)) = (
        which("chromium").or_else(|| which("chromium-browser")),
        which("chromedriver"),
    ) else {
        let line = "dashboard: skipped, chromium and chromedriver are not both installed\n";
        eprint!("{line}");
        return Ok(format!("\n## Dashboard\n\n{line}"));
    };
    // Quick mode checks the scenario works: one size, one run, the server
    // under test only.
    let (sizes, runs): (&[usize], usize) = if bench.s.quick {
        (&[300], 1)
    } else {
        (&[1_000, MIDDLE, LARGEST], RUNS)
    };
    let mut servers = vec![(0, "this server")];
    if bench.s.reference.is_some() && !bench.s.quick {
        servers.push((1, "--server"));
    }
    let mut sec = Section::new("Dashboard (headless Chromium over WebDriver)");
    sec.text(
        "20 apps, every instance `starting` with metadata `zone`. Shown: navigation until every \
         app and the total are shown; rows: until the first instance's row is; change: a \
         heartbeat until that instance shows `up` (first instance of the first app; filtered: \
         the filter narrowed to the last instance of the last app). Memory: JS heap, and PSS of \
         every Chromium process.",
    );
    sec.table(&[
        "server",
        "instances",
        "run",
        "shown",
        "rows",
        "change",
        "change, filtered",
        "JS heap",
        "browser PSS",
    ]);
    let mut slowest = Vec::new();
    for &n in sizes {
        for &(b, label) in &servers {
            let server = bench.start(
                b,
                "registro-dashboard",
                &["--down-after", "1h", "--evict-after", "2h"],
            )?;
            let result = measure(bench, &server, &chromium, &driver, n, runs);
            bench.stop(server);
            let runs = result.map_err(|e| format!("dashboard at {n} ({label}): {e}"))?;
            for (k, r) in runs.iter().enumerate() {
                let memory = |v: Option<u64>| v.map_or("-".into(), crate::report::bytes);
                sec.row(&[
                    &label,
                    &count(n),
                    &(k + 1),
                    &secs(r.shown),
                    &secs(r.rows),
                    &secs(r.change),
                    &secs(r.filtered),
                    &memory(r.heap),
                    &memory(r.pss),
                ]);
            }
            if b == 0 {
                slowest.push((n, worst(&runs)));
            }
        }
    }
    let at = |size: usize| slowest.iter().find(|(n, _)| *n == size).map(|(_, w)| *w);
    let run_at: Vec<String> = sizes.iter().map(|&n| count(n)).collect();
    for (size, show, change) in [(MIDDLE, Some(2), 1), (LARGEST, None, 2)] {
        let Some((shown, changed, filtered)) = at(size) else {
            let measured = format!("run at {} instances only", run_at.join(", "));
            let what = format!("Dashboard at {}", count(size));
            sec.target(what, measured, Verdict::NotAtThisSize);
            continue;
        };
        let show_target = show.map_or(LIMIT, Duration::from_secs);
        let below = |d: Option<Duration>, t: Duration| Verdict::of(d.is_some_and(|d| d < t));
        sec.target(
            format_args!(
                "Dashboard at {}: every app and the total shown{}",
                count(size),
                show.map_or(String::new(), |s| format!(" in < {s} s"))
            ),
            format_args!("{} (slowest of {runs})", secs(shown)),
            below(shown, show_target),
        );
        let both = changed.zip(filtered).map(|(a, b)| a.max(b));
        sec.target(
            format_args!(
                "Dashboard at {}: a heartbeat shown in < {change} s, unfiltered and filtered",
                count(size)
            ),
            format_args!("{} / {}", secs(changed), secs(filtered)),
            below(both, Duration::from_secs(change)),
        );
    }
    Ok(sec.finish())
}

/// The slowest of the runs: shown, change, filtered.
fn worst(runs: &[Run]) -> (Option<Duration>, Option<Duration>, Option<Duration>) {
    let worst = |f: fn(&Run) -> Option<Duration>| -> Option<Duration> {
        runs.iter()
            .map(f)
            .try_fold(Duration::ZERO, |w, d| Some(w.max(d?)))
    };
    (
        worst(|r| r.shown),
        worst(|r| r.change),
        worst(|r| r.filtered),
    )
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || format!("> {} s", LIMIT.as_secs()),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

/// `runs` runs at `n` instances against `server`, each in a fresh browser.
fn measure(
    bench: &Bench,
    server: &ServerProc,
    chromium: &Path,
    driver: &Path,
    n: usize,
    runs: usize,
) -> Result<Vec<Run>, String> {
    let addr = server.addr;
    load::create_apps(addr, (0..APPS).map(|a| instance(a).0))?;
    let push = |out: &mut Vec<u8>, i| out.extend(register_request(i));
    let (took, _) = load::pipelined(&[addr], 0..n, 4, 32, 201, push)?;
    bench.progress(format_args!(
        "dashboard: {} instances registered in {:.1} s",
        count(n),
        took.as_secs_f64()
    ));
    let mut done = Vec::new();
    for k in 0..runs {
        // A fresh browser each run: its memory is this page's alone.
        let browser = Browser::start(chromium, driver)?;
        let mut run = Run::default();
        if let Err(e) = one_run(&browser, addr, n, &mut run) {
            bench.progress(format_args!("dashboard: {n}, run {} ended: {e}", k + 1));
        }
        bench.progress(format_args!("dashboard: {n}, run {}: {run:?}", k + 1));
        done.push(run);
    }
    Ok(done)
}

/// The path of instance `i` (of `n`): app `app-{i % APPS}`, id `i-{i:07}`.
fn instance(i: usize) -> (String, String) {
    (format!("app-{:02}", i % APPS), format!("i-{i:07}"))
}

fn register_request(i: usize) -> Vec<u8> {
    let (app, id) = instance(i);
    let body = format!(
        r#"{{"id":"{id}","ip":"10.{}.{}.{}","port":8080,"metadata":{{"zone":"z-{}"}}}}"#,
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        i % 3
    );
    let mut out = Vec::new();
    load::push_post(&mut out, &app, &body);
    out
}

/// One request on a connection of its own, which must answer `want`.
fn request(addr: SocketAddr, bytes: &[u8], want: u16) -> Result<(), String> {
    match load::request_once(addr, bytes) {
        Ok((status, _)) if status == want => Ok(()),
        Ok((status, _)) => Err(format!(
            "{} answered {status} (expected {want})",
            String::from_utf8_lossy(bytes.split(|b| *b == b'\r').next().unwrap_or_default()),
        )),
        Err(e) => Err(format!("request: {e}")),
    }
}

/// Polls `script` (a function body returning a truthy value when done)
/// until it is, for at most LIMIT from `from`; the time from `from`.
fn until(browser: &Browser, from: Instant, script: &str) -> Result<Option<Duration>, String> {
    loop {
        // A page busy for longer than the script timeout is still busy.
        match browser.run(script) {
            Ok(value) if !(value.is_null() || value == false) => return Ok(Some(from.elapsed())),
            Ok(_) => {}
            Err(e) if e.contains("script timeout") => {}
            Err(e) => return Err(e),
        }
        if from.elapsed() > LIMIT {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A script that is true when instance `i` is shown with `status`.
fn shows(i: usize, status: &str) -> String {
    let (app, id) = instance(i);
    format!(
        "const s = document.querySelector('section[data-app=\"{app}\"] tr[data-instance=\"{id}\"] .status'); \
         return s !== null && s.textContent === '{status}';"
    )
}

fn filter(browser: &Browser, text: &str) -> Result<(), String> {
    browser.run(&format!(
        "const f = document.getElementById('filter'); f.value = '{text}'; \
         f.dispatchEvent(new Event('input')); return true;"
    ))?;
    Ok(())
}

/// Makes instance `i` `up` with a heartbeat; the time until the page shows
/// it, then puts it back to `starting` and waits for the page to show that.
fn change(browser: &Browser, addr: SocketAddr, i: usize) -> Result<Option<Duration>, String> {
    let (app, id) = instance(i);
    let put = format!(
        "PUT /registro/1.0/apps/{app}/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    );
    let sent = Instant::now();
    request(addr, put.as_bytes(), 204)?;
    let took = until(browser, sent, &shows(i, "up"))?;
    request(addr, &register_request(i), 201)?;
    until(browser, Instant::now(), &shows(i, "starting"))?;
    Ok(took)
}

/// One run into `run`; an error (such as a page too busy to answer
/// WebDriver at all) ends it with what was measured so far.
fn one_run(browser: &Browser, addr: SocketAddr, n: usize, run: &mut Run) -> Result<(), String> {
    browser.open("about:blank")?;
    let from = Instant::now();
    browser.open(&format!("http://{addr}/"))?;
    run.shown = until(
        browser,
        from,
        &format!(
            "let total = 0; \
             for (const b of document.querySelectorAll('#totals .status[data-status]')) \
               total += parseInt(b.textContent.replace(/,/g, ''), 10) || 0; \
             return document.querySelectorAll('section[data-app]').length === {APPS} && total === {n};"
        ),
    )?;
    if run.shown.is_none() {
        return Ok(());
    }
    run.rows = until(browser, from, &shows(0, "starting"))?;
    if run.rows.is_some() {
        run.change = change(browser, addr, 0)?;
    }
    let deep = n - 1;
    filter(browser, &instance(deep).1)?;
    if until(browser, Instant::now(), &shows(deep, "starting"))?.is_some() {
        run.filtered = change(browser, addr, deep)?;
    }
    filter(browser, "")?;
    until(browser, Instant::now(), &shows(0, "starting"))?;
    run.heap = browser
        .run("return performance.memory ? performance.memory.usedJSHeapSize : null;")?
        .as_u64();
    run.pss = browser.pss();
    Ok(())
}

/// A chromedriver of our own and one session on it, with a fresh profile;
/// all three end on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: PathBuf,
}

impl Browser {
    fn start(chromium: &Path, driver: &Path) -> Result<Browser, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let profile = std::env::temp_dir().join(format!(
            "registro-bench-chromium-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&profile).map_err(|e| format!("{}: {e}", profile.display()))?;
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start chromedriver: {e}"))?;
        let mut browser = Browser {
            driver: child,
            port,
            session: String::new(),
            profile,
        };
        let ready = Instant::now() + Duration::from_secs(20);
        while browser.call("GET", "/status", None).is_err() {
            if Instant::now() > ready {
                return Err("chromedriver did not answer within 20 s".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--enable-precise-memory-info".into(),
            "--window-size=1200,900".into(),
            format!("--user-data-dir={}", browser.profile.display()),
        ];
        let new = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"script": LIMIT.as_millis() as u64, "pageLoad": (LIMIT * 2).as_millis() as u64},
            "goog:chromeOptions": {"args": args, "binary": chromium.display().to_string()},
        }}});
        let reply = browser.call("POST", "/session", Some(new))?;
        browser.session = reply["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no WebDriver session: {reply}"))?
            .to_string();
        Ok(browser)
    }

    /// One WebDriver command.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let body = body.map(|b| b.to_string());
        let (status, _, text) = http::call(addr, method, path, body.as_deref())
            .map_err(|e| format!("WebDriver {e}"))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("WebDriver {method} {path}: {e}"))?;
        if status != 200 {
            return Err(format!("WebDriver {method} {path}: {status} {value}"));
        }
        Ok(value)
    }

    fn open(&self, url: &str) -> Result<(), String> {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            Some(json!({ "url": url })),
        )
        .map(|_| ())
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn run(&self, script: &str) -> Result<Value, String> {
        let reply = self.call(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            Some(json!({ "script": script, "args": [] })),
        )?;
        Ok(reply["value"].clone())
    }

    /// The processes of this browser: the descendants of its chromedriver.
    fn processes(&self) -> Vec<u32> {
        let mut parents = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
        let mut family = vec![self.driver.id()];
        let mut k = 0;
        while k < family.len() {
            let parent = family[k];
            family.extend(
                parents
                    .iter()
                    .filter(|(_, p)| *p == parent)
                    .map(|(c, _)| *c),
            );
            k += 1;
        }
        family.remove(0);
        family
    }

    /// The proportional set size of every process of this browser, in bytes.
    fn pss(&self) -> Option<u64> {
        let mut total = 0;
        for pid in self.processes() {
            let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
                continue;
            };
            total += rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
        (total > 0).then_some(total)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        // A browser too busy to close in time would outlive its chromedriver:
        // what is still below the (live) chromedriver is ours to end.
        for pid in self.processes() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
