//! API.md Part 5 "DNS", with real programs: `dig` (bind9-dnsutils) asks the
//! server every record type and response code, over UDP and TCP, with and
//! without EDNS; `dnsmasq` forwards the zone to it, as a resolver set up as
//! in docs/dns.md, and `dig` asks dnsmasq; the same answers on etcd. Without
//! the programs these tests print one SKIP line (and fail when `CI=true`).

mod fuzz;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use registro::{DnsConfig, Server};

use crate::etcd::cluster::{self, Cluster};
use crate::support::{eventually, installed, raw, start_with, Conn, Proc};

/// An in-process server with DNS on a free loopback port, `tweak` applied.
pub fn start_dns(tweak: impl FnOnce(&mut registro::Config)) -> (Server, SocketAddr) {
    let server = start_with(|c| {
        c.dns = Some(DnsConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..DnsConfig::default()
        });
        tweak(c);
    });
    let dns = server.dns_addr().expect("DNS is on");
    (server, dns)
}

/// Registers `id` of `app` (created if absent) at `ip:port` and sends it a
/// heartbeat, so that it is `up`.
pub fn up(c: &mut Conn, app: &str, id: &str, ip: &str, port: u16) {
    let created = c.post("/apps", &format!(r#"{{"name":"{app}"}}"#)).status;
    assert!(created == 201 || created == 409, "{created}");
    let body = format!(r#"{{"id":"{id}","ip":"{ip}","port":{port}}}"#);
    assert_eq!(c.post(&format!("/apps/{app}"), &body).status, 201);
    assert_eq!(c.put(&format!("/apps/{app}/{id}")).status, 204);
}

/// What dig printed, read back.
#[derive(Debug, Default)]
pub struct Dig {
    pub status: String,
    pub flags: BTreeSet<String>,
    /// Records as `NAME TTL CLASS TYPE DATA`, single-spaced, in order.
    pub answer: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
    /// `UDP` or `TCP`: how the answer dig printed came.
    pub transport: String,
    pub raw: String,
}

impl Dig {
    /// The data of the answer's records (their last field), sorted.
    pub fn data(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .answer
            .iter()
            .map(|r| r.rsplit(' ').next().unwrap_or("").to_string())
            .collect();
        out.sort();
        out
    }
}

/// `dig @ADDR -p PORT ARGS...`, one try, 10 s at most.
pub fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=1", "+time=10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dig");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut dig = Dig {
        raw: raw.clone(),
        ..Dig::default()
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dig.status = rest.split(',').next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or("");
            dig.flags = flags.split_whitespace().map(str::to_string).collect();
        } else if let Some(rest) = line.strip_prefix(";; SERVER: ") {
            dig.transport = rest
                .rsplit('(')
                .next()
                .unwrap_or("")
                .trim_end_matches(')')
                .to_string();
        } else if line.starts_with(";; ") && line.ends_with("SECTION:") {
            section = line;
        } else if line.is_empty() {
            section = "";
        } else if !line.starts_with(';') {
            let record = line.split_whitespace().collect::<Vec<_>>().join(" ");
            match section {
                ";; ANSWER SECTION:" => dig.answer.push(record),
                ";; AUTHORITY SECTION:" => dig.authority.push(record),
                ";; ADDITIONAL SECTION:" => dig.additional.push(record),
                _ => {}
            }
        }
    }
    assert!(!dig.status.is_empty(), "dig got no answer: {raw}");
    dig
}

/// dig, bind9-dnsutils' program, is installed (or the test is skipped).
fn have_dig(test: &str) -> bool {
    installed(&format!("dns::{test}"), &["dig"], "bind9-dnsutils")
}

fn sorted(items: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

const SOA: &str = "registro. 0 IN SOA ns.registro. hostmaster.registro.";

#[test]
fn dig_gets_every_record_type_and_response_code() {
    if !have_dig("dig_gets_every_record_type_and_response_code") {
        return;
    }
    let (server, dns) = start_dns(|_| {});
    let mut c = Conn::open(server.local_addr());
    up(&mut c, "web", "a", "10.0.0.1", 8001);
    up(&mut c, "web", "b", "10.0.0.2", 8002);
    up(&mut c, "web", "c", "fd00::1", 9000);
    // A registered instance that has not sent a heartbeat, and one out of
    // service: neither is `up`.
    assert_eq!(
        c.post("/apps/web", r#"{"id":"s","ip":"10.0.0.9","port":1}"#)
            .status,
        201
    );
    up(&mut c, "web", "o", "10.0.0.8", 1);
    assert_eq!(c.delete("/apps/web/o").status, 204);
    assert_eq!(c.post("/apps", r#"{"name":"idle"}"#).status, 201);

    let a = dig(dns, &["web.registro", "A"]);
    assert_eq!(
        (a.status.as_str(), a.data()),
        ("NOERROR", sorted(&["10.0.0.1", "10.0.0.2"]))
    );
    assert!(
        a.flags.contains("aa") && !a.flags.contains("tc"),
        "{:?}",
        a.flags
    );
    assert!(
        a.answer
            .iter()
            .all(|r| r.starts_with("web.registro. 0 IN A ")),
        "{:?}",
        a.answer
    );
    let aaaa = dig(dns, &["web.registro", "AAAA"]);
    assert_eq!(aaaa.data(), ["fd00::1"]);

    for name in ["web.registro", "_web._tcp.registro"] {
        let srv = dig(dns, &[name, "SRV"]);
        assert_eq!(srv.status, "NOERROR");
        let mut records: Vec<String> = srv
            .answer
            .iter()
            .map(|r| r.replace(&format!("{name}. 0 IN SRV "), ""))
            .collect();
        records.sort();
        assert_eq!(
            records,
            [
                "1 1 8001 0a000001.addr.registro.",
                "1 1 8002 0a000002.addr.registro.",
                "1 1 9000 fd000000000000000000000000000001.addr.registro.",
            ]
        );
        let mut additional = srv.additional.clone();
        additional.sort();
        assert_eq!(
            additional,
            [
                "0a000001.addr.registro. 0 IN A 10.0.0.1",
                "0a000002.addr.registro. 0 IN A 10.0.0.2",
                "fd000000000000000000000000000001.addr.registro. 0 IN AAAA fd00::1",
            ]
        );
    }
    // The SRV targets resolve themselves.
    assert_eq!(
        dig(dns, &["0a000002.addr.registro", "A"]).data(),
        ["10.0.0.2"]
    );
    assert_eq!(
        dig(
            dns,
            &["fd000000000000000000000000000001.addr.registro", "AAAA"]
        )
        .data(),
        ["fd00::1"]
    );

    let nx = dig(dns, &["nope.registro", "A"]);
    assert_eq!((nx.status.as_str(), nx.answer.len()), ("NXDOMAIN", 0));
    assert!(
        nx.authority.len() == 1 && nx.authority[0].starts_with(SOA),
        "{:?}",
        nx.authority
    );
    assert!(
        nx.authority[0].ends_with(" 3600 600 86400 0"),
        "the negative TTL is 0: {:?}",
        nx.authority
    );
    for qtype in ["A", "SRV"] {
        let empty = dig(dns, &["idle.registro", qtype]);
        assert_eq!((empty.status.as_str(), empty.answer.len()), ("NOERROR", 0));
        assert!(empty.authority[0].starts_with(SOA), "{:?}", empty.authority);
    }
    let soa = dig(dns, &["registro", "SOA"]);
    assert!(soa.answer[0].starts_with(SOA), "{:?}", soa.answer);

    let refused = dig(dns, &["example.com", "A"]);
    assert_eq!(
        (refused.status.as_str(), refused.flags.contains("aa")),
        ("REFUSED", false)
    );
    assert_eq!(dig(dns, &["version.bind", "TXT", "CH"]).status, "REFUSED");
    // A query without a question, another opcode, another EDNS version.
    assert_eq!(
        dig(dns, &["+header-only", "web.registro"]).status,
        "FORMERR"
    );
    assert_eq!(
        dig(dns, &["+opcode=status", "web.registro"]).status,
        "NOTIMP"
    );
    assert_eq!(
        dig(dns, &["+edns=1", "+noednsnegotiation", "web.registro"]).status,
        "BADVERS"
    );

    // What cannot be read as a message gets no answer, and the server goes on.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    udp.send_to(b"\x12\x34\x01", dns).expect("send");
    assert!(
        udp.recv(&mut [0; 512]).is_err(),
        "a 3-byte message was answered"
    );
    assert_eq!(dig(dns, &["web.registro", "A"]).data().len(), 2);

    // Counted by type and response code.
    let metrics = raw(
        server.local_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .body;
    for line in [
        "registro_dns_queries_total{type=\"A\",rcode=\"NOERROR\"} ",
        "registro_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"} 1",
        "registro_dns_queries_total{type=\"A\",rcode=\"REFUSED\"} 1",
        "registro_dns_queries_total{type=\"other\",rcode=\"FORMERR\"} 1",
        "registro_dns_queries_total{type=\"other\",rcode=\"NOTIMP\"} 1",
        "registro_dns_queries_total{type=\"A\",rcode=\"BADVERS\"} 1",
        "registro_dns_queries_total{type=\"other\",rcode=\"dropped\"} 1",
        "registro_dns_queries_total{type=\"SRV\",rcode=\"NOERROR\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

#[test]
fn names_are_case_insensitive_with_or_without_the_final_dot() {
    if !have_dig("names_are_case_insensitive_with_or_without_the_final_dot") {
        return;
    }
    let (server, dns) = start_dns(|_| {});
    let mut c = Conn::open(server.local_addr());
    up(&mut c, "web", "a", "10.0.0.1", 80);
    for name in [
        "web.registro",
        "web.registro.",
        "WEB.Registro.",
        "wEb.REGISTRO",
    ] {
        let a = dig(dns, &[name, "A"]);
        assert_eq!(
            (a.status.as_str(), a.data()),
            ("NOERROR", vec!["10.0.0.1".to_string()]),
            "{name}"
        );
        // The question comes back as it was asked.
        let asked = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        assert!(
            a.answer[0].starts_with(&format!("{asked} ")),
            "{name}: {:?}",
            a.answer
        );
    }
    assert_eq!(dig(dns, &["_WEB._TCP.registro.", "SRV"]).answer.len(), 1);
}

#[test]
fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    if !have_dig("a_large_answer_is_truncated_over_udp_and_whole_over_tcp") {
        return;
    }
    let (server, dns) = start_dns(|_| {});
    let mut c = Conn::open(server.local_addr());
    for i in 0..200u16 {
        up(
            &mut c,
            "big",
            &format!("i{i}"),
            &format!("10.1.{}.{}", i / 100, i % 100 + 1),
            8000 + i,
        );
    }
    // Without EDNS: 512 bytes, TC set, what fits carried (dig +ignore shows
    // the truncated answer rather than retrying).
    let cut = dig(dns, &["+ignore", "+noedns", "big.registro", "A"]);
    assert!(cut.flags.contains("tc"), "{:?}", cut.flags);
    let n = cut.answer.len();
    assert!(n > 10 && n < 200, "{n} records in 512 bytes");
    assert_eq!(
        cut.data().iter().collect::<BTreeSet<_>>().len(),
        n,
        "no address twice"
    );
    let srv = dig(dns, &["+ignore", "+noedns", "big.registro", "SRV"]);
    assert!(
        srv.flags.contains("tc") && !srv.answer.is_empty(),
        "{:?}",
        srv.raw
    );
    // dig retries a truncated answer over TCP, as resolvers do: all 200.
    let retried = dig(dns, &["+noedns", "big.registro", "A"]);
    assert_eq!(
        (retried.transport.as_str(), retried.answer.len()),
        ("TCP", 200),
        "{}",
        retried.raw
    );
    assert!(!retried.flags.contains("tc"));
    let tcp = dig(dns, &["+tcp", "big.registro", "SRV"]);
    assert_eq!((tcp.answer.len(), tcp.additional.len()), (200, 200));
    // EDNS0 offers room: 4096 bytes take all 200 addresses over UDP; 1232
    // (dig's default) does not.
    let wide = dig(dns, &["+bufsize=4096", "big.registro", "A"]);
    assert_eq!(
        (wide.transport.as_str(), wide.answer.len()),
        ("UDP", 200),
        "{}",
        wide.raw
    );
    assert!(!wide.flags.contains("tc"));
    let mid = dig(dns, &["+ignore", "+bufsize=1232", "big.registro", "A"]);
    assert!(
        mid.flags.contains("tc") && mid.answer.len() > n,
        "{} > {n}",
        mid.answer.len()
    );
    // Shuffled before the cut: two answers seldom carry the same ones.
    let cuts: BTreeSet<Vec<String>> = (0..5)
        .map(|_| dig(dns, &["+ignore", "+noedns", "big.registro", "A"]).data())
        .collect();
    assert!(
        cuts.len() > 1,
        "five truncated answers carried the same addresses"
    );
}

#[test]
fn tcp_connections_are_bounded() {
    let (_server, dns) = start_dns(|_| {});
    // 128 connections are held; past that, each is closed as it is accepted.
    let held: Vec<TcpStream> = (0..128)
        .map(|_| TcpStream::connect(dns).expect("connect"))
        .collect();
    let mut extra = eventually(
        Duration::from_secs(10),
        "the 129th connection closed",
        || {
            let mut s = TcpStream::connect(dns).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            matches!(std::io::Read::read(&mut s, &mut [0; 1]), Ok(0)).then_some(s)
        },
    );
    let _ = std::io::Read::read(&mut extra, &mut [0; 1]);
    // One closed, and a query on a new connection is answered.
    drop(held);
    let answered = eventually(Duration::from_secs(10), "a query over TCP answered", || {
        let mut s = TcpStream::connect(dns).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let q = b"\x00\x1e\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x08registro\x00\x00\x01\x00\x01";
        std::io::Write::write_all(&mut s, q).ok()?;
        let mut head = [0u8; 4];
        std::io::Read::read_exact(&mut s, &mut head).ok()?;
        Some(head)
    });
    assert_eq!(&answered[2..4], &[0, 7], "the answer to query 7");
}

#[test]
fn dns_flags_that_cannot_work_are_refused_with_one_line() {
    let lo = ["--addr", "127.0.0.1:0"];
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    for (args, needles) in [
        (vec!["--dns-addr", "8600"], vec!["--dns-addr", ":8600"]),
        (vec!["--dns-addr", "nowhere"], vec!["--dns-addr"]),
        (
            vec!["--dns-addr", "127.0.0.1:0", "--dns-domain", "a..b"],
            vec!["--dns-domain"],
        ),
        (
            vec!["--dns-addr", "127.0.0.1:0", "--dns-domain", "."],
            vec!["--dns-domain"],
        ),
        (
            vec!["--dns-addr", "127.0.0.1:0", "--dns-ttl", "1.5"],
            vec!["--dns-ttl", "whole seconds"],
        ),
        (
            vec!["--dns-addr", "127.0.0.1:0", "--dns-ttl", "-1"],
            vec!["--dns-ttl"],
        ),
        (vec!["--dns-ttl", "5"], vec!["--dns-addr"]),
        (vec!["--dns-domain", "svc."], vec!["--dns-addr"]),
        (vec!["--dns-addr", &taken], vec!["DNS", &taken]),
    ] {
        let line = crate::cli::assert_refused(&[&lo[..], &args].concat());
        for needle in needles {
            assert!(
                line.contains(needle),
                "{args:?}: {line:?} does not say {needle:?}"
            );
        }
    }
    // Accepted: a TTL with a unit, a zone of two labels.
    let mut p = Proc::start(&[
        "--dns-addr",
        "127.0.0.1:0",
        "--dns-ttl",
        "1m",
        "--dns-domain",
        "Svc.Example",
    ]);
    let line = p.wait_line("DNS on ", Duration::from_secs(10));
    assert!(line.contains("zone svc.example., TTL 60s"), "{line}");
    // Its DNS threads stop with it (a TCP connection open meanwhile):
    // SIGTERM ends it with status 0.
    let addr: SocketAddr = line
        .split("DNS on ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|a| a.parse().ok())
        .expect("the DNS address");
    let _tcp = TcpStream::connect(addr).expect("a TCP connection held open");
    p.signal("TERM");
    let (code, _) = p.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

/// A UDP and TCP port on loopback free a moment ago.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// dnsmasq on a free loopback port, forwarding `registro.` to `dns` and
/// nothing else (no system configuration, no hosts file, no upstream).
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    pub fn start(dns: SocketAddr, extra: &[String]) -> Dnsmasq {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--pid-file",
                    "--user=root",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--server=/registro/{}#{}", dns.ip(), dns.port()))
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            // Ready once it answers (its own REFUSED for a name it has no server for).
            let ready = eventually(Duration::from_secs(10), "dnsmasq to answer or exit", || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                let s = UdpSocket::bind("127.0.0.1:0").ok()?;
                s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
                let q = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x08registro\x00\x00\x06\x00\x01";
                s.send_to(q, addr).ok()?;
                s.recv(&mut [0; 512]).ok().map(|_| true)
            });
            if ready {
                return Dnsmasq { child, addr };
            }
            // The port was taken in the meantime: another one.
        }
        panic!("dnsmasq did not start");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn through_dnsmasq_an_instance_that_goes_down_leaves_the_answers() {
    if !have_dig("through_dnsmasq_an_instance_that_goes_down_leaves_the_answers")
        || !installed("dns::through_dnsmasq", &["dnsmasq"], "dnsmasq-base")
    {
        return;
    }
    let (server, dns) = start_dns(|c| {
        c.down_after = Duration::from_secs(2);
        c.evict_after = Duration::from_secs(60);
    });
    let dnsmasq = Dnsmasq::start(dns, &[]);
    let mut c = Conn::open(server.local_addr());
    up(&mut c, "web", "a", "10.0.0.1", 8001);
    up(&mut c, "web", "b", "10.0.0.2", 8002);
    let both = dig(dnsmasq.addr, &["web.registro", "A"]);
    assert_eq!(
        (both.status.as_str(), both.data()),
        ("NOERROR", sorted(&["10.0.0.1", "10.0.0.2"]))
    );
    assert!(
        both.answer.iter().all(|r| r.contains(" 0 IN A ")),
        "TTL 0: {:?}",
        both.answer
    );
    let srv = dig(dnsmasq.addr, &["_web._tcp.registro", "SRV"]);
    assert_eq!(srv.answer.len(), 2, "{}", srv.raw);
    assert_eq!(
        dig(dnsmasq.addr, &["nope.registro", "A"]).status,
        "NXDOMAIN"
    );
    // `b` stops its heartbeats; `a` keeps them. Within `down_after` and a
    // poll, through dnsmasq (TTL 0: nothing cached), only `a` is left.
    eventually(Duration::from_secs(20), "b to leave the answers", || {
        assert_eq!(c.put("/apps/web/a").status, 204);
        let now = dig(dnsmasq.addr, &["web.registro", "A"]);
        (now.data() == ["10.0.0.1"]).then_some(())
    });
    let status = c.get("/apps/web/b").json()["status"].clone();
    assert_eq!(status, "down");
    // And the truncated answer's retry over TCP, through the resolver.
    for i in 0..60u16 {
        up(
            &mut c,
            "big",
            &format!("i{i}"),
            &format!("10.2.0.{}", i + 1),
            80,
        );
    }
    let big = dig(dnsmasq.addr, &["+noedns", "big.registro", "A"]);
    assert_eq!(big.answer.len(), 60, "{}", big.raw);
}

#[test]
fn on_etcd_the_answers_come_from_the_servers_view() {
    if !have_dig("on_etcd_the_answers_come_from_the_servers_view")
        || !cluster::installed("dns::on_etcd")
    {
        return;
    }
    let cluster = Cluster::start("dns-on-etcd");
    let first = cluster.registro("/dns/", &["--dns-addr", "127.0.0.1:0"]);
    let second = cluster.registro("/dns/", &["--dns-addr", "127.0.0.1:0"]);
    let dns_of = |p: &Proc| -> SocketAddr {
        let line = p.wait_line("DNS on ", Duration::from_secs(10));
        let addr = line
            .split("DNS on ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .expect("an address");
        addr.parse().expect("a socket address")
    };
    let (dns1, dns2) = (dns_of(&first), dns_of(&second));
    let mut c = Conn::open(first.addr);
    up(&mut c, "web", "a", "10.0.0.1", 8001);
    // Asked of either server, from its own view of etcd.
    for dns in [dns1, dns2] {
        eventually(
            Duration::from_secs(10),
            "the instance in the answer",
            || (dig(dns, &["web.registro", "A"]).data() == ["10.0.0.1"]).then_some(()),
        );
        assert_eq!(dig(dns, &["_web._tcp.registro", "SRV"]).answer.len(), 1);
        assert_eq!(dig(dns, &["nope.registro", "A"]).status, "NXDOMAIN");
    }
    assert_eq!(c.delete("/apps/web/a").status, 204);
    eventually(
        Duration::from_secs(10),
        "the out-of-service instance gone",
        || {
            let a = dig(dns2, &["web.registro", "A"]);
            (a.status == "NOERROR" && a.answer.is_empty()).then_some(())
        },
    );
}
