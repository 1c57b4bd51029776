//! Fuzzing the request parser on bytes (a test module only): seeded random
//! splits of valid pipelined requests must parse to the same requests as the
//! whole buffer does, and to the requests that were written; mutated and
//! random bytes must never panic, never yield a request beyond the limits,
//! and always end in requests followed by an error or the end of the input.
//!
//! `REGISTRO_FUZZ_CASES` sets the number of cases of each property (default
//! 50,000), `REGISTRO_FUZZ_SEED` the seed
//! (printed on every run, so a failure can be replayed). `make fuzz` runs
//! millions in release mode. The whole request path over TCP is fuzzed in
//! `tests/it/fuzz.rs`.

use std::io::{self, BufRead, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::http::{self, ReadError, Request, MAX_BODY, MAX_LINE};

/// xorshift64*: small, fast, seeded.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    std::env::var("REGISTRO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn cases() -> usize {
    std::env::var("REGISTRO_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000)
}

/// A valid request and what it must parse to.
fn valid(rng: &mut Rng) -> (Vec<u8>, Request) {
    let method = rng.pick(&["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]);
    let target = match rng.below(40) {
        0..=9 => "/registro/1.0/apps".to_string(),
        10..=24 => format!("/registro/1.0/apps/app-{}", rng.below(100)),
        25..=36 => format!(
            "/registro/1.0/apps/a/i-{}?index={}&wait=5s",
            rng.below(9),
            rng.next()
        ),
        37 | 38 => "/".to_string(),
        // Rarely, a line near the limit.
        _ => format!("/{}", "x".repeat(MAX_LINE - 64 - rng.below(64))),
    };
    let body_len = match rng.below(100) {
        0..=39 => 0,
        40..=79 => rng.below(64),
        80..=97 => rng.below(2048),
        // Rarely, a body at the limit.
        _ => MAX_BODY - rng.below(8),
    };
    let letter = b'a' + rng.below(26) as u8;
    let body: Vec<u8> = (0..body_len).map(|i| letter + (i % 7) as u8).collect();
    let http10 = rng.chance(8);
    let mut head = format!(
        "{method} {target} HTTP/1.{}\r\n",
        if http10 { 0 } else { 1 }
    );
    // No request closes: the pipelines go on to their end. HTTP/1.0 keeps
    // the connection only when asked to.
    if http10 {
        head.push_str("Connection: keep-alive\r\n");
    }
    let mut authorization = None;
    for i in 0..rng.below(6) {
        match rng.below(5) {
            0 => head.push_str(&format!("X-Filler-{i}: {}\r\n", "v".repeat(rng.below(200)))),
            1 => head.push_str("Host:registro\r\n"),
            2 if authorization.is_none() => {
                let token = format!("tok{}", rng.next());
                head.push_str(&format!("Authorization:  Bearer {token} \r\n"));
                authorization = Some(format!("Bearer {token}"));
            }
            3 => head.push_str("connection: Keep-Alive\r\n"),
            _ => head.push_str("Accept: */*\r\n"),
        }
    }
    let mut bytes;
    if !body.is_empty() && rng.chance(2) {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        bytes = head.into_bytes();
        let mut at = 0;
        while at < body.len() {
            let n = (1 + rng.below(1000)).min(body.len() - at);
            let size = if rng.chance(4) {
                format!("{n:08X}")
            } else {
                format!("{n:x}")
            };
            bytes.extend_from_slice(size.as_bytes());
            if rng.chance(5) {
                bytes.extend_from_slice(b";ext=1");
            }
            bytes.extend_from_slice(b"\r\n");
            bytes.extend_from_slice(&body[at..at + n]);
            bytes.extend_from_slice(b"\r\n");
            at += n;
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
    } else {
        if !body.is_empty() || rng.chance(3) {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
    }
    let expected = Request {
        method: method.to_string(),
        target,
        keep_alive: true,
        authorization,
        peer: None,
        body,
    };
    (bytes, expected)
}

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
    b"Content-Length: -1\r\n",
    b"Content-Length: +5\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Content-Length: 65537\r\n",
    b"Content-Length : 3\r\n",
    b"Content-Length: 1, 1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: chunked, gzip\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b" folded\r\n",
    b"Expect: 100-continue\r\n",
    b"Expect: nonsense\r\n",
    b"ffffffffffffffffffff\r\n",
    b"10001\r\n",
    b"0\r\n\r\n",
    b"0000000000a\r\n",
    b"5;ext=\"x\"\r\n",
    b"HTTP/1.1",
    b"HTTP/1.2",
    b"HTTP/2.0",
    b"GET / HTTP/1.1\r\n\r\n",
];

fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next() as u8;
        }
        2 => {
            let i = rng.below(len + 1);
            let token = rng.pick(TOKENS);
            data.splice(i..i, token.iter().copied());
        }
        3 if len > 0 => {
            let i = rng.below(len);
            let n = (1 + rng.below(16)).min(len - i);
            data.drain(i..i + n);
        }
        4 if len > 0 => {
            let i = rng.below(len);
            let n = (1 + rng.below(64)).min(len - i);
            let most = if rng.chance(10) { 3000 } else { 4 };
            let copies = 1 + rng.below(most);
            let piece = data[i..i + n].repeat(copies);
            data.splice(i..i, piece);
        }
        5 => {
            let i = rng.below(len + 1);
            data.truncate(i);
        }
        6 => {
            if let Some(p) = data.windows(2).position(|w| w == b"\r\n") {
                const ENDINGS: [&[u8]; 4] = [b"\n", b"\r", b"\r\r\n", b"\n\r"];
                let with = rng.pick(&ENDINGS);
                data.splice(p..p + 2, with.iter().copied());
            }
        }
        7 => {
            let i = rng.below(len + 1);
            let noise: Vec<u8> = (0..rng.below(32)).map(|_| rng.next() as u8).collect();
            data.splice(i..i, noise);
        }
        _ => data.extend_from_slice(rng.pick(TOKENS)),
    }
}

/// Bytes handed out in pieces of random sizes, as a socket delivers them.
struct Pieces<'a> {
    data: &'a [u8],
    at: usize,
    end: usize,
    rng: Rng,
}

impl<'a> Pieces<'a> {
    fn new(data: &'a [u8], seed: u64) -> Pieces<'a> {
        let mut p = Pieces {
            data,
            at: 0,
            end: 0,
            rng: Rng::new(seed),
        };
        p.next_piece();
        p
    }

    fn next_piece(&mut self) {
        let size = if self.rng.chance(8) {
            1 + self.rng.below(4)
        } else {
            1 + self.rng.below(3000)
        };
        self.end = (self.at + size).min(self.data.len());
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Pieces<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(&self.data[self.at..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.at += n;
        if self.at >= self.end {
            self.next_piece();
        }
    }
}

/// How a stream of bytes parsed: the requests, then why it stopped.
#[derive(Debug, PartialEq)]
struct Parsed {
    requests: Vec<Request>,
    end: String,
}

/// Parses requests from `reader` until an error or the end.
fn parse_all<R: BufRead>(reader: &mut R, most: usize) -> Parsed {
    let mut requests = Vec::new();
    let mut interim = Vec::new();
    for _ in 0..most {
        match http::read_request(reader, &mut interim) {
            Ok(request) => requests.push(request),
            Err(e) => {
                let end = match e {
                    ReadError::Closed => "end".to_string(),
                    e => e.to_string(),
                };
                return Parsed { requests, end };
            }
        }
    }
    panic!("more than {most} requests parsed");
}

/// What no request may exceed, whatever bytes it came from.
#[track_caller]
fn within_limits(r: &Request, input: &[u8]) {
    assert!(r.body.len() <= MAX_BODY, "body of {}", r.body.len());
    assert!(r.target.len() <= MAX_LINE, "target of {}", r.target.len());
    assert!(r.method.len() <= MAX_LINE);
    assert!(
        r.authorization.as_ref().is_none_or(|a| a.len() <= MAX_LINE),
        "authorization"
    );
    assert!(!r.method.is_empty() && !r.target.is_empty(), "{input:?}");
}

/// Runs `f`, turning a panic into a failure that names the seed and case.
fn replayable(seed: u64, n: usize, what: &str, data: &[u8], f: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let shown = String::from_utf8_lossy(&data[..data.len().min(400)]);
        panic!(
            "{what}, case {n} of REGISTRO_FUZZ_SEED={seed}: {message}\ninput ({} bytes): {shown:?}",
            data.len()
        );
    }
}

#[test]
fn random_splits_of_valid_pipelines_parse_to_the_same_requests() {
    let seed = seed();
    let cases = cases();
    let mut rng = Rng::new(seed);
    let started = std::time::Instant::now();
    let mut requests = 0;
    for n in 0..cases {
        let mut data = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let (bytes, request) = valid(&mut rng);
            data.extend(bytes);
            expected.push(request);
        }
        requests += expected.len();
        let split_seed = rng.next();
        replayable(seed, n, "split pipeline", &data, || {
            let whole = parse_all(&mut &data[..], 16);
            let split = parse_all(&mut Pieces::new(&data, split_seed), 16);
            assert_eq!(whole.end, "end", "the pipeline did not parse whole");
            assert!(
                whole.requests == expected,
                "{:#?}\nexpected {expected:#?}",
                whole.requests
            );
            assert!(split == whole, "split {split:#?}\nwhole {whole:#?}");
        });
    }
    println!(
        "{cases} valid pipelines ({requests} requests) parsed whole and split in {:?}, REGISTRO_FUZZ_SEED={seed}",
        started.elapsed()
    );
}

#[test]
fn mutated_and_random_bytes_end_in_requests_and_an_error() {
    let seed = seed();
    let cases = cases();
    let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let started = std::time::Instant::now();
    let (mut parsed, mut errors) = (0usize, std::collections::BTreeMap::new());
    for n in 0..cases {
        let mut data = Vec::new();
        if rng.chance(10) {
            data.extend((0..rng.below(1024)).map(|_| rng.next() as u8));
        } else {
            for _ in 0..1 + rng.below(3) {
                data.extend(valid(&mut rng).0);
            }
            for _ in 0..1 + rng.below(5) {
                mutate(&mut rng, &mut data);
            }
        }
        let split_seed = rng.next();
        replayable(seed, n, "mutated input", &data, || {
            // Every parse consumes a byte at least, so a stream of n bytes
            // holds at most n requests.
            let whole = parse_all(&mut &data[..], data.len() + 1);
            for r in &whole.requests {
                within_limits(r, &data);
            }
            // Split or whole, the same requests and the same end.
            let split = parse_all(&mut Pieces::new(&data, split_seed), data.len() + 1);
            assert!(split == whole, "split {split:#?}\nwhole {whole:#?}");
            parsed += whole.requests.len();
            let kind: String = whole.end.chars().take_while(|&c| c != ':').collect();
            *errors.entry(kind).or_insert(0usize) += 1;
        });
    }
    println!(
        "{cases} mutated or random inputs in {:?}: {parsed} requests parsed; ends: {errors:?}; REGISTRO_FUZZ_SEED={seed}",
        started.elapsed()
    );
}
