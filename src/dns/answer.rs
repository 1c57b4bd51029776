//! The responder: a query's bytes, the zone's settings and a way to read an
//! app's `up` instances in; the answer's bytes out (sans I/O: no socket, no
//! clock, no lock; `lookup` is the registry read at the caller's `now`).
//!
//! The names of the zone (`registro.` below stands for `--dns-domain`):
//!
//! | name | A / AAAA | SRV | else |
//! |---|---|---|---|
//! | `registro.` | no data | no data | SOA (SOA, ANY) |
//! | `APP.registro.` | the `up` instances' addresses | one per `up` instance | no data |
//! | `_APP._tcp.registro.` | no data | one per `up` instance | no data |
//! | `HEX.addr.registro.` | the address HEX spells | no data | no data |
//!
//! An app the registry does not hold: NXDOMAIN; an app without an `up`
//! instance: no data (NOERROR, no answer); both with the zone's SOA in the
//! authority section. Any other name in the zone: NXDOMAIN; outside it:
//! REFUSED. SRV targets are `HEX.addr.registro.` (the address in hex, as
//! Consul writes it), their addresses in the additional section.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::{
    self, Data, Name, Query, Rcode, Read, Section, Writer, CLASS_ANY, CLASS_IN, MAX_POINTER, QNAME,
    TCP_MAX, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_AXFR, TYPE_IXFR, TYPE_SOA, TYPE_SRV, UDP_MAX,
    UDP_MIN,
};
use super::Rng;

/// The zone this server answers for.
#[derive(Clone, Debug)]
pub struct Zone {
    /// The domain's labels, lowercase (`registro.` is `["registro"]`).
    labels: Vec<Vec<u8>>,
    /// TTL of every record, and the SOA's minimum (the negative TTL).
    pub ttl: u32,
    /// The SOA's serial.
    pub serial: u32,
}

impl Zone {
    /// The zone of `domain` (`registro.`, `registro`, `svc.example.`):
    /// letters, digits, `-` and `_`, labels of 1 to 63 bytes, 200 bytes at
    /// most (room below it for names), the final dot optional.
    pub fn new(domain: &str, ttl: u32, serial: u32) -> Result<Zone, String> {
        let bad = |why: &str| format!("invalid --dns-domain {domain:?}: {why}");
        let trimmed = domain.strip_suffix('.').unwrap_or(domain);
        if trimmed.is_empty() {
            return Err(bad("expected a name such as registro. or svc.example."));
        }
        if trimmed.len() > 200 {
            return Err(bad("longer than 200 bytes"));
        }
        let mut labels = Vec::new();
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("each label is 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad("labels take letters, digits, '-' and '_' only"));
            }
            labels.push(label.to_ascii_lowercase().into_bytes());
        }
        Ok(Zone {
            labels,
            ttl,
            serial,
        })
    }

    /// The domain as written in answers: `registro.`.
    pub fn domain(&self) -> String {
        let mut out = String::new();
        for label in &self.labels {
            out.push_str(&String::from_utf8_lossy(label));
            out.push('.');
        }
        out
    }
}

/// The address of one `up` instance and its port.
pub type Target = (IpAddr, u16);

/// A query type as counted in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    A,
    Aaaa,
    Srv,
    Soa,
    Ns,
    Any,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::A,
        Kind::Aaaa,
        Kind::Srv,
        Kind::Soa,
        Kind::Ns,
        Kind::Any,
        Kind::Other,
    ];

    fn of(qtype: u16) -> Kind {
        match qtype {
            TYPE_A => Kind::A,
            TYPE_AAAA => Kind::Aaaa,
            TYPE_SRV => Kind::Srv,
            TYPE_SOA => Kind::Soa,
            wire::TYPE_NS => Kind::Ns,
            TYPE_ANY => Kind::Any,
            _ => Kind::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::A => "A",
            Kind::Aaaa => "AAAA",
            Kind::Srv => "SRV",
            Kind::Soa => "SOA",
            Kind::Ns => "NS",
            Kind::Any => "ANY",
            Kind::Other => "other",
        }
    }
}

/// The outcome of one query: the answer (none for what is dropped) and what
/// the metrics count.
#[derive(Debug)]
pub struct Answer {
    pub bytes: Option<Vec<u8>>,
    pub kind: Kind,
    /// `None` when nothing was answered.
    pub rcode: Option<Rcode>,
}

/// How the answer travels, which sets its largest size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What a name of the zone is.
enum Owner {
    Apex,
    /// `APP.registro.` (lowercased), and whether it is also a name the
    /// zone always has (`addr`, `_tcp`): then no data rather than NXDOMAIN
    /// when no app has that name.
    App(String, bool),
    /// `_APP._tcp.registro.`
    Service(String),
    Addr(IpAddr),
    NoSuch,
}

/// Answers the query in `bytes`. `lookup(app)` reads the app's `up`
/// instances (`None`: no such app); it is called at most once.
pub fn respond(
    zone: &Zone,
    bytes: &[u8],
    transport: Transport,
    lookup: impl FnOnce(&str) -> Option<Vec<Target>>,
    rng: &mut Rng,
) -> Answer {
    let query = match wire::read(bytes) {
        Read::Drop => {
            return Answer {
                bytes: None,
                kind: Kind::Other,
                rcode: None,
            }
        }
        Read::Refuse { id, flags, rcode } => {
            return Answer {
                bytes: Some(wire::refusal(id, flags, rcode)),
                kind: Kind::Other,
                rcode: Some(rcode),
            }
        }
        Read::Query(query) => query,
    };
    let kind = Kind::of(query.qtype);
    let (bytes, rcode) = answer(zone, &query, transport, lookup, rng);
    Answer {
        bytes: Some(bytes),
        kind,
        rcode: Some(rcode),
    }
}

fn answer(
    zone: &Zone,
    query: &Query,
    transport: Transport,
    lookup: impl FnOnce(&str) -> Option<Vec<Target>>,
    rng: &mut Rng,
) -> (Vec<u8>, Rcode) {
    let limit = match (transport, query.edns) {
        (Transport::Tcp, _) => TCP_MAX,
        (Transport::Udp, None) => UDP_MIN,
        (Transport::Udp, Some(edns)) => usize::from(edns.size).clamp(UDP_MIN, UDP_MAX),
    };
    let mut w = Writer::new(query, limit);
    let done = |w: Writer, rcode, aa, tc| (w.finish(query, rcode, aa, tc), rcode);
    if query.edns.is_some_and(|e| e.version > 0) {
        return done(w, Rcode::BadVers, false, false);
    }
    let labels = wire::labels(&query.name);
    let below = labels.len().checked_sub(zone.labels.len());
    let inside = below.is_some_and(|below| {
        labels[below..]
            .iter()
            .zip(&zone.labels)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
    });
    let refused = ![CLASS_IN, CLASS_ANY].contains(&query.qclass)
        || [TYPE_AXFR, TYPE_IXFR].contains(&query.qtype);
    let (Some(below), true, false) = (below, inside, refused) else {
        return done(w, Rcode::Refused, false, false);
    };
    // Where the zone's own name starts within the question's name: SOA
    // names and SRV targets point there.
    let domain = QNAME
        + labels[..below]
            .iter()
            .map(|l| 1 + l.len() as u16)
            .sum::<u16>();
    let soa = |w: &mut Writer| {
        let data = Data::Soa {
            serial: zone.serial,
            minimum: zone.ttl,
            domain,
        };
        // Always fits: the question is at most 259 bytes, an SOA here 40.
        w.record(Section::Authority, Name::At(domain), zone.ttl, data);
    };
    let negative = |mut w: Writer, rcode| {
        soa(&mut w);
        done(w, rcode, true, false)
    };
    let owner = match &labels[..below] {
        [] => Owner::Apex,
        [app] => match std::str::from_utf8(app) {
            Ok(app) => {
                let app = app.to_ascii_lowercase();
                let fixed = app == "addr" || app == "_tcp";
                Owner::App(app, fixed)
            }
            Err(_) => Owner::NoSuch,
        },
        [service, tcp] if tcp.eq_ignore_ascii_case(b"_tcp") => {
            match service.strip_prefix(b"_").map(std::str::from_utf8) {
                Some(Ok(app)) if !app.is_empty() => Owner::Service(app.to_ascii_lowercase()),
                _ => Owner::NoSuch,
            }
        }
        [hex, addr] if addr.eq_ignore_ascii_case(b"addr") => match parse_hex(hex) {
            Some(ip) => Owner::Addr(ip),
            None => Owner::NoSuch,
        },
        _ => Owner::NoSuch,
    };
    let qtype = query.qtype;
    let wants = |t: u16| qtype == t || qtype == TYPE_ANY;
    match owner {
        Owner::NoSuch => negative(w, Rcode::NxDomain),
        Owner::Apex if wants(TYPE_SOA) => {
            let data = Data::Soa {
                serial: zone.serial,
                minimum: zone.ttl,
                domain,
            };
            w.record(Section::Answer, Name::At(QNAME), zone.ttl, data);
            done(w, Rcode::NoError, true, false)
        }
        Owner::Apex => negative(w, Rcode::NoError),
        Owner::Addr(ip) => {
            let t = if ip.is_ipv4() { TYPE_A } else { TYPE_AAAA };
            if !wants(t) {
                return negative(w, Rcode::NoError);
            }
            w.record(Section::Answer, Name::At(QNAME), zone.ttl, Data::Addr(ip));
            done(w, Rcode::NoError, true, false)
        }
        Owner::App(app, fixed) => {
            let (a, aaaa, srv) = (wants(TYPE_A), wants(TYPE_AAAA), qtype == TYPE_SRV);
            let Some(mut targets) = lookup(&app) else {
                let rcode = if fixed {
                    Rcode::NoError
                } else {
                    Rcode::NxDomain
                };
                return negative(w, rcode);
            };
            let truncated = if srv {
                services(&mut w, zone.ttl, domain, &mut targets, rng)
            } else if a || aaaa {
                targets.retain(|(ip, _)| (a && ip.is_ipv4()) || (aaaa && ip.is_ipv6()));
                addresses(&mut w, zone.ttl, &mut targets, rng)
            } else {
                false
            };
            finish_positive(w, truncated, soa, done)
        }
        Owner::Service(app) => {
            let Some(mut targets) = lookup(&app) else {
                return negative(w, Rcode::NxDomain);
            };
            let truncated =
                wants(TYPE_SRV) && services(&mut w, zone.ttl, domain, &mut targets, rng);
            finish_positive(w, truncated, soa, done)
        }
    }
}

/// An answer for a name that exists: no data (NOERROR with the SOA) when
/// nothing was written.
fn finish_positive(
    mut w: Writer,
    truncated: bool,
    soa: impl Fn(&mut Writer),
    done: impl Fn(Writer, Rcode, bool, bool) -> (Vec<u8>, Rcode),
) -> (Vec<u8>, Rcode) {
    if w.answers() == 0 && !truncated {
        soa(&mut w);
    }
    done(w, Rcode::NoError, true, truncated)
}

/// Writes A/AAAA records of `targets`' distinct addresses in a random
/// order until one does not fit; says whether one did not.
fn addresses(w: &mut Writer, ttl: u32, targets: &mut [Target], rng: &mut Rng) -> bool {
    let mut seen = HashSet::with_capacity(targets.len().min(64));
    for i in 0..targets.len() {
        let (ip, _) = pick(targets, i, rng);
        if !seen.insert(ip) {
            continue;
        }
        if !w.record(Section::Answer, Name::At(QNAME), ttl, Data::Addr(ip)) {
            return true;
        }
    }
    false
}

/// Writes SRV records of `targets` (distinct address and port) in a random
/// order until one does not fit, then, as far as they fit, their targets'
/// addresses in the additional section; says whether an SRV did not fit.
fn services(w: &mut Writer, ttl: u32, domain: u16, targets: &mut [Target], rng: &mut Rng) -> bool {
    let mut seen = HashSet::with_capacity(targets.len().min(64));
    // Each address's target name and where it was written; `addr.` and
    // the domain are written once, in the first target.
    let mut names: Vec<(IpAddr, usize)> = Vec::new();
    let mut suffix: Option<u16> = None;
    let mut truncated = false;
    for i in 0..targets.len() {
        let (ip, port) = pick(targets, i, rng);
        if !seen.insert((ip, port)) {
            continue;
        }
        // The target starts after the owner (a pointer), type, class, TTL,
        // length, priority, weight and port.
        let at_name = w.len() + 18;
        let hex = hex(ip);
        let known = names
            .iter()
            .find(|(known, _)| *known == ip)
            .map(|&(_, at)| at);
        let labels = [hex.as_bytes(), b"addr"];
        let target = match (known, suffix) {
            (Some(at), _) if at <= MAX_POINTER => Name::At(at as u16),
            (_, Some(s)) => Name::Labels(&labels[..1], s),
            (_, None) => Name::Labels(&labels, domain),
        };
        if !w.record(
            Section::Answer,
            Name::At(QNAME),
            ttl,
            Data::Srv { port, target },
        ) {
            truncated = true;
            break;
        }
        if known.is_none() {
            names.push((ip, at_name));
        }
        // `addr.` + domain is at the first target's second label.
        if suffix.is_none() && at_name + 1 + hex.len() <= MAX_POINTER {
            suffix = Some((at_name + 1 + hex.len()) as u16);
        }
    }
    if truncated {
        return true;
    }
    for (ip, at) in names {
        let hex = hex(ip);
        let label = [hex.as_bytes()];
        let name = match (at <= MAX_POINTER, suffix) {
            (true, _) => Name::At(at as u16),
            // Past the reach of a pointer: the name again, its suffix by pointer.
            (false, Some(s)) => Name::Labels(&label, s),
            (false, None) => break,
        };
        if !w.record(Section::Additional, name, ttl, Data::Addr(ip)) {
            break;
        }
    }
    false
}

/// The `i`th element of a random order of `items`, drawn lazily (a
/// Fisher-Yates step): the first `i` are already drawn.
fn pick<T: Copy>(items: &mut [T], i: usize, rng: &mut Rng) -> T {
    let j = i + rng.below(items.len() - i);
    items.swap(i, j);
    items[i]
}

/// An address in hex, as in a target name: 8 digits for IPv4, 32 for IPv6
/// (written on the stack: an SRV answer writes one per record).
pub fn hex(ip: IpAddr) -> Hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Hex([0; 32], 0);
    let mut push = |bytes: &[u8]| {
        for b in bytes {
            out.0[out.1] = DIGITS[usize::from(b >> 4)];
            out.0[out.1 + 1] = DIGITS[usize::from(b & 0xF)];
            out.1 += 2;
        }
    };
    match ip {
        IpAddr::V4(ip) => push(&ip.octets()),
        IpAddr::V6(ip) => push(&ip.octets()),
    }
    out
}

/// The hex digits of an address.
pub struct Hex([u8; 32], usize);

impl Hex {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..self.1]
    }

    pub fn len(&self) -> usize {
        self.1
    }
}

impl PartialEq<&str> for Hex {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::fmt::Debug for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The address a target name's first label spells, either case.
fn parse_hex(label: &[u8]) -> Option<IpAddr> {
    if !label.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let text = std::str::from_utf8(label).ok()?;
    match label.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(text, 16).ok()?,
        ))),
        32 => Some(IpAddr::V6(Ipv6Addr::from(
            u128::from_str_radix(text, 16).ok()?,
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use simple_dns::rdata::RData;
    use simple_dns::{Packet, PacketFlag, ResourceRecord};

    use super::*;
    use crate::dns::wire::query;
    use crate::dns::{targets, up_in};
    use crate::registry::{Millis, Periods, Registry};

    const T0: Millis = 1_000_000;
    const P: Periods = Periods::DEFAULT;

    /// A registry with app `web`: `up` instances at 10.0.0.1:8001,
    /// 10.0.0.2:8002, [fd00::1]:9000; a `starting` one (10.0.0.9) and one out
    /// of service (10.0.0.8); an app `idle` with a `starting` instance only.
    fn registry() -> Registry {
        let mut r = Registry::new(P);
        r.create_app("web", T0).unwrap();
        r.create_app("idle", T0).unwrap();
        for (id, ip, port) in [
            ("a", "10.0.0.1", 8001),
            ("b", "10.0.0.2", 8002),
            ("c", "fd00::1", 9000),
        ] {
            r.register("web", id, ip, port, None, T0).unwrap();
            r.renew("web", id, T0).unwrap();
        }
        r.register("web", "new", "10.0.0.9", 80, None, T0).unwrap();
        r.register("web", "gone", "10.0.0.8", 80, None, T0).unwrap();
        r.renew("web", "gone", T0).unwrap();
        r.take_out_of_service("web", "gone", T0).unwrap();
        r.register("idle", "s", "10.0.0.7", 80, None, T0).unwrap();
        r
    }

    fn zone() -> Zone {
        Zone::new("registro.", 0, 7).unwrap()
    }

    /// The answer of `zone` to `bytes` from `registry` at `now`.
    fn ask_at(
        zone: &Zone,
        registry: &mut Registry,
        now: Millis,
        bytes: &[u8],
        transport: Transport,
    ) -> Answer {
        let mut rng = Rng::seeded(now ^ bytes.len() as u64);
        respond(
            zone,
            bytes,
            transport,
            |app| up_in(registry, app, now).map(|v| targets(&v)),
            &mut rng,
        )
    }

    fn ask(registry: &mut Registry, name: &str, qtype: u16) -> Vec<u8> {
        let q = query(0x1234, name, qtype, Some(1232));
        ask_at(&zone(), registry, T0, &q, Transport::Udp)
            .bytes
            .expect("an answer")
    }

    fn parse(bytes: &[u8]) -> Packet<'_> {
        Packet::parse(bytes)
            .unwrap_or_else(|e| panic!("the answer does not parse: {e:?}: {bytes:?}"))
    }

    /// A section's records as text, sorted (the order is random).
    fn texts(records: &[ResourceRecord<'_>]) -> Vec<String> {
        let mut out: Vec<String> = records
            .iter()
            .map(|rr| format!("{} {}", rr.name, rdata(&rr.rdata)))
            .collect();
        out.sort();
        out
    }

    fn answers(bytes: &[u8]) -> Vec<String> {
        texts(&parse(bytes).answers)
    }

    fn additional(bytes: &[u8]) -> Vec<String> {
        texts(&parse(bytes).additional_records)
    }

    fn rdata(data: &RData<'_>) -> String {
        match data {
            RData::A(a) => format!("A {}", Ipv4Addr::from(a.address)),
            RData::AAAA(a) => format!("AAAA {}", Ipv6Addr::from(a.address)),
            RData::SRV(s) => format!("SRV {} {} {} {}", s.priority, s.weight, s.port, s.target),
            RData::SOA(s) => format!("SOA {} {} {} {}", s.mname, s.rname, s.serial, s.minimum),
            other => format!("{other:?}"),
        }
    }

    fn rcode(bytes: &[u8]) -> u8 {
        bytes[3] & 0xF
    }

    fn flag(bytes: &[u8], flag: PacketFlag) -> bool {
        parse(bytes).has_flags(flag)
    }

    /// The authority section: the SOA of the zone, or nothing.
    fn authority(bytes: &[u8]) -> Vec<String> {
        parse(bytes)
            .name_servers
            .iter()
            .map(|rr| format!("{} {} {}", rr.name, rr.ttl, rdata(&rr.rdata)))
            .collect()
    }

    const SOA: &str = "registro 0 SOA ns.registro hostmaster.registro 7 0";

    #[test]
    fn a_and_aaaa_are_the_up_instances_addresses() {
        let mut r = registry();
        let a = ask(&mut r, "web.registro.", TYPE_A);
        assert_eq!(
            answers(&a),
            ["web.registro A 10.0.0.1", "web.registro A 10.0.0.2"]
        );
        assert_eq!(
            (rcode(&a), flag(&a, PacketFlag::AUTHORITATIVE_ANSWER)),
            (0, true)
        );
        assert!(!flag(&a, PacketFlag::TRUNCATION));
        assert_eq!(parse(&a).id(), 0x1234);
        assert_eq!(parse(&a).answers[0].ttl, 0);
        assert_eq!(authority(&a), Vec::<String>::new());
        let aaaa = ask(&mut r, "web.registro.", TYPE_AAAA);
        assert_eq!(answers(&aaaa), ["web.registro AAAA fd00::1"]);
        let any = ask(&mut r, "web.registro.", TYPE_ANY);
        assert_eq!(answers(&any).len(), 3);
    }

    #[test]
    fn names_are_case_insensitive_and_the_question_is_echoed_as_asked() {
        let mut r = registry();
        let a = ask(&mut r, "WeB.ReGiStRo", TYPE_A);
        assert_eq!(
            answers(&a),
            ["WeB.ReGiStRo A 10.0.0.1", "WeB.ReGiStRo A 10.0.0.2"]
        );
        assert_eq!(parse(&a).questions[0].qname.to_string(), "WeB.ReGiStRo");
        let srv = ask(&mut r, "_WEB._TCP.REGISTRO", TYPE_SRV);
        assert_eq!(answers(&srv).len(), 3);
    }

    #[test]
    fn the_order_is_random() {
        let mut r = registry();
        let mut firsts = BTreeSet::new();
        for seed in 0..64 {
            let q = query(1, "web.registro", TYPE_A, None);
            let mut rng = Rng::seeded(seed + 1);
            let answer = respond(
                &zone(),
                &q,
                Transport::Udp,
                |app| up_in(&mut r, app, T0).map(|v| targets(&v)),
                &mut rng,
            );
            let bytes = answer.bytes.unwrap();
            firsts.insert(rdata(&parse(&bytes).answers[0].rdata));
        }
        assert_eq!(firsts.len(), 2, "{firsts:?}");
    }

    #[test]
    fn srv_names_the_targets_and_carries_their_addresses() {
        let mut r = registry();
        for name in ["web.registro", "_web._tcp.registro"] {
            let srv = ask(&mut r, name, TYPE_SRV);
            assert_eq!(
                answers(&srv),
                [
                    format!("{name} SRV 1 1 8001 0a000001.addr.registro"),
                    format!("{name} SRV 1 1 8002 0a000002.addr.registro"),
                    format!("{name} SRV 1 1 9000 fd000000000000000000000000000001.addr.registro"),
                ]
            );
            assert_eq!(
                additional(&srv),
                [
                    "0a000001.addr.registro A 10.0.0.1",
                    "0a000002.addr.registro A 10.0.0.2",
                    "fd000000000000000000000000000001.addr.registro AAAA fd00::1",
                ]
            );
        }
        // The targets resolve, in either case; the other family has no data.
        let a = ask(&mut r, "0A000002.addr.registro", TYPE_A);
        assert_eq!(answers(&a), ["0A000002.addr.registro A 10.0.0.2"]);
        let aaaa = ask(
            &mut r,
            "fd000000000000000000000000000001.addr.registro",
            TYPE_AAAA,
        );
        assert_eq!(
            answers(&aaaa),
            ["fd000000000000000000000000000001.addr.registro AAAA fd00::1"]
        );
        let none = ask(&mut r, "0a000002.addr.registro", TYPE_AAAA);
        assert_eq!(
            (rcode(&none), answers(&none).len(), authority(&none)),
            (0, 0, vec![SOA.to_string()])
        );
        let bad = ask(&mut r, "0a00000.addr.registro", TYPE_A);
        assert_eq!(rcode(&bad), 3);
        // `_web._tcp` has no addresses; `_nope._tcp` does not exist.
        let a = ask(&mut r, "_web._tcp.registro", TYPE_A);
        assert_eq!((rcode(&a), answers(&a).len()), (0, 0));
        assert_eq!(rcode(&ask(&mut r, "_nope._tcp.registro", TYPE_SRV)), 3);
    }

    #[test]
    fn nxdomain_for_an_unknown_app_no_data_for_one_without_up_instances() {
        let mut r = registry();
        let nx = ask(&mut r, "nope.registro", TYPE_A);
        assert_eq!((rcode(&nx), answers(&nx).len()), (3, 0));
        assert_eq!(authority(&nx), [SOA]);
        assert!(flag(&nx, PacketFlag::AUTHORITATIVE_ANSWER));
        for qtype in [TYPE_A, TYPE_AAAA, TYPE_SRV] {
            let empty = ask(&mut r, "idle.registro", qtype);
            assert_eq!((rcode(&empty), answers(&empty).len()), (0, 0));
            assert_eq!(authority(&empty), [SOA]);
        }
        // An existing name, a type it has no records of.
        let mx = ask(&mut r, "web.registro", 15);
        assert_eq!(
            (rcode(&mx), answers(&mx).len(), authority(&mx)),
            (0, 0, vec![SOA.to_string()])
        );
        // Deeper names do not exist; `addr` and `_tcp` always do.
        assert_eq!(rcode(&ask(&mut r, "x.web.registro", TYPE_A)), 3);
        assert_eq!(rcode(&ask(&mut r, "addr.registro", TYPE_A)), 0);
        assert_eq!(rcode(&ask(&mut r, "_tcp.registro", TYPE_A)), 0);
    }

    #[test]
    fn the_negative_ttl_is_the_soa_minimum() {
        let mut r = registry();
        let zone = Zone::new("registro", 30, 7).unwrap();
        let q = query(1, "nope.registro", TYPE_A, None);
        let nx = ask_at(&zone, &mut r, T0, &q, Transport::Udp).bytes.unwrap();
        assert_eq!(
            authority(&nx),
            ["registro 30 SOA ns.registro hostmaster.registro 7 30"]
        );
        let q = query(1, "web.registro", TYPE_A, None);
        let a = ask_at(&zone, &mut r, T0, &q, Transport::Udp).bytes.unwrap();
        assert!(parse(&a).answers.iter().all(|rr| rr.ttl == 30));
    }

    #[test]
    fn statuses_are_read_at_the_time_of_the_query() {
        let mut r = registry();
        let q = query(1, "web.registro", TYPE_A, None);
        // 90 s after the last heartbeat: still up; a moment later: down.
        let at = |r: &mut Registry, now| ask_at(&zone(), r, now, &q, Transport::Udp).bytes.unwrap();
        assert_eq!(answers(&at(&mut r, T0 + 90_000)).len(), 2);
        r.renew("web", "a", T0 + 60_000).unwrap();
        let later = at(&mut r, T0 + 90_001);
        assert_eq!(answers(&later), ["web.registro A 10.0.0.1"]);
        let none = at(&mut r, T0 + 150_001);
        assert_eq!(
            (rcode(&none), answers(&none).len(), authority(&none)),
            (0, 0, vec![SOA.to_string()])
        );
        // Removed with its instances, the app no longer exists.
        assert_eq!(rcode(&at(&mut r, T0 + 2_000_000)), 3);
    }

    #[test]
    fn the_apex_has_the_soa_and_nothing_else() {
        let mut r = registry();
        let soa = ask(&mut r, "registro", TYPE_SOA);
        assert_eq!(
            answers(&soa),
            ["registro SOA ns.registro hostmaster.registro 7 0"]
        );
        let ns = ask(&mut r, "registro", wire::TYPE_NS);
        assert_eq!(
            (rcode(&ns), answers(&ns).len(), authority(&ns)),
            (0, 0, vec![SOA.to_string()])
        );
    }

    #[test]
    fn outside_the_zone_or_class_in_refused() {
        let mut r = registry();
        for name in ["example.com", "registro.example", "com", ""] {
            let refused = ask(&mut r, name, TYPE_A);
            assert_eq!(
                (
                    rcode(&refused),
                    flag(&refused, PacketFlag::AUTHORITATIVE_ANSWER)
                ),
                (5, false),
                "{name}"
            );
            assert_eq!(parse(&refused).questions.len(), 1);
        }
        let mut chaos = query(1, "web.registro", TYPE_A, None);
        let n = chaos.len();
        chaos[n - 1] = 3;
        assert_eq!(
            rcode(
                &ask_at(&zone(), &mut r, T0, &chaos, Transport::Udp)
                    .bytes
                    .unwrap()
            ),
            5
        );
        assert_eq!(rcode(&ask(&mut r, "registro", TYPE_AXFR)), 5);
    }

    #[test]
    fn other_opcodes_malformed_queries_and_answers() {
        let mut r = registry();
        let mut status = query(0x4242, "web.registro", TYPE_A, None);
        status[2] |= 2 << 3;
        let a = ask_at(&zone(), &mut r, T0, &status, Transport::Udp);
        let bytes = a.bytes.unwrap();
        assert_eq!(
            (rcode(&bytes), &bytes[..2], a.rcode),
            (4, &[0x42, 0x42][..], Some(Rcode::NotImp))
        );
        let q = query(0x4242, "web.registro", TYPE_A, None);
        let a = ask_at(&zone(), &mut r, T0, &q[..q.len() - 2], Transport::Udp);
        assert_eq!(
            (rcode(&a.bytes.unwrap()), a.rcode),
            (1, Some(Rcode::FormErr))
        );
        let a = ask_at(&zone(), &mut r, T0, &q[..5], Transport::Udp);
        assert_eq!((a.bytes, a.rcode), (None, None));
    }

    #[test]
    fn edns_versions_past_0_get_badvers() {
        let mut r = registry();
        let mut q = query(1, "web.registro", TYPE_A, Some(1232));
        let n = q.len();
        q[n - 5] = 1;
        let bytes = ask_at(&zone(), &mut r, T0, &q, Transport::Udp)
            .bytes
            .unwrap();
        // BADVERS is 16: 0 in the header, 1 in the OPT's extended RCODE.
        assert_eq!((rcode(&bytes), bytes[bytes.len() - 6]), (0, 1));
        assert_eq!(answers(&bytes).len(), 0);
    }

    /// A registry with `n` up instances of `big` (10.1.x.y, port 8000 + i).
    fn big(n: usize) -> Registry {
        let mut r = Registry::new(P);
        r.create_app("big", T0).unwrap();
        for i in 0..n {
            let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
            r.register("big", &format!("i{i}"), &ip, 8000 + i as u16, None, T0)
                .unwrap();
            r.renew("big", &format!("i{i}"), T0).unwrap();
        }
        r
    }

    #[test]
    fn what_does_not_fit_sets_tc_and_what_fits_is_carried() {
        let mut r = big(400);
        for (edns, transport, limit) in [
            (None, Transport::Udp, 512),
            (Some(100), Transport::Udp, 512),
            (Some(1232), Transport::Udp, 1232),
            (Some(4096), Transport::Udp, 4096),
            (Some(65_000), Transport::Udp, 4096),
        ] {
            for qtype in [TYPE_A, TYPE_SRV] {
                let q = query(1, "big.registro", qtype, edns);
                let bytes = ask_at(&zone(), &mut r, T0, &q, transport).bytes.unwrap();
                let packet = parse(&bytes);
                assert!(bytes.len() <= limit, "{edns:?} {qtype}: {}", bytes.len());
                assert!(packet.has_flags(PacketFlag::TRUNCATION), "{edns:?} {qtype}");
                // Full: one more A record (16 bytes) would not have fit.
                assert!(
                    bytes.len() + 100 > limit,
                    "{edns:?} {qtype}: {}",
                    bytes.len()
                );
                let n = packet.answers.len();
                assert!(n > 0 && n < 400, "{n}");
                let distinct: BTreeSet<String> =
                    packet.answers.iter().map(|rr| rdata(&rr.rdata)).collect();
                assert_eq!(distinct.len(), n);
                assert_eq!(packet.opt().is_some(), edns.is_some());
            }
        }
        // Over TCP, all 400, with their additional records.
        for qtype in [TYPE_A, TYPE_SRV] {
            let q = query(1, "big.registro", qtype, None);
            let bytes = ask_at(&zone(), &mut r, T0, &q, Transport::Tcp)
                .bytes
                .unwrap();
            assert!(!flag(&bytes, PacketFlag::TRUNCATION));
            assert_eq!(answers(&bytes).len(), 400);
            if qtype == TYPE_SRV {
                assert_eq!(additional(&bytes).len(), 400);
            }
        }
    }

    #[test]
    fn a_tcp_answer_past_the_reach_of_pointers_still_parses() {
        // 3,000 SRV records with their addresses: about 150 KB in full, so
        // cut at 64 KiB, with names written past offset 16,383.
        let mut r = big(3000);
        let q = query(1, "_big._tcp.registro", TYPE_SRV, None);
        let bytes = ask_at(&zone(), &mut r, T0, &q, Transport::Tcp)
            .bytes
            .unwrap();
        assert!(
            bytes.len() > MAX_POINTER && bytes.len() <= TCP_MAX,
            "{}",
            bytes.len()
        );
        let packet = parse(&bytes);
        assert!(packet.has_flags(PacketFlag::TRUNCATION));
        for rr in &packet.answers {
            let RData::SRV(srv) = &rr.rdata else {
                panic!("{rr:?}")
            };
            let ip = format!("{}", srv.target);
            assert!(ip.ends_with(".addr.registro"), "{ip}");
        }
        // With room for every SRV, the additional records past the pointers' reach.
        let mut r = big(1500);
        let bytes = ask_at(&zone(), &mut r, T0, &q, Transport::Tcp)
            .bytes
            .unwrap();
        let packet = parse(&bytes);
        assert!(!packet.has_flags(PacketFlag::TRUNCATION));
        assert_eq!(packet.answers.len(), 1500);
        assert!(packet.additional_records.len() > 100);
        for rr in &packet.additional_records {
            let RData::A(a) = &rr.rdata else {
                panic!("{rr:?}")
            };
            assert_eq!(
                rr.name.to_string(),
                format!(
                    "{}.addr.registro",
                    hex(IpAddr::V4(Ipv4Addr::from(a.address)))
                )
            );
        }
    }

    #[test]
    fn one_record_per_address_and_one_srv_per_address_and_port() {
        let mut r = Registry::new(P);
        r.create_app("web", T0).unwrap();
        for (id, ip, port) in [
            ("a", "10.0.0.1", 80),
            ("b", "10.0.0.1", 80),
            ("c", "10.0.0.1", 81),
            ("d", "::ffff:10.0.0.1", 82),
            ("h", "host.example", 83),
        ] {
            r.register("web", id, ip, port, None, T0).unwrap();
            r.renew("web", id, T0).unwrap();
        }
        assert_eq!(
            answers(&ask(&mut r, "web.registro", TYPE_A)),
            ["web.registro A 10.0.0.1"]
        );
        let srv = ask(&mut r, "web.registro", TYPE_SRV);
        assert_eq!(answers(&srv).len(), 3);
        assert_eq!(additional(&srv), ["0a000001.addr.registro A 10.0.0.1"]);
        assert_eq!(answers(&ask(&mut r, "web.registro", TYPE_AAAA)).len(), 0);
    }

    #[test]
    fn a_zone_of_several_labels() {
        let mut r = registry();
        let zone = Zone::new("Svc.Example.", 5, 7).unwrap();
        assert_eq!(zone.domain(), "svc.example.");
        let q = query(1, "_web._tcp.svc.EXAMPLE", TYPE_SRV, None);
        let bytes = ask_at(&zone, &mut r, T0, &q, Transport::Udp).bytes.unwrap();
        assert!(
            answers(&bytes)
                .iter()
                .all(|a| a.ends_with(".addr.svc.EXAMPLE")),
            "{:?}",
            answers(&bytes)
        );
        let q = query(1, "web.registro", TYPE_A, None);
        assert_eq!(
            rcode(&ask_at(&zone, &mut r, T0, &q, Transport::Udp).bytes.unwrap()),
            5
        );
        for bad in ["", ".", "a..b", "a b", &"x".repeat(64), "ünï"] {
            assert!(Zone::new(bad, 0, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_hex_of_an_address() {
        assert_eq!(hex("10.0.0.1".parse().unwrap()), "0a000001");
        assert_eq!(
            hex("fd00::1".parse().unwrap()),
            "fd000000000000000000000000000001"
        );
        assert_eq!(parse_hex(b"0A000001"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_hex(b"0a00001g"), None);
        assert_eq!(parse_hex(b"+a000001"), None);
    }
}
