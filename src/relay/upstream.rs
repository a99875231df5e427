//! The upstream HTTP client: pooled keep-alive connections, bounded waits, and no fetch outside the allowed hosts.
//!
//! Redirects are followed here, not by reqwest, so that every hop is checked against the host policy and the
//! final URL (the base for a playlist's relative URIs) is known.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use url::Url;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::UpstreamConfig;
use crate::error::RelayError;
use crate::telemetry::Metrics;

/// Hosts one call's fetches may reach: its playlist URL's host plus `upstream.allowed_hosts`.
#[derive(Debug, Clone, Copy)]
pub struct HostPolicy<'a> {
    pub playlist_host: Option<&'a str>,
    pub allowed_hosts: &'a [String],
}

impl HostPolicy<'_> {
    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        self.playlist_host
            .is_some_and(|allowed| allowed.eq_ignore_ascii_case(host))
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream host {0} is not allowed")]
    HostNotAllowed(String),
    #[error("upstream timed out: {0}")]
    Timeout(&'static str),
    #[error("upstream request failed: {0}")]
    Transport(String),
    #[error("upstream answered {0}")]
    Status(StatusCode),
    #[error("upstream redirected too often or without a usable Location")]
    BadRedirect,
    #[error("upstream body is larger than the {0} bytes allowed")]
    TooLarge(u64),
    #[error("upstream body ended after {received} of {expected} bytes")]
    Truncated { received: u64, expected: u64 },
}

impl UpstreamError {
    /// Failures worth one more try: the connection failed or a gateway in front of the origin hiccupped.
    /// A timeout is not retried: the time is already spent.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Transport(_)
                | Self::Status(
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                )
        )
    }
}

/// Jittered exponential backoff: 50–100 ms, then 100–200 ms, … so that relays retrying together spread out.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(50) * 2u32.pow(attempt.min(6));
    base + base.mul_f64(rand::random::<f64>())
}

impl From<UpstreamError> for RelayError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::HostNotAllowed(_) => RelayError::Forbidden(error.to_string()),
            UpstreamError::Timeout(_) => RelayError::UpstreamTimeout(error.to_string()),
            UpstreamError::Status(StatusCode::NOT_FOUND | StatusCode::GONE) => {
                RelayError::NotFound("upstream has no such object".into())
            }
            _ => RelayError::UpstreamError(error.to_string()),
        }
    }
}

/// An upstream response whose head has arrived; the body is read with one of the consuming methods.
pub struct UpstreamResponse {
    pub final_url: Url,
    pub status: StatusCode,
    pub headers: HeaderMap,
    response: reqwest::Response,
    deadline: tokio::time::Instant,
    /// Held until the body is read: the cap on concurrent upstream fetches covers whole transfers.
    _permit: OwnedSemaphorePermit,
}

impl UpstreamResponse {
    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// Reads the whole body, refusing more than `max` bytes and a body shorter than its Content-Length.
    pub async fn bytes(self, max: u64) -> Result<Bytes, UpstreamError> {
        let expected = self.content_length();
        if expected.is_some_and(|len| len > max) {
            return Err(UpstreamError::TooLarge(max));
        }
        let mut body = BytesMut::with_capacity(expected.unwrap_or(16 * 1024) as usize);
        let mut chunks = std::pin::pin!(self.chunks(max));
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(body.freeze())
    }

    /// The body as it arrives, bounded by `max` bytes and the fetch deadline; the last item is an error if the
    /// body ends short of its Content-Length.
    pub fn chunks(
        self,
        max: u64,
    ) -> impl futures_util::Stream<Item = Result<Bytes, UpstreamError>> + Send {
        let expected = self.content_length();
        let deadline = self.deadline;
        let permit = self._permit;
        let state = ((self.response.bytes_stream(), permit), 0u64, false);
        futures_util::stream::unfold(
            state,
            move |((mut body, permit), mut received, done)| async move {
                if done {
                    return None;
                }
                let next = match tokio::time::timeout_at(deadline, body.next()).await {
                    Err(_) => Err(UpstreamError::Timeout("body not complete in time")),
                    Ok(Some(Err(e))) => Err(UpstreamError::Transport(e.to_string())),
                    Ok(Some(Ok(chunk))) => {
                        received += chunk.len() as u64;
                        if received > max {
                            Err(UpstreamError::TooLarge(max))
                        } else {
                            Ok(Some(chunk))
                        }
                    }
                    Ok(None) => match expected {
                        Some(expected) if expected != received => {
                            Err(UpstreamError::Truncated { received, expected })
                        }
                        _ => Ok(None),
                    },
                };
                match next {
                    Ok(Some(chunk)) => Some((Ok(chunk), ((body, permit), received, false))),
                    Ok(None) => None,
                    Err(error) => Some((Err(error), ((body, permit), received, true))),
                }
            },
        )
    }
}

/// The shared upstream client.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    config: Arc<UpstreamConfig>,
    metrics: Arc<Metrics>,
    fetches: Arc<Semaphore>,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .user_agent(concat!("hls-relay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            fetches: Arc::new(Semaphore::new(config.max_concurrent_fetches)),
            config: Arc::new(config.clone()),
            metrics,
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// GETs `url`, following redirects within `policy`, and returns once the response head has arrived.
    /// Any status but 200 is an error (the relay asks for whole objects, so anything else is not one).
    pub async fn get(
        &self,
        url: Url,
        policy: HostPolicy<'_>,
        kind: &'static str,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.get_held(url, policy, kind, self.config.first_byte_timeout)
            .await
    }

    /// As [`Self::get`], for a request upstream may hold before answering (an LL-HLS blocking playlist reload):
    /// the response head may take up to `hold`.
    pub async fn get_held(
        &self,
        url: Url,
        policy: HostPolicy<'_>,
        kind: &'static str,
        hold: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let now = tokio::time::Instant::now();
        let first_byte_deadline = now + hold;
        let deadline = now + self.config.total_timeout.max(hold);
        let permit =
            tokio::time::timeout_at(first_byte_deadline, self.fetches.clone().acquire_owned())
                .await
                .map_err(|_| UpstreamError::Timeout("too many upstream fetches in flight"))?
                .expect("the fetch semaphore is never closed");
        let mut permit = Some(permit);
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let result = self
                .follow(
                    url.clone(),
                    policy,
                    first_byte_deadline,
                    deadline,
                    &mut permit,
                )
                .await;
            self.record(&result, kind, started);
            let retry = match &result {
                Err(error) if error.is_transient() && attempt < self.config.retries => {
                    backoff(attempt)
                }
                _ => return result,
            };
            if tokio::time::Instant::now() + retry >= first_byte_deadline {
                return result;
            }
            attempt += 1;
            tracing::debug!(url = %&url[..url::Position::AfterPath], attempt, "retrying upstream fetch");
            tokio::time::sleep(retry).await;
        }
    }

    fn record(
        &self,
        result: &Result<UpstreamResponse, UpstreamError>,
        kind: &str,
        started: Instant,
    ) {
        let status_label = match result {
            Ok(response) => response.status.as_str().to_owned(),
            Err(UpstreamError::Status(status)) => status.as_str().to_owned(),
            Err(UpstreamError::Timeout(_)) => "timeout".into(),
            Err(UpstreamError::HostNotAllowed(_)) => "refused".into(),
            Err(_) => "error".into(),
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[&status_label])
            .inc();
        self.metrics
            .upstream_seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
    }

    async fn follow(
        &self,
        mut url: Url,
        policy: HostPolicy<'_>,
        first_byte_deadline: tokio::time::Instant,
        deadline: tokio::time::Instant,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        for _ in 0..=self.config.max_redirects {
            if !policy.allows(&url) {
                return Err(UpstreamError::HostNotAllowed(
                    url.host_str().unwrap_or("(none)").to_owned(),
                ));
            }
            let request = self.client.get(url.clone()).send();
            let response = tokio::time::timeout_at(first_byte_deadline, request)
                .await
                .map_err(|_| UpstreamError::Timeout("no response head in time"))?
                .map_err(|e| {
                    if e.is_timeout() || e.is_connect() && e.to_string().contains("timed out") {
                        UpstreamError::Timeout("connect")
                    } else {
                        UpstreamError::Transport(error_chain(&e))
                    }
                })?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|location| url.join(location).ok())
                    .ok_or(UpstreamError::BadRedirect)?;
                url = location;
                continue;
            }
            if status != StatusCode::OK {
                return Err(UpstreamError::Status(status));
            }
            return Ok(UpstreamResponse {
                final_url: url,
                status,
                headers: response.headers().clone(),
                response,
                deadline,
                _permit: permit.take().expect("one response per permit"),
            });
        }
        Err(UpstreamError::BadRedirect)
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); the chain says what happened.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_policy_allows_the_playlist_host_and_configured_hosts_only() {
        let extra = vec!["cdn2.example.com".to_owned()];
        let policy = HostPolicy {
            playlist_host: Some("cdn.example.com"),
            allowed_hosts: &extra,
        };
        assert!(policy.allows(&Url::parse("https://CDN.example.com/x.ts").unwrap()));
        assert!(policy.allows(&Url::parse("https://cdn2.example.com/x.ts").unwrap()));
        assert!(!policy.allows(&Url::parse("https://evil.example.com/x.ts").unwrap()));
        assert!(!policy.allows(&Url::parse("https://cdn.example.com.evil.io/x.ts").unwrap()));
        let none = HostPolicy {
            playlist_host: None,
            allowed_hosts: &[],
        };
        assert!(!none.allows(&Url::parse("https://cdn.example.com/x.ts").unwrap()));
    }
}
