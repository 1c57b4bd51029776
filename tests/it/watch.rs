//! Watches that wait (API.md Part 3 "Change index and watches"): a watch is
//! woken by each kind of change, not by a plain renewal, and returns at
//! `wait` (a scenario, run on every store by `scenarios.rs`; watches woken
//! by time are in `lifecycle.rs`); against the memory store, what a parked
//! watch's connection does meanwhile, SIGTERM answering watches at once,
//! and 10,000 of them holding no thread. These need the connection layer
//! that parks a request (`Outcome::Wait`) without a thread.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::{app_body, check, instance_body, register};
use crate::scenarios::{app_in, index, index_of, parked, status_in, table, timed, Registry, Watch};
use crate::support::{
    assert_within, proc_status, raise_nofile, read_reply, start_with, Conn, Proc,
};

table![Still: a_watch_is_woken_by_each_kind_of_change_and_only_by_one];

/// How long a watch may take to answer past its `wait`: well under the
/// waits of the watches here (30 s, 60 s), so an answer within it came
/// from the change (its index and view say which), not from the wait's
/// end. How much sooner depends on this machine's load.
const PROMPT: Duration = Duration::from_secs(10);

fn a_watch_is_woken_by_each_kind_of_change_and_only_by_one(s: &Registry) {
    // Changes through one server, watches on another (on one server, the
    // same), with the index the first answered.
    let (mut one, mut other) = (s.conn(0), s.conn(1));
    check(&mut one, "POST", "/apps", &app_body("web"), 201);
    register(&mut one, "web", "q", "10.0.0.9", 80);
    check(&mut one, "PUT", "/apps/web/q", "", 204);
    // Plain renewals through every server, and another app's change, wake
    // no watch of this app: it answers at its wait, with the same index.
    let before = index_of(&mut one, "/apps/web");
    let sent = Instant::now();
    let quiet = Watch::start(s.addr(1), &format!("/apps/web?index={before}&wait=1500ms"));
    parked(&mut other, 1);
    let mut c = s.client();
    for _ in 0..6 {
        check(&mut c, "PUT", "/apps/web/q", "", 204);
    }
    check(&mut c, "POST", "/apps", &app_body("db"), 201);
    let (reply, at) = quiet.answer();
    let took = at - sent;
    let wait = Duration::from_millis(1500);
    assert!(
        took >= wait && took < wait + PROMPT,
        "answered after {took:?}"
    );
    assert_eq!(
        (reply.status, index(&reply)),
        (200, before),
        "{}",
        reply.body
    );
    assert_eq!(status_in(&reply.json(), "q").as_deref(), Some("up"));
    // A filter applies to the answer.
    let (reply, _) = Watch::start(
        s.addr(1),
        &format!("/apps/web?index={before}&wait=200ms&status=down"),
    )
    .answer();
    assert_eq!(reply.json()["instances"], json!([]), "{}", reply.body);

    // Each kind of change wakes a watch of the app and of the list.
    let a = instance_body("a", "10.0.0.1", 80);
    let zoned = r#"{"id":"a","ip":"10.0.0.1","port":80,"metadata":{"zone":"eu"}}"#;
    let changes = [
        ("register", "POST", "/apps/web", a.as_str(), 201, "starting"),
        ("first heartbeat", "PUT", "/apps/web/a", "", 204, "up"),
        (
            "other metadata",
            "POST",
            "/apps/web",
            zoned,
            201,
            "starting",
        ),
        ("DELETE", "DELETE", "/apps/web/a", "", 204, "out-of-service"),
    ];
    for (what, method, path, body, status, seen) in changes {
        let app = index_of(&mut one, "/apps/web");
        let all = index_of(&mut one, "/apps");
        let w = Watch::start(s.addr(1), &format!("/apps/web?index={app}&wait=30s"));
        let l = Watch::start(s.addr(1), &format!("/apps?index={all}&wait=30s"));
        parked(&mut other, 2);
        let (_, changed) = timed(|| check(&mut one, method, path, body, status));
        let after = index_of(&mut one, "/apps/web");
        for (watch, path, was) in [(w, "/apps/web", app), (l, "/apps", all)] {
            let (reply, at) = watch.answer();
            let late = at.saturating_duration_since(changed.answered);
            assert!(
                late <= s.periods.seen_within,
                "{what}: the watch of {path} answered {late:?} after the change"
            );
            assert_eq!(reply.status, 200, "{what}: {}", reply.body);
            assert!(index(&reply) > was, "{what}: {path}");
            let v = reply.json();
            let web = if path == "/apps" {
                app_in(&v, "web")
            } else {
                assert_eq!(index(&reply), after, "{what}: the servers' indexes differ");
                v
            };
            assert_eq!(status_in(&web, "a").as_deref(), Some(seen), "{what}: {web}");
        }
    }
}

/// A memory server with the app `web`, and a connection to it.
fn with_web() -> (registro::Server, Conn) {
    let server = start_with(|_| {});
    let mut c = Conn::open(server.local_addr());
    check(&mut c, "POST", "/apps", &app_body("web"), 201);
    (server, c)
}

/// What a parked watch's client does meanwhile is seen at once: a request
/// sent behind the watch is answered after it, in order, and a client that
/// hangs up stops counting as waiting long before its wait ends.
#[test]
fn a_parked_watch_keeps_what_comes_behind_it_and_sees_its_client_leave() {
    let (server, mut c) = with_web();
    let addr = server.local_addr();
    register(&mut c, "web", "a", "10.0.0.1", 80);
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
    assert_within(stopped, Duration::from_secs(1), "all answered");
    let (code, _) = server.wait_exit(Duration::from_secs(2));
    assert_eq!(code, Some(0));
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
    let threads = proc_status(server.child.id(), "Threads:");
    let rss = server.rss_kib();
    // Opening 10,000 connections can take minutes on a loaded machine (a
    // full accept queue makes a connect wait for its SYN to be sent
    // again): the watches wait as long as the API allows, and the
    // connection that changes the registry is opened once they are all in
    // (one kept idle meanwhile would pass the server's idle timeout).
    let request =
        format!("GET /registro/1.0/apps/web?index={before}&wait=600s HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut streams = Vec::with_capacity(WATCHES);
    for _ in 0..WATCHES {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("send");
        streams.push(s);
    }
    let mut c = Conn::open(addr);
    parked(&mut c, WATCHES);
    let grown = proc_status(server.child.id(), "Threads:").saturating_sub(threads);
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
    let (server, mut c) = with_web();
    let addr = server.local_addr();
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
