//! The heartbeat thread against the real server, with intervals of tens of
//! milliseconds (or 30 s, where the point is that nothing waits for it).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use registro_client::{Client, Error, Status};

use crate::support::{
    client, eventually, quiet, requests, root, server, server_on, server_with, status,
    wait_for_status,
};

const FAST: Duration = Duration::from_millis(30);
const LIMIT: Duration = Duration::from_secs(5);

#[test]
fn renews_at_once_then_every_interval() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    assert_eq!(status(&c, "web", "web-1"), Some(Status::Starting));

    // With the 30 s default, only the immediate renewal can bring it up.
    let slow = c.start_heartbeat(&app, &inst);
    assert_eq!(slow.interval(), Duration::from_secs(30));
    wait_for_status(&c, "web", "web-1", Status::Up, LIMIT);
    eventually(LIMIT, "first renewal counted", || {
        (slow.renewals() == 1).then_some(())
    });
    assert!(slow.last_error().is_none());
    slow.stop()?;

    let (app, inst) = c.register_service("web-2", "web", "10.0.0.8", 8080)?;
    let fast = c.start_heartbeat_every(&app, &inst, FAST);
    eventually(LIMIT, "five renewals", || {
        (fast.renewals() >= 5).then_some(())
    });
    assert_eq!(status(&c, "web", "web-2"), Some(Status::Up));
    assert!(fast.last_error().is_none(), "{:?}", fast.last_error());
    fast.stop()
}

#[test]
fn stop_wakes_the_thread_and_deregisters() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    let hb = c.start_heartbeat(&app, &inst);
    wait_for_status(&c, "web", "web-1", Status::Up, LIMIT);

    // The thread is now waiting out its 30 s interval.
    let started = Instant::now();
    hb.stop()?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    assert_eq!(status(&c, "web", "web-1"), Some(Status::OutOfService));
    // And nothing renews it any more: a renewal would have been refused
    // (403), never have made it up again.
    assert_eq!(
        c.app("web")?.available_instances(),
        Vec::<registro_client::Instance>::new()
    );
    Ok(())
}

#[test]
fn drop_wakes_the_thread_and_deregisters() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    let hb = c.start_heartbeat_every(&app, &inst, Duration::from_secs(30));
    wait_for_status(&c, "web", "web-1", Status::Up, LIMIT);

    let started = Instant::now();
    drop(hb);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "drop took {took:?}");
    assert_eq!(status(&c, "web", "web-1"), Some(Status::OutOfService));
    Ok(())
}

#[test]
fn survives_a_registry_restart_by_registering_again() -> Result<(), Error> {
    let first = server();
    let addr: SocketAddr = first.local_addr();
    let c = client(&first);
    // Two instances of one application: after the restart one of them
    // re-creates the application and the other finds it taken (409), which
    // must not stop it.
    let (app, one) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    let (_, two) = c.register_service("web-2", "web", "10.0.0.8", 8080)?;
    let hb1 = c.start_heartbeat_every(&app, &one, FAST);
    let hb2 = c.start_heartbeat_every(&app, &two, FAST);
    wait_for_status(&c, "web", "web-1", Status::Up, LIMIT);
    wait_for_status(&c, "web", "web-2", Status::Up, LIMIT);

    first.shutdown();
    // While it is down, the heartbeats fail and say so.
    eventually(
        LIMIT,
        "a transport error while the registry is down",
        || hb1.last_error().filter(Error::is_transport),
    );
    // A new registry on the same port knows nothing: the heartbeats'
    // renewals answer 404 until they register again.
    let second = server_on(addr);
    // Back within a few intervals (one, plus the backoff then in effect).
    wait_for_status(&c, "web", "web-1", Status::Up, LIMIT);
    wait_for_status(&c, "web", "web-2", Status::Up, LIMIT);
    eventually(LIMIT, "errors cleared", || {
        (hb1.last_error().is_none() && hb2.last_error().is_none()).then_some(())
    });
    let stored = c.app("web")?;
    assert_eq!(
        stored.instance("web-1").map(|i| (i.ip.as_str(), i.port)),
        Some(("10.0.0.7", 8080))
    );
    assert_eq!(
        stored.instance("web-2").map(|i| (i.ip.as_str(), i.port)),
        Some(("10.0.0.8", 8080))
    );

    hb1.stop()?;
    hb2.stop()?;
    assert_eq!(status(&c, "web", "web-1"), Some(Status::OutOfService));
    assert_eq!(status(&c, "web", "web-2"), Some(Status::OutOfService));
    second.shutdown();
    Ok(())
}

#[test]
fn an_instance_taken_out_of_service_is_not_brought_back() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    let hb = c.start_heartbeat_every(&app, &inst, FAST);
    wait_for_status(&c, "web", "web-1", Status::Up, LIMIT);
    // An operator takes it out: the heartbeat reports the refusal (403)
    // and keeps out of the way.
    c.delete_instance(&app, &inst)?;
    eventually(LIMIT, "the refusal is reported", || {
        (hb.last_error().and_then(|e| e.status()) == Some(403)).then_some(())
    });
    assert_eq!(status(&c, "web", "web-1"), Some(Status::OutOfService));
    hb.stop()?;
    Ok(())
}

#[test]
fn an_unreachable_registry_is_reported_not_fatal() -> Result<(), Error> {
    let server = server();
    let addr = server.local_addr();
    let short = Client::builder(root(addr))
        .timeout(Duration::from_millis(500))
        .build();
    let (app, inst) = short.register_service("web-1", "web", "10.0.0.7", 8080)?;
    server.shutdown();

    let hb = short.start_heartbeat_every(&app, &inst, FAST);
    let seen = eventually(LIMIT, "a transport error", || hb.last_error());
    assert!(seen.is_transport(), "{seen:?}");
    assert_eq!(hb.renewals(), 0);

    // The thread keeps trying: once a registry is back, the instance is too.
    let again = server_on(addr);
    wait_for_status(&short, "web", "web-1", Status::Up, LIMIT);

    again.shutdown();
    let started = Instant::now();
    let stopped = hb.stop();
    assert!(
        matches!(&stopped, Err(e) if e.is_transport()),
        "{stopped:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn any_instance_id_can_be_heartbeaten() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    // Odd ids travel percent-encoded; a NUL must not upset the thread's name.
    let (app, inst) = c.register_service("a\0b c%d", "web", "10.0.0.7", 8080)?;
    let hb = c.start_heartbeat_every(&app, &inst, FAST);
    wait_for_status(&c, "web", "a\0b c%d", Status::Up, LIMIT);
    hb.stop()?;
    assert_eq!(status(&c, "web", "a\0b c%d"), Some(Status::OutOfService));
    Ok(())
}

#[test]
fn an_instance_taken_out_of_service_stays_out_after_its_eviction() -> Result<(), Error> {
    // Issue 13 item 2: once the out-of-service entry is evicted, a renewal
    // answers 404; that must not make the heartbeat register it again.
    let server = server_with(registro::Config {
        down_after: Duration::from_millis(500),
        evict_after: Duration::from_secs(1),
        sweep_every: Duration::from_millis(100),
        ..quiet()
    });
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    let hb = c.start_heartbeat_every(&app, &inst, FAST);
    assert_eq!(status(&c, "web", "web-1"), Some(Status::Up));
    c.delete_instance(&app, &inst)?;
    eventually(LIMIT, "the refusal is reported and renewing ends", || {
        (hb.last_error().and_then(|e| e.status()) == Some(403) && !hb.is_running()).then_some(())
    });
    eventually(LIMIT, "the entry evicted", || {
        status(&c, "web", "web-1").is_none().then_some(())
    });
    assert_eq!(hb.last_error().and_then(|e| e.status()), Some(403));
    assert!(!hb.is_running());
    assert_eq!(status(&c, "web", "web-1"), None);
    // Out of service already: the stop sends nothing (issue 19 item 7).
    hb.stop()?;
    assert_eq!(status(&c, "web", "web-1"), None);
    Ok(())
}

#[test]
fn a_stop_after_a_403_sends_no_delete() -> Result<(), Error> {
    // Issue 19 item 7: a DELETE of an instance out of service already
    // renews its stay until eviction; the heartbeat has nothing to take out.
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    let hb = c.start_heartbeat_every(&app, &inst, FAST);
    c.delete_instance(&app, &inst)?;
    eventually(LIMIT, "the 403 seen", || {
        (hb.last_error().and_then(|e| e.status()) == Some(403)).then_some(())
    });
    let deletes = || requests(&server, "/registro/1.0/apps/{app}/{id}", "DELETE");
    assert_eq!(deletes(), 1, "the operator's");
    hb.stop()?;
    assert_eq!(deletes(), 1, "the stop sent a DELETE after a 403");
    assert_eq!(status(&c, "web", "web-1"), Some(Status::OutOfService));
    Ok(())
}

#[test]
fn start_heartbeat_renews_before_it_returns() -> Result<(), Error> {
    // Issue 13 item 11: the README's code, as written, finds itself `up`.
    let server = server();
    let client = super::support::client(&server);
    let (app, inst) = client.register_service("service-id", "app-name", "127.0.0.1", 8080)?;
    let hb = client.start_heartbeat(&app, &inst);
    let v = client.app("app-name")?.available_instances();
    assert_eq!(
        v.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["service-id"]
    );
    assert_eq!(hb.renewals(), 1);
    assert!(hb.last_error().is_none());
    assert!(hb.is_running());

    // A failure of that first renewal is reported at once.
    let (_, other) = client.register_service("other", "app-name", "127.0.0.1", 8081)?;
    client.delete_instance(&app, &other)?;
    let refused = client.start_heartbeat(&app, &other);
    assert_eq!(refused.last_error().and_then(|e| e.status()), Some(403));
    assert_eq!(refused.renewals(), 0);
    hb.stop()
}

#[test]
fn a_huge_interval_neither_panics_nor_stops_the_thread() -> Result<(), Error> {
    // Issue 13 item 10: `interval + jitter` overflowed and the thread died
    // silently.
    let server = server();
    let c = client(&server);
    for interval in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        // Registered again: the previous round's stop took it out.
        let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
        let hb = c.start_heartbeat_every(&app, &inst, interval);
        assert_eq!(hb.renewals(), 1);
        // The next wait (where it panicked) is computed before
        // `start_heartbeat_every` returns; the thread now waits it out.
        assert!(hb.is_running(), "{:?}", hb.last_error());
        assert!(hb.last_error().is_none(), "{:?}", hb.last_error());
        let started = Instant::now();
        hb.stop()?;
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    Ok(())
}
