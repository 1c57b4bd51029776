//! Discovery against the real server's Part 3 support: metadata stored and
//! read back, change indexes, watches answered on change, the cache
//! following registrations and take-outs within a second.

use std::time::{Duration, Instant};

use registro_client::{Error, Status};

use crate::support::{client, eventually, server, server_on, watches_waiting};

const LIMIT: Duration = Duration::from_secs(5);

#[test]
fn metadata_is_stored_read_back_and_replaced_by_a_reregistration() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (_, inst) = c
        .registration()
        .app("web")
        .id("web-1")
        .address("10.0.0.7", 8080)
        .metadata("zone", "eu-1")
        .metadata("version", "1.4.2")
        .register()?;
    assert_eq!(inst.meta("zone"), Some("eu-1"));
    let stored = c.instance("web", "web-1")?;
    assert_eq!(stored.metadata, inst.metadata);
    assert_eq!(stored.meta("version"), Some("1.4.2"));
    // Same address: a re-registration, which replaces the metadata.
    let (_, again) = c
        .registration()
        .app("web")
        .id("web-1")
        .address("10.0.0.7", 8080)
        .metadata("zone", "eu-2")
        .register()?;
    assert_eq!(again.meta("zone"), Some("eu-2"));
    assert_eq!(again.meta("version"), None);
    assert_eq!(
        c.app("web")?.instance("web-1").map(|i| i.metadata.clone()),
        Some(again.metadata)
    );
    // Without metadata: none.
    let (_, plain) = c.register_service("web-2", "web", "10.0.0.8", 8080)?;
    assert!(plain.metadata.is_empty());
    // Too much is refused by the registry.
    let huge = c
        .registration()
        .app("web")
        .id("web-3")
        .address("10.0.0.9", 8080)
        .metadata("k", "v".repeat(1025))
        .register();
    assert_eq!(huge.err().and_then(|e| e.status()), Some(400));
    Ok(())
}

#[test]
fn the_cache_picks_by_metadata() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    for (id, zone) in [("web-1", "eu-1"), ("web-2", "us-1"), ("web-3", "eu-1")] {
        let (app, inst) = c
            .registration()
            .app("web")
            .id(id)
            .address("10.0.0.7", 8080)
            .metadata("zone", zone)
            .register()?;
        c.renew_instance(&app, &inst)?;
    }
    let cache = c.cache(&["web"]);
    let eu: Vec<String> = (0..4)
        .filter_map(|_| {
            cache
                .pick_where("web", |i| i.meta("zone") == Some("eu-1"))
                .ok()
                .flatten()
        })
        .map(|i| i.id)
        .collect();
    assert_eq!(eu.len(), 4);
    assert!(eu.iter().all(|id| id == "web-1" || id == "web-3"), "{eu:?}");
    assert_ne!(eu[0], eu[1]);
    let us = cache.pick_where("web", |i| i.meta("zone") == Some("us-1"))?;
    assert_eq!(us.map(|i| i.id).as_deref(), Some("web-2"));
    Ok(())
}

#[test]
fn a_watch_is_answered_when_the_app_changes() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, one) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let mut watch = c.watch("web");
    assert!(watch.next_timeout(LIMIT)?.is_some());
    let first = watch.index();
    assert!(first.is_some(), "the server sends Registro-Index");

    #[track_caller]
    fn changed(
        watch: &mut registro_client::Watch,
        what: &str,
    ) -> Result<registro_client::Application, Error> {
        let started = Instant::now();
        let app = watch.next_timeout(LIMIT)?;
        let took = started.elapsed();
        // Answered on the change, not at the end of the wait (5 s): at once
        // where the server holds watches, within the polling second where it
        // answers them at once.
        assert!(took < Duration::from_millis(2500), "{what}: {took:?}");
        match app {
            Some(app) => Ok(app),
            None => panic!("{what}: no change seen"),
        }
    }
    c.renew_instance(&app, &one)?;
    let up = changed(&mut watch, "starting to up")?;
    assert_eq!(up.instance("web-1").map(|i| i.status), Some(Status::Up));
    assert_ne!(watch.index(), first);
    c.register_service("web-2", "web", "10.0.0.2", 8080)?;
    let two = changed(&mut watch, "a registration")?;
    assert_eq!(two.instances.len(), 2);
    c.delete_instance(&app, &one)?;
    let out = changed(&mut watch, "a take-out")?;
    assert_eq!(
        out.instance("web-1").map(|i| i.status),
        Some(Status::OutOfService)
    );
    // A renewal that changes no status is no change.
    c.renew_instance(
        &app,
        &registro_client::Instance::new("web-2", "10.0.0.2", 8080),
    )?;
    assert!(changed(&mut watch, "web-2 up")?.instance("web-2").is_some());
    let index = watch.index();
    c.renew_instance(
        &app,
        &registro_client::Instance::new("web-2", "10.0.0.2", 8080),
    )?;
    assert_eq!(watch.next_timeout(Duration::from_millis(600))?, None);
    assert_eq!(watch.index(), index);
    Ok(())
}

#[test]
fn a_watch_survives_a_registry_restart() -> Result<(), Error> {
    let first = server();
    let addr = first.local_addr();
    let c = client(&first);
    c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let mut watch = c.watch("web").poll_every(Duration::from_millis(50));
    assert!(watch.next_timeout(LIMIT)?.is_some());
    first.shutdown();
    // Unreachable: an error, not a hang.
    assert!(watch.next_timeout(LIMIT).is_err_and(|e| e.is_transport()));
    let second = server_on(addr);
    // Forgotten: no app is an app without instances.
    let gone = watch.next_timeout(LIMIT)?;
    assert_eq!(gone.map(|a| a.instances.len()), Some(0));
    // Registered again: its index starts over, and is still seen as new.
    c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let back = eventually(LIMIT, "the registration seen", || {
        watch
            .next_timeout(Duration::from_millis(200))
            .ok()
            .flatten()
    });
    assert_eq!(back.instances.len(), 1);
    assert!(watch.index().is_some());
    second.shutdown();
    Ok(())
}

#[test]
fn the_cache_sees_a_registration_and_a_take_out_within_a_second() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, one) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    c.renew_instance(&app, &one)?;
    let cache = c.cache(&["web"]);
    assert_eq!(cache.pick("web")?.map(|i| i.id).as_deref(), Some("web-1"));

    let started = Instant::now();
    let (_, two) = c.register_service("web-2", "web", "10.0.0.2", 8080)?;
    let seen = eventually(
        Duration::from_secs(1),
        "the new instance in the cache",
        || {
            cache
                .snapshot("web")
                .ok()
                .filter(|s| s.app.instance("web-2").is_some())
        },
    );
    let registration = started.elapsed();
    assert_eq!(
        seen.app.instance("web-2").map(|i| i.status),
        Some(Status::Starting)
    );

    c.renew_instance(&app, &two)?;
    c.delete_instance(&app, &one)?;
    let started = Instant::now();
    eventually(Duration::from_secs(1), "web-1 out of the picks", || {
        let snap = cache.snapshot("web").ok()?;
        (snap.app.instance("web-1").map(|i| i.status) == Some(Status::OutOfService)).then_some(())
    });
    let take_out = started.elapsed();
    for _ in 0..4 {
        assert_eq!(cache.pick("web")?.map(|i| i.id).as_deref(), Some("web-2"));
    }
    eprintln!("cache: registration seen after {registration:?}, take-out after {take_out:?}");
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
fn a_parked_watch_is_woken_by_the_change() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let mut watch = c.watch("web");
    assert!(watch.next_timeout(LIMIT)?.is_some());
    let (woken, changed_at) = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let outcome = watch.next_timeout(Duration::from_secs(20));
            (outcome, Instant::now())
        });
        eventually(LIMIT, "the watch parked in the server", || {
            (watches_waiting(&server) == Some(1)).then_some(())
        });
        let changed_at = Instant::now();
        let registered = c.register_service("web-2", "web", "10.0.0.2", 8080);
        assert!(registered.is_ok(), "{registered:?}");
        match waiter.join() {
            Ok((outcome, at)) => (outcome.map(|app| (app, at)), changed_at),
            Err(_) => panic!("the watching thread panicked"),
        }
    });
    let (app, answered_at) = woken?;
    assert_eq!(app.map(|a| a.instances.len()), Some(2));
    let took = answered_at - changed_at;
    assert!(took < Duration::from_secs(1), "{took:?}");
    eprintln!("parked watch answered {took:?} after the change began");
    Ok(())
}
