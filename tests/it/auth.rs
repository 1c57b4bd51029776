//! Access control (API.md Part 3 "Access control"): with `--token-file`
//! every request that changes the registry needs `Authorization: Bearer`
//! with one of its tokens; with `--read-token-file` too, reads need a token
//! from either file; `/healthz` and the dashboard's page are always open. SIGHUP re-reads the files
//! without dropping a connection; bad files at start end the process with
//! one line; no token is ever logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use registro::TokenFiles;

use crate::api::{app_body, instance_body};
use crate::cli::assert_refused;
use crate::support::{start_with, Conn, Proc, Reply, TempDir};

const WRITER: &str = "w-4f9c1d2e8a7b6c5d";
const OTHER_WRITER: &str = "w2+/abc=";
const READER: &str = "r-0a1b2c3d4e5f6789";

/// The write file of most tests: two tokens, a comment, blank lines and
/// spaces around a token.
fn write_file(dir: &TempDir) -> PathBuf {
    dir.file(
        "write",
        &format!("# deploy tokens\n\n  {WRITER}  \n# old one:\n{OTHER_WRITER}\n\n"),
    )
}

fn read_file(dir: &TempDir) -> PathBuf {
    dir.file("read", &format!("{READER}\n"))
}

/// `METHOD PATH` (a whole target) with a body and an `Authorization` header
/// when `auth` is given, over the kept-alive connection.
fn send(c: &mut Conn, method: &str, path: &str, body: &str, auth: Option<&str>) -> Reply {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send_raw(request.as_bytes(), method == "HEAD")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `POST PATH` (a whole target) with the writer's token: 201.
#[track_caller]
fn created(c: &mut Conn, path: &str, body: &str) {
    let r = send(c, "POST", path, body, Some(&bearer(WRITER)));
    assert_eq!(r.status, 201, "POST {path} {body}: {r:?}");
}

/// A refusal with its challenge (`WWW-Authenticate`) and a JSON error.
#[track_caller]
fn assert_challenged(r: &Reply, status: u16, challenge: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(challenge),
        "{what}: {r:?}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: {r:?}"
    );
}

/// A 401 as API.md says: the challenge, and a JSON error (no body for HEAD).
#[track_caller]
fn assert_401(r: &Reply, what: &str) {
    assert_challenged(r, 401, "Bearer realm=\"registro\"", what);
    if !what.starts_with("HEAD") {
        assert!(!r.error().is_empty(), "{what}");
    }
}

/// A 403 for a read-only token attempting a change: a JSON error that says
/// the token may only read, and the challenge naming the missing right
/// (RFC 6750 section 3.1).
#[track_caller]
fn assert_403_read_only(r: &Reply, what: &str) {
    let challenge = "Bearer realm=\"registro\", error=\"insufficient_scope\"";
    assert_challenged(r, 403, challenge, what);
    assert_eq!(
        r.error(),
        "this token may only read; changing the registry needs a token from the --token-file",
        "{what}"
    );
}

/// Authorization headers that must not let a request through.
fn refused_headers() -> Vec<Option<String>> {
    vec![
        None,
        Some(bearer("wrong")),
        Some(bearer(&WRITER[..WRITER.len() - 1])),
        Some(bearer(&format!("{WRITER}x"))),
        Some(bearer(&WRITER.to_uppercase())),
        Some(format!("Basic {WRITER}")),
        Some(WRITER.to_string()),
        Some("Bearer".to_string()),
        Some(format!("Bearer {WRITER} {WRITER}")),
        Some(bearer("# deploy tokens")),
        Some(bearer("")),
    ]
}

/// The registry's mutating routes in an order that works with a token:
/// method, path, body, the status with a token.
fn mutations() -> Vec<(&'static str, String, String, u16)> {
    let root = "/registro/1.0";
    vec![
        ("POST", format!("{root}/apps"), app_body("web"), 201),
        (
            "POST",
            format!("{root}/apps/web"),
            instance_body("web-1", "10.0.0.1", 80),
            201,
        ),
        ("PUT", format!("{root}/apps/web/web-1"), String::new(), 204),
        (
            "DELETE",
            format!("{root}/apps/web/web-1"),
            String::new(),
            204,
        ),
        // Methods no route takes: 405, but only to a client that may write.
        ("PATCH", format!("{root}/apps/web"), String::new(), 405),
        ("OPTIONS", format!("{root}/apps"), String::new(), 405),
    ]
}

#[test]
fn every_change_needs_a_token_from_the_token_file() {
    let dir = TempDir::new("auth");
    let write = write_file(&dir);
    let read = read_file(&dir);
    for read_file in [None, Some(read)] {
        let files = TokenFiles {
            write: Some(write.clone()),
            read: read_file.clone(),
        };
        let server = start_with(|c| c.tokens = files);
        let mut c = Conn::open(server.local_addr());
        for (method, path, body, ok) in mutations() {
            let what = format!("{method} {path} (read file: {read_file:?})");
            for auth in refused_headers() {
                let r = send(&mut c, method, &path, &body, auth.as_deref());
                assert_401(&r, &format!("{what} with {auth:?}"));
            }
            // A read-only token cannot write either, and is told so: 403,
            // a valid credential without the right (RFC 9110 15.5.4). With
            // no read file, the same string is no token at all: 401.
            let r = send(&mut c, method, &path, &body, Some(&bearer(READER)));
            if read_file.is_some() {
                assert_403_read_only(&r, &format!("{what} with the read token"));
            } else {
                assert_401(&r, &format!("{what} with an unknown token"));
            }
            // Nothing refused changed anything: the token's request does
            // what it would have done first.
            let token = if method == "PUT" {
                OTHER_WRITER
            } else {
                WRITER
            };
            let auth = if method == "DELETE" {
                format!("bearer   {token}")
            } else {
                bearer(token)
            };
            let r = send(&mut c, method, &path, &body, Some(&auth));
            assert_eq!(r.status, ok, "{what} with a token: {r:?}");
        }
    }
}

/// A server with the write file of most tests (and the read file when
/// `read`), and a connection to it over which the app `web` was created
/// with the writer's token.
fn with_web(read: bool) -> (TempDir, registro::Server, Conn) {
    let dir = TempDir::new("auth");
    let files = TokenFiles {
        write: Some(write_file(&dir)),
        read: read.then(|| read_file(&dir)),
    };
    let server = start_with(|c| c.tokens = files);
    let mut c = Conn::open(server.local_addr());
    created(&mut c, "/registro/1.0/apps", &app_body("web"));
    (dir, server, c)
}

#[test]
fn reads_are_open_without_a_read_token_file() {
    let (_dir, _server, mut c) = with_web(false);
    for (method, path) in [
        ("GET", "/registro/1.0/apps"),
        ("GET", "/registro/1.0/apps/web"),
        ("HEAD", "/registro/1.0/apps"),
        ("GET", "/registro/1.0/apps?status=up"),
    ] {
        let r = send(&mut c, method, path, "", None);
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
        // A wrong token on a read that needs none is not held against it.
        let r = send(&mut c, method, path, "", Some(&bearer("wrong")));
        assert_eq!(r.status, 200, "{method} {path} with a wrong token: {r:?}");
    }
    for path in ["/healthz", "/metrics", "/"] {
        let r = send(&mut c, "GET", path, "", None);
        assert_ne!(r.status, 401, "GET {path}: {r:?}");
    }
}

#[test]
fn with_a_read_token_file_reads_need_a_token_and_healthz_stays_open() {
    let (_dir, _server, mut c) = with_web(true);
    let body = instance_body("web-1", "10.0.0.1", 80);
    created(&mut c, "/registro/1.0/apps/web", &body);
    let reads = [
        ("GET", "/registro/1.0/apps", 200),
        ("GET", "/registro/1.0/apps/web", 200),
        ("GET", "/registro/1.0/apps/web/web-1", 200),
        ("HEAD", "/registro/1.0/apps", 200),
        ("HEAD", "/registro/1.0/apps/web", 200),
        ("GET", "/registro/1.0/apps/nope", 404),
        ("GET", "/registro/1.0/nowhere", 404),
        ("GET", "/metrics", 0),
        ("GET", "/healthz/x", 0),
    ];
    for (method, path, ok) in reads {
        for auth in refused_headers() {
            let r = send(&mut c, method, path, "", auth.as_deref());
            assert_401(&r, &format!("{method} {path} with {auth:?}"));
        }
        for token in [READER, WRITER, OTHER_WRITER] {
            let r = send(&mut c, method, path, "", Some(&bearer(token)));
            if ok == 0 {
                // Served by the operations routes (or 404 before they land).
                assert_ne!(r.status, 401, "{method} {path}: {r:?}");
            } else {
                assert_eq!(r.status, ok, "{method} {path} with {token}: {r:?}");
            }
        }
    }
    // Open: the health check, and the dashboard's page, which holds no
    // data and asks for a token when its own requests are refused.
    for method in ["GET", "HEAD"] {
        for path in ["/healthz", "/"] {
            for auth in [None, Some(bearer("wrong"))] {
                let r = send(&mut c, method, path, "", auth.as_deref());
                assert_ne!(r.status, 401, "{method} {path}: {r:?}");
            }
        }
    }
}

#[test]
fn a_bad_token_file_fails_the_start() {
    let dir = TempDir::new("auth");
    let good = write_file(&dir);
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "missing",
            vec![
                "--token-file".into(),
                dir.path().join("nope").display().to_string(),
            ],
            "--token-file",
        ),
        (
            "empty",
            vec![
                "--token-file".into(),
                dir.file("empty", "").display().to_string(),
            ],
            "no token",
        ),
        (
            "comments only",
            vec![
                "--token-file".into(),
                dir.file("comments", "# a\n\n  \n#b\n")
                    .display()
                    .to_string(),
            ],
            "no token",
        ),
        (
            "a directory",
            vec!["--token-file".into(), dir.path().display().to_string()],
            "--token-file",
        ),
        (
            "two tokens on a line",
            vec![
                "--token-file".into(),
                dir.file("two", "abc def\n").display().to_string(),
            ],
            "line 1",
        ),
        (
            "missing read file",
            vec![
                "--token-file".into(),
                good.display().to_string(),
                "--read-token-file".into(),
                dir.path().join("nope").display().to_string(),
            ],
            "--read-token-file",
        ),
        (
            "read file without a token file",
            vec!["--read-token-file".into(), good.display().to_string()],
            "--token-file",
        ),
    ];
    for (what, args, needle) in cases {
        let mut all = vec!["--addr", "127.0.0.1:0"];
        all.extend(args.iter().map(String::as_str));
        let line = assert_refused(&all);
        assert!(line.contains(needle), "{what}: {line:?}");
        // The token of the good file is never shown, even beside a bad one.
        assert!(!line.contains(WRITER), "{what}: {line:?}");
    }
    // In process too: the library refuses to start.
    let missing = TokenFiles {
        write: Some(dir.path().join("nope")),
        read: None,
    };
    let err = registro::Server::start(registro::Config {
        addr: "127.0.0.1:0".parse().expect("addr"),
        log: false,
        tokens: missing,
        ..Default::default()
    })
    .map(|_| ())
    .expect_err("a missing token file");
    assert!(err.to_string().contains("--token-file"), "{err}");
}

/// Rewrites the file `path` in place.
fn rewrite(path: &Path, text: &str) {
    std::fs::write(path, text).expect("rewrite token file");
}

#[test]
fn sighup_reloads_the_tokens_without_dropping_a_connection() {
    let dir = TempDir::new("auth");
    let write = dir.file("write", "old-token-1\n");
    let path = write.display().to_string();
    let p = Proc::start(&["--token-file", &path]);
    let lo = Duration::from_secs(5);
    // Creates the app `name` with `token`.
    let post = |c: &mut Conn, name: &str, token: &str| {
        let auth = bearer(token);
        send(
            c,
            "POST",
            "/registro/1.0/apps",
            &app_body(name),
            Some(&auth),
        )
    };

    // A keep-alive connection opened before the reload, with a request
    // answered on it.
    let mut kept = Conn::open(p.addr);
    let r = post(&mut kept, "a", "old-token-1");
    assert_eq!(r.status, 201);

    rewrite(&write, "# rotated\nnew-token-2\n");
    p.signal("HUP");
    p.wait_line("tokens reloaded", lo);

    // The same connection, still open: the old token is refused, the new
    // one works.
    let r = post(&mut kept, "b", "old-token-1");
    assert_401(&r, "the old token after the reload");
    let r = post(&mut kept, "b", "new-token-2");
    assert_eq!(r.status, 201, "{r:?}");
    let mut fresh = Conn::open(p.addr);
    let r = post(&mut fresh, "c", "new-token-2");
    assert_eq!(r.status, 201, "{r:?}");

    // A file that cannot be read (or holds no token) keeps the tokens in
    // force, and the log says why.
    std::fs::remove_file(&write).expect("remove");
    p.signal("HUP");
    let line = p.wait_line("not reloaded", lo);
    assert!(line.contains(&path), "{line:?}");
    rewrite(&write, "# nothing\n");
    p.signal("HUP");
    eventually_lines(&p, "not reloaded", 2);
    let r = post(&mut kept, "d", "new-token-2");
    assert_eq!(r.status, 201, "{r:?}");
    drop(fresh);
    drop(kept);
    let lines = p.lines();
    for token in ["old-token-1", "new-token-2"] {
        assert!(
            lines.iter().all(|l| !l.contains(token)),
            "{token} was logged: {lines:#?}"
        );
    }
}

/// Waits until `n` stderr lines contain `needle`.
fn eventually_lines(p: &Proc, needle: &str, n: usize) {
    crate::support::eventually(Duration::from_secs(5), needle, || {
        let count = p.lines().iter().filter(|l| l.contains(needle)).count();
        (count >= n).then_some(())
    });
}

#[test]
fn refusals_are_logged_once_per_address_and_no_token_ever() {
    let dir = TempDir::new("auth");
    let write = dir.file("write", &format!("{WRITER}\n"));
    let read = dir.file("read", &format!("{READER}\n"));
    let (w, r) = (write.display().to_string(), read.display().to_string());
    let p = Proc::start(&["--token-file", &w, "--read-token-file", &r]);
    let mut c = Conn::open(p.addr);
    let guesses = ["guess-secret-1", "guess-secret-2", "guess-secret-3"];
    let (apps, instance) = ("/registro/1.0/apps", "/registro/1.0/apps/a/b");
    for _ in 0..20 {
        for guess in guesses {
            let reply = send(&mut c, "DELETE", instance, "", Some(&bearer(guess)));
            assert_eq!(reply.status, 401);
        }
        assert_eq!(send(&mut c, "GET", apps, "", None).status, 401);
    }
    // Requests that pass are not refusals (and their tokens not logged).
    let reply = send(&mut c, "GET", apps, "", Some(&bearer(READER)));
    assert_eq!(reply.status, 200);
    created(&mut c, apps, &app_body("z"));
    // The app's line comes after any refusal's.
    p.wait_line("\"z\"", Duration::from_secs(5));
    let lines = p.lines();
    let refused: Vec<&String> = lines.iter().filter(|l| l.contains("refused")).collect();
    assert_eq!(refused.len(), 1, "{lines:#?}");
    assert!(refused[0].contains("127.0.0.1"), "{refused:?}");
    for secret in guesses.iter().chain(&[WRITER, READER]) {
        assert!(
            lines.iter().all(|l| !l.contains(secret)),
            "{secret} was logged: {lines:#?}"
        );
    }
}

/// SIGHUP's default action ends a process: without token files it must not
/// (an operator reloading every service on a host, say), and it is logged.
#[test]
fn sighup_without_token_files_changes_nothing() {
    let mut p = Proc::start(&[]);
    let mut c = Conn::open(p.addr);
    let r = send(&mut c, "POST", "/registro/1.0/apps", &app_body("a"), None);
    assert_eq!(r.status, 201);
    p.signal("HUP");
    p.wait_line("no token files", Duration::from_secs(5));
    let r = send(&mut c, "GET", "/registro/1.0/apps/a", "", None);
    assert_eq!(r.status, 200);
    assert!(
        p.child.try_wait().expect("try_wait").is_none(),
        "SIGHUP ended it"
    );
}

/// The start-up line says which requests need a token, so an operator sees
/// that writes (and reads) are protected.
#[test]
fn the_start_up_line_says_which_requests_need_a_token() {
    let dir = TempDir::new("auth");
    let write = write_file(&dir);
    let read = read_file(&dir);
    let (w, r) = (write.display().to_string(), read.display().to_string());
    for (args, says) in [
        (vec![], "no token needed (access is open)"),
        (
            vec!["--token-file", w.as_str()],
            "writes need a token, reads are open",
        ),
        (
            vec!["--token-file", &w, "--read-token-file", &r],
            "writes and reads need a token",
        ),
    ] {
        let p = Proc::start(&args);
        let line = p.wait_line("listening on", Duration::from_secs(5));
        assert!(line.contains(says), "{args:?}: {line:?}");
    }
}
