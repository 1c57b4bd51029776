//! The history of a chaos run, Jepsen-style: every operation a client sent
//! (when it was sent, when it was answered, by which server, with what),
//! every fault the nemesis made (when it began, when it was healed), and
//! what the final reads of every server said. The checks (`checks.rs`) read
//! nothing else, so that they can be run on a history made by hand.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// Microseconds since the start of the run.
pub type Micros = u64;

/// The instance `n` of the app [`APP`]: its id and the address it registers.
pub fn id(n: u32) -> String {
    format!("i-{n}")
}

pub fn ip(n: u32) -> String {
    format!("10.0.{}.{}", n / 256, n % 256)
}

pub fn port(n: u32) -> u16 {
    1000 + (n % 60_000) as u16
}

/// The app every instance is registered in.
pub const APP: &str = "chaos";

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    CreateApp(String),
    Register(u32),
    /// The `beat`th heartbeat of instance `n` (its attempts share it).
    Heartbeat(u32, u64),
    OutOfService(u32),
    /// `GET /registro/1.0/apps/chaos` (`all`: `GET /registro/1.0/apps`).
    Read {
        all: bool,
    },
}

/// An instance's status as a read answered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum St {
    Starting,
    Up,
    Down,
    OutOfService,
    /// Anything else, or at another address than it registered with.
    Wrong,
}

impl St {
    pub fn parse(status: &str) -> St {
        match status {
            "starting" => St::Starting,
            "up" => St::Up,
            "down" => St::Down,
            "out-of-service" => St::OutOfService,
            _ => St::Wrong,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            St::Starting => "starting",
            St::Up => "up",
            St::Down => "down",
            St::OutOfService => "out-of-service",
            St::Wrong => "wrong",
        }
    }
}

/// What a read answered 200 with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// `Registro-Index`.
    pub index: Option<u64>,
    /// `Registro-Last-Contact`, if the server sent it.
    pub last_contact: Option<u64>,
    /// The instances of [`APP`] (`i-N` ids), sorted by `n`.
    pub instances: Vec<(u32, St)>,
    /// The names of every app (reads of `/apps` only).
    pub apps: Vec<String>,
}

impl View {
    /// The view of `GET /apps/chaos` (`all`: of `GET /apps`) from its JSON.
    pub fn parse(body: &Value, all: bool) -> View {
        let (app, apps) = if all {
            let list = body["applications"].as_array().cloned().unwrap_or_default();
            let names = list
                .iter()
                .filter_map(|a| a["name"].as_str().map(String::from))
                .collect();
            let app = list
                .into_iter()
                .find(|a| a["name"] == APP)
                .unwrap_or(Value::Null);
            (app, names)
        } else {
            (body.clone(), Vec::new())
        };
        let mut instances: Vec<(u32, St)> = app["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let n: u32 = i["id"].as_str()?.strip_prefix("i-")?.parse().ok()?;
                let at_home = i["ip"].as_str() == Some(&ip(n))
                    && i["port"].as_u64() == Some(u64::from(port(n)));
                let st = St::parse(i["status"].as_str().unwrap_or(""));
                Some((n, if at_home { st } else { St::Wrong }))
            })
            .collect();
        instances.sort_unstable();
        View {
            index: None,
            last_contact: None,
            instances,
            apps,
        }
    }

    pub fn status(&self, n: u32) -> Option<St> {
        self.instances
            .binary_search_by_key(&n, |&(m, _)| m)
            .ok()
            .map(|i| self.instances[i].1)
    }

    /// The same registry, whatever the index and the last contact.
    pub fn same(&self, other: &View) -> bool {
        self.instances == other.instances && self.apps == other.apps
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer (and its JSON error, if it had one).
    Status(u16, Option<String>),
    /// No answer: refused, timed out, reset...
    Failed(String),
}

impl Outcome {
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Status(s, _) => Some(*s),
            Outcome::Failed(_) => None,
        }
    }

    /// An answer that a client retries on another server.
    pub fn fails_over(&self) -> bool {
        matches!(self, Outcome::Failed(_) | Outcome::Status(503, _))
    }

    pub fn short(&self) -> String {
        match self {
            Outcome::Status(s, _) => s.to_string(),
            Outcome::Failed(why) => why.clone(),
        }
    }
}

/// One attempt of one operation on one server.
#[derive(Clone, Debug)]
pub struct Event {
    /// Who sent it: `hb-N`, `reader-K`, `churn`, `setup`, `final`.
    pub process: String,
    pub op: Op,
    /// 0 on the first server tried, 1 and 2 after failing over.
    pub attempt: u8,
    pub server: usize,
    pub sent: Micros,
    pub answered: Micros,
    pub outcome: Outcome,
    /// A read's view, when it answered 200.
    pub view: Option<View>,
}

impl Event {
    pub fn ok(&self, status: u16) -> bool {
        self.outcome.status() == Some(status)
    }

    pub fn json(&self) -> Value {
        let (op, n) = match &self.op {
            Op::CreateApp(name) => ("create-app", json!(name)),
            Op::Register(n) => ("register", json!(id(*n))),
            Op::Heartbeat(n, beat) => ("heartbeat", json!([id(*n), beat])),
            Op::OutOfService(n) => ("out-of-service", json!(id(*n))),
            Op::Read { all: false } => ("read", json!(APP)),
            Op::Read { all: true } => ("read", json!("*")),
        };
        let mut v = json!({
            "process": self.process, "op": op, "of": n, "attempt": self.attempt,
            "server": self.server, "sent_us": self.sent, "answered_us": self.answered,
        });
        match &self.outcome {
            Outcome::Status(s, why) => {
                v["status"] = json!(s);
                if let Some(why) = why {
                    v["error"] = json!(why);
                }
            }
            Outcome::Failed(why) => v["failed"] = json!(why),
        }
        if let Some(view) = &self.view {
            v["index"] = json!(view.index);
            v["last_contact"] = json!(view.last_contact);
            let statuses: serde_json::Map<String, Value> = view
                .instances
                .iter()
                .map(|&(n, st)| (id(n), json!(st.name())))
                .collect();
            v["instances"] = Value::Object(statuses);
            if !view.apps.is_empty() {
                v["apps"] = json!(view.apps);
            }
        }
        v
    }
}

/// One fault: what, when it began, when it was healed (the process resumed
/// or serving again).
#[derive(Clone, Debug)]
pub struct Fault {
    pub what: String,
    pub began: Micros,
    pub healed: Micros,
}

/// The end of the run: when changes stopped (`quiet`), and when the servers
/// last answered one same view (`None`: they never did).
#[derive(Clone, Debug, Default)]
pub struct End {
    pub quiet: Micros,
    pub equal_at: Option<Micros>,
}

/// Everything the checks read.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    pub faults: Vec<Fault>,
    pub end: End,
    /// `--down-after`.
    pub down_after: Micros,
    /// How many servers served.
    pub servers: usize,
}

impl History {
    /// The history as JSON lines: faults first, then events by send time.
    pub fn lines(&self) -> String {
        let mut out = String::new();
        for f in &self.faults {
            let line = json!({"process": "nemesis", "fault": f.what, "began_us": f.began, "healed_us": f.healed});
            let _ = writeln!(out, "{line}");
        }
        let mut events: Vec<&Event> = self.events.iter().collect();
        events.sort_by_key(|e| e.sent);
        for e in events {
            let _ = writeln!(out, "{}", e.json());
        }
        let end =
            json!({"process": "end", "quiet_us": self.end.quiet, "equal_us": self.end.equal_at});
        let _ = writeln!(out, "{end}");
        out
    }
}

/// `+12.345s`: a time of the run, for messages.
pub fn at(t: Micros) -> String {
    format!("+{:.3}s", t as f64 / 1e6)
}
