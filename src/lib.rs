//! The `ai-gateway` binary's library: configuration, HTTP routes, identity, and the server that
//! ties them to the actors in `ai-gateway-actors`.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod config;
mod conn;
pub mod limits;
pub mod limits_nofile;
pub mod request_hooks;
pub mod revocation;
pub mod routes;
pub mod routing;
pub mod server;
pub mod startup;
pub mod store;
pub mod telemetry;
mod upgrade;

pub use config::Config;
pub use server::Gateway;
