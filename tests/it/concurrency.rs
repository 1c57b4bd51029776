//! No lost updates, on every store (a scenario, `scenarios.rs`): 8 threads
//! register 250 instances each, heartbeating as they go, over keep-alive
//! connections (half through an HTTP client library, half over raw
//! sockets; each thread with a server of its own where there are several),
//! all into the same two applications, while every thread also renews one
//! shared instance. Afterwards every instance is present exactly once, at
//! its own address, with the status its own requests gave it.

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::thread;

use serde_json::Value;

use crate::api::{app_body, assert_app, check, instance_body, register};
use crate::scenarios::{table, Registry};
use crate::support::{agent, base, Conn};

table![Still: parallel_registrations_and_heartbeats_lose_nothing];

const THREADS: usize = 8;
const PER_THREAD: usize = 250;
const APPS: [&str; 2] = ["alpha", "beta"];

/// A keep-alive client: a ureq agent (which pools its connection) or a raw
/// socket. Returns statuses only.
enum Client {
    Lib(ureq::Agent, String),
    Raw(Conn),
}

impl Client {
    fn send(&mut self, method: &str, path: &str, body: &str) -> u16 {
        match self {
            Client::Raw(conn) => conn.send(method, path, body).status,
            Client::Lib(agent, root) => {
                let url = format!("{root}{path}");
                let response = match method {
                    "GET" => agent.get(&url).call(),
                    "PUT" => agent.put(&url).send_empty(),
                    "POST" => agent.post(&url).content_type("application/json").send(body),
                    other => panic!("no {other} here"),
                };
                let mut response = response.expect("the request completes");
                // Read to the end, so the connection goes back to the pool.
                let _ = response.body_mut().read_to_string();
                response.status().as_u16()
            }
        }
    }
}

fn ip(t: usize, i: usize) -> String {
    format!("10.{t}.{}.{}", i / 256, i % 256)
}

fn port(i: usize) -> u16 {
    u16::try_from(1000 + i).unwrap_or(u16::MAX)
}

fn parallel_registrations_and_heartbeats_lose_nothing(s: &Registry) {
    let mut c = s.client();
    for app in APPS {
        check(&mut c, "POST", "/apps", &app_body(app), 201);
    }
    check(&mut c, "POST", "/apps", &app_body("shared"), 201);
    register(&mut c, "shared", "hot", "10.99.0.1", 80);

    let barrier = Barrier::new(THREADS);
    let created: Vec<u16> = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let barrier = &barrier;
                let addr = s.addr(t / 2);
                scope.spawn(move || {
                    let mut client = if t % 2 == 0 {
                        Client::Lib(agent(), base(addr))
                    } else {
                        Client::Raw(Conn::open(addr))
                    };
                    barrier.wait();
                    // Everyone tries to create the same app at once.
                    let created = client.send("POST", "/apps", &app_body("raced"));
                    let app = APPS[t % 2];
                    for i in 0..PER_THREAD {
                        let id = format!("t{t}-{i}");
                        let body = instance_body(&id, &ip(t, i), port(i));
                        let s = client.send("POST", &format!("/apps/{app}"), &body);
                        assert_eq!(s, 201, "POST {app} {body}");
                        if i % 2 == 0 {
                            let s = client.send("PUT", &format!("/apps/{app}/{id}"), "");
                            assert_eq!(s, 204, "PUT {app}/{id}");
                        }
                        if i % 5 == 0 {
                            let s = client.send("PUT", "/apps/shared/hot", "");
                            assert_eq!(s, 204, "PUT shared/hot");
                        }
                        if i % 10 == 0 {
                            let s = client.send("GET", &format!("/apps/{app}/{id}"), "");
                            assert_eq!(s, 200, "GET {app}/{id}");
                        }
                    }
                    created
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });

    let mut outcomes = created;
    outcomes.sort_unstable();
    let mut expected = vec![409; THREADS - 1];
    expected.insert(0, 201);
    assert_eq!(outcomes, expected, "concurrent creation of one app");

    let listing = check(&mut c, "GET", "/apps", "", 200).json();
    let apps = listing["applications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut seen: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for app in &apps {
        let name = app["name"].as_str().unwrap_or_default().to_string();
        let instances = assert_app(app, &name);
        seen.insert(name, instances);
    }
    let names: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(names, ["alpha", "beta", "raced", "shared"]);
    assert!(seen["raced"].is_empty());
    let hot = &seen["shared"];
    assert_eq!(hot.len(), 1);
    assert_eq!(hot[0]["status"], "up");

    for (a, app) in APPS.iter().enumerate() {
        let list = &seen[*app];
        let mut got: Vec<(String, String, u64, String)> = list
            .iter()
            .map(|i| {
                (
                    i["id"].as_str().unwrap_or_default().to_string(),
                    i["ip"].as_str().unwrap_or_default().to_string(),
                    i["port"].as_u64().unwrap_or_default(),
                    i["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String, u64, String)> = (0..THREADS)
            .filter(|t| t % 2 == a)
            .flat_map(|t| {
                (0..PER_THREAD).map(move |i| {
                    let status = if i % 2 == 0 { "up" } else { "starting" };
                    (
                        format!("t{t}-{i}"),
                        ip(t, i),
                        u64::from(port(i)),
                        status.to_string(),
                    )
                })
            })
            .collect();
        want.sort();
        assert_eq!(got.len(), want.len(), "{app}: instance count");
        assert_eq!(got, want, "{app}: instances");
    }
}
