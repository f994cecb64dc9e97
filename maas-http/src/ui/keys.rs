//! The Keys page: the tenant keyspace's keys (never their secrets), 50 a
//! page, by tenant; each can be disabled, enabled and deleted, and a new
//! one's secret is shown once, in the answer that created it. The same
//! services, with the same actor, as the management API's key routes.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maas_core::{Key, KeyId, KeyQuery, KeyUpdate, PageRequest};
use serde::Deserialize;

use super::guard::see_other;
use super::pages::{failed, form_encode, render};
use super::tenants::{admin_actor, limit_param, message, page_size, refusal};
use super::{Operator, Ui};

struct KeyRow {
    id: String,
    prefix: String,
    name: String,
    tenant: String,
    enabled: bool,
    created: String,
    last_used: String,
    expires: String,
    /// `/ui/keys/{id}`, to which `/disable`, `/enable` or `/delete` is added.
    base: String,
}

#[derive(Template)]
#[template(path = "ui/keys.html")]
struct KeysPage {
    title: &'static str,
    tenant: String,
    cursor: String,
    rows: Vec<KeyRow>,
    next: Option<String>,
    error: Option<String>,
    new_tenant: String,
    new_name: String,
}

/// The query of `GET /ui/keys`.
#[derive(Deserialize, Default)]
pub(crate) struct ListParams {
    /// Only this tenant's keys (its name).
    #[serde(default)]
    tenant: String,
    /// The previous page's cursor.
    #[serde(default)]
    cursor: String,
    /// Rows per page (1..=50).
    #[serde(default)]
    limit: Option<usize>,
}

fn when(t: Option<maas_core::Timestamp>, none: &str) -> String {
    t.map_or_else(|| none.to_owned(), |t| t.to_string())
}

fn row(k: &Key) -> KeyRow {
    KeyRow {
        id: k.id.as_str().to_owned(),
        prefix: k.start.clone(),
        name: k.name.clone().unwrap_or_default(),
        tenant: k.owner_id.clone().unwrap_or_default(),
        enabled: k.enabled,
        created: k.created_at.to_string(),
        last_used: when(k.last_used_at, "never"),
        expires: when(k.expires, "never"),
        base: format!("/ui/keys/{}", form_encode(k.id.as_str())),
    }
}

/// Where a key's forms send the browser back to: the list it was on.
fn back(tenant: &str, cursor: &str) -> String {
    let mut to = format!("/ui/keys?tenant={}", form_encode(tenant));
    if !cursor.is_empty() {
        to.push_str("&cursor=");
        to.push_str(&form_encode(cursor));
    }
    to
}

async fn list_page(
    ui: &Ui,
    p: ListParams,
    error: Option<(StatusCode, String)>,
    new_name: String,
) -> Response {
    let size = page_size(p.limit);
    let s = &ui.state;
    let keyspace = match s.user_keys.keyspace().await {
        Ok(k) => k,
        Err(e) => return failed(&e),
    };
    // A page without the count (the page shows none): its time does not
    // grow with the keys in the store.
    let got = s
        .user_keys
        .key_service()
        .scan(&KeyQuery {
            keyspace_id: Some(keyspace),
            owner_id: Some(p.tenant.clone()).filter(|t| !t.is_empty()),
            include_deleted: false,
            page: PageRequest {
                cursor: Some(p.cursor.clone()).filter(|c| !c.is_empty()),
                limit: size,
            },
        })
        .await;
    let got = match got {
        Ok(g) => g,
        Err(e) if refusal(&e).is_some() => {
            return (StatusCode::BAD_REQUEST, message(&e)).into_response();
        }
        Err(e) => return failed(&e),
    };
    let next = got.cursor.map(|c| {
        format!(
            "/ui/keys?tenant={}&cursor={}{}",
            form_encode(&p.tenant),
            form_encode(&c),
            limit_param(size)
        )
    });
    let (status, error) = match error {
        Some((s, e)) => (s, Some(e)),
        None => (StatusCode::OK, None),
    };
    let mut res = render(&KeysPage {
        title: "Keys",
        rows: got.items.iter().map(row).collect(),
        next,
        error,
        new_tenant: p.tenant.clone(),
        new_name,
        tenant: p.tenant,
        cursor: p.cursor,
    });
    if res.status() == StatusCode::OK {
        *res.status_mut() = status;
    }
    res
}

/// `GET /ui/keys`: the tenant keyspace's keys by id, 50 a page, all or one
/// tenant's.
pub(crate) async fn list(
    _op: Operator,
    State(ui): State<Ui>,
    Query(p): Query<ListParams>,
) -> Response {
    list_page(&ui, p, None, String::new()).await
}

#[derive(Template)]
#[template(path = "ui/key_created.html")]
struct Created {
    title: &'static str,
    row: KeyRow,
    secret: String,
    back: String,
}

/// The form of `POST /ui/keys`.
#[derive(Deserialize, Default)]
pub(crate) struct CreateForm {
    /// The tenant's name.
    #[serde(default)]
    tenant: String,
    /// The key's name.
    #[serde(default)]
    name: String,
}

/// `POST /ui/keys`: creates a key for a tenant and shows its secret, this
/// once (the answer is not cached, and no other page shows it).
pub(crate) async fn create(
    _op: Operator,
    State(ui): State<Ui>,
    Form(f): Form<CreateForm>,
) -> Response {
    let s = &ui.state;
    let again = |status: StatusCode, e: String| {
        let p = ListParams {
            tenant: f.tenant.clone(),
            ..ListParams::default()
        };
        list_page(&ui, p, Some((status, e)), f.name.clone())
    };
    let tenant = match s.scheduling.tenants().get_by_name(&f.tenant).await {
        Ok(t) => t,
        Err(e) if e.is_not_found() || refusal(&e).is_some() => {
            let e = if f.tenant.trim().is_empty() {
                "tenant must be named".to_owned()
            } else {
                format!("no tenant is named '{}'", f.tenant)
            };
            return again(StatusCode::BAD_REQUEST, e).await;
        }
        Err(e) => return failed(&e),
    };
    let created = match s
        .user_keys
        .create_tenant_key(&admin_actor(), &tenant.name, &f.name)
        .await
    {
        Ok(k) => k,
        Err(e) => {
            return match refusal(&e) {
                Some(status) => again(status, message(&e)).await,
                None => failed(&e),
            };
        }
    };
    let record = match s.user_keys.key_service().get(&created.key_id).await {
        Ok(k) => k,
        Err(e) => return failed(&e),
    };
    render(&Created {
        title: "Keys",
        row: row(&record),
        secret: created.api_key,
        back: back(&tenant.name, ""),
    })
}

/// A key of the tenant keyspace, live (others are not the dashboard's).
async fn tenant_key(ui: &Ui, raw: &str) -> Result<Key, Response> {
    let not_found = || (StatusCode::NOT_FOUND, "no such key").into_response();
    let id = KeyId::parse(raw).map_err(|_| not_found())?;
    let keyspace = ui
        .state
        .user_keys
        .keyspace()
        .await
        .map_err(|e| failed(&e))?;
    match ui.state.user_keys.key_service().get(&id).await {
        Ok(k) if k.keyspace_id == keyspace && k.deleted_at.is_none() => Ok(k),
        Ok(_) => Err(not_found()),
        Err(e) if e.is_not_found() => Err(not_found()),
        Err(e) => Err(failed(&e)),
    }
}

/// The form of a key's buttons: the list to go back to, and for a delete,
/// `confirm=yes`.
#[derive(Deserialize, Default)]
pub(crate) struct ActionForm {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    confirm: String,
}

async fn set_enabled(ui: &Ui, raw: &str, f: &ActionForm, enabled: bool) -> Response {
    let k = match tenant_key(ui, raw).await {
        Ok(k) => k,
        Err(res) => return res,
    };
    let update = KeyUpdate {
        enabled: Some(enabled),
        ..KeyUpdate::default()
    };
    match ui
        .state
        .user_keys
        .key_service()
        .update(&admin_actor(), &k.id, update)
        .await
    {
        Ok(_) => see_other(&back(&f.tenant, &f.cursor)),
        Err(e) => match refusal(&e) {
            Some(status) => (status, message(&e)).into_response(),
            None => failed(&e),
        },
    }
}

/// `POST /ui/keys/{id}/disable`: the key stops verifying.
pub(crate) async fn disable(
    _op: Operator,
    State(ui): State<Ui>,
    Path(raw): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    set_enabled(&ui, &raw, &f, false).await
}

/// `POST /ui/keys/{id}/enable`: the key verifies again.
pub(crate) async fn enable(
    _op: Operator,
    State(ui): State<Ui>,
    Path(raw): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    set_enabled(&ui, &raw, &f, true).await
}

#[derive(Template)]
#[template(path = "ui/key_delete.html")]
struct ConfirmDelete {
    title: &'static str,
    row: KeyRow,
    tenant: String,
    cursor: String,
    back: String,
}

/// `POST /ui/keys/{id}/delete`: with `confirm=yes`, deletes the key;
/// without, asks (a page whose form says `confirm=yes`).
pub(crate) async fn delete(
    _op: Operator,
    State(ui): State<Ui>,
    Path(raw): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    let k = match tenant_key(&ui, &raw).await {
        Ok(k) => k,
        Err(res) => return res,
    };
    if f.confirm != "yes" {
        return render(&ConfirmDelete {
            title: "Keys",
            row: row(&k),
            back: back(&f.tenant, &f.cursor),
            tenant: f.tenant,
            cursor: f.cursor,
        });
    }
    match ui
        .state
        .user_keys
        .key_service()
        .delete(&admin_actor(), &k.id)
        .await
    {
        Ok(()) => see_other(&back(&f.tenant, &f.cursor)),
        Err(e) => match refusal(&e) {
            Some(status) => (status, message(&e)).into_response(),
            None => failed(&e),
        },
    }
}
