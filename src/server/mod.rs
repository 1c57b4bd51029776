//! The sockets and threads around the registry. One poller thread owns the
//! readiness poller (mio: epoll/kqueue, edge-triggered), the listening socket,
//! the table of connections and their timers; a fixed pool of worker threads
//! runs the handlers synchronously. A connection that waits (idle keep-alive,
//! a request still arriving, an answer a slow reader has not taken yet, a
//! parked watch) is a table entry, not a thread: the poller hands it to a
//! worker when its socket is ready, its timer is due or its watch is woken.
mod conn;
mod open;
mod pace;
mod poller;
mod queue;
mod timers;
mod watches;
mod worker;

use poller::{Poller, LISTENER, WAKER};
use queue::Queue;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use timers::Timers;
use watches::Watches;
use worker::Worker;

use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};

use crate::api::Api;
use crate::auth::{Access, TokenFiles};
use crate::budget::OutputBudget;
use crate::clock;
use crate::log::{self, Logger};
use crate::registry::{Millis, Periods};
use crate::view::Topic;

/// How the server runs. `Default` gives the production settings on `0.0.0.0:8080`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (see [`Server::local_addr`]).
    pub addr: SocketAddr,
    /// Worker threads running the handlers. Waiting connections hold none.
    pub threads: usize,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// An `up` instance silent for longer than this reads `down`.
    pub down_after: Duration,
    /// An instance silent for longer than this is removed, and so is an
    /// application without instances for this long.
    pub evict_after: Duration,
    /// How often the sweeper reclaims what has expired.
    pub sweep_every: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
    /// A request must arrive in full within this, once its first byte has;
    /// an answer must be taken by the client within this too.
    pub request_timeout: Duration,
    /// One line per event on stderr.
    pub log: bool,
    /// A summary line for every sweep, not only for those that changed
    /// something or took over 100 ms.
    pub log_sweeps: bool,
    /// Where the access tokens are read from (none: every request is allowed).
    pub tokens: TokenFiles,
    /// Where the registry is kept (`--store`, `--etcd-prefix`).
    pub store: crate::store::StoreConfig,
    /// Where the registry is kept across restarts (none: in memory only;
    /// only with the memory store).
    pub data_dir: Option<std::path::PathBuf>,
    /// How often the data directory's log is compacted into a snapshot.
    pub snapshot_every: Duration,
    /// Makes the data directory's writes fail on demand, as a full or
    /// failing disk would: for tests (none in production).
    pub disk_faults: Option<crate::persist::DiskFaults>,
    /// Bytes of answers owed to clients (written, not yet read) over all
    /// connections; past it a new large answer is refused with 503.
    pub output_budget: usize,
    /// DNS (`--dns-addr`): none, off.
    pub dns: Option<crate::dns::DnsConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            threads: thread::available_parallelism().map_or(4, |n| n.get().max(4)),
            max_connections: default_max_connections(),
            down_after: Duration::from_secs(90),
            evict_after: Duration::from_secs(600),
            sweep_every: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            log: true,
            log_sweeps: false,
            tokens: TokenFiles::default(),
            store: crate::store::StoreConfig::default(),
            data_dir: None,
            snapshot_every: Duration::from_secs(300),
            disk_faults: None,
            output_budget: crate::budget::DEFAULT,
            dns: None,
        }
    }
}

/// Descriptors kept free for everything but connections: the listener, the
/// poller, stdio, token files, a refused connection's 503.
const FD_RESERVE: u64 = 64;
/// Connections the kernel completes and holds for `accept` at most.
const LISTEN_BACKLOG: i32 = 4096;

/// What the descriptor limit allows once the soft limit is raised to the
/// hard one (as `registro` does at start), less a reserve.
pub fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let fds = limit.maximum.or(limit.current).unwrap_or(1 << 20);
    usize::try_from(fds.saturating_sub(FD_RESERVE).clamp(16, 1 << 20)).unwrap_or(1 << 20)
}

/// A running server. Dropping it shuts it down, as [`Server::shutdown`] does.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    poller: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    store: Option<crate::store::Threads>,
    logger: Option<Logger>,
    data_dir: Option<crate::persist::DataDir>,
    /// Boxed: a `Server` stays small to move around.
    dns: Option<Box<crate::dns::Dns>>,
}

/// How long a stop waits for requests in flight (and requests still
/// arriving) before it cuts every connection.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// Stack of a worker thread: parsing and JSON need little.
const STACK: usize = 256 * 1024;
const NEVER: Millis = Millis::MAX;

#[derive(Debug)]
struct Shared {
    api: Arc<Api>,
    config: Config,
    waker: Waker,
    /// The poller's registry, for a worker to quiet a trickling socket.
    registry: mio::Registry,
    /// Stop accepting; answer what is read with `Connection: close`.
    stopping: AtomicBool,
    /// The grace period is over: cut every connection.
    cut: AtomicBool,
    /// Workers end once the queue is empty.
    exit: AtomicBool,
    queue: Mutex<Queue>,
    work: Condvar,
    /// Connections accepted and not yet closed.
    open: AtomicUsize,
    /// Signalled when a connection closes during a stop.
    closed: Condvar,
    closed_lock: Mutex<()>,
    timers: Mutex<Timers>,
    watches: Mutex<Watches>,
    /// Topics notified by the API, for the poller to wake.
    notified: Mutex<Vec<Topic>>,
    /// Bumped by every notification, so a request parked just after one is
    /// not left waiting for the next.
    epoch: AtomicU64,
    /// Table slots whose connection has closed, for the poller to free.
    freed: Mutex<Vec<usize>>,
    /// Bytes owed to clients over all connections (`--output-budget`),
    /// shared with the API, which reserves large answers in it.
    budget: Arc<OutputBudget>,
}

impl Server {
    /// Binds `config.addr` and starts serving at once.
    pub fn start(config: Config) -> io::Result<Server> {
        let std_listener = std::net::TcpListener::bind(config.addr)?;
        // std listens with a backlog of 128: a burst of connects beyond it
        // while the poller is busy has SYNs dropped, and each such client
        // waits a second for its SYN to be sent again. Linux caps this at
        // `net.core.somaxconn` (4096 by default).
        rustix::net::listen(&std_listener, LISTEN_BACKLOG)?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let mut listener = TcpListener::from_std(std_listener);
        // Bound before anything starts, so a bad zone or a port in use is
        // one line and no log of a start.
        let dns = match &config.dns {
            Some(dns) => Some(dns.bind()?),
            None => None,
        };
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let periods = Periods {
            down_after: millis(config.down_after),
            evict_after: millis(config.evict_after),
        };
        let logger = Logger::start(config.log)?;
        let log = logger.log();
        let access = Access::load(&config.tokens)?;
        let settings = crate::store::Settings {
            periods,
            threads: config.threads,
            sweep_every: config.sweep_every,
            log_sweeps: config.log_sweeps,
        };
        let (view, store) = crate::store::open(&config.store, settings, logger.log())?;
        let view = Arc::new(view);
        let data_dir = match &config.store {
            crate::store::StoreConfig::Memory => {
                // An index never reused (API.md Part 4): above any a previous
                // server gave. (On etcd the index is etcd's revision.)
                view.lock().raise_index(clock::index_floor());
                match &config.data_dir {
                    Some(dir) => Some(crate::persist::DataDir::open(
                        dir,
                        config.snapshot_every,
                        config.disk_faults.clone(),
                        &view,
                    )?),
                    None => None,
                }
            }
            crate::store::StoreConfig::Etcd { .. } if config.data_dir.is_some() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "--data-dir is for the memory store: etcd keeps the registry itself",
                ));
            }
            crate::store::StoreConfig::Etcd { .. } => None,
        };
        let store_name = store.describe();
        // Joined on drop if the start fails below.
        let store_threads = store.spawn(&view)?;
        let api = Arc::new(Api::new(Arc::clone(&view), store, access));
        let threads = config.threads.max(1);
        let shared = Arc::new(Shared {
            api: Arc::clone(&api),
            config: config.clone(),
            waker,
            registry: poll.registry().try_clone()?,
            stopping: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            exit: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            open: AtomicUsize::new(0),
            closed: Condvar::new(),
            closed_lock: Mutex::new(()),
            timers: Mutex::new(Timers::default()),
            watches: Mutex::new(Watches::new(Arc::clone(api.log().metrics()))),
            notified: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            freed: Mutex::new(Vec::new()),
            budget: Arc::clone(view.answers().budget()),
        });
        shared.budget.set_limit(config.output_budget);
        {
            let weak = Arc::downgrade(&shared);
            view.set_notify(Box::new(move |topics: &[Topic]| {
                if let Some(shared) = weak.upgrade() {
                    shared.epoch.fetch_add(1, Ordering::SeqCst);
                    lock(&shared.notified).extend_from_slice(topics);
                    let _ = shared.waker.wake();
                }
            }));
        }
        let mut server = Server {
            local_addr,
            shared: Arc::clone(&shared),
            poller: None,
            workers: Vec::with_capacity(threads),
            store: None,
            logger: None,
            data_dir,
            dns: None,
        };
        for _ in 0..threads {
            let shared = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name("registro-work".into())
                .stack_size(STACK)
                .spawn(move || Worker::new(&shared).run());
            match handle {
                Ok(h) => server.workers.push(h),
                Err(e) => {
                    server.logger = Some(logger);
                    return Err(e); // `server` is dropped: the started ones are joined
                }
            }
        }
        let poller = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("registro-poll".into())
                .spawn(move || Poller::new(shared, poll, listener).run())
        };
        match poller {
            Ok(p) => server.poller = Some(p),
            Err(e) => {
                server.logger = Some(logger);
                return Err(e);
            }
        }
        server.store = Some(store_threads);
        if let Some(dns) = dns {
            match crate::dns::Dns::start(dns, &view) {
                Ok(dns) => server.dns = Some(Box::new(dns)),
                Err(e) => {
                    server.logger = Some(logger);
                    return Err(e);
                }
            }
        }
        log.line(format_args!(
            "registro {}: {threads} worker threads, at most {} connections, idle timeout {}, \
             request timeout {}, down after {}, evict after {}, sweep every {}, store {}; {}; listening on {local_addr}",
            env!("CARGO_PKG_VERSION"),
            config.max_connections,
            secs(config.idle_timeout),
            secs(config.request_timeout),
            secs(config.down_after),
            secs(config.evict_after),
            secs(config.sweep_every),
            store_name,
            config.tokens.describe(),
        ));
        server.logger = Some(logger);
        Ok(server)
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address DNS answers on (UDP and TCP), if it is on.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_deref().map(crate::dns::Dns::local_addr)
    }

    /// Reads the token files again (SIGHUP). On failure the old tokens stay
    /// and the error says why.
    pub fn reload_tokens(&self) -> Result<(), String> {
        self.shared.api.access().reload()
    }

    /// Stops accepting, finishes the requests already read (answering them
    /// with `Connection: close`), lets requests still arriving finish within
    /// the grace period (or answers them 503), closes idle connections and
    /// joins every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let shared = &self.shared;
        if !shared.stopping.swap(true, Ordering::SeqCst) {
            let _ = shared.waker.wake();
            // Requests in flight get a moment to be answered and requests
            // still arriving a moment to arrive; a client that does not read
            // its answer cannot hold the stop for longer than that.
            let deadline = Instant::now() + STOP_GRACE;
            let mut guard = lock(&shared.closed_lock);
            while shared.open.load(Ordering::SeqCst) > 0 && self.poller.is_some() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                guard = shared
                    .closed
                    .wait_timeout(guard, left.min(Duration::from_millis(50)))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            drop(guard);
        }
        shared.cut.store(true, Ordering::SeqCst);
        let _ = shared.waker.wake();
        if let Some(dns) = self.dns.take() {
            dns.stop();
        }
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        shared.exit.store(true, Ordering::SeqCst);
        drop(lock(&shared.queue));
        shared.work.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        if let Some(store) = self.store.take() {
            store.stop();
        }
        if let Some(data_dir) = self.data_dir.take() {
            data_dir.stop();
        }
        if let Some(logger) = self.logger.take() {
            shared.api.log().line(format_args!("stopped"));
            logger.close();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The bytes owed to clients, and their bound.
    fn budget(&self) -> &Arc<OutputBudget> {
        &self.budget
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Monotonic milliseconds (the clock of every connection deadline).
fn mono() -> Millis {
    clock::mono_of(Instant::now())
}

/// A period for the start-up line: `90s`, `0.5s`.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The `Date` header, formatted once a second per thread.
fn date() -> String {
    date_at(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// The `Date` header for Unix second `secs`.
fn date_at(secs: u64) -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, log::http_date(UNIX_EPOCH + Duration::from_secs(secs)));
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_follows_the_descriptor_limit() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let n = default_max_connections() as u64;
        if let Some(max) = limit.maximum.or(limit.current) {
            assert!(
                n < max.max(FD_RESERVE + 16),
                "{n} connections for {max} descriptors"
            );
        }
        assert!(n >= 16);
    }
}
