//! Long polls that cost one request per wait and stop at once; a wrong root
//! URL reported, not read as "no such application"; views that never go
//! stale when an index is reused or goes backwards.

use std::time::{Duration, Instant};

use registro_client::{Client, Error, Status};

use crate::responder::{Answer, Responder};
use crate::support::{eventually, requests, root, server, watches_waiting};

const LIMIT: Duration = Duration::from_secs(5);

/// The route template `/metrics` counts an app's reads under.
const APP_ROUTE: &str = "/registro/1.0/apps/{app}";

#[test]
fn an_idle_cache_asks_once_per_app_per_wait() -> Result<(), Error> {
    let server = server();
    // Over the old cache's 400 ms, so that its pace would fail the bound.
    let wait = Duration::from_secs(1);
    let c = Client::builder(root(server.local_addr()))
        .watch_wait(wait)
        .build();
    let (app, web) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    c.renew_instance(&app, &web)?;
    c.register_service("db-1", "db", "10.0.0.2", 5432)?;
    let before = requests(&server, APP_ROUTE, "GET");

    let started = Instant::now();
    let apps = vec!["web".to_owned(), "db".to_owned()];
    let cache = c.cache(&apps);
    // Several waits' worth of idle following.
    eventually(LIMIT, "two long polls answered per app", || {
        (requests(&server, APP_ROUTE, "GET") - before >= 2 * (1 + 2)).then_some(())
    });
    cache.stop();
    let elapsed = started.elapsed();
    let asked = requests(&server, APP_ROUTE, "GET") - before;
    // Per app: the first read, then one long poll per wait begun (the
    // registry holds each for the whole wait). The old cache asked every
    // 400 ms whatever the wait, about 2.5 times a second per app.
    let waits = (elapsed.as_millis() / wait.as_millis()) as u64 + 1;
    eprintln!("idle cache: {asked} requests for 2 apps in {elapsed:?} ({waits} waits)");
    assert!(
        asked <= 2 * (1 + waits),
        "{asked} requests for 2 apps in {elapsed:?}, at most {} expected",
        2 * (1 + waits)
    );
    assert_eq!(
        requests(&server, APP_ROUTE, "GET") - before,
        asked,
        "nothing after the stop"
    );
    Ok(())
}

#[test]
fn stopping_a_cache_interrupts_its_long_polls() -> Result<(), Error> {
    let server = server();
    // The default wait: 60 s.
    let c = Client::new(root(server.local_addr()));
    c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    c.register_service("db-1", "db", "10.0.0.2", 5432)?;
    let cache = c.cache(["web", "db"]);
    eventually(LIMIT, "both long polls held by the registry", || {
        (watches_waiting(&server) == Some(2)).then_some(())
    });
    assert_eq!(
        cache.snapshot("web")?.age,
        Duration::ZERO,
        "a held long poll means the view is current"
    );
    let started = Instant::now();
    cache.stop();
    let took = started.elapsed();
    eprintln!("cache stopped mid-wait in {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    eventually(LIMIT, "the registry sees the watches go", || {
        (watches_waiting(&server) == Some(0)).then_some(())
    });
    Ok(())
}

#[test]
fn a_stopper_ends_a_watch_mid_wait() -> Result<(), Error> {
    let server = server();
    let c = Client::new(root(server.local_addr()));
    c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let mut watch = c.watch("web");
    assert!(watch.next_timeout(LIMIT)?.is_some());
    let stopper = watch.stopper();
    let follower = std::thread::spawn(move || {
        let seen = watch.by_ref().count();
        (seen, watch)
    });
    eventually(LIMIT, "the watch held by the registry", || {
        (watches_waiting(&server) == Some(1)).then_some(())
    });
    let started = Instant::now();
    stopper.stop();
    let (seen, mut watch) = match follower.join() {
        Ok(done) => done,
        Err(_) => panic!("the watching thread panicked"),
    };
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(seen, 0, "no change, no item; the iterator just ended");
    assert!(stopper.is_stopped());
    // Stopped for good: no request, no wait.
    let started = Instant::now();
    assert_eq!(watch.next_timeout(Duration::from_secs(30))?, None);
    assert!(watch.next().is_none());
    assert!(started.elapsed() < Duration::from_millis(500));
    // The client's own pool is untouched.
    assert_eq!(c.app("web")?.instances.len(), 1);
    Ok(())
}

#[test]
fn a_wrong_root_url_reaches_the_snapshot_as_an_error() -> Result<(), Error> {
    let server = server();
    let right = Client::new(root(server.local_addr()));
    right.register_service("web-1", "web", "10.0.0.1", 8080)?;
    // The mistake of issue 20: the root without `/registro`.
    let wrong = Client::builder(format!("http://{}/", server.local_addr()))
        .watch_wait(Duration::from_millis(200))
        .build();
    let cache = wrong.cache(["web"]);
    let error = cache.snapshot("web")?.error;
    match &error {
        Some(Error::Status {
            code: 404,
            message: Some(m),
            ..
        }) => assert!(m.contains("no such route"), "{m}"),
        other => panic!("expected the 404 no such route, got {other:?}"),
    }
    assert!(error.is_some_and(|e| e.is_not_found() && !e.is_unknown_app()));
    assert_eq!(cache.pick("web")?, None);
    // Still an error later: the thread does not settle for "empty".
    eventually(LIMIT, "a later attempt fails too", || {
        let s = cache.snapshot("web").ok()?;
        (s.error.is_some() && s.age == Duration::MAX).then_some(())
    });
    // A watch says so too.
    let mut watch = wrong.watch("web");
    assert!(watch
        .next_timeout(LIMIT)
        .is_err_and(|e| e.is_not_found() && !e.is_unknown_app()));

    // The right root: an app the registry does not know is empty, no error.
    let cache = right.cache(["web", "nope"]);
    let nope = cache.snapshot("nope")?;
    assert!(
        nope.app.instances.is_empty() && nope.error.is_none(),
        "{nope:?}"
    );
    assert!(cache.snapshot("web")?.error.is_none());
    Ok(())
}

/// `{"name":"web","instances":[...]}` with these ids, all up.
fn web(ids: &[&str]) -> String {
    let instances: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(r#"{{"id":"{id}","ip":"10.0.0.1","port":1,"status":"up","lastRenewal":1}}"#)
        })
        .collect();
    format!(r#"{{"name":"web","instances":[{}]}}"#, instances.join(","))
}

#[test]
fn after_a_failure_the_watch_reads_afresh_and_trusts_the_view_over_the_index() -> Result<(), Error>
{
    // Issue 18: a restarted registry that predates indexes never reused
    // hands out the old number for another view.
    let answers = std::sync::Mutex::new(vec![
        Answer::new(200, &web(&["a", "b"])).header("Registro-Index", "9"),
        Answer::new(500, r#"{"error":"restarting"}"#),
        // The same index, another view: b is gone.
        Answer::new(200, &web(&["a"])).header("Registro-Index", "9"),
        // Backwards: a new view, yielded whole.
        Answer::new(200, &web(&["a", "c"])).header("Registro-Index", "4"),
    ]);
    let registry = Responder::start(move |_| {
        let mut answers = answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.is_empty() {
            Answer::new(200, &web(&["a", "c"]))
                .header("Registro-Index", "4")
                .after(Duration::from_millis(50))
        } else {
            answers.remove(0)
        }
    });
    let mut watch = registry
        .client()
        .watch("web")
        .poll_every(Duration::from_millis(20));
    let ids = |app: Option<registro_client::Application>| -> Vec<String> {
        app.map(|a| a.instances.into_iter().map(|i| i.id).collect())
            .unwrap_or_default()
    };
    assert_eq!(ids(watch.next_timeout(LIMIT)?), ["a", "b"]);
    assert!(watch
        .next_timeout(LIMIT)
        .is_err_and(|e| e.status() == Some(500)));
    assert_eq!(
        ids(watch.next_timeout(LIMIT)?),
        ["a"],
        "same index, new view"
    );
    assert_eq!(
        ids(watch.next_timeout(LIMIT)?),
        ["a", "c"],
        "index went back"
    );
    assert_eq!(watch.index(), Some(4));
    let lines = registry.lines();
    assert_eq!(lines[0], "GET /registro/1.0/apps/web");
    assert!(lines[1].starts_with("GET /registro/1.0/apps/web?index=9&wait="));
    assert_eq!(
        lines[2], "GET /registro/1.0/apps/web",
        "a plain read after the failure"
    );
    assert!(lines[3].starts_with("GET /registro/1.0/apps/web?index=9&wait="));
    Ok(())
}

#[test]
fn the_cache_drops_a_stale_view_after_an_outage() -> Result<(), Error> {
    let answers = std::sync::Mutex::new(vec![
        Answer::new(200, &web(&["a", "b"])).header("Registro-Index", "9"),
        Answer::new(503, r#"{"error":"store unreachable"}"#),
        Answer::new(200, &web(&["a"])).header("Registro-Index", "9"),
    ]);
    let registry = Responder::start(move |_| {
        let mut answers = answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.is_empty() {
            // Held, as a registry holds a long poll with nothing new.
            Answer::new(200, &web(&["a"]))
                .header("Registro-Index", "9")
                .after(Duration::from_millis(100))
        } else {
            answers.remove(0)
        }
    });
    let c = Client::builder(registry.root())
        .watch_wait(Duration::from_millis(100))
        .build();
    let cache = c.cache(["web"]);
    eventually(LIMIT, "b gone from the view", || {
        let s = cache.snapshot("web").ok()?;
        (s.app.instance("b").is_none() && s.error.is_none()).then_some(())
    });
    let picks: Vec<String> = (0..3)
        .filter_map(|_| cache.pick("web").ok().flatten())
        .map(|i| i.id)
        .collect();
    assert_eq!(picks, ["a", "a", "a"]);
    assert_eq!(
        cache.snapshot("web")?.app.instance("a").map(|i| i.status),
        Some(Status::Up)
    );
    Ok(())
}
