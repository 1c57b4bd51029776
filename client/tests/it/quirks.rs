//! The original Go server's oddities, replayed from canned answers: JSON sent
//! as `text/plain`, `instances` left out when empty, empty 201 bodies, error
//! answers without a JSON body. A one-connection-per-answer responder stands
//! in for it and records what the client asked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread::{self, JoinHandle};

use registro_client::{Application, Client, Error, Instance, Status};

/// Serves `answers` in order, one per connection, and returns the request
/// lines (`"GET /registro/1.0/apps"`) and bodies it received.
struct Canned {
    addr: SocketAddr,
    thread: JoinHandle<Vec<(String, String)>>,
}

impl Canned {
    fn serve(answers: Vec<(&'static str, &'static str)>) -> Canned {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("cannot bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("no address: {e}"),
        };
        let thread = thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let Ok((stream, _)) = listener.accept() else {
                    break;
                };
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                let mut length = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if request_line.is_empty() {
                        request_line = line.trim_end().to_owned();
                    } else if line == "\r\n" {
                        break;
                    } else if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    line.clear();
                }
                let mut request_body = vec![0; length];
                let _ = reader.read_exact(&mut request_body);
                let method_and_path = request_line.rsplit_once(' ').map_or("", |(head, _)| head);
                seen.push((
                    method_and_path.to_owned(),
                    String::from_utf8_lossy(&request_body).into_owned(),
                ));
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
            seen
        });
        Canned { addr, thread }
    }

    fn client(&self) -> Client {
        Client::new(format!("http://{}/registro", self.addr))
    }

    fn requests(self) -> Vec<(String, String)> {
        match self.thread.join() {
            Ok(seen) => seen,
            Err(_) => panic!("the canned responder panicked"),
        }
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

#[test]
fn json_as_text_plain_without_empty_instances() -> Result<(), Error> {
    let go = Canned::serve(vec![
        ("200 OK", r#"{"name":"web"}"#),
        (
            "200 OK",
            r#"{"applications":[{"name":"web"},{"name":"db","instances":[{"id":"db-1","ip":"10.0.0.1","port":5432,"status":"down","lastRenewal":1795890765}]}]}"#,
        ),
        (
            "200 OK",
            r#"{"id":"db-1","ip":"10.0.0.1","port":5432,"status":"up","lastRenewal":1795890765}"#,
        ),
    ]);
    let c = go.client();
    assert_eq!(c.app("web")?, Application::new("web"));
    let apps = c.apps()?;
    assert_eq!(apps[0], Application::new("web"));
    assert_eq!(
        apps[1].instance("db-1").map(|i| i.status),
        Some(Status::Down)
    );
    let inst = c.instance("db", "db-1")?;
    assert_eq!(
        (inst.status, inst.last_renewal),
        (Status::Up, 1_795_890_765)
    );
    let paths: Vec<String> = go.requests().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        [
            "GET /registro/1.0/apps/web",
            "GET /registro/1.0/apps",
            "GET /registro/1.0/apps/db/db-1"
        ]
    );
    Ok(())
}

#[test]
fn register_service_with_empty_answers_and_bodyless_errors() -> Result<(), Error> {
    let go = Canned::serve(vec![
        ("404 Not Found", "404 page not found\n"),
        ("201 Created", ""),
        ("201 Created", ""),
        ("204 No Content", ""),
        ("204 No Content", ""),
    ]);
    let c = go.client();
    let (app, inst) = c.register_service("web-1", "web", "10.0.0.7", 8080)?;
    assert_eq!(inst.status, Status::Starting);
    c.renew_instance(&app, &inst)?;
    c.delete_instance(&app, &inst)?;
    let requests = go.requests();
    let lines: Vec<&str> = requests.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        lines,
        [
            "GET /registro/1.0/apps/web",
            "POST /registro/1.0/apps",
            "POST /registro/1.0/apps/web",
            "PUT /registro/1.0/apps/web/web-1",
            "DELETE /registro/1.0/apps/web/web-1",
        ]
    );
    assert_eq!(json(&requests[1].1), serde_json::json!({"name": "web"}));
    assert_eq!(
        json(&requests[2].1),
        serde_json::json!({"id": "web-1", "ip": "10.0.0.7", "port": 8080})
    );
    Ok(())
}

#[test]
fn errors_with_and_without_a_message() {
    let go = Canned::serve(vec![
        ("404 Not Found", "404 page not found\n"),
        ("409 Conflict", ""),
        ("404 Not Found", r#"{"error":"no such application: web"}"#),
        ("200 OK", "not json"),
        ("200 OK", ""),
    ]);
    let c = go.client();
    let web = Application::new("web");
    let inst = Instance::new("web-1", "10.0.0.7", 8080);
    let outcomes = [
        c.renew_instance(&web, &inst).map(drop),
        c.new_app("web").map(drop),
        c.app("web").map(drop),
        c.apps().map(drop),
        c.app("web").map(drop),
    ];
    let shown: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        })
        .collect();
    // Each names the server that answered.
    let root = format!("http://{}/registro", go.addr);
    assert_eq!(shown[0], format!("http status 404 from {root}"));
    assert_eq!(shown[1], format!("http status 409 from {root}"));
    assert_eq!(
        shown[2],
        format!("http status 404 from {root}: no such application: web")
    );
    for bad in &shown[3..5] {
        assert!(
            bad.starts_with(&format!("invalid response from {root}: ")),
            "{bad}"
        );
    }
    assert!(matches!(outcomes[3], Err(Error::InvalidResponse(_))));
    assert_eq!(go.requests().len(), 5);
}
