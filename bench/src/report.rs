//! Medians of the runs, the targets of issue 6, and the markdown the README
//! takes verbatim.

use crate::fleet::FleetOutcome;
use crate::hist::Histogram;
use crate::load::Outcome;
use crate::{Results, Settings, SlowRun, WatchRound, WatchRun, CONNS};
use std::fmt::Write;
use std::time::Duration;

/// The median (mean of the middle two for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// `1234567.8` -> `1,234,568`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_string();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < -0.5 {
        out.insert(0, '-');
    }
    out
}

/// Microseconds as milliseconds: `1234` -> `1.23 ms`.
pub fn ms(us: u64) -> String {
    ms_f(us as f64)
}

fn ms_f(us: f64) -> String {
    if !us.is_finite() {
        return "n/a".to_string();
    }
    let v = us / 1000.0;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// Bytes in MB (10^6) with one decimal, or kB below a megabyte.
pub fn bytes(b: u64) -> String {
    if b >= 1_000_000 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else {
        format!("{:.0} kB", b as f64 / 1e3)
    }
}

/// One measurement in one line.
pub fn summary(o: &Outcome) -> String {
    let mut s = format!(
        "{}/s, p50 {}, p99 {}, p99.9 {}, max {}, errors {}, cpu per request: server {:.1} us, load {:.1} us",
        thousands(o.rate()),
        ms(o.hist.quantile(0.5)),
        ms(o.hist.quantile(0.99)),
        ms(o.hist.quantile(0.999)),
        ms(o.hist.max()),
        o.errors,
        o.server_cpu * 1e6 / o.ok.max(1) as f64,
        o.client_cpu * 1e6 / o.ok.max(1) as f64
    );
    if let Some(e) = &o.first_error {
        let _ = write!(s, " (first: {e})");
    }
    s
}

/// The fleet in one line.
pub fn fleet_summary(o: &FleetOutcome) -> String {
    let mut s = format!(
        "{} of {} connected in {:.1} s; {} heartbeats ({}/s), p50 {}, p99 {}, max {}, {} non-2xx, {} errors; \
         server threads {} / {} / {} (before / connected / end), resident {} -> {} ({:.0} B per connection)",
        thousands(o.connected as f64),
        thousands(o.n as f64),
        o.ramp.as_secs_f64(),
        thousands((o.ok + o.non_2xx) as f64),
        thousands(o.rate()),
        ms(o.hist.quantile(0.5)),
        ms(o.hist.quantile(0.99)),
        ms(o.hist.max()),
        o.non_2xx,
        o.errors,
        o.threads[0],
        o.threads[1],
        o.threads[2],
        bytes(o.rss_before),
        bytes(o.rss_connected),
        o.per_connection()
    );
    if let Some(e) = &o.first_error {
        let _ = write!(s, " (first: {e})");
    }
    for (kind, n) in &o.error_kinds {
        let _ = write!(s, "; {n} x {kind:?}");
    }
    s
}

/// One change's fan-out in one line.
pub fn watch_summary(w: &WatchRound) -> String {
    let mut s = format!(
        "{} of {} watchers answered, p50 {}, p99 {}, max {} after the change was sent (its own answer {}), \
         {} watchers lost; heartbeats meanwhile: {}",
        thousands(w.fanout.arrivals.len() as f64),
        thousands(w.fanout.armed as f64),
        ms(w.hist.quantile(0.5)),
        ms(w.hist.quantile(0.99)),
        ms(w.hist.max()),
        ms(w.change_us),
        w.fanout.errors,
        summary(&w.load)
    );
    if let Some(e) = &w.fanout.first_error {
        let _ = write!(s, " (first watcher lost: {e})");
    }
    s
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

fn row<'a>(runs: impl IntoIterator<Item = &'a Outcome> + Clone) -> Row {
    let pick = |f: &dyn Fn(&Outcome) -> f64| median(runs.clone().into_iter().map(f).collect());
    Row {
        rate: pick(&|o| o.rate()),
        p50: pick(&|o| o.hist.quantile(0.5) as f64),
        p99: pick(&|o| o.hist.quantile(0.99) as f64),
        p999: pick(&|o| o.hist.quantile(0.999) as f64),
        max: pick(&|o| o.hist.max() as f64),
        errors: runs.clone().into_iter().map(|o| o.errors).sum(),
        cpu_us: pick(&|o| o.server_cpu * 1e6 / o.ok.max(1) as f64),
        runs: runs.into_iter().count(),
    }
}

fn push_row(out: &mut String, name: &str, r: &Row) {
    if r.runs == 0 {
        let _ = writeln!(out, "| {name} | not run | | | | | | |");
        return;
    }
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {} | {:.1} µs |",
        thousands(r.rate),
        ms_f(r.p50),
        ms_f(r.p99),
        ms_f(r.p999),
        ms_f(r.max),
        r.errors,
        r.cpu_us
    );
}

/// Ratios of `a[i] / b[i]`, round by round.
fn ratios(a: &[Outcome], b: &[Outcome]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(a, b)| a.rate() / b.rate().max(1e-9))
        .collect()
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", x * 100.0)
    } else {
        "n/a".to_string()
    }
}

/// Some(value < limit), None when the value is missing.
fn below(v: f64, limit: f64) -> Option<bool> {
    v.is_finite().then_some(v < limit)
}

/// The whole report, in markdown.
pub fn render(s: &Settings, r: &Results, elapsed: Duration) -> String {
    let mut out = String::new();
    let [n1, n2, n3] = s.sizes;
    let t = |n: usize| thousands(n as f64);
    let heavy = crate::heavy_runs(s);
    let quick = if s.quick {
        " (quick mode: tiny sizes, not representative)"
    } else {
        ""
    };
    let _ = writeln!(out, "\n## Registro benchmark{quick}\n");
    let _ = writeln!(out, "Machine: {}.  ", machine());
    let _ = writeln!(
        out,
        "Command: `make bench` (`cargo run --release -p registro-bench{}`): {:.0} s in all.  ",
        if s.quick { " -- --quick" } else { "" },
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Every server is a fresh process on loopback. Heartbeat figures are medians of {} runs of {:.1} s, the \
         baseline and the three fleet sizes interleaved round by round (the baseline beside the smallest size, \
         and with a second server, the two servers back to back at each size); {CONNS} keep-alive connections, one request \
         in flight on each, driven by {} load-generator threads on the same 2 cores. Instances are spread over {} \
         apps, ids `i-0000000` (9 bytes), each at its own 10.x.y.z address, and renewed once before measuring (so \
         all are `up`). Memory and sweep figures are medians of {heavy}.\n",
        s.runs,
        s.secs.as_secs_f64(),
        CONNS.div_ceil(s.per_thread),
        crate::load::APPS,
    );

    let _ = writeln!(
        out,
        "| Scenario | requests/s | p50 | p99 | p99.9 | max | errors | server CPU per request |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    push_row(
        &mut out,
        "Baseline: bare tiny_http, empty 204",
        &row(&r.baseline),
    );
    for (k, n) in s.sizes.iter().enumerate() {
        push_row(
            &mut out,
            &format!("Heartbeats, {} instances", t(*n)),
            &row(&r.heartbeats[k]),
        );
    }
    push_row(
        &mut out,
        &format!("Fresh connection per heartbeat, {} instances", t(s.fresh_n)),
        &row(&r.fresh),
    );
    let listings: Vec<f64> = r
        .mixed
        .iter()
        .map(|(o, l)| l.listings as f64 / o.elapsed.as_secs_f64().max(1e-9))
        .collect();
    let listing_bytes = r.mixed.last().map_or(0, |(_, l)| l.bytes as u64);
    let listing_p50 = median(
        r.mixed
            .iter()
            .map(|(_, l)| l.hist.quantile(0.5) as f64)
            .collect(),
    );
    push_row(
        &mut out,
        &format!(
            "Heartbeats while one more client reads the full listing of {} instances in a loop ({:.1} listings/s of {}, {} each)",
            t(n2),
            median(listings),
            bytes(listing_bytes),
            ms_f(listing_p50)
        ),
        &row(r.mixed.iter().map(|(o, _)| o)),
    );
    for run in &r.sweeps {
        push_row(
            &mut out,
            &format!(
                "Heartbeats, {} instances, sweeping every {} s, --down-after {} (one window over {} sweeps)",
                t(n3),
                s.sweep_every,
                run.down_after,
                run.sweeps.len()
            ),
            &row([&run.load]),
        );
    }

    let regs: Vec<f64> = r
        .registrations
        .iter()
        .filter(|(n, _)| *n == n3)
        .map(|(_, rate)| *rate)
        .collect();
    let per_instance = median(r.per_instance.clone());
    let idle = median(r.idle_rss.iter().map(|&b| b as f64).collect());
    let idle_text = if idle.is_finite() {
        bytes(idle as u64)
    } else {
        "n/a".to_string()
    };
    let _ = writeln!(out);
    let _ = writeln!(out, "| Other figure | median |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(
        out,
        "| Registering {} instances ({} connections, {} requests pipelined on each) | {}/s |",
        t(n3),
        crate::REG_CONNS,
        crate::REG_DEPTH,
        thousands(median(regs))
    );
    let _ = writeln!(
        out,
        "| Resident memory per instance at {} instances | {:.0} B |",
        t(n3),
        per_instance
    );
    if let Some(shared) = r.per_instance_shared {
        let _ = writeln!(
            out,
            "| The same with {} instances per address (one run) | {shared:.0} B |",
            crate::SHARED
        );
    }
    let _ = writeln!(
        out,
        "| Resident memory of the idle server ({} starts) | {idle_text} |",
        r.idle_rss.len()
    );
    for run in &r.sweeps {
        let took = median(run.sweeps.iter().map(|(s, _)| s.ms).collect());
        let down = median(run.sweeps.iter().map(|(s, _)| s.down as f64).collect());
        let lock = run
            .sweeps
            .iter()
            .map(|(s, _)| s.lock_us)
            .fold(f64::NAN, f64::max);
        let worst = median(run.sweeps.iter().map(|(_, w)| *w as f64).collect());
        let checked = median(run.sweeps.iter().map(|(s, _)| s.checked as f64).collect());
        // The ticker settles what is due within a second and makes a full
        // pass every --sweep-every; each logs a `sweep:` line, and while
        // instances keep falling due one pass may go on for seconds.
        let _ = writeln!(
            out,
            "| A logged pass of the ticker over the fleet of {} with --down-after {} ({} passes; medians): checks {} instances, marks {} down | {}, lock held at most {} at a time |",
            t(n3),
            run.down_after,
            run.sweeps.len(),
            thousands(checked),
            thousands(down),
            ms_f(took * 1000.0),
            ms_f(lock)
        );
        let _ = writeln!(
            out,
            "| Worst heartbeat overlapping such a sweep (control: worst outside sweeps, same window) | {} (worst of {} sweeps {}; control {}) |",
            ms_f(worst),
            run.sweeps.len(),
            run.sweeps.iter().map(|(_, w)| *w).max().map_or("n/a".to_string(), ms),
            run.control.map_or("n/a".to_string(), ms)
        );
    }

    // Targets.
    let ratio_1k = median(ratios(&r.heartbeats[0], &r.baseline));
    let ratio_big = median(ratios(&r.heartbeats[2], &r.heartbeats[0]));
    let p99s: Vec<f64> = r.heartbeats.iter().map(|runs| row(runs).p99).collect();
    let worst_p99 = p99s.iter().copied().fold(f64::NAN, f64::max);
    let mixed_p99 = row(r.mixed.iter().map(|(o, _)| o)).p99;
    let errors: u64 = r
        .baseline
        .iter()
        .chain(r.heartbeats.iter().flatten())
        .chain(&r.fresh)
        .chain(r.sweeps.iter().map(|run| &run.load))
        .chain(
            r.watch
                .iter()
                .flat_map(|w| w.control.iter().chain(w.rounds.iter().map(|x| &x.load))),
        )
        .map(|o| o.errors)
        .sum::<u64>()
        + r.mixed
            .iter()
            .map(|(o, l)| o.errors + l.errors)
            .sum::<u64>();
    let _ = writeln!(out);
    let _ = writeln!(out, "| Target | measured | |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| Heartbeats at {} instances >= 95% of the baseline | {} (median of the per-round ratios) | {} |",
        t(n1),
        pct(ratio_1k),
        verdict(ratio_1k.is_finite().then_some(ratio_1k >= 0.95))
    );
    let _ = writeln!(
        out,
        "| Heartbeats at {} instances >= 90% of the figure at {} | {} (median of the per-round ratios) | {} |",
        t(n3),
        t(n1),
        pct(ratio_big),
        verdict(ratio_big.is_finite().then_some(ratio_big >= 0.90))
    );
    let _ = writeln!(
        out,
        "| Heartbeat p99 < 5 ms at {CONNS} connections | {} at {} / {} / {} | {} |",
        p99s.iter()
            .map(|&p| ms_f(p))
            .collect::<Vec<_>>()
            .join(" / "),
        t(n1),
        t(n2),
        t(n3),
        verdict(below(worst_p99, 5000.0))
    );
    let _ = writeln!(
        out,
        "| Heartbeat p99 < 20 ms while the full listing of {} is read in a loop | {} | {} |",
        t(n2),
        ms_f(mixed_p99),
        verdict(below(mixed_p99, 20_000.0))
    );
    let _ = writeln!(
        out,
        "| At most 200 B resident per instance | {:.0} B (each instance at its own address) | {} |",
        per_instance,
        verdict(per_instance.is_finite().then_some(per_instance <= 200.0))
    );
    let _ = writeln!(
        out,
        "| Idle server under 5 MB resident | {idle_text} | {} |",
        verdict(below(idle, 5e6))
    );
    // The worst latency is a maximum, and on a shared 2-core machine
    // scheduling alone sometimes exceeds 10 ms; so each sweep run is judged
    // against its control, the same load's worst heartbeat outside sweeps.
    let sweep_verdicts: Vec<(String, &str)> = r
        .sweeps
        .iter()
        .map(|run| {
            let worst = run.sweeps.iter().map(|(_, w)| *w).max();
            // A heartbeat that arrives as the lock is taken waits the whole hold.
            let lock = run
                .sweeps
                .iter()
                .map(|(s, _)| s.lock_us)
                .fold(0.0, f64::max);
            let judged = match (worst, run.control) {
                (None, _) => verdict(None),
                (Some(_), _) if lock > 10_000.0 => verdict(Some(false)),
                (Some(w), _) if w <= 10_000 => verdict(Some(true)),
                (Some(w), Some(c)) if c > 10_000 && w <= c => {
                    "inconclusive (the control is as slow)"
                }
                (Some(_), _) => verdict(Some(false)),
            };
            let text = format!(
                "--down-after {}: {} (control {}; longest lock hold {}): {judged}",
                run.down_after,
                worst.map_or("n/a".to_string(), ms),
                run.control.map_or("n/a".to_string(), ms),
                ms_f(lock)
            );
            (text, judged)
        })
        .collect();
    let overall = if r.sweeps.iter().any(|run| run.sweeps.is_empty()) || r.sweeps.is_empty() {
        verdict(None)
    } else if sweep_verdicts
        .iter()
        .any(|(_, v)| *v == verdict(Some(false)))
    {
        verdict(Some(false))
    } else if sweep_verdicts
        .iter()
        .any(|(_, v)| *v != verdict(Some(true)))
    {
        "inconclusive"
    } else {
        verdict(Some(true))
    };
    let _ = writeln!(
        out,
        "| A sweep at {} instances delays no heartbeat by more than 10 ms | worst heartbeat overlapping a sweep, {} | {overall} |",
        t(n3),
        sweep_verdicts.iter().map(|(text, _)| text.as_str()).collect::<Vec<_>>().join("; "),
    );
    let _ = writeln!(
        out,
        "| No errors | {errors} | {} |",
        verdict(Some(errors == 0))
    );
    if let Some(before) = &r.before {
        render_comparison(&mut out, s, r, before);
    }
    if let Some(watch) = &r.watch {
        let before = r.before.as_ref().and_then(|b| b.watch.as_ref());
        render_watch(&mut out, s, watch, before);
    }
    if let Some(slow) = &r.slowloris {
        let before = r.before.as_ref().and_then(|b| b.slowloris.as_ref());
        render_slowloris(&mut out, s, slow, before);
    }
    if let Some(fleet) = &r.fleet {
        render_fleet(&mut out, fleet);
    }
    out
}

/// Every heartbeat of the slowloris rounds in one histogram.
fn slow_hist(run: &SlowRun) -> Histogram {
    let mut all = Histogram::default();
    for round in &run.rounds {
        all.merge(&round.hist);
    }
    all
}

/// The slowloris scenario's table and its targets.
fn render_slowloris(out: &mut String, s: &Settings, now: &SlowRun, before: Option<&SlowRun>) {
    let [idle, slow] = now.held;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Slowloris: {idle} idle keep-alive connections and {slow} slow senders (half a request, then one \
         more header byte each every 20 ms) held against the server; in each of {} rounds, heartbeats on fresh \
         connections (connect to answer), each sent as a round of trickled bytes begins. Both servers hold their \
         connections at once; rounds alternate, trickling only to the server measured.\n",
        s.runs
    );
    let _ = writeln!(
        out,
        "| Server | heartbeats | p50 | p99 | max | errors | server threads (none / all held) | resident (none / all held) | server CPU per trickled byte | connections still open |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---|---:|---:|");
    let mut servers = vec![("now", now)];
    if let Some(b) = before {
        servers.push(("before", b));
    }
    for (label, run) in &servers {
        let hist = slow_hist(run);
        let errors: u64 = run.rounds.iter().map(|x| x.errors).sum();
        let trickled: u64 = run.rounds.iter().map(|x| x.trickled).sum();
        let cpu: f64 = run.rounds.iter().map(|x| x.server_cpu).sum();
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {errors} | {} / {} | {} / {} | {:.1} µs | {} of {} |",
            thousands(hist.count() as f64),
            ms(hist.quantile(0.5)),
            ms(hist.quantile(0.99)),
            ms(hist.max()),
            run.threads[0],
            run.threads[1],
            bytes(run.rss[0]),
            bytes(run.rss[1]),
            cpu * 1e6 / trickled.max(1) as f64,
            thousands(run.still_open as f64),
            thousands((run.held[0] + run.held[1]) as f64),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| Target | measured | |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| Slowloris: server threads no more than with none | {} / {} | {} |",
        now.threads[0],
        now.threads[1],
        verdict(Some(now.threads[1] <= now.threads[0]))
    );
    if let Some(b) = before {
        let (hn, hb) = (slow_hist(now), slow_hist(b));
        let merged = |q: f64| hn.quantile(q) as f64 / hb.quantile(q).max(1) as f64;
        let (p50, p99) = (slow_ratio(now, b, 0.5), slow_ratio(now, b, 0.99));
        let _ = writeln!(
            out,
            "| Slowloris: heartbeat latency as before (p50 and p99 at most 1.1x, median per round) | p50 {p50:.2}x, p99 {p99:.2}x (all rounds merged: {:.2}x, {:.2}x) | {} |",
            merged(0.5),
            merged(0.99),
            verdict(Some(p50 <= 1.1 && p99 <= 1.1))
        );
    }
    let errors: u64 = now.rounds.iter().map(|x| x.errors).sum();
    let _ = writeln!(
        out,
        "| Slowloris: every heartbeat answered, every connection held | {errors} errors, {} of {} open | {} |",
        thousands(now.still_open as f64),
        thousands((idle + slow) as f64),
        verdict(Some(errors == 0 && now.still_open == idle + slow))
    );
}

/// The median over rounds of quantile `q` now over quantile `q` before in
/// the same round: rounds run back to back, so a pair shares the machine's
/// load, where one noisy round would set the quantile of all rounds merged.
fn slow_ratio(now: &SlowRun, before: &SlowRun, q: f64) -> f64 {
    median(
        now.rounds
            .iter()
            .zip(&before.rounds)
            .map(|(n, b)| n.hist.quantile(q) as f64 / b.hist.quantile(q).max(1) as f64)
            .collect(),
    )
}

/// Heartbeats per second with watchers over those without (medians).
fn watch_ratio(w: &WatchRun) -> f64 {
    let with = median(w.rounds.iter().map(|x| x.load.rate()).collect());
    let without = median(w.control.iter().map(Outcome::rate).collect());
    with / without
}

/// Whether every change was answered by every watcher asked for within
/// 100 ms, with none lost; None when nothing was measured.
fn all_answered(w: &WatchRun) -> Option<bool> {
    (w.supported && !w.rounds.is_empty()).then(|| {
        w.connected == w.watchers
            && w.rounds.iter().all(|x| {
                x.fanout.errors == 0
                    && x.fanout.arrivals.len() == w.watchers
                    && x.hist.max() <= 100_000
            })
    })
}

/// The watch fan-out's table and its targets.
fn render_watch(out: &mut String, s: &Settings, now: &WatchRun, before: Option<&WatchRun>) {
    let t = |n: usize| thousands(n as f64);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Watch fan-out: {} watchers, each with its own keep-alive connection, driven from one \
         load-generator thread (mio), wait on one app (`GET /registro/1.0/apps/{}?index=N&wait=60s`, N from a \
         first GET) while {CONNS} connections renew {} instances of other apps. In the middle of each of {} \
         heartbeat windows of {:.1} s one change is made (a new instance of the watched app), and each watcher's \
         wait is timed from the change's request being sent until its answer was read; the one load-generator \
         thread reads every answer, so the slowest include its own reading. Control: the same windows with no \
         watcher connected ({} before they connect, {} after they close); the ratio is of the medians.\n",
        t(now.watchers),
        crate::watch::APP,
        t(s.sizes[0]),
        now.rounds.len(),
        s.secs.as_secs_f64(),
        now.rounds.len(),
        now.rounds.len()
    );
    let _ = writeln!(
        out,
        "| Server | watchers connected | answered, each change | p50 | p99 | max, each change | watchers lost | the change's own request | heartbeats/s with watchers | without | ratio |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let name = s
        .reference
        .as_ref()
        .and_then(|p| p.file_name())
        .map_or("before".to_string(), |f| f.to_string_lossy().into_owned());
    let mut servers = vec![("now".to_string(), now)];
    if let Some(b) = before {
        servers.push((format!("before (`{name}`)"), b));
    }
    for (label, w) in &servers {
        if !w.supported {
            let _ = writeln!(
                out,
                "| {label} | n/a: no `Registro-Index`, no watches (a watch is answered at once) | | | | | | | | | |"
            );
            continue;
        }
        let each = |f: &dyn Fn(&WatchRound) -> String| {
            w.rounds.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        let pick = |f: &dyn Fn(&WatchRound) -> f64| median(w.rounds.iter().map(f).collect());
        let ratio = watch_ratio(w);
        let _ = writeln!(
            out,
            "| {label} | {} of {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t(w.connected),
            t(w.watchers),
            each(&|x| t(x.fanout.arrivals.len())),
            ms_f(pick(&|x| x.hist.quantile(0.5) as f64)),
            ms_f(pick(&|x| x.hist.quantile(0.99) as f64)),
            each(&|x| ms(x.hist.max())),
            w.rounds.iter().map(|x| x.fanout.errors).sum::<u64>(),
            ms_f(pick(&|x| x.change_us as f64)),
            thousands(median(w.rounds.iter().map(|x| x.load.rate()).collect())),
            thousands(median(w.control.iter().map(Outcome::rate).collect())),
            if ratio.is_finite() {
                format!("{ratio:.2}x")
            } else {
                "n/a".to_string()
            }
        );
    }
    for (label, w) in &servers {
        if let Some(x) = &w.alone {
            let _ = writeln!(
                out,
                "| {label}, one more change with no heartbeats running (CPU meanwhile: server {:.0} ms, load generator {:.0} ms) | | {} | {} | {} | {} | {} | {} | | | |",
                x.load.server_cpu * 1e3,
                x.load.client_cpu * 1e3,
                t(x.fanout.arrivals.len()),
                ms(x.hist.quantile(0.5)),
                ms(x.hist.quantile(0.99)),
                ms(x.hist.max()),
                x.fanout.errors,
                ms(x.change_us)
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| Target | measured | |");
    let _ = writeln!(out, "|---|---|---|");
    let slowest = now.rounds.iter().map(|x| x.hist.max()).max();
    let fewest = now.rounds.iter().map(|x| x.fanout.arrivals.len()).min();
    let limited = if now.watchers < 10_000 && !s.quick {
        format!(
            " (W = {}: what the open-files limit allows)",
            t(now.watchers)
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "| All {} watchers answered within 100 ms of the change{limited} | {} | {} |",
        t(now.watchers),
        match (now.supported, fewest, slowest) {
            (true, Some(fewest), Some(slowest)) => format!(
                "at least {} of {} answered at every change, the slowest after {}",
                t(fewest),
                t(now.watchers),
                ms(slowest)
            ),
            _ => "n/a".to_string(),
        },
        verdict(all_answered(now))
    );
    let ratio = watch_ratio(now);
    let _ = writeln!(
        out,
        "| Heartbeats with the watchers waiting and answered >= 0.9x the same windows without | {} | {} |",
        if ratio.is_finite() {
            format!("{ratio:.2}x")
        } else {
            "n/a".to_string()
        },
        verdict(ratio.is_finite().then_some(ratio >= 0.9))
    );
}

/// Median of the per-round ratios of two series of runs.
fn ratio_of(a: &[Outcome], b: &[Outcome]) -> f64 {
    median(ratios(a, b))
}

/// Every earlier scenario against the `--server` binary, side by side.
fn render_comparison(out: &mut String, s: &Settings, r: &Results, b: &Results) {
    let t = |n: usize| thousands(n as f64);
    let name = s
        .reference
        .as_ref()
        .and_then(|p| p.file_name())
        .map_or("before".to_string(), |f| f.to_string_lossy().into_owned());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Against the second server (`--server {name}`), in the same run, rounds interleaved:\n"
    );
    let _ = writeln!(
        out,
        "| Scenario | requests/s now | requests/s before | ratio (median per round) | p99 now | p99 before |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let mixed_now: Vec<Outcome> = r.mixed.iter().map(|(o, _)| o.clone()).collect();
    let mixed_before: Vec<Outcome> = b.mixed.iter().map(|(o, _)| o.clone()).collect();
    let mut rows: Vec<(String, &[Outcome], &[Outcome])> = Vec::new();
    for (k, n) in s.sizes.iter().enumerate() {
        rows.push((
            format!("Heartbeats, {} instances", t(*n)),
            &r.heartbeats[k],
            &b.heartbeats[k],
        ));
    }
    rows.push((
        format!("Fresh connection per heartbeat, {} instances", t(s.fresh_n)),
        &r.fresh,
        &b.fresh,
    ));
    rows.push((
        format!(
            "Heartbeats while the full listing of {} is read in a loop",
            t(s.sizes[1])
        ),
        &mixed_now,
        &mixed_before,
    ));
    let mut verdicts = Vec::new();
    for (label, now, before) in &rows {
        let ratio = ratio_of(now, before);
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} |",
            thousands(row(now.iter()).rate),
            thousands(row(before.iter()).rate),
            if ratio.is_finite() {
                format!("{ratio:.2}x")
            } else {
                "n/a".to_string()
            },
            ms_f(row(now.iter()).p99),
            ms_f(row(before.iter()).p99),
        );
        verdicts.push((label.clone(), ratio));
    }
    for (now, before) in r.sweeps.iter().zip(&b.sweeps) {
        let _ = writeln!(
            out,
            "| Heartbeats, {} instances, sweeping, --down-after {} (one window each) | {} | {} | {:.2}x | {} | {} |",
            t(s.sizes[2]),
            now.down_after,
            thousands(now.load.rate()),
            thousands(before.load.rate()),
            now.load.rate() / before.load.rate().max(1e-9),
            ms(now.load.hist.quantile(0.99)),
            ms(before.load.hist.quantile(0.99)),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| Other figure | now | before |");
    let _ = writeln!(out, "|---|---:|---:|");
    let regs = |x: &Results| {
        median(
            x.registrations
                .iter()
                .filter(|(n, _)| *n == s.sizes[2])
                .map(|(_, rate)| *rate)
                .collect(),
        )
    };
    let _ = writeln!(
        out,
        "| Registering {} instances | {}/s | {}/s |",
        t(s.sizes[2]),
        thousands(regs(r)),
        thousands(regs(b))
    );
    let _ = writeln!(
        out,
        "| Resident memory per instance at {} instances | {:.0} B | {:.0} B |",
        t(s.sizes[2]),
        median(r.per_instance.clone()),
        median(b.per_instance.clone())
    );
    let idle = |x: &Results| median(x.idle_rss.iter().map(|&v| v as f64).collect());
    let _ = writeln!(
        out,
        "| Resident memory of the idle server | {} | {} |",
        bytes(idle(r) as u64),
        bytes(idle(b) as u64)
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| Target | measured | |");
    let _ = writeln!(out, "|---|---|---|");
    for (label, ratio) in verdicts {
        let _ = writeln!(
            out,
            "| {label}: >= 0.95x the server before | {} | {} |",
            if ratio.is_finite() {
                format!("{ratio:.2}x")
            } else {
                "n/a".to_string()
            },
            verdict(ratio.is_finite().then_some(ratio >= 0.95))
        );
    }
    let vs_baseline = ratio_of(&r.heartbeats[0], &r.baseline);
    let _ = writeln!(
        out,
        "| Heartbeats at {} instances >= 1.5x the bare tiny_http baseline | {} | {} |",
        t(s.sizes[0]),
        if vs_baseline.is_finite() {
            format!("{vs_baseline:.2}x")
        } else {
            "n/a".to_string()
        },
        verdict(vs_baseline.is_finite().then_some(vs_baseline >= 1.5))
    );
}

/// The fleet scenario's table and its targets.
fn render_fleet(out: &mut String, o: &FleetOutcome) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Fleet: {} clients, each with its own keep-alive connection and instance, one load-generator thread; \
         {} connected in {:.1} s, then heartbeats for {:.0} s.\n",
        thousands(o.n as f64),
        thousands(o.connected as f64),
        o.ramp.as_secs_f64(),
        o.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| heartbeats | per second | p50 | p99 | max | non-2xx | errors | server threads (before / connected / end) | resident before -> connected | per connection |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} -> {} | {:.0} B |",
        thousands((o.ok + o.non_2xx) as f64),
        thousands(o.rate()),
        ms(o.hist.quantile(0.5)),
        ms(o.hist.quantile(0.99)),
        ms(o.hist.max()),
        o.non_2xx,
        o.errors,
        o.threads[0],
        o.threads[1],
        o.threads[2],
        bytes(o.rss_before),
        bytes(o.rss_connected),
        o.per_connection()
    );
    let p99 = o.hist.quantile(0.99) as f64;
    let constant = o.threads[0] == o.threads[1] && o.threads[1] == o.threads[2];
    let _ = writeln!(out);
    let _ = writeln!(out, "| Target | measured | |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| Fleet >= 15,000 connections, 0 errors, 0 non-2xx | {} connected, {} errors, {} non-2xx | {} |",
        thousands(o.connected as f64),
        o.errors,
        o.non_2xx,
        verdict(Some(o.connected >= 15_000 && o.errors == 0 && o.non_2xx == 0))
    );
    let _ = writeln!(
        out,
        "| Fleet heartbeat p99 < 10 ms | {} | {} |",
        ms_f(p99),
        verdict(below(p99, 10_000.0))
    );
    let _ = writeln!(
        out,
        "| Server threads independent of connections | {} / {} / {} | {} |",
        o.threads[0],
        o.threads[1],
        o.threads[2],
        verdict(Some(constant))
    );
    let _ = writeln!(
        out,
        "| At most 2 KiB resident per idle connection | {:.0} B | {} |",
        o.per_connection(),
        verdict(Some(o.per_connection() <= 2048.0))
    );
}

/// `Intel(R) Xeon(R) ..., 2 cores (nproc)`.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".to_string(), |k| k.trim().to_string());
    format!("{cpu}, nproc {cores}, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert!(median(vec![]).is_nan());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn slowloris_ratios_pair_the_rounds() {
        let run = |rounds: &[&[u64]]| SlowRun {
            rounds: rounds
                .iter()
                .map(|lat| {
                    let mut round = crate::slowloris::SlowRound::default();
                    for &us in *lat {
                        round.hist.record(us);
                    }
                    round
                })
                .collect(),
            ..SlowRun::default()
        };
        // One round where the machine stalled both servers: merged, it
        // would set both quantiles; paired, it is one ratio of three.
        let now = run(&[&[200; 100], &[4000; 100], &[300; 100]]);
        let before = run(&[&[100; 100], &[3000; 100], &[300; 100]]);
        let near = |a: f64, b: f64| (a - b).abs() < 0.05;
        assert!(near(slow_ratio(&now, &before, 0.5), 4000.0 / 3000.0));
        assert!(near(slow_ratio(&now, &before, 0.99), 4000.0 / 3000.0));
        let calm = run(&[&[100; 100], &[3000; 100], &[600; 100]]);
        assert!(near(slow_ratio(&now, &calm, 0.5), 1.33));
        assert!(near(slow_ratio(&calm, &now, 0.99), 0.75));
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(ms(1234), "1.23 ms");
        assert_eq!(ms(45_600), "45.6 ms");
        assert_eq!(ms(456_000), "456 ms");
        assert_eq!(bytes(2_500_000), "2.5 MB");
        assert_eq!(bytes(2_600), "3 kB");
    }
}
