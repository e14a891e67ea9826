//! The chat demo page.

use actix_web::{http::header::ContentType, HttpResponse};

/// `web/index.html`, built into the binary so one file deploys.
const INDEX_HTML: &str = include_str!("../../web/index.html");

pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(INDEX_HTML)
}
