//! Call resolution: which playlist a call broadcasts, asked of the Stream API at most once per `stream.call_ttl`
//! per call, however many viewers ask at once.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use url::Url;

use crate::error::RelayError;
use crate::stream::api::{ApiError, CallState, StreamApi};
use crate::stream::call::CallId;
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
/// How long the time of a call's latest webhook event is remembered to refuse older, late deliveries.
const EVENT_TIME_TTL: Duration = Duration::from_secs(24 * 3600);

/// What became of a webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Older than an event already applied to the call: a late or replayed delivery.
    Stale,
}

#[derive(Clone)]
pub struct Resolver {
    api: StreamApi,
    fresh: moka::future::Cache<CallId, Resolution>,
    last_known: moka::sync::Cache<CallId, Resolution>,
    /// The last live playlist URL per call: its host stays fetchable for the end of a broadcast.
    last_live: moka::sync::Cache<CallId, Url>,
    event_times: moka::sync::Cache<CallId, OffsetDateTime>,
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
            last_live: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LAST_KNOWN_TTL)
                .build(),
            event_times: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(EVENT_TIME_TTL)
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
            self.remember(call, resolution);
        }
        result
    }

    fn remember(&self, call: &CallId, resolution: &Resolution) {
        self.last_known.insert(call.clone(), resolution.clone());
        if let Resolution::Live { playlist_url } = resolution {
            self.last_live.insert(call.clone(), playlist_url.clone());
        }
    }

    /// The playlist URL the call broadcast most recently, live or not.
    pub fn last_live_url(&self, call: &CallId) -> Option<Url> {
        self.last_live.get(call)
    }

    /// Applies what a webhook event says, unless a newer event for the call was applied already. `None` means the
    /// event says something changed without saying what (a start without a playlist URL): ask the API next time.
    pub async fn apply_event(
        &self,
        call: &CallId,
        resolution: Option<Resolution>,
        at: OffsetDateTime,
    ) -> Applied {
        let newest =
            self.event_times
                .entry(call.clone())
                .and_upsert_with(|current| match current {
                    Some(entry) if *entry.value() > at => *entry.value(),
                    _ => at,
                });
        if *newest.value() != at {
            return Applied::Stale;
        }
        match resolution {
            Some(resolution) => {
                self.remember(call, &resolution);
                self.fresh.insert(call.clone(), resolution).await;
            }
            None => self.fresh.invalidate(call).await,
        }
        Applied::Applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> Resolver {
        let api = StreamApi::new(
            "http://127.0.0.1:1",
            "key",
            "secret",
            Duration::from_millis(100),
        );
        Resolver::new(api, Duration::from_secs(60), Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn events_apply_at_once_and_older_ones_never_override_newer() {
        let resolver = resolver();
        let call = CallId::new("livestream", "a").unwrap();
        let url = Url::parse("https://cdn.example.com/master.m3u8").unwrap();
        let live = Resolution::Live {
            playlist_url: url.clone(),
        };
        let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_700_000_000);
        let later = t0 + time::Duration::seconds(5);

        assert_eq!(
            resolver.apply_event(&call, Some(live.clone()), t0).await,
            Applied::Applied
        );
        // The API behind this resolver is unreachable: the answer can only come from the event.
        assert_eq!(resolver.resolve(&call).await.unwrap(), live);

        let stopped = Some(Resolution::NotBroadcasting);
        assert_eq!(
            resolver.apply_event(&call, stopped, later).await,
            Applied::Applied
        );
        assert_eq!(
            resolver.apply_event(&call, Some(live.clone()), t0).await,
            Applied::Stale,
            "a late start must not resurrect a stopped broadcast"
        );
        assert_eq!(
            resolver.resolve(&call).await.unwrap(),
            Resolution::NotBroadcasting
        );
        // Replaying the same event is harmless.
        let stopped = Some(Resolution::NotBroadcasting);
        assert_eq!(
            resolver.apply_event(&call, stopped, later).await,
            Applied::Applied
        );
        assert_eq!(resolver.last_live_url(&call), Some(url));
    }
}
