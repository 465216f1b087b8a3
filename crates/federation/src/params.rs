//! Query strings of inbound federation requests, parsed into typed parameters with the
//! spec's errors: 400 `M_MISSING_PARAM` for a missing required one, 400
//! `M_INVALID_PARAM` for one that does not parse (axum's own rejection is plain text).

use axum::{
    extract::{Path, Query, rejection::PathRejection},
    http::Uri,
};
use ganglion_core::Error;
use serde::de::DeserializeOwned;

/// The request's query parameters as `T`.
pub(crate) fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, Error> {
    Query::<T>::try_from_uri(uri).map(|q| q.0).map_err(|e| {
        let text = e.body_text();
        if text.contains("missing field") {
            Error::missing_param(text)
        } else {
            Error::invalid_param(text)
        }
    })
}

/// A path parameter, or 400 `M_INVALID_PARAM` (say, for bytes that are not UTF-8).
pub(crate) fn path(p: Result<Path<String>, PathRejection>) -> Result<String, Error> {
    p.map(|Path(v)| v)
        .map_err(|e| Error::invalid_param(e.body_text()))
}

/// The values of one key of a query string, decoded, in order (`v` of `/backfill` and
/// `ver` of `make_join` repeat, which typed parsing does not take).
pub(crate) fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (ganglion_http::percent_decode(k) == key).then(|| ganglion_http::percent_decode(v))
        })
        .collect()
}

/// The room versions a `make_join` or `make_knock` request says its server supports
/// (`ver` repeats; none means version 1 only).
pub(crate) fn versions_of(query: Option<&str>) -> Vec<String> {
    let versions = query_values(query.unwrap_or_default(), "ver");
    if versions.is_empty() {
        vec!["1".to_owned()]
    } else {
        versions
    }
}

#[cfg(test)]
mod tests {
    use ganglion_core::ErrorKind;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct P {
        ts: i64,
        #[serde(default)]
        flag: bool,
    }

    fn parse(q: &str) -> Result<P, Error> {
        let uri: Uri = format!("/x?{q}").parse().unwrap_or_else(|e| panic!("{e}"));
        query(&uri)
    }

    #[test]
    fn repeated_query_values_decode() {
        let q = "v=%24a%3Ab&limit=5&v=%24c&x=1+2&v=%zz";
        assert_eq!(query_values(q, "v"), vec!["$a:b", "$c", "%zz"]);
        assert_eq!(query_values(q, "limit"), vec!["5"]);
        assert_eq!(query_values(q, "x"), vec!["1 2"]);
        assert!(query_values(q, "w").is_empty());
        assert_eq!(versions_of(Some("ver=10&ver=11")), vec!["10", "11"]);
        assert_eq!(versions_of(None), vec!["1"]);
    }

    #[test]
    fn errors_are_the_specs() {
        assert_eq!(
            parse("ts=5&flag=true").map(|p| (p.ts, p.flag)).ok(),
            Some((5, true))
        );
        assert_eq!(
            parse("flag=true").map_err(|e| e.kind).err(),
            Some(ErrorKind::MissingParam)
        );
        assert_eq!(
            parse("ts=x").map_err(|e| e.kind).err(),
            Some(ErrorKind::InvalidParam)
        );
        assert_eq!(
            parse("ts=1&flag=yes").map_err(|e| e.kind).err(),
            Some(ErrorKind::InvalidParam)
        );
    }
}
