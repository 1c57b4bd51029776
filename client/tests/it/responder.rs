//! A scripted stand-in for a registry, for behaviour the real server cannot
//! be made to show on demand: answering slowly, demanding a token before the
//! server's access control is merged, or sending what the original Go server
//! sends. One connection at a time, one answer per connection
//! (`Connection: close`); it records every request it reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use registro_client::Client;

/// One request as the responder read it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// E.g. `"PUT"`.
    pub method: String,
    /// The request target, query included: `/registro/1.0/apps/web?status=up`.
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body, as text.
    pub body: String,
}

impl Seen {
    /// `"PUT /registro/1.0/apps/web/web-1"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }
}

/// What to answer.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Answer {
    pub fn new(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_owned(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

type Handler = Box<dyn FnMut(&Seen) -> Answer + Send>;

pub struct Responder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn start(handler: impl FnMut(&Seen) -> Answer + Send + 'static) -> Responder {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("cannot bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("no address: {e}"),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut handler: Handler = Box::new(handler);
        let thread = {
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                while let Ok((stream, _)) = listener.accept() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    serve(stream, &mut handler, &seen);
                }
            })
        };
        Responder {
            addr,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn root(&self) -> String {
        format!("http://{}/registro", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::new(self.root())
    }

    /// Every request read so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }

    /// The request lines read so far.
    pub fn lines(&self) -> Vec<String> {
        self.seen().iter().map(Seen::line).collect()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept.
        drop(TcpStream::connect(self.addr));
        if let Some(thread) = self.thread.take() {
            drop(thread.join());
        }
    }
}

fn lock(seen: &Mutex<Vec<Seen>>) -> MutexGuard<'_, Vec<Seen>> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

fn serve(stream: TcpStream, handler: &mut Handler, seen: &Mutex<Vec<Seen>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    let mut length = 0;
    let mut authorization = None;
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if request_line.is_empty() {
            request_line = line.trim_end().to_owned();
        } else if line == "\r\n" {
            break;
        } else if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
        line.clear();
    }
    if request_line.is_empty() {
        return; // the wake-up connection, or a client that gave up
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut parts = request_line.split(' ');
    let request = Seen {
        method: parts.next().unwrap_or_default().to_owned(),
        target: parts.next().unwrap_or_default().to_owned(),
        authorization,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    lock(seen).push(request.clone());
    let answer = handler(&request);
    if !answer.delay.is_zero() {
        // The registry being slow is the point of such an answer.
        thread::sleep(answer.delay);
    }
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(&answer.body);
    let _ = reader.get_mut().write_all(head.as_bytes());
}
