use serde::{Deserialize, Deserializer, Serialize};

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

    /// The instances whose status is [`Status::Up`]: the ones to send traffic to.
    pub fn available_instances(&self) -> Vec<&Instance> {
        self.instances
            .iter()
            .filter(|i| i.status == Status::Up)
            .collect()
    }
}

/// One running copy of an application, reachable at `ip:port`.
///
/// Serializes to and from the registry's JSON shape
/// `{"id": "web-1", "ip": "10.0.0.7", "port": 8080, "status": "up", "lastRenewal": 1795890765}`.
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
    /// Was up, but has not sent a heartbeat for more than 90 seconds
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

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Instance>, D::Error> {
    Ok(Option::<Vec<Instance>>::deserialize(d)?.unwrap_or_default())
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
        let up: Vec<&str> = app
            .available_instances()
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(up, ["a", "c"]);
        assert!(Application::new("x").available_instances().is_empty());
    }
}
