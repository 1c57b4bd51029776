//! A small synchronous client of etcd v3 through its HTTP/JSON gateway
//! (`/v3/...`): range, txn, lease grant / keep-alive / revoke over ureq, and
//! a watch stream read from a socket of its own, so that it can be stopped.
//!
//! The gateway's JSON: keys and values are standard base64 (with padding),
//! int64 fields come back as strings, fields at their default value are
//! omitted (`succeeded: false`, an event's `type: PUT`). Members are tried
//! in turn: a member that refuses the connection, times out or answers 5xx
//! sends the call on to the next, and the one that answered is tried first
//! next time.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The largest answer read (a range of the whole prefix).
const MAX_BODY: u64 = 1 << 30;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No member answered in time (refused, timed out, 5xx, no leader).
    Unreachable(String),
    /// A member answered 4xx (a bad request, a compacted revision, a
    /// missing lease): retrying elsewhere would not help.
    Refused(u16, String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) => write!(f, "{why}"),
            CallError::Refused(status, why) => write!(f, "etcd answered {status}: {why}"),
        }
    }
}

/// One key and value as etcd returns them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kv {
    /// The key, decoded.
    pub key: Vec<u8>,
    /// The value, decoded.
    pub value: Vec<u8>,
    /// The revision of its creation.
    pub create_revision: i64,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// A watch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// A delete (else a put).
    pub delete: bool,
    /// The key as it is after the event (for a delete, its `mod_revision`
    /// is the deletion's revision).
    pub kv: Kv,
}

/// One line of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchLine {
    /// The watch is set up.
    Created,
    /// Events, and the header's revision.
    Events(Vec<WatchEvent>, i64),
    /// No events: everything up to this revision has been sent.
    Progress(i64),
    /// The watch was canceled: from a compacted revision (`Some`), or else.
    Canceled(Option<i64>, String),
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put a value, attached to a lease (0: none).
    Put(Vec<u8>, Vec<u8>, i64),
    /// Delete a key.
    Delete(Vec<u8>),
    /// Delete every key with this prefix.
    DeletePrefix(Vec<u8>),
}

/// One compare of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Compare {
    /// The key's `mod_revision` equals this (0: the key is absent).
    ModRevision(Vec<u8>, i64),
    /// The key's `create_revision` equals this (0: the key is absent).
    CreateRevision(Vec<u8>, i64),
    /// No key starts with this prefix.
    Empty(Vec<u8>),
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (the success ops ran).
    pub succeeded: bool,
    /// The store's revision after it.
    pub revision: i64,
}

/// The client: the members, and the one that answered last.
#[derive(Debug)]
pub struct Client {
    members: Vec<String>,
    current: AtomicUsize,
    agent: ureq::Agent,
}

impl Client {
    /// A client of these members (`HOST:PORT` each); connects to none yet.
    pub fn new(members: Vec<String>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections_per_host(16)
            .build()
            .into();
        Client {
            members,
            current: AtomicUsize::new(0),
            agent,
        }
    }

    /// The members, as given.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The member tried first.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.members.len().max(1)
    }

    /// Posts `body` to `path` on the members in turn, each try within what
    /// is left of `timeout`; returns the answer's lines, parsed.
    pub fn call_lines(
        &self,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<Value>, CallError> {
        let deadline = Instant::now() + timeout;
        let first = self.current();
        let count = self.members.len().max(1);
        let mut last = String::from("no etcd member given");
        for k in 0..count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let i = (first + k) % count;
            let member = &self.members[i];
            // The first member gets most of the time; the others what is left.
            let per_try = if k + 1 < count {
                left.mul_f64(0.6)
            } else {
                left
            };
            match self.post(member, path, body, per_try) {
                Ok((status, text)) if status < 300 => {
                    self.current.store(i, Ordering::Relaxed);
                    return parse_lines(&text).map_err(|e| {
                        CallError::Unreachable(format!("etcd at {member} sent bad JSON: {e}"))
                    });
                }
                Ok((status, text)) if status < 500 => {
                    self.current.store(i, Ordering::Relaxed);
                    return Err(CallError::Refused(status, error_message(&text)));
                }
                Ok((status, text)) => {
                    last = format!(
                        "etcd at {member} answered {status}: {}",
                        error_message(&text)
                    );
                }
                Err(e) => last = format!("etcd at {member}: {e}"),
            }
        }
        Err(CallError::Unreachable(last))
    }

    /// As [`Client::call_lines`], for a call with one answer.
    pub fn call(&self, path: &str, body: &Value, timeout: Duration) -> Result<Value, CallError> {
        let body = serde_json::to_vec(body).unwrap_or_default();
        self.call_lines(path, &body, timeout)?
            .into_iter()
            .next()
            .ok_or_else(|| CallError::Unreachable(format!("etcd sent an empty answer to {path}")))
    }

    fn post(
        &self,
        member: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, String), ureq::Error> {
        let mut response = self
            .agent
            .post(format!("http://{member}{path}"))
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/json")
            .send(body)?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()?;
        Ok((status, text))
    }

    /// The keys from `key` up to `range_end` (exclusive; empty: `key` only),
    /// linearizable (needs a quorum), and the store's revision.
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        timeout: Duration,
    ) -> Result<(Vec<Kv>, i64), CallError> {
        let mut body = json!({"key": encode(key)});
        if !range_end.is_empty() {
            body["range_end"] = json!(encode(range_end));
        }
        let answer = self.call("/v3/kv/range", &body, timeout)?;
        let kvs = answer["kvs"]
            .as_array()
            .map(|kvs| kvs.iter().map(kv).collect())
            .unwrap_or_default();
        Ok((kvs, int(&answer["header"]["revision"])))
    }

    /// A transaction: if every compare holds, `success`, else nothing.
    pub fn txn(
        &self,
        compares: &[Compare],
        success: &[Op],
        timeout: Duration,
    ) -> Result<TxnResult, CallError> {
        let answer = self.call("/v3/kv/txn", &txn_body(compares, success), timeout)?;
        Ok(TxnResult {
            succeeded: answer["succeeded"].as_bool().unwrap_or(false),
            revision: int(&answer["header"]["revision"]),
        })
    }

    /// Several transactions in one call, each with its own compares and
    /// outcome (etcd's nested transactions, 3.3 and later): the store's
    /// revision after it, and whether each one's compares held. Their keys
    /// must not overlap (etcd refuses a key changed twice in one call), and
    /// their count plus the largest one's compares or operations must stay
    /// within etcd's `--max-txn-ops`.
    pub fn txns(
        &self,
        txns: &[(&[Compare], &[Op])],
        timeout: Duration,
    ) -> Result<(i64, Vec<bool>), CallError> {
        let answer = self.call("/v3/kv/txn", &nested_body(txns), timeout)?;
        Ok(nested_outcomes(&answer, txns.len()))
    }

    /// A new lease, and the TTL etcd actually granted (at least its
    /// minimum, which follows its election timeout).
    pub fn grant_ttl(&self, ttl: i64, timeout: Duration) -> Result<(i64, i64), CallError> {
        let answer = self.call("/v3/lease/grant", &json!({"TTL": ttl}), timeout)?;
        match int(&answer["ID"]) {
            0 => Err(CallError::Unreachable(format!(
                "etcd granted no lease: {}",
                answer["error"].as_str().unwrap_or("no ID in the answer")
            ))),
            id => Ok((id, int(&answer["TTL"]))),
        }
    }

    /// Keeps one lease alive: its TTL, or `None` once it has expired or
    /// was revoked (etcd answers without a `TTL`).
    pub fn keep_alive(&self, id: i64, timeout: Duration) -> Result<Option<i64>, CallError> {
        self.keep_alive_many(&[id], timeout)?
            .into_iter()
            .find(|(lease, _)| *lease == id)
            .map(|(_, ttl)| ttl)
            .ok_or_else(|| CallError::Unreachable("etcd did not answer a keep-alive".into()))
    }

    /// Keeps up to [`KEEP_ALIVE_BODY`] leases alive in one request: the
    /// answers (each lease's TTL, or `None` once it has expired or was
    /// revoked). A lease without an answer was not renewed.
    ///
    /// etcd's gateway reads a keep-alive's body as a stream and stops
    /// reading it once its first answer is written (Go's HTTP server then
    /// discards the rest of a request's body): of several leases in one
    /// body the later ones may be neither renewed nor answered. Measured
    /// here with 150 a body: 17, 69 or 121 answered, the others' TTLs not
    /// renewed (etcd-io/etcd#8237). The first read takes 512 bytes, so a
    /// body that fits in them is read whole before any answer.
    pub fn keep_alive_many(
        &self,
        ids: &[i64],
        timeout: Duration,
    ) -> Result<Vec<(i64, Option<i64>)>, CallError> {
        let body = keep_alive_body(&ids[..ids.len().min(KEEP_ALIVE_BODY)]);
        let lines = self.call_lines("/v3/lease/keepalive", &body, timeout)?;
        Ok(keep_alive_answers(&lines))
    }
}

/// Leases in one keep-alive request at most: their lines (`{"ID":"..."}`,
/// at most 29 bytes with a 19-digit id) fit in the 512 bytes etcd's
/// gateway reads before it answers.
pub const KEEP_ALIVE_BODY: usize = 16;

/// Each answered lease of a keep-alive and its TTL (`None`: expired).
pub fn keep_alive_answers(lines: &[Value]) -> Vec<(i64, Option<i64>)> {
    lines
        .iter()
        .map(|line| &line["result"])
        .map(|r| (int(&r["ID"]), Some(int(&r["TTL"])).filter(|ttl| *ttl > 0)))
        .filter(|(id, _)| *id != 0)
        .collect()
}

/// The body of a keep-alive of several leases: one object a line.
pub fn keep_alive_body(ids: &[i64]) -> Vec<u8> {
    let mut body = Vec::with_capacity(ids.len() * 32);
    for id in ids {
        body.extend_from_slice(format!("{{\"ID\":\"{id}\"}}\n").as_bytes());
    }
    body
}

/// The JSON of one call of nested transactions.
pub fn nested_body(txns: &[(&[Compare], &[Op])]) -> Value {
    let success: Vec<Value> = txns
        .iter()
        .map(|(compares, ops)| json!({ "request_txn": txn_body(compares, ops) }))
        .collect();
    json!({ "success": success })
}

/// The revision and each nested transaction's outcome in an answer to
/// [`nested_body`] (an outcome the answer leaves out counts as failed).
pub fn nested_outcomes(answer: &Value, count: usize) -> (i64, Vec<bool>) {
    let responses = answer["responses"].as_array();
    let outcomes = (0..count)
        .map(|i| {
            responses
                .and_then(|r| r.get(i))
                .and_then(|r| r["response_txn"]["succeeded"].as_bool())
                .unwrap_or(false)
        })
        .collect();
    (int(&answer["header"]["revision"]), outcomes)
}

/// A transaction's JSON.
pub fn txn_body(compares: &[Compare], success: &[Op]) -> Value {
    let compare: Vec<Value> = compares
        .iter()
        .map(|c| match c {
            Compare::ModRevision(key, rev) => json!({
                "key": encode(key), "target": "MOD", "result": "EQUAL",
                "mod_revision": rev.to_string()}),
            Compare::CreateRevision(key, rev) => json!({
                "key": encode(key), "target": "CREATE", "result": "EQUAL",
                "create_revision": rev.to_string()}),
            // Over a range, a compare holds when every key satisfies it, so
            // when none exists (etcd compares an empty range as one absent key).
            Compare::Empty(prefix) => json!({
                "key": encode(prefix), "range_end": encode(&prefix_end(prefix)),
                "target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
        })
        .collect();
    let success: Vec<Value> = success
        .iter()
        .map(|op| match op {
            Op::Put(key, value, lease) => {
                let mut put = json!({"key": encode(key), "value": encode(value)});
                if *lease != 0 {
                    put["lease"] = json!(lease.to_string());
                }
                json!({ "request_put": put })
            }
            Op::Delete(key) => json!({"request_delete_range": {"key": encode(key)}}),
            Op::DeletePrefix(prefix) => json!({"request_delete_range": {
                "key": encode(prefix), "range_end": encode(&prefix_end(prefix))}}),
        })
        .collect();
    json!({"compare": compare, "success": success})
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the key space.
    vec![0]
}

/// An int64 as the gateway sends it: a string, a number, or absent (0).
pub fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// A `KeyValue` object.
pub fn kv(v: &Value) -> Kv {
    let bytes = |field: &str| {
        v[field]
            .as_str()
            .and_then(|s| decode(s).ok())
            .unwrap_or_default()
    };
    Kv {
        key: bytes("key"),
        value: bytes("value"),
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    }
}

/// One line of a watch stream.
pub fn watch_line(v: &Value) -> Option<WatchLine> {
    let result = v.get("result")?;
    if result["canceled"].as_bool().unwrap_or(false) {
        let compacted = int(&result["compact_revision"]);
        let reason = result["cancel_reason"].as_str().unwrap_or("").to_string();
        return Some(WatchLine::Canceled(
            (compacted > 0).then_some(compacted),
            reason,
        ));
    }
    if result["created"].as_bool().unwrap_or(false) {
        return Some(WatchLine::Created);
    }
    let revision = int(&result["header"]["revision"]);
    match result["events"].as_array() {
        Some(events) if !events.is_empty() => Some(WatchLine::Events(
            events
                .iter()
                .map(|e| WatchEvent {
                    delete: e["type"].as_str() == Some("DELETE"),
                    kv: kv(&e["kv"]),
                })
                .collect(),
            revision,
        )),
        _ => Some(WatchLine::Progress(revision)),
    }
}

fn parse_lines(text: &str) -> Result<Vec<Value>, serde_json::Error> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}

fn error_message(text: &str) -> String {
    let v: Value = serde_json::from_str(text.lines().next().unwrap_or("")).unwrap_or_default();
    let message = v["message"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .or_else(|| v["error"]["message"].as_str());
    match message {
        Some(m) => m.to_string(),
        None => text.chars().take(200).collect(),
    }
}

/// A watch stream on one member: one JSON object a line, read from a
/// socket with a short read timeout, so that [`Watch::next`] returns
/// at least every [`POLL`] and the watch thread can look at the time.
///
/// The request body stays open: the gateway reads further requests from it
/// as they come (a progress request asks the member to say how far it has
/// sent), so the request declares a length it never reaches. A declared
/// length over 256 KiB also keeps etcd's HTTP server (Go's) from trying to
/// drain the body before it answers; but that server sends the answer's
/// head only once a read of the body has returned after the answer began,
/// so until the first line arrives the caller asks for progress at every
/// [`POLL`] (measured on 3.4.23: the first line then comes within 100-200 ms).
#[derive(Debug)]
pub struct Watch {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The answer's head while it is still arriving (`None` once read).
    head: Option<Vec<u8>>,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    line: Vec<u8>,
    /// Bytes of the request body sent so far.
    sent: u64,
}

/// How long a read waits before [`Watch::next`] returns `Ok(None)`.
pub const POLL: Duration = Duration::from_millis(200);
/// The length a watch's request body declares (1 TiB: a progress request
/// of 24 bytes a second would take 1,400 years to reach it).
const WATCH_BODY: u64 = 1 << 40;
/// The longest head of a watch's answer.
const MAX_HEAD: usize = 16 * 1024;
/// A progress request, one line of the request body.
const PROGRESS_REQUEST: &[u8] = b"{\"progress_request\":{}}\n";

impl Watch {
    /// Opens a watch of `[key, range_end)` from `start_revision` on `member`
    /// and sends the request; the answer is read by [`Watch::next`].
    pub fn open(
        member: &str,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
        timeout: Duration,
    ) -> io::Result<Watch> {
        let addr: SocketAddr = member.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no address for {member}"),
            )
        })?;
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        let mut body = serde_json::to_vec(&json!({"create_request": {
            "key": encode(key), "range_end": encode(range_end),
            "start_revision": start_revision.to_string(), "progress_notify": true}}))
        .unwrap_or_default();
        body.push(b'\n');
        let head = format!(
            "POST /v3/watch HTTP/1.1\r\nHost: {member}\r\nContent-Type: application/json\r\n\
             Content-Length: {WATCH_BODY}\r\n\r\n"
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        stream.set_read_timeout(Some(POLL))?;
        let writer = stream.try_clone()?;
        Ok(Watch {
            reader: BufReader::new(stream),
            writer,
            head: Some(Vec::new()),
            chunk_left: 0,
            line: Vec::new(),
            sent: body.len() as u64,
        })
    }

    /// Asks the member for a progress answer (a line with its current
    /// revision once everything before it has been sent).
    pub fn request_progress(&mut self) -> io::Result<()> {
        let len = PROGRESS_REQUEST.len() as u64;
        if self.sent + len > WATCH_BODY {
            return Err(io::Error::other("the watch's request body is used up"));
        }
        self.writer.write_all(PROGRESS_REQUEST)?;
        self.sent += len;
        Ok(())
    }

    /// The next line of the stream, or `Ok(None)` when none came within
    /// [`POLL`]. An error means the stream is lost (closed, reset, refused,
    /// garbled).
    pub fn next(&mut self) -> io::Result<Option<Value>> {
        loop {
            let filled = if self.head.is_some() {
                self.read_head().map(|()| None)
            } else {
                self.fill()
            };
            match filled {
                Ok(Some(line)) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return serde_json::from_slice(&line)
                        .map(Some)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
                }
                Ok(None) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the answer's head as it arrives; once whole, checks it (a 200,
    /// chunked) and leaves the body's bytes in the reader.
    fn read_head(&mut self) -> io::Result<()> {
        let Some(head) = self.head.as_mut() else {
            return Ok(());
        };
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            // Byte by byte up to the blank line: the head is short, and
            // what follows it stays in the reader for `fill`.
            let mut used = 0;
            let mut done = false;
            for &b in available {
                head.push(b);
                used += 1;
                if head.ends_with(b"\r\n\r\n") {
                    done = true;
                    break;
                }
            }
            self.reader.consume(used);
            if done {
                break;
            }
            if head.len() > MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the watch's answer has a head too long",
                ));
            }
        }
        let text = String::from_utf8_lossy(head).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines.next().unwrap_or("");
        if !status.starts_with("HTTP/1.1 200") {
            return Err(io::Error::other(format!(
                "the watch was answered {status:?}"
            )));
        }
        let chunked = lines.any(|header| {
            header.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("transfer-encoding")
                    && value.trim().eq_ignore_ascii_case("chunked")
            })
        });
        if !chunked {
            return Err(io::Error::other("the watch's answer is not chunked"));
        }
        self.head = None;
        Ok(())
    }

    /// Reads until a whole line is in `self.line` (then returns it), or a
    /// read times out. Keeps its place across timeouts.
    fn fill(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.chunk_left == 0 {
                // A chunk's size line: read whole (it is short; a timeout
                // midway is unlikely, and then the stream is abandoned).
                let mut size = String::new();
                if self.reader.read_line(&mut size)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let size = size.trim();
                if size.is_empty() {
                    continue; // the CRLF after a chunk's data
                }
                let hex = size.split(';').next().unwrap_or("");
                let n = usize::from_str_radix(hex, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a bad chunk size"))?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.chunk_left = n;
            }
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = available.len().min(self.chunk_left);
            let part = &available[..take];
            let newline = part.iter().position(|b| *b == b'\n');
            let used = newline.map_or(take, |i| i + 1);
            self.line.extend_from_slice(&part[..used]);
            self.reader.consume(used);
            self.chunk_left -= used;
            if newline.is_some() {
                return Ok(Some(std::mem::take(&mut self.line)));
            }
            if self.line.len() > MAX_BODY as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a watch line too long",
                ));
            }
        }
    }

    /// A watch over a stream whose head has been read (for tests).
    #[cfg(test)]
    fn from_reader(stream: TcpStream) -> Watch {
        Watch {
            writer: stream.try_clone().expect("a clone of the test socket"),
            reader: BufReader::new(stream),
            head: None,
            chunk_left: 0,
            line: Vec::new(),
            sent: 0,
        }
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `Err` on any other byte.
pub fn decode(text: &str) -> Result<Vec<u8>, ()> {
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(()),
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if text.len() % 4 == 1 {
        return Err(());
    }
    Ok(out)
}

/// A read of a whole stream into lines (for tests of the chunk decoder).
#[cfg(test)]
fn read_all(watch: &mut Watch) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(line) = watch.next() {
        out.extend(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_the_standard() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("/registro/", "L3JlZ2lzdHJvLw=="),
        ] {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded), Ok(plain.as_bytes().to_vec()));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), Ok(all));
        assert_eq!(decode("Zm9v!"), Err(()));
        assert_eq!(decode("Z"), Err(()));
    }

    #[test]
    fn int64_fields_come_as_strings_numbers_or_nothing() {
        assert_eq!(int(&json!("9223372036854775807")), i64::MAX);
        assert_eq!(int(&json!(42)), 42);
        assert_eq!(int(&Value::Null), 0);
        assert_eq!(int(&json!("x")), 0);
    }

    #[test]
    fn prefix_ends_bump_the_last_byte() {
        assert_eq!(prefix_end(b"/registro/"), b"/registro0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn watch_lines_are_parsed_defensively() {
        let created = json!({"result": {"header": {"revision": "5"}, "created": true}});
        assert_eq!(watch_line(&created), Some(WatchLine::Created));
        let events = json!({"result": {"header": {"revision": "9"}, "events": [
            {"kv": {"key": encode(b"k"), "value": encode(b"v"), "mod_revision": "8",
                    "create_revision": "3", "lease": "7"}},
            {"type": "DELETE", "kv": {"key": encode(b"k"), "mod_revision": "9"}}]}});
        let Some(WatchLine::Events(list, 9)) = watch_line(&events) else {
            panic!("{events}")
        };
        assert_eq!(list.len(), 2);
        assert!(!list[0].delete && list[1].delete);
        assert_eq!(
            (
                list[0].kv.value.as_slice(),
                list[0].kv.lease,
                list[1].kv.mod_revision
            ),
            (&b"v"[..], 7, 9)
        );
        let progress = json!({"result": {"header": {"revision": "12"}}});
        assert_eq!(watch_line(&progress), Some(WatchLine::Progress(12)));
        let canceled = json!({"result": {"canceled": true, "compact_revision": "7"}});
        assert_eq!(
            watch_line(&canceled),
            Some(WatchLine::Canceled(Some(7), String::new()))
        );
        assert_eq!(watch_line(&json!({"error": "x"})), None);
    }

    #[test]
    fn keep_alives_fit_in_the_gateways_first_read_and_expiry_is_a_missing_ttl() {
        let most = vec![i64::MAX; KEEP_ALIVE_BODY];
        assert!(keep_alive_body(&most).len() <= 512);
        assert_eq!(
            keep_alive_body(&[1, 22]),
            b"{\"ID\":\"1\"}\n{\"ID\":\"22\"}\n".to_vec()
        );
        let lines = parse_lines(
            "{\"result\":{\"ID\":\"1\",\"TTL\":\"90\"}}\n{\"result\":{\"ID\":\"22\"}}\n",
        )
        .unwrap();
        assert_eq!(keep_alive_answers(&lines), vec![(1, Some(90)), (22, None)]);
    }

    #[test]
    fn nested_transactions_have_an_outcome_each() {
        let compares = [Compare::CreateRevision(b"a".to_vec(), 0)];
        let ops = [Op::Put(b"a".to_vec(), b"1".to_vec(), 0)];
        let body = nested_body(&[(&compares, &ops), (&[], &[])]);
        assert_eq!(
            body["success"][0]["request_txn"],
            txn_body(&compares, &ops),
            "{body}"
        );
        // As etcd 3.4.23 answers: a failed one has no `succeeded`.
        let answer = json!({"header": {"revision": "7855"}, "succeeded": true, "responses": [
            {"response_txn": {"header": {}, "succeeded": true,
                              "responses": [{"response_put": {"header": {"revision": "7855"}}}]}},
            {"response_txn": {"header": {}}}]});
        assert_eq!(
            nested_outcomes(&answer, 3),
            (7855, vec![true, false, false])
        );
    }

    #[test]
    fn transactions_compare_and_put() {
        let body = txn_body(
            &[Compare::ModRevision(b"a".to_vec(), 0)],
            &[
                Op::Put(b"a".to_vec(), b"1".to_vec(), 7),
                Op::Delete(b"b".to_vec()),
                Op::DeletePrefix(b"c/".to_vec()),
            ],
        );
        assert_eq!(
            body,
            json!({"compare": [{"key": "YQ==", "target": "MOD", "result": "EQUAL", "mod_revision": "0"}],
                   "success": [{"request_put": {"key": "YQ==", "value": "MQ==", "lease": "7"}},
                               {"request_delete_range": {"key": "Yg=="}},
                               {"request_delete_range": {"key": "Yy8=", "range_end": "YzA="}}]})
        );
    }

    /// The chunk decoder over a real socket: lines split across chunks,
    /// several lines in one chunk, and the end of the stream.
    #[test]
    fn a_chunked_stream_yields_whole_lines() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut out = Vec::new();
            for piece in ["{\"a\":", "1}\n{", "\"b\":2}", "\n\n"] {
                out.extend_from_slice(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
            }
            out.extend_from_slice(b"0\r\n\r\n");
            s.write_all(&out).unwrap();
        });
        let stream = TcpStream::connect(addr).unwrap();
        let mut watch = Watch::from_reader(stream);
        assert_eq!(read_all(&mut watch), vec![json!({"a": 1}), json!({"b": 2})]);
        writer.join().unwrap();
    }
}
