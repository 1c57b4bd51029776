//! The watch: every change under the prefix applied to the view.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::client::{self, Watch, WatchLine};
use super::metrics::{Op as MOp, Outcome};
use super::mirror::Mirror;
use super::{lock, Shared, CALL_TIMEOUT};
use crate::clock;
use crate::view::View;

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

/// The watch thread: applies every change under the prefix to the view.
/// A lost stream is opened again on the next member from the last revision
/// applied; a compacted one (or a canceled one) reads the prefix again.
pub(super) fn run(s: &Shared, weak: &Weak<View>) {
    let members = s.client.members().len().max(1);
    let mut member = s.client.current();
    let mut range_again = false;
    let mut backoff = Duration::from_millis(50);
    let mut lost = false;
    let end = client::prefix_end(s.prefix.as_bytes());
    while !s.stopped() {
        let Some(shown) = weak.upgrade() else { return };
        if range_again {
            let result = s.call(MOp::Range, |c| {
                c.range(s.prefix.as_bytes(), &end, CALL_TIMEOUT)
            });
            match result {
                Ok((kvs, revision)) => {
                    let mut view = shown.lock();
                    let mut mirror = lock(&s.mirror);
                    let previous = std::mem::take(&mut *mirror);
                    *mirror = Mirror::from_range(
                        &s.prefix,
                        &kvs,
                        revision,
                        &mut view,
                        clock::now(),
                        Some(previous),
                    );
                    s.check_announced(&mirror);
                    drop(mirror);
                    shown.publish(view, true);
                    s.set_applied(revision, weak);
                    range_again = false;
                }
                Err(_) => {
                    if !s.rest(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let from = lock(&s.mirror).revision + 1;
        let address = &s.client.members()[member % members];
        let started = Instant::now();
        let opened = Watch::open(address, s.prefix.as_bytes(), &end, from, CALL_TIMEOUT);
        let outcome = if opened.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Unreachable
        };
        s.metrics.record(MOp::Watch, outcome, started.elapsed());
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                if !lost {
                    s.log.line(format_args!(
                        "store: cannot watch etcd at {address} ({e}); trying the next member"
                    ));
                }
                lost = true;
                member += 1;
                drop(shown);
                if !s.rest(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if lost {
            s.log.line(format_args!(
                "store: watch restarted on etcd at {address} from revision {from}"
            ));
        }
        s.restart_watch.store(false, Ordering::SeqCst);
        backoff = Duration::from_millis(50);
        drop(shown);
        let quit = || s.stopped() || s.restart_watch.load(Ordering::SeqCst);
        loop {
            let line = match stream.next(&quit) {
                Ok(None) => {
                    if s.stopped() {
                        return;
                    }
                    lost = true;
                    s.log.line(format_args!(
                        "store: restarting the watch on etcd at {address} (no news while etcd was unreachable)"
                    ));
                    member += 1;
                    break;
                }
                Ok(Some(line)) => line,
                Err(e) => {
                    lost = true;
                    s.log.line(format_args!(
                        "store: watch stream from etcd at {address} lost ({e}); reconnecting"
                    ));
                    member += 1;
                    break;
                }
            };
            match client::watch_line(&line) {
                None | Some(WatchLine::Created) => {}
                Some(WatchLine::Progress(revision)) => {
                    let mut mirror = lock(&s.mirror);
                    mirror.revision = mirror.revision.max(revision);
                    drop(mirror);
                    s.set_applied(revision, weak);
                }
                Some(WatchLine::Events(events, _)) => {
                    let Some(shown) = weak.upgrade() else { return };
                    let now = clock::now();
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
                Some(WatchLine::Canceled(compacted, reason)) => {
                    lost = true;
                    range_again = true;
                    s.log.line(format_args!(
                        "store: the watch was canceled by etcd ({}); reading the registry again",
                        match compacted {
                            Some(at) => format!("history compacted at revision {at}"),
                            None => reason,
                        }
                    ));
                    break;
                }
            }
        }
    }
}
