//! A discovery cache: register two instances of `web` in two zones, keep
//! them up, then pick instances from a cache as a caller of `web` would.
//!
//! Run a registry (`cargo run -- --addr 127.0.0.1:8080`), then:
//!
//!     cargo run -p registro-client --example cache [ROOT_URL]
//!
//! ROOT_URL defaults to `http://127.0.0.1:8080/registro`; set REGISTRO_TOKEN
//! if the registry was started with `--token-file`. The example takes one
//! instance out of service half-way, so the picks change, then stops.

use std::thread;
use std::time::{Duration, Instant};

use registro_client::{Client, Error, Status};

// An error ends the program with `Error: ` and its message, which names
// the server tried: `Error: registry unreachable:
// http://127.0.0.1:8080/registro: connection refused`.
fn main() -> Result<(), Error> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080/registro".to_owned());
    let mut builder = Client::builder(&root);
    if let Ok(token) = std::env::var("REGISTRO_TOKEN") {
        builder = builder.token(token.trim());
    }
    let client = builder.build();

    // Two instances of `web`, as two services would register themselves.
    let mut heartbeats = Vec::new();
    for (id, port, zone) in [("web-eu", 8081, "eu-1"), ("web-us", 8082, "us-1")] {
        let (app, inst) = client
            .registration()
            .app("web")
            .id(id)
            .address("127.0.0.1", port)
            .metadata("zone", zone)
            .register()?;
        heartbeats.push(client.start_heartbeat_every(&app, &inst, Duration::from_secs(5)));
    }

    // A caller of `web`: the cache reads it now and follows its changes.
    let cache = client.cache(&["web"]);
    for _ in 0..4 {
        // `Ok(None)`: none up; an error: "web" is not one the cache watches.
        if let Some(inst) = cache.pick("web")? {
            println!("pick: {} at {}:{}", inst.id, inst.ip, inst.port);
        }
    }
    if let Some(inst) = cache.pick_where("web", |i| i.meta("zone") == Some("us-1"))? {
        println!("pick in us-1: {}", inst.id);
    }

    // Take web-eu out; the cache notices (at once with a registry that
    // sends change indexes, within a second otherwise).
    let eu = heartbeats.remove(0);
    eu.stop()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let gone = cache.snapshot("web").is_ok_and(|s| {
            s.app.instance("web-eu").map(|i| i.status) == Some(Status::OutOfService)
        });
        if gone {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..2 {
        if let Some(inst) = cache.pick("web")? {
            println!("after web-eu left, pick: {}", inst.id);
        }
    }
    let snap = cache.snapshot("web")?;
    println!(
        "view: {}, confirmed {:?} ago{}",
        snap.app,
        snap.age,
        snap.error
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    );
    cache.stop();
    for hb in heartbeats {
        hb.stop()?;
    }
    Ok(())
}
