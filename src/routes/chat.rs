//! `GET /chat`: authenticates, then upgrades to a WebSocket run by a [`SessionActor`].

use std::{
    cell::Cell,
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
use actix_ws::{CloseCode, CloseReason, Message};
use ai_gateway_actors::{ConnectionAbort, Outbound, SessionActor};
use ai_gateway_proto::{
    decode_client_frame, ClientFrame, DecodeError, ErrorPayload, ErrorReason, ServerMessage,
};
use futures_util::StreamExt;

use super::{
    account::client_key,
    caller::{authenticate_from, bearer, session_of},
    ApiError, AppState,
};
use crate::{
    access::Principal,
    auth::TokenError,
    conn::ConnSocket,
    limits::{Rate, StreamLease},
};

/// The body of an upgraded connection, holding the user's session place: actix drops it when
/// the connection ends, however it ends, and the place is free again.
struct Leased<B> {
    body: B,
    _lease: Rc<Cell<Option<StreamLease>>>,
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

/// Longest `auth` message a connection without a token may send; anything longer closes it.
const MAX_AUTH_FRAME_BYTES: usize = 16 * 1024;

/// The chat WebSocket
#[utoipa::path(
    get,
    path = "/chat",
    operation_id = "chat_websocket",
    tag = "v1",
    description = "Upgrades to the chat WebSocket; its frames are described in docs/PROTOCOL.md. The credential is the bearer header, `?token=`, or a first `auth` message.",
    security(("bearer" = [])),
    params(("token" = Option<String>, Query, description = "A session token or API key, for browsers that cannot set headers")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake", body = crate::routes::openapi::SeedError),
        (status = 401, description = "A bad credential (with none, the upgrade waits for an `auth` message)", body = crate::routes::openapi::SeedError),
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
    let from = client_key(&req, &state.trusted_proxies);
    ApiError::check(
        state.limits.check(Rate::HandshakePerIp, &from).await,
        "connection attempts",
    )?;
    let Some(token) = token_of(&req) else {
        if !wants_websocket(&req) {
            return Err(TokenError::Missing.into());
        }
        return upgrade_then_authenticate(req, body, state, from);
    };
    let principal = authenticate_from(&state, &from, &token).await?;
    let lease = admit(&state, &principal)?;
    let (response, session, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // The session writes its frames itself (`outbound`); actix-ws's sending end is not used.
    drop(session);
    let (response, out) = outbound(response);
    start_session(&req, &state, principal, out, stream);
    Ok(leased(response, Rc::new(Cell::new(Some(lease)))))
}

/// The handshake's response with the body the session writes its frames to, and that end.
fn outbound(response: HttpResponse) -> (HttpResponse, Outbound) {
    let out = Outbound::default();
    let response = response.map_body(|_, before| out.body(before));
    (response.map_into_boxed_body(), out)
}

/// A WebSocket handshake (`Upgrade: websocket`), as opposed to a plain HTTP request.
fn wants_websocket(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Whether an authenticated user may open one more session here: the node is not draining and
/// the user holds fewer than `sessions_per_user_per_node`. The lease is that session's place.
fn admit(state: &AppState, principal: &Principal) -> Result<StreamLease, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is shutting down".to_owned(),
        ));
    }
    state
        .limits
        .acquire_session(&principal.user_id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many open connections for this user; close one first".to_owned(),
            )
        })
}

/// The upgrade's response, holding the session's place (filled in later for a connection that
/// authenticates with its first message) for as long as the connection lives.
fn leased(response: HttpResponse, place: Rc<Cell<Option<StreamLease>>>) -> HttpResponse {
    response
        .map_body(|_, body| Leased {
            body,
            _lease: place,
        })
        .map_into_boxed_body()
}

fn abort_of(req: &HttpRequest) -> Option<Rc<dyn ConnectionAbort>> {
    req.conn_data::<ConnSocket>()
        .map(|s| Rc::new(*s) as Rc<dyn ConnectionAbort>)
}

fn start_session(
    req: &HttpRequest,
    state: &AppState,
    principal: Principal,
    out: Outbound,
    stream: actix_ws::MessageStream,
) {
    let info = session_of(principal, uuid::Uuid::new_v4().to_string(), state, req);
    let span = tracing::info_span!(
        "session",
        session.id = %info.session_id,
        user.id = %info.user_id,
        node.id = %info.node_id,
        trace_id = tracing::field::Empty,
    );
    ai_gateway_actors::trace::adopt(&span, &trace_headers(req));
    ai_gateway_actors::trace::record_trace_id(&span);
    span.in_scope(|| tracing::debug!(user = %info.username, "session opened"));
    SessionActor::new(
        info,
        span,
        state.session_env.clone(),
        (out, stream),
        abort_of(req),
    )
    .start();
}

/// A `/chat` upgrade without a token: the connection is accepted, and its first message must
/// be `{"type":"auth","payload":{"token"}}` within `session.auth_timeout_ms`. Such waiting
/// connections are capped per client address.
fn upgrade_then_authenticate(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    from: String,
) -> Result<HttpResponse, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is shutting down".to_owned(),
        ));
    }
    let waiting = state.limits.acquire_unauthenticated(&from).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many connections waiting to authenticate from this address".to_owned(),
        )
    })?;
    let (response, session, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Until it authenticates, the connection is answered through actix-ws's `session`; then the
    // session's frames follow through `out`.
    let (response, out) = outbound(response);
    let place = Rc::new(Cell::new(None));
    // On this worker thread, as the connection's dispatcher (see `ConnSocket`).
    actix_web::rt::spawn(authenticate_first_message(
        req,
        state,
        from,
        (session, stream),
        out,
        place.clone(),
        waiting,
    ));
    Ok(leased(response, place))
}

/// Why a connection without a token was refused: its error frame and close code.
struct Refusal {
    reason: ErrorReason,
    close: CloseCode,
    message: String,
}

impl Refusal {
    fn unauthorized(message: String) -> Refusal {
        Refusal {
            reason: ErrorReason::Unauthorized,
            close: CloseCode::Policy,
            message,
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        let (reason, close) = match e.status {
            StatusCode::FORBIDDEN => (ErrorReason::Forbidden, CloseCode::Policy),
            StatusCode::TOO_MANY_REQUESTS => (ErrorReason::RateLimited, CloseCode::Again),
            StatusCode::SERVICE_UNAVAILABLE => (ErrorReason::ShuttingDown, CloseCode::Restart),
            _ => (ErrorReason::Unauthorized, CloseCode::Policy),
        };
        Refusal {
            reason,
            close,
            message: e.message,
        }
    }
}

async fn authenticate_first_message(
    req: HttpRequest,
    state: web::Data<AppState>,
    from: String,
    (mut session, stream): (actix_ws::Session, actix_ws::MessageStream),
    out: Outbound,
    place: Rc<Cell<Option<StreamLease>>>,
    _waiting: StreamLease,
) {
    let mut stream = stream.max_frame_size(MAX_AUTH_FRAME_BYTES);
    let timeout = state.guards.auth_timeout;
    let first = actix_web::rt::time::timeout(timeout, first_text(&mut session, &mut stream)).await;
    let token = match first {
        Err(_) => Err(Refusal::unauthorized(format!(
            "no auth message within {} ms",
            timeout.as_millis()
        ))),
        // The client left, or broke the protocol: nobody to tell.
        Ok(None) => return,
        Ok(Some(text)) => match decode_client_frame(&text) {
            Ok(ClientFrame::Auth { token }) => Ok(token),
            Err((_, DecodeError::InvalidPayload(why))) => Err(Refusal::unauthorized(format!(
                "Expected a valid auth message first: {why}"
            ))),
            _ => Err(Refusal::unauthorized(
                "Authenticate first: send {\"type\":\"auth\",\"payload\":{\"token\":\"...\"}} \
                 as the first message, or connect with a token"
                    .to_owned(),
            )),
        },
    };
    let admitted = match token {
        Ok(token) => match authenticate_from(&state, &from, &token).await {
            Ok(principal) => admit(&state, &principal)
                .map(|lease| (principal, lease))
                .map_err(Refusal::from),
            Err(e) => Err(e.into()),
        },
        Err(refusal) => Err(refusal),
    };
    match admitted {
        Ok((principal, lease)) => {
            place.set(Some(lease));
            drop(session);
            start_session(&req, &state, principal, out, stream);
        }
        Err(refusal) => {
            let close_grace = state.session_env.config.close_grace;
            // The connection's body ends after the refusal's close frame.
            drop(out);
            refuse(session, stream, refusal, close_grace, abort_of(&req)).await;
        }
    }
}

/// The first text message, answering pings meanwhile; `None` when the connection ends or
/// breaks first. A binary, continuation or close frame comes back as empty text (not `auth`).
async fn first_text(
    session: &mut actix_ws::Session,
    stream: &mut actix_ws::MessageStream,
) -> Option<String> {
    loop {
        match stream.next().await? {
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Ping(bytes)) => {
                session.pong(&bytes).await.ok()?;
            }
            Ok(Message::Pong(_) | Message::Nop) => {}
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(Message::Binary(_) | Message::Continuation(_)) => return Some(String::new()),
        }
    }
}

/// Sends the refusal's error frame and close, then waits `close_grace` for the client to take
/// them and leave before cutting the connection.
async fn refuse(
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
    refusal: Refusal,
    close_grace: std::time::Duration,
    abort: Option<Rc<dyn ConnectionAbort>>,
) {
    let frame = ServerMessage::Error {
        id: None,
        payload: ErrorPayload {
            code: refusal.reason.status_code(),
            reason: refusal.reason,
            message: refusal.message.as_str().into(),
        },
    }
    .to_json();
    let _ = session.text(frame).await;
    let mut description = refusal.message;
    // A close reason must fit a control frame (123 bytes).
    while description.len() > 123 {
        description.pop();
    }
    let _ = session
        .close(Some(CloseReason {
            code: refusal.close,
            description: Some(description),
        }))
        .await;
    let gone = async { while stream.next().await.is_some() {} };
    if actix_web::rt::time::timeout(close_grace, gone)
        .await
        .is_err()
    {
        if let Some(abort) = abort {
            abort.abort();
        }
    }
}
