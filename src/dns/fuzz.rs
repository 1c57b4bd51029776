//! Fuzzing the responder on bytes (a test module only), as `src/fuzz.rs`
//! fuzzes the HTTP parser: seeded valid queries (random names of the zone
//! and outside it, in random case, of random types and classes, with and
//! without EDNS, over UDP and TCP), mutations of them and random bytes go
//! through `respond` against a real registry. Whatever comes in, it must not
//! panic; an answer must parse (with simple-dns, as a resolver would read
//! it), echo the id, have QR set, fit its transport's size (512 bytes, the
//! EDNS size up to 4,096, 65,535), echo the question of a query, and carry
//! no record twice; a valid query must get the response code its name calls
//! for (an oracle from the registry's own answer over HTTP terms: the app
//! exists or not, has `up` instances or not).
//!
//! `REGISTRO_FUZZ_CASES` sets the number of cases of each property (default
//! 50,000, a tenth of it here: a case costs more than an HTTP parse),
//! `REGISTRO_FUZZ_SEED` the seed (printed, to replay a failure). `make fuzz`
//! runs millions. A live server is fuzzed over UDP and TCP in
//! `tests/it/dns/fuzz.rs`.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use simple_dns::{Packet, PacketFlag};

use super::answer::{respond, Transport, Zone};
use super::wire::{self, query, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_SOA, TYPE_SRV};
use super::{targets, up_in, Rng};
use crate::registry::{Millis, Periods, Registry};
use crate::rng::{fuzz_cases, fuzz_seed};

const T0: Millis = 5_000_000;

/// A tenth of the HTTP fuzz's cases: a DNS case costs more.
fn cases() -> usize {
    fuzz_cases(50_000) / 10
}

/// Apps: `web` (3 up, one of them IPv6, one address twice), `big` (300 up:
/// answers that do not fit), `idle` (none up).
fn registry() -> Registry {
    let mut r = Registry::new(Periods::DEFAULT);
    for app in ["web", "big", "idle"] {
        r.create_app(app, T0).unwrap();
    }
    for (id, ip, port) in [
        ("a", "10.0.0.1", 80),
        ("b", "10.0.0.1", 81),
        ("c", "fd00::1", 82),
    ] {
        r.register("web", id, ip, port, None, T0).unwrap();
        r.renew("web", id, T0).unwrap();
    }
    for i in 0..300 {
        let id = format!("i{i}");
        let ip = format!("10.9.{}.{}", i / 200, i % 200);
        r.register("big", &id, &ip, 9000, None, T0).unwrap();
        r.renew("big", &id, T0).unwrap();
    }
    r.register("idle", "s", "10.0.0.5", 80, None, T0).unwrap();
    r
}

const NAMES: &[&str] = &[
    "web.registro",
    "big.registro",
    "idle.registro",
    "nope.registro",
    "_web._tcp.registro",
    "_big._tcp.registro",
    "_nope._tcp.registro",
    "0a000001.addr.registro",
    "fd000000000000000000000000000001.addr.registro",
    "zz000001.addr.registro",
    "addr.registro",
    "_tcp.registro",
    "registro",
    "x.web.registro",
    "example.com",
    "",
];
const TYPES: &[u16] = &[
    TYPE_A, TYPE_AAAA, TYPE_SRV, TYPE_SOA, TYPE_ANY, 2, 15, 16, 65, 252, 0xFF00,
];

/// Random case of ASCII letters.
fn recase(name: &str, rng: &mut Rng) -> String {
    name.chars()
        .map(|c| {
            if rng.below(2) == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A valid query: its bytes, name, type, EDNS size.
fn valid(rng: &mut Rng) -> (Vec<u8>, &'static str, u16, Option<u16>) {
    let name = NAMES[rng.below(NAMES.len())];
    let qtype = TYPES[rng.below(TYPES.len())];
    let edns = match rng.below(4) {
        0 => None,
        1 => Some(512),
        2 => Some(1232),
        _ => Some(rng.below(70_000) as u16),
    };
    let id = rng.below(65_536) as u16;
    let mut bytes = query(id, &recase(name, rng), qtype, edns);
    if rng.below(8) == 0 {
        bytes[2] &= !0x01; // RD off
    }
    (bytes, name, qtype, edns)
}

/// The response code a valid query for `name` of `qtype` must get.
fn expected(name: &str, qtype: u16, edns: Option<u16>) -> u8 {
    let _ = edns;
    if !(name == "registro" || name.ends_with(".registro")) || qtype == 252 {
        return 5;
    }
    match name {
        "nope.registro" | "_nope._tcp.registro" | "zz000001.addr.registro" | "x.web.registro" => 3,
        _ => 0,
    }
}

fn mutate(bytes: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            bytes.push(rng.below(256) as u8);
        }
        let at = rng.below(bytes.len());
        match rng.below(6) {
            0 => bytes[at] = rng.below(256) as u8,
            1 => bytes[at] ^= 1 << rng.below(8),
            2 => bytes.truncate(at),
            3 => bytes.insert(at, rng.below(256) as u8),
            4 => {
                // A count, a length or a pointer: the interesting bytes.
                let value = [0u8, 1, 2, 63, 64, 0xC0, 0xC0 | 12, 0xFF][rng.below(8)];
                bytes[at] = value;
            }
            _ => {
                let end = (at + rng.below(8)).min(bytes.len());
                bytes.drain(at..end);
            }
        }
    }
}

/// Checks what must hold of any answer to `bytes`; returns the parsed
/// answer's response code (with the extended bits), if any.
fn check(
    zone: &Zone,
    registry: &mut Registry,
    bytes: &[u8],
    transport: Transport,
    rng: &mut Rng,
) -> Option<u16> {
    let answer = catch_unwind(AssertUnwindSafe(|| {
        respond(
            zone,
            bytes,
            transport,
            |app| up_in(registry, app, T0).map(|v| targets(&v)),
            rng,
        )
    }))
    .unwrap_or_else(|_| panic!("respond panicked on {bytes:?}"));
    let out = answer.bytes?;
    // simple-dns refuses a question of a type or class it does not know:
    // it reads the answer with A/IN in their place (as `wire::read` does).
    let mut readable = out.clone();
    if readable[5] == 1 {
        let end = wire::name_end(&readable, 12).expect("a question");
        readable[end..end + 4].copy_from_slice(&[0, 1, 0, 1]);
    }
    let packet = Packet::parse(&readable)
        .unwrap_or_else(|e| panic!("answer does not parse ({e:?}): {bytes:?} -> {out:?}"));
    assert_eq!(&out[..2], &bytes[..2], "the id is echoed");
    assert!(packet.has_flags(PacketFlag::RESPONSE));
    let limit = match (transport, wire::read(bytes)) {
        (Transport::Tcp, _) => wire::TCP_MAX,
        (Transport::Udp, wire::Read::Query(q)) => q.edns.map_or(wire::UDP_MIN, |e| {
            usize::from(e.size).clamp(wire::UDP_MIN, wire::UDP_MAX)
        }),
        _ => wire::UDP_MIN,
    };
    assert!(
        out.len() <= limit,
        "{} bytes over {limit}: {bytes:?}",
        out.len()
    );
    if let wire::Read::Query(q) = wire::read(bytes) {
        assert_eq!(packet.questions.len(), 1);
        assert_eq!(
            &out[12..12 + q.name.len()],
            &q.name[..],
            "the question is echoed"
        );
        let records: Vec<String> = packet.answers.iter().map(|rr| format!("{rr:?}")).collect();
        let distinct: BTreeSet<&String> = records.iter().collect();
        assert_eq!(distinct.len(), records.len(), "a record twice: {bytes:?}");
    }
    let opt_rcode = packet
        .opt()
        .map_or(0, |_| u16::from(out[out.len() - 6]) << 4);
    Some(u16::from(out[3] & 0xF) | opt_rcode)
}

#[test]
fn fuzz_dns_valid_queries_get_the_answer_their_name_calls_for() {
    let seed = fuzz_seed();
    println!(
        "dns valid-query fuzz: seed {seed} (REGISTRO_FUZZ_SEED), {} cases",
        cases()
    );
    let mut rng = Rng::seeded(seed);
    let zone = Zone::new("registro.", 0, 1).unwrap();
    let mut registry = registry();
    for _ in 0..cases() {
        let (bytes, name, qtype, edns) = valid(&mut rng);
        let transport = if rng.below(4) == 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let rcode = check(&zone, &mut registry, &bytes, transport, &mut rng);
        assert_eq!(
            rcode,
            Some(u16::from(expected(name, qtype, edns))),
            "seed {seed}: {name} type {qtype} edns {edns:?} over {transport:?}"
        );
    }
}

#[test]
fn fuzz_dns_mutated_and_random_bytes_never_panic_and_answer_well_formed() {
    let seed = fuzz_seed();
    println!(
        "dns mutation fuzz: seed {seed} (REGISTRO_FUZZ_SEED), {} cases",
        cases()
    );
    let mut rng = Rng::seeded(seed ^ 0x5eed);
    let zone = Zone::new("registro.", 0, 1).unwrap();
    let mut registry = registry();
    for _ in 0..cases() {
        let bytes = if rng.below(8) == 0 {
            (0..rng.below(600)).map(|_| rng.below(256) as u8).collect()
        } else {
            let (mut bytes, ..) = valid(&mut rng);
            mutate(&mut bytes, &mut rng);
            bytes
        };
        let transport = if rng.below(4) == 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        check(&zone, &mut registry, &bytes, transport, &mut rng);
        // What reads as a query reads the same from its own echo.
        if let wire::Read::Query(q) = wire::read(&bytes) {
            let again = query(q.id, "", q.qtype, q.edns.map(|e| e.size));
            let mut again = again;
            again.splice(12..13, q.name.iter().copied());
            if let wire::Read::Query(r) = wire::read(&again) {
                assert_eq!((r.name, r.qtype), (q.name, q.qtype), "seed {seed}");
            }
        }
    }
}
