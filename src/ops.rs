//! The operator's routes outside `/registro`: `/healthz`, `/metrics` and the
//! dashboard at `/`. A stub until the operations work lands.

use crate::api::Api;
use crate::clock::Now;
use crate::http::{Request, Response};

/// Answers the operator's routes, or `None` for every other path (the
/// registry's API then routes it).
pub fn handle(_api: &Api, _request: &Request, _now: Now) -> Option<Response> {
    None
}
