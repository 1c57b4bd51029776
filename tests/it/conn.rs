//! Issue 9: connections that wait cost no thread. Idle keep-alive
//! connections, requests still arriving and answers a slow reader has not
//! taken are parked in the poller; a fixed pool of workers runs the handlers.
//! Also the framing rules of RFC 9112 6.3 / 11.2 end to end, and the stop and
//! start-up behaviour of the connection layer (issue 13, items 5, 9 and 17).

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    assert_within, connect, eventually, fill_registry, held_open, idle_connections, proc_status,
    raise_nofile, raw, read_head, read_reply, start_with, Proc, Reply, Stream,
};

const GET_APPS: &[u8] = b"GET /registro/1.0/apps HTTP/1.1\r\nHost: t\r\n\r\n";
const HEARTBEAT: &[u8] =
    b"PUT /registro/1.0/apps/web/web-1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";

fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    let request = format!(
        "POST /registro/1.0{path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(addr, request.as_bytes())
}

/// Registers application `web` with instance `web-1`, the target of `HEARTBEAT`.
fn register(addr: SocketAddr) {
    assert_eq!(post(addr, "/apps", r#"{"name":"web"}"#).status, 201);
    let instance = r#"{"id":"web-1","ip":"127.0.0.1","port":8080}"#;
    assert_eq!(post(addr, "/apps/web", instance).status, 201);
}

/// A keep-alive connection that has had one request answered.
fn idle_connection(addr: SocketAddr) -> Stream {
    let mut stream = connect(addr, Duration::from_secs(10));
    stream.write_all(GET_APPS).expect("send");
    let mut reader = BufReader::new(stream);
    let reply = read_reply(&mut reader).expect("an answer");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("keep-alive"));
    reader.into_inner()
}

/// Sends `bytes`, reads until the server closes, and returns the one answer
/// it sent (panics if it sent more than one, or kept the connection open).
#[track_caller]
fn answered_and_closed(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = connect(addr, Duration::from_secs(5));
    stream.write_all(bytes).expect("send");
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        // A reset after the answer (the rest of the request unread).
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the server did not close the connection: {e}; got {:?}",
            String::from_utf8_lossy(&received)
        ),
    }
    let mut reader = &received[..];
    let reply = read_reply(&mut reader)
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&received)));
    assert!(reader.is_empty(), "more than one answer: {received:?}");
    reply
}

// RFC 9112 6.3 and 11.2: ambiguous framing is refused, end to end.

#[track_caller]
fn check_refused(addr: SocketAddr, what: &str, request: &[u8]) {
    let reply = answered_and_closed(addr, request);
    assert_eq!(reply.status, 400, "{what}: {reply:?}");
    assert_eq!(reply.header("connection"), Some("close"), "{what}");
    assert!(!reply.error().is_empty(), "{what}");
}

#[test]
fn smuggling_framings_answer_400_and_close() {
    let server = start_with(|_| {});
    let addr = server.local_addr();
    let apps = "POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\n";
    let cases: &[(&str, String)] = &[
        (
            "Content-Length and Transfer-Encoding",
            format!("{apps}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
        ),
        (
            "Transfer-Encoding and Content-Length",
            format!("{apps}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
        ),
        (
            "two different Content-Lengths",
            format!("{apps}Content-Length: 2\r\nContent-Length: 14\r\n\r\n{{\"name\":\"x\"}}"),
        ),
        (
            "a Transfer-Encoding without chunked",
            format!("{apps}Transfer-Encoding: identity\r\n\r\n{{}}"),
        ),
        (
            "chunked not last",
            format!("{apps}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ),
        (
            "chunked not last, over two lines",
            format!("{apps}Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n"),
        ),
        (
            "obsolete line folding",
            format!("{apps}X-A: a\r\n  b\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "obsolete line folding of Transfer-Encoding",
            format!("{apps}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "whitespace before the colon",
            format!("{apps}Content-Length : 0\r\n\r\n"),
        ),
        (
            "a tab before the colon",
            format!("{apps}Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "a bare CR in a header",
            format!("{apps}X-A: a\rContent-Length: 0\r\n\r\n"),
        ),
        (
            "a bare CR ending the request line",
            "GET /registro/1.0/apps HTTP/1.1\rHost: t\r\n\r\n".to_string(),
        ),
        (
            "a bare CR in a chunk line",
            format!("{apps}Transfer-Encoding: chunked\r\n\r\n0\r\r\n\r\n"),
        ),
        (
            "a bare LF ending a chunk size",
            format!("{apps}Transfer-Encoding: chunked\r\n\r\nd;\n{{\"name\":\"x\"}}\r\n0\r\n\r\n"),
        ),
        (
            "bare LFs ending chunk data and the last chunk",
            format!("{apps}Transfer-Encoding: chunked\r\n\r\nd\r\n{{\"name\":\"x\"}}\n0\n\n"),
        ),
        (
            "whitespace before a chunk size",
            format!("{apps}Transfer-Encoding: chunked\r\n\r\n d\r\n{{\"name\":\"x\"}}\r\n0\r\n\r\n"),
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            "POST /registro/1.0/apps HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\
             Transfer-Encoding: chunked\r\n\r\nd\r\n{\"name\":\"x\"}\r\n0\r\n\r\n"
                .to_string(),
        ),
    ];
    for (what, request) in cases {
        check_refused(addr, what, request.as_bytes());
    }
    // Still serving.
    assert_eq!(raw(addr, GET_APPS).status, 200);
}

/// Issue 13, item 9: any number of leading zeros in a chunk size.
#[test]
fn chunk_sizes_with_leading_zeros_are_read() {
    let server = start_with(|_| {});
    let addr = server.local_addr();
    let body = r#"{"name":"zeros"}"#;
    let request = format!(
        "POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         0000000000{:x}\r\n{body}\r\n00000000000000000000000\r\n\r\n",
        body.len()
    );
    let reply = raw(addr, request.as_bytes());
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(
        raw(addr, b"GET /registro/1.0/apps/zeros HTTP/1.1\r\n\r\n").status,
        200
    );
}

/// A request that arrives in pieces is put aside between them and resumed:
/// its head before `Expect: 100-continue` is answered, its body a byte at a
/// time, and a pipelined request split in two.
#[test]
fn partial_requests_resume_when_the_rest_arrives() {
    let server = start_with(|c| c.threads = 1);
    let addr = server.local_addr();
    let mut stream = connect(addr, Duration::from_secs(5));
    let body = br#"{"name":"pieces"}"#;
    let head = format!(
        "POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send the head");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let interim = read_head(&mut reader).expect("an interim answer");
    assert_eq!(interim.status, 100, "{interim:?}");
    // The only worker is free meanwhile: another client is served.
    assert_eq!(raw(addr, GET_APPS).status, 200);
    for b in body {
        stream.write_all(&[*b]).expect("send a byte");
    }
    let reply = read_reply(&mut reader).expect("the answer");
    assert_eq!(reply.status, 201, "{reply:?}");

    // Two pipelined requests, split inside the second one's head.
    let two = [GET_APPS, HEARTBEAT].concat();
    let (first, second) = two.split_at(GET_APPS.len() + 20);
    stream.write_all(first).expect("send");
    assert_eq!(read_reply(&mut reader).map(|r| r.status), Some(200));
    assert_eq!(raw(addr, GET_APPS).status, 200);
    stream.write_all(second).expect("send");
    // No such instance: a 404, but an answer on the same connection.
    assert_eq!(read_reply(&mut reader).map(|r| r.status), Some(404));
}

/// A request trickled in a byte at a time (slowloris, or a person typing)
/// stops waking a worker on every byte once it is seen trickling, and is
/// read again on a timer: it is still answered promptly after its last
/// byte, and a trickler that hangs up mid-request is told so and closed at
/// once, not at `--request-timeout`.
#[test]
fn trickled_requests_are_answered_and_their_hang_ups_seen() {
    let server = start_with(|c| c.threads = 1);
    let addr = server.local_addr();
    register(addr);
    let mut stream = connect(addr, Duration::from_secs(5));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    for (i, b) in HEARTBEAT.iter().enumerate() {
        stream.write_all(&[*b]).expect("send a byte");
        thread::sleep(Duration::from_millis(2));
        if i == HEARTBEAT.len() / 2 {
            // The only worker is free meanwhile: another client is served.
            assert_eq!(raw(addr, GET_APPS).status, 200);
        }
    }
    let last_byte = Instant::now();
    let reply = read_reply(&mut reader).expect("the answer");
    assert_eq!(reply.status, 204, "{reply:?}");
    // Read again within 50 ms of the last byte; a second of slack.
    assert_within(last_byte, Duration::from_secs(1), "answered");
    // Kept alive: the next request, whole, is answered as usual.
    stream.write_all(HEARTBEAT).expect("send");
    assert_eq!(read_reply(&mut reader).map(|r| r.status), Some(204));

    // Half a request, trickled, then the client shuts its side.
    let mut stream = connect(addr, Duration::from_secs(5));
    for b in &HEARTBEAT[..40] {
        stream.write_all(&[*b]).expect("send a byte");
        thread::sleep(Duration::from_millis(2));
    }
    let hung_up = Instant::now();
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // The request timeout is 10 s: the close is the hang-up's doing.
    assert_within(hung_up, Duration::from_secs(5), "closed");
}

/// Slow readers of large answers, three per worker, hold no worker: while
/// their answers wait in the poller, heartbeats are answered at once; and
/// their answers resume when they read again.
#[test]
fn slow_readers_of_large_answers_hold_no_worker() {
    const WORKERS: usize = 2;
    let server = start_with(|c| c.threads = WORKERS);
    let addr = server.local_addr();
    register(addr);
    fill_registry(addr);
    let slow: Vec<Stream> = (0..3 * WORKERS)
        .map(|_| {
            let mut stream = connect(addr, Duration::from_secs(5));
            // 100 listings of 70 KB each: 7 MB no socket buffer holds.
            stream.write_all(&GET_APPS.repeat(100)).expect("send");
            stream
        })
        .collect();
    // Every slow reader's answers have filled its socket buffers.
    for stream in &slow {
        let mut before = 0;
        eventually(Duration::from_secs(5), "the buffers to fill", || {
            let now = rustix::io::ioctl_fionread(&**stream).unwrap_or(0);
            let full = now > 0 && now == before;
            before = now;
            full.then_some(())
        });
    }
    let mut hb = BufReader::new(connect(addr, Duration::from_secs(5)));
    let started = Instant::now();
    for i in 0..50 {
        let t = Instant::now();
        hb.get_mut().write_all(HEARTBEAT).expect("send");
        let reply = read_reply(&mut hb).expect("a heartbeat answer");
        assert_eq!(reply.status, 204, "heartbeat {i}: {reply:?}");
        // A worker held by a slow reader would be held until the request
        // timeout (10 s); 5 s tells the two apart on a loaded machine too.
        assert_within(
            t,
            Duration::from_secs(5),
            &format!("heartbeat {i} answered"),
        );
    }
    println!(
        "50 heartbeats beside {} slow readers in {:?}",
        slow.len(),
        started.elapsed()
    );
    // A slow reader that reads again gets the rest, answer after answer.
    let mut reader = BufReader::new(&slow[0]);
    for i in 0..100 {
        let reply = read_reply(&mut reader).unwrap_or_else(|| panic!("listing {i}"));
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.len() > 60_000,
            "listing {i}: {} bytes",
            reply.body.len()
        );
    }
}

/// A large answer is sent from its own buffer after its head: answers
/// pipelined before and after it keep their order, a HEAD of it sends no
/// body, and `Connection: close` on the last closes after the whole of it.
#[test]
fn large_answers_keep_their_place_in_a_pipeline() {
    let server = start_with(|_| {});
    let addr = server.local_addr();
    register(addr);
    fill_registry(addr);
    let head = b"HEAD /registro/1.0/apps HTTP/1.1\r\nHost: t\r\n\r\n";
    let small = b"GET /registro/1.0/apps/web HTTP/1.1\r\nHost: t\r\n\r\n";
    let last = b"GET /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut stream = connect(addr, Duration::from_secs(5));
    let pipeline = [HEARTBEAT, GET_APPS, HEARTBEAT, head, small, GET_APPS, last].concat();
    stream.write_all(&pipeline).expect("send");
    let mut reader = BufReader::new(stream);
    let mut next = |what: &str, is_head: bool| {
        let reply = if is_head {
            read_head(&mut reader)
        } else {
            read_reply(&mut reader)
        };
        reply.unwrap_or_else(|| panic!("no answer to {what}"))
    };
    assert_eq!(next("the first heartbeat", false).status, 204);
    let listing = next("the first listing", false);
    assert_eq!(listing.status, 200);
    assert!(listing.body.len() > 65_536, "{} bytes", listing.body.len());
    assert_eq!(
        listing.json()["applications"].as_array().map(Vec::len),
        Some(301)
    );
    assert_eq!(next("the second heartbeat", false).status, 204);
    let headed = next("HEAD", true);
    assert_eq!(headed.status, 200);
    assert_eq!(
        headed.header("content-length"),
        Some(listing.body.len().to_string().as_str())
    );
    let web = next("the app", false);
    assert_eq!(web.json()["name"], "web");
    for what in ["the second listing", "the last listing"] {
        let again = next(what, false);
        assert_eq!(again.status, 200, "{what}");
        assert_eq!(again.body.len(), listing.body.len(), "{what}");
    }
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "{} bytes after the last answer",
        rest.len()
    );
}

/// The thread count of the server does not grow with connections: 3,000
/// idle keep-alive connections and 300 slowloris senders later it is what
/// it was with none, and each idle connection costs at most 2 KiB of
/// resident memory.
#[test]
fn threads_stay_constant_and_idle_connections_are_cheap() {
    const IDLE: usize = 3000;
    const SLOW: usize = 300;
    raise_nofile((IDLE + SLOW + 256) as u64);
    let server = Proc::start(&["--threads", "4", "--request-timeout", "60"]);
    let addr = server.addr;
    let pid = server.child.id();
    register(addr);
    // Warm every worker (and its allocator arena) before the baseline.
    let warm: Vec<Stream> = (0..64).map(|_| idle_connection(addr)).collect();
    drop(warm);
    eventually(
        Duration::from_secs(5),
        "the warm-up connections to close",
        || {
            let mut probe = connect(addr, Duration::from_secs(1));
            probe.write_all(HEARTBEAT).ok()?;
            read_reply(&mut BufReader::new(probe)).filter(|r| r.status == 204)
        },
    );
    let threads_before = proc_status(pid, "Threads:");
    let rss_before = proc_status(pid, "VmRSS:");

    let idle = idle_connections(addr, IDLE);
    let rss_idle = proc_status(pid, "VmRSS:");
    let threads_idle = proc_status(pid, "Threads:");
    let slow: Vec<Stream> = (0..SLOW)
        .map(|_| {
            let mut stream = connect(addr, Duration::from_secs(10));
            stream
                .write_all(b"GET /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                .expect("send");
            stream
        })
        .collect();
    // One more byte from each, then a heartbeat: every slow sender has been
    // read by the time it is answered (the poller takes events in order).
    for mut stream in &slow {
        stream.write_all(b"a").expect("trickle");
    }
    let t = Instant::now();
    let mut hb = connect(addr, Duration::from_secs(5));
    hb.write_all(HEARTBEAT).expect("send");
    let reply = read_reply(&mut BufReader::new(&mut hb)).expect("a heartbeat answer");
    let latency = t.elapsed();
    assert_eq!(reply.status, 204);
    let threads_loaded = proc_status(pid, "Threads:");
    let per_conn = (rss_idle.saturating_sub(rss_before)) * 1024 / IDLE as u64;
    println!(
        "threads: {threads_before} with no connections, {threads_idle} with {IDLE} idle, \
         {threads_loaded} with {SLOW} slowloris more; resident {rss_before} KiB -> {rss_idle} KiB \
         ({per_conn} B per idle connection); heartbeat beside them {latency:?}"
    );
    assert_eq!(
        threads_idle, threads_before,
        "threads with {IDLE} idle connections"
    );
    assert_eq!(
        threads_loaded, threads_before,
        "threads with slowloris senders too"
    );
    assert!(per_conn <= 2048, "{per_conn} B per idle connection");
    assert!(
        latency < Duration::from_millis(500),
        "heartbeat took {latency:?}"
    );
    let held = idle.iter().filter(|s| held_open(s)).count();
    assert_eq!(held, IDLE, "idle connections the server still holds");
    assert_eq!(slow.iter().filter(|s| held_open(s)).count(), SLOW);
}

/// Issue 13, item 5: a request still arriving when the stop begins may
/// finish within the grace period, and is answered (with `Connection:
/// close`), not blamed with a 400.
#[test]
fn a_request_arriving_at_the_stop_is_answered() {
    let server = start_with(|_| {});
    let addr = server.local_addr();
    let body = r#"{"name":"late"}"#;
    let head = format!(
        "POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut arriving = connect(addr, Duration::from_secs(5));
    arriving
        .write_all(format!("{head}{}", &body[..5]).as_bytes())
        .expect("send half");
    let mut idle = idle_connection(addr);
    // The first half is in the server (a request on the same connection
    // would be queued behind it; a second client shows the server is past
    // reading it).
    assert_eq!(raw(addr, GET_APPS).status, 200);
    let signalled = Instant::now();
    let stopping = thread::spawn(move || server.shutdown());
    // The stop has begun once idle connections are closed.
    let mut byte = [0u8; 1];
    assert_eq!(idle.read(&mut byte).ok(), Some(0), "idle connection closed");
    arriving
        .write_all(&body.as_bytes()[5..])
        .expect("send the rest");
    let reply = read_reply(&mut BufReader::new(&arriving)).expect("an answer");
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.header("connection"), Some("close"));
    stopping.join().expect("shutdown");
    assert_within(signalled, Duration::from_secs(1), "stopped");
}

/// Issue 13, item 17: the start-up line shows the effective settings, and
/// connections refused by the limit are counted in at most one line a second.
#[test]
fn startup_line_shows_the_settings_and_refusals_are_counted() {
    let server = Proc::start(&[
        "--threads",
        "3",
        "--max-connections",
        "4",
        "--idle-timeout",
        "7",
        "--request-timeout",
        "2.5",
        "--down-after",
        "30",
    ]);
    let addr = server.addr;
    let line = server.wait_line("listening on", Duration::from_secs(5));
    for part in [
        "3 worker threads",
        "at most 4 connections",
        "idle timeout 7s",
        "request timeout 2.5s",
        "down after 30s",
        "evict after 600s",
        "sweep every 60s",
        &format!("listening on {addr}"),
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    let held: Vec<Stream> = (0..4).map(|_| idle_connection(addr)).collect();
    let started = Instant::now();
    const REFUSED: u64 = 25;
    for _ in 0..REFUSED {
        let reply = answered_and_closed(addr, b"");
        assert_eq!(reply.status, 503);
    }
    let counted = |lines: &[String]| -> Vec<u64> {
        lines
            .iter()
            .filter_map(|l| l.split("refused ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect()
    };
    let counts = eventually(Duration::from_secs(5), "refusals logged", || {
        let counts = counted(&server.lines());
        (counts.iter().sum::<u64>() >= REFUSED).then_some(counts)
    });
    let took = started.elapsed();
    println!("{REFUSED} refusals in {took:?} logged as {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), REFUSED);
    assert!(
        counts.len() as u64 <= took.as_secs() + 2,
        "{} lines in {took:?}",
        counts.len()
    );
    drop(held);
}

/// A client that sends its request and shuts its side (`shutdown(SHUT_WR)`,
/// as `curl` with `--http1.0` or a one-shot script does) is answered and
/// closed at once, however the end of file and the last bytes arrive: not
/// left half-open until `--idle-timeout` or `--request-timeout`.
#[test]
fn a_half_closed_client_is_answered_and_closed_at_once() {
    let server = start_with(|c| {
        c.idle_timeout = Duration::from_secs(30);
        c.request_timeout = Duration::from_secs(30);
    });
    let addr = server.local_addr();
    for (what, bytes, status) in [
        ("a whole request", GET_APPS, 200),
        (
            "half a request head",
            &b"GET /registro/1.0/apps HTTP/1.1\r\nHost"[..],
            400,
        ),
    ] {
        for round in 0..20 {
            let mut stream = connect(addr, Duration::from_secs(10));
            stream.write_all(bytes).expect("send");
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("half-close");
            let started = Instant::now();
            let mut received = Vec::new();
            let _ = stream.read_to_end(&mut received);
            let took = started.elapsed();
            let reply = read_reply(&mut &received[..])
                .unwrap_or_else(|| panic!("{what}, round {round}: no answer"));
            assert_eq!(reply.status, status, "{what}, round {round}");
            assert!(
                took < Duration::from_secs(5),
                "{what}, round {round}: closed after {took:?}"
            );
        }
    }
}
