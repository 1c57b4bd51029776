//! The HTTP of the load generator.
//!
//! Requests whose timing no scenario measures (creating apps, reading
//! `/metrics`, a watch's first index, etcd's status, WebDriver) go through
//! ureq ([`call`]), as any client would send them.
//!
//! The rest is written here, on `TcpStream`, because a scenario needs what a
//! client library hides or does not allow: [`Conn`] keeps one connection in
//! the caller's hands (closed-loop heartbeats timed from the write to the
//! last byte read, many connections per thread, no allocation per request,
//! so that the load generator leaves the 2 cores to the server; requests
//! pipelined 8 deep to register a million instances; a fresh connection per
//! request that the server closes first; idle connections held open), and
//! [`head`] frames answers read by a readiness poller (19,000 keep-alive
//! clients or 10,000 watchers on one thread, in `fleet.rs` and `watch.rs`).
//! Slow senders (`slowloris.rs`) and pipelined floods (`pipelining.rs`)
//! write raw bytes. Registro always answers with a `Content-Length` and
//! never chunked, so that is all the framing here reads.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// How long a read or write may block before the request counts as failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the head of an answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// Bytes of the head, through the blank line.
    pub len: usize,
    /// Body bytes that follow (`Content-Length`; none for 204 and 304).
    pub body: usize,
    /// Whether the server closes the connection after this answer.
    pub close: bool,
    /// Its `Registro-Index`, when it has one.
    pub index: Option<u64>,
}

/// Parses the answer head at the start of `buf`: None until it is whole.
pub fn head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut answer = httparse::Response::new(&mut headers);
    let len = match answer.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(bad("answer head too long"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(&format!("bad answer head: {e}"))),
    };
    let status = answer.code.unwrap_or(0);
    let mut out = Head {
        status,
        len,
        body: 0,
        close: answer.version == Some(0),
        index: None,
    };
    let number = |value: &[u8], what: &str| {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| bad(&format!("bad {what}")))
    };
    for h in answer.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") && status != 204 && status != 304 {
            out.body = number(h.value, "Content-Length")? as usize;
        } else if h.name.eq_ignore_ascii_case("connection") {
            out.close = h.value.eq_ignore_ascii_case(b"close");
        } else if h.name.eq_ignore_ascii_case("registro-index") {
            out.index = Some(number(h.value, "Registro-Index")?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("a chunked answer (Registro sends none)"));
        }
    }
    Ok(Some(out))
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// One keep-alive connection with its read buffer.
pub struct Conn<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Conn {
    /// Connects with TCP_NODELAY and bounded blocking.
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        Ok(Conn::new(open(addr)?))
    }

    /// Closes this connection and opens a new one, keeping the buffer.
    pub fn reconnect(&mut self, addr: SocketAddr) -> io::Result<()> {
        // Close first (the peer may already have), so the old and the new
        // connection never overlap.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.stream = open(addr)?;
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
    /// Wraps any byte stream (the tests use in-memory ones).
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

    /// Reads one answer; its body is counted and dropped.
    pub fn read_response(&mut self) -> io::Result<Head> {
        let head = loop {
            if let Some(head) = head(&self.buf[self.start..self.end])? {
                break head;
            }
            self.fill("connection closed before an answer")?;
        };
        self.start += head.len;
        let mut left = head.body;
        while left > 0 {
            if self.start == self.end {
                self.fill("connection closed in a body")?;
            }
            let k = left.min(self.end - self.start);
            self.start += k;
            left -= k;
        }
        Ok(head)
    }

    /// Waits for the peer to close (after a `Connection: close` answer),
    /// discarding anything else it sends.
    pub fn wait_eof(&mut self) -> io::Result<()> {
        while self.stream.read(&mut self.buf)? > 0 {}
        self.start = 0;
        self.end = 0;
        Ok(())
    }

    /// Reads more bytes after the unconsumed ones, compacting or growing
    /// the buffer first; end of stream is an error saying `closed`.
    fn fill(&mut self, closed: &str) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        match self.stream.read(&mut self.buf[self.end..])? {
            0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, closed)),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }
}

/// One request through ureq to `http://ADDR{path}`: the status, the
/// `Registro-Index` if any, and the body. Statuses are answers, not errors.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Option<u64>, String), String> {
    let url = format!("http://{addr}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A WebDriver script may run for a minute in a busy page.
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into();
    let sent = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        ("DELETE", _) => agent.delete(&url).call(),
        (_, body) => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or("")),
    };
    let mut answer = sent.map_err(|e| format!("{method} {path}: {e}"))?;
    let index = answer
        .headers()
        .get("registro-index")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = answer
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {path}: {e}"))?;
    Ok((answer.status().as_u16(), index, text))
}

/// `call` that must answer `want`.
pub fn expect(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    want: u16,
) -> Result<(Option<u64>, String), String> {
    match call(addr, method, path, body)? {
        (status, index, text) if status == want => Ok((index, text)),
        (status, _, text) => Err(format!(
            "{method} {path}: status {status} (expected {want}): {text}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that serves `input` in reads of at most `step` bytes, so
    /// every split point of an answer is exercised.
    struct Trickle(Vec<u8>, usize, usize);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Trickle(input, pos, step) = self;
            let n = (*step).min(out.len()).min(input.len() - *pos);
            out[..n].copy_from_slice(&input[*pos..*pos + n]);
            *pos += n;
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

    #[test]
    fn answers_in_pieces() {
        let input = "HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n\
                     HTTP/1.1 200 OK\r\ncontent-length: 5\r\nRegistro-Index: 42\r\n\r\nhello\
                     HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        for step in (1..40).chain([1 << 20]) {
            let mut conn = Conn::new(Trickle(input.as_bytes().to_vec(), 0, step));
            let mut got = Vec::new();
            while let Ok(h) = conn.read_response() {
                got.push((h.status, h.body, h.close, h.index));
            }
            assert_eq!(
                got,
                [
                    (204, 0, false, None),
                    (200, 5, false, Some(42)),
                    (404, 2, true, None)
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn bad_answers() {
        for input in [
            "",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nRegistro-Index: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            let mut conn = Conn::new(Trickle(input.as_bytes().to_vec(), 0, 7));
            assert!(conn.read_response().is_err(), "{input:?}");
        }
    }
}
