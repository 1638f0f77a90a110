//! Every way a request or a session can fail, and what the peer is told.
//!
//! [`SessionError`] maps to a WebSocket close code, [`HttpError`] to an HTTP
//! status with a JSON body. Both mappings live here and nowhere else.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::websocket::{HandshakeError, WsError};

/// RFC 6455 close codes the server sends or records.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Recorded only: "no status code was present".
    pub const NO_STATUS: u16 = 1005;
    /// Recorded only: "the connection was closed without a Close frame".
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Application code: closed by an operator through the admin API
    /// (the default of `DELETE /api/sessions/{id}`).
    pub const KICKED: u16 = 4000;
    /// Application code: closed by `POST /api/cleanup` for being idle.
    pub const CLEANED_UP: u16 = 4001;

    /// Codes an operator may close a session with (the admin API, and a
    /// kick from another instance): 1000, 1001, 1008, and the 4000–4999
    /// private range.
    pub fn operator_may_use(code: u16) -> bool {
        matches!(code, NORMAL | GOING_AWAY | POLICY_VIOLATION) || (4000..=4999).contains(&code)
    }

    /// Closes that mean something went wrong, after which a session writes
    /// its flight recorder: a dropped connection, a protocol, payload,
    /// policy or size violation, a server error, an overloaded receiver.
    pub fn is_failure(code: u16) -> bool {
        matches!(
            code,
            ABNORMAL
                | PROTOCOL_ERROR
                | INVALID_PAYLOAD
                | POLICY_VIOLATION
                | MESSAGE_TOO_BIG
                | INTERNAL_ERROR
                | TRY_AGAIN_LATER
        )
    }

    /// Longest close reason RFC 6455 allows (a control frame's 125 bytes,
    /// less the code).
    pub const MAX_REASON_BYTES: usize = 123;
}

/// A failure that ends a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("message larger than {limit} bytes")]
    MessageTooBig {
        limit: usize,
        /// What the peer announced (or had sent when it went over).
        size: usize,
    },
    #[error("text frame is not valid UTF-8")]
    InvalidUtf8,
    #[error("WebSocket protocol violation: {0}")]
    Protocol(String),
    /// The peer went away without a Close frame (reset, EOF, broken pipe).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("connection error: {0}")]
    Transport(String),
}

impl SessionError {
    /// Classifies an error read from the socket.
    pub fn from_read(error: WsError) -> Self {
        match error {
            WsError::MessageTooBig { size, limit } => SessionError::MessageTooBig { limit, size },
            WsError::InvalidUtf8 => SessionError::InvalidUtf8,
            WsError::Protocol(reason) => SessionError::Protocol(reason.into()),
            lost if lost.is_connection_lost() => SessionError::ConnectionLost(lost.to_string()),
            other => SessionError::Transport(other.to_string()),
        }
    }

    /// The close code sent to the peer.
    pub fn close_code(&self) -> u16 {
        match self {
            SessionError::MessageTooBig { .. } => close_code::MESSAGE_TOO_BIG,
            SessionError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            SessionError::Protocol(_) => close_code::PROTOCOL_ERROR,
            SessionError::ConnectionLost(_) | SessionError::Transport(_) => close_code::ABNORMAL,
        }
    }

    /// The close reason sent to the peer (≤ 123 bytes by RFC 6455).
    pub fn close_reason(&self) -> &'static str {
        match self {
            SessionError::MessageTooBig { .. } => "message too big",
            SessionError::InvalidUtf8 => "invalid utf-8",
            SessionError::Protocol(_) => "protocol error",
            SessionError::ConnectionLost(_) => "connection lost without close frame",
            SessionError::Transport(_) => "connection error",
        }
    }
}

/// A failure answered over HTTP, before or instead of an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("server is at its limit of {limit} connections; retry later")]
    TooManyConnections { limit: usize },
    #[error("at most {limit} sessions {what}; close one or retry later")]
    TooManySessions { what: &'static str, limit: usize },
    /// At accept: the address holds `--max-sessions-per-ip` connections.
    #[error("at most {limit} connections from this address; close one or retry later")]
    TooManyConnectionsFromAddress { limit: usize },
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Unauthorized(#[from] crate::auth::AuthError),
    #[error("origin not allowed; see --allowed-origin")]
    OriginNotAllowed,
    #[error("this server does not answer to that Host name; see --allowed-host")]
    HostNotAllowed,
    #[error("the admin API is disabled: set WSTRACE_ADMIN_TOKEN to enable it")]
    AdminDisabled,
    #[error("the admin API needs `Authorization: Bearer <WSTRACE_ADMIN_TOKEN>`")]
    AdminUnauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// One at a time (a log search): retry shortly.
    #[error("{0}")]
    Busy(String),
    /// Cluster mode: Redis is unreachable or failed.
    #[error("{0}")]
    ClusterUnavailable(String),
    /// `--loki-url`: Loki did not answer the log search.
    #[error("{0}")]
    LogStoreUnavailable(String),
    /// `--max-debug-sessions` are already open.
    #[error("{0}; end one (DELETE /api/sessions/{{id}}/debug) or raise the limit")]
    TooManyDebugSessions(#[from] crate::sampling::DebugRefused),
    /// A request to a WebSocket endpoint that is not a WebSocket upgrade.
    #[error("not a websocket upgrade: {0}")]
    NotAnUpgrade(#[from] HandshakeError),
    /// The connection cannot be taken over (not HTTP/1.1).
    #[error("this connection cannot be upgraded to a websocket; use HTTP/1.1")]
    NotUpgradable,
    /// Admin content larger than a client message may be.
    #[error("content is {size} bytes; the limit is {limit} (--max-message-bytes)")]
    ContentTooLarge { size: usize, limit: usize },
    /// Refused by the HTTP layer itself (an unknown route, a wrong method,
    /// a body that is not JSON): rewritten into this shape by
    /// `http::json_errors`.
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::TooManyConnections { .. }
            | HttpError::ShuttingDown
            | HttpError::ClusterUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::LogStoreUnavailable(_) => StatusCode::BAD_GATEWAY,
            HttpError::Unauthorized(_) | HttpError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            HttpError::OriginNotAllowed | HttpError::AdminDisabled => StatusCode::FORBIDDEN,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
            HttpError::BadRequest(_) | HttpError::NotAnUpgrade(_) => StatusCode::BAD_REQUEST,
            HttpError::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            HttpError::ContentTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Rejected { status, .. } => *status,
            HttpError::Busy(_)
            | HttpError::TooManySessions { .. }
            | HttpError::TooManyConnectionsFromAddress { .. }
            | HttpError::TooManyDebugSessions(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            HttpError::TooManyConnections { .. }
            | HttpError::TooManyConnectionsFromAddress { .. } => "too_many_connections",
            HttpError::ShuttingDown => "shutting_down",
            HttpError::Unauthorized(e) => e.code(),
            HttpError::OriginNotAllowed => "origin_not_allowed",
            HttpError::HostNotAllowed => "host_not_allowed",
            HttpError::AdminDisabled => "admin_disabled",
            HttpError::AdminUnauthorized => "admin_unauthorized",
            HttpError::NotFound(_) => "not_found",
            HttpError::BadRequest(_) => "bad_request",
            HttpError::Busy(_) => "busy",
            HttpError::TooManySessions { .. } => "too_many_sessions",
            HttpError::ClusterUnavailable(_) => "cluster_unavailable",
            HttpError::LogStoreUnavailable(_) => "log_store_unavailable",
            HttpError::TooManyDebugSessions(_) => "too_many_debug_sessions",
            HttpError::NotAnUpgrade(_) => "not_a_websocket_upgrade",
            HttpError::NotUpgradable => "not_upgradable",
            HttpError::ContentTooLarge { .. } => "content_too_large",
            HttpError::Rejected { status, .. } => match *status {
                StatusCode::BAD_REQUEST => "bad_request",
                StatusCode::NOT_FOUND => "not_found",
                StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
                StatusCode::PAYLOAD_TOO_LARGE => "content_too_large",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_body",
                status if status.is_server_error() => "internal_error",
                _ => "rejected",
            },
        }
    }
}

impl HttpError {
    /// The body every error answer has.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "code": self.code(), "message": self.to_string() } })
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let HttpError::NotAnUpgrade(HandshakeError::UnsupportedVersion) = self {
            // RFC 6455 4.4: say which version this server speaks.
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_errors_map_to_rfc6455_codes() {
        assert_eq!(
            SessionError::MessageTooBig {
                limit: 1,
                size: 1 + 1
            }
            .close_code(),
            close_code::MESSAGE_TOO_BIG
        );
        assert_eq!(
            SessionError::InvalidUtf8.close_code(),
            close_code::INVALID_PAYLOAD
        );
        assert_eq!(
            SessionError::Protocol("x".into()).close_code(),
            close_code::PROTOCOL_ERROR
        );
        assert_eq!(
            SessionError::Transport("x".into()).close_code(),
            close_code::ABNORMAL
        );
        for e in [
            SessionError::MessageTooBig {
                limit: 1,
                size: 1 + 1,
            },
            SessionError::InvalidUtf8,
            SessionError::Protocol("x".into()),
        ] {
            assert!(e.close_reason().len() <= 123);
        }
    }

    #[test]
    fn read_errors_are_classified() {
        let cases = [
            (WsError::MessageTooBig { size: 10, limit: 5 }, 1009),
            (WsError::InvalidUtf8, 1007),
            (WsError::Protocol("reserved bits set"), 1002),
            (WsError::Truncated, 1006),
            (
                WsError::Io(std::io::ErrorKind::ConnectionReset.into()),
                1006,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(SessionError::from_read(error).close_code(), code);
        }
        assert!(matches!(
            SessionError::from_read(WsError::MessageTooBig { size: 10, limit: 5 }),
            SessionError::MessageTooBig { limit: 5, size: 10 }
        ));
    }

    #[test]
    fn a_request_that_is_not_an_upgrade_is_told_why() {
        let response = HttpError::NotAnUpgrade(HandshakeError::UnsupportedVersion).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
        assert_eq!(
            HttpError::NotUpgradable.into_response().status(),
            StatusCode::UPGRADE_REQUIRED
        );
    }

    #[test]
    fn http_errors_have_status_and_json_body() {
        let response = HttpError::TooManyConnections { limit: 3 }.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
