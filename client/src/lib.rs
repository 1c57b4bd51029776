//! A client for [Registro](https://github.com/mscansian/registro), a tiny
//! service registry, for programs that are not async: register a service,
//! keep it alive with a heartbeat thread, find other services.
//!
//! It speaks the original registry's HTTP API, so it works against this
//! project's server and the original Go server alike.
//!
//! A service registers itself (creating its application if need be), then
//! lets a [`Heartbeat`] renew it every 30 seconds until it stops:
//!
//! ```no_run
//! use registro_client::Client;
//!
//! let client = Client::new("http://localhost:8080/registro");
//! let (app, inst) = client
//!     .registration()
//!     .app("app-name")
//!     .id("service-id")
//!     .address("127.0.0.1", 8080)
//!     .metadata("zone", "eu-1")
//!     .register()?;
//! // Renews once now (the instance is `up` when this returns), then every 30 s.
//! let heartbeat = client.start_heartbeat(&app, &inst);
//! if let Some(e) = heartbeat.last_error() {
//!     eprintln!("service renew error: {e}");
//! }
//!
//! // ... the program runs; the heartbeat renews on its own thread ...
//!
//! heartbeat.stop()?; // deregisters: the instance reads out-of-service
//! # Ok::<(), registro_client::Error>(())
//! ```
//!
//! [`Client::register_service`]`(id, app, ip, port)` does the same without
//! metadata, as the original Go client did (mind its order: the id first).
//!
//! Other services find it by name, with one request:
//!
//! ```no_run
//! use std::time::Duration;
//! use registro_client::{Client, Status};
//!
//! let client = Client::builder("http://localhost:8080/registro")
//!     .timeout(Duration::from_secs(2))
//!     .build();
//! for inst in client.app_with_status("app-name", &[Status::Up])?.instances {
//!     println!("{} at {}:{}", inst.id, inst.ip, inst.port);
//! }
//! let up = client.app("app-name")?.available_instances();
//! # drop(up);
//! # Ok::<(), registro_client::Error>(())
//! ```
//!
//! or keep a [`Cache`] that follows the registry's changes and picks an
//! instance without a request, or follow one application with a [`Watch`]:
//!
//! ```no_run
//! # let client = registro_client::Client::new("http://localhost:8080/registro");
//! let cache = client.cache(["app-name"]);
//! // `Ok(None)` when none is up; an error for an app not given to `cache`.
//! if let Some(target) = cache.pick_where("app-name", |i| i.meta("zone") == Some("eu-1"))? {
//!     println!("calling {target}");
//! }
//! # Ok::<(), registro_client::Error>(())
//! ```
//!
//! A cache costs the registry one request per application per minute while
//! nothing changes: each of its requests is a long poll the registry holds
//! until the application changes (60 seconds at most,
//! [`ClientBuilder::watch_wait`]), and [`Cache::stop`] interrupts it at once.
//!
//! A client may know several servers of one registry; it moves on to the
//! next after a connection error, a timeout or a 503, for registration,
//! heartbeats, reads, watches and caches alike, and stays with one that
//! works:
//!
//! ```no_run
//! # use registro_client::Client;
//! let client = Client::builder("http://10.0.0.1:8080/registro")
//!     .url("http://10.0.0.2:8080/registro")
//!     .on_failover(|event| eprintln!("registry: {event}")) // moved from ... to ...: why
//!     .build();
//! println!("using {}", client.url());
//! ```
//!
//! A program stopped by a signal runs no destructor, so dropping the
//! heartbeat does not deregister it; with the `signal` feature,
//! `stop_on_signals([heartbeat])` deregisters on SIGTERM and SIGINT, then
//! ends the process as the signal would have; its
//! `heartbeats()` keep the heartbeats readable meanwhile.
//!
//! Every request gives up after the client's timeout (5 seconds by default),
//! so an unreachable or hung registry is an [`Error`], never a hang. An
//! error names the server(s) it came from, in `Display` and `Debug` alike,
//! so `fn main() -> Result<(), registro_client::Error>` with `?` prints
//! `Error: registry unreachable: http://localhost:8080/registro: connection
//! refused`. A
//! registry that demands a token gets it from [`ClientBuilder::token`]. The
//! heartbeat survives registry restarts by registering again (see
//! [`Heartbeat`]). The library prints nothing. `client/examples/` in the
//! repository has complete programs, and `docs/client.md` the reference.
//!
//! # Features
//!
//! - `tls`: `https://` registry URLs (rustls with the Mozilla root
//!   certificates). Off by default: plain `http://` needs no TLS stack.
//! - `signal` (Unix): `stop_on_signals`, through `signal-hook`. Off by
//!   default.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cache;
mod client;
mod error;
mod heartbeat;
#[cfg(all(unix, feature = "signal"))]
mod signal;
mod stop;
mod types;
mod watch;

pub use cache::{Cache, Snapshot};
pub use client::{Client, ClientBuilder, Failover, Registration};
pub use error::{Error, InvalidResponse, TransportError};
pub use heartbeat::Heartbeat;
#[cfg(all(unix, feature = "signal"))]
pub use signal::{stop_on_signals, SignalStop};
pub use stop::Stopper;
pub use types::{Application, Instance, Metadata, Status};
pub use watch::Watch;

/// The Rust blocks of `docs/client.md`, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/client.md")]
struct ClientReference;
