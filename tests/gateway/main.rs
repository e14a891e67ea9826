//! Integration tests: a real gateway on a loopback port, real WebSocket and HTTP clients.

mod auth;
mod backpressure;
mod lifecycle;
mod protocol;
mod proxy;
mod shared_state;
mod seed_flow;
mod streaming;
mod support;
