//! `stop_on_signals` in a child process: the `signal` example's code, run
//! by this test binary started again as the child, then sent SIGTERM or
//! SIGINT. Its instance reads `out-of-service` as soon as the child is gone.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use registro_client::Status;

use crate::support::{client, root, server, status};

#[allow(dead_code)] // its `main` is the example's, not the child's
#[path = "../../examples/signal.rs"]
mod example;

/// Set in the child's environment: the registry's root URL and the id.
const CHILD_ROOT: &str = "REGISTRO_SIGNAL_CHILD_ROOT";
const CHILD_ID: &str = "REGISTRO_SIGNAL_CHILD_ID";

/// The child: runs the example until a signal ends the process. In the
/// test run itself (no such variable), does nothing.
#[test]
fn child() {
    if let (Ok(root), Ok(id)) = (std::env::var(CHILD_ROOT), std::env::var(CHILD_ID)) {
        if let Err(e) = example::run(&root, &id) {
            panic!("the example failed: {e}");
        }
    }
}

#[test]
fn sigterm_and_sigint_deregister_before_the_process_ends() {
    let server = server();
    let c = client(&server);
    use rustix::process::{kill_process, Pid, Signal};
    for (signal, number, name) in [(Signal::TERM, 15, "TERM"), (Signal::INT, 2, "INT")] {
        let id = format!("child-{name}");
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => panic!("no test binary path: {e}"),
        };
        let spawned = Command::new(exe)
            .args([
                "--exact",
                "signal::child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ROOT, root(server.local_addr()))
            .env(CHILD_ID, &id)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => panic!("cannot start the child: {e}"),
        };
        // Its line once the handlers are in place, read on a thread so that
        // a child that never says it is bounded by a deadline.
        let (said, heard) = mpsc::channel();
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("registered") {
                    let _ = said.send(line);
                }
            }
        });
        let line = heard.recv_timeout(Duration::from_secs(30));
        if line.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child never said it was registered");
        }
        assert_eq!(status(&c, "signal-example", &id), Some(Status::Up));

        let sent = kill_process(Pid::from_child(&child), signal);
        assert!(sent.is_ok(), "SIG{name} not sent: {sent:?}");
        let ended = child.wait();
        assert!(
            ended.as_ref().is_ok_and(|s| s.signal() == Some(number)),
            "the child should end by SIG{name} as by default: {ended:?}"
        );
        // Right after: no waiting, no polling.
        assert_eq!(
            status(&c, "signal-example", &id),
            Some(Status::OutOfService),
            "SIG{name}"
        );
        let _ = reader.join();
    }
}
