//! The server under test as a child process: started fresh, its port read
//! from its stderr, its sweep lines parsed as they come, its resident memory
//! read from `/proc`, and stopped (SIGTERM, or closing stdin for the baseline)
//! when the handle is dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit once asked to.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Stderr lines kept for error messages.
const TAIL: usize = 20;

/// One pass of the server's sweeper, from its log line
/// `sweep: checked N instances in X ms (longest lock hold Y us), removed R, down D`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sweep {
    /// Instances checked.
    pub checked: u64,
    /// How long the pass took, in milliseconds.
    pub ms: f64,
    /// The longest the registry's lock was held at a time, in microseconds.
    pub lock_us: f64,
    /// Instances removed.
    pub removed: u64,
    /// Instances marked down.
    pub down: u64,
    /// When the line was read (the pass ended just before).
    pub at: Instant,
}

enum Event {
    Listening(SocketAddr),
    Sweep(Sweep),
}

/// How a server is asked to stop.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM (the registro binary).
    Term,
    /// Close its stdin (the baseline mode of this binary).
    CloseStdin,
}

/// A running server process.
pub struct ServerProc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stop: Stop,
    /// The address it listens on.
    pub addr: SocketAddr,
    events: Receiver<Event>,
    tail: Arc<Mutex<VecDeque<String>>>,
    reader: Option<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl ServerProc {
    /// Spawns `cmd` and waits for its `listening on HOST:PORT` line.
    pub fn start(name: &str, cmd: Command, stop: Stop) -> Result<ServerProc, String> {
        ServerProc::start_within(name, cmd, stop, START_TIMEOUT)
    }

    /// The same, waiting up to `timeout` (a server loading a data directory).
    pub fn start_within(
        name: &str,
        mut cmd: Command,
        stop: Stop,
        timeout: Duration,
    ) -> Result<ServerProc, String> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))?;
        let stdin = child.stdin.take();
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{name}: no stderr pipe"));
        };
        let (tx, events) = mpsc::channel();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
        let tail2 = Arc::clone(&tail);
        // Ends at EOF, which comes when the process exits.
        let reader = thread::spawn(move || {
            let mut stderr = BufReader::with_capacity(256 * 1024, stderr);
            let mut line = Vec::with_capacity(256);
            loop {
                line.clear();
                match stderr.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if let Some(ev) = parse_line(text, Instant::now()) {
                    // The receiver may be gone while the process drains: fine.
                    let _ = tx.send(ev);
                }
                if let Ok(mut t) = tail2.lock() {
                    // Reuse the oldest line's allocation: servers may log a
                    // line per request, and this thread shares the CPUs.
                    let mut kept = if t.len() == TAIL {
                        t.pop_front().unwrap_or_default()
                    } else {
                        String::new()
                    };
                    kept.clear();
                    kept.push_str(text);
                    t.push_back(kept);
                }
            }
        });
        let mut proc = ServerProc {
            name: name.to_string(),
            child,
            stdin,
            stop,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            events,
            tail,
            reader: Some(reader),
            exit: None,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match proc.events.recv_timeout(left) {
                Ok(Event::Listening(addr)) => {
                    proc.addr = addr;
                    return Ok(proc);
                }
                Ok(Event::Sweep(_)) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{name}: no listening line within {timeout:?}; stderr: {}",
                        proc.tail()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    proc.exit = proc.child.wait().ok();
                    let status = proc.exit.map(|s| s.to_string()).unwrap_or_default();
                    return Err(format!(
                        "{name} exited ({status}) before listening; stderr: {}",
                        proc.tail()
                    ));
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its threads now (`Threads:` of `/proc/PID/status`).
    pub fn threads(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        let threads = status.ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        });
        threads.unwrap_or(0)
    }

    /// The last lines it wrote to stderr, joined.
    pub fn tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }

    /// Resident memory in bytes (VmRSS).
    pub fn rss(&self) -> Result<u64, String> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        parse_rss(&status).ok_or_else(|| format!("{path}: no VmRSS line"))
    }

    /// Drops sweep lines seen so far.
    pub fn drain_sweeps(&self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Waits until `deadline` for the next sweep line.
    pub fn next_sweep(&self, deadline: Instant) -> Option<Sweep> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(Event::Sweep(s)) => return Some(s),
                Ok(Event::Listening(_)) => {}
                Err(_) => return None,
            }
        }
    }

    /// Asks the process to exit, waits for it (killing it after
    /// `STOP_TIMEOUT`) and returns how it exited.
    pub fn stop(mut self) -> Result<ExitStatus, String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<ExitStatus, String> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        match self.stop {
            Stop::CloseStdin => drop(self.stdin.take()),
            Stop::Term => {
                let sent = Command::new("kill")
                    .args(["-TERM", &self.pid().to_string()])
                    .stderr(Stdio::null())
                    .status();
                if !sent.is_ok_and(|s| s.success()) {
                    let _ = self.child.kill();
                }
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let result = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break Err(format!(
                        "{} did not exit within {STOP_TIMEOUT:?}; killed",
                        self.name
                    ));
                }
                Err(e) => break Err(format!("{}: wait: {e}", self.name)),
            }
        };
        if let Ok(status) = result {
            self.exit = Some(status);
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        result
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn parse_line(line: &str, now: Instant) -> Option<Event> {
    if let Some(i) = line.find("listening on ") {
        let addr = line[i + "listening on ".len()..].trim();
        return addr.parse().ok().map(Event::Listening);
    }
    let i = line.find("sweep: ")?;
    parse_sweep(&line[i + "sweep: ".len()..], now).map(Event::Sweep)
}

/// Parses `checked N instances in X ms (longest lock hold Y us), removed R, down D`.
fn parse_sweep(text: &str, at: Instant) -> Option<Sweep> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .collect();
    let after = |key: &str| -> Option<usize> { Some(words.iter().position(|w| *w == key)? + 1) };
    let num = |i: usize| -> Option<f64> { words.get(i)?.parse().ok() };
    // A duration and its unit, converted to the unit `unit_ns` long.
    let duration = |i: usize, unit_ns: f64| -> Option<f64> {
        let v = num(i)?;
        let ns = match *words.get(i + 1)? {
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        Some(v * ns / unit_ns)
    };
    Some(Sweep {
        checked: num(after("checked")?)? as u64,
        ms: duration(after("in")?, 1e6)?,
        lock_us: duration(after("hold")?, 1e3)?,
        removed: num(after("removed")?)? as u64,
        down: num(after("down")?)? as u64,
        at,
    })
}

/// Raises this process's soft limit on open files to the hard limit, and
/// returns the limit.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, raised);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// `program` on PATH, if there.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// CPU time (user + system, all threads) a process has used, in seconds;
/// `pid` None is this process.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_cpu(&std::fs::read_to_string(path).ok()?)
}

/// Fields 14 and 15 of `/proc/PID/stat` (utime, stime), in clock ticks of
/// 1/100 s (USER_HZ, 100 on every Linux this runs on).
fn parse_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        let now = Instant::now();
        match parse_line("2026/11/28 21:00:00 listening on 127.0.0.1:41234", now) {
            Some(Event::Listening(a)) => assert_eq!(a, SocketAddr::from(([127, 0, 0, 1], 41234))),
            _ => panic!("not parsed"),
        }
        assert!(parse_line("2026/11/28 21:00:00 listening on nowhere", now).is_none());
        assert!(parse_line("2026/11/28 21:00:00 registered app-1/i-1", now).is_none());
    }

    #[track_caller]
    fn check_sweep(line: &str, expected: Option<(u64, f64, f64, u64, u64)>) {
        let now = Instant::now();
        let got = parse_sweep(line, now).map(|s| (s.checked, s.ms, s.lock_us, s.removed, s.down));
        assert_eq!(got, expected);
    }

    #[test]
    fn sweep_lines() {
        check_sweep(
            "checked 1000000 instances in 41 ms (longest lock hold 950 us), removed 0, down 12",
            Some((1_000_000, 41.0, 950.0, 0, 12)),
        );
        check_sweep(
            "checked 3 instances in 0.25 ms (longest lock hold 12.5 µs), removed 1, down 2",
            Some((3, 0.25, 12.5, 1, 2)),
        );
        check_sweep(
            "checked 3 instances in 1.5 s (longest lock hold 2 ms), removed 1, down 2",
            Some((3, 1500.0, 2000.0, 1, 2)),
        );
        check_sweep("checked many instances", None);
        assert!(matches!(
            parse_line("2026/11/28 21:00:00 sweep: checked 5 instances in 1 ms (longest lock hold 3 us), removed 0, down 0", Instant::now()),
            Some(Event::Sweep(Sweep { checked: 5, .. }))
        ));
    }

    #[test]
    fn cpu() {
        let stat = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        assert_eq!(parse_cpu("42 (x) S 1"), None);
        assert!(cpu_secs(None).is_some());
    }

    #[test]
    fn rss() {
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t    1234 kB\nVmData: 1 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_rss("Name:\tx\n"), None);
    }
}
