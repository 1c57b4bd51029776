//! Scenarios "hb", "fresh" and "mixed": closed-loop heartbeats on 32
//! keep-alive connections at three fleet sizes beside the bare tiny_http
//! baseline (hb), on a fresh connection per heartbeat (fresh), and while one
//! more client reads the full listing in a loop (mixed). Rounds are
//! interleaved so that drift on a shared machine hits every figure alike,
//! and what a ratio compares is measured back to back: the baseline beside
//! the smallest size, the two servers (with `--server`) at each size.

use crate::load::{Fleet, Outcome, Reader, ReaderOutcome, APPS};
use crate::proc::{ServerProc, Stop};
use crate::report::{count, median, median_of, ms, ms_f, pct, ratios, summary, thousands, times};
use crate::report::{Section, Verdict};
use crate::{measure, Bench, CONNS};
use std::process::Command;
use std::time::Duration;

/// What one binary showed.
#[derive(Default)]
struct Runs {
    /// Per size, one per round.
    heartbeats: [Vec<Outcome>; 3],
    fresh: Vec<Outcome>,
    mixed: Vec<(Outcome, ReaderOutcome)>,
}

/// Runs the scenarios asked for and returns their section.
pub fn run(bench: &mut Bench) -> Result<String, String> {
    let s = bench.s.clone();
    let mut runs: Vec<Runs> = bench.binaries().iter().map(|_| Runs::default()).collect();
    let mut baseline = Vec::new();
    let mut sized = Vec::new(); // (binary, size index, server)
    if s.wants("hb") {
        let base = start_baseline()?;
        for (b, _, tag) in bench.binaries() {
            for (k, &n) in s.sizes.iter().enumerate() {
                let server = bench.start(b, &format!("registro-{n}{tag}"), &[])?;
                bench.fill(b, &server, Fleet::new(n), true)?;
                sized.push((b, k, server));
            }
        }
        // One group per size: the servers back to back, and the baseline
        // beside the smallest; the groups rotate and each group's order
        // reverses round by round.
        let groups: Vec<Vec<Option<usize>>> = (0..s.sizes.len())
            .map(|k| {
                let at_k = sized.iter().enumerate().filter(|(_, x)| x.1 == k);
                let mut group: Vec<Option<usize>> = at_k.map(|(i, _)| Some(i)).collect();
                if k == 0 {
                    group.insert(0, None);
                }
                group
            })
            .collect();
        for round in 0..s.runs {
            for g in 0..groups.len() {
                let mut group = groups[(g + round) % groups.len()].clone();
                if round % 2 == 1 {
                    group.reverse();
                }
                for slot in group {
                    let (server, n) = match slot {
                        None => (&base, s.sizes[0]),
                        Some(i) => (&sized[i].2, s.sizes[sized[i].1]),
                    };
                    let o = measure(&bench.heartbeats(server.addr, n, round), server.pid());
                    bench.progress(format_args!(
                        "round {}: {}: {}",
                        round + 1,
                        server.name(),
                        summary(&o)
                    ));
                    match slot {
                        None => baseline.push(o),
                        Some(i) => runs[sized[i].0].heartbeats[sized[i].1].push(o),
                    }
                }
            }
        }
        bench.stop(base);
    }
    // "mixed" on the mid-sized servers (or fresh ones), rounds interleaved.
    let mut mixed = Vec::new();
    for (b, k, server) in sized {
        if k == 1 && s.wants("mixed") {
            mixed.push((b, server));
        } else {
            bench.stop(server);
        }
    }
    if s.wants("mixed") && mixed.is_empty() {
        mixed = filled(bench, "mixed", s.sizes[1])?;
    }
    interleave(bench, &mixed, |bench, b, server, round| {
        let reader = Reader::start(server.addr, s.secs * 3 + Duration::from_secs(5));
        let o = measure(
            &bench.heartbeats(server.addr, s.sizes[1], round),
            server.pid(),
        );
        let listing = reader.finish();
        bench.progress(format_args!(
            "round {}: heartbeats while listing ({}): {}; {} listings of {} (p50 {}), {} errors",
            round + 1,
            server.name(),
            summary(&o),
            listing.listings,
            crate::report::bytes(listing.bytes as u64),
            ms(listing.hist.quantile(0.5)),
            listing.errors
        ));
        runs[b].mixed.push((o, listing));
    });
    if s.wants("fresh") {
        let fresh = filled(bench, "fresh", s.fresh_n)?;
        interleave(bench, &fresh, |bench, b, server, round| {
            let mut load = bench.heartbeats(server.addr, s.fresh_n, round);
            load.fresh = true;
            let o = measure(&load, server.pid());
            bench.progress(format_args!(
                "round {}: fresh connections ({}): {}",
                round + 1,
                server.name(),
                summary(&o)
            ));
            runs[b].fresh.push(o);
        });
        fresh.into_iter().for_each(|(_, server)| bench.stop(server));
    }
    mixed.into_iter().for_each(|(_, server)| bench.stop(server));
    Ok(render(bench, &baseline, &runs))
}

/// A server of each binary with `n` instances registered and up.
fn filled(bench: &mut Bench, what: &str, n: usize) -> Result<Vec<(usize, ServerProc)>, String> {
    let mut servers = Vec::new();
    for (b, _, tag) in bench.binaries() {
        let server = bench.start(b, &format!("registro-{what}{tag}"), &[])?;
        bench.fill(b, &server, Fleet::new(n), true)?;
        servers.push((b, server));
    }
    Ok(servers)
}

/// `--runs` rounds of `measure` on each server, their order rotating.
fn interleave(
    bench: &mut Bench,
    servers: &[(usize, ServerProc)],
    mut measure: impl FnMut(&mut Bench, usize, &ServerProc, usize),
) {
    for round in 0..bench.s.runs {
        for j in 0..servers.len() {
            let (b, server) = &servers[(j + round) % servers.len()];
            measure(bench, *b, server, round);
        }
    }
}

fn start_baseline() -> Result<ServerProc, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own path: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--baseline-server");
    let server = ServerProc::start("baseline", cmd, Stop::CloseStdin)?;
    match crate::load::request_once(server.addr, crate::load::LISTING) {
        Ok((204, _)) => Ok(server),
        Ok((status, _)) => Err(format!("baseline answered {status}")),
        Err(e) => Err(format!("baseline: {e}")),
    }
}

/// Medians over runs of one row's figures.
struct Row {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    errors: u64,
    /// Server CPU time per successful request, in µs.
    cpu_us: f64,
    runs: usize,
}

fn row<'a>(runs: impl IntoIterator<Item = &'a Outcome>) -> Row {
    let runs: Vec<&Outcome> = runs.into_iter().collect();
    let q = |q: f64| median_of(&runs, |o| o.hist.quantile(q) as f64);
    Row {
        rate: median_of(&runs, |o| o.rate()),
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max: median_of(&runs, |o| o.hist.max() as f64),
        errors: runs.iter().map(|o| o.errors).sum(),
        cpu_us: median_of(&runs, |o| o.server_cpu * 1e6 / o.ok.max(1) as f64),
        runs: runs.len(),
    }
}

/// One row of the heartbeat table (medians over its runs).
pub fn push_row<'a>(sec: &mut Section, name: &str, runs: impl IntoIterator<Item = &'a Outcome>) {
    let r = row(runs);
    if r.runs == 0 {
        return sec.row(&[&name, &"not run", &"", &"", &"", &"", &"", &""]);
    }
    sec.row(&[
        &name,
        &thousands(r.rate),
        &ms_f(r.p50),
        &ms_f(r.p99),
        &ms_f(r.p999),
        &ms_f(r.max),
        &r.errors,
        &format!("{:.1} µs", r.cpu_us),
    ]);
}

/// The heartbeat table's columns.
pub const COLUMNS: [&str; 8] = [
    "Scenario",
    "requests/s",
    "p50",
    "p99",
    "p99.9",
    "max",
    "errors",
    "server CPU per request",
];

fn render(bench: &Bench, baseline: &[Outcome], runs: &[Runs]) -> String {
    let s = &bench.s;
    let [n1, n2, n3] = s.sizes.map(count);
    let r = &runs[0];
    let mut sec = Section::new("");
    sec.text(format_args!(
        "Every server is a fresh process on loopback. Heartbeat figures are medians of {} runs of {} s, the \
         baseline and the three fleet sizes interleaved round by round (the baseline beside the smallest size, \
         and with a second server, the two servers back to back at each size); {CONNS} keep-alive connections, one request \
         in flight on each, driven by {} load-generator threads on the same 2 cores. Instances are spread over {APPS} \
         apps, ids `i-0000000` (9 bytes), each at its own 10.x.y.z address, and renewed once before measuring (so \
         all are `up`). Memory and sweep figures are medians of {}.",
        s.runs,
        s.secs.as_secs_f64(),
        CONNS.div_ceil(s.per_thread),
        s.heavy_runs(),
    ));
    sec.table(&COLUMNS);
    push_row(&mut sec, "Baseline: bare tiny_http, empty 204", baseline);
    for (k, n) in [&n1, &n2, &n3].into_iter().enumerate() {
        push_row(
            &mut sec,
            &format!("Heartbeats, {n} instances"),
            &r.heartbeats[k],
        );
    }
    let fresh = format!(
        "Fresh connection per heartbeat, {} instances",
        count(s.fresh_n)
    );
    push_row(&mut sec, &fresh, &r.fresh);
    let listings = median_of(&r.mixed, |(o, l)| {
        l.listings as f64 / o.elapsed.as_secs_f64().max(1e-9)
    });
    let listing_bytes = r.mixed.last().map_or(0, |(_, l)| l.bytes as u64);
    let listing_p50 = median_of(&r.mixed, |(_, l)| l.hist.quantile(0.5) as f64);
    let mixed = format!(
        "Heartbeats while one more client reads the full listing of {n2} instances in a loop \
         ({listings:.1} listings/s of {}, {} each)",
        crate::report::bytes(listing_bytes),
        ms_f(listing_p50)
    );
    push_row(&mut sec, &mixed, r.mixed.iter().map(|(o, _)| o));

    let ratio_1k = median(ratios(&r.heartbeats[0], baseline));
    let ratio_big = median(ratios(&r.heartbeats[2], &r.heartbeats[0]));
    let p99s: Vec<f64> = r.heartbeats.iter().map(|runs| row(runs).p99).collect();
    let worst_p99 = p99s.iter().copied().fold(f64::NAN, f64::max);
    let mixed_p99 = row(r.mixed.iter().map(|(o, _)| o)).p99;
    let errors: u64 = baseline
        .iter()
        .chain(r.heartbeats.iter().flatten())
        .chain(&r.fresh)
        .map(|o| o.errors)
        .chain(r.mixed.iter().map(|(o, l)| o.errors + l.errors))
        .sum();
    sec.target(
        format_args!("Heartbeats at {n1} instances >= 95% of the baseline"),
        format_args!("{} (median of the per-round ratios)", pct(ratio_1k)),
        Verdict::check(ratio_1k, |x| x >= 0.95),
    );
    sec.target(
        format_args!("Heartbeats at {n3} instances >= 90% of the figure at {n1}"),
        format_args!("{} (median of the per-round ratios)", pct(ratio_big)),
        Verdict::check(ratio_big, |x| x >= 0.90),
    );
    let p99s_text: Vec<String> = p99s.iter().map(|&p| ms_f(p)).collect();
    sec.target(
        format_args!("Heartbeat p99 < 5 ms at {CONNS} connections"),
        format_args!("{} at {n1} / {n2} / {n3}", p99s_text.join(" / ")),
        Verdict::check(worst_p99, |p| p < 5000.0),
    );
    sec.target(
        format_args!("Heartbeat p99 < 20 ms while the full listing of {n2} is read in a loop"),
        ms_f(mixed_p99),
        Verdict::check(mixed_p99, |p| p < 20_000.0),
    );
    sec.target("No errors", errors, Verdict::of(errors == 0));
    if let Some(b) = runs.get(1) {
        compare(&mut sec, bench, baseline, r, b);
    }
    sec.finish()
}

/// Every figure against the `--server` binary's, side by side.
fn compare(sec: &mut Section, bench: &Bench, baseline: &[Outcome], r: &Runs, b: &Runs) {
    let s = &bench.s;
    sec.text(format_args!(
        "Against the second server, {}, in the same run, rounds interleaved:",
        s.before_name()
    ));
    sec.table(&[
        "Scenario",
        "requests/s now",
        "requests/s before",
        "ratio (median per round)",
        "p99 now",
        "p99 before",
    ]);
    let outcomes = |m: &[(Outcome, ReaderOutcome)]| m.iter().map(|(o, _)| o.clone()).collect();
    let (mixed_now, mixed_before): (Vec<Outcome>, Vec<Outcome>) =
        (outcomes(&r.mixed), outcomes(&b.mixed));
    let mut rows: Vec<(String, &[Outcome], &[Outcome])> = Vec::new();
    for (k, n) in s.sizes.iter().enumerate() {
        let label = format!("Heartbeats, {} instances", count(*n));
        rows.push((label, &r.heartbeats[k], &b.heartbeats[k]));
    }
    let fresh = format!(
        "Fresh connection per heartbeat, {} instances",
        count(s.fresh_n)
    );
    rows.push((fresh, &r.fresh, &b.fresh));
    let listing = format!(
        "Heartbeats while the full listing of {} is read in a loop",
        count(s.sizes[1])
    );
    rows.push((listing, &mixed_now, &mixed_before));
    for (label, now, before) in &rows {
        let ratio = median(ratios(now, before));
        let (rn, rb) = (row(now.iter()), row(before.iter()));
        sec.row(&[
            label,
            &thousands(rn.rate),
            &thousands(rb.rate),
            &times(ratio),
            &ms_f(rn.p99),
            &ms_f(rb.p99),
        ]);
        sec.target(
            format_args!("{label}: >= 0.95x the server before"),
            times(ratio),
            Verdict::check(ratio, |x| x >= 0.95),
        );
    }
    let vs_baseline = median(ratios(&r.heartbeats[0], baseline));
    sec.target(
        format_args!(
            "Heartbeats at {} instances >= 1.5x the bare tiny_http baseline",
            count(s.sizes[0])
        ),
        times(vs_baseline),
        Verdict::check(vs_baseline, |x| x >= 1.5),
    );
}
