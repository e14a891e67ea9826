//! Integration tests: a real gateway on a loopback port, real WebSocket and HTTP clients.

mod auth;
mod backpressure;
mod lifecycle;
mod protocol;
mod seed_flow;
mod streaming;
mod support;
