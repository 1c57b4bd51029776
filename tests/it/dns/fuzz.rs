//! Fuzzing a live server's DNS over UDP and TCP: valid queries, mutations
//! of them and random bytes. Whatever arrives, every answer must parse and
//! echo its query's id, the server must answer a valid query sent after
//! each fuzzed one (over UDP, in order: so nothing was left waiting), a TCP
//! connection must end in answers or a close, never a hang, and the HTTP
//! side must go on serving. Seeded as `tests/it/fuzz.rs` is (the seed is
//! printed); a hundredth of `REGISTRO_FUZZ_CASES`, at least 2,000.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use simple_dns::Packet;

use super::{start_dns, up};
use crate::fuzz::{seed, Rng};
use crate::support::Conn;

fn cases() -> usize {
    std::env::var("REGISTRO_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .map_or(2_000, |n| (n / 100).max(2_000))
}

/// A query for `name` of `qtype`, EDNS when `edns`.
fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if edns {
        q.extend_from_slice(&[0, 0, 41, 16, 0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

fn message(rng: &mut Rng) -> Vec<u8> {
    let names = [
        "web.registro",
        "_web._tcp.registro",
        "nope.registro",
        "registro",
        "example.com",
        "0a000001.addr.registro",
    ];
    let mut q = query(
        rng.below(65_536) as u16,
        rng.pick(&names),
        rng.pick(&[1u16, 28, 33, 6, 255, 16]),
        rng.chance(2),
    );
    match rng.below(4) {
        0 => {}
        1 => (0..rng.below(300)).for_each(|_| q.push(rng.below(256) as u8)),
        2 => q = (0..rng.below(100)).map(|_| rng.below(256) as u8).collect(),
        _ => {
            for _ in 0..1 + rng.below(4) {
                if q.is_empty() {
                    break;
                }
                let at = rng.below(q.len());
                match rng.below(3) {
                    0 => q[at] = rng.below(256) as u8,
                    1 => q.truncate(at),
                    _ => q[at] = rng.pick(&[0u8, 1, 63, 64, 0xC0, 0xFF]),
                }
            }
        }
    }
    q
}

/// Checks an answer: it parses (simple-dns refuses a question of a type or
/// class it does not know, so it reads the answer with A/IN in their place);
/// returns its id.
fn id_of(answer: &[u8], sent: &[u8]) -> u16 {
    let mut readable = answer.to_vec();
    if answer.get(5) == Some(&1) {
        let mut at = 12;
        while let Some(&len) = answer.get(at) {
            match len {
                0 => break,
                0xC0.. => {
                    at += 1;
                    break;
                }
                _ => at += 1 + usize::from(len),
            }
        }
        if let Some(place) = readable.get_mut(at + 1..at + 5) {
            place.copy_from_slice(&[0, 1, 0, 1]);
        }
    }
    Packet::parse(&readable).unwrap_or_else(|e| {
        panic!("an answer that does not parse ({e:?}): {answer:?} to {sent:?}")
    });
    u16::from_be_bytes([answer[0], answer[1]])
}

#[test]
fn fuzz_dns_over_udp_and_tcp() {
    let seed = seed();
    let cases = cases();
    println!("live DNS fuzz: seed {seed} (REGISTRO_FUZZ_SEED), {cases} cases");
    let mut rng = Rng::seeded(seed);
    let (server, dns) = start_dns(|_| {});
    let mut c = Conn::open(server.local_addr());
    up(&mut c, "web", "a", "10.0.0.1", 80);
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.set_nonblocking(true).expect("nonblocking");
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
    probe
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 70_000];
    for case in 0..cases {
        let sent = message(&mut rng);
        if rng.chance(4) {
            // Over TCP: the message, then a valid query on the same
            // connection; answers, or a close, within the deadline.
            let mut s = TcpStream::connect(dns).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(15)))
                .expect("timeout");
            let probe = query(0xBEEF, "web.registro", 1, false);
            let mut bytes = (sent.len() as u16).to_be_bytes().to_vec();
            bytes.extend_from_slice(&sent);
            bytes.extend_from_slice(&(probe.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&probe);
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut all = Vec::new();
            s.read_to_end(&mut all)
                .unwrap_or_else(|e| panic!("seed {seed} case {case}: TCP hung ({e}) on {sent:?}"));
            let mut at = 0;
            while at + 2 <= all.len() {
                let len = usize::from(u16::from_be_bytes([all[at], all[at + 1]]));
                assert!(at + 2 + len <= all.len(), "a cut answer");
                id_of(&all[at + 2..at + 2 + len], &sent);
                at += 2 + len;
            }
            assert_eq!(at, all.len());
            continue;
        }
        // Over UDP: the message, then a valid query from another socket.
        // The server answers in order and loopback delivers at once, so
        // once the valid query is answered, any answer to the message has
        // arrived.
        udp.send_to(&sent, dns).expect("send");
        probe
            .send_to(&query(7, "web.registro", 1, false), dns)
            .expect("send");
        let n = probe.recv(&mut buf).unwrap_or_else(|e| {
            panic!("seed {seed} case {case}: no answer to a valid query after {sent:?}: {e}")
        });
        assert_eq!(Packet::parse(&buf[..n]).expect("parses").answers.len(), 1);
        while let Ok(n) = udp.recv(&mut buf) {
            let id = id_of(&buf[..n], &sent);
            assert_eq!(
                id.to_be_bytes(),
                [sent[0], sent[1]],
                "seed {seed} case {case}"
            );
        }
    }
    // Still serving HTTP.
    assert_eq!(c.get("/apps/web").status, 200);
}
