//! `GET /registro/1.0/sd/prometheus`: Prometheus' HTTP service discovery.
//!
//! One target group per instance, `{"targets": ["IP:PORT"], "labels":
//! {...}}`, with the labels `__meta_registro_app`, `__meta_registro_instance`,
//! `__meta_registro_status` and `__meta_registro_metadata_KEY` for each
//! metadata key (KEY reduced to `[a-zA-Z0-9_]`). Only `up` instances unless
//! `?status=` names others; `?app=` (repeated) narrows to those apps, and an
//! app that does not exist adds nothing (Prometheus then sees no targets for
//! it rather than an error that would keep its old ones). The view is the
//! listing's (`Registry::apps`, or `Registry::app` per named app), read the
//! same way and encoded after the lock is released.

use std::collections::BTreeSet;
use std::thread;

use super::{add_statuses, decode_query, query_pairs, status_name, views, Api};
use crate::clock::Now;
use crate::http::Response;
use crate::registry::{AppView, InstanceView, Status, StatusSet};

/// The label prefix of a metadata key.
const METADATA_PREFIX: &str = "__meta_registro_metadata_";

/// What `?status=` and `?app=` asked for.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    filter: StatusSet,
    /// `None`: every app.
    apps: Option<BTreeSet<String>>,
}

impl Api {
    /// The target groups of the instances asked for, as JSON.
    pub(super) fn sd_prometheus(&self, target: &str, now: Now) -> Result<Response, Response> {
        let query = parse(target)?;
        let mut registry = self.view.lock();
        let views: Vec<AppView> = match &query.apps {
            None => registry
                .apps(now.mono, query.filter, None)
                .map(|(apps, _)| apps)
                .unwrap_or_default(),
            Some(names) => names
                .iter()
                .filter_map(|name| registry.app(name, now.mono, query.filter, None).ok())
                .flatten()
                .collect(),
        };
        self.view.publish(registry, false);
        let body = self.budgeted(size(&views), || encode(&views))?;
        Ok(Response::json(200, body))
    }
}

/// `?status=` (as on the listing: a comma-separated list, repeatable; `up`
/// when absent) and `?app=` (repeatable); other parameters are ignored.
fn parse(target: &str) -> Result<Query, Response> {
    let mut filter = None;
    let mut apps: Option<BTreeSet<String>> = None;
    for (key, value) in query_pairs(target) {
        match key {
            "status" => add_statuses(&mut filter, &decode_query(value)?)?,
            "app" => {
                apps.get_or_insert_with(BTreeSet::new)
                    .insert(decode_query(value)?);
            }
            _ => {}
        }
    }
    Ok(Query {
        filter: filter.unwrap_or(StatusSet::NONE.with(Status::Up)),
        apps,
    })
}

/// About the size of the JSON of `apps`' target groups, without metadata.
fn size(apps: &[AppView]) -> usize {
    16 + apps.iter().map(|a| a.instances.len()).sum::<usize>() * 160
}

/// The JSON array of target groups, and a newline.
fn encode(apps: &[AppView]) -> Vec<u8> {
    let mut out = Vec::with_capacity(size(apps));
    out.push(b'[');
    let mut count = 0;
    for app in apps {
        for instance in &app.instances {
            if count > 0 {
                out.push(b',');
            }
            count += 1;
            if count % views::YIELD_EVERY == 0 {
                thread::yield_now();
            }
            group(&mut out, &app.name, instance);
        }
    }
    out.extend_from_slice(b"]\n");
    out
}

fn group(out: &mut Vec<u8>, app: &str, i: &InstanceView) {
    out.extend_from_slice(b"{\"targets\":[");
    views::string(out, &target(&i.ip, i.port));
    out.extend_from_slice(b"],\"labels\":{\"__meta_registro_app\":");
    views::string(out, app);
    out.extend_from_slice(b",\"__meta_registro_instance\":");
    views::string(out, &i.id);
    out.extend_from_slice(b",\"__meta_registro_status\":\"");
    out.extend_from_slice(status_name(i.status).as_bytes());
    out.push(b'"');
    if let Some(metadata) = &i.metadata {
        for (name, value) in metadata_labels(metadata.iter()) {
            out.push(b',');
            views::string(out, &name);
            out.push(b':');
            views::string(out, value);
        }
    }
    out.extend_from_slice(b"}}");
}

/// `IP:PORT`, an IPv6 address in brackets (`[::1]:80`) as Prometheus'
/// `__address__` wants it; a host name or an address already in brackets
/// as it is.
fn target(ip: &str, port: u16) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The metadata as labels: each key with every character outside
/// `[a-zA-Z0-9_]` replaced by `_`, after the prefix. Two keys that reduce to
/// the same name make one label: the key that needed no change wins, else
/// the first in byte order, so the answer never depends on chance.
/// `metadata` comes sorted by key.
fn metadata_labels<'a>(
    metadata: impl Iterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, &'a str)> {
    // (label, exact, value), sorted by label.
    let mut labels: Vec<(String, bool, &str)> = Vec::new();
    for (key, value) in metadata {
        let reduced: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let exact = reduced == *key;
        let label = format!("{METADATA_PREFIX}{reduced}");
        match labels.binary_search_by(|(l, _, _)| l.as_str().cmp(&label)) {
            Ok(at) => {
                if exact {
                    labels[at] = (label, true, value);
                }
            }
            Err(at) => labels.insert(at, (label, exact, value)),
        }
    }
    labels
        .into_iter()
        .map(|(label, _, value)| (label, value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Metadata;

    #[test]
    fn targets_bracket_ipv6_addresses() {
        assert_eq!(target("10.0.0.7", 8080), "10.0.0.7:8080");
        assert_eq!(target("::1", 80), "[::1]:80");
        assert_eq!(target("fe80::1%eth0", 80), "[fe80::1%eth0]:80");
        assert_eq!(target("[::1]", 80), "[::1]:80");
        assert_eq!(target("db.internal", 5432), "db.internal:5432");
    }

    #[test]
    fn metadata_keys_are_reduced_and_collisions_settled() {
        let metadata: Metadata = [
            ("zone", "eu-1"),
            ("app.kubernetes.io/name", "web"),
            ("a-b", "dash"),
            ("a.b", "dot"),
            ("a_b", "exact"),
            ("x-y", "dash"),
            ("x.y", "dot"),
            ("é", "accent"),
            ("9lives", "digit"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let labels = metadata_labels(metadata.iter());
        let got: Vec<(&str, &str)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        assert_eq!(
            got,
            [
                ("__meta_registro_metadata_9lives", "digit"),
                // One character, one underscore.
                ("__meta_registro_metadata__", "accent"),
                // The exact key wins over the two that reduce to it.
                ("__meta_registro_metadata_a_b", "exact"),
                ("__meta_registro_metadata_app_kubernetes_io_name", "web"),
                // No exact key: the first in byte order ('-' before '.').
                ("__meta_registro_metadata_x_y", "dash"),
                ("__meta_registro_metadata_zone", "eu-1"),
            ]
        );
    }

    #[test]
    fn queries() {
        let up = StatusSet::NONE.with(Status::Up);
        let q = |t: &str| parse(t).map_err(|r| r.status);
        assert_eq!(
            q("/registro/1.0/sd/prometheus"),
            Ok(Query {
                filter: up,
                apps: None
            })
        );
        assert_eq!(
            q("/registro/1.0/sd/prometheus?status=up,down&status=starting&app=web&app=a%20b&app=web&x=1"),
            Ok(Query {
                filter: up.with(Status::Down).with(Status::Starting),
                apps: Some(["a b".to_string(), "web".to_string()].into())
            })
        );
        assert_eq!(q("/registro/1.0/sd/prometheus?status=UP"), Err(400));
        assert_eq!(q("/registro/1.0/sd/prometheus?status="), Err(400));
        assert_eq!(q("/registro/1.0/sd/prometheus?app=%zz"), Err(400));
        // The watch parameters are not this route's: ignored.
        assert!(q("/registro/1.0/sd/prometheus?index=x&wait=1h").is_ok());
    }
}
