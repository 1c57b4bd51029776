//! Starting servers and talking to them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use registro::{Config, Server};

/// A connection with a read timeout, so that no read in a test blocks for
/// ever, and no Nagle delay on what it sends.
pub fn connect(addr: SocketAddr, read_timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the server");
    stream
        .set_read_timeout(Some(read_timeout))
        .expect("set a read timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
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
    Server::start(config).expect("server starts on loopback")
}

/// `http://127.0.0.1:PORT/registro/1.0`
pub fn base(addr: SocketAddr) -> String {
    format!("http://{addr}/registro/1.0")
}

/// A ureq agent that hands every status back instead of failing on 4xx/5xx.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
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
pub fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("send");
    read_reply(&mut BufReader::new(stream)).expect("a response")
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
/// the connection open.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let writer = stream.try_clone().expect("clone socket");
        Conn {
            reader: BufReader::new(stream),
            writer,
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

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` connections to `addr`, each with one `GET /apps` answered 200 and
/// kept alive (idle); opened a hundred at a time, so that the kernel's
/// accept queue never overflows.
pub fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(n);
    while idle.len() < n {
        let mut batch: Vec<TcpStream> = (0..100.min(n - idle.len()))
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
