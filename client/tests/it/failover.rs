//! A client of several servers (API.md Part 4, "Clients with several
//! servers"): two real servers, each in memory; one is killed mid-heartbeat
//! and mid-watch.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use registro_client::{Client, Error, Failover, Status};

use crate::responder::{Answer, Responder};
use crate::support::{eventually, root, server, status};

const LIMIT: Duration = Duration::from_secs(10);

/// A client of `first`, then `second`.
fn both(first: &registro::Server, second: &registro::Server) -> Client {
    Client::builder(root(first.local_addr()))
        .url(root(second.local_addr()))
        .timeout(Duration::from_secs(2))
        .build()
}

#[test]
fn a_heartbeat_renews_through_the_other_server_within_its_period() -> Result<(), Error> {
    let a = server();
    let b = server();
    let a_root = root(a.local_addr());
    let b_root = root(b.local_addr());
    let only_b = Client::new(&b_root);
    let c = both(&a, &b);
    assert_eq!(c.url(), a_root);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let period = Duration::from_millis(300);
    let hb = c.start_heartbeat_every(&app, &inst, period);
    assert_eq!(
        status(&Client::new(&a_root), "web", "web-1"),
        Some(Status::Up)
    );
    assert_eq!(status(&only_b, "web", "web-1"), None, "b knows nothing yet");

    let renewals = hb.renewals();
    a.shutdown();
    // The next beat finds a gone, moves to b, registers there (b answers
    // its renewal 404) and renews: one beat, no failure, the period kept.
    let mut errors = Vec::new();
    eventually(LIMIT, "web-1 up on b through the heartbeat", || {
        if let Some(e) = hb.last_error() {
            errors.push(e.to_string());
        }
        (status(&only_b, "web", "web-1") == Some(Status::Up) && hb.renewals() > renewals + 1)
            .then_some(())
    });
    assert!(errors.is_empty(), "beats failed on the move: {errors:?}");
    assert_eq!(c.url(), b_root, "the client stays with b");
    assert!(hb.is_running());
    hb.stop()?;
    assert_eq!(status(&only_b, "web", "web-1"), Some(Status::OutOfService));
    b.shutdown();
    Ok(())
}

/// The program is told of a move, once, by the callback it gave: from
/// which server, to which, and why; `url()` says which is in use.
#[test]
fn the_program_is_told_when_the_client_moves_to_another_server() -> Result<(), Error> {
    let a = server();
    let b = server();
    let (a_root, b_root) = (root(a.local_addr()), root(b.local_addr()));
    let moves: Arc<Mutex<Vec<Failover>>> = Arc::default();
    let told = Arc::clone(&moves);
    let c = Client::builder(&a_root)
        .url(&b_root)
        .timeout(Duration::from_secs(2))
        .on_failover(move |event| told.lock().expect("not poisoned").push(event.clone()))
        .build();
    let seen = || moves.lock().expect("not poisoned").clone();
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let hb = c.start_heartbeat_every(&app, &inst, Duration::from_millis(200));
    assert!(seen().is_empty(), "{:?}", seen());

    a.shutdown();
    // The heartbeat's thread, or this request, finds a gone: one move.
    let clone = c.clone();
    clone.apps()?;
    let events = eventually(LIMIT, "the move told", || {
        let events = seen();
        (!events.is_empty()).then_some(events)
    });
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(
        (event.from.as_str(), event.to.as_str()),
        (a_root.as_str(), b_root.as_str())
    );
    assert!(event.error.is_transport(), "{event}");
    assert_eq!(event.error.server(), Some(a_root.as_str()));
    assert_eq!(
        event.to_string(),
        format!("moved from {a_root} to {b_root}: {}", event.error)
    );
    assert_eq!(c.url(), b_root);
    // Staying with b is no news.
    c.apps()?;
    eventually(LIMIT, "more heartbeats through b", || {
        (hb.renewals() > 3 && hb.last_error().is_none()).then_some(())
    });
    assert_eq!(seen().len(), 1, "{:?}", seen());
    hb.stop()?;
    b.shutdown();
    Ok(())
}

#[test]
fn the_cache_and_a_watch_move_on_and_catch_up() -> Result<(), Error> {
    let a = server();
    let b = server();
    let b_root = root(b.local_addr());
    // web-b lives on b only (its own service, b's client); web-1 heartbeats
    // through a client of both, on a until a goes.
    let only_b = Client::new(&b_root);
    let (app_b, web_b) = only_b.register_service("web-b", "web", "10.0.0.2", 8080)?;
    let hb_b = only_b.start_heartbeat_every(&app_b, &web_b, Duration::from_millis(300));
    let service = both(&a, &b);
    let (app, inst) = service.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let hb = service.start_heartbeat_every(&app, &inst, Duration::from_millis(300));

    // A caller of web, with a client of its own for both servers.
    let caller = both(&a, &b);
    let cache = caller.cache(["web"]);
    let mut watch = caller.watch("web");
    let first = watch.next_timeout(LIMIT)?;
    let ids = |app: &registro_client::Application| -> Vec<String> {
        let mut ids: Vec<String> = app.instances.iter().map(|i| i.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(first.as_ref().map(ids), Some(vec!["web-1".to_owned()]));
    assert_eq!(
        cache.snapshot("web").map(|s| ids(&s.app))?,
        vec!["web-1".to_owned()]
    );

    a.shutdown();
    // The watch's next answer comes from b, with no error on the way: b's
    // index differs from a's, so it is a change, answered at once.
    let moved = eventually(LIMIT, "the watch's view from b", || {
        match watch.next_timeout(Duration::from_millis(200)) {
            Ok(Some(app)) if app.instance("web-b").is_some() => Some(Ok(app)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    })?;
    assert!(moved.instance("web-b").is_some());
    // The cache serves throughout, never reports a failure, and catches up
    // with web-1 once its heartbeat has registered it on b.
    eventually(LIMIT, "the cache's view from b, with web-1 back", || {
        let snap = cache.snapshot("web").ok()?;
        assert!(snap.error.is_none(), "{snap:?}");
        assert!(
            cache.pick("web").ok()?.is_some(),
            "nothing to pick: {snap:?}"
        );
        let up = |id| snap.app.instance(id).map(|i| i.status) == Some(Status::Up);
        (up("web-b") && up("web-1")).then_some(())
    });
    let back = eventually(LIMIT, "the watch sees web-1 back", || {
        let current = watch.current().cloned();
        match current {
            Some(app) if app.instance("web-1").is_some() && app.instance("web-b").is_some() => {
                Some(app)
            }
            _ => {
                let _ = watch.next_timeout(Duration::from_millis(200));
                None
            }
        }
    });
    assert_eq!(ids(&back), ["web-1", "web-b"]);
    assert_eq!(caller.url(), b_root);
    cache.stop();
    hb.stop()?;
    hb_b.stop()?;
    b.shutdown();
    Ok(())
}

#[test]
fn a_503_moves_on_and_other_answers_do_not() -> Result<(), Error> {
    let busy = Responder::start(|_| Answer::new(503, r#"{"error":"too many connections"}"#));
    let server = server();
    let c = Client::builder(busy.root())
        .url(root(server.local_addr()))
        .build();
    c.new_app("web")?;
    assert_eq!(c.url(), root(server.local_addr()));
    assert_eq!(busy.seen().len(), 1);
    // A 404 is an answer: no move, and b stays in use.
    assert!(c.app("nope").is_err_and(|e| e.is_unknown_app()));
    assert_eq!(busy.seen().len(), 1);
    // Every server failing: the last one's error.
    let gone = Client::builder(busy.root())
        .url("http://127.0.0.1:1/registro")
        .build();
    assert!(gone.apps().is_err_and(|e| e.is_transport()));
    assert_eq!(gone.url(), busy.root(), "no server worked: no move");
    // A URL the client cannot use is said at once, and never becomes the
    // one in use.
    let mistyped = Client::builder(busy.root()).url("localhost:8080").build();
    assert!(mistyped.apps().is_err_and(|e| matches!(e, Error::Url(_))));
    assert_eq!(mistyped.url(), busy.root());
    Ok(())
}

#[test]
fn a_watch_carries_its_index_to_the_next_server() -> Result<(), Error> {
    // Servers of one registry on etcd answer the same index for the same
    // state: the move is no change, and the long poll goes on at b.
    let body = r#"{"name":"web","instances":[{"id":"a","ip":"x","port":1,"status":"up","lastRenewal":1}]}"#;
    let a = Responder::start(move |_| Answer::new(200, body).header("Registro-Index", "7"));
    let b = Responder::start(move |_| {
        Answer::new(200, body)
            .header("Registro-Index", "7")
            .after(Duration::from_millis(200))
    });
    let b_root = b.root();
    let c = Client::builder(a.root()).url(&b_root).build();
    let mut watch = c.watch("web");
    assert!(watch.next_timeout(LIMIT)?.is_some());
    assert_eq!(watch.index(), Some(7));
    drop(a);
    assert_eq!(watch.next_timeout(Duration::from_millis(300))?, None);
    let lines = b.lines();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("GET /registro/1.0/apps/web?index=7&wait=")),
        "{lines:?}"
    );
    assert_eq!(c.url(), b_root);
    Ok(())
}
