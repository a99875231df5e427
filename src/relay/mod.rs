//! The relay's data path, between the HTTP handlers and the upstream client:
//!
//! ```text
//! request ─► cache look-up ─┬─ fresh ───────────────────────────────────────────────► response
//!                           ├─ fill in flight ─► join it (stream its bytes) ─────────► response
//!                           └─ miss ─► verify URL ─► spawn fill: resolve call ─► fetch upstream
//!                                                      ├─ playlist: check, rewrite URIs, store
//!                                                      └─ media: stream chunks to waiters, verify, store
//! ```
//!
//! Fills run in their own task, so a viewer that goes away does not cancel the fetch others wait on.

pub mod cache;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use url::Url;

use crate::cluster::Fleet;
use crate::config::Config;
use crate::error::RelayError;
use crate::events::hub::{CallEvent, CallHub};
use crate::events::replay::{self, SeenDeliveries};
use crate::events::{self, Action, Event, Outcome, Source, fleet};
use crate::hls::blocking::{self, Directives};
use crate::hls::encoding::Variants;
use crate::hls::playlist::{self, PlaylistInfo, PlaylistKind};
use crate::hls::policy::{self, Freshness, PLAYLIST_CONTENT_TYPE};
use crate::hls::urlmap::{
    ENTRY_PLAYLIST, MapError, ObjectKind, PlaylistLocation, PlaylistMapper, UrlCodec,
};
use crate::http::access::Gate;
use crate::relay::cache::{
    Cache, CachedObject, Fill, FillStart, FillWriter, Lookup, PlaylistMeta, StreamHead, etag_for,
};
use crate::relay::upstream::{HostPolicy, Upstream, UpstreamError, UpstreamResponse};
use crate::stream::call::CallId;
use crate::stream::resolver::{Applied, Resolution, Resolver};
use crate::telemetry::{CacheOutcome, Metrics};
use crate::viewers::{Viewers, rendition};

/// How long an expired playlist is kept to answer with when its refresh fails (marked stale).
const STALE_IF_ERROR: Duration = Duration::from_secs(30);

/// What a viewer gets.
pub enum Served {
    Whole {
        object: Arc<CachedObject>,
        outcome: CacheOutcome,
        stale: bool,
    },
    /// A media body still arriving from upstream.
    Streaming {
        head: StreamHead,
        fill: Arc<Fill>,
        outcome: CacheOutcome,
    },
}

/// Everything the data path shares: one per process, cloned cheaply into handlers and fill tasks.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    hub: CallHub,
    /// The state each call was last seen in, to act once on each change.
    seen: moka::sync::Cache<CallId, Resolution>,
    /// Calls being polled for watching pages.
    polled: std::sync::Mutex<std::collections::HashSet<CallId>>,
    /// Webhook ids already applied.
    deliveries: SeenDeliveries,
    cache: Cache,
    resolver: Resolver,
    upstream: Upstream,
    signer: UrlCodec,
    gate: Gate,
    /// The other instances, when `cluster.redis_url` is set.
    fleet: Option<Fleet>,
    /// Viewer counting, when `viewers.enabled`.
    viewers: Option<Viewers>,
    metrics: Arc<Metrics>,
}

impl Relay {
    pub fn new(
        config: Config,
        resolver: Resolver,
        upstream: Upstream,
        signer: UrlCodec,
        fleet: Option<Fleet>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache = Cache::new(config.cache.max_bytes.as_u64());
        let gate = Gate::new(&config.access, config.stream.api_secret.as_deref());
        let viewers = config.viewers.enabled.then(|| {
            Viewers::new(
                &config.viewers,
                config.access.max_viewers_per_call,
                config.server.url_keys().first().copied(),
                fleet.clone(),
                metrics.clone(),
            )
        });
        Self {
            inner: Arc::new(Inner {
                config,
                hub: CallHub::default(),
                seen: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_idle(Duration::from_secs(3600))
                    .build(),
                polled: Default::default(),
                deliveries: SeenDeliveries::default(),
                cache,
                resolver,
                upstream,
                signer,
                gate,
                fleet,
                viewers,
                metrics,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Viewer access control.
    pub fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// The call's resolution; any change from what the relay saw before is acted on (see [`Self::observe`]) and,
    /// in a fleet, passed on to the other instances.
    pub async fn resolve(&self, call: &CallId) -> Result<Resolution, RelayError> {
        let resolution = self.inner.resolver.resolve(call).await?;
        if self.observe(call, &resolution, false)
            && let Some(fleet) = &self.inner.fleet
        {
            let event = Event::found_by_poll(call, &resolution, time::OffsetDateTime::now_utc());
            self.count_event(Source::Poll, "poll", Outcome::Applied.label());
            let (fleet, entry) = (fleet.clone(), fleet::encode(&event));
            tokio::spawn(async move { fleet.append_event(&entry).await });
        }
        Ok(resolution)
    }

    pub fn fleet(&self) -> Option<&Fleet> {
        self.inner.fleet.as_ref()
    }

    /// Viewer counting; None when `viewers.enabled` is off.
    pub fn viewers(&self) -> Option<&Viewers> {
        self.inner.viewers.as_ref()
    }

    /// Applies what the other instances of the fleet applied, for as long as this relay lives.
    pub fn follow_fleet(&self) {
        let Some(fleet) = self.inner.fleet.clone() else {
            return;
        };
        let (entries, mut received) = tokio::sync::mpsc::channel(256);
        tokio::spawn(fleet.read_events(entries));
        let relay = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(entry) = received.recv().await {
                let Some(inner) = relay.upgrade() else {
                    return;
                };
                let relay = Relay { inner };
                match fleet::decode(&entry.payload) {
                    Some(event) => {
                        relay.apply_event(Source::Fleet, &event).await;
                    }
                    None => relay.count_event(Source::Fleet, "unparsed", "refused"),
                }
            }
        });
    }

    pub fn hub(&self) -> &CallHub {
        &self.inner.hub
    }

    /// Applies an event at once (no API round-trip when it says enough), whatever way it came, and counts it.
    /// An event older (`created_at`) than one already applied to the call changes nothing (`Stale`).
    pub async fn apply_event(&self, source: Source, event: &Event) -> Outcome {
        if event.timed {
            let lag = time::OffsetDateTime::now_utc() - event.created_at;
            self.inner
                .metrics
                .event_lag_seconds
                .with_label_values(&[source.label()])
                .observe(lag.as_seconds_f64().max(0.0));
        }
        let outcome = self.applied(event).await;
        self.count_event(source, events::type_label(&event.kind), outcome.label());
        if outcome == Outcome::Applied && source != Source::Fleet {
            self.pass_on(event).await;
        }
        tracing::info!(
            source = source.label(),
            cid = %event.call,
            event = %event.kind,
            outcome = outcome.label(),
            "event"
        );
        outcome
    }

    /// Tells the fleet an event this instance applied: its state for look-ups, and the event for every instance.
    async fn pass_on(&self, event: &Event) {
        let Some(fleet) = &self.inner.fleet else {
            return;
        };
        if let Some(resolution) = event.resolution() {
            self.inner.resolver.share(&event.call, &resolution).await;
        }
        fleet.append_event(&fleet::encode(event)).await;
    }

    async fn applied(&self, event: &Event) -> Outcome {
        let call = &event.call;
        if event.action == Action::Ignored {
            return Outcome::Ignored;
        }
        let failed = event.action == Action::Failed;
        let resolution = event.resolution();
        let applied = self
            .inner
            .resolver
            .apply_event(call, resolution.clone(), event.created_at)
            .await;
        if applied == Applied::Stale {
            return Outcome::Stale;
        }
        match resolution {
            Some(resolution) => {
                self.observe(call, &resolution, failed);
            }
            None => {
                // Started, but the event did not say where: ask the API now rather than on the next viewer.
                let relay = self.clone();
                let call = call.clone();
                tokio::spawn(async move { relay.resolve(&call).await });
            }
        }
        Outcome::Applied
    }

    /// `hls_relay_events_total{source,type,outcome}`; `kind` is a bounded label (`events::type_label`, or a
    /// word such as `unverified` for what could not be read).
    pub fn count_event(&self, source: Source, kind: &str, outcome: &str) {
        self.inner
            .metrics
            .events
            .with_label_values(&[source.label(), kind, outcome])
            .inc();
    }

    /// Whether a webhook delivery id is new (see [`SeenDeliveries`]), on this instance and in its fleet.
    pub async fn first_delivery(&self, webhook_id: &str) -> bool {
        if !self.inner.deliveries.first_time(webhook_id) {
            return false;
        }
        match &self.inner.fleet {
            Some(fleet) => {
                let mark = format!(
                    "webhook:{:032x}",
                    xxhash_rust::xxh3::xxh3_128(webhook_id.as_bytes())
                );
                fleet.first_time(&mark, replay::RETENTION).await
            }
            None => true,
        }
    }

    /// Keeps a watched call's state current without webhooks: while pages watch it, the call is resolved every
    /// `stream.call_ttl` (one API request per call and period, however many pages watch).
    pub fn watch(&self, call: &CallId) {
        if !self
            .inner
            .polled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call.clone())
        {
            return;
        }
        let relay = self.clone();
        let call = call.clone();
        tokio::spawn(async move {
            let period = relay.inner.resolver.ttl();
            while relay.inner.hub.is_watched(&call) {
                tokio::time::sleep(period).await;
                let _ = relay.resolve(&call).await;
            }
            relay
                .inner
                .polled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&call);
        });
    }

    /// Acts on a call's state as the relay learns it (from the API or a webhook): when a broadcast starts or moves
    /// to a new playlist URL, the stable entry URL follows it; when it stops, players polling its live playlists
    /// get them once more with EXT-X-ENDLIST, so they finish instead of stalling. Pages watching the call are told.
    /// Returns whether the call changed from a state the relay had seen.
    fn observe(&self, call: &CallId, now: &Resolution, failed: bool) -> bool {
        let before = self.inner.seen.get(call);
        if before.as_ref() == Some(now) {
            return false;
        }
        self.inner.seen.insert(call.clone(), now.clone());
        let prefix = format!("/hls/{}/{}/", call.kind(), call.id());
        let event = match now {
            Resolution::Live { .. } => {
                self.inner
                    .cache
                    .invalidate(&format!("{prefix}{ENTRY_PLAYLIST}"));
                CallEvent::BroadcastingStarted
            }
            Resolution::NotBroadcasting | Resolution::NotFound => {
                self.end_live_playlists(&prefix);
                if failed {
                    CallEvent::BroadcastingFailed
                } else {
                    CallEvent::BroadcastingStopped
                }
            }
        };
        let was_live = matches!(before, Some(Resolution::Live { .. }));
        let is_live = matches!(now, Resolution::Live { .. });
        let changed = before.is_some() && (was_live || is_live);
        if changed {
            tracing::info!(cid = %call, event = event.name(), "broadcast state changed");
            self.inner.hub.publish(call, event);
        }
        changed
    }

    fn end_live_playlists(&self, prefix: &str) {
        // A multivariant entry playlist would start new viewers on a stream that has ended: drop it.
        let entry = format!("{prefix}{ENTRY_PLAYLIST}");
        if self
            .inner
            .cache
            .peek(&entry)
            .is_some_and(|o| !o.live_playlist)
        {
            self.inner.cache.invalidate(&entry);
        }
        let freshness = policy::ended_playlist_freshness(&self.inner.config.cache);
        self.inner.cache.replace_under(prefix, |object| {
            object.live_playlist.then(|| {
                let mut ended = stored(
                    object.status,
                    Bytes::from(playlist::with_endlist(&object.body)),
                    object.content_type.clone(),
                    freshness,
                    None,
                    freshness.fresh_for,
                );
                // Appending a line leaves the URI positions where they were.
                ended.playlist = object.playlist.as_ref().map(|meta| {
                    Arc::new(PlaylistMeta {
                        info: PlaylistInfo {
                            ended: true,
                            ..meta.info.clone()
                        },
                        uri_ends: meta.uri_ends.clone(),
                        playlist_uri_ends: meta.playlist_uri_ends.clone(),
                        rendition: meta.rendition.clone(),
                        variants: Variants::default(),
                        // Nothing follows an ended playlist to reuse its references.
                        mapped: None,
                    })
                });
                ended
            })
        });
    }

    fn not_broadcasting(&self, call: &CallId) -> RelayError {
        RelayError::NotBroadcasting {
            cid: call.to_string(),
            retry_after: self.inner.resolver.ttl(),
        }
    }

    /// The object cached at `path`, if it is fresh: most requests, answered without starting anything.
    pub fn fresh(&self, path: &str) -> Option<Served> {
        self.inner.cache.fresh(path).map(|object| self.hit(object))
    }

    /// The fresh copy of `path`, if any, not counted: the listener's fast lane looks before it decides to answer,
    /// and counts with [`Self::count_hit`] when it does.
    pub fn fresh_object(&self, path: &str) -> Option<Arc<CachedObject>> {
        self.inner.cache.fresh(path)
    }

    pub fn count_hit(&self) {
        self.count(CacheOutcome::Hit);
    }

    /// The call's entry playlist, served at the stable `/hls/{type}/{id}/index.m3u8` (`path`).
    pub async fn entry_playlist(&self, call: &CallId, path: &str) -> Result<Served, RelayError> {
        let (fill, writer, stale) = match self.inner.cache.lookup(path) {
            Lookup::Fresh(object) => return Ok(self.hit(object)),
            Lookup::Filling {
                fill,
                writer,
                stale,
            } => (fill, writer, stale),
        };
        let outcome = self.count_fill(writer.is_some());
        if let Some(writer) = writer {
            let relay = self.clone();
            let call = call.clone();
            let previous = previous_version(stale.as_ref());
            tokio::spawn(async move {
                match relay.resolve_live(&call).await {
                    Ok(playlist_url) => {
                        let target = Target {
                            call: &call,
                            url: playlist_url.clone(),
                            served_at: None,
                            ended: false,
                            previous,
                        };
                        relay.fill_playlist(writer, target, &playlist_url).await
                    }
                    Err(error) => writer.fail(error),
                }
            });
        }
        self.whole_or_stale(fill.complete().await, outcome, stale)
    }

    /// An object the relay wrote into a playlist: `path` is `/hls/{type}/{id}/{token}/{file}`.
    pub async fn object(
        &self,
        call: &CallId,
        path: &str,
        location: &str,
        seal: &str,
        file: &str,
    ) -> Result<Served, RelayError> {
        let (fill, writer, stale) = match self.inner.cache.lookup(path) {
            Lookup::Fresh(object) => return Ok(self.hit(object)),
            Lookup::Filling {
                fill,
                writer,
                stale,
            } => (fill, writer, stale),
        };
        // Only paths the relay signed reach upstream; a forged one fails the fill it opened, before any fetch.
        let object = match self.inner.signer.verify(call, location, seal, file) {
            Ok(object) => object,
            Err(error) => {
                let error = match error {
                    MapError::Malformed => RelayError::BadRequest(format!("{error}")),
                    MapError::BadSignature => RelayError::NotFound(format!("{error}")),
                };
                if let Some(writer) = writer {
                    writer.fail(error.clone());
                }
                return Err(error);
            }
        };
        let outcome = self.count_fill(writer.is_some());
        if let Some(writer) = writer {
            let relay = self.clone();
            let call = call.clone();
            let file = file.to_owned();
            let location = location.to_owned();
            let previous = previous_version(stale.as_ref());
            tokio::spawn(async move {
                let target = Target {
                    call: &call,
                    url: object.url,
                    served_at: Some(&location),
                    ended: false,
                    previous,
                };
                relay.fill_object(writer, target, object.kind, &file).await
            });
        }
        if object.kind == ObjectKind::Playlist {
            return self.whole_or_stale(fill.complete().await, outcome, stale);
        }
        match fill.start().await? {
            FillStart::Complete(object) => Ok(Served::Whole {
                object,
                outcome,
                stale: false,
            }),
            FillStart::Streaming(head) => Ok(Served::Streaming {
                head,
                fill,
                outcome,
            }),
        }
    }

    /// A playlist request with LL-HLS delivery directives (`_HLS_msn`, `_HLS_part`, `_HLS_skip`): answered at once
    /// when the cached version holds what was asked, else held until a version does. Every viewer waiting for the
    /// same version shares one fill: one blocking request upstream when upstream can block, else the relay's own
    /// re-reads of the playlist.
    pub async fn blocking_object(
        &self,
        call: &CallId,
        path: &str,
        location: &str,
        seal: &str,
        file: &str,
        directives: Directives,
    ) -> Result<Served, RelayError> {
        let current = self.object(call, path, location, seal, file).await?;
        let (info, current_version) = match &current {
            Served::Whole { object, .. } => match &object.playlist {
                Some(playlist) => (playlist.info.clone(), playlist.clone()),
                None => return Ok(current),
            },
            // Directives mean nothing for media.
            Served::Streaming { .. } => return Ok(current),
        };
        blocking::check_reachable(&info, &directives)
            .map_err(|e| RelayError::BadRequest(e.to_string()))?;
        let wants_delta = directives.skip.is_some() && info.can_skip_until.is_some();
        if !wants_delta && blocking::satisfies(&info, &directives) {
            return Ok(current);
        }
        let key = format!("{path}?{}", directives.query());
        let (fill, writer) = match self.inner.cache.lookup(&key) {
            Lookup::Fresh(object) => return Ok(self.hit(object)),
            Lookup::Filling { fill, writer, .. } => (fill, writer),
        };
        let outcome = self.count_fill(writer.is_some());
        if let Some(writer) = writer {
            let object = self
                .inner
                .signer
                .verify(call, location, seal, file)
                .map_err(|e| RelayError::BadRequest(e.to_string()))?;
            let relay = self.clone();
            let call = call.clone();
            let (path, location) = (path.to_owned(), location.to_owned());
            tokio::spawn(async move {
                let target = Target {
                    call: &call,
                    url: object.url,
                    served_at: Some(&location),
                    ended: false,
                    previous: Some(current_version),
                };
                let wait = Wait {
                    base_key: &path,
                    directives,
                    upstream_blocks: info.can_block_reload,
                    wants_delta,
                    deadline: tokio::time::Instant::now() + blocking::hold_limit(&info),
                    poll: blocking::poll_interval(&info),
                };
                relay.fill_blocking(writer, target, wait).await
            });
        }
        let object = fill.complete().await?;
        Ok(Served::Whole {
            object,
            outcome,
            stale: false,
        })
    }

    /// Fetches versions of a playlist until one answers `wait.directives` or the hold limit passes.
    async fn fill_blocking(&self, writer: FillWriter, target: Target<'_>, wait: Wait<'_>) {
        let (playlist_url, ended) = match self.playlist_for_objects(target.call).await {
            Ok(found) => found,
            Err(error) => return writer.fail(error),
        };
        let mut target = Target { ended, ..target };
        let policy = self.host_policy(&playlist_url);
        let max = self.inner.config.upstream.max_playlist_bytes.as_u64();
        let forward = wait.upstream_blocks || wait.wants_delta;
        let mut url = target.url.clone();
        if forward {
            // Upstream holds the request itself; its query (a CDN signature) is kept and the directives added.
            let query = match url.query() {
                Some(query) => format!("{query}&{}", wait.directives.query()),
                None => wait.directives.query(),
            };
            url.set_query(Some(&query));
        }
        loop {
            let hold = wait
                .deadline
                .saturating_duration_since(tokio::time::Instant::now());
            let fetched = self
                .inner
                .upstream
                .get_held(
                    url.clone(),
                    policy,
                    "playlist",
                    hold.max(Duration::from_millis(1)),
                )
                .await;
            let object = match fetched {
                Ok(response) => self.rewritten_playlist(response, &target, max).await,
                Err(error) => Err(error.into()),
            };
            match object {
                Ok(mut object) => {
                    let info = object
                        .playlist
                        .clone()
                        .expect("rewritten playlists carry their info")
                        .info
                        .clone();
                    if blocking::satisfies(&info, &wait.directives) || wait.wants_delta {
                        if !wait.wants_delta {
                            // Non-blocking viewers of the playlist get the newer version too.
                            self.inner
                                .cache
                                .store(wait.base_key, Arc::new(object.clone()));
                        }
                        let max_age = blocking::blocking_max_age(&info);
                        object.cache_control =
                            HeaderValue::try_from(format!("public, max-age={}", max_age.as_secs()))
                                .expect("ASCII");
                        object.fresh_until = object.stored_at + max_age;
                        object.keep_for = max_age;
                        object.live_playlist = false;
                        writer.finish(object);
                        return;
                    }
                    target.previous = object.playlist;
                }
                Err(RelayError::UpstreamTimeout(_)) if forward => {}
                Err(error) => return writer.fail(error),
            }
            if tokio::time::Instant::now() + wait.poll >= wait.deadline {
                return writer.fail(RelayError::NotReady(format!(
                    "the playlist did not reach media sequence {} in time",
                    wait.directives.msn.unwrap_or_default()
                )));
            }
            tokio::time::sleep(wait.poll).await;
        }
    }

    fn hit(&self, object: Arc<CachedObject>) -> Served {
        self.count(CacheOutcome::Hit);
        Served::Whole {
            object,
            outcome: CacheOutcome::Hit,
            stale: false,
        }
    }

    fn count(&self, outcome: CacheOutcome) {
        self.inner
            .metrics
            .cache_lookups
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    fn count_fill(&self, started: bool) -> CacheOutcome {
        let outcome = if started {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Coalesced
        };
        self.count(outcome);
        outcome
    }

    /// A failed playlist refresh answers with the last good copy for a while, rather than failing players.
    fn whole_or_stale(
        &self,
        result: Result<Arc<CachedObject>, RelayError>,
        outcome: CacheOutcome,
        stale: Option<Arc<CachedObject>>,
    ) -> Result<Served, RelayError> {
        match (result, stale) {
            (Ok(object), _) => Ok(Served::Whole {
                object,
                outcome,
                stale: false,
            }),
            (Err(error), Some(object))
                if error.status().is_server_error() && object.status == StatusCode::OK =>
            {
                tracing::warn!(%error, "serving a stale playlist");
                Ok(Served::Whole {
                    object,
                    outcome,
                    stale: true,
                })
            }
            (Err(error), _) => Err(error),
        }
    }

    async fn resolve_live(&self, call: &CallId) -> Result<Url, RelayError> {
        match self.resolve(call).await? {
            Resolution::Live { playlist_url } => Ok(playlist_url),
            Resolution::NotBroadcasting => Err(self.not_broadcasting(call)),
            Resolution::NotFound => Err(RelayError::CallNotFound(call.to_string())),
        }
    }

    /// Fetches an object the relay wrote into one of the call's playlists, within the call's host policy.
    async fn fill_object(
        &self,
        writer: FillWriter,
        target: Target<'_>,
        kind: ObjectKind,
        file: &str,
    ) {
        let (playlist_url, ended) = match self.playlist_for_objects(target.call).await {
            Ok(found) => found,
            Err(error) => return writer.fail(error),
        };
        let target = Target { ended, ..target };
        let policy = self.host_policy(&playlist_url);
        match kind {
            ObjectKind::Playlist => self.fill_playlist_within(writer, target, policy).await,
            ObjectKind::Media => self.fill_media(writer, target, policy, file).await,
        }
    }

    /// The playlist URL whose host the call's objects may come from, and whether the call is off air. After a
    /// broadcast stops, players finishing it still fetch from its last playlist's host; the playlists they get are
    /// ended.
    async fn playlist_for_objects(&self, call: &CallId) -> Result<(Url, bool), RelayError> {
        match self.resolve(call).await? {
            Resolution::Live { playlist_url } => Ok((playlist_url, false)),
            _ => match self.inner.resolver.last_live_url(call) {
                Some(url) => Ok((url, true)),
                // No playlist was ever seen live for this call here: nothing to finish.
                None => Err(self.not_broadcasting(call)),
            },
        }
    }

    fn host_policy<'a>(&'a self, playlist_url: &'a Url) -> HostPolicy<'a> {
        HostPolicy {
            playlist_host: playlist_url.host_str(),
            allowed_hosts: &self.inner.config.upstream.allowed_hosts,
        }
    }

    async fn fill_playlist(&self, writer: FillWriter, target: Target<'_>, playlist_url: &Url) {
        let policy = self.host_policy(playlist_url);
        self.fill_playlist_within(writer, target, policy).await
    }

    async fn fill_playlist_within(
        &self,
        writer: FillWriter,
        target: Target<'_>,
        policy: HostPolicy<'_>,
    ) {
        let started = Instant::now();
        let response = match self
            .inner
            .upstream
            .get(target.url.clone(), policy, "playlist")
            .await
        {
            Ok(response) => response,
            Err(error) => return self.settle_failed(writer, error, &target),
        };
        let max = self.inner.config.upstream.max_playlist_bytes.as_u64();
        let result = self.rewritten_playlist(response, &target, max).await;
        tracing::info!(
            cid = %target.call, kind = "playlist", url = %redacted(&target.url),
            upstream_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "fetched from upstream"
        );
        match result {
            Ok(object) => {
                writer.finish(object);
            }
            Err(error) => writer.fail(error),
        }
    }

    async fn rewritten_playlist(
        &self,
        response: UpstreamResponse,
        target: &Target<'_>,
        max: u64,
    ) -> Result<CachedObject, RelayError> {
        // Relative URIs resolve against where the playlist really came from, after redirects.
        let base = response.final_url.clone();
        let body = response.bytes(max).await?;
        let info =
            playlist::inspect(&body).map_err(|e| RelayError::BadUpstreamPlaylist(e.to_string()))?;
        let previous = target
            .previous
            .as_ref()
            .and_then(|meta| meta.mapped.as_ref());
        let mut mapper = PlaylistMapper::new(
            &self.inner.signer,
            target.call,
            &base,
            target.playlist_location(),
        )
        .reusing(previous);
        let rewritten = playlist::rewrite_marked_with(&body, &mut mapper)
            .map_err(|e| RelayError::BadUpstreamPlaylist(e.to_string()))?;
        // One kind per mark, in order: the marks of playlist URIs are where viewers' session ids go.
        let playlist_uri_ends = rewritten
            .uri_ends
            .iter()
            .zip(mapper.kinds())
            .filter(|(_, kind)| *kind == ObjectKind::Playlist)
            .map(|(&end, _)| end)
            .collect();
        let end_it = target.ended && info.kind == PlaylistKind::Media && !info.ended;
        let (body, freshness) = if end_it {
            let freshness = policy::ended_playlist_freshness(&self.inner.config.cache);
            (playlist::with_endlist(&rewritten.body), freshness)
        } else {
            let freshness = policy::playlist_freshness(&info, &self.inner.config.cache);
            (rewritten.body, freshness)
        };
        let mut object = stored(
            StatusCode::OK,
            Bytes::from(body),
            HeaderValue::from_static(PLAYLIST_CONTENT_TYPE),
            freshness,
            None,
            freshness.fresh_for + STALE_IF_ERROR,
        );
        object.live_playlist = info.kind == PlaylistKind::Media && !info.ended && !end_it;
        // Only a live media playlist changes little from one version to the next; others would hold it for nothing.
        let mapped = object.live_playlist.then(|| mapper.into_mapped());
        let rendition =
            (info.kind == PlaylistKind::Media).then(|| Arc::from(rendition::label(&target.url)));
        object.playlist = Some(Arc::new(PlaylistMeta {
            info: PlaylistInfo {
                ended: info.ended || end_it,
                ..info
            },
            uri_ends: rewritten.uri_ends,
            playlist_uri_ends,
            rendition,
            variants: Variants::default(),
            mapped,
        }));
        Ok(object)
    }

    async fn fill_media(
        &self,
        writer: FillWriter,
        target: Target<'_>,
        policy: HostPolicy<'_>,
        file: &str,
    ) {
        let started = Instant::now();
        let response = match self
            .inner
            .upstream
            .get(target.url.clone(), policy, "media")
            .await
        {
            Ok(response) => response,
            Err(error) => return self.settle_failed(writer, error, &target),
        };
        let upstream_type = response.content_type().map(str::to_owned);
        if upstream_type
            .as_deref()
            .is_some_and(policy::is_playlist_content_type)
        {
            // Labelled media by its position but a playlist by its type: playlists are recognised by content.
            let max = self.inner.config.upstream.max_playlist_bytes.as_u64();
            return match self.rewritten_playlist(response, &target, max).await {
                Ok(object) => drop(writer.finish(object)),
                Err(error) => writer.fail(error),
            };
        }
        let freshness = policy::media_freshness(&self.inner.config.cache);
        let content_type = policy::media_content_type(file, upstream_type.as_deref());
        let content_type = HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        // Media bytes at a URL never change, so without upstream's validator the URL itself is one; it is
        // known before the body, so streamed and cached responses carry the same ETag.
        let etag = response
            .headers
            .get(header::ETAG)
            .cloned()
            .unwrap_or_else(|| etag_for(target.url.as_str().as_bytes()));
        let cache_control = HeaderValue::try_from(freshness.cache_control()).expect("ASCII");
        let expected = response.content_length();
        writer.start_stream(StreamHead {
            content_type: content_type.clone(),
            cache_control,
            content_length: expected,
            etag: Some(etag.clone()),
        });
        let max = self.inner.config.upstream.max_object_bytes.as_u64();
        let mut whole = BytesMut::with_capacity(expected.unwrap_or(0).min(max) as usize);
        let mut chunks = std::pin::pin!(response.chunks(max));
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => {
                    whole.extend_from_slice(&chunk);
                    writer.push(chunk);
                }
                Err(error) => return self.settle_failed(writer, error, &target),
            }
        }
        tracing::info!(
            cid = %target.call, kind = "media", url = %redacted(&target.url), bytes = whole.len(),
            upstream_ms = started.elapsed().as_millis() as u64, "fetched from upstream"
        );
        writer.finish(stored(
            StatusCode::OK,
            whole.freeze(),
            content_type,
            freshness,
            Some(etag),
            freshness.fresh_for,
        ));
    }

    /// Upstream 404s are remembered briefly, so a missing object does not cost an upstream request per viewer;
    /// anything else fails the fill and caches nothing.
    fn settle_failed(&self, writer: FillWriter, error: UpstreamError, target: &Target<'_>) {
        tracing::warn!(cid = %target.call, url = %redacted(&target.url), %error, "upstream fetch failed");
        let error = RelayError::from(error);
        if matches!(error, RelayError::NotFound(_)) {
            let freshness = policy::not_found_freshness(&self.inner.config.cache);
            let body =
                serde_json::json!({"error": {"code": error.code(), "message": error.to_string()}});
            writer.finish(stored(
                StatusCode::NOT_FOUND,
                Bytes::from(body.to_string()),
                HeaderValue::from_static("application/json"),
                freshness,
                None,
                freshness.fresh_for,
            ));
        } else {
            writer.fail(error);
        }
    }
}

/// What a blocking fill waits for, and how.
struct Wait<'a> {
    /// The playlist's own cache key, updated with newer versions found on the way.
    base_key: &'a str,
    directives: Directives,
    /// Upstream advertises CAN-BLOCK-RELOAD=YES: forward the directives and let it hold the request.
    upstream_blocks: bool,
    /// A delta update upstream offers (CAN-SKIP-UNTIL): only upstream can produce it.
    wants_delta: bool,
    deadline: tokio::time::Instant,
    /// Between re-reads when upstream cannot block.
    poll: Duration,
}

/// Which upstream object a fill fetches, for which call, and where the relay serves it.
struct Target<'a> {
    call: &'a CallId,
    url: Url,
    /// The `location` segment of the relay URL the object is served at; None for the entry playlist.
    served_at: Option<&'a str>,
    /// The call is off air: media playlists are served ended.
    ended: bool,
    /// The version of this playlist cached before, whose references the rewrite may reuse.
    previous: Option<Arc<PlaylistMeta>>,
}

impl Target<'_> {
    fn playlist_location(&self) -> PlaylistLocation<'_> {
        match self.served_at {
            Some(location) => PlaylistLocation::Object { location },
            None => PlaylistLocation::Entry,
        }
    }
}

/// What a refresh may reuse of the version it replaces.
fn previous_version(cached: Option<&Arc<CachedObject>>) -> Option<Arc<PlaylistMeta>> {
    cached.and_then(|object| object.playlist.clone())
}

fn stored(
    status: StatusCode,
    body: Bytes,
    content_type: HeaderValue,
    freshness: Freshness,
    etag: Option<HeaderValue>,
    keep_for: Duration,
) -> CachedObject {
    let now = Instant::now();
    CachedObject {
        status,
        etag: etag.unwrap_or_else(|| etag_for(&body)),
        body,
        content_type,
        cache_control: HeaderValue::try_from(freshness.cache_control()).expect("ASCII"),
        stored_at: now,
        fresh_until: now + freshness.fresh_for,
        keep_for,
        live_playlist: false,
        playlist: None,
    }
}

/// Upstream URLs without their query: CDN signatures stay out of logs.
fn redacted(url: &Url) -> &str {
    &url[..url::Position::AfterPath]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_never_carry_upstream_query_strings() {
        let url = Url::parse("https://cdn.example.com/a/seg.ts?Signature=secret").unwrap();
        assert_eq!(redacted(&url), "https://cdn.example.com/a/seg.ts");
    }
}
