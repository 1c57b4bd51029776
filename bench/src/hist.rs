//! Latencies in microseconds, on an HDR histogram: three significant
//! digits at any magnitude, recording is one increment, and the histograms
//! of several threads merge by addition.

/// Latency counts (µs).
#[derive(Debug, Clone)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Histogram {
        // Auto-resizing: any u64 can be recorded.
        Histogram(hdrhistogram::Histogram::new(3).expect("3 significant digits are valid"))
    }
}

impl Histogram {
    /// Counts one latency.
    pub fn record(&mut self, us: u64) {
        // Cannot fail: the histogram resizes to hold any value (where
        // `saturating_record` would clamp to its current range).
        let _ = self.0.record(us);
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        // Cannot fail: this one resizes to hold any value of the other.
        let _ = self.0.add(&other.0);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The largest latency recorded, to three significant digits (0 when
    /// empty).
    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// The latency at quantile `q` (0 < q <= 1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q).min(self.max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::default();
        assert_eq!((a.count(), a.max(), a.quantile(0.5)), (0, 0, 0));
        for us in 1..=1000 {
            a.record(us);
        }
        assert_eq!(a.quantile(0.5), 500);
        assert_eq!(a.quantile(0.99), 990);
        let mut b = Histogram::default();
        b.record(5_000_000);
        a.merge(&b);
        // Within the three significant digits.
        assert_eq!(a.count(), 1001);
        assert!(a.max().abs_diff(5_000_000) <= 5_000, "{}", a.max());
        assert_eq!(a.quantile(1.0), a.max());
    }
}
