//! Integration tests: a real gateway on a loopback port, real WebSocket and HTTP clients.

mod abuse;
mod admin;
mod anthropic_front;
mod auth;
mod backpressure;
mod browser;
mod lifecycle;
mod limits_and_outages;
mod observability;
mod openai_front;
mod protocol;
mod proxy;
mod seed_flow;
mod shared_state;
mod streaming;
mod support;
mod upstreams;
