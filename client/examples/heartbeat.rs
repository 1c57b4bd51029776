//! Register a service, keep it up with a heartbeat, deregister it.
//!
//! Run a registry (`cargo run -- --addr 127.0.0.1:8080`), then:
//!
//!     cargo run -p registro-client --example heartbeat [ROOT_URL]
//!
//! ROOT_URL defaults to `http://127.0.0.1:8080/registro`. The example beats
//! every second (a real service keeps the 30 s default), waits for three
//! renewals, and deregisters.

use std::thread;
use std::time::{Duration, Instant};

use registro_client::{Client, Error};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080/registro".to_owned());
    let client = Client::new(&root);

    let (app, inst) = client.register_service("service-id", "app-name", "127.0.0.1", 8080)?;
    println!("registered {}/{}: {}", app.name, inst.id, inst.status);

    let heartbeat = client.start_heartbeat_every(&app, &inst, Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reported = None;
    while heartbeat.renewals() < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let error = heartbeat.last_error().map(|e| e.to_string());
        if error.is_some() && error != reported {
            eprintln!(
                "service renew error: {}",
                error.as_deref().unwrap_or_default()
            );
        }
        reported = error;
    }
    let now = client.instance(&app.name, &inst.id)?;
    println!("{} renewals: {}", heartbeat.renewals(), now.status);

    heartbeat.stop()?;
    let now = client.instance(&app.name, &inst.id)?;
    println!("stopped: {}", now.status);
    Ok(())
}
