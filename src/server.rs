//! The sockets and threads around the registry. One poller thread owns the
//! readiness poller (mio: epoll/kqueue, edge-triggered), the listening socket,
//! the table of connections and their timers; a fixed pool of worker threads
//! runs the handlers synchronously. A connection that waits (idle keep-alive,
//! a request still arriving, an answer a slow reader has not taken yet, a
//! parked watch) is a table entry, not a thread: the poller hands it to a
//! worker when its socket is ready, its timer is due or its watch is woken.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::api::{self, Api, Outcome, Topic};
use crate::auth::{Access, TokenFiles};
use crate::clock;
use crate::http::{self, Parsed, Parser, Request};
use crate::log::{self, Logger};
use crate::metrics::Metrics;
use crate::registry::{Millis, Periods};
use crate::sweeper::Sweeper;

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
    /// Where the registry is kept across restarts (none: in memory only).
    pub data_dir: Option<std::path::PathBuf>,
    /// How often the data directory's log is compacted into a snapshot.
    pub snapshot_every: Duration,
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
            data_dir: None,
            snapshot_every: Duration::from_secs(300),
        }
    }
}

/// Descriptors kept free for everything but connections: the listener, the
/// poller, stdio, token files, a refused connection's 503.
const FD_RESERVE: u64 = 64;

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
    sweeper: Option<Sweeper>,
    logger: Option<Logger>,
    data_dir: Option<crate::persist::DataDir>,
}

/// How long a stop waits for requests in flight (and requests still
/// arriving) before it cuts every connection.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// Stack of a worker thread: parsing and JSON need little.
const STACK: usize = 256 * 1024;
/// Bytes read from a socket at once (one buffer per worker).
const READ_CHUNK: usize = 64 * 1024;
/// After an error answer, what is still read and discarded, and for how long.
const LINGER_BYTES: usize = 256 * 1024;
const LINGER: Millis = 100;
/// Answers queued before they are written out, when requests are pipelined.
const OUT_BATCH: usize = 64 * 1024;
/// A worker keeps an output buffer up to this size for the next connection.
const KEEP_OUT: usize = 1 << 20;
/// A request that has come in `SLOW_READS` reads of fewer than `SMALL_READ`
/// bytes each and is still not whole is trickling (slowloris, or a person
/// typing): after each read its socket wakes no one for `TRICKLE_MS`, so it
/// costs a worker at most one turn in that time, not one per byte.
const SLOW_READS: u32 = 8;
const SMALL_READ: usize = 64;
const TRICKLE_MS: Millis = 50;
/// Trickling connections wait `TRICKLE_MS` plus up to this much more, by
/// connection id: slow senders that began together (one attacker's batch)
/// are read at spread-out times, not all in the same millisecond, where a
/// request arriving behind them would wait for all of their reads.
const TRICKLE_SPREAD: u64 = 32;
/// A body this large is sent from its own buffer after its head, not
/// copied behind it.
const TAIL_BODY: usize = 64 * 1024;
/// Poller tokens; connection `i` of the table is `Token(i + FIRST_CONN)`.
const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// Connection states (`Conn::state`).
const IDLE: u8 = 0; // in the table, no worker has it
const BUSY: u8 = 1; // a worker has it
const AGAIN: u8 = 2; // a worker has it and something happened meanwhile
const CLOSED: u8 = 3;
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
}

/// Connections ready to be served, and how many workers wait for one.
#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Arc<Conn>>,
    waiting: usize,
}

/// One connection. The poller's table holds it; a worker holds it while
/// serving it.
#[derive(Debug)]
struct Conn {
    slot: usize,
    /// Unique over the server's life: tells a reused slot from the old one.
    id: u64,
    state: AtomicU8,
    /// When it must be looked at next (monotonic ms), `NEVER` if not.
    deadline: AtomicU64,
    /// The earliest timer queued for it (`NEVER` if none).
    scheduled: AtomicU64,
    /// Its parked watch's topic was notified.
    woken: AtomicBool,
    /// The peer has shut its side (an event said so): a short read no longer
    /// means the socket is empty, the end of file may be behind the data.
    peer_closed: AtomicBool,
    /// Its request is trickling in (`NEVER` if not): a timer at this time
    /// hands it to a worker to read what has come, and events that raced
    /// with its quieting are ignored until then.
    wake_at: AtomicU64,
    io: Mutex<ConnIo>,
}

#[derive(Debug)]
struct ConnIo {
    /// `None` once closed.
    stream: Option<TcpStream>,
    peer: Option<IpAddr>,
    /// Bytes of requests not handled yet (empty while idle).
    pending: Vec<u8>,
    parser: Parser,
    continued: bool,
    /// When the request now arriving began (monotonic ms).
    request_started: Option<Millis>,
    /// Reads of fewer than `SMALL_READ` bytes since a request was last whole.
    small_reads: u32,
    /// Registered for writability only (trickling): arriving bytes wake no one.
    quiet: bool,
    /// Bytes were read in the worker's present turn.
    read_some: bool,
    /// Output the client has not taken yet, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// A large body owed after `out`, from `tail_pos` on; while it is owed
    /// no further request is answered.
    tail: Vec<u8>,
    tail_pos: usize,
    /// When writing first blocked.
    write_started: Option<Millis>,
    /// What happens once the output is out.
    after: After,
    /// Last time a request was answered (or the connection opened).
    idle_since: Millis,
    phase: Phase,
    /// The peer has sent end of file.
    eof: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Continue,
    Close,
    Linger,
}

#[derive(Debug)]
enum Phase {
    Open,
    Parked(Box<(Request, Millis)>),
    Lingering { until: Millis, budget: usize },
}

/// What a worker decided about a connection.
enum Verdict {
    Keep(Millis),
    Close,
}

impl Server {
    /// Binds `config.addr` and starts serving at once.
    pub fn start(config: Config) -> io::Result<Server> {
        let std_listener = std::net::TcpListener::bind(config.addr)?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let mut listener = TcpListener::from_std(std_listener);
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
        let api = Arc::new(Api::new(periods, logger.log(), access));
        // An index never reused (API.md Part 4): above any a previous server gave.
        api.lock().raise_index(clock::index_floor());
        let data_dir = match &config.data_dir {
            Some(dir) => Some(crate::persist::DataDir::open(
                dir,
                config.snapshot_every,
                &api,
            )?),
            None => None,
        };
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
        });
        {
            let weak = Arc::downgrade(&shared);
            api.set_notify(Box::new(move |topics: &[Topic]| {
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
            sweeper: None,
            logger: None,
            data_dir,
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
        server.sweeper = Some(Sweeper::spawn(api, config.sweep_every, config.log_sweeps)?);
        log.line(format_args!(
            "registro {}: {threads} worker threads, at most {} connections, idle timeout {}, \
             request timeout {}, down after {}, evict after {}, sweep every {}; listening on {local_addr}",
            env!("CARGO_PKG_VERSION"),
            config.max_connections,
            secs(config.idle_timeout),
            secs(config.request_timeout),
            secs(config.down_after),
            secs(config.evict_after),
            secs(config.sweep_every),
        ));
        server.logger = Some(logger);
        Ok(server)
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
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        shared.exit.store(true, Ordering::SeqCst);
        drop(lock(&shared.queue));
        shared.work.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.stop();
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

    /// Closes a connection its caller holds (state BUSY, `io` locked).
    fn close(&self, conn: &Conn, io: &mut ConnIo) {
        io.stream = None;
        io.pending = Vec::new();
        io.out = Vec::new();
        io.tail = Vec::new();
        io.phase = Phase::Open;
        lock(&self.watches).unpark(conn.slot, conn.id);
        conn.state.store(CLOSED, Ordering::SeqCst);
        lock(&self.freed).push(conn.slot);
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.api.log().metrics().connection_closed();
        if self.stopping() {
            drop(lock(&self.closed_lock));
            self.closed.notify_all();
        }
    }

    /// Hands `conn` to a worker, or, if one has it, tells it to look again.
    fn dispatch(&self, conn: &Arc<Conn>, batch: &mut Vec<Arc<Conn>>) {
        loop {
            match conn.state.load(Ordering::SeqCst) {
                IDLE => {
                    if conn
                        .state
                        .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        batch.push(Arc::clone(conn));
                        return;
                    }
                }
                BUSY => {
                    if conn
                        .state
                        .compare_exchange(BUSY, AGAIN, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    fn enqueue(&self, batch: &mut Vec<Arc<Conn>>) {
        if batch.is_empty() {
            return;
        }
        // Wake as many waiting workers as there are jobs, no more: the
        // others are busy and take the rest as they finish.
        let wake = {
            let mut queue = lock(&self.queue);
            let wake = batch.len().min(queue.waiting);
            queue.jobs.extend(batch.drain(..));
            wake
        };
        for _ in 0..wake {
            self.work.notify_one();
        }
    }

    /// Makes sure the poller looks at `conn` by `at`.
    fn schedule(&self, conn: &Conn, at: Millis) {
        conn.deadline.store(at, Ordering::SeqCst);
        self.arm(conn, at);
    }

    /// A trickling request just read from: its socket stops waking the
    /// poller, and a timer hands it to a worker in `TRICKLE_MS` to read what
    /// came meanwhile. If nothing came, or the request is whole, its bytes
    /// wake it again. Called by the worker holding `conn` after each step.
    fn pace(&self, conn: &Conn, io: &mut ConnIo) {
        let trickling = std::mem::take(&mut io.read_some)
            && io.small_reads >= SLOW_READS
            && matches!(io.phase, Phase::Open)
            && mid_request(io)
            && !owes(io);
        if trickling != io.quiet {
            let interest = if trickling {
                Interest::WRITABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            if let Some(stream) = &mut io.stream {
                // A failure leaves it woken by every byte, as before.
                if self
                    .registry
                    .reregister(stream, Token(conn.slot + FIRST_CONN), interest)
                    .is_ok()
                {
                    io.quiet = trickling;
                }
            }
        }
        if trickling {
            let at = mono() + TRICKLE_MS + conn.id % TRICKLE_SPREAD;
            conn.wake_at.store(at, Ordering::SeqCst);
            self.arm(conn, at);
        } else if conn.wake_at.load(Ordering::SeqCst) != NEVER {
            conn.wake_at.store(NEVER, Ordering::SeqCst);
        }
    }

    /// Makes sure a timer fires for `conn` by `at`.
    fn arm(&self, conn: &Conn, at: Millis) {
        if at >= conn.scheduled.load(Ordering::SeqCst) {
            return; // an earlier timer will look, and find this one
        }
        let mut timers = lock(&self.timers);
        if at < conn.scheduled.load(Ordering::SeqCst) {
            conn.scheduled.store(at, Ordering::SeqCst);
            timers.push(at, conn.slot, conn.id);
            if at < timers.armed {
                timers.armed = at;
                drop(timers);
                let _ = self.waker.wake();
            }
        }
    }
}

/// Timers: a heap of (when, slot, connection id), at most a few per
/// connection (a later deadline does not add one: the earlier timer, when it
/// fires, finds the connection's real deadline and queues that).
#[derive(Debug)]
struct Timers {
    heap: BinaryHeap<std::cmp::Reverse<(Millis, usize, u64)>>,
    /// When the poller will wake next at the latest.
    armed: Millis,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            armed: NEVER,
        }
    }
}

impl Timers {
    fn push(&mut self, at: Millis, slot: usize, id: u64) {
        self.heap.push(std::cmp::Reverse((at, slot, id)));
    }

    /// The next timer due at `now`, if any.
    fn pop_due(&mut self, now: Millis) -> Option<(usize, u64)> {
        match self.heap.peek() {
            Some(std::cmp::Reverse((at, _, _))) if *at <= now => self
                .heap
                .pop()
                .map(|std::cmp::Reverse((_, slot, id))| (slot, id)),
            _ => None,
        }
    }

    fn next(&self) -> Millis {
        self.heap
            .peek()
            .map_or(NEVER, |std::cmp::Reverse((at, _, _))| *at)
    }
}

/// Parked watches by topic: which connections to wake when a topic changes.
/// `registro_watches_waiting` follows its size.
#[derive(Debug, Default)]
struct Watches {
    by_topic: HashMap<Topic, HashSet<(usize, u64)>>,
    of: HashMap<(usize, u64), Topic>,
    metrics: Option<Arc<Metrics>>,
}

impl Watches {
    fn new(metrics: Arc<Metrics>) -> Watches {
        Watches {
            metrics: Some(metrics),
            ..Watches::default()
        }
    }

    fn park(&mut self, slot: usize, id: u64, topic: Topic) {
        self.unpark(slot, id);
        self.by_topic
            .entry(topic.clone())
            .or_default()
            .insert((slot, id));
        self.of.insert((slot, id), topic);
        if let Some(m) = &self.metrics {
            m.watch_parked();
        }
    }

    fn unpark(&mut self, slot: usize, id: u64) {
        if let Some(topic) = self.of.remove(&(slot, id)) {
            if let Some(m) = &self.metrics {
                m.watch_unparked();
            }
            if let Some(set) = self.by_topic.get_mut(&topic) {
                set.remove(&(slot, id));
                if set.is_empty() {
                    self.by_topic.remove(&topic);
                }
            }
        }
    }

    /// Takes every connection parked on one of `topics`.
    fn woken(&mut self, topics: &[Topic]) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for topic in topics {
            if let Some(set) = self.by_topic.remove(topic) {
                for key in set {
                    if self.of.remove(&key).is_some() {
                        if let Some(m) = &self.metrics {
                            m.watch_unparked();
                        }
                    }
                    out.push(key);
                }
            }
        }
        out
    }
}

/// The poller thread's state: the table of connections and the listener.
struct Poller {
    shared: Arc<Shared>,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Vec<Option<Arc<Conn>>>,
    free: Vec<usize>,
    next_id: u64,
    /// After an accept error (EMFILE), when to try again, and the backoff.
    retry_accept: Option<Millis>,
    backoff: Millis,
    last_complaint: Option<Millis>,
    /// Connections refused by `max_connections` not yet logged, and when the
    /// last such line was written.
    refused: u64,
    refused_logged: Option<Millis>,
    stop_done: bool,
}

impl Poller {
    fn new(shared: Arc<Shared>, poll: Poll, listener: TcpListener) -> Poller {
        Poller {
            shared,
            poll,
            listener: Some(listener),
            conns: Vec::new(),
            free: Vec::new(),
            next_id: 0,
            retry_accept: None,
            backoff: 1,
            last_complaint: None,
            refused: 0,
            refused_logged: None,
            stop_done: false,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut batch = Vec::new();
        loop {
            let now = mono();
            let next = {
                // Armed under the lock workers push timers under: one pushed
                // earlier than this wakes the poller.
                let mut timers = lock(&self.shared.timers);
                let mut next = timers.next().min(self.retry_accept.unwrap_or(NEVER));
                if self.refused > 0 {
                    next = next.min(self.refused_logged.map_or(now, |t| t + 1000));
                }
                timers.armed = next;
                next
            };
            let timeout = (next != NEVER).then(|| Duration::from_millis(next.saturating_sub(now)));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.shared.api.log().line(format_args!("poll failed: {e}"));
                    thread::sleep(Duration::from_millis(10));
                }
            }
            lock(&self.shared.timers).armed = 0;
            let mut accept = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    WAKER => {}
                    Token(t) => {
                        if let Some(Some(conn)) = self.conns.get(t - FIRST_CONN) {
                            let conn = Arc::clone(conn);
                            let hung_up = event.is_read_closed() || event.is_error();
                            if hung_up {
                                conn.peer_closed.store(true, Ordering::SeqCst);
                            } else if conn.wake_at.load(Ordering::SeqCst) != NEVER {
                                // Its timer reads what has come.
                                continue;
                            }
                            if !(hung_up && self.hang_up(&conn, &mut batch)) {
                                self.shared.dispatch(&conn, &mut batch);
                            }
                        }
                    }
                }
            }
            // After the hang-ups of the same batch: a connection that closed
            // before a new one arrived has made room for it.
            if accept {
                self.accept(&mut batch);
            }
            self.shared.enqueue(&mut batch);
            let now = mono();
            self.free_closed();
            self.wake_watches(&mut batch);
            self.fire_timers(now, &mut batch);
            if self.retry_accept.is_some_and(|t| t <= now) {
                self.retry_accept = None;
                self.accept(&mut batch);
            }
            if self.refused > 0 && self.refused_logged.is_none_or(|t| now >= t + 1000) {
                self.log_refused(now);
            }
            if self.shared.stopping() && !self.stop_done {
                self.stop_done = true;
                // No more connections: the kernel resets those still queued.
                if let Some(mut listener) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut listener);
                }
                self.retry_accept = None;
                for conn in self.conns.iter().flatten() {
                    self.shared.dispatch(conn, &mut batch);
                }
            }
            if self.shared.cut.load(Ordering::SeqCst) {
                for conn in self.conns.iter().flatten() {
                    self.shared.dispatch(conn, &mut batch);
                }
                self.shared.enqueue(&mut batch);
                if self.refused > 0 {
                    self.log_refused(now);
                }
                return;
            }
            self.shared.enqueue(&mut batch);
        }
    }

    /// Accepts what is queued; each new connection joins `batch`.
    fn accept(&mut self, batch: &mut Vec<Arc<Conn>>) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.backoff = 1;
                    self.admit(stream, peer, batch);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if transient(&e) => {}
                Err(e) => {
                    // Out of descriptors (or memory): the connections wait in
                    // the kernel's backlog. With edge-triggered readiness no
                    // new event comes for them, so a timer tries again.
                    let now = mono();
                    if self.last_complaint.is_none_or(|t| now >= t + 10_000) {
                        self.shared
                            .api
                            .log()
                            .line(format_args!("cannot accept connections: {e}; retrying"));
                        self.last_complaint = Some(now);
                    }
                    self.retry_accept = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(100);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, batch: &mut Vec<Arc<Conn>>) {
        let shared = &self.shared;
        if shared.open.load(Ordering::SeqCst) >= shared.config.max_connections {
            // Refused without ever blocking the poller.
            let body = api::error(503, "too many connections; try again");
            let mut out = Vec::with_capacity(256);
            let _ = http::write_response(&mut out, &body, false, false, &date());
            let _ = stream.write(&out);
            self.refused += 1;
            shared.api.log().metrics().connection_rejected();
            return;
        }
        let _ = stream.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot + FIRST_CONN),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            shared
                .api
                .log()
                .line(format_args!("cannot watch a connection: {e}"));
            self.free.push(slot);
            return;
        }
        shared.open.fetch_add(1, Ordering::SeqCst);
        shared.api.log().metrics().connection_opened();
        self.next_id += 1;
        let now = mono();
        let conn = Arc::new(Conn {
            slot,
            id: self.next_id,
            state: AtomicU8::new(IDLE),
            deadline: AtomicU64::new(NEVER),
            scheduled: AtomicU64::new(NEVER),
            woken: AtomicBool::new(false),
            peer_closed: AtomicBool::new(false),
            wake_at: AtomicU64::new(NEVER),
            io: Mutex::new(ConnIo {
                stream: Some(stream),
                peer: Some(peer.ip().to_canonical()),
                pending: Vec::new(),
                parser: Parser::default(),
                continued: false,
                request_started: None,
                small_reads: 0,
                quiet: false,
                read_some: false,
                out: Vec::new(),
                out_pos: 0,
                tail: Vec::new(),
                tail_pos: 0,
                write_started: None,
                after: After::Continue,
                idle_since: now,
                phase: Phase::Open,
                eof: false,
            }),
        });
        shared.schedule(&conn, now + millis(shared.config.idle_timeout));
        // Handed to a worker with this pass's batch, not at its readiness:
        // its first request is usually on its way, and the worker's wake-up
        // then overlaps its coming rather than follows it (as a thread
        // blocked in `read` did). If it has not come yet, the worker finds
        // nothing and its readiness event follows.
        shared.dispatch(&conn, batch);
        self.conns[slot] = Some(conn);
    }

    fn log_refused(&mut self, now: Millis) {
        self.shared.api.log().line(format_args!(
            "refused {} connections with 503: --max-connections {} reached",
            self.refused, self.shared.config.max_connections
        ));
        self.refused = 0;
        self.refused_logged = Some(now);
    }

    /// A client that hung up between requests is closed here, at once, so
    /// that its slot counts as free before the next connection is admitted.
    /// True when dealt with (closed, or handed to a worker with what it sent
    /// before hanging up).
    fn hang_up(&mut self, conn: &Arc<Conn>, batch: &mut Vec<Arc<Conn>>) -> bool {
        if conn
            .state
            .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        let mut io = lock(&conn.io);
        let between_requests = matches!(io.phase, Phase::Open)
            && io.pending.is_empty()
            && !owes(&io)
            && io.after == After::Continue;
        if between_requests {
            let mut byte = [0u8; 1];
            let peeked = match &io.stream {
                Some(stream) => stream.peek(&mut byte),
                None => Ok(0),
            };
            // Nothing left unread: it is gone. Otherwise it sent a last
            // request before closing, which a worker answers.
            if matches!(peeked, Ok(0))
                || peeked
                    .as_ref()
                    .is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock)
            {
                self.shared.close(conn, &mut io);
                return true;
            }
        }
        drop(io);
        batch.push(Arc::clone(conn));
        true
    }

    fn lookup(&self, slot: usize, id: u64) -> Option<&Arc<Conn>> {
        self.conns
            .get(slot)
            .and_then(Option::as_ref)
            .filter(|c| c.id == id)
    }

    fn free_closed(&mut self) {
        let freed = std::mem::take(&mut *lock(&self.shared.freed));
        for slot in freed {
            if let Some(entry) = self.conns.get_mut(slot) {
                if entry
                    .as_ref()
                    .is_some_and(|c| c.state.load(Ordering::SeqCst) == CLOSED)
                {
                    *entry = None;
                    self.free.push(slot);
                }
            }
        }
    }

    fn wake_watches(&mut self, batch: &mut Vec<Arc<Conn>>) {
        let topics = std::mem::take(&mut *lock(&self.shared.notified));
        if topics.is_empty() {
            return;
        }
        let woken = lock(&self.shared.watches).woken(&topics);
        for (slot, id) in woken {
            if let Some(conn) = self.lookup(slot, id) {
                conn.woken.store(true, Ordering::SeqCst);
                self.shared.dispatch(conn, batch);
            }
        }
    }

    fn fire_timers(&mut self, now: Millis, batch: &mut Vec<Arc<Conn>>) {
        let mut timers = lock(&self.shared.timers);
        while let Some((slot, id)) = timers.pop_due(now) {
            let Some(conn) = self.lookup(slot, id) else {
                continue;
            };
            conn.scheduled.store(NEVER, Ordering::SeqCst);
            let deadline = conn.deadline.load(Ordering::SeqCst);
            let wake = conn.wake_at.load(Ordering::SeqCst);
            if deadline > now && wake > now {
                let next = deadline.min(wake);
                if next != NEVER {
                    conn.scheduled.store(next, Ordering::SeqCst);
                    timers.push(next, slot, id);
                }
            } else {
                conn.wake_at.store(NEVER, Ordering::SeqCst);
                self.shared.dispatch(conn, batch);
            }
        }
    }
}

/// A worker thread: serves the connections the poller hands it, one at a
/// time, never blocking on a socket.
struct Worker<'a> {
    shared: &'a Shared,
    scratch: Box<[u8]>,
    out: Vec<u8>,
}

impl<'a> Worker<'a> {
    fn new(shared: &'a Shared) -> Worker<'a> {
        Worker {
            shared,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
        }
    }

    fn run(mut self) {
        loop {
            let conn = {
                let mut queue = lock(&self.shared.queue);
                loop {
                    if let Some(conn) = queue.jobs.pop_front() {
                        break conn;
                    }
                    if self.shared.exit.load(Ordering::SeqCst) {
                        return;
                    }
                    queue.waiting += 1;
                    queue = self
                        .shared
                        .work
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                    queue.waiting -= 1;
                }
            };
            // A bug that panics a handler closes that connection only; the
            // worker goes on (the pool is fixed: it must not shrink).
            let served = panic::catch_unwind(AssertUnwindSafe(|| self.serve(&conn)));
            if served.is_err() {
                let mut io = lock(&conn.io);
                if io.stream.is_some() {
                    self.close(&conn, &mut io);
                }
            }
        }
    }

    /// Serves `conn` until it would block, then gives it back to the poller
    /// (or closes it). An event that came meanwhile makes it look again.
    fn serve(&mut self, conn: &Arc<Conn>) {
        loop {
            let verdict = {
                let mut io = lock(&conn.io);
                let verdict = self.step(conn, &mut io);
                if let Verdict::Close = verdict {
                    self.close(conn, &mut io);
                    return;
                }
                self.shared.pace(conn, &mut io);
                verdict
            };
            if let Verdict::Keep(at) = verdict {
                self.shared.schedule(conn, at);
            }
            // Given back; an event, timer or stop that came meanwhile (AGAIN)
            // makes it look once more. The poller dispatches every connection
            // at the stop and at the cut, so none is missed.
            if conn
                .state
                .compare_exchange(BUSY, IDLE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return;
            }
            conn.state.store(BUSY, Ordering::SeqCst);
        }
    }

    fn close(&mut self, conn: &Conn, io: &mut ConnIo) {
        self.shared.close(conn, io);
    }

    /// Does everything that can be done now without blocking.
    fn step(&mut self, conn: &Conn, io: &mut ConnIo) -> Verdict {
        let now = mono();
        let shared = self.shared;
        if io.stream.is_none() {
            return Verdict::Close;
        }
        if shared.cut.load(Ordering::SeqCst) {
            if !owes(io) && io.after == After::Continue && mid_request(io) {
                // A request still arriving when the grace ran out: told to
                // come back, never blamed for it.
                let response = api::error(503, "the server is stopping; try again");
                let mut out = Vec::new();
                let _ = http::write_response(&mut out, &response, false, false, &date());
                if let Some(stream) = &io.stream {
                    let _ = (&*stream).write(&out);
                }
            }
            return Verdict::Close;
        }
        let due = conn.deadline.load(Ordering::SeqCst) <= now;
        match &mut io.phase {
            Phase::Lingering { until, budget } => {
                let (until, mut left) = (*until, *budget);
                if due || now >= until {
                    return Verdict::Close;
                }
                let Some(stream) = &io.stream else {
                    return Verdict::Close;
                };
                loop {
                    match (&*stream).read(&mut self.scratch) {
                        Ok(0) => return Verdict::Close,
                        Ok(n) if n >= left => return Verdict::Close,
                        Ok(n) => left -= n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Verdict::Close,
                    }
                }
                io.phase = Phase::Lingering {
                    until,
                    budget: left,
                };
                return Verdict::Keep(until);
            }
            Phase::Parked(_) => return self.parked(conn, io, now),
            Phase::Open => {}
        }
        if due {
            // Idle too long, a request too slow to arrive, or an answer too
            // slow to be taken: closed without a word, as before.
            return Verdict::Close;
        }
        self.open(conn, io, now)
    }

    /// A parked watch: woken, due, or the server stopping.
    fn parked(&mut self, conn: &Conn, io: &mut ConnIo, now: Millis) -> Verdict {
        let Phase::Parked(parked) = &io.phase else {
            return Verdict::Close;
        };
        let deadline = parked.1;
        let stopping = self.shared.stopping();
        let answer = conn.woken.swap(false, Ordering::SeqCst) || now >= deadline || stopping;
        // Staying parked: the client may have gone away, or sent its next
        // request early. (Answered now, the socket is read after the answer,
        // as for any request: a read here would cost each of 10,000 woken
        // watchers a system call that finds nothing.)
        if !answer && !self.read_while_parked(io) {
            return Verdict::Close;
        }
        if !self.flush(io) {
            return Verdict::Close;
        }
        if !answer {
            return Verdict::Keep(deadline);
        }
        let Phase::Parked(parked) = std::mem::replace(&mut io.phase, Phase::Open) else {
            return Verdict::Close;
        };
        let (request, _) = *parked;
        lock(&self.shared.watches).unpark(conn.slot, conn.id);
        if let Some(verdict) = self.answer(
            conn,
            io,
            request,
            now >= deadline || stopping,
            Some(deadline),
        ) {
            // Woken for nothing and parked again: what came meanwhile is
            // read now, as it would have been.
            if !self.read_while_parked(io) {
                return Verdict::Close;
            }
            return verdict;
        }
        self.open(conn, io, now)
    }

    /// Reads what a parked watch's client sent (kept for after the
    /// answer); false when it hung up or the socket failed.
    fn read_while_parked(&mut self, io: &mut ConnIo) -> bool {
        let Some(stream) = &io.stream else {
            return false;
        };
        loop {
            if io.pending.len() > http::MAX_HEADER_BYTES + http::MAX_CHUNKED_RAW {
                return true;
            }
            match (&*stream).read(&mut self.scratch) {
                Ok(0) => return false,
                Ok(n) => io.pending.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Handles one request; `Some` when it was parked.
    fn answer(
        &mut self,
        conn: &Conn,
        io: &mut ConnIo,
        request: Request,
        answer_now: bool,
        first_deadline: Option<Millis>,
    ) -> Option<Verdict> {
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        // One reading of each clock serves the handler, the duration
        // metric, the idle timer and the `Date` header.
        let started = Instant::now();
        let now = clock::at(started);
        let (response, done) = match self.shared.api.handle(&request, now, answer_now) {
            Outcome::Respond(response) => {
                let done = Instant::now();
                self.shared.api.log().metrics().request(
                    &request.method,
                    &request.target,
                    response.status,
                    done.saturating_duration_since(started),
                );
                (response, done)
            }
            Outcome::Wait(wait) => {
                // A watch woken for nothing keeps the deadline it first had.
                let deadline = clock::mono_of(wait.deadline).min(first_deadline.unwrap_or(NEVER));
                lock(&self.shared.watches).park(conn.slot, conn.id, wait.topic);
                io.phase = Phase::Parked(Box::new((request, deadline)));
                if self.shared.epoch.load(Ordering::SeqCst) != epoch {
                    // Something changed between the look and the parking.
                    conn.woken.store(true, Ordering::SeqCst);
                    return Some(Verdict::Keep(0));
                }
                return Some(Verdict::Keep(deadline));
            }
        };
        let keep_alive = request.keep_alive && !self.shared.stopping();
        let out = if io.out.is_empty() {
            &mut self.out
        } else {
            &mut io.out
        };
        let date = date_at(now.wall / 1000);
        // Nothing is answered while a large body is owed (`handle_all`
        // stops), so no answer can overtake one.
        debug_assert!(io.tail.is_empty());
        if response.body.len() >= TAIL_BODY && !request.is_head() {
            // A large listing is written from the buffer it was encoded
            // into: no second copy, and no second allocation to fault in.
            http::encode_head(out, &response, keep_alive, &date);
            io.tail = response.body;
            io.tail_pos = 0;
        } else {
            http::encode_response(out, &response, request.is_head(), keep_alive, &date);
        }
        if !keep_alive {
            io.after = After::Close;
        }
        io.idle_since = clock::mono_of(done);
        None
    }

    /// An open connection: write what is owed, handle what has arrived, read
    /// what is there, until the socket would block.
    fn open(&mut self, conn: &Conn, io: &mut ConnIo, now: Millis) -> Verdict {
        let mut drained = false;
        loop {
            // 1. What is owed goes out first.
            if !self.flush(io) {
                return Verdict::Close;
            }
            if owes(io) {
                let started = *io.write_started.get_or_insert(now);
                return Verdict::Keep(started + millis(self.shared.config.request_timeout));
            }
            io.write_started = None;
            match io.after {
                After::Continue => {}
                After::Close => return Verdict::Close,
                After::Linger => {
                    if let Some(stream) = &io.stream {
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                    io.pending = Vec::new();
                    io.phase = Phase::Lingering {
                        until: now + LINGER,
                        budget: LINGER_BYTES,
                    };
                    return self.step(conn, io);
                }
            }
            // 2. Requests already here.
            if !io.pending.is_empty() {
                let pending = std::mem::take(&mut io.pending);
                let used = self.handle_all(conn, io, &pending);
                if matches!(io.phase, Phase::Parked(_)) {
                    io.pending = pending[used..].to_vec();
                    return self.step_parked_keep(conn, io);
                }
                if used < pending.len() {
                    io.pending = if used == 0 {
                        pending
                    } else {
                        pending[used..].to_vec()
                    };
                }
                if !self.out.is_empty() || io.after != After::Continue {
                    self.stash_out(io);
                    continue;
                }
            }
            if io.eof {
                if io.pending.is_empty() {
                    return Verdict::Close;
                }
                let response = api::error(
                    400,
                    "malformed request: connection closed inside the request",
                );
                http::encode_response(&mut self.out, &response, false, false, &date());
                io.pending = Vec::new();
                io.after = After::Close;
                self.stash_out(io);
                continue;
            }
            if drained {
                break;
            }
            // 4. Read what is there.
            let Some(stream) = &io.stream else {
                return Verdict::Close;
            };
            let n = match (&*stream).read(&mut self.scratch) {
                Ok(0) => {
                    io.eof = true;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Verdict::Close,
            };
            // A short read emptied the socket: edge-triggered readiness
            // reports the next bytes as a new event. Unless the peer has shut
            // its side: its end of file may have come with these bytes, in
            // the same event, and only another read sees it.
            drained = n < self.scratch.len() && !conn.peer_closed.load(Ordering::SeqCst);
            io.read_some = true;
            if n < SMALL_READ {
                io.small_reads = io.small_reads.saturating_add(1);
            }
            if io.pending.is_empty() {
                let scratch = std::mem::take(&mut self.scratch);
                let used = self.handle_all(conn, io, &scratch[..n]);
                if used < n {
                    io.pending = scratch[used..n].to_vec();
                }
                self.scratch = scratch;
                if matches!(io.phase, Phase::Parked(_)) {
                    return self.step_parked_keep(conn, io);
                }
                self.stash_out(io);
            } else {
                io.pending.extend_from_slice(&self.scratch[..n]);
            }
        }
        if io.pending.is_empty() {
            // A stop closes a connection between requests.
            if self.shared.stopping() {
                return Verdict::Close;
            }
            io.request_started = None;
            io.pending = Vec::new();
            Verdict::Keep(io.idle_since.max(now) + millis(self.shared.config.idle_timeout))
        } else {
            let started = *io.request_started.get_or_insert(now);
            Verdict::Keep(started + millis(self.shared.config.request_timeout))
        }
    }

    /// After parking: output still owed is flushed on the next event.
    fn step_parked_keep(&mut self, conn: &Conn, io: &mut ConnIo) -> Verdict {
        self.stash_out(io);
        if !self.flush(io) {
            return Verdict::Close;
        }
        if conn.woken.load(Ordering::SeqCst) {
            return Verdict::Keep(0);
        }
        match &io.phase {
            Phase::Parked(p) => Verdict::Keep(p.1),
            _ => Verdict::Keep(0),
        }
    }

    /// Parses and handles every whole request at the start of `data`;
    /// returns how many bytes they took. Answers go to `self.out` (or to the
    /// connection's output, if some is still owed).
    fn handle_all(&mut self, conn: &Conn, io: &mut ConnIo, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() && io.after == After::Continue {
            if self.out.len() + io.out.len() > OUT_BATCH || !io.tail.is_empty() {
                break;
            }
            match io.parser.parse(&data[used..]) {
                Ok(Parsed::Complete {
                    mut request,
                    consumed,
                }) => {
                    used += consumed;
                    io.parser = Parser::default();
                    io.continued = false;
                    io.request_started = None;
                    io.small_reads = 0;
                    request.peer = io.peer;
                    if let Some(verdict) =
                        self.answer(conn, io, request, self.shared.stopping(), None)
                    {
                        let _ = verdict;
                        return used;
                    }
                }
                Ok(Parsed::Partial { continue_due }) => {
                    if continue_due && !io.continued {
                        io.continued = true;
                        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    if io.request_started.is_none() {
                        io.request_started = Some(mono());
                    }
                    return used;
                }
                Err(e) => {
                    io.parser = Parser::default();
                    match e.status() {
                        Some(status) => {
                            self.shared
                                .api
                                .log()
                                .metrics()
                                .request("", "", status, Duration::ZERO);
                            let response = api::error(status, e.to_string());
                            let out = if io.out.is_empty() {
                                &mut self.out
                            } else {
                                &mut io.out
                            };
                            http::encode_response(out, &response, false, false, &date());
                            io.after = After::Linger;
                        }
                        None => io.after = After::Close,
                    }
                    return data.len();
                }
            }
        }
        used
    }

    /// Moves the worker's pending output to the connection, so that `flush`
    /// sends it.
    fn stash_out(&mut self, io: &mut ConnIo) {
        if self.out.is_empty() {
            return;
        }
        if io.out.is_empty() {
            std::mem::swap(&mut io.out, &mut self.out);
            io.out_pos = 0;
        } else {
            io.out.extend_from_slice(&self.out);
            self.out.clear();
        }
    }

    /// Writes what the connection owes until done or the socket would block.
    /// False when the connection failed.
    fn flush(&mut self, io: &mut ConnIo) -> bool {
        self.stash_out(io);
        let Some(stream) = &io.stream else {
            return false;
        };
        match write_from(stream, &io.out, &mut io.out_pos) {
            Ok(true) => {}
            Ok(false) => return true,
            Err(()) => return false,
        }
        // Written: the buffer goes back to the worker (or away if large).
        if !io.out.is_empty() {
            let mut done = std::mem::take(&mut io.out);
            io.out_pos = 0;
            done.clear();
            if done.capacity() <= KEEP_OUT && done.capacity() > self.out.capacity() {
                self.out = done;
            }
        }
        match write_from(stream, &io.tail, &mut io.tail_pos) {
            Ok(true) => {}
            Ok(false) => return true,
            Err(()) => return false,
        }
        io.tail = Vec::new();
        io.tail_pos = 0;
        true
    }
}

/// Writes `buf` from `*pos` on: `Ok(true)` once all of it is written,
/// `Ok(false)` when the socket would block, `Err` when the connection failed.
fn write_from(stream: &TcpStream, buf: &[u8], pos: &mut usize) -> Result<bool, ()> {
    while *pos < buf.len() {
        match (&*stream).write(&buf[*pos..]) {
            Ok(0) => return Err(()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(true)
}

/// Whether the connection has output the client has not taken yet.
fn owes(io: &ConnIo) -> bool {
    !io.out.is_empty() || !io.tail.is_empty()
}

/// Whether part of a request has arrived and not been answered.
fn mid_request(io: &ConnIo) -> bool {
    !io.pending.is_empty()
}

/// Socket errors after which accept() can simply be called again.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
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

    fn app(name: &str) -> Topic {
        Topic::App(Arc::from(name))
    }

    fn sorted(mut v: Vec<(usize, u64)>) -> Vec<(usize, u64)> {
        v.sort_unstable();
        v
    }

    #[test]
    fn parked_watches_wake_on_their_topic_only_and_once() {
        let mut w = Watches::default();
        w.park(1, 10, app("web"));
        w.park(2, 20, app("web"));
        w.park(3, 30, Topic::All);
        w.park(4, 40, app("db"));
        assert_eq!(w.woken(&[app("api")]), []);
        assert_eq!(sorted(w.woken(&[app("web")])), [(1, 10), (2, 20)]);
        // Woken once: parked again only by handling the request again.
        assert_eq!(w.woken(&[app("web")]), []);
        // An app's change is notified with `All` too (the API sends both).
        assert_eq!(
            sorted(w.woken(&[app("db"), Topic::All])),
            [(3, 30), (4, 40)]
        );
        assert!(w.of.is_empty() && w.by_topic.is_empty());
    }

    #[test]
    fn a_closed_or_reparked_connection_is_not_woken_for_its_old_topic() {
        let mut w = Watches::default();
        w.park(1, 10, app("web"));
        w.park(2, 20, app("web"));
        w.unpark(1, 10);
        // The slot reused by another connection: its id differs.
        w.unpark(2, 21);
        w.park(2, 20, Topic::All);
        assert_eq!(w.woken(&[app("web")]), []);
        assert_eq!(w.woken(&[Topic::All]), [(2, 20)]);
        assert!(w.by_topic.is_empty());
    }

    #[test]
    fn timers_fire_in_deadline_order_and_not_before() {
        let mut t = Timers::default();
        assert_eq!(t.next(), NEVER);
        t.push(500, 1, 10);
        t.push(100, 2, 20);
        t.push(300, 3, 30);
        assert_eq!(t.next(), 100);
        assert_eq!(t.pop_due(99), None);
        assert_eq!(t.pop_due(300), Some((2, 20)));
        assert_eq!(t.pop_due(300), Some((3, 30)));
        assert_eq!(t.pop_due(300), None);
        assert_eq!(t.next(), 500);
        assert_eq!(t.pop_due(u64::MAX - 1), Some((1, 10)));
    }

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
