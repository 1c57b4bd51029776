use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// An instance's metadata: string keys to string values, such as
/// `zone = eu-1` or `version = 1.4.2` (see [`Instance::metadata`]).
pub type Metadata = BTreeMap<String, String>;

/// An application: a named group of instances, e.g. every copy of `web`.
///
/// Serializes to and from the registry's JSON shape
/// `{"name": "web", "instances": [...]}`; a missing or `null` `instances`
/// (how the original server sends an empty list) reads as an empty list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// The application's name, unique in the registry.
    pub name: String,
    /// The instances registered under it, in the order the registry sent them.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub instances: Vec<Instance>,
}

impl Application {
    /// An application with no instances, e.g. to name an application the
    /// program already knows exists.
    pub fn new(name: impl Into<String>) -> Application {
        Application {
            name: name.into(),
            instances: Vec::new(),
        }
    }

    /// The instance with this id, if the application has one.
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// Copies of the instances whose status is [`Status::Up`]: the ones to
    /// send traffic to.
    ///
    /// They are copies so that a fresh read can be kept in one line:
    ///
    /// ```no_run
    /// # let client = registro_client::Client::new("http://localhost:8080/registro");
    /// let up = client.app("web")?.available_instances();
    /// # Ok::<(), registro_client::Error>(())
    /// ```
    ///
    /// [`Application::available`] borrows them instead.
    pub fn available_instances(&self) -> Vec<Instance> {
        self.available().cloned().collect()
    }

    /// The instances whose status is [`Status::Up`], borrowed.
    pub fn available(&self) -> impl Iterator<Item = &Instance> + '_ {
        self.instances.iter().filter(|i| i.status == Status::Up)
    }

    /// The application with only the instances of these statuses.
    pub fn with_status(mut self, statuses: &[Status]) -> Application {
        self.instances.retain(|i| statuses.contains(&i.status));
        self
    }

    /// Whether `other` lists the same instances with the same ids,
    /// addresses, statuses and metadata, in any order: whether anything but
    /// `lastRenewal` differs, which is what a watch reports.
    pub fn same_view(&self, other: &Application) -> bool {
        fn key(app: &Application) -> Vec<(&str, &str, u16, Status, &Metadata)> {
            let mut all: Vec<_> = app
                .instances
                .iter()
                .map(|i| (i.id.as_str(), i.ip.as_str(), i.port, i.status, &i.metadata))
                .collect();
            all.sort_unstable_by(|a, b| a.0.cmp(b.0));
            all
        }
        self.name == other.name && key(self) == key(other)
    }
}

/// `web: 3 instances (2 up, 1 down)`: the name, then how many instances
/// in each status (`up`, `down`, `starting`, `out-of-service`, those with
/// any); `web: no instances`. `{:#}` lists the instances too, one a line:
///
/// ```text
/// web: 2 instances (1 up, 1 down)
///   web-1 at 10.0.0.7:8080 (up)
///   web-2 at 10.0.0.8:8080 (down)
/// ```
impl std::fmt::Display for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.instances.len();
        match n {
            0 => return write!(f, "{}: no instances", self.name),
            1 => write!(f, "{}: 1 instance (", self.name)?,
            _ => write!(f, "{}: {n} instances (", self.name)?,
        }
        let mut first = true;
        for status in [
            Status::Up,
            Status::Down,
            Status::Starting,
            Status::OutOfService,
        ] {
            let count = self.instances.iter().filter(|i| i.status == status).count();
            if count > 0 {
                if !first {
                    f.write_str(", ")?;
                }
                first = false;
                write!(f, "{count} {status}")?;
            }
        }
        f.write_str(")")?;
        if f.alternate() {
            for inst in &self.instances {
                write!(f, "\n  {inst}")?;
            }
        }
        Ok(())
    }
}

/// One running copy of an application, reachable at `ip:port`.
///
/// Serializes to and from the registry's JSON shape
/// `{"id": "web-1", "ip": "10.0.0.7", "port": 8080, "status": "up", "lastRenewal": 1795890765}`,
/// with `"metadata": {...}` when there is any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The instance's id, unique within its application.
    pub id: String,
    /// The address other services should use to reach it.
    pub ip: String,
    /// The port other services should use to reach it.
    pub port: u16,
    /// Its state as the registry last reported it.
    pub status: Status,
    /// When the registry last heard from it (registration, heartbeat or
    /// deregistration), in whole Unix seconds.
    #[serde(rename = "lastRenewal", default)]
    pub last_renewal: i64,
    /// What the instance said about itself when it registered (e.g.
    /// `zone`, `version`); empty when it said nothing, and always empty
    /// from a registry without metadata support (the original Go server).
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub metadata: Metadata,
}

impl Instance {
    /// An instance in [`Status::Starting`], as a fresh registration creates
    /// it, with `last_renewal` 0; e.g. to name an instance the program
    /// already knows is registered.
    pub fn new(id: impl Into<String>, ip: impl Into<String>, port: u16) -> Instance {
        Instance {
            id: id.into(),
            ip: ip.into(),
            port,
            status: Status::Starting,
            last_renewal: 0,
            metadata: Metadata::new(),
        }
    }

    /// The instance with one more metadata entry, e.g.
    /// `Instance::new("web-1", "10.0.0.7", 8080).with_metadata("zone", "eu-1")`.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Instance {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The value of a metadata entry, if the instance has it.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }
}

/// `web-1 at 10.0.0.7:8080 (up)`; an IPv6 address in brackets:
/// `web-2 at [::1]:8080 (starting)`.
impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ip.contains(':') && !self.ip.starts_with('[') {
            write!(
                f,
                "{} at [{}]:{} ({})",
                self.id, self.ip, self.port, self.status
            )
        } else {
            write!(
                f,
                "{} at {}:{} ({})",
                self.id, self.ip, self.port, self.status
            )
        }
    }
}

/// The state of an [`Instance`], as the registry reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Status {
    /// Registered, no heartbeat yet (wire name `starting`).
    #[serde(rename = "starting")]
    Starting,
    /// Heartbeating (wire name `up`).
    #[serde(rename = "up")]
    Up,
    /// Was up, but has not sent a heartbeat for longer than the registry's
    /// down-after period (its `--down-after` flag; 90 seconds by default)
    /// (wire name `down`).
    #[serde(rename = "down")]
    Down,
    /// Deliberately taken out of service by a deregistration; heartbeats are
    /// refused (wire name `out-of-service`).
    #[serde(rename = "out-of-service")]
    OutOfService,
}

impl Status {
    /// The status's name on the wire, e.g. `"out-of-service"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Up => "up",
            Status::Down => "down",
            Status::OutOfService => "out-of-service",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A missing or `null` field as its empty value.
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_app(json: &str, expected: Result<Application, ()>) {
        let got = serde_json::from_str::<Application>(json).map_err(|_| ());
        assert_eq!(got, expected, "{json}");
    }

    fn inst(id: &str, status: Status, last_renewal: i64) -> Instance {
        Instance {
            status,
            last_renewal,
            ..Instance::new(id, "10.0.0.7", 8080)
        }
    }

    #[test]
    fn displays_an_application_by_its_counts() {
        let mut app = Application::new("web");
        assert_eq!(app.to_string(), "web: no instances");
        assert_eq!(format!("{app:#}"), "web: no instances");
        app.instances.push(inst("web-1", Status::Up, 1));
        assert_eq!(app.to_string(), "web: 1 instance (1 up)");
        app.instances.push(inst("web-2", Status::Down, 1));
        app.instances.push(inst("web-3", Status::OutOfService, 1));
        app.instances.push(inst("web-4", Status::Up, 1));
        assert_eq!(
            app.to_string(),
            "web: 4 instances (2 up, 1 down, 1 out-of-service)"
        );
        app.instances.truncate(2);
        assert_eq!(
            format!("{app:#}"),
            "web: 2 instances (1 up, 1 down)\n  web-1 at 10.0.0.7:8080 (up)\n  web-2 at 10.0.0.7:8080 (down)"
        );
    }

    #[test]
    fn decodes_wire_shapes() {
        check_app(r#"{"name":"web"}"#, Ok(Application::new("web")));
        check_app(
            r#"{"name":"web","instances":null}"#,
            Ok(Application::new("web")),
        );
        check_app(
            r#"{"name":"web","instances":[]}"#,
            Ok(Application::new("web")),
        );
        check_app(
            r#"{"name":"web","instances":[{"id":"a","ip":"10.0.0.7","port":8080,"status":"up","lastRenewal":17}],"extra":1}"#,
            Ok(Application {
                name: "web".into(),
                instances: vec![inst("a", Status::Up, 17)],
            }),
        );
        for (wire, status) in [
            ("starting", Status::Starting),
            ("up", Status::Up),
            ("down", Status::Down),
            ("out-of-service", Status::OutOfService),
        ] {
            let json = format!(
                r#"{{"name":"w","instances":[{{"id":"a","ip":"10.0.0.7","port":8080,"status":"{wire}","lastRenewal":5}}]}}"#
            );
            check_app(
                &json,
                Ok(Application {
                    name: "w".into(),
                    instances: vec![inst("a", status, 5)],
                }),
            );
            assert_eq!(status.to_string(), wire);
            assert_eq!(
                serde_json::to_string(&status).ok(),
                Some(format!("\"{wire}\""))
            );
        }
        check_app(r#"{"instances":[]}"#, Err(()));
        check_app(
            r#"{"name":"w","instances":[{"id":"a","ip":"x","port":8080,"status":"sleeping","lastRenewal":5}]}"#,
            Err(()),
        );
        check_app(
            r#"{"name":"w","instances":[{"id":"a","ip":"x","port":70000,"status":"up","lastRenewal":5}]}"#,
            Err(()),
        );
    }

    #[test]
    fn encodes_wire_names() {
        let json = serde_json::to_value(inst("a", Status::OutOfService, 9)).ok();
        assert_eq!(
            json,
            Some(serde_json::json!({
                "id": "a", "ip": "10.0.0.7", "port": 8080,
                "status": "out-of-service", "lastRenewal": 9
            }))
        );
    }

    #[test]
    fn displays_instances() {
        assert_eq!(
            inst("web-1", Status::Up, 1).to_string(),
            "web-1 at 10.0.0.7:8080 (up)"
        );
        let v6 = Instance::new("web-2", "::1", 8080);
        assert_eq!(v6.to_string(), "web-2 at [::1]:8080 (starting)");
        let bracketed = Instance::new("web-3", "[::1]", 80);
        assert_eq!(bracketed.to_string(), "web-3 at [::1]:80 (starting)");
    }

    #[test]
    fn finds_instances() {
        let app = Application {
            name: "web".into(),
            instances: vec![
                inst("a", Status::Up, 1),
                inst("b", Status::Down, 1),
                inst("c", Status::Up, 1),
                inst("d", Status::OutOfService, 1),
                inst("e", Status::Starting, 1),
            ],
        };
        assert_eq!(app.instance("b").map(|i| i.status), Some(Status::Down));
        assert_eq!(app.instance("z"), None);
        let up: Vec<&str> = app.available().map(|i| i.id.as_str()).collect();
        assert_eq!(up, ["a", "c"]);
        assert!(Application::new("x").available_instances().is_empty());
    }
}
