//! Call resolution: which playlist a call broadcasts, asked of the Stream API at most once per `stream.call_ttl`
//! per call, however many viewers ask at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use url::Url;

use crate::cluster::Fleet;
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

/// How long a 429 without `Retry-After` holds: Stream's rate limits are per minute.
const RATE_LIMIT_DEFAULT: Duration = Duration::from_secs(60);
/// How often an instance waiting for the lease holder's answer looks for it.
const LEASE_POLL: Duration = Duration::from_millis(20);

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
    /// When an event was last applied to each call, by this process's clock: a look-up that started before it
    /// answers with the event's state, not with what the API said before the event.
    event_applied: moka::sync::Cache<CallId, Instant>,
    ttl: Duration,
    /// Bound on one API request: how long the lease of a fleet-wide look-up lasts.
    lease: Duration,
    /// Until when Stream said to stop asking (429), as this instance knows it.
    rate_limited_until: Arc<Mutex<Option<Instant>>>,
    /// The fleet's shared call states, leases and rate limit, when `cluster.redis_url` is set.
    fleet: Option<Fleet>,
    metrics: Arc<Metrics>,
}

impl Resolver {
    pub fn new(api: StreamApi, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            lease: Duration::from_secs(5),
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
            event_applied: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LAST_KNOWN_TTL)
                .build(),
            ttl,
            rate_limited_until: Arc::default(),
            fleet: None,
            metrics,
        }
    }

    /// Shares look-ups with the other instances of a fleet; `lease` bounds one API request (`stream.timeout`).
    pub fn with_fleet(mut self, fleet: Option<Fleet>, lease: Duration) -> Self {
        self.fleet = fleet;
        self.lease = lease;
        self
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
        let started = Instant::now();
        if let Some(fleet) = &self.fleet
            && let Some(shared) = self.ask_fleet(fleet, call).await?
        {
            if let Some(current) = self.applied_since(call, started) {
                return Ok(current);
            }
            self.remember(call, &shared);
            return Ok(shared);
        }
        self.ask_api(call, started).await
    }

    /// The state an event gave the call, if one was applied since `started`: it is newer than any answer to a
    /// look-up that started before it.
    fn applied_since(&self, call: &CallId, started: Instant) -> Option<Resolution> {
        self.event_applied
            .get(call)
            .filter(|applied| *applied >= started)
            .and_then(|_| self.last_known.get(call))
    }

    /// The fleet's answer: the state another instance shared, or the lease holder's once it has asked. `Ok(None)`
    /// means this instance asks the API: it holds the lease, or Redis did not answer, or the holder took too long.
    async fn ask_fleet(
        &self,
        fleet: &Fleet,
        call: &CallId,
    ) -> Result<Option<Resolution>, ApiError> {
        let key = state_key(call);
        let count = |outcome: &str| {
            self.metrics
                .cluster_lookups
                .with_label_values(&[outcome])
                .inc()
        };
        if let Some(retry_after) = fleet.get(RATE_LIMIT_KEY).await.and_then(|until| {
            let until = Duration::from_millis(until.parse().ok()?);
            until.checked_sub(unix_now())
        }) {
            return Err(ApiError::RateLimited {
                retry_after: Some(retry_after),
            });
        }
        // Another instance's answer, or the lease to ask; while another instance holds the lease, its answer is
        // looked for until the lease would have run out.
        let deadline = Instant::now() + self.lease;
        let mut waited = false;
        loop {
            if let Some(shared) = fleet.get(&key).await.as_deref().and_then(decode_resolution) {
                count(if waited { "waited" } else { "shared" });
                return Ok(Some(shared));
            }
            match fleet.try_lease(&lease_key(call), self.lease).await {
                Some(true) => {
                    count("leased");
                    return Ok(None);
                }
                Some(false) if Instant::now() < deadline => {
                    waited = true;
                    tokio::time::sleep(LEASE_POLL).await;
                }
                _ => {
                    count("alone");
                    return Ok(None);
                }
            }
        }
    }

    async fn ask_api(&self, call: &CallId, started: Instant) -> Result<Resolution, ApiError> {
        if let Some(retry_after) = self.rate_limit_left() {
            return Err(ApiError::RateLimited {
                retry_after: Some(retry_after),
            });
        }
        let result = match self.api.get_call(call).await {
            Ok(state) => Ok(Resolution::from(state)),
            Err(ApiError::CallNotFound(_)) => Ok(Resolution::NotFound),
            Err(error) => Err(error),
        };
        let label = result.as_ref().map_or("error", Resolution::label);
        self.metrics.api_lookups.with_label_values(&[label]).inc();
        if result.is_ok()
            && let Some(current) = self.applied_since(call, started)
        {
            return Ok(current);
        }
        match &result {
            Ok(resolution) => {
                self.remember(call, resolution);
                self.share(call, resolution).await;
                if let Some(fleet) = &self.fleet {
                    fleet.release(&lease_key(call)).await;
                }
            }
            Err(ApiError::RateLimited { retry_after }) => {
                self.rate_limited(retry_after.unwrap_or(RATE_LIMIT_DEFAULT))
                    .await
            }
            Err(_) => {}
        }
        result
    }

    /// Tells the fleet a call's state, as an answer or an event gave it, for `stream.call_ttl`.
    pub async fn share(&self, call: &CallId, resolution: &Resolution) {
        if let Some(fleet) = &self.fleet {
            fleet
                .set(&state_key(call), &encode_resolution(resolution), self.ttl)
                .await;
        }
    }

    /// Honours a 429: no API request until `retry_after` has passed, on this instance and across the fleet.
    async fn rate_limited(&self, retry_after: Duration) {
        tracing::warn!(?retry_after, "Stream API rate limit: pausing look-ups");
        *self
            .rate_limited_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + retry_after);
        if let Some(fleet) = &self.fleet {
            let until = (unix_now() + retry_after).as_millis().to_string();
            fleet.set(RATE_LIMIT_KEY, &until, retry_after).await;
        }
    }

    fn rate_limit_left(&self) -> Option<Duration> {
        let until = (*self
            .rate_limited_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()))?;
        until.checked_duration_since(Instant::now())
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
                self.event_applied.insert(call.clone(), Instant::now());
                self.fresh.insert(call.clone(), resolution).await;
            }
            None => self.fresh.invalidate(call).await,
        }
        Applied::Applied
    }
}

const RATE_LIMIT_KEY: &str = "ratelimit:get_call";

fn state_key(call: &CallId) -> String {
    format!("call:{call}")
}

fn lease_key(call: &CallId) -> String {
    format!("lease:{call}")
}

fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A resolution as the fleet shares it.
pub fn encode_resolution(resolution: &Resolution) -> String {
    let value = match resolution {
        Resolution::Live { playlist_url } => {
            serde_json::json!({"state": "live", "playlist_url": playlist_url.as_str()})
        }
        Resolution::NotBroadcasting => serde_json::json!({"state": "not_broadcasting"}),
        Resolution::NotFound => serde_json::json!({"state": "not_found"}),
    };
    value.to_string()
}

/// A shared resolution; `None` for anything this version cannot read.
pub fn decode_resolution(shared: &str) -> Option<Resolution> {
    let value: serde_json::Value = serde_json::from_str(shared).ok()?;
    match value.get("state")?.as_str()? {
        "live" => Some(Resolution::Live {
            playlist_url: Url::parse(value.get("playlist_url")?.as_str()?).ok()?,
        }),
        "not_broadcasting" => Some(Resolution::NotBroadcasting),
        "not_found" => Some(Resolution::NotFound),
        _ => None,
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

    #[test]
    fn shared_resolutions_read_back() {
        for resolution in [
            Resolution::Live {
                playlist_url: Url::parse("https://cdn.example.com/m.m3u8?sig=1").unwrap(),
            },
            Resolution::NotBroadcasting,
            Resolution::NotFound,
        ] {
            assert_eq!(
                decode_resolution(&encode_resolution(&resolution)),
                Some(resolution)
            );
        }
        assert_eq!(decode_resolution(r#"{"state":"exploded"}"#), None);
        assert_eq!(decode_resolution("nope"), None);
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
