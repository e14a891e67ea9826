//! `gateway-bench`: a load generator for ai-gateway. One module per scenario (`idle`, `cluster`, `stream`,
//! `overhead`, `handshake`, `http`, `resume`, `soak`), each a library function the binary and the tiny test call.

pub mod client;
pub mod cluster;
pub mod forward;
pub mod handshake;
pub mod http;
pub mod idle;
pub mod overhead;
pub mod process;
pub mod report;
pub mod resume;
pub mod soak;
pub mod stream;
pub mod upstream;

pub use client::{BenchError, Target};
pub use report::Report;
