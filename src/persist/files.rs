//! The files of a data directory: their names, and reading them back (a
//! snapshot whole, a log up to a torn tail) into a [`Replay`]. Every file
//! that cannot be read becomes one line naming it and why.
//!
//! A crash can cut short only the last write of the newest log (the saver
//! starts a new log only once the current one ends with a whole record): so
//! a bad record is a torn tail only there, and only if no valid record
//! follows it. Anywhere else, or with a valid record after it, it is damage.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::codec::{self, Bad, Kind, Record};
use super::fail;

pub(super) const LOCK: &str = "lock";
pub(super) const SNAPSHOT: &str = "snapshot";
pub(super) const SNAPSHOT_TMP: &str = "snapshot.tmp";
pub(super) const LOG_PREFIX: &str = "log.";

/// The files of a data directory.
#[derive(Debug, Default)]
pub(super) struct Files {
    pub(super) snapshot: Option<PathBuf>,
    /// By generation.
    pub(super) logs: Vec<(u64, PathBuf)>,
    /// A snapshot a crash (or a failed write) left unfinished.
    pub(super) snapshot_tmp: Option<PathBuf>,
    /// Files that are none of the above: left alone.
    pub(super) others: Vec<PathBuf>,
}

impl Files {
    pub(super) fn list(dir: &Path) -> io::Result<Files> {
        let mut files = Files::default();
        let cannot = |e: io::Error| {
            fail(format!(
                "cannot list the data directory {}: {e}",
                dir.display()
            ))
        };
        for entry in fs::read_dir(dir).map_err(cannot)? {
            let entry = entry.map_err(cannot)?;
            let name = entry.file_name();
            let generation = name
                .to_str()
                .and_then(|n| n.strip_prefix(LOG_PREFIX))
                .filter(|g| g.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|g| g.parse::<u64>().ok());
            match (name.to_str(), generation) {
                (_, Some(generation)) => files.logs.push((generation, entry.path())),
                (Some(SNAPSHOT), _) => files.snapshot = Some(entry.path()),
                (Some(SNAPSHOT_TMP), _) => files.snapshot_tmp = Some(entry.path()),
                (Some(LOCK), _) => {}
                _ => files.others.push(entry.path()),
            }
        }
        files.logs.sort();
        files.others.sort();
        Ok(files)
    }
}

pub(super) fn log_name(generation: u64) -> String {
    format!("{LOG_PREFIX}{generation:016}")
}

/// Why a file cannot be read, as the one line of a failed start.
pub(super) fn unreadable(path: &Path, why: impl std::fmt::Display) -> io::Error {
    fail(format!(
        "cannot read {}: {why}; it is left as it is (move it away to start without it)",
        path.display()
    ))
}

/// Checks a file's header record; answers its generation, its writer and
/// the bytes it took.
pub(super) fn header(path: &Path, bytes: &[u8], want: Kind) -> io::Result<(u64, u64, usize)> {
    let not_ours = || unreadable(path, "it is not a Registro data file (no valid header)");
    match codec::decode(bytes) {
        Ok(Some((
            Record::Header {
                kind,
                version,
                generation,
                writer,
            },
            n,
        ))) => {
            if version != codec::VERSION {
                let age = if version < codec::VERSION {
                    "an older"
                } else {
                    "a newer"
                };
                return Err(unreadable(
                    path,
                    format_args!(
                        "it is in {age} format (version {version}; this server reads version {})",
                        codec::VERSION
                    ),
                ));
            }
            if kind != want {
                return Err(not_ours());
            }
            Ok((generation, writer, n))
        }
        _ => Err(not_ours()),
    }
}

/// Reads a snapshot whole, handing each record to `apply`; answers its
/// generation and size. A snapshot is renamed into place whole, so
/// anything short of a valid end record is damage, not a crash.
pub(super) fn read_snapshot(path: &Path, apply: &mut dyn FnMut(Record)) -> io::Result<(u64, u64)> {
    let bytes = fs::read(path).map_err(|e| unreadable(path, e))?;
    let (generation, writer, mut at) = header(path, &bytes, Kind::Snapshot)?;
    apply(own_header(Kind::Snapshot, generation, writer));
    let mut ended = false;
    loop {
        match codec::decode(&bytes[at..]) {
            Ok(Some((record, n))) => {
                if ended {
                    return Err(unreadable(
                        path,
                        format_args!("at byte {at}, there are records after its end"),
                    ));
                }
                ended = matches!(record, Record::End { .. });
                apply(record);
                at += n;
            }
            Ok(None) if ended => return Ok((generation, bytes.len() as u64)),
            Ok(None) => return Err(unreadable(path, "it is cut short (no end record)")),
            Err(bad) => return Err(unreadable(path, format_args!("at byte {at}, {bad}"))),
        }
    }
}

fn own_header(kind: Kind, generation: u64, writer: u64) -> Record {
    Record::Header {
        kind,
        version: codec::VERSION,
        generation,
        writer,
    }
}

/// How a log that could be read ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LogEnd {
    /// With a whole record: every byte was read.
    Whole(u64),
    /// With the last write of a crash cut short: the bytes from `at` on
    /// (`len` of them) are not records, and nothing valid follows.
    Torn { at: u64, len: u64, why: Bad },
    /// Within its header, a crash cut its first write short: it holds
    /// nothing (`len` bytes).
    CutHeader(u64),
}

/// Reads a log, handing each record to `apply`. Only the `newest` log may
/// end in a torn tail (or a cut header); a bad record anywhere else, or one
/// with a valid record after it, is damage: the error names the file and
/// the offset.
pub(super) fn read_log(
    path: &Path,
    newest: bool,
    apply: &mut dyn FnMut(Record),
) -> io::Result<LogEnd> {
    let bytes = fs::read(path).map_err(|e| unreadable(path, e))?;
    if newest && cut_header(&bytes) {
        return Ok(LogEnd::CutHeader(bytes.len() as u64));
    }
    let (generation, writer, mut at) = header(path, &bytes, Kind::Log)?;
    apply(own_header(Kind::Log, generation, writer));
    loop {
        match codec::decode(&bytes[at..]) {
            Ok(Some((record, n))) => {
                if matches!(record, Record::Header { .. } | Record::End { .. }) {
                    return Err(unreadable(
                        path,
                        format_args!("at byte {at}, a record out of place"),
                    ));
                }
                apply(record);
                at += n;
            }
            Ok(None) => return Ok(LogEnd::Whole(bytes.len() as u64)),
            Err(why) => {
                if !newest {
                    return Err(unreadable(
                        path,
                        format_args!(
                            "at byte {at}, {why}, in a log that is not the newest \
                             (a crash cuts short only the newest log's last write): it is damaged"
                        ),
                    ));
                }
                return match valid_after(&bytes, at) {
                    Some(Some(next)) => Err(unreadable(
                        path,
                        format_args!(
                            "at byte {at}, {why}, and a valid record follows at byte {next}: \
                             it is damaged, not cut short by a crash"
                        ),
                    )),
                    None => Err(unreadable(
                        path,
                        format_args!(
                            "at byte {at}, {why}, and the {} bytes after it are too many to \
                             tell a write cut short by a crash from damage",
                            bytes.len() - at
                        ),
                    )),
                    Some(None) => Ok(LogEnd::Torn {
                        at: at as u64,
                        len: (bytes.len() - at) as u64,
                        why,
                    }),
                };
            }
        }
    }
}

/// The bytes a scan for a valid record after a bad one may checksum: a
/// torn tail is one write (64 MiB at most), and the records after damage
/// are found within a record or two.
const SCAN_BUDGET: usize = 256 << 20;

/// Whether a valid record starts anywhere after the bad one at `bad`:
/// `Some(Some(offset))` if one does, `Some(None)` if none does, `None` if
/// the scan would checksum more than `SCAN_BUDGET` bytes.
fn valid_after(bytes: &[u8], bad: usize) -> Option<Option<usize>> {
    let mut spent = 0;
    for at in bad + 1..bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < codec::FRAME {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > rest.len() - codec::FRAME {
            continue; // cannot be whole: not checksummed
        }
        spent += len;
        if spent > SCAN_BUDGET {
            return None;
        }
        if matches!(codec::decode(rest), Ok(Some(_))) {
            return Some(Some(at));
        }
    }
    Some(None)
}

/// Whether `bytes` are the start of a log header and no more: what a crash
/// leaves of a new log's first write (nothing, or part of its header).
fn cut_header(bytes: &[u8]) -> bool {
    let mut whole = Vec::new();
    codec::encode(&own_header(Kind::Log, 0, 0), &mut whole, codec::Seal::Later);
    // The frame's length, then (past the checksum, unknown) its tag and magic.
    let fixed = |i: usize| i < 4 || (codec::FRAME..codec::FRAME + 9).contains(&i);
    bytes.len() < whole.len()
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| !fixed(i) || whole[i] == *b)
}

/// Syncs a directory, so that a file created, renamed or removed in it
/// stays so after a crash.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(kind: Kind, version: u16) -> Vec<u8> {
        let mut bytes = Vec::new();
        let header = Record::Header {
            kind,
            version,
            generation: 3,
            writer: 9,
        };
        codec::encode(&header, &mut bytes, codec::Seal::Now);
        bytes
    }

    #[track_caller]
    fn check(bytes: &[u8], want: Kind, expected: Result<u64, &str>) {
        let path = Path::new("/data/snapshot");
        let got = header(path, bytes, want)
            .map(|(generation, _, _)| generation)
            .map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g, e),
            (Err(e), Err(part)) => {
                assert!(e.contains(part) && e.contains("/data/snapshot"), "{e}");
                assert!(e.contains("left as it is"), "{e}");
            }
            (got, expected) => panic!("{got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn a_header_names_the_file_and_why_it_cannot_be_read() {
        check(
            &header_of(Kind::Snapshot, codec::VERSION),
            Kind::Snapshot,
            Ok(3),
        );
        check(
            &header_of(Kind::Snapshot, codec::VERSION + 1),
            Kind::Snapshot,
            Err("a newer format (version 2; this server reads version 1)"),
        );
        check(
            &header_of(Kind::Snapshot, 0),
            Kind::Snapshot,
            Err("an older format (version 0;"),
        );
        check(
            &header_of(Kind::Log, codec::VERSION),
            Kind::Snapshot,
            Err("not a Registro data file"),
        );
        check(b"", Kind::Log, Err("not a Registro data file"));
        check(
            b"\x7fELF\x02\x01\x01",
            Kind::Log,
            Err("not a Registro data file"),
        );
    }
}
