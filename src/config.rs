//! Configuration: one typed struct, layered defaults → TOML file → environment → flags, validated once at start-up.
//!
//! `config/hls-relay.toml` is the commented reference; every key there has the default written below.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::cluster::ClusterConfig;
use crate::http::access::{AccessConfig, AccessMode};
use crate::http::embed::EmbedConfig;
use crate::http::listener::{ListenerConfig, TlsPaths};
use crate::viewers::ViewersConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub stream: StreamConfig,
    pub cache: CacheConfig,
    pub upstream: UpstreamConfig,
    pub cors: CorsConfig,
    pub log: LogConfig,
    pub access: AccessConfig,
    /// Serve HTTPS (ALPN h2, http/1.1) on `server.listen` with this certificate; unset: HTTP/1.1 and h2c.
    pub tls: Option<TlsPaths>,
    pub embed: EmbedConfig,
    pub cluster: ClusterConfig,
    pub events: EventsConfig,
    pub viewers: ViewersConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Absolute base URL players reach the relay at (e.g. behind a CDN); empty: taken from each request's Host.
    pub public_url: Option<String>,
    /// Key that encrypts the object URLs the relay writes into playlists. Instances that share it accept each
    /// other's URLs; empty: a random key per process (URLs then die with the process). The one-key form of
    /// `url_keys`.
    pub url_key: Option<String>,
    /// Keys for rotation: URLs are written with the first and accepted under any of them.
    pub url_keys: Vec<String>,
    /// Bound on producing a response head (streamed media bodies run on).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// TLS handshake plus first request head; also each HTTP/1.1 request head (slowloris) and HTTP/1.1 keep-alive.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Request line plus headers (431 beyond); 8KiB to 1MiB.
    pub max_header_bytes: ByteSize,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A client that accepts no byte for this long is disconnected.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Open connections at most; more are accepted and closed at once.
    pub max_connections: usize,
    /// Concurrent requests on one HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// After SIGTERM/Ctrl-C, how long in-flight responses may take before their connections are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Threads that serve connections; 0: one per CPU. `--workers` overrides it.
    pub threads: usize,
    /// How those threads share the work.
    pub runtime: RuntimeMode,
}

/// How `hls-relay serve` spreads connections over its threads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeMode {
    /// One single-threaded runtime per thread, each accepting on its own `SO_REUSEPORT` socket and serving
    /// the connections it accepted, the cache shared: as nginx's workers. No task moves between threads.
    PerThread,
    /// One work-stealing runtime: any thread runs any connection.
    Shared,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    pub base_url: String,
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
    /// How long a call look-up (positive or negative) is trusted before the API is asked again.
    #[serde(with = "humantime_serde")]
    pub call_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_bytes: ByteSize,
    /// How long an upstream 404 is remembered.
    #[serde(with = "humantime_serde")]
    pub not_found_ttl: Duration,
    /// How long a multivariant (master) playlist is fresh.
    #[serde(with = "humantime_serde")]
    pub master_ttl: Duration,
    /// How long a playlist with EXT-X-ENDLIST is fresh.
    #[serde(with = "humantime_serde")]
    pub ended_playlist_ttl: Duration,
    /// How long segments, parts, init sections and keys are kept (their bytes never change).
    #[serde(with = "humantime_serde")]
    pub media_ttl: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Hosts the relay may fetch from besides the host of each call's `playlist_url`.
    pub allowed_hosts: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on waiting for the response head.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Bound on a whole upstream fetch, body included.
    #[serde(with = "humantime_serde")]
    pub total_timeout: Duration,
    pub max_playlist_bytes: ByteSize,
    pub max_object_bytes: ByteSize,
    pub max_redirects: usize,
    /// More tries after a failed connection or a 502/503/504, with jittered backoff, within the first-byte bound.
    pub retries: u32,
    /// Upstream fetches in flight at once (whole transfers); more wait for a slot within the first-byte bound.
    pub max_concurrent_fetches: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// `["*"]` or exact origins such as `https://example.com`.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `hls_relay=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl ServerConfig {
    /// The URL keys, the writing one first: `url_keys`, or `url_key` alone; empty when neither is set.
    pub fn url_keys(&self) -> Vec<&str> {
        match &self.url_key {
            Some(key) => vec![key.as_str()],
            None => self.url_keys.iter().map(String::as_str).collect(),
        }
    }
}

/// Event deliveries besides webhooks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// The SQS queue Stream (or an SNS topic) sends the app's events to; unset: no SQS consumer.
    pub sqs_queue_url: Option<String>,
    /// Normally unset: AWS's endpoint for the region (`AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL` also work).
    /// For SQS-compatible servers.
    pub sqs_endpoint_url: Option<String>,
    /// How long one receive waits for messages (SQS long polling, whole seconds, 1s to 20s).
    #[serde(with = "humantime_serde")]
    pub sqs_wait_time: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            sqs_queue_url: None,
            sqs_endpoint_url: None,
            sqs_wait_time: Duration::from_secs(20),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        let listener = ListenerConfig::default();
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_url: None,
            url_key: None,
            url_keys: Vec::new(),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: listener.header_read_timeout,
            max_header_bytes: listener.max_header_bytes,
            idle_timeout: listener.idle_timeout,
            send_timeout: listener.send_timeout,
            max_connections: listener.max_connections,
            h2_max_concurrent_streams: listener.h2_max_concurrent_streams,
            shutdown_grace: listener.shutdown_grace,
            threads: 0,
            runtime: RuntimeMode::PerThread,
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            base_url: "https://video.stream-io-api.com".into(),
            api_key: None,
            api_secret: None,
            call_ttl: Duration::from_secs(3),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize::mib(512),
            not_found_ttl: Duration::from_secs(2),
            master_ttl: Duration::from_secs(2),
            ended_playlist_ttl: Duration::from_secs(300),
            media_ttl: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(30),
            max_playlist_bytes: ByteSize::mib(4),
            max_object_bytes: ByteSize::mib(64),
            max_redirects: 5,
            retries: 2,
            max_concurrent_fetches: 512,
        }
    }
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: vec!["*".into()],
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl EventsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("events.sqs_queue_url", &self.sqs_queue_url),
            ("events.sqs_endpoint_url", &self.sqs_endpoint_url),
        ] {
            let Some(url) = url else { continue };
            let parsed =
                Url::parse(url).map_err(|e| invalid(key, format!("`{url}` is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(key, format!("`{url}` is not an http(s) URL")));
            }
        }
        let wait = self.sqs_wait_time;
        if wait.subsec_nanos() != 0 || !(1..=20).contains(&wait.as_secs()) {
            return Err(invalid(
                "events.sqs_wait_time",
                "must be whole seconds from 1s to 20s (SQS long polling)",
            ));
        }
        Ok(())
    }
}

/// A configuration that cannot run, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Config {
    /// Layers defaults, the TOML file (if any), `HLS_RELAY_SECTION__KEY` variables and the usual
    /// `STREAM_API_KEY` / `STREAM_API_SECRET`, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(invalid(
                    "--config",
                    format!("{} does not exist", file.display()),
                ));
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(
                Env::raw()
                    .only(&["STREAM_API_KEY"])
                    .map(|_| "stream.api_key".into()),
            )
            .merge(
                Env::raw()
                    .only(&["STREAM_API_SECRET"])
                    .map(|_| "stream.api_secret".into()),
            )
            // Only `SECTION__KEY` names: container platforms add `HLS_RELAY_PORT=tcp://…` and the like for a
            // service named hls-relay (Kubernetes service links, Docker links), which are not config.
            .merge(
                Env::prefixed("HLS_RELAY_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.server.public_url {
            let parsed = Url::parse(url)
                .map_err(|e| invalid("server.public_url", format!("`{url}` is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
                return Err(invalid(
                    "server.public_url",
                    "must be an http(s) URL without a query, e.g. https://live.example.com",
                ));
            }
        }
        if self.server.url_key.is_some() && !self.server.url_keys.is_empty() {
            return Err(invalid(
                "server.url_keys",
                "set either server.url_key (one key) or server.url_keys (rotation), not both",
            ));
        }
        if let Some(key) = &self.server.url_key
            && key.len() < 16
        {
            return Err(invalid(
                "server.url_key",
                "must be at least 16 characters (it encrypts every relay URL)",
            ));
        }
        if self.server.url_keys.iter().any(|key| key.len() < 16) {
            return Err(invalid(
                "server.url_keys",
                "every key must be at least 16 characters (they encrypt every relay URL)",
            ));
        }
        let base = Url::parse(&self.stream.base_url).map_err(|e| {
            invalid(
                "stream.base_url",
                format!("`{}` is not a URL: {e}", self.stream.base_url),
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("stream.base_url", "must be an http(s) URL"));
        }
        for host in &self.upstream.allowed_hosts {
            if host.is_empty() || host.contains('/') || host.contains(':') && !host.starts_with('[')
            {
                return Err(invalid(
                    "upstream.allowed_hosts",
                    format!("`{host}` is not a bare host name (no scheme, port or path)"),
                ));
            }
        }
        for origin in &self.cors.allowed_origins {
            if origin != "*" && Url::parse(origin).is_err() {
                return Err(invalid(
                    "cors.allowed_origins",
                    format!("`{origin}` is neither `*` nor an origin like https://example.com"),
                ));
            }
        }
        if self.access.mode == AccessMode::Token
            && self
                .access
                .token_secret
                .as_deref()
                .or(self.stream.api_secret.as_deref())
                .unwrap_or("")
                .is_empty()
        {
            return Err(invalid(
                "access.token_secret",
                "token mode needs a secret: set access.token_secret or the Stream API secret",
            ));
        }
        self.embed.validate()?;
        self.cluster.validate()?;
        self.events.validate()?;
        self.viewers.validate()?;
        if self.access.max_viewers_per_call.is_some() && !self.viewers.enabled {
            return Err(invalid(
                "access.max_viewers_per_call",
                "counts viewers: it needs viewers.enabled = true",
            ));
        }
        if self.access.max_viewers_per_call == Some(0) {
            return Err(invalid(
                "access.max_viewers_per_call",
                "must be at least 1 (unset it for no limit)",
            ));
        }
        if self.cache.max_bytes.as_u64() < 1024 * 1024 {
            return Err(invalid("cache.max_bytes", "must be at least 1MiB"));
        }
        let header_bytes = self.server.max_header_bytes.as_u64();
        if !(8 * 1024..=1024 * 1024).contains(&header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                "must be between 8KiB and 1MiB",
            ));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.server.h2_max_concurrent_streams == 0 {
            return Err(invalid(
                "server.h2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.upstream.max_concurrent_fetches == 0 {
            return Err(invalid(
                "upstream.max_concurrent_fetches",
                "must be at least 1",
            ));
        }
        if self.upstream.max_object_bytes.as_u64() > u64::from(u32::MAX) {
            return Err(invalid("upstream.max_object_bytes", "must be under 4GiB"));
        }
        for (key, value) in [
            ("stream.call_ttl", self.stream.call_ttl),
            ("stream.timeout", self.stream.timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            (
                "upstream.first_byte_timeout",
                self.upstream.first_byte_timeout,
            ),
            ("upstream.total_timeout", self.upstream.total_timeout),
            ("server.request_timeout", self.server.request_timeout),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.send_timeout", self.server.send_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        Ok(())
    }

    /// The listener's transport settings.
    pub fn listener(&self) -> ListenerConfig {
        let s = &self.server;
        ListenerConfig {
            tls: self.tls.clone(),
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
            idle_timeout: s.idle_timeout,
            send_timeout: s.send_timeout,
            max_connections: s.max_connections,
            h2_max_concurrent_streams: s.h2_max_concurrent_streams,
            shutdown_grace: s.shutdown_grace,
        }
    }

    /// The Stream credentials, or the reason `serve` cannot start without them.
    pub fn credentials(&self) -> Result<(String, String), ConfigError> {
        match (&self.stream.api_key, &self.stream.api_secret) {
            (Some(key), Some(secret)) if !key.is_empty() && !secret.is_empty() => {
                Ok((key.clone(), secret.clone()))
            }
            _ => Err(invalid(
                "stream.api_key",
                "Stream credentials are missing: set STREAM_API_KEY and STREAM_API_SECRET (from your app's \
                 page in the Stream dashboard, https://dashboard.getstream.io) or stream.api_key / \
                 stream.api_secret in the config file. To try the relay without an account, run \
                 `hls-relay demo`.",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn reference_config_file_holds_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hls-relay.toml");
        let from_file: Config = Figment::from(Toml::file(&path)).extract().unwrap();
        assert_eq!(from_file, Config::default());
    }

    #[test]
    fn a_wrong_value_names_its_key() {
        let mut config = Config::default();
        config.server.public_url = Some("not a url".into());
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("server.public_url"), "{message}");

        let mut config = Config::default();
        config.upstream.allowed_hosts = vec!["https://cdn.example.com/".into()];
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("upstream.allowed_hosts"), "{message}");

        let mut config = Config::default();
        config.events.sqs_queue_url = Some("sqs://queue".into());
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("events.sqs_queue_url"), "{message}");

        for wait in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(21),
        ] {
            let mut config = Config::default();
            config.events.sqs_wait_time = wait;
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains("events.sqs_wait_time"), "{message}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_key() {
        let err = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[cache]\nmax_bytes = \"lots\""))
            .extract::<Config>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_bytes"), "{err}");
        let err = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[server]\nlisten_on = \"x\""))
            .extract::<Config>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_on"), "{err}");
    }

    #[test]
    fn missing_credentials_point_to_the_demo() {
        let message = Config::default().credentials().unwrap_err().to_string();
        assert!(message.contains("STREAM_API_KEY") && message.contains("hls-relay demo"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure returns figment's own (large) error type
    fn environment_overrides_the_file_and_names_keys_by_section() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "relay.toml",
                "[server]\nlisten = \"127.0.0.1:9000\"\n[cache]\nmax_bytes = \"64MiB\"\n",
            )?;
            jail.set_env("HLS_RELAY_CACHE__MAX_BYTES", "2GiB");
            jail.set_env("HLS_RELAY_UPSTREAM__ALLOWED_HOSTS", "[\"cdn.example.com\"]");
            jail.set_env("STREAM_API_KEY", "key");
            jail.set_env("STREAM_API_SECRET", "secret");
            // What Kubernetes adds for a Service named hls-relay: not config, and no reason to refuse to start.
            jail.set_env("HLS_RELAY_PORT", "tcp://10.0.0.1:80");
            jail.set_env("HLS_RELAY_SERVICE_HOST", "10.0.0.1");
            let config = Config::load(Some(Path::new("relay.toml"))).unwrap();
            assert_eq!(config.server.listen, "127.0.0.1:9000".parse().unwrap());
            assert_eq!(config.cache.max_bytes, ByteSize::gib(2));
            assert_eq!(
                config.upstream.allowed_hosts,
                vec!["cdn.example.com".to_owned()]
            );
            assert_eq!(
                config.credentials().unwrap(),
                ("key".into(), "secret".into())
            );

            jail.set_env(
                "HLS_RELAY_EVENTS__SQS_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/123456789012/stream-events",
            );
            let config = Config::load(Some(Path::new("relay.toml"))).unwrap();
            assert_eq!(
                config.events.sqs_queue_url.as_deref(),
                Some("https://sqs.eu-west-1.amazonaws.com/123456789012/stream-events")
            );

            jail.set_env("HLS_RELAY_SERVER__PUBLIC_URL", "ftp://nope");
            let message = Config::load(Some(Path::new("relay.toml")))
                .unwrap_err()
                .to_string();
            assert!(message.contains("server.public_url"), "{message}");
            Ok(())
        });
    }
}
