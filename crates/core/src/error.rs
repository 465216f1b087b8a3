//! The errors a client or remote server can be told about.
//!
//! Every failure that reaches the HTTP edge is an [`Error`]: a spec error kind plus a
//! human-readable message. The edge (crate `http`) maps each kind to its status and
//! `errcode` in one exhaustive match.

use std::{borrow::Cow, time::Duration};

/// Shorthand for results whose error is a client-visible [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The spec's error codes (Client-Server API "Standard error response" and the
/// per-endpoint codes), plus the internal fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// `M_FORBIDDEN` (403).
    Forbidden,
    /// `M_UNKNOWN_TOKEN` (401); `soft_logout` tells the client it may log in again to the same device.
    UnknownToken {
        /// Whether the client should keep its device and re-authenticate.
        soft_logout: bool,
    },
    /// `M_MISSING_TOKEN` (401).
    MissingToken,
    /// `M_USER_LOCKED` (401).
    UserLocked,
    /// `M_USER_SUSPENDED` (403).
    UserSuspended,
    /// `M_BAD_JSON` (400): JSON that parses but does not fit the expected shape.
    BadJson,
    /// `M_NOT_JSON` (400): the body is not JSON at all.
    NotJson,
    /// `M_NOT_FOUND` (404).
    NotFound,
    /// `M_LIMIT_EXCEEDED` (429).
    LimitExceeded {
        /// How long the client should wait.
        retry_after: Option<Duration>,
    },
    /// `M_UNRECOGNIZED` (404): no such endpoint.
    Unrecognized,
    /// `M_UNKNOWN` (409): the resource already exists (e.g. an alias).
    Conflict,
    /// `M_UNRECOGNIZED` (405): the endpoint exists but not with this method.
    MethodNotAllowed,
    /// `M_UNKNOWN` (400): a client error with no more specific code.
    Unknown,
    /// `M_UNAUTHORIZED` (401): wrong credentials.
    Unauthorized,
    /// `M_USER_DEACTIVATED` (403).
    UserDeactivated,
    /// `M_USER_IN_USE` (400).
    UserInUse,
    /// `M_INVALID_USERNAME` (400).
    InvalidUsername,
    /// `M_ROOM_IN_USE` (400).
    RoomInUse,
    /// `M_INVALID_ROOM_STATE` (400).
    InvalidRoomState,
    /// `M_UNSUPPORTED_ROOM_VERSION` (400).
    UnsupportedRoomVersion,
    /// `M_INCOMPATIBLE_ROOM_VERSION` (400).
    IncompatibleRoomVersion,
    /// `M_BAD_STATE` (400).
    BadState,
    /// `M_GUEST_ACCESS_FORBIDDEN` (403).
    GuestAccessForbidden,
    /// `M_MISSING_PARAM` (400).
    MissingParam,
    /// `M_INVALID_PARAM` (400).
    InvalidParam,
    /// `M_TOO_LARGE` (413).
    TooLarge,
    /// `M_EXCLUSIVE` (400).
    Exclusive,
    /// `M_WEAK_PASSWORD` (400).
    WeakPassword,
    /// `M_CANNOT_LEAVE_SERVER_NOTICE_ROOM` (403).
    CannotLeaveServerNoticeRoom,
    /// `M_NOT_YET_UPLOADED` (504).
    NotYetUploaded,
    /// `M_THREEPID_DENIED` (403).
    ThreepidDenied,
    /// `M_UNSUPPORTED_ROOM_VERSION` would not fit; the spec's `M_INVALID_SIGNATURE` (401).
    InvalidSignature,
    /// `M_INVALID_SIGNATURE` (400): a signed object a client uploaded (a cross-signing key)
    /// does not carry a valid signature.
    BadSignature,
    /// `M_WRONG_ROOM_KEYS_VERSION` (403): a key backup write named a version that is not
    /// the current one (spec: "Server-side key backups").
    WrongRoomKeysVersion {
        /// The user's current backup version, sent back as `current_version`.
        current_version: String,
    },
    /// The user-interactive authentication response (401 with flows), carried as JSON.
    UiaRequired(Box<serde_json::Value>),
    /// An internal fault: 500 `M_UNKNOWN` "Internal error". The message is logged, never sent.
    Internal,
    /// A dependency (database, bus) is unavailable: 503 `M_UNKNOWN`.
    Unavailable,
}

/// A client-visible failure: the kind decides status and errcode, the message is for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct Error {
    /// What went wrong, in the spec's words.
    pub kind: ErrorKind,
    /// A human-readable explanation. For [`ErrorKind::Internal`] this is logged, not sent.
    pub message: Cow<'static, str>,
}

impl Error {
    /// An error of the given kind with a message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }
    /// `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::BadJson, message)
    }
    /// `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidParam, message)
    }
    /// `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::MissingParam, message)
    }
    /// `M_UNKNOWN` with status 400.
    pub fn unknown(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unknown, message)
    }
    /// An internal fault; `detail` is logged and never shown to the client.
    pub fn internal(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, detail)
    }
}
