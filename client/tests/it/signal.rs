//! `stop_on_signals` in a child process: the `signal` example's code, run
//! by this test binary started again as the child, then sent SIGTERM or
//! SIGINT. Its instance reads `out-of-service` as soon as the child is gone.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use registro_client::{stop_on_signals, Client, Error, Status};
use rustix::process::{kill_process, Pid, Signal};

use crate::support::{client, root, server, status};

#[allow(dead_code)] // its `main` is the example's, not the child's
#[path = "../../examples/signal.rs"]
mod example;

/// Set in the child's environment: the registry's root URL, the id, and
/// `stopped` for a child that ends its `SignalStop` before the signal.
const CHILD_ROOT: &str = "REGISTRO_SIGNAL_CHILD_ROOT";
const CHILD_ID: &str = "REGISTRO_SIGNAL_CHILD_ID";
const CHILD_MODE: &str = "REGISTRO_SIGNAL_CHILD_MODE";

const LIMIT: Duration = Duration::from_secs(30);

/// The child: runs the example until a signal ends the process. In the
/// test run itself (no such variable), does nothing.
#[test]
fn child() {
    let (Ok(root), Ok(id)) = (std::env::var(CHILD_ROOT), std::env::var(CHILD_ID)) else {
        return;
    };
    let outcome = if std::env::var(CHILD_MODE).as_deref() == Ok("stopped") {
        stopped_then_waits(&root, &id)
    } else {
        example::run(&root, &id)
    };
    if let Err(e) = outcome {
        panic!("the child failed: {e}");
    }
}

/// Like the example, but ends its `SignalStop` at once, then waits: a
/// signal must then do its default action again.
fn stopped_then_waits(root: &str, id: &str) -> Result<(), Error> {
    let client = Client::new(root);
    let (app, inst) = client.register_service(id, "signal-example", "127.0.0.1", 8080)?;
    let signals = stop_on_signals([client.start_heartbeat(&app, &inst)])?;
    signals.stop()?;
    println!("{inst} registered, then deregistered");
    std::thread::sleep(Duration::from_secs(3600));
    Ok(())
}

/// Starts the child with this id and mode; returns once it has printed
/// its line (its handlers are in place).
fn start_child(root: &str, id: &str, mode: &str) -> Child {
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
        .env(CHILD_ROOT, root)
        .env(CHILD_ID, id)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => panic!("cannot start the child: {e}"),
    };
    // Read on a thread, so that a child that never says it is bounded by a
    // deadline; the thread ends with the child's stdout.
    let (said, heard) = mpsc::channel();
    let stdout = child.stdout.take();
    std::thread::spawn(move || {
        let Some(stdout) = stdout else { return };
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("registered") {
                let _ = said.send(line);
            }
        }
    });
    if heard.recv_timeout(LIMIT).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child {id} never said it was registered");
    }
    child
}

/// Sends `signal` and waits for the child to end, killing it at the limit.
fn signal_and_wait(child: &mut Child, signal: Signal) -> Option<ExitStatus> {
    let sent = kill_process(Pid::from_child(child), signal);
    assert!(sent.is_ok(), "{signal:?} not sent: {sent:?}");
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(Some(ended)) = child.try_wait() {
            return Some(ended);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigterm_and_sigint_deregister_before_the_process_ends() {
    let server = server();
    let c = client(&server);
    for (signal, number, name) in [(Signal::TERM, 15, "TERM"), (Signal::INT, 2, "INT")] {
        let id = format!("child-{name}");
        let mut child = start_child(&root(server.local_addr()), &id, "run");
        assert_eq!(status(&c, "signal-example", &id), Some(Status::Up));
        let ended = signal_and_wait(&mut child, signal);
        assert!(
            ended.is_some_and(|s| s.signal() == Some(number)),
            "the child should end by SIG{name} as by default: {ended:?}"
        );
        // Right after: no waiting, no polling.
        assert_eq!(
            status(&c, "signal-example", &id),
            Some(Status::OutOfService),
            "SIG{name}"
        );
    }
}

#[test]
fn after_a_normal_stop_sigterm_ends_the_process_as_by_default() {
    let server = server();
    let c = client(&server);
    let mut child = start_child(&root(server.local_addr()), "child-stopped", "stopped");
    assert_eq!(
        status(&c, "signal-example", "child-stopped"),
        Some(Status::OutOfService)
    );
    let ended = signal_and_wait(&mut child, Signal::TERM);
    assert!(
        ended.is_some_and(|s| s.signal() == Some(15)),
        "SIGTERM was caught and ignored after the stop: {ended:?}"
    );
}

/// The heartbeats given to `stop_on_signals` stay readable: their renewals,
/// errors and state, until the normal end stops and deregisters them.
#[test]
fn the_heartbeats_stay_readable_after_stop_on_signals() -> Result<(), Error> {
    let server = server();
    let c = client(&server);
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.1", 8080)?;
    let (_, other) = c.register_service("web-2", "web", "10.0.0.2", 8080)?;
    let signals = stop_on_signals([
        c.start_heartbeat_every(&app, &inst, Duration::from_millis(50)),
        c.start_heartbeat_every(&app, &other, Duration::from_millis(50)),
    ])?;
    let beats = signals.heartbeats();
    assert_eq!(beats.len(), 2);
    assert_eq!(beats[0].instance().1.id, "web-1");
    assert_eq!(beats[1].instance().1.id, "web-2");
    let deadline = Instant::now() + LIMIT;
    while beats.iter().any(|hb| hb.renewals() < 3) {
        assert!(Instant::now() < deadline, "no renewals counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(beats
        .iter()
        .all(|hb| hb.is_running() && hb.last_error().is_none()));
    assert_eq!(status(&c, "web", "web-1"), Some(Status::Up));
    signals.stop()?;
    assert_eq!(status(&c, "web", "web-1"), Some(Status::OutOfService));
    assert_eq!(status(&c, "web", "web-2"), Some(Status::OutOfService));
    Ok(())
}
