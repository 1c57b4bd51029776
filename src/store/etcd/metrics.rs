//! `registro_store_requests_total{op,result}` and
//! `registro_store_request_duration_seconds{op}`: atomics, labels fixed;
//! and the view's freshness: `registro_store_last_contact_seconds`,
//! `registro_store_watch_member{member}` (a label per configured member).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The calls made to etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A range (start, compaction, health probe).
    Range,
    /// A transaction (every change).
    Txn,
    /// A lease grant (a first heartbeat).
    Grant,
    /// A batch of lease keep-alives.
    KeepAlive,
    /// A watch stream opened.
    Watch,
    /// An unused lease revoked.
    Revoke,
}

const OPS: [(Op, &str); 6] = [
    (Op::Range, "range"),
    (Op::Txn, "txn"),
    (Op::Grant, "grant"),
    (Op::KeepAlive, "keepalive"),
    (Op::Watch, "watch"),
    (Op::Revoke, "revoke"),
];

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// A transaction whose compare failed (a concurrent change).
    Conflict,
    /// Refused with a 4xx.
    Refused,
    /// No member answered in time.
    Unreachable,
}

const OUTCOMES: [&str; 4] = ["ok", "conflict", "refused", "unreachable"];

/// Upper bounds of the duration buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The counters.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    counts: [[AtomicU64; 4]; 6],
    buckets: [[AtomicU64; 12]; 6],
    sum_micros: [AtomicU64; 6],
}

impl StoreMetrics {
    /// Counts one call.
    pub fn record(&self, op: Op, outcome: Outcome, took: Duration) {
        let o = op as usize;
        self.counts[o][outcome as usize].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[o][b].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros[o].fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends both families in text format 0.0.4.
    pub fn render(&self, out: &mut String) {
        let name = "registro_store_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} Calls to the store (etcd), by operation and outcome."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for (op, label) in OPS {
            for (r, result) in OUTCOMES.iter().enumerate() {
                let n = self.counts[op as usize][r].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{op=\"{label}\",result=\"{result}\"}} {n}");
            }
        }
        let name = "registro_store_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time of the calls to the store (etcd), by operation."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (op, label) in OPS {
            let o = op as usize;
            let mut total = 0;
            for (b, bound) in BUCKETS.iter().enumerate() {
                total += self.buckets[o][b].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{op=\"{label}\",le=\"{bound}\"}} {total}"
                );
            }
            total += self.buckets[o][BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{op=\"{label}\",le=\"+Inf\"}} {total}");
            let sum = self.sum_micros[o].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{op=\"{label}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{op=\"{label}\"}} {total}");
        }
    }
}

/// Appends the view's freshness: seconds since it last heard from etcd,
/// and which of `members` its watch is on (1 for that one, 0 for the rest).
pub fn render_view(out: &mut String, silent_ms: u64, members: &[String], watching: usize) {
    let name = "registro_store_last_contact_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time since the server's view last heard from etcd (its watch)."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {}", silent_ms as f64 / 1000.0);
    let name = "registro_store_watch_member";
    let _ = writeln!(
        out,
        "# HELP {name} The etcd member the server's watch is on (1), by member."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (i, member) in members.iter().enumerate() {
        let on = u8::from(i == watching);
        let _ = writeln!(out, "{name}{{member=\"{member}\"}} {on}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_labels_fixed() {
        let m = StoreMetrics::default();
        m.record(Op::Txn, Outcome::Ok, Duration::from_millis(3));
        m.record(Op::Txn, Outcome::Conflict, Duration::from_secs(9));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("registro_store_requests_total{op=\"txn\",result=\"ok\"} 1\n"));
        assert!(out.contains(
            "registro_store_request_duration_seconds_bucket{op=\"txn\",le=\"0.005\"} 1\n"
        ));
        assert!(out.contains(
            "registro_store_request_duration_seconds_bucket{op=\"txn\",le=\"+Inf\"} 2\n"
        ));
        assert!(out.contains("registro_store_request_duration_seconds_count{op=\"txn\"} 2\n"));
        assert_eq!(
            out.lines().filter(|l| !l.starts_with('#')).count(),
            6 * 4 + 6 * 14
        );
    }
}
