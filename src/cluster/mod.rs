//! Several relays as one service, on Redis: no membership or consensus of our own.
//!
//! With `[cluster] redis_url`, instances share through one Redis (or a managed one):
//!
//! - **Events** ([`Fleet::append_event`], [`Fleet::read_events`]): every event an instance applies (from a webhook,
//!   SQS, or a change its own poll found) is appended to a Redis stream that every instance reads with a blocking
//!   `XREAD`, so every instance applies it at once, tells its SSE viewers and ends its playlists. The stream keeps
//!   the last [`EVENT_LOG_LEN`] events: an instance reading again after an outage or a restart resumes from where it
//!   was, or from [`CATCH_UP`] ago.
//! - **Shared values and leases** ([`Fleet::get`], [`Fleet::set`], [`Fleet::try_lease`]): the resolver keeps each
//!   call's state there, so that one instance asks Stream's API per call per `stream.call_ttl`, and a 429's
//!   `Retry-After` holds fleet-wide.
//! - **Once-only marks** ([`Fleet::first_time`]): a webhook id applied by one instance is a duplicate on all.
//! - **Viewer counts** ([`Fleet::report_viewers`]): each instance adds the viewer sessions it saw to per-call sorted
//!   sets about once a second and reads the fleet's counts back, in one Lua script per call (`viewers.lua`).
//!
//! Redis is an accelerator, never a dependency of serving: every operation is bounded by `cluster.timeout`, and
//! while Redis is unreachable the operations answer "nothing shared" at once, so each instance does what it does
//! alone (asks the API itself, applies only the events it receives). A background probe notices when Redis is back;
//! the change is logged once each way, and shown in `hls_relay_cluster_redis_up` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisResult, SetExpiry, SetOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::ConfigError;
use crate::telemetry::Metrics;

/// Events kept in the shared log (trimmed approximately, as Redis does cheaply).
pub const EVENT_LOG_LEN: usize = 10_000;
/// How far back an instance starting up reads the event log.
pub const CATCH_UP: Duration = Duration::from_secs(600);
/// How long one blocking read of the event log waits for news before asking again.
const READ_BLOCK: Duration = Duration::from_secs(5);
/// How often an unreachable Redis is probed.
const PROBE_DOWN: Duration = Duration::from_secs(1);
/// How often a reachable Redis is probed (operations also notice failures as they happen).
const PROBE_UP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS). Unset: this instance works alone.
    pub redis_url: Option<String>,
    /// Prefix of every key, so that several relay services (or other apps) can share one Redis.
    pub key_prefix: String,
    /// Bound on one Redis operation; past it the instance carries on as if alone.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "hls-relay".into(),
            timeout: Duration::from_millis(250),
        }
    }
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            redis::Client::open(url.as_str()).map_err(|e| ConfigError::Invalid {
                key: "cluster.redis_url",
                reason: format!("not a Redis URL (redis://host:port or rediss://…): {e}"),
            })?;
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid {
                key: "cluster.key_prefix",
                reason: "must be a non-empty word without spaces".into(),
            });
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(5) {
            return Err(ConfigError::Invalid {
                key: "cluster.timeout",
                reason: "must be between 1ms and 5s: serving never waits longer on Redis".into(),
            });
        }
        Ok(())
    }
}

/// One entry of the shared event log: who appended it, and what (opaque here: `events::fleet` encodes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub origin: String,
    pub payload: String,
}

const VIEWERS_SCRIPT: &str = include_str!("viewers.lua");

/// One call's viewer sessions as one instance saw them since its last report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewerReport {
    pub cid: String,
    /// Each session's shared name, and how long its window still runs (ms).
    pub sessions: Vec<(String, u64)>,
    /// Each rendition's label, and its sessions as in `sessions`.
    pub renditions: Vec<(String, Vec<(String, u64)>)>,
}

/// One call's viewers across the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetViewers {
    pub now: u64,
    pub peak: u64,
    pub sessions: u64,
    pub renditions: Vec<(String, u64)>,
}

impl FleetViewers {
    /// Reads the script's reply; what is missing or garbled reads as zero.
    fn read(reply: &[String]) -> Self {
        let number = |at: usize| reply.get(at).and_then(|n| n.parse().ok()).unwrap_or(0);
        Self {
            now: number(0),
            peak: number(1),
            sessions: number(2),
            renditions: reply
                .get(3..)
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
                .collect(),
        }
    }
}

/// This instance's handle on the shared tier. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    commands: ConnectionManager,
    /// Blocking reads get their own connection, so they never hold up other operations.
    reader: ConnectionManager,
    prefix: String,
    /// A random id per process: an instance skips its own entries in the event log.
    instance: String,
    timeout: Duration,
    up: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Fleet {
    /// The fleet handle when `cluster.redis_url` is set. Connects lazily: a Redis that is down at start-up only
    /// means the instance starts alone.
    pub fn new(config: &ClusterConfig, metrics: Arc<Metrics>) -> Result<Option<Self>, ConfigError> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        let invalid = |e: redis::RedisError| ConfigError::Invalid {
            key: "cluster.redis_url",
            reason: e.to_string(),
        };
        let client = redis::Client::open(url.as_str()).map_err(invalid)?;
        let manager = |response_timeout| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(500))))
                .set_response_timeout(response_timeout)
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            ConnectionManager::new_lazy_with_config(client.clone(), config)
        };
        let commands = manager(Some(config.timeout)).map_err(invalid)?;
        let reader = manager(Some(READ_BLOCK + config.timeout * 4)).map_err(invalid)?;
        metrics.cluster_redis_up.set(0);
        let fleet = Self {
            inner: Arc::new(Inner {
                commands,
                reader,
                prefix: config.key_prefix.clone(),
                instance: random_id(),
                timeout: config.timeout,
                // Assumed reachable until an operation or the first probe says otherwise: the first probe logs.
                up: AtomicBool::new(true),
                metrics,
            }),
        };
        tokio::spawn(probe(Arc::downgrade(&fleet.inner)));
        Ok(Some(fleet))
    }

    /// Whether Redis answered the last operation or probe.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.inner.prefix)
    }

    /// Runs one command on the shared connection, bounded, and records whether Redis is reachable. `None` when it
    /// is not (known down: not even tried), or the command failed.
    async fn run<T, F, Fut>(&self, operation: &'static str, command: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        let result =
            tokio::time::timeout(self.inner.timeout, command(self.inner.commands.clone())).await;
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.inner.failed(operation, &error.to_string());
                None
            }
            Err(_) => {
                self.inner.failed(operation, "timed out");
                None
            }
        }
    }

    /// The shared value at `name`, if there is one and Redis answers.
    pub async fn get(&self, name: &str) -> Option<String> {
        let key = self.key(name);
        self.run("get", |mut c| async move {
            c.get::<_, Option<String>>(key).await
        })
        .await
        .flatten()
    }

    /// Shares `value` at `name` for `ttl` (best effort).
    pub async fn set(&self, name: &str, value: &str, ttl: Duration) {
        let key = self.key(name);
        let options = SetOptions::default().with_expiration(SetExpiry::PX(millis(ttl)));
        self.run("set", |mut c| async move {
            c.set_options::<_, _, ()>(key, value, options).await
        })
        .await;
    }

    /// Takes the lease `name` for `ttl` if no instance holds it. `None`: Redis did not answer (act alone).
    pub async fn try_lease(&self, name: &str, ttl: Duration) -> Option<bool> {
        let key = self.key(name);
        let instance = self.inner.instance.clone();
        let options = SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(SetExpiry::PX(millis(ttl)));
        self.run("lease", |mut c| async move {
            c.set_options::<_, _, Option<String>>(key, instance, options)
                .await
        })
        .await
        .map(|taken| taken.is_some())
    }

    /// Gives a lease back before it runs out (its holder is done).
    pub async fn release(&self, name: &str) {
        let key = self.key(name);
        self.run("release", |mut c| async move { c.del::<_, ()>(key).await })
            .await;
    }

    /// Marks `name` for `ttl`; true if this instance marked it first, or Redis did not answer (then the local
    /// check is all there is).
    pub async fn first_time(&self, name: &str, ttl: Duration) -> bool {
        self.try_lease(name, ttl).await.unwrap_or(true)
    }

    /// Records the viewer sessions this instance saw since its last report, and reads each call's viewers across
    /// the fleet (see `viewers.lua`): one script per call, sent together. Sessions are remembered `retain` after
    /// their windows; a call's keys are dropped `keep` after its last report. `None`: Redis did not answer (count
    /// alone).
    pub async fn report_viewers(
        &self,
        reports: &[ViewerReport],
        retain: Duration,
        keep: Duration,
    ) -> Option<Vec<FleetViewers>> {
        let commands: Vec<redis::Cmd> = reports
            .iter()
            .map(|report| {
                let sessions = self.key(&format!("viewers:{{{}}}", report.cid));
                let mut command = redis::cmd("EVAL");
                command
                    .arg(VIEWERS_SCRIPT)
                    .arg(3)
                    .arg(&sessions)
                    .arg(format!("{sessions}:totals"))
                    .arg(format!("{sessions}:renditions"))
                    .arg(millis(retain))
                    .arg(millis(keep))
                    .arg(report.sessions.len());
                for (session, remaining) in &report.sessions {
                    command.arg(session).arg(remaining);
                }
                for (label, sessions) in &report.renditions {
                    command.arg(label).arg(sessions.len());
                    for (session, remaining) in sessions {
                        command.arg(session).arg(remaining);
                    }
                }
                command
            })
            .collect();
        let replies = self
            .run("viewers", |connection| async move {
                // The connection pipelines concurrent commands: one round trip for every call.
                let replies = commands.iter().map(|command| {
                    let mut connection = connection.clone();
                    async move { command.query_async::<Vec<String>>(&mut connection).await }
                });
                futures_util::future::try_join_all(replies).await
            })
            .await?;
        Some(
            replies
                .iter()
                .map(|reply| FleetViewers::read(reply))
                .collect(),
        )
    }

    /// Appends to the shared event log (best effort: while Redis is down, instances rely on their own polling).
    pub async fn append_event(&self, payload: &str) {
        let key = self.key("events");
        let fields = [("origin", self.inner.instance.as_str()), ("event", payload)];
        self.run("append", |mut c| async move {
            c.xadd_maxlen::<_, _, _, _, String>(
                key,
                redis::streams::StreamMaxlen::Approx(EVENT_LOG_LEN),
                "*",
                &fields,
            )
            .await
        })
        .await;
    }

    /// Reads the shared event log for as long as `entries` is open, sending on what other instances appended. It
    /// starts [`CATCH_UP`] ago, resumes where it was after an outage, and backs off while Redis is unreachable.
    pub async fn read_events(self, entries: mpsc::Sender<LogEntry>) {
        let key = self.key("events");
        let mut last_id = format!("{}-0", millis(unix_now().saturating_sub(CATCH_UP)));
        let mut backoff = PROBE_DOWN;
        let options = StreamReadOptions::default()
            .block(READ_BLOCK.as_millis() as usize)
            .count(100);
        while !entries.is_closed() {
            let mut reader = self.inner.reader.clone();
            let read: RedisResult<Option<StreamReadReply>> =
                reader.xread_options(&[&key], &[&last_id], &options).await;
            let reply = match read {
                Ok(reply) => reply,
                Err(error) => {
                    self.inner.failed("read", &error.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(PROBE_UP);
                    continue;
                }
            };
            backoff = PROBE_DOWN;
            self.inner.succeeded();
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in stream.ids {
                    last_id = entry.id.clone();
                    let field = |name: &str| entry.get::<String>(name);
                    let (Some(origin), Some(payload)) = (field("origin"), field("event")) else {
                        continue;
                    };
                    if origin == self.inner.instance {
                        continue;
                    }
                    if entries.send(LogEntry { origin, payload }).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Inner {
    fn failed(&self, operation: &'static str, reason: &str) {
        self.metrics
            .cluster_errors
            .with_label_values(&[operation])
            .inc();
        if self.up.swap(false, Ordering::Relaxed) {
            self.metrics.cluster_redis_up.set(0);
            tracing::warn!(
                operation,
                reason,
                "Redis unreachable: this instance carries on alone (polls the Stream API itself) until it is back"
            );
        }
    }

    fn succeeded(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.metrics.cluster_redis_up.set(1);
            tracing::info!("Redis reachable: sharing events and call state with the fleet");
        }
    }
}

/// Pings Redis while the fleet handle lives: often while it is unreachable, seldom while it answers.
async fn probe(fleet: std::sync::Weak<Inner>) {
    let mut first = true;
    loop {
        let Some(inner) = fleet.upgrade() else {
            return;
        };
        let mut connection = inner.commands.clone();
        let ping = tokio::time::timeout(
            inner.timeout.max(Duration::from_millis(500)),
            redis::cmd("PING").query_async::<String>(&mut connection),
        )
        .await;
        match ping {
            Ok(Ok(_)) => {
                if first {
                    inner.metrics.cluster_redis_up.set(1);
                    tracing::info!("Redis reachable: sharing events and call state with the fleet");
                }
                inner.succeeded();
            }
            Ok(Err(error)) => inner.failed("probe", &error.to_string()),
            Err(_) => inner.failed("probe", "timed out"),
        }
        first = false;
        let pause = if inner.up.load(Ordering::Relaxed) {
            PROBE_UP
        } else {
            PROBE_DOWN
        };
        drop(inner);
        tokio::time::sleep(pause).await;
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn random_id() -> String {
    let bytes: [u8; 8] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_key_by_key() {
        let ok = ClusterConfig {
            redis_url: Some("redis://127.0.0.1:6379/0".into()),
            ..ClusterConfig::default()
        };
        assert!(ok.validate().is_ok());
        let tls = ClusterConfig {
            redis_url: Some("rediss://cache.example.com:6380".into()),
            ..ClusterConfig::default()
        };
        assert!(tls.validate().is_ok());
        let bad_url = ClusterConfig {
            redis_url: Some("http://127.0.0.1".into()),
            ..ClusterConfig::default()
        };
        assert!(
            bad_url
                .validate()
                .unwrap_err()
                .to_string()
                .contains("cluster.redis_url")
        );
        let slow = ClusterConfig {
            timeout: Duration::from_secs(30),
            ..ClusterConfig::default()
        };
        assert!(
            slow.validate()
                .unwrap_err()
                .to_string()
                .contains("cluster.timeout")
        );
    }
}
