//! DNS (`--dns-addr`): the `up` instances of an app as A, AAAA and SRV
//! records, for programs that find services by name and speak no HTTP.
//!
//! Two threads of its own, never the HTTP workers: `udp.rs` reads a
//! datagram, answers it and reads the next (blocking `std::net`); `tcp.rs`
//! serves the TCP connections (resolvers retry a truncated answer over TCP)
//! from one mio poller, a bounded table of them with deadlines. Both call
//! `answer.rs`, the responder on bytes, with [`read_up`], the one read of
//! the registry. Both run below the HTTP threads' priority (`demote`), so a
//! flood of queries takes what the HTTP side leaves of the CPU.

mod answer;
#[cfg(test)]
mod fuzz;
mod metrics;
mod tcp;
mod udp;
mod wire;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub use answer::Zone;
pub use metrics::Queries;

use crate::clock;
use crate::registry::{AppView, Millis, Registry, Status, StatusSet};
pub use crate::rng::Rng;
use crate::view::View;
use answer::{Target, Transport};

/// `--dns-addr`, `--dns-domain`, `--dns-ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where to answer, UDP and TCP on the same port; port 0 picks one.
    pub addr: SocketAddr,
    /// The zone (`registro.`).
    pub domain: String,
    /// TTL of every answer, and the negative TTL (the SOA's minimum).
    pub ttl: u32,
}

impl Default for DnsConfig {
    fn default() -> DnsConfig {
        DnsConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            domain: "registro.".to_string(),
            ttl: 0,
        }
    }
}

/// The DNS server's threads.
#[derive(Debug)]
pub struct Dns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    waker: Arc<mio::Waker>,
    threads: Vec<JoinHandle<()>>,
}

/// What both threads share.
struct Shared {
    zone: Zone,
    /// Counted here, shown in the server's metrics.
    queries: Arc<Queries>,
    view: Arc<View>,
    stop: AtomicBool,
    /// Panics caught (each one's query goes unanswered).
    panics: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("zone", &self.zone).finish()
    }
}

/// How long a blocked read waits before it looks at the stop flag (a stop
/// also wakes it at once with a datagram).
const POLL: Duration = Duration::from_millis(250);

/// The zone checked and the sockets bound: what can fail for a reason the
/// user must hear of, before anything starts.
#[derive(Debug)]
pub struct Bound {
    zone: Zone,
    udp: UdpSocket,
    tcp: std::net::TcpListener,
}

impl DnsConfig {
    /// Checks the zone and binds UDP and TCP on `addr`; errors are one line
    /// for the user (`InvalidInput`).
    pub fn bind(&self) -> io::Result<Bound> {
        let serial = u32::try_from(clock::now().wall / 1000).unwrap_or(u32::MAX);
        let zone = Zone::new(&self.domain, self.ttl, serial)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (udp, tcp) = bind(self.addr).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot serve DNS on {}: {e}", self.addr),
            )
        })?;
        Ok(Bound { zone, udp, tcp })
    }
}

impl Dns {
    /// Starts answering on the sockets of `bound`, from `view`.
    pub fn start(bound: Bound, view: &Arc<View>) -> io::Result<Dns> {
        let Bound { zone, udp, tcp } = bound;
        let addr = udp.local_addr()?;
        udp.set_read_timeout(Some(POLL))?;
        let poller = tcp::Poller::new(tcp)?;
        let waker = poller.waker();
        let queries = Arc::new(Queries::default());
        view.log().metrics().add(queries.clone());
        let shared = Arc::new(Shared {
            zone,
            queries,
            view: Arc::clone(view),
            stop: AtomicBool::new(false),
            panics: AtomicU64::new(0),
        });
        let mut dns = Dns {
            addr,
            shared: Arc::clone(&shared),
            waker,
            threads: Vec::with_capacity(2),
        };
        let udp_shared = Arc::clone(&shared);
        dns.threads.push(
            thread::Builder::new()
                .name("registro-dns-udp".into())
                .spawn(move || udp::serve(&udp, &udp_shared))?,
        );
        dns.threads.push(
            thread::Builder::new()
                .name("registro-dns-tcp".into())
                .spawn(move || poller.run(&shared))?,
        );
        view.log().line(format_args!(
            "DNS on {addr} (UDP and TCP): zone {}, TTL {}s",
            dns.shared.zone.domain(),
            dns.shared.zone.ttl
        ));
        Ok(dns)
    }

    /// The address bound (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops both threads and joins them.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        // Wakes the UDP thread out of its read (else it sees the flag
        // within `POLL`).
        let to = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, self.addr.port()))
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, self.addr.port()))
            }
            _ => self.addr,
        };
        let from: SocketAddr = match to {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        if let Ok(socket) = UdpSocket::bind(from) {
            let _ = socket.send_to(&[], to);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.halt();
    }
}

/// UDP and TCP sockets on the same address. With port 0, the port UDP got
/// is asked of TCP too (and again with another, should TCP have it taken).
/// `[::]` falls back to `0.0.0.0` where the system has no IPv6.
fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, std::net::TcpListener)> {
    let mut tries = if addr.port() == 0 { 16 } else { 1 };
    loop {
        let udp = match UdpSocket::bind(addr) {
            Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&e) => {
                return bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())));
            }
            other => other?,
        };
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries > 1 => tries -= 1,
            Err(e) => return Err(e),
        }
    }
}

/// Whether binding failed because the system has no IPv6.
fn no_ipv6(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [
        Errno::AFNOSUPPORT,
        Errno::ADDRNOTAVAIL,
        Errno::PROTONOSUPPORT,
    ]
    .iter()
    .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

impl Shared {
    /// The answer to the message `bytes` (none for what is dropped),
    /// counted; a panic is caught, counted and logged, and the query
    /// dropped.
    fn answer(&self, bytes: &[u8], transport: Transport, rng: &mut Rng) -> Option<Vec<u8>> {
        let answered = catch_unwind(AssertUnwindSafe(|| {
            answer::respond(
                &self.zone,
                bytes,
                transport,
                |app| read_up(&self.view, app, clock::now().mono).map(|view| targets(&view)),
                rng,
            )
        }));
        match answered {
            Ok(answer) => {
                self.queries.count(answer.kind, answer.rcode);
                answer.bytes
            }
            Err(_) => {
                if self.panics.fetch_add(1, Ordering::Relaxed) == 0 {
                    self.view
                        .log()
                        .line(format_args!("DNS: a query panicked; it goes unanswered"));
                }
                None
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How much lower than the HTTP threads the DNS threads run: at nice 10
/// (a weight of 110 against 1,024) a thread busy with a flood gets about a
/// tenth of a core the HTTP workers want, and all of one they leave idle.
const NICE: i32 = 10;

/// Lowers the calling thread's priority (Linux keeps a nice value per
/// thread). Best effort: where it cannot, DNS runs at the HTTP threads'.
fn demote() {
    let tid = rustix::thread::gettid();
    let _ = rustix::process::setpriority_process(Some(tid), NICE);
}

/// The one read of the registry behind every answer: what
/// `GET /apps/{app}?status=up` reads at `now` (the app settled first, so a
/// status is exact at the read, and what the read settled published).
/// `None`: no such app.
fn read_up(view: &View, app: &str, now: Millis) -> Option<AppView> {
    let mut registry = view.lock();
    let up = up_in(&mut registry, app, now);
    view.publish(registry, false);
    up
}

/// `read_up` on a registry in hand (the responder's tests use it too).
fn up_in(registry: &mut Registry, app: &str, now: Millis) -> Option<AppView> {
    let up = StatusSet::NONE.with(Status::Up);
    registry.app(app, now, up, None).ok().flatten()
}

/// The addresses and ports of a view's instances, read after the lock is
/// released. An instance registered with a host name rather than an
/// address has no record; an IPv4-mapped IPv6 address is IPv4.
fn targets(view: &AppView) -> Vec<Target> {
    view.instances
        .iter()
        .filter_map(|i| {
            let ip: IpAddr = i.ip.as_str().parse().ok()?;
            Some((ip.to_canonical(), i.port))
        })
        .collect()
}
