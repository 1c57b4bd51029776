//! A real three-member etcd cluster on 127.0.0.1, started by a test and
//! stopped when it is dropped (a panicking test drops it too), and the
//! `registro` servers that keep their registry in it.
//!
//! Members run with a 25 ms heartbeat and a 250 ms election timeout, so that
//! an election after a kill takes well under a second; each has its own
//! ports and data directory under one temporary directory, removed on drop.
//! Where `setpriv` is installed a member also dies with the thread that
//! started it, so that not even a test process killed outright leaves one
//! behind.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, Proc};

/// How long a cluster, or a restarted member, may take to serve.
const READY: Duration = Duration::from_secs(30);

/// Whether etcd is installed. Missing, it fails the test under `CI=true`
/// and makes it print one SKIP line elsewhere (as `ops.rs` does for
/// Prometheus and Chromium).
pub fn installed(test: &str) -> bool {
    support::installed(
        &format!("etcd::{test}"),
        &["etcd"],
        "etcd-server etcd-client",
    )
}

/// `setpriv`, if it is installed and knows `--pdeathsig`.
fn pdeathsig() -> Option<PathBuf> {
    static SETPRIV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let setpriv = support::which("setpriv")?;
            let help = Command::new(&setpriv).arg("--help").output().ok()?;
            String::from_utf8_lossy(&help.stdout)
                .contains("--pdeathsig")
                .then_some(setpriv)
        })
        .clone()
}

/// A loopback port free a moment ago, below 32768: the kernel takes the
/// ports above for outgoing connections, so one of them could be taken
/// while a killed member is down, and its restart would fail.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let salt = u64::from(std::process::id()) << 20
        | std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    for _ in 0..1000 {
        let mut x = salt ^ NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        x ^= x >> 31;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 29;
        let port = 10_000 + (x % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below 32768")
}

/// An agent for etcd's gateway: every status handed back, short timeouts.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into()
}

/// `POST http://127.0.0.1:PORT/v3/PATH` with a JSON body: the answer's
/// status and JSON, or `None` when the member does not answer.
fn call(port: u16, path: &str, body: &Value) -> Option<(u16, Value)> {
    let mut r = agent()
        .post(format!("http://127.0.0.1:{port}/v3/{path}"))
        .send_json(body)
        .ok()?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// The last lines of its log.
    fn tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three etcd members on loopback; every member is killed on drop.
pub struct Cluster {
    root: PathBuf,
    members: Vec<Member>,
    initial: String,
}

impl Cluster {
    /// Starts three members and waits until the cluster commits a write.
    /// Ports are taken free a moment before etcd binds them, so a start that
    /// lost a port to another process is tried again with others.
    pub fn start(test: &str) -> Cluster {
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let root = std::env::temp_dir().join(format!(
                "registro-etcd-{test}-{}-{attempt}-{}",
                std::process::id(),
                free_port()
            ));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).expect("a temporary directory");
            let members: Vec<Member> = (1..=3)
                .map(|i| Member {
                    // Named after the test, so that a command aimed at
                    // another cluster's `m1` (such as `pkill -f 'name m1'`)
                    // does not stop this one's.
                    name: format!("{test}-m{i}"),
                    client: free_port(),
                    peer: free_port(),
                    dir: root.join(format!("m{i}")),
                    child: None,
                })
                .collect();
            let initial = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
                .collect::<Vec<_>>()
                .join(",");
            let mut cluster = Cluster {
                root,
                members,
                initial,
            };
            for i in 0..3 {
                cluster.spawn(i);
            }
            match cluster.wait_ready(READY) {
                Ok(()) => return cluster,
                Err(e) => failures.push(e),
            }
        }
        panic!("no etcd cluster started: {}", failures.join("\n---\n"));
    }

    fn spawn(&mut self, i: usize) {
        let token = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let m = &mut self.members[i];
        std::fs::create_dir_all(&m.dir).expect("member directory");
        let log = File::options()
            .create(true)
            .append(true)
            .open(m.log())
            .expect("member log");
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let data = m.dir.join("data");
        let mut command = match pdeathsig() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &token])
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .args(["--experimental-watch-progress-notify-interval", "1s"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().expect("spawn etcd");
        m.child = Some(child);
    }

    /// Waits until every running member answers and a write commits.
    fn wait_ready(&mut self, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        loop {
            for m in &mut self.members {
                if let Some(child) = m.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        m.child = None;
                        return Err(format!("etcd {} exited ({status}):\n{}", m.name, m.tail()));
                    }
                }
            }
            if self.healthy() {
                return Ok(());
            }
            if Instant::now() > end {
                let tails: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("{}:\n{}", m.name, m.tail()))
                    .collect();
                return Err(format!(
                    "etcd not ready within {deadline:?}:\n{}",
                    tails.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every running member answers its status with a leader, and a write
    /// through the first running one commits.
    fn healthy(&self) -> bool {
        let running: Vec<&Member> = self.members.iter().filter(|m| m.child.is_some()).collect();
        let led = running.iter().all(|m| {
            call(m.client, "maintenance/status", &serde_json::json!({}))
                .is_some_and(|(s, v)| s == 200 && v["leader"].as_str().is_some_and(|l| l != "0"))
        });
        led && running.first().is_some_and(|m| {
            // The key is outside every test's prefix.
            let put = serde_json::json!({"key": "X19yZWFkeV9f", "value": "MQ=="});
            call(m.client, "kv/put", &put).is_some_and(|(s, _)| s == 200)
        })
    }

    /// The client port of member `i`.
    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client
    }

    /// `etcd://127.0.0.1:C1,127.0.0.1:C2,127.0.0.1:C3`, for `--store`.
    pub fn store(&self) -> String {
        self.store_of(&[0, 1, 2])
    }

    /// `--store` naming only the members `which`.
    pub fn store_of(&self, which: &[usize]) -> String {
        let hosts: Vec<String> = which
            .iter()
            .map(|&i| format!("127.0.0.1:{}", self.members[i].client))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Compacts etcd's history up to its current revision (through the
    /// first running member), and returns that revision.
    pub fn compact(&self) -> u64 {
        let revision = self.revision();
        let body = serde_json::json!({"revision": revision.to_string(), "physical": true});
        let (code, answer) =
            call(self.running().client, "kv/compaction", &body).expect("compaction");
        assert_eq!(code, 200, "compaction: {answer}");
        revision
    }

    /// The index of the member that leads, once one does (asked of every
    /// running member; they must agree).
    pub fn leader(&self) -> usize {
        let end = Instant::now() + READY;
        loop {
            let mut ids = Vec::new();
            let mut leader = None;
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                if let Some((200, v)) = call(m.client, "maintenance/status", &serde_json::json!({}))
                {
                    let me = v["header"]["member_id"].as_str().map(String::from);
                    let led = v["leader"].as_str().map(String::from);
                    if me.is_some() && me == led {
                        leader = Some(i);
                    }
                    ids.push(led);
                }
            }
            let agreed = !ids.is_empty() && ids.windows(2).all(|w| w[0] == w[1]);
            if let (Some(i), true) = (leader, agreed) {
                return i;
            }
            assert!(Instant::now() < end, "no etcd leader within {READY:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first member that runs.
    fn running(&self) -> &Member {
        self.members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a running member")
    }

    /// etcd's current revision (asked of the first running member): it
    /// moves with every write.
    pub fn revision(&self) -> u64 {
        let m = self.running();
        let (_, status) =
            call(m.client, "maintenance/status", &serde_json::json!({})).expect("status");
        status["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {status}"))
    }

    /// How many leases etcd holds (asked of the first running member).
    pub fn leases(&self) -> usize {
        let m = self.running();
        let (code, answer) =
            call(m.client, "lease/leases", &serde_json::json!({})).expect("lease list");
        assert_eq!(code, 200, "lease list: {answer}");
        answer["leases"].as_array().map_or(0, Vec::len)
    }

    /// Member `i`'s log (its stderr).
    pub fn log(&self, i: usize) -> PathBuf {
        self.members[i].log()
    }

    /// SIGKILL of member `i` (it is waited for).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// SIGSTOP (`freeze`) or SIGCONT of member `i`: a member that hangs
    /// instead of refusing connections.
    pub fn freeze(&mut self, i: usize, freeze: bool) {
        let pid = self.members[i]
            .child
            .as_ref()
            .map(|c| c.id())
            .expect("a running member");
        let sig = if freeze { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// SIGKILL of every member.
    pub fn kill_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Starts member `i` again on its data directory, and waits until the
    /// cluster commits a write with it answering.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
        if let Err(e) = self.wait_ready(READY) {
            panic!("member {i} did not come back: {e}");
        }
    }

    /// Starts every stopped member again, and waits until they serve.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        if let Err(e) = self.wait_ready(READY) {
            panic!("the cluster did not come back: {e}");
        }
    }

    /// A `registro` server on this cluster under `prefix`, with `args` added.
    pub fn registro(&self, prefix: &str, args: &[&str]) -> Proc {
        let store = self.store();
        let mut all = vec!["--store", &store, "--etcd-prefix", prefix];
        all.extend_from_slice(args);
        let started = std::panic::catch_unwind(|| Proc::start(&all));
        started.unwrap_or_else(|_| {
            // Say why: run it again, to read its exit code and stderr.
            let args: Vec<String> = all.iter().map(|s| s.to_string()).collect();
            let (code, stderr) = refused(&args);
            panic!("registro {args:?} did not start: exit {code:?}: {stderr}")
        })
    }

    /// The arguments that put a server on this cluster under `prefix`.
    pub fn args(&self, prefix: &str) -> Vec<String> {
        vec![
            "--store".into(),
            self.store(),
            "--etcd-prefix".into(),
            prefix.into(),
        ]
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The `registro` binary with `args`, expected to refuse to start: its exit
/// code and its stderr, within 20 s (killed and reported otherwise).
pub fn refused(args: &[String]) -> (Option<i32>, String) {
    let mut registro = Command::new(env!("CARGO_BIN_EXE_registro"));
    registro.args(["--addr", "127.0.0.1:0"]).args(args);
    let (status, _, stderr) = support::output_within(&mut registro, Duration::from_secs(20));
    let status = status.unwrap_or_else(|| {
        panic!("registro {args:?} still ran after 20 s; it should have exited 1")
    });
    (status.code(), stderr)
}
