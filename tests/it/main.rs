//! The server's integration tests: one binary, modules by area. Every test
//! starts the real server on 127.0.0.1:0 (in process, or the `registro`
//! binary where flags, logs, signals or process limits are under test) and
//! speaks HTTP to it.

mod api;
mod auth;
mod cli;
mod concurrency;
mod conn;
mod contract;
mod dashboard;
mod discovery;
mod etcd;
mod fuzz;
mod hardening;
mod lifecycle;
mod ops;
mod restart;
mod scenarios;
mod sd;
mod support;
mod watch;
