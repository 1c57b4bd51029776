use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong when talking to the registry.
///
/// The variants tell apart a registry that never answered
/// ([`Error::Transport`]) from one that answered with a status the client
/// did not expect ([`Error::Status`]). Each error of a request names the
/// server it came from, and a request that no server answered names every
/// server tried:
///
/// ```text
/// registry unreachable: http://10.0.0.1:8080/registro: connection refused; http://10.0.0.2:8080/registro: no answer within 5s
/// http status 404 from http://10.0.0.1:8080/registro: no such application "web"
/// ```
///
/// `Debug` prints the same message as `Display`, so a
/// `fn main() -> Result<(), registro_client::Error>` that ends with `?`
/// prints it as it is; match on the variants for the details.
///
/// `Error` is `Clone` so that a [`Heartbeat`](crate::Heartbeat) can hand out
/// copies of its last error.
#[derive(Clone)]
#[non_exhaustive]
pub enum Error {
    /// No server tried gave an HTTP answer: each refused the connection,
    /// did not resolve, broke the connection, or did not answer in full
    /// within the client's timeout. [`TransportError`] names each server
    /// and what happened with it.
    Transport(TransportError),
    /// The registry URL is not one the client can use: no scheme (`localhost:8080`
    /// for `http://localhost:8080`), `https://` without this crate's `tls`
    /// feature, another scheme, or no URL at all. The message says which
    /// and what to write instead; nothing was sent.
    Url(String),
    /// The registry answered with a status code other than the one the
    /// operation expects, e.g. 404 for an unknown application.
    Status {
        /// The HTTP status code, e.g. 404.
        code: u16,
        /// The server's explanation, from a `{"error": "..."}` body, when the
        /// answer had one (the original Go server sends none).
        message: Option<String>,
        /// The root URL of the server that answered.
        server: String,
    },
    /// The registry answered 401: it demands a token (see
    /// [`ClientBuilder::token`](crate::ClientBuilder::token)) and the client
    /// sent none, or one it does not accept.
    Unauthorized {
        /// The server's explanation, from a `{"error": "..."}` body.
        message: Option<String>,
        /// The root URL of the server that answered.
        server: String,
    },
    /// The registry answered 403 to a token that it knows but that may only
    /// read (`WWW-Authenticate: Bearer error="insufficient_scope"`): changing
    /// the registry needs a token from its `--token-file`. Not to be taken
    /// for the 403 of an instance out of service, which is an
    /// [`Error::Status`].
    Forbidden {
        /// The server's explanation, from a `{"error": "..."}` body.
        message: Option<String>,
        /// The root URL of the server that answered.
        server: String,
    },
    /// The registry answered with the expected status, but the body is not the
    /// JSON the operation expects.
    InvalidResponse(InvalidResponse),
    /// The operating system would not start the heartbeat's or the cache's
    /// thread.
    Spawn(Arc<std::io::Error>),
    /// The handlers of SIGTERM and SIGINT could not be installed (from
    /// `stop_on_signals`, the `signal` feature).
    Signals(Arc<std::io::Error>),
    /// A [`Registration`](crate::Registration) lacked a required part (named
    /// here); nothing was sent.
    Incomplete(&'static str),
    /// The heartbeat's or the cache's thread ended with a panic (a bug in
    /// this crate); the panic's message.
    Panicked(String),
    /// A [`Cache`](crate::Cache) was asked about an application it does not
    /// watch: one not named in [`Client::cache`](crate::Client::cache),
    /// most likely a typo. Not to be taken for an application without an
    /// `up` instance, which is `Ok(None)` from [`Cache::pick`](crate::Cache::pick).
    NotCached {
        /// The application asked for.
        app: String,
        /// The applications the cache watches.
        cached: Vec<String>,
    },
}

impl Error {
    /// The HTTP status code, when the registry answered with an unexpected
    /// one (401 for [`Error::Unauthorized`]).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { code, .. } => Some(*code),
            Error::Unauthorized { .. } => Some(401),
            Error::Forbidden { .. } => Some(403),
            _ => None,
        }
    }

    /// The root URL of the server the error came from: the one that
    /// answered, or for a [`Error::Transport`] the last one tried (the
    /// error names them all). `None` for an error of no request.
    pub fn server(&self) -> Option<&str> {
        match self {
            Error::Status { server, .. }
            | Error::Unauthorized { server, .. }
            | Error::Forbidden { server, .. } => Some(server),
            Error::Transport(e) => e.servers().last(),
            Error::InvalidResponse(e) => Some(&e.server),
            _ => None,
        }
    }

    /// Whether the registry answered 404: no such application or instance,
    /// or no such route (a root URL without `/registro`, say).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether the registry answered that it knows no application of that
    /// name: a 404 whose `{"error": ...}` says "no such application", or a
    /// 404 without such a body (the original Go server sends none).
    ///
    /// A 404 that says something else is not: `no such route` means the
    /// root URL is wrong (`http://host:8080/` rather than
    /// `http://host:8080/registro`), and [`Cache`](crate::Cache) and
    /// [`Watch`](crate::Watch) report it as an error instead of reading it
    /// as an application with no instances.
    pub fn is_unknown_app(&self) -> bool {
        match self {
            Error::Status {
                code: 404, message, ..
            } => message
                .as_deref()
                .is_none_or(|m| m.starts_with("no such application")),
            _ => false,
        }
    }

    /// Whether a client with several servers should try the next: the
    /// server could not be reached, did not answer in time, or answered 503.
    pub(crate) fn moves_on(&self) -> bool {
        self.is_transport() || self.status() == Some(503)
    }

    /// Whether no server could be reached or answered in time: an error
    /// worth retrying later.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport(_))
    }

    /// Whether no server answered in full within the client's timeout (the
    /// last one tried timed out); a [`Error::Transport`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Transport(e) if e.is_timeout())
    }

    /// A request to `server` got no answer.
    pub(crate) fn from_ureq(server: &str, err: ureq::Error, timeout: Duration) -> Error {
        let cause = match err {
            ureq::Error::Timeout(_) => Cause::Timeout(timeout),
            other => Cause::Io(Arc::new(other)),
        };
        Error::Transport(TransportError {
            tried: vec![Attempt {
                server: server.to_owned(),
                cause,
            }],
        })
    }

    /// `self` after `earlier`, transport errors of the same request to
    /// other servers: one error naming every server tried.
    pub(crate) fn after(self, earlier: Vec<TransportError>) -> Error {
        match self {
            Error::Transport(last) if !earlier.is_empty() => {
                let mut tried: Vec<Attempt> = earlier.into_iter().flat_map(|e| e.tried).collect();
                tried.extend(last.tried);
                Error::Transport(TransportError { tried })
            }
            other => other,
        }
    }

    pub(crate) fn spawn_failed(err: std::io::Error) -> Error {
        Error::Spawn(Arc::new(err))
    }

    #[cfg_attr(not(all(unix, feature = "signal")), allow(dead_code))]
    pub(crate) fn signals(err: std::io::Error) -> Error {
        Error::Signals(Arc::new(err))
    }

    pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> Error {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "(no message)".to_owned()
        };
        Error::Panicked(message)
    }

    pub(crate) fn invalid_response(server: &str, err: serde_json::Error) -> Error {
        Error::InvalidResponse(InvalidResponse {
            server: server.to_owned(),
            source: Arc::new(err),
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport(e) => write!(f, "registry unreachable: {e}"),
            Error::Url(m) => f.write_str(m),
            Error::Status {
                code,
                message,
                server,
            } => {
                write!(f, "http status {code} from {server}")?;
                match message {
                    Some(m) => write!(f, ": {m}"),
                    None => Ok(()),
                }
            }
            Error::Unauthorized { message, server } => {
                write!(f, "unauthorized by {server}")?;
                match message {
                    Some(m) => write!(f, ": {m}"),
                    None => f.write_str(": no token, or one it does not accept"),
                }
            }
            Error::Forbidden { message, server } => {
                write!(f, "forbidden by {server}")?;
                match message {
                    Some(m) => write!(f, ": {m}"),
                    None => f.write_str(": the token may only read"),
                }
            }
            Error::InvalidResponse(e) => write!(f, "invalid response from {e}"),
            Error::Spawn(e) => write!(f, "cannot start a background thread: {e}"),
            Error::Signals(e) => write!(f, "cannot handle SIGTERM and SIGINT: {e}"),
            Error::Panicked(m) => write!(f, "the background thread panicked: {m}"),
            Error::Incomplete(what) => write!(f, "incomplete registration: no {what} given"),
            Error::NotCached { app, cached } => {
                write!(f, "the cache does not watch the application {app:?}")?;
                if cached.is_empty() {
                    f.write_str(" (it watches none)")?;
                } else {
                    write!(f, " (it watches {})", quoted(cached))?;
                }
                f.write_str("; name it in client.cache([...])")
            }
        }
    }
}

/// The message, as `Display` writes it: what `main` prints for an `Err`.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `"a", "b"`.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Transport(e) => Some(e),
            Error::InvalidResponse(e) => Some(e),
            Error::Spawn(e) | Error::Signals(e) => Some(&**e),
            Error::Url(_)
            | Error::Status { .. }
            | Error::Unauthorized { .. }
            | Error::Forbidden { .. }
            | Error::Panicked(_)
            | Error::Incomplete(_)
            | Error::NotCached { .. } => None,
        }
    }
}

/// Why a request got no HTTP answer (see [`Error::Transport`]): each server
/// tried, in order, and what happened with it.
///
/// It displays as `http://10.0.0.1:8080/registro: connection refused`, one
/// such part per server, joined with `; `. Its
/// [`source`](std::error::Error::source) is the HTTP library's error for the
/// last server, unless that one timed out.
#[derive(Clone)]
pub struct TransportError {
    /// Never empty.
    tried: Vec<Attempt>,
}

#[derive(Clone)]
struct Attempt {
    server: String,
    cause: Cause,
}

#[derive(Clone)]
enum Cause {
    Io(Arc<ureq::Error>),
    /// No full answer within this timeout.
    Timeout(Duration),
}

impl TransportError {
    /// The root URL of each server tried, in the order tried.
    pub fn servers(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        self.tried.iter().map(|a| a.server.as_str())
    }

    /// Whether the last server tried did not answer in full within the
    /// client's timeout (rather than refusing or breaking the connection).
    pub fn is_timeout(&self) -> bool {
        self.timeout().is_some()
    }

    /// The timeout the last server tried did not answer within, if that is
    /// what happened.
    pub fn timeout(&self) -> Option<Duration> {
        match self.tried.last().map(|a| &a.cause) {
            Some(Cause::Timeout(d)) => Some(*d),
            _ => None,
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, attempt) in self.tried.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: ", attempt.server)?;
            match &attempt.cause {
                Cause::Timeout(d) => write!(f, "no answer within {d:?}")?,
                Cause::Io(e) => f.write_str(&describe(e))?,
            }
        }
        Ok(())
    }
}

/// The message, as `Display` writes it.
impl fmt::Debug for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the HTTP library's error means, in plain words where it is a
/// common one ("connection refused", not "io: Connection refused (os error
/// 111)").
fn describe(e: &ureq::Error) -> String {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            ErrorKind::ConnectionReset => "connection reset".to_owned(),
            ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
            ErrorKind::UnexpectedEof => "connection closed before a full answer".to_owned(),
            ErrorKind::TimedOut => "connection timed out".to_owned(),
            _ => io.to_string(),
        },
        ureq::Error::HostNotFound => "host not found".to_owned(),
        other => other.to_string(),
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self.tried.last().map(|a| &a.cause) {
            Some(Cause::Io(e)) => Some(&**e),
            _ => None,
        }
    }
}

/// Why a body could not be decoded (see [`Error::InvalidResponse`]), and
/// from which server.
///
/// Its [`source`](std::error::Error::source) is the JSON parser's error.
#[derive(Clone)]
pub struct InvalidResponse {
    server: String,
    source: Arc<serde_json::Error>,
}

impl InvalidResponse {
    /// The root URL of the server that sent the body.
    pub fn server(&self) -> &str {
        &self.server
    }
}

impl fmt::Display for InvalidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.server, self.source)
    }
}

/// The message, as `Display` writes it.
impl fmt::Debug for InvalidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for InvalidResponse {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
