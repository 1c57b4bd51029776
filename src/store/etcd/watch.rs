//! The watch: every change under the prefix applied to the view, from one
//! stream on one member, and the proof that the stream is alive.
//!
//! [`Machine`] decides (pure: the stream's lines and the time in, what to do
//! next out), so a test drives it with a fake stream and a clock; [`run`]
//! does the I/O. A stream that says nothing is asked for progress (etcd
//! answers a progress request with its revision once it has sent everything
//! before it); one that stays silent for [`STALL_AFTER`] (its member paused,
//! or cut off with the connection open) is left for the next member, and
//! meanwhile the view counts as behind (`/healthz` 503). A lost stream is
//! opened again on the next member from the last revision whose events were
//! applied; a canceled one (history compacted) reads the prefix again.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::client::{self, Watch, WatchEvent, WatchLine};
use super::metrics::{Op as MOp, Outcome};
use super::mirror::Mirror;
use super::{lock, Shared, CALL_TIMEOUT};
use crate::clock;
use crate::registry::Millis;
use crate::view::View;

/// Silence after which a stream is asked for progress.
pub const ASK_EVERY: Millis = 1_000;
/// Silence after which a stream is left for the next member, and the view
/// counts as behind.
pub const STALL_AFTER: Millis = 2_000;
/// How often a new stream is asked for progress until its first line
/// arrives (etcd's HTTP server sends the head of its answer only once it
/// has read more of the request: see [`Watch`]).
const ASK_UNTIL_ANSWERED: Millis = 150;
/// The first and the longest wait after a failure.
const BACKOFF_MIN: Millis = 50;
const BACKOFF_MAX: Millis = 1_000;

/// What the watch thread does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Do {
    /// Read the whole prefix again.
    Range,
    /// Open a stream on member `member` (an index into the members) from
    /// revision `from` (closing the one open, if any).
    Open { member: usize, from: i64 },
    /// Read the stream's next line (it returns within its poll).
    Read,
    /// Send a progress request on the stream, then read.
    AskProgress,
    /// Wait this long, then ask again.
    Rest(Millis),
}

/// What a line means for the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    /// Nothing.
    None,
    /// Apply these events.
    Apply(Vec<WatchEvent>),
    /// Everything up to this revision has been sent.
    Progress(i64),
}

/// What the watch thread logs (the member as an index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Note {
    /// A stream could not be opened (logged once until one works again).
    CannotOpen(usize, String),
    /// A stream was lost.
    Lost(usize, String),
    /// A stream said nothing for this long.
    Silent(usize, Millis),
    /// The watch is moved for this reason.
    Moved(usize, &'static str),
    /// etcd canceled the watch: history compacted at a revision, or why.
    Canceled(Option<i64>, String),
    /// A stream works again, on this member from this revision.
    Restarted(usize, i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Range,
    Open,
    Streaming { answered: bool },
    Resting { until: Millis, then_range: bool },
}

/// The watch's decisions.
#[derive(Debug)]
pub(super) struct Machine {
    members: usize,
    member: usize,
    phase: Phase,
    /// The revision of the last events applied (or of the last range): a
    /// new stream starts after it. Progress answers do not move it (etcd
    /// 3.4 may answer one ahead of events not yet sent: etcd-io/etcd#15220).
    resume: i64,
    backoff: Millis,
    /// When the stream open last said something (or was opened).
    heard: Millis,
    /// When it was last asked for progress.
    asked: Millis,
    /// When the view last heard from etcd (a line, or a range).
    contact: Millis,
    /// Whether a stream was lost since the last one worked.
    lost: bool,
    notes: Vec<Note>,
}

impl Machine {
    /// The watch of a view read at `revision`, starting on `member` of
    /// `members`, at `now`.
    pub(super) fn new(members: usize, member: usize, revision: i64, now: Millis) -> Machine {
        Machine {
            members: members.max(1),
            member,
            phase: Phase::Open,
            resume: revision,
            backoff: BACKOFF_MIN,
            heard: now,
            asked: now,
            contact: now,
            lost: false,
            notes: Vec::new(),
        }
    }

    /// What to do at `now`.
    pub(super) fn next(&mut self, now: Millis) -> Do {
        match self.phase {
            Phase::Range => Do::Range,
            Phase::Open => Do::Open {
                member: self.watching(),
                from: self.resume + 1,
            },
            Phase::Resting { until, then_range } => {
                if now < until {
                    return Do::Rest(until - now);
                }
                self.phase = if then_range {
                    Phase::Range
                } else {
                    Phase::Open
                };
                self.next(now)
            }
            Phase::Streaming { answered } => {
                let silent = now.saturating_sub(self.heard);
                if silent >= STALL_AFTER {
                    self.notes.push(Note::Silent(self.watching(), silent));
                    self.move_on();
                    return self.next(now);
                }
                let since_asked = now.saturating_sub(self.asked);
                let ask = if answered {
                    silent >= ASK_EVERY && since_asked >= ASK_EVERY
                } else {
                    since_asked >= ASK_UNTIL_ANSWERED
                };
                if ask {
                    self.asked = now;
                    return Do::AskProgress;
                }
                Do::Read
            }
        }
    }

    /// A range of the prefix ended: its revision, or why it failed.
    pub(super) fn ranged(&mut self, result: Result<i64, String>, now: Millis) {
        match result {
            Ok(revision) => {
                self.resume = revision;
                self.contact = now;
                self.backoff = BACKOFF_MIN;
                self.phase = Phase::Open;
            }
            Err(_) => self.rest(now, true),
        }
    }

    /// A stream was opened (its request sent), or could not be.
    pub(super) fn opened(&mut self, result: Result<(), String>, now: Millis) {
        match result {
            Ok(()) => {
                self.phase = Phase::Streaming { answered: false };
                self.heard = now;
                // Asked at once: the request may need more of its body read
                // before its answer starts.
                self.asked = now.saturating_sub(ASK_UNTIL_ANSWERED);
            }
            Err(why) => {
                if !self.lost {
                    self.notes.push(Note::CannotOpen(self.watching(), why));
                }
                self.lost = true;
                self.member += 1;
                self.rest(now, false);
            }
        }
    }

    /// A line of the stream (already parsed), at `now`.
    pub(super) fn line(&mut self, line: WatchLine, now: Millis) -> Effect {
        self.heard = now;
        self.contact = now;
        if let Phase::Streaming { answered: false } = self.phase {
            self.phase = Phase::Streaming { answered: true };
            if self.lost {
                self.notes
                    .push(Note::Restarted(self.watching(), self.resume + 1));
            }
            self.lost = false;
            self.backoff = BACKOFF_MIN;
        }
        match line {
            WatchLine::Created => Effect::None,
            WatchLine::Progress(revision) => Effect::Progress(revision),
            WatchLine::Events(events, _) => {
                let last = events.iter().map(|e| e.kv.mod_revision).max();
                self.resume = self.resume.max(last.unwrap_or(0));
                Effect::Apply(events)
            }
            WatchLine::Canceled(compacted, why) => {
                self.notes.push(Note::Canceled(compacted, why));
                self.lost = true;
                self.phase = Phase::Range;
                Effect::None
            }
        }
    }

    /// A line that is not one of etcd's: the stream still speaks.
    pub(super) fn noise(&mut self, now: Millis) {
        self.heard = now;
    }

    /// The stream was lost (closed, reset, garbled).
    pub(super) fn lost(&mut self, why: String) {
        self.notes.push(Note::Lost(self.watching(), why));
        self.move_on();
    }

    /// Something else says the stream should be left (etcd reachable
    /// again after a failure; a change not seen in the view in time).
    pub(super) fn restart(&mut self, why: &'static str) {
        if let Phase::Streaming { .. } = self.phase {
            self.notes.push(Note::Moved(self.watching(), why));
            self.move_on();
        }
    }

    /// When the view last heard from etcd.
    pub(super) fn contact(&self) -> Millis {
        self.contact
    }

    /// The member watched (or to be watched next).
    pub(super) fn watching(&self) -> usize {
        self.member % self.members
    }

    /// What to log since the last call.
    pub(super) fn notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    fn move_on(&mut self) {
        self.lost = true;
        self.member += 1;
        self.phase = Phase::Open;
    }

    fn rest(&mut self, now: Millis, then_range: bool) {
        self.phase = Phase::Resting {
            until: now.saturating_add(self.backoff),
            then_range,
        };
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// The watch thread: runs the [`Machine`] against real streams.
pub(super) fn run(s: &Shared, weak: &Weak<View>) {
    let end = client::prefix_end(s.prefix.as_bytes());
    let members = s.client.members();
    let revision = lock(&s.mirror).revision;
    let mut machine = Machine::new(
        members.len(),
        s.client.current(),
        revision,
        clock::now().mono,
    );
    let mut stream: Option<Watch> = None;
    while !s.stopped() {
        if s.restart_watch.swap(false, Ordering::SeqCst) {
            machine.restart("etcd was unreachable meanwhile");
        }
        let now = clock::now().mono;
        match machine.next(now) {
            Do::Rest(ms) => {
                if !s.rest(Duration::from_millis(ms)) {
                    return;
                }
            }
            Do::Range => {
                let result = s.call(MOp::Range, |c| {
                    c.range(s.prefix.as_bytes(), &end, CALL_TIMEOUT)
                });
                let now = clock::now();
                let revision = match result {
                    Ok((kvs, revision)) => {
                        let Some(shown) = weak.upgrade() else { return };
                        let mut view = shown.lock();
                        let mut mirror = lock(&s.mirror);
                        let previous = std::mem::take(&mut *mirror);
                        *mirror = Mirror::from_range(
                            &s.prefix,
                            &kvs,
                            revision,
                            &mut view,
                            now,
                            Some(previous),
                        );
                        s.check_announced(&mirror);
                        drop(mirror);
                        shown.publish(view, true);
                        s.set_applied(revision, weak);
                        Ok(revision)
                    }
                    Err(e) => Err(e.to_string()),
                };
                machine.ranged(revision, now.mono);
            }
            Do::Open { member, from } => {
                stream = None;
                let address = &members[member];
                let started = Instant::now();
                let opened = Watch::open(address, s.prefix.as_bytes(), &end, from, CALL_TIMEOUT);
                let outcome = if opened.is_ok() {
                    Outcome::Ok
                } else {
                    Outcome::Unreachable
                };
                s.metrics.record(MOp::Watch, outcome, started.elapsed());
                let result = opened.map(|w| stream = Some(w)).map_err(|e| e.to_string());
                machine.opened(result, clock::now().mono);
            }
            step @ (Do::Read | Do::AskProgress) => {
                let Some(watch) = stream.as_mut() else {
                    machine.lost("no stream".into());
                    continue;
                };
                let read = if step == Do::AskProgress {
                    watch.request_progress().and_then(|()| watch.next())
                } else {
                    watch.next()
                };
                match read {
                    Ok(None) => {}
                    Ok(Some(value)) => {
                        let now = clock::now();
                        let Some(line) = client::watch_line(&value) else {
                            machine.noise(now.mono);
                            continue;
                        };
                        match machine.line(line, now.mono) {
                            Effect::None => {}
                            Effect::Progress(revision) => s.set_progress(revision, weak),
                            Effect::Apply(events) => {
                                let Some(shown) = weak.upgrade() else { return };
                                let mut view = shown.lock();
                                let mut mirror = lock(&s.mirror);
                                mirror.apply(&events, &mut view, now);
                                mirror.sync(&mut view);
                                s.check_announced(&mirror);
                                let revision = mirror.revision;
                                drop(mirror);
                                shown.publish(view, true);
                                s.set_applied(revision, weak);
                            }
                        }
                    }
                    Err(e) => machine.lost(e.to_string()),
                }
            }
        }
        s.contact.store(machine.contact(), Ordering::SeqCst);
        s.watching.store(machine.watching(), Ordering::SeqCst);
        for note in machine.notes() {
            log_note(s, members, note);
        }
    }
}

impl Shared {
    /// This server's key gone from the mirror (its lease expired or was
    /// revoked): the keeper writes it again at once.
    fn check_announced(&self, mirror: &Mirror) {
        if !mirror.servers.contains(&self.me) {
            self.announce.store(true, Ordering::SeqCst);
            self.stop_signal.notify_all();
        }
    }
}

fn log_note(s: &Shared, members: &[String], note: Note) {
    let at = |m: usize| members.get(m).map_or("?", String::as_str);
    let line = match note {
        Note::CannotOpen(m, why) => {
            format!("cannot watch etcd at {} ({why}); trying the next member", at(m))
        }
        Note::Lost(m, why) => format!("watch stream from etcd at {} lost ({why}); reconnecting", at(m)),
        Note::Silent(m, ms) => format!(
            "no news from etcd at {} for {ms} ms (paused or cut off?); moving the watch to the next member",
            at(m)
        ),
        Note::Moved(m, why) => format!("moving the watch off etcd at {} ({why})", at(m)),
        Note::Canceled(compacted, why) => format!(
            "the watch was canceled by etcd ({}); reading the registry again",
            match compacted {
                Some(at) => format!("history compacted at revision {at}"),
                None => why,
            }
        ),
        Note::Restarted(m, from) => format!("watch restarted on etcd at {} from revision {from}", at(m)),
    };
    s.log.line(format_args!("store: {line}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::etcd::client::Kv;

    fn event(revision: i64) -> WatchEvent {
        WatchEvent {
            delete: false,
            kv: Kv {
                key: b"/registro/apps/web".to_vec(),
                mod_revision: revision,
                ..Kv::default()
            },
        }
    }

    /// Drives the machine over a fake stream: `next` until it reads.
    fn until_read(m: &mut Machine, now: Millis) -> Vec<Do> {
        let mut done = Vec::new();
        loop {
            let step = m.next(now);
            done.push(step);
            match step {
                Do::Read | Do::Rest(_) => return done,
                Do::AskProgress => {}
                Do::Open { .. } => m.opened(Ok(()), now),
                Do::Range => m.ranged(Ok(100), now),
            }
        }
    }

    #[test]
    fn a_new_stream_is_asked_for_progress_until_it_answers() {
        let mut m = Machine::new(3, 0, 7, 1_000);
        assert_eq!(m.next(1_000), Do::Open { member: 0, from: 8 });
        m.opened(Ok(()), 1_000);
        assert_eq!(m.next(1_000), Do::AskProgress);
        assert_eq!(m.next(1_100), Do::Read);
        assert_eq!(m.next(1_150), Do::AskProgress);
        assert_eq!(m.next(1_300), Do::AskProgress);
        assert_eq!(m.line(WatchLine::Created, 1_310), Effect::None);
        // Answered: asked again only after a second of silence.
        assert_eq!(m.next(1_500), Do::Read);
        assert_eq!(m.next(2_309), Do::Read);
        assert_eq!(m.next(2_310), Do::AskProgress);
        assert_eq!(m.line(WatchLine::Progress(9), 2_320), Effect::Progress(9));
        assert_eq!(m.next(3_000), Do::Read);
        assert!(m.notes().is_empty());
    }

    #[test]
    fn a_silent_stream_is_left_for_the_next_member_and_resumes_after_the_last_event() {
        let mut m = Machine::new(3, 1, 7, 0);
        until_read(&mut m, 0);
        m.line(WatchLine::Created, 10);
        assert_eq!(
            m.line(WatchLine::Events(vec![event(8), event(9)], 9), 20),
            Effect::Apply(vec![event(8), event(9)])
        );
        // A progress answer ahead of the events does not move the resume
        // point (etcd 3.4 may send one early).
        assert_eq!(m.line(WatchLine::Progress(15), 30), Effect::Progress(15));
        assert_eq!(m.next(1_030), Do::AskProgress);
        // Then nothing: the member is paused.
        assert_eq!(m.next(2_029), Do::Read);
        assert_eq!(m.contact(), 30);
        assert_eq!(
            m.next(2_030),
            Do::Open {
                member: 2,
                from: 10
            }
        );
        assert_eq!(m.notes(), [Note::Silent(1, 2_000)]);
        m.opened(Ok(()), 2_040);
        m.line(WatchLine::Created, 2_100);
        assert_eq!(m.notes(), [Note::Restarted(2, 10)]);
        assert_eq!((m.contact(), m.watching()), (2_100, 2));
    }

    #[test]
    fn members_that_refuse_are_tried_in_turn_with_a_growing_rest() {
        let mut m = Machine::new(2, 0, 5, 0);
        assert_eq!(m.next(0), Do::Open { member: 0, from: 6 });
        m.opened(Err("refused".into()), 0);
        assert_eq!(m.next(0), Do::Rest(BACKOFF_MIN));
        assert_eq!(m.next(BACKOFF_MIN), Do::Open { member: 1, from: 6 });
        m.opened(Err("refused".into()), 50);
        assert_eq!(m.next(60), Do::Rest(90));
        assert_eq!(m.next(150), Do::Open { member: 0, from: 6 });
        // Logged once, not at every attempt.
        assert_eq!(m.notes(), [Note::CannotOpen(0, "refused".into())]);
        let mut t = 150;
        for _ in 0..10 {
            m.opened(Err("refused".into()), t);
            match m.next(t) {
                Do::Rest(ms) => {
                    assert!(ms <= BACKOFF_MAX);
                    t += ms;
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_lost_stream_reopens_on_the_next_member_and_a_canceled_one_ranges_again() {
        let mut m = Machine::new(3, 0, 5, 0);
        until_read(&mut m, 0);
        m.line(WatchLine::Events(vec![event(6)], 6), 1);
        m.lost("reset".into());
        assert_eq!(m.next(2), Do::Open { member: 1, from: 7 });
        m.opened(Ok(()), 2);
        m.line(WatchLine::Canceled(Some(40), "compacted".into()), 3);
        assert_eq!(m.next(4), Do::Range);
        m.ranged(Ok(50), 5);
        assert_eq!(
            m.next(5),
            Do::Open {
                member: 1,
                from: 51
            }
        );
        assert_eq!(
            m.notes(),
            [
                Note::Lost(0, "reset".into()),
                Note::Restarted(1, 7),
                Note::Canceled(Some(40), "compacted".into())
            ]
        );
        // A failed range rests, then ranges again.
        let mut m = Machine::new(1, 0, 5, 0);
        m.phase = Phase::Range;
        m.ranged(Err("unreachable".into()), 0);
        assert_eq!(m.next(0), Do::Rest(BACKOFF_MIN));
        assert_eq!(m.next(BACKOFF_MIN), Do::Range);
    }

    #[test]
    fn a_restart_moves_a_stream_but_not_a_watch_still_opening() {
        let mut m = Machine::new(3, 0, 5, 0);
        m.restart("etcd was unreachable");
        assert_eq!(m.next(0), Do::Open { member: 0, from: 6 });
        until_read(&mut m, 0);
        m.restart("etcd was unreachable");
        assert_eq!(m.next(1), Do::Open { member: 1, from: 6 });
        assert_eq!(m.notes(), [Note::Moved(0, "etcd was unreachable")]);
    }
}
