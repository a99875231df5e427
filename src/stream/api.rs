//! A client for the parts of Stream's Video REST API the relay uses (see `stream-api.md`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use crate::error::RelayError;
use crate::stream::call::CallId;

/// What the relay needs from a call's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallState {
    pub broadcasting: bool,
    /// Stream's playlist URL while broadcasting (it may be missing or empty even then).
    pub playlist_url: Option<Url>,
}

/// A failed API request. `message` is Stream's own, verbatim (for a 403 it names the missing capability), and `code`
/// is Stream's numeric error code when its reply had one.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// What the relay makes of a 404 to get call; the operator calls report Stream's 404 as `Status`.
    #[error("Stream has no call {0}")]
    CallNotFound(String),
    #[error("Stream refused the request (HTTP {status}{}): {message}", code_suffix(.code))]
    Unauthorized {
        status: u16,
        code: Option<u32>,
        message: String,
    },
    #[error("Stream rate-limited the request; retry after {retry_after:?}")]
    RateLimited { retry_after: Option<Duration> },
    #[error("Stream answered HTTP {status}{}: {message}", code_suffix(.code))]
    Status {
        status: u16,
        code: Option<u32>,
        message: String,
    },
    #[error("Stream API did not answer in time")]
    Timeout,
    #[error("Stream API request failed: {0}")]
    Transport(String),
    #[error("Stream API answered something unexpected: {0}")]
    BadResponse(String),
}

fn code_suffix(code: &Option<u32>) -> String {
    code.map(|code| format!(", code {code}"))
        .unwrap_or_default()
}

impl ApiError {
    /// The HTTP status Stream answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::CallNotFound(_) => Some(404),
            ApiError::Unauthorized { status, .. } | ApiError::Status { status, .. } => {
                Some(*status)
            }
            ApiError::RateLimited { .. } => Some(429),
            ApiError::Timeout | ApiError::Transport(_) | ApiError::BadResponse(_) => None,
        }
    }

    /// Stream's numeric error code (16 not found, 17 not allowed, 40 token expired, …), if its reply had one.
    pub fn code(&self) -> Option<u32> {
        match self {
            ApiError::Unauthorized { code, .. } | ApiError::Status { code, .. } => *code,
            _ => None,
        }
    }

    /// Stream's own message when it sent one, else this error's description.
    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthorized { message, .. } | ApiError::Status { message, .. } => {
                message.clone()
            }
            _ => self.to_string(),
        }
    }
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

/// Stream's error body: `{"code": 16, "message": "...", "StatusCode": 404, ...}`. Read field by field so that an
/// odd `code` still leaves the message.
fn stream_error(body: &[u8]) -> (Option<u32>, String) {
    let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = |name: &str| parsed.as_ref().and_then(|body| body.get(name));
    let code = field("code")
        .and_then(serde_json::Value::as_u64)
        .and_then(|code| u32::try_from(code).ok());
    let message = field("message")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    (code, message)
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
    Ok(call_state_of(response))
}

/// `parse_call_state` for a response already parsed as JSON (`StreamApi::get_call_raw`).
pub fn call_state(response: &serde_json::Value) -> Result<CallState, ApiError> {
    let response =
        GetCallResponse::deserialize(response).map_err(|e| ApiError::BadResponse(e.to_string()))?;
    Ok(call_state_of(response))
}

fn call_state_of(response: GetCallResponse) -> CallState {
    let egress = response.call.egress;
    let broadcasting = egress.as_ref().is_some_and(|e| e.broadcasting);
    let playlist_url = egress
        .and_then(|e| e.hls)
        .and_then(|hls| hls.playlist_url)
        .filter(|url| !url.is_empty())
        .and_then(|url| Url::parse(&url).ok())
        .filter(|url| matches!(url.scheme(), "http" | "https"));
    CallState {
        broadcasting,
        playlist_url,
    }
}

/// Signs tokens (or carries a user's) and calls the API.
#[derive(Clone)]
pub struct StreamApi {
    http: reqwest::Client,
    base_url: Url,
    api_key: String,
    credential: Credential,
}

/// What authorizes the requests.
#[derive(Clone)]
enum Credential {
    /// The API secret: each request gets a fresh server token, which Stream lets do anything.
    Secret(jsonwebtoken::EncodingKey),
    /// A user's JWT, as given: Stream checks that user's capabilities in the call.
    UserToken(String),
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
    /// A client acting as the app, with server tokens signed by `api_secret`.
    pub fn new(base_url: &str, api_key: &str, api_secret: &str, timeout: Duration) -> Self {
        let secret = jsonwebtoken::EncodingKey::from_secret(api_secret.as_bytes());
        Self::build(base_url, api_key, Credential::Secret(secret), timeout)
    }

    /// A client acting as a user: every request carries `user_token`, so Stream enforces that user's
    /// capabilities (a viewer may read a call but not start its broadcast). Needs no API secret.
    pub fn with_user_token(
        base_url: &str,
        api_key: &str,
        user_token: &str,
        timeout: Duration,
    ) -> Self {
        let credential = Credential::UserToken(user_token.to_owned());
        Self::build(base_url, api_key, credential, timeout)
    }

    fn build(base_url: &str, api_key: &str, credential: Credential, timeout: Duration) -> Self {
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
            credential,
        }
    }

    fn token(&self) -> String {
        match &self.credential {
            Credential::Secret(secret) => sign(&server_claims(), secret),
            Credential::UserToken(token) => token.clone(),
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

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("Authorization", self.token())
            .header("stream-auth-type", "jwt")
            .header(
                "X-Stream-Client",
                concat!("hls-relay-", env!("CARGO_PKG_VERSION")),
            )
    }

    /// GET call: is it broadcasting, and where is its playlist?
    pub async fn get_call(&self, call: &CallId) -> Result<CallState, ApiError> {
        let request = self.request(reqwest::Method::GET, self.call_url(call, None));
        match send(request).await {
            Ok(body) => parse_call_state(&body),
            Err(ApiError::Status { status: 404, .. }) => {
                Err(ApiError::CallNotFound(call.to_string()))
            }
            Err(error) => Err(error),
        }
    }

    /// GET call, the whole response as Stream sent it (`call`, `members`, `own_capabilities`, …).
    pub async fn get_call_raw(&self, call: &CallId) -> Result<serde_json::Value, ApiError> {
        let request = self.request(reqwest::Method::GET, self.call_url(call, None));
        let body = send(request).await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::BadResponse(e.to_string()))
    }

    /// Starts HLS broadcasting. The playlist URL comes later, from get call: the reply does not carry it reliably.
    pub async fn start_broadcasting(&self, call: &CallId) -> Result<(), ApiError> {
        self.act(call, "start_broadcasting", None).await
    }

    pub async fn stop_broadcasting(&self, call: &CallId) -> Result<(), ApiError> {
        self.act(call, "stop_broadcasting", None).await
    }

    /// Takes the call out of backstage, optionally starting HLS and recording with it.
    pub async fn go_live(
        &self,
        call: &CallId,
        start_hls: bool,
        start_recording: bool,
    ) -> Result<(), ApiError> {
        let body = serde_json::json!({"start_hls": start_hls, "start_recording": start_recording});
        self.act(call, "go_live", Some(body)).await
    }

    /// Puts the call back in backstage; Stream stops its HLS broadcast with it.
    pub async fn stop_live(&self, call: &CallId) -> Result<(), ApiError> {
        self.act(call, "stop_live", None).await
    }

    /// POSTs one of the call's actions. Only success matters: the new state is read with get call.
    async fn act(
        &self,
        call: &CallId,
        action: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), ApiError> {
        let mut request = self.request(reqwest::Method::POST, self.call_url(call, Some(action)));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        send(request).await.map(drop)
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<bytes::Bytes, ApiError> {
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
    let (code, mut message) = stream_error(&body);
    if message.trim().is_empty() {
        // A proxy in front of Stream may answer with no body at all.
        message = status.canonical_reason().unwrap_or("no message").to_owned();
    }
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::Unauthorized {
            status: status.as_u16(),
            code,
            message,
        },
        StatusCode::TOO_MANY_REQUESTS => ApiError::RateLimited { retry_after },
        _ => ApiError::Status {
            status: status.as_u16(),
            code,
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
    fn stream_errors_keep_their_code_and_message_verbatim() {
        let body = br#"{"code":17,"message":"StartHLSBroadcasting failed with error: \"missing capability start-broadcast-call\"","StatusCode":403,"details":[]}"#;
        assert_eq!(
            stream_error(body),
            (
                Some(17),
                r#"StartHLSBroadcasting failed with error: "missing capability start-broadcast-call""#
                    .to_owned()
            )
        );
        assert_eq!(
            stream_error(br#"{"code":"x","message":"odd code"}"#),
            (None, "odd code".to_owned())
        );
        assert_eq!(
            stream_error(b"<html>bad gateway</html>"),
            (None, "<html>bad gateway</html>".to_owned())
        );
        let error = ApiError::Unauthorized {
            status: 403,
            code: Some(17),
            message: "missing capability start-broadcast-call".into(),
        };
        assert_eq!(
            error.to_string(),
            "Stream refused the request (HTTP 403, code 17): missing capability start-broadcast-call"
        );
        assert_eq!((error.status(), error.code()), (Some(403), Some(17)));
        assert_eq!(error.message(), "missing capability start-broadcast-call");
    }

    #[test]
    fn a_user_token_is_sent_as_given() {
        let api = StreamApi::with_user_token(
            "http://127.0.0.1:1",
            "key",
            "user.jwt.token",
            Duration::from_secs(1),
        );
        assert_eq!(api.token(), "user.jwt.token");
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
