//! The chat page and its assets, and what every response carries for browsers: security headers and CORS.

use std::sync::OnceLock;

use actix_cors::Cors;
use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{
        header::{self, ContentType, HeaderValue},
        Method,
    },
    middleware::Next,
    HttpResponse,
};
use base64::Engine;
use sha2::{Digest, Sha256};

use super::ApiError;

/// `web/index.html`, built into the binary so one file deploys.
const INDEX_HTML: &str = include_str!("../../web/index.html");
/// The admin panel (served by `admin`), for its inline script and style hashes.
const ADMIN_HTML: &str = include_str!("../../web/admin.html");

/// The policy of everything that is not a page: load nothing, be framed by no one.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(INDEX_HTML)
}

/// `web/gateway-client.js`, the browser client library (reconnect and resume).
const CLIENT_JS: &str = include_str!("../../web/gateway-client.js");
/// Its TypeScript declarations.
const CLIENT_DTS: &str = include_str!("../../web/gateway-client.d.ts");

pub async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(CLIENT_JS)
}

pub async fn client_dts() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/typescript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(CLIENT_DTS)
}

/// The pages' own scripts and the libraries they use (`web/vendor/`, with their licences), served
/// under `/assets/` from the binary: a fixed table, so no request reaches the file system.
const ASSETS: &[(&str, &str, &str)] = &[
    ("chat.js", JS, include_str!("../../web/chat.js")),
    ("admin.js", JS, include_str!("../../web/admin.js")),
    ("http.js", JS, include_str!("../../web/http.js")),
    (
        "marked.esm.js",
        JS,
        include_str!("../../web/vendor/marked.esm.js"),
    ),
    (
        "purify.es.mjs",
        JS,
        include_str!("../../web/vendor/purify.es.mjs"),
    ),
    (
        "marked.LICENSE",
        TEXT,
        include_str!("../../web/vendor/marked.LICENSE"),
    ),
    (
        "dompurify.LICENSE",
        TEXT,
        include_str!("../../web/vendor/dompurify.LICENSE"),
    ),
    (
        "dompurify.LICENSE-MPL",
        TEXT,
        include_str!("../../web/vendor/dompurify.LICENSE-MPL"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// `GET /assets/{name}`: one of [`ASSETS`], or 404.
pub async fn asset(name: actix_web::web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name.as_str())
        .ok_or_else(|| ApiError::not_found("Asset"))?;
    Ok(HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(*body))
}

/// The `'sha256-…'` sources of every inline `<tag>…</tag>` block of the pages (also
/// `<script type="module">`).
fn inline_hashes(tag: &str) -> String {
    let close = format!("</{tag}>");
    let opens = [format!("<{tag}>"), format!("<{tag} type=\"module\">")];
    let mut sources = Vec::new();
    for (page, open) in [INDEX_HTML, ADMIN_HTML]
        .into_iter()
        .flat_map(|p| opens.iter().map(move |o| (p, o)))
    {
        let mut rest = page;
        while let Some(start) = rest.find(open.as_str()) {
            let body = &rest[start + open.len()..];
            let Some(end) = body.find(&close) else { break };
            let digest = Sha256::digest(&body.as_bytes()[..end]);
            sources.push(format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ));
            rest = &body[end + close.len()..];
        }
    }
    sources.join(" ")
}

/// The policy of the built-in pages: their own inline script and style (by hash, so no other
/// inline code runs) and scripts of this origin (the client library), requests to this origin
/// only (WebSocket included), no framing.
pub fn page_csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src 'self'{}; style-src {}; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            // Inline scripts, should a page get one again (none now: they are files).
            match inline_hashes("script") {
                h if h.is_empty() => h,
                h => format!(" {h}"),
            },
            inline_hashes("style"),
        )
    })
}

/// Adds the security headers to every response: `nosniff`, no referrer, no framing, and a
/// Content-Security-Policy (the pages' own for HTML, `default-src 'none'` for the rest).
pub async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        let html = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
        let csp = if html {
            HeaderValue::from_static(page_csp())
        } else {
            HeaderValue::from_static(API_CSP)
        };
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    Ok(res)
}

/// CORS for `allowed_origins` (`*`: any), so a browser app there can call `/login`, `/v1/…`
/// and the admin API with a bearer token. Other origins get no CORS headers (the browser then
/// withholds the answer); requests are not refused for it, so same-origin pages and non-browser
/// clients work as before. No cookies are used, so credentials are not allowed.
pub fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("traceparent"),
            header::HeaderName::from_static("tracestate"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .block_on_origin_mismatch(false)
        .max_age(3600);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_policy_names_each_inline_block() {
        let csp = page_csp();
        // Each page's inline style; their scripts are files under /assets/.
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
}
