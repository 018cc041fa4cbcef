//! Authentication: who is calling. Client certificates are verified by the
//! TLS layer (`serve`), which attaches a [`PeerIdentity`] to every request of
//! the connection; the middleware here turns it, or a bearer token, into a
//! [`User`] extension, or answers 401. Authorization (RBAC) is not done yet:
//! every authenticated user may do everything.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

/// An authenticated user, available to handlers as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The identity of a TLS connection's verified client certificate, if it
/// presented one. Inserted by the connection loop; absent for requests that
/// did not come over TLS (tests calling the router directly).
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<User>);

/// The user a certificate names: CN is the user, each O a group.
pub fn user_from_certificate(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// Paths anyone may read, as Kubernetes' `system:public-info-viewer` allows.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/version/"
    ) || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// Compares without an early exit, so the token's prefix cannot be timed.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user behind the token `presented`, when it is the cluster token.
fn user_from_token(expected: Option<&str>, presented: &str) -> Option<User> {
    let expected = expected.filter(|t| !t.is_empty())?;
    constant_time_eq(expected.as_bytes(), presented.as_bytes()).then(|| User {
        name: "skiff:token".into(),
        groups: vec!["system:authenticated".into()],
    })
}

/// The authentication middleware.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let from_cert = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.clone());
    let bearer = req.headers().get(header::AUTHORIZATION).map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string())
    });
    let presented = match bearer {
        None => None,
        Some(None) => Some(None),
        Some(Some(token)) => match user_from_token(state.token(), &token) {
            Some(user) => Some(Some(user)),
            None => Some(crate::satoken::authenticate(&state, &token).await),
        },
    };
    let user = match (from_cert, presented) {
        (Some(user), _) => Some(user),
        (None, Some(Some(user))) => Some(user),
        // Credentials that do not authenticate are refused even on open
        // paths, as Kubernetes does.
        (None, Some(None)) => return ApiError::Unauthorized.into_response(),
        (None, None) => None,
    };
    match user {
        Some(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None if is_open(req.uri().path()) => next.run(req).await,
        None => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_token_authenticates() {
        let cases: &[(&str, Option<&str>, &str, bool)] = &[
            ("matching", Some("s3cret"), "s3cret", true),
            ("different", Some("s3cret"), "s3creT", false),
            ("prefix", Some("s3cret"), "s3c", false),
            ("no token configured", None, "", false),
            ("empty token configured", Some(""), "", false),
        ];
        for (name, expected, presented, ok) in cases {
            assert_eq!(
                user_from_token(*expected, presented).is_some(),
                *ok,
                "{name}"
            );
        }
    }

    #[test]
    fn health_and_version_paths_are_open_and_the_api_is_not() {
        for (path, open) in [
            ("/healthz", true),
            ("/readyz", true),
            ("/livez/ping", true),
            ("/version", true),
            ("/api", false),
            ("/api/v1/namespaces", false),
            ("/versionx", false),
        ] {
            assert_eq!(is_open(path), open, "{path}");
        }
    }
}
