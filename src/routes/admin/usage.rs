//! Every user's usage by day and model, for the admin panel's charts.

use actix_web::{web, HttpResponse};

use super::Admin;
use crate::{
    routes::{bodies::UsageReport, conversations::UsageQuery, ApiError, AppState},
    store::UserUsageTotal,
};

/// `GET /admin/usage?days=N`: every user's totals by UTC day, user and model (30 days by
/// default, 366 at most), oldest first.
#[utoipa::path(
    get,
    path = "/admin/usage",
    operation_id = "admin_usage",
    tag = "admin",
    summary = "Every user's usage by UTC day and model, oldest first",
    security(("admin" = [])),
    params(UsageQuery),
    responses(
        crate::routes::openapi::AdminErrors,
        (status = 200, description = "Every user's totals by UTC day and model", body = UsageReport<UserUsageTotal>),
        (status = 400, description = "A bad `days`", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    _: Admin,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (days, since) = query.window();
    let totals = state.stores.usage.usage_by_user(since).await?;
    Ok(HttpResponse::Ok().json(UsageReport { days, totals }))
}
