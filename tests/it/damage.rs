//! `--data-dir` never lies (API.md Part 4): damage is told from a write a
//! crash cut short. Damage stops the start (exit 1, one line naming the file
//! and the offset, every file byte for byte as it was); only a bad record at
//! the very end of the newest log is a torn tail, cut off with a line; every
//! file a start ignores or removes is named. Each test runs the `registro`
//! binary on files a real server wrote, then damaged as a disk or a person
//! would.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::restart::{ok, prepared, prepared_with, refuses, stop, Dir};
use crate::support::{Conn, Proc};

const LONG: Duration = Duration::from_secs(10);

/// The frames of a data file: `(offset, length with its 8-byte frame)`.
/// The framing is API-independent and documented: `length (u32 LE) | CRC-32C
/// (u32 LE) | payload`.
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        out.push((at, 8 + len));
        at += 8 + len;
    }
    out
}

/// CRC-32C, bit by bit (the server's is by table): to write a header of
/// another version as a real one would be.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `bytes` with the byte at `at` changed.
fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0x55;
    out
}

/// 300 bytes that look like nothing (a fixed xorshift, so a failure
/// repeats).
fn garbage() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..300)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn instances(p: &Proc) -> usize {
    ok(Conn::open(p.addr).get("/apps/web"), 200).json()["instances"]
        .as_array()
        .map_or(0, Vec::len)
}

/// Writes `bytes` to `path`, starts the server on `dir` expecting it to
/// refuse with a line holding each of `why` (and the file untouched), then
/// puts back what `path` held.
#[track_caller]
fn refused_with(dir: &Dir, path: &Path, bytes: &[u8], why: &[&str]) -> String {
    let kept = fs::read(path).ok();
    fs::write(path, bytes).expect("write the damaged file");
    let line = refuses(dir, &["--data-dir", dir.arg()], why);
    match kept {
        Some(kept) => fs::write(path, kept).expect("restore"),
        None => fs::remove_file(path).expect("remove"),
    }
    line
}

/// The reproduction: six instances, SIGKILL, one byte flipped
/// inside the second one's record. The old start took it for a torn tail,
/// served one instance of six, and removed the log with its next snapshot.
#[test]
fn a_byte_flipped_inside_a_log_stops_the_start_and_loses_nothing() {
    let ids = ["i-1", "i-2", "i-3", "i-4", "i-5", "i-6"];
    let dir = prepared_with(&ids, true);
    let log = dir.last_log();
    let whole = fs::read(&log).expect("the log");
    let (at, len) = frames(&whole)
        .into_iter()
        .find(|&(at, len)| whole[at..at + len].windows(5).any(|w| w == b"\x03\x00i-2"))
        .expect("i-2's record");
    let name = log.file_name().and_then(|n| n.to_str()).expect("a name");
    let line = refused_with(
        &dir,
        &log,
        &flipped(&whole, at + len / 2),
        &[name, &format!("at byte {at},"), "damaged"],
    );
    assert!(line.contains("valid record follows"), "{line}");
    // Put back, every instance is there.
    let p = Proc::start(&["--data-dir", dir.arg()]);
    assert_eq!(instances(&p), 6);
}

#[test]
fn damage_to_a_log_stops_the_start_but_a_write_cut_short_at_its_end_does_not() {
    let dir = prepared_with(&["a", "b", "c"], true);
    let log = dir.last_log();
    let whole = fs::read(&log).expect("the log");
    let frames = frames(&whole);
    let (last, _) = *frames.last().expect("records");
    let (middle, len) = frames[frames.len() / 2];
    assert!(middle > 0 && middle < last);
    // Its header (its start), a record in the middle, a file of zeros, a
    // newer format, garbage.
    refused_with(
        &dir,
        &log,
        &flipped(&whole, 12),
        &["log.", "no valid header"],
    );
    refused_with(
        &dir,
        &log,
        &flipped(&whole, middle + len / 2),
        &[&format!("at byte {middle},"), "valid record follows"],
    );
    refused_with(&dir, &log, &vec![0; whole.len()], &["no valid header"]);
    let mut newer = whole.clone();
    newer[17] = 2; // the version, after the tag and the magic
    let (_, header_len) = frames[0];
    let crc = crc32c(&newer[8..header_len]);
    newer[4..8].copy_from_slice(&crc.to_le_bytes());
    refused_with(
        &dir,
        &log,
        &newer,
        &["a newer format (version 2; this server reads version 1)"],
    );
    refused_with(&dir, &log, &garbage(), &["log.", "no valid header"]);
    // The end of a log that is not the newest: no crash cuts it short.
    let header = &whole[..header_len];
    fs::write(dir.0.join("log.0000000000000099"), header).expect("a newer log");
    refused_with(
        &dir,
        &log,
        &flipped(&whole, last + 9),
        &[&format!("at byte {last},"), "not the newest"],
    );
    fs::remove_file(dir.0.join("log.0000000000000099")).expect("remove");

    // The end of the newest log: a torn tail, cut off with a line; what is
    // before it is served.
    fs::write(&log, flipped(&whole, last + 9)).expect("damage the end");
    let p = Proc::start(&["--data-dir", dir.arg()]);
    p.wait_line(
        &format!("from byte {last}, are a write a crash cut short"),
        LONG,
    );
    assert_eq!(instances(&p), 3);
    stop(p);
}

/// A garbage file named as a log: the newest, or one a snapshot covers
/// (which the old start skipped unread and its next snapshot deleted
/// without a word).
#[test]
fn a_garbage_file_named_as_a_log_stops_the_start() {
    let dir = prepared(false);
    let newest = dir.0.join("log.0000000000000099");
    refused_with(
        &dir,
        &newest,
        &garbage(),
        &["log.0000000000000099", "no valid header"],
    );
    refused_with(
        &dir,
        &newest,
        &[0; 300],
        &["log.0000000000000099", "no valid header"],
    );
    let covered = dir.0.join("log.0000000000000000");
    refused_with(
        &dir,
        &covered,
        &garbage(),
        &["log.0000000000000000", "no valid header"],
    );
    // Nothing was left behind, and the directory still starts.
    assert!(!newest.exists() && !covered.exists());
    let p = Proc::start(&["--data-dir", dir.arg()]);
    assert_eq!(instances(&p), 2);
}

#[test]
fn damage_to_a_snapshot_stops_the_start() {
    let dir = prepared(false);
    let snapshot = dir.0.join("snapshot");
    let whole = fs::read(&snapshot).expect("a snapshot");
    let frames = frames(&whole);
    let (middle, len) = frames[frames.len() / 2];
    let (last, _) = *frames.last().expect("records");
    refused_with(
        &dir,
        &snapshot,
        &flipped(&whole, 12),
        &["snapshot", "no valid header"],
    );
    refused_with(
        &dir,
        &snapshot,
        &flipped(&whole, middle + len / 2),
        &["snapshot", &format!("at byte {middle},"), "checksum"],
    );
    refused_with(
        &dir,
        &snapshot,
        &flipped(&whole, last + 9),
        &["snapshot", &format!("at byte {last},")],
    );
    refused_with(&dir, &snapshot, &whole[..last], &["snapshot", "cut short"]);
    refused_with(
        &dir,
        &snapshot,
        &vec![0; whole.len()],
        &["snapshot", "no valid header"],
    );
    refused_with(
        &dir,
        &snapshot,
        b"#!/bin/sh\necho not a snapshot\n",
        &["not a Registro data file"],
    );
    let p = Proc::start(&["--data-dir", dir.arg()]);
    assert_eq!(instances(&p), 2);
}

#[test]
fn files_a_start_does_not_read_are_named_and_left_as_they_are() {
    let dir = prepared(false);
    let notes = dir.0.join("notes.txt");
    fs::write(&notes, b"keep me\n").expect("notes");
    fs::write(dir.0.join("snapshot.tmp"), garbage()).expect("an unfinished snapshot");
    let p = Proc::start(&["--data-dir", dir.arg()]);
    p.wait_line("notes.txt: ignored, not a file Registro writes", LONG);
    p.wait_line("snapshot.tmp: ignored, a snapshot", LONG);
    assert_eq!(instances(&p), 2);
    stop(p);
    assert_eq!(fs::read(&notes).expect("notes"), b"keep me\n");
}

/// A crash cut the last write short: the start cuts the torn bytes off
/// (with a line), so the log stays whole once a newer one exists, and the
/// next start, after another crash, reads it again.
#[test]
fn a_torn_tail_is_cut_off_with_a_line_and_stays_readable() {
    let dir = prepared(true);
    let log = dir.last_log();
    let whole = fs::read(&log).expect("the log");
    let mut torn = whole.clone();
    torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5]);
    fs::write(&log, &torn).expect("a write cut short");
    let mut p = Proc::start(&["--data-dir", dir.arg()]);
    p.wait_line(
        &format!(
            "its last 9 bytes, from byte {}, are a write a crash cut short",
            whole.len()
        ),
        LONG,
    );
    assert_eq!(instances(&p), 2);
    p.child.kill().expect("SIGKILL");
    let _ = p.child.wait();
    let p = Proc::start(&["--data-dir", dir.arg()]);
    assert_eq!(instances(&p), 2);
}

/// A crash while a new log's header was written leaves part of a header:
/// it holds nothing, and is removed with a line.
#[test]
fn a_new_log_with_a_cut_header_is_removed_with_a_line() {
    let dir = prepared(false);
    let cut = dir.0.join("log.0000000000000099");
    fs::write(&cut, [28, 0, 0]).expect("a cut log");
    let p = Proc::start(&["--data-dir", dir.arg()]);
    p.wait_line(
        "log.0000000000000099: removed, a new log whose first write",
        LONG,
    );
    assert_eq!(instances(&p), 2);
    assert!(!cut.exists());
}
