//! Answers to watches, shared by the watchers one change wakes together.
//!
//! A change to an app wakes every watch parked on it at once: 10,000
//! watchers would each lock the registry, copy the same view and encode the
//! same JSON, and with several workers they queue on the registry's lock.
//! Instead the first to answer keeps its encoded answer here, and the others
//! answer with a copy of the bytes, without the lock, while it is current:
//! made in the same generation (no index has changed anywhere since it was
//! made) and less than [`FRESH`] ago (a heartbeat changes `lastRenewal` but no
//! index), and newer than the index the watcher has seen.
//!
//! Plain reads of a large listing (at least [`SHARED_FROM`] bytes) share
//! them too: forty slow readers asking for the same 20 MB listing at once
//! hold one copy, not forty. A plain read of a smaller one always reads the
//! registry. Every large answer is counted in the output budget
//! ([`crate::budget`]) from before it is encoded until the last holder lets
//! go of it; the answers kept here are counted while kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::Topic;
use crate::budget::{Charge, OutputBudget};
use crate::http::{Body, Held};
use crate::registry::{Millis, StatusSet};

/// How long an answer may be shared.
pub const FRESH: Millis = 250;
/// Answers kept: the topics being watched at the same moment.
const KEPT: usize = 64;
/// Bytes kept, over all answers; one answer larger than this is kept alone
/// (its watchers hold it while they write it anyway). Listings of 20,000
/// instances (about 3 MB) with five filters fit.
const KEPT_BYTES: usize = 16 << 20;
/// A listing this large is shared with plain reads, and counted in the
/// output budget (the size from which a body is written from its own
/// buffer, not copied behind its head).
pub const SHARED_FROM: usize = 64 * 1024;

/// What an answer answers: a read of `topic` with `filter`, made in
/// `generation` (read before the registry was) at `now`.
#[derive(Clone, Debug)]
pub struct Asked {
    /// The list, or one app.
    pub topic: Topic,
    /// The statuses asked for.
    pub filter: StatusSet,
    /// [`Answers::generation`] before the registry was read.
    pub generation: u64,
    /// When.
    pub now: Millis,
}

/// The shared answers, the generation they are checked against, and the
/// output budget.
#[derive(Debug, Default)]
pub struct Answers {
    generation: AtomicU64,
    kept: RwLock<Vec<Answer>>,
    budget: Arc<OutputBudget>,
}

#[derive(Debug)]
struct Answer {
    topic: Topic,
    filter: StatusSet,
    generation: u64,
    made: Millis,
    index: u64,
    body: Arc<Held>,
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

    /// The budget of the bytes owed to clients.
    pub fn budget(&self) -> &Arc<OutputBudget> {
        &self.budget
    }

    /// A current answer for a reader of `topic`: a watcher that has seen
    /// index `seen`, or a plain read (`None`). Its index and body (shared,
    /// not copied).
    pub fn find(
        &self,
        topic: &Topic,
        filter: StatusSet,
        seen: Option<u64>,
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
                    && seen.map_or(a.body.len() >= SHARED_FROM, |seen| a.index > seen)
            })
            .map(|a| (a.index, Body::Shared(Arc::clone(&a.body))))
    }

    /// Keeps the answer to `asked`, at `index`, in place of the one before
    /// it, or of the oldest when `KEPT` answers or `KEPT_BYTES` bytes are
    /// kept. Returns the body to send: shared with the readers that find
    /// it, if kept; with `charge` (resized to it), which lasts as long as
    /// the body.
    pub fn keep(&self, asked: Asked, index: u64, body: Vec<u8>, charge: Option<Charge>) -> Body {
        let body = Arc::new(Held::new(body, charge));
        if asked.generation != self.generation() {
            return Body::Shared(body); // out of date already: not kept
        }
        let answer = Answer {
            topic: asked.topic,
            filter: asked.filter,
            generation: asked.generation,
            made: asked.now,
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

    fn asked(topic: Topic, filter: StatusSet, generation: u64, now: Millis) -> Asked {
        Asked {
            topic,
            filter,
            generation,
            now,
        }
    }

    fn count(answers: &Answers) -> usize {
        answers.kept.read().unwrap().len()
    }

    #[test]
    fn an_answer_is_shared_only_while_current() {
        let answers = Answers::default();
        let all = StatusSet::ALL;
        let g = answers.generation();
        answers.keep(asked(web(), all, g, 1_000), 7, b"seven".to_vec(), None);
        let found = |topic: &Topic, filter, seen, now| {
            answers
                .find(topic, filter, Some(seen), now)
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
        answers.keep(asked(web(), all, g, 1_001), 8, b"eight".to_vec(), None);
        assert_eq!(found(&web(), all, 6, 1_001), None);
    }

    #[test]
    fn at_most_kept_answers_are_kept_and_the_oldest_goes() {
        let answers = Answers::default();
        let g = answers.generation();
        for k in 0..=KEPT {
            answers.keep(
                asked(app(k), StatusSet::ALL, g, k as Millis),
                1,
                b"x".to_vec(),
                None,
            );
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
                asked(app(k), StatusSet::ALL, g, k as Millis),
                1,
                vec![b'x'; quarter],
                None,
            );
            assert!(
                answers.kept_bytes() <= KEPT_BYTES,
                "{}",
                answers.kept_bytes()
            );
        }
        assert_eq!(count(&answers), 3);
        assert!(answers.find(&app(7), StatusSet::ALL, Some(0), 7).is_some());
        assert!(answers.find(&app(4), StatusSet::ALL, Some(0), 7).is_none());
        // One answer past the bound is kept alone: its watchers hold it
        // anyway while they write it.
        answers.keep(
            asked(app(9), StatusSet::ALL, g, 9),
            1,
            vec![b'x'; KEPT_BYTES + 1],
            None,
        );
        assert_eq!(count(&answers), 1);
        assert!(answers.find(&app(9), StatusSet::ALL, Some(0), 9).is_some());
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
            match answers.keep(asked(web(), StatusSet::ALL, g, at), 7, vec![1; 100], None) {
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
        let sent = answers.keep(
            asked(web(), StatusSet::ALL, g, 1_000),
            7,
            b"seven".to_vec(),
            None,
        );
        let found = answers
            .find(&web(), StatusSet::ALL, Some(6), 1_000)
            .map(|f| f.1);
        match (sent, found) {
            (Body::Shared(a), Some(Body::Shared(b))) => assert!(Arc::ptr_eq(&a, &b)),
            other => panic!("not shared: {other:?}"),
        }
    }

    /// Plain reads share a large listing, not a small one, and a body
    /// shared by every reader counts once in the output budget, until the
    /// last lets go of it.
    #[test]
    fn readers_of_a_large_listing_share_it_and_it_counts_once() {
        let answers = Answers::default();
        let budget = Arc::clone(answers.budget());
        let g = answers.generation();
        let large = vec![b'x'; SHARED_FROM];
        let charge = budget.reserve(large.len()).expect("room");
        let sent = answers.keep(
            asked(web(), StatusSet::ALL, g, 1_000),
            7,
            large,
            Some(charge),
        );
        let readers: Vec<Body> = (0..40)
            .map(|_| {
                let (index, body) = answers
                    .find(&web(), StatusSet::ALL, None, 1_100)
                    .expect("shared with a plain read");
                assert_eq!(index, 7);
                body
            })
            .collect();
        assert!(budget.used() >= SHARED_FROM && budget.used() < 2 * SHARED_FROM);
        answers.changed();
        drop(sent);
        assert!(budget.used() > 0, "held by the readers");
        drop(readers);
        assert_eq!(budget.used(), 0);
        // A small answer (a watch's) is not shared with plain reads.
        let g = answers.generation();
        answers.keep(
            asked(web(), StatusSet::ALL, g, 2_000),
            8,
            b"small".to_vec(),
            None,
        );
        assert!(answers.find(&web(), StatusSet::ALL, None, 2_000).is_none());
        assert!(answers
            .find(&web(), StatusSet::ALL, Some(7), 2_000)
            .is_some());
    }
}
