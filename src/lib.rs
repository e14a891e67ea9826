//! The `ai-gateway` binary's library: configuration, HTTP routes, identity, and the server that
//! ties them to the actors in `ai-gateway-actors`.

pub mod auth;
pub mod config;
mod conn;
pub mod identity;
pub mod routes;
pub mod server;
pub mod telemetry;

pub use config::Config;
pub use server::Gateway;
