//! A log-bucketed latency histogram in microseconds: exact below 128 µs,
//! then 64 buckets per power of two (under 1.6% error), so recording is one
//! array increment and histograms of several threads merge by addition.

/// Values below this are counted exactly.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above `LINEAR` (6 bits of mantissa).
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Powers of two from 2^7 to 2^39 µs (about 6 days): more than enough.
const BUCKETS: usize = LINEAR as usize + 33 * SUB;

/// Latency counts.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= 7
    let sub = (us >> (exp - SUB_BITS)) as usize & (SUB - 1);
    (LINEAR as usize + (exp as usize - 7) * SUB + sub).min(BUCKETS - 1)
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let exp = (i - LINEAR as usize) / SUB + 7;
    let sub = ((i - LINEAR as usize) % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS as usize);
    (1u64 << exp) + sub * width + width / 2
}

impl Histogram {
    /// Counts one latency.
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest latency recorded, exactly.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The latency at quantile `q` (0 < q <= 1): the smallest bucket value
    /// with at least `q` of the counts at or below it; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_close() {
        let mut last = 0;
        for us in (0..200_000u64).chain([1 << 30, 1 << 35]) {
            let i = index(us);
            assert!(i >= last, "{us}");
            last = i;
            let v = value(i);
            let err = v.abs_diff(us) as f64 / us.max(1) as f64;
            assert!(err < 0.016, "{us} -> {v}");
        }
    }

    #[track_caller]
    fn check(values: &[u64], q: f64, expected: u64) {
        let mut h = Histogram::default();
        for &v in values {
            h.record(v);
        }
        assert_eq!(h.quantile(q), expected);
    }

    #[test]
    fn quantiles() {
        check(&[], 0.5, 0);
        check(&[5], 0.5, 5);
        check(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5, 5);
        check(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.99, 10);
        check(
            &[1; 999]
                .iter()
                .copied()
                .chain([100_000])
                .collect::<Vec<_>>(),
            0.999,
            1,
        );
        check(
            &[1; 998]
                .iter()
                .copied()
                .chain([65_536, 65_536])
                .collect::<Vec<_>>(),
            0.999,
            65_536,
        );
        check(&[1000], 1.0, 1000);
    }

    #[test]
    fn merge_adds() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(10);
        b.record(20);
        b.record(5000);
        a.merge(&b);
        assert_eq!((a.count(), a.max(), a.quantile(0.5)), (3, 5000, 20));
    }
}
