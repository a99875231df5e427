//! Call resolution: which playlist a call broadcasts, asked of the Stream API at most once per `stream.call_ttl`
//! per call, however many viewers ask at once.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::call::CallId;
use crate::error::RelayError;
use crate::stream_api::{ApiError, CallState, StreamApi};
use crate::telemetry::Metrics;

/// A call as the relay serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Live { playlist_url: Url },
    NotBroadcasting,
    NotFound,
}

impl From<CallState> for Resolution {
    fn from(state: CallState) -> Self {
        match state {
            CallState {
                broadcasting: true,
                playlist_url: Some(playlist_url),
            } => Self::Live { playlist_url },
            // Broadcasting without a playlist URL yet: not playable, so not live for viewers.
            _ => Self::NotBroadcasting,
        }
    }
}

impl Resolution {
    fn label(&self) -> &'static str {
        match self {
            Self::Live { .. } => "live",
            Self::NotBroadcasting => "not_broadcasting",
            Self::NotFound => "not_found",
        }
    }
}

/// How long a call that answered once keeps playing while the API is unreachable.
const LAST_KNOWN_TTL: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct Resolver {
    api: StreamApi,
    fresh: moka::future::Cache<CallId, Resolution>,
    last_known: moka::sync::Cache<CallId, Resolution>,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

impl Resolver {
    pub fn new(api: StreamApi, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            api,
            fresh: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            last_known: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LAST_KNOWN_TTL)
                .build(),
            ttl,
            metrics,
        }
    }

    /// How long a "not broadcasting" answer holds: the natural Retry-After for viewers.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The call's resolution: cached, or from one API request shared by every concurrent caller. If the API
    /// fails, the last answer it gave keeps the call playing.
    pub async fn resolve(&self, call: &CallId) -> Result<Resolution, RelayError> {
        if let Some(resolution) = self.fresh.get(call).await {
            return Ok(resolution);
        }
        let looked_up = self
            .fresh
            .try_get_with_by_ref(call, self.look_up(call))
            .await;
        match looked_up {
            Ok(resolution) => Ok(resolution),
            Err(error) => match self.last_known.get(call) {
                Some(resolution) => {
                    tracing::warn!(cid = %call, %error, "Stream API failed; using the last known state");
                    Ok(resolution)
                }
                None => Err(RelayError::from((*error).clone())),
            },
        }
    }

    async fn look_up(&self, call: &CallId) -> Result<Resolution, ApiError> {
        let result = match self.api.get_call(call).await {
            Ok(state) => Ok(Resolution::from(state)),
            Err(ApiError::CallNotFound(_)) => Ok(Resolution::NotFound),
            Err(error) => Err(error),
        };
        let label = result.as_ref().map_or("error", Resolution::label);
        self.metrics.api_lookups.with_label_values(&[label]).inc();
        if let Ok(resolution) = &result {
            self.last_known.insert(call.clone(), resolution.clone());
        }
        result
    }
}
