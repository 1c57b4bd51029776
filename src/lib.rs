//! Registro: a tiny service registry. Services register themselves
//! (application, instance id, ip, port), renew every 30 seconds, and find
//! each other through it; silent instances read `down` after 90 seconds and
//! are removed after 10 minutes.
//!
//! The library is the whole server, so that tests and programs can run one in
//! process:
//!
//! ```no_run
//! let server = registro::Server::start(registro::Config {
//!     addr: "127.0.0.1:0".parse().unwrap(),
//!     ..Default::default()
//! })?;
//! println!("serving on {}", server.local_addr());
//! server.shutdown();
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]

mod api;
mod auth;
mod budget;
mod clock;
mod dns;
#[cfg(test)]
mod fuzz;
mod http;
mod log;
mod metrics;
mod ops;
mod persist;
pub mod registry;
#[doc(hidden)]
pub mod rng;
mod server;
mod store;
mod sweeper;
mod view;

pub use auth::TokenFiles;
pub use dns::DnsConfig;
pub use persist::DiskFaults;
pub use server::{Config, Server};
pub use store::StoreConfig;
