//! Scenario "dns": DNS (`--dns-addr`) against dnsmasq, and what a DNS flood
//! costs the heartbeats. One registro server holds 100 apps of 10 `up`
//! instances (`dns-NN`, each instance at its own address, ports 8000-8009)
//! beside the heartbeat fleet; dnsmasq answers the same names from a hosts
//! file (`--addn-hosts`: the apps' names and the SRV targets' names) and
//! `srv-host` lines (the same SRV records, TTL 0 as Registro's), and refuses
//! nothing it should answer (`--local=/registro/`). Both are checked to give
//! the same answers first.
//!
//! dnsperf (one client, 100 queries in flight, UDP, the 100 names in turn)
//! runs against each for `--secs` x 2.5 (at least 1 s), A and SRV, three
//! rounds (one of 0.5 s with `--quick`) interleaved and the order alternating: queries a second (median of the
//! rounds). The p99 is from a second dnsperf run at a fixed 5,000 queries a
//! second (`-v`: each query's latency), so it is the latency of a server
//! with room, not of a queue. Then heartbeats (the usual 32 connections,
//! 1,000 instances) with dnsperf flooding the server's DNS at full speed,
//! beside heartbeats without, back to back, the order alternating: their
//! ratio is what a flood costs HTTP. The flooder runs at nice 19: on this
//! 2-core machine its own CPU would otherwise be taken from the heartbeat
//! load (0.3x to 0.4x of the rate), which no server design can prevent; it
//! stands for askers on other machines.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::Conn;
use crate::load::{self, Fleet, Outcome};
use crate::report::{self, Section, Verdict};
use crate::{measure, Bench};

const APPS: usize = 100;
const PER_APP: usize = 10;
/// The heartbeat fleet beside the DNS apps.
const FLEET: usize = 1_000;
/// dnsperf's fixed rate for the latency runs.
const LATENCY_QPS: u32 = 5_000;

/// Targets: at least 1.0x dnsmasq's rate; heartbeats while flooded at
/// least 0.9x of without.
const RATE_TARGET: f64 = 1.0;
const FLOOD_TARGET: f64 = 0.9;

/// What one dnsperf run measured.
#[derive(Clone, Copy, Debug, Default)]
struct Perf {
    qps: f64,
    lost: u64,
}

/// Runs the scenario and answers its section of the report.
pub fn run(bench: &mut Bench) -> Result<String, String> {
    for program in ["dnsperf", "dnsmasq"] {
        if !installed(program) {
            let mut section = Section::new("DNS against dnsmasq (`dns`)");
            section.text(format_args!(
                "Not run: `{program}` is not installed (apt-get install dnsperf dnsmasq-base)."
            ));
            return Ok(section.finish());
        }
    }
    let dir = std::env::temp_dir().join(format!("registro-bench-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = measure_all(bench, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure_all(bench: &mut Bench, dir: &Path) -> Result<String, String> {
    let dns_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let flag = dns_addr.to_string();
    // Instances stay up for the whole run without heartbeats of their own.
    let flags = [
        "--dns-addr",
        &flag,
        "--down-after",
        "1h",
        "--evict-after",
        "2h",
    ];
    let server = bench.start(0, "registro-dns", &flags)?;
    register_apps(server.addr)?;
    load::register(server.addr, Fleet::new(FLEET))?;
    load::renew_all(server.addr, Fleet::new(FLEET))?;
    bench.progress(format_args!(
        "dns: {APPS} apps of {PER_APP} up instances registered, and a fleet of {FLEET}"
    ));

    write_files(dir)?;
    let dnsmasq = Dnsmasq::start(dir)?;
    for (name, qtype) in [("dns-07.registro", 1u16), ("_dns-07._tcp.registro", 33)] {
        let ours = ask(dns_addr, name, qtype)?;
        let theirs = ask(dnsmasq.addr, name, qtype)?;
        if ours != theirs || ours.0 != PER_APP as u16 {
            return Err(format!(
                "dns: {name} type {qtype}: registro answers {ours:?} records (answer, additional), dnsmasq {theirs:?}"
            ));
        }
    }

    let s = bench.s.clone();
    // Quick: one short round of each, to check the scenario still works.
    let secs = if s.quick {
        0.5
    } else {
        (s.secs.as_secs_f64() * 2.5).max(1.0)
    };
    let rounds = if s.quick { 1 } else { s.runs.min(3) };
    let queries = [("A", dir.join("a.txt")), ("SRV", dir.join("srv.txt"))];
    // [query type][server: 0 registro, 1 dnsmasq] -> rounds.
    let mut rates: [[Vec<Perf>; 2]; 2] = Default::default();
    let mut p99: [[Vec<f64>; 2]; 2] = Default::default();
    let targets = [("registro", dns_addr), ("dnsmasq", dnsmasq.addr)];
    for round in 0..rounds {
        for (q, (qtype, file)) in queries.iter().enumerate() {
            for k in 0..2 {
                let t = if round % 2 == 0 { k } else { 1 - k };
                let (name, addr) = targets[t];
                let perf = dnsperf(addr, file, secs)?;
                bench.progress(format_args!(
                    "dns round {}: {name} {qtype}: {} queries/s, {} lost",
                    round + 1,
                    report::thousands(perf.qps),
                    perf.lost
                ));
                rates[q][t].push(perf);
                // Quick: a fifth of a second of latencies is enough to see it works.
                let window = if s.quick { 0.2 } else { secs.min(3.0) };
                p99[q][t].push(latencies(addr, file, window)?);
            }
        }
    }

    // Heartbeats with and without a flood of A queries.
    let mut quiet: Vec<Outcome> = Vec::new();
    let mut flooded: Vec<(Outcome, Perf)> = Vec::new();
    for round in 0..if s.quick { 1 } else { s.runs } {
        for k in 0..2 {
            let flood = (k == 0) == (round % 2 == 0);
            let load = bench.heartbeats(server.addr, FLEET, round);
            if flood {
                let flood_secs = s.secs.as_secs_f64() + 0.5;
                let child = spawn_dnsperf(dns_addr, &queries[0].1, flood_secs, None, true)?;
                // Let the flood reach its pace before the heartbeats start.
                std::thread::sleep(Duration::from_millis(300));
                let o = measure(&load, server.pid());
                let perf = finish_dnsperf(child)?;
                bench.progress(format_args!(
                    "dns round {}: heartbeats while flooded: {} ({} DNS queries/s answered)",
                    round + 1,
                    report::summary(&o),
                    report::thousands(perf.qps)
                ));
                flooded.push((o, perf));
            } else {
                let o = measure(&load, server.pid());
                bench.progress(format_args!(
                    "dns round {}: heartbeats alone: {}",
                    round + 1,
                    report::summary(&o)
                ));
                quiet.push(o);
            }
        }
    }
    drop(dnsmasq);
    bench.stop(server);
    Ok(render(s.quick, &rates, &p99, &quiet, &flooded, secs))
}

fn render(
    quick: bool,
    rates: &[[Vec<Perf>; 2]; 2],
    p99: &[[Vec<f64>; 2]; 2],
    quiet: &[Outcome],
    flooded: &[(Outcome, Perf)],
    secs: f64,
) -> String {
    let mut section = Section::new("DNS against dnsmasq (`dns`)");
    section.text(format_args!(
        "{APPS} apps of {PER_APP} `up` instances; dnsperf, one client, 100 queries in flight over UDP, \
         {secs:.1} s a run, {} rounds interleaved (median), against Registro's `--dns-addr` and against \
         dnsmasq answering the same names from a hosts file and `srv-host` lines. p99 at a fixed {} \
         queries/s.",
        rates[0][0].len(),
        report::thousands(f64::from(LATENCY_QPS))
    ));
    section.table(&[
        "query",
        "registro queries/s",
        "dnsmasq queries/s",
        "ratio",
        "registro p99",
        "dnsmasq p99",
        "lost",
    ]);
    let mut ratios = Vec::new();
    for (q, qtype) in ["A", "SRV"].iter().enumerate() {
        let rate = |t: usize| report::median(rates[q][t].iter().map(|p| p.qps).collect());
        let lost: u64 = rates[q].iter().flatten().map(|p| p.lost).sum();
        let p = |t: usize| report::ms_f(report::median(p99[q][t].clone()) * 1e6);
        let ratio = rate(0) / rate(1).max(1e-9);
        ratios.push(ratio);
        section.row(&[
            qtype,
            &report::thousands(rate(0)),
            &report::thousands(rate(1)),
            &report::times(ratio),
            &p(0),
            &p(1),
            &lost,
        ]);
    }
    let alone = report::median_of(quiet, Outcome::rate);
    let during = report::median_of(flooded, |(o, _)| o.rate());
    let answered = report::median_of(flooded, |(_, p)| p.qps);
    let flood_ratio = during / alone.max(1e-9);
    section.text(format_args!(
        "Heartbeats ({FLEET} instances, 32 connections), {} rounds: {}/s alone, {}/s while dnsperf \
         (at nice 19) floods the DNS port, {} queries/s answered meanwhile.",
        quiet.len(),
        report::thousands(alone),
        report::thousands(during),
        report::thousands(answered)
    ));
    let min_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    section.target(
        format_args!("DNS queries/s at least {RATE_TARGET:.1}x dnsmasq's (A and SRV)"),
        format_args!("{} at the lowest", report::times(min_ratio)),
        Verdict::check(min_ratio, |r| r >= RATE_TARGET).at_size(!quick),
    );
    section.target(
        format_args!("Heartbeats while DNS is flooded at least {FLOOD_TARGET:.1}x of without"),
        report::times(flood_ratio),
        Verdict::check(flood_ratio, |r| r >= FLOOD_TARGET).at_size(!quick),
    );
    section.finish()
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A UDP and TCP port on loopback free a moment ago.
fn free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let port = udp.local_addr().map_err(|e| e.to_string())?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port for DNS".to_string())
}

/// The address of instance `i` of app `a`.
fn ip(a: usize, i: usize) -> [u8; 4] {
    [10, 200, a as u8, i as u8 + 1]
}

/// Registers the apps `dns-00` to `dns-99`, 10 instances each, all up.
fn register_apps(addr: SocketAddr) -> Result<(), String> {
    let mut c = Conn::connect(addr).map_err(|e| format!("dns: connect: {e}"))?;
    let mut send = |method: &str, path: &str, body: &str, want: u16| -> Result<(), String> {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.send(request.as_bytes())
            .map_err(|e| format!("dns: {e}"))?;
        let r = c.read_response().map_err(|e| format!("dns: {e}"))?;
        if r.status != want {
            return Err(format!("dns: {method} {path}: {}", r.status));
        }
        Ok(())
    };
    for a in 0..APPS {
        send(
            "POST",
            "/registro/1.0/apps",
            &format!(r#"{{"name":"dns-{a:02}"}}"#),
            201,
        )?;
        for i in 0..PER_APP {
            let [w, x, y, z] = ip(a, i);
            let body = format!(
                r#"{{"id":"d{i}","ip":"{w}.{x}.{y}.{z}","port":{}}}"#,
                8000 + i
            );
            send(
                "POST",
                &format!("/registro/1.0/apps/dns-{a:02}"),
                &body,
                201,
            )?;
            send(
                "PUT",
                &format!("/registro/1.0/apps/dns-{a:02}/d{i}"),
                "",
                204,
            )?;
        }
    }
    Ok(())
}

/// dnsmasq's hosts file and SRV lines for the same apps, and dnsperf's
/// query files.
fn write_files(dir: &Path) -> Result<(), String> {
    let mut hosts = String::new();
    let mut conf = String::new();
    let mut a = String::new();
    let mut srv = String::new();
    for app in 0..APPS {
        for i in 0..PER_APP {
            let [w, x, y, z] = ip(app, i);
            let hex = format!("{w:02x}{x:02x}{y:02x}{z:02x}");
            let _ = writeln!(hosts, "{w}.{x}.{y}.{z} dns-{app:02}.registro");
            let _ = writeln!(hosts, "{w}.{x}.{y}.{z} {hex}.addr.registro");
            let _ = writeln!(
                conf,
                "srv-host=_dns-{app:02}._tcp.registro,{hex}.addr.registro,{},1,1",
                8000 + i
            );
        }
        let _ = writeln!(a, "dns-{app:02}.registro A");
        let _ = writeln!(srv, "_dns-{app:02}._tcp.registro SRV");
    }
    for (name, text) in [
        ("hosts", hosts),
        ("srv.conf", conf),
        ("a.txt", a),
        ("srv.txt", srv),
    ] {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Dnsmasq {
    fn start(dir: &Path) -> Result<Dnsmasq, String> {
        for _ in 0..5 {
            let port = free_port()?;
            let mut child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                ])
                .args([
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--pid-file",
                    "--user=root",
                ])
                .args(["--local=/registro/", "--cache-size=10000"])
                .arg(format!("--conf-file={}", dir.join("srv.conf").display()))
                .arg(format!("--addn-hosts={}", dir.join("hosts").display()))
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("dnsmasq: {e}"))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if ask(addr, "dns-00.registro", 1).is_ok_and(|(n, _)| n == PER_APP as u16) {
                    return Ok(Dnsmasq { child, addr });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err("dnsmasq did not start".to_string())
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks `addr` for `name` of `qtype` over UDP (EDNS 1232): the counts of
/// answer and additional records (the OPT left out).
fn ask(addr: SocketAddr, name: &str, qtype: u16) -> Result<(u16, u16), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
    socket.send_to(&q, addr).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).map_err(|e| format!("{addr}: {e}"))?;
    if n < 12 {
        return Err(format!("{addr}: a short answer"));
    }
    let count = |at: usize| u16::from_be_bytes([buf[at], buf[at + 1]]);
    Ok((count(6), count(10).saturating_sub(1)))
}

/// dnsperf at `qps` (with each query's latency) or at full speed; a
/// `flood` at the lowest priority (see the module's comment).
fn spawn_dnsperf(
    addr: SocketAddr,
    file: &Path,
    secs: f64,
    qps: Option<u32>,
    flood: bool,
) -> Result<Child, String> {
    let mut cmd = if flood {
        let mut nice = Command::new("nice");
        nice.args(["-n", "19", "dnsperf"]);
        nice
    } else {
        Command::new("dnsperf")
    };
    cmd.args(["-s", "127.0.0.1", "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(file)
        .args(["-l", &format!("{secs:.1}"), "-q", "100", "-c", "1"]);
    if let Some(qps) = qps {
        cmd.args(["-Q", &qps.to_string(), "-v"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("dnsperf: {e}"))
}

fn finish_dnsperf(child: Child) -> Result<Perf, String> {
    let out = child
        .wait_with_output()
        .map_err(|e| format!("dnsperf: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
    };
    let qps = field("Queries per second:").and_then(|v| v.parse().ok());
    let lost = field("Queries lost:").and_then(|v| v.parse().ok());
    match (qps, lost) {
        (Some(qps), Some(lost)) => Ok(Perf { qps, lost }),
        _ => Err(format!(
            "dnsperf printed no statistics: {}",
            text.lines().take(20).collect::<Vec<_>>().join(" / ")
        )),
    }
}

/// dnsperf at full speed for `secs`.
fn dnsperf(addr: SocketAddr, file: &Path, secs: f64) -> Result<Perf, String> {
    finish_dnsperf(spawn_dnsperf(addr, file, secs, None, false)?)
}

/// The 99th percentile of the latencies (seconds) of dnsperf at
/// `LATENCY_QPS` for `secs`.
fn latencies(addr: SocketAddr, file: &Path, secs: f64) -> Result<f64, String> {
    let child = spawn_dnsperf(addr, file, secs, Some(LATENCY_QPS), false)?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("dnsperf: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut all: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    if all.is_empty() {
        return Err("dnsperf -v reported no query".to_string());
    }
    all.sort_by(f64::total_cmp);
    Ok(all[(all.len() * 99 / 100).min(all.len() - 1)])
}
