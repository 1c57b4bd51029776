//! How every scenario reports: figures formatted alike, medians, and a
//! [`Section`] of markdown whose targets end it in one table, each judged
//! by a [`Verdict`].

use crate::load::Outcome;
use std::fmt::{self, Display, Write};

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

/// The median of `f` over `items`.
pub fn median_of<T>(items: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(items.iter().map(f).collect())
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

/// `thousands` of a count.
pub fn count(n: impl TryInto<u64>) -> String {
    thousands(n.try_into().map_or(f64::NAN, |n| n as f64))
}

/// Microseconds as milliseconds: `1234` -> `1.23 ms`.
pub fn ms(us: u64) -> String {
    ms_f(us as f64)
}

/// The same for a median (NaN: `n/a`).
pub fn ms_f(us: f64) -> String {
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

/// A ratio as `1.02x`.
pub fn times(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}x")
    } else {
        "n/a".to_string()
    }
}

/// A ratio as `98.5%`.
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", x * 100.0)
    } else {
        "n/a".to_string()
    }
}

/// One measurement in one line (progress lines).
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

/// Ratios of `a[i] / b[i]` (requests per second), round by round.
pub fn ratios(a: &[Outcome], b: &[Outcome]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(a, b)| a.rate() / b.rate().max(1e-9))
        .collect()
}

/// How a target fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The target is stated for a size (a fleet, a count) this run is
    /// smaller than (`--quick`, or a flag): its figure is shown, not judged.
    NotAtThisSize,
    /// Nothing was measured.
    NotMeasured,
    /// The figure misses, and so does its control: the machine, not the code.
    Inconclusive,
}

impl Verdict {
    /// Met when `ok`.
    pub fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    /// Met when the figure `v` passes `ok`; not measured when it is NaN.
    pub fn check(v: f64, ok: impl FnOnce(f64) -> bool) -> Verdict {
        if v.is_finite() {
            Verdict::of(ok(v))
        } else {
            Verdict::NotMeasured
        }
    }

    /// This verdict where the run was of the target's size; else
    /// `NotAtThisSize`.
    pub fn at_size(self, of_the_size: bool) -> Verdict {
        if of_the_size {
            self
        } else {
            Verdict::NotAtThisSize
        }
    }
}

impl Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotAtThisSize => "not measured at this size",
            Verdict::NotMeasured => "not measured",
            Verdict::Inconclusive => "inconclusive (the control is as slow)",
        })
    }
}

/// A part of the report: a heading, text and tables written with
/// `write!`, and targets, which end it as one table.
pub struct Section {
    out: String,
    targets: String,
}

impl Section {
    /// A section under `## {title}` (none when empty).
    pub fn new(title: &str) -> Section {
        let mut out = String::new();
        if !title.is_empty() {
            let _ = write!(out, "\n## {title}\n");
        }
        Section {
            out,
            targets: String::new(),
        }
    }

    /// A paragraph.
    pub fn text(&mut self, text: impl Display) {
        let _ = write!(self.out, "\n{text}\n");
    }

    /// Starts a table: the first column left-aligned, the others right.
    pub fn table(&mut self, columns: &[&str]) {
        let _ = writeln!(self.out, "\n| {} |", columns.join(" | "));
        let _ = writeln!(self.out, "|---|{}", "---:|".repeat(columns.len() - 1));
    }

    /// A row of the table: its cells.
    pub fn row(&mut self, cells: &[&dyn Display]) {
        self.out.push('|');
        for cell in cells {
            let _ = write!(self.out, " {cell} |");
        }
        self.out.push('\n');
    }

    /// A target: what it asks, what was measured, how it fared.
    pub fn target(&mut self, what: impl Display, measured: impl Display, verdict: Verdict) {
        let _ = writeln!(self.targets, "| {what} | {measured} | {verdict} |");
    }

    /// The markdown, its targets last.
    pub fn finish(mut self) -> String {
        if !self.targets.is_empty() {
            let _ = write!(
                self.out,
                "\n| Target | measured | |\n|---|---|---|\n{}",
                self.targets
            );
        }
        self.out
    }
}

impl Write for Section {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.out.write_str(s)
    }
}

/// `Intel(R) Xeon(R) ..., nproc 2, Linux ...`.
pub fn machine() -> String {
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
    fn formatting() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(ms(1234), "1.23 ms");
        assert_eq!(ms(45_600), "45.6 ms");
        assert_eq!(ms(456_000), "456 ms");
        assert_eq!(bytes(2_500_000), "2.5 MB");
        assert_eq!(bytes(2_600), "3 kB");
        assert_eq!(times(1.019), "1.02x");
    }

    #[test]
    fn a_section_ends_with_its_targets() {
        let mut s = Section::new("Demo");
        s.table(&["a", "b"]);
        s.row(&[&"x", &1]);
        s.target("fleet >= 15,000", "500", Verdict::of(false).at_size(false));
        s.target("p99 < 5 ms", ms(400), Verdict::check(400.0, |v| v < 5000.0));
        s.target(
            "a ratio",
            times(f64::NAN),
            Verdict::check(f64::NAN, |v| v > 1.0),
        );
        assert_eq!(
            s.finish(),
            "\n## Demo\n\n| a | b |\n|---|---:|\n| x | 1 |\n\n| Target | measured | |\n|---|---|---|\n\
             | fleet >= 15,000 | 500 | not measured at this size |\n\
             | p99 < 5 ms | 0.40 ms | met |\n\
             | a ratio | n/a | not measured |\n"
        );
    }
}
