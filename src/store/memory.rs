//! The in-process store: writes change the view in place. Time is applied by
//! the sweeper (`crate::sweeper`), this store's ticker.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use super::{Error, Registration, Store, Threads};
use crate::api::Api;
use crate::clock::Now;
use crate::registry::Millis;
use crate::sweeper::Sweeper;
use crate::Config;

/// The registry kept in the process only (`--store memory`, the default).
#[derive(Debug, Default)]
pub struct Memory;

impl Store for Memory {
    fn create_app(&self, api: &Api, name: &str, now: Now) -> Result<(), Error> {
        let mut registry = api.lock();
        let event = registry.create_app(name, now.mono)?;
        registry.push_event(event);
        api.publish(registry, false);
        Ok(())
    }

    fn register(&self, api: &Api, new: &Registration<'_>, now: Now) -> Result<(), Error> {
        let mut registry = api.lock();
        let event = registry.register(
            new.app,
            new.id,
            new.ip,
            new.port,
            new.metadata.clone(),
            now.mono,
        )?;
        registry.push_event(event);
        api.publish(registry, false);
        Ok(())
    }

    fn renew(&self, api: &Api, app: &str, id: &str, now: Now) -> Result<(), Error> {
        let asked = Instant::now();
        let mut registry = api.lock();
        // Its time is when the lock is had: the wait on it is added, so a
        // heartbeat that waited never moves `lastRenewal` backwards.
        let waited = Millis::try_from(asked.elapsed().as_millis()).unwrap_or(0);
        let event = registry.renew(app, id, now.mono.saturating_add(waited))?;
        api.log().metrics().heartbeat();
        match event {
            // A plain heartbeat: nothing to log, nobody to wake.
            None => drop(registry),
            Some(event) => {
                registry.push_event(event);
                api.publish(registry, false);
            }
        }
        Ok(())
    }

    fn take_out_of_service(&self, api: &Api, app: &str, id: &str, now: Now) -> Result<(), Error> {
        let mut registry = api.lock();
        if let Some(event) = registry.take_out_of_service(app, id, now.mono)? {
            registry.push_event(event);
        }
        api.publish(registry, false);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn spawn(&self, api: &Arc<Api>, config: &Config) -> io::Result<Threads> {
        Sweeper::spawn(Arc::clone(api), config.sweep_every, config.log_sweeps).map(Threads::Memory)
    }
}
