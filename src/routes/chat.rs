//! `GET /chat`: authenticates, then upgrades to a WebSocket run by a [`SessionActor`].

use std::{
    pin::Pin,
    rc::Rc,
    sync::atomic::Ordering,
    task::{Context, Poll},
};

use actix::Actor;
use actix_web::{
    body::{BodySize, MessageBody},
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse,
};
use ai_gateway_actors::{ConnectionAbort, SessionActor};

use super::{
    account::client_key,
    caller::{authenticate_from, bearer, session_of},
    ApiError, AppState,
};
use crate::{
    auth::TokenError,
    conn::ConnSocket,
    limits::{Rate, StreamLease},
};

/// The body of an upgraded connection, holding the user's session place: actix drops it when
/// the connection ends, however it ends, and the place is free again.
struct Leased<B> {
    body: B,
    _lease: StreamLease,
}

impl<B: MessageBody + Unpin> MessageBody for Leased<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<bytes::Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// The token from `Authorization: Bearer ...`, or else from `?token=` (the seed's way).
fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(bearer) = bearer(req) {
        return Some(bearer.to_owned());
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()?
        .into_inner()
        .remove("token")
        .filter(|t| !t.is_empty())
}

/// The W3C trace context headers of a request.
pub(super) fn trace_headers(req: &HttpRequest) -> std::collections::HashMap<String, String> {
    ["traceparent", "tracestate"]
        .iter()
        .filter_map(|name| {
            let value = req.headers().get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_owned()))
        })
        .collect()
}

/// Browsers send `Origin`; other clients do not. A browser page may connect only from the
/// gateway's own origin or one listed in `allowed_origins` (`*` allows any). The gateway's own
/// host is the `Host` header; `X-Forwarded-Host` and `Forwarded` count only from a trusted proxy.
fn origin_allowed(req: &HttpRequest, allowed: &[String], trusted: &[ipnet::IpNet]) -> bool {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let from_proxy = req
        .peer_addr()
        .is_some_and(|p| trusted.iter().any(|n| n.contains(&p.ip())));
    let host = if from_proxy {
        req.connection_info().host().to_owned()
    } else {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        match host {
            Some(host) => host,
            None => return false,
        }
    };
    ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|o| o.eq_ignore_ascii_case(&host))
    })
}

/// The chat WebSocket
#[utoipa::path(
    get,
    path = "/chat",
    operation_id = "chat_websocket",
    tag = "v1",
    description = "Upgrades to the chat WebSocket; its frames are described in docs/PROTOCOL.md. The credential is the bearer header or `?token=`.",
    security(("bearer" = [])),
    params(("token" = Option<String>, Query, description = "A session token or API key, for browsers that cannot set headers")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake", body = crate::routes::openapi::SeedError),
        (status = 401, description = "No or bad credential", body = crate::routes::openapi::SeedError),
        (status = 403, description = "Origin not allowed, or user disabled", body = crate::routes::openapi::SeedError),
        (status = 429, description = "Too many sessions or handshakes; see Retry-After", body = crate::routes::openapi::SeedError),
        (status = 503, description = "The node is draining", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !origin_allowed(&req, &state.allowed_origins, &state.trusted_proxies) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Origin not allowed".to_owned(),
        ));
    }
    ApiError::check(
        state
            .limits
            .check(
                Rate::HandshakePerIp,
                &client_key(&req, &state.trusted_proxies),
            )
            .await,
        "connection attempts",
    )?;
    let token = token_of(&req).ok_or(TokenError::Missing)?;
    let from = client_key(&req, &state.trusted_proxies);
    let principal = authenticate_from(&state, &from, &token).await?;
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is shutting down".to_owned(),
        ));
    }
    let lease = state
        .limits
        .acquire_session(&principal.user_id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many open connections for this user; close one first".to_owned(),
            )
        })?;
    let (response, session, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let response = response
        .map_body(|_, body| Leased {
            body,
            _lease: lease,
        })
        .map_into_boxed_body();
    let abort = req
        .conn_data::<ConnSocket>()
        .map(|s| Rc::new(*s) as Rc<dyn ConnectionAbort>);
    let info = session_of(principal, uuid::Uuid::new_v4().to_string(), &state, &req);
    let span = tracing::info_span!(
        "session",
        session.id = %info.session_id,
        user.id = %info.user_id,
        node.id = %info.node_id,
        trace_id = tracing::field::Empty,
    );
    ai_gateway_actors::trace::adopt(&span, &trace_headers(&req));
    ai_gateway_actors::trace::record_trace_id(&span);
    span.in_scope(|| tracing::debug!(user = %info.username, "session opened"));
    SessionActor::new(
        info,
        span,
        state.session_env.clone(),
        (session, stream),
        abort,
    )
    .start();
    Ok(response)
}
