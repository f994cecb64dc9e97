//! `apis.*`, and the older `GET /v1/apis/{apiId}/keys`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use maas_core::rootkeys::ListFrom;
use maas_core::{Error, Key, KeyspaceId, Page, RootAuth};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::UnkeyErrorBody;
use super::auth::Root;
use super::params::{EmptyOrInteger, Params};
use super::wire::{KeyOut, api_id, key_id};
use super::{Json, UnkeyState, empty, fail, ok, reply};
use crate::common::RequestId;

/// The most keys a page of `apis.listKeys` holds, and its default.
pub const MAX_LIST_LIMIT: i64 = 100;

/// The body of `apis.createApi`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = UnkeyCreateApi)]
pub(crate) struct CreateApi {
    /// The api's name.
    name: String,
}

/// A new api.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyCreatedApi)]
struct Created {
    /// Its id.
    api_id: String,
}

#[utoipa::path(post, path = "/v1/apis.createApi", operation_id = "apis.createApi", security(("rootKey" = [])),
    request_body = CreateApi,
    responses((status = 200, description = "The api's id", body = Created))
)]
/// `POST /v1/apis.createApi`.
pub(crate) async fn create_api(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    json: Json<CreateApi>,
) -> Response {
    let body = json.0;
    let created = s.root_keys.create_api(&auth, &body.name).await;
    reply(
        &id,
        created.map(|ks| Created {
            api_id: ks.id.to_string(),
        }),
    )
}

/// An api (a maas keyspace).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyApi)]
struct Api<'a> {
    /// Its id.
    id: &'a str,
    /// The workspace.
    workspace_id: &'a str,
    /// Its name.
    name: &'a str,
}

#[utoipa::path(get, path = "/v1/apis.getApi", operation_id = "apis.getApi", security(("rootKey" = [])),
    params(("apiId" = String, Query, description = "The api")),
    responses((status = 200, description = "The api", body = Api), (status = 404, description = "No such api", body = UnkeyErrorBody))
)]
/// `GET /v1/apis.getApi?apiId=`.
pub(crate) async fn get_api(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    q: Params,
) -> Response {
    let run = async {
        let api = api_id(q.required("apiId")?)?;
        s.root_keys.get_api(&auth, &api).await
    };
    match run.await {
        Ok(ks) => ok(
            &id,
            &Api {
                id: ks.id.as_str(),
                workspace_id: &s.workspace_id,
                name: &ks.name,
            },
        ),
        Err(e) => fail(&id, &e),
    }
}

/// The body of `apis.deleteApi`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UnkeyDeleteApi)]
pub(crate) struct DeleteApi {
    /// The api.
    api_id: String,
}

#[utoipa::path(post, path = "/v1/apis.deleteApi", operation_id = "apis.deleteApi", security(("rootKey" = [])),
    request_body = DeleteApi,
    responses((status = 200, description = "Deleted, with its keys", body = super::Empty), (status = 404, description = "No such api", body = UnkeyErrorBody))
)]
/// `POST /v1/apis.deleteApi`: the api and its keys.
pub(crate) async fn delete_api(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    json: Json<DeleteApi>,
) -> Response {
    let body = json.0;
    let run = async {
        let api = api_id(&body.api_id)?;
        s.root_keys.delete_api(&auth, &api).await.map(|()| empty())
    };
    reply(&id, run.await)
}

/// A page of an api's keys.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UnkeyKeyList)]
struct KeyList<'a> {
    /// The keys.
    keys: Vec<KeyOut<'a>>,
    /// The next page's cursor (`apis.listKeys` only; absent on the last
    /// page).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    cursor: Option<&'a str>,
    /// How many live keys the api has.
    total: u64,
}

fn key_list<'a>(page: &'a Page<Key>, workspace_id: &'a str, with_cursor: bool) -> KeyList<'a> {
    KeyList {
        keys: page
            .items
            .iter()
            .map(|k| KeyOut::new(k, workspace_id))
            .collect(),
        cursor: page.cursor.as_deref().filter(|_| with_cursor),
        total: page.total,
    }
}

async fn list(
    s: &UnkeyState,
    auth: &RootAuth,
    api: Result<KeyspaceId, Error>,
    q: &Params,
    legacy: bool,
) -> Result<Page<Key>, Error> {
    let api = api?;
    let limit = q.bounded("limit", 1, MAX_LIST_LIMIT, MAX_LIST_LIMIT)?;
    let owner = q.non_empty("ownerId")?;
    let from = if legacy {
        match q.integer("offset", true)? {
            None => ListFrom::Offset(0),
            Some(o) => ListFrom::Offset(
                u64::try_from(o).map_err(|_| Error::invalid("offset", "must not be negative"))?,
            ),
        }
    } else {
        // Cursors are key ids: anything else matches no key.
        let cursor = q.non_empty("cursor")?.map(key_id).transpose();
        let cursor = cursor.map_err(|_| Error::invalid("cursor", "is not a cursor of this api"))?;
        ListFrom::Cursor(cursor.map(|c| c.to_string()))
    };
    let limit = usize::try_from(limit).unwrap_or(1);
    s.root_keys
        .list_api_keys(auth, &api, owner, from, limit)
        .await
}

#[utoipa::path(get, path = "/v1/apis.listKeys", operation_id = "apis.listKeys", security(("rootKey" = [])),
    params(
        ("apiId" = String, Query, description = "The api"),
        ("limit" = Option<i64>, Query, description = "Keys per page (1..=100, default 100)", minimum = 1, maximum = 100),
        ("cursor" = Option<String>, Query, description = "The previous page's `cursor`"),
        ("ownerId" = Option<String>, Query, description = "Only the keys of this owner"),
    ),
    responses((status = 200, description = "A page of keys", body = KeyList), (status = 404, description = "No such api", body = UnkeyErrorBody))
)]
/// `GET /v1/apis.listKeys?apiId=&limit=&cursor=&ownerId=`.
pub(crate) async fn list_keys(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    q: Params,
) -> Response {
    let api = q.required("apiId").and_then(api_id);
    match list(&s, &auth, api, &q, false).await {
        Ok(page) => ok(&id, &key_list(&page, &s.workspace_id, true)),
        Err(e) => fail(&id, &e),
    }
}

#[utoipa::path(get, path = "/v1/apis/{apiId}/keys", operation_id = "legacy.apis.listKeys", security(("rootKey" = [])),
    params(
        ("apiId" = String, Path, description = "The api"),
        ("limit" = Option<i64>, Query, description = "Keys per page (1..=100, default 100)", minimum = 1, maximum = 100),
        ("offset" = inline(Option<EmptyOrInteger>), Query, description = "Keys to skip (at least 0)"),
        ("ownerId" = Option<String>, Query, description = "Only the keys of this owner"),
    ),
    responses((status = 200, description = "A page of keys", body = KeyList), (status = 404, description = "No such api", body = UnkeyErrorBody))
)]
/// `GET /v1/apis/{apiId}/keys?limit=&offset=&ownerId=` (the older list).
pub(crate) async fn legacy_list_keys(
    id: RequestId,
    State(s): State<Arc<UnkeyState>>,
    Root(auth): Root,
    path: Result<Path<String>, PathRejection>,
    q: Params,
) -> Response {
    let api = match path {
        Ok(Path(api)) => api_id(&api),
        Err(e) => Err(Error::invalid("apiId", e.body_text())),
    };
    match list(&s, &auth, api, &q, true).await {
        Ok(page) => ok(&id, &key_list(&page, &s.workspace_id, false)),
        Err(e) => fail(&id, &e),
    }
}
