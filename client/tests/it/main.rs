//! The client's integration tests: one binary, modules by area. They run the
//! real server of this workspace in process on 127.0.0.1:0 (no mocks of it);
//! only `quirks` answers with canned bytes, to stand in for the original Go
//! server's oddities.

mod api;
mod discovery;
mod heartbeat;
mod live;
mod quirks;
mod responder;
mod scripted;
mod support;
mod transport;
