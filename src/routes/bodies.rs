//! Answer bodies more than one route sends, each defined once. Handlers build their answers
//! from these types (and from their own, next to them), so the OpenAPI document shows what is
//! sent.

use serde::Serialize;
use utoipa::ToSchema;

/// Usage totals by UTC day, oldest first: the caller's (`GET /v1/usage`) or every user's
/// (`GET /admin/usage`).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport<T> {
    /// The days covered: today and the days before it.
    pub days: u64,
    pub totals: Vec<T>,
}

/// A credential revoked on every node.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    /// The API key's id, or the session token's jti.
    pub revoked: String,
}
