//! The auth middleware: turns the access token a request carries into the
//! [`AuthState`] the `Authed` extractor reads.

use std::collections::HashMap;

use axum::{
    extract::{Query, Request, State},
    http::{HeaderMap, Uri, header::AUTHORIZATION},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ganglion_http::{ApiError, AuthState};

use crate::Accounts;

/// Resolves the request's access token and stores the resulting [`AuthState`] in its
/// extensions: `Anonymous` when it carries none. Spec: "Using access tokens" — the token
/// comes from `Authorization: Bearer <token>` or, deprecated but still allowed, the
/// `access_token` query parameter. A malformed `Authorization` header, several of them, or
/// a header and a query parameter together count as no token (Synapse answers those with
/// `M_MISSING_TOKEN`, which is what `Authed` then says). A database failure answers 503.
///
/// Apply with `axum::middleware::from_fn_with_state(accounts, auth_middleware)`.
pub async fn auth_middleware(
    State(accounts): State<Accounts>,
    mut req: Request,
    next: Next,
) -> Response {
    let state = match access_token(req.headers(), req.uri()) {
        None => AuthState::Anonymous,
        Some(token) => match accounts.resolve_token(&token).await {
            Ok(state) => state,
            Err(e) => return ApiError(e).into_response(),
        },
    };
    if let AuthState::User(identity) = &state {
        let span = tracing::Span::current();
        span.record("user_id", tracing::field::display(&identity.user_id));
        span.record("device_id", tracing::field::display(&identity.device_id));
    }
    req.extensions_mut().insert(state);
    next.run(req).await
}

/// The access token a request carries, if exactly one is given in an allowed form.
fn access_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let query_token = Query::<HashMap<String, String>>::try_from_uri(uri)
        .ok()
        .and_then(|Query(mut q)| q.remove("access_token"));
    let mut auth_headers = headers.get_all(AUTHORIZATION).iter();
    match (auth_headers.next(), auth_headers.next(), query_token) {
        (None, _, token) => token,
        (Some(header), None, None) => {
            let value = header.to_str().ok()?;
            let (scheme, token) = value.split_once(' ')?;
            (scheme == "Bearer" && !token.is_empty() && !token.contains(' '))
                .then(|| token.to_owned())
        }
        // Two headers, or a header and a query parameter: refuse to guess.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn token(header: Option<&str>, uri: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert(
                AUTHORIZATION,
                HeaderValue::from_str(h).expect("valid header"),
            );
        }
        access_token(&headers, &uri.parse().expect("valid uri"))
    }

    #[test]
    fn finds_the_token_where_the_spec_puts_it() {
        assert_eq!(token(Some("Bearer gl_abc"), "/x"), Some("gl_abc".into()));
        assert_eq!(
            token(None, "/x?access_token=gl_abc&y=1"),
            Some("gl_abc".into())
        );
        assert_eq!(
            token(None, "/x?access_token=gl%5Fabc"),
            Some("gl_abc".into())
        );
        assert_eq!(token(None, "/x"), None);
    }

    #[test]
    fn refuses_ambiguous_or_malformed_tokens() {
        assert_eq!(token(Some("Basic abc"), "/x"), None);
        assert_eq!(token(Some("Bearer"), "/x"), None);
        assert_eq!(token(Some("Bearer a b"), "/x"), None);
        assert_eq!(token(Some("Bearer gl_a"), "/x?access_token=gl_b"), None);
    }
}
