//! The relay's errors as viewers see them: the one place where failures become HTTP statuses and JSON bodies.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::events::webhook::Refusal;

/// Everything a viewer request can fail with. Cloneable because one failed upstream fill answers every viewer
/// that was waiting on it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("call {0} does not exist")]
    CallNotFound(String),
    #[error("call {cid} is not broadcasting")]
    NotBroadcasting { cid: String, retry_after: Duration },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    WrongApp(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TokenRequired(String),
    #[error("{0}")]
    TokenExpired(String),
    #[error("{0}")]
    TokenInvalid(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("request path is longer than {0} bytes")]
    UriTooLong(usize),
    #[error("{0}")]
    UpstreamError(String),
    #[error("upstream sent an invalid playlist: {0}")]
    BadUpstreamPlaylist(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    NotReady(String),
    #[error("call {cid} has as many viewers as this relay accepts")]
    ViewerLimit { cid: String, retry_after: Duration },
}

impl RelayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::CallNotFound(_) | Self::NotBroadcasting { .. } | Self::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::InvalidSignature(_)
            | Self::WrongApp(_)
            | Self::TokenRequired(_)
            | Self::TokenExpired(_)
            | Self::TokenInvalid(_) => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UpstreamError(_) | Self::BadUpstreamPlaylist(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::NotReady(_) | Self::ViewerLimit { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::CallNotFound(_) => "call_not_found",
            Self::NotBroadcasting { .. } => "not_broadcasting",
            Self::NotFound(_) => "not_found",
            Self::Forbidden(_) => "forbidden",
            Self::InvalidSignature(_) => "invalid_signature",
            Self::WrongApp(_) => "wrong_app",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::TokenRequired(_) => "token_required",
            Self::TokenExpired(_) => "token_expired",
            Self::TokenInvalid(_) => "token_invalid",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UriTooLong(_) => "uri_too_long",
            Self::UpstreamError(_) => "upstream_error",
            Self::BadUpstreamPlaylist(_) => "bad_upstream_playlist",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::NotReady(_) => "not_ready",
            Self::ViewerLimit { .. } => "viewer_limit",
        }
    }

    /// Whether the failure is the viewer's (logged quietly) rather than upstream's or ours.
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }
}

impl From<Refusal> for RelayError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            Refusal::OtherApp => Self::WrongApp(message),
            Refusal::UnsupportedEncoding(_) => Self::UnsupportedMediaType(message),
            Refusal::TooLarge { limit } => Self::PayloadTooLarge(limit),
            Refusal::BadGzip(_) => Self::BadRequest(message),
            Refusal::BadSignature => Self::InvalidSignature(message),
        }
    }
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        if self.is_client_error() {
            tracing::debug!(code = self.code(), error = %self, "request refused");
        } else {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        }
        let body = serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}});
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        // Errors must not stick in a CDN longer than the condition lasts.
        let cache_control = match &self {
            Self::NotFound(_) | Self::CallNotFound(_) => "public, max-age=1",
            _ => "no-store",
        };
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        if let Self::NotBroadcasting { retry_after, .. } | Self::ViewerLimit { retry_after, .. } =
            &self
        {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_broadcasting_says_when_to_retry() {
        let response = RelayError::NotBroadcasting {
            cid: "livestream:x".into(),
            retry_after: Duration::from_secs(3),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn a_full_call_says_when_to_retry() {
        let response = RelayError::ViewerLimit {
            cid: "livestream:x".into(),
            retry_after: Duration::from_millis(12_500),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "13");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
