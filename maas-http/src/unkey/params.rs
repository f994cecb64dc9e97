//! Query-string parameters, checked one by one so that a bad one is a 400
//! in Unkey's envelope naming the parameter.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::response::Response;
use maas_core::Error;

use super::error::Unkey;
use crate::common::{Dialect, RequestId};

/// The schema of an integer query parameter that may be given empty, which
/// is taken as absent (seed 004's nullable numbers: `offset`, `start`,
/// `end`).
#[derive(Debug)]
pub(crate) struct EmptyOrInteger;

impl utoipa::PartialSchema for EmptyOrInteger {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::KnownFormat;
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        let integer = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)));
        let empty = ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(0))
            .description(Some("empty: the same as absent"));
        OneOfBuilder::new().item(integer).item(empty).into()
    }
}

impl utoipa::ToSchema for EmptyOrInteger {
    fn name() -> std::borrow::Cow<'static, str> {
        "UnkeyEmptyOrInteger".into()
    }
}

/// The decoded query string of a request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) {
            Ok(Query(pairs)) => Ok(Params { pairs }),
            Err(e) => {
                let Ok(id) = RequestId::from_request_parts(parts, state).await;
                Err(Unkey::render(&Error::invalid("query", e.body_text()), &id))
            }
        }
    }
}

impl Params {
    /// The parameter `name` if given (at most once).
    pub(crate) fn get(&self, name: &'static str) -> Result<Option<&str>, Error> {
        let mut values = self
            .pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(Error::invalid(name, "must be given at most once"));
        }
        Ok(first)
    }

    /// The parameter `name`, which must be given and not empty.
    pub(crate) fn required(&self, name: &'static str) -> Result<&str, Error> {
        match self.get(name)? {
            None => Err(Error::invalid(name, "is required")),
            Some("") => Err(Error::invalid(name, "must not be empty")),
            Some(v) => Ok(v),
        }
    }

    /// The parameter `name` if given; given empty is refused.
    pub(crate) fn non_empty(&self, name: &'static str) -> Result<Option<&str>, Error> {
        match self.get(name)? {
            Some("") => Err(Error::invalid(name, "must not be empty")),
            v => Ok(v),
        }
    }

    /// The integer parameter `name` if given; `nullable` takes an empty
    /// value as absent.
    pub(crate) fn integer(&self, name: &'static str, nullable: bool) -> Result<Option<i64>, Error> {
        match self.get(name)? {
            None => Ok(None),
            Some("") if nullable => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| Error::invalid(name, "must be an integer")),
        }
    }

    /// The integer parameter `name` in `min..=max`, else `default`.
    pub(crate) fn bounded(
        &self,
        name: &'static str,
        min: i64,
        max: i64,
        default: i64,
    ) -> Result<i64, Error> {
        match self.integer(name, false)? {
            None => Ok(default),
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(_) => Err(Error::invalid(
                name,
                format!("must be between {min} and {max}"),
            )),
        }
    }
}
