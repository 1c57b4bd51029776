//! The client's integration tests: one binary, modules by area. They run the
//! real server of this workspace in process on 127.0.0.1:0 (no mocks of it).
//! Canned or scripted registries (`quirks`, `responder`) stand in only for
//! what the real server cannot be made to do: the original Go server's
//! oddities, answering slowly, or a conflict arriving mid-re-registration.

mod api;
mod discovery;
mod failover;
mod heartbeat;
mod live;
mod longpoll;
mod quirks;
mod responder;
mod scripted;
#[cfg(unix)]
mod signal;
mod support;
mod tokens;
mod transport;
