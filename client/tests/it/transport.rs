//! Registries that are not there, or do not answer: errors within the
//! timeout, never hangs.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use registro_client::{Application, Client, Error, Instance};

use crate::support::root;

/// A loopback port that refuses connections for as long as the returned
/// socket lives: bound but not listening, so that no server started by a
/// test running beside this one can be given the port meanwhile.
#[cfg(unix)]
fn closed_port() -> (SocketAddr, impl Sized) {
    use rustix::net::{bind, getsockname, socket, AddressFamily, SocketType};
    let reserved = match socket(AddressFamily::INET, SocketType::STREAM, None) {
        Ok(fd) => fd,
        Err(e) => panic!("no socket: {e}"),
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    if let Err(e) = bind(&reserved, &loopback) {
        panic!("cannot bind: {e}");
    }
    let addr = getsockname(&reserved)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok());
    match addr {
        Some(addr) => (addr, reserved),
        None => panic!("no address"),
    }
}

/// A loopback address nothing listens on: bound, then closed.
#[cfg(not(unix))]
fn closed_port() -> (SocketAddr, impl Sized) {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("cannot bind: {e}"),
    };
    match listener.local_addr() {
        Ok(addr) => (addr, ()),
        Err(e) => panic!("no address: {e}"),
    }
}

/// Every operation on `client`, each with how long it took to fail.
fn every_operation(client: &Client) -> Vec<(&'static str, Result<(), Error>, Duration)> {
    let app = Application::new("web");
    let inst = Instance::new("web-1", "10.0.0.7", 8080);
    let timed = |name, op: &dyn Fn() -> Result<(), Error>| {
        let started = Instant::now();
        let outcome = op();
        (name, outcome, started.elapsed())
    };
    vec![
        timed("apps", &|| client.apps().map(drop)),
        timed("app", &|| client.app("web").map(drop)),
        timed("instance", &|| client.instance("web", "web-1").map(drop)),
        timed("update_application", &|| {
            client.update_application(&mut app.clone())
        }),
        timed("new_app", &|| client.new_app("web").map(drop)),
        timed("new_instance", &|| {
            client
                .new_instance(&app, "web-1", "10.0.0.7", 8080)
                .map(drop)
        }),
        timed("renew_instance", &|| client.renew_instance(&app, &inst)),
        timed("delete_instance", &|| client.delete_instance(&app, &inst)),
        timed("register_service", &|| {
            client
                .register_service("web-1", "web", "10.0.0.7", 8080)
                .map(drop)
        }),
    ]
}

#[test]
fn a_closed_port_fails_fast_as_a_transport_error() {
    // Long enough that a busy machine cannot turn a refusal into a
    // timeout: failing fast is failing before it, with a transport error.
    let timeout = Duration::from_secs(2);
    let (addr, _reserved) = closed_port();
    let client = Client::builder(root(addr)).timeout(timeout).build();
    assert_eq!(client.timeout(), timeout);
    for (name, outcome, took) in every_operation(&client) {
        match outcome {
            Err(Error::Transport(e)) => assert!(!e.to_string().is_empty()),
            other => panic!("{name}: expected a transport error, got {other:?}"),
        }
        assert!(took < timeout, "{name} took {took:?}");
    }
}

#[test]
fn a_registry_that_never_answers_times_out() {
    // Connections complete (the kernel queues them) but nobody reads or writes.
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("cannot bind: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => panic!("no address: {e}"),
    };
    let timeout = Duration::from_millis(200);
    let client = Client::builder(root(addr)).timeout(timeout).build();
    let started = Instant::now();
    let outcome = client.apps();
    let took = started.elapsed();
    match &outcome {
        Err(e @ Error::Transport(t)) => {
            assert!(e.is_timeout(), "{e}");
            assert_eq!(t.timeout(), Some(timeout));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took >= timeout, "gave up early: {took:?}");
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        outcome.err().map(|e| e.to_string()),
        Some(format!(
            "registry unreachable: {}: no answer within 200ms",
            root(addr)
        ))
    );
    drop(listener);
}

/// What `fn main() -> Result<(), Error>` prints for an error (`Error: `
/// and its `Debug`) is its message, and names every server tried.
#[test]
fn an_error_names_the_servers_tried_in_display_and_debug() {
    let (one, _reserved_one) = closed_port();
    let (two, _reserved_two) = closed_port();
    let alone = Client::new(root(one));
    let e = alone.apps().expect_err("a closed port");
    let said = format!("registry unreachable: {}: connection refused", root(one));
    assert_eq!(e.to_string(), said);
    assert_eq!(format!("{e:?}"), said);
    assert_eq!(e.server(), Some(root(one).as_str()));

    let both = Client::builder(root(one)).url(root(two)).build();
    for e in [
        both.apps().err(),
        both.register_service("web-1", "web", "10.0.0.7", 8080)
            .err(),
        both.renew_instance(
            &Application::new("web"),
            &Instance::new("web-1", "10.0.0.7", 8080),
        )
        .err(),
    ] {
        let e = e.expect("two closed ports");
        let said = format!(
            "registry unreachable: {}: connection refused; {}: connection refused",
            root(one),
            root(two)
        );
        assert_eq!(e.to_string(), said);
        assert_eq!(format!("{e:?}"), said, "Debug is the message");
        match &e {
            Error::Transport(t) => {
                assert_eq!(t.servers().collect::<Vec<_>>(), [root(one), root(two)]);
                assert!(!t.is_timeout());
            }
            other => panic!("not a transport error: {other}"),
        }
        // The chain ends at the HTTP library's error.
        let source = std::error::Error::source(&e).and_then(std::error::Error::source);
        assert!(source.is_some(), "{e}");
    }
}

#[track_caller]
fn check_bad_url(url: &str, says: &str) {
    match Client::new(url).apps() {
        Err(Error::Url(message)) => assert!(message.contains(says), "{url:?}: {message}"),
        other => panic!("{url:?}: expected a URL error, got {other:?}"),
    }
}

#[test]
fn a_bad_url_says_what_is_wrong() {
    check_bad_url("", "no registry URL given");
    check_bad_url(
        "localhost:8080/registro",
        "has no scheme: write http://localhost:8080/registro",
    );
    check_bad_url("not a url", "has no scheme");
    check_bad_url("ftp://127.0.0.1:1/registro", "use http:// or https://");
    check_bad_url("http:///registro", "has no host");
    #[cfg(not(feature = "tls"))]
    check_bad_url("https://127.0.0.1:1/registro", "the \"tls\" feature");
    // Nothing was sent, so nothing is worth retrying.
    let e = Client::new("localhost:8080").apps().err();
    assert!(e.is_some_and(|e| !e.is_transport() && e.status().is_none()));
}
