//! The in-process store: writes change the view in place. Time is applied by
//! the sweeper (`crate::sweeper`), this store's ticker.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use super::{Error, Registration, Settings, Store, Threads};
use crate::clock::Now;
use crate::registry::Millis;
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

impl Store for Memory {
    fn create_app(&self, view: &View, name: &str, now: Now) -> Result<(), Error> {
        let mut registry = view.lock();
        let event = registry.create_app(name, now.mono)?;
        registry.push_event(event);
        view.publish(registry, false);
        Ok(())
    }

    fn register(&self, view: &View, new: &Registration<'_>, now: Now) -> Result<(), Error> {
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
        Ok(())
    }

    fn renew(&self, view: &View, app: &str, id: &str, now: Now) -> Result<(), Error> {
        let asked = Instant::now();
        let mut registry = view.lock();
        // Its time is when the lock is had: the wait on it is added, so a
        // heartbeat that waited never moves `lastRenewal` backwards.
        let waited = Millis::try_from(asked.elapsed().as_millis()).unwrap_or(0);
        let event = registry.renew(app, id, now.mono.saturating_add(waited))?;
        view.log().metrics().heartbeat();
        match event {
            // A plain heartbeat: nothing to log, nobody to wake.
            None => drop(registry),
            Some(event) => {
                registry.push_event(event);
                view.publish(registry, false);
            }
        }
        Ok(())
    }

    fn take_out_of_service(&self, view: &View, app: &str, id: &str, now: Now) -> Result<(), Error> {
        let mut registry = view.lock();
        if let Some(event) = registry.take_out_of_service(app, id, now.mono)? {
            registry.push_event(event);
        }
        view.publish(registry, false);
        Ok(())
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
