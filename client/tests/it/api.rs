//! Every `Client` method against the real server.

use registro_client::{Application, Error, Instance, Status};

use crate::support::{client, server};

#[track_caller]
fn assert_status<T: std::fmt::Debug>(result: Result<T, Error>, code: u16) {
    match result {
        Err(Error::Status {
            code: got, message, ..
        }) => {
            assert_eq!(got, code, "message: {message:?}");
            // This project's server explains every error.
            assert!(message.is_some_and(|m| !m.is_empty()), "no message");
        }
        other => panic!("expected http status {code}, got {other:?}"),
    }
}

#[test]
fn register_service_creates_the_app_then_the_instance() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    assert_eq!(app.name, "web");
    assert_eq!(
        (inst.id.as_str(), inst.ip.as_str(), inst.port),
        ("web-1", "10.0.0.7", 8080)
    );
    assert_eq!(inst.status, Status::Starting);
    assert!(inst.last_renewal > 1_700_000_000, "{}", inst.last_renewal);
    assert_eq!(app.instance("web-1"), Some(&inst));

    // Exactly as stored: this server's 201 carries the instance.
    assert_eq!(c.instance("web", "web-1")?, inst);
    Ok(())
}

#[test]
fn register_service_joins_an_existing_app() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    c.new_app("web")?;
    c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    let (app, _) = c.register_service("web-2", "web", "10.0.0.8", 8081)?;
    let mut ids: Vec<&str> = app.instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["web-1", "web-2"]);
    assert_eq!(c.apps()?.len(), 1);
    Ok(())
}

#[test]
fn register_service_reports_a_clash() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    // A live instance of that id at another address.
    assert_status(c.register_service("web-1", "web", "10.0.0.9", 8080), 409);
    Ok(())
}

#[test]
fn apps_lists_every_application() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    assert_eq!(c.apps()?, []);
    c.new_app("empty")?;
    c.register_service("db-1", "db", "10.0.0.1", 5432)?;
    let mut apps = c.apps()?;
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(apps.len(), 2);
    assert_eq!(apps[0].name, "db");
    assert_eq!(apps[0].instances.len(), 1);
    assert_eq!(apps[0].instances[0].id, "db-1");
    assert_eq!(apps[1], Application::new("empty"));
    Ok(())
}

#[test]
fn app_reads_one_application_and_refuses_unknown_ones() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    assert_status(c.app("web"), 404);
    c.new_app("web")?;
    assert_eq!(c.app("web")?, Application::new("web"));
    c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    let app = c.app("web")?;
    assert_eq!(app.instances.len(), 1);
    assert_eq!(app.instance("web-1").map(|i| i.port), Some(8080));
    Ok(())
}

#[test]
fn instance_reads_one_instance_and_refuses_unknown_ones() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    assert_status(c.instance("web", "web-1"), 404);
    c.new_app("web")?;
    assert_status(c.instance("web", "web-1"), 404);
    c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    assert_eq!(c.instance("web", "web-1")?.id, "web-1");
    Ok(())
}

#[test]
fn update_application_refreshes_instances_and_statuses() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (mut app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    let (_, other) = c.register_service("web-2", "web", "10.0.0.8", 8080)?;
    c.renew_instance(&app, &other)?;
    c.update_application(&mut app)?;
    assert_eq!(app.instances.len(), 2);
    assert_eq!(
        app.instance("web-1").map(|i| i.status),
        Some(Status::Starting)
    );
    assert_eq!(app.instance("web-2").map(|i| i.status), Some(Status::Up));
    let available: Vec<&str> = app.available().map(|i| i.id.as_str()).collect();
    assert_eq!(available, ["web-2"]);

    c.renew_instance(&app, &inst)?;
    c.delete_instance(&app, &other)?;
    c.update_application(&mut app)?;
    assert_eq!(
        app.instance("web-2").map(|i| i.status),
        Some(Status::OutOfService)
    );
    let available: Vec<&str> = app.available().map(|i| i.id.as_str()).collect();
    assert_eq!(available, ["web-1"]);

    let mut unknown = Application::new("nope");
    assert_status(c.update_application(&mut unknown), 404);
    assert_eq!(unknown, Application::new("nope"), "left as it was");
    Ok(())
}

#[test]
fn new_app_creates_once() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    assert_eq!(c.new_app("web")?, Application::new("web"));
    assert_status(c.new_app("web"), 409);
    // This server validates names: a `/` is refused.
    assert_status(c.new_app("a/b"), 400);
    Ok(())
}

#[test]
fn new_instance_needs_the_app() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let web = Application::new("web");
    assert_status(c.new_instance(&web, "web-1", "10.0.0.7", 8080), 404);
    c.new_app("web")?;
    let inst = c.new_instance(&web, "web-1", "10.0.0.7", 8080)?;
    assert_eq!(inst.status, Status::Starting);
    assert_eq!(c.instance("web", "web-1")?.status, Status::Starting);
    // Port 0 is refused by this server's validation.
    assert_status(c.new_instance(&web, "web-2", "10.0.0.7", 0), 400);
    Ok(())
}

#[test]
fn renew_instance_brings_it_up_until_deleted() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    c.renew_instance(&app, &inst)?;
    assert_eq!(c.instance("web", "web-1")?.status, Status::Up);
    c.renew_instance(&app, &inst)?;
    c.delete_instance(&app, &inst)?;
    assert_eq!(c.instance("web", "web-1")?.status, Status::OutOfService);
    // Out of service: heartbeats are refused.
    assert_status(c.renew_instance(&app, &inst), 403);
    assert_status(
        c.renew_instance(&app, &Instance::new("web-9", "10.0.0.7", 1)),
        404,
    );
    assert_status(c.renew_instance(&Application::new("nope"), &inst), 404);
    Ok(())
}

#[test]
fn delete_instance_marks_it_out_of_service() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    c.delete_instance(&app, &inst)?;
    let stored = c.instance("web", "web-1")?;
    assert_eq!(stored.status, Status::OutOfService);
    assert_status(
        c.delete_instance(&app, &Instance::new("web-9", "10.0.0.7", 1)),
        404,
    );
    assert_status(c.delete_instance(&Application::new("nope"), &inst), 404);
    Ok(())
}

#[test]
fn names_are_percent_encoded_in_paths() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    for (app, id) in [("my app", "i 1"), ("ümlaut?", "x#y%z"), ("a+b", "c&d=e")] {
        let (application, inst) = c.register_service(id, app, "10.0.0.7", 8080)?;
        c.renew_instance(&application, &inst)?;
        let stored = c.app(app)?;
        assert_eq!(stored.name, app);
        assert_eq!(
            stored.instance(id).map(|i| i.status),
            Some(Status::Up),
            "{app}/{id}"
        );
        c.delete_instance(&application, &inst)?;
        assert_eq!(c.instance(app, id)?.status, Status::OutOfService);
    }
    Ok(())
}

#[test]
fn available_instances_of_a_fresh_read_can_be_kept() -> Result<(), Error> {
    // Issue 13 item 13: this one-liner borrowed a temporary (E0716).
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    c.register_service("web-2", "web", "10.0.0.8", 8080)?;
    c.renew_instance(&app, &inst)?;
    let v = c.app("web")?.available_instances();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].id, "web-1");
    // Borrowing, without copies:
    let stored = c.app("web")?;
    assert_eq!(
        stored.available().map(|i| i.port).collect::<Vec<_>>(),
        [8080]
    );
    Ok(())
}
