//! HTTP/1.1 on a byte stream: reading one request with hard limits, writing
//! one response. No sockets, threads or clocks here: `server.rs` owns those
//! and hands in any `BufRead`/`Write`, so every rule is tested on byte slices.

use std::fmt;
use std::io::{self, BufRead, Write};

/// The most bytes any one line (request line or header line) may have.
pub const MAX_LINE: usize = 8 * 1024;
/// The most bytes the whole header section may have.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most header lines a request may have.
pub const MAX_HEADERS: usize = 100;
/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// One parsed request, body included (it is never larger than `MAX_BODY`).
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The method token, as sent (methods are case-sensitive).
    pub method: String,
    /// The request target: path and query, not yet decoded.
    pub target: String,
    /// Whether the client lets the connection stay open after the response.
    pub keep_alive: bool,
    /// The `Authorization` header's value, if sent (for access control; never logged).
    pub authorization: Option<String>,
    /// The client's address, filled in by the connection layer (`None` in tests on bytes).
    pub peer: Option<std::net::IpAddr>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Request {
    /// A HEAD request is answered like GET, without the body.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Why a request could not be read. Every variant but `Closed` and `Io` is
/// answered with its status before the connection is closed.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests.
    Closed,
    /// The socket failed or timed out; nothing can be answered.
    Io(io::Error),
    /// A malformed request: 400.
    Bad(&'static str),
    /// The request line is longer than `MAX_LINE`: 414.
    UriTooLong,
    /// A header line or the header section is too large: 431.
    HeadersTooLarge,
    /// The body is larger than `MAX_BODY`: 413.
    BodyTooLarge,
    /// A transfer coding other than chunked: 501.
    UnsupportedEncoding,
    /// An `Expect` other than `100-continue`: 417.
    UnsupportedExpect,
    /// An HTTP version other than 1.0 and 1.1: 505.
    UnsupportedVersion,
}

impl ReadError {
    /// The status to answer with, or `None` when the connection is just dropped.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            ReadError::Closed | ReadError::Io(_) => return None,
            ReadError::Bad(_) => 400,
            ReadError::UriTooLong => 414,
            ReadError::HeadersTooLarge => 431,
            ReadError::BodyTooLarge => 413,
            ReadError::UnsupportedEncoding => 501,
            ReadError::UnsupportedExpect => 417,
            ReadError::UnsupportedVersion => 505,
        })
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Closed => f.write_str("connection closed"),
            ReadError::Io(e) => write!(f, "i/o error: {e}"),
            ReadError::Bad(why) => write!(f, "malformed request: {why}"),
            ReadError::UriTooLong => write!(f, "request line longer than {MAX_LINE} bytes"),
            ReadError::HeadersTooLarge => write!(
                f,
                "header line longer than {MAX_LINE} bytes, or headers over {MAX_HEADER_BYTES} bytes or {MAX_HEADERS} lines"
            ),
            ReadError::BodyTooLarge => write!(f, "request body larger than {MAX_BODY} bytes"),
            ReadError::UnsupportedEncoding => f.write_str("only the chunked transfer coding is supported"),
            ReadError::UnsupportedExpect => f.write_str("only 'Expect: 100-continue' is supported"),
            ReadError::UnsupportedVersion => f.write_str("only HTTP/1.0 and HTTP/1.1 are supported"),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

/// Reads one request. `interim` receives `100 Continue` when the client asked
/// for it and the body is acceptable.
pub fn read_request<R: BufRead, W: Write>(
    reader: &mut R,
    interim: &mut W,
) -> Result<Request, ReadError> {
    // Wait for the first byte without consuming it, so an idle timeout or a
    // clean close between requests can be told from a broken request.
    if reader.fill_buf()?.is_empty() {
        return Err(ReadError::Closed);
    }

    let mut line = Vec::with_capacity(128);
    let mut header_bytes = 0;
    // RFC 9112 2.2: ignore empty lines received before the request line.
    for _ in 0..4 {
        read_line(reader, &mut line, ReadError::UriTooLong)?;
        if !line.is_empty() {
            break;
        }
    }
    header_bytes += line.len();
    let (method, target, http10) = parse_request_line(&line)?;

    let mut head = Head {
        http10,
        ..Head::default()
    };
    let mut count = 0;
    loop {
        read_line(reader, &mut line, ReadError::HeadersTooLarge)?;
        if line.is_empty() {
            break;
        }
        count += 1;
        header_bytes += line.len();
        if count > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
            return Err(ReadError::HeadersTooLarge);
        }
        head.header(&line)?;
    }

    let keep_alive = head.keep_alive();
    let body = match head.framing()? {
        Framing::None => Vec::new(),
        Framing::Length(n) => {
            if n > MAX_BODY as u64 {
                return Err(ReadError::BodyTooLarge);
            }
            if head.expect_continue {
                send_continue(interim)?;
            }
            let mut body = vec![0; n as usize];
            reader.read_exact(&mut body).map_err(eof_is_bad)?;
            body
        }
        Framing::Chunked => {
            if head.expect_continue {
                send_continue(interim)?;
            }
            read_chunked(reader, &mut line)?
        }
    };
    Ok(Request {
        method,
        target,
        keep_alive,
        authorization: head.authorization,
        peer: None,
        body,
    })
}

fn send_continue<W: Write>(w: &mut W) -> Result<(), ReadError> {
    w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    w.flush()?;
    Ok(())
}

fn eof_is_bad(e: io::Error) -> ReadError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ReadError::Bad("connection closed inside the request")
    } else {
        ReadError::Io(e)
    }
}

/// Reads one line into `line` (without CRLF or LF), never buffering more than
/// `MAX_LINE` bytes of it.
fn read_line<R: BufRead>(
    reader: &mut R,
    line: &mut Vec<u8>,
    too_long: ReadError,
) -> Result<(), ReadError> {
    line.clear();
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Err(ReadError::Bad("connection closed inside the request"));
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        // One byte of slack for the CR of a CRLF line ending.
        if line.len() + chunk.len() > MAX_LINE + 1 {
            return Err(too_long);
        }
        line.extend_from_slice(chunk);
        let used = found.unwrap_or(chunk.len());
        reader.consume(used);
        if found.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > MAX_LINE {
                return Err(too_long);
            }
            return Ok(());
        }
    }
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, bool), ReadError> {
    let text =
        std::str::from_utf8(line).map_err(|_| ReadError::Bad("request line is not UTF-8"))?;
    let mut parts = text.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(
            "request line is not 'METHOD TARGET HTTP/1.1'",
        ));
    };
    if method.is_empty() || !method.bytes().all(is_token) {
        return Err(ReadError::Bad("invalid method"));
    }
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ReadError::Bad("invalid request target"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => return Err(ReadError::UnsupportedVersion),
        _ => return Err(ReadError::Bad("invalid HTTP version")),
    };
    Ok((method.to_string(), target.to_string(), http10))
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[derive(Debug, Default)]
struct Head {
    http10: bool,
    content_length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    authorization: Option<String>,
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

impl Head {
    fn header(&mut self, line: &[u8]) -> Result<(), ReadError> {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ReadError::Bad("header line without ':'"));
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            // Also rejects obsolete line folding (a line starting with a space).
            return Err(ReadError::Bad("invalid header name"));
        }
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value)?;
            if self.content_length.is_some_and(|m| m != n) {
                return Err(ReadError::Bad("conflicting Content-Length headers"));
            }
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            for coding in value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.eq_ignore_ascii_case(b"chunked") && !self.chunked {
                    self.chunked = true;
                } else if !coding.is_empty() {
                    return Err(ReadError::UnsupportedEncoding);
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                self.close |= option.eq_ignore_ascii_case(b"close");
                self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            self.authorization = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                self.expect_continue = !self.http10;
            } else {
                return Err(ReadError::UnsupportedExpect);
            }
        }
        Ok(())
    }

    fn keep_alive(&self) -> bool {
        !self.close && (!self.http10 || self.keep_alive)
    }

    fn framing(&self) -> Result<Framing, ReadError> {
        match (self.transfer_encoding, self.content_length) {
            // RFC 9112 6.3: both at once is how requests get smuggled.
            (true, Some(_)) => Err(ReadError::Bad("both Transfer-Encoding and Content-Length")),
            (true, None) if self.chunked => Ok(Framing::Chunked),
            (true, None) => Err(ReadError::UnsupportedEncoding),
            (false, Some(0)) | (false, None) => Ok(Framing::None),
            (false, Some(n)) => Ok(Framing::Length(n)),
        }
    }
}

fn parse_length(value: &[u8]) -> Result<u64, ReadError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(ReadError::Bad("invalid Content-Length"));
    }
    Ok(value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Reads a chunked body, refusing it as soon as it passes `MAX_BODY`.
fn read_chunked<R: BufRead>(reader: &mut R, line: &mut Vec<u8>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        read_line(reader, line, ReadError::Bad("chunk size line too long"))?;
        let digits = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(ReadError::Bad("invalid chunk size"));
        }
        let size = digits.iter().fold(0usize, |n, &d| {
            n * 16 + (d as char).to_digit(16).unwrap_or(0) as usize
        });
        if size == 0 {
            break;
        }
        if body.len() + size > MAX_BODY {
            return Err(ReadError::BodyTooLarge);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).map_err(eof_is_bad)?;
        read_line(reader, line, ReadError::Bad("chunk not followed by CRLF"))?;
        if !line.is_empty() {
            return Err(ReadError::Bad("chunk not followed by CRLF"));
        }
    }
    // Trailer fields are read and ignored, within the same limits.
    let mut trailer_bytes = 0;
    loop {
        read_line(reader, line, ReadError::HeadersTooLarge)?;
        if line.is_empty() {
            return Ok(body);
        }
        trailer_bytes += line.len();
        if trailer_bytes > MAX_HEADER_BYTES {
            return Err(ReadError::HeadersTooLarge);
        }
    }
}

/// One response, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The JSON body, or empty.
    pub body: Vec<u8>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// The `Location` header of a 201.
    pub location: Option<String>,
    /// The `Content-Type` of a non-empty body.
    pub content_type: &'static str,
    /// Further headers (`Registro-Index`, `WWW-Authenticate`, ...), written as given.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    /// A response with a JSON body.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            body,
            allow: None,
            location: None,
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    /// A response without a body (204).
    pub fn empty(status: u16) -> Response {
        Response::json(status, Vec::new())
    }
}

/// Writes `response` in one `write_all`. `head` leaves the body out (HEAD);
/// `keep_alive` false adds `Connection: close`.
pub fn write_response<W: Write>(
    w: &mut W,
    response: &Response,
    head: bool,
    keep_alive: bool,
    http_date: &str,
) -> io::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(160);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nDate: {}\r\n",
        response.status,
        reason(response.status),
        http_date
    );
    if response.status != 204 {
        if !response.body.is_empty() {
            let _ = write!(out, "Content-Type: {}\r\n", response.content_type);
        }
        let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    }
    if let Some(allow) = response.allow {
        let _ = write!(out, "Allow: {allow}\r\n");
    }
    if let Some(location) = &response.location {
        let _ = write!(out, "Location: {location}\r\n");
    }
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut bytes = out.into_bytes();
    if !head {
        bytes.extend_from_slice(&response.body);
    }
    w.write_all(&bytes)?;
    w.flush()
}

/// The reason phrase of every status Registro sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> (Result<Request, ReadError>, Vec<u8>) {
        let mut reader = io::BufReader::with_capacity(64, input);
        let mut interim = Vec::new();
        let result = read_request(&mut reader, &mut interim);
        (result, interim)
    }

    #[track_caller]
    fn check_ok(input: &str, method: &str, target: &str, keep_alive: bool, body: &str) {
        match read(input.as_bytes()).0 {
            Ok(r) => assert_eq!(
                r,
                Request {
                    method: method.into(),
                    target: target.into(),
                    keep_alive,
                    authorization: None,
                    peer: None,
                    body: body.into(),
                }
            ),
            Err(e) => panic!("{input:?} failed: {e}"),
        }
    }

    #[track_caller]
    fn check_err(input: &[u8], status: Option<u16>) {
        match read(input).0 {
            Ok(r) => panic!("{input:?} was accepted as {r:?}"),
            Err(e) => assert_eq!(e.status(), status, "{e}"),
        }
    }

    #[test]
    fn requests() {
        check_ok("GET /a HTTP/1.1\r\n\r\n", "GET", "/a", true, "");
        check_ok("GET /a HTTP/1.1\n\n", "GET", "/a", true, "");
        check_ok("\r\nGET /a HTTP/1.1\r\n\r\n", "GET", "/a", true, "");
        check_ok(
            "GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET",
            "/a?x=1",
            true,
            "",
        );
        check_ok(
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET",
            "/",
            false,
            "",
        );
        check_ok(
            "GET / HTTP/1.1\r\nconnection: Keep-Alive, Close\r\n\r\n",
            "GET",
            "/",
            false,
            "",
        );
        check_ok("GET / HTTP/1.0\r\n\r\n", "GET", "/", false, "");
        check_ok(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            "GET",
            "/",
            true,
            "",
        );
        check_ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "POST",
            "/",
            true,
            "hello",
        );
        check_ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "POST",
            "/",
            true,
            "hello",
        );
        check_ok(
            "PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "PUT",
            "/",
            true,
            "",
        );
        check_ok(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: y\r\n\r\n",
            "POST", "/", true, "hello!",
        );
        check_ok(
            "POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n",
            "POST",
            "/",
            true,
            "",
        );
    }

    #[test]
    fn bad_requests() {
        check_err(b"", None);
        check_err(b"GET / HTTP/1.1\r\n", Some(400));
        check_err(b"GET /\r\n\r\n", Some(400));
        check_err(b"GET  / HTTP/1.1\r\n\r\n", Some(400));
        check_err(b"G(T / HTTP/1.1\r\n\r\n", Some(400));
        check_err(b"GET / HTTP/2.0\r\n\r\n", Some(505));
        check_err(b"GET / FTP/1.0\r\n\r\n", Some(400));
        check_err(b"GET /\xff HTTP/1.1\r\n\r\n", Some(400));
        check_err(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", Some(400));
        check_err(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", Some(400));
        check_err(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", Some(400));
        check_err(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            Some(400),
        );
        check_err(
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
            Some(400),
        );
        check_err(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Some(400),
        );
        check_err(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Some(501),
        );
        check_err(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            Some(400),
        );
        check_err(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            Some(400),
        );
        check_err(b"POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", Some(417));
        // A TLS ClientHello sent to the plain port.
        check_err(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Some(400));
    }

    #[test]
    fn limits() {
        let at = |n: usize| {
            format!(
                "POST / HTTP/1.1\r\nContent-Length: {n}\r\n\r\n{}",
                "x".repeat(n)
            )
        };
        check_ok(&at(MAX_BODY), "POST", "/", true, &"x".repeat(MAX_BODY));
        check_err(at(MAX_BODY + 1).as_bytes(), Some(413));
        // A huge declared length is refused before a byte of it is read.
        check_err(
            b"POST / HTTP/1.1\r\nContent-Length: 100000000000000\r\n\r\n",
            Some(413),
        );
        check_err(
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            Some(400),
        );
        let chunked = |n: usize| {
            format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{}\r\n0\r\n\r\n",
                "y".repeat(n)
            )
        };
        check_ok(&chunked(MAX_BODY), "POST", "/", true, &"y".repeat(MAX_BODY));
        check_err(chunked(MAX_BODY + 1).as_bytes(), Some(413));
        check_err(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n",
            Some(413),
        );

        let line = |n: usize| format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "h".repeat(n - 3));
        check_ok(&line(MAX_LINE), "GET", "/", true, "");
        check_err(line(MAX_LINE + 1).as_bytes(), Some(431));
        check_err(line(1 << 20).as_bytes(), Some(431));
        let uri = format!("GET /{} HTTP/1.1\r\n\r\n", "u".repeat(MAX_LINE));
        check_err(uri.as_bytes(), Some(414));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        check_err(many.as_bytes(), Some(431));
    }

    #[test]
    fn expect_continue_is_answered_only_for_acceptable_bodies() {
        let (r, interim) =
            read(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(r.map(|r| r.body).ok(), Some(b"hi".to_vec()));
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        let (r, interim) =
            read(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 999999\r\n\r\n");
        assert_eq!(r.err().and_then(|e| e.status()), Some(413));
        assert!(interim.is_empty());
    }

    #[test]
    fn pipelined_requests_are_read_one_by_one() {
        let input = b"PUT /1 HTTP/1.1\r\n\r\nPUT /2 HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGET /3 HTTP/1.1\r\n\r\n";
        let mut reader = io::BufReader::with_capacity(16, &input[..]);
        let mut sink = Vec::new();
        let targets: Vec<String> = (0..3)
            .filter_map(|_| read_request(&mut reader, &mut sink).ok())
            .map(|r| r.target)
            .collect();
        assert_eq!(targets, ["/1", "/2", "/3"]);
        assert!(matches!(
            read_request(&mut reader, &mut sink),
            Err(ReadError::Closed)
        ));
    }

    #[track_caller]
    fn check_write(response: Response, head: bool, keep_alive: bool, expected: &str) {
        let mut out = Vec::new();
        write_response(&mut out, &response, head, keep_alive, "D").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn responses() {
        check_write(
            Response::empty(204),
            false,
            true,
            "HTTP/1.1 204 No Content\r\nDate: D\r\nConnection: keep-alive\r\n\r\n",
        );
        check_write(
            Response::json(200, b"{}".to_vec()),
            false,
            false,
            "HTTP/1.1 200 OK\r\nDate: D\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        check_write(
            Response::json(200, b"{}".to_vec()),
            true,
            true,
            "HTTP/1.1 200 OK\r\nDate: D\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
        );
        let mut not_allowed = Response::json(405, b"{}".to_vec());
        not_allowed.allow = Some("GET, HEAD");
        check_write(
            not_allowed,
            false,
            true,
            "HTTP/1.1 405 Method Not Allowed\r\nDate: D\r\nContent-Type: application/json\r\nContent-Length: 2\r\nAllow: GET, HEAD\r\nConnection: keep-alive\r\n\r\n{}",
        );
    }
}
