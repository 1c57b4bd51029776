//! `registro`: flags, wiring and signals. Errors become exit codes here only.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use nix::sys::signal::{SigSet, Signal};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Registro: a tiny service registry. Services register, send a heartbeat
/// every 30 s and find each other under /registro/1.0/apps. Periods take a
/// unit: 500ms, 90s, 5m (or 5min), 1h; a plain number is seconds. Flags
/// also take one dash and "=", as in Go: -addr :8080, -addr=:8080.
#[derive(FromArgs, Debug)]
struct Flags {
    /// where to listen: ":PORT" (every interface, IPv6 and IPv4),
    /// "HOST:PORT" or "[::1]:PORT" (default ":8080")
    #[argh(option, default = "String::from(\":8080\")")]
    addr: String,

    /// worker threads running the handlers, 1 to 1024; waiting
    /// connections hold none (default: the number of CPUs, at least 4)
    #[argh(option, from_str_fn(count))]
    threads: Option<usize>,

    /// connections open at once; more are answered 503 (default: what the
    /// open-files limit allows, less a reserve)
    #[argh(option, from_str_fn(count))]
    max_connections: Option<usize>,

    /// time without a heartbeat before an up instance reads down; shorter
    /// than --evict-after (default 90s)
    #[argh(option, default = "Duration::from_secs(90)", from_str_fn(period))]
    down_after: Duration,

    /// time without a heartbeat before an instance is removed, and without
    /// instances before an application is (default 600s, that is 10m)
    #[argh(option, default = "Duration::from_secs(600)", from_str_fn(period))]
    evict_after: Duration,

    /// time between two full passes over the registry; changes made by time
    /// are announced to watches within a second whatever it is (default 60s)
    #[argh(option, default = "Duration::from_secs(60)", from_str_fn(period))]
    sweep_every: Duration,

    /// time an idle keep-alive connection is kept open (default 60s)
    #[argh(option, default = "Duration::from_secs(60)", from_str_fn(period))]
    idle_timeout: Duration,

    /// time a request has to arrive in full once it has begun (default 10s)
    #[argh(option, default = "Duration::from_secs(10)", from_str_fn(period))]
    request_timeout: Duration,

    /// file of tokens, one per line, that may change the registry: POST, PUT
    /// and DELETE then need "Authorization: Bearer TOKEN" (default: none,
    /// every request is allowed); SIGHUP re-reads it
    #[argh(option)]
    token_file: Option<PathBuf>,

    /// file of tokens that may only read: with it, reads need a token from
    /// either file too (default: none, reads are open); needs --token-file
    #[argh(option)]
    read_token_file: Option<PathBuf>,

    /// directory where the registry is kept across restarts (created if
    /// absent; one server at a time): a restart, or a crash but its last
    /// second, forgets nothing (default: none, the registry is in memory only)
    #[argh(option)]
    data_dir: Option<PathBuf>,

    /// with --data-dir, time between two snapshots (the log of changes
    /// compacted into one file), if anything changed (default 5m)
    #[argh(option, default = "Duration::from_secs(300)", from_str_fn(period))]
    snapshot_every: Duration,

    /// most MiB of answers written but not yet read by clients, over all
    /// connections: past it a new large answer is refused with 503; a
    /// listing many ask for at once counts once (default 256)
    #[argh(option, default = "256", from_str_fn(count))]
    output_budget: usize,

    /// log a summary of every sweep, not only of those that changed
    /// something or took over 100 ms (default off)
    #[argh(switch)]
    log_sweeps: bool,

    /// where the registry is kept: "memory" (in this process, the default)
    /// or "etcd://HOST:PORT[,HOST:PORT...]" (an etcd v3 cluster that any
    /// number of Registro servers share)
    #[argh(option, default = "String::from(\"memory\")")]
    store: String,

    /// the key prefix of the registry in etcd (default "/registro/")
    #[argh(option, default = "String::from(\"/registro/\")")]
    etcd_prefix: String,

    /// answer DNS queries (UDP and TCP) for the up instances of each app:
    /// "HOST:PORT" or ":PORT"; no tokens apply, so bind it where only
    /// trusted programs reach (default: off)
    #[argh(option)]
    dns_addr: Option<String>,

    /// the DNS zone: APP.DOMAIN answers A, AAAA and SRV (default "registro.")
    #[argh(option)]
    dns_domain: Option<String>,

    /// the TTL of DNS answers, and of NXDOMAIN and empty answers: a period,
    /// whole seconds (default 0, resolvers ask every time)
    #[argh(option, from_str_fn(ttl))]
    dns_ttl: Option<Duration>,

    /// print the version and exit (also -V)
    #[argh(switch)]
    version: bool,
}

/// The options that take a value, for `--option=value`.
const OPTIONS: &[&str] = &[
    "--addr",
    "--threads",
    "--max-connections",
    "--down-after",
    "--evict-after",
    "--sweep-every",
    "--idle-timeout",
    "--request-timeout",
    "--token-file",
    "--read-token-file",
    "--store",
    "--etcd-prefix",
    "--data-dir",
    "--snapshot-every",
    "--dns-addr",
    "--dns-domain",
    "--dns-ttl",
    "--output-budget",
];

/// The most connection threads `--threads` may keep ready.
const MAX_THREADS: usize = 1024;

fn main() -> ExitCode {
    // The very first thing: from here on SIGTERM and SIGINT stop the process
    // with status 0 (a signal that comes while the flags are read or the
    // server starts waits in the queue), and SIGHUP no longer kills it.
    // Only the moments between exec and `main` (the loader, the runtime's
    // set-up: well under a millisecond) still get the default action.
    //
    // The signals are blocked while the handlers are installed: signal-hook
    // puts its handler in place a moment before it records what to do, and
    // a signal arriving in between would be dropped (neither handled nor
    // given the default action: a SIGTERM lost, a process that never stops).
    // Blocked, such a signal waits and is handled once unblocked.
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(signal);
    }
    let blocked = mask.thread_block().is_ok();
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP]);
    if blocked {
        let _ = mask.thread_unblock();
    }
    let signals = match signals {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("registro: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("registro: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut signals: Signals) -> Result<(), String> {
    let args = normalize(std::env::args().skip(1));
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
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
    let config = config(flags)?;
    config.tokens.validate()?;
    raise_fd_limit();
    // A stop asked for while starting: nothing to serve, nothing to stop.
    if signals.pending().any(|s| s != SIGHUP) {
        return Ok(());
    }
    let server = start(config)?;
    for signal in signals.forever() {
        if signal == SIGHUP {
            // Access::reload logs the outcome, and why on failure.
            let _ = server.reload_tokens();
        } else {
            break;
        }
    }
    server.shutdown();
    Ok(())
}

/// The command line as argh takes it. Go's `flag` package, which the
/// original server used, takes `-addr :8080`, `-addr=:8080` and `--addr`
/// alike, so a single dash before a flag's name is read as two; so is
/// `--option=value` as two arguments (for the options that take a value),
/// `-h` as `--help` and `-V` as `--version`. The argument after an option
/// is its value and is passed on as it is, whatever it looks like.
fn normalize(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut value_next = false;
    for arg in args {
        if std::mem::take(&mut value_next) {
            out.push(arg);
            continue;
        }
        let arg = match arg.as_str() {
            "-h" => "--help".to_string(),
            "-V" => "--version".to_string(),
            // `-name`: a flag's name (letters, digits and dashes, a letter
            // first); `-1` or `-` stay as they are.
            _ if arg.len() > 2
                && arg.starts_with('-')
                && arg.as_bytes()[1].is_ascii_alphabetic() =>
            {
                format!("-{arg}")
            }
            _ => arg,
        };
        match arg.split_once('=') {
            Some((name, value)) if OPTIONS.contains(&name) => {
                out.push(name.to_string());
                out.push(value.to_string());
            }
            _ => {
                value_next = OPTIONS.contains(&arg.as_str());
                out.push(arg);
            }
        }
    }
    out
}

/// The server's settings from the flags, each checked.
fn config(flags: Flags) -> Result<registro::Config, String> {
    let defaults = registro::Config::default();
    let threads = flags.threads.unwrap_or(defaults.threads.min(MAX_THREADS));
    if !(1..=MAX_THREADS).contains(&threads) {
        return Err(format!(
            "--threads must be between 1 and {MAX_THREADS} (got {threads})"
        ));
    }
    if flags.down_after >= flags.evict_after {
        return Err(format!(
            "--down-after ({}) must be shorter than --evict-after ({}): an instance is removed before it could read down",
            show(flags.down_after),
            show(flags.evict_after)
        ));
    }
    if flags.read_token_file.is_some() && flags.token_file.is_none() {
        return Err(
            "--read-token-file needs --token-file too (else anyone could change what only token holders may read)"
                .to_string(),
        );
    }
    let store = store(&flags.store, &flags.etcd_prefix)?;
    if store != registro::StoreConfig::Memory && flags.data_dir.is_some() {
        return Err(
            "--data-dir is for --store memory: with --store etcd the registry is kept in etcd"
                .to_string(),
        );
    }
    let dns = match &flags.dns_addr {
        None if flags.dns_domain.is_some() || flags.dns_ttl.is_some() => {
            return Err(
                "--dns-domain and --dns-ttl need --dns-addr (without it DNS is off)".to_string(),
            )
        }
        None => None,
        Some(addr) => {
            let defaults = registro::DnsConfig::default();
            Some(registro::DnsConfig {
                addr: listen_addr(addr).map_err(|e| e.replace("--addr", "--dns-addr"))?,
                domain: flags.dns_domain.clone().unwrap_or(defaults.domain),
                ttl: flags.dns_ttl.map_or(defaults.ttl, |t| {
                    u32::try_from(t.as_secs()).unwrap_or(u32::MAX)
                }),
            })
        }
    };
    Ok(registro::Config {
        dns,
        store,
        addr: listen_addr(&flags.addr)?,
        threads,
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
        tokens: registro::TokenFiles {
            write: flags.token_file,
            read: flags.read_token_file,
        },
        data_dir: flags.data_dir,
        snapshot_every: flags.snapshot_every,
        disk_faults: None,
        output_budget: positive("--output-budget", flags.output_budget)?.saturating_mul(1 << 20),
    })
}

/// Parses `--store` (and `--etcd-prefix`, for etcd).
fn store(store: &str, prefix: &str) -> Result<registro::StoreConfig, String> {
    if store == "memory" {
        return Ok(registro::StoreConfig::Memory);
    }
    let bad = |why: &str| {
        format!(
            "invalid --store {store:?}: {why}; expected memory or etcd://HOST:PORT[,HOST:PORT...]"
        )
    };
    let Some(list) = store.strip_prefix("etcd://") else {
        return Err(bad("unknown store"));
    };
    let mut members = Vec::new();
    for member in list.split(',') {
        let member = member.trim_end_matches('/');
        let port = member
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(port))) if !host.is_empty() && port > 0 && !host.contains('/') => {
                members.push(member.to_string())
            }
            _ => return Err(bad(&format!("{member:?} is not HOST:PORT"))),
        }
    }
    if prefix.is_empty() || !prefix.is_ascii() {
        return Err(format!(
            "invalid --etcd-prefix {prefix:?}: expected a non-empty ASCII key prefix such as /registro/"
        ));
    }
    Ok(registro::StoreConfig::Etcd {
        members,
        prefix: prefix.to_string(),
    })
}

/// Starts the server. `[::]:PORT` (from `:PORT`) takes IPv4 too where
/// IPv6 sockets accept it (Linux's default); where the system has no IPv6
/// at all, `0.0.0.0:PORT` is bound instead.
fn start(config: registro::Config) -> Result<registro::Server, String> {
    let cannot = |addr: SocketAddr, e: std::io::Error| format!("cannot listen on {addr}: {e}");
    match registro::Server::start(config.clone()) {
        Ok(server) => Ok(server),
        Err(e) if config.addr.ip() == Ipv6Addr::UNSPECIFIED && no_ipv6(&e) => {
            let v4 = registro::Config {
                addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.addr.port())),
                ..config
            };
            registro::Server::start(v4.clone()).map_err(|e| cannot(v4.addr, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(e.to_string()),
        Err(e) => Err(cannot(config.addr, e)),
    }
}

/// Whether binding failed because the system has no IPv6.
fn no_ipv6(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    [
        Errno::AFNOSUPPORT,
        Errno::ADDRNOTAVAIL,
        Errno::PROTONOSUPPORT,
    ]
    .iter()
    .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

/// Parses `--addr`: the Go form `:PORT` means every interface (IPv6 and
/// IPv4: see `start`).
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    // A port alone, as `--addr 8080`: what was meant is most likely `:8080`.
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid --addr {s:?}: a port is written with a colon before it, as --addr :{s} (every interface) or --addr 127.0.0.1:{s}"
        ));
    }
    let bad = || format!("invalid --addr {s:?}: expected :PORT, HOST:PORT or [IPv6]:PORT");
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
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

/// A count (`--threads`, `--max-connections`): digits only, in words when
/// not, rather than in the terms of Rust's integer parser.
fn count(s: &str) -> Result<usize, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a whole number such as 8".to_string());
    }
    s.parse()
        .map_err(|_| format!("expected a whole number no larger than {}", usize::MAX))
}

fn positive(flag: &str, n: usize) -> Result<usize, String> {
    if n == 0 {
        return Err(format!("{flag} must be at least 1"));
    }
    Ok(n)
}

/// The accepted forms of a period, for error messages.
const PERIOD_FORMS: &str =
    "expected a period such as 90 (seconds), 0.5, 500ms, 90s, 5m, 5min or 1h";

/// A period: `90` or `0.5` (seconds), `500ms`, `90s`, `5m` or `5min`, `1h`.
fn period(s: &str) -> Result<Duration, String> {
    let units = [
        ("ms", 0.001),
        ("min", 60.0),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    let (number, scale) = units
        .iter()
        .find_map(|&(unit, scale)| s.strip_suffix(unit).map(|n| (n, scale)))
        .unwrap_or((s, 1.0));
    let bad = || PERIOD_FORMS.to_string();
    // Digits and one dot only: no sign, no exponent, no "inf" or "NaN".
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let secs = value * scale;
    if !secs.is_finite() || !(0.001..=1e9).contains(&secs) {
        return Err(format!(
            "a period must be between 1ms and 1000000000s ({PERIOD_FORMS})"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--dns-ttl`: a period of whole seconds, 0 too (a TTL is a number of
/// seconds in DNS; 0 tells resolvers not to keep the answer).
fn ttl(s: &str) -> Result<Duration, String> {
    if s == "0" || s == "0s" {
        return Ok(Duration::ZERO);
    }
    let d = period(s)?;
    if d.subsec_nanos() != 0 || d.as_secs() > u64::from(i32::MAX as u32) {
        return Err(format!(
            "a TTL is whole seconds, 0 to {} (such as 0, 5 or 1m)",
            i32::MAX
        ));
    }
    Ok(d)
}

/// A period as `--help` writes it: `90s`, `0.5s`.
fn show(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
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
        check_addr(":8080", Ok("[::]:8080"));
        check_addr(":0", Ok("[::]:0"));
        check_addr("0.0.0.0:8080", Ok("0.0.0.0:8080"));
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
    fn check_period(s: &str, expected: Option<f64>) {
        let got = period(s);
        if let Err(e) = &got {
            assert!(e.contains("5min") && e.contains("1h"), "{s}: {e}");
        }
        assert_eq!(got.ok().map(|d| d.as_secs_f64()), expected, "{s}");
    }

    #[test]
    fn periods() {
        check_period("90", Some(90.0));
        check_period("0.5", Some(0.5));
        check_period("250ms", Some(0.25));
        check_period("500ms", Some(0.5));
        check_period("2s", Some(2.0));
        check_period("90s", Some(90.0));
        check_period("10m", Some(600.0));
        check_period("5min", Some(300.0));
        check_period("1h", Some(3600.0));
        check_period("1.5h", Some(5400.0));
        check_period("0", None);
        check_period("0ms", None);
        check_period("-1", None);
        check_period("+1", None);
        check_period("1e3", None);
        check_period("NaN", None);
        check_period("inf", None);
        check_period("ninety", None);
        check_period("1d", None);
        check_period("5 min", None);
        check_period("ms", None);
        check_period("", None);
        check_period("1000000001", None);
    }

    #[track_caller]
    fn check_normalize(args: &[&str], expected: &[&str]) {
        let got = normalize(args.iter().map(|s| s.to_string()));
        assert_eq!(got, expected, "{args:?}");
    }

    #[test]
    fn option_equals_value_and_short_flags() {
        check_normalize(&["--addr=:8001"], &["--addr", ":8001"]);
        check_normalize(&["--token-file=/a=b"], &["--token-file", "/a=b"]);
        check_normalize(&["--addr="], &["--addr", ""]);
        check_normalize(&["--addr", "x=y"], &["--addr", "x=y"]);
        check_normalize(&["--log-sweeps=1"], &["--log-sweeps=1"]);
        check_normalize(&["--bogus=1"], &["--bogus=1"]);
        check_normalize(&["-h"], &["--help"]);
        check_normalize(&["-V"], &["--version"]);
    }

    #[test]
    fn the_go_command_line_single_dash_flags() {
        // As Go's flag package takes them: -addr :8080, -addr=:8080, --addr.
        check_normalize(&["-addr", ":8080"], &["--addr", ":8080"]);
        check_normalize(&["-addr=:8080"], &["--addr", ":8080"]);
        check_normalize(&["--addr", ":8080"], &["--addr", ":8080"]);
        check_normalize(
            &["-down-after", "5", "-evict-after=20", "-log-sweeps"],
            &["--down-after", "5", "--evict-after", "20", "--log-sweeps"],
        );
        check_normalize(&["-token-file", "t"], &["--token-file", "t"]);
        check_normalize(&["-help"], &["--help"]);
        check_normalize(&["-version"], &["--version"]);
        // A value is never read as a flag, whatever it looks like.
        check_normalize(&["--token-file", "-addr"], &["--token-file", "-addr"]);
        check_normalize(&["-token-file", "-h"], &["--token-file", "-h"]);
        check_normalize(&["-threads", "-1"], &["--threads", "-1"]);
        check_normalize(&["--addr", "--threads=2"], &["--addr", "--threads=2"]);
        // Not names: left for argh to refuse.
        check_normalize(&["-1"], &["-1"]);
        check_normalize(&["-"], &["-"]);
        check_normalize(&["-x"], &["-x"]);
        check_normalize(&["-bogus"], &["--bogus"]);
    }
}
