//! Watches that wait (API.md Part 3 "Change index and watches"), against
//! the real server: a watch is woken by each kind of change, not by a plain
//! renewal, returns at `wait`, is answered at once on SIGTERM, and 10,000 of
//! them hold no thread. These need the connection layer that parks a
//! request (`Outcome::Wait`) without a thread.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::{app_body, check, register};
use crate::support::{eventually, raise_nofile, read_reply, start_with, Conn, Proc, Reply};

/// How long a woken watch may take to answer: well under the waits of the
/// watches here (30 s, 60 s), so an answer within it came from the change
/// (its index and view say which), not from the wait's end. How much sooner
/// depends on this machine's load; that the ticker wakes within a second
/// of a due time is `sweeper::tests`' to show.
const PROMPT: Duration = Duration::from_secs(10);

/// A watch in flight on a connection of its own.
struct Watch {
    thread: JoinHandle<(Reply, Duration)>,
}

impl Watch {
    /// `GET /registro/1.0PATH`, answered on another thread.
    fn start(addr: SocketAddr, path: &str) -> Watch {
        let mut conn = Conn::open(addr);
        let path = path.to_owned();
        let sent = Instant::now();
        let thread = thread::spawn(move || {
            let reply = conn.get(&path);
            (reply, sent.elapsed())
        });
        Watch { thread }
    }

    /// The answer and how long it took.
    fn answer(self) -> (Reply, Duration) {
        self.thread.join().expect("the watch thread")
    }
}

fn index(r: &Reply) -> u64 {
    r.header("registro-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Registro-Index in {:?}", r.headers))
}

fn index_of(c: &mut Conn, path: &str) -> u64 {
    index(&check(c, "GET", path, "", 200))
}

/// Waits until the server counts `n` parked watches (through `/metrics`),
/// so that a change made next must wake them rather than be seen on arrival.
fn parked(c: &mut Conn, n: usize) {
    let want = format!("registro_watches_waiting {n}");
    eventually(Duration::from_secs(5), &want, || {
        let r = c.send_raw(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", false);
        r.body.lines().any(|l| l.trim() == want).then_some(())
    });
}

fn status_in(app: &Value, id: &str) -> Option<String> {
    app["instances"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .and_then(|i| i["status"].as_str())
        .map(str::to_owned)
}

/// One kind of change: what is set up, what is done, what the woken watch
/// of `/apps/web` sees for instance `a` (`None`: absent), or 404 when the
/// app itself went.
struct Case {
    name: &'static str,
    setup: fn(&mut Conn),
    change: fn(&mut Conn),
    seen: Result<Option<&'static str>, u16>,
}

fn with_a(c: &mut Conn) {
    register(c, "web", "a", "10.0.0.1", 80);
}

fn with_a_up(c: &mut Conn) {
    with_a(c);
    check(c, "PUT", "/apps/web/a", "", 204);
}

#[test]
fn a_watch_is_woken_by_each_kind_of_change() {
    let cases = [
        Case {
            name: "register",
            setup: |_| {},
            change: with_a,
            seen: Ok(Some("starting")),
        },
        Case {
            name: "heartbeat bringing it up",
            setup: with_a,
            change: |c| {
                check(c, "PUT", "/apps/web/a", "", 204);
            },
            seen: Ok(Some("up")),
        },
        Case {
            name: "DELETE",
            setup: with_a_up,
            change: |c| {
                check(c, "DELETE", "/apps/web/a", "", 204);
            },
            seen: Ok(Some("out-of-service")),
        },
        Case {
            name: "re-registration with other metadata",
            setup: with_a,
            change: |c| {
                let body = r#"{"id":"a","ip":"10.0.0.1","port":80,"metadata":{"zone":"eu"}}"#;
                check(c, "POST", "/apps/web", body, 201);
            },
            seen: Ok(Some("starting")),
        },
        Case {
            name: "up to down by time",
            setup: with_a_up,
            change: |_| {},
            seen: Ok(Some("down")),
        },
    ];
    for case in cases {
        // Only the case of time needs a short --down-after: elsewhere `a`
        // must not go down by itself while a loaded machine sets up.
        let by_time = case.name == "up to down by time";
        let server = start_with(|c| {
            c.down_after = Duration::from_millis(if by_time { 500 } else { 60_000 });
            c.evict_after = Duration::from_secs(120);
            c.sweep_every = Duration::from_secs(3600);
        });
        let addr = server.local_addr();
        let mut c = Conn::open(addr);
        check(&mut c, "POST", "/apps", &app_body("web"), 201);
        (case.setup)(&mut c);
        let before = index_of(&mut c, "/apps/web");
        let all = index_of(&mut c, "/apps");
        let watch = Watch::start(addr, &format!("/apps/web?index={before}&wait=30s"));
        let list = Watch::start(addr, &format!("/apps?index={all}&wait=30s"));
        parked(&mut c, 2);
        let changed = Instant::now();
        (case.change)(&mut c);
        for (w, path) in [(watch, "/apps/web"), (list, "/apps")] {
            let (reply, _) = w.answer();
            let late = changed.elapsed();
            assert!(
                late < PROMPT,
                "{}: {path} answered {late:?} after the change",
                case.name
            );
            assert_eq!(reply.status, 200, "{}: {}", case.name, reply.body);
            assert!(index(&reply) > before.min(all), "{}: {path}", case.name);
            let v = reply.json();
            let app = if path == "/apps" {
                v["applications"][0].clone()
            } else {
                v
            };
            assert_eq!(
                status_in(&app, "a").as_deref(),
                case.seen.ok().flatten(),
                "{}: {app}",
                case.name
            );
        }
    }
}

#[test]
fn a_watch_is_woken_by_removals_by_time() {
    // The app goes an eviction period after its instance: 2 s for this
    // test to watch it in between, on a loaded machine too.
    let server = start_with(|c| {
        c.down_after = Duration::from_millis(200);
        c.evict_after = Duration::from_millis(2000);
        c.sweep_every = Duration::from_secs(3600);
    });
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    with_a_up(&mut c);
    // The index of the view where `a` reads down: a watch on it answers at
    // the removal, or at once if the removal came meanwhile.
    let before = eventually(Duration::from_secs(5), "a down", || {
        let r = check(&mut c, "GET", "/apps/web", "", 200);
        (status_in(&r.json(), "a").as_deref() == Some("down")).then(|| index(&r))
    });
    // The instance's removal.
    let (reply, took) = Watch::start(addr, &format!("/apps/web?index={before}&wait=30s")).answer();
    assert_eq!(reply.status, 200);
    assert!(took < Duration::from_millis(2000) + PROMPT, "{took:?}");
    assert_eq!(status_in(&reply.json(), "a"), None, "{}", reply.body);
    // The empty app's removal: the app watch answers 404, the list without it.
    let now = index(&reply);
    let list = Watch::start(
        addr,
        &format!("/apps?index={}&wait=30s", index_of(&mut c, "/apps")),
    );
    let (reply, took) = Watch::start(addr, &format!("/apps/web?index={now}&wait=30s")).answer();
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(took < Duration::from_millis(2000) + PROMPT, "{took:?}");
    let (reply, _) = list.answer();
    assert_eq!(
        reply.json()["applications"],
        serde_json::json!([]),
        "{}",
        reply.body
    );
}

/// What a parked watch's client does meanwhile is seen at once: a request
/// sent behind the watch is answered after it, in order, and a client that
/// hangs up stops counting as waiting long before its wait ends.
#[test]
fn a_parked_watch_keeps_what_comes_behind_it_and_sees_its_client_leave() {
    let server = start_with(|_| {});
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    with_a_up(&mut c);
    let before = index_of(&mut c, "/apps/web");
    let watch =
        format!("GET /registro/1.0/apps/web?index={before}&wait=60s HTTP/1.1\r\nHost: t\r\n\r\n");
    // A watch with the next request sent behind it, in the same write.
    let eager = TcpStream::connect(addr).expect("connect");
    (&eager)
        .write_all(
            format!("{watch}GET /registro/1.0/apps/web/a HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        )
        .expect("send");
    parked(&mut c, 1);
    // A watch whose client leaves while it waits: no longer waiting within
    // `parked`'s 5 s, where its wait is 60 s.
    let leaving = TcpStream::connect(addr).expect("connect");
    (&leaving).write_all(watch.as_bytes()).expect("send");
    parked(&mut c, 2);
    drop(leaving);
    parked(&mut c, 1);
    // The change answers the watch, then the request behind it.
    register(&mut c, "web", "b", "10.0.0.2", 80);
    eager.set_read_timeout(Some(PROMPT)).expect("timeout");
    let mut reader = BufReader::new(eager);
    let first = read_reply(&mut reader).expect("the watch's answer");
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(index(&first) > before);
    assert_eq!(status_in(&first.json(), "b").as_deref(), Some("starting"));
    let second = read_reply(&mut reader).expect("the request behind the watch");
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.json()["id"], "a", "{}", second.body);
    parked(&mut c, 0);
}

#[test]
fn a_plain_renewal_wakes_no_watch_and_a_watch_returns_at_wait() {
    let server = start_with(|_| {});
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    with_a_up(&mut c);
    let before = index_of(&mut c, "/apps/web");
    let watch = Watch::start(addr, &format!("/apps/web?index={before}&wait=1500ms"));
    parked(&mut c, 1);
    for _ in 0..20 {
        check(&mut c, "PUT", "/apps/web/a", "", 204);
    }
    // Another app's change does not wake a watch of this one either.
    check(&mut c, "POST", "/apps", &app_body("db"), 201);
    let (reply, took) = watch.answer();
    assert!(
        took >= Duration::from_millis(1500),
        "answered after {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500) + PROMPT,
        "answered after {took:?}"
    );
    assert_eq!(
        (reply.status, index(&reply)),
        (200, before),
        "{}",
        reply.body
    );
    assert_eq!(status_in(&reply.json(), "a").as_deref(), Some("up"));
    // A filter applies to the answer.
    let (reply, _) = Watch::start(
        addr,
        &format!("/apps/web?index={before}&wait=200ms&status=down"),
    )
    .answer();
    assert_eq!(
        reply.json()["instances"],
        serde_json::json!([]),
        "{}",
        reply.body
    );
}

#[test]
fn sigterm_answers_waiting_watches_at_once() {
    let mut server = Proc::start(&[]);
    let mut c = Conn::open(server.addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let before = index_of(&mut c, "/apps/web");
    let watches: Vec<Watch> = (0..10)
        .map(|_| Watch::start(server.addr, &format!("/apps/web?index={before}&wait=10m")))
        .collect();
    parked(&mut c, 10);
    drop(c);
    let stopped = Instant::now();
    server.signal("TERM");
    for w in watches {
        let (reply, _) = w.answer();
        assert_eq!(
            (reply.status, index(&reply)),
            (200, before),
            "{}",
            reply.body
        );
        assert_eq!(reply.json()["name"], "web");
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(1),
        "{:?}",
        stopped.elapsed()
    );
    let (code, _) = server.wait_exit(Duration::from_secs(2));
    assert_eq!(code, Some(0));
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(str::trim)
                .and_then(|n| n.parse().ok())
        })
        .expect("Threads in /proc status")
}

#[test]
fn ten_thousand_watches_hold_no_threads() {
    const WATCHES: usize = 10_000;
    raise_nofile(WATCHES as u64 + 1024);
    let server = Proc::start(&["--max-connections", "11000"]);
    let addr = server.addr;
    let mut c = Conn::open(addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let before = index_of(&mut c, "/apps/web");
    let threads = threads_of(server.child.id());
    let rss = server.rss_kib();
    let request =
        format!("GET /registro/1.0/apps/web?index={before}&wait=60s HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut streams = Vec::with_capacity(WATCHES);
    for _ in 0..WATCHES {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("send");
        streams.push(s);
    }
    parked(&mut c, WATCHES);
    let grown = threads_of(server.child.id()).saturating_sub(threads);
    let per_watch = (server.rss_kib().saturating_sub(rss) * 1024) as usize / WATCHES;
    eprintln!("{WATCHES} watches: {grown} more threads, about {per_watch} bytes each");
    assert!(grown <= 4, "{grown} more threads for {WATCHES} watches");
    // One change answers them all.
    let changed = Instant::now();
    register(&mut c, "web", "a", "10.0.0.1", 80);
    for s in streams {
        let reply = read_reply(&mut BufReader::new(s)).expect("an answer");
        assert_eq!(reply.status, 200);
        assert!(index(&reply) > before);
    }
    eprintln!(
        "all {WATCHES} answered {:?} after the change",
        changed.elapsed()
    );
}

/// Issue 19, finding 3: a watch and a request pipelined behind it, then
/// `shutdown(SHUT_WR)`: the watch is answered (here at its `wait`), then
/// the request behind it, then the connection is closed. It was dropped
/// unanswered, with the request behind it.
#[test]
fn a_half_closed_watch_is_answered_then_what_follows_it() {
    let server = start_with(|_| {});
    let addr = server.local_addr();
    let mut c = Conn::open(addr);
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    let now = index_of(&mut c, "/apps/web");
    let mut stream = crate::support::connect(addr, Duration::from_secs(30));
    let bytes = format!(
        "GET /registro/1.0/apps/web?index={now}&wait=1s HTTP/1.1\r\nHost: t\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    );
    stream.write_all(bytes.as_bytes()).expect("send");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut received = Vec::new();
    let closed = std::io::Read::read_to_end(&mut stream, &mut received).is_ok();
    let mut replies = &received[..];
    let watch = read_reply(&mut replies).expect("the watch is answered");
    assert_eq!((watch.status, index(&watch)), (200, now));
    let health = read_reply(&mut replies).expect("the request behind it is answered");
    assert_eq!(health.status, 200);
    assert!(replies.is_empty(), "nothing more");
    assert!(closed, "then the connection is closed");
}
