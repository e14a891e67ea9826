//! The admin API's part of the OpenAPI document (`crate::routes::openapi` merges it in): every
//! handler of `configure` with a `#[utoipa::path]`.

use utoipa::OpenApi;

use super::{sessions, usage, users};

#[derive(OpenApi)]
#[openapi(paths(
    super::openapi,
    sessions::list,
    sessions::show,
    sessions::kill,
    sessions::kill_user,
    sessions::nodes,
    users::list,
    users::create,
    users::show,
    users::update,
    users::keys,
    users::revoke_key,
    users::revoke_token,
    users::providers,
    users::audit,
    usage::list,
))]
pub struct AdminApi;
