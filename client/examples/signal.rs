//! A service that deregisters when stopped by a signal: `docker stop`,
//! Kubernetes and Ctrl-C send SIGTERM or SIGINT, which run no destructor,
//! so without this its instance would read `up` until the registry marks
//! it `down` (90 s).
//!
//! Run a registry (`cargo run -- --addr 127.0.0.1:8080`), then:
//!
//!     cargo run -p registro-client --features signal --example signal [ROOT_URL] [ID]
//!
//! and press Ctrl-C (or `kill -TERM` it): the instance reads
//! `out-of-service` at once. ROOT_URL defaults to
//! `http://127.0.0.1:8080/registro`, ID to `signal-1`.

use std::io::Write;
use std::time::Duration;

use registro_client::{stop_on_signals, Client, Error};

fn main() {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080/registro".to_owned());
    let id = args.next().unwrap_or_else(|| "signal-1".to_owned());
    if let Err(e) = run(&root, &id) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Registers `id`, heartbeats, and waits; SIGTERM or SIGINT deregisters it
/// and ends the process.
pub fn run(root: &str, id: &str) -> Result<(), Error> {
    let client = Client::new(root);
    let (app, inst) = client.register_service(id, "signal-example", "127.0.0.1", 8080)?;
    let heartbeat = client.start_heartbeat(&app, &inst);
    let signals = stop_on_signals([heartbeat])?;
    println!("{inst} registered; stop me with Ctrl-C or SIGTERM");
    let _ = std::io::stdout().flush();

    // The service's work; here, nothing for an hour. A signal ends the
    // process from the helper's thread once the instance is deregistered.
    std::thread::sleep(Duration::from_secs(3600));

    // A normal end deregisters too.
    signals.stop()
}
