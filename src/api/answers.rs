//! Answers to watches, shared by the watchers one change wakes together.
//!
//! A change to an app wakes every watch parked on it at once: 10,000
//! watchers would each lock the registry, copy the same view and encode the
//! same JSON, and with several workers they queue on the registry's lock.
//! Instead the first to answer keeps its encoded answer here, and the others
//! answer with a copy of the bytes, without the lock, while it is current:
//! made in the same generation (no index has changed anywhere since it was
//! made) and less than [`FRESH`] ago (a heartbeat changes `lastRenewal` but no
//! index), and newer than the index the watcher has seen. Only watches use
//! it; a plain read always reads the registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use super::Topic;
use crate::registry::{Millis, StatusSet};

/// How long an answer may be shared.
pub const FRESH: Millis = 250;
/// Answers kept: the topics being watched at the same moment.
const KEPT: usize = 64;

/// The shared answers, and the generation they are checked against.
#[derive(Debug, Default)]
pub struct Answers {
    generation: AtomicU64,
    kept: RwLock<Vec<Answer>>,
}

#[derive(Debug)]
struct Answer {
    topic: Topic,
    filter: StatusSet,
    generation: u64,
    made: Millis,
    index: u64,
    body: Vec<u8>,
}

impl Answers {
    /// Called for every published change of an index, before watchers are
    /// woken: every answer kept so far is out of date.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The generation to pass to [`Answers::keep`], read before the
    /// registry is.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A current answer for a watcher of `topic` that has seen `seen`: its
    /// index and body.
    pub fn find(
        &self,
        topic: &Topic,
        filter: StatusSet,
        seen: u64,
        now: Millis,
    ) -> Option<(u64, Vec<u8>)> {
        let generation = self.generation();
        let kept = self.kept.read().unwrap_or_else(PoisonError::into_inner);
        kept.iter()
            .find(|a| {
                a.topic == *topic
                    && a.filter == filter
                    && a.generation == generation
                    && now.saturating_sub(a.made) < FRESH
                    && a.index > seen
            })
            .map(|a| (a.index, a.body.clone()))
    }

    /// Keeps the answer of `topic` read in `generation` at `now`, in place of
    /// the one before it, or of the oldest when `KEPT` are kept.
    pub fn keep(
        &self,
        topic: Topic,
        filter: StatusSet,
        generation: u64,
        now: Millis,
        index: u64,
        body: &[u8],
    ) {
        if generation != self.generation() {
            return; // out of date already
        }
        let answer = Answer {
            topic,
            filter,
            generation,
            made: now,
            index,
            body: body.to_vec(),
        };
        let mut kept = self.kept.write().unwrap_or_else(PoisonError::into_inner);
        let at = kept
            .iter()
            .position(|a| a.topic == answer.topic && a.filter == answer.filter);
        match at {
            Some(at) => kept[at] = answer,
            None if kept.len() < KEPT => kept.push(answer),
            None => {
                if let Some(oldest) = kept.iter_mut().min_by_key(|a| a.made) {
                    *oldest = answer;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn web() -> Topic {
        Topic::App(Arc::from("web"))
    }

    #[test]
    fn an_answer_is_shared_only_while_current() {
        let answers = Answers::default();
        let all = StatusSet::ALL;
        let g = answers.generation();
        answers.keep(web(), all, g, 1_000, 7, b"seven");
        let found = |topic: &Topic, filter, seen, now| answers.find(topic, filter, seen, now);
        assert_eq!(found(&web(), all, 6, 1_000), Some((7, b"seven".to_vec())));
        // Not for a watcher that has seen it, another topic or filter.
        assert_eq!(found(&web(), all, 7, 1_000), None);
        assert_eq!(found(&Topic::All, all, 6, 1_000), None);
        assert_eq!(found(&web(), StatusSet::NONE, 6, 1_000), None);
        // Not once FRESH has passed (lastRenewal may have moved)...
        assert_eq!(
            found(&web(), all, 6, 1_000 + FRESH - 1).map(|f| f.0),
            Some(7)
        );
        assert_eq!(found(&web(), all, 6, 1_000 + FRESH), None);
        // ...nor after any change of an index.
        answers.changed();
        assert_eq!(found(&web(), all, 6, 1_000), None);
        // An answer read before that change is not kept.
        answers.keep(web(), all, g, 1_001, 8, b"eight");
        assert_eq!(found(&web(), all, 6, 1_001), None);
    }

    #[test]
    fn at_most_kept_answers_are_kept_and_the_oldest_goes() {
        let answers = Answers::default();
        let g = answers.generation();
        for k in 0..=KEPT as u64 {
            let topic = Topic::App(Arc::from(format!("app-{k}")));
            answers.keep(topic, StatusSet::ALL, g, k, 1, b"x");
        }
        let kept = answers.kept.read().unwrap();
        assert_eq!(kept.len(), KEPT);
        assert!(!kept
            .iter()
            .any(|a| a.topic == Topic::App(Arc::from("app-0"))));
    }
}
