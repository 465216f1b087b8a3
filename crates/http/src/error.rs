//! The HTTP edge of errors: one exhaustive mapping from [`ErrorKind`] to status and
//! `errcode`, and the JSON body every error gets (spec: "Standard error response").

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use bytes::BytesMut;
use ganglion_core::{Error, ErrorKind};
use http::StatusCode;
use ruma::api::OutgoingResponseExt;
use serde_json::{Value, json};

/// A handler result.
pub type ApiResult<T> = Result<T, ApiError>;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The internal detail of a 500, stored in response extensions for the trace layer to log
/// once; never sent to the client.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

/// Status and errcode for each kind. Exhaustive on purpose: no catch-all arm.
pub fn status_and_code(kind: &ErrorKind) -> (StatusCode, &'static str) {
    use ErrorKind as K;
    match kind {
        K::Forbidden => (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
        K::UnknownToken { .. } => (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
        K::MissingToken => (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"),
        K::UserLocked => (StatusCode::UNAUTHORIZED, "M_USER_LOCKED"),
        K::UserSuspended => (StatusCode::FORBIDDEN, "M_USER_SUSPENDED"),
        K::BadJson => (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        K::NotJson => (StatusCode::BAD_REQUEST, "M_NOT_JSON"),
        K::NotFound => (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
        K::LimitExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
        K::Unrecognized => (StatusCode::NOT_FOUND, "M_UNRECOGNIZED"),
        K::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED"),
        K::Conflict => (StatusCode::CONFLICT, "M_UNKNOWN"),
        K::Unknown => (StatusCode::BAD_REQUEST, "M_UNKNOWN"),
        K::Unauthorized => (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"),
        K::UserDeactivated => (StatusCode::FORBIDDEN, "M_USER_DEACTIVATED"),
        K::UserInUse => (StatusCode::BAD_REQUEST, "M_USER_IN_USE"),
        K::InvalidUsername => (StatusCode::BAD_REQUEST, "M_INVALID_USERNAME"),
        K::RoomInUse => (StatusCode::BAD_REQUEST, "M_ROOM_IN_USE"),
        K::InvalidRoomState => (StatusCode::BAD_REQUEST, "M_INVALID_ROOM_STATE"),
        K::UnsupportedRoomVersion => (StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION"),
        K::IncompatibleRoomVersion => (StatusCode::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION"),
        K::BadState => (StatusCode::BAD_REQUEST, "M_BAD_STATE"),
        K::GuestAccessForbidden => (StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"),
        K::MissingParam => (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
        K::InvalidParam => (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        K::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
        K::Exclusive => (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"),
        K::WeakPassword => (StatusCode::BAD_REQUEST, "M_WEAK_PASSWORD"),
        K::CannotLeaveServerNoticeRoom => {
            (StatusCode::FORBIDDEN, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")
        }
        K::NotYetUploaded => (StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED"),
        K::ThreepidDenied => (StatusCode::FORBIDDEN, "M_THREEPID_DENIED"),
        K::InvalidSignature => (StatusCode::UNAUTHORIZED, "M_INVALID_SIGNATURE"),
        K::BadSignature => (StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE"),
        K::WrongRoomKeysVersion { .. } => (StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION"),
        K::UiaRequired(_) => (StatusCode::UNAUTHORIZED, "M_FORBIDDEN"),
        K::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
        K::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN"),
    }
}

/// The JSON body of an error.
pub fn error_body(e: &Error) -> Value {
    let (_, code) = status_and_code(&e.kind);
    match &e.kind {
        ErrorKind::UiaRequired(body) => (**body).clone(),
        ErrorKind::Internal => json!({ "errcode": code, "error": "Internal error" }),
        ErrorKind::UnknownToken { soft_logout } => {
            json!({ "errcode": code, "error": e.message, "soft_logout": soft_logout })
        }
        ErrorKind::WrongRoomKeysVersion { current_version } => {
            json!({ "errcode": code, "error": e.message, "current_version": current_version })
        }
        ErrorKind::LimitExceeded { retry_after } => {
            let mut body = json!({ "errcode": code, "error": e.message });
            if let Some(d) = retry_after {
                body["retry_after_ms"] = json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            }
            body
        }
        _ => json!({ "errcode": code, "error": e.message }),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = status_and_code(&self.0.kind);
        let mut resp = (status, Json(error_body(&self.0))).into_response();
        if let ErrorKind::LimitExceeded {
            retry_after: Some(d),
        } = &self.0.kind
            && let Ok(v) = http::HeaderValue::from_str(&d.as_secs().max(1).to_string())
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        if matches!(self.0.kind, ErrorKind::Internal | ErrorKind::Unavailable) {
            resp.extensions_mut()
                .insert(InternalDetail(self.0.message.to_string()));
        }
        resp
    }
}

/// A ruma response on its way to the client.
#[derive(Debug)]
pub struct RumaResponse<R>(pub R);

impl<R: OutgoingResponseExt> IntoResponse for RumaResponse<R> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(resp) => resp
                .map(|b| axum::body::Body::from(b.freeze()))
                .into_response(),
            Err(e) => ApiError(Error::internal(format!(
                "response serialisation failed: {e}"
            )))
            .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_kind_maps_to_its_spec_status() {
        let cases = [
            (ErrorKind::Forbidden, 403, "M_FORBIDDEN"),
            (
                ErrorKind::UnknownToken { soft_logout: true },
                401,
                "M_UNKNOWN_TOKEN",
            ),
            (ErrorKind::MissingToken, 401, "M_MISSING_TOKEN"),
            (ErrorKind::BadJson, 400, "M_BAD_JSON"),
            (ErrorKind::NotJson, 400, "M_NOT_JSON"),
            (ErrorKind::NotFound, 404, "M_NOT_FOUND"),
            (
                ErrorKind::LimitExceeded { retry_after: None },
                429,
                "M_LIMIT_EXCEEDED",
            ),
            (ErrorKind::Unrecognized, 404, "M_UNRECOGNIZED"),
            (ErrorKind::MethodNotAllowed, 405, "M_UNRECOGNIZED"),
            (ErrorKind::UserInUse, 400, "M_USER_IN_USE"),
            (ErrorKind::RoomInUse, 400, "M_ROOM_IN_USE"),
            (ErrorKind::MissingParam, 400, "M_MISSING_PARAM"),
            (ErrorKind::InvalidParam, 400, "M_INVALID_PARAM"),
            (ErrorKind::TooLarge, 413, "M_TOO_LARGE"),
            (ErrorKind::InvalidSignature, 401, "M_INVALID_SIGNATURE"),
            (ErrorKind::BadSignature, 400, "M_INVALID_SIGNATURE"),
            (
                ErrorKind::WrongRoomKeysVersion {
                    current_version: "2".into(),
                },
                403,
                "M_WRONG_ROOM_KEYS_VERSION",
            ),
            (ErrorKind::Internal, 500, "M_UNKNOWN"),
            (ErrorKind::Unavailable, 503, "M_UNKNOWN"),
        ];
        for (kind, status, code) in cases {
            let (s, c) = status_and_code(&kind);
            assert_eq!((s.as_u16(), c), (status, code), "{kind:?}");
        }
    }

    #[test]
    fn bodies_carry_the_extra_fields() {
        let e = Error::new(ErrorKind::UnknownToken { soft_logout: true }, "expired");
        assert_eq!(error_body(&e)["soft_logout"], json!(true));
        let e = Error::new(
            ErrorKind::LimitExceeded {
                retry_after: Some(Duration::from_millis(1500)),
            },
            "slow down",
        );
        assert_eq!(error_body(&e)["retry_after_ms"], json!(1500));
        let e = Error::new(
            ErrorKind::WrongRoomKeysVersion {
                current_version: "2".into(),
            },
            "Wrong room_keys version",
        );
        assert_eq!(error_body(&e)["current_version"], json!("2"));
        assert_eq!(
            error_body(&e)["errcode"],
            json!("M_WRONG_ROOM_KEYS_VERSION")
        );
        let e = Error::internal("db exploded at row 7");
        assert_eq!(error_body(&e)["error"], json!("Internal error"));
    }
}
