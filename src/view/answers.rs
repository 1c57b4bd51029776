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
use std::sync::{Arc, PoisonError, RwLock};

use super::Topic;
use crate::http::Body;
use crate::registry::{Millis, StatusSet};

/// How long an answer may be shared.
pub const FRESH: Millis = 250;
/// Answers kept: the topics being watched at the same moment.
const KEPT: usize = 64;
/// Bytes kept, over all answers; one answer larger than this is kept alone
/// (its watchers hold it while they write it anyway). Listings of 20,000
/// instances (about 3 MB) with five filters fit.
const KEPT_BYTES: usize = 16 << 20;

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
    body: Arc<Vec<u8>>,
}

impl Answers {
    /// Called for every published change of an index, before watchers are
    /// woken: every answer kept so far is out of date, and is let go.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let stale = std::mem::take(&mut *self.write());
        drop(stale); // freed outside the lock
    }

    /// Lets go of the answers too old to be shared at `now` (the ticker
    /// calls it every second at most, so none outlives FRESH by more).
    pub fn forget_stale(&self, now: Millis) {
        let stale: Vec<Answer> = {
            let mut kept = self.write();
            if kept.iter().all(|a| now.saturating_sub(a.made) < FRESH) {
                return;
            }
            let (stale, fresh) = std::mem::take(&mut *kept)
                .into_iter()
                .partition(|a| now.saturating_sub(a.made) >= FRESH);
            *kept = fresh;
            stale
        };
        drop(stale); // freed outside the lock
    }

    /// The generation to pass to [`Answers::keep`], read before the
    /// registry is.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A current answer for a watcher of `topic` that has seen `seen`: its
    /// index and body (shared, not copied).
    pub fn find(
        &self,
        topic: &Topic,
        filter: StatusSet,
        seen: u64,
        now: Millis,
    ) -> Option<(u64, Body)> {
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
            .map(|a| (a.index, Body::Shared(Arc::clone(&a.body))))
    }

    /// Keeps the answer of `topic` read in `generation` at `now`, in place of
    /// the one before it, or of the oldest when `KEPT` answers or
    /// `KEPT_BYTES` bytes are kept. Returns the body to send: shared with
    /// the watchers that find it, if kept.
    pub fn keep(
        &self,
        topic: Topic,
        filter: StatusSet,
        generation: u64,
        now: Millis,
        index: u64,
        body: Vec<u8>,
    ) -> Body {
        if generation != self.generation() {
            return Body::Owned(body); // out of date already
        }
        let body = Arc::new(body);
        let answer = Answer {
            topic,
            filter,
            generation,
            made: now,
            index,
            body: Arc::clone(&body),
        };
        let gone: Vec<Answer> = {
            let mut kept = self.write();
            let mut gone: Vec<Answer> = Vec::new();
            if let Some(at) = kept
                .iter()
                .position(|a| a.topic == answer.topic && a.filter == answer.filter)
            {
                gone.push(kept.swap_remove(at));
            }
            let mut bytes: usize = kept.iter().map(|a| a.body.len()).sum();
            // The oldest go until the new one fits (or is alone).
            while !kept.is_empty() && (kept.len() >= KEPT || bytes + answer.body.len() > KEPT_BYTES)
            {
                let oldest = (0..kept.len()).min_by_key(|&i| kept[i].made).unwrap_or(0);
                let old = kept.swap_remove(oldest);
                bytes -= old.body.len();
                gone.push(old);
            }
            kept.push(answer);
            gone
        };
        drop(gone); // freed outside the lock
        Body::Shared(body)
    }

    /// The bytes of the answers kept.
    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        let kept = self.kept.read().unwrap_or_else(PoisonError::into_inner);
        kept.iter().map(|a| a.body.len()).sum()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Answer>> {
        self.kept.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn web() -> Topic {
        Topic::App(Arc::from("web"))
    }

    fn app(k: usize) -> Topic {
        Topic::App(Arc::from(format!("app-{k}")))
    }

    fn count(answers: &Answers) -> usize {
        answers.kept.read().unwrap().len()
    }

    #[test]
    fn an_answer_is_shared_only_while_current() {
        let answers = Answers::default();
        let all = StatusSet::ALL;
        let g = answers.generation();
        answers.keep(web(), all, g, 1_000, 7, b"seven".to_vec());
        let found = |topic: &Topic, filter, seen, now| {
            answers
                .find(topic, filter, seen, now)
                .map(|(i, body)| (i, body.to_vec()))
        };
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
        answers.keep(web(), all, g, 1_001, 8, b"eight".to_vec());
        assert_eq!(found(&web(), all, 6, 1_001), None);
    }

    #[test]
    fn at_most_kept_answers_are_kept_and_the_oldest_goes() {
        let answers = Answers::default();
        let g = answers.generation();
        for k in 0..=KEPT {
            answers.keep(app(k), StatusSet::ALL, g, k as Millis, 1, b"x".to_vec());
        }
        let kept = answers.kept.read().unwrap();
        assert_eq!(kept.len(), KEPT);
        assert!(!kept.iter().any(|a| a.topic == app(0)));
    }

    /// Issue 19, finding 2: 15 listings of 2.9 MB with different filters
    /// were all kept, up to 64 of any size.
    #[test]
    fn kept_answers_are_bounded_in_bytes_and_the_oldest_go() {
        let answers = Answers::default();
        let g = answers.generation();
        let quarter = KEPT_BYTES / 4 + 1;
        for k in 0..8 {
            answers.keep(
                app(k),
                StatusSet::ALL,
                g,
                k as Millis,
                1,
                vec![b'x'; quarter],
            );
            assert!(
                answers.kept_bytes() <= KEPT_BYTES,
                "{}",
                answers.kept_bytes()
            );
        }
        assert_eq!(count(&answers), 3);
        assert!(answers.find(&app(7), StatusSet::ALL, 0, 7).is_some());
        assert!(answers.find(&app(4), StatusSet::ALL, 0, 7).is_none());
        // One answer past the bound is kept alone: its watchers hold it
        // anyway while they write it.
        answers.keep(app(9), StatusSet::ALL, g, 9, 1, vec![b'x'; KEPT_BYTES + 1]);
        assert_eq!(count(&answers), 1);
        assert!(answers.find(&app(9), StatusSet::ALL, 0, 9).is_some());
    }

    /// Stale answers (a change of an index, or FRESH passed) are freed,
    /// not kept until another answer takes their place.
    #[test]
    fn stale_answers_are_freed() {
        let answers = Answers::default();
        // The answer a watcher was sent, written and dropped: what is left
        // of it is what `answers` keeps.
        let sent = |at: Millis| {
            let g = answers.generation();
            match answers.keep(web(), StatusSet::ALL, g, at, 7, vec![1; 100]) {
                Body::Shared(body) => Arc::downgrade(&body),
                Body::Owned(_) => panic!("a kept answer is shared"),
            }
        };
        let body = sent(1_000);
        answers.forget_stale(1_000 + FRESH - 1);
        assert!(body.upgrade().is_some());
        answers.forget_stale(1_000 + FRESH);
        assert!(body.upgrade().is_none(), "freed once FRESH has passed");
        assert_eq!(answers.kept_bytes(), 0);
        let body = sent(2_000);
        assert!(body.upgrade().is_some());
        answers.changed();
        assert!(body.upgrade().is_none(), "freed by a change");
    }

    /// The watchers of one change share the bytes: not a copy each.
    #[test]
    fn watchers_share_one_body() {
        let answers = Answers::default();
        let g = answers.generation();
        let sent = answers.keep(web(), StatusSet::ALL, g, 1_000, 7, b"seven".to_vec());
        let found = answers.find(&web(), StatusSet::ALL, 6, 1_000).map(|f| f.1);
        match (sent, found) {
            (Body::Shared(a), Some(Body::Shared(b))) => assert!(Arc::ptr_eq(&a, &b)),
            other => panic!("not shared: {other:?}"),
        }
    }
}
