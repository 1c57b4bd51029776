//! `registro_dns_queries_total{type,rcode}`: queries by type (7 values) and
//! response code (7 values, `dropped` for what got no answer), so no asker
//! can grow the table. Added to the server's metrics when DNS is on.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::answer::Kind;
use super::wire::Rcode;

const RCODES: [Option<Rcode>; 7] = [
    Some(Rcode::NoError),
    Some(Rcode::FormErr),
    Some(Rcode::NxDomain),
    Some(Rcode::NotImp),
    Some(Rcode::Refused),
    Some(Rcode::BadVers),
    None,
];

fn rcode_label(rcode: Option<Rcode>) -> &'static str {
    match rcode {
        Some(Rcode::NoError) => "NOERROR",
        Some(Rcode::FormErr) => "FORMERR",
        Some(Rcode::NxDomain) => "NXDOMAIN",
        Some(Rcode::NotImp) => "NOTIMP",
        Some(Rcode::Refused) => "REFUSED",
        Some(Rcode::BadVers) => "BADVERS",
        None => "dropped",
    }
}

/// DNS queries counted by type and response code: two threads add, so
/// plain relaxed atomics (no shards).
#[derive(Debug, Default)]
pub struct Queries {
    counts: [[AtomicU64; RCODES.len()]; Kind::ALL.len()],
}

impl Queries {
    /// One query answered with `rcode` (`None`: dropped).
    pub fn count(&self, kind: Kind, rcode: Option<Rcode>) {
        let k = Kind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        let r = RCODES.iter().position(|&r| r == rcode).unwrap_or(0);
        self.counts[k][r].fetch_add(1, Relaxed);
    }
}

impl crate::metrics::Family for Queries {
    fn render(&self, o: &mut String) {
        let name = "registro_dns_queries_total";
        let _ = writeln!(
            o,
            "# HELP {name} DNS queries, by query type and response code (dropped: no answer).\n# TYPE {name} counter"
        );
        for (k, kind) in Kind::ALL.iter().enumerate() {
            for (r, &rcode) in RCODES.iter().enumerate() {
                let n = self.counts[k][r].load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "{name}{{type=\"{}\",rcode=\"{}\"}} {n}",
                        kind.label(),
                        rcode_label(rcode)
                    );
                }
            }
        }
    }
}
