//! The etcd store (in progress).
#[allow(dead_code)]
pub mod client;
