use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;

use crate::error::Error;
use crate::heartbeat::Heartbeat;
use crate::types::{Application, Instance};

/// How long a request may take, end to end, unless the builder says otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`Client::start_heartbeat`] renews: the registry's contract.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The most of a successful answer's body the client reads (an application
/// list of thousands of instances fits easily).
const BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// The most of an error answer's body the client reads for its message.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

/// A handle on one registry, for registering, renewing, deregistering and
/// discovering instances.
///
/// It holds a pool of keep-alive connections; clones are cheap and share it.
/// Every request gives up after the client's timeout (5 seconds unless
/// [`ClientBuilder::timeout`] says otherwise).
#[derive(Debug, Clone)]
pub struct Client {
    /// The root URL with `/1.0` appended and no trailing slash.
    base: String,
    agent: ureq::Agent,
    timeout: Duration,
}

/// Configures a [`Client`]: `Client::builder(url).timeout(d).build()`.
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    root: String,
    timeout: Duration,
}

impl ClientBuilder {
    /// The most a request may take, end to end: connecting, sending and
    /// reading the whole answer. Defaults to 5 seconds.
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// The client.
    pub fn build(self) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(self.timeout))
            .user_agent(concat!("registro-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let mut base = self.root.trim_end_matches('/').to_owned();
        base.push_str("/1.0");
        Client {
            base,
            agent,
            timeout: self.timeout,
        }
    }
}

impl Client {
    /// A client for the registry at `root`, e.g.
    /// `"http://localhost:8080/registro"` (the client appends `/1.0` and the
    /// route), with the default 5-second timeout.
    ///
    /// The URL is not checked here: a bad one makes every request fail with
    /// [`Error::Transport`].
    pub fn new(root: &str) -> Client {
        Client::builder(root).build()
    }

    /// A builder for a client of the registry at `root`, to set its timeout.
    pub fn builder(root: &str) -> ClientBuilder {
        ClientBuilder {
            root: root.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The most a request may take, end to end.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Registers an instance of an application, creating the application
    /// first when the registry does not know it yet; returns both, the
    /// application including the new instance.
    ///
    /// Another process creating the same application at the same moment is
    /// not an error. The instance is registered as
    /// [`Status::Starting`](crate::Status::Starting); start a heartbeat
    /// ([`Client::start_heartbeat`]) to bring it up and keep it up.
    pub fn register_service(
        &self,
        id: &str,
        app: &str,
        ip: &str,
        port: u16,
    ) -> Result<(Application, Instance), Error> {
        let mut application = match self.app(app) {
            Ok(found) => found,
            Err(e) if e.is_not_found() => self.ensure_app(app)?,
            Err(e) => return Err(e),
        };
        let instance = self.new_instance(&application, id, ip, port)?;
        application.instances.retain(|i| i.id != id);
        application.instances.push(instance.clone());
        Ok((application, instance))
    }

    /// Creates the application unless it exists: a 409 (someone else created
    /// it) is success.
    pub(crate) fn ensure_app(&self, name: &str) -> Result<Application, Error> {
        match self.new_app(name) {
            Err(e) if e.status() == Some(409) => Ok(Application::new(name)),
            other => other,
        }
    }

    /// Every application the registry knows, with its instances.
    pub fn apps(&self) -> Result<Vec<Application>, Error> {
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            applications: Option<Vec<Application>>,
        }
        let list: List = self.get(&self.url(&["apps"]))?;
        Ok(list.applications.unwrap_or_default())
    }

    /// The application of this name, with its instances; an unknown name is
    /// an [`Error::Status`] with code 404.
    pub fn app(&self, name: &str) -> Result<Application, Error> {
        self.get(&self.url(&["apps", name]))
    }

    /// One instance of an application; an unknown application or instance is
    /// an [`Error::Status`] with code 404.
    pub fn instance(&self, app: &str, id: &str) -> Result<Instance, Error> {
        self.get(&self.url(&["apps", app, id]))
    }

    /// Refreshes `app` (its instances and their statuses) from the registry.
    pub fn update_application(&self, app: &mut Application) -> Result<(), Error> {
        *app = self.app(&app.name)?;
        Ok(())
    }

    /// Creates an application with no instances; one of that name existing
    /// already is an [`Error::Status`] with code 409.
    pub fn new_app(&self, name: &str) -> Result<Application, Error> {
        let body = json!({ "name": name });
        let answer = self.send(Method::Post(body), &self.url(&["apps"]), 201)?;
        // This project's server answers with the application; the original,
        // with an empty body.
        Ok(serde_json::from_slice(&answer).unwrap_or_else(|_| Application::new(name)))
    }

    /// Registers an instance of `app`, reachable at `ip:port`; returns it as
    /// the registry records it: [`Status::Starting`](crate::Status::Starting),
    /// renewed now (by the registry's clock when its answer says, else by
    /// this machine's).
    ///
    /// An unknown application is an [`Error::Status`] with code 404; an
    /// instance of that id existing already may be one with code 409 (this
    /// project's server accepts a re-registration at the same address).
    pub fn new_instance(
        &self,
        app: &Application,
        id: &str,
        ip: &str,
        port: u16,
    ) -> Result<Instance, Error> {
        let body = json!({ "id": id, "ip": ip, "port": port });
        let answer = self.send(Method::Post(body), &self.url(&["apps", &app.name]), 201)?;
        // This project's server answers with the instance; the original, with
        // an empty body.
        Ok(
            serde_json::from_slice(&answer).unwrap_or_else(|_| Instance {
                last_renewal: unix_now(),
                ..Instance::new(id, ip, port)
            }),
        )
    }

    /// Sends one heartbeat for `inst`, which makes it [`Status::Up`](crate::Status::Up).
    ///
    /// An instance the registry does not know (it restarted, or evicted it) is
    /// an [`Error::Status`] with code 404; one taken out of service, 403.
    pub fn renew_instance(&self, app: &Application, inst: &Instance) -> Result<(), Error> {
        self.send(Method::Put, &self.url(&["apps", &app.name, &inst.id]), 204)?;
        Ok(())
    }

    /// Deregisters `inst`: the registry marks it
    /// [`Status::OutOfService`](crate::Status::OutOfService) and refuses its
    /// heartbeats; it is removed after the registry's eviction period.
    pub fn delete_instance(&self, app: &Application, inst: &Instance) -> Result<(), Error> {
        self.send(
            Method::Delete,
            &self.url(&["apps", &app.name, &inst.id]),
            204,
        )?;
        Ok(())
    }

    /// Starts renewing `inst` every 30 seconds on its own thread (at once,
    /// then every interval with a little jitter); see [`Heartbeat`].
    pub fn start_heartbeat(&self, app: &Application, inst: &Instance) -> Heartbeat {
        self.start_heartbeat_every(app, inst, DEFAULT_INTERVAL)
    }

    /// Starts renewing `inst` every `interval` on its own thread; see
    /// [`Heartbeat`]. Intervals under a millisecond are raised to one.
    pub fn start_heartbeat_every(
        &self,
        app: &Application,
        inst: &Instance,
        interval: Duration,
    ) -> Heartbeat {
        Heartbeat::start(self.clone(), &app.name, inst, interval)
    }

    /// The URL of a route: the base followed by each segment, percent-encoded.
    fn url(&self, segments: &[&str]) -> String {
        let mut url = self.base.clone();
        for segment in segments {
            url.push('/');
            push_encoded(&mut url, segment);
        }
        url
    }

    fn get<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, Error> {
        let body = self.send(Method::Get, url, 200)?;
        // Parsed whatever the Content-Type: the original server says text/plain.
        serde_json::from_slice(&body).map_err(Error::invalid_response)
    }

    /// Sends a request; returns the body of an answer with status `expect`,
    /// and an error for anything else.
    fn send(&self, method: Method, url: &str, expect: u16) -> Result<Vec<u8>, Error> {
        let sent = match method {
            Method::Get => self.agent.get(url).call(),
            Method::Post(body) => self.agent.post(url).send_json(body),
            Method::Put => self.agent.put(url).send_empty(),
            Method::Delete => self.agent.delete(url).call(),
        };
        let mut response = sent.map_err(|e| Error::from_ureq(e, self.timeout))?;
        let code = response.status().as_u16();
        if code == expect {
            // Read even an empty body in full, so the connection can be reused.
            return response
                .body_mut()
                .with_config()
                .limit(BODY_LIMIT)
                .read_to_vec()
                .map_err(|e| Error::from_ureq(e, self.timeout));
        }
        let message = response
            .body_mut()
            .with_config()
            .limit(ERROR_BODY_LIMIT)
            .read_to_vec()
            .ok()
            .and_then(|body| error_message(&body));
        Err(Error::Status { code, message })
    }
}

enum Method {
    Get,
    Post(serde_json::Value),
    Put,
    Delete,
}

/// The message of a `{"error": "..."}` body, if that is what it is.
fn error_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

/// Appends `segment` with every byte outside RFC 3986's unreserved set
/// percent-encoded, so a name can never change the route.
fn push_encoded(url: &mut String, segment: &str) {
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            url.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(url, "%{byte:02X}");
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_url(root: &str, segments: &[&str], expected: &str) {
        assert_eq!(Client::new(root).url(segments), expected);
    }

    #[test]
    fn builds_urls() {
        check_url(
            "http://h:1/registro",
            &["apps"],
            "http://h:1/registro/1.0/apps",
        );
        check_url(
            "http://h:1/registro/",
            &["apps"],
            "http://h:1/registro/1.0/apps",
        );
        check_url("http://h:1", &["apps", "web"], "http://h:1/1.0/apps/web");
        check_url(
            "http://h:1/r",
            &["apps", "web-1.a_b~c", "i-1"],
            "http://h:1/r/1.0/apps/web-1.a_b~c/i-1",
        );
        check_url(
            "http://h:1/r",
            &["apps", "a b/c?d#e%f", "é"],
            "http://h:1/r/1.0/apps/a%20b%2Fc%3Fd%23e%25f/%C3%A9",
        );
    }

    #[test]
    fn reads_error_bodies() {
        assert_eq!(
            error_message(br#"{"error":"no such app"}"#).as_deref(),
            Some("no such app")
        );
        assert_eq!(error_message(b""), None);
        assert_eq!(error_message(b"404 page not found\n"), None);
        assert_eq!(error_message(br#"{"error":3}"#), None);
    }

    #[test]
    fn displays_errors() {
        let e = Error::Status {
            code: 404,
            message: Some("no such app".into()),
        };
        assert_eq!(e.to_string(), "http status: 404: no such app");
        assert!(e.is_not_found() && !e.is_transport());
        let e = Error::Status {
            code: 409,
            message: None,
        };
        assert_eq!(e.to_string(), "http status: 409");
        assert_eq!(e.status(), Some(409));
        let e = Error::Timeout(Duration::from_millis(250));
        assert_eq!(e.to_string(), "registry did not answer within 250ms");
        assert!(e.is_transport() && e.status().is_none());
    }
}
