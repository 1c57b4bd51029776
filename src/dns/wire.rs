//! A DNS query read off the wire, and an answer written onto it. Sans I/O:
//! bytes in, bytes out.
//!
//! The query is untrusted input, and `simple_dns::Packet::parse` is the
//! parser of record: a message it refuses is answered FORMERR. Around it,
//! three things it gets wrong for a server are done here: it refuses a
//! question of a type or class it does not know (RFC 3597 says they are
//! opaque numbers; a server answers them), and a header with the Z bit set
//! (RFC 1035 says to ignore it), so the parser is given a copy with the
//! question's type and class set to A/IN and Z cleared; and it reads the EDNS
//! version and DO bit from the wrong bytes of the OPT record's TTL, so they
//! are read from their place in the query (which is fixed, since a query
//! must have at most one additional record, the OPT).
//!
//! The answer is written by hand (`Writer`): records are appended one at a
//! time against a byte limit, so an answer carries what fits and says so
//! with TC, and names are compressed by pointers into what is already
//! written (RFC 1035 4.1.4).

use std::net::IpAddr;

/// Longest query read (UDP datagram or TCP message): queries are a header,
/// one question (at most 259 bytes) and an OPT record; anything longer is
/// not a query this server answers.
pub const MAX_QUERY: usize = 4096;
/// A UDP answer is at most this long without EDNS (RFC 1035 4.2.1)...
pub const UDP_MIN: usize = 512;
/// ...and at most this long whatever size the query's EDNS offers.
pub const UDP_MAX: usize = 4096;
/// A TCP answer is at most this long (its length prefix is 16 bits).
pub const TCP_MAX: usize = 65_535;
/// The UDP payload size this server offers in its own OPT record.
pub const EDNS_SIZE: u16 = 1232;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

/// Response codes (RFC 1035 4.1.1, RFC 6891 6.1.3 for BADVERS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
    BadVers = 16,
}

/// A query as this server reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Recursion desired, copied into the answer.
    pub rd: bool,
    /// Checking disabled, copied into the answer.
    pub cd: bool,
    /// The question's name in wire form, as received (its case kept):
    /// length-prefixed labels and the final zero, no pointers.
    pub name: Vec<u8>,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

/// The query's OPT record (RFC 6891).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The largest UDP answer the asker takes.
    pub size: u16,
    pub version: u8,
}

/// What reading a message gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Nothing to answer: shorter than a header, or itself an answer (never
    /// answer an answer: two servers would bounce it for ever).
    Drop,
    /// A header, but no query this server takes: answer with the header's
    /// id, opcode and RD, `rcode`, and no question.
    Refuse {
        id: u16,
        flags: u16,
        rcode: Rcode,
    },
    Query(Query),
}

const QR: u16 = 0x8000;
const OPCODE: u16 = 0x7800;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const Z: u16 = 0x0040;
const CD: u16 = 0x0010;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Reads a query. Never panics, whatever the bytes.
pub fn read(bytes: &[u8]) -> Read {
    let (Some(id), Some(flags)) = (u16_at(bytes, 0), u16_at(bytes, 2)) else {
        return Read::Drop;
    };
    if bytes.len() < 12 || flags & QR != 0 {
        return Read::Drop;
    }
    let refuse = |rcode| Read::Refuse { id, flags, rcode };
    if flags & OPCODE != 0 {
        return refuse(Rcode::NotImp);
    }
    let count = |at| u16_at(bytes, at).unwrap_or(0);
    // One question, no answers, no authority, at most an OPT record: the
    // only queries there are (RFC 9619), and so the parser never sizes a
    // section from a count an attacker chose.
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 || bytes.len() > MAX_QUERY {
        return refuse(Rcode::FormErr);
    }
    let Some(end) = name_end(bytes, 12) else {
        return refuse(Rcode::FormErr);
    };
    let (Some(qtype), Some(qclass)) = (u16_at(bytes, end), u16_at(bytes, end + 2)) else {
        return refuse(Rcode::FormErr);
    };
    let mut copy = bytes.to_vec();
    copy[2..4].copy_from_slice(&(flags & !Z).to_be_bytes());
    copy[end..end + 4].copy_from_slice(&[0, 1, 0, 1]);
    let Ok(packet) = simple_dns::Packet::parse(&copy) else {
        return refuse(Rcode::FormErr);
    };
    let [question] = packet.questions.as_slice() else {
        return refuse(Rcode::FormErr);
    };
    let mut name = Vec::with_capacity(end - 12);
    for label in question.qname.get_labels() {
        let label = label.as_ref();
        // The parser holds labels to 63 bytes; a label of 0 would end the name.
        if label.is_empty() || label.len() > 63 {
            return refuse(Rcode::FormErr);
        }
        name.push(label.len() as u8);
        name.extend_from_slice(label);
    }
    name.push(0);
    if name.len() > 255 {
        return refuse(Rcode::FormErr);
    }
    let edns = match (packet.opt(), packet.additional_records.is_empty()) {
        (None, true) => None,
        (Some(opt), true) => {
            // The OPT record is the one additional record: right after the
            // question, a root name (one zero byte), type, class (the size),
            // then the TTL: extended RCODE, version, flags.
            let at = end + 4;
            if bytes.get(at) != Some(&0) || u16_at(bytes, at + 1) != Some(TYPE_OPT) {
                return refuse(Rcode::FormErr);
            }
            let Some(&version) = bytes.get(at + 6) else {
                return refuse(Rcode::FormErr);
            };
            Some(Edns {
                size: opt.udp_packet_size,
                version,
            })
        }
        // An additional record that is not an OPT (TSIG, SIG(0)): not
        // something this server can check.
        (_, false) => return refuse(Rcode::FormErr),
    };
    Read::Query(Query {
        id,
        rd: flags & RD != 0,
        cd: flags & CD != 0,
        name,
        qtype,
        qclass,
        edns,
    })
}

/// Where the name that starts at `at` ends (past its final zero or its
/// pointer), if it ends within the message; the parser checks the rest.
pub fn name_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *bytes.get(at)?;
        match len & 0xC0 {
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            0xC0 => return Some(at + 2).filter(|&end| end <= bytes.len()),
            _ => return None,
        }
    }
}

/// The labels of a wire name (as `Query::name` holds it).
pub fn labels(name: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(&len) = name.get(at) {
        let len = usize::from(len);
        if len == 0 {
            break;
        }
        let Some(label) = name.get(at + 1..at + 1 + len) else {
            break;
        };
        out.push(label);
        at += 1 + len;
    }
    out
}

/// The header-only answer to a message refused by `read`.
pub fn refusal(id: u16, flags: u16, rcode: Rcode) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    let flags = QR | (flags & (OPCODE | RD)) | (rcode as u16 & 0xF);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// A name in an answer, as written: a pointer to a name already in the
/// message, or labels before such a pointer.
#[derive(Clone, Copy, Debug)]
pub enum Name<'a> {
    At(u16),
    Labels(&'a [&'a [u8]], u16),
}

/// The offset of the question's name in every message.
pub const QNAME: u16 = 12;
/// The furthest offset a compression pointer reaches.
pub const MAX_POINTER: usize = 0x3FFF;

/// Record data this server writes.
#[derive(Clone, Copy, Debug)]
pub enum Data<'a> {
    Addr(IpAddr),
    Srv {
        port: u16,
        target: Name<'a>,
    },
    Soa {
        serial: u32,
        minimum: u32,
        domain: u16,
    },
}

/// Which section a record goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Answer,
    Authority,
    Additional,
}

/// An answer being written, within `limit` bytes.
pub struct Writer {
    buf: Vec<u8>,
    limit: usize,
    counts: [u16; 3],
    /// Bytes kept back for the OPT record written last.
    reserve: usize,
}

impl Writer {
    /// The header and the question of the answer to `query`; `limit` is
    /// the most bytes the answer may take (at least 512).
    pub fn new(query: &Query, limit: usize) -> Writer {
        let mut buf = Vec::with_capacity(limit.min(1232));
        buf.extend_from_slice(&query.id.to_be_bytes());
        let mut flags = QR;
        if query.rd {
            flags |= RD;
        }
        if query.cd {
            flags |= CD;
        }
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(&query.name);
        buf.extend_from_slice(&query.qtype.to_be_bytes());
        buf.extend_from_slice(&query.qclass.to_be_bytes());
        Writer {
            buf,
            limit,
            counts: [0; 3],
            reserve: if query.edns.is_some() { 11 } else { 0 },
        }
    }

    /// Where the next byte goes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Appends a record of `name`, unless it would not fit; says which.
    pub fn record(&mut self, section: Section, name: Name<'_>, ttl: u32, data: Data<'_>) -> bool {
        let mark = self.buf.len();
        self.name(name);
        let rtype = match data {
            Data::Addr(IpAddr::V4(_)) => TYPE_A,
            Data::Addr(IpAddr::V6(_)) => TYPE_AAAA,
            Data::Srv { .. } => TYPE_SRV,
            Data::Soa { .. } => TYPE_SOA,
        };
        self.u16(rtype);
        self.u16(CLASS_IN);
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let len_at = self.buf.len();
        self.u16(0);
        match data {
            Data::Addr(IpAddr::V4(ip)) => self.buf.extend_from_slice(&ip.octets()),
            Data::Addr(IpAddr::V6(ip)) => self.buf.extend_from_slice(&ip.octets()),
            Data::Srv { port, target } => {
                self.u16(1); // priority
                self.u16(1); // weight
                self.u16(port);
                self.name(target);
            }
            Data::Soa {
                serial,
                minimum,
                domain,
            } => {
                self.name(Name::Labels(&[b"ns"], domain));
                self.name(Name::Labels(&[b"hostmaster"], domain));
                for n in [serial, 3600, 600, 86_400, minimum] {
                    self.buf.extend_from_slice(&n.to_be_bytes());
                }
            }
        }
        let rdlen = (self.buf.len() - len_at - 2) as u16;
        self.buf[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        if self.buf.len() + self.reserve > self.limit {
            self.buf.truncate(mark);
            return false;
        }
        self.counts[section as usize] += 1;
        true
    }

    /// Records written in the answer section so far.
    pub fn answers(&self) -> u16 {
        self.counts[0]
    }

    fn name(&mut self, name: Name<'_>) {
        let to = match name {
            Name::At(to) => to,
            Name::Labels(labels, to) => {
                for label in labels {
                    self.buf.push(label.len() as u8);
                    self.buf.extend_from_slice(label);
                }
                to
            }
        };
        self.u16(0xC000 | to);
    }

    fn u16(&mut self, n: u16) {
        self.buf.extend_from_slice(&n.to_be_bytes());
    }

    /// The finished answer: `rcode`, AA when `authoritative`, TC when
    /// `truncated`, and the OPT record when the query had one.
    pub fn finish(
        mut self,
        query: &Query,
        rcode: Rcode,
        authoritative: bool,
        truncated: bool,
    ) -> Vec<u8> {
        let mut flags = u16::from_be_bytes([self.buf[2], self.buf[3]]);
        flags |= rcode as u16 & 0xF;
        if authoritative {
            flags |= AA;
        }
        if truncated {
            flags |= TC;
        }
        self.buf[2..4].copy_from_slice(&flags.to_be_bytes());
        let mut additional = self.counts[2];
        if query.edns.is_some() {
            // Root name, OPT, our size, extended RCODE and version 0, no options.
            self.buf.push(0);
            self.u16(TYPE_OPT);
            self.u16(EDNS_SIZE);
            self.buf.push((rcode as u16 >> 4) as u8);
            self.buf.extend_from_slice(&[0, 0, 0]);
            self.u16(0);
            additional += 1;
        }
        let counts = [self.counts[0], self.counts[1], additional];
        for (i, n) in counts.iter().enumerate() {
            self.buf[6 + 2 * i..8 + 2 * i].copy_from_slice(&n.to_be_bytes());
        }
        self.buf
    }
}

/// A query for `name` (dotted) of `qtype`, with EDNS of `size` if given
/// (for the tests).
#[cfg(test)]
pub fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        q.push(0);
        q.extend_from_slice(&TYPE_OPT.to_be_bytes());
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_query(bytes: &[u8]) -> Query {
        match read(bytes) {
            Read::Query(q) => q,
            other => panic!("not a query: {other:?}"),
        }
    }

    #[test]
    fn a_plain_query() {
        let q = read_query(&query(7, "Web.registro", TYPE_A, None));
        assert_eq!((q.id, q.rd, q.qtype, q.qclass), (7, true, TYPE_A, CLASS_IN));
        assert_eq!(q.name, b"\x03Web\x08registro\x00");
        assert_eq!(labels(&q.name), [&b"Web"[..], b"registro"]);
        assert_eq!(q.edns, None);
    }

    #[test]
    fn edns_size_and_version_are_read_from_their_place() {
        let mut bytes = query(1, "web.registro", TYPE_SRV, Some(4096));
        let q = read_query(&bytes);
        assert_eq!(
            q.edns,
            Some(Edns {
                size: 4096,
                version: 0
            })
        );
        // DO set (the byte after the version): still version 0.
        let n = bytes.len();
        bytes[n - 4] = 0x80;
        assert_eq!(read_query(&bytes).edns.map(|e| e.version), Some(0));
        bytes[n - 5] = 1;
        assert_eq!(read_query(&bytes).edns.map(|e| e.version), Some(1));
    }

    #[test]
    fn unknown_types_and_classes_and_the_z_bit_are_read_not_refused() {
        let mut bytes = query(1, "web.registro", 0xFF00, None);
        let n = bytes.len();
        bytes[n - 2..].copy_from_slice(&3u16.to_be_bytes()); // CH
        bytes[3] |= 0x40; // Z
        let q = read_query(&bytes);
        assert_eq!((q.qtype, q.qclass), (0xFF00, 3));
    }

    #[test]
    fn what_is_dropped_and_what_is_refused() {
        assert_eq!(read(b""), Read::Drop);
        assert_eq!(read(&[0; 11]), Read::Drop);
        let mut answer = query(9, "web.registro", TYPE_A, None);
        answer[2] |= 0x80;
        assert_eq!(read(&answer), Read::Drop);
        let refused = |bytes: &[u8]| match read(bytes) {
            Read::Refuse { id, rcode, .. } => Some((id, rcode)),
            _ => None,
        };
        let mut notify = query(9, "web.registro", TYPE_A, None);
        notify[2] |= 4 << 3;
        assert_eq!(refused(&notify), Some((9, Rcode::NotImp)));
        let mut two = query(9, "web.registro", TYPE_A, None);
        two[5] = 2;
        assert_eq!(refused(&two), Some((9, Rcode::FormErr)));
        let cut = query(9, "web.registro", TYPE_A, None);
        assert_eq!(refused(&cut[..cut.len() - 1]), Some((9, Rcode::FormErr)));
        assert_eq!(refused(&cut[..14]), Some((9, Rcode::FormErr)));
        // A label of 64 bytes, a pointer forward, a pointer to itself.
        let mut long = query(9, "web.registro", TYPE_A, None);
        long[12] = 64;
        assert_eq!(refused(&long), Some((9, Rcode::FormErr)));
        let mut forward = query(9, "", TYPE_A, None);
        forward.splice(12..13, [0xC0, 20]);
        assert_eq!(refused(&forward), Some((9, Rcode::FormErr)));
        let mut looped = query(9, "", TYPE_A, None);
        looped.splice(12..13, [0xC0, 12]);
        assert_eq!(refused(&looped), Some((9, Rcode::FormErr)));
        // The answer to a refused message: its id, opcode and RD, no question.
        assert_eq!(
            refusal(9, 0x2100, Rcode::NotImp),
            [0, 9, 0xA1, 0x04, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
