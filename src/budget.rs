//! The output budget: one process-wide bound on the bytes of answers owed
//! to clients (encoded, and not yet taken by a slow reader), beyond each
//! connection's own bounds (`--output-budget`, 256 MiB by default).
//!
//! A large answer reserves its size before it is encoded
//! ([`OutputBudget::reserve`]); past the budget it is refused (503), unless
//! nothing at all is owed (an answer larger than the whole budget is served
//! alone). Its [`Charge`] travels with its bytes (`http::Body::Shared`) and
//! is let go when the last connection (or the shared answers) lets go of
//! them: a body shared by many connections counts once. Small answers a
//! connection is left owing are charged too, whatever the budget (each
//! connection's are bounded), and while the budget is spent such a
//! connection reads no further request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The budget: bytes owed now, and the most allowed.
#[derive(Debug)]
pub struct OutputBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

/// The default `--output-budget`.
pub const DEFAULT: usize = 256 << 20;

impl Default for OutputBudget {
    fn default() -> OutputBudget {
        OutputBudget {
            limit: AtomicUsize::new(DEFAULT),
            used: AtomicUsize::new(0),
        }
    }
}

impl OutputBudget {
    /// Sets the most bytes allowed.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// The most bytes allowed.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// The bytes owed now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the bytes owed have reached the limit.
    pub fn spent(&self) -> bool {
        self.used() >= self.limit()
    }

    /// Reserves `bytes` for an answer about to be encoded, if they fit (or
    /// if nothing at all is owed).
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used.saturating_add(bytes) <= limit)
                    .then(|| used.saturating_add(bytes))
            })
            .ok()?;
        Some(Charge {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Its families of a `/metrics` page.
    pub fn render(&self, o: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(
            o,
            "# HELP registro_output_owed_bytes Bytes of answers owed to clients (written, not yet read), a shared one counted once.\n\
             # TYPE registro_output_owed_bytes gauge\n\
             registro_output_owed_bytes {}\n\
             # HELP registro_output_budget_bytes The most bytes owed to clients before a new large answer is refused with 503 (--output-budget).\n\
             # TYPE registro_output_budget_bytes gauge\n\
             registro_output_budget_bytes {}\n",
            self.used(),
            self.limit()
        );
    }

    /// Charges `bytes` whatever the budget.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Charge {
            budget: Arc::clone(self),
            bytes,
        }
    }
}

/// Bytes counted in an [`OutputBudget`] until this is dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<OutputBudget>,
    bytes: usize,
}

impl Charge {
    /// Counts `bytes` instead of what was charged.
    pub fn resize(&mut self, bytes: usize) {
        if bytes == self.bytes {
            return;
        }
        if bytes > self.bytes {
            self.budget
                .used
                .fetch_add(bytes - self.bytes, Ordering::AcqRel);
        } else {
            self.budget
                .used
                .fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        }
        self.bytes = bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_refused_past_the_budget_and_it_comes_back_when_they_go() {
        let budget = Arc::new(OutputBudget::default());
        budget.set_limit(100);
        let a = budget.reserve(60).expect("fits");
        assert!(budget.reserve(50).is_none(), "60 + 50 > 100");
        let mut b = budget.reserve(40).expect("60 + 40 fits");
        assert!(budget.spent());
        b.resize(10);
        assert_eq!(budget.used(), 70);
        drop(a);
        assert_eq!(budget.used(), 10);
        drop(b);
        assert_eq!(budget.used(), 0);
        // One answer larger than the whole budget is served alone.
        let big = budget.reserve(1_000).expect("nothing else is owed");
        assert!(budget.reserve(1).is_none());
        // Small answers left owed are counted, whatever the budget.
        let small = budget.charge(5);
        assert_eq!(budget.used(), 1_005);
        drop((big, small));
        assert_eq!(budget.used(), 0);
    }
}
