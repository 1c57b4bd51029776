//! A minimal HTTP/1.1 client on a `TcpStream`: keep-alive, requests written
//! whole in one `write_all`, responses framed by `Content-Length` or chunked
//! coding. It allocates nothing per request once warm, so the load generator
//! spends its CPU on syscalls and leaves the rest to the server under test.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// How long a read or write may block before the request counts as failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed response. The body is discarded unless the caller asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Body bytes received (after de-chunking).
    pub body_len: usize,
    /// Whether the server will close the connection after this response.
    pub close: bool,
}

/// One keep-alive connection with its read buffer.
pub struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Conn<TcpStream> {
    /// Connects with TCP_NODELAY and bounded blocking.
    pub fn connect(addr: SocketAddr) -> io::Result<Conn<TcpStream>> {
        Ok(Conn::new(open(addr)?))
    }

    /// Closes this connection and opens a new one, keeping the buffer.
    pub fn reconnect(&mut self, addr: SocketAddr) -> io::Result<()> {
        // Close first (the peer may already have), so the old and the new
        // connection never overlap.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let stream = open(addr)?;
        self.stream = stream;
        self.start = 0;
        self.end = 0;
        Ok(())
    }
}

fn open(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

impl<S: Read + Write> Conn<S> {
    /// Wraps any byte stream (tests use in-memory ones).
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The stream, for a caller that keeps the connection open unread.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Writes one or more whole requests.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one response. The body goes to `body` when given, else is dropped.
    pub fn read_response(&mut self, mut body: Option<&mut Vec<u8>>) -> io::Result<Response> {
        loop {
            let head_len = self.fill_head()?;
            let head = parse_head(&self.buf[self.start..self.start + head_len])?;
            self.start += head_len;
            if (100..200).contains(&head.status) {
                continue; // 100 Continue and friends: the real answer follows
            }
            let body_len = if head.status == 204 || head.status == 304 {
                0
            } else if head.chunked {
                self.read_chunked(&mut body)?
            } else if let Some(n) = head.content_length {
                self.read_exact_body(n, &mut body)?;
                n
            } else {
                self.read_to_eof(&mut body)?
            };
            return Ok(Response {
                status: head.status,
                body_len,
                close: head.close,
            });
        }
    }

    /// Waits for the peer to close (after a `Connection: close` answer),
    /// discarding anything else it sends.
    pub fn wait_eof(&mut self) -> io::Result<()> {
        self.start = 0;
        self.end = 0;
        while self.fill_more()? > 0 {
            self.start = 0;
            self.end = 0;
        }
        Ok(())
    }

    /// Makes sure a whole head (through the blank line) is buffered and
    /// returns its length.
    fn fill_head(&mut self) -> io::Result<usize> {
        let at = self.fill_until(
            b"\r\n\r\n",
            "response head too long",
            "connection closed before a response",
        )?;
        Ok(at + 4)
    }

    /// Buffers bytes until `delim` is among them (never more than
    /// `MAX_HEAD`) and returns its offset from `start`.
    fn fill_until(
        &mut self,
        delim: &[u8],
        too_long: &'static str,
        closed: &'static str,
    ) -> io::Result<usize> {
        let mut searched: usize = 0;
        loop {
            let avail = &self.buf[self.start..self.end];
            // The delimiter may straddle what was searched and what arrived.
            let from = searched.saturating_sub(delim.len() - 1);
            if let Some(i) = find(&avail[from..], delim) {
                return Ok(from + i);
            }
            searched = avail.len();
            if searched > MAX_HEAD {
                return Err(bad(too_long));
            }
            if self.fill_more()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    closed.to_string(),
                ));
            }
        }
    }

    /// Reads more bytes into the buffer, compacting or growing it first.
    /// Returns how many arrived (0 at end of stream).
    fn fill_more(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Consumes up to `n` buffered bytes, reading when none are buffered.
    fn take(&mut self, n: usize, body: &mut Option<&mut Vec<u8>>) -> io::Result<usize> {
        if self.start == self.end && self.fill_more()? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in a body",
            ));
        }
        let k = n.min(self.end - self.start);
        if let Some(out) = body.as_deref_mut() {
            out.extend_from_slice(&self.buf[self.start..self.start + k]);
        }
        self.start += k;
        Ok(k)
    }

    fn read_exact_body(&mut self, mut n: usize, body: &mut Option<&mut Vec<u8>>) -> io::Result<()> {
        while n > 0 {
            n -= self.take(n, body)?;
        }
        Ok(())
    }

    fn read_to_eof(&mut self, body: &mut Option<&mut Vec<u8>>) -> io::Result<usize> {
        let mut total = self.end - self.start;
        if let Some(out) = body.as_deref_mut() {
            out.extend_from_slice(&self.buf[self.start..self.end]);
        }
        self.start = self.end;
        loop {
            self.start = 0;
            self.end = 0;
            let n = self.fill_more()?;
            if n == 0 {
                return Ok(total);
            }
            if let Some(out) = body.as_deref_mut() {
                out.extend_from_slice(&self.buf[..n]);
            }
            total += n;
            self.start = self.end;
        }
    }

    /// Reads one CRLF-terminated line (chunk size or trailer) and returns it
    /// without the CRLF, as a range of the buffer.
    fn line(&mut self) -> io::Result<(usize, usize)> {
        let at = self.fill_until(
            b"\r\n",
            "chunk line too long",
            "connection closed in a chunked body",
        )?;
        let (s, e) = (self.start, self.start + at);
        self.start = e + 2;
        Ok((s, e))
    }

    fn read_chunked(&mut self, body: &mut Option<&mut Vec<u8>>) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let (s, e) = self.line()?;
            let size_field = &self.buf[s..e];
            let hex = match size_field.iter().position(|&b| b == b';') {
                Some(i) => &size_field[..i],
                None => size_field,
            };
            let size = parse_hex(hex).ok_or_else(|| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let (s, e) = self.line()?;
                    if s == e {
                        return Ok(total);
                    }
                }
            }
            self.read_exact_body(size, body)?;
            total += size;
            let (s, e) = self.line()?;
            if s != e {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
    }
}

/// What the head of a response says about its body.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// The declared body length.
    pub content_length: Option<usize>,
    /// Whether the body is chunked.
    pub chunked: bool,
    /// Whether the server closes the connection after it.
    pub close: bool,
}

/// Parses a response head (status line and headers, without the blank line).
pub fn parse_head(head: &[u8]) -> io::Result<Head> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let http10 = status_line.starts_with(b"HTTP/1.0 ");
    if !(http10 || status_line.starts_with(b"HTTP/1.1 ")) || status_line.len() < 12 {
        return Err(bad("not an HTTP/1.x status line"));
    }
    let code = &status_line[9..12];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(bad("bad status code"));
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let mut out = Head {
        status,
        content_length: None,
        chunked: false,
        close: http10,
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("bad Content-Length"))?;
            out.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            out.chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if value.eq_ignore_ascii_case(b"close") {
                out.close = true;
            } else if value.eq_ignore_ascii_case(b"keep-alive") {
                out.close = false;
            }
        }
    }
    Ok(out)
}

/// The value of the first header `name` (ASCII, any case) of a response
/// head, without surrounding whitespace.
pub fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| line[colon + 1..].trim_ascii())
    })
}

fn parse_hex(digits: &[u8]) -> Option<usize> {
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n * 16 + v as usize)
    })
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that serves `input` in reads of at most `step` bytes, so
    /// every split point of a response is exercised.
    struct Trickle {
        input: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.input.len() - self.pos);
            out[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Reads every response in `input` with every read size from 1 to 40 and
    /// a large one, and checks the (status, body) pairs.
    #[track_caller]
    fn check(input: &str, expected: &[(u16, &str)]) {
        for step in (1..40).chain([1 << 20]) {
            let mut conn = Conn::new(Trickle {
                input: input.as_bytes().to_vec(),
                pos: 0,
                step,
            });
            for &(status, body) in expected {
                let mut got = Vec::new();
                let r = conn.read_response(Some(&mut got));
                let r = match r {
                    Ok(r) => r,
                    Err(e) => panic!("step {step}: {e}"),
                };
                assert_eq!(
                    (r.status, String::from_utf8_lossy(&got).as_ref()),
                    (status, body),
                    "step {step}"
                );
                assert_eq!(r.body_len, body.len());
            }
            assert!(
                conn.read_response(None).is_err(),
                "step {step}: trailing data"
            );
        }
    }

    #[track_caller]
    fn check_err(input: &str) {
        let mut conn = Conn::new(Trickle {
            input: input.as_bytes().to_vec(),
            pos: 0,
            step: 7,
        });
        assert!(conn.read_response(None).is_err(), "{input:?}");
    }

    #[test]
    fn responses() {
        check("HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n", &[(204, "")]);
        check(
            "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            &[(201, "")],
        );
        check(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            &[(200, "hello")],
        );
        check(
            "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
            &[(204, ""), (404, "{}")],
        );
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            &[(200, "hello0123456789"), (204, "")],
        );
        check(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
            &[(201, "x")],
        );
        check(
            "HTTP/1.0 200 OK\r\n\r\nuntil the end",
            &[(200, "until the end")],
        );
    }

    #[test]
    fn bad_responses() {
        check_err("");
        check_err("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel");
        check_err("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n");
        check_err("HTTP/2 200 OK\r\n\r\n");
        check_err("HTTP/1.1 2x0 OK\r\n\r\n");
        check_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        check_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n");
    }

    #[test]
    fn connection_header() {
        let mut conn = Conn::new(Trickle {
            input: b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec(),
            pos: 0,
            step: 100,
        });
        assert!(conn.read_response(None).map(|r| r.close).unwrap_or(false));
    }
}
