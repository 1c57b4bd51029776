//! Access control (API.md Part 3 "Access control"). A stub until the
//! access-control work lands: every request is allowed.

use std::io;
use std::path::PathBuf;

use crate::http::{Request, Response};

/// The token files named on the command line.
#[derive(Clone, Debug, Default)]
pub struct TokenFiles {
    /// `--token-file`: tokens that may change the registry (and read it).
    pub write: Option<PathBuf>,
    /// `--read-token-file`: tokens that may only read it.
    pub read: Option<PathBuf>,
}

/// Who may do what.
#[derive(Debug, Default)]
pub struct Access {}

impl Access {
    /// Reads the token files; with none, every request is allowed.
    pub fn load(_files: &TokenFiles) -> io::Result<Access> {
        Ok(Access {})
    }

    /// Reads the files again; on failure keeps the old tokens.
    pub fn reload(&self) -> Result<(), String> {
        Ok(())
    }

    /// `Ok` when `request` may proceed, else the 401 to answer with.
    pub fn check(&self, _request: &Request) -> Result<(), Response> {
        Ok(())
    }
}
