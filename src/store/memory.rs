//! The in-process store: writes change the view in place. Time is applied by
//! the sweeper (`crate::sweeper`), this store's ticker.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use super::{Answer, Error, Progress, Registration, Settings, Store, Threads};
use crate::clock::Now;
use crate::registry::{Millis, Status};
use crate::sweeper::Sweeper;
use crate::view::View;

/// The registry kept in the process only (`--store memory`, the default).
#[derive(Debug)]
pub struct Memory {
    settings: Settings,
}

impl Memory {
    /// The store of a server with these settings (its sweeper's).
    pub fn new(settings: Settings) -> Memory {
        Memory { settings }
    }
}

/// Refuses a change while `--data-dir` cannot save (a full disk, an I/O
/// error): one answered 2xx has waited more than a second for the disk
/// (API.md Part 4). Reads and heartbeats that change no status go on.
fn saving(view: &View, now: Now) -> Result<(), Error> {
    if view.log().metrics().saves.saving(now.mono) {
        return Ok(());
    }
    Err(Error::Unavailable(
        "the data directory is not saving (a full disk or an I/O error): changes are refused \
         until it saves again; reads and heartbeats go on"
            .to_string(),
    ))
}

impl Store for Memory {
    fn create_app(&self, view: &View, name: &str, now: Now) -> Answer {
        saving(view, now)?;
        let mut registry = view.lock();
        let event = registry.create_app(name, now.mono)?;
        registry.push_event(event);
        view.publish(registry, false);
        Ok(Progress::Done)
    }

    fn register(&self, view: &View, new: &Registration<'_>, now: Now) -> Answer {
        saving(view, now)?;
        let mut registry = view.lock();
        let event = registry.register(
            new.app,
            new.id,
            new.ip,
            new.port,
            new.metadata.clone(),
            now.mono,
        )?;
        registry.push_event(event);
        view.publish(registry, false);
        Ok(Progress::Done)
    }

    fn renew(&self, view: &View, app: &str, id: &str, now: Now) -> Answer {
        let asked = Instant::now();
        let mut registry = view.lock();
        // Its time is when the lock is had: the wait on it is added, so a
        // heartbeat that waited never moves `lastRenewal` backwards.
        let waited = Millis::try_from(asked.elapsed().as_millis()).unwrap_or(0);
        let now_locked = now.mono.saturating_add(waited);
        if let Err(refused) = saving(view, now) {
            // Only a heartbeat that would change a status is a change.
            let status = registry.instance(app, id, now_locked).map(|i| i.status);
            if matches!(status, Ok(Status::Starting | Status::Down)) {
                return Err(refused);
            }
        }
        let event = registry.renew(app, id, now_locked)?;
        view.log().metrics().heartbeat();
        match event {
            // A plain heartbeat: nothing to log, nobody to wake.
            None => drop(registry),
            Some(event) => {
                registry.push_event(event);
                view.publish(registry, false);
            }
        }
        Ok(Progress::Done)
    }

    fn take_out_of_service(&self, view: &View, app: &str, id: &str, now: Now) -> Answer {
        saving(view, now)?;
        let mut registry = view.lock();
        if let Some(event) = registry.take_out_of_service(app, id, now.mono)? {
            registry.push_event(event);
        }
        view.publish(registry, false);
        Ok(Progress::Done)
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn spawn(&self, view: &Arc<View>) -> io::Result<Threads> {
        let Settings {
            sweep_every,
            log_sweeps,
            ..
        } = self.settings;
        Sweeper::spawn(Arc::clone(view), sweep_every, log_sweeps).map(Threads::Memory)
    }
}
