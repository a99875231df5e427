//! The HTTP shell: routes, the viewer-facing headers (CORS, caching, validators, ranges, compression), and the
//! listener with graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::{get, post};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use tokio::net::TcpListener;
use tower::Layer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};
use tracing::Instrument;

use crate::cluster::Fleet;
use crate::config::Config;
use crate::error::RelayError;
use crate::events::hub::CallEvent;
use crate::events::{self, Outcome, Source, webhook};
use crate::hls::blocking::Directives;
use crate::hls::encoding::{self, Coding};
use crate::hls::playlist::{self, PlaylistKind};
use crate::hls::urlmap::{ENTRY_PLAYLIST, UrlCodec};
use crate::http::listener::TlsConnection;
use crate::relay::cache::{CachedObject, PlaylistMeta};
use crate::relay::upstream::Upstream;
use crate::relay::{Relay, Served};
use crate::stream::api::StreamApi;
use crate::stream::call::CallId;
use crate::stream::resolver::{Resolution, Resolver};
use crate::telemetry::{CacheOutcome, Metrics};
use crate::viewers::{self, Viewers};

/// Longest request path accepted; relay object URLs are well under it.
const MAX_PATH_LEN: usize = 4096;

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Builds the relay from a validated config (credentials required).
pub fn build_relay(config: Config) -> Result<Relay, Box<dyn std::error::Error + Send + Sync>> {
    let (api_key, api_secret) = config.credentials()?;
    let metrics = Arc::new(Metrics::new());
    let api = StreamApi::new(
        &config.stream.base_url,
        &api_key,
        &api_secret,
        config.stream.timeout,
    );
    let fleet = Fleet::new(&config.cluster, metrics.clone())?;
    let resolver = Resolver::new(api, config.stream.call_ttl, metrics.clone())
        .with_fleet(fleet.clone(), config.stream.timeout);
    let upstream = Upstream::new(&config.upstream, metrics.clone())?;
    let keys = config.server.url_keys();
    let codec = if keys.is_empty() {
        tracing::warn!(
            "server.url_key is not set: relay URLs are encrypted with a random key and stop working when this \
             process restarts; set it (or server.url_keys) to share URLs across restarts and instances"
        );
        UrlCodec::random()
    } else {
        let keys: Vec<&[u8]> = keys.iter().map(|key| key.as_bytes()).collect();
        UrlCodec::with_keys(&keys)
    };
    let relay = Relay::new(config, resolver, upstream, codec, fleet, metrics);
    relay.follow_fleet();
    Ok(relay)
}

/// The service every connection calls. Relay objects (`/hls/…`), nearly all of a relay's traffic, take a direct
/// path — the hostile-path filter, metrics, CORS and the handler, as plain calls — because axum's routing and
/// boxed `from_fn` layers cost about a fifth of the CPU of a cached playlist hit (perf, `benches/load`).
/// Everything else goes through the router.
#[derive(Clone)]
pub struct App {
    objects: Cors<HlsObjects>,
    router: Router,
}

/// The relay's HTTP face, for the listener.
pub fn app(relay: Relay) -> App {
    App {
        objects: cors_layer(&relay.config().cors.allowed_origins).layer(HlsObjects {
            relay: relay.clone(),
        }),
        router: router(relay),
    }
}

impl tower::Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        tower_http::cors::ResponseFuture<BoxFuture<'static, Result<Response, Infallible>>>,
        RouteFuture<Infallible>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.uri().path().starts_with("/hls/") {
            Either::Left(self.objects.call(request))
        } else {
            Either::Right(self.router.call(request))
        }
    }
}

/// What the listener answers itself: cached hits (see `hits`).
pub fn fast_lane(relay: &Relay) -> Arc<dyn crate::http::fast::FastLane> {
    Arc::new(crate::http::hits::RelayHits::new(relay.clone()))
}

/// `/hls/…`: the viewer URLs of calls and everything the relay wrote into their playlists.
#[derive(Clone)]
struct HlsObjects {
    relay: Relay,
}

impl tower::Service<Request> for HlsObjects {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let relay = self.relay.clone();
        Box::pin(async move {
            let serve = |request: Request| async {
                if let Err(refusal) = check_path(request.uri().path()) {
                    return refusal.into_response();
                }
                let method = request.method().clone();
                if method != Method::GET && method != Method::HEAD {
                    return method_not_allowed().into_response();
                }
                let response = hls(&relay, request).await.into_response();
                match method {
                    Method::HEAD => without_body(response),
                    _ => response,
                }
            };
            Ok(observed(&relay, request, serve).await)
        })
    }
}

/// A HEAD response: the GET one's headers, with the length it would have had, and no body.
fn without_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    if let Some(length) = body.size_hint().exact() {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(length));
    }
    Response::from_parts(parts, Body::empty())
}

fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({"error": {"code": "method_not_allowed",
            "message": "only GET, HEAD and OPTIONS are served"}})),
    )
}

/// Everything but `/hls/…`.
fn router(relay: Relay) -> Router {
    let cors = cors_layer(&relay.config().cors.allowed_origins);
    // JSON and the embed page are compressed per response; playlists carry their own compressed variants (made
    // once per version, see `encoding`), and media is compressed already.
    let compressed = Router::new()
        .route("/v1/calls/{type}/{id}", get(call_state))
        .route("/v1/calls/{type}/{id}/events", get(call_events))
        .route("/metrics", get(metrics))
        .merge(crate::http::embed::routes())
        .layer(CompressionLayer::new().compress_when(compressible));
    Router::new()
        .route("/v1/webhooks/stream", post(stream_webhook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .merge(compressed)
        .fallback(|| async { RelayError::NotFound("no such resource".into()) })
        .method_not_allowed_fallback(|| async { method_not_allowed() })
        .layer(middleware::from_fn_with_state(relay.clone(), observe))
        .layer(middleware::from_fn(reject_hostile_paths))
        .layer(cors)
        .with_state(relay)
}

/// `GET /readyz`: ready whenever the process serves; the details say what it shares with its fleet. A fleet whose
/// Redis is unreachable still serves (each instance alone), so that is not "not ready".
async fn readiness(State(relay): State<Relay>) -> impl IntoResponse {
    let redis = match relay.fleet() {
        None => "off",
        Some(fleet) if fleet.is_up() => "connected",
        Some(_) => "unreachable",
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({"status": "ready", "redis": redis})),
    )
}

/// Completes on Ctrl-C or SIGTERM (what container runtimes send before killing).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight responses");
}

/// A relay running in the background on its own listener (tests, the demo).
pub struct RunningRelay {
    pub addr: SocketAddr,
    pub relay: Relay,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl RunningRelay {
    pub async fn start(config: Config) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_with_aws(config, events::sqs::aws_defaults()).await
    }

    /// As [`Self::start`], with the SQS consumer's AWS settings (credentials, region) from `aws` rather than the
    /// process environment, which parallel tests cannot set safely.
    pub async fn start_with_aws(
        config: Config,
        aws: aws_config::ConfigLoader,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let listener = TcpListener::bind(config.server.listen).await?;
        let addr = listener.local_addr()?;
        let http = crate::http::listener::Server::new(config.listener())?;
        let relay = build_relay(config)?;
        let http = http.with_fast_lane(fast_lane(&relay));
        let (shutdown, mut stop) = tokio::sync::watch::channel(false);
        events::sqs::spawn(relay.clone(), aws, shutdown.subscribe());
        let app = app(relay.clone());
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            if let Err(error) = http.serve(listener, app, stopped).await {
                tracing::error!(%error, "relay server stopped");
            }
        });
        Ok(Self {
            addr,
            relay,
            shutdown,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

pub(crate) fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
        .allow_headers([
            header::RANGE,
            header::IF_NONE_MATCH,
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
        ])
        .expose_headers([
            header::AGE,
            header::CONTENT_LENGTH,
            header::CONTENT_RANGE,
            header::ETAG,
            header::RETRY_AFTER,
            X_CACHE.clone(),
        ])
        .max_age(std::time::Duration::from_secs(86400))
}

/// Text is worth compressing (JSON, the embed page and hls.js); media is already compressed.
fn compressible(
    status: StatusCode,
    _: Version,
    headers: &HeaderMap,
    _: &axum::http::Extensions,
) -> bool {
    const TEXT: [&str; 3] = ["application/json", "text/html", "text/javascript"];
    status.is_success()
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| TEXT.iter().any(|text| ct.starts_with(text)))
}

/// Refuses traversal and smuggling attempts before routing: dot segments, encoded dots, slashes, backslashes and
/// NULs, and absurd lengths. Nothing a relay URL contains looks like these.
async fn reject_hostile_paths(request: Request, next: Next) -> Response {
    if let Err(refusal) = check_path(request.uri().path()) {
        return refusal.into_response();
    }
    next.run(request).await
}

pub fn check_path(path: &str) -> Result<(), RelayError> {
    if path.len() > MAX_PATH_LEN {
        return Err(RelayError::UriTooLong(MAX_PATH_LEN));
    }
    check_segments(path).map_err(|reason| RelayError::BadRequest(reason.into()))
}

fn check_segments(path: &str) -> Result<(), &'static str> {
    // Every request goes through here: only the bytes that can matter are looked at (memchr).
    let bytes = path.as_bytes();
    let is_dots = |segment: &[u8]| matches!(segment, b"." | b"..");
    let mut dot_segment = false;
    let mut segment_start = 0;
    for at in memchr::memchr3_iter(b'/', b'%', b'\\', bytes) {
        match bytes[at] {
            b'/' => {
                dot_segment |= is_dots(&bytes[segment_start..at]);
                segment_start = at + 1;
            }
            b'%' if !is_encoded_separator(&bytes[at + 1..]) => {}
            _ => return Err(ENCODED_SEPARATOR),
        }
    }
    if dot_segment || is_dots(&bytes[segment_start..]) {
        return Err("dot segments are not allowed in paths");
    }
    Ok(())
}

const ENCODED_SEPARATOR: &str =
    "encoded dots, slashes, backslashes and NULs are not allowed in paths";

/// Whether the two bytes after a `%` encode `.`, `/`, `\\` or NUL.
fn is_encoded_separator(after_percent: &[u8]) -> bool {
    match after_percent {
        [high, low, ..] => matches!(
            (high, low.to_ascii_lowercase()),
            (b'2', b'e' | b'f') | (b'5', b'c') | (b'0', b'0')
        ),
        _ => false,
    }
}

async fn observe(State(relay): State<Relay>, request: Request, next: Next) -> Response {
    observed(&relay, request, |request| next.run(request)).await
}

/// Counts every response by route and status, and traces each request in a span (at debug level, so that a
/// busy relay pays nothing for it unless asked: `log.level = "hls_relay=debug,info"`).
async fn observed<Serve, Served>(relay: &Relay, request: Request, serve: Serve) -> Response
where
    Serve: FnOnce(Request) -> Served,
    Served: Future<Output = Response>,
{
    let route = route_label(request.uri().path());
    let count = |status: StatusCode| {
        relay
            .metrics()
            .requests
            .with_label_values(&[route, status.as_str()])
            .inc()
    };
    let span = tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        route,
    );
    if span.is_disabled() {
        let response = serve(request).await;
        count(response.status());
        return response;
    }
    let started = Instant::now();
    let response = serve(request).instrument(span.clone()).await;
    let status = response.status();
    count(status);
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            cache = response
                .headers()
                .get(&X_CACHE)
                .and_then(|v| v.to_str().ok()),
            micros = started.elapsed().as_micros() as u64,
            "served"
        )
    });
    response
}

fn route_label(path: &str) -> &'static str {
    if let Some(rest) = path.strip_prefix("/hls/") {
        if rest.ends_with(ENTRY_PLAYLIST) && memchr::memchr_iter(b'/', rest.as_bytes()).count() == 2
        {
            "hls_entry"
        } else {
            "hls_object"
        }
    } else if path.starts_with("/v1/calls/") {
        "call_state"
    } else if path == "/metrics" || path == "/healthz" || path == "/readyz" {
        "ops"
    } else {
        "other"
    }
}

async fn metrics(State(relay): State<Relay>) -> impl IntoResponse {
    if let Some(viewers) = relay.viewers() {
        viewers.export(relay.metrics());
    }
    let (bytes, entries) = relay.cache().usage();
    relay.metrics().cache_bytes.set(bytes as i64);
    relay.metrics().cache_entries.set(entries as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        relay.metrics().render(),
    )
}

/// `GET /v1/calls/{type}/{id}`: the call's state in Stream's own shape, with the relay's playlist URL.
async fn call_state(
    State(relay): State<Relay>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    tls: Option<axum::Extension<TlsConnection>>,
) -> Result<Response, RelayError> {
    let call = CallId::new(&kind, &id).map_err(|e| RelayError::BadRequest(e.to_string()))?;
    let token = relay
        .gate()
        .admit(&call, viewer_token(&headers, uri.query()))?;
    let hls = match relay.resolve(&call).await? {
        Resolution::NotFound => return Err(RelayError::CallNotFound(call.to_string())),
        Resolution::NotBroadcasting => serde_json::Value::Null,
        Resolution::Live { .. } => {
            serde_json::json!({"playlist_url": entry_url(relay.config(), &headers, &uri, tls.is_some(), &call, token)})
        }
    };
    let mut body = serde_json::json!({"call": {
        "cid": call.to_string(), "type": call.kind(), "id": call.id(),
        "egress": {"broadcasting": !hls.is_null(), "hls": hls},
    }});
    // Beside `call`, so that Stream's shape inside it stays exactly Stream's.
    if let Some(viewers) = relay.viewers() {
        body["viewers"] = viewers.counts(&call).await.to_json();
    }
    Ok(([(header::CACHE_CONTROL, "no-cache")], axum::Json(body)).into_response())
}

/// `GET /v1/calls/{type}/{id}/events`: Server-Sent Events with the call's state now (`state`) and each change
/// (`broadcasting_started` with the relay's playlist URL, `broadcasting_stopped`, `broadcasting_failed`).
async fn call_events(
    State(relay): State<Relay>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    tls: Option<axum::Extension<TlsConnection>>,
) -> Result<Response, RelayError> {
    let call = CallId::new(&kind, &id).map_err(|e| RelayError::BadRequest(e.to_string()))?;
    let token = relay
        .gate()
        .admit(&call, viewer_token(&headers, uri.query()))?;
    // Subscribed before reading the state, so no change between the two is missed.
    let subscription = relay.hub().subscribe(&call);
    let resolution = relay.resolve(&call).await?;
    if resolution == Resolution::NotFound {
        return Err(RelayError::CallNotFound(call.to_string()));
    }
    relay.watch(&call);
    let playlist_url = entry_url(relay.config(), &headers, &uri, tls.is_some(), &call, token);
    let first = state_event(&call, &resolution, &playlist_url);
    // The counts now, then their changes from the call's one timer (see `Viewers::tell_pages`).
    let counts = match relay.viewers() {
        Some(viewers) => {
            viewers.tell_pages(&call, relay.hub());
            let counts = viewers.counts(&call).await;
            Some(
                SseEvent::default()
                    .event("viewers")
                    .data(&*viewers::event_data(&counts)),
            )
        }
        None => None,
    };
    let changes = futures_util::stream::unfold(
        (subscription, relay, call, playlist_url),
        |(mut subscription, relay, call, playlist_url)| async move {
            let event = match subscription.events.recv().await {
                Ok(change) => change_event(&call, &change, &playlist_url),
                // Too slow to keep up: the current state replaces the missed changes.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let resolution = relay
                        .resolve(&call)
                        .await
                        .unwrap_or(Resolution::NotBroadcasting);
                    state_event(&call, &resolution, &playlist_url)
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (subscription, relay, call, playlist_url),
            ))
        },
    );
    let now = futures_util::stream::iter([Some(first), counts].into_iter().flatten().map(Ok));
    let events = futures_util::StreamExt::chain(now, changes);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

fn state_event(call: &CallId, resolution: &Resolution, playlist_url: &str) -> SseEvent {
    let live = matches!(resolution, Resolution::Live { .. });
    sse_event("state", call, live, playlist_url)
}

fn change_event(call: &CallId, change: &CallEvent, playlist_url: &str) -> SseEvent {
    match change {
        CallEvent::Viewers(data) => SseEvent::default().event(change.name()).data(&**data),
        _ => {
            let live = *change == CallEvent::BroadcastingStarted;
            sse_event(change.name(), call, live, playlist_url)
        }
    }
}

fn sse_event(name: &str, call: &CallId, live: bool, playlist_url: &str) -> SseEvent {
    let data = serde_json::json!({
        "cid": call.to_string(),
        "broadcasting": live,
        "playlist_url": live.then_some(playlist_url),
    });
    SseEvent::default().event(name).data(data.to_string())
}

/// `POST /v1/webhooks/stream`: Stream's event deliveries, plain or gzip-compressed. Every check (app key, coding,
/// size, signature over the uncompressed JSON) runs before the event is parsed; a refused delivery changes nothing.
async fn stream_webhook(
    State(relay): State<Relay>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RelayError> {
    let source = Source::Webhook;
    // The raw body is bounded too; `webhook::open` bounds it again once inflated.
    let body = axum::body::to_bytes(body, webhook::MAX_BODY_BYTES)
        .await
        .map_err(|_| RelayError::PayloadTooLarge(webhook::MAX_BODY_BYTES))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let stream = &relay.config().stream;
    let app = webhook::App {
        api_key: stream.api_key.as_deref().unwrap_or_default(),
        api_secret: stream.api_secret.as_deref().unwrap_or_default().as_bytes(),
    };
    let delivery = webhook::Delivery {
        content_encoding: header("content-encoding"),
        signature: header("x-signature"),
        api_key: header("x-api-key"),
        body: &body,
    };
    let json = webhook::open(delivery, app).map_err(|refusal| {
        relay.count_event(source, "unverified", "refused");
        RelayError::from(refusal)
    })?;
    let event = events::parse(&json, time::OffsetDateTime::now_utc()).map_err(|error| {
        relay.count_event(source, "unparsed", "refused");
        RelayError::BadRequest(error.to_string())
    })?;
    let outcome = match header("x-webhook-id") {
        Some(id) if !relay.first_delivery(id).await => {
            relay.count_event(source, events::type_label(&event.kind), "duplicate");
            tracing::info!(cid = %event.call, event = %event.kind, webhook_id = id, "webhook repeated");
            Outcome::Duplicate
        }
        _ => relay.apply_event(source, &event).await,
    };
    Ok(axum::Json(serde_json::json!({"ok": true, "outcome": outcome.label()})).into_response())
}

/// The absolute URL of a call's entry playlist on this relay, carrying the viewer's token if there is one.
fn entry_url(
    config: &Config,
    headers: &HeaderMap,
    uri: &Uri,
    tls: bool,
    call: &CallId,
    token: Option<&str>,
) -> String {
    let base = public_base(config, headers, uri, tls);
    let mut url = format!("{base}/hls/{}/{}/{ENTRY_PLAYLIST}", call.kind(), call.id());
    if let Some(token) = token {
        url.push_str("?token=");
        url.push_str(token);
    }
    url
}

/// The viewer token of a request: `Authorization: Bearer …` (pages' fetches) or `?token=` (players, EventSource).
fn viewer_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| query_value(query, "token"))
}

/// The value of `name` in a query. Every `/hls` request with a query asks for one or two (`token`, `vs`) and
/// queries are short: a plain byte loop, where `str` splitting (memchr set-up per piece) cost more than the rest
/// of counting a viewer's reload.
pub(crate) fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    let query = query?;
    let base = query.as_ptr() as usize;
    query.as_bytes().split(|&b| b == b'&').find_map(|pair| {
        let value = pair.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        // Split at ASCII bytes only, so the offsets are character boundaries.
        let start = value.as_ptr() as usize - base;
        Some(&query[start..start + value.len()])
    })
}

/// The relay's own absolute base URL: configured, or as this request reached it.
fn public_base(config: &Config, headers: &HeaderMap, uri: &Uri, tls: bool) -> String {
    if let Some(url) = &config.server.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("localhost");
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p == "https");
    let scheme = if tls || forwarded_https {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// `GET /hls/{type}/{id}/index.m3u8` and `GET /hls/{type}/{id}/{location}/{seal}/{file}`. The raw path is used, not
/// a decoded one: signatures cover the URL exactly as the relay wrote it.
async fn hls(relay: &Relay, request: Request) -> Result<Response, RelayError> {
    let (path, query, headers) = (
        request.uri().path(),
        request.uri().query(),
        request.headers(),
    );
    let rest = path.strip_prefix("/hls/").unwrap_or_default();
    let mut parts = rest.splitn(5, '/');
    let (kind, id) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let call = CallId::new(kind, id).map_err(|e| RelayError::BadRequest(e.to_string()))?;
    let token = relay.gate().admit(&call, query_value(query, "token"))?;
    let viewer = Viewer {
        token,
        session: None,
    };
    // Most requests are fresh cache hits: answered here, without the miss path (boxed below, so that its large
    // future is neither built nor moved for a hit).
    let blocking = query.is_some_and(|query| query.contains("_HLS_"));
    if !blocking && let Some(served) = relay.fresh(path) {
        return match relay.viewers() {
            None => Ok(render(served, headers, viewer).await),
            Some(viewers) => {
                let entry = is_entry(path, kind, id);
                watched(viewers, &call, entry, query, served, headers, viewer).await
            }
        };
    }
    let entry = is_entry(path, kind, id);
    let work = async {
        match (parts.next(), parts.next(), parts.next()) {
            (Some(ENTRY_PLAYLIST), None, None) => relay.entry_playlist(&call, path).await,
            (Some(location), Some(seal), Some(file)) if !file.contains('/') => {
                let directives =
                    Directives::parse(query).map_err(|e| RelayError::BadRequest(e.to_string()))?;
                if directives.is_empty() {
                    relay.object(&call, path, location, seal, file).await
                } else {
                    relay
                        .blocking_object(&call, path, location, seal, file, directives)
                        .await
                }
            }
            _ => Err(RelayError::NotFound("no such resource".into())),
        }
    };
    let served = tokio::time::timeout(relay.config().server.request_timeout, work)
        .boxed()
        .await
        .map_err(|_| RelayError::UpstreamTimeout("no response from upstream in time".into()))??;
    match relay.viewers() {
        None => Ok(render(served, headers, viewer).await),
        Some(viewers) => watched(viewers, &call, entry, query, served, headers, viewer).await,
    }
}

/// Whether `path` (`/hls/{kind}/{id}/…`) is the entry playlist: by length alone, no scan.
pub(crate) fn is_entry(path: &str, kind: &str, id: &str) -> bool {
    path.len() == "/hls///".len() + kind.len() + id.len() + ENTRY_PLAYLIST.len()
        && path.ends_with(ENTRY_PLAYLIST)
}

/// What of a viewer goes into the playlists it gets: its token (token mode) and its session (viewer counting).
#[derive(Debug, Clone, Copy)]
struct Viewer<'a> {
    token: Option<&'a str>,
    session: Option<&'a str>,
}

/// A response with viewer counting on. A playlist reload naming a session the relay issued counts for that
/// session and is served with the session in its playlist URIs; the entry playlist without one starts a session
/// (a multivariant entry is served with the new id in its variant URIs; a media-playlist entry redirects to
/// itself with the id, as it has no URIs of its own to carry it); anything else is served as it would be
/// without counting, and counts nothing.
async fn watched(
    viewers: &Viewers,
    call: &CallId,
    entry: bool,
    query: Option<&str>,
    served: Served,
    request: &HeaderMap,
    viewer: Viewer<'_>,
) -> Result<Response, RelayError> {
    let playlist = match &served {
        Served::Whole { object, .. } if object.status == StatusCode::OK => object.playlist.clone(),
        _ => None,
    };
    let Some(playlist) = playlist else {
        return Ok(render(served, request, viewer).await);
    };
    let (rendition, target) = (playlist.rendition.as_ref(), playlist.info.target_duration);
    let named = query_value(query, "vs");
    let minted;
    let session = match named.filter(|session| viewers.reload(call, session, rendition, target)) {
        Some(session) => session,
        None if entry => {
            minted = viewers.start(call, target)?;
            if playlist.info.kind == PlaylistKind::Media {
                return Ok(to_session(&minted, viewer.token));
            }
            &minted
        }
        None => return Ok(render(served, request, viewer).await),
    };
    let viewer = Viewer {
        session: Some(session),
        ..viewer
    };
    Ok(render(served, request, viewer).await)
}

/// The entry URL again, with the viewer's new session: `Location` is relative, so a path prefix in front of the
/// relay (or a CDN's host) is kept.
fn to_session(session: &str, token: Option<&str>) -> Response {
    let location = match token {
        Some(token) => format!("{ENTRY_PLAYLIST}?token={token}&vs={session}"),
        None => format!("{ENTRY_PLAYLIST}?vs={session}"),
    };
    let mut response = object_response(Body::empty(), StatusCode::FOUND);
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::try_from(location).expect("tokens and session ids are URL-safe"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn render(served: Served, request: &HeaderMap, viewer: Viewer<'_>) -> Response {
    match served {
        Served::Whole {
            object,
            outcome,
            stale,
        } => {
            // Playlists are text and worth compressing; media is compressed already. Ranges are cut from the
            // identity bytes.
            let coding = match object.playlist.is_some() && !request.contains_key(header::RANGE) {
                true => encoding::preferred(request.get(header::ACCEPT_ENCODING)),
                false => None,
            };
            match &object.playlist {
                Some(playlist) if viewer.token.is_some() || viewer.session.is_some() => {
                    render_for_viewer(&object, playlist, viewer, outcome, stale, request, coding)
                }
                _ => render_whole(&object, outcome, stale, request, coding),
            }
        }
        Served::Streaming {
            head,
            fill,
            outcome,
        } => {
            if request.contains_key(header::RANGE) {
                // Ranges are cut from the whole object; the fill finishes at upstream speed.
                return match fill.complete().await {
                    Ok(object) => render_whole(&object, outcome, false, request, None),
                    Err(error) => error.into_response(),
                };
            }
            let mut response = object_response(Body::from_stream(fill.body()), StatusCode::OK);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, head.content_type);
            headers.insert(header::CACHE_CONTROL, head.cache_control);
            if let Some(length) = head.content_length {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            if let Some(etag) = head.etag {
                headers.insert(header::ETAG, etag);
            }
            headers.insert(header::AGE, HeaderValue::from_static("0"));
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            headers.insert(X_CACHE.clone(), x_cache(outcome, false));
            response
        }
    }
}

/// A playlist with the viewer's token carried into every URI the relay wrote and its session into every playlist
/// URI: private to that viewer, so compressed per request when the viewer accepts it. A playlist that gets
/// nothing of the viewer (no token, and no playlist URIs for the session: a media playlist) is the shared one,
/// with its ETag and compressed variants, only marked private since its URL names the viewer's session.
fn render_for_viewer(
    object: &CachedObject,
    playlist: &PlaylistMeta,
    viewer: Viewer<'_>,
    outcome: CacheOutcome,
    stale: bool,
    request: &HeaderMap,
    coding: Option<Coding>,
) -> Response {
    let token = viewer.token.map(|token| format!("token={token}"));
    let session = viewer
        .session
        .filter(|_| !playlist.playlist_uri_ends.is_empty())
        .map(|session| format!("vs={session}"));
    if token.is_none() && session.is_none() {
        let mut response = render_whole(object, outcome, stale, request, coding);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, private(&object.cache_control));
        return response;
    }
    let body = playlist::with_queries(
        &object.body,
        &playlist.uri_ends,
        token.as_deref(),
        &playlist.playlist_uri_ends,
        session.as_deref(),
    );
    let body = match coding {
        Some(coding) => encoding::compress(coding, &body),
        None => body.into(),
    };
    let mut response = object_response(Body::from(body), object.status);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, object.content_type.clone());
    headers.insert(header::CACHE_CONTROL, private(&object.cache_control));
    headers.insert(
        header::AGE,
        HeaderValue::from(object.age_secs(Instant::now())),
    );
    headers.insert(X_CACHE.clone(), x_cache(outcome, false));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(coding) = coding {
        headers.insert(header::CONTENT_ENCODING, coding.header_value());
    }
    response
}

/// The shared object's `Cache-Control`, for one viewer's copy: same freshness, no shared cache. Playlists'
/// max-ages are a few seconds, so those values are made once (building one was a sixth of the cost of counting
/// a reload).
pub(crate) fn private(cache_control: &HeaderValue) -> HeaderValue {
    static PRIVATE: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        (0..64)
            .map(|age| HeaderValue::try_from(format!("private, max-age={age}")).expect("ASCII"))
            .collect()
    });
    let value = cache_control.to_str().unwrap_or("max-age=0");
    let age = value
        .strip_prefix("public, max-age=")
        .and_then(|age| age.parse::<usize>().ok());
    match age.and_then(|age| PRIVATE.get(age)) {
        Some(private) => private.clone(),
        None => HeaderValue::try_from(value.replacen("public", "private", 1)).expect("ASCII"),
    }
}

/// A response for a relayed object, its header map sized for the relay's headers and CORS's at once (growing it
/// as they are added was a tenth of the instructions of a cached playlist hit).
fn object_response(body: Body, status: StatusCode) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = HeaderMap::with_capacity(16);
    response
}

fn x_cache(outcome: CacheOutcome, stale: bool) -> HeaderValue {
    HeaderValue::from_static(match (outcome, stale) {
        (_, true) => "STALE",
        (CacheOutcome::Hit, _) => "HIT",
        (CacheOutcome::Miss, _) => "MISS",
        (CacheOutcome::Coalesced, _) => "COALESCED",
    })
}

fn render_whole(
    object: &CachedObject,
    outcome: CacheOutcome,
    stale: bool,
    request: &HeaderMap,
    coding: Option<Coding>,
) -> Response {
    let is_ok = object.status == StatusCode::OK;
    let variant = match (is_ok, coding, &object.playlist) {
        (true, Some(coding), Some(playlist)) => Some((
            coding,
            playlist.variants.get(coding, &object.body, &object.etag),
        )),
        _ => None,
    };
    let (mut body, etag) = match variant {
        Some((_, variant)) => (variant.body.clone(), &variant.etag),
        None => (object.body.clone(), &object.etag),
    };
    let mut status = object.status;
    let mut content_range = None;
    if is_ok && etag_matches(request, etag) {
        status = StatusCode::NOT_MODIFIED;
        body = bytes::Bytes::new();
    } else if let (true, None, Some(range)) = (is_ok, variant, request.get(header::RANGE)) {
        match byte_range(range.to_str().unwrap_or(""), object.body.len() as u64) {
            ByteRange::Whole => {}
            ByteRange::Part { first, last } => {
                status = StatusCode::PARTIAL_CONTENT;
                body = object.body.slice(first as usize..=last as usize);
                content_range = Some(format!("bytes {first}-{last}/{}", object.body.len()));
            }
            ByteRange::Unsatisfiable => {
                let mut response =
                    RelayError::BadRequest("requested range is outside the object".into())
                        .into_response();
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let value = format!("bytes */{}", object.body.len());
                response.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::try_from(value).expect("ASCII"),
                );
                return response;
            }
        }
    }
    let mut response = object_response(Body::from(body), status);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, object.content_type.clone());
    headers.insert(header::CACHE_CONTROL, object.cache_control.clone());
    if is_ok {
        headers.insert(header::ETAG, etag.clone());
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    headers.insert(
        header::AGE,
        HeaderValue::from(object.age_secs(Instant::now())),
    );
    headers.insert(X_CACHE.clone(), x_cache(outcome, stale));
    if let Some(range) = content_range {
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::try_from(range).expect("ASCII"),
        );
    }
    if object.playlist.is_some() {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Some((coding, _)) = variant {
        headers.insert(header::CONTENT_ENCODING, coding.header_value());
    }
    response
}

/// `If-None-Match` (a list, weak forms, `*`) against the representation's strong ETag.
pub(crate) fn etag_matches(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(candidates) = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let etag = etag.as_bytes();
    candidates
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/").as_bytes() == etag)
}

#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    /// No usable single range: serve the whole object (multi-ranges are allowed to be ignored).
    Whole,
    Part {
        first: u64,
        last: u64,
    },
    Unsatisfiable,
}

/// Parses a single `bytes=` range (RFC 9110 §14.1.2) against an object of `len` bytes.
fn byte_range(value: &str, len: u64) -> ByteRange {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    let (first, last) = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(first), Ok(last)) if first <= last => (first, last.min(len.saturating_sub(1))),
        (Ok(first), Err(_)) if last.is_empty() => (first, len.saturating_sub(1)),
        (Err(_), Ok(suffix)) if first.is_empty() && suffix > 0 => {
            (len.saturating_sub(suffix), len.saturating_sub(1))
        }
        _ => return ByteRange::Whole,
    };
    if first >= len {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part { first, last }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        for path in [
            "/hls/a/b/../../etc/passwd",
            "/hls/a/b/%2e%2e/x",
            "/hls/a/b/x%2Fy/z.ts",
            "/hls/a/b/x%5cy",
            "/hls/a/./b",
            "/hls/a/b/..",
            "/hls/a/b/.",
            "/..",
            "/hls/a\\b",
            "/hls/a/b%00",
            "/hls/a/b%2E",
        ] {
            assert!(check_path(path).is_err(), "{path}");
        }
        for path in [
            "/hls/a/b%2",
            "/hls/a/b%",
            "/hls/a/.../b",
            "/hls/a/.b/c.",
            "/",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
        assert!(check_path(&format!("/hls/{}", "a".repeat(5000))).is_err());
        assert!(check_path("/hls/livestream/abc/index.m3u8").is_ok());
        assert!(check_path("/hls/livestream/abc/AbC-_p0/seg%20one.ts").is_ok());
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(
            byte_range("bytes=0-99", 1000),
            ByteRange::Part { first: 0, last: 99 }
        );
        assert_eq!(
            byte_range("bytes=900-", 1000),
            ByteRange::Part {
                first: 900,
                last: 999
            }
        );
        assert_eq!(
            byte_range("bytes=-100", 1000),
            ByteRange::Part {
                first: 900,
                last: 999
            }
        );
        assert_eq!(
            byte_range("bytes=990-2000", 1000),
            ByteRange::Part {
                first: 990,
                last: 999
            }
        );
        assert_eq!(byte_range("bytes=1000-", 1000), ByteRange::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,5-6", 1000), ByteRange::Whole);
        assert_eq!(byte_range("items=0-1", 1000), ByteRange::Whole);
        assert_eq!(byte_range("bytes=5-1", 1000), ByteRange::Whole);
    }

    #[test]
    fn if_none_match_accepts_lists_weak_forms_and_star() {
        let etag = HeaderValue::from_static("\"abc\"");
        let mut request = HeaderMap::new();
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(etag_matches(&request, &etag));
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert!(!etag_matches(&request, &etag));
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(etag_matches(&request, &etag));
    }

    #[test]
    fn query_values_are_found_by_exact_name() {
        let query = Some("vs=abc&token=t.k-n&x&token2=no&=v&é=1&vs=second");
        assert_eq!(query_value(query, "vs"), Some("abc"));
        assert_eq!(query_value(query, "token"), Some("t.k-n"));
        assert_eq!(query_value(query, "x"), None);
        assert_eq!(query_value(query, "tok"), None);
        assert_eq!(query_value(query, "é"), Some("1"));
        assert_eq!(query_value(Some("a=1&b="), "b"), Some(""));
        assert_eq!(query_value(None, "vs"), None);
        assert_eq!(query_value(Some(""), "vs"), None);
    }

    #[test]
    fn a_viewers_copy_is_private_with_the_same_freshness() {
        for (public, private_) in [
            ("public, max-age=1", "private, max-age=1"),
            ("public, max-age=0", "private, max-age=0"),
            ("public, max-age=300", "private, max-age=300"),
            ("public, max-age=6, x", "private, max-age=6, x"),
        ] {
            assert_eq!(private(&HeaderValue::from_static(public)), private_);
        }
    }

    #[test]
    fn the_entry_is_told_by_its_length() {
        assert!(is_entry(
            "/hls/livestream/abc/index.m3u8",
            "livestream",
            "abc"
        ));
        assert!(!is_entry(
            "/hls/livestream/abc/x/index.m3u8",
            "livestream",
            "abc"
        ));
        assert!(!is_entry(
            "/hls/livestream/abc/loc/seal/p.m3u8",
            "livestream",
            "abc"
        ));
        assert!(!is_entry(
            "/hls/livestream/abc/xindex.m3u8",
            "livestream",
            "abc"
        ));
    }

    #[test]
    fn routes_are_labelled_for_metrics() {
        assert_eq!(route_label("/hls/livestream/abc/index.m3u8"), "hls_entry");
        assert_eq!(
            route_label("/hls/livestream/abc/tok/index.m3u8"),
            "hls_object"
        );
        assert_eq!(route_label("/v1/calls/livestream/abc"), "call_state");
    }
}
