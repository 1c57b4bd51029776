//! The baseline: a bare tiny_http server answering every request with an
//! empty 204, touching no registry. It runs as a child process of this
//! binary (`--baseline-server`) so it is measured exactly like the registry
//! server, and it stops when its stdin closes.

use std::io::Read;
use std::sync::Arc;
use std::thread;

/// Serves until stdin reaches end of file, then unblocks and joins every
/// worker. Prints `listening on 127.0.0.1:PORT` on stderr once bound.
pub fn serve(workers: usize) -> Result<(), String> {
    let server =
        tiny_http::Server::http("127.0.0.1:0").map_err(|e| format!("baseline: bind: {e}"))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| "baseline: not an IP listener".to_string())?;
    let server = Arc::new(server);
    let handles: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let server = Arc::clone(&server);
            thread::spawn(move || {
                // recv() fails once unblock() is called: that ends the worker.
                while let Ok(request) = server.recv() {
                    let _ = request.respond(tiny_http::Response::empty(204));
                }
            })
        })
        .collect();
    eprintln!("baseline listening on {addr}");
    // Block until the parent closes our stdin (or dies).
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    for _ in &handles {
        server.unblock();
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
