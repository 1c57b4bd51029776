//! HTTP/1.1 on bytes: parsing one request from a buffer with hard limits
//! (sans I/O: [`parse`] answers complete, partial or the error to send) and
//! writing one response. No sockets, threads or clocks here: `server.rs` owns
//! those, so every rule is tested (and fuzzed) on byte slices. httparse checks
//! the head's grammar; the limits, the framing rules of RFC 9112 6.3 and 11.2
//! and chunked decoding are ours.

use std::fmt;
use std::io::{self, Write};

/// The most bytes any one line (request line or header line) may have.
pub const MAX_LINE: usize = 8 * 1024;
/// The most bytes the whole header section may have.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most header lines a request may have.
pub const MAX_HEADERS: usize = 100;
/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// One parsed request, body included (it is never larger than `MAX_BODY`).
/// Its `Debug` leaves the credentials out.
#[derive(PartialEq, Eq)]
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

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("keep_alive", &self.keep_alive)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("peer", &self.peer)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
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
    #[allow(dead_code)] // for callers reading a stream; the server sees end of file itself
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

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request, which took the first `consumed` bytes.
    Complete {
        /// The request, body included.
        request: Request,
        /// How many bytes of the buffer it took; the rest is the next request.
        consumed: usize,
    },
    /// The request has not arrived in full yet. `continue_due`: the head is
    /// complete and acceptable, the body is still to come and the client
    /// asked for `Expect: 100-continue`.
    Partial {
        /// Whether `100 Continue` is to be sent (once per request).
        continue_due: bool,
    },
}

/// Parses the request at the start of `buf`: a whole request, a partial
/// one, or the error to answer. Pure: call it again with more bytes.
#[cfg_attr(not(test), allow(dead_code))] // the server resumes a `Parser`; fuzzing uses this
pub fn parse(buf: &[u8]) -> Result<Parsed, ReadError> {
    Parser::default().parse(buf)
}

/// [`parse`] for a buffer that grows: it remembers what it has already
/// checked, so a request trickling in one byte at a time costs linear work.
/// Feed it the same buffer, only ever extended at its end, until it answers
/// `Complete` or an error; then start a new `Parser` for what follows.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of the head checked line by line so far (whole lines only).
    scanned: usize,
    /// Bytes of an unfinished line already searched for its end.
    searched: usize,
    /// Where the request line starts (after up to 4 empty lines).
    line0: Option<usize>,
    /// Header lines and header bytes seen so far.
    count: usize,
    header_bytes: usize,
    /// The head, once complete.
    head: Option<Box<HeadDone>>,
}

#[derive(Debug)]
struct HeadDone {
    method: String,
    target: String,
    keep_alive: bool,
    authorization: Option<String>,
    expect_continue: bool,
    /// Where the body starts.
    end: usize,
    framing: Framing,
    chunks: Chunks,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Default)]
struct Chunks {
    /// The next byte to look at.
    pos: usize,
    body: Vec<u8>,
    stage: ChunkStage,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkStage {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailers,
}

/// The most bytes a chunked body may take on the wire, framing included.
pub const MAX_CHUNKED_RAW: usize = 4 * MAX_BODY;
/// Empty lines ignored before a request line (RFC 9112 2.2).
const LEADING_EMPTY_LINES: usize = 4;

impl Parser {
    /// Parses the request at the start of `buf`, resuming where the last call
    /// on a shorter prefix of the same bytes stopped.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Parsed, ReadError> {
        if self.head.is_none() {
            match self.scan_head(buf)? {
                None => {
                    return Ok(Parsed::Partial {
                        continue_due: false,
                    })
                }
                Some(end) => self.head = Some(Box::new(head(buf, self.line0.unwrap_or(0), end)?)),
            }
        }
        let Some(head) = self.head.as_deref_mut() else {
            return Ok(Parsed::Partial {
                continue_due: false,
            });
        };
        let (body, consumed) = match head.framing {
            Framing::None => (Vec::new(), head.end),
            Framing::Length(n) => {
                let n = n as usize;
                if buf.len() - head.end < n {
                    return Ok(Parsed::Partial {
                        continue_due: head.expect_continue,
                    });
                }
                (buf[head.end..head.end + n].to_vec(), head.end + n)
            }
            Framing::Chunked => match dechunk(&mut head.chunks, head.end, buf)? {
                Some(consumed) => (std::mem::take(&mut head.chunks.body), consumed),
                None => {
                    return Ok(Parsed::Partial {
                        continue_due: head.expect_continue,
                    })
                }
            },
        };
        let Some(head) = self.head.take() else {
            return Ok(Parsed::Partial {
                continue_due: false,
            });
        };
        *self = Parser::default();
        Ok(Parsed::Complete {
            request: Request {
                method: head.method,
                target: head.target,
                keep_alive: head.keep_alive,
                authorization: head.authorization,
                peer: None,
                body,
            },
            consumed,
        })
    }

    /// Checks the head's lines as they complete, against the limits and
    /// the framing rules; returns where the head ends once it has.
    fn scan_head(&mut self, buf: &[u8]) -> Result<Option<usize>, ReadError> {
        loop {
            let rest = &buf[self.scanned..];
            let from = self.searched.saturating_sub(self.scanned).min(rest.len());
            let Some(nl) = rest[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| i + from)
            else {
                self.searched = buf.len();
                // An unfinished line: refuse it as soon as it is too long.
                if rest.len() > MAX_LINE + 1 {
                    return Err(self.too_long());
                }
                if self.header_bytes + rest.len() > MAX_HEADER_BYTES + MAX_LINE {
                    return Err(ReadError::HeadersTooLarge);
                }
                return Ok(None);
            };
            let mut line = &rest[..nl];
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.len() > MAX_LINE {
                return Err(self.too_long());
            }
            let start = self.scanned;
            self.scanned += nl + 1;
            if line.contains(&b'\r') {
                return Err(ReadError::Bad("bare CR in the request head"));
            }
            if self.line0.is_none() {
                if line.is_empty() {
                    if self.scanned > 2 * LEADING_EMPTY_LINES {
                        return Err(ReadError::Bad("empty lines instead of a request line"));
                    }
                    continue;
                }
                self.line0 = Some(start);
                self.header_bytes = line.len();
                continue;
            }
            if line.is_empty() {
                return Ok(Some(self.scanned));
            }
            self.count += 1;
            self.header_bytes += line.len();
            if self.count > MAX_HEADERS || self.header_bytes > MAX_HEADER_BYTES {
                return Err(ReadError::HeadersTooLarge);
            }
            if line[0] == b' ' || line[0] == b'\t' {
                return Err(ReadError::Bad("obsolete line folding"));
            }
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                if colon > 0 && matches!(line[colon - 1], b' ' | b'\t') {
                    return Err(ReadError::Bad("whitespace before a header's colon"));
                }
            }
        }
    }

    fn too_long(&self) -> ReadError {
        if self.line0.is_none() {
            ReadError::UriTooLong
        } else {
            ReadError::HeadersTooLarge
        }
    }
}

/// The head `buf[line0..end]`, its lines already checked, through httparse
/// (the grammar) and our rules (framing, keep-alive, expectations).
fn head(buf: &[u8], line0: usize, end: usize) -> Result<HeadDone, ReadError> {
    let bytes = &buf[line0..end];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
        Ok(_) => return Err(ReadError::Bad("malformed request head")),
        Err(httparse::Error::Version) => {
            // A version we do not speak is 505; anything else is not HTTP.
            let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            let version = first.trim_ascii_end().rsplit(|&b| b == b' ').next();
            return Err(match version {
                Some(v)
                    if v.starts_with(b"HTTP/")
                        && first.iter().filter(|&&b| b == b' ').count() == 2 =>
                {
                    ReadError::UnsupportedVersion
                }
                _ => ReadError::Bad("invalid HTTP version"),
            });
        }
        Err(httparse::Error::Token) => {
            return Err(ReadError::Bad("invalid method or request target"))
        }
        Err(httparse::Error::HeaderName) => return Err(ReadError::Bad("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(ReadError::Bad("invalid header value")),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeadersTooLarge),
        Err(_) => return Err(ReadError::Bad("malformed request line")),
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ReadError::Bad("malformed request line"));
    };
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ReadError::Bad("invalid request target"));
    }
    let mut h = Head {
        http10: version == 0,
        ..Head::default()
    };
    for header in req.headers.iter() {
        h.header(header.name.as_bytes(), header.value)?;
    }
    let framing = h.framing()?;
    if let Framing::Length(n) = framing {
        if n > MAX_BODY as u64 {
            return Err(ReadError::BodyTooLarge);
        }
    }
    Ok(HeadDone {
        method: method.to_string(),
        target: target.to_string(),
        keep_alive: h.keep_alive(),
        authorization: h.authorization,
        expect_continue: h.expect_continue,
        end,
        framing,
        chunks: Chunks {
            pos: end,
            ..Chunks::default()
        },
    })
}

/// Decodes what has arrived of a chunked body; `Some(end)` once the last
/// chunk and the trailers are in.
fn dechunk(c: &mut Chunks, start: usize, buf: &[u8]) -> Result<Option<usize>, ReadError> {
    loop {
        // Chunk lines and extensions around a body within the limit are
        // small; a body in 1-byte chunks with long extensions is not.
        if c.pos - start > MAX_CHUNKED_RAW {
            return Err(ReadError::BodyTooLarge);
        }
        match c.stage {
            ChunkStage::Data(left) => {
                let have = (buf.len() - c.pos).min(left);
                c.body.extend_from_slice(&buf[c.pos..c.pos + have]);
                c.pos += have;
                if have < left {
                    c.stage = ChunkStage::Data(left - have);
                    return Ok(None);
                }
                c.stage = ChunkStage::DataEnd;
            }
            stage => {
                let rest = &buf[c.pos..];
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    if rest.len() > MAX_LINE + 1 {
                        return Err(match stage {
                            ChunkStage::Trailers => ReadError::HeadersTooLarge,
                            _ => ReadError::Bad("chunk size line too long"),
                        });
                    }
                    return Ok(None);
                };
                // The same limit as for a line still arriving, so that the
                // answer does not depend on how the bytes were split.
                if nl > MAX_LINE + 1 {
                    return Err(match stage {
                        ChunkStage::Trailers => ReadError::HeadersTooLarge,
                        _ => ReadError::Bad("chunk size line too long"),
                    });
                }
                // RFC 9112 7.1: CRLF ends every line of a chunked body. A
                // bare LF is where a proxy reading it otherwise would end
                // the request elsewhere (request smuggling).
                let Some(line) = rest[..nl].strip_suffix(b"\r") else {
                    return Err(ReadError::Bad("bare LF in a chunked body"));
                };
                c.pos += nl + 1;
                if line.contains(&b'\r') {
                    return Err(ReadError::Bad("bare CR in a chunked body"));
                }
                match stage {
                    ChunkStage::Size => {
                        let size = chunk_size(line)?;
                        if size == 0 {
                            c.stage = ChunkStage::Trailers;
                        } else if c.body.len() + size > MAX_BODY {
                            return Err(ReadError::BodyTooLarge);
                        } else {
                            c.stage = ChunkStage::Data(size);
                        }
                    }
                    ChunkStage::DataEnd => {
                        if !line.is_empty() {
                            return Err(ReadError::Bad("chunk not followed by CRLF"));
                        }
                        c.stage = ChunkStage::Size;
                    }
                    _ => {
                        // Trailer fields are read and ignored, within limits.
                        if line.is_empty() {
                            return Ok(Some(c.pos));
                        }
                        if line.len() > MAX_LINE {
                            return Err(ReadError::HeadersTooLarge);
                        }
                        c.trailer_bytes += line.len();
                        if c.trailer_bytes > MAX_HEADER_BYTES {
                            return Err(ReadError::HeadersTooLarge);
                        }
                    }
                }
            }
        }
    }
}

/// A chunk-size line: hex digits (any number of leading zeros) from its
/// first byte, then optional extensions after `;` (whitespace may come
/// before the `;`, RFC 9112 7.1.1's BWS, never before the digits).
fn chunk_size(line: &[u8]) -> Result<usize, ReadError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii_end();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(ReadError::Bad("invalid chunk size"));
    }
    let significant = digits
        .iter()
        .position(|&d| d != b'0')
        .map_or(&[][..], |i| &digits[i..]);
    if significant.len() > 8 {
        // More than 4 GiB: far past the body limit either way.
        return Err(ReadError::BodyTooLarge);
    }
    Ok(significant.iter().fold(0usize, |n, &d| {
        n * 16 + (d as char).to_digit(16).unwrap_or(0) as usize
    }))
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[derive(Debug, Default)]
struct Head {
    http10: bool,
    content_length: Option<u64>,
    /// Transfer codings in order, over every Transfer-Encoding line.
    codings: Vec<Vec<u8>>,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    authorization: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

impl Head {
    fn header(&mut self, name: &[u8], value: &[u8]) -> Result<(), ReadError> {
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(ReadError::Bad("invalid header name"));
        }
        let value = value.trim_ascii();
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
                if !coding.is_empty() {
                    self.codings.push(coding.to_ascii_lowercase());
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                self.close |= option.eq_ignore_ascii_case(b"close");
                self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            // Not UTF-8: no token can match it. Kept as empty (refused as
            // malformed), not lossily, where distinct bytes would read alike.
            self.authorization = Some(String::from_utf8(value.to_vec()).unwrap_or_default());
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

    /// RFC 9112 6.3: how long the body is, or why that cannot be told.
    fn framing(&self) -> Result<Framing, ReadError> {
        if self.transfer_encoding && self.http10 {
            // RFC 9112 6.1: HTTP/1.0 has no transfer codings; a sender that
            // claims one is faulty framing (400, then the connection closes).
            return Err(ReadError::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if self.transfer_encoding {
            if self.content_length.is_some() {
                // Both at once is how requests get smuggled.
                return Err(ReadError::Bad("both Transfer-Encoding and Content-Length"));
            }
            let chunked = |c: &Vec<u8>| c == b"chunked";
            return match self.codings.split_last() {
                Some((last, before)) if chunked(last) => {
                    if before.iter().any(chunked) {
                        Err(ReadError::Bad("chunked applied twice"))
                    } else if before.is_empty() {
                        Ok(Framing::Chunked)
                    } else {
                        // A coding we do not decode, under a final chunked.
                        Err(ReadError::UnsupportedEncoding)
                    }
                }
                // Without a final chunked the body's end cannot be found.
                _ => Err(ReadError::Bad("Transfer-Encoding without a final chunked")),
            };
        }
        match self.content_length {
            Some(0) | None => Ok(Framing::None),
            Some(n) => Ok(Framing::Length(n)),
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

/// A response's body: its own bytes, or bytes shared with other responses
/// (a watch answer the watchers of one change share), never copied to be
/// sent. Reads as a byte slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Bytes of this response only.
    Owned(Vec<u8>),
    /// Bytes shared, read-only, with other responses.
    Shared(std::sync::Arc<Vec<u8>>),
}

impl Default for Body {
    fn default() -> Body {
        Body::Owned(Vec::new())
    }
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Body::Owned(bytes) => bytes,
            Body::Shared(bytes) => bytes,
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::Owned(bytes)
    }
}

/// One response, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The JSON body, or empty.
    pub body: Body,
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
    pub fn json(status: u16, body: impl Into<Body>) -> Response {
        Response {
            status,
            body: body.into(),
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

    /// An error: body `{"error": message}` (every layer answers its
    /// refusals in this one shape), ending with a newline as the Go
    /// original's encoder did, so `curl -s` leaves the prompt on a line of
    /// its own.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        let mut body = b"{\"error\":".to_vec();
        // A `String` always encodes: the fallback is never taken.
        body.extend(serde_json::to_vec(&message.into()).unwrap_or_else(|_| b"\"\"".to_vec()));
        body.extend_from_slice(b"}\n");
        Response::json(status, body)
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
    let mut bytes = Vec::with_capacity(160 + response.body.len());
    encode_response(&mut bytes, response, head, keep_alive, http_date);
    w.write_all(&bytes)?;
    w.flush()
}

/// Appends `response` to `out`, as `write_response` writes it (the body is
/// copied once, straight into `out`).
pub fn encode_response(
    out: &mut Vec<u8>,
    response: &Response,
    head: bool,
    keep_alive: bool,
    http_date: &str,
) {
    encode_head(out, response, keep_alive, http_date);
    if !head {
        out.extend_from_slice(&response.body);
    }
}

/// Appends the status line and headers of `response` to `out`, up to and
/// including the blank line; the body is the caller's to send.
pub fn encode_head(out: &mut Vec<u8>, response: &Response, keep_alive: bool, http_date: &str) {
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
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
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

    #[test]
    fn a_request_debug_never_shows_its_token() {
        let request = match parse(b"GET / HTTP/1.1\r\nAuthorization: Bearer s3cr3t\r\n\r\n") {
            Ok(Parsed::Complete { request, .. }) => request,
            other => panic!("not parsed: {other:?}"),
        };
        assert_eq!(request.authorization.as_deref(), Some("Bearer s3cr3t"));
        let shown = format!("{request:?}");
        assert!(
            !shown.contains("s3cr3t") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    /// Found by the parser fuzz (case 466021 of seed 1795932978076181297):
    /// an Authorization value that is not UTF-8 was kept lossily, each bad
    /// byte turned into a 3-byte U+FFFD, so a line within the 8 KiB limit
    /// became a longer string, and bytes that differ read the same (a stored
    /// token holding U+FFFD would match any of them). It now reads as no
    /// token at all in a well-formed header: refused as malformed.
    #[test]
    fn an_authorization_that_is_not_utf8_reads_as_malformed() {
        let mut input = b"GET / HTTP/1.1\r\nAuthorization: Bearer ".to_vec();
        input.extend(std::iter::repeat_n(0xff, 8000));
        input.extend_from_slice(b"\r\n\r\n");
        let request = match parse(&input) {
            Ok(Parsed::Complete { request, .. }) => request,
            other => panic!("not parsed: {other:?}"),
        };
        let authorization = request.authorization.unwrap_or_default();
        assert!(
            authorization.len() <= MAX_LINE,
            "{} bytes",
            authorization.len()
        );
        assert!(!authorization.contains('\u{fffd}'), "kept lossily");
    }

    /// Parses `input` fed in pieces of `step` bytes, as a socket might
    /// deliver it; a request still partial at the end of the input is what
    /// the connection layer answers at end of file.
    fn read_in(input: &[u8], step: usize) -> (Result<Request, ReadError>, bool) {
        let mut parser = Parser::default();
        let mut continued = false;
        let mut end = 0;
        loop {
            end = (end + step).min(input.len());
            match parser.parse(&input[..end]) {
                Ok(Parsed::Complete { request, .. }) => return (Ok(request), continued),
                Ok(Parsed::Partial { continue_due }) => continued |= continue_due,
                Err(e) => return (Err(e), continued),
            }
            if end == input.len() {
                let e = if input.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Bad("connection closed inside the request")
                };
                return (Err(e), continued);
            }
        }
    }

    /// The same request fed whole, in 1-byte and in 7-byte pieces: every
    /// way must give the same result.
    fn read(input: &[u8]) -> (Result<Request, ReadError>, bool) {
        let whole = read_in(input, input.len().max(1));
        for step in [1, 7] {
            let split = read_in(input, step);
            assert_eq!(
                format!("{:?}", split.0),
                format!("{:?}", whole.0),
                "{input:?} in pieces of {step}"
            );
        }
        whole
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
        let asks = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi";
        let (r, continued) = read_in(asks, 1);
        assert_eq!(r.map(|r| r.body).ok(), Some(b"hi".to_vec()));
        assert!(continued, "100 Continue is due once the head is in");
        // Not before the head is complete, nor once the body is there.
        assert_eq!(
            parse(&asks[..asks.len() - 4]).ok(),
            Some(Parsed::Partial {
                continue_due: false
            })
        );
        assert!(matches!(parse(asks), Ok(Parsed::Complete { .. })));
        let (r, continued) = read_in(
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 999999\r\n\r\n",
            1,
        );
        assert_eq!(r.err().and_then(|e| e.status()), Some(413));
        assert!(!continued);
    }

    #[test]
    fn pipelined_requests_are_read_one_by_one() {
        let input = b"\r\nPUT /1 HTTP/1.1\r\n\r\nPUT /2 HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGET /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\ny\r\n0\r\n\r\nGET /4";
        let mut at = 0;
        let mut seen = Vec::new();
        while let Ok(Parsed::Complete { request, consumed }) = parse(&input[at..]) {
            seen.push((request.target, request.body));
            at += consumed;
        }
        assert_eq!(
            seen,
            [
                ("/1".to_string(), vec![]),
                ("/2".to_string(), b"x".to_vec()),
                ("/3".to_string(), b"y".to_vec())
            ]
        );
        assert_eq!(&input[at..], b"GET /4");
    }

    /// RFC 9112 6.3 and 11.2: every way of making the body's end ambiguous
    /// is a 400 (the connection layer then closes).
    #[test]
    fn smuggling_framings_are_refused() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"POST / HTTP/1.1\r\nX: a\r\n\tfolded\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\rContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nX: a\rContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\r\n\r\n",
            // Issue 19: CRLF only, in every line of a chunked body.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;\nx\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\n\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n",
            // No whitespace before the chunk size.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 1\r\nx\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\t1\r\nx\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n 0\r\n\r\n",
            // HTTP/1.0 has no Transfer-Encoding (RFC 9112 6.1): faulty framing.
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\n",
        ];
        for case in cases {
            check_err(case, Some(400));
        }
        // A coding we cannot decode under a final chunked is not ambiguous:
        // 501, as RFC 9112 6.1 prescribes.
        check_err(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Some(501),
        );
    }

    #[test]
    fn chunk_sizes_may_have_leading_zeros() {
        check_ok(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0000000000a\r\n0123456789\r\n00000000000000000000\r\n\r\n",
            "POST", "/", true, "0123456789",
        );
        // Significant digits still count: 2^36 bytes is refused at once.
        check_err(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0001000000000\r\n",
            Some(413),
        );
    }

    #[test]
    fn a_long_trickle_costs_linear_work() {
        // 60 KiB of headers a byte at a time: each call only looks at what
        // is new (this would take minutes if every call rescanned).
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..90 {
            input.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(600)).as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        let mut parser = Parser::default();
        for end in 1..input.len() {
            assert_eq!(
                parser.parse(&input[..end]).ok(),
                Some(Parsed::Partial {
                    continue_due: false
                })
            );
        }
        assert!(matches!(parser.parse(&input), Ok(Parsed::Complete { .. })));
    }

    /// Every request in `input`, in order, and how the input ends (an
    /// error's status, or a request left partial), fed as `cuts` say.
    fn parse_stream(input: &[u8], cuts: &[usize]) -> (Vec<Request>, Option<Option<u16>>) {
        let mut requests = Vec::new();
        let mut start = 0;
        let mut parser = Parser::default();
        let mut ends = cuts
            .iter()
            .copied()
            .filter(|&c| c < input.len())
            .chain([input.len()]);
        let mut end = ends.next().unwrap_or(input.len());
        loop {
            match parser.parse(&input[start..end.max(start)]) {
                Ok(Parsed::Complete { request, consumed }) => {
                    assert!(consumed > 0 && start + consumed <= end.max(start));
                    start += consumed;
                    requests.push(request);
                    if start == input.len() {
                        return (requests, None);
                    }
                }
                Ok(Parsed::Partial { .. }) => match ends.next() {
                    Some(next) => end = next.max(end),
                    None => return (requests, Some(None)),
                },
                Err(e) => return (requests, Some(Some(e.status().unwrap_or(0)))),
            }
        }
    }

    /// A seeded random-mutation fuzz of the parser: valid pipelined requests,
    /// mutated, fed whole and in random pieces. Nothing panics, and every
    /// split gives the same requests and the same end as the whole.
    #[test]
    fn mutated_requests_never_panic_and_parse_alike_however_split() {
        let seeds: &[&[u8]] = &[
            b"PUT /registro/1.0/apps/web/web-1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            b"POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nContent-Length: 14\r\n\r\n{\"name\":\"web\"}",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5;x=y\r\nhello\r\n000\r\nT: 1\r\n\r\n",
            b"GET /registro/1.0/apps?x=%20 HTTP/1.0\nConnection: keep-alive\nAuthorization: Bearer abc\n\n",
            b"\r\nDELETE /registro/1.0/apps/web/web-1 HTTP/1.1\r\nConnection: close\r\n\r\n",
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        const ALPHABET: &[u8] = b"\r\n :;,0aA-/\t\x00\xff9fHTP1.";
        let mut cases = 0;
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..1 + rand(3) {
                input.extend_from_slice(seeds[rand(seeds.len())]);
            }
            for _ in 0..rand(4) {
                let at = rand(input.len());
                match rand(4) {
                    0 => input[at] = ALPHABET[rand(ALPHABET.len())],
                    1 => input.insert(at, ALPHABET[rand(ALPHABET.len())]),
                    2 => {
                        input.remove(at);
                    }
                    _ => input[at] = rand(256) as u8,
                }
            }
            let whole = parse_stream(&input, &[]);
            let mut cuts: Vec<usize> = (0..rand(6)).map(|_| rand(input.len() + 1)).collect();
            cuts.sort_unstable();
            let split = parse_stream(&input, &cuts);
            assert_eq!(
                format!("{split:?}"),
                format!("{whole:?}"),
                "{:?} cut at {cuts:?}",
                String::from_utf8_lossy(&input)
            );
            cases += 1;
        }
        assert_eq!(cases, 20_000);
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
