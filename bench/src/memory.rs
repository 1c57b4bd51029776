//! Scenario "memory": the largest fleet registered into fresh servers: the
//! registration rate, the resident bytes per instance (every fill of that
//! size in this run counts, the hb and sweep scenarios' too), once more
//! with 16 instances per address (as on shared hosts, since an address
//! shared by several instances may be stored once), and the idle server's
//! resident memory (every registry server started in this run).

use crate::load::Fleet;
use crate::report::{bytes, count, median_of, thousands, Section, Verdict};
use crate::{Bench, Filled, Seen, FULL_SIZES};

/// Instances per address in the shared-address run.
const SHARED: usize = 16;

pub fn run(bench: &mut Bench) -> Result<String, String> {
    let n = bench.s.sizes[2];
    let mut shared = Vec::new();
    for (b, _, tag) in bench.binaries() {
        while at_size(&bench.seen[b], n).len() < bench.s.heavy_runs() {
            let server = bench.start(b, &format!("registro-memory{tag}"), &[])?;
            bench.fill(b, &server, Fleet::new(n), false)?;
            bench.stop(server);
        }
        let server = bench.start(b, &format!("registro-memory-shared{tag}"), &[])?;
        let fleet = Fleet {
            n,
            hosts: n / SHARED,
        };
        let filled = bench.fill(b, &server, fleet, false)?;
        bench.seen[b].fills.pop(); // not one of the fleets of its own addresses
        shared.push(filled.per_instance);
        bench.stop(server);
    }
    Ok(render(bench, &shared))
}

fn at_size(seen: &Seen, n: usize) -> Vec<Filled> {
    seen.fills.iter().filter(|f| f.n == n).copied().collect()
}

fn render(bench: &Bench, shared: &[f64]) -> String {
    let n = bench.s.sizes[2];
    let figures = |seen: &Seen| {
        let fills = at_size(seen, n);
        let idle = median_of(&seen.idle_rss, |&b| b as f64);
        let idle = if idle.is_finite() {
            bytes(idle as u64)
        } else {
            "n/a".into()
        };
        (
            median_of(&fills, |f| f.rate),
            median_of(&fills, |f| f.per_instance),
            idle,
        )
    };
    let (rate, per_instance, idle) = figures(&bench.seen[0]);
    let mut sec = Section::new("");
    sec.table(&["Other figure", "median"]);
    sec.row(&[
        &format_args!(
            "Registering {} instances ({} connections, {} requests pipelined on each)",
            count(n),
            crate::load::REG_CONNS,
            crate::load::REG_DEPTH
        ),
        &format_args!("{}/s", thousands(rate)),
    ]);
    sec.row(&[
        &format_args!("Resident memory per instance at {} instances", count(n)),
        &format_args!("{per_instance:.0} B"),
    ]);
    sec.row(&[
        &format_args!("The same with {SHARED} instances per address (one run)"),
        &format_args!("{:.0} B", shared[0]),
    ]);
    sec.row(&[
        &format_args!(
            "Resident memory of the idle server ({} starts)",
            bench.seen[0].idle_rss.len()
        ),
        &idle,
    ]);
    // A fleet smaller than a million shows the server's fixed overhead
    // spread over few instances, not what each costs.
    sec.target(
        "At most 200 B resident per instance, at 1,000,000 instances",
        format_args!(
            "{per_instance:.0} B at {} (each instance at its own address)",
            count(n)
        ),
        Verdict::check(per_instance, |b| b <= 200.0).at_size(n >= FULL_SIZES[2]),
    );
    let idle_rss = median_of(&bench.seen[0].idle_rss, |&b| b as f64);
    sec.target(
        "Idle server under 5 MB resident",
        &idle,
        Verdict::check(idle_rss, |b| b < 5e6),
    );
    if bench.s.reference.is_some() {
        let (rate_b, per_b, idle_b) = figures(&bench.seen[1]);
        sec.text(format_args!("The same against {}:", bench.s.before_name()));
        sec.table(&["Other figure", "now", "before"]);
        sec.row(&[
            &format_args!("Registering {} instances", count(n)),
            &format_args!("{}/s", thousands(rate)),
            &format_args!("{}/s", thousands(rate_b)),
        ]);
        sec.row(&[
            &format_args!("Resident memory per instance at {} instances", count(n)),
            &format_args!("{per_instance:.0} B"),
            &format_args!("{per_b:.0} B"),
        ]);
        sec.row(&[&"Resident memory of the idle server", &idle, &idle_b]);
    }
    sec.finish()
}
