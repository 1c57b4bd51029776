//! `registro`: flags, wiring and signals. Errors become exit codes here only.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Registro: a tiny service registry. Services register, send a heartbeat
/// every 30 s and find each other under /registro/1.0/apps.
#[derive(FromArgs, Debug)]
struct Flags {
    /// where to listen: ":PORT" (every interface), "HOST:PORT" or
    /// "[::1]:PORT" (default ":8080")
    #[argh(option, default = "String::from(\":8080\")")]
    addr: String,

    /// worker threads running the handlers; waiting connections hold none
    /// (default: the number of CPUs, at least 4)
    #[argh(option)]
    threads: Option<usize>,

    /// connections open at once; more are answered 503 (default: what the
    /// open-files limit allows, less a reserve)
    #[argh(option)]
    max_connections: Option<usize>,

    /// seconds without a heartbeat before an up instance reads down
    /// (default 90)
    #[argh(option, default = "Duration::from_secs(90)", from_str_fn(seconds))]
    down_after: Duration,

    /// seconds without a heartbeat before an instance is removed, and
    /// without instances before an application is (default 600)
    #[argh(option, default = "Duration::from_secs(600)", from_str_fn(seconds))]
    evict_after: Duration,

    /// seconds between two sweeps of expired instances (default 60)
    #[argh(option, default = "Duration::from_secs(60)", from_str_fn(seconds))]
    sweep_every: Duration,

    /// seconds an idle keep-alive connection is kept open (default 60)
    #[argh(option, default = "Duration::from_secs(60)", from_str_fn(seconds))]
    idle_timeout: Duration,

    /// seconds a request has to arrive in full once it has begun
    /// (default 10)
    #[argh(option, default = "Duration::from_secs(10)", from_str_fn(seconds))]
    request_timeout: Duration,

    /// log a summary of every sweep, not only of those that changed
    /// something or took over 100 ms (default off)
    #[argh(switch)]
    log_sweeps: bool,

    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("registro: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let flags = match Flags::from_args(&["registro"], &strs) {
        Ok(flags) => flags,
        Err(exit) if exit.status.is_ok() => {
            print!("{}", exit.output);
            return Ok(());
        }
        Err(exit) => {
            let first = exit.output.lines().next().unwrap_or("invalid arguments");
            return Err(format!("{first} (see registro --help)"));
        }
    };
    if flags.version {
        println!("registro {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let defaults = registro::Config::default();
    let config = registro::Config {
        addr: listen_addr(&flags.addr)?,
        threads: positive("--threads", flags.threads.unwrap_or(defaults.threads))?,
        max_connections: positive(
            "--max-connections",
            flags.max_connections.unwrap_or(defaults.max_connections),
        )?,
        down_after: flags.down_after,
        evict_after: flags.evict_after,
        sweep_every: flags.sweep_every,
        idle_timeout: flags.idle_timeout,
        request_timeout: flags.request_timeout,
        log: true,
        log_sweeps: flags.log_sweeps,
        tokens: registro::TokenFiles::default(),
    };
    raise_fd_limit();
    // Registered before the server starts, so no signal is missed; PID 1 in
    // a container gets no default action for SIGTERM, only this.
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("cannot handle signals: {e}"))?;
    let server = registro::Server::start(config.clone())
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let _ = signals.forever().next();
    server.shutdown();
    Ok(())
}

/// Parses `--addr`: the Go form `:PORT` means every interface.
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let bad = || format!("invalid --addr {s:?}: expected :PORT, HOST:PORT or [IPv6]:PORT");
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    if !s.contains(':') {
        return Err(bad());
    }
    // No resolver is needed for the usual name: a FROM scratch image has no
    // /etc/hosts, and a DNS lookup of "localhost" there fails after seconds.
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("invalid --addr {s:?}: {e}"))?
        .next()
        .ok_or_else(bad)
}

fn positive(flag: &str, n: usize) -> Result<usize, String> {
    if n == 0 {
        return Err(format!("{flag} must be at least 1"));
    }
    Ok(n)
}

/// A period in seconds: `90`, `0.5` (and, for convenience, `500ms`, `90s`,
/// `10m`).
fn seconds(s: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("{s:?} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Raises the soft limit on open files to the hard limit, so that the limit
/// on connections is `--max-connections`, not a default of 1024.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_addr(s: &str, expected: Result<&str, ()>) {
        let got = listen_addr(s).map(|a| a.to_string()).map_err(|_| ());
        assert_eq!(got, expected.map(String::from), "{s}");
    }

    #[test]
    fn addresses() {
        check_addr(":8080", Ok("0.0.0.0:8080"));
        check_addr(":0", Ok("0.0.0.0:0"));
        check_addr("127.0.0.1:8000", Ok("127.0.0.1:8000"));
        check_addr("[::1]:8000", Ok("[::1]:8000"));
        check_addr("localhost:8000", Ok("127.0.0.1:8000"));
        check_addr("localhost:x", Err(()));
        check_addr(":65536", Err(()));
        check_addr(":http", Err(()));
        check_addr("8080", Err(()));
        check_addr("nonsense", Err(()));
    }

    #[track_caller]
    fn check_secs(s: &str, expected: Option<f64>) {
        assert_eq!(seconds(s).ok().map(|d| d.as_secs_f64()), expected, "{s}");
    }

    #[test]
    fn periods() {
        check_secs("90", Some(90.0));
        check_secs("0.5", Some(0.5));
        check_secs("250ms", Some(0.25));
        check_secs("2s", Some(2.0));
        check_secs("10m", Some(600.0));
        check_secs("0", None);
        check_secs("-1", None);
        check_secs("NaN", None);
        check_secs("inf", None);
        check_secs("ninety", None);
        check_secs("", None);
    }
}
