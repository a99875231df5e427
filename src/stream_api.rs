//! A client for the parts of Stream's Video REST API the relay uses (see `stream-api.md`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use crate::call::CallId;
use crate::error::RelayError;

/// What the relay needs from a call's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallState {
    pub broadcasting: bool,
    /// Stream's playlist URL while broadcasting (it may be missing or empty even then).
    pub playlist_url: Option<Url>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    #[error("Stream has no call {0}")]
    CallNotFound(String),
    #[error("Stream refused the credentials ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("Stream rate-limited the request; retry after {retry_after:?}")]
    RateLimited { retry_after: Option<Duration> },
    #[error("Stream answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("Stream API did not answer in time")]
    Timeout,
    #[error("Stream API request failed: {0}")]
    Transport(String),
    #[error("Stream API answered something unexpected: {0}")]
    BadResponse(String),
}

impl From<ApiError> for RelayError {
    fn from(error: ApiError) -> Self {
        match &error {
            ApiError::CallNotFound(cid) => RelayError::CallNotFound(cid.clone()),
            ApiError::Timeout => RelayError::UpstreamTimeout(error.to_string()),
            _ => RelayError::UpstreamError(error.to_string()),
        }
    }
}

/// Stream's error body: `{"code": 16, "message": "...", "StatusCode": 404, ...}`.
#[derive(Deserialize)]
struct StreamErrorBody {
    message: Option<String>,
}

#[derive(Deserialize)]
struct GetCallResponse {
    call: CallBody,
}

#[derive(Deserialize)]
struct CallBody {
    #[serde(default)]
    egress: Option<EgressBody>,
}

#[derive(Deserialize)]
struct EgressBody {
    #[serde(default)]
    broadcasting: bool,
    #[serde(default)]
    hls: Option<HlsBody>,
}

#[derive(Deserialize)]
struct HlsBody {
    #[serde(default)]
    playlist_url: Option<String>,
}

/// Reads a get-call response body. Unknown fields are ignored; an unusable playlist URL counts as none.
pub fn parse_call_state(body: &[u8]) -> Result<CallState, ApiError> {
    let response: GetCallResponse =
        serde_json::from_slice(body).map_err(|e| ApiError::BadResponse(e.to_string()))?;
    let egress = response.call.egress;
    let broadcasting = egress.as_ref().is_some_and(|e| e.broadcasting);
    let playlist_url = egress
        .and_then(|e| e.hls)
        .and_then(|hls| hls.playlist_url)
        .filter(|url| !url.is_empty())
        .and_then(|url| Url::parse(&url).ok())
        .filter(|url| matches!(url.scheme(), "http" | "https"));
    Ok(CallState {
        broadcasting,
        playlist_url,
    })
}

/// Signs tokens and calls the API.
#[derive(Clone)]
pub struct StreamApi {
    http: reqwest::Client,
    base_url: Url,
    api_key: String,
    secret: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for StreamApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamApi")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A server-side token: `{"server": true}`, which Stream lets do anything in the app.
pub fn server_token(secret: &str) -> String {
    sign(
        &server_claims(),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

fn server_claims() -> serde_json::Value {
    serde_json::json!({"server": true, "iat": unix_now()})
}

fn sign(claims: &serde_json::Value, key: &jsonwebtoken::EncodingKey) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, key)
        .expect("HS256 signing of a JSON object cannot fail")
}

impl StreamApi {
    pub fn new(base_url: &str, api_key: &str, api_secret: &str, timeout: Duration) -> Self {
        let mut base_url = Url::parse(base_url).expect("stream.base_url is validated at start-up");
        if !base_url.path().ends_with('/') {
            base_url.set_path(&format!("{}/", base_url.path()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("hls-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with a timeout and user agent always builds");
        Self {
            http,
            base_url,
            api_key: api_key.to_owned(),
            secret: jsonwebtoken::EncodingKey::from_secret(api_secret.as_bytes()),
        }
    }

    fn call_url(&self, call: &CallId, action: Option<&str>) -> Url {
        let mut path = format!("api/v2/video/call/{}/{}", call.kind(), call.id());
        if let Some(action) = action {
            path.push('/');
            path.push_str(action);
        }
        let mut url = self.base_url.join(&path).expect("call ids are URL-safe");
        url.query_pairs_mut().append_pair("api_key", &self.api_key);
        url
    }

    fn request(&self, method: reqwest::Method, url: Url, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("Authorization", token)
            .header("stream-auth-type", "jwt")
            .header(
                "X-Stream-Client",
                concat!("hls-relay-", env!("CARGO_PKG_VERSION")),
            )
    }

    /// GET call: is it broadcasting, and where is its playlist?
    pub async fn get_call(&self, call: &CallId) -> Result<CallState, ApiError> {
        let token = sign(&server_claims(), &self.secret);
        let request = self.request(reqwest::Method::GET, self.call_url(call, None), &token);
        let body = send(request, call).await?;
        parse_call_state(&body)
    }
}

async fn send(request: reqwest::RequestBuilder, call: &CallId) -> Result<bytes::Bytes, ApiError> {
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            ApiError::Timeout
        } else {
            ApiError::Transport(e.to_string())
        }
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("X-RateLimit-Reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|reset| Duration::from_secs(reset.saturating_sub(unix_now())));
    let body = response.bytes().await.map_err(|e| {
        if e.is_timeout() {
            ApiError::Timeout
        } else {
            ApiError::Transport(e.to_string())
        }
    })?;
    if status.is_success() {
        return Ok(body);
    }
    let message = serde_json::from_slice::<StreamErrorBody>(&body)
        .ok()
        .and_then(|b| b.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    Err(match status {
        StatusCode::NOT_FOUND => ApiError::CallNotFound(call.to_string()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::Unauthorized {
            status: status.as_u16(),
            message,
        },
        StatusCode::TOO_MANY_REQUESTS => ApiError::RateLimited { retry_after },
        _ => ApiError::Status {
            status: status.as_u16(),
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_broadcasting_state_and_ignores_unknown_fields() {
        let body = br#"{"call":{"cid":"livestream:abc","type":"livestream","id":"abc","backstage":false,
            "egress":{"broadcasting":true,"hls":{"playlist_url":"https://cdn.example.com/x/master.m3u8"},"rtmps":[]},
            "extra":{"a":1}},"members":[],"duration":"1.2ms"}"#;
        let state = parse_call_state(body).unwrap();
        assert!(state.broadcasting);
        assert_eq!(
            state.playlist_url.unwrap().as_str(),
            "https://cdn.example.com/x/master.m3u8"
        );
    }

    #[test]
    fn missing_null_or_empty_hls_means_no_playlist() {
        for body in [
            r#"{"call":{"egress":{"broadcasting":false,"hls":null}}}"#,
            r#"{"call":{"egress":{"broadcasting":true,"hls":{"playlist_url":""}}}}"#,
            r#"{"call":{"egress":{"broadcasting":false}}}"#,
            r#"{"call":{}}"#,
        ] {
            assert_eq!(
                parse_call_state(body.as_bytes()).unwrap().playlist_url,
                None,
                "{body}"
            );
        }
        assert!(parse_call_state(b"<html>").is_err());
    }

    #[test]
    fn server_tokens_are_hs256_jwts_with_the_server_claim() {
        let token = server_token("secret");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret"),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims["server"], true);
    }
}
