//! The REST API's OpenAPI 3.1 document, derived by utoipa from the handlers' `#[utoipa::path]`
//! annotations and their request and answer types (a handler answers with the type its path
//! names as the success body). Served at `/openapi.json` (and `/admin/openapi.json`), checked
//! in at `docs/openapi.json`; `tests/gateway/openapi.rs` fails when the two differ, when a
//! route registered in `configure` is missing from it, or when a success body is a bare object.

use std::{collections::BTreeMap, marker::PhantomData};

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::{
    openapi::{
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
        ContentBuilder, Ref, RefOr, ResponseBuilder,
    },
    IntoResponses, Modify, OpenApi, ToSchema,
};

use super::{account, admin, anthropic, chat, conversations, health, keys, openai};

/// Security scheme of `/v1/*` and `/logout`: a session token from `/login` or an API key.
pub const BEARER: &str = "bearer";
/// The same credential as Anthropic's SDKs send it.
pub const X_API_KEY: &str = "x_api_key";
/// Security scheme of `/admin/*`: an admin's token or API key, or the static admin token.
pub const ADMIN: &str = "admin";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ai-gateway API",
        description = "The user API (`/register`, `/login`, `/logout`, `/v1/*`), the admin API \
            (`/admin/*`) and health. Errors are `{\"error\": message}` on the seed's endpoints and \
            the admin API, OpenAI's shape under `/v1/`, Anthropic's under `/v1/messages`. The chat \
            WebSocket's frames are described in docs/PROTOCOL.md, not here."
    ),
    paths(
        serve,
        account::register,
        account::login,
        account::logout,
        chat::upgrade,
        keys::create,
        keys::list,
        keys::revoke,
        conversations::list,
        conversations::show,
        conversations::delete,
        conversations::usage,
        openai::models,
        openai::completions,
        openai::events,
        anthropic::messages,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    components(schemas(SeedError, OpenAiErrorBody, AnthropicErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "account", description = "Sign-up, login and logout"),
        (name = "v1", description = "The user's keys, conversations and usage, and the OpenAI- and Anthropic-compatible fronts"),
        (name = "admin", description = "Live sessions on every node, nodes, users, credentials, providers and the audit trail"),
        (name = "health", description = "Probes and metrics"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            BEARER,
            bearer("A session token from POST /login, or an API key from POST /v1/keys"),
        );
        components.add_security_scheme(
            X_API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "The same token or API key, as Anthropic's SDKs send it",
            ))),
        );
        components.add_security_scheme(
            ADMIN,
            bearer("A token or API key of a user with the admin role, or the static admin token (GATEWAY_ADMIN_TOKEN)"),
        );
    }
}

/// The whole document: the user API's and the admin API's.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(admin::AdminApi::openapi());
    doc
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi_document",
    tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document of the REST API", body = Object)),
)]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

// The error sets every route of a kind shares, named once: a route lists its set in
// `responses(...)` first, then its own rows (a row of the same status replaces the set's, for
// a route that says more about it).

/// The errors of a route that takes a caller's credential (the `Caller` extractor), with the
/// error body `B` of the route's front.
pub struct CallerErrors<B>(PhantomData<B>);

impl<B: ToSchema> IntoResponses for CallerErrors<B> {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        error_rows::<B>(&[
            (401, "No or bad credential"),
            (403, "User disabled"),
            (
                429,
                "Too many failed attempts from this address; see Retry-After",
            ),
            (503, "Store unavailable"),
        ])
    }
}

/// [`CallerErrors`] in the seed's shape (`/logout`).
pub type UserErrors = CallerErrors<SeedError>;
/// [`CallerErrors`] in OpenAI's shape (every `/v1/` route but `/v1/messages`).
pub type OpenAiErrors = CallerErrors<OpenAiErrorBody>;
/// [`CallerErrors`] in Anthropic's shape (`/v1/messages`).
pub type AnthropicErrors = CallerErrors<AnthropicErrorBody>;

/// The errors of every route under `/admin/` but the document: the admin check's.
pub struct AdminErrors;

impl IntoResponses for AdminErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        error_rows::<SeedError>(&[
            (401, "No or bad credential"),
            (403, "Not an admin"),
            (503, "Store unavailable"),
        ])
    }
}

/// [`AdminErrors`] of the routes that read the session directory.
pub struct SessionAdminErrors;

impl IntoResponses for SessionAdminErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut rows = AdminErrors::responses();
        rows.extend(error_rows::<SeedError>(&[(
            503,
            "Session directory or store unavailable",
        )]));
        rows
    }
}

/// `(status, description)` rows, each with the JSON body `B`.
fn error_rows<B: ToSchema>(
    rows: &[(u16, &str)],
) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    rows.iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(*description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(B::name())))
                        .build(),
                )
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

// The error bodies below are documentation only: the handlers build them with `json!`.

/// `{"error": message}`: the seed's endpoints and the admin API.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SeedError {
    pub error: String,
}

/// OpenAI's error, on every `/v1/` endpoint but `/v1/messages`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `rate_limit_error`
    /// or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    pub code: Option<String>,
}

/// Anthropic's error, on `/v1/messages`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct AnthropicErrorBody {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub error: AnthropicErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct AnthropicErrorDetail {
    /// `invalid_request_error`, `authentication_error`, `not_found_error`, `rate_limit_error`,
    /// `overloaded_error`, `api_error`…
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}
