//! Extractors: a request body and path become a ruma request; the access token the auth
//! middleware resolved becomes an [`Identity`].

use std::net::IpAddr;

use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use ganglion_core::{Error, ErrorKind};
use ruma::{
    OwnedDeviceId, OwnedUserId,
    api::{
        IncomingRequest, IncomingRequestExt,
        error::{DeserializationError, FromHttpRequestError},
    },
};

use crate::ApiError;

/// Who made an authenticated request.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device the access token belongs to.
    pub device_id: OwnedDeviceId,
    /// Server admin.
    pub is_admin: bool,
    /// The access token itself (for logout).
    pub access_token: String,
}

/// What the auth middleware found, stored in request extensions.
#[derive(Debug, Clone)]
pub enum AuthState {
    /// No token was sent.
    Anonymous,
    /// A valid token.
    User(Identity),
    /// A token that is unknown or expired (`soft_logout` for expired ones).
    Invalid {
        /// Whether the token merely expired.
        soft_logout: bool,
    },
}

/// The largest body this route accepts, in bytes (set by the server's layers).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The client's address, as the server determined it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// An unauthenticated ruma request.
#[derive(Debug)]
pub struct Ruma<T>(pub T);

/// An authenticated ruma request: the caller is known, so handlers never ask "who?".
#[derive(Debug)]
pub struct Authed<T> {
    /// The parsed request.
    pub body: T,
    /// Who sent it.
    pub identity: Identity,
}

impl<T> Authed<T> {
    /// The caller.
    pub fn user(&self) -> &ruma::UserId {
        &self.identity.user_id
    }
    /// The caller's device.
    pub fn device(&self) -> &ruma::DeviceId {
        &self.identity.device_id
    }
    /// Refuses a request about another user (`M_FORBIDDEN`).
    pub fn ensure_self(&self, user_id: &ruma::UserId) -> Result<(), ApiError> {
        if user_id == self.identity.user_id {
            Ok(())
        } else {
            Err(Error::forbidden("you cannot act for another user").into())
        }
    }
}

/// Maps ruma's request parse failures to the spec's codes.
pub fn parse_error(e: FromHttpRequestError) -> Error {
    match e {
        FromHttpRequestError::MethodMismatch { .. } => {
            Error::new(ErrorKind::MethodNotAllowed, "method not allowed")
        }
        FromHttpRequestError::Deserialization(d) => match d {
            DeserializationError::Json(j) if j.is_syntax() || j.is_eof() => {
                Error::new(ErrorKind::NotJson, format!("content not JSON: {j}"))
            }
            DeserializationError::Json(j) => Error::bad_json(j.to_string()),
            DeserializationError::Utf8(u) => Error::new(ErrorKind::NotJson, u.to_string()),
            DeserializationError::Query(q) => {
                let msg = q.to_string();
                if msg.contains("missing field") {
                    Error::missing_param(msg)
                } else {
                    Error::invalid_param(msg)
                }
            }
            DeserializationError::Ident(i) => Error::invalid_param(i.to_string()),
            other => Error::bad_json(other.to_string()),
        },
        other => Error::bad_json(other.to_string()),
    }
}

/// Default body limit when the server set none.
const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

async fn parse<T: IncomingRequest>(req: Request) -> Result<T, ApiError> {
    let (mut parts, body) = req.into_parts();
    let limit = parts
        .extensions
        .get::<BodyLimit>()
        .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
    let path = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| Error::invalid_param(format!("bad path parameter: {e}")))?;
    let args: Vec<&str> = path.iter().map(|(_, v)| v).collect();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Error::new(
            ErrorKind::TooLarge,
            format!("request body over {limit} bytes"),
        )
    })?;
    // Clients (matrix-nio's join, Synapse's own tests) send POSTs with no body at all;
    // Synapse reads that as `{}`, and so do we.
    let body: &[u8] = if bytes.is_empty() && parts.method != http::Method::GET {
        b"{}"
    } else {
        &bytes[..]
    };
    let req = http::Request::from_parts(parts, body);
    T::try_from_http_request(req, &args).map_err(|e| parse_error(e).into())
}

impl<T, S> FromRequest<S> for Ruma<T>
where
    T: IncomingRequest + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        parse::<T>(req).await.map(Ruma)
    }
}

impl<T, S> FromRequest<S> for Authed<T>
where
    T: IncomingRequest + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        // Authentication comes before parsing: a bad token is a 401 whatever the body.
        let identity = match req.extensions().get::<AuthState>() {
            Some(AuthState::User(id)) => id.clone(),
            Some(AuthState::Invalid { soft_logout }) => {
                return Err(Error::new(
                    ErrorKind::UnknownToken {
                        soft_logout: *soft_logout,
                    },
                    "unknown or expired access token",
                )
                .into());
            }
            Some(AuthState::Anonymous) | None => {
                return Err(Error::new(ErrorKind::MissingToken, "missing access token").into());
            }
        };
        let body = parse::<T>(req).await?;
        Ok(Authed { body, identity })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = ApiError;

    /// For hand-written routes with no ruma type: the caller, or the spec's 401.
    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<AuthState>() {
            Some(AuthState::User(id)) => Ok(id.clone()),
            Some(AuthState::Invalid { soft_logout }) => Err(Error::new(
                ErrorKind::UnknownToken {
                    soft_logout: *soft_logout,
                },
                "unknown or expired access token",
            )
            .into()),
            Some(AuthState::Anonymous) | None => {
                Err(Error::new(ErrorKind::MissingToken, "missing access token").into())
            }
        }
    }
}
