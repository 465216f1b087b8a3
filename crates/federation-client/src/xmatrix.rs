//! Request authentication (Server-Server API, "Request Authentication"): the
//! `Authorization: X-Matrix origin=…,destination=…,key=…,sig=…` header, signing outbound
//! requests and parsing and checking inbound ones.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    signatures::{Ed25519KeyPair, PublicKeyMap, PublicKeySet},
};

/// A parsed `X-Matrix` authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    /// The requesting server.
    pub origin: String,
    /// The server the request is for (optional before v1.3; required to match when given).
    pub destination: Option<String>,
    /// The key id the request was signed with, e.g. `ed25519:abc`.
    pub key: String,
    /// The unpadded base64 signature.
    pub sig: String,
}

/// Why a header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed X-Matrix authorization: {0}")]
pub struct Malformed(pub &'static str);

impl XMatrix {
    /// Parses the header value (`X-Matrix origin="a",key="ed25519:1",sig="…"`). Values may
    /// be quoted (with `\"` and `\\` escapes) or bare tokens; the scheme is
    /// case-insensitive; unknown parameters are ignored, as the spec asks.
    pub fn parse(header: &str) -> Result<XMatrix, Malformed> {
        let (scheme, rest) = header
            .trim()
            .split_once(char::is_whitespace)
            .ok_or(Malformed("no parameters"))?;
        if !scheme.eq_ignore_ascii_case("X-Matrix") {
            return Err(Malformed("not the X-Matrix scheme"));
        }
        let (mut origin, mut destination, mut key, mut sig) = (None, None, None, None);
        let mut chars = rest.trim().chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' {
                    break;
                }
                name.push(c);
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err(Malformed("parameter without a value"));
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => value.push(chars.next().ok_or(Malformed("bad escape"))?),
                        Some('"') => break,
                        Some(c) => value.push(c),
                        None => return Err(Malformed("unterminated quoted value")),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_owned();
            }
            match name.trim().to_ascii_lowercase().as_str() {
                "origin" => origin = Some(value),
                "destination" => destination = Some(value),
                "key" => key = Some(value),
                "sig" => sig = Some(value),
                _ => {}
            }
        }
        Ok(XMatrix {
            origin: origin.ok_or(Malformed("no origin"))?,
            destination,
            key: key.ok_or(Malformed("no key"))?,
            sig: sig.ok_or(Malformed("no sig"))?,
        })
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = format!("X-Matrix origin=\"{}\"", q(&self.origin));
        if let Some(d) = &self.destination {
            out.push_str(&format!(",destination=\"{}\"", q(d)));
        }
        out.push_str(&format!(
            ",key=\"{}\",sig=\"{}\"",
            q(&self.key),
            q(&self.sig)
        ));
        out
    }
}

/// The JSON object a request signature covers.
pub fn request_object(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<CanonicalJsonValue>,
) -> CanonicalJsonObject {
    let mut obj = CanonicalJsonObject::new();
    obj.insert(
        "method".into(),
        CanonicalJsonValue::String(method.to_owned()),
    );
    obj.insert("uri".into(), CanonicalJsonValue::String(uri.to_owned()));
    obj.insert(
        "origin".into(),
        CanonicalJsonValue::String(origin.to_owned()),
    );
    obj.insert(
        "destination".into(),
        CanonicalJsonValue::String(destination.to_owned()),
    );
    if let Some(c) = content {
        obj.insert("content".into(), c);
    }
    obj
}

/// Signs a request: returns the `Authorization` header value.
pub fn sign(
    pair: &Ed25519KeyPair,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<CanonicalJsonValue>,
) -> Result<String, ruma::signatures::JsonError> {
    use ruma::signatures::KeyPair;
    let obj = request_object(method, uri, origin, destination, content);
    let json = ruma::signatures::to_canonical_json_string_for_signing(&obj)?;
    let sig = pair.sign(json.as_bytes());
    Ok(XMatrix {
        origin: origin.to_owned(),
        destination: Some(destination.to_owned()),
        key: sig.id(),
        sig: sig.base64(),
    }
    .to_header())
}

/// Checks an inbound request's signature with the origin's public key (unpadded base64).
pub fn verify(
    auth: &XMatrix,
    public_key: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<CanonicalJsonValue>,
) -> bool {
    let mut obj = request_object(method, uri, &auth.origin, destination, content);
    let mut sigs = CanonicalJsonObject::new();
    sigs.insert(
        auth.key.clone(),
        CanonicalJsonValue::String(auth.sig.clone()),
    );
    let mut by_server = CanonicalJsonObject::new();
    by_server.insert(auth.origin.clone(), CanonicalJsonValue::Object(sigs));
    obj.insert("signatures".into(), CanonicalJsonValue::Object(by_server));
    let Ok(key) = ruma::serde::Base64::parse(public_key) else {
        return false;
    };
    let mut set = PublicKeySet::new();
    set.insert(auth.key.clone(), key);
    let mut map = PublicKeyMap::new();
    map.insert(auth.origin.clone(), set);
    ruma::signatures::verify_json(&map, &obj).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_bare_and_escaped_values() {
        let h = r#"X-Matrix origin="origin.example.com",destination=dest.example.com, key="ed25519:key1",sig="AB\"C""#;
        let x = XMatrix::parse(h).expect("parses");
        assert_eq!(x.origin, "origin.example.com");
        assert_eq!(x.destination.as_deref(), Some("dest.example.com"));
        assert_eq!(x.key, "ed25519:key1");
        assert_eq!(x.sig, "AB\"C");
        assert_eq!(XMatrix::parse(&x.to_header()), Ok(x));
        let lower = XMatrix::parse("x-matrix origin=a,key=ed25519:1,sig=s,extra=ignored")
            .expect("scheme is case-insensitive");
        assert_eq!(lower.destination, None);
    }

    #[test]
    fn refuses_what_is_not_a_complete_header() {
        assert!(XMatrix::parse("Bearer abc").is_err());
        assert!(XMatrix::parse("X-Matrix origin=a,key=ed25519:1").is_err());
        assert!(XMatrix::parse("X-Matrix origin=\"a,key=k,sig=s").is_err());
        assert!(XMatrix::parse("X-Matrix").is_err());
        assert!(XMatrix::parse("X-Matrix origin").is_err());
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, "a1".into()).expect("pair");
        let public = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(
            pair.public_key().to_vec(),
        )
        .encode();
        let body = CanonicalJsonValue::Object(
            [("k".to_owned(), CanonicalJsonValue::String("v".into()))].into(),
        );
        let header = sign(
            &pair,
            "origin.test",
            "dest.test",
            "PUT",
            "/_matrix/federation/v1/send/1",
            Some(body.clone()),
        )
        .expect("signs");
        let x = XMatrix::parse(&header).expect("parses");
        assert_eq!(x.key, "ed25519:a1");
        let ok = |dest: &str, method: &str, uri: &str, c: Option<CanonicalJsonValue>| {
            verify(&x, &public, dest, method, uri, c)
        };
        assert!(ok(
            "dest.test",
            "PUT",
            "/_matrix/federation/v1/send/1",
            Some(body.clone())
        ));
        assert!(!ok(
            "other.test",
            "PUT",
            "/_matrix/federation/v1/send/1",
            Some(body.clone())
        ));
        assert!(!ok(
            "dest.test",
            "GET",
            "/_matrix/federation/v1/send/1",
            Some(body.clone())
        ));
        assert!(!ok(
            "dest.test",
            "PUT",
            "/_matrix/federation/v1/send/2",
            Some(body)
        ));
        assert!(!ok(
            "dest.test",
            "PUT",
            "/_matrix/federation/v1/send/1",
            None
        ));
    }
}
