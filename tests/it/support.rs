//! Starting servers and talking to them.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use registro::{Config, Server};

/// A connection with a read timeout, so that no read in a test blocks for
/// ever, and no Nagle delay on what it sends. What is written and read
/// through it (and its `try_clone`s) is checked against docs/openapi.json
/// (see [`Tap`]); it derefs to its `TcpStream` for everything else.
pub fn connect(addr: SocketAddr, read_timeout: Duration) -> Stream {
    let stream = TcpStream::connect(addr).expect("connect to the server");
    stream
        .set_read_timeout(Some(read_timeout))
        .expect("set a read timeout");
    stream.set_nodelay(true).expect("nodelay");
    Stream {
        stream,
        tap: Arc::new(Mutex::new(Tap::default())),
    }
}

/// A socket whose reads and writes go through a [`Tap`].
#[derive(Debug)]
pub struct Stream {
    stream: TcpStream,
    tap: Arc<Mutex<Tap>>,
}

impl Stream {
    /// Another handle on the same socket and the same tap.
    pub fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(Stream {
            stream: self.stream.try_clone()?,
            tap: Arc::clone(&self.tap),
        })
    }

    /// The socket, no longer tapped.
    pub fn into_inner(self) -> TcpStream {
        self.stream
    }
}

impl std::ops::Deref for Stream {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl std::ops::DerefMut for Stream {
    fn deref_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (&self.stream).read(buf)?;
        tap_of(&self.tap).received(&buf[..n]);
        Ok(n)
    }
}

impl Write for &Stream {
    /// Tells the tap before writing, so that a reader on a clone never
    /// reads an answer to a request the tap has not seen. A short write
    /// leaves the rest told: `write_all` offers it again, and it is not
    /// told twice.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        {
            let mut tap = tap_of(&self.tap);
            let told = tap.ahead.min(buf.len());
            tap.sent(&buf[told..]);
            tap.ahead = buf.len();
        }
        let n = (&self.stream).write(buf)?;
        tap_of(&self.tap).ahead = buf.len() - n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        (&self.stream).flush()
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        (&*self).flush()
    }
}

/// Registers 300 applications with long names, making `GET /apps` about 70 KB.
pub fn fill_registry(addr: SocketAddr) {
    let mut setup = BufReader::new(connect(addr, Duration::from_secs(5)));
    for i in 0..300 {
        let body = format!(r#"{{"name":"app-{i:04}-{}"}}"#, "x".repeat(200));
        let request = format!(
            "POST /registro/1.0/apps HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        setup.get_mut().write_all(request.as_bytes()).expect("send");
        assert_eq!(read_reply(&mut setup).map(|r| r.status), Some(201));
    }
}

/// An in-process server on 127.0.0.1:0 with the production periods.
pub fn start() -> Server {
    start_with(|_| {})
}

/// An in-process server on 127.0.0.1:0, `tweak` applied to its config.
pub fn start_with(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: 2,
        log: false,
        ..Config::default()
    };
    tweak(&mut config);
    let server = Server::start(config).expect("server starts on loopback");
    serving(server.local_addr());
    server
}

/// The addresses of the Registro servers the tests started, whose answers
/// to [`agent`]'s requests are checked against docs/openapi.json (the agent
/// also talks to Prometheus).
fn servers() -> &'static Mutex<std::collections::HashSet<SocketAddr>> {
    static SERVERS: std::sync::OnceLock<Mutex<std::collections::HashSet<SocketAddr>>> =
        std::sync::OnceLock::new();
    SERVERS.get_or_init(Default::default)
}

/// Notes that a Registro server listens on `addr`.
pub fn serving(addr: SocketAddr) {
    servers()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(addr);
}

/// `http://127.0.0.1:PORT/registro/1.0`
pub fn base(addr: SocketAddr) -> String {
    format!("http://{addr}/registro/1.0")
}

/// A ureq agent that hands every status back instead of failing on 4xx/5xx.
/// Its exchanges with a Registro server the tests started are checked
/// against docs/openapi.json (the answers; the request's method and target,
/// not its body, which ureq streams).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .middleware(checked)
        .build()
        .into()
}

/// `method` of `url` through `agent`, with `body` on PUT and POST (JSON on
/// POST): for tests that pick the method as they go.
pub fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    match method {
        "GET" => agent.get(url).call(),
        "PUT" => agent.put(url).send(body),
        "POST" => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body),
        "DELETE" => agent.delete(url).call(),
        other => panic!("no such method in these tests: {other}"),
    }
}

/// [`agent`]'s middleware (any agent's, with `.middleware(checked)`): reads
/// the answer, checks it, and hands it on with the same bytes.
pub fn checked(
    request: ureq::http::Request<ureq::SendBody>,
    next: ureq::middleware::MiddlewareNext,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let registro = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .is_some_and(|addr| {
            servers()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&addr)
        });
    let method = request.method().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.to_string());
    let response = next.handle(request)?;
    if !registro {
        return Ok(response);
    }
    let (parts, mut body) = response.into_parts();
    let (mime, charset) = (
        body.mime_type().map(str::to_string),
        body.charset().map(str::to_string),
    );
    let bytes = body.with_config().limit(u64::MAX).read_to_vec()?;
    let exchange = crate::contract::Exchange {
        request: Some((method, target)),
        request_body: None,
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: bytes.clone(),
    };
    if let Err(e) = crate::contract::check(&exchange) {
        panic!("an exchange breaks docs/openapi.json: {e}");
    }
    let mut rebuilt = ureq::Body::builder();
    if let Some(mime) = mime {
        rebuilt = rebuilt.mime_type(mime);
    }
    if let Some(charset) = charset {
        rebuilt = rebuilt.charset(charset);
    }
    Ok(ureq::http::Response::from_parts(parts, rebuilt.data(bytes)))
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `error` field of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {:?}", self.body))
            .to_string()
    }
}

/// One request over a fresh raw connection; the raw bytes are sent as given.
/// Returns the first response read (or panics on a malformed one).
/// The answer is checked against docs/openapi.json (see [`Tap`]).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let tap = Arc::new(Mutex::new(Tap::default()));
    tap_of(&tap).sent(request);
    stream.write_all(request).expect("send");
    read_reply(&mut BufReader::new(Tapped { stream, tap })).expect("a response")
}

/// Reads one HTTP/1.1 response (Content-Length framed or empty).
pub fn read_reply<R: BufRead>(r: &mut R) -> Option<Reply> {
    let mut reply = read_head(r)?;
    let len: usize = reply
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap_or(0));
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    reply.body = String::from_utf8_lossy(&body).into_owned();
    Some(reply)
}

/// Polls `f` until it returns `Some`, or panics after `deadline`.
pub fn eventually<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The `registro` binary, running; killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Proc {
    /// Starts `registro --addr 127.0.0.1:0 ARGS...` and waits for its
    /// "listening on" line.
    pub fn start(args: &[&str]) -> Proc {
        Proc::start_in(Command::new(env!("CARGO_BIN_EXE_registro")), args)
    }

    /// Same, with a prepared command (e.g. a wrapper such as `prlimit`).
    pub fn start_in(mut command: Command, args: &[&str]) -> Proc {
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        Proc::launch(command)
    }

    /// Starts `registro ARGS...` with exactly these arguments (`--addr`
    /// included, if any) and waits for its "listening on" line.
    pub fn start_exact(args: &[&str]) -> Proc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_registro"));
        command.args(args);
        Proc::launch(command)
    }

    /// Spawns a prepared command with stderr captured line by line and
    /// waits for its "listening on" line.
    fn launch(mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn registro");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&lines);
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("registro printed its address")
            .parse()
            .expect("a socket address");
        serving(addr);
        Proc {
            child,
            addr,
            lines,
            reader: Some(reader),
        }
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_line(&self, needle: &str, deadline: Duration) -> String {
        eventually(deadline, needle, || {
            self.lines().into_iter().find(|l| l.contains(needle))
        })
    }

    /// Sends a signal (`"TERM"`, `"INT"`, `"HUP"`) to the process.
    pub fn signal(&self, sig: &str) {
        send_signal(self.child.id(), sig);
    }

    /// Waits for the process to exit, up to `deadline`; returns its exit
    /// code and how long it took.
    pub fn wait_exit(&mut self, deadline: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let status = eventually(deadline, "registro to exit", || {
            self.child.try_wait().expect("try_wait")
        });
        let took = started.elapsed();
        // Its last lines may still be in the pipe: read them all (the pipe
        // ends with the process), so `lines` misses none.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status.code(), took)
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        proc_status(self.child.id(), "VmRSS:")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// One keep-alive HTTP/1.1 connection for byte-exact requests. Every request
/// goes over the same socket, so a test using it also proves the server kept
/// the connection open. Every exchange on it is checked against
/// docs/openapi.json (see [`Tap`]).
pub struct Conn {
    reader: BufReader<Tapped>,
    writer: TcpStream,
    tap: Arc<Mutex<Tap>>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let writer = stream.try_clone().expect("clone socket");
        let tap = Arc::new(Mutex::new(Tap::default()));
        Conn {
            reader: BufReader::new(Tapped {
                stream,
                tap: Arc::clone(&tap),
            }),
            writer,
            tap,
        }
    }

    /// `METHOD /registro/1.0PATH` with `body` (sent with a Content-Length
    /// when not empty); reads the response, without a body for HEAD.
    pub fn send(&mut self, method: &str, path: &str, body: &str) -> Reply {
        let mut request = format!("{method} /registro/1.0{path} HTTP/1.1\r\nHost: test\r\n");
        if !body.is_empty() {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.send_raw(request.as_bytes(), method == "HEAD")
    }

    /// Sends `bytes` as they are and reads one response (its body skipped
    /// when `head`). Panics if the server closed the connection.
    pub fn send_raw(&mut self, bytes: &[u8], head: bool) -> Reply {
        tap_of(&self.tap).sent(bytes);
        self.writer.write_all(bytes).expect("send");
        self.read(head)
            .unwrap_or_else(|| panic!("no response on the kept-alive connection"))
    }

    /// Reads one response (its body skipped when `head`).
    pub fn read(&mut self, head: bool) -> Option<Reply> {
        if head {
            read_head(&mut self.reader)
        } else {
            read_reply(&mut self.reader)
        }
    }

    /// Writes bytes without reading anything.
    pub fn write(&mut self, bytes: &[u8]) {
        tap_of(&self.tap).sent(bytes);
        self.writer.write_all(bytes).expect("send");
    }

    /// Whether the server has closed the connection (end of file, with no
    /// further bytes), waiting up to the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }

    pub fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, "")
    }

    pub fn post(&mut self, path: &str, body: &str) -> Reply {
        self.send("POST", path, body)
    }

    pub fn put(&mut self, path: &str) -> Reply {
        self.send("PUT", path, "")
    }

    pub fn delete(&mut self, path: &str) -> Reply {
        self.send("DELETE", path, "")
    }
}

/// Reads the status line and headers of a response that has no body on the
/// wire whatever its Content-Length says (the answer to a HEAD request).
pub fn read_head<R: BufRead>(r: &mut R) -> Option<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    Some(Reply {
        status,
        headers,
        body: String::new(),
    })
}

/// Raises this process's soft limit on open files to at least `needed`.
pub fn raise_nofile(needed: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|n| n < needed) {
        let target = limit
            .maximum
            .map_or(needed, |max| max.min(needed.max(4096)));
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            },
        )
        .expect("raise RLIMIT_NOFILE");
        assert!(
            target >= needed,
            "this test needs {needed} open files; the hard limit is {target}"
        );
    }
}

/// A field of /proc/PID/status: `VmRSS:` (KiB), `Threads:` (a count).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Whether the server still holds `stream` open: nothing to read, no EOF.
pub fn held_open(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let open = matches!((&*stream).read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("blocking");
    open
}

/// Sends a signal (`"TERM"`, `"INT"`, `"HUP"`) to `pid` with one system call,
/// so that a time taken just before counts the server's work, not the start
/// of a `kill` program on a loaded machine.
pub fn send_signal(pid: u32, sig: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let signal: Signal = format!("SIG{sig}")
        .parse()
        .unwrap_or_else(|e| panic!("no signal {sig}: {e}"));
    let pid = i32::try_from(pid).unwrap_or_else(|e| panic!("pid {pid}: {e}"));
    kill(Pid::from_raw(pid), signal).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// Whether every program of a test is installed. Missing ones fail the test
/// under `CI=true` (CI must run it) and make it print one SKIP line
/// elsewhere, naming the Debian `packages` that bring them.
pub fn installed(test: &str, programs: &[&str], packages: &str) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| which(p).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "SKIP {test}: {} not installed (apt-get install {packages})",
        missing.join(", ")
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{message}; CI must run this test"
    );
    println!("{message}");
    false
}

/// The path of `program` on `PATH`, if there is one.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// What requests go through: one connection ([`Conn`]), or a scenario's
/// connections to every server of one registry (`scenarios::Client`).
pub trait Exchange {
    /// `METHOD /registro/1.0PATH` with `body`; the response.
    fn send(&mut self, method: &str, path: &str, body: &str) -> Reply;

    fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, "")
    }
}

impl Exchange for Conn {
    fn send(&mut self, method: &str, path: &str, body: &str) -> Reply {
        Conn::send(self, method, path, body)
    }
}

/// A directory of its own under the system's temporary directory (for
/// token files, data directories, a browser's profile), removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// `registro-WHAT-PID-N`, created empty.
    pub fn new(what: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("registro-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Writes `text` to the file `name` in it; its path.
    pub fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a file");
        path
    }
}

/// Token files in `dir`: writes take `writer`, reads `reader` (or
/// `writer`). The files for `Config::tokens`, and the read file's path (a
/// scraper's `credentials_file`).
pub fn token_files(dir: &TempDir, writer: &str, reader: &str) -> (registro::TokenFiles, PathBuf) {
    let write = dir.file("tokens", &format!("{writer}\n"));
    let read = dir.file("read-tokens", &format!("{reader}\n"));
    let files = registro::TokenFiles {
        write: Some(write),
        read: Some(read.clone()),
    };
    (files, read)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` connections to `addr`, each with one `GET /apps` answered 200 and
/// kept alive (idle); opened a hundred at a time, so that the kernel's
/// accept queue never overflows.
pub fn idle_connections(addr: SocketAddr, n: usize) -> Vec<Stream> {
    let mut idle = Vec::with_capacity(n);
    while idle.len() < n {
        let mut batch: Vec<Stream> = (0..100.min(n - idle.len()))
            .map(|_| connect(addr, Duration::from_secs(10)))
            .collect();
        for stream in &mut batch {
            stream
                .write_all(b"GET /registro/1.0/apps HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
        }
        for stream in batch {
            let mut reader = BufReader::new(stream);
            let reply = read_reply(&mut reader).expect("an answer on an idle connection");
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("connection"), Some("keep-alive"));
            idle.push(reader.into_inner());
        }
    }
    idle
}

/// Runs `command` to its end, its stdout and stderr read as they come (so
/// a full pipe never holds it up), killed after `deadline`: its status
/// (`None` when it had to be killed), stdout and stderr.
pub fn output_within(
    command: &mut Command,
    deadline: Duration,
) -> (Option<std::process::ExitStatus>, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = exited_within(&mut child, deadline);
    let stdout = stdout.join().expect("the stdout reader");
    let stderr = stderr.join().expect("the stderr reader");
    (status, stdout, stderr)
}

/// Waits up to `deadline` for `child` to exit: its status, or `None` once
/// it has been killed for not exiting.
pub fn exited_within(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts that less than `limit` has passed `since`.
#[track_caller]
pub fn assert_within(since: Instant, limit: Duration, what: &str) {
    let took = since.elapsed();
    assert!(took < limit, "{what} after {took:?}, not within {limit:?}");
}

// ---------------------------------------------------------------------------
// Every exchange checked against the OpenAPI document

/// Both directions of one connection as a test sees them: the bytes sent
/// are parsed into requests, the bytes read into answers, and each answer,
/// paired with its request in order, is checked against docs/openapi.json
/// ([`crate::contract::check`]); a mismatch panics in the read that
/// completed the answer, so it fails the test whichever file it sits in.
/// An answer to bytes that are no request (garbage, a head cut short, or
/// nothing at all: a 503 to a connection over the limit) is checked as an
/// answer any request may get.
#[derive(Debug, Default)]
pub struct Tap {
    /// Bytes sent, not yet a whole request.
    sent: Vec<u8>,
    /// Bytes at the start of a [`Stream`]'s next write already told
    /// (the part a short write left).
    ahead: usize,
    /// The bytes sent stopped being requests (the server answers them
    /// with an error and closes).
    broken: bool,
    /// Requests sent whose answers have not been read: method, target, body.
    requests: VecDeque<(String, String, Vec<u8>)>,
    /// Bytes read, not yet a whole answer.
    received: Vec<u8>,
}

/// Locks a tap, taking it over if a failed check poisoned it.
fn tap_of(tap: &Mutex<Tap>) -> std::sync::MutexGuard<'_, Tap> {
    tap.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A socket whose reads feed a [`Tap`].
pub struct Tapped {
    stream: TcpStream,
    tap: Arc<Mutex<Tap>>,
}

impl Read for Tapped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stream.read(buf)?;
        tap_of(&self.tap).received(&buf[..n]);
        Ok(n)
    }
}

/// A request at the start of `buf`, as [`Tap`] parses it.
enum Framed {
    /// Method, target, body, and the bytes it took.
    Whole(String, String, Vec<u8>, usize),
    Partial,
    Bad,
}

impl Tap {
    /// Bytes about to be sent.
    pub fn sent(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        self.sent.extend_from_slice(bytes);
        // Drained once, not per request: a pipeline of thousands is linear.
        let mut at = 0;
        loop {
            match frame_request(&self.sent[at..]) {
                Framed::Whole(method, target, body, used) => {
                    self.requests.push_back((method, target, body));
                    at += used;
                }
                Framed::Partial => break,
                Framed::Bad => {
                    self.broken = true;
                    break;
                }
            }
        }
        self.sent.drain(..at);
    }

    /// Bytes just read: every answer they complete is checked.
    pub fn received(&mut self, bytes: &[u8]) {
        self.received.extend_from_slice(bytes);
        loop {
            let pending = self.pending_head();
            let head = pending.as_ref().is_some_and(|(m, _)| m == "HEAD");
            let Some((status, headers, body, used)) = frame_answer(&self.received, head) else {
                return;
            };
            self.received.drain(..used);
            if (100..200).contains(&status) {
                continue;
            }
            let (request, request_body) = match self.requests.pop_front() {
                Some((method, target, body)) => (Some((method, target)), Some(body)),
                // The server answered before the request was whole (413,
                // 417, a stop), or bytes that are no request.
                None => (pending, None),
            };
            let exchange = crate::contract::Exchange {
                request,
                request_body,
                status,
                headers,
                body,
            };
            if let Err(e) = crate::contract::check(&exchange) {
                panic!("an exchange breaks docs/openapi.json: {e}");
            }
        }
    }

    /// The method and target of the request the next answer is to: the
    /// first whole one, else the head of one still arriving.
    fn pending_head(&self) -> Option<(String, String)> {
        if let Some((method, target, _)) = self.requests.front() {
            return Some((method.clone(), target.clone()));
        }
        if self.broken && self.sent.is_empty() {
            return None;
        }
        let end = self.sent.windows(4).position(|w| w == b"\r\n\r\n")?;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&self.sent[..end + 4]) {
            Ok(httparse::Status::Complete(_)) => {
                Some((request.method?.to_string(), request.path?.to_string()))
            }
            _ => None,
        }
    }
}

/// Frames one request of `buf` as RFC 9112 does (Content-Length, or a
/// final chunked coding); what the server would refuse as malformed is
/// `Bad`.
fn frame_request(buf: &[u8]) -> Framed {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let end = match request.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Framed::Partial,
        Err(_) => return Framed::Bad,
    };
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Framed::Bad;
    };
    let mut length = None;
    let mut chunked = false;
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return Framed::Bad;
            };
            if length.is_some_and(|l| l != n) {
                return Framed::Bad;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let codings = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if codings.split(',').next_back().map(str::trim) != Some("chunked") {
                return Framed::Bad;
            }
            chunked = true;
        }
    }
    let (method, target) = (method.to_string(), target.to_string());
    if chunked {
        if length.is_some() {
            return Framed::Bad;
        }
        return match dechunk(&buf[end..]) {
            Some(Some((body, used))) => Framed::Whole(method, target, body, end + used),
            Some(None) => Framed::Partial,
            None => Framed::Bad,
        };
    }
    let n = length.unwrap_or(0);
    if buf.len() - end < n {
        return Framed::Partial;
    }
    Framed::Whole(method, target, buf[end..end + n].to_vec(), end + n)
}

/// A chunked body: `Some(Some((body, bytes taken)))`, `Some(None)` while
/// incomplete, `None` when malformed.
fn dechunk(buf: &[u8]) -> Option<Option<(Vec<u8>, usize)>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(nl) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Some(None);
        };
        let line = std::str::from_utf8(&buf[at..at + nl]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?, 16).ok()?;
        at += nl + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(nl) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Some(None);
                };
                at += nl + 2;
                if nl == 0 {
                    return Some(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Some(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return None;
        }
        at += size + 2;
    }
}

/// Status, headers, body, and the bytes an answer took.
type Answer = (u16, Vec<(String, String)>, Vec<u8>, usize);

/// Status, headers, body and bytes taken of one whole answer at the start
/// of `buf` (no body for a HEAD, a 1xx or a 204), or `None` until it is.
fn frame_answer(buf: &[u8], head: bool) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let end = match response.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "the server sent no HTTP answer ({e}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let status = response.code?;
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let length = if head || (100..200).contains(&status) || status == 204 {
        0
    } else {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    if buf.len() - end < length {
        return None;
    }
    Some((
        status,
        headers,
        buf[end..end + length].to_vec(),
        end + length,
    ))
}
