//! Access control (API.md Part 3 "Access control"). A stub until the
//! access-control work lands: every request is allowed.

use crate::http::{Request, Response};

/// Who may do what. `Access::open()` allows everything.
#[derive(Debug, Default)]
pub struct Access {}

impl Access {
    /// No tokens configured: every request is allowed.
    pub fn open() -> Access {
        Access {}
    }

    /// `Ok` when `request` may proceed, else the 401 to answer with.
    pub fn check(&self, _request: &Request) -> Result<(), Response> {
        Ok(())
    }
}
