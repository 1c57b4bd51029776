//! The UDP thread: read a datagram, answer it, read the next. One thread,
//! so a flood takes at most one core, and below the HTTP threads' priority.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use super::answer::Transport;
use super::wire::MAX_QUERY;
use super::{Rng, Shared};

pub(super) fn serve(socket: &UdpSocket, shared: &Shared) {
    super::demote();
    // One byte more than a query may have, so a longer one is seen as such
    // (the kernel cuts a datagram to the buffer silently).
    let mut buf = vec![0u8; MAX_QUERY + 1];
    let mut rng = Rng::new();
    let mut logged: Option<Instant> = None;
    while !shared.stopping() {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(read) => read,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                // Not a datagram's fault (the socket's, the system's):
                // logged every 10 s at most, retried after a pause so that a
                // lasting error does not spin.
                if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    logged = Some(Instant::now());
                    shared
                        .view
                        .log()
                        .line(format_args!("DNS: UDP read failed: {e}"));
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.stopping() {
            break;
        }
        if let Some(answer) = shared.answer(&buf[..n], Transport::Udp, &mut rng) {
            // A lost answer is the asker's to retry, as any UDP loss.
            let _ = socket.send_to(&answer, peer);
        }
    }
}
