//! Access control (API.md Part 3 "Access control"): bearer tokens read from
//! the `--token-file` (may change the registry and read it) and the
//! `--read-token-file` (may only read it; when given, reads need a token).
//!
//! Tokens are kept only as keyed digests and compared in constant time: a
//! presented token is hashed with the same secret keys and its digest is
//! compared with every stored one, without stopping at the first match or
//! mismatch, so the time taken says nothing about any stored token (not even
//! its length). No token is ever written to the log or into an answer.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use crate::clock;
use crate::http::{Request, Response};
use crate::log::Log;
use crate::registry::Millis;

/// Where the API serves its OpenAPI document, which any client may read.
const OPENAPI_PATH: &str = "/registro/1.0/openapi.json";

/// The token files named on the command line.
#[derive(Clone, Debug, Default)]
pub struct TokenFiles {
    /// `--token-file`: tokens that may change the registry (and read it).
    pub write: Option<PathBuf>,
    /// `--read-token-file`: tokens that may only read it.
    pub read: Option<PathBuf>,
}

impl TokenFiles {
    /// Which requests need a token, for the start-up line.
    pub fn describe(&self) -> &'static str {
        match (&self.write, &self.read) {
            (None, None) => "no token needed (access is open)",
            (Some(_), None) => "writes need a token, reads are open",
            (_, Some(_)) => "writes and reads need a token",
        }
    }

    /// Reads both files as the server will, so that a bad file can be
    /// reported before anything starts. The error is one line naming the
    /// flag, the path and what is wrong (never a token).
    pub fn validate(&self) -> Result<(), String> {
        Keys::new().load(self).map(|_| ())
    }
}

/// `WWW-Authenticate` of every 401 (RFC 6750 section 3).
pub const CHALLENGE: &str = "Bearer realm=\"registro\"";

/// After a refused request from an address is logged, further refusals from
/// it are only counted for this long.
const QUIET_MS: Millis = 60_000;
/// The addresses whose refusals are remembered at once; refusals from any
/// further address share one entry (and one line a minute).
const MAX_REMEMBERED: usize = 4096;

/// Who may do what.
pub struct Access {
    files: TokenFiles,
    keys: Keys,
    tokens: RwLock<Tokens>,
    refusals: Mutex<Refusals>,
    log: OnceLock<Log>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digests only, and not even those.
        f.debug_struct("Access")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Default for Access {
    fn default() -> Access {
        Access::open(TokenFiles::default(), Keys::new(), Tokens::default())
    }
}

/// A 128-bit keyed digest of a token.
type Digest = [u64; 2];

/// The digests of the tokens of both files.
#[derive(Debug, Default)]
struct Tokens {
    write: Vec<Digest>,
    read: Vec<Digest>,
}

/// Two independent random SipHash keys (from the standard library's
/// `RandomState`), fixed for the life of the process: a digest is the pair of
/// their hashes. Without the keys, which never leave the process, no one can
/// find a string whose digest matches a stored token's but the token itself.
#[derive(Debug)]
struct Keys([std::collections::hash_map::RandomState; 2]);

impl Keys {
    fn new() -> Keys {
        Keys([Default::default(), Default::default()])
    }

    fn digest(&self, token: &[u8]) -> Digest {
        self.0.each_ref().map(|k| {
            let mut h = k.build_hasher();
            h.write(token);
            h.finish()
        })
    }

    fn load(&self, files: &TokenFiles) -> Result<Tokens, String> {
        let read_tokens = |flag: &str, path: &Option<PathBuf>| match path {
            Some(path) => self.read_file(flag, path),
            None => Ok(Vec::new()),
        };
        Ok(Tokens {
            write: read_tokens("--token-file", &files.write)?,
            read: read_tokens("--read-token-file", &files.read)?,
        })
    }

    /// One token per line; blank lines and lines starting with `#` are
    /// skipped, spaces around a token are not part of it.
    fn read_file(&self, flag: &str, path: &Path) -> Result<Vec<Digest>, String> {
        let shown = path.display();
        let text = std::fs::read(path).map_err(|e| format!("cannot read {flag} {shown}: {e}"))?;
        let mut digests = Vec::new();
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let token = line.trim_ascii();
            if token.is_empty() || token.starts_with(b"#") {
                continue;
            }
            // RFC 6750's token68 is narrower; any visible ASCII is allowed so
            // that a token pasted from elsewhere works, but never a space
            // inside (two tokens on one line are a mistake, not one token).
            if !token.iter().all(u8::is_ascii_graphic) {
                return Err(format!(
                    "{flag} {shown}: line {} is not a token (only visible ASCII characters, one token per line)",
                    n + 1
                ));
            }
            digests.push(self.digest(token));
        }
        if digests.is_empty() {
            return Err(format!(
                "{flag} {shown} holds no token (one per line; blank lines and # comments are skipped)"
            ));
        }
        Ok(digests)
    }
}

/// Whether `digest` equals one of `stored`, in a time that depends only on
/// how many are stored: every one is compared, every word of it.
fn any_equal(stored: &[Digest], digest: &Digest) -> bool {
    let mut found = 0u64;
    for s in stored {
        let diff = (s[0] ^ digest[0]) | (s[1] ^ digest[1]);
        // 1 when diff is 0, else 0, without a branch.
        found |= 1 ^ ((diff | diff.wrapping_neg()) >> 63);
    }
    std::hint::black_box(found) == 1
}

/// What a request is allowed, from its method and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Nothing,
    Read,
    Write,
}

/// Why a request was refused (logged; never includes the token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    NoToken,
    Malformed,
    Unknown,
    ReadOnly,
}

impl Refused {
    fn message(self) -> &'static str {
        match self {
            Refused::NoToken => {
                "this request needs a token: send the header Authorization: Bearer <token>"
            }
            Refused::Malformed => "the Authorization header is not of the form Bearer <token>",
            Refused::Unknown => "the token is not valid",
            Refused::ReadOnly => {
                "this token may only read; changing the registry needs a token from the --token-file"
            }
        }
    }

    /// 401 when the client has not shown a valid token; 403 when it has
    /// (RFC 9110 section 15.5.4: valid credentials, not allowed this).
    fn status(self) -> u16 {
        match self {
            Refused::ReadOnly => 403,
            _ => 401,
        }
    }

    fn why(self) -> &'static str {
        match self {
            Refused::NoToken => "no token",
            Refused::Malformed => "an Authorization header that is not Bearer",
            Refused::Unknown => "an unknown token",
            Refused::ReadOnly => "a read-only token",
        }
    }
}

impl Access {
    /// Reads the token files; with none, every request is allowed. A file
    /// that cannot be read or holds no token is an error.
    pub fn load(files: &TokenFiles) -> io::Result<Access> {
        let keys = Keys::new();
        let tokens = keys
            .load(files)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Access::open(files.clone(), keys, tokens))
    }

    fn open(files: TokenFiles, keys: Keys, tokens: Tokens) -> Access {
        Access {
            files,
            keys,
            tokens: RwLock::new(tokens),
            refusals: Mutex::new(Refusals::default()),
            log: OnceLock::new(),
        }
    }

    /// Where refusals and reloads are logged (set once, by `Api::new`).
    pub fn set_log(&self, log: Log) {
        let _ = self.log.set(log);
    }

    fn log_line(&self, message: fmt::Arguments<'_>) {
        if let Some(log) = self.log.get() {
            log.line(message);
        }
    }

    /// Reads the files again (SIGHUP) and logs the outcome. When either
    /// cannot be read or holds no token, the old tokens of both stay and the
    /// error says why.
    pub fn reload(&self) -> Result<(), String> {
        if self.files.write.is_none() && self.files.read.is_none() {
            self.log_line(format_args!(
                "SIGHUP: no token files to reload (access is open)"
            ));
            return Ok(());
        }
        match self.keys.load(&self.files) {
            Ok(tokens) => {
                let (w, r) = (tokens.write.len(), tokens.read.len());
                *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = tokens;
                self.log_line(format_args!(
                    "tokens reloaded: {w} that may write, {r} that may only read"
                ));
                Ok(())
            }
            Err(e) => {
                self.log_line(format_args!(
                    "tokens not reloaded, the old ones stay in force: {e}"
                ));
                Err(e)
            }
        }
    }

    /// `Ok` when `request` may proceed, else the 401 to answer with.
    pub fn check(&self, request: &Request) -> Result<(), Response> {
        let need = self.need(request);
        if need == Need::Nothing {
            return Ok(());
        }
        let refused = match bearer(request.authorization.as_deref()) {
            Err(refused) => refused,
            Ok(token) => {
                let digest = self.keys.digest(token);
                let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
                // Both lists are always searched in full.
                let write = any_equal(&tokens.write, &digest);
                let read = any_equal(&tokens.read, &digest);
                match need {
                    Need::Write if write => return Ok(()),
                    Need::Read if write | read => return Ok(()),
                    Need::Write if read => Refused::ReadOnly,
                    _ => Refused::Unknown,
                }
            }
        };
        self.log_refusal(request, refused);
        let mut response = Response::error(refused.status(), refused.message());
        let challenge = match refused {
            // RFC 6750 section 3.1: a valid token without the right.
            Refused::ReadOnly => format!("{CHALLENGE}, error=\"insufficient_scope\""),
            _ => CHALLENGE.to_string(),
        };
        response.headers.push(("WWW-Authenticate", challenge));
        Err(response)
    }

    fn need(&self, request: &Request) -> Need {
        if self.files.write.is_none() && self.files.read.is_none() {
            return Need::Nothing;
        }
        let path = request.target.split('?').next().unwrap_or_default();
        let get = matches!(request.method.as_str(), "GET" | "HEAD");
        // The dashboard's page holds no data (it is the same for everyone)
        // and must load to ask for a token when its requests get a 401; nor
        // does the API's OpenAPI document.
        if path == "/healthz"
            || get && (path == "/" || path == "/favicon.ico" || path == OPENAPI_PATH)
        {
            return Need::Nothing;
        }
        match request.method.as_str() {
            "GET" | "HEAD" if self.files.read.is_some() => Need::Read,
            "GET" | "HEAD" => Need::Nothing,
            // POST, PUT, DELETE, and any method unknown here: the routes
            // answer those with 405, but only to a client that may write.
            _ if self.files.write.is_some() => Need::Write,
            _ => Need::Nothing,
        }
    }

    fn log_refusal(&self, request: &Request, refused: Refused) {
        let now = clock::now().mono;
        let verdict = self
            .refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refused(request.peer, now);
        if let Some(earlier) = verdict {
            let from = match request.peer {
                Some(ip) => ip.to_string(),
                None => "an unknown address".to_string(),
            };
            let more = if earlier > 0 {
                format!(", {earlier} more refused in the minute before")
            } else {
                String::new()
            };
            // The target is the client's: quoted and escaped, so it cannot
            // forge a line; cut short so it cannot fill one either.
            let target: String = request.target.chars().take(200).collect();
            self.log_line(format_args!(
                "refused {} {:?} from {from}: {} ({}; further refusals from this address are logged once a minute{more})",
                request.method.escape_debug(),
                target,
                refused.why(),
                refused.status(),
            ));
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is
/// case-insensitive, RFC 9110 section 11.1).
fn bearer(header: Option<&str>) -> Result<&[u8], Refused> {
    let header = header.ok_or(Refused::NoToken)?.trim();
    let (scheme, token) = header.split_once(' ').ok_or(Refused::Malformed)?;
    let token = token.trim_start();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(Refused::Malformed);
    }
    Ok(token.as_bytes())
}

/// Which addresses had a refusal logged, and when: a refused request is
/// logged when its address has had none logged for a minute. Bounded: entries
/// older than two minutes are dropped once a minute, and past `MAX_REMEMBERED` addresses
/// the rest share one entry.
#[derive(Debug, Default)]
struct Refusals {
    /// Address (`None`: unknown, or past the cap) to the time its last line
    /// was logged and the refusals counted since.
    seen: HashMap<Option<IpAddr>, (Millis, u64)>,
    pruned: Millis,
}

impl Refusals {
    /// Records a refusal from `peer` at `now` (monotonic ms). `Some(n)` when
    /// it is to be logged, `n` being the refusals from there not logged
    /// since the last line.
    fn refused(&mut self, peer: Option<IpAddr>, now: Millis) -> Option<u64> {
        if now.saturating_sub(self.pruned) >= QUIET_MS {
            // Kept a minute past its quiet minute, so that an address still
            // refused then has the count of what was not logged.
            self.seen
                .retain(|_, (at, _)| now.saturating_sub(*at) < 2 * QUIET_MS);
            self.pruned = now;
        }
        let key = if self.seen.contains_key(&peer) || self.seen.len() < MAX_REMEMBERED {
            peer
        } else {
            None
        };
        match self.seen.get_mut(&key) {
            Some((at, count)) if now.saturating_sub(*at) < QUIET_MS => {
                *count += 1;
                None
            }
            Some(entry) => {
                let earlier = entry.1;
                *entry = (now, 0);
                Some(earlier)
            }
            None => {
                self.seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_address() {
        let mut r = Refusals::default();
        assert_eq!(r.refused(ip(1), 0), Some(0));
        assert_eq!(r.refused(ip(1), 1), None);
        assert_eq!(r.refused(ip(2), 2), Some(0), "another address");
        assert_eq!(r.refused(ip(1), 59_999), None);
        assert_eq!(r.refused(ip(1), 60_000), Some(2), "two counted meanwhile");
        assert_eq!(r.refused(ip(1), 60_001), None);
        assert_eq!(r.refused(None, 60_002), Some(0));
    }

    #[test]
    fn refusals_remember_a_bounded_number_of_addresses() {
        let mut r = Refusals::default();
        let mut logged = 0;
        for i in 0..(MAX_REMEMBERED as u32 + 1000) {
            if r.refused(Some(IpAddr::from(i.to_be_bytes())), 1000)
                .is_some()
            {
                logged += 1;
            }
        }
        assert!(r.seen.len() <= MAX_REMEMBERED + 1, "{}", r.seen.len());
        // Every remembered address once, and the overflow once.
        assert_eq!(logged, MAX_REMEMBERED + 1);
        // Two minutes later the stale entries are gone.
        assert_eq!(r.refused(ip(1), 121_000), Some(0));
        assert_eq!(r.seen.len(), 1);
    }

    #[track_caller]
    fn check_bearer(header: Option<&str>, expected: Result<&str, Refused>) {
        assert_eq!(bearer(header), expected.map(str::as_bytes), "{header:?}");
    }

    #[test]
    fn bearer_headers() {
        check_bearer(Some("Bearer abc"), Ok("abc"));
        check_bearer(Some("bearer abc"), Ok("abc"));
        check_bearer(Some("BEARER   abc  "), Ok("abc"));
        check_bearer(None, Err(Refused::NoToken));
        check_bearer(Some("Basic abc"), Err(Refused::Malformed));
        check_bearer(Some("Bearer"), Err(Refused::Malformed));
        check_bearer(Some("Bearer "), Err(Refused::Malformed));
        check_bearer(Some("Bearer a b"), Err(Refused::Malformed));
        check_bearer(Some("abc"), Err(Refused::Malformed));
    }

    #[test]
    fn digests_compare_every_stored_token() {
        let keys = Keys::new();
        let stored: Vec<Digest> = ["a", "bb", "ccc"].map(|t| keys.digest(t.as_bytes())).into();
        for t in ["a", "bb", "ccc"] {
            assert!(any_equal(&stored, &keys.digest(t.as_bytes())), "{t}");
        }
        for t in ["", "b", "cc", "cccc", "A"] {
            assert!(!any_equal(&stored, &keys.digest(t.as_bytes())), "{t}");
        }
        assert!(!any_equal(&[], &keys.digest(b"a")));
    }
}
