//! Parked watches: the table of watches by topic, and what a worker does
//! with a parked watch's connection.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::http;
use crate::metrics::Metrics;
use crate::registry::Millis;
use crate::view::Topic;

use super::conn::{Conn, ConnIo, Phase};
use super::lock;
use super::worker::{Verdict, Worker};

/// Parked watches by topic: which connections to wake when a topic changes.
/// `registro_watches_waiting` follows its size.
#[derive(Debug, Default)]
pub(super) struct Watches {
    pub(super) by_topic: HashMap<Topic, HashSet<(usize, u64)>>,
    pub(super) of: HashMap<(usize, u64), Topic>,
    pub(super) metrics: Option<Arc<Metrics>>,
}

impl Watches {
    pub(super) fn new(metrics: Arc<Metrics>) -> Watches {
        Watches {
            metrics: Some(metrics),
            ..Watches::default()
        }
    }

    pub(super) fn park(&mut self, slot: usize, id: u64, topic: Topic) {
        self.unpark(slot, id);
        self.by_topic
            .entry(topic.clone())
            .or_default()
            .insert((slot, id));
        self.of.insert((slot, id), topic);
        if let Some(m) = &self.metrics {
            m.watch_parked();
        }
    }

    pub(super) fn unpark(&mut self, slot: usize, id: u64) {
        if let Some(topic) = self.of.remove(&(slot, id)) {
            if let Some(m) = &self.metrics {
                m.watch_unparked();
            }
            if let Some(set) = self.by_topic.get_mut(&topic) {
                set.remove(&(slot, id));
                if set.is_empty() {
                    self.by_topic.remove(&topic);
                }
            }
        }
    }

    /// Takes every connection parked on one of `topics`.
    pub(super) fn woken(&mut self, topics: &[Topic]) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for topic in topics {
            if let Some(set) = self.by_topic.remove(topic) {
                for key in set {
                    if self.of.remove(&key).is_some() {
                        if let Some(m) = &self.metrics {
                            m.watch_unparked();
                        }
                    }
                    out.push(key);
                }
            }
        }
        out
    }
}

impl Worker<'_> {
    /// A parked watch: woken, due, the server stopping, or the client has
    /// shut its side (it can ask nothing more: answered at once, as at its
    /// `wait`, then what it sent behind the watch, then closed).
    pub(super) fn parked(&mut self, conn: &Conn, io: &mut ConnIo, now: Millis) -> Verdict {
        let Phase::Parked(parked) = &io.phase else {
            return Verdict::Close;
        };
        let deadline = parked.1;
        let stopping = self.shared.stopping();
        let mut answer =
            conn.woken.swap(false, Ordering::SeqCst) || now >= deadline || stopping || io.eof;
        // Staying parked: the client may have gone away, shut its side, or
        // sent its next request early. (Answered now, the socket is read
        // after the answer, as for any request: a read here would cost each
        // of 10,000 woken watchers a system call that finds nothing.)
        if !answer {
            match self.read_while_parked(io) {
                Some(true) => {}
                Some(false) => {
                    io.eof = true;
                    answer = true;
                }
                None => return Verdict::Close,
            }
        }
        if !self.flush(io) {
            return Verdict::Close;
        }
        if !answer {
            return Verdict::Keep(deadline);
        }
        let Phase::Parked(parked) = std::mem::replace(&mut io.phase, Phase::Open) else {
            return Verdict::Close;
        };
        let (request, _) = *parked;
        lock(&self.shared.watches).unpark(conn.slot, conn.id);
        if let Some(verdict) = self.answer(
            conn,
            io,
            request,
            now >= deadline || stopping || io.eof,
            Some(deadline),
        ) {
            // Woken for nothing and parked again: what came meanwhile is
            // read now, as it would have been.
            match self.read_while_parked(io) {
                Some(true) => return verdict,
                Some(false) => {
                    io.eof = true;
                    return Verdict::Keep(0);
                }
                None => return Verdict::Close,
            }
        }
        self.open(conn, io, now)
    }

    /// Reads what a parked watch's client sent (kept for after the
    /// answer): `Some(true)` while it may send more, `Some(false)` once it
    /// has shut its side, `None` when the socket failed.
    pub(super) fn read_while_parked(&mut self, io: &mut ConnIo) -> Option<bool> {
        let stream = io.stream.as_ref()?;
        loop {
            if io.pending.len() > http::MAX_HEADER_BYTES + http::MAX_CHUNKED_RAW {
                return Some(true);
            }
            match (&*stream).read(&mut self.scratch) {
                Ok(0) => return Some(false),
                Ok(n) => io.pending.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// After parking: output still owed is flushed on the next event.
    pub(super) fn step_parked_keep(&mut self, conn: &Conn, io: &mut ConnIo) -> Verdict {
        self.stash_out(io);
        if !self.flush(io) {
            return Verdict::Close;
        }
        if conn.woken.load(Ordering::SeqCst) || io.eof {
            return Verdict::Keep(0);
        }
        match &io.phase {
            Phase::Parked(p) => Verdict::Keep(p.1),
            _ => Verdict::Keep(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> Topic {
        Topic::App(Arc::from(name))
    }

    fn sorted(mut v: Vec<(usize, u64)>) -> Vec<(usize, u64)> {
        v.sort_unstable();
        v
    }

    #[test]
    fn parked_watches_wake_on_their_topic_only_and_once() {
        let mut w = Watches::default();
        w.park(1, 10, app("web"));
        w.park(2, 20, app("web"));
        w.park(3, 30, Topic::All);
        w.park(4, 40, app("db"));
        assert_eq!(w.woken(&[app("api")]), []);
        assert_eq!(sorted(w.woken(&[app("web")])), [(1, 10), (2, 20)]);
        // Woken once: parked again only by handling the request again.
        assert_eq!(w.woken(&[app("web")]), []);
        // An app's change is notified with `All` too (the API sends both).
        assert_eq!(
            sorted(w.woken(&[app("db"), Topic::All])),
            [(3, 30), (4, 40)]
        );
        assert!(w.of.is_empty() && w.by_topic.is_empty());
    }

    #[test]
    fn a_closed_or_reparked_connection_is_not_woken_for_its_old_topic() {
        let mut w = Watches::default();
        w.park(1, 10, app("web"));
        w.park(2, 20, app("web"));
        w.unpark(1, 10);
        // The slot reused by another connection: its id differs.
        w.unpark(2, 21);
        w.park(2, 20, Topic::All);
        assert_eq!(w.woken(&[app("web")]), []);
        assert_eq!(w.woken(&[Topic::All]), [(2, 20)]);
        assert!(w.by_topic.is_empty());
    }
}
