//! The records of the data directory's files, and their framing: every record
//! is `length (u32 LE) | CRC-32C of the payload (u32 LE) | payload`, the
//! payload a tag byte and fixed little-endian fields, strings as a `u16`
//! length and UTF-8 bytes. A file starts with a [`Record::Header`] naming its
//! kind, the format version and its generation. No I/O: bytes in, bytes out.

use std::sync::Arc;

use crate::registry::{AppState, Metadata, Status, Stored};

/// The version of the format this server writes and reads.
pub const VERSION: u16 = 1;
/// The first bytes of every header's payload after its tag.
const MAGIC: &[u8; 8] = b"REGISTRO";
/// The largest payload a reader accepts: a record is at most an instance with
/// 64 metadata entries of 128 + 1024 bytes, well under this.
const MAX_PAYLOAD: usize = 1 << 20;
/// Bytes of a frame before its payload.
pub const FRAME: usize = 8;

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The whole registry, written in steps, ended by [`Record::End`].
    Snapshot,
    /// Changes, appended.
    Log,
}

/// One record. Times are milliseconds on the monotonic clock of the process
/// that wrote the file (`writer`), made meaningful by the [`Record::Mark`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The first record of every file.
    Header {
        /// Snapshot or log.
        kind: Kind,
        /// The format version it was written in.
        version: u16,
        /// A snapshot covers the logs before this generation; a log is this
        /// generation.
        generation: u64,
        /// Which process wrote it (distinct per process start).
        writer: u64,
    },
    /// The writer's monotonic clock when what follows was saved.
    Mark {
        /// Monotonic milliseconds.
        mono: u64,
    },
    /// An app's state (created, or its index changed).
    App {
        /// The app name.
        name: Arc<str>,
        /// Its index and times.
        state: AppState,
    },
    /// An app was removed.
    AppRemoved {
        /// The app name.
        name: Arc<str>,
        /// The global index then.
        index: u64,
    },
    /// An instance's whole state (added, replaced, or its status changed).
    Instance(InstanceRecord),
    /// An instance was removed.
    InstanceRemoved {
        /// The app name.
        app: Arc<str>,
        /// The instance id.
        id: Arc<str>,
    },
    /// The last record of a whole snapshot.
    End {
        /// The writer's monotonic clock at the end.
        mono: u64,
        /// The global index at the end.
        index: u64,
        /// Written at a clean stop: every renewal in it is exact.
        clean: bool,
    },
}

/// An instance's whole state, as read back: the owned form of what
/// [`encode_instance`] writes from the registry's borrowed [`Stored`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The app name.
    pub app: Arc<str>,
    /// The instance id.
    pub id: Arc<str>,
    /// The address.
    pub ip: Arc<str>,
    /// The port.
    pub port: u16,
    /// The stored status.
    pub status: Status,
    /// Its last renewal.
    pub renewal: u64,
    /// Its metadata, if any.
    pub metadata: Option<Arc<Metadata>>,
}

impl InstanceRecord {
    /// The registry's view of the same state.
    fn stored(&self) -> Stored<'_> {
        Stored {
            id: &self.id,
            ip: &self.ip,
            port: self.port,
            status: self.status,
            last_renewal: self.renewal,
            metadata: self.metadata.as_ref(),
        }
    }
}

const HEADER: u8 = 1;
const MARK: u8 = 2;
const APP: u8 = 3;
const APP_REMOVED: u8 = 4;
const INSTANCE: u8 = 5;
const INSTANCE_REMOVED: u8 = 6;
const END: u8 = 7;

/// The byte of each status: its place here. Kinds are `0` (snapshot) and `1` (log).
const STATUSES: [Status; 4] = [
    Status::Starting,
    Status::Up,
    Status::Down,
    Status::OutOfService,
];

/// When a frame's checksum is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seal {
    /// At once.
    Now,
    /// Later, by [`seal_all`]: a snapshot's step copies under the registry's
    /// lock and checksums after it.
    Later,
}

/// Appends `record`, framed, to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>, seal: Seal) {
    framed(out, seal, |out| payload(record, out));
}

/// Appends an instance record of `app` from the registry's own borrowed
/// state (the snapshot and the recorder write them without building a
/// [`Record`]).
pub fn encode_instance(out: &mut Vec<u8>, app: &str, s: &Stored<'_>, seal: Seal) {
    framed(out, seal, |out| instance(out, app, s));
}

/// Writes a frame around what `payload` appends: its length, and its
/// checksum if `seal` says now.
fn framed(out: &mut Vec<u8>, seal: Seal, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    payload(out);
    let len = u32::try_from(out.len() - start - FRAME).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    if seal == Seal::Now {
        let crc = crc32c(&out[start + FRAME..]);
        out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
    }
}

fn payload(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Header {
            kind,
            version,
            generation,
            writer,
        } => {
            out.push(HEADER);
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&version.to_le_bytes());
            out.push(match kind {
                Kind::Snapshot => 0,
                Kind::Log => 1,
            });
            u64_(out, *generation);
            u64_(out, *writer);
        }
        Record::Mark { mono } => {
            out.push(MARK);
            u64_(out, *mono);
        }
        Record::App { name, state } => {
            out.push(APP);
            str_(out, name);
            u64_(out, state.index);
            u64_(out, state.empty_since.unwrap_or(u64::MAX));
            u64_(out, state.gone_at);
        }
        Record::AppRemoved { name, index } => {
            out.push(APP_REMOVED);
            str_(out, name);
            u64_(out, *index);
        }
        Record::Instance(i) => instance(out, &i.app, &i.stored()),
        Record::InstanceRemoved { app, id } => {
            out.push(INSTANCE_REMOVED);
            str_(out, app);
            str_(out, id);
        }
        Record::End { mono, index, clean } => {
            out.push(END);
            u64_(out, *mono);
            u64_(out, *index);
            out.push(u8::from(*clean));
        }
    }
}

fn instance(out: &mut Vec<u8>, app: &str, s: &Stored<'_>) {
    out.push(INSTANCE);
    str_(out, app);
    str_(out, s.id);
    str_(out, s.ip);
    out.extend_from_slice(&s.port.to_le_bytes());
    let status = STATUSES.iter().position(|&x| x == s.status).unwrap_or(0);
    out.push(status as u8);
    u64_(out, s.last_renewal);
    let entries = s.metadata.map_or(0, |m| m.len());
    out.extend_from_slice(&u16::try_from(entries).unwrap_or(u16::MAX).to_le_bytes());
    for (k, v) in s
        .metadata
        .into_iter()
        .flat_map(|m| m.iter())
        .take(usize::from(u16::MAX))
    {
        str_(out, k);
        str_(out, v);
    }
}

/// Fills in the checksums of the frames in `out` (whole frames, written
/// with [`Seal::Later`]).
pub fn seal_all(out: &mut [u8]) {
    let mut at = 0;
    while at + FRAME <= out.len() {
        let len = u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        let end = (at + FRAME + len).min(out.len());
        let crc = crc32c(&out[at + FRAME..end]);
        out[at + 4..at + FRAME].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

fn u64_(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A string of at most 65,535 bytes (names are at most 255, metadata values
/// 1,024: API.md); a longer one is cut at a character boundary.
fn str_(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&u16::try_from(end).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Why the bytes at some offset are not a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// The file ends inside a frame (a write cut short).
    Truncated,
    /// The checksum does not match (a torn or damaged write).
    Checksum,
    /// The checksum matches but the payload makes no sense.
    Malformed(&'static str),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Truncated => f.write_str("it ends inside a record"),
            Bad::Checksum => f.write_str("a record's checksum does not match"),
            Bad::Malformed(why) => write!(f, "a record is malformed ({why})"),
        }
    }
}

/// Reads the record at the start of `bytes`: `Ok(None)` at the end, else the
/// record and the bytes it took.
pub fn decode(bytes: &[u8]) -> Result<Option<(Record, usize)>, Bad> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() < FRAME {
        return Err(Bad::Truncated);
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len > MAX_PAYLOAD {
        return Err(Bad::Malformed("too long"));
    }
    let Some(payload) = bytes.get(FRAME..FRAME + len) else {
        return Err(Bad::Truncated);
    };
    if crc32c(payload) != crc {
        return Err(Bad::Checksum);
    }
    let mut r = Reader(payload);
    let record = r.record()?;
    if !r.0.is_empty() {
        return Err(Bad::Malformed("bytes after its fields"));
    }
    Ok(Some((record, FRAME + len)))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Bad> {
        if self.0.len() < n {
            return Err(Bad::Malformed("fields cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Bad> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, Bad> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self) -> Result<&str, Bad> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).map_err(|_| Bad::Malformed("text is not UTF-8"))
    }

    fn arc(&mut self) -> Result<Arc<str>, Bad> {
        self.str().map(Arc::from)
    }

    fn record(&mut self) -> Result<Record, Bad> {
        Ok(match self.u8()? {
            HEADER => {
                if self.take(MAGIC.len())? != MAGIC {
                    return Err(Bad::Malformed("not a Registro header"));
                }
                let version = self.u16()?;
                if version != VERSION {
                    // The rest may be laid out otherwise: the version is enough.
                    self.0 = &[];
                    return Ok(Record::Header {
                        kind: Kind::Log,
                        version,
                        generation: 0,
                        writer: 0,
                    });
                }
                let kind = match self.u8()? {
                    0 => Kind::Snapshot,
                    1 => Kind::Log,
                    _ => return Err(Bad::Malformed("unknown file kind")),
                };
                Record::Header {
                    kind,
                    version,
                    generation: self.u64()?,
                    writer: self.u64()?,
                }
            }
            MARK => Record::Mark { mono: self.u64()? },
            APP => Record::App {
                name: self.arc()?,
                state: AppState {
                    index: self.u64()?,
                    empty_since: Some(self.u64()?).filter(|&t| t != u64::MAX),
                    gone_at: self.u64()?,
                },
            },
            APP_REMOVED => Record::AppRemoved {
                name: self.arc()?,
                index: self.u64()?,
            },
            INSTANCE => {
                let (app, id, ip) = (self.arc()?, self.arc()?, self.arc()?);
                let port = self.u16()?;
                let status = *STATUSES
                    .get(usize::from(self.u8()?))
                    .ok_or(Bad::Malformed("unknown status"))?;
                let renewal = self.u64()?;
                let entries = self.u16()?;
                let metadata = if entries == 0 {
                    None
                } else {
                    let mut m = Metadata::new();
                    for _ in 0..entries {
                        let k = self.str()?.to_string();
                        m.insert(k, self.str()?.to_string());
                    }
                    Some(Arc::new(m))
                };
                Record::Instance(InstanceRecord {
                    app,
                    id,
                    ip,
                    port,
                    status,
                    renewal,
                    metadata,
                })
            }
            INSTANCE_REMOVED => Record::InstanceRemoved {
                app: self.arc()?,
                id: self.arc()?,
            },
            END => Record::End {
                mono: self.u64()?,
                index: self.u64()?,
                clean: match self.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(Bad::Malformed("unknown end flag")),
                },
            },
            _ => return Err(Bad::Malformed("unknown record type")),
        })
    }
}

/// CRC-32C (Castagnoli), bytewise from a table made at compile time: about
/// 500 MB/s, a tenth of a second for the snapshot of a million instances.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        let mut meta = Metadata::new();
        meta.insert("zone".into(), "eu-1".into());
        meta.insert("é".into(), "ü".repeat(300));
        vec![
            Record::Header {
                kind: Kind::Log,
                version: VERSION,
                generation: 7,
                writer: 1_795_890_765_000_000,
            },
            Record::Header {
                kind: Kind::Snapshot,
                version: VERSION,
                generation: 0,
                writer: 1,
            },
            Record::Mark { mono: 42 },
            Record::App {
                name: "web".into(),
                state: AppState {
                    index: 9,
                    empty_since: None,
                    gone_at: 0,
                },
            },
            Record::App {
                name: "db".into(),
                state: AppState {
                    index: 10,
                    empty_since: Some(5),
                    gone_at: 3,
                },
            },
            Record::AppRemoved {
                name: "db".into(),
                index: 11,
            },
            Record::Instance(InstanceRecord {
                app: "web".into(),
                id: "a".into(),
                ip: "2001:db8::1".into(),
                port: 443,
                status: Status::OutOfService,
                renewal: 12,
                metadata: Some(Arc::new(meta)),
            }),
            Record::Instance(InstanceRecord {
                app: "web".into(),
                id: "b".into(),
                ip: "10.0.0.1".into(),
                port: 80,
                status: Status::Up,
                renewal: 13,
                metadata: None,
            }),
            Record::InstanceRemoved {
                app: "web".into(),
                id: "a".into(),
            },
            Record::End {
                mono: 99,
                index: 11,
                clean: true,
            },
        ]
    }

    #[test]
    fn every_record_reads_back_as_written() {
        let mut bytes = Vec::new();
        for r in samples() {
            encode(&r, &mut bytes, Seal::Now);
        }
        let mut at = 0;
        let mut back = Vec::new();
        while let Some((r, n)) = decode(&bytes[at..]).unwrap() {
            back.push(r);
            at += n;
        }
        assert_eq!(back, samples());
    }

    #[test]
    fn a_cut_or_damaged_record_is_told_apart_from_the_end() {
        let mut bytes = Vec::new();
        encode(&samples()[6], &mut bytes, Seal::Now);
        for cut in 1..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Err(Bad::Truncated), "cut at {cut}");
        }
        for i in FRAME..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert_eq!(decode(&damaged), Err(Bad::Checksum), "byte {i}");
        }
        assert_eq!(decode(&[]), Ok(None));
        assert!(decode(b"garbage garbage garbage").is_err());
    }

    #[test]
    fn another_version_is_read_as_such() {
        let mut bytes = Vec::new();
        encode(
            &Record::Header {
                kind: Kind::Log,
                version: 2,
                generation: 1,
                writer: 1,
            },
            &mut bytes,
            Seal::Now,
        );
        let (r, _) = decode(&bytes).unwrap().unwrap();
        assert!(matches!(r, Record::Header { version: 2, .. }));
    }

    #[test]
    fn frames_sealed_afterwards_read_as_those_sealed_at_once() {
        let mut sealed = Vec::new();
        let mut later = Vec::new();
        for r in samples() {
            encode(&r, &mut sealed, Seal::Now);
            encode(&r, &mut later, Seal::Later);
        }
        let z = Stored {
            id: "z",
            ip: "::1",
            port: 1,
            status: Status::Down,
            last_renewal: 5,
            metadata: None,
        };
        encode_instance(&mut sealed, "web", &z, Seal::Now);
        encode_instance(&mut later, "web", &z, Seal::Later);
        assert_ne!(sealed, later);
        seal_all(&mut later);
        assert_eq!(sealed, later);
    }

    #[test]
    fn crc32c_of_the_standard_check_string() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
