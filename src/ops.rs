//! The operator's routes outside `/registro`: `/healthz`, `/metrics` (the
//! Prometheus exposition of [`crate::metrics`]), the dashboard at `/`
//! (`dashboard.html`, compiled into the binary) and `/favicon.ico` (204: the
//! page carries its icon inline, and a browser that asks anyway gets no 404).

use crate::http::{Request, Response};
use crate::metrics::Counts;
use crate::store::Store;
use crate::view::View;

/// The dashboard: one page, its CSS and JavaScript inline.
const DASHBOARD: &str = include_str!("dashboard.html");

const ALLOW: &str = "GET, HEAD";

/// Answers the operator's routes, or `None` for every other path (the
/// registry's API then routes it).
pub fn handle(view: &View, store: &dyn Store, request: &Request) -> Option<Response> {
    let path = request.target.split('?').next().unwrap_or("");
    let route = match path {
        "/" | "/healthz" | "/metrics" | "/favicon.ico" => path,
        _ => return None,
    };
    if request.method != "GET" && request.method != "HEAD" {
        let mut response = Response::error(
            405,
            format!(
                "method {} is not allowed here; allowed: {ALLOW}",
                request.method
            ),
        );
        response.allow = Some(ALLOW);
        return Some(response);
    }
    Some(match route {
        "/healthz" => match store.health() {
            Ok(()) => Response::json(200, b"{\"status\":\"ok\"}\n".to_vec()),
            Err(status) => {
                Response::json(503, format!("{{\"status\":\"{status}\"}}\n").into_bytes())
            }
        },
        "/favicon.ico" => Response::empty(204),
        "/metrics" => {
            let mut text = view.log().metrics().render(&counts(view));
            store.render_metrics(&mut text);
            text_response(
                text.into_bytes(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        _ => text_response(DASHBOARD.as_bytes().to_vec(), "text/html; charset=utf-8"),
    })
}

fn text_response(body: Vec<u8>, content_type: &'static str) -> Response {
    let mut response = Response::json(200, body);
    response.content_type = content_type;
    response
}

/// The registry's gauges, kept exact as it changes (read in O(1)).
fn counts(view: &View) -> Counts {
    let c = view.counts();
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    Counts {
        apps: n(c.apps),
        starting: n(c.starting),
        up: n(c.up),
        down: n(c.down),
        out_of_service: n(c.out_of_service),
    }
}
