//! The files of a data directory: their names, and reading them back
//! (a snapshot whole, a log up to a torn tail) into a [`Replay`]. Every file
//! that cannot be read becomes one line naming it and why.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::codec::{self, Kind, Record};
use super::fail;
use super::replay::Replay;
use crate::log::Log;

pub(super) const LOCK: &str = "lock";
pub(super) const SNAPSHOT: &str = "snapshot";
pub(super) const SNAPSHOT_TMP: &str = "snapshot.tmp";
pub(super) const LOG_PREFIX: &str = "log.";

/// The files of a data directory.
pub(super) struct Files {
    pub(super) snapshot: Option<PathBuf>,
    /// By generation.
    pub(super) logs: Vec<(u64, PathBuf)>,
}

impl Files {
    pub(super) fn list(dir: &Path) -> io::Result<Files> {
        let mut files = Files {
            snapshot: None,
            logs: Vec::new(),
        };
        let entries = fs::read_dir(dir).map_err(|e| {
            fail(format!(
                "cannot list the data directory {}: {e}",
                dir.display()
            ))
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                fail(format!(
                    "cannot list the data directory {}: {e}",
                    dir.display()
                ))
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == SNAPSHOT {
                files.snapshot = Some(entry.path());
            } else if let Some(generation) = name
                .strip_prefix(LOG_PREFIX)
                .and_then(|g| g.parse::<u64>().ok())
            {
                files.logs.push((generation, entry.path()));
            }
        }
        files.logs.sort();
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

/// Checks a file's header record; answers its generation.
pub(super) fn header(path: &Path, bytes: &[u8], want: Kind) -> io::Result<(u64, usize)> {
    let not_ours = || unreadable(path, "it is not a Registro data file (no valid header)");
    match codec::decode(bytes) {
        Ok(Some((
            Record::Header {
                kind,
                version,
                generation,
                ..
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
            Ok((generation, n))
        }
        _ => Err(not_ours()),
    }
}

/// Reads a snapshot whole into `replay`; answers its generation and size.
/// A snapshot is renamed into place whole, so anything short of a valid
/// end record is damage, not a crash.
pub(super) fn read_snapshot(path: &Path, replay: &mut Replay) -> io::Result<(u64, u64)> {
    let bytes = fs::read(path).map_err(|e| unreadable(path, e))?;
    let (generation, mut at) = header(path, &bytes, Kind::Snapshot)?;
    replay.apply(
        Record::Header {
            kind: Kind::Snapshot,
            version: codec::VERSION,
            generation,
            writer: header_writer(&bytes),
        },
        Kind::Snapshot,
    );
    let mut ended = false;
    loop {
        match codec::decode(&bytes[at..]) {
            Ok(Some((record, n))) => {
                if ended {
                    return Err(unreadable(path, "there are records after its end"));
                }
                ended = matches!(record, Record::End { .. });
                replay.apply(record, Kind::Snapshot);
                at += n;
            }
            Ok(None) if ended => return Ok((generation, bytes.len() as u64)),
            Ok(None) => return Err(unreadable(path, "it is cut short (no end record)")),
            Err(bad) => return Err(unreadable(path, format_args!("at byte {at}, {bad}"))),
        }
    }
}

pub(super) fn header_writer(bytes: &[u8]) -> u64 {
    match codec::decode(bytes) {
        Ok(Some((Record::Header { writer, .. }, _))) => writer,
        _ => 0,
    }
}

/// Reads a log into `replay`, up to a torn tail (logged); answers its size.
pub(super) fn read_log(path: &Path, replay: &mut Replay, log: &Log) -> io::Result<u64> {
    let bytes = fs::read(path).map_err(|e| unreadable(path, e))?;
    if matches!(codec::decode(&bytes), Ok(None) | Err(codec::Bad::Truncated)) {
        // A log whose header a crash cut short: it holds nothing.
        log.line(format_args!(
            "data directory: {}: ignored, a new log whose first write a crash cut short ({} bytes)",
            path.display(),
            bytes.len()
        ));
        return Ok(0);
    }
    let (_, mut at) = header(path, &bytes, Kind::Log)?;
    replay.apply(
        Record::Header {
            kind: Kind::Log,
            version: codec::VERSION,
            generation: 0,
            writer: header_writer(&bytes),
        },
        Kind::Log,
    );
    loop {
        match codec::decode(&bytes[at..]) {
            Ok(Some((record, n))) => {
                if matches!(record, Record::Header { .. } | Record::End { .. }) {
                    return Err(unreadable(
                        path,
                        format_args!("at byte {at}, a record out of place"),
                    ));
                }
                replay.apply(record, Kind::Log);
                at += n;
            }
            Ok(None) => return Ok(bytes.len() as u64),
            Err(bad) => {
                // The end of what a crash let the disk keep: expected.
                log.line(format_args!(
                    "data directory: {}: ignored the last {} bytes, a write cut short by a crash ({bad})",
                    path.display(),
                    bytes.len() - at
                ));
                return Ok(at as u64);
            }
        }
    }
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
            .map(|(generation, _)| generation)
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
