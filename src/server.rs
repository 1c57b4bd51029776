//! The sockets and threads around the registry: one acceptor thread that
//! never gives up, a pool of connection threads (kept warm, grown on demand
//! up to `max_connections`, shrunk when idle), per-connection timeouts, and a
//! prompt, joined shutdown.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::api::{self, Api};
use crate::auth::{Access, TokenFiles};
use crate::clock;
use crate::http;
use crate::log::{self, Logger};
use crate::registry::{Millis, Periods};
use crate::sweeper::Sweeper;

/// How the server runs. `Default` gives the production settings on `0.0.0.0:8080`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (see [`Server::local_addr`]).
    pub addr: SocketAddr,
    /// Connection threads kept warm; the pool grows past it while more
    /// connections are open, up to `max_connections`.
    pub threads: usize,
    /// Connections served at once; one more is answered 503 and closed.
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
    /// A request must arrive in full within this, once its first byte has.
    pub request_timeout: Duration,
    /// One line per event on stderr.
    pub log: bool,
    /// A summary line for every sweep, not only for those that changed
    /// something or took over 100 ms.
    pub log_sweeps: bool,
    /// Where the access tokens are read from (none: every request is allowed).
    pub tokens: TokenFiles,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            threads: thread::available_parallelism().map_or(4, |n| n.get().max(4)),
            max_connections: 10_000,
            down_after: Duration::from_secs(90),
            evict_after: Duration::from_secs(600),
            sweep_every: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            log: true,
            log_sweeps: false,
            tokens: TokenFiles::default(),
        }
    }
}

/// A running server. Dropping it shuts it down, as [`Server::shutdown`] does.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    sweeper: Option<Sweeper>,
    logger: Option<Logger>,
}

#[derive(Debug)]
struct Shared {
    api: Arc<Api>,
    config: Config,
    listener: TcpListener,
    stopping: AtomicBool,
    pool: Mutex<Pool>,
    work: Condvar,
    conns: Mutex<HashMap<u64, Arc<TcpStream>>>,
    next_conn: AtomicU64,
    /// Connections accepted and not yet closed (queued ones included).
    open: AtomicUsize,
}

#[derive(Debug, Default)]
struct Pool {
    queue: VecDeque<TcpStream>,
    idle: usize,
    total: usize,
    handles: Vec<JoinHandle<()>>,
}

/// How long a thread beyond the warm ones waits for work before it ends.
const KEEP_WARM: Duration = Duration::from_secs(10);
/// How long a stop waits for responses in flight before it cuts every
/// connection.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// Stack of a connection thread: parsing and JSON need little.
const STACK: usize = 256 * 1024;

impl Server {
    /// Binds `config.addr` and starts serving at once.
    pub fn start(config: Config) -> io::Result<Server> {
        let listener = TcpListener::bind(config.addr)?;
        let local_addr = listener.local_addr()?;
        let periods = Periods {
            down_after: millis(config.down_after),
            evict_after: millis(config.evict_after),
        };
        let logger = Logger::start(config.log)?;
        let log = logger.log();
        let access = Access::load(&config.tokens)?;
        let api = Arc::new(Api::new(periods, logger.log(), access));
        let shared = Arc::new(Shared {
            api: Arc::clone(&api),
            config: config.clone(),
            listener,
            stopping: AtomicBool::new(false),
            pool: Mutex::new(Pool::default()),
            work: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        });
        for _ in 0..config.threads.max(1) {
            shared.spawn_worker(None).map_err(|(e, _)| e)?;
        }
        let sweeper = Sweeper::spawn(api, config.sweep_every, config.log_sweeps)?;
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("registro-accept".into())
                .spawn(move || shared.accept_loop())?
        };
        log.line(format_args!("listening on {local_addr}"));
        Ok(Server {
            local_addr,
            shared,
            acceptor: Some(acceptor),
            sweeper: Some(sweeper),
            logger: Some(logger),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reads the token files again (SIGHUP). On failure the old tokens stay
    /// and the error says why.
    pub fn reload_tokens(&self) -> Result<(), String> {
        self.shared.api.access().reload()
    }

    /// Stops accepting, finishes the requests already read (answering them
    /// with `Connection: close`), closes idle connections and joins every
    /// thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        // On Linux, shutting down a listening socket wakes a blocked accept().
        let _ = rustix::net::shutdown(&shared.listener, rustix::net::Shutdown::Read);
        drop(lock(&shared.pool));
        shared.work.notify_all();
        let _ = acceptor.join();
        // A blocked read on an idle connection returns end-of-file at once;
        // a response being written still goes out.
        for conn in lock(&shared.conns).values() {
            let _ = conn.shutdown(Shutdown::Read);
        }
        let handles = {
            let mut pool = lock(&shared.pool);
            shared.open.fetch_sub(pool.queue.len(), Ordering::SeqCst);
            pool.queue.clear();
            std::mem::take(&mut pool.handles)
        };
        shared.work.notify_all();
        // Responses in flight get a moment to go out; a client that does not
        // read its answer cannot hold the stop for longer than that.
        let deadline = Instant::now() + STOP_GRACE;
        let mut pool = lock(&shared.pool);
        while pool.total > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            pool = shared
                .work
                .wait_timeout(pool, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(pool);
        for conn in lock(&shared.conns).values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        for handle in handles {
            let _ = handle.join();
        }
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.stop();
        }
        shared.api.log().line(format_args!("stopped"));
        if let Some(logger) = self.logger.take() {
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

    /// Accepts until shutdown. Errors never end the loop: running out of file
    /// descriptors (or memory, or threads) is waited out with a capped
    /// backoff, and the connections queued in the kernel's backlog are served
    /// as soon as resources are free again.
    fn accept_loop(self: &Arc<Self>) {
        let mut backoff = Duration::from_millis(1);
        let mut last_complaint: Option<Instant> = None;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(1);
                    if self.stopping() {
                        return;
                    }
                    self.dispatch(stream);
                }
                Err(_) if self.stopping() => return,
                Err(e) if transient(&e) => {}
                Err(e) => {
                    if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        self.api
                            .log()
                            .line(format_args!("cannot accept connections: {e}; retrying"));
                        last_complaint = Some(Instant::now());
                    }
                    self.wait_stop(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Waits up to `d`, returning early when shutdown starts.
    fn wait_stop(&self, d: Duration) {
        let pool = lock(&self.pool);
        if !self.stopping() {
            let _ = self.work.wait_timeout(pool, d);
        }
    }

    fn dispatch(self: &Arc<Self>, mut stream: TcpStream) {
        // Counted here, not when a thread picks the connection up, so that a
        // burst cannot get past the limit before the threads start.
        if self.open.fetch_add(1, Ordering::SeqCst) >= self.config.max_connections {
            self.open.fetch_sub(1, Ordering::SeqCst);
            // Refuse without ever blocking the acceptor.
            let _ = stream.set_nonblocking(true);
            let body = api::error(503, "too many connections; try again");
            let _ = http::write_response(&mut stream, &body, false, false, &date());
            return;
        }
        let mut pool = lock(&self.pool);
        if pool.idle > pool.queue.len() {
            pool.queue.push_back(stream);
            drop(pool);
            self.work.notify_one();
            return;
        }
        drop(pool);
        if let Err((_, Some(stream))) = self.spawn_worker(Some(stream)) {
            // No thread could be started (out of memory or a thread limit):
            // leave the connection to the threads there are.
            lock(&self.pool).queue.push_back(stream);
            self.work.notify_one();
        }
    }

    /// Starts a connection thread, serving `first` if given. On failure the
    /// connection is handed back.
    fn spawn_worker(
        self: &Arc<Self>,
        first: Option<TcpStream>,
    ) -> Result<(), (io::Error, Option<TcpStream>)> {
        let mut pool = lock(&self.pool);
        if pool.handles.len() > 2 * pool.total + 16 {
            pool.handles.retain(|h| !h.is_finished());
        }
        let shared = Arc::clone(self);
        let slot = Arc::new(Mutex::new(first));
        let given = Arc::clone(&slot);
        let spawned = thread::Builder::new()
            .name("registro-conn".into())
            .stack_size(STACK)
            .spawn(move || {
                let first = lock(&given).take();
                shared.worker(first)
            });
        match spawned {
            Ok(handle) => {
                pool.total += 1;
                pool.handles.push(handle);
                Ok(())
            }
            Err(e) => {
                self.api
                    .log()
                    .line(format_args!("cannot start a connection thread: {e}"));
                Err((e, lock(&slot).take()))
            }
        }
    }

    fn worker(&self, mut next: Option<TcpStream>) {
        let mut leaving = Leaving {
            shared: self,
            counted: false,
        };
        loop {
            if let Some(stream) = next.take() {
                self.serve(stream);
            }
            let mut pool = lock(&self.pool);
            pool.idle += 1;
            loop {
                if self.stopping() {
                    pool.idle -= 1;
                    return;
                }
                if let Some(stream) = pool.queue.pop_front() {
                    pool.idle -= 1;
                    next = Some(stream);
                    break;
                }
                let (guard, waited) = self
                    .work
                    .wait_timeout(pool, KEEP_WARM)
                    .unwrap_or_else(PoisonError::into_inner);
                pool = guard;
                if waited.timed_out() && pool.queue.is_empty() && pool.total > self.config.threads {
                    pool.idle -= 1;
                    pool.total -= 1;
                    leaving.counted = true;
                    return;
                }
            }
        }
    }

    fn track(&self, stream: &Arc<TcpStream>) -> Option<u64> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut conns = lock(&self.conns);
        // Checked under the same lock `stop` takes, so no connection slips
        // past the shutdown of idle ones.
        if self.stopping() {
            return None;
        }
        conns.insert(id, Arc::clone(stream));
        Some(id)
    }

    /// Serves one connection until it closes, times out or misbehaves.
    fn serve(&self, stream: TcpStream) {
        let _closing = Closing(&self.open);
        let stream = Arc::new(stream);
        let Some(id) = self.track(&stream) else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.config.request_timeout));
        let mut reader = BufReader::with_capacity(
            4096,
            Deadline {
                stream: &stream,
                idle: self.config.idle_timeout,
                request: self.config.request_timeout,
                deadline: None,
                current: None,
            },
        );
        loop {
            if reader.buffer().is_empty() {
                reader.get_mut().deadline = None;
            } else {
                reader.get_mut().start_request();
            }
            let mut writer = &*stream;
            match http::read_request(&mut reader, &mut writer) {
                Ok(mut request) => {
                    request.peer = stream.peer_addr().ok().map(|a| a.ip());
                    let response = match self.api.handle(&request, clock::now(), true) {
                        api::Outcome::Respond(response) => response,
                        // Watches are parked by the connection layer; until it
                        // does, `answer_now` makes every request answer at once.
                        api::Outcome::Wait(_) => api::error(500, "a watch could not be parked"),
                    };
                    let keep_alive = request.keep_alive && !self.stopping();
                    if http::write_response(
                        &mut writer,
                        &response,
                        request.is_head(),
                        keep_alive,
                        &date(),
                    )
                    .is_err()
                        || !keep_alive
                    {
                        break;
                    }
                }
                Err(e) => {
                    if let Some(status) = e.status() {
                        let response = api::error(status, e.to_string());
                        if http::write_response(&mut writer, &response, false, false, &date())
                            .is_ok()
                        {
                            linger(&stream);
                        }
                    }
                    break;
                }
            }
        }
        lock(&self.conns).remove(&id);
    }
}

/// Socket errors after which accept() can simply be called again.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// After an error response, stops sending and discards what the client is
/// still sending for a moment, so that closing does not reset the connection
/// before the client has read the response.
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    let mut budget = 256 * 1024;
    let mut reader = stream;
    while budget > 0 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => budget -= n.min(budget),
        }
    }
}

/// Counts a connection thread out of the pool however it ends (a panic
/// included), unless the idle-shrink path already did under the lock.
struct Leaving<'a> {
    shared: &'a Shared,
    counted: bool,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        if !self.counted {
            let mut pool = lock(&self.shared.pool);
            pool.total = pool.total.saturating_sub(1);
            drop(pool);
            if self.shared.stopping() {
                // `stop` waits for the pool to empty.
                self.shared.work.notify_all();
            }
        }
    }
}

/// Counts a connection out of `Shared::open` however its thread is done
/// with it.
struct Closing<'a>(&'a AtomicUsize);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reader that gives an idle connection `idle` to start its next request,
/// and a started request `request` in total to arrive in full: a sender that
/// trickles bytes cannot hold a thread for longer than that.
struct Deadline<'a> {
    stream: &'a TcpStream,
    idle: Duration,
    request: Duration,
    deadline: Option<Instant>,
    current: Option<Duration>,
}

impl Deadline<'_> {
    fn start_request(&mut self) {
        self.deadline = Some(Instant::now() + self.request);
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = match self.deadline {
            None => self.idle,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                left.max(Duration::from_millis(1))
            }
        };
        if self.current != Some(timeout) {
            self.stream.set_read_timeout(Some(timeout))?;
            self.current = Some(timeout);
        }
        let n = self.stream.read(buf)?;
        if self.deadline.is_none() && n > 0 {
            self.start_request();
        }
        Ok(n)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `Date` header, formatted once a second per thread.
fn date() -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, log::http_date(now));
        }
        c.1.clone()
    })
}
