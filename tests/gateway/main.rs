//! Integration tests: a real gateway on a loopback port, real WebSocket and HTTP clients.

mod abuse;
mod admin;
mod anthropic_front;
mod auth;
mod backpressure;
mod browser;
mod certs;
mod client_library;
mod examples;
mod http_resume;
mod lifecycle;
mod limits_and_outages;
mod observability;
mod openai_front;
mod openapi;
mod postgres_tls;
mod protocol;
mod proxy;
mod redis_tls;
mod resume;
mod seed_flow;
mod shared_state;
mod startup;
mod streaming;
mod support;
mod upstreams;
