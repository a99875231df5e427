//! Test harness: a simulated Stream backend and a relay in front of it, both real HTTP servers on 127.0.0.1:0.
#![allow(dead_code)] // each test binary uses its own subset of the helpers

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hls_relay::config::Config;
use hls_relay::http::server::RunningRelay;
pub use hls_relay::sim::CallSetup;
use hls_relay::sim::{self, SimConfig, SimHandle};

#[allow(unused_imports)] // not every test binary injects faults
pub use hls_relay::sim::{Flavour, OriginFault};

/// Upper bound on any wait in a test: conditions are polled, never slept on blindly.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct World {
    pub sim: SimHandle,
    pub relay: RunningRelay,
    pub http: reqwest::Client,
}

impl World {
    /// A simulator with a broadcasting MPEG-TS call `livestream:ts` and an fMP4 call `livestream:fmp4`, and a
    /// relay wired to it.
    pub async fn start() -> World {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> World {
        let sim = sim::start(SimConfig::default())
            .await
            .expect("simulator starts");
        sim.add_call("livestream", "ts", CallSetup::default());
        sim.add_call(
            "livestream",
            "fmp4",
            CallSetup {
                flavour: Flavour::Fmp4,
                ..CallSetup::default()
            },
        );
        let relay = start_relay(&sim, tweak).await;
        World {
            sim,
            relay,
            http: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.relay.base_url())
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("relay answers")
    }

    /// GETs a playlist from the relay, asserting success and the playlist content type.
    pub async fn playlist(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/vnd.apple.mpegurl"
        );
        response.text().await.unwrap()
    }

    /// Follows the entry playlist of `call` to its first variant's media playlist; returns (relay path, text).
    pub async fn first_media_playlist(&self, call: &str) -> (String, String) {
        let entry_path = format!("/hls/livestream/{call}/index.m3u8");
        let master = self.playlist(&entry_path).await;
        let variant = uri_lines(&master)[0].to_owned();
        let path = resolve(&entry_path, &variant);
        let text = self.playlist(&path).await;
        (path, text)
    }

    /// Asserts an error response (status, JSON `{"error":{"code","message"}}`) and returns its headers.
    pub async fn expect_error(
        &self,
        path: &str,
        status: u16,
        code: &str,
    ) -> reqwest::header::HeaderMap {
        assert_error(self.get(path).await, status, code).await
    }
}

pub async fn assert_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> reqwest::header::HeaderMap {
    let url = response.url().clone();
    assert_eq!(response.status(), status, "status for {url}");
    let headers = response.headers().clone();
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{url}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    headers
}

/// The URL key of every test relay.
pub const URL_KEY: &str = "test-url-key-0123456789";

/// The upstream URL behind a relay object path (`/hls/{type}/{id}/{location}/{name}/{file}`), read with the test
/// relays' URL key: what only a holder of the key can know.
pub fn upstream_of(relay_path: &str) -> url::Url {
    let path = relay_path.split('?').next().unwrap();
    let parts: Vec<&str> = path.trim_start_matches("/hls/").split('/').collect();
    let [kind, id, location, name, file] = parts[..] else {
        panic!("not a relay object path: {relay_path}");
    };
    let call = hls_relay::stream::call::CallId::new(kind, id).unwrap();
    hls_relay::hls::urlmap::UrlCodec::new(URL_KEY.as_bytes())
        .verify(&call, location, name, file)
        .expect("a path the test relay wrote")
        .url
}

/// The upstream file names behind the URI lines of a relayed playlist served at `playlist_path`.
pub fn upstream_files(playlist_path: &str, playlist: &str) -> Vec<String> {
    uri_lines(playlist)
        .into_iter()
        .map(|uri| {
            let upstream = upstream_of(&resolve(playlist_path, uri));
            upstream.path().rsplit('/').next().unwrap().to_owned()
        })
        .collect()
}

pub async fn start_relay(sim: &SimHandle, tweak: impl FnOnce(&mut Config)) -> RunningRelay {
    start_relay_with_aws(sim, tweak, hls_relay::events::sqs::aws_defaults()).await
}

/// As `start_relay`, with the SQS consumer's AWS credentials and region from `aws` (the process environment is
/// not for tests to change).
pub async fn start_relay_with_aws(
    sim: &SimHandle,
    tweak: impl FnOnce(&mut Config),
    aws: aws_config::ConfigLoader,
) -> RunningRelay {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.url_key = Some(URL_KEY.into());
    config.stream.base_url = sim.base_url();
    config.stream.api_key = Some(sim.api_key().to_owned());
    config.stream.api_secret = Some(sim.api_secret().to_owned());
    config.upstream.first_byte_timeout = Duration::from_secs(2);
    tweak(&mut config);
    config.validate().expect("test config is valid");
    RunningRelay::start_with_aws(config, aws)
        .await
        .expect("relay starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

/// The URI lines of a playlist (not tags, not blank lines).
pub fn uri_lines(playlist: &str) -> Vec<&str> {
    playlist
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// Values of `URI="…"` attributes in a playlist.
pub fn uri_attributes(playlist: &str) -> Vec<String> {
    playlist
        .split("URI=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or("").to_owned())
        .collect()
}

/// Resolves a relative reference against a relay path, as a player does.
pub fn resolve(base_path: &str, reference: &str) -> String {
    let base = url::Url::parse(&format!("http://relay{base_path}")).unwrap();
    let joined = base.join(reference).unwrap();
    joined[url::Position::BeforePath..].to_owned()
}

/// Polls `condition` until it holds or `PATIENCE` runs out.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A tiny origin serving fixed responses, for upstream shapes the simulator does not make (foreign hosts,
/// hand-written playlists). Counts requests by path.
/// A canned response: status, content type, body.
type Canned = (u16, &'static str, Vec<u8>);

#[derive(Clone)]
pub struct FixedOrigin {
    pub addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Canned>>>,
    hits: Arc<Mutex<HashMap<String, u64>>>,
    total: Arc<AtomicU64>,
    /// Requests still to fail, per path, before the canned response is served.
    failures: Arc<Mutex<HashMap<String, (u32, u16)>>>,
}

impl FixedOrigin {
    pub async fn start() -> FixedOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = FixedOrigin {
            addr: listener.local_addr().unwrap(),
            routes: Arc::default(),
            hits: Arc::default(),
            total: Arc::default(),
            failures: Arc::default(),
        };
        let state = origin.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let state = state.clone();
            async move { state.answer(uri.path()) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        origin
    }

    fn answer(&self, path: &str) -> Response {
        *self
            .hits
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        if let Some((left, status)) = self.failures.lock().unwrap().get_mut(path)
            && *left > 0
        {
            *left -= 1;
            return StatusCode::from_u16(*status).unwrap().into_response();
        }
        match self.routes.lock().unwrap().get(path) {
            Some((status, content_type, body)) => (
                StatusCode::from_u16(*status).unwrap(),
                [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
                body.clone(),
            )
                .into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    pub fn serve(
        &self,
        path: &str,
        status: u16,
        content_type: &'static str,
        body: impl Into<Vec<u8>>,
    ) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, content_type, body.into()));
    }

    /// The next `count` requests for `path` answer `status`.
    pub fn fail_next(&self, path: &str, count: u32, status: u16) {
        self.failures
            .lock()
            .unwrap()
            .insert(path.to_owned(), (count, status));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self, path: &str) -> u64 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
}

/// Reads `event:`/`data:` pairs from a relay's SSE stream, skipping keep-alive comments.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    /// How long to wait for the next bytes.
    patience: Duration,
}

impl SseReader {
    /// Subscribes to `livestream:{call}` on `relay`.
    pub async fn open(relay: &RunningRelay, call: &str) -> SseReader {
        Self::from_url(&format!(
            "{}/v1/calls/livestream/{call}/events",
            relay.base_url()
        ))
        .await
    }

    /// Subscribes to the event stream at `url`.
    pub async fn from_url(url: &str) -> SseReader {
        let response = client()
            .get(url)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        SseReader {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            patience: PATIENCE,
        }
    }

    /// Waits up to `patience` for each event instead of `PATIENCE`.
    pub fn patient(mut self, patience: Duration) -> SseReader {
        self.patience = patience;
        self
    }

    /// The next event about the broadcast (`viewers` events are skipped: see [`Self::next_viewers`]).
    pub async fn next(&mut self) -> (String, serde_json::Value) {
        loop {
            let (name, data) = self.next_any().await;
            if name != "viewers" {
                return (name, data);
            }
        }
    }

    /// The data of the next `viewers` event, skipping others.
    pub async fn next_viewers(&mut self) -> serde_json::Value {
        loop {
            let (name, data) = self.next_any().await;
            if name == "viewers" {
                return data;
            }
        }
    }

    pub async fn next_any(&mut self) -> (String, serde_json::Value) {
        use futures_util::StreamExt;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                if let (Some(name), Some(data)) = (field("event:"), field("data:")) {
                    return (name, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout(self.patience, self.body.next())
                .await
                .expect("an SSE event in time")
                .expect("the stream stays open")
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Whether `what` a test needs is here (`found`). Missing, the test says so and stops, except in CI, which must
/// install it (`.ci/run`).
pub fn required(what: &str, found: bool, install: &str) -> bool {
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install {what} (see .ci/run)"
        );
        eprintln!("{what} is not installed: skipping ({install})");
    }
    found
}

/// Whether `program` runs here (see [`required`]).
pub fn tool_available(program: &str, version_flag: &str, install: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg(version_flag)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    required(program, found, install)
}

/// Whether `python3` can import `module` (see [`required`]).
pub fn python_module_available(module: &str, install: &str) -> bool {
    let found = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    required(&format!("the Python module {module}"), found, install)
}

/// A port that was free a moment ago, for servers that cannot bind port 0 and report it (redis-server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real redis-server on 127.0.0.1, in memory only, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts redis-server on a free port; `None` (after saying why) where it is not installed, outside CI.
    pub async fn start() -> Option<RedisServer> {
        if !tool_available("redis-server", "--version", "apt-get install redis-server") {
            return None;
        }
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        server.restart().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server answers PING", || async move {
            redis_ping(port).await
        })
        .await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").await.is_ok()
        && stream.read_exact(&mut reply).await.is_ok()
        && &reply == b"+PONG\r\n"
}
