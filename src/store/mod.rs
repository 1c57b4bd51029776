//! The seam between the API and where the registry is kept.
//!
//! The API reads a local view ([`View`]: a `Registry` behind a `Mutex`) and
//! sends every write (create an app, register, renew, take out of service)
//! to a [`Store`], which changes that view itself or has it changed:
//! [`memory::Memory`] changes the view in place (the registry lives in the
//! process, the sweeper is its ticker); [`etcd::Etcd`] commits the change in
//! an etcd cluster and answers once the view, fed by an etcd watch, has
//! applied it. Every change of the view goes through [`View::publish`]. A
//! store knows the view, never the API above it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Now;
use crate::log::Log;
use crate::registry::{self, Metadata, Millis, Periods, Registry};
use crate::sweeper::Sweeper;
use crate::view::View;

/// Where the registry is kept (`--store`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process (`--store memory`, the default).
    #[default]
    Memory,
    /// In an etcd v3 cluster (`--store etcd://HOST:PORT[,...]`).
    Etcd {
        /// `HOST:PORT` of each member.
        members: Vec<String>,
        /// The key prefix (`--etcd-prefix`).
        prefix: String,
    },
}

/// What a store is opened with, besides where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The registry's periods.
    pub periods: Periods,
    /// The server's worker threads.
    pub threads: usize,
    /// The memory store's full sweep (`--sweep-every`).
    pub sweep_every: Duration,
    /// Whether every full sweep is logged (`--log-sweeps`).
    pub log_sweeps: bool,
}

/// The store `config` names and the view it keeps: for etcd, connected, the
/// periods checked and the registry read (an error here is one line for the
/// user: `InvalidInput`).
pub fn open(
    config: &StoreConfig,
    settings: Settings,
    log: Log,
) -> io::Result<(View, Box<dyn Store>)> {
    match config {
        StoreConfig::Memory => {
            let view = View::new(Registry::new(settings.periods), log);
            Ok((view, Box::new(memory::Memory::new(settings))))
        }
        StoreConfig::Etcd { members, prefix } => {
            let etcd = etcd::Settings {
                members: members.clone(),
                prefix: prefix.clone(),
                periods: settings.periods,
                threads: settings.threads,
            };
            let (store, registry) = etcd::Etcd::open(etcd, log.clone())?;
            Ok((View::new(registry, log), Box::new(store)))
        }
    }
}

/// A store's threads, stopped and joined by `stop` (or on drop).
#[derive(Debug)]
pub enum Threads {
    /// The sweeper, the memory store's ticker.
    Memory(Sweeper),
    /// etcd's watch, keeper and evictor.
    Etcd(etcd::Threads),
}

impl Threads {
    /// Stops the threads and waits for them.
    pub fn stop(self) {
        match self {
            Threads::Memory(sweeper) => sweeper.stop(),
            Threads::Etcd(threads) => threads.stop(),
        }
    }
}

pub mod etcd;
pub mod memory;

/// A registration, validated by the API.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    /// The application.
    pub app: &'a str,
    /// The instance id.
    pub id: &'a str,
    /// Its address.
    pub ip: &'a str,
    /// Its port (1 to 65535).
    pub port: u16,
    /// Its metadata, `None` when empty.
    pub metadata: Option<Arc<Metadata>>,
}

/// Why a store did not make a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The registry refused it (a 4xx).
    Refused(registry::Error),
    /// The store cannot be reached, has no quorum or is saturated: a 503
    /// with this message; the change may be retried.
    Unavailable(String),
}

impl From<registry::Error> for Error {
    fn from(e: registry::Error) -> Error {
        Error::Refused(e)
    }
}

/// What a change answers: how far the store got, or why it refused.
pub type Answer = Result<Progress, Error>;

/// How far a store got with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Done: the change is in the local view.
    Done,
    /// Waiting on the store (etcd): the request waits, holding no worker,
    /// until the store wakes [`crate::view::Topic::Change`] of this ticket;
    /// then [`Store::finish`] has its answer.
    Waiting(u64),
}

/// Where writes go. Each method returns once the change is in the local
/// view (`view`), so a read that follows on the same server sees it, or
/// with the ticket of a change the store is still making.
pub trait Store: Send + Sync {
    /// Creates an application.
    fn create_app(&self, view: &View, name: &str, now: Now) -> Answer;
    /// Registers an instance (API.md Part 2's rules).
    fn register(&self, view: &View, new: &Registration<'_>, now: Now) -> Answer;
    /// A heartbeat.
    fn renew(&self, view: &View, app: &str, id: &str, now: Now) -> Answer;
    /// Takes an instance out of service.
    fn take_out_of_service(&self, view: &View, app: &str, id: &str, now: Now) -> Answer;
    /// The answer to the change of `ticket` (see [`Progress::Waiting`]),
    /// once there is one; taken once.
    fn finish(&self, _ticket: u64) -> Option<Result<(), Error>> {
        None
    }
    /// `Err(status)` while the store cannot serve as it should:
    /// `/healthz` answers 503 with that status (`store unreachable`, `view
    /// behind`).
    fn health(&self) -> Result<(), &'static str> {
        Ok(())
    }
    /// Milliseconds since the view last heard from where the registry is
    /// kept (`Registro-Last-Contact`); `None` when the view is the registry.
    fn last_contact(&self) -> Option<Millis> {
        None
    }
    /// Before a read answers 404: waits (bounded) until the view has every
    /// change the store had committed, so that a change made through another
    /// server is seen; false when there was nothing to wait for or it could
    /// not be known (then the view answers as it is).
    fn catch_up(&self) -> bool {
        false
    }
    /// Appends the store's own metric families to a `/metrics` page.
    fn render_metrics(&self, _out: &mut String) {}
    /// What the start-up line calls it.
    fn describe(&self) -> String;
    /// Starts the store's threads.
    fn spawn(&self, view: &Arc<View>) -> io::Result<Threads>;
}
