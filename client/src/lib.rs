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
//! let (app, inst) = client.register_service("service-id", "app-name", "127.0.0.1", 8080)?;
//! let heartbeat = client.start_heartbeat(&app, &inst);
//!
//! // ... the program runs; the heartbeat renews on its own thread ...
//! std::thread::sleep(std::time::Duration::from_secs(90));
//! if let Some(e) = heartbeat.last_error() {
//!     eprintln!("service renew error: {e}");
//! }
//!
//! heartbeat.stop()?; // deregisters: the instance reads out-of-service
//! # Ok::<(), registro_client::Error>(())
//! ```
//!
//! Other services find it by name:
//!
//! ```no_run
//! use std::time::Duration;
//! use registro_client::Client;
//!
//! let client = Client::builder("http://localhost:8080/registro")
//!     .timeout(Duration::from_secs(2))
//!     .build();
//! for inst in client.app("app-name")?.available_instances() {
//!     println!("{} at {}:{}", inst.id, inst.ip, inst.port);
//! }
//! # Ok::<(), registro_client::Error>(())
//! ```
//!
//! Every request gives up after the client's timeout (5 seconds by default),
//! so an unreachable or hung registry is an [`Error`], never a hang. The
//! heartbeat survives registry restarts by registering again (see
//! [`Heartbeat`]). The library prints nothing.
//!
//! # Features
//!
//! - `tls`: `https://` registry URLs (rustls with the Mozilla root
//!   certificates). Off by default: plain `http://` needs no TLS stack.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod error;
mod heartbeat;
mod types;

pub use client::{Client, ClientBuilder};
pub use error::{Error, InvalidResponse, TransportError};
pub use heartbeat::Heartbeat;
pub use types::{Application, Instance, Status};
