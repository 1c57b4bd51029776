//! The wire contract of `../shared/API.md`: routes, JSON shapes, validation,
//! and the one mapping from registry errors to statuses. Only this module
//! knows JSON; the registry's types do not derive `Serialize`.

use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Deserialize;

mod sd;
mod views;

use crate::auth::Access;
use crate::budget::Charge;
use crate::clock::Now;
use crate::http::{Body, Held, Request, Response};
use crate::log::Log;
use crate::registry::{self, Metadata, Millis, Status, StatusSet};
use crate::store::{self, Registration, Store};
use crate::view::{answers, Topic, View};

/// The path every route hangs below.
pub const ROOT: &str = "/registro/1.0";
/// The longest application name or instance id, in bytes.
pub const MAX_NAME: usize = 255;

const ALLOW_COLLECTION: &str = "GET, HEAD, POST";
const ALLOW_INSTANCE: &str = "DELETE, GET, HEAD, PUT";
const ALLOW_READ: &str = "GET, HEAD";

/// The OpenAPI 3.1 document of every route, served from the binary (no file
/// needed, so it is there in a `FROM scratch` image too), as `build.rs`
/// compacted it.
pub const OPENAPI: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The HTTP API: reads the view, sends every write to the store.
pub struct Api {
    view: Arc<View>,
    store: Box<dyn Store>,
    access: Access,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// A request that is to wait (a watch whose index has not changed yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// What it waits on.
    pub topic: Topic,
    /// When it is answered anyway (`?wait=` from the `now` it was handled
    /// at). The API cannot tell a first handling from a later one, so when a
    /// woken request is parked again the connection layer keeps the deadline
    /// of its first `Wait`.
    pub deadline: Instant,
    /// The ticket of a change the store is making for the request: the
    /// connection layer hands it back in [`Request::change`].
    pub change: Option<u64>,
}

/// What [`Api::handle`] decided.
#[derive(Debug)]
pub enum Outcome {
    /// Answer now.
    Respond(Response),
    /// Park the request; handle it again when the view's `Notify` names its
    /// topic, when its deadline passes (then with `answer_now`), or at
    /// shutdown (likewise).
    Wait(Wait),
}

/// The header that carries the change index.
pub const INDEX_HEADER: &str = "Registro-Index";
/// The header that says how many milliseconds ago the view last heard from
/// the store that keeps the registry (etcd), on every read.
pub const LAST_CONTACT_HEADER: &str = "Registro-Last-Contact";
/// The wait of a watch without `?wait=`.
const DEFAULT_WAIT: Millis = 60_000;
/// The longest `?wait=`.
const MAX_WAIT: Millis = 600_000;
/// How long a request waits for a change the store is making: the store
/// answers before (see `store::etcd`'s commit and view bounds).
const CHANGE_WAIT: Millis = 20_000;
/// Metadata limits (API.md Part 3 "Metadata").
const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_KEY: usize = 128;
const MAX_METADATA_VALUE: usize = 1024;
const MAX_METADATA_JSON: usize = 8 * 1024;

/// The query of a GET of a list: a status filter and a watch.
#[derive(Debug, PartialEq, Eq)]
struct ListQuery {
    filter: StatusSet,
    /// `?index=N`, with the wait in milliseconds.
    watch: Option<(u64, Millis)>,
}

impl Api {
    /// The API over `view`, its writes sent to `store`.
    pub fn new(view: Arc<View>, store: Box<dyn Store>, access: Access) -> Api {
        access.set_log(view.log().clone());
        Api {
            view,
            store,
            access,
        }
    }

    /// What reads answer from.
    #[cfg(test)]
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    /// Who may do what.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Where events are logged.
    pub fn log(&self) -> &Log {
        self.view.log()
    }

    /// Handles one request at `now`. With `answer_now` a watch is answered
    /// with the current view instead of waiting (its deadline passed, or the
    /// server is stopping).
    pub fn handle(&self, request: &Request, now: Now, answer_now: bool) -> Outcome {
        if let Err(refused) = self.access.check(request) {
            return Outcome::Respond(refused);
        }
        if let Some(response) = crate::ops::handle(&self.view, &*self.store, request) {
            return Outcome::Respond(response);
        }
        let mut outcome = match self.route(request, now, answer_now) {
            Ok(outcome) => outcome,
            Err(response) => Outcome::Respond(response),
        };
        if let Outcome::Respond(response) = &mut outcome {
            let read = request.method == "GET" || request.method == "HEAD";
            if let Some(ms) = self.store.last_contact().filter(|_| read) {
                response.headers.push((LAST_CONTACT_HEADER, ms.to_string()));
            }
        }
        outcome
    }

    /// `read` of the view; a 404 from a view that may be behind the store
    /// (etcd) is answered only once the view has caught up, and read again.
    fn read_fresh<T>(
        &self,
        read: impl Fn() -> Result<T, registry::Error>,
    ) -> Result<T, registry::Error> {
        match read() {
            Err(registry::Error::NoSuchApp | registry::Error::NoSuchInstance)
                if self.store.catch_up() =>
            {
                read()
            }
            other => other,
        }
    }

    fn route(&self, request: &Request, now: Now, answer_now: bool) -> Result<Outcome, Response> {
        let (method, target) = (&*request.method, &*request.target);
        let segments = parse_path(target)?;
        let get = method == "GET" || method == "HEAD";
        let respond = |r: Result<Response, Response>| r.map(Outcome::Respond);
        match (
            segments
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            method,
        ) {
            (["apps"], _) if get && wants_summary(target)? => {
                self.summary(&parse_query(target)?, now, answer_now)
            }
            (["apps"], _) if get => self.list(&parse_query(target)?, now, answer_now),
            (["apps"], "POST") => self.create_app(request, now, answer_now),
            (["apps"], _) => Err(not_allowed(method, ALLOW_COLLECTION)),
            (["apps", app], _) if get => self.app(app, &parse_query(target)?, now, answer_now),
            (["apps", app], "POST") => self.register(request, app, now, answer_now),
            (["apps", _], _) => Err(not_allowed(method, ALLOW_COLLECTION)),
            (["apps", app, id], _) if get => respond(self.instance(app, id, now)),
            (["apps", app, id], "PUT") => {
                let change = |api: &Api| api.store.renew(&api.view, app, id, now);
                self.changed(request, now, answer_now, change)
                    .map_err(|e| store_refusal(e, app, id))
                    .map(|wait| wait.unwrap_or(Outcome::Respond(Response::empty(204))))
            }
            (["apps", app, id], "DELETE") => {
                let change = |api: &Api| api.store.take_out_of_service(&api.view, app, id, now);
                self.changed(request, now, answer_now, change)
                    .map_err(|e| store_refusal(e, app, id))
                    .map(|wait| wait.unwrap_or(Outcome::Respond(Response::empty(204))))
            }
            (["apps", _, _], _) => Err(not_allowed(method, ALLOW_INSTANCE)),
            (["sd", "prometheus"], _) if get => respond(self.sd_prometheus(target, now)),
            (["sd", "prometheus"], _) => Err(not_allowed(method, ALLOW_READ)),
            (["openapi.json"], _) if get => Ok(Outcome::Respond(Response::json(
                200,
                OPENAPI.as_bytes().to_vec(),
            ))),
            (["openapi.json"], _) => Err(not_allowed(method, ALLOW_READ)),
            _ => Err(error(
                404,
                "no such route; the API is under /registro/1.0/apps",
            )),
        }
    }

    fn list(&self, query: &ListQuery, now: Now, answer_now: bool) -> Result<Outcome, Response> {
        let unless = query.watch.filter(|_| !answer_now).map(|(index, _)| index);
        let asked = self.asked(Topic::All, query, now);
        if let Some(shared) = self.shared_answer(&asked, unless) {
            return Ok(shared);
        }
        let mut registry = self.view.lock();
        let view = registry.apps(now.mono, query.filter, unless);
        self.view.publish(registry, false);
        let Some((apps, index)) = view else {
            return Ok(wait(Topic::All, query, now));
        };
        // Serialised after the lock is released: a large listing never
        // stalls heartbeats for longer than the copy of its handles.
        let size = views::apps_size(&apps);
        self.encoded(asked, unless, index, size, || views::apps(&apps, now))
    }

    /// `GET /apps?view=summary`: each app's name, index and counts by
    /// status, without instances (O(apps)); watchable like the list.
    fn summary(&self, query: &ListQuery, now: Now, answer_now: bool) -> Result<Outcome, Response> {
        let unless = query.watch.filter(|_| !answer_now).map(|(index, _)| index);
        let mut registry = self.view.lock();
        let view = registry.summary(now.mono, unless);
        self.view.publish(registry, false);
        match view {
            None => Ok(wait(Topic::All, query, now)),
            Some((apps, index)) => Ok(Outcome::Respond(indexed(views::summary(&apps), index))),
        }
    }

    /// What a read of `topic` asks, in the generation of the shared answers
    /// before the registry is read.
    fn asked(&self, topic: Topic, query: &ListQuery, now: Now) -> answers::Asked {
        answers::Asked {
            topic,
            filter: query.filter,
            generation: self.view.answers().generation(),
            now: now.mono,
        }
    }

    /// The answer another reader of the same asked at once got, if it is
    /// current (see `answers`): a watcher woken by the same change (`unless`
    /// its index), or a reader of the same large listing.
    fn shared_answer(&self, asked: &answers::Asked, unless: Option<u64>) -> Option<Outcome> {
        let (index, body) =
            self.view
                .answers()
                .find(&asked.topic, asked.filter, unless, asked.now)?;
        Some(Outcome::Respond(indexed(body, index)))
    }

    /// The answer at `index`, about `size` bytes once encoded: a large one
    /// only if the output budget has room for it (else 503), and kept for
    /// the readers asking for the same at once (the watchers of one change,
    /// the readers of a large listing); a small plain read is just encoded.
    fn encoded(
        &self,
        asked: answers::Asked,
        unless: Option<u64>,
        index: u64,
        size: usize,
        encode: impl FnOnce() -> Vec<u8>,
    ) -> Result<Outcome, Response> {
        let shared = self.view.answers();
        if size < answers::SHARED_FROM && unless.is_none() {
            return Ok(Outcome::Respond(indexed(Body::Owned(encode()), index)));
        }
        let charge = self.reserve(size)?;
        let started = Instant::now();
        let body = encode();
        // Shared from when it is ready: a reader that comes then would wait
        // as long for its own.
        let took = Millis::try_from(started.elapsed().as_millis()).unwrap_or(Millis::MAX);
        let ready = answers::Asked {
            now: asked.now.saturating_add(took),
            ..asked
        };
        let body = shared.keep(ready, index, body, charge);
        Ok(Outcome::Respond(indexed(body, index)))
    }

    /// Reserves `size` bytes in the output budget for an answer about to be
    /// encoded, if it is large (`None` for a small one); past the budget, a
    /// 503 with JSON.
    fn reserve(&self, size: usize) -> Result<Option<Charge>, Response> {
        if size < answers::SHARED_FROM {
            return Ok(None);
        }
        let budget = self.view.answers().budget();
        match budget.reserve(size) {
            Some(charge) => Ok(Some(charge)),
            None => Err(Response::error(
                503,
                format!(
                    "answers not yet read by slow clients hold the server's output budget \
                     ({} MiB, --output-budget); try again shortly",
                    budget.limit() >> 20
                ),
            )),
        }
    }

    /// An answer of about `size` bytes once encoded, not shared: a large
    /// one only if the output budget has room for it, counted while it is
    /// held.
    fn budgeted(&self, size: usize, encode: impl FnOnce() -> Vec<u8>) -> Result<Body, Response> {
        Ok(match self.reserve(size)? {
            Some(charge) => Body::Shared(Arc::new(Held::new(encode(), Some(charge)))),
            None => Body::Owned(encode()),
        })
    }

    fn app(
        &self,
        app: &str,
        query: &ListQuery,
        now: Now,
        answer_now: bool,
    ) -> Result<Outcome, Response> {
        let unless = query.watch.filter(|_| !answer_now).map(|(index, _)| index);
        let topic = Topic::App(Arc::from(app));
        let asked = self.asked(topic.clone(), query, now);
        if let Some(shared) = self.shared_answer(&asked, unless) {
            return Ok(shared);
        }
        let view = self.read_fresh(|| {
            let mut registry = self.view.lock();
            let view = registry.app(app, now.mono, query.filter, unless);
            self.view.publish(registry, false);
            view
        });
        match view.map_err(|e| refusal(e, app, ""))? {
            None => Ok(wait(topic, query, now)),
            Some(view) => {
                let size = views::app_size(&view);
                self.encoded(asked, unless, view.index, size, || views::app(&view, now))
            }
        }
    }

    fn instance(&self, app: &str, id: &str, now: Now) -> Result<Response, Response> {
        let view = self
            .read_fresh(|| self.view.lock().instance(app, id, now.mono))
            .map_err(|e| refusal(e, app, id))?;
        Ok(Response::json(200, views::instance(&view, now)))
    }

    /// A change sent to the store (or, for a request woken by its answer,
    /// that answer): `Ok(None)` once it is in the view, `Ok(Some(wait))`
    /// while the store is still making it (the request waits on its
    /// ticket, holding no worker).
    fn changed(
        &self,
        request: &Request,
        now: Now,
        answer_now: bool,
        change: impl FnOnce(&Api) -> Result<store::Progress, store::Error>,
    ) -> Result<Option<Outcome>, store::Error> {
        let progress = match request.change {
            None => change(self)?,
            Some(ticket) => match self.store.finish(ticket) {
                Some(result) => return result.map(|()| None),
                None if answer_now => {
                    return Err(store::Error::Unavailable(
                        "the server is stopping, or the change took too long; try again".into(),
                    ))
                }
                None => store::Progress::Waiting(ticket),
            },
        };
        Ok(match progress {
            store::Progress::Done => None,
            store::Progress::Waiting(ticket) => Some(Outcome::Wait(Wait {
                topic: Topic::Change(ticket),
                deadline: crate::clock::instant_of(now.mono.saturating_add(CHANGE_WAIT)),
                change: Some(ticket),
            })),
        })
    }

    fn create_app(
        &self,
        request: &Request,
        now: Now,
        answer_now: bool,
    ) -> Result<Outcome, Response> {
        let new: NewApp = parse_body(&request.body)?;
        check_name("name", &new.name)?;
        let change = |api: &Api| api.store.create_app(&api.view, &new.name, now);
        if let Some(wait) = self
            .changed(request, now, answer_now, change)
            .map_err(|e| store_refusal(e, &new.name, ""))?
        {
            return Ok(wait);
        }
        let mut registry = self.view.lock();
        let view = registry.app(&new.name, now.mono, StatusSet::ALL, None);
        self.view.publish(registry, false);
        let mut response = match view {
            Ok(Some(view)) => Response::json(201, views::app(&view, now)),
            _ => Response::empty(201),
        };
        response.location = Some(format!("{ROOT}/apps/{}", encode_segment(&new.name)));
        Ok(Outcome::Respond(response))
    }

    fn register(
        &self,
        request: &Request,
        app: &str,
        now: Now,
        answer_now: bool,
    ) -> Result<Outcome, Response> {
        let new: NewInstance = parse_body(&request.body)?;
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
        let metadata = parse_metadata(new.metadata)?;
        let registration = Registration {
            app,
            id: &new.id,
            ip: &new.ip,
            port,
            metadata,
        };
        let change = |api: &Api| api.store.register(&api.view, &registration, now);
        if let Some(wait) = self
            .changed(request, now, answer_now, change)
            .map_err(|e| store_refusal(e, app, &new.id))?
        {
            return Ok(wait);
        }
        self.view.log().metrics().registered();
        let view = self.view.lock().instance(app, &new.id, now.mono);
        let mut response = match view {
            Ok(view) => Response::json(201, views::instance(&view, now)),
            Err(_) => Response::empty(201),
        };
        response.location = Some(format!(
            "{ROOT}/apps/{}/{}",
            encode_segment(app),
            encode_segment(&new.id)
        ));
        Ok(Outcome::Respond(response))
    }
}

/// The `Wait` of a watch whose index has not changed.
fn wait(topic: Topic, query: &ListQuery, now: Now) -> Outcome {
    let wait = query.watch.map_or(DEFAULT_WAIT, |(_, wait)| wait);
    Outcome::Wait(Wait {
        topic,
        deadline: crate::clock::instant_of(now.mono.saturating_add(wait)),
        change: None,
    })
}

/// A store's refusal: the registry's, or a 503 when the store cannot take
/// the change now.
fn store_refusal(e: store::Error, app: &str, id: &str) -> Response {
    match e {
        store::Error::Refused(e) => refusal(e, app, id),
        store::Error::Unavailable(why) => error(503, why),
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
fn error(status: u16, message: impl Into<String>) -> Response {
    Response::error(status, message)
}

fn not_allowed(method: &str, allow: &'static str) -> Response {
    let mut response = error(
        405,
        format!("method {method} is not allowed here; allowed: {allow}"),
    );
    response.allow = Some(allow);
    response
}

#[derive(Deserialize)]
struct NewApp {
    name: String,
}

impl RequestBody for NewApp {
    const EXAMPLE: &'static str = r#"{"name": "web"}"#;
    const FIELDS: &'static [Field] = &[Field {
        name: "name",
        kind: Kind::Text,
        rule: "a string of 1 to 255 bytes without '/'",
    }];
}

#[derive(Deserialize)]
struct NewInstance {
    id: String,
    ip: String,
    port: u64,
    #[serde(default)]
    metadata: serde_json::Value,
}

impl RequestBody for NewInstance {
    const EXAMPLE: &'static str = r#"{"id": "web-1", "ip": "10.0.0.7", "port": 8080}"#;
    const FIELDS: &'static [Field] = &[
        Field {
            name: "id",
            kind: Kind::Text,
            rule: "a string of 1 to 255 bytes without '/'",
        },
        Field {
            name: "ip",
            kind: Kind::Text,
            rule: "a string that is not empty (the address the instance is reached at)",
        },
        Field {
            name: "port",
            kind: Kind::Whole { min: 1, max: 65535 },
            rule: "a number from 1 to 65535",
        },
    ];
}

/// A request body: its required fields and the rule of each in words, so
/// that a body that breaks one is answered in those words rather than in
/// serde's (`invalid type: string "8080", expected u64`).
trait RequestBody: DeserializeOwned {
    /// A valid body, shown when the body is not a JSON object.
    const EXAMPLE: &'static str;
    const FIELDS: &'static [Field];
}

/// A required field of a request body.
struct Field {
    name: &'static str,
    kind: Kind,
    /// What the value must be, after "NAME must be".
    rule: &'static str,
}

/// The JSON a field takes.
enum Kind {
    Text,
    /// A whole number within the bounds.
    Whole {
        min: u64,
        max: u64,
    },
}

impl Field {
    /// `Ok` when `value` is of the field's kind, else the error in words.
    fn check(&self, value: Option<&serde_json::Value>) -> Result<(), String> {
        let Some(value) = value else {
            return Err(format!(
                "{} is missing: it must be {}",
                self.name, self.rule
            ));
        };
        let fits = match self.kind {
            Kind::Text => value.is_string(),
            Kind::Whole { min, max } => value.as_u64().is_some_and(|n| (min..=max).contains(&n)),
        };
        if fits {
            return Ok(());
        }
        Err(format!(
            "{} must be {}, not {}",
            self.name,
            self.rule,
            describe_json(value)
        ))
    }
}

/// A JSON value as an error message names it: `the string "8080"`, `1.5`,
/// `a list`; long strings are cut short.
fn describe_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() > 40 => {
            let cut: String = s.chars().take(40).collect();
            format!("the string {cut:?}...")
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// Checks `metadata` against API.md's limits; `null`, absent and `{}` are none.
fn parse_metadata(value: serde_json::Value) -> Result<Option<Arc<Metadata>>, Response> {
    let object = match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(object) => object,
        _ => return Err(error(400, "metadata must be a JSON object of strings")),
    };
    if object.len() > MAX_METADATA_ENTRIES {
        return Err(error(
            400,
            format!(
                "metadata has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
                object.len()
            ),
        ));
    }
    let mut metadata = Metadata::new();
    for (key, value) in object {
        if key.is_empty() || key.len() > MAX_METADATA_KEY {
            return Err(error(
                400,
                format!(
                    "metadata keys must be 1 to {MAX_METADATA_KEY} bytes long, not {}",
                    key.len()
                ),
            ));
        }
        let serde_json::Value::String(value) = value else {
            return Err(error(
                400,
                format!("metadata value of {key:?} must be a string"),
            ));
        };
        if value.len() > MAX_METADATA_VALUE {
            return Err(error(
                400,
                format!(
                    "metadata value of {key:?} is {} bytes long; at most {MAX_METADATA_VALUE} are allowed",
                    value.len()
                ),
            ));
        }
        metadata.insert(key, value);
    }
    let size = serde_json::to_vec(&metadata).map_or(usize::MAX, |json| json.len());
    if size > MAX_METADATA_JSON {
        return Err(error(
            400,
            format!("metadata is {size} bytes of JSON; at most {MAX_METADATA_JSON} are allowed"),
        ));
    }
    Ok((!metadata.is_empty()).then(|| Arc::new(metadata)))
}

/// Reads the query of a GET of a list: `status=` (a comma-separated list,
/// repeatable), `index=` and `wait=`; other parameters are ignored.
fn parse_query(target: &str) -> Result<ListQuery, Response> {
    let mut filter = None;
    let (mut index, mut wait) = (None, None);
    for (key, value) in query_pairs(target) {
        let value = decode_query(value)?;
        match key {
            "status" => add_statuses(&mut filter, &value)?,
            "index" => {
                index = Some(value.parse::<u64>().map_err(|_| {
                    error(
                        400,
                        format!("index must be a whole number (the Registro-Index of an earlier answer), not {value:?}"),
                    )
                })?)
            }
            "wait" => wait = Some(parse_wait(&value)?),
            _ => {}
        }
    }
    Ok(ListQuery {
        filter: filter.unwrap_or(StatusSet::ALL),
        watch: index.map(|index| (index, wait.unwrap_or(DEFAULT_WAIT))),
    })
}

/// Whether the query asks for `view=summary`; `view=full` (or none) is
/// the list with instances, any other view a 400.
fn wants_summary(target: &str) -> Result<bool, Response> {
    let mut summary = false;
    for pair in query_of(target).split('&') {
        let Some(value) = pair.strip_prefix("view=") else {
            continue;
        };
        summary = match decode_query(value)?.as_str() {
            "summary" => true,
            "full" => false,
            other => {
                return Err(error(
                    400,
                    format!("unknown view {other:?} in ?view=; use summary or full"),
                ))
            }
        };
    }
    Ok(summary)
}

/// The query of a request's target: after `?`, before `#`.
fn query_of(target: &str) -> &str {
    target
        .split('#')
        .next()
        .and_then(|t| t.split_once('?'))
        .map_or("", |(_, q)| q)
}

/// The query's `key=value` pairs, values still encoded (`key` alone has an
/// empty value).
fn query_pairs(target: &str) -> impl Iterator<Item = (&str, &str)> {
    query_of(target)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Adds the statuses a decoded `status=` value names (separated by
/// commas) to `filter`; an unknown name is a 400.
fn add_statuses(filter: &mut Option<StatusSet>, value: &str) -> Result<(), Response> {
    for name in value.split(',') {
        let status = Status::ALL
            .into_iter()
            .find(|s| status_name(*s) == name)
            .ok_or_else(|| {
                error(
                    400,
                    format!(
                        "unknown status {name:?} in ?status=; use up, down, starting or out-of-service, separated by commas"
                    ),
                )
            })?;
        *filter = Some(filter.unwrap_or(StatusSet::NONE).with(status));
    }
    Ok(())
}

/// `500ms`, `30s`, `5m` or plain seconds, at most [`MAX_WAIT`].
fn parse_wait(value: &str) -> Result<Millis, Response> {
    let bad = || {
        error(
            400,
            format!(
                "wait must be like 500ms, 30s, 5m or plain seconds, at most 600s; not {value:?}"
            ),
        )
    };
    let (digits, unit) = if let Some(d) = value.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = value.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = value.strip_suffix('m') {
        (d, 60_000)
    } else {
        (value, 1000)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let wait = digits
        .parse::<Millis>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(bad)?;
    if wait > MAX_WAIT {
        return Err(bad());
    }
    Ok(wait)
}

/// Percent-decodes a query value (`+` is a space, as forms send it).
fn decode_query(value: &str) -> Result<String, Response> {
    if value.is_empty() {
        return Ok(String::new());
    }
    decode_segment(&value.replace('+', " ")).map_err(|_| {
        error(
            400,
            format!("invalid percent-escape in the query: {value:?}"),
        )
    })
}

/// Parses a JSON object body, checking each required field against its rule
/// first, so that every error says what was expected in words. Serde would
/// also take an array for a struct (`["web"]` as `{"name": "web"}`); the
/// contract wants an object.
fn parse_body<T: RequestBody>(body: &[u8]) -> Result<T, Response> {
    let example = T::EXAMPLE;
    if body.trim_ascii().is_empty() {
        return Err(error(
            400,
            format!("the request body is empty; send a JSON object such as {example}"),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        error(
            400,
            format!(
                "the request body is not valid JSON ({e}); send a JSON object such as {example}"
            ),
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err(error(
            400,
            format!(
                "the request body must be a JSON object such as {example}, not {}",
                describe_json(&value)
            ),
        ));
    };
    for field in T::FIELDS {
        field
            .check(object.get(field.name))
            .map_err(|message| error(400, message))?;
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

/// Percent-encodes everything but RFC 3986's unreserved characters, and the
/// dots of a `.` or `..` segment, which a client would otherwise resolve as
/// "this" or "the parent" path (RFC 3986 5.2.4) and so fetch another URL.
fn encode_segment(segment: &str) -> String {
    if segment == "." || segment == ".." {
        return segment.replace('.', "%2E");
    }
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

/// A 200 with a JSON body and its `Registro-Index`.
fn indexed(body: impl Into<Body>, index: u64) -> Response {
    let mut response = Response::json(200, body);
    response.headers.push((INDEX_HEADER, index.to_string()));
    response
}

/// The wall-clock time of a monotonic reading: what the system clock said
/// `now.mono - mono` ago. Ages come from the monotonic clock; only the
/// `lastRenewal` shown is on the wall clock.
fn wall_of(mono: Millis, now: Now) -> Millis {
    now.wall.saturating_sub(now.mono.saturating_sub(mono))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Periods, Registry};
    use crate::view::answers;
    use std::sync::Mutex;

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
    fn location_encodes_dot_segments() {
        for (s, want) in [
            (".", "%2E"),
            ("..", "%2E%2E"),
            ("...", "..."),
            ("a.b", "a.b"),
        ] {
            assert_eq!(encode_segment(s), want);
            assert_eq!(decode_segment(want).ok().as_deref(), Some(s));
        }
    }

    /// The statuses of a filter (none: all) and the watch; or part of the error.
    type Parsed<'a> = Result<(&'a [Status], Option<(u64, Millis)>), &'a str>;

    #[track_caller]
    fn check_query(target: &str, expected: Parsed<'_>) {
        let got = parse_query(target).map_err(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error");
            assert_eq!(r.status, 400);
            body["error"].as_str().unwrap_or_default().to_owned()
        });
        match (got, expected) {
            (Ok(query), Ok((statuses, watch))) => {
                let mut filter = StatusSet::NONE;
                for s in statuses {
                    filter = filter.with(*s);
                }
                if statuses.is_empty() {
                    filter = StatusSet::ALL;
                }
                assert_eq!(query, ListQuery { filter, watch }, "{target}");
            }
            (Err(message), Err(part)) => assert!(message.contains(part), "{target}: {message}"),
            (got, _) => panic!("{target}: {got:?}"),
        }
    }

    #[test]
    fn queries() {
        use Status::*;
        check_query("/registro/1.0/apps", Ok((&[], None)));
        check_query("/registro/1.0/apps?status=up", Ok((&[Up], None)));
        check_query(
            "/registro/1.0/apps?status=up,starting",
            Ok((&[Up, Starting], None)),
        );
        check_query(
            "/registro/1.0/apps?status=up%2Cdown",
            Ok((&[Up, Down], None)),
        );
        check_query(
            "/registro/1.0/apps?status=up&status=out-of-service",
            Ok((&[Up, OutOfService], None)),
        );
        check_query("/registro/1.0/apps?status=UP", Err("unknown status \"UP\""));
        check_query("/registro/1.0/apps?status=", Err("unknown status \"\""));
        check_query("/registro/1.0/apps?status=up,", Err("unknown status"));
        check_query("/registro/1.0/apps?status=%zz", Err("percent-escape"));
        check_query("/registro/1.0/apps?foo=bar&x", Ok((&[], None)));
        check_query("/registro/1.0/apps?index=7", Ok((&[], Some((7, 60_000)))));
        check_query(
            "/registro/1.0/apps?index=7&wait=500ms",
            Ok((&[], Some((7, 500)))),
        );
        check_query(
            "/registro/1.0/apps?wait=30s&index=0",
            Ok((&[], Some((0, 30_000)))),
        );
        check_query(
            "/registro/1.0/apps?index=7&wait=5m",
            Ok((&[], Some((7, 300_000)))),
        );
        check_query(
            "/registro/1.0/apps?index=7&wait=10m",
            Ok((&[], Some((7, 600_000)))),
        );
        check_query(
            "/registro/1.0/apps?index=7&wait=12",
            Ok((&[], Some((7, 12_000)))),
        );
        check_query("/registro/1.0/apps?index=7&wait=0", Ok((&[], Some((7, 0)))));
        check_query("/registro/1.0/apps?wait=5", Ok((&[], None)));
        for wait in [
            "601",
            "11m",
            "600001ms",
            "1h",
            "-1",
            "1.5",
            "s",
            "",
            "ms",
            "99999999999999999999",
        ] {
            check_query(
                &format!("/registro/1.0/apps?index=1&wait={wait}"),
                Err("wait must be"),
            );
        }
        for index in ["", "x", "-1", "1.0", "18446744073709551616"] {
            check_query(
                &format!("/registro/1.0/apps?index={index}"),
                Err("index must be"),
            );
        }
    }

    fn api() -> Api {
        let log = crate::log::Logger::start(false)
            .expect("no logger thread")
            .log();
        let access = Access::load(&crate::auth::TokenFiles::default()).expect("no token files");
        let periods = Periods::DEFAULT;
        let view = Arc::new(View::new(Registry::new(periods), log));
        let settings = store::Settings {
            periods,
            threads: 1,
            sweep_every: std::time::Duration::from_secs(60),
            log_sweeps: false,
        };
        Api::new(view, Box::new(store::memory::Memory::new(settings)), access)
    }

    fn call(api: &Api, method: &str, target: &str, body: &str, now: Now) -> (u16, String) {
        let request = Request {
            method: method.into(),
            target: target.into(),
            keep_alive: true,
            authorization: None,
            peer: None,
            body: body.as_bytes().to_vec(),
            change: None,
        };
        match api.handle(&request, now, false) {
            Outcome::Respond(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
            Outcome::Wait(w) => (0, format!("{w:?}")),
        }
    }

    /// Unix ms of the wall clock at the start of the clock-step tests.
    const WALL: Millis = 1_795_890_765_000;

    /// The status and `lastRenewal` of `web/a` read at `now`, after it
    /// registered and renewed at mono 0 (wall [`WALL`]).
    fn after_clock_step(now: Now) -> String {
        let api = api();
        let start = Now {
            mono: 0,
            wall: WALL,
        };
        call(
            &api,
            "POST",
            "/registro/1.0/apps",
            r#"{"name":"web"}"#,
            start,
        );
        let instance = r#"{"id":"a","ip":"10.0.0.1","port":80}"#;
        call(&api, "POST", "/registro/1.0/apps/web", instance, start);
        assert_eq!(
            call(&api, "PUT", "/registro/1.0/apps/web/a", "", start).0,
            204
        );
        let (status, body) = call(&api, "GET", "/registro/1.0/apps/web/a", "", now);
        if status != 200 {
            return status.to_string();
        }
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let shown = v["lastRenewal"].as_i64().unwrap_or_default() - (WALL / 1000) as i64;
        format!("{} {shown:+}", v["status"].as_str().unwrap_or_default())
    }

    #[test]
    fn ages_come_from_the_monotonic_clock() {
        const HOUR: Millis = 3_600_000;
        // `mono` is the time that passed; `wall` what the system clock says.
        let cases = [
            // No step.
            (
                Now {
                    mono: 1_000,
                    wall: WALL + 1_000,
                },
                "up +0",
            ),
            (
                Now {
                    mono: 90_001,
                    wall: WALL + 90_001,
                },
                "down +0",
            ),
            (
                Now {
                    mono: 600_001,
                    wall: WALL + 600_001,
                },
                "404",
            ),
            // The clock stepped back 1 h: the silent instance is still down
            // after 90 s and gone after 10 min. `lastRenewal` is shown on the
            // clock as it reads now.
            (
                Now {
                    mono: 100_000,
                    wall: WALL + 100_000 - HOUR,
                },
                "down -3600",
            ),
            (
                Now {
                    mono: 3_650_000,
                    wall: WALL + 50_000,
                },
                "404",
            ),
            (
                Now {
                    mono: 600_001,
                    wall: WALL + 600_001 - HOUR,
                },
                "404",
            ),
            // The clock stepped forward 15 min: 1 s later it is still up.
            (
                Now {
                    mono: 1_000,
                    wall: WALL + 1_000 + 900_000,
                },
                "up +900",
            ),
            (
                Now {
                    mono: 60_000,
                    wall: WALL + 60_000 + 900_000,
                },
                "up +900",
            ),
        ];
        for (now, want) in cases {
            assert_eq!(after_clock_step(now), want, "{now:?}");
        }
    }

    /// Watchers woken by one change may share one answer (`answers`), but
    /// never one older than the latest change, nor one made before FRESH:
    /// a heartbeat's `lastRenewal` shows in the next watch's answer.
    #[test]
    fn a_shared_watch_answer_is_never_behind_a_change_or_stale() {
        let api = api();
        let at = |ms: Millis| Now {
            mono: ms,
            wall: WALL + ms,
        };
        call(
            &api,
            "POST",
            "/registro/1.0/apps",
            r#"{"name":"web"}"#,
            at(0),
        );
        let instance = r#"{"id":"a","ip":"10.0.0.1","port":80}"#;
        call(&api, "POST", "/registro/1.0/apps/web", instance, at(0));
        assert_eq!(
            call(&api, "PUT", "/registro/1.0/apps/web/a", "", at(0)).0,
            204
        );
        let watch = "/registro/1.0/apps/web?index=1&wait=2s";
        let ids = |body: &str| -> Vec<String> {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            v["instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect()
        };
        let (status, first) = call(&api, "GET", watch, "", at(0));
        assert_eq!((status, ids(&first)), (200, vec!["a".to_string()]));
        // A change within FRESH: the next watcher sees it.
        let instance = r#"{"id":"b","ip":"10.0.0.2","port":80}"#;
        call(&api, "POST", "/registro/1.0/apps/web", instance, at(10));
        let (_, second) = call(&api, "GET", watch, "", at(20));
        assert_eq!(ids(&second), vec!["a".to_string(), "b".to_string()]);
        // A heartbeat of an `up` instance changes no index; once FRESH has
        // passed since the answer was made, it shows.
        assert_eq!(
            call(&api, "PUT", "/registro/1.0/apps/web/a", "", at(1_000)).0,
            204
        );
        let (_, third) = call(&api, "GET", watch, "", at(1_000 + answers::FRESH));
        let v: serde_json::Value = serde_json::from_str(&third).unwrap();
        assert_eq!(v["instances"][0]["lastRenewal"], (WALL + 1_000) / 1_000);
    }

    #[test]
    fn a_watch_waits_while_the_index_is_the_same() {
        let api = api();
        let now = Now {
            mono: 0,
            wall: WALL,
        };
        call(&api, "POST", "/registro/1.0/apps", r#"{"name":"web"}"#, now);
        let index = api.view().lock().index();
        let target = format!("/registro/1.0/apps/web?index={index}&wait=2s");
        let (status, waited) = call(&api, "GET", &target, "", now);
        assert_eq!(status, 0, "{waited}");
        assert!(waited.contains("App(\"web\")"), "{waited}");
        let (status, waited) = call(
            &api,
            "GET",
            &format!("/registro/1.0/apps?index={index}"),
            "",
            now,
        );
        assert_eq!((status, waited.contains("All")), (0, true), "{waited}");
        // Another index answers at once; so does `answer_now`.
        let (status, _) = call(
            &api,
            "GET",
            &format!("/registro/1.0/apps/web?index={}", index + 1),
            "",
            now,
        );
        assert_eq!(status, 200);
        let request = Request {
            method: "GET".into(),
            target,
            keep_alive: true,
            authorization: None,
            peer: None,
            body: Vec::new(),
            change: None,
        };
        assert!(matches!(api.handle(&request, now, true), Outcome::Respond(r) if r.status == 200));
        // A watch of an app that does not exist: 404 at once.
        assert_eq!(
            call(&api, "GET", "/registro/1.0/apps/db?index=1", "", now).0,
            404
        );
    }

    #[test]
    fn notify_names_the_changed_app_and_the_list() {
        let api = api();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        api.view().set_notify(Box::new(move |topics| {
            sink.lock().unwrap().push(topics.to_vec())
        }));
        let now = Now {
            mono: 0,
            wall: WALL,
        };
        call(&api, "POST", "/registro/1.0/apps", r#"{"name":"web"}"#, now);
        call(
            &api,
            "POST",
            "/registro/1.0/apps/web",
            r#"{"id":"a","ip":"10.0.0.1","port":80}"#,
            now,
        );
        call(&api, "PUT", "/registro/1.0/apps/web/a", "", now);
        call(&api, "PUT", "/registro/1.0/apps/web/a", "", now);
        let web = vec![Topic::All, Topic::App("web".into())];
        assert_eq!(*seen.lock().unwrap(), vec![web.clone(), web.clone(), web]);
    }

    /// The recorder sees every change while the lock is held, with its events.
    #[test]
    fn the_recorder_sees_each_change_with_its_events() {
        let api = api();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        api.view().set_recorder(Box::new(move |registry, events| {
            sink.lock().unwrap().push((registry.index(), events.len()))
        }));
        let now = Now {
            mono: 0,
            wall: WALL,
        };
        call(&api, "POST", "/registro/1.0/apps", r#"{"name":"web"}"#, now);
        let instance = r#"{"id":"a","ip":"10.0.0.1","port":80}"#;
        call(&api, "POST", "/registro/1.0/apps/web", instance, now);
        // A plain heartbeat records nothing; the first one makes `a` up.
        call(&api, "PUT", "/registro/1.0/apps/web/a", "", now);
        call(&api, "PUT", "/registro/1.0/apps/web/a", "", now);
        assert_eq!(*seen.lock().unwrap(), vec![(2, 1), (3, 1), (4, 1)]);
    }

    /// A store that cannot be reached: every change answers 503 with JSON.
    struct Unreachable;

    fn unreachable() -> store::Answer {
        Err(store::Error::Unavailable("etcd is unreachable".into()))
    }

    impl Store for Unreachable {
        fn create_app(&self, _: &View, _: &str, _: Now) -> store::Answer {
            unreachable()
        }
        fn register(&self, _: &View, _: &Registration<'_>, _: Now) -> store::Answer {
            unreachable()
        }
        fn renew(&self, _: &View, _: &str, _: &str, _: Now) -> store::Answer {
            unreachable()
        }
        fn take_out_of_service(&self, _: &View, _: &str, _: &str, _: Now) -> store::Answer {
            unreachable()
        }
        fn health(&self) -> Result<(), &'static str> {
            Err("store unreachable")
        }
        fn describe(&self) -> String {
            "unreachable".into()
        }
        fn spawn(&self, _: &Arc<View>) -> std::io::Result<store::Threads> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
    }

    #[test]
    fn an_unreachable_store_answers_503_with_json() {
        let log = crate::log::Logger::start(false)
            .expect("no logger thread")
            .log();
        let access = Access::load(&crate::auth::TokenFiles::default()).expect("no token files");
        let periods = Periods::DEFAULT;
        let view = Arc::new(View::new(Registry::new(periods), log));
        let api = Api::new(view, Box::new(Unreachable), access);
        let now = Now {
            mono: 0,
            wall: WALL,
        };
        for (method, target, body) in [
            ("POST", "/registro/1.0/apps", r#"{"name":"web"}"#),
            (
                "POST",
                "/registro/1.0/apps/web",
                r#"{"id":"a","ip":"10.0.0.1","port":80}"#,
            ),
            ("PUT", "/registro/1.0/apps/web/a", ""),
            ("DELETE", "/registro/1.0/apps/web/a", ""),
        ] {
            let (status, body) = call(&api, method, target, body, now);
            assert_eq!(status, 503, "{method} {target}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(v["error"], "etcd is unreachable");
        }
        assert_eq!(
            call(&api, "GET", "/healthz", "", now),
            (503, "{\"status\":\"store unreachable\"}\n".into())
        );
        assert_eq!(call(&api, "GET", "/registro/1.0/apps", "", now).0, 200);
    }

    #[test]
    fn segments_round_trip() {
        for s in ["web", "a b", "é/ü", "%", "\r\n"] {
            assert_eq!(decode_segment(&encode_segment(s)).ok().as_deref(), Some(s));
        }
    }
}
