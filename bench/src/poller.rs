//! What the fleet and the watchers, each thousands of connections driven by
//! one thread through a readiness poller (mio), share: opening a
//! connection, and telling when its connect is done.

use mio::net::TcpStream;
use mio::{Interest, Poll, Token};
use std::io;
use std::net::SocketAddr;

/// Connections being opened at once.
pub const RAMP: usize = 128;

/// Starts connecting to `addr`, registered for reading and writing under
/// `token`.
pub fn open(poll: &Poll, addr: SocketAddr, token: usize) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    poll.registry().register(
        &mut stream,
        Token(token),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(stream)
}

/// Whether the connect of `stream` is done (then with TCP_NODELAY):
/// false while in progress, an error when it failed.
pub fn connected(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => {
            let _ = stream.set_nodelay(true);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}
