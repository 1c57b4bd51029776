//! Memory owed to slow readers has a bound (API.md Part 4): the bytes of
//! answers written but not yet read have one process-wide budget
//! (`--output-budget`), the same large listing asked by many connections at
//! once is encoded once and shared, past the budget a new large answer
//! answers 503, and a client that takes its answer slower than a floor rate
//! is closed. The `registro` binary runs, so that its memory is measured.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::restart::ok;
use crate::support::{eventually, raw, read_reply, Conn, Proc};

const LONG: Duration = Duration::from_secs(60);

/// Registers `n` instances of app `big`, each with 7 KB of metadata: a
/// listing of about `n` × 7.2 KB.
fn fill(addr: SocketAddr, n: usize) {
    let mut c = Conn::open(addr);
    ok(c.post("/apps", r#"{"name":"big"}"#), 201);
    let value = "v".repeat(1000);
    let metadata: Vec<String> = (0..7).map(|k| format!(r#""k{k}":"{value}""#)).collect();
    let metadata = metadata.join(",");
    for i in 0..n {
        let body =
            format!(r#"{{"id":"i-{i}","ip":"10.0.0.1","port":80,"metadata":{{{metadata}}}}}"#);
        ok(c.post("/apps/big", &body), 201);
    }
}

/// A connection with a receive buffer of `rcvbuf` bytes that has asked
/// for the list and reads nothing yet.
fn asks_with_buffer(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let s = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .expect("a socket");
    // Set before the connection, so that the window it offers stays small.
    rustix::net::sockopt::set_socket_recv_buffer_size(&s, rcvbuf).expect("SO_RCVBUF");
    rustix::net::connect(&s, &addr).expect("connect");
    let mut s = TcpStream::from(s);
    s.write_all(b"GET /registro/1.0/apps HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    s
}

/// The same with a small buffer.
fn asks_and_never_reads(addr: SocketAddr) -> TcpStream {
    asks_with_buffer(addr, 4096)
}

/// The value of a metric line that starts with `prefix` (0 if absent).
fn metric(addr: SocketAddr, prefix: &str) -> u64 {
    let body = raw(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").body;
    body.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// GETs of the list answered so far, by status.
fn lists_answered(addr: SocketAddr, code: &str) -> u64 {
    metric(
        addr,
        &format!(
            "registro_http_requests_total{{route=\"/registro/1.0/apps\",method=\"GET\",code=\"{code}\"}}"
        ),
    )
}

/// While the slow readers hold their answers, others are answered: a
/// heartbeat and a small read.
fn others_are_answered(addr: SocketAddr) {
    let mut c = Conn::open(addr);
    ok(c.post("/apps", r#"{"name":"small"}"#), 201);
    ok(
        c.post("/apps/small", r#"{"id":"a","ip":"10.0.0.2","port":80}"#),
        201,
    );
    ok(c.put("/apps/small/a"), 204);
    ok(c.get("/apps/small"), 200);
}

/// Forty connections ask for the same 18 MB listing and never read: it is
/// encoded once (or once per worker busy at the same moment, or again once
/// a shared answer is 250 ms old) and shared, so the server holds a few
/// copies, not forty (the old server went from 95 MB to 972 MB).
#[test]
fn forty_readers_of_one_large_listing_that_never_read_share_it() {
    let p = Proc::start(&["--output-budget", "256", "--threads", "2"]);
    fill(p.addr, 2_600);
    let warm = ok(Conn::open(p.addr).get("/apps"), 200);
    let size = warm.body.len() as u64;
    assert!(size > 18_000_000, "{size}");
    let baseline = p.rss_kib() * 1024;
    let readers: Vec<TcpStream> = (0..40).map(|_| asks_and_never_reads(p.addr)).collect();
    eventually(LONG, "40 answers", || {
        (lists_answered(p.addr, "200") >= 41).then_some(())
    });
    others_are_answered(p.addr);
    // Forty unshared would be 13 copies (the budget), then refusals.
    assert_eq!(lists_answered(p.addr, "503"), 0);
    let owed = metric(p.addr, "registro_output_owed_bytes");
    assert!(owed <= 6 * size, "{owed} bytes owed for {size}");
    let grown = (p.rss_kib() * 1024).saturating_sub(baseline);
    assert!(grown <= 6 * size + (16 << 20), "grew {grown} for {size}");
    drop(readers);
}

/// Forty connections ask for listings that cannot be shared (the registry
/// changes between two asks) and never read: past the budget a new one
/// answers 503, and the server's memory stays within the budget over its
/// baseline; others are answered meanwhile.
#[test]
fn forty_readers_that_never_read_cost_at_most_the_budget() {
    let budget: u64 = 64 << 20;
    let p = Proc::start(&["--output-budget", "64", "--threads", "2"]);
    fill(p.addr, 2_600);
    ok(Conn::open(p.addr).get("/apps"), 200);
    let baseline = p.rss_kib() * 1024;
    let mut changes = Conn::open(p.addr);
    let mut readers = Vec::new();
    let mut peak = 0;
    for i in 0..40 {
        ok(changes.put(&format!("/apps/big/i-{i}")), 204); // starting to up: a change
        readers.push(asks_and_never_reads(p.addr));
        eventually(LONG, "the answer", || {
            (lists_answered(p.addr, "200") + lists_answered(p.addr, "503") >= i + 2).then_some(())
        });
        peak = peak.max(p.rss_kib() * 1024);
    }
    let refused = lists_answered(p.addr, "503");
    assert!(refused >= 30, "only {refused} of 40 refused");
    assert!(
        metric(p.addr, "registro_output_owed_bytes") <= budget + (1 << 20),
        "more owed than the budget"
    );
    others_are_answered(p.addr);
    let grown = peak.saturating_sub(baseline);
    assert!(grown <= budget + (16 << 20), "grew {grown} over {baseline}");
    // A refusal says why, in JSON.
    let mut c = Conn::open(p.addr);
    ok(c.put("/apps/big/i-40"), 204);
    let r = c.get("/apps");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.error().contains("output budget"), "{r:?}");
    drop(readers);
}

/// A client that takes its answer at less than the floor rate (16 KiB a
/// second over each window of `--request-timeout`) is closed, and what it
/// held is let go; one that takes it faster gets all of it, however many
/// windows that takes (the old server cut every answer not taken within
/// one `--request-timeout`). The listing is larger than what the kernel
/// buffers for a socket (4 MiB here), so that the server owes some of it.
#[test]
fn a_reader_slower_than_the_floor_rate_is_closed_and_a_faster_one_is_not() {
    let p = Proc::start(&["--request-timeout", "1s", "--threads", "2"]);
    fill(p.addr, 900);
    let size = ok(Conn::open(p.addr).get("/apps"), 200).body.len();
    assert!(size > 6_000_000, "{size}");

    let mut slow = asks_and_never_reads(p.addr);
    slow.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut fast = asks_with_buffer(p.addr, 64 * 1024);
    fast.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let fast = std::thread::spawn(move || {
        // At most 64 KiB every 50 ms: about a MiB a second, 60 times the
        // floor, over several windows.
        let mut got = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            match fast.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            std::thread::sleep(Duration::from_millis(50));
            if got.len() > size && got.ends_with(b"]}\n") {
                break;
            }
        }
        got
    });
    // 1 KB every 300 ms: a few KB a second, under the floor. Closed: the
    // bytes end (after those the kernel buffers held).
    let mut taken = 0;
    let mut buf = [0; 1024];
    let closed = eventually(LONG, "the slow reader closed", || {
        std::thread::sleep(Duration::from_millis(300));
        match slow.read(&mut buf) {
            Ok(0) => Some(true),
            Ok(n) => {
                taken += n;
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(true),
            Err(_) => None,
        }
    });
    assert!(closed && taken < size, "took {taken} of {size}");
    let got = fast.join().expect("the fast reader");
    let reply = read_reply(&mut BufReader::new(&got[..])).expect("a whole answer");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), size);
    drop(p);
}
