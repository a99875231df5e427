//! A simulated Stream Video backend: the Video API and a live HLS origin in one axum server on loopback.
//!
//! Tests, benchmarks and `hls-relay demo` use it in place of Stream. The pieces:
//!
//! - `api`: the Stream-compatible REST API (`/api/v2/video/call/{type}/{id}…`): Stream's auth (api_key + JWT;
//!   server tokens with empty claims, as the official SDKs sign them, or `{"server": true}`), error shape and call
//!   state, and the lifecycle: start/stop broadcasting, go live/stop live (backstage calls are not live until
//!   `go_live`; `go_live` with `start_hls` starts HLS, `stop_live` stops it unless `continue_hls`) and end call
//!   (`mark_ended`). Starting a broadcast gives the call a playlist URL on the origin. Answers carry every field
//!   the official SDKs' models require, and write times as `SimConfig::time_format` says (Unix nanoseconds by
//!   default, which is what those models parse; RFC 3339 on request).
//! - `roles`: users and call members with roles (`host`, `admin`, `user`) and the capabilities the API checks; a
//!   user without one is refused with Stream's 403 (code 17) naming the missing capability.
//! - `webhooks`: every lifecycle change (from the API or a `SimHandle` method) emits a Stream event
//!   (`call.broadcasting_started`/`_stopped`/`_failed`, or the `call.hls_*` names, `call.live_started`,
//!   `call.ended`); with a webhook URL configured it is POSTed there, signed like Stream's, in order, with
//!   retries, gzipped if `compress_webhooks` is on. Tests can inspect deliveries and send forged, unsigned or
//!   replayed ones.
//! - `sqs`: with an `SqsTarget`, every event also goes to an SQS queue (`SendMessage`), as JSON or base64(gzip(JSON)),
//!   optionally in an SNS envelope, as Stream's SQS and SNS deliveries arrive.
//! - `origin`: the CDN side (`/cdn/{type}/{id}/{session}/…`): a master playlist with two video variants and an
//!   audio rendition, live sliding-window media playlists that advance in real time, and segments that loop the
//!   embedded fixtures. Per call it can sign segment URLs, redirect the master, or misbehave (`OriginFault`).
//!   With `CallSetup::low_latency` (fMP4) it is an LL-HLS origin: parts of 0.5 s produced in real time, blocking
//!   playlist reloads (`_HLS_msn`, `_HLS_part`), preload hints whose parts stream out as they are produced, delta
//!   updates (`_HLS_skip`) and rendition reports.
//! - `hls`: the origin's pure core (window and production arithmetic, playlist text, paths, URL signing).
//! - `fixtures`: the media, embedded from `fixtures/` (made by `scripts/make-fixtures.sh`); `mp4` splits the
//!   low-latency segments into their movie fragments, the parts.
//! - `state` and `clock`: the calls and counters the handlers share, and a clock tests can advance (events'
//!   `created_at` follow it, with nanoseconds, strictly increasing).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use hls_relay::sim::{self, CallSetup, SimConfig};
//! let sim = sim::start(SimConfig::default()).await?;
//! sim.add_call("livestream", "demo", CallSetup::default());
//! println!("{}", sim.playlist_url("livestream", "demo").unwrap_or_default());
//! # Ok(()) }
//! ```

mod api;
mod clock;
mod fixtures;
mod hls;
mod mp4;
mod origin;
mod roles;
mod sqs;
mod state;
#[cfg(test)]
mod tests;
mod webhooks;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Json;
use axum::routing::get;
use serde_json::{Value, json};

pub use clock::{TimeFormat, UnknownTimeFormat};
pub use fixtures::{PARTS_PER_SEGMENT, Rendition, SEGMENT_COUNT, SEGMENT_SECS};
pub use hls::{
    ADVANCE_PART_LIMIT, BLOCK_TIMEOUT, LL_WINDOW_SEGMENTS, PART_HOLD_BACK, PART_INTERVAL,
    PART_TARGET, SKIP_UNTIL, WINDOW_SEGMENTS,
};
pub use sqs::{SqsTarget, message_body as sqs_message_body};
pub use state::ENDED_RETENTION;
pub use webhooks::{ATTEMPT_TIMEOUT, BACKOFF, Delivery, SentWebhook, Signature};

use state::{Op, Shared};

/// Where the simulator listens and which credentials its API accepts.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub api_key: String,
    pub api_secret: String,
    /// `127.0.0.1:0` by default: a free port on loopback.
    pub listen: SocketAddr,
    /// Where events are POSTed (None by default: events are not delivered). See `SimHandle::set_webhook_url`.
    pub webhook_url: Option<String>,
    /// Send `call.hls_broadcasting_started/stopped/failed` instead of `call.broadcasting_*` (default false).
    pub new_event_names: bool,
    /// How API answers and events write times (default Unix nanoseconds, as the official SDKs read them).
    pub time_format: TimeFormat,
    /// Gzip webhook bodies, as Stream's dashboard setting does (default false). See `SimHandle::set_compress_webhooks`.
    pub compress_webhooks: bool,
    /// An SQS queue events are also sent to (None by default). See `SimHandle::set_sqs`.
    pub sqs: Option<SqsTarget>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_key: "sim-key".into(),
            api_secret: "sim-secret".into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            webhook_url: None,
            new_event_names: false,
            time_format: TimeFormat::default(),
            compress_webhooks: false,
            sqs: None,
        }
    }
}

/// The segment container a call's broadcast uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// MPEG-TS segments (`seg_000042.ts`).
    #[default]
    Ts,
    /// Fragmented MP4: `init.mp4` (EXT-X-MAP) and `seg_000042.m4s`.
    Fmp4,
}

/// How a call is set up when registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSetup {
    pub flavour: Flavour,
    /// Broadcasting from the moment it is registered (default true).
    pub broadcasting: bool,
    /// Segment and init URIs carry `?sig=…`, which the origin requires (default true).
    pub signed_urls: bool,
    /// The playlist URL answers 302 to the master's real location on another path (default false).
    pub redirect_master: bool,
    /// The call starts in backstage mode, as `livestream` calls do, until `go_live` (default false).
    pub backstage: bool,
    /// LL-HLS (default false; fMP4 only, ignored for `Flavour::Ts`): media playlists (version 9) list parts
    /// (`seg_000042.part2.m4s`, `PARTS_PER_SEGMENT` a segment, one every `PART_INTERVAL`; video parts last 0.5 s,
    /// audio ones up to `PART_TARGET`) for the last segments and the one being produced, a preload hint for the next part, rendition reports for the other renditions, and advertise
    /// `CAN-BLOCK-RELOAD=YES`, `PART-HOLD-BACK` and `CAN-SKIP-UNTIL`. The origin honours `_HLS_msn`/`_HLS_part`
    /// (held until the part is there; 400 past the limits; 503 after `BLOCK_TIMEOUT`) and `_HLS_skip=YES` (a delta
    /// update), holds a request for the hinted part and sends its bytes as they are produced. Segments and parts
    /// come from the low-latency fixtures, which play the same test pattern and tone. The playlist holds
    /// `LL_WINDOW_SEGMENTS` segments from the start.
    pub low_latency: bool,
}

impl CallSetup {
    /// Whether the call's broadcasts are LL-HLS: `low_latency` on an fMP4 call.
    pub(crate) fn is_low_latency(&self) -> bool {
        self.low_latency && self.flavour == Flavour::Fmp4
    }
}

impl Default for CallSetup {
    fn default() -> Self {
        CallSetup {
            flavour: Flavour::Ts,
            broadcasting: true,
            signed_urls: true,
            redirect_master: false,
            backstage: false,
            low_latency: false,
        }
    }
}

/// A way for a call's origin to misbehave. Faults apply to origin requests only, never to the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OriginFault {
    #[default]
    None,
    /// Every playlist (master and media) is a 200 `text/html` error page.
    GarbagePlaylists,
    /// Every origin request of the call answers this status (invalid codes answer 500).
    Status(u16),
    /// Media bodies (segments, init sections) arrive in 8 chunks with this delay between chunks.
    SlowBody(Duration),
    /// Every origin request of the call waits forever for its headers (until the simulator shuts down).
    Stall,
    /// Media bodies promise their full Content-Length, send half, then the connection closes.
    TruncatedBody,
}

/// Binds, spawns the server on the current tokio runtime and returns at once.
pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = advertised(listener.local_addr()?);
    let mut shared = Shared::new(config.api_key, config.api_secret, format!("http://{addr}"));
    shared.time_format = config.time_format;
    let shared = Arc::new(shared);
    shared
        .webhooks
        .configure(config.webhook_url, config.new_event_names);
    shared.webhooks.set_compress(config.compress_webhooks);
    tokio::spawn(webhooks::run(shared.clone()));
    shared.sqs.configure(config.sqs);
    tokio::spawn(sqs::run(shared.clone()));
    let app = Router::new()
        .merge(api::router())
        .merge(origin::router())
        .route("/_sim/stats", get(stats))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(shared.clone());
    let mut stopped = shared.shutdown.subscribe();
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        });
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "simulator server failed");
        }
    });
    tracing::debug!(%addr, "simulator listening");
    Ok(SimHandle { shared, addr })
}

/// The address to put in URLs: a wildcard bind is reached through loopback.
fn advertised(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, bound.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, bound.port()))
        }
        _ => bound,
    }
}

/// `GET /_sim/stats`: the counters, for looking at by hand.
async fn stats(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let counters = &shared.counters;
    let by_path: BTreeMap<String, u64> = counters.origin_snapshot().into_iter().collect();
    let blocking: BTreeMap<String, u64> = counters.blocking_snapshot().into_iter().collect();
    Json(json!({
        "api_requests": counters.get_call(),
        "api_action_requests": counters.actions(),
        "total_origin_requests": counters.origin_total(),
        "origin_requests": by_path,
        "blocking_requests": blocking,
    }))
}

/// Controls a running simulator. Cheap to clone; every clone controls the same server.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the Stream API base URL, and the origin's host.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    pub fn api_secret(&self) -> &str {
        &self.shared.api_secret
    }

    /// Registers a call, replacing any call of that type and id.
    pub fn add_call(&self, call_type: &str, id: &str, setup: CallSetup) {
        self.shared.add_call(call_type, id, setup);
    }

    /// Applies a lifecycle change as the API would (events included). None if the call is unknown, Some(false) if
    /// it has ended and the change needs a call that has not.
    fn apply(&self, call_type: &str, id: &str, op: Op) -> Option<bool> {
        let shared = &self.shared;
        shared.with_call(call_type, id, |c| {
            shared.apply(c, call_type, id, op).is_ok()
        })
    }

    /// Starts broadcasting on the simulated origin, with a new session (so a new playlist URL; the previous
    /// session's URLs then answer 404) unless a broadcast is already running. Takes the call back from a URL set
    /// with `set_playlist_url`. Emits `call.broadcasting_started` if the URL changed. False if the call is unknown
    /// or has ended.
    pub fn start_broadcasting(&self, call_type: &str, id: &str) -> bool {
        self.apply(call_type, id, Op::StartBroadcasting) == Some(true)
    }

    /// Stops broadcasting: media playlists get EXT-X-ENDLIST and stay served for `ENDED_RETENTION`. Emits
    /// `call.broadcasting_stopped` if it was broadcasting. False if the call is unknown.
    pub fn stop_broadcasting(&self, call_type: &str, id: &str) -> bool {
        self.apply(call_type, id, Op::StopBroadcasting).is_some()
    }

    /// Stops broadcasting as a failure would: like `stop_broadcasting`, but the event is
    /// `call.broadcasting_failed`. False if the call is unknown.
    pub fn fail_broadcasting(&self, call_type: &str, id: &str) -> bool {
        self.apply(call_type, id, Op::FailBroadcasting).is_some()
    }

    /// Takes the call out of backstage (`call.live_started` if it was not live), and with `start_hls` starts
    /// broadcasting, as the `go_live` API does. False if the call is unknown or has ended.
    pub fn go_live(&self, call_type: &str, id: &str, start_hls: bool) -> bool {
        self.apply(call_type, id, Op::GoLive { start_hls }) == Some(true)
    }

    /// Back to backstage; HLS stops with it, as the `stop_live` API does. False if the call is unknown.
    pub fn stop_live(&self, call_type: &str, id: &str) -> bool {
        self.apply(
            call_type,
            id,
            Op::StopLive {
                continue_hls: false,
            },
        )
        .is_some()
    }

    /// Ends the call, as `mark_ended` does: HLS stops, `ended_at` and `session.ended_at` are set, `call.ended` is
    /// emitted (once). An ended call refuses to broadcast or go live; re-register it with `add_call`. False if the
    /// call is unknown.
    pub fn end_call(&self, call_type: &str, id: &str) -> bool {
        self.apply(call_type, id, Op::End).is_some()
    }

    /// Points the call's `egress.hls.playlist_url` at any URL (another origin, a dead port) and marks it
    /// broadcasting (`call.broadcasting_started` with that URL if it changed); registers the call if it is unknown
    /// or has ended. A running simulated broadcast of the call stops.
    pub fn set_playlist_url(&self, call_type: &str, id: &str, url: &str) {
        let shared = &self.shared;
        shared.with_call_or_default(call_type, id, |c| {
            // A fresh call has not ended, so this cannot be refused.
            let _ = shared.apply(c, call_type, id, Op::SetExternalUrl(url.to_owned()));
        });
    }

    /// Registers an app-level user with a role (`host`, `admin` or `user`; others get a user's capabilities).
    /// Unregistered users are hosts if their id starts with `host`, plain users otherwise.
    pub fn add_user(&self, user_id: &str, role: &str) {
        self.shared.roles.add_user(user_id, role);
    }

    /// Makes the user a member of the call with a call-level role, which beats its app-level one in that call.
    /// The call need not exist yet, and members stay when the call is re-registered.
    pub fn add_member(&self, call_type: &str, id: &str, user_id: &str, role: &str) {
        self.shared.roles.add_member(call_type, id, user_id, role);
    }

    /// Where events go from now on (None: nowhere). Events already queued keep their URL.
    pub fn set_webhook_url(&self, url: Option<String>) {
        self.shared.webhooks.set_url(url);
    }

    /// Whether events queued from now on are delivered gzipped (`Content-Encoding: gzip`; `X-Signature` stays the
    /// HMAC of the uncompressed JSON), as with Stream's compression setting. `send_webhook` follows it too.
    pub fn set_compress_webhooks(&self, compress: bool) {
        self.shared.webhooks.set_compress(compress);
    }

    /// Where events are also sent from now on (None: not to SQS). Events already queued keep their target.
    pub fn set_sqs(&self, target: Option<SqsTarget>) {
        self.shared.sqs.configure(target);
    }

    /// Messages the SQS queue accepted so far.
    pub fn sqs_sent(&self) -> u64 {
        self.shared.sqs.sent()
    }

    /// Every delivery attempt so far, in order: event type, call, the receiver's status (None: no answer), attempt.
    pub fn webhook_deliveries(&self) -> Vec<Delivery> {
        self.shared.webhooks.deliveries()
    }

    /// The latest delivery attempt's exact body and headers, to replay or inspect.
    pub fn last_webhook(&self) -> Option<SentWebhook> {
        self.shared.webhooks.last()
    }

    /// POSTs `body` to the webhook URL with fresh delivery headers, signed as asked (correctly, with a wrong key,
    /// or without `X-Signature`) and gzipped if webhooks are compressed. Not logged in `webhook_deliveries`. The
    /// receiver's status, or None if there is no webhook URL or no answer.
    pub async fn send_webhook(&self, body: &[u8], signature: Signature) -> Option<u16> {
        let compress = self.shared.webhooks.compress();
        let (body, headers) = webhooks::forged_or_signed(
            self.api_key(),
            self.api_secret(),
            body,
            signature,
            compress,
        );
        self.post_webhook(&body, &headers).await
    }

    /// Sends the latest delivery again, byte for byte and with the same headers (same `X-Webhook-Id`), as a
    /// duplicate delivery would arrive. None if nothing was delivered yet, there is no webhook URL or no answer.
    pub async fn replay_last_webhook(&self) -> Option<u16> {
        let (body, headers) = self.last_webhook()?;
        self.post_webhook(&body, &headers).await
    }

    async fn post_webhook(&self, body: &[u8], headers: &[(String, String)]) -> Option<u16> {
        let url = self.shared.webhooks.url()?;
        webhooks::post(&webhooks::client()?, &url, body, headers).await
    }

    /// An event body of any `event_type` for the call as it is now, with `created_at` set `age` before the
    /// simulator's clock (for out-of-order and stale deliveries); `*broadcasting_started` types carry
    /// `hls_playlist_url`. Not queued, and it does not move the event clock. None if the call is unknown.
    pub fn event_json(
        &self,
        event_type: &str,
        call_type: &str,
        id: &str,
        age: Duration,
    ) -> Option<Vec<u8>> {
        let shared = &self.shared;
        let created_ns = shared.clock.unix_ns() - age.as_nanos() as i128;
        shared.with_call(call_type, id, |c| {
            webhooks::call_event(shared, c, call_type, id, event_type, created_ns)
        })
    }

    /// Makes the call's origin misbehave (or behave again with `OriginFault::None`). Ignored for unknown calls.
    pub fn set_fault(&self, call_type: &str, id: &str, fault: OriginFault) {
        self.shared.with_call(call_type, id, |c| c.fault = fault);
        self.shared.changed();
    }

    /// Requests the origin received for this exact path (without query), whatever their outcome. Parts count like
    /// segments, under their own paths.
    pub fn origin_requests(&self, path: &str) -> u64 {
        self.shared.counters.origin(path)
    }

    /// Of `origin_requests(path)`, those that carried `_HLS_msn` (blocking playlist reloads), whatever their
    /// outcome. A relay that coalesces blocking requests keeps this low.
    pub fn blocking_requests(&self, path: &str) -> u64 {
        self.shared.counters.blocking(path)
    }

    pub fn total_origin_requests(&self) -> u64 {
        self.shared.counters.origin_total()
    }

    /// Get-call API requests answered, whatever their status.
    pub fn api_requests(&self) -> u64 {
        self.shared.counters.get_call()
    }

    /// POST API requests (start/stop broadcasting, go/stop live, end call) answered, whatever their status.
    pub fn api_action_requests(&self) -> u64 {
        self.shared.counters.actions()
    }

    /// The call's playlist URL: the running broadcast's, else the latest stopped one's (still served for a while),
    /// else the URL set with `set_playlist_url`. None for unknown calls and calls that never broadcast.
    pub fn playlist_url(&self, call_type: &str, id: &str) -> Option<String> {
        let base = self.shared.base_url.as_str();
        self.shared
            .with_call(call_type, id, |c| {
                c.latest_playlist_url(base, call_type, id)
            })
            .flatten()
    }

    /// Moves the simulator's clock forward: live playlists advance by `by / 2 s` segments at once (LL-HLS ones by
    /// `by / 0.5 s` parts, and held requests wake), and stopped broadcasts age. Lets tests wait on the origin
    /// without sleeping.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// A server-side token in the older form (`{"server": true}`) for this simulator's secret; the official SDKs
    /// sign empty claims, which the simulator accepts too.
    pub fn server_token(&self) -> String {
        self.token(json!({ "server": true, "iat": unix_now() }))
    }

    /// A user token valid for an hour. What the user may do depends on its role (see `add_user`, `add_member`).
    pub fn user_token(&self, user_id: &str) -> String {
        let now = unix_now();
        self.token(json!({ "user_id": user_id, "iat": now, "exp": now + 3600 }))
    }

    fn token(&self, claims: Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(self.shared.api_secret.as_bytes());
        // HS256 signing of a JSON value cannot fail; an empty token would be refused with a clear 401 anyway.
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap_or_default()
    }

    /// Stops accepting connections and lets open ones finish; stalled requests are released with 503.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

fn unix_now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}
