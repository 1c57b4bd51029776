//! The keys under the prefix and their values' JSON.
//!
//! Keys under the prefix `P` (names and ids contain no `/`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `P periods` | `{"down_after_ms","evict_after_ms"}` | the first server (create-if-absent) |
//! | `P apps/APP` | [`AppValue`]: wall ms of its creation or last eviction | create app, evictor |
//! | `P inst/APP/ID` | [`InstValue`] | register, take out of service, mark `down` |
//! | `P alive/APP/ID` | [`Claim`]: the server that answers for its heartbeats | first heartbeat, release, claim, mark `down` (deletes it) |
//! | `P beat/APP/ID` | empty, on a lease of its own (TTL `--down-after`) | a server that sees a heartbeat of an instance another server claims |
//! | `P servers/SERVER` | [`ServerValue`], on that server's lease | each server, at start and again if etcd dropped it |
//! | `P removed` | empty | the evictor, with each app it removes |
//!
//! An instance reads `up` while its claim exists: heartbeats are counted
//! in the memory of the servers that receive them, and the claim names the
//! one that decides, from its memory, when the instance has been silent
//! for `--down-after` (see `liveness.rs`). When heartbeats reach other
//! servers too (a balancer spreading them), those tell it without a write:
//! the first of them puts the instance's beat key on a lease of its own,
//! and each keeps that lease alive on the heartbeats it answers; while the
//! beat key exists, some server has seen a heartbeat within its TTL. What a
//! reader sees depends on no key on a lease, so nothing etcd does to a
//! lease changes it; a server's own key is on a lease so that the others
//! learn when it is gone.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::registry::{Metadata, Periods};

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The registry's periods.
    Periods,
    /// The marker of app removals.
    Removed,
    /// An application.
    App(String),
    /// An instance's state.
    Inst(String, String),
    /// An instance's claim (it is `up` while this exists).
    Alive(String, String),
    /// An instance's beat: on a lease kept alive by the heartbeats of
    /// servers other than its claim's.
    Beat(String, String),
    /// A server of this registry, on its lease.
    Server(String),
}

impl Key {
    /// The bytes of this key under `prefix`.
    pub fn bytes(&self, prefix: &str) -> Vec<u8> {
        match self {
            Key::Periods => format!("{prefix}periods"),
            Key::Removed => format!("{prefix}removed"),
            Key::App(app) => format!("{prefix}apps/{app}"),
            Key::Inst(app, id) => format!("{prefix}inst/{app}/{id}"),
            Key::Alive(app, id) => format!("{prefix}alive/{app}/{id}"),
            Key::Beat(app, id) => format!("{prefix}beat/{app}/{id}"),
            Key::Server(id) => format!("{prefix}servers/{id}"),
        }
        .into_bytes()
    }

    /// Parses a key under `prefix`; `None` for a key of no meaning here.
    pub fn parse(prefix: &str, key: &[u8]) -> Option<Key> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
        let one = |s: &str| (!s.is_empty() && !s.contains('/')).then(|| s.to_string());
        let two = |s: &str| {
            let (app, id) = s.split_once('/')?;
            Some((one(app)?, one(id)?))
        };
        match rest {
            "periods" => Some(Key::Periods),
            "removed" => Some(Key::Removed),
            _ => {
                if let Some(app) = rest.strip_prefix("apps/") {
                    return one(app).map(Key::App);
                }
                if let Some(server) = rest.strip_prefix("servers/") {
                    return one(server).map(Key::Server);
                }
                if let Some((app, id)) = rest.strip_prefix("inst/").and_then(two) {
                    return Some(Key::Inst(app, id));
                }
                if let Some((app, id)) = rest.strip_prefix("beat/").and_then(two) {
                    return Some(Key::Beat(app, id));
                }
                let (app, id) = rest.strip_prefix("alive/").and_then(two)?;
                Some(Key::Alive(app, id))
            }
        }
    }
}

/// The periods as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPeriods {
    /// `--down-after` in milliseconds.
    pub down_after_ms: u64,
    /// `--evict-after` in milliseconds.
    pub evict_after_ms: u64,
}

impl From<Periods> for StoredPeriods {
    fn from(p: Periods) -> StoredPeriods {
        StoredPeriods {
            down_after_ms: p.down_after,
            evict_after_ms: p.evict_after,
        }
    }
}

/// The value of an app's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppValue {
    /// Wall ms of its creation or of the last eviction in it.
    pub since: u64,
    /// The change that wrote it (see [`InstValue::change`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub change: u64,
}

/// A stored status; an instance with a claim reads `up` whatever this is
/// (unless out of service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stored {
    /// Registered (reads `starting` without a claim).
    Starting,
    /// Written by an older version with a lease per instance: reads `down`
    /// without a claim.
    Up,
    /// Silent for `--down-after`: `renewed` estimates its last heartbeat.
    Down,
    /// Taken out of service.
    OutOfService,
}

/// The value of an instance's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstValue {
    /// Address.
    pub ip: String,
    /// Port.
    pub port: u16,
    /// Stored status.
    pub status: Stored,
    /// Metadata (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Arc<Metadata>>,
    /// Wall ms of the registration or the taking out of service (for
    /// `down`: its last heartbeat, as the server that marked it knew it).
    pub renewed: u64,
    /// For a write that changes nothing a reader sees (the same
    /// registration again, out of service again): the revision of the last
    /// visible change, which stays the instance's index.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vrev: i64,
    /// A number drawn for the change that wrote this value: when etcd's
    /// answer to a transaction is lost, the change finds its own value in
    /// the view and knows it was committed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub change: u64,
}

/// The value of an instance's claim: which server answers for its
/// heartbeats (decides, from its memory, when it has been silent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The server (its id in `servers/`).
    pub by: String,
    /// Wall ms of the heartbeat that made it `up`.
    pub at: u64,
    /// Its server has not seen a heartbeat for `--down-after` less the
    /// release time: another server that has takes the claim over, else
    /// it is marked `down` (see `liveness.rs`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub released: bool,
    /// See [`InstValue::change`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub change: u64,
}

impl Claim {
    /// A claim as read: one that cannot be read (an older version's empty
    /// value) names no server, so it is taken over or marked `down` as one
    /// whose server is gone.
    pub fn read(value: &[u8]) -> Claim {
        serde_json::from_slice(value).unwrap_or(Claim {
            by: String::new(),
            at: 0,
            released: false,
            change: 0,
        })
    }
}

/// The value of a server's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerValue {
    /// Wall ms of its start.
    pub since: u64,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// A value's JSON.
pub fn json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/r/";

    #[test]
    fn keys_round_trip_and_foreign_keys_are_ignored() {
        for key in [
            Key::Periods,
            Key::Removed,
            Key::App("web".into()),
            Key::Inst("web".into(), "a".into()),
            Key::Alive("web".into(), "a".into()),
            Key::Beat("web".into(), "a".into()),
            Key::Server("5f3a".into()),
        ] {
            assert_eq!(Key::parse(P, &key.bytes(P)), Some(key));
        }
        for bad in [
            "/other/apps/web",
            "/r/apps/",
            "/r/inst/web",
            "/r/inst/web/a/b",
            "/r/servers/",
            "/r/servers/a/b",
            "/r/x",
        ] {
            assert_eq!(Key::parse(P, bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn values_leave_defaults_out_and_an_unreadable_claim_names_no_server() {
        let claim = Claim {
            by: "s1".into(),
            at: 7,
            released: false,
            change: 0,
        };
        assert_eq!(json(&claim), br#"{"by":"s1","at":7}"#.to_vec());
        assert_eq!(Claim::read(&json(&claim)), claim);
        assert_eq!(Claim::read(b"").by, "");
        let app = AppValue {
            since: 5,
            change: 0,
        };
        assert_eq!(json(&app), br#"{"since":5}"#.to_vec());
    }
}
