use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong when talking to the registry.
///
/// The variants tell apart a registry that never answered
/// ([`Error::Transport`], [`Error::Timeout`]) from one that answered with a
/// status the client did not expect ([`Error::Status`]).
///
/// `Error` is `Clone` so that a [`Heartbeat`](crate::Heartbeat) can hand out
/// copies of its last error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The request got no HTTP answer: the registry refused the connection,
    /// the host name did not resolve, or the connection broke.
    Transport(TransportError),
    /// The registry URL is not one the client can use: no scheme (`localhost:8080`
    /// for `http://localhost:8080`), `https://` without this crate's `tls`
    /// feature, another scheme, or no URL at all. The message says which
    /// and what to write instead; nothing was sent.
    Url(String),
    /// The registry did not answer in full within the client's timeout
    /// (the duration it was given).
    Timeout(Duration),
    /// The registry answered with a status code other than the one the
    /// operation expects, e.g. 404 for an unknown application.
    Status {
        /// The HTTP status code, e.g. 404.
        code: u16,
        /// The server's explanation, from a `{"error": "..."}` body, when the
        /// answer had one (the original Go server sends none).
        message: Option<String>,
    },
    /// The registry answered 401: it demands a token (see
    /// [`ClientBuilder::token`](crate::ClientBuilder::token)) and the client
    /// sent none, or one it does not accept.
    Unauthorized {
        /// The server's explanation, from a `{"error": "..."}` body.
        message: Option<String>,
    },
    /// The registry answered 403 to a token that it knows but that may only
    /// read (`WWW-Authenticate: Bearer error="insufficient_scope"`): changing
    /// the registry needs a token from its `--token-file`. Not to be taken
    /// for the 403 of an instance out of service, which is an
    /// [`Error::Status`].
    Forbidden {
        /// The server's explanation, from a `{"error": "..."}` body.
        message: Option<String>,
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
            Error::Status { code: 404, message } => message
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

    /// Whether the registry could not be reached or did not answer in time:
    /// an error worth retrying later.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport(_) | Error::Timeout(_))
    }

    pub(crate) fn from_ureq(err: ureq::Error, timeout: Duration) -> Error {
        match err {
            ureq::Error::Timeout(_) => Error::Timeout(timeout),
            other => Error::Transport(TransportError(Arc::new(other))),
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

    pub(crate) fn invalid_response(err: serde_json::Error) -> Error {
        Error::InvalidResponse(InvalidResponse(Arc::new(err)))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport(e) => write!(f, "registry unreachable: {e}"),
            Error::Url(m) => f.write_str(m),
            Error::Timeout(d) => write!(f, "registry did not answer within {d:?}"),
            Error::Status {
                code,
                message: Some(m),
            } => write!(f, "http status: {code}: {m}"),
            Error::Status {
                code,
                message: None,
            } => write!(f, "http status: {code}"),
            Error::Unauthorized { message: Some(m) } => write!(f, "unauthorized: {m}"),
            Error::Unauthorized { message: None } => write!(f, "unauthorized"),
            Error::Forbidden { message: Some(m) } => write!(f, "forbidden: {m}"),
            Error::Forbidden { message: None } => write!(f, "forbidden: the token may only read"),
            Error::InvalidResponse(e) => write!(f, "invalid response from registry: {e}"),
            Error::Spawn(e) => write!(f, "cannot start a background thread: {e}"),
            Error::Signals(e) => write!(f, "cannot handle SIGTERM and SIGINT: {e}"),
            Error::Panicked(m) => write!(f, "the background thread panicked: {m}"),
            Error::Incomplete(what) => write!(f, "incomplete registration: no {what} given"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Transport(e) => Some(e),
            Error::InvalidResponse(e) => Some(e),
            Error::Spawn(e) | Error::Signals(e) => Some(&**e),
            Error::Timeout(_)
            | Error::Url(_)
            | Error::Status { .. }
            | Error::Unauthorized { .. }
            | Error::Forbidden { .. }
            | Error::Panicked(_)
            | Error::Incomplete(_) => None,
        }
    }
}

/// Why a request got no HTTP answer (see [`Error::Transport`]).
///
/// Its [`source`](std::error::Error::source) is the HTTP library's own error.
#[derive(Debug, Clone)]
pub struct TransportError(Arc<ureq::Error>);

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Why a body could not be decoded (see [`Error::InvalidResponse`]).
///
/// Its [`source`](std::error::Error::source) is the JSON parser's error.
#[derive(Debug, Clone)]
pub struct InvalidResponse(Arc<serde_json::Error>);

impl fmt::Display for InvalidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for InvalidResponse {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
