//! Metadata, status filters, watches and the discovery cache. Against the
//! real server where it has the feature; a scripted registry stands in for
//! what it does not do yet (metadata, change indexes).

use std::time::{Duration, Instant};

use registro_client::{Application, Client, Error, Instance, Status};

use crate::responder::{Answer, Responder};
use crate::support::{client, eventually, root, server, server_on};

const LIMIT: Duration = Duration::from_secs(5);

fn ids(app: &Application) -> Vec<&str> {
    let mut ids: Vec<&str> = app.instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_registration_carries_its_metadata() -> Result<(), Error> {
    let registry = Responder::start(|req| match (req.method.as_str(), req.target.as_str()) {
        ("GET", _) => Answer::new(200, r#"{"name":"web"}"#),
        // Answers as Part 3 says: the instance, with its metadata.
        ("POST", _) => Answer::new(
            201,
            r#"{"id":"web-1","ip":"10.0.0.7","port":8080,"status":"starting","lastRenewal":17,"metadata":{"version":"1.4.2","zone":"eu-1"}}"#,
        ),
        _ => Answer::new(204, ""),
    });
    let client = registry.client();
    let (app, inst) = client
        .registration()
        .app("web")
        .id("web-1")
        .address("10.0.0.7", 8080)
        .metadata("zone", "eu-1")
        .metadata_from([("version", "1.4.2")])
        .register()?;
    assert_eq!(inst.meta("zone"), Some("eu-1"));
    assert_eq!(inst.meta("version"), Some("1.4.2"));
    assert_eq!(inst.meta("rack"), None);
    assert_eq!(app.instance("web-1"), Some(&inst));
    let seen = registry.seen();
    assert_eq!(seen[1].line(), "POST /registro/1.0/apps/web");
    assert_eq!(
        json(&seen[1].body),
        serde_json::json!({"id": "web-1", "ip": "10.0.0.7", "port": 8080,
                           "metadata": {"zone": "eu-1", "version": "1.4.2"}})
    );
    // No metadata: the body is the original one, without the field.
    let _ = client.register_service("web-2", "web", "10.0.0.8", 8080)?;
    let seen = registry.seen();
    assert_eq!(
        json(&seen[3].body),
        serde_json::json!({"id": "web-2", "ip": "10.0.0.8", "port": 8080})
    );
    Ok(())
}

#[track_caller]
fn check_incomplete(outcome: Result<(Application, Instance), Error>, missing: &str) {
    match outcome {
        Err(Error::Incomplete(what)) => assert_eq!(what, missing),
        other => panic!("expected Incomplete({missing}), got {other:?}"),
    }
}

#[test]
fn an_incomplete_registration_sends_nothing() {
    let registry = Responder::start(|_| Answer::new(500, ""));
    let c = registry.client();
    check_incomplete(
        c.registration()
            .id("web-1")
            .address("10.0.0.7", 1)
            .register(),
        "the application's name",
    );
    check_incomplete(
        c.registration()
            .app("web")
            .address("10.0.0.7", 1)
            .register(),
        "the instance's id",
    );
    check_incomplete(
        c.registration().app("web").id("web-1").register(),
        "the instance's address",
    );
    assert_eq!(
        Error::Incomplete("the instance's id").to_string(),
        "incomplete registration: no the instance's id given"
    );
    assert!(registry.seen().is_empty());
}

#[test]
fn metadata_reads_back_and_empty_metadata_is_left_out() {
    let registry = Responder::start(|_| {
        Answer::new(
            200,
            r#"{"name":"web","instances":[
                {"id":"a","ip":"10.0.0.7","port":1,"status":"up","lastRenewal":1,"metadata":{"zone":"eu-1"}},
                {"id":"b","ip":"10.0.0.8","port":1,"status":"up","lastRenewal":1}]}"#,
        )
    });
    let app = registry.client().app("web");
    let app = match app {
        Ok(app) => app,
        Err(e) => panic!("{e}"),
    };
    let a = app
        .instance("a")
        .cloned()
        .unwrap_or_else(|| Instance::new("", "", 1));
    assert_eq!(a.meta("zone"), Some("eu-1"));
    assert!(app.instance("b").is_some_and(|b| b.metadata.is_empty()));
    let written = serde_json::to_value(&app.instances).unwrap_or_default();
    assert_eq!(written[0]["metadata"], serde_json::json!({"zone": "eu-1"}));
    assert_eq!(written[1].get("metadata"), None);
}

/// A registry with web-1 up, web-2 starting, web-3 out of service, and an
/// app `empty` without instances.
fn three_statuses(c: &Client) -> Result<(), Error> {
    let (app, one) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    c.register_service("web-2", "web", "10.0.0.2", 8080)?;
    let (_, three) = c.register_service("web-3", "web", "10.0.0.3", 8080)?;
    c.renew_instance(&app, &one)?;
    c.delete_instance(&app, &three)?;
    c.new_app("empty")?;
    Ok(())
}

#[test]
fn reads_filtered_by_status() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    three_statuses(&c)?;
    #[track_caller]
    fn check(c: &Client, statuses: &[Status], expected: &[&str]) {
        match c.app_with_status("web", statuses) {
            Ok(app) => assert_eq!(ids(&app), expected, "{statuses:?}"),
            Err(e) => panic!("{statuses:?}: {e}"),
        }
        match c.apps_with_status(statuses) {
            Ok(mut apps) => {
                apps.sort_by(|a, b| a.name.cmp(&b.name));
                let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
                assert_eq!(names, ["empty", "web"], "every app is listed");
                assert!(apps[0].instances.is_empty());
                assert_eq!(ids(&apps[1]), expected, "{statuses:?}");
            }
            Err(e) => panic!("{statuses:?}: {e}"),
        }
    }
    check(&c, &[Status::Up], &["web-1"]);
    check(&c, &[Status::Up, Status::Starting], &["web-1", "web-2"]);
    check(&c, &[Status::OutOfService], &["web-3"]);
    check(&c, &[Status::Down], &[]);
    check(
        &c,
        &[
            Status::Up,
            Status::Starting,
            Status::Down,
            Status::OutOfService,
        ],
        &["web-1", "web-2", "web-3"],
    );
    assert!(c
        .app_with_status("nope", &[Status::Up])
        .is_err_and(|e| e.is_not_found()));
    Ok(())
}

#[test]
fn filtered_reads_ask_the_registry_to_filter() -> Result<(), Error> {
    // A registry that ignores the filter (as the original does): the client
    // filters anyway.
    let registry = Responder::start(|req| {
        if req.target.starts_with("/registro/1.0/apps/") {
            Answer::new(
                200,
                r#"{"name":"web","instances":[
                    {"id":"a","ip":"x","port":1,"status":"up","lastRenewal":1},
                    {"id":"b","ip":"x","port":1,"status":"down","lastRenewal":1}]}"#,
            )
        } else {
            Answer::new(
                200,
                r#"{"applications":[{"name":"web","instances":[
                    {"id":"a","ip":"x","port":1,"status":"starting","lastRenewal":1}]}]}"#,
            )
        }
    });
    let c = registry.client();
    assert_eq!(ids(&c.app_with_status("web", &[Status::Up])?), ["a"]);
    assert_eq!(
        ids(&c.apps_with_status(&[Status::Up, Status::Down])?[0]),
        Vec::<&str>::new()
    );
    assert_eq!(
        registry.lines(),
        [
            "GET /registro/1.0/apps/web?status=up",
            "GET /registro/1.0/apps?status=up,down"
        ]
    );
    Ok(())
}

#[test]
fn a_watch_polls_a_registry_that_sends_no_index() -> Result<(), Error> {
    // The Go original sends no `Registro-Index`: the watch reads every
    // `poll_every` and compares what it reads, lastRenewal aside.
    let bodies = std::sync::Mutex::new(vec![
        r#"{"name":"web","instances":[{"id":"a","ip":"x","port":1,"status":"starting","lastRenewal":1}]}"#,
        r#"{"name":"web","instances":[{"id":"a","ip":"x","port":1,"status":"starting","lastRenewal":2}]}"#,
        r#"{"name":"web","instances":[{"id":"a","ip":"x","port":1,"status":"up","lastRenewal":3}]}"#,
    ]);
    let registry = Responder::start(move |_| {
        let mut bodies = bodies.lock().unwrap_or_else(|p| p.into_inner());
        match bodies.len() {
            0 => Answer::new(404, "404 page not found\n"),
            _ => Answer::new(200, bodies.remove(0)),
        }
    });
    let mut watch = registry
        .client()
        .watch("web")
        .poll_every(Duration::from_millis(20));
    let status = |app: Option<Application>| app.and_then(|a| a.instance("a").map(|i| i.status));
    assert_eq!(status(watch.next_timeout(LIMIT)?), Some(Status::Starting));
    assert_eq!(status(watch.next_timeout(LIMIT)?), Some(Status::Up));
    assert_eq!(watch.index(), None);
    // The app gone (404): a change to no instances.
    let gone = watch.next_timeout(LIMIT)?;
    assert_eq!(gone.map(|a| a.instances.len()), Some(0));
    assert_eq!(
        registry.lines(),
        ["GET /registro/1.0/apps/web"; 4],
        "plain reads, no ?index"
    );
    Ok(())
}

#[test]
fn a_watch_reports_each_change_of_the_real_server() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, one) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let mut watch = c.watch("web").poll_every(Duration::from_millis(50));
    let first = watch.next_timeout(LIMIT)?;
    assert_eq!(first.as_ref().map(ids), Some(vec!["web-1"]));

    // A renewal that changes nothing but lastRenewal is no change.
    c.renew_instance(&app, &one)?;
    let up = watch.next_timeout(LIMIT)?;
    assert_eq!(
        up.and_then(|a| a.instance("web-1").map(|i| i.status)),
        Some(Status::Up)
    );
    c.renew_instance(&app, &one)?;
    assert_eq!(watch.next_timeout(Duration::from_millis(300))?, None);

    c.register_service("web-2", "web", "10.0.0.2", 8080)?;
    let two = watch.next_timeout(LIMIT)?;
    assert_eq!(two.as_ref().map(ids), Some(vec!["web-1", "web-2"]));
    // Iterating blocks until the next change.
    c.delete_instance(&app, &one)?;
    let out = watch.next().transpose()?;
    assert_eq!(
        out.and_then(|a| a.instance("web-1").map(|i| i.status)),
        Some(Status::OutOfService)
    );
    Ok(())
}

#[test]
fn a_watch_long_polls_with_the_index_and_survives_an_index_reset() -> Result<(), Error> {
    // What the discovery server sends: an index; the same index back when
    // the wait elapsed; a lower one after a restart.
    let answers = std::sync::Mutex::new(vec![
        (1, r#"{"name":"web"}"#),
        (
            7,
            r#"{"name":"web","instances":[{"id":"a","ip":"x","port":1,"status":"up","lastRenewal":1}]}"#,
        ),
        (
            7,
            r#"{"name":"web","instances":[{"id":"a","ip":"x","port":1,"status":"up","lastRenewal":1}]}"#,
        ),
        (
            5,
            r#"{"name":"web","instances":[{"id":"a","ip":"x","port":1,"status":"up","lastRenewal":1}]}"#,
        ),
    ]);
    let registry = Responder::start(move |_| {
        let mut answers = answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.is_empty() {
            return Answer::new(500, "");
        }
        let (index, body) = answers.remove(0);
        Answer::new(200, body).header("Registro-Index", index.to_string())
    });
    let mut watch = registry.client().watch("web");
    let first = watch.next_timeout(LIMIT)?;
    assert_eq!(first.as_ref().map(ids), Some(vec![]));
    assert_eq!(watch.index(), Some(1));
    let second = watch.next_timeout(LIMIT)?;
    assert_eq!(second.as_ref().map(ids), Some(vec!["a"]));
    // 7 again (the wait elapsed), then 5: a restarted registry, new.
    let third = watch.next_timeout(LIMIT)?;
    assert_eq!(third.as_ref().map(ids), Some(vec!["a"]));
    assert_eq!(watch.index(), Some(5));
    let lines = registry.lines();
    assert_eq!(lines[0], "GET /registro/1.0/apps/web");
    for (line, index) in lines[1..].iter().zip([1, 7, 7]) {
        let prefix = format!("GET /registro/1.0/apps/web?index={index}&wait=");
        assert!(line.starts_with(&prefix), "{line}");
        assert!(line.ends_with("ms"), "{line}");
    }
    Ok(())
}

#[test]
fn the_cache_picks_round_robin_and_follows_changes() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, one) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let (_, two) = c.register_service("web-2", "web", "10.0.0.2", 8080)?;
    c.register_service("web-3", "web", "10.0.0.3", 8080)?; // starting: never picked
    c.renew_instance(&app, &one)?;
    c.renew_instance(&app, &two)?;
    let cache = c.cache(&["web", "db"]);
    assert_eq!(cache.apps(), ["db", "web"]);
    // Loaded before `cache` returned.
    let picks: Vec<String> = (0..4)
        .filter_map(|_| cache.pick("web").ok().flatten())
        .map(|i| i.id)
        .collect();
    assert_eq!(picks.len(), 4);
    assert_ne!(picks[0], picks[1]);
    assert_eq!(picks[0], picks[2]);
    assert_eq!(picks[1], picks[3]);
    assert_eq!(
        cache
            .pick_where("web", |i| i.ip == "10.0.0.2")?
            .map(|i| i.id)
            .as_deref(),
        Some("web-2")
    );
    assert_eq!(cache.pick_where("web", |i| i.ip == "10.0.0.3")?, None);
    // An app the registry does not know: no instances, not an error.
    let db = cache.snapshot("db")?;
    assert!(db.app.instances.is_empty() && db.error.is_none(), "{db:?}");
    assert_eq!(cache.pick("db")?, None);
    // An app the cache does not watch (a typo): an error that says so, not
    // "none up".
    for typo in [cache.pick("wbe").map(drop), cache.snapshot("wbe").map(drop)] {
        match typo {
            Err(Error::NotCached { app, cached }) => {
                assert_eq!(app, "wbe");
                assert_eq!(cached, ["db", "web"]);
            }
            other => panic!("a typo read as {other:?}"),
        }
    }
    assert!(cache.watches("web") && !cache.watches("wbe"));

    // A new instance, and one taken out, reach the cache.
    let (_, four) = c.register_service("web-4", "web", "10.0.0.4", 8080)?;
    c.renew_instance(&app, &four)?;
    c.delete_instance(&app, &one)?;
    let started = Instant::now();
    eventually(LIMIT, "web-4 in and web-1 out", || {
        let snap = cache.snapshot("web").ok()?;
        let status = |id| snap.app.instance(id).map(|i| i.status);
        (status("web-4") == Some(Status::Up) && status("web-1") == Some(Status::OutOfService))
            .then_some(())
    });
    // Within the cache's half-second cadence, plus slack for a busy machine
    // (the_cache_sees_a_registration_and_a_take_out_within_a_second holds
    // it to one second).
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let picked: Vec<String> = (0..4)
        .filter_map(|_| cache.pick("web").ok().flatten())
        .map(|i| i.id)
        .collect();
    assert!(
        picked.iter().all(|id| id == "web-2" || id == "web-4"),
        "{picked:?}"
    );

    let started = Instant::now();
    cache.stop();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn the_cache_serves_its_last_view_while_the_registry_is_away() -> Result<(), Error> {
    let first = server();
    let addr = first.local_addr();
    let c = Client::builder(root(addr))
        .timeout(Duration::from_millis(500))
        .build();
    let (app, one) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    c.renew_instance(&app, &one)?;
    let cache = c.cache(&["web"]);
    assert!(cache.snapshot("web")?.age < Duration::from_secs(1));
    first.shutdown();

    let snap = eventually(LIMIT, "the failure noticed", || {
        cache.snapshot("web").ok().filter(|s| s.error.is_some())
    });
    assert!(
        snap.error.as_ref().is_some_and(Error::is_transport),
        "{snap:?}"
    );
    assert_eq!(ids(&snap.app), ["web-1"]);
    assert_eq!(cache.pick("web")?.map(|i| i.id).as_deref(), Some("web-1"));
    let age = snap.age;
    eventually(LIMIT, "the age grows", || {
        cache
            .snapshot("web")
            .ok()
            .filter(|s| s.age > age + Duration::from_millis(200))
    });

    // Back (empty, as a restarted registry is): the view follows.
    let second = server_on(addr);
    let snap = eventually(LIMIT, "the restarted registry's view", || {
        cache.snapshot("web").ok().filter(|s| s.error.is_none())
    });
    assert!(snap.app.instances.is_empty(), "{snap:?}");
    assert!(snap.age < Duration::from_secs(2));
    assert_eq!(cache.pick("web")?, None);
    let started = Instant::now();
    drop(cache);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    second.shutdown();
    Ok(())
}

#[test]
fn the_cache_stops_within_a_second_even_when_the_registry_hangs() {
    // Connections complete but nothing is ever answered.
    let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("cannot bind: {e}"),
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("no address: {e}"),
    };
    let c = Client::builder(root(addr))
        .timeout(Duration::from_millis(300))
        .build();
    let cache = c.cache(["web"]);
    let never = cache.snapshot("web");
    assert!(
        never.as_ref().is_ok_and(|s| s.age == Duration::MAX
            && s.app.instances.is_empty()
            && s.error.as_ref().is_some_and(Error::is_transport)),
        "never read: {never:?}"
    );
    let started = Instant::now();
    cache.stop();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(listener);
}

#[test]
fn a_watch_does_not_spin_on_a_registry_that_answers_long_polls_at_once() -> Result<(), Error> {
    // Sends an index but ignores `?index=`: every answer is "unchanged", at
    // once. The watch must fall back to its polling pace, not spin.
    let registry =
        Responder::start(|_| Answer::new(200, r#"{"name":"web"}"#).header("Registro-Index", "3"));
    let mut watch = registry
        .client()
        .watch("web")
        .poll_every(Duration::from_millis(50));
    assert!(watch.next_timeout(LIMIT)?.is_some());
    assert_eq!(watch.next_timeout(Duration::from_millis(500))?, None);
    let lines = registry.lines();
    let asked = lines.len();
    assert!(
        (3..=14).contains(&asked),
        "{asked} requests in 500 ms: {lines:#?}"
    );
    Ok(())
}
