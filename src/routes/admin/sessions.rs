//! Live sessions and nodes: from the Redis directory when nodes share one (every node's
//! sessions), else from this node's registry.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use actix_web::{http::StatusCode, web, HttpResponse};
use ai_gateway_actors::{close_code, unix_time::now_unix_ms, KillSession};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Admin, KillReason};
use crate::{
    cluster::{
        count_user_sessions, list_figures, list_legacy_sessions, list_nodes,
        list_sessions_snapshot, ClusterError, ClusterEvent, DirectoryEntry, NodeFigures,
    },
    routes::{ApiError, AppState, Paging},
};

/// How long the listing read for a first page serves the pages after it: paging through
/// 100,000 sessions then costs one directory read, not one a page.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(10);

/// `GET /admin/sessions` filters; each is an exact match.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionFilter {
    /// A user id or username.
    pub user: Option<String>,
    /// A node id.
    pub node: Option<String>,
    /// The model of the session's latest request.
    pub model: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct NodeLoad {
    node_id: String,
    sessions: usize,
    /// Requests streaming now, over all the node's sessions.
    running: u64,
    /// Unix milliseconds of the node's last directory refresh.
    refreshed_at: u64,
    /// What the node published of itself (this node's: read now); null until it has.
    figures: Option<NodeFigures>,
}

/// `GET /admin/nodes`: every live node.
#[derive(Serialize, utoipa::ToSchema)]
struct NodeList {
    nodes: Vec<NodeLoad>,
}

/// `GET /admin/sessions`: a page of the matching sessions, by start.
#[derive(Serialize, utoipa::ToSchema)]
struct SessionPage<'a> {
    sessions: Vec<&'a DirectoryEntry>,
    /// Sessions matching the filters, on every page.
    total: usize,
    offset: usize,
    limit: usize,
}

/// `DELETE /admin/sessions/{id}`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
struct SessionKilled {
    session_id: String,
    /// The node that held the session.
    node_id: String,
    /// The close reason the client was sent.
    reason: String,
}

/// `DELETE /admin/users/{id}/sessions`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
struct UserSessionsKilled {
    user_id: String,
    /// The user's sessions the directory still held when read, once the closes were out (those
    /// already closed are not counted); null when it could not be read.
    sessions: Option<usize>,
    /// The close reason the clients were sent.
    reason: String,
}

fn directory_down(e: ClusterError) -> ApiError {
    tracing::warn!(error = %e, "session directory unreachable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Session directory unavailable".to_owned(),
    )
}

/// Every live session this node can see, sorted by start: the whole cluster's with Redis, else
/// its own. Unless `fresh`, a listing read within [`SNAPSHOT_MAX_AGE`] is reused.
async fn all_sessions(state: &AppState, fresh: bool) -> Result<Arc<Vec<DirectoryEntry>>, ApiError> {
    match &state.cluster {
        Some(cluster) => list_sessions_snapshot(cluster, SNAPSHOT_MAX_AGE, fresh)
            .await
            .map_err(directory_down),
        None => {
            let mut sessions: Vec<DirectoryEntry> = state
                .registry
                .sessions()
                .await
                .iter()
                .map(DirectoryEntry::from)
                .collect();
            sessions
                .sort_by(|a, b| (a.started_at, &a.session_id).cmp(&(b.started_at, &b.session_id)));
            Ok(Arc::new(sessions))
        }
    }
}

/// One live session: its directory entry (one read), else this node's own.
async fn find_session(state: &AppState, id: &str) -> Result<DirectoryEntry, ApiError> {
    let found = match &state.cluster {
        Some(cluster) => crate::cluster::find_session(cluster, id)
            .await
            .map_err(directory_down)?,
        None => state
            .registry
            .sessions()
            .await
            .iter()
            .find(|s| &*s.session_id == id)
            .map(DirectoryEntry::from),
    };
    found.ok_or_else(|| ApiError::not_found("Session"))
}

#[utoipa::path(
    get,
    path = "/admin/sessions",
    operation_id = "list_sessions",
    tag = "admin",
    summary = "Live sessions of every node",
    security(("admin" = [])),
    params(SessionFilter, Paging),
    responses(
        crate::routes::openapi::SessionAdminErrors,
        (status = 200, description = "A page of the matching sessions", body = SessionPage),
        (status = 400, description = "Bad query", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    _: Admin,
    filter: web::Query<SessionFilter>,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    // A first page reads the directory; the pages after it are cut from the same listing.
    let sessions = all_sessions(&state, paging.offset == 0).await?;
    let matching: Vec<&DirectoryEntry> = sessions
        .iter()
        .filter(|s| {
            filter
                .user
                .as_ref()
                .is_none_or(|u| s.user_id == *u || s.username == *u)
        })
        .filter(|s| filter.node.as_ref().is_none_or(|n| s.node_id == *n))
        .filter(|s| {
            filter
                .model
                .as_ref()
                .is_none_or(|m| s.last_model.as_ref() == Some(m))
        })
        .collect();
    let total = matching.len();
    let limit = paging.limit();
    let page: Vec<_> = matching
        .into_iter()
        .skip(paging.offset)
        .take(limit)
        .collect();
    Ok(HttpResponse::Ok().json(SessionPage {
        sessions: page,
        total,
        offset: paging.offset,
        limit,
    }))
}

#[utoipa::path(
    get,
    path = "/admin/sessions/{id}",
    operation_id = "show_session",
    tag = "admin",
    summary = "One live session",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The session id")),
    responses(
        crate::routes::openapi::SessionAdminErrors,
        (status = 200, description = "The session", body = DirectoryEntry),
        (status = 404, description = "No such session", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn show(
    state: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(find_session(&state, &id).await?))
}

/// Closes a session wherever it lives: through this node's registry, or by telling the node
/// that holds it over pub/sub.
async fn close(state: &AppState, session: &DirectoryEntry, reason: &str) -> Result<(), ApiError> {
    let here = state
        .registry
        .kill(KillSession {
            session_id: session.session_id.clone(),
            code: close_code::POLICY,
            reason: reason.to_owned(),
        })
        .await;
    if here {
        return Ok(());
    }
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::not_found("Session"));
    };
    cluster
        .publish(&ClusterEvent::KillSession {
            session_id: session.session_id.clone(),
            reason: reason.to_owned(),
        })
        .await
        .map_err(directory_down)
}

#[utoipa::path(
    delete,
    path = "/admin/sessions/{id}",
    operation_id = "kill_session",
    tag = "admin",
    summary = "Close a session (code 1008, the reason) on whichever node holds it",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The session id"), KillReason),
    responses(
        crate::routes::openapi::SessionAdminErrors,
        (status = 200, description = "The session is being closed", body = SessionKilled),
        (status = 404, description = "No such session", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn kill(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
    reason: web::Query<KillReason>,
) -> Result<HttpResponse, ApiError> {
    let session = find_session(&state, &id).await?;
    let reason = reason.close_reason();
    admin
        .audited(
            &state,
            "kill_session",
            &session.session_id,
            json!({"reason": reason, "user_id": session.user_id, "node_id": session.node_id}),
            close(&state, &session, &reason),
        )
        .await?;
    Ok(HttpResponse::Ok().json(SessionKilled {
        session_id: session.session_id,
        node_id: session.node_id,
        reason,
    }))
}

#[utoipa::path(
    delete,
    path = "/admin/users/{id}/sessions",
    operation_id = "kill_user_sessions",
    tag = "admin",
    summary = "Close every session of a user on every node",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The user id"), KillReason),
    responses(
        crate::routes::openapi::SessionAdminErrors,
        (status = 200, description = "The closes are sent to every node at once", body = UserSessionsKilled),
        (status = 404, description = "No such user", body = crate::routes::openapi::SeedError),
    ),
)]
pub async fn kill_user(
    state: web::Data<AppState>,
    admin: Admin,
    user_id: web::Path<String>,
    reason: web::Query<KillReason>,
) -> Result<HttpResponse, ApiError> {
    let user_id = user_id.into_inner();
    let reason = reason.close_reason();
    // One event closes the user's sessions on every node (this one included) at once, while the
    // user is looked up and the audit row written: a slow store delays no close (closing the
    // sessions of a user who does not exist closes none, and answers 404). The directory is read
    // afterwards only for the answer's count: the user's sessions it still held when read
    // (those already closed and removed are not counted; null when it cannot be read: the
    // sessions close all the same).
    let close = async {
        let close = async {
            state
                .access
                .close_user_sessions(&user_id, &reason)
                .await
                .map_err(directory_down)
        };
        let (closed, closed_legacy) =
            futures_util::join!(close, close_on_legacy_nodes(&state, &user_id, &reason));
        closed.and(closed_legacy)
    };
    let kill = admin.audited(
        &state,
        "kill_user_sessions",
        &user_id,
        json!({"reason": reason}),
        close,
    );
    let (found, killed) = futures_util::join!(state.stores.identity.user_by_id(&user_id), kill);
    if found?.is_none() {
        return Err(ApiError::not_found("User"));
    }
    killed?;
    let count = async {
        match &state.cluster {
            Some(cluster) => count_user_sessions(cluster, &user_id).await.ok(),
            None => all_sessions(&state, true)
                .await
                .ok()
                .map(|all| all.iter().filter(|s| s.user_id == user_id).count()),
        }
    };
    // The count reads the whole directory: it starts once the closes are out, so that its
    // reads do not compete with them.
    let sessions = count.await;
    Ok(HttpResponse::Ok().json(UserSessionsKilled {
        user_id,
        sessions,
        reason,
    }))
}

/// Nodes from before the per-node directory ignore a `user_sessions` event: during a rolling
/// upgrade, the user's sessions they hold are killed one by one, as those nodes understand.
async fn close_on_legacy_nodes(
    state: &AppState,
    user_id: &str,
    reason: &str,
) -> Result<(), ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(());
    };
    let legacy = list_legacy_sessions(cluster)
        .await
        .map_err(directory_down)?;
    for session in legacy.iter().filter(|s| s.user_id == user_id) {
        cluster
            .publish(&ClusterEvent::KillSession {
                session_id: session.session_id.clone(),
                reason: reason.to_owned(),
            })
            .await
            .map_err(directory_down)?;
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/admin/nodes",
    operation_id = "list_nodes",
    tag = "admin",
    summary = "Every live node: its sessions and running requests from the directory, and the figures it published",
    security(("admin" = [])),
    responses(
        crate::routes::openapi::SessionAdminErrors,
        (status = 200, description = "Every live node (this node's figures read now)", body = NodeList),
    ),
)]
pub async fn nodes(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    let sessions = all_sessions(&state, true).await?;
    let mut load: BTreeMap<String, NodeLoad> = BTreeMap::new();
    match &state.cluster {
        Some(cluster) => {
            for n in list_nodes(cluster).await.map_err(directory_down)? {
                load.insert(
                    n.node_id.clone(),
                    NodeLoad {
                        node_id: n.node_id,
                        sessions: 0,
                        running: 0,
                        refreshed_at: n.refreshed_at,
                        figures: None,
                    },
                );
            }
        }
        None => {
            let now = now_unix_ms();
            let id = state.admin.node_id.clone();
            load.insert(
                id.clone(),
                NodeLoad {
                    node_id: id,
                    sessions: 0,
                    running: 0,
                    refreshed_at: now,
                    figures: None,
                },
            );
        }
    }
    for s in sessions.iter() {
        // A node seen only through its sessions (joined before its first refresh) still counts.
        let node = load.entry(s.node_id.clone()).or_insert_with(|| NodeLoad {
            node_id: s.node_id.clone(),
            sessions: 0,
            running: 0,
            refreshed_at: 0,
            figures: None,
        });
        node.sessions += 1;
        node.running += u64::from(s.running);
    }
    // Every node's published figures, then this node's own, read now.
    let mut figures = match &state.cluster {
        Some(cluster) => list_figures(cluster).await.map_err(directory_down)?,
        None => vec![],
    };
    figures.retain(|f| f.node_id != state.admin.node_id);
    figures.push(super::figures::local(&state).await);
    for f in figures {
        let node = load.entry(f.node_id.clone()).or_insert_with(|| NodeLoad {
            node_id: f.node_id.clone(),
            sessions: 0,
            running: 0,
            refreshed_at: 0,
            figures: None,
        });
        node.figures = Some(f);
    }
    let nodes: Vec<NodeLoad> = load.into_values().collect();
    Ok(HttpResponse::Ok().json(NodeList { nodes }))
}
