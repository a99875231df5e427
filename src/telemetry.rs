//! Logs and metrics: tracing set-up and the Prometheus collectors the relay updates.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Starts logging; `RUST_LOG` overrides `log.level`. Safe to call twice (tests): the second call is a no-op.
pub fn init_logging(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Where a response came from, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from a fresh cached copy.
    Hit,
    /// This request started the upstream fetch.
    Miss,
    /// Joined a fetch another request had started.
    Coalesced,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
        }
    }
}

/// The relay's Prometheus metrics, registered in their own registry (no global state, so tests can run
/// several relays in one process).
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
    pub upstream_requests: IntCounterVec,
    pub upstream_seconds: HistogramVec,
    pub api_lookups: IntCounterVec,
    pub events: IntCounterVec,
    pub event_lag_seconds: HistogramVec,
    pub sqs_receive_errors: IntCounterVec,
    pub cluster_redis_up: IntGauge,
    pub cluster_errors: IntCounterVec,
    pub cluster_lookups: IntCounterVec,
    pub sqs_queue_up: IntGauge,
    pub viewers: IntGauge,
    pub call_viewers: IntGaugeVec,
    pub viewer_sessions: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("hls_relay".into()), None)
            .expect("a static prefix is a valid metric prefix");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Viewer requests by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "cache_lookups_total",
                "Cache look-ups by outcome (hit, miss, coalesced)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let cache_bytes = IntGauge::new("cache_bytes", "Bytes held by the cache").expect("valid");
        let cache_entries =
            IntGauge::new("cache_entries", "Objects held by the cache").expect("valid");
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "upstream_requests_total",
                "Upstream fetches by HTTP status (or error)",
            ),
            &["status"],
        )
        .expect("valid metric");
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "upstream_response_seconds",
                "Time to an upstream response head, by kind",
            )
            .buckets(vec![
                0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let api_lookups = IntCounterVec::new(
            Opts::new("api_lookups_total", "Stream API call look-ups by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new(
                "events_total",
                "Stream events by source (webhook, sqs), event type and outcome",
            ),
            &["source", "type", "outcome"],
        )
        .expect("valid metric");
        let event_lag_seconds = HistogramVec::new(
            HistogramOpts::new(
                "event_lag_seconds",
                "Time from an event's created_at to its arrival at the relay, by source",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
            ]),
            &["source"],
        )
        .expect("valid metric");
        let sqs_receive_errors = IntCounterVec::new(
            Opts::new(
                "sqs_receive_errors_total",
                "Failed SQS requests, by operation (receive, delete)",
            ),
            &["operation"],
        )
        .expect("valid metric");
        let cluster_redis_up = IntGauge::new(
            "cluster_redis_up",
            "1 while the fleet's Redis answers, 0 while this instance carries on alone",
        )
        .expect("valid metric");
        let cluster_errors = IntCounterVec::new(
            Opts::new(
                "cluster_errors_total",
                "Failed or timed-out Redis operations, by operation",
            ),
            &["operation"],
        )
        .expect("valid metric");
        let cluster_lookups = IntCounterVec::new(
            Opts::new(
                "cluster_lookups_total",
                "Call look-ups through the fleet: shared (another instance's answer), waited (for the lease \
                 holder's), leased (this instance asked the API), alone (Redis unreachable)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let sqs_queue_up = IntGauge::new(
            "sqs_queue_up",
            "1 while the SQS consumer's last receive succeeded; 0 otherwise, or with no consumer",
        )
        .expect("valid metric");
        let viewers = IntGauge::new(
            "viewers",
            "HLS viewers watching now, all calls (across the fleet while Redis answers)",
        )
        .expect("valid metric");
        let call_viewers = IntGaugeVec::new(
            Opts::new(
                "call_viewers",
                "HLS viewers watching now, for the 20 calls with the most; cid=\"other\" sums the rest",
            ),
            &["cid"],
        )
        .expect("valid metric");
        let viewer_sessions = IntCounter::new(
            "viewer_sessions_total",
            "Viewer sessions started at this instance's entry playlists",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cache_lookups.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(cache_entries.clone()),
            Box::new(upstream_requests.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(api_lookups.clone()),
            Box::new(events.clone()),
            Box::new(event_lag_seconds.clone()),
            Box::new(sqs_receive_errors.clone()),
            Box::new(cluster_redis_up.clone()),
            Box::new(cluster_errors.clone()),
            Box::new(cluster_lookups.clone()),
            Box::new(sqs_queue_up.clone()),
            Box::new(viewers.clone()),
            Box::new(call_viewers.clone()),
            Box::new(viewer_sessions.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        Self {
            registry,
            requests,
            cache_lookups,
            cache_bytes,
            cache_entries,
            upstream_requests,
            upstream_seconds,
            api_lookups,
            events,
            event_lag_seconds,
            sqs_receive_errors,
            cluster_redis_up,
            cluster_errors,
            cluster_lookups,
            sqs_queue_up,
            viewers,
            call_viewers,
            viewer_sessions,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
