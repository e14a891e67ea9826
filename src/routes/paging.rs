//! `?offset=&limit=` paging, the same for every list (admin users and sessions, the audit trail,
//! a user's API keys).

use serde::Deserialize;

/// Items per page when the caller names no limit.
pub const DEFAULT_PAGE: usize = 100;
/// Pages hold at most this many items.
pub const MAX_PAGE: usize = 1000;

/// `?offset=&limit=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items to skip; 0 by default.
    #[serde(default)]
    pub offset: usize,
    /// Page size: 100 by default, at most 1000.
    pub limit: Option<usize>,
}

impl Paging {
    /// The page size: the caller's, defaulted and bounded.
    pub fn limit(&self) -> usize {
        page_limit(self.limit)
    }
}

/// A requested page size, defaulted to [`DEFAULT_PAGE`] and bounded by 1 and [`MAX_PAGE`].
pub fn page_limit(requested: Option<usize>) -> usize {
    requested.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}
