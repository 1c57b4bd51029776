//! The token against the real server started with `--token-file` and
//! `--read-token-file`.

use std::path::PathBuf;
use std::time::Duration;

use registro_client::{Client, Error, Instance, Status};

use crate::support::{quiet, root, server_with};

/// A token file with `token`, unique to this test.
fn token_file(name: &str, token: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "registro-client-{}-{name}.tokens",
        std::process::id()
    ));
    if let Err(e) = std::fs::write(&path, format!("# a comment\n\n{token}\n")) {
        panic!("cannot write {}: {e}", path.display());
    }
    path
}

#[track_caller]
fn assert_unauthorized<T: std::fmt::Debug>(outcome: Result<T, Error>) {
    match outcome {
        Err(Error::Unauthorized { message, .. }) => {
            assert!(message.is_some_and(|m| !m.is_empty()), "no message");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

#[test]
fn a_token_protected_server_works_with_the_token_only() -> Result<(), Error> {
    let write = token_file("write", "w-0123456789abcdef");
    let read = token_file("read", "r-0123456789abcdef");
    let mut config = quiet();
    config.tokens.write = Some(write.clone());
    config.tokens.read = Some(read.clone());
    let server = server_with(config);
    let url = root(server.local_addr());
    let writer = Client::builder(&url).token("w-0123456789abcdef").build();
    let reader = Client::builder(&url).token("r-0123456789abcdef").build();
    let nobody = Client::new(&url);
    let wrong = Client::builder(&url).token("guess").build();

    let (app, inst) = writer
        .registration()
        .app("web")
        .id("web-1")
        .address("10.0.0.7", 8080)
        .register()?;
    let hb = writer.start_heartbeat(&app, &inst);
    assert!(hb.last_error().is_none(), "{:?}", hb.last_error());
    // Reads with either token; none without.
    assert_eq!(reader.instance("web", "web-1")?.status, Status::Up);
    assert_eq!(
        writer
            .app_with_status("web", &[Status::Up])?
            .instances
            .len(),
        1
    );
    assert_unauthorized(nobody.apps());
    assert_unauthorized(wrong.app("web"));
    // Changes need the write token.
    // A read-only token is valid but may not change anything: 403.
    match reader.register_service("web-2", "web", "10.0.0.8", 8080) {
        Err(Error::Forbidden {
            message: Some(m), ..
        }) if m.contains("may only read") => {}
        other => panic!("expected a 403 saying the token may only read, got {other:?}"),
    }
    assert_unauthorized(nobody.delete_instance(&app, &inst));
    // The cache and the heartbeat send it too.
    let cache = reader.cache(&["web"]);
    assert_eq!(cache.pick("web")?.map(|i| i.id).as_deref(), Some("web-1"));
    cache.stop();
    let refused = wrong.start_heartbeat_every(
        &app,
        &Instance::new("web-1", "10.0.0.7", 8080),
        Duration::from_secs(30),
    );
    assert!(
        matches!(refused.last_error(), Some(Error::Unauthorized { .. })),
        "{:?}",
        refused.last_error()
    );
    assert!(refused.is_running(), "a 401 does not end the heartbeat");
    assert_unauthorized(refused.stop());
    // A read-only token's 403 is not an operator's: the heartbeat goes on.
    let read_only = reader.start_heartbeat_every(
        &app,
        &Instance::new("web-1", "10.0.0.7", 8080),
        Duration::from_secs(30),
    );
    assert!(
        matches!(read_only.last_error(), Some(Error::Forbidden { .. })),
        "{:?}",
        read_only.last_error()
    );
    assert!(
        read_only.is_running(),
        "a read-only token does not end the heartbeat"
    );
    assert_eq!(read_only.stop().map_err(|e| e.status()), Err(Some(403)));
    hb.stop()?;
    assert_eq!(
        reader.instance("web", "web-1")?.status,
        Status::OutOfService
    );
    let _ = std::fs::remove_file(write);
    let _ = std::fs::remove_file(read);
    Ok(())
}
