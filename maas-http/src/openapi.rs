//! The OpenAPI 3.1 document of every router of this crate, generated from
//! the code.
//!
//! Each router is built from utoipa-axum's `OpenApiRouter`: a route is
//! registered with `routes!(handler)`, which takes its method and path from
//! the handler's `#[utoipa::path]` attribute, so the document and the
//! routes come from one source. [`document`] merges the three APIs, one tag
//! each:
//!
//! | tag | router | errors |
//! |---|---|---|
//! | `maas-api` | [`maas_api::router`](crate::maas_api::router) | Goa (`application/vnd.goa.error`) |
//! | `unkey` | [`unkey::router`](crate::unkey::router) | Unkey's envelope (`application/json`) |
//! | `management` | [`management::router`](crate::management::router) | RFC 9457 (`application/problem+json`) |
//!
//! The errors every operation of an API can answer (401 where a credential
//! is needed; 400, 413 and 415 where there is a body; 400 where there are
//! query parameters; anything else as `default`) are added here, once, as
//! references to `components.responses`; handlers document their own
//! success and notable errors.
//!
//! The management API serves the document at `GET /api/v1/openapi.json`.

use std::sync::OnceLock;

use utoipa::ToSchema;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::{Components, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, ResponseBuilder,
};

use crate::maas_api::GOA_ERROR;
use crate::management::PROBLEM_JSON;

/// How one API of the document answers errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiErrors {
    /// The API's tag.
    pub(crate) tag: &'static str,
    /// What the tag says.
    pub(crate) description: &'static str,
    /// The prefix of its `components.responses` names.
    prefix: &'static str,
    /// Adds the schema of its error bodies (first) and the schemas it
    /// refers to.
    schemas: fn(&mut Schemas),
    /// Their content type.
    content_type: &'static str,
    /// Whether a secured operation can answer 403 (a credential lacking a
    /// permission).
    forbidden: bool,
    /// The security scheme of operations that name none.
    default_security: Option<&'static str>,
}

/// The MaaS user API.
pub(crate) const MAAS_API: ApiErrors = ApiErrors {
    tag: "maas-api",
    description: "The MaaS user API (seeds 000 and 002): health, the caller's API keys, tier \
                  lookup, maas tokens, the models of the caller's tier. Every route is also \
                  served under `/maas-api`. Errors in Goa's shape.",
    prefix: "Goa",
    schemas: schemas_of::<crate::maas_api::GoaErrorBody<'static>>,
    content_type: GOA_ERROR,
    forbidden: false,
    default_security: None,
};

/// The Unkey v1-compatible key API.
pub(crate) const UNKEY: ApiErrors = ApiErrors {
    tag: "unkey",
    description: "The Unkey v1-compatible key API (seed 004): keys, apis (keyspaces), \
                  verifications and rate limits, authorised by a root key. Errors in Unkey's \
                  envelope.",
    prefix: "Unkey",
    schemas: schemas_of::<crate::unkey::UnkeyErrorBody<'static>>,
    content_type: "application/json",
    forbidden: true,
    default_security: None,
};

/// The management API.
pub(crate) const MANAGEMENT: ApiErrors = ApiErrors {
    tag: "management",
    description: "The management API (seeds 003 and 001) under `/api/v1`, for operators; every \
                  route needs the admin token. Errors are RFC 9457 problem details.",
    prefix: "Problem",
    schemas: schemas_of::<crate::management::ProblemDetails>,
    content_type: PROBLEM_JSON,
    forbidden: false,
    default_security: Some("adminToken"),
};

const APIS: [ApiErrors; 3] = [MAAS_API, UNKEY, MANAGEMENT];

type Schemas = Vec<(String, RefOr<Schema>)>;

fn schemas_of<T: ToSchema>(out: &mut Schemas) {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
}

/// The whole document: the three APIs, their schemas, error responses and
/// security schemes. Built once, then cloned.
pub fn document() -> OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(build).clone()
}

/// The document as JSON (what `GET /api/v1/openapi.json` serves).
pub fn document_json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_vec(&document()).unwrap_or_else(|_| b"{}".to_vec()))
}

fn build() -> OpenApi {
    let (doc, _) = merged();
    doc
}

/// The merged document, and the names of component schemas that two APIs
/// define differently (the first one is kept; a test wants none).
fn merged() -> (OpenApi, Vec<String>) {
    let info = InfoBuilder::new()
        .title("maas")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Model-as-a-Service access layer. Three APIs, one tag each: the MaaS user API and \
             the Unkey-compatible key API are served on the public listener, the management \
             API (under `/api/v1`) on the admin listener.",
        ))
        .build();
    let tags = APIS
        .iter()
        .map(|a| {
            TagBuilder::new()
                .name(a.tag)
                .description(Some(a.description))
                .build()
        })
        .collect::<Vec<_>>();
    let mut doc = OpenApiBuilder::new()
        .info(info)
        .tags(Some(tags))
        .components(Some(Components::new()))
        .build();
    let mut conflicts = Vec::new();
    for part in [
        crate::maas_api::openapi(),
        crate::unkey::openapi(),
        crate::management::openapi(),
        crate::controlplane::openapi(),
    ] {
        let components = doc.components.get_or_insert_with(Components::new);
        if let Some(theirs) = &part.components {
            for (name, schema) in &theirs.schemas {
                if let Some(ours) = components.schemas.get(name)
                    && ours != schema
                {
                    conflicts.push(name.clone());
                }
            }
        }
        doc.merge(part);
    }
    let components = doc.components.get_or_insert_with(Components::new);
    for (name, description) in [
        (
            "maasIdentity",
            "An identity credential (an OIDC token or a configured token) or a maas token.",
        ),
        ("maasToken", "A maas token (`POST /tokens`)."),
        ("userApiKey", "A user API key (`POST /keys`)."),
        (
            "rootKey",
            "An Unkey root key (`POST /api/v1/root-keys`) or the deployment's admin token.",
        ),
        ("adminToken", "The deployment's admin token."),
        (
            "projectKey",
            "A project API key with the scope `data-plane:connect` (`POST /api/v1/projects/{id}/api-keys`).",
        ),
    ] {
        components.security_schemes.insert(
            name.to_owned(),
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            ),
        );
    }
    (doc, conflicts)
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Appends `suffix` to every operation id of `doc` (for routes served twice).
pub(crate) fn suffix_operation_ids(doc: &mut OpenApi, suffix: &str) {
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            if let Some(id) = &mut op.operation_id {
                id.push_str(suffix);
            }
        }
    }
}

fn status_description(status: &str) -> &'static str {
    match status {
        "400" => "Invalid input; the error names the field or parameter at fault",
        "401" => "The credential is missing or not valid",
        "403" => "The credential lacks a permission this operation needs",
        "413" => "The body is larger than the limit",
        "415" => "The body is not JSON (`Content-Type: application/json`)",
        _ => {
            "Any other error: not found, conflict, rate limited, store unavailable (503), internal (500)"
        }
    }
}

/// Tags every operation of `doc` with the API's tag and adds the errors
/// every operation of it can answer, as references to
/// `components.responses` (which it adds).
pub(crate) fn finish_api(doc: &mut OpenApi, api: ApiErrors) {
    let mut used = std::collections::BTreeSet::new();
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            op.tags = Some(vec![api.tag.to_owned()]);
            if let Some(scheme) = api.default_security
                && op.security.is_none()
            {
                op.security = Some(vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
            }
            let secured = op.security.as_ref().is_some_and(|reqs| {
                reqs.iter().any(|r| {
                    serde_json::to_value(r)
                        .is_ok_and(|v| v.as_object().is_some_and(|o| !o.is_empty()))
                })
            });
            let has_query = op.parameters.as_ref().is_some_and(|ps| {
                ps.iter()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Query))
            });
            let mut statuses = Vec::new();
            if op.request_body.is_some() || has_query {
                statuses.push("400");
            }
            if secured {
                statuses.push("401");
                if api.forbidden {
                    statuses.push("403");
                }
            }
            if op.request_body.is_some() {
                statuses.extend(["413", "415"]);
            }
            statuses.push("default");
            for status in statuses {
                let name = format!(
                    "{}{}",
                    api.prefix,
                    if status == "default" {
                        "Default"
                    } else {
                        status
                    }
                );
                let responses = &mut op.responses.responses;
                if !responses.contains_key(status) {
                    responses.insert(
                        status.to_owned(),
                        RefOr::Ref(Ref::from_response_name(name.clone())),
                    );
                    used.insert((name, status));
                }
            }
        }
    }
    let mut schemas = Schemas::new();
    (api.schemas)(&mut schemas);
    let error_schema = schemas.first().map(|(n, _)| n.clone()).unwrap_or_default();
    let components = doc.components.get_or_insert_with(Components::new);
    components.schemas.extend(schemas);
    for (name, status) in used {
        let response = ResponseBuilder::new()
            .description(status_description(status))
            .content(
                api.content_type,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(error_schema.clone())))
                    .build(),
            )
            .build();
        components.responses.insert(name, RefOr::T(response));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apis_do_not_define_a_schema_twice_differently() {
        let (_, conflicts) = merged();
        assert!(conflicts.is_empty(), "{conflicts:?}");
    }

    #[test]
    fn every_error_schema_is_in_the_document() {
        let doc = document();
        let schemas = &doc
            .components
            .as_ref()
            .map(|c| c.schemas.clone())
            .unwrap_or_default();
        for api in APIS {
            let mut own = Schemas::new();
            (api.schemas)(&mut own);
            for (name, _) in own {
                assert!(schemas.contains_key(&name), "{name}");
            }
        }
    }
}
