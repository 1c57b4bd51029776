//! Fuzzing the whole request path over TCP: valid requests, mutations of
//! them and random bytes, sent to a live server in random splits. Whatever
//! arrives, the server must not panic, must answer well-formed responses or
//! close the connection (never hang), must close after an answer that says
//! `Connection: close`, and must go on serving valid requests.
//!
//! Seeded and reproducible: `REGISTRO_FUZZ_SEED` picks the seed (printed on
//! every run), `REGISTRO_FUZZ_CASES` the number of cases for the byte-slice
//! parser fuzz (`src/fuzz.rs`); this test runs a hundredth of those, at least
//! 2,000. `make fuzz` runs many more.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::support::start_with;

pub(crate) use registro::rng::{fuzz_cases as cases, fuzz_seed as seed, Rng};

const ROOT: &str = "/registro/1.0";

/// A valid request of one of the shapes clients send.
fn valid(rng: &mut Rng) -> Vec<u8> {
    let app = rng.pick(&["web", "db", "a%20b", "x"]);
    let id = rng.pick(&["i-1", "i-2", "%2e%2e"]);
    let instance = format!(
        "{{\"id\":\"{id}\",\"ip\":\"10.0.0.{}\",\"port\":80}}",
        rng.below(255)
    );
    let app_json = format!("{{\"name\":\"{app}\"}}");
    let (method, target, body): (&str, String, String) = match rng.below(8) {
        0 => ("GET", format!("{ROOT}/apps"), String::new()),
        1 => ("GET", format!("{ROOT}/apps/{app}"), String::new()),
        2 => ("HEAD", format!("{ROOT}/apps/{app}/{id}"), String::new()),
        3 => ("POST", format!("{ROOT}/apps"), app_json),
        4 => ("POST", format!("{ROOT}/apps/{app}"), instance),
        5 => ("PUT", format!("{ROOT}/apps/{app}/{id}"), String::new()),
        6 => ("DELETE", format!("{ROOT}/apps/{app}/{id}"), String::new()),
        _ => (
            "GET",
            rng.pick(&["/healthz", "/metrics", "/"]).to_string(),
            String::new(),
        ),
    };
    let version = if rng.chance(8) {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut head = format!("{method} {target} {version}\r\nHost: registro\r\n");
    if rng.chance(4) {
        head.push_str("Authorization: Bearer abc\r\n");
    }
    if rng.chance(6) {
        head.push_str(rng.pick(&["Connection: keep-alive\r\n", "Connection: close\r\n"]));
    }
    if body.is_empty() {
        head.push_str("\r\n");
        return head.into_bytes();
    }
    if rng.chance(6) {
        head.push_str("Expect: 100-continue\r\n");
    }
    // HTTP/1.0 has no transfer codings: such a request is refused (and
    // sometimes sent, to see it refused).
    if rng.chance(3) && (version == "HTTP/1.1" || rng.chance(8)) {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut out = head.into_bytes();
        let bytes = body.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let n = (1 + rng.below(16)).min(bytes.len() - at);
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&bytes[at..at + n]);
            out.extend_from_slice(b"\r\n");
            at += n;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        return out;
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    head.into_bytes()
}

/// Pieces that matter to a parser: delimiters, framing headers, numbers at
/// the edges.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"\0",
    b"\xff",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Content-Length: 99999999999\r\n",
    b"Content-Length : 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: chunked, gzip\r\n",
    b"Transfer-Encoding:\tchunked\r\n",
    b" folded\r\n",
    b"Expect: 100-continue\r\n",
    b"Expect: nonsense\r\n",
    b"Connection: close\r\n",
    b"ffffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b"00000000000a\r\n",
    b"5;ext=1\r\n",
    b" 5\r\n",
    b"5\n",
    b"0\n\n",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"HTTP/2.0",
    b"HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"%",
    b"%zz",
    b"%00",
    b"/../",
    b"?index=0&wait=1ms",
    b"\"",
    b"{",
    b"}",
];

/// One random change to `data`.
pub(crate) fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    let at = |rng: &mut Rng, data: &Vec<u8>| rng.below(data.len() + 1);
    match rng.below(9) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = rng.next_u64() as u8;
        }
        2 => {
            let i = at(rng, data);
            let token = rng.pick(TOKENS);
            data.splice(i..i, token.iter().copied());
        }
        3 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = (1 + rng.below(16)).min(data.len() - i);
            data.drain(i..i + n);
        }
        4 if !data.is_empty() => {
            // Repeat a slice (duplicated headers, longer lines).
            let i = rng.below(data.len());
            let n = (1 + rng.below(64)).min(data.len() - i);
            let most = if rng.chance(20) { 2000 } else { 4 };
            let copies = 1 + rng.below(most);
            let piece: Vec<u8> = data[i..i + n].repeat(copies);
            data.splice(i..i, piece);
        }
        5 => {
            let i = at(rng, data);
            data.truncate(i);
        }
        6 if !data.is_empty() => {
            // A line ending changed.
            if let Some(p) = data.windows(2).position(|w| w == b"\r\n") {
                const ENDINGS: [&[u8]; 4] = [b"\n", b"\r", b"\r\r\n", b"\n\r"];
                let with: &[u8] = rng.pick(&ENDINGS);
                data.splice(p..p + 2, with.iter().copied());
            }
        }
        7 => {
            let i = at(rng, data);
            let n = rng.below(32);
            let noise: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(i..i, noise);
        }
        _ => {
            let token = rng.pick(TOKENS);
            data.extend_from_slice(token);
        }
    }
}

/// What one case sends: valid requests, mutated ones or random bytes,
/// sometimes several pipelined.
pub(crate) fn case(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => (0..rng.below(512)).map(|_| rng.next_u64() as u8).collect(),
        1 | 2 => {
            let mut out = Vec::new();
            for _ in 0..1 + rng.below(4) {
                out.extend(valid(rng));
            }
            out
        }
        _ => {
            let mut out = Vec::new();
            for _ in 0..1 + rng.below(3) {
                out.extend(valid(rng));
            }
            for _ in 0..1 + rng.below(4) {
                mutate(rng, &mut out);
            }
            out
        }
    }
}

/// Panics on the server's own threads (named `registro-...`) since the
/// hook was installed: every panic in a test binary goes through the hook,
/// and only the server's count.
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn count_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if thread.name().is_some_and(|n| n.starts_with("registro")) {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut m) = PANIC_MESSAGES.lock() {
                    m.push(info.to_string());
                }
            }
            previous(info);
        }));
    });
}

/// Checks the bytes a server sent for one case: a sequence of well-formed
/// responses, nothing after one that said `Connection: close`. The number of
/// responses.
fn check_responses(bytes: &[u8], sent: &[u8]) -> usize {
    let mut rest = bytes;
    let mut count = 0;
    while !rest.is_empty() {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!(
                "an unterminated response head {:?} to {:?}",
                show(rest),
                show(sent)
            );
        };
        let head = std::str::from_utf8(&rest[..end])
            .unwrap_or_else(|_| panic!("a response head that is not UTF-8 to {:?}", show(sent)));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?} to {:?}", show(sent)));
        assert!((100..600).contains(&status), "status {status}");
        let mut length = 0;
        let mut close = false;
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header {line:?} to {:?}", show(sent)));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("a numeric Content-Length");
            }
            if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
        rest = &rest[end + 4..];
        // A HEAD answer has no body whatever its Content-Length says.
        let headless = rest.is_empty() || rest.starts_with(b"HTTP/1.1 ");
        if !headless {
            assert!(
                rest.len() >= length,
                "a body shorter than its Content-Length to {:?}",
                show(sent)
            );
            let body = &rest[..length];
            if status >= 400 && status != 404 || status == 404 && body.starts_with(b"{") {
                let json: serde_json::Value = serde_json::from_slice(body)
                    .unwrap_or_else(|e| panic!("error body not JSON ({e}): {:?}", show(body)));
                assert!(json["error"].is_string(), "{json}");
            }
            rest = &rest[length..];
        }
        count += 1;
        if close {
            assert!(
                rest.is_empty(),
                "bytes after Connection: close: {:?} to {:?}",
                show(rest),
                show(sent)
            );
        }
    }
    count
}

fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(600)]).into_owned();
    if bytes.len() > 600 {
        format!("{s}... ({} bytes)", bytes.len())
    } else {
        s
    }
}

/// Sends `data` in random pieces, ends the sending side and reads until
/// the server closes. `None` if it neither answered in full nor closed in 5 s.
fn exchange(addr: SocketAddr, data: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut at = 0;
    while at < data.len() {
        let n = if rng.chance(2) {
            data.len() - at
        } else {
            (1 + rng.below(64)).min(data.len() - at)
        };
        // The server may close first (after a 400, say): that ends sending.
        if stream.write_all(&data[at..at + n]).is_err() {
            break;
        }
        at += n;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Some(answer),
        // Reset by the server after it answered and closed with unread
        // bytes pending: what arrived before is what counts.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(answer),
        Err(_) => None,
    }
}

/// One valid request on a fresh connection: the server still serves.
#[track_caller]
fn still_serves(addr: SocketAddr, after: &[u8]) {
    let reply = crate::support::raw(
        addr,
        format!("GET {ROOT}/apps HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(reply.status, 200, "after {:?}", show(after));
}

/// Clients sending cases at once: a connection the server keeps open until
/// a timeout (a request cut short by the client's half-close, see below)
/// then costs no time to the others.
const CLIENTS: u64 = 32;

#[test]
fn whole_request_path_over_tcp_survives_random_input() {
    count_server_panics();
    let seed = seed();
    let cases = (cases(200_000) / 100).max(2_000);
    println!("fuzzing over TCP: {cases} cases from {CLIENTS} clients, REGISTRO_FUZZ_SEED={seed}");
    // Short timeouts: a case cut short waits for them. (A FIN that arrives
    // with the last bytes of a request is not seen as the end until then:
    // the connection is closed by --request-timeout or --idle-timeout.)
    let server = start_with(|c| {
        c.threads = 4;
        c.request_timeout = Duration::from_millis(150);
        c.idle_timeout = Duration::from_millis(150);
    });
    let addr = server.local_addr();
    let started = Instant::now();
    let totals = Mutex::new((0usize, 0usize, 0usize, std::collections::BTreeMap::new()));
    std::thread::scope(|s| {
        for client in 0..CLIENTS {
            let totals = &totals;
            s.spawn(move || {
                let mut rng = Rng::seeded(seed.wrapping_add(client));
                let share = cases / CLIENTS as usize + usize::from((client as usize) < cases % CLIENTS as usize);
                for n in 0..share {
                    let data = case(&mut rng);
                    let answer = exchange(addr, &data, &mut rng).unwrap_or_else(|| {
                        panic!(
                            "client {client}, case {n} (seed {seed}): neither answered nor closed: {:?}",
                            show(&data)
                        )
                    });
                    let mut t = totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if answer.is_empty() {
                        t.1 += 1;
                    } else {
                        t.0 += 1;
                        t.2 += check_responses(&answer, &data);
                        if let Some(code) = answer.get(9..12) {
                            *t.3.entry(String::from_utf8_lossy(code).into_owned()).or_insert(0) += 1;
                        }
                    }
                    drop(t);
                    if n % 200 == 0 {
                        still_serves(addr, &data);
                    }
                    assert_eq!(
                        SERVER_PANICS.load(Ordering::SeqCst),
                        0,
                        "client {client}, case {n} (seed {seed}) panicked the server: {:?} after {:?}",
                        PANIC_MESSAGES.lock().map(|m| m.clone()).unwrap_or_default(),
                        show(&data)
                    );
                }
            });
        }
    });
    still_serves(addr, b"the last case");
    let (answered, closed_silently, responses, statuses) = totals
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    println!(
        "{cases} cases in {:?}: {answered} answered ({responses} responses), {closed_silently} closed without an answer; first statuses {statuses:?}",
        started.elapsed()
    );
    server.shutdown();
}
