//! The benchmark end to end in quick mode against the real server, so that
//! `make bench` cannot rot: every scenario must run, with no errors, and
//! every figure and target must be printed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's `registro` binary of this build profile, built if needed.
fn server() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_registro-bench"));
    let dir = bench.parent().unwrap_or(Path::new("."));
    let server = dir.join("registro");
    if !server.is_file() {
        // `cargo test -p registro-bench` alone does not build the server.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut build = Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "-p",
                "registro",
                "--bin",
                "registro",
                "--manifest-path",
            ])
            .arg(&manifest);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "building the server failed: {status:?}"
        );
    }
    server
}

#[test]
fn quick_mode_runs_every_scenario_against_the_real_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_registro-bench"))
        .arg("--quick")
        .arg("--server")
        .arg(server())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!("cannot run registro-bench: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for row in [
        "| Baseline: bare tiny_http, empty 204 |",
        "| Heartbeats, 100 instances |",
        "| Heartbeats, 1,000 instances |",
        "| Heartbeats, 3,000 instances |",
        "| Fresh connection per heartbeat, 300 instances |",
        "| Heartbeats while one more client reads the full listing of 1,000 instances",
        "| Registering 3,000 instances",
        "| Resident memory per instance at 3,000 instances |",
        "| The same with 16 instances per address (one run) |",
        "| Resident memory of the idle server",
        "| A logged pass of the ticker over the fleet of 3,000 with --down-after 3600",
        "| A logged pass of the ticker over the fleet of 3,000 with --down-after 0.05",
        "| Heartbeats at 100 instances >= 95% of the baseline |",
        "| Heartbeats at 3,000 instances >= 90% of the figure at 100 |",
        "| Heartbeat p99 < 5 ms at 32 connections |",
        "| Heartbeat p99 < 20 ms while the full listing of 1,000 is read in a loop |",
        "| At most 200 B resident per instance, at 1,000,000 instances |",
        "| Idle server under 5 MB resident |",
        "| A sweep at 3,000 instances delays no heartbeat by more than 10 ms |",
        "| No errors | 0 | met |",
        "| now | 200 of 200 | 200 / 200 / 200 |",
        "| before (`registro`) | 200 of 200 | 200 / 200 / 200 |",
        "| All 200 watchers answered within 100 ms of the change |",
        "| Heartbeats with the watchers waiting and answered >= 0.9x the same windows without |",
        "| Slowloris: every heartbeat answered, every connection held |",
        "| Fleet heartbeat p99 < 10 ms |",
        "## Pipelining",
        "| Pipelining (now): fresh-connection heartbeats beside them",
        "## Dashboard",
        "Machine: ",
        "Command: `make bench`",
        "## --data-dir",
    ] {
        assert!(
            stdout.contains(row),
            "missing {row:?} in:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // Each sweep scenario waits for 3 passes of the ticker that begin inside
    // its window, and counts every pass that overlaps the window: 3 or more,
    // how many more depending on timing. Fewer only when the window's
    // deadline passed first, and then the run says so.
    for down_after in ["3600", "0.05"] {
        let label = format!("--down-after {down_after} (one window over ");
        let sweeps = stdout
            .split(&label)
            .nth(1)
            .and_then(|rest| rest.split(" sweeps)").next())
            .and_then(|n| n.parse::<usize>().ok());
        match sweeps {
            Some(n) if n >= 3 => {}
            Some(n) if n >= 1 => assert!(
                stderr.contains(&format!("warning: only {n} whole sweeps observed")),
                "{n} sweeps with --down-after {down_after} and no warning:\n{stderr}"
            ),
            _ => panic!("no sweep row with --down-after {down_after} in:\n{stdout}"),
        }
    }
    // A target stated for a larger size than quick mode's is shown, not
    // judged (here the fleet of 15,000 against 500), nor called missed.
    assert!(
        stdout.contains(
            "| Fleet >= 15,000 connections, 0 errors, 0 non-2xx | 500 connected, 0 errors, 0 non-2xx | not measured at this size |"
        ),
        "{stdout}"
    );
    // Every figure was measured: nothing missing, nothing that failed, and
    // nothing unmeasured but for a size.
    let judged = stdout.replace("not measured at this size", "");
    for gap in ["not run", "not measured", "n/a", "NaN", "inf", "issue"] {
        assert!(
            !judged.contains(gap),
            "{gap:?} in:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}
