//! Starting servers and waiting, with deadlines, for things to happen.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use registro_client::{Client, Status};

/// A server on 127.0.0.1:0 that logs nothing.
pub fn server() -> registro::Server {
    server_on(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// A server on `addr` (e.g. the address a stopped server had).
pub fn server_on(addr: SocketAddr) -> registro::Server {
    server_with(registro::Config { addr, ..quiet() })
}

/// The configuration of [`server`]: 127.0.0.1:0, no log; to shorten periods.
pub fn quiet() -> registro::Config {
    registro::Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        log: false,
        ..Default::default()
    }
}

/// A server with this configuration.
pub fn server_with(config: registro::Config) -> registro::Server {
    let addr = config.addr;
    match registro::Server::start(config) {
        Ok(server) => server,
        Err(e) => panic!("cannot start a server on {addr}: {e}"),
    }
}

/// The root URL of a server, as a program would configure it.
pub fn root(addr: SocketAddr) -> String {
    format!("http://{addr}/registro")
}

/// A client of `server` with the default timeout.
pub fn client(server: &registro::Server) -> Client {
    Client::new(root(server.local_addr()))
}

/// Calls `probe` until it returns `Some`, for at most `limit`; the answer, or
/// a panic naming `what`. Polls every few milliseconds: it waits for an
/// event, never for a period of time.
#[track_caller]
pub fn eventually<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(answer) = probe() {
            return answer;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The status of an instance as the registry reports it now, if it has it.
pub fn status(client: &Client, app: &str, id: &str) -> Option<Status> {
    client.instance(app, id).ok().map(|i| i.status)
}

/// Waits until the registry reports `expected` for the instance.
#[track_caller]
pub fn wait_for_status(client: &Client, app: &str, id: &str, expected: Status, limit: Duration) {
    let what = format!("{app}/{id} reads {expected}");
    eventually(limit, &what, || {
        (status(client, app, id) == Some(expected)).then_some(())
    });
}

/// `registro_http_requests_total` of `route` (the template, such as
/// `/registro/1.0/apps/{app}`) and `method`, every code summed, from the
/// server's `/metrics`; 0 when it cannot be read.
pub fn requests(server: &registro::Server, route: &str, method: &str) -> u64 {
    let url = format!("http://{}/metrics", server.local_addr());
    let Ok(mut answer) = ureq::get(&url).call() else {
        return 0;
    };
    let text = answer.body_mut().read_to_string().unwrap_or_default();
    let prefix = format!("registro_http_requests_total{{route=\"{route}\",method=\"{method}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `registro_watches_waiting` from the server's `/metrics`.
pub fn watches_waiting(server: &registro::Server) -> Option<u64> {
    let url = format!("http://{}/metrics", server.local_addr());
    let text = ureq::get(&url)
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("registro_watches_waiting "))
        .and_then(|v| v.trim().parse().ok())
}
