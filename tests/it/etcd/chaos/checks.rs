//! The checks of a chaos run, on its recorded [`History`] alone:
//!
//! 1. **No acknowledged change lost.** In the final view of every server:
//!    every app created with 201 is listed; every instance registered with
//!    201 is there at its address; every instance taken out of service with
//!    204 is `out-of-service`; every instance whose heartbeat was answered
//!    204 has left `starting` (that first heartbeat made it `up`).
//! 2. **No false `down`.** No read answers `down` for an instance that got
//!    a 204 heartbeat less than `down-after - 1 s` before the read was sent
//!    (the 204's answer time counts; the second covers the time a heartbeat
//!    and a read spend on the way).
//! 3. **No index going backwards on a server.** A read sent after another
//!    read of the same route on the same server was answered has an index no
//!    lower, across the server's restarts too. And an index is never handed
//!    out for two different views, by any server.
//! 4. **All servers equal within 3 s of healing.** After each fault is
//!    healed, the first read of every server sent 3 s later answers 200 with
//!    an index no lower than any server answered before the heal, and shows
//!    every change acknowledged before the heal. After the last fault, once
//!    changes stop, every server answers one same view within 3 s.
//! 5. **At least 99 % of heartbeats answered 204 after failover.** A
//!    heartbeat tries the servers in turn on a connection error, a timeout
//!    or a 503; it counts as answered if one of them said 204.
//! 6. **No view over 3 s behind, unless it says so.** A read sent at `t`
//!    has an index no lower than any read answered before `t - 3 s`, and
//!    shows every change acknowledged before `t - 3 s`; or it carries
//!    `Registro-Last-Contact` above 3000 (ms): a server whose view falls
//!    behind (its watch on a paused member) must notice within 3 s and
//!    catch up, or say so.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::history::{at, id, Event, History, Micros, Op, St, View};

/// The checks' outcome: a name, one line of what was seen, and what failed.
pub struct Verdict {
    pub name: &'static str,
    pub summary: String,
    pub failures: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Examples shown of one check's failures.
const SHOWN: usize = 8;
const SECOND: Micros = 1_000_000;
/// How soon after healing every server must have caught up.
const HEAL: Micros = 3 * SECOND;
/// The share of heartbeats that must be answered 204.
const ANSWERED: f64 = 0.99;

pub fn all(h: &History) -> Vec<Verdict> {
    vec![
        lost(h),
        false_down(h),
        index(h),
        healed(h),
        heartbeats(h),
        stale(h),
    ]
}

/// When each change was first acknowledged (its 2xx answered), and when
/// each removal from service was first tried in a way that may have
/// committed it (answered 204, 5xx or nothing).
#[derive(Default)]
struct Acks {
    apps: BTreeMap<String, Micros>,
    registered: BTreeMap<u32, Micros>,
    beaten: BTreeMap<u32, Micros>,
    out: BTreeMap<u32, Micros>,
    out_tried: BTreeMap<u32, Micros>,
}

fn first<K: Ord>(map: &mut BTreeMap<K, Micros>, key: K, t: Micros) {
    let at = map.entry(key).or_insert(t);
    *at = (*at).min(t);
}

impl Acks {
    fn of(h: &History) -> Acks {
        let mut a = Acks::default();
        for e in &h.events {
            match &e.op {
                Op::CreateApp(name) if e.ok(201) => first(&mut a.apps, name.clone(), e.answered),
                Op::Register(n) if e.ok(201) => first(&mut a.registered, *n, e.answered),
                Op::Heartbeat(n, _) if e.ok(204) => first(&mut a.beaten, *n, e.answered),
                Op::OutOfService(n) => {
                    if e.ok(204) {
                        first(&mut a.out, *n, e.answered);
                    }
                    if e.ok(204) || e.outcome.status().is_none_or(|s| s >= 500) {
                        first(&mut a.out_tried, *n, e.sent);
                    }
                }
                _ => {}
            }
        }
        a
    }

    /// The instances with a change acknowledged by `until`.
    fn instances(&self, until: Micros) -> BTreeSet<u32> {
        [&self.registered, &self.beaten, &self.out]
            .into_iter()
            .flatten()
            .filter(|&(_, &t)| t <= until)
            .map(|(&n, _)| n)
            .collect()
    }

    /// What `view` (answered at `answered`) lacks of the changes to
    /// instance `n` acknowledged by `until`.
    fn missing(&self, view: &View, n: u32, until: Micros, answered: Micros) -> Option<String> {
        let by = |map: &BTreeMap<u32, Micros>, t: Micros| map.get(&n).is_some_and(|&a| a <= t);
        let st = view.status(n);
        let reads = st.map_or("absent", St::name);
        if by(&self.out, until) {
            return (st != Some(St::OutOfService))
                .then(|| format!("{} was taken out of service (204) but reads {reads}", id(n)));
        }
        let out = st == Some(St::OutOfService) && by(&self.out_tried, answered);
        if by(&self.beaten, until) {
            return (!matches!(st, Some(St::Up | St::Down)) && !out).then(|| {
                format!(
                    "{} had a heartbeat answered 204 (its first made it up) but reads {reads}",
                    id(n)
                )
            });
        }
        if by(&self.registered, until) {
            let fine = match st {
                Some(St::Starting | St::Up | St::Down) => true,
                Some(St::OutOfService) => out,
                _ => false,
            };
            return (!fine).then(|| {
                format!(
                    "{} was registered (201) but reads {}",
                    id(n),
                    if st == Some(St::Wrong) {
                        "another address or status"
                    } else {
                        reads
                    }
                )
            });
        }
        None
    }
}

/// When `t` was, against the faults: for failure messages.
fn context(h: &History, t: Micros) -> String {
    let (phase, after) = phase(h, t);
    match after {
        Some(s) => format!("{s:.1} s after {phase} was healed"),
        None => phase,
    }
}

/// The fault `t` was during or after (and how long after its heal, in
/// seconds), or "before any fault".
fn phase(h: &History, t: Micros) -> (String, Option<f64>) {
    let mut last = None;
    for (i, f) in h.faults.iter().enumerate() {
        if t < f.began {
            break;
        }
        if t <= f.healed {
            return (format!("during fault {} ({})", i + 1, f.what), None);
        }
        last = Some((i, f));
    }
    match last {
        Some((i, f)) => (
            format!("fault {} ({})", i + 1, f.what),
            Some((t - f.healed) as f64 / 1e6),
        ),
        None => ("before any fault".into(), None),
    }
}

fn shown(mut failures: Vec<String>) -> Vec<String> {
    let more = failures.len().saturating_sub(SHOWN);
    failures.truncate(SHOWN);
    if more > 0 {
        failures.push(format!("... and {more} more"));
    }
    failures
}

/// Check 1: nothing acknowledged is missing from any server's final view.
pub fn lost(h: &History) -> Verdict {
    let acks = Acks::of(h);
    let mut failures = Vec::new();
    for s in 0..h.servers {
        let last = h
            .events
            .iter()
            .filter(|e| {
                e.process == "final"
                    && e.server == s
                    && e.op == Op::Read { all: true }
                    && e.sent >= h.end.quiet
            })
            .filter_map(|e| e.view.as_ref().map(|v| (e.sent, v)))
            .max_by_key(|(sent, _)| *sent);
        let Some((_, view)) = last else {
            failures.push(format!("registro {s}: no final read answered 200"));
            continue;
        };
        for app in acks.apps.keys().filter(|a| !view.apps.contains(a)) {
            failures.push(format!(
                "registro {s}: app {app} was created (201) but is not listed"
            ));
        }
        for n in acks.instances(Micros::MAX) {
            if let Some(why) = acks.missing(view, n, Micros::MAX, Micros::MAX) {
                failures.push(format!("registro {s}: {why}"));
            }
        }
    }
    Verdict {
        name: "no acknowledged change lost",
        summary: format!(
            "{} apps created, {} registrations, {} instances heartbeaten up, {} taken out of service, each looked for in the final view of {} servers",
            acks.apps.len(),
            acks.registered.len(),
            acks.beaten.len(),
            acks.out.len(),
            h.servers
        ),
        failures: shown(failures),
    }
}

/// Check 2: no read answers `down` within `down-after - 1 s` of a 204.
pub fn false_down(h: &History) -> Verdict {
    let window = h.down_after.saturating_sub(SECOND);
    // Per instance, its 204 heartbeats: (answered, server), in time order.
    let mut beats: HashMap<u32, Vec<(Micros, usize)>> = HashMap::new();
    for e in &h.events {
        if let Op::Heartbeat(n, _) = e.op {
            if e.ok(204) {
                beats.entry(n).or_default().push((e.answered, e.server));
            }
        }
    }
    for list in beats.values_mut() {
        list.sort_unstable();
    }
    let mut failures = Vec::new();
    let mut instances = BTreeSet::new();
    let mut by_context: BTreeMap<String, usize> = BTreeMap::new();
    let mut reads = 0;
    let mut events: Vec<&Event> = h.events.iter().filter(|e| e.view.is_some()).collect();
    events.sort_by_key(|e| e.sent);
    for e in events {
        let view = e.view.as_ref().expect("filtered");
        reads += 1;
        for &(n, st) in &view.instances {
            if st != St::Down {
                continue;
            }
            let Some(list) = beats.get(&n) else { continue };
            let before = list.partition_point(|&(t, _)| t <= e.sent);
            let Some(&(beat, through)) = before.checked_sub(1).map(|i| &list[i]) else {
                continue;
            };
            if e.sent - beat >= window {
                continue;
            }
            instances.insert(n);
            let when = context(h, e.sent);
            let (during, after) = phase(h, e.sent);
            let group = match after {
                Some(_) => format!("after {during}"),
                None => during,
            };
            *by_context.entry(group).or_default() += 1;
            failures.push(format!(
                "registro {}, read sent {}: {} down {:.3} s after a 204 (through registro {through}, answered {}), {when}",
                e.server,
                at(e.sent),
                id(n),
                (e.sent - beat) as f64 / 1e6,
                at(beat)
            ));
        }
    }
    let mut summary = format!(
        "{reads} reads; {} answers of `down` within {:.0} s of a 204, for {} instances",
        failures.len(),
        window as f64 / 1e6,
        instances.len()
    );
    for (when, count) in &by_context {
        summary.push_str(&format!("; {count} {when}"));
    }
    Verdict {
        name: "no false down",
        summary,
        failures: shown(failures),
    }
}

/// Check 3: an index never goes backwards on a server, and one index is
/// never two views.
pub fn index(h: &History) -> Verdict {
    let mut failures = Vec::new();
    let indexed: Vec<(&Event, u64)> = h
        .events
        .iter()
        .filter_map(|e| Some((e, e.view.as_ref()?.index?)))
        .collect();
    let mut groups: BTreeMap<(usize, bool), Vec<(&Event, u64)>> = BTreeMap::new();
    for &(e, i) in &indexed {
        if let Op::Read { all } = e.op {
            groups.entry((e.server, all)).or_default().push((e, i));
        }
    }
    for ((server, all), reads) in &groups {
        let mut by_answer = reads.clone();
        by_answer.sort_by_key(|(e, _)| e.answered);
        let mut by_send = reads.clone();
        by_send.sort_by_key(|(e, _)| e.sent);
        let mut next = 0;
        let mut highest: Option<(&Event, u64)> = None;
        for &(e, i) in &by_send {
            while next < by_answer.len() && by_answer[next].0.answered < e.sent {
                let (f, j) = by_answer[next];
                if highest.is_none_or(|(_, k)| j > k) {
                    highest = Some((f, j));
                }
                next += 1;
            }
            if let Some((f, j)) = highest.filter(|&(_, j)| i < j) {
                failures.push(format!(
                    "registro {server}, {}: index {i} in a read sent {}, after index {j} in a read answered {} ({})",
                    if *all { "/apps" } else { "/apps/chaos" },
                    at(e.sent),
                    at(f.answered),
                    context(h, e.sent)
                ));
            }
        }
    }
    let mut seen: HashMap<(bool, u64), &Event> = HashMap::new();
    for &(e, i) in &indexed {
        let Op::Read { all } = e.op else { continue };
        let first = *seen.entry((all, i)).or_insert(e);
        let (a, b) = (first.view.as_ref(), e.view.as_ref());
        if let (Some(a), Some(b)) = (a, b) {
            if !a.same(b) {
                failures.push(format!(
                    "index {i} answered for two views: registro {} at {} and registro {} at {} ({}; {})",
                    first.server,
                    at(first.sent),
                    e.server,
                    at(e.sent),
                    difference(a, b),
                    context(h, e.sent)
                ));
            }
        }
    }
    Verdict {
        name: "no index going backwards",
        summary: format!(
            "{} reads with an index, on {} server routes",
            indexed.len(),
            groups.len()
        ),
        failures: shown(failures),
    }
}

/// What differs between two views, in a few words.
fn difference(a: &View, b: &View) -> String {
    let ids: BTreeSet<u32> = a
        .instances
        .iter()
        .chain(&b.instances)
        .map(|p| p.0)
        .collect();
    let diffs: Vec<String> = ids
        .into_iter()
        .filter(|&n| a.status(n) != b.status(n))
        .take(3)
        .map(|n| {
            let name = |v: &View| v.status(n).map_or("absent", St::name);
            format!("{} {} then {}", id(n), name(a), name(b))
        })
        .collect();
    if diffs.is_empty() {
        "other apps".into()
    } else {
        diffs.join(", ")
    }
}

/// Check 4: every server caught up within 3 s of each heal, and all agree
/// within 3 s once changes stopped.
pub fn healed(h: &History) -> Verdict {
    let mut failures = Vec::new();
    let acks = Acks::of(h);
    let reads: Vec<&Event> = h
        .events
        .iter()
        .filter(|e| e.op == Op::Read { all: false } && e.process.starts_with("reader"))
        .collect();
    for (k, f) in h.faults.iter().enumerate() {
        let due = f.healed + HEAL;
        let until = h.faults.get(k + 1).map_or(h.end.quiet, |g| g.began);
        let highest = reads
            .iter()
            .filter(|e| e.answered <= f.healed)
            .filter_map(|e| e.view.as_ref()?.index)
            .max();
        for s in 0..h.servers {
            let first = reads
                .iter()
                .filter(|e| e.server == s && e.sent >= due && e.sent < until)
                .min_by_key(|e| e.sent);
            let fault = format!("fault {} ({}, healed {})", k + 1, f.what, at(f.healed));
            let Some(e) = first else {
                failures.push(format!(
                    "registro {s}: no read sent between 3 s after {fault} and {}",
                    at(until)
                ));
                continue;
            };
            let Some(view) = e.view.as_ref() else {
                failures.push(format!(
                    "registro {s}: 3 s after {fault}, a read answered {}",
                    e.outcome.short()
                ));
                continue;
            };
            if let (Some(high), Some(i)) = (highest, view.index) {
                if i < high {
                    failures.push(format!(
                        "registro {s}: 3 s after {fault}, index {i}, below the {high} a server answered before the heal"
                    ));
                }
            }
            let behind: Vec<String> = acks
                .instances(f.healed)
                .into_iter()
                .filter_map(|n| acks.missing(view, n, f.healed, e.answered))
                .collect();
            if let Some(why) = behind.first() {
                failures.push(format!(
                    "registro {s}: 3 s after {fault}, {} acknowledged changes missing: {why}",
                    behind.len()
                ));
            }
        }
    }
    match h.end.equal_at {
        None => failures.push(format!(
            "the servers never answered one same view after changes stopped at {}",
            at(h.end.quiet)
        )),
        Some(t) if t > h.end.quiet + HEAL => failures.push(format!(
            "the servers answered one same view only {:.1} s after changes stopped",
            (t - h.end.quiet) as f64 / 1e6
        )),
        Some(_) => {}
    }
    Verdict {
        name: "all servers equal within 3 s of healing",
        summary: format!(
            "{} faults healed; the final view {}",
            h.faults.len(),
            match h.end.equal_at {
                Some(t) => format!(
                    "equal on every server {:.1} s after changes stopped",
                    t.saturating_sub(h.end.quiet) as f64 / 1e6
                ),
                None => "never equal".into(),
            }
        ),
        failures: shown(failures),
    }
}

/// Check 5: at least 99 % of heartbeats answered 204 by some server.
pub fn heartbeats(h: &History) -> Verdict {
    let mut beats: BTreeMap<(u32, u64), Vec<&Event>> = BTreeMap::new();
    for e in &h.events {
        if let Op::Heartbeat(n, beat) = e.op {
            beats.entry((n, beat)).or_default().push(e);
        }
    }
    let mut answered = 0;
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_failed = BTreeMap::new();
    for ((n, _), attempts) in &beats {
        if attempts.iter().any(|e| e.ok(204)) {
            answered += 1;
        } else {
            let mut attempts = attempts.clone();
            attempts.sort_by_key(|e| e.attempt);
            let outcomes: Vec<String> = attempts.iter().map(|e| e.outcome.short()).collect();
            let key = outcomes.join(" then ");
            *why.entry(key).or_default() += 1;
            let sent = attempts.first().map_or(0, |e| e.sent);
            first_failed.entry(sent).or_insert(*n);
        }
    }
    let total = beats.len();
    let share = if total == 0 {
        1.0
    } else {
        answered as f64 / total as f64
    };
    let mut failures = Vec::new();
    if share < ANSWERED {
        let mut kinds: Vec<(usize, String)> = why.into_iter().map(|(k, c)| (c, k)).collect();
        kinds.sort_unstable_by(|a, b| b.cmp(a));
        failures.push(format!(
            "{:.2} % of {total} heartbeats answered 204, below {:.0} %",
            share * 100.0,
            ANSWERED * 100.0
        ));
        for (count, outcomes) in kinds.into_iter().take(SHOWN - 2) {
            failures.push(format!("{count} heartbeats got {outcomes}"));
        }
        if let Some((&t, &n)) = first_failed.iter().next() {
            failures.push(format!(
                "the first that failed: {} sent {} ({})",
                id(n),
                at(t),
                context(h, t)
            ));
        }
    }
    Verdict {
        name: "99 % of heartbeats answered 204 after failover",
        summary: format!(
            "{answered} of {total} heartbeats answered 204 ({:.2} %)",
            share * 100.0
        ),
        failures,
    }
}

/// Check 6: no read more than 3 s behind, unless it says how long it has
/// been out of contact.
pub fn stale(h: &History) -> Verdict {
    let acks = Acks::of(h);
    let mut reads: Vec<&Event> = h
        .events
        .iter()
        .filter(|e| e.op == Op::Read { all: false } && e.view.is_some())
        .collect();
    let mut by_answer = reads.clone();
    by_answer.sort_by_key(|e| e.answered);
    reads.sort_by_key(|e| e.sent);
    let mut next = 0;
    let mut highest: Option<(u64, &Event)> = None;
    let mut failures = Vec::new();
    let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
    let mut admitted = 0;
    for e in reads {
        let view = e.view.as_ref().expect("filtered");
        let cutoff = e.sent.saturating_sub(HEAL);
        while next < by_answer.len() && by_answer[next].answered <= cutoff {
            let f = by_answer[next];
            if let Some(i) = f.view.as_ref().and_then(|v| v.index) {
                if highest.is_none_or(|(j, _)| i > j) {
                    highest = Some((i, f));
                }
            }
            next += 1;
        }
        let behind = match (highest, view.index) {
            (Some((j, f)), Some(i)) if i < j => Some(format!(
                "index {i}, below the {j} registro {} answered at {}",
                f.server,
                at(f.answered)
            )),
            _ => acks
                .instances(cutoff)
                .into_iter()
                .find_map(|n| acks.missing(view, n, cutoff, e.answered)),
        };
        let Some(why) = behind else { continue };
        if view.last_contact.is_some_and(|ms| ms > HEAL / 1000) {
            admitted += 1;
            continue;
        }
        let (during, after) = phase(h, e.sent);
        let group = match after {
            Some(_) => format!("after {during}"),
            None => during,
        };
        *by_phase
            .entry(format!("registro {}, {group}", e.server))
            .or_default() += 1;
        failures.push(format!(
            "registro {}, read sent {}, over 3 s behind: {why} ({})",
            e.server,
            at(e.sent),
            context(h, e.sent)
        ));
    }
    let mut summary = format!(
        "{} reads over 3 s behind without saying so, {admitted} that said so",
        failures.len()
    );
    for (group, count) in &by_phase {
        summary.push_str(&format!("; {count} on {group}"));
    }
    Verdict {
        name: "no view over 3 s behind unless it says so",
        summary,
        failures: shown(failures),
    }
}

/// What else the history says, for the report: each operation's outcomes
/// by attempt, the reasons of its 503s, reads with `Registro-Last-Contact`.
pub fn stats(h: &History) -> Vec<String> {
    let kind = |op: &Op| match op {
        Op::CreateApp(_) => "create app",
        Op::Register(_) => "register",
        Op::Heartbeat(..) => "heartbeat",
        Op::OutOfService(_) => "out of service",
        Op::Read { .. } => "read",
    };
    let mut outcomes: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut reasons: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for e in &h.events {
        *outcomes
            .entry(kind(&e.op))
            .or_default()
            .entry(e.outcome.short())
            .or_default() += 1;
        if let super::history::Outcome::Status(s @ (404 | 409 | 503), Some(why)) = &e.outcome {
            let why: String = why.chars().take(70).collect();
            *reasons
                .entry(kind(&e.op))
                .or_default()
                .entry(format!("{s} {why}"))
                .or_default() += 1;
        }
    }
    let mut lines = Vec::new();
    for (op, counts) in &outcomes {
        let mut counts: Vec<(&String, &usize)> = counts.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1));
        let list: Vec<String> = counts.iter().map(|(o, c)| format!("{o} x{c}")).collect();
        lines.push(format!("{op} attempts: {}", list.join(", ")));
        if let Some(r) = reasons.get(op) {
            let mut r: Vec<(&String, &usize)> = r.iter().collect();
            r.sort_by(|a, b| b.1.cmp(a.1));
            for (why, c) in r.into_iter().take(3) {
                lines.push(format!("  {c} x {why}"));
            }
        }
    }
    let views: Vec<&View> = h.events.iter().filter_map(|e| e.view.as_ref()).collect();
    let contact = views.iter().filter(|v| v.last_contact.is_some()).count();
    lines.push(format!(
        "reads carrying Registro-Last-Contact: {contact} of {}",
        views.len()
    ));
    lines
}

#[cfg(test)]
mod tests {
    //! Each check on a small history made by hand: it passes on a good one,
    //! and fails on the same history with one promise broken.

    use super::super::history::{End, Event, Fault, History, Op, Outcome, St, View};
    use super::*;

    const S: Micros = SECOND;

    fn event(process: &str, op: Op, server: usize, sent: Micros, outcome: u16) -> Event {
        Event {
            process: process.into(),
            op,
            attempt: 0,
            server,
            sent,
            answered: sent + S / 100,
            outcome: Outcome::Status(outcome, None),
            view: None,
        }
    }

    fn read(process: &str, all: bool, server: usize, sent: Micros, index: u64, st: St) -> Event {
        let mut e = event(process, Op::Read { all }, server, sent, 200);
        e.view = Some(View {
            index: Some(index),
            last_contact: None,
            instances: vec![(1, st)],
            apps: if all { vec!["chaos".into()] } else { vec![] },
        });
        e
    }

    /// Two servers; instance 1 registered, heartbeaten every second until
    /// 10 s; reads on both servers every half second, `up` at index 7 from
    /// its first heartbeat; a fault from 4 s to 5 s; changes stop at 10 s,
    /// the servers agree at 10.5 s.
    fn good() -> History {
        let mut events = vec![
            event("setup", Op::CreateApp("chaos".into()), 0, 0, 201),
            event("setup", Op::Register(1), 0, S / 10, 201),
        ];
        for beat in 0..10 {
            events.push(event(
                "hb-1",
                Op::Heartbeat(1, beat),
                beat as usize % 2,
                S / 5 + beat * S,
                204,
            ));
        }
        for half in 1..20 {
            for server in 0..2 {
                let t = half * S / 2;
                let (index, st) = if t < S / 4 {
                    (6, St::Starting)
                } else {
                    (7, St::Up)
                };
                events.push(read(
                    &format!("reader-{server}"),
                    false,
                    server,
                    t,
                    index,
                    st,
                ));
            }
        }
        for server in 0..2 {
            events.push(read("final", true, server, 10 * S + S / 4, 9, St::Up));
        }
        History {
            events,
            faults: vec![Fault {
                what: "kill -9 of registro 1".into(),
                began: 4 * S,
                healed: 5 * S,
            }],
            end: End {
                quiet: 10 * S,
                equal_at: Some(10 * S + S / 2),
            },
            down_after: 3 * S,
            servers: 2,
        }
    }

    fn failed(v: Verdict) -> Vec<String> {
        assert!(!v.passed(), "{} passed: {}", v.name, v.summary);
        v.failures
    }

    #[test]
    fn a_good_history_passes_every_check() {
        for v in all(&good()) {
            assert!(v.passed(), "{}: {:?}", v.name, v.failures);
        }
    }

    #[test]
    fn a_registration_missing_from_a_final_view_is_lost() {
        let mut h = good();
        let last = h.events.len() - 1;
        h.events[last].view.as_mut().unwrap().instances.clear();
        let f = failed(lost(&h));
        assert!(f[0].contains("registro 1: i-1"), "{f:?}");
        // A first heartbeat undone (`starting` again) is lost too.
        let mut h = good();
        h.events[last].view.as_mut().unwrap().instances = vec![(1, St::Starting)];
        failed(lost(&h));
        // An app created with 201 and not listed.
        let mut h = good();
        h.events
            .push(event("churn", Op::CreateApp("x".into()), 1, 6 * S, 201));
        failed(lost(&h));
    }

    #[test]
    fn down_within_two_seconds_of_a_204_is_false_and_later_is_not() {
        let mut h = good();
        // The last 204 was answered at 9.21 s: down at 11.1 s is false...
        h.events
            .push(read("reader-0", false, 0, 11 * S + S / 10, 8, St::Down));
        let f = failed(false_down(&h));
        assert!(f[0].contains("i-1 down 1.890 s after a 204"), "{f:?}");
        // ... and down at 11.3 s (2.09 s later) is what down-after allows.
        let mut h = good();
        h.events
            .push(read("reader-0", false, 0, 11 * S + 3 * S / 10, 8, St::Down));
        assert!(false_down(&h).passed());
    }

    #[test]
    fn a_lower_index_after_a_higher_one_or_one_index_for_two_views_fails() {
        let mut h = good();
        h.events
            .push(read("reader-1", false, 1, 9 * S + S / 4, 6, St::Up));
        let f = failed(index(&h));
        assert!(f[0].contains("index 6"), "{f:?}");
        // Overlapping reads may answer in any order.
        let mut h = good();
        let mut slow = read("reader-1", false, 1, 9 * S + S / 5, 8, St::Up);
        slow.answered = 9 * S + 9 * S / 10;
        h.events.push(slow);
        h.events
            .push(read("reader-1", false, 1, 9 * S + 3 * S / 10, 7, St::Up));
        assert!(index(&h).passed(), "{:?}", index(&h).failures);
        // Index 7 is `up`; `down` at 7 on the other server is another view.
        let mut h = good();
        h.events
            .push(read("reader-0", false, 0, 9 * S + S / 4, 7, St::Down));
        let f = failed(index(&h));
        assert!(
            f.iter()
                .any(|f| f.contains("index 7 answered for two views")),
            "{f:?}"
        );
    }

    #[test]
    fn a_server_behind_three_seconds_after_healing_fails() {
        // Registro 1 reads an index below the one answered before the heal.
        let mut h = good();
        for e in h.events.iter_mut() {
            if e.server == 1 && e.process == "reader-1" && e.sent >= 8 * S {
                e.view.as_mut().unwrap().index = Some(6);
            }
        }
        let f = failed(healed(&h));
        assert!(f[0].contains("registro 1: 3 s after fault 1"), "{f:?}");
        // Or it misses a change acknowledged before the heal.
        let mut h = good();
        for e in h.events.iter_mut() {
            if e.server == 1 && e.process == "reader-1" && e.sent >= 8 * S {
                e.view.as_mut().unwrap().instances.clear();
            }
        }
        failed(healed(&h));
        // Or no server agrees with another after changes stopped.
        let mut h = good();
        h.end.equal_at = None;
        failed(healed(&h));
        let mut h = good();
        h.end.equal_at = Some(h.end.quiet + 4 * S);
        failed(healed(&h));
    }

    #[test]
    fn a_read_over_three_seconds_behind_fails_unless_it_says_so() {
        // At 9.1 s registro 0 answers the index of 0.2 s ago (before the
        // first heartbeat).
        let mut h = good();
        h.events
            .push(read("reader-0", false, 0, 9 * S + S / 10, 6, St::Starting));
        let f = failed(stale(&h));
        assert!(f[0].contains("index 6, below the 7"), "{f:?}");
        // Or misses a change acknowledged at 6 s.
        let mut h = good();
        h.events
            .push(event("churn", Op::OutOfService(1), 1, 6 * S, 204));
        let f = failed(stale(&h));
        assert!(f[0].contains("i-1 was taken out of service"), "{f:?}");
        // A change 2.5 s old need not be seen yet.
        let mut h = good();
        h.events
            .push(event("churn", Op::OutOfService(1), 1, 7 * S, 204));
        h.events.retain(|e| e.sent <= 9 * S + S / 2);
        h.end.quiet = 9 * S + S / 2;
        assert!(stale(&h).passed(), "{:?}", stale(&h).failures);
        // A server that says it lost contact 5 s ago may be behind.
        let mut h = good();
        let mut e = read("reader-0", false, 0, 9 * S + S / 10, 6, St::Starting);
        e.view.as_mut().unwrap().last_contact = Some(5000);
        h.events.push(e);
        assert!(stale(&h).passed());
    }

    #[test]
    fn fewer_than_99_in_100_heartbeats_answered_fails() {
        let beats = |failing: u64| {
            let mut h = good();
            h.events.retain(|e| !matches!(e.op, Op::Heartbeat(..)));
            for beat in 0..100 {
                let code = if beat < failing { 503 } else { 204 };
                h.events.push(event(
                    "hb-1",
                    Op::Heartbeat(1, beat),
                    0,
                    beat * S / 10,
                    code,
                ));
                if beat == 0 {
                    // A failover that worked counts as answered.
                    let mut e = event("hb-1", Op::Heartbeat(1, 100), 0, 0, 503);
                    h.events.push(e.clone());
                    e.attempt = 1;
                    e.server = 1;
                    e.outcome = Outcome::Status(204, None);
                    h.events.push(e);
                }
            }
            heartbeats(&h)
        };
        assert!(beats(1).passed());
        let f = failed(beats(2));
        assert!(f[0].starts_with("98.02 % of 101"), "{f:?}");
        assert!(f[1].contains("2 heartbeats got 503"), "{f:?}");
    }
}
