use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;

use crate::cache::Cache;
use crate::error::Error;
use crate::heartbeat::Heartbeat;
use crate::types::{Application, Instance, Metadata, Status};
use crate::watch::Watch;

/// How long a request may take, end to end, unless the builder says otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`Client::start_heartbeat`] renews: the registry's contract.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// How long a watch or cache asks the registry to hold a long poll, unless
/// the builder says otherwise: the registry's own default.
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The longest hold the registry grants (`?wait=` above it is cut to it).
const MAX_WAIT: Duration = Duration::from_secs(600);

/// The most of a successful answer's body the client reads (an application
/// list of thousands of instances fits easily).
const BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// The most of an error answer's body the client reads for its message.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;

/// A handle on a registry, for registering, renewing, deregistering and
/// discovering instances.
///
/// It holds a pool of keep-alive connections; clones are cheap and share it.
/// Every request gives up after the client's timeout (5 seconds unless
/// [`ClientBuilder::timeout`] says otherwise).
///
/// A client may know several servers of one registry
/// ([`ClientBuilder::url`]): each request goes to the one in use, and moves
/// on to the next after a connection error, a timeout or a 503, which then
/// stays in use (for every clone) while it answers. [`Client::url`] says
/// which is in use, and [`ClientBuilder::on_failover`] tells the program
/// each move.
#[derive(Debug, Clone)]
pub struct Client {
    /// Each root URL with `/1.0` appended and no trailing slash; never empty.
    bases: Arc<[Base]>,
    /// Which of `bases` is in use, shared by clones.
    current: Arc<AtomicUsize>,
    agent: ureq::Agent,
    timeout: Duration,
    /// How long a watch's long poll asks the registry to wait.
    wait: Duration,
    /// The `Authorization` header's value, `Bearer <token>`.
    authorization: Option<Arc<str>>,
    on_failover: Option<OnFailover>,
}

/// The callback of [`ClientBuilder::on_failover`].
#[derive(Clone)]
struct OnFailover(Arc<dyn Fn(&Failover) + Send + Sync>);

impl std::fmt::Debug for OnFailover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnFailover(..)")
    }
}

/// A client's move from one server of the registry to another, as
/// [`ClientBuilder::on_failover`]'s callback is told it.
///
/// Displays as `moved from http://10.0.0.1:8080/registro to
/// http://10.0.0.2:8080/registro: registry unreachable: ...`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Failover {
    /// The root URL of the server that was in use.
    pub from: String,
    /// The root URL of the server now in use: it answered.
    pub to: String,
    /// Why the client left `from`: no answer, or a 503.
    pub error: Error,
}

impl std::fmt::Display for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "moved from {} to {}: {}", self.from, self.to, self.error)
    }
}

/// One server's root URL, as given and as requests use it.
#[derive(Debug)]
struct Base {
    root: String,
    /// The root with `/1.0` appended, without a trailing slash.
    api: String,
    /// Why the URL cannot be used, if it cannot (no scheme, `https` without
    /// the `tls` feature): every request to it is that error.
    problem: Option<String>,
}

impl Base {
    fn new(root: &str) -> Base {
        let root = root.trim();
        let mut api = root.trim_end_matches('/').to_owned();
        api.push_str("/1.0");
        Base {
            root: root.to_owned(),
            api,
            problem: url_problem(root),
        }
    }
}

/// What is wrong with a root URL that the client cannot use, said so that
/// the fix is plain.
fn url_problem(root: &str) -> Option<String> {
    if root.is_empty() {
        return Some(
            "no registry URL given: write one like http://localhost:8080/registro".to_owned(),
        );
    }
    let Some((scheme, rest)) = root.split_once("://") else {
        return Some(format!(
            "the registry URL {root:?} has no scheme: write http://{root}"
        ));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Some(format!("the registry URL {root:?} has no host"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "http" => None,
        "https" if cfg!(feature = "tls") => None,
        "https" => Some(format!(
            "the registry URL {root:?} is https, which needs the \"tls\" feature of \
             registro-client: registro-client = {{ version = \"...\", features = [\"tls\"] }}"
        )),
        other => Some(format!(
            "the registry URL {root:?} has the scheme {other:?}: use http:// or https://"
        )),
    }
}

/// Configures a [`Client`]: `Client::builder(url).timeout(d).build()`.
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    roots: Vec<String>,
    timeout: Duration,
    wait: Duration,
    token: Option<String>,
    on_failover: Option<OnFailover>,
}

impl ClientBuilder {
    /// The most a request may take, end to end: connecting, sending and
    /// reading the whole answer. Defaults to 5 seconds.
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// A token to send as `Authorization: Bearer <token>` with every
    /// request, for a registry started with `--token-file` (and
    /// `--read-token-file`). Heartbeats, watches and caches started from the
    /// client send it too. A registry that refuses it answers 401:
    /// [`Error::Unauthorized`].
    ///
    /// ```
    /// use registro_client::Client;
    ///
    /// let token = std::env::var("REGISTRO_TOKEN").unwrap_or_default();
    /// let client = Client::builder("http://localhost:8080/registro")
    ///     .token(token.trim())
    ///     .build();
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> ClientBuilder {
        self.token = Some(token.into());
        self
    }

    /// Another server of the same registry, tried after the ones given
    /// before it when they fail (a connection error, a timeout or a 503).
    ///
    /// ```
    /// use registro_client::Client;
    ///
    /// let client = Client::builder("http://10.0.0.1:8080/registro")
    ///     .url("http://10.0.0.2:8080/registro")
    ///     .url("http://10.0.0.3:8080/registro")
    ///     .build();
    /// assert_eq!(client.url(), "http://10.0.0.1:8080/registro");
    /// ```
    ///
    /// The servers should serve one registry (Registro on etcd, `--store
    /// etcd://...`): a server that does not know an instance answers its
    /// heartbeat 404, and the heartbeat then registers it there again.
    pub fn url(mut self, root: impl AsRef<str>) -> ClientBuilder {
        self.roots.push(root.as_ref().to_owned());
        self
    }

    /// Each of these servers, as [`ClientBuilder::url`] adds one: e.g. the
    /// parts of `REGISTRO_URLS=http://a:8080/registro,http://b:8080/registro`.
    ///
    /// ```
    /// use registro_client::Client;
    ///
    /// let urls = "http://10.0.0.1:8080/registro,http://10.0.0.2:8080/registro";
    /// let mut parts = urls.split(',');
    /// let first = parts.next().unwrap_or_default();
    /// let client = Client::builder(first).urls(parts).build();
    /// # drop(client);
    /// ```
    pub fn urls<I>(mut self, roots: I) -> ClientBuilder
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.roots
            .extend(roots.into_iter().map(|r| r.as_ref().to_owned()));
        self
    }

    /// How long a [`Watch`] or a [`Cache`] asks the registry to hold each
    /// long poll before answering "no change": 60 seconds by default (the
    /// registry's own default), at most 600 (the registry's limit). An idle
    /// cache makes one request per application per wait.
    ///
    /// A shorter wait costs more requests and changes nothing else: a
    /// change is answered at once whatever the wait, and
    /// [`Cache::stop`](crate::Cache::stop) interrupts a wait in progress.
    pub fn watch_wait(mut self, wait: Duration) -> ClientBuilder {
        self.wait = wait.clamp(Duration::from_millis(1), MAX_WAIT);
        self
    }

    /// A function called each time the client moves to another server
    /// (see [`ClientBuilder::url`]), to log it or count it: the library
    /// prints nothing itself.
    ///
    /// ```
    /// use registro_client::Client;
    ///
    /// let client = Client::builder("http://10.0.0.1:8080/registro")
    ///     .url("http://10.0.0.2:8080/registro")
    ///     .on_failover(|event| eprintln!("registry: {event}"))
    ///     .build();
    /// # drop(client);
    /// ```
    ///
    /// prints `registry: moved from http://10.0.0.1:8080/registro to
    /// http://10.0.0.2:8080/registro: registry unreachable:
    /// http://10.0.0.1:8080/registro: connection refused` once, when the
    /// first server stops answering and the second answers; the client
    /// then stays with the second. It runs on the thread whose request
    /// moved: yours, or a heartbeat's or a cache's own thread, so keep it
    /// short. A panic in it is caught and ignored. [`Client::url`] says
    /// which server is in use at any time.
    pub fn on_failover(mut self, f: impl Fn(&Failover) + Send + Sync + 'static) -> ClientBuilder {
        self.on_failover = Some(OnFailover(Arc::new(f)));
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
        let bases: Vec<Base> = self.roots.iter().map(|r| Base::new(r)).collect();
        Client {
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            agent,
            timeout: self.timeout,
            wait: self.wait,
            authorization: self.token.map(|t| Arc::from(format!("Bearer {t}"))),
            on_failover: self.on_failover,
        }
    }
}

impl Client {
    /// A client for the registry at `root`, e.g.
    /// `"http://localhost:8080/registro"` (the client appends `/1.0` and the
    /// route), with the default 5-second timeout.
    ///
    /// The URL is checked by the first request: one without a scheme, or
    /// `https://` without the `tls` feature, makes every request fail with
    /// [`Error::Url`], which says what to write instead.
    ///
    /// Any string will do:
    ///
    /// ```
    /// use registro_client::Client;
    ///
    /// let root: String = std::env::var("REGISTRO_URL")
    ///     .unwrap_or_else(|_| "http://localhost:8080/registro".to_owned());
    /// let client = Client::new(root);
    /// # drop(client);
    /// ```
    pub fn new(root: impl AsRef<str>) -> Client {
        Client::builder(root).build()
    }

    /// A builder for a client of the registry at `root`, to set its timeout,
    /// token, other servers ([`ClientBuilder::url`]) or watch wait.
    pub fn builder(root: impl AsRef<str>) -> ClientBuilder {
        ClientBuilder {
            roots: vec![root.as_ref().to_owned()],
            timeout: DEFAULT_TIMEOUT,
            wait: DEFAULT_WAIT,
            token: None,
            on_failover: None,
        }
    }

    /// The most a request may take, end to end.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The root URL of the server in use: the first one given until a
    /// request moves on to another (see [`ClientBuilder::url`], and
    /// [`ClientBuilder::on_failover`] to be told of each move).
    pub fn url(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()].root
    }

    /// How long a watch's long poll asks the registry to wait
    /// ([`ClientBuilder::watch_wait`]).
    pub(crate) fn wait(&self) -> Duration {
        self.wait
    }

    /// A clone with a connection pool of its own, for a watch: stopping the
    /// watch shuts that pool down, interrupting its long poll, and leaves
    /// the client's other requests alone.
    pub(crate) fn own_pool(&self) -> Client {
        Client {
            agent: ureq::Agent::new_with_config(self.agent.config().clone()),
            ..self.clone()
        }
    }

    /// The connection pool, for a watch's [`Stop`](crate::stop::Stop).
    pub(crate) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// Registers an instance of an application, creating the application
    /// first when the registry does not know it yet; returns both, the
    /// application including the new instance.
    ///
    /// **Mind the order: the instance's id comes first, then the
    /// application's name** (as in the original Go client), while
    /// [`Client::instance`] and the routes take the application first. Both
    /// are strings, so a swapped pair compiles and registers an application
    /// named like the instance. [`Client::registration`] names each part
    /// and adds metadata:
    ///
    /// ```no_run
    /// # let client = registro_client::Client::new("http://localhost:8080/registro");
    /// // Same as client.register_service("web-1", "web", "10.0.0.7", 8080):
    /// let (app, inst) = client
    ///     .registration()
    ///     .app("web")
    ///     .id("web-1")
    ///     .address("10.0.0.7", 8080)
    ///     .register()?;
    /// # Ok::<(), registro_client::Error>(())
    /// ```
    ///
    /// Another process creating the same application at the same moment is
    /// not an error. The instance is registered as
    /// [`Status::Starting`](crate::Status::Starting); start a heartbeat
    /// ([`Client::start_heartbeat`]) to bring it up and keep it up.
    pub fn register_service(
        &self,
        id: impl AsRef<str>,
        app: impl AsRef<str>,
        ip: impl AsRef<str>,
        port: u16,
    ) -> Result<(Application, Instance), Error> {
        self.register(app.as_ref(), &Instance::new(id.as_ref(), ip.as_ref(), port))
    }

    /// A registration to fill in part by part, with metadata if wanted;
    /// see [`Registration`].
    pub fn registration(&self) -> Registration<'_> {
        Registration {
            client: self,
            app: None,
            id: None,
            address: None,
            metadata: Metadata::new(),
        }
    }

    /// Registers `inst` in `app`, creating the application if need be.
    fn register(&self, app: &str, inst: &Instance) -> Result<(Application, Instance), Error> {
        let mut application = match self.app(app) {
            Ok(found) => found,
            Err(e) if e.is_unknown_app() => self.ensure_app(app)?,
            Err(e) => return Err(e),
        };
        let instance = self.post_instance(app, inst)?;
        application.instances.retain(|i| i.id != inst.id);
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
        let list: AppList = self.get(&route(&["apps"]))?;
        Ok(list.applications.unwrap_or_default())
    }

    /// The application of this name, with its instances; an unknown name is
    /// an [`Error::Status`] with code 404 ([`Error::is_unknown_app`]).
    pub fn app(&self, name: impl AsRef<str>) -> Result<Application, Error> {
        self.get(&route(&["apps", name.as_ref()]))
    }

    /// The application of this name with only the instances of these
    /// statuses: `&[Status::Up]` for the ones to send traffic to,
    /// `&[Status::Up, Status::Starting]` to include those coming up.
    ///
    /// The registry filters (`?status=up,starting`), so little crosses the
    /// network; the client filters again, so the answer is the same from a
    /// registry that ignores the filter (the original Go server). An unknown
    /// name is an [`Error::Status`] with code 404.
    ///
    /// ```no_run
    /// use registro_client::{Client, Status};
    ///
    /// let client = Client::new("http://localhost:8080/registro");
    /// for inst in client.app_with_status("web", &[Status::Up])?.instances {
    ///     println!("{}:{}", inst.ip, inst.port);
    /// }
    /// # Ok::<(), registro_client::Error>(())
    /// ```
    pub fn app_with_status(
        &self,
        name: impl AsRef<str>,
        statuses: &[Status],
    ) -> Result<Application, Error> {
        let mut url = route(&["apps", name.as_ref()]);
        push_status_query(&mut url, statuses);
        let app: Application = self.get(&url)?;
        Ok(app.with_status(statuses))
    }

    /// Every application the registry knows, each with only the instances
    /// of these statuses (an application left with none is still listed);
    /// filtered by the registry and again by the client, as in
    /// [`Client::app_with_status`].
    pub fn apps_with_status(&self, statuses: &[Status]) -> Result<Vec<Application>, Error> {
        let mut url = route(&["apps"]);
        push_status_query(&mut url, statuses);
        let list: AppList = self.get(&url)?;
        Ok(list
            .applications
            .unwrap_or_default()
            .into_iter()
            .map(|app| app.with_status(statuses))
            .collect())
    }

    /// A watch on the application of this name: a blocking iterator that
    /// yields the application each time it changes; see [`Watch`].
    pub fn watch(&self, app: impl AsRef<str>) -> Watch {
        Watch::new(self, app.as_ref())
    }

    /// A discovery cache of these applications, kept current by a thread
    /// per application; see [`Cache`]. Their first views are read before
    /// this returns.
    ///
    /// Any list of names will do: `&["web", "db"]`, a `Vec<String>`, a
    /// `&[String]`, an iterator.
    ///
    /// ```no_run
    /// # let client = registro_client::Client::new("http://localhost:8080/registro");
    /// let apps: Vec<String> = std::env::args().skip(1).collect();
    /// let cache = client.cache(&apps);
    /// # drop(cache);
    /// ```
    pub fn cache<I>(&self, apps: I) -> Cache
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Cache::start(self, apps)
    }

    /// One instance of an application; an unknown application or instance is
    /// an [`Error::Status`] with code 404.
    pub fn instance(&self, app: impl AsRef<str>, id: impl AsRef<str>) -> Result<Instance, Error> {
        self.get(&route(&["apps", app.as_ref(), id.as_ref()]))
    }

    /// Refreshes `app` (its instances and their statuses) from the registry.
    pub fn update_application(&self, app: &mut Application) -> Result<(), Error> {
        *app = self.app(&app.name)?;
        Ok(())
    }

    /// Creates an application with no instances; one of that name existing
    /// already is an [`Error::Status`] with code 409.
    pub fn new_app(&self, name: impl AsRef<str>) -> Result<Application, Error> {
        let name = name.as_ref();
        let body = json!({ "name": name });
        let answer = self.send(Method::Post(body), &route(&["apps"]), 201)?;
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
    /// [`Client::registration`] registers with metadata.
    pub fn new_instance(
        &self,
        app: &Application,
        id: impl AsRef<str>,
        ip: impl AsRef<str>,
        port: u16,
    ) -> Result<Instance, Error> {
        self.post_instance(&app.name, &Instance::new(id.as_ref(), ip.as_ref(), port))
    }

    /// Registers `inst` (its id, address and metadata) in the application
    /// named `app`.
    pub(crate) fn post_instance(&self, app: &str, inst: &Instance) -> Result<Instance, Error> {
        let mut body = json!({ "id": inst.id, "ip": inst.ip, "port": inst.port });
        if !inst.metadata.is_empty() {
            body["metadata"] = json!(inst.metadata);
        }
        let answer = self.send(Method::Post(body), &route(&["apps", app]), 201)?;
        // This project's server answers with the instance; the original, with
        // an empty body.
        Ok(
            serde_json::from_slice(&answer).unwrap_or_else(|_| Instance {
                last_renewal: unix_now(),
                status: Status::Starting,
                ..inst.clone()
            }),
        )
    }

    /// Sends one heartbeat for `inst`, which makes it [`Status::Up`](crate::Status::Up).
    ///
    /// An instance the registry does not know (it restarted, or evicted it) is
    /// an [`Error::Status`] with code 404; one taken out of service, 403.
    pub fn renew_instance(&self, app: &Application, inst: &Instance) -> Result<(), Error> {
        self.send(Method::Put, &route(&["apps", &app.name, &inst.id]), 204)?;
        Ok(())
    }

    /// Deregisters `inst`: the registry marks it
    /// [`Status::OutOfService`](crate::Status::OutOfService) and refuses its
    /// heartbeats; it is removed after the registry's eviction period.
    pub fn delete_instance(&self, app: &Application, inst: &Instance) -> Result<(), Error> {
        self.send(Method::Delete, &route(&["apps", &app.name, &inst.id]), 204)?;
        Ok(())
    }

    /// Renews `inst` once, then every 30 seconds on a thread of its own
    /// (with a little jitter); see [`Heartbeat`].
    ///
    /// The first renewal happens before this returns, so the instance reads
    /// `up` when you have the handle; if it failed,
    /// [`Heartbeat::last_error`] says why and the thread keeps trying
    /// (unless the answer was 403). This waits for that renewal, at most the
    /// client's timeout per request.
    ///
    /// 30 seconds suits the registry's default `--down-after` of 90 seconds.
    /// Against a registry started with a shorter `--down-after`, renew more
    /// often with [`Client::start_heartbeat_every`] (a third of it is a good
    /// choice), or the instance flaps between `up` and `down`.
    #[must_use = "dropping the Heartbeat stops it and deregisters the instance at once"]
    pub fn start_heartbeat(&self, app: &Application, inst: &Instance) -> Heartbeat {
        self.start_heartbeat_every(app, inst, DEFAULT_INTERVAL)
    }

    /// Renews `inst` once, then every `interval` on a thread of its own; see
    /// [`Client::start_heartbeat`] and [`Heartbeat`]. Intervals under a
    /// millisecond are raised to one; any longer one is accepted
    /// (`Duration::MAX` renews once).
    #[must_use = "dropping the Heartbeat stops it and deregisters the instance at once"]
    pub fn start_heartbeat_every(
        &self,
        app: &Application,
        inst: &Instance,
        interval: Duration,
    ) -> Heartbeat {
        Heartbeat::start(self.clone(), &app.name, inst, interval)
    }

    fn get<T: serde::de::DeserializeOwned>(&self, route: &str) -> Result<T, Error> {
        let reply = self.exchange(&Method::Get, route, 200, None)?;
        // Parsed whatever the Content-Type: the original server says text/plain.
        serde_json::from_slice(&reply.body).map_err(|e| Error::invalid_response(&reply.server, e))
    }

    /// Sends a request; returns the body of an answer with status `expect`,
    /// and an error for anything else.
    fn send(&self, method: Method, route: &str, expect: u16) -> Result<Vec<u8>, Error> {
        self.exchange(&method, route, expect, None)
            .map(|reply| reply.body)
    }

    /// Sends a request for `route` (e.g. `/apps/web?status=up`), with another
    /// timeout than the client's if given, to the server in use; after a
    /// connection error, a timeout or a 503, to the next, and so on once
    /// round. The server that answers otherwise stays in use. Returns the
    /// answer with status `expect`, and an error for anything else (the last
    /// server's, when none answered; a transport error names every server
    /// tried).
    pub(crate) fn exchange(
        &self,
        method: &Method,
        route: &str,
        expect: u16,
        timeout: Option<Duration>,
    ) -> Result<Reply, Error> {
        let count = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % count;
        let mut unreachable = Vec::new();
        let mut left: Option<Error> = None;
        let mut step = 0;
        loop {
            let at = (first + step) % count;
            let outcome = self.exchange_with(&self.bases[at], method, route, expect, timeout);
            let failed = matches!(&outcome, Err(e) if e.moves_on());
            step += 1;
            if failed && step < count {
                if let Err(e) = outcome {
                    if left.is_none() {
                        left = Some(e.clone());
                    }
                    if let Error::Transport(t) = e {
                        unreachable.push(t);
                    }
                }
                continue;
            }
            // A server that answered stays in use; a URL that cannot be
            // used does not become the one in use.
            if !failed && at != first && !matches!(outcome, Err(Error::Url(_))) {
                self.moved(first, at, left);
            }
            return outcome.map_err(|e| e.after(unreachable));
        }
    }

    /// Makes the server at `to` the one in use, and tells the callback,
    /// unless another request moved first.
    fn moved(&self, from: usize, to: usize, error: Option<Error>) {
        let swapped = self
            .current
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if let (true, Some(callback), Some(error)) = (swapped, &self.on_failover, error) {
            let event = Failover {
                from: self.bases[from].root.clone(),
                to: self.bases[to].root.clone(),
                error,
            };
            // The event is only read: nothing is left half-changed.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (callback.0)(&event)));
        }
    }

    /// One request to one server.
    fn exchange_with(
        &self,
        base: &Base,
        method: &Method,
        route: &str,
        expect: u16,
        timeout: Option<Duration>,
    ) -> Result<Reply, Error> {
        if let Some(problem) = &base.problem {
            return Err(Error::Url(problem.clone()));
        }
        let url = format!("{}{route}", base.api);
        let auth = self.authorization.as_deref();
        let sent = match method {
            Method::Get => prepare(self.agent.get(&url), auth, timeout).call(),
            Method::Post(body) => prepare(self.agent.post(&url), auth, timeout).send_json(body),
            Method::Put => prepare(self.agent.put(&url), auth, timeout).send_empty(),
            Method::Delete => prepare(self.agent.delete(&url), auth, timeout).call(),
        };
        let timeout = timeout.unwrap_or(self.timeout);
        let server = base.root.as_str();
        let mut response = sent.map_err(|e| Error::from_ureq(server, e, timeout))?;
        let code = response.status().as_u16();
        if code == expect {
            let index = response
                .headers()
                .get("registro-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            // Read even an empty body in full, so the connection can be reused.
            let body = response
                .body_mut()
                .with_config()
                .limit(BODY_LIMIT)
                .read_to_vec()
                .map_err(|e| Error::from_ureq(server, e, timeout))?;
            return Ok(Reply {
                body,
                index,
                server: server.to_owned(),
            });
        }
        let read_only = code == 403
            && response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("insufficient_scope"));
        let message = response
            .body_mut()
            .with_config()
            .limit(ERROR_BODY_LIMIT)
            .read_to_vec()
            .ok()
            .and_then(|body| error_message(&body));
        let server = server.to_owned();
        if code == 401 {
            return Err(Error::Unauthorized { message, server });
        }
        if read_only {
            return Err(Error::Forbidden { message, server });
        }
        Err(Error::Status {
            code,
            message,
            server,
        })
    }
}

/// The route of these segments, each percent-encoded: `/apps/web`.
pub(crate) fn route(segments: &[&str]) -> String {
    let mut route = String::new();
    for segment in segments {
        route.push('/');
        push_encoded(&mut route, segment);
    }
    route
}

/// The body of `GET /apps`.
#[derive(Deserialize)]
struct AppList {
    #[serde(default)]
    applications: Option<Vec<Application>>,
}

/// Appends `?status=a,b` (nothing for no statuses).
fn push_status_query(url: &mut String, statuses: &[Status]) {
    for (n, status) in statuses.iter().enumerate() {
        url.push_str(if n == 0 { "?status=" } else { "," });
        url.push_str(status.as_str());
    }
}

/// A registration built part by part, from [`Client::registration`]: each
/// part is named, so the application and the instance's id cannot be
/// swapped unnoticed, and metadata can be added.
///
/// ```no_run
/// use registro_client::Client;
///
/// let client = Client::new("http://localhost:8080/registro");
/// let (app, inst) = client
///     .registration()
///     .app("web")
///     .id("web-1")
///     .address("10.0.0.7", 8080)
///     .metadata("zone", "eu-1")
///     .metadata("version", "1.4.2")
///     .register()?;
/// let heartbeat = client.start_heartbeat(&app, &inst);
/// # drop(heartbeat);
/// # Ok::<(), registro_client::Error>(())
/// ```
///
/// Metadata is at most 64 entries, keys of 1 to 128 bytes and values of at
/// most 1024, 8 KiB of JSON in all; the registry refuses more with a 400.
/// A registry without metadata support (the original Go server) ignores it.
#[derive(Debug, Clone)]
#[must_use = "a registration does nothing until `register` is called"]
pub struct Registration<'c> {
    client: &'c Client,
    app: Option<String>,
    id: Option<String>,
    address: Option<(String, u16)>,
    metadata: Metadata,
}

impl Registration<'_> {
    /// The application's name (required); it is created if need be.
    pub fn app(mut self, name: impl Into<String>) -> Self {
        self.app = Some(name.into());
        self
    }

    /// The instance's id, unique within its application (required).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Where other services reach the instance (required).
    pub fn address(mut self, ip: impl Into<String>, port: u16) -> Self {
        self.address = Some((ip.into(), port));
        self
    }

    /// One metadata entry; a key given twice keeps the later value.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Every entry of `metadata`, added to those given so far.
    pub fn metadata_from<K, V>(mut self, metadata: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.metadata
            .extend(metadata.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Registers the instance, creating the application first if the
    /// registry does not know it; returns both, as
    /// [`Client::register_service`] does. A missing part is an
    /// [`Error::Incomplete`], before any request.
    pub fn register(self) -> Result<(Application, Instance), Error> {
        let app = self
            .app
            .ok_or(Error::Incomplete("the application's name"))?;
        let id = self.id.ok_or(Error::Incomplete("the instance's id"))?;
        let (ip, port) = self
            .address
            .ok_or(Error::Incomplete("the instance's address"))?;
        let inst = Instance {
            metadata: self.metadata,
            ..Instance::new(id, ip, port)
        };
        self.client.register(&app, &inst)
    }
}

/// An answer with the expected status.
pub(crate) struct Reply {
    pub(crate) body: Vec<u8>,
    /// The `Registro-Index` header, when the registry sent one.
    pub(crate) index: Option<u64>,
    /// The root URL of the server that answered.
    pub(crate) server: String,
}

/// A request with the token, and its own timeout if it has one.
fn prepare<B>(
    request: ureq::RequestBuilder<B>,
    auth: Option<&str>,
    timeout: Option<Duration>,
) -> ureq::RequestBuilder<B> {
    let request = match auth {
        Some(value) => request.header("Authorization", value),
        None => request,
    };
    match timeout {
        Some(t) => request.config().timeout_global(Some(t)).build(),
        None => request,
    }
}

pub(crate) enum Method {
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
        let client = Client::new(root);
        assert_eq!(
            format!("{}{}", client.bases[0].api, route(segments)),
            expected
        );
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
            server: "http://h:1/registro".into(),
        };
        assert_eq!(
            e.to_string(),
            "http status 404 from http://h:1/registro: no such app"
        );
        assert_eq!(format!("{e:?}"), e.to_string());
        assert!(e.is_not_found() && !e.is_transport());
        assert_eq!(e.server(), Some("http://h:1/registro"));
        let e = Error::Status {
            code: 409,
            message: None,
            server: "http://h:1/registro".into(),
        };
        assert_eq!(e.to_string(), "http status 409 from http://h:1/registro");
        assert_eq!(e.status(), Some(409));
        let e = Error::from_ureq(
            "http://h:1/registro",
            ureq::Error::Timeout(ureq::Timeout::Global),
            Duration::from_millis(250),
        );
        assert_eq!(
            e.to_string(),
            "registry unreachable: http://h:1/registro: no answer within 250ms"
        );
        assert!(e.is_transport() && e.is_timeout() && e.status().is_none());
        let refused = Error::from_ureq(
            "http://h:2/registro",
            ureq::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
            Duration::from_secs(5),
        );
        let Error::Transport(first) = refused else {
            panic!("not a transport error");
        };
        let both = e.after(vec![first]);
        assert_eq!(
            format!("{both:?}"),
            "registry unreachable: http://h:2/registro: connection refused; \
             http://h:1/registro: no answer within 250ms"
        );
        assert_eq!(both.server(), Some("http://h:1/registro"));
        let e = Error::NotCached {
            app: "wbe".into(),
            cached: vec!["db".into(), "web".into()],
        };
        assert_eq!(
            e.to_string(),
            "the cache does not watch the application \"wbe\" (it watches \"db\", \"web\"); name it in client.cache([...])"
        );
    }
}
