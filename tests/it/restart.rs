//! Restarts (API.md Part 4): an index never reused, and `--data-dir`. Every
//! test runs the `registro` binary, stops it (SIGTERM) or kills it (SIGKILL)
//! and starts another on the same directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{output_within, read_reply, Conn, Proc, Reply};

/// The `Registro-Index` of a reply.
fn index(r: &Reply) -> u64 {
    r.header("registro-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Registro-Index in {r:?}"))
}

#[track_caller]
pub(crate) fn ok(r: Reply, status: u16) -> Reply {
    assert_eq!(r.status, status, "{r:?}");
    r
}

/// The issue's reproduction: the same changes made on a first server and on
/// a second one started after it (no `--data-dir`) give the second indexes
/// above every one the first answered, so a watch that sent an old one is
/// answered at once with the new view.
#[test]
fn the_index_after_a_restart_is_above_every_index_the_old_server_answered() {
    let mut seen = Vec::new();
    let mut first = Proc::start(&[]);
    {
        let mut c = Conn::open(first.addr);
        ok(c.post("/apps", r#"{"name":"web"}"#), 201);
        for id in ["a", "b"] {
            let body = format!(r#"{{"id":"{id}","ip":"10.0.0.1","port":80}}"#);
            ok(c.post("/apps/web", &body), 201);
        }
        ok(c.put("/apps/web/a"), 204);
        seen.push(index(&ok(c.get("/apps/web"), 200)));
        seen.push(index(&ok(c.get("/apps"), 200)));
    }
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(10)).0, Some(0));

    let second = Proc::start(&[]);
    let mut c = Conn::open(second.addr);
    let fresh = index(&ok(c.get("/apps"), 200));
    ok(c.post("/apps", r#"{"name":"web"}"#), 201);
    ok(
        c.post("/apps/web", r#"{"id":"a","ip":"10.0.0.1","port":80}"#),
        201,
    );
    ok(c.put("/apps/web/a"), 204);
    let max = seen.iter().copied().max().unwrap_or(0);
    let now = index(&ok(c.get("/apps/web"), 200));
    assert!(fresh > max && now > max, "{fresh}, {now} after {seen:?}");
    assert!(now < 1 << 53, "{now} is not exact in JSON");
    // A watch with the old server's index is answered at once.
    let started = Instant::now();
    let r = ok(c.get(&format!("/apps/web?index={max}&wait=3s")), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the watch waited"
    );
    assert_eq!(index(&r), now);
}

/// A data directory for one test, removed on drop.
pub(crate) struct Dir(pub(crate) PathBuf);

impl Dir {
    pub(crate) fn new() -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "registro-data-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        Dir(path)
    }

    pub(crate) fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }

    /// Every file in it and its bytes.
    pub(crate) fn files(&self) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(&self.0)
            .expect("list the data directory")
            .map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().to_string_lossy().into_owned();
                (name, fs::read(e.path()).expect("read a data file"))
            })
            .collect()
    }

    /// The path of its one log, or of the last.
    pub(crate) fn last_log(&self) -> PathBuf {
        let mut logs: Vec<String> = self
            .files()
            .into_keys()
            .filter(|n| n.starts_with("log."))
            .collect();
        logs.sort();
        self.0
            .join(logs.last().expect("a log in the data directory"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Stops a server with SIGTERM; it must exit 0.
pub(crate) fn stop(mut p: Proc) {
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(30)).0, Some(0));
}

/// The view of `/apps` as the tests compare it: every field but `lastRenewal`.
fn view(c: &mut Conn) -> serde_json::Value {
    let mut v = ok(c.get("/apps"), 200).json();
    for app in v["applications"].as_array_mut().expect("a list") {
        for i in app["instances"].as_array_mut().expect("instances") {
            i.as_object_mut()
                .expect("an instance")
                .remove("lastRenewal");
        }
    }
    v
}

pub(crate) fn register(c: &mut Conn, app: &str, id: &str, meta: &str) -> Reply {
    let body = format!(r#"{{"id":"{id}","ip":"10.0.0.7","port":8080,"metadata":{{{meta}}}}}"#);
    c.post(&format!("/apps/{app}"), &body)
}

#[test]
fn a_restart_keeps_every_app_instance_metadata_and_status() {
    let dir = Dir::new();
    let first = Proc::start(&["--data-dir", dir.arg()]);
    let mut c = Conn::open(first.addr);
    for app in ["web", "db", "empty"] {
        ok(c.post("/apps", &format!(r#"{{"name":"{app}"}}"#)), 201);
    }
    ok(
        register(&mut c, "web", "a", r#""zone":"eu-1","v":"2""#),
        201,
    );
    ok(register(&mut c, "web", "b", ""), 201);
    ok(register(&mut c, "web", "c", r#""x":"y""#), 201);
    ok(register(&mut c, "db", "p", ""), 201);
    ok(c.put("/apps/web/a"), 204);
    ok(c.put("/apps/db/p"), 204);
    ok(c.delete("/apps/web/c"), 204);
    let before = view(&mut c);
    let app_index = index(&ok(c.get("/apps/web"), 200));
    let list_index = index(&ok(c.get("/apps"), 200));
    assert_eq!(before["applications"][2]["instances"][0]["status"], "up");

    // `a` keeps heartbeating through the restart, against whichever server
    // is up; a refused connection (none is up) is expected, a 404 never.
    let addr = Arc::new(Mutex::new(first.addr));
    let done = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (addr, done) = (Arc::clone(&addr), Arc::clone(&done));
        thread::spawn(move || {
            let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
            while !done.load(Ordering::SeqCst) {
                let target = *addr.lock().unwrap();
                if let Ok(mut s) = TcpStream::connect(target) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let put = "PUT /registro/1.0/apps/web/a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
                    if s.write_all(put.as_bytes()).is_ok() {
                        if let Some(r) = read_reply(&mut BufReader::new(s)) {
                            *answers.entry(r.status).or_default() += 1;
                        }
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
            answers
        })
    };
    drop(c);
    stop(first);
    let second = Proc::start(&["--data-dir", dir.arg()]);
    *addr.lock().unwrap() = second.addr;
    let mut c = Conn::open(second.addr);
    assert_eq!(view(&mut c), before);
    // The heartbeats reach the new server.
    let mark = ok(c.get("/apps/web/a"), 200).json()["lastRenewal"].clone();
    crate::support::eventually(Duration::from_secs(10), "a heartbeat", || {
        (ok(c.get("/apps/web/a"), 200).json()["lastRenewal"] != mark).then_some(())
    });
    done.store(true, Ordering::SeqCst);
    let answers = heartbeat.join().expect("the heartbeat thread");
    assert_eq!(
        answers.keys().copied().collect::<Vec<_>>(),
        [204],
        "{answers:?}"
    );

    // A watch on the app with its old index: nothing changed, so it waits
    // and answers the same index; on the list, whose index the new server
    // raised, it is answered at once with the new one.
    let started = Instant::now();
    let r = ok(c.get(&format!("/apps/web?index={app_index}&wait=1s")), 200);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(index(&r), app_index);
    let started = Instant::now();
    let r = ok(c.get(&format!("/apps?index={list_index}&wait=10s")), 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(index(&r) > list_index);
    // Changes go on from there, the index above every old one.
    ok(register(&mut c, "web", "d", ""), 201);
    assert!(index(&ok(c.get("/apps/web"), 200)) > list_index);
    drop(c);
    stop(second);
    let third = Proc::start(&["--data-dir", dir.arg()]);
    let got = view(&mut Conn::open(third.addr));
    let web = &got["applications"][2]["instances"];
    assert_eq!(web.as_array().map(Vec::len), Some(4), "{got}");
}

#[test]
fn a_crash_under_load_keeps_everything_answered_a_second_before() {
    let dir = Dir::new();
    let mut first = Proc::start(&["--data-dir", dir.arg()]);
    let addr = first.addr;
    ok(Conn::open(addr).post("/apps", r#"{"name":"web"}"#), 201);
    // Registrations and heartbeats running: each 2xx noted with its time.
    let done = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|worker| {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut acked: Vec<(String, bool, Instant)> = Vec::new();
                let Ok(s) = TcpStream::connect(addr) else {
                    return acked;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                let mut send = |req: String| -> Option<u16> {
                    w.write_all(req.as_bytes()).ok()?;
                    read_reply(&mut r).map(|r| r.status)
                };
                for n in 0.. {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    let id = format!("i-{worker}-{n}");
                    let body = format!(r#"{{"id":"{id}","ip":"10.1.0.1","port":80}}"#);
                    let post = format!(
                        "POST /registro/1.0/apps/web HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if send(post) != Some(201) {
                        break;
                    }
                    acked.push((id.clone(), false, Instant::now()));
                    // Every other one heartbeats once: `up`.
                    if n % 2 == 0 {
                        let put = format!("PUT /registro/1.0/apps/web/{id} HTTP/1.1\r\nHost: t\r\n\r\n");
                        if send(put) != Some(204) {
                            break;
                        }
                        acked.push((id, true, Instant::now()));
                    }
                }
                acked
            })
        })
        .collect();
    // Long enough for many changes, whatever the machine's speed.
    crate::support::eventually(Duration::from_secs(20), "load", || {
        let n = ok(Conn::open(addr).get("/apps/web"), 200).json()["instances"]
            .as_array()
            .map_or(0, Vec::len);
        (n >= 300).then_some(())
    });
    thread::sleep(Duration::from_millis(1500));
    first.child.kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = first.child.wait();
    done.store(true, Ordering::SeqCst);
    let acked: Vec<_> = load
        .into_iter()
        .flat_map(|t| t.join().expect("a load thread"))
        .collect();
    let second = Proc::start(&["--data-dir", dir.arg()]);
    let got = ok(Conn::open(second.addr).get("/apps/web"), 200).json();
    let status: BTreeMap<String, String> = got["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_string(),
                i["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut checked = 0;
    for (id, up, at) in &acked {
        if killed.duration_since(*at) <= Duration::from_secs(1) {
            continue;
        }
        checked += 1;
        let want = if *up { Some("up") } else { None };
        match (status.get(id).map(String::as_str), want) {
            (None, _) => panic!("{id}, answered {:?} before the kill, is lost", killed - *at),
            (Some(s), Some(w)) => assert_eq!(s, w, "{id}"),
            (Some(_), None) => {}
        }
    }
    assert!(checked >= 300, "only {checked} changes were checked");
}

/// Starts `registro` on `dir` and expects it to refuse: exit 1 and one line
/// containing each of `why`; the directory's files are byte for byte as
/// before. Answers the line.
#[track_caller]
pub(crate) fn refuses(dir: &Dir, args: &[&str], why: &[&str]) -> String {
    let before = dir.files();
    let mut registro = Command::new(env!("CARGO_BIN_EXE_registro"));
    registro.args(["--addr", "127.0.0.1:0"]).args(args);
    // A server that starts instead of refusing is stopped, not waited for.
    let (status, _, stderr) = output_within(&mut registro, Duration::from_secs(20));
    let Some(status) = status else {
        panic!("it started instead of refusing: {stderr}");
    };
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for why in why {
        assert!(lines[0].contains(why), "{why:?} in {stderr}");
    }
    assert!(!lines[0].contains("panicked"), "{stderr}");
    assert!(dir.files() == before, "the files changed: {stderr}");
    lines[0].to_string()
}

/// A data directory holding one app with two instances, stopped cleanly
/// (or killed, leaving its log).
pub(crate) fn prepared(kill: bool) -> Dir {
    prepared_with(&["a", "b"], kill)
}

/// A data directory holding app `web` with instances `ids`, stopped
/// cleanly (or killed once its log holds every one).
pub(crate) fn prepared_with(ids: &[&str], kill: bool) -> Dir {
    let dir = Dir::new();
    let mut p = Proc::start(&["--data-dir", dir.arg()]);
    let mut c = Conn::open(p.addr);
    ok(c.post("/apps", r#"{"name":"web"}"#), 201);
    for id in ids {
        ok(register(&mut c, "web", id, ""), 201);
    }
    drop(c);
    if kill {
        // A crash may lose what was answered in its last second: wait until
        // the log holds every instance (each record carries its address as
        // bytes), whatever its size before that.
        crate::support::eventually(Duration::from_secs(10), "the log to hold all", || {
            let log = fs::read(dir.last_log()).unwrap_or_default();
            let held = log.windows(8).filter(|w| w == b"10.0.0.7").count();
            (held >= ids.len()).then_some(())
        });
        p.child.kill().expect("SIGKILL");
        let _ = p.child.wait();
    } else {
        stop(p);
    }
    dir
}

#[test]
fn a_second_server_on_the_same_directory_exits() {
    let dir = prepared(false);
    let first = Proc::start(&["--data-dir", dir.arg()]);
    refuses(
        &dir,
        &["--data-dir", dir.arg()],
        &["in use by another registro"],
    );
    // The first one goes on serving.
    ok(Conn::open(first.addr).get("/apps/web"), 200);
}

#[test]
fn a_directory_that_cannot_be_written_stops_the_start() {
    // Tests run as root, whom permissions do not stop: a path under a
    // regular file can be made by no one.
    let dir = prepared(false);
    let under_a_file = dir.0.join("snapshot").join("data");
    let arg = under_a_file.to_str().expect("UTF-8");
    refuses(
        &dir,
        &["--data-dir", arg],
        &["cannot create the data directory"],
    );
}

#[test]
fn metrics_show_the_last_saves_and_the_failures() {
    let dir = Dir::new();
    let p = Proc::start(&["--data-dir", dir.arg()]);
    ok(Conn::open(p.addr).post("/apps", r#"{"name":"web"}"#), 201);
    let metrics = || crate::support::raw(p.addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").body;
    let body = crate::support::eventually(Duration::from_secs(10), "a log save", || {
        let body = metrics();
        let line = body
            .lines()
            .find(|l| l.starts_with("registro_data_dir_last_save_bytes{kind=\"log\"}"))?
            .to_string();
        (!line.ends_with(" 0")).then_some(body)
    });
    for family in [
        "registro_data_dir_last_save_seconds{kind=\"log\"}",
        "registro_data_dir_last_save_seconds{kind=\"snapshot\"}",
        "registro_data_dir_save_failures_total 0",
    ] {
        assert!(body.contains(family), "{family} in {body}");
    }
    // Without --data-dir, none of it.
    let plain = Proc::start(&[]);
    let body = crate::support::raw(plain.addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").body;
    assert!(!body.contains("registro_data_dir"), "{body}");
}
