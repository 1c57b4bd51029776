//! Fuzzing the request parser on bytes (a test module only), fed as the
//! connection layer feeds it: a buffer that grows piece by piece, each
//! request's bytes drained once it is complete. Seeded random splits of valid
//! pipelined requests must parse to the same requests as the whole buffer
//! does, and to the requests that were written; mutated and random bytes must
//! never panic, never yield a request beyond the limits, never ask for more
//! bytes once a request's limits are passed, and always end in requests
//! followed by an error, an unfinished request or the end of the input, and
//! never accept a request framed in a way RFC 9112 says to refuse (the
//! smuggling shapes). At every step the resumed `Parser` must answer what a
//! fresh `parse` of the same bytes answers.
//!
//! `REGISTRO_FUZZ_CASES` sets the number of cases of each property (default
//! 50,000), `REGISTRO_FUZZ_SEED` the seed
//! (printed on every run, so a failure can be replayed). `make fuzz` runs
//! millions in release mode. The whole request path over TCP is fuzzed in
//! `tests/it/fuzz.rs`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::http::{
    self, Parsed, Parser, ReadError, Request, MAX_BODY, MAX_CHUNKED_RAW, MAX_HEADER_BYTES, MAX_LINE,
};
use crate::rng::{fuzz_cases, fuzz_seed, Rng};

/// A valid request and what it must parse to.
fn valid(rng: &mut Rng) -> (Vec<u8>, Request) {
    let method = rng.pick(&["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]);
    let target = match rng.below(40) {
        0..=9 => "/registro/1.0/apps".to_string(),
        10..=24 => format!("/registro/1.0/apps/app-{}", rng.below(100)),
        25..=36 => format!(
            "/registro/1.0/apps/a/i-{}?index={}&wait=5s",
            rng.below(9),
            rng.next_u64()
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
                let token = format!("tok{}", rng.next_u64());
                head.push_str(&format!("Authorization:  Bearer {token} \r\n"));
                authorization = Some(format!("Bearer {token}"));
            }
            3 => head.push_str("connection: Keep-Alive\r\n"),
            _ => head.push_str("Accept: */*\r\n"),
        }
    }
    let mut bytes;
    // HTTP/1.0 has no transfer codings: such a request is refused.
    if !body.is_empty() && !http10 && rng.chance(2) {
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
        change: None,
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
    b" 5\r\n",
    b"5\n",
    b"0\n\n",
    b"HTTP/1.0",
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
            data[i] = rng.next_u64() as u8;
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
            let noise: Vec<u8> = (0..rng.below(32)).map(|_| rng.next_u64() as u8).collect();
            data.splice(i..i, noise);
        }
        _ => data.extend_from_slice(rng.pick(TOKENS)),
    }
}

/// How a stream of bytes parsed: the requests, then why it stopped.
#[derive(Debug, PartialEq)]
struct Stream {
    requests: Vec<Request>,
    end: String,
}

/// The most bytes an unfinished request may hold before the parser must
/// have refused it: the largest head, then the largest chunked body on the
/// wire.
const MOST_BUFFERED: usize = MAX_HEADER_BYTES + MAX_LINE + 16 + MAX_CHUNKED_RAW;

/// Parses every request of `data` as the connection layer does: the bytes
/// arrive in pieces (sizes from `split`, or all at once), a `Parser` resumes
/// on the growing buffer, and a complete request's bytes are drained.
fn parse_all(data: &[u8], split: Option<u64>) -> Stream {
    let mut pieces = split.map(Rng::seeded);
    let mut buf: Vec<u8> = Vec::new();
    let mut parser = Parser::default();
    let mut requests = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let n = match &mut pieces {
            None => data.len() - at,
            Some(rng) => {
                if rng.chance(8) {
                    1 + rng.below(4)
                } else {
                    1 + rng.below(3000)
                }
            }
        };
        let n = n.min(data.len() - at);
        buf.extend_from_slice(&data[at..at + n]);
        at += n;
        loop {
            let resumed = parser.parse(&buf);
            // A fresh parse of the same bytes answers the same (checked while
            // that is cheap: a fresh parse costs the whole buffer).
            if buf.len() <= 16 * 1024 {
                let fresh = http::parse(&buf);
                assert_eq!(
                    outcome(&resumed),
                    outcome(&fresh),
                    "resumed and fresh parses differ"
                );
            }
            match resumed {
                Ok(Parsed::Complete { request, consumed }) => {
                    assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed}");
                    if let Some(shape) = smuggling_shape(&buf[..consumed]) {
                        panic!("a request with {shape} was accepted: {request:?}");
                    }
                    requests.push(request);
                    buf.drain(..consumed);
                    parser = Parser::default();
                    if buf.is_empty() {
                        break;
                    }
                }
                Ok(Parsed::Partial { .. }) => {
                    assert!(
                        buf.len() <= MOST_BUFFERED,
                        "asks for more with {} bytes of one request buffered",
                        buf.len()
                    );
                    break;
                }
                // What the client is told is the status; the message may
                // name whichever rule a split let the parser see broken first.
                Err(e) => {
                    return Stream {
                        requests,
                        end: format!("status {:?}", e.status()),
                    }
                }
            }
        }
    }
    let end = if buf.is_empty() { "end" } else { "unfinished" };
    Stream {
        requests,
        end: end.to_string(),
    }
}

/// The framings RFC 9112 (sections 6.3 and 11.2) says a server must refuse,
/// because two parsers could read them as different requests: found in the
/// head of `request` (its bytes, body included), or `None`.
fn smuggling_shape(request: &[u8]) -> Option<&'static str> {
    // The head ends at the first empty line after the request line (lines
    // end in LF, with or without CR).
    let mut end = request.len();
    let (mut at, mut seen_line) = (0, false);
    while let Some(nl) = request[at..].iter().position(|&b| b == b'\n') {
        let line = &request[at..at + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at += nl + 1;
        if line.is_empty() && seen_line {
            end = at;
            break;
        }
        seen_line |= !line.is_empty();
    }
    let head = &request[..end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let request_line = lines.next().unwrap_or_default();
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && head.get(i + 1) != Some(&b'\n'))
    {
        return Some("a bare CR in its head");
    }
    let (mut lengths, mut codings) = (Vec::new(), Vec::new());
    for line in lines.filter(|l| !l.is_empty()) {
        if line[0] == b' ' || line[0] == b'\t' {
            return Some("obsolete line folding");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Some("a header line without a colon");
        };
        let name = &line[..colon];
        if name.ends_with(b" ") || name.ends_with(b"\t") {
            return Some("whitespace before a header's colon");
        }
        let value = line[colon + 1..].trim_ascii().to_ascii_lowercase();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Empty list elements are ignored (RFC 9110 5.6.1).
            codings.extend(
                value
                    .split(|&b| b == b',')
                    .map(|c| c.trim_ascii().to_vec())
                    .filter(|c| !c.is_empty()),
            );
        }
    }
    if !lengths.is_empty() && !codings.is_empty() {
        return Some("both Content-Length and Transfer-Encoding");
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Some("two different Content-Lengths");
    }
    if codings
        .iter()
        .filter(|c| c.as_slice() == b"chunked")
        .count()
        > 1
    {
        return Some("chunked applied twice");
    }
    if !codings.is_empty() && codings.last().map(Vec::as_slice) != Some(b"chunked") {
        return Some("a Transfer-Encoding other than a final chunked");
    }
    if !codings.is_empty() && request_line.ends_with(b"HTTP/1.0") {
        return Some("Transfer-Encoding in an HTTP/1.0 request");
    }
    if !codings.is_empty() {
        return chunked_shape(&request[end..]);
    }
    None
}

/// RFC 9112 7.1 in a chunked body (whole, as accepted): CRLF ends every
/// line (chunk size, chunk data, trailers), and the size begins the line.
/// `None` for a body framed as it must be (or one this walk cannot read,
/// which the parser has refused anyway).
fn chunked_shape(body: &[u8]) -> Option<&'static str> {
    let mut at = 0;
    let line = |at: &mut usize| -> Option<Result<&[u8], &'static str>> {
        let nl = body[*at..].iter().position(|&b| b == b'\n')?;
        let line = &body[*at..*at + nl];
        *at += nl + 1;
        Some(
            line.strip_suffix(b"\r")
                .ok_or("a bare LF in a chunked body"),
        )
    };
    loop {
        let size_line = match line(&mut at)? {
            Ok(l) => l,
            Err(shape) => return Some(shape),
        };
        if size_line.first().is_some_and(u8::is_ascii_whitespace) {
            return Some("whitespace before a chunk size");
        }
        let digits = size_line.split(|&b| b == b';').next()?.trim_ascii_end();
        let size = usize::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
        if size == 0 {
            // The trailers, up to an empty line.
            loop {
                match line(&mut at)? {
                    Ok([]) => return None,
                    Ok(_) => {}
                    Err(shape) => return Some(shape),
                }
            }
        }
        at = at.checked_add(size).filter(|&a| a <= body.len())?;
        match &body[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => return Some("a bare LF after chunk data"),
            _ => return None,
        }
    }
}

/// A parse's answer, comparable.
fn outcome(r: &Result<Parsed, ReadError>) -> String {
    match r {
        Ok(Parsed::Complete { request, consumed }) => format!("{request:?} in {consumed}"),
        Ok(Parsed::Partial { continue_due }) => format!("partial, continue {continue_due}"),
        Err(e) => format!("error {e}"),
    }
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
    let seed = fuzz_seed();
    let cases = fuzz_cases(50_000);
    let mut rng = Rng::seeded(seed);
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
        let split_seed = rng.next_u64();
        replayable(seed, n, "split pipeline", &data, || {
            let whole = parse_all(&data, None);
            let split = parse_all(&data, Some(split_seed));
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
    let seed = fuzz_seed();
    let cases = fuzz_cases(50_000);
    let mut rng = Rng::seeded(seed ^ 0x9e37_79b9_7f4a_7c15);
    let started = std::time::Instant::now();
    let (mut parsed, mut errors) = (0usize, std::collections::BTreeMap::new());
    let mut smuggling = 0;
    for n in 0..cases {
        let mut data = Vec::new();
        if rng.chance(10) {
            data.extend((0..rng.below(1024)).map(|_| rng.next_u64() as u8));
        } else {
            for _ in 0..1 + rng.below(3) {
                data.extend(valid(&mut rng).0);
            }
            for _ in 0..1 + rng.below(5) {
                mutate(&mut rng, &mut data);
            }
        }
        let split_seed = rng.next_u64();
        // How often the oracle had something to catch (the first request's
        // head framed as RFC 9112 forbids, or not a head at all).
        smuggling += usize::from(smuggling_shape(&data).is_some());
        replayable(seed, n, "mutated input", &data, || {
            let whole = parse_all(&data, None);
            for r in &whole.requests {
                within_limits(r, &data);
            }
            // Split or whole, the same requests and the same end.
            let split = parse_all(&data, Some(split_seed));
            assert!(split == whole, "split {split:#?}\nwhole {whole:#?}");
            parsed += whole.requests.len();
            *errors.entry(whole.end.clone()).or_insert(0usize) += 1;
        });
    }
    println!(
        "{cases} mutated or random inputs in {:?}: {parsed} requests parsed; {smuggling} began with a head the parser must refuse; ends: {errors:?}; REGISTRO_FUZZ_SEED={seed}",
        started.elapsed()
    );
}

/// Found by the fuzz above: a chunk-size line longer than `MAX_LINE` (leading
/// zeros are allowed, so it can be a valid size) was refused when it arrived
/// in pieces but accepted, or answered 413, when it arrived at once. The
/// answer must not depend on how the bytes were split.
#[test]
fn a_long_chunk_size_line_is_answered_alike_however_it_arrives() {
    for zeros in [100, MAX_LINE - 10, MAX_LINE + 10, 70_000, 300_000] {
        for tail in [&b""[..], b"1\r\nx\r\n0\r\n\r\n", b"\r\n", b"\r\n\r\n"] {
            let mut data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            data.extend(std::iter::repeat_n(b'0', zeros));
            data.extend_from_slice(tail);
            let whole = parse_all(&data, None);
            let mut bytewise = Parser::default();
            let mut last = String::new();
            for end in 1..=data.len() {
                last = outcome(&bytewise.parse(&data[..end]));
                if !last.starts_with("partial") {
                    break;
                }
            }
            let what = format!("{zeros} zeros, then {:?}", String::from_utf8_lossy(tail));
            assert_eq!(outcome(&http::parse(&data)), last, "{what}");
            for seed in 1..20 {
                assert_eq!(parse_all(&data, Some(seed)), whole, "{what}, split {seed}");
            }
            if zeros > MAX_LINE {
                assert!(whole.end.contains("400"), "{what}: {whole:?}");
            }
        }
    }
}
