//! The root key of a request.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::Response;
use maas_core::RootAuth;

use super::UnkeyState;
use super::error::Unkey;
use crate::common::{Dialect, RequestId, bearer};

/// The caller of a route that needs a root key: the admin token or a root
/// key ([`RootKeys::authenticate`](maas_core::RootKeys::authenticate)). A
/// missing or invalid one is answered 401 `UNAUTHORIZED` before the body
/// is read.
#[derive(Debug, Clone)]
pub struct Root(pub RootAuth);

impl FromRequestParts<Arc<UnkeyState>> for Root {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<UnkeyState>,
    ) -> Result<Self, Self::Rejection> {
        let presented = bearer(parts);
        match state
            .root_keys
            .authenticate(presented, state.admin_token.as_deref())
            .await
        {
            Ok(auth) => Ok(Root(auth)),
            Err(e) => {
                let Ok(id) = RequestId::from_request_parts(parts, state).await;
                Err(Unkey::render(&e, &id))
            }
        }
    }
}
