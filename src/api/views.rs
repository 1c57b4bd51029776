//! The JSON of registry views, written straight into the response buffer.
//!
//! Listings are the largest answers the server gives (9.5 MB for 100,000
//! instances), and they are read while heartbeats arrive. So they are
//! written by hand rather than through serde's data model: the keys and
//! punctuation of an instance are constant text, only the id, the ip and
//! metadata need escaping, and the buffer is sized once from the view. And
//! every [`YIELD_EVERY`] instances the encoding thread yields its core, so
//! that under load the short requests waiting for a core (heartbeats) go
//! before the rest of a bulk answer; with nothing waiting a yield returns at
//! once. Encoding never runs under the registry's lock.

use std::thread;

use super::{status_name, wall_of};
use crate::clock::Now;
use crate::registry::{AppSummary, AppView, InstanceView, Status};

/// Instances encoded between two yields of the core: about 40 µs of work.
pub(super) const YIELD_EVERY: usize = 256;

/// Fixed text of one instance with the longest status, port and time:
/// `{"id":"","ip":"","port":65535,"status":"out-of-service","lastRenewal":9999999999},`.
const INSTANCE_TEXT: usize = 84;

/// `{"applications":[...]}` and a newline.
pub fn apps(apps: &[AppView], now: Now) -> Vec<u8> {
    let hint = 20 + apps.iter().map(size_hint).sum::<usize>();
    let mut out = Vec::with_capacity(hint);
    let mut count = 0;
    out.extend_from_slice(b"{\"applications\":[");
    for (k, view) in apps.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        write_app(&mut out, view, now, &mut count);
    }
    out.extend_from_slice(b"]}\n");
    out
}

/// `{"applications":[{"name":..,"index":..,"total":..,"counts":{..}},...]}`
/// and a newline: the summary of `GET /apps?view=summary`.
pub fn summary(apps: &[AppSummary]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + apps.iter().map(|a| 128 + a.name.len()).sum::<usize>());
    out.extend_from_slice(b"{\"applications\":[");
    for (k, app) in apps.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        string(&mut out, &app.name);
        out.extend_from_slice(b",\"index\":");
        number(&mut out, app.index);
        out.extend_from_slice(b",\"total\":");
        number(&mut out, app.counts.iter().sum::<usize>() as u64);
        out.extend_from_slice(b",\"counts\":{");
        for (k, (status, n)) in Status::ALL.iter().zip(app.counts).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(status_name(*status).as_bytes());
            out.extend_from_slice(b"\":");
            number(&mut out, n as u64);
        }
        out.extend_from_slice(b"}}");
    }
    out.extend_from_slice(b"]}\n");
    out
}

/// One app and its instances, and a newline.
pub fn app(view: &AppView, now: Now) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_hint(view));
    write_app(&mut out, view, now, &mut 0);
    out.push(b'\n');
    out
}

/// One instance, and a newline.
pub fn instance(view: &InstanceView, now: Now) -> Vec<u8> {
    let mut out = Vec::with_capacity(INSTANCE_TEXT + view.id.len() + view.ip.len());
    write_instance(&mut out, view, now);
    out.push(b'\n');
    out
}

/// About the encoded size of `view` without metadata, over rather than
/// under: a buffer of this size is grown only for metadata.
fn size_hint(view: &AppView) -> usize {
    let instances: usize = view
        .instances
        .iter()
        .map(|i| INSTANCE_TEXT + i.id.len() + i.ip.len())
        .sum();
    32 + view.name.len() + instances
}

/// `count` carries the instances written so far across apps, for the yields.
fn write_app(out: &mut Vec<u8>, view: &AppView, now: Now, count: &mut usize) {
    out.extend_from_slice(b"{\"name\":");
    string(out, &view.name);
    out.extend_from_slice(b",\"instances\":[");
    for (k, instance) in view.instances.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        *count += 1;
        if *count % YIELD_EVERY == 0 {
            thread::yield_now();
        }
        write_instance(out, instance, now);
    }
    out.extend_from_slice(b"]}");
}

fn write_instance(out: &mut Vec<u8>, i: &InstanceView, now: Now) {
    out.extend_from_slice(b"{\"id\":");
    string(out, &i.id);
    out.extend_from_slice(b",\"ip\":");
    string(out, &i.ip);
    out.extend_from_slice(b",\"port\":");
    number(out, u64::from(i.port));
    out.extend_from_slice(b",\"status\":\"");
    // The status names need no escaping.
    out.extend_from_slice(status_name(i.status).as_bytes());
    out.extend_from_slice(b"\",\"lastRenewal\":");
    number(out, wall_of(i.last_renewal, now) / 1000);
    if let Some(metadata) = &i.metadata {
        out.extend_from_slice(b",\"metadata\":{");
        for (k, (key, value)) in metadata.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            string(out, key);
            out.push(b':');
            string(out, value);
        }
        out.push(b'}');
    }
    out.push(b'}');
}

/// `s` as a JSON string, escaped as serde_json escapes it: `"`, `\\` and
/// the control characters; runs of other bytes are copied whole.
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..at]);
        out.extend_from_slice(escape);
        from = at + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// `n` in decimal.
fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `n % 10` is below 10: the cast cannot truncate.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};

    use super::*;
    use crate::registry::{Ip, Metadata};

    const NOW: Now = Now {
        mono: 10_000,
        wall: 1_764_000_000_000,
    };

    fn instance_view(
        id: &str,
        ip: &str,
        status: Status,
        metadata: &[(&str, &str)],
    ) -> InstanceView {
        let metadata: Metadata = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        InstanceView {
            id: Arc::from(id),
            ip: Ip::new(ip),
            port: 65535,
            status,
            last_renewal: 4_000,
            metadata: (!metadata.is_empty()).then(|| Arc::new(metadata)),
        }
    }

    fn parse(bytes: &[u8]) -> Value {
        assert_eq!(bytes.last(), Some(&b'\n'), "every body ends with a newline");
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn strings_are_escaped_and_numbers_exact() {
        let awkward = "q\"b\\s/\u{1}\n\t\u{7f}é😀";
        let view = instance_view(
            awkward,
            "::1",
            Status::OutOfService,
            &[(awkward, awkward), ("a", "")],
        );
        assert_eq!(
            parse(&instance(&view, NOW)),
            json!({
                "id": awkward,
                "ip": "::1",
                "port": 65535,
                "status": "out-of-service",
                // 6 s before a wall clock of 1,764,000,000 s.
                "lastRenewal": 1_763_999_994u64,
                "metadata": {"a": "", awkward: awkward},
            })
        );
        // Byte for byte as serde_json writes strings.
        let every: String = (0..=0x7f_u8).map(char::from).chain("é😀".chars()).collect();
        let mut out = Vec::new();
        string(&mut out, &every);
        assert_eq!(out, serde_json::to_vec(&every).unwrap());
        for n in [0, 7, 10, 99, 100, 65_535, u64::MAX] {
            let mut out = Vec::new();
            number(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn summaries_count_by_status() {
        let apps = [
            AppSummary {
                name: Arc::from("we\"b"),
                index: 9,
                counts: [1, 2, 0, 3],
            },
            AppSummary {
                name: Arc::from("db"),
                index: 4,
                counts: [0; 4],
            },
        ];
        assert_eq!(
            parse(&summary(&apps)),
            json!({"applications": [
                {"name": "we\"b", "index": 9, "total": 6,
                 "counts": {"starting": 1, "up": 2, "down": 0, "out-of-service": 3}},
                {"name": "db", "index": 4, "total": 0,
                 "counts": {"starting": 0, "up": 0, "down": 0, "out-of-service": 0}},
            ]})
        );
        assert_eq!(parse(&summary(&[])), json!({"applications": []}));
    }

    #[test]
    fn listings_nest_apps_and_instances_and_stay_within_the_hint() {
        let web = AppView {
            name: Arc::from("web"),
            instances: (0..600)
                .map(|k| instance_view(&format!("i-{k}"), "10.0.0.1", Status::Up, &[]))
                .collect(),
            index: 3,
        };
        let empty = AppView {
            name: Arc::from("empty"),
            instances: Vec::new(),
            index: 1,
        };
        let body = apps(&[web.clone(), empty.clone()], NOW);
        let value = parse(&body);
        let listed = value["applications"].as_array().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0]["name"], "web");
        assert_eq!(listed[0]["instances"].as_array().unwrap().len(), 600);
        assert_eq!(listed[0]["instances"][599]["id"], "i-599");
        assert_eq!(listed[1], json!({"name": "empty", "instances": []}));
        assert!(body.len() <= 20 + size_hint(&web) + size_hint(&empty));
        assert_eq!(parse(&app(&empty, NOW)), listed[1]);
    }
}
