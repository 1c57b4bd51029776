//! xorshift64*: a small, fast, seeded generator for what is not a secret:
//! the order of DNS answers, and the random cases of the fuzz and property
//! tests, the integration tests' too (the same seed, the same cases). Not
//! part of the library's interface: public for `tests/` only.

use std::hash::{BuildHasher, Hasher};

use crate::clock;

/// The generator's state.
pub struct Rng(u64);

impl Default for Rng {
    fn default() -> Rng {
        Rng::new()
    }
}

impl Rng {
    /// Seeded from the process's random hash keys and the clock.
    pub fn new() -> Rng {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(clock::now().mono);
        Rng::seeded(hasher.finish())
    }

    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True once in `one_in` times, on average.
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// A fuzz run's seed: `REGISTRO_FUZZ_SEED`, else the clock (the tests
/// print it, to replay a failure).
pub fn fuzz_seed() -> u64 {
    std::env::var("REGISTRO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// How many cases a fuzz property runs: `REGISTRO_FUZZ_CASES`, else
/// `default`.
pub fn fuzz_cases(default: usize) -> usize {
    std::env::var("REGISTRO_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
