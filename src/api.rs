//! The wire contract of `../shared/API.md`: routes, JSON shapes, validation,
//! and the one mapping from registry errors to statuses. Only this module
//! knows JSON; the registry's types do not derive `Serialize`.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use crate::auth::Access;
use crate::clock::Now;
use crate::http::{Request, Response};
use crate::log::Log;
use crate::registry::{self, AppView, InstanceView, Millis, Periods, Registry, Status};

/// The path every route hangs below.
pub const ROOT: &str = "/registro/1.0";
/// The longest application name or instance id, in bytes.
pub const MAX_NAME: usize = 255;

const ALLOW_COLLECTION: &str = "GET, HEAD, POST";
const ALLOW_INSTANCE: &str = "DELETE, GET, HEAD, PUT";

/// The registry behind its lock, and the HTTP API in front of it.
pub struct Api {
    registry: Mutex<Registry>,
    log: Log,
    access: Access,
    #[allow(dead_code)] // read once watches land
    notify: OnceLock<Notify>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// Called with the topics whose index changed, so that the connection layer
/// can wake the requests waiting on them. Must not block.
pub type Notify = Box<dyn Fn(&[Topic]) + Send + Sync>;

/// What a watch waits on: the whole list (`/apps`) or one application.
#[allow(dead_code)] // built once watches land
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `GET /registro/1.0/apps?index=N`: any change anywhere.
    All,
    /// `GET /registro/1.0/apps/{app}?index=N`: a change of that app.
    App(Arc<str>),
}

/// A request that is to wait (a watch whose index has not changed yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// What it waits on.
    pub topic: Topic,
    /// When it is answered anyway (`?wait=`).
    pub deadline: Instant,
}

/// What [`Api::handle`] decided.
#[allow(dead_code)] // `Wait` once watches land
#[derive(Debug)]
pub enum Outcome {
    /// Answer now.
    Respond(Response),
    /// Park the request; handle it again when `Notify` names its topic, when
    /// its deadline passes (then with `answer_now`), or at shutdown (likewise).
    Wait(Wait),
}

impl Api {
    /// An empty registry with these periods, logging one line per event.
    pub fn new(periods: Periods, log: Log, access: Access) -> Api {
        access.set_log(log.clone());
        Api {
            registry: Mutex::new(Registry::new(periods)),
            log,
            access,
            notify: OnceLock::new(),
        }
    }

    /// Sets the hook told about index changes (once; later calls are ignored).
    #[allow(dead_code)] // called once watches land
    pub fn set_notify(&self, notify: Notify) {
        let _ = self.notify.set(notify);
    }

    /// Locks the registry. A panic elsewhere while it was held cannot leave it
    /// half-updated (every operation completes before it returns), so a
    /// poisoned lock is taken over rather than propagated.
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Who may do what.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Where events are logged.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Handles one request at `now`. With `answer_now` a watch is answered
    /// with the current view instead of waiting (its deadline passed, or the
    /// server is stopping).
    pub fn handle(&self, request: &Request, now: Now, answer_now: bool) -> Outcome {
        let _ = answer_now;
        if let Err(refused) = self.access.check(request) {
            return Outcome::Respond(refused);
        }
        if let Some(response) = crate::ops::handle(self, request, now) {
            return Outcome::Respond(response);
        }
        match self.route(&request.method, &request.target, &request.body, now.wall) {
            Ok(response) | Err(response) => Outcome::Respond(response),
        }
    }

    fn route(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        now: Millis,
    ) -> Result<Response, Response> {
        let segments = parse_path(target)?;
        let get = method == "GET" || method == "HEAD";
        match (
            segments
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            method,
        ) {
            (["apps"], _) if get => Ok(self.list(now)),
            (["apps"], "POST") => self.create_app(body, now),
            (["apps"], _) => Err(not_allowed(method, ALLOW_COLLECTION)),
            (["apps", app], _) if get => self.app(app, now),
            (["apps", app], "POST") => self.register(app, body, now),
            (["apps", _], _) => Err(not_allowed(method, ALLOW_COLLECTION)),
            (["apps", app, id], _) if get => self.instance(app, id, now),
            (["apps", app, id], "PUT") => self.renew(app, id, now),
            (["apps", app, id], "DELETE") => self.take_out_of_service(app, id, now),
            (["apps", _, _], _) => Err(not_allowed(method, ALLOW_INSTANCE)),
            _ => Err(error(
                404,
                "no such route; the API is under /registro/1.0/apps",
            )),
        }
    }

    fn list(&self, now: Millis) -> Response {
        let apps = self.lock().apps(now);
        // Serialised after the lock is released: a large listing never
        // stalls heartbeats for longer than the copy of its handles.
        json(200, &AppsJson(&apps))
    }

    fn app(&self, app: &str, now: Millis) -> Result<Response, Response> {
        let view = self.lock().app(app, now).map_err(|e| refusal(e, app, ""))?;
        Ok(json(200, &AppJson(&view)))
    }

    fn instance(&self, app: &str, id: &str, now: Millis) -> Result<Response, Response> {
        let view = self
            .lock()
            .instance(app, id, now)
            .map_err(|e| refusal(e, app, id))?;
        Ok(json(200, &InstanceJson(&view)))
    }

    fn create_app(&self, body: &[u8], now: Millis) -> Result<Response, Response> {
        let new: NewApp = parse_body(body)?;
        check_name("name", &new.name)?;
        let (event, view) = {
            let mut registry = self.lock();
            let event = registry
                .create_app(&new.name, now)
                .map_err(|e| refusal(e, &new.name, ""))?;
            (event, registry.app(&new.name, now))
        };
        self.log_event(&event);
        let mut response = match view {
            Ok(view) => json(201, &AppJson(&view)),
            Err(_) => Response::empty(201),
        };
        response.location = Some(format!("{ROOT}/apps/{}", encode_segment(&new.name)));
        Ok(response)
    }

    fn register(&self, app: &str, body: &[u8], now: Millis) -> Result<Response, Response> {
        let new: NewInstance = parse_body(body)?;
        check_name("id", &new.id)?;
        if new.ip.is_empty() {
            return Err(error(400, "ip must not be empty"));
        }
        let port = match u16::try_from(new.port) {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(error(
                    400,
                    format!("port must be 1 to 65535, not {}", new.port),
                ))
            }
        };
        let (event, view) = {
            let mut registry = self.lock();
            let event = registry
                .register(app, &new.id, &new.ip, port, now)
                .map_err(|e| refusal(e, app, &new.id))?;
            (event, registry.instance(app, &new.id, now))
        };
        self.log_event(&event);
        let mut response = match view {
            Ok(view) => json(201, &InstanceJson(&view)),
            Err(_) => Response::empty(201),
        };
        response.location = Some(format!(
            "{ROOT}/apps/{}/{}",
            encode_segment(app),
            encode_segment(&new.id)
        ));
        Ok(response)
    }

    fn renew(&self, app: &str, id: &str, now: Millis) -> Result<Response, Response> {
        let event = self
            .lock()
            .renew(app, id, now)
            .map_err(|e| refusal(e, app, id))?;
        if let Some(event) = event {
            self.log_event(&event);
        }
        Ok(Response::empty(204))
    }

    fn take_out_of_service(&self, app: &str, id: &str, now: Millis) -> Result<Response, Response> {
        let event = self
            .lock()
            .take_out_of_service(app, id, now)
            .map_err(|e| refusal(e, app, id))?;
        if let Some(event) = event {
            self.log_event(&event);
        }
        Ok(Response::empty(204))
    }

    /// Logs one registry event, never waiting for stderr.
    fn log_event(&self, event: &registry::Event) {
        self.log.event(event, false);
    }
}

/// The one place a registry error becomes a status and a message.
fn refusal(e: registry::Error, app: &str, id: &str) -> Response {
    use registry::Error as E;
    match e {
        E::AppExists => error(409, format!("application {app:?} already exists")),
        E::NoSuchApp => error(404, format!("no such application {app:?}")),
        E::NoSuchInstance => error(404, format!("no such instance {id:?} in application {app:?}")),
        E::InstanceExists => error(
            409,
            format!("instance {id:?} of {app:?} is live at another address; take it out of service or let it expire first"),
        ),
        E::OutOfService => error(
            403,
            format!("instance {id:?} of {app:?} is out of service; register it again to bring it back"),
        ),
    }
}

/// A response with body `{"error": message}`.
pub fn error(status: u16, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct ErrorJson {
        error: String,
    }
    json(
        status,
        &ErrorJson {
            error: message.into(),
        },
    )
}

fn not_allowed(method: &str, allow: &'static str) -> Response {
    let mut response = error(
        405,
        format!("method {method} is not allowed here; allowed: {allow}"),
    );
    response.allow = Some(allow);
    response
}

fn json<T: Serialize>(status: u16, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::json(status, body),
        // Only a bug in a Serialize impl above can get here.
        Err(e) => Response::json(
            500,
            format!("{{\"error\":\"cannot encode JSON: {e}\"}}").into_bytes(),
        ),
    }
}

#[derive(Deserialize)]
struct NewApp {
    name: String,
}

#[derive(Deserialize)]
struct NewInstance {
    id: String,
    ip: String,
    port: u64,
}

/// Parses a JSON object body. Serde would also take an array for a struct
/// (`["web"]` as `{"name": "web"}`); the contract wants an object.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| error(400, format!("invalid request body: {e}")))?;
    if !value.is_object() {
        return Err(error(400, "invalid request body: expected a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| error(400, format!("invalid request body: {e}")))
}

fn check_name(field: &str, value: &str) -> Result<(), Response> {
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(error(
            400,
            format!(
                "{field} must be 1 to {MAX_NAME} bytes long, not {}",
                value.len()
            ),
        ));
    }
    if value.contains('/') {
        return Err(error(400, format!("{field} must not contain '/'")));
    }
    Ok(())
}

/// Splits a request target below `ROOT` into percent-decoded segments,
/// ignoring the query and one trailing slash. The absolute form
/// (`http://host/registro/...`, RFC 9112 3.2.2) is accepted too.
fn parse_path(target: &str) -> Result<Vec<String>, Response> {
    let target = match target.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let Some(rest) = path.strip_prefix(ROOT) else {
        return Err(error(
            404,
            "no such route; the API is under /registro/1.0/apps",
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some(rest) = rest.strip_prefix('/') else {
        return Err(error(
            404,
            "no such route; the API is under /registro/1.0/apps",
        ));
    };
    rest.split('/').map(decode_segment).collect()
}

fn decode_segment(segment: &str) -> Result<String, Response> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) if hex.is_some_and(|h| h.bytes().all(|c| c.is_ascii_hexdigit())) => {
                    out.push(b)
                }
                _ => return Err(error(400, "invalid percent-escape in the path")),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.is_empty() {
        return Err(error(404, "no such route: empty path segment"));
    }
    String::from_utf8(out).map_err(|_| error(400, "the path is not UTF-8 once percent-decoded"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The wire name of a status.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Starting => "starting",
        Status::Up => "up",
        Status::Down => "down",
        Status::OutOfService => "out-of-service",
    }
}

struct InstanceJson<'a>(&'a InstanceView);

impl Serialize for InstanceJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let i = self.0;
        let mut st = s.serialize_struct("Instance", 5)?;
        st.serialize_field("id", &*i.id)?;
        st.serialize_field("ip", &*i.ip)?;
        st.serialize_field("port", &i.port)?;
        st.serialize_field("status", status_name(i.status))?;
        st.serialize_field("lastRenewal", &(i.last_renewal / 1000))?;
        st.end()
    }
}

struct AppJson<'a>(&'a AppView);

impl Serialize for AppJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("App", 2)?;
        st.serialize_field("name", &*self.0.name)?;
        st.serialize_field("instances", &Each(&self.0.instances, InstanceJson))?;
        st.end()
    }
}

struct AppsJson<'a>(&'a [AppView]);

impl Serialize for AppsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("applications", &Each(self.0, AppJson))?;
        map.end()
    }
}

/// A slice as a JSON array, each element through its wire wrapper, without
/// building a vector of wrappers first.
struct Each<'a, T, W>(&'a [T], fn(&'a T) -> W);

impl<'a, T, W: Serialize> Serialize for Each<'a, T, W> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&(self.1)(item))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_path(target: &str, expected: Result<&[&str], u16>) {
        let got = parse_path(target).map_err(|r| r.status);
        let expected = expected.map(|s| s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, expected, "{target}");
    }

    #[test]
    fn paths() {
        check_path("/registro/1.0/apps", Ok(&["apps"]));
        check_path("/registro/1.0/apps/", Ok(&["apps"]));
        check_path("/registro/1.0/apps?x=1", Ok(&["apps"]));
        check_path(
            "/registro/1.0/apps/web/web-1",
            Ok(&["apps", "web", "web-1"]),
        );
        check_path(
            "/registro/1.0/apps/web%20app/a%2Fb",
            Ok(&["apps", "web app", "a/b"]),
        );
        check_path("/registro/1.0/apps/%C3%A9", Ok(&["apps", "é"]));
        check_path("/registro/1.0/apps/%zz", Err(400));
        check_path("/registro/1.0/apps/%4", Err(400));
        check_path("/registro/1.0/apps/%+1", Err(400));
        check_path("/registro/1.0/apps/%ff", Err(400));
        check_path("/registro/1.0/apps//x", Err(404));
        check_path("/registro/1.0", Err(404));
        check_path("/registro/1.0x/apps", Err(404));
        check_path("/other", Err(404));
        check_path("http://h:8080/registro/1.0/apps/web", Ok(&["apps", "web"]));
        check_path("HTTP://h/registro/1.0/apps?a=b://c", Ok(&["apps"]));
        check_path("http://h", Err(404));
        check_path("/registro/1.0/apps/a:%2F%2Fb", Ok(&["apps", "a://b"]));
        check_path("/registro/1.0/apps/a://b", Err(404));
    }

    #[test]
    fn segments_round_trip() {
        for s in ["web", "a b", "é/ü", "%", "\r\n"] {
            assert_eq!(decode_segment(&encode_segment(s)).ok().as_deref(), Some(s));
        }
    }
}
