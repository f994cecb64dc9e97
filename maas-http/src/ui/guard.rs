//! What every page of the dashboard and the portal is served with, and the
//! cross-site check of every state-changing request.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, HOST, ORIGIN, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Scripts, styles, images and form targets from this origin only; never
/// framed.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether a request that changes state comes from a page of this very
/// origin: `Sec-Fetch-Site: same-origin` when the browser sends Fetch
/// Metadata, else an `Origin` whose host and port are this request's
/// `Host`. A request with neither is refused (browsers send `Origin` with
/// every POST), as is one from another port of the same host (the user
/// listener is same-site to the admin listener, not same-origin).
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let (Some(origin), Some(host)) = (headers.get(ORIGIN), headers.get(HOST)) else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// Middleware: refuses (403) a cross-site POST, and adds the security
/// headers (CSP, no framing, no sniffing, no referrer, no caching) to every
/// answer.
pub(crate) async fn protect(req: Request, next: Next) -> Response {
    if req.method() == Method::POST && !same_origin(req.headers()) {
        let mut res = (
            StatusCode::FORBIDDEN,
            "cross-site request refused: post from this site's own pages",
        )
            .into_response();
        secure(res.headers_mut());
        return res;
    }
    let mut res = next.run(req).await;
    secure(res.headers_mut());
    res
}

fn secure(h: &mut HeaderMap) {
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The `Set-Cookie` value of a session cookie `name` (`__Host-` prefixed:
/// Secure, Path=/, no Domain), HttpOnly and SameSite=Strict; `None` as the
/// id clears it.
pub(crate) fn cookie(name: &str, id: Option<&str>) -> HeaderValue {
    let v = match id {
        Some(id) => format!("{name}={id}; Path=/; HttpOnly; Secure; SameSite=Strict"),
        None => format!("{name}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of cookie `name` in the request, if any.
pub(crate) fn cookie_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A 303 to `to`.
pub(crate) fn see_other(to: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(axum::http::header::LOCATION, to)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_this_origin_may_post() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:9090"),
            ("host", "127.0.0.1:9090")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:9090")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "null"),
            ("host", "127.0.0.1:9090")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:9090")])));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let h = headers(&[("cookie", "a=1; __Host-maas-ui=abc; b=2")]);
        assert_eq!(cookie_of(&h, "__Host-maas-ui"), Some("abc"));
        assert_eq!(cookie_of(&h, "c"), None);
        let set = cookie("__Host-maas-ui", Some("abc"));
        assert_eq!(
            set.to_str().unwrap_or_default(),
            "__Host-maas-ui=abc; Path=/; HttpOnly; Secure; SameSite=Strict"
        );
    }
}
