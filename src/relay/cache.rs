//! The object cache: fresh objects in memory (moka, weighted by bytes), and fills in flight.
//!
//! A look-up either finds a fresh object, or joins the one fill in flight for that key, or starts it. A fill is
//! shared state that grows as upstream bytes arrive: every waiter streams the chunks received so far and then
//! each new one, so the first byte reaches all viewers as soon as it reaches the relay (no store-then-forward),
//! while the cache receives the whole object only once it has been verified. That is the "cache lock" of
//! pingora and Varnish's streaming waiting list, without their polling.
//!
//! Locks here are `std` mutexes held for a few instructions and never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use crate::error::RelayError;
use crate::hls::encoding::Variants;
use crate::hls::playlist::PlaylistInfo;
use crate::hls::urlmap::MappedUris;

/// A complete, verified response as the relay serves it. Headers are computed once, when it is stored.
/// Cloning shares the body.
#[derive(Debug, Clone)]
pub struct CachedObject {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: HeaderValue,
    pub cache_control: HeaderValue,
    pub etag: HeaderValue,
    pub stored_at: Instant,
    pub fresh_until: Instant,
    /// How long the entry stays in memory: past `fresh_until` a stale copy helps only while a refresh is in flight.
    pub keep_for: Duration,
    /// A media playlist without EXT-X-ENDLIST: the one kind that must be ended when its broadcast stops.
    pub live_playlist: bool,
    /// What the relay knows about a playlist beyond its bytes.
    pub playlist: Option<Arc<PlaylistMeta>>,
}

/// A relayed playlist's semantics (for LL-HLS blocking requests), where its rewritten URIs end (to carry a
/// viewer's token into all of them, and its session id into those of playlists), its compressed variants (made
/// once, served to every viewer), its rendition's label (for viewer counts) and, for a live media playlist, the
/// references its rewrite wrote (for the rewrite of its next version).
#[derive(Debug)]
pub struct PlaylistMeta {
    pub info: PlaylistInfo,
    pub uri_ends: Vec<usize>,
    /// The ends (among `uri_ends`) of the URIs of playlists: variants, renditions, rendition reports.
    pub playlist_uri_ends: Vec<usize>,
    /// For a media playlist, the label its viewers are counted under.
    pub rendition: Option<Arc<str>>,
    pub variants: Variants,
    pub mapped: Option<MappedUris>,
}

impl CachedObject {
    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    /// Seconds since the relay stored it, for the `Age` header.
    pub fn age_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.stored_at).as_secs()
    }
}

/// A strong validator from the bytes themselves: identical bodies from any relay instance get the same ETag.
pub fn etag_for(body: &[u8]) -> HeaderValue {
    let hash = xxhash_rust::xxh3::xxh3_128(body);
    HeaderValue::try_from(format!("\"{hash:032x}\"")).expect("hex is a valid header value")
}

/// Response head of a fill whose body is still arriving.
#[derive(Debug, Clone)]
pub struct StreamHead {
    pub content_type: HeaderValue,
    pub cache_control: HeaderValue,
    pub content_length: Option<u64>,
    pub etag: Option<HeaderValue>,
}

/// What a waiter learns first about a fill.
pub enum FillStart {
    /// The body is arriving: stream it with [`Fill::body`].
    Streaming(StreamHead),
    /// The fill ended before streaming started (playlists, errors, tiny objects): here is the whole response.
    Complete(Arc<CachedObject>),
}

#[derive(Default)]
struct FillState {
    head: Option<StreamHead>,
    /// Chunks received so far; emptied once the whole body is in `outcome`.
    chunks: Vec<Bytes>,
    outcome: Option<Result<Arc<CachedObject>, RelayError>>,
}

/// One upstream fetch in flight, shared by every viewer that asked for the object meanwhile.
pub struct Fill {
    state: Mutex<FillState>,
    /// Bumped on every change of `state`; waiters sleep on it.
    changed: watch::Sender<u64>,
}

impl Fill {
    fn new() -> Self {
        Self {
            state: Mutex::new(FillState::default()),
            changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FillState> {
        // A panic elsewhere while holding the lock leaves the state consistent (every update is one assignment
        // or push), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, apply: impl FnOnce(&mut FillState)) {
        apply(&mut self.lock());
        self.changed.send_modify(|version| *version += 1);
    }

    /// Waits until `check` finds what it needs in the state. Subscribing before checking means no change between
    /// the check and the sleep can be missed.
    async fn wait_for<T>(&self, mut check: impl FnMut(&mut FillState) -> Option<T>) -> T {
        let mut changes = self.changed.subscribe();
        loop {
            if let Some(found) = check(&mut self.lock()) {
                return found;
            }
            // The sender lives in `self`, so it cannot be dropped while we wait.
            let _ = changes.changed().await;
        }
    }

    /// Waits for the response head, or for the whole response if the fill completes (or fails) first.
    pub async fn start(&self) -> Result<FillStart, RelayError> {
        self.wait_for(|state| match (&state.outcome, &state.head) {
            (Some(Ok(object)), _) => Some(Ok(FillStart::Complete(object.clone()))),
            (Some(Err(error)), _) => Some(Err(error.clone())),
            (None, Some(head)) => Some(Ok(FillStart::Streaming(head.clone()))),
            (None, None) => None,
        })
        .await
    }

    /// Waits for the whole response.
    pub async fn complete(&self) -> Result<Arc<CachedObject>, RelayError> {
        self.wait_for(|state| state.outcome.clone()).await
    }

    /// The body from its first byte: chunks already received at once, then each one as it arrives. Ends with an
    /// error if the fill fails, so the viewer's connection is cut rather than given a short body as complete.
    pub fn body(self: Arc<Self>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        struct Cursor {
            fill: Arc<Fill>,
            next_chunk: usize,
            sent: usize,
            done: bool,
        }
        let cursor = Cursor {
            fill: self,
            next_chunk: 0,
            sent: 0,
            done: false,
        };
        futures_util::stream::unfold(cursor, |mut cursor| async move {
            if cursor.done {
                return None;
            }
            let (next_chunk, sent) = (cursor.next_chunk, cursor.sent);
            let item = cursor
                .fill
                .wait_for(|state| match &state.outcome {
                    Some(Ok(object)) => {
                        Some(Err(Ok(object.body.slice(sent.min(object.body.len())..))))
                    }
                    Some(Err(error)) => Some(Err(Err(error.clone()))),
                    None => state.chunks.get(next_chunk).cloned().map(Ok),
                })
                .await;
            match item {
                Ok(chunk) => {
                    cursor.next_chunk += 1;
                    cursor.sent += chunk.len();
                    Some((Ok(chunk), cursor))
                }
                Err(Ok(rest)) => {
                    cursor.done = true;
                    Some((Ok(rest), cursor))
                }
                Err(Err(error)) => {
                    cursor.done = true;
                    Some((Err(std::io::Error::other(error.to_string())), cursor))
                }
            }
        })
    }
}

/// The one task allowed to complete a fill. Dropping it unfinished fails the fill, so waiters never hang on a
/// fetch that was abandoned (a panic, a cancelled task).
pub struct FillWriter {
    cache: Cache,
    key: Arc<str>,
    fill: Arc<Fill>,
    finished: bool,
}

impl FillWriter {
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// Announces the response head: waiters may start streaming.
    pub fn start_stream(&self, head: StreamHead) {
        self.fill.update(|state| state.head = Some(head));
    }

    pub fn push(&self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.fill.update(|state| state.chunks.push(chunk));
        }
    }

    /// Completes the fill with a verified object and stores it (when it may be kept at all).
    pub fn finish(mut self, object: CachedObject) -> Arc<CachedObject> {
        let object = Arc::new(object);
        if !object.keep_for.is_zero() {
            // Stored before the fill leaves the in-flight table, so no look-up in between misses both.
            self.cache
                .inner
                .store
                .insert(self.key.clone(), object.clone());
        }
        self.settle(Ok(object.clone()));
        object
    }

    pub fn fail(mut self, error: RelayError) {
        self.settle(Err(error));
    }

    fn settle(&mut self, outcome: Result<Arc<CachedObject>, RelayError>) {
        self.finished = true;
        self.fill.update(|state| {
            state.chunks.clear();
            state.outcome = Some(outcome);
        });
        self.cache.remove_inflight(&self.key, &self.fill);
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.settle(Err(RelayError::UpstreamError(
                "the upstream fetch was abandoned".into(),
            )));
        }
    }
}

/// The result of a look-up.
pub enum Lookup {
    Fresh(Arc<CachedObject>),
    /// A fill is in flight: `writer` is Some when this look-up started it (and must drive it). `stale` is the
    /// expired copy, if one is still held (a fallback when the refresh fails).
    Filling {
        fill: Arc<Fill>,
        writer: Option<FillWriter>,
        stale: Option<Arc<CachedObject>>,
    },
}

struct Inner {
    store: moka::sync::Cache<Arc<str>, Arc<CachedObject>>,
    inflight: Mutex<HashMap<Arc<str>, Arc<Fill>>>,
}

/// Fixed cost of an entry beyond its body, so millions of tiny objects still count against the budget.
const ENTRY_OVERHEAD: usize = 512;

struct KeepFor;

impl moka::Expiry<Arc<str>, Arc<CachedObject>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<CachedObject>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Arc<CachedObject>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }
}

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl Cache {
    pub fn new(max_bytes: u64) -> Self {
        let store = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Arc<str>, value: &Arc<CachedObject>| {
                // A live playlist also holds the mapping of its URIs for the next version's rewrite.
                let memo = value
                    .playlist
                    .as_ref()
                    .and_then(|playlist| playlist.mapped.as_ref())
                    .map_or(0, |mapped| mapped.heap_bytes());
                u32::try_from(key.len() + value.body.len() + memo + ENTRY_OVERHEAD)
                    .unwrap_or(u32::MAX)
            })
            .expire_after(KeepFor)
            .support_invalidation_closures()
            .build();
        Self {
            inner: Arc::new(Inner {
                store,
                inflight: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn inflight(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Fill>>> {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The object at `key` if it is fresh.
    pub fn fresh(&self, key: &str) -> Option<Arc<CachedObject>> {
        let now = Instant::now();
        self.inner
            .store
            .get(key)
            .filter(|object| object.is_fresh(now))
    }

    /// Finds `key` fresh, or joins its fill, or starts one (then the caller gets the writer and must drive it).
    pub fn lookup(&self, key: &str) -> Lookup {
        let now = Instant::now();
        let stale = match self.inner.store.get(key) {
            Some(object) if object.is_fresh(now) => return Lookup::Fresh(object),
            other => other,
        };
        let mut inflight = self.inflight();
        if let Some(fill) = inflight.get(key) {
            return Lookup::Filling {
                fill: fill.clone(),
                writer: None,
                stale,
            };
        }
        // A fill may have finished between the first look and taking the lock.
        if let Some(object) = self.inner.store.get(key).filter(|o| o.is_fresh(now)) {
            return Lookup::Fresh(object);
        }
        let key: Arc<str> = Arc::from(key);
        let fill = Arc::new(Fill::new());
        inflight.insert(key.clone(), fill.clone());
        drop(inflight);
        let writer = FillWriter {
            cache: self.clone(),
            key,
            fill: fill.clone(),
            finished: false,
        };
        Lookup::Filling {
            fill,
            writer: Some(writer),
            stale,
        }
    }

    fn remove_inflight(&self, key: &str, fill: &Arc<Fill>) {
        let mut inflight = self.inflight();
        if inflight
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, fill))
        {
            inflight.remove(key);
        }
    }

    /// Drops every cached object whose key starts with `prefix` (e.g. one call's playlists).
    pub fn invalidate_prefix(&self, prefix: &str) {
        let prefix = prefix.to_owned();
        // Only fails when invalidation closures are not enabled, and they are.
        let _ = self
            .inner
            .store
            .invalidate_entries_if(move |key, _| key.starts_with(&prefix));
    }

    /// Stores an object outside a fill (a newer playlist version learnt through a blocking request).
    pub fn store(&self, key: &str, object: Arc<CachedObject>) {
        self.inner.store.insert(Arc::from(key), object);
    }

    /// The cached object, fresh or not, without starting anything.
    pub fn peek(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.inner.store.get(key)
    }

    pub fn invalidate(&self, key: &str) {
        self.inner.store.invalidate(key);
    }

    /// Replaces every cached object under `prefix` for which `replace` returns a new version.
    pub fn replace_under(
        &self,
        prefix: &str,
        mut replace: impl FnMut(&CachedObject) -> Option<CachedObject>,
    ) {
        let replacements: Vec<(Arc<str>, CachedObject)> = self
            .inner
            .store
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .filter_map(|(key, object)| replace(&object).map(|new| (Arc::clone(&*key), new)))
            .collect();
        for (key, object) in replacements {
            self.inner.store.insert(key, Arc::new(object));
        }
    }

    /// Bytes and entries held, after pending maintenance.
    pub fn usage(&self) -> (u64, u64) {
        self.inner.store.run_pending_tasks();
        (
            self.inner.store.weighted_size(),
            self.inner.store.entry_count(),
        )
    }

    pub fn fills_in_flight(&self) -> usize {
        self.inflight().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn object(body: &'static [u8], fresh_for: Duration) -> CachedObject {
        let now = Instant::now();
        CachedObject {
            status: StatusCode::OK,
            body: Bytes::from_static(body),
            content_type: HeaderValue::from_static("video/mp2t"),
            cache_control: HeaderValue::from_static("public, max-age=60"),
            etag: etag_for(body),
            stored_at: now,
            fresh_until: now + fresh_for,
            keep_for: fresh_for + Duration::from_secs(60),
            live_playlist: false,
            playlist: None,
        }
    }

    fn head() -> StreamHead {
        StreamHead {
            content_type: HeaderValue::from_static("video/mp2t"),
            cache_control: HeaderValue::from_static("public, max-age=60"),
            content_length: Some(6),
            etag: None,
        }
    }

    fn start(cache: &Cache, key: &str) -> (Arc<Fill>, FillWriter) {
        match cache.lookup(key) {
            Lookup::Filling {
                fill,
                writer: Some(writer),
                ..
            } => (fill, writer),
            _ => panic!("expected to start a fill"),
        }
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_fill_and_stream_its_chunks() {
        let cache = Cache::new(1 << 20);
        let (fill, writer) = start(&cache, "/a");
        let Lookup::Filling {
            fill: joined,
            writer: None,
            ..
        } = cache.lookup("/a")
        else {
            panic!("second look-up must join");
        };
        assert!(Arc::ptr_eq(&fill, &joined));

        writer.start_stream(head());
        writer.push(Bytes::from_static(b"abc"));
        let mut early = Box::pin(fill.clone().body());
        assert_eq!(early.next().await.unwrap().unwrap(), "abc");

        let late_joiner = joined.clone().body();
        writer.push(Bytes::from_static(b"def"));
        assert_eq!(early.next().await.unwrap().unwrap(), "def");
        writer.finish(object(b"abcdef", Duration::from_secs(60)));
        assert!(early.next().await.unwrap().unwrap().is_empty());
        assert!(early.next().await.is_none());

        let late: Vec<Bytes> = late_joiner.map(|c| c.unwrap()).collect().await;
        assert_eq!(late.concat(), b"abcdef");
        assert!(matches!(cache.lookup("/a"), Lookup::Fresh(_)));
        assert_eq!(cache.fills_in_flight(), 0);
    }

    #[tokio::test]
    async fn a_failed_fill_reaches_every_waiter_and_caches_nothing() {
        let cache = Cache::new(1 << 20);
        let (fill, writer) = start(&cache, "/b");
        writer.start_stream(head());
        writer.push(Bytes::from_static(b"abc"));
        let mut body = Box::pin(fill.clone().body());
        assert_eq!(body.next().await.unwrap().unwrap(), "abc");
        writer.fail(RelayError::UpstreamError("reset".into()));
        assert!(body.next().await.unwrap().is_err());
        assert!(body.next().await.is_none());
        assert!(fill.complete().await.is_err());
        assert!(matches!(
            cache.lookup("/b"),
            Lookup::Filling {
                writer: Some(_),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn an_abandoned_writer_fails_the_fill() {
        let cache = Cache::new(1 << 20);
        let (fill, writer) = start(&cache, "/c");
        drop(writer);
        assert!(fill.start().await.is_err());
    }

    #[tokio::test]
    async fn a_stale_copy_is_offered_while_refreshing() {
        let cache = Cache::new(1 << 20);
        let (_, writer) = start(&cache, "/d");
        writer.finish(object(b"v1", Duration::ZERO));
        match cache.lookup("/d") {
            Lookup::Filling {
                writer: Some(_),
                stale: Some(stale),
                ..
            } => assert_eq!(stale.body, "v1"),
            _ => panic!("expected a refresh with a stale copy"),
        }
    }

    #[test]
    fn memory_is_bounded_by_bytes() {
        let cache = Cache::new(64 * 1024);
        for i in 0..100 {
            let (_, writer) = start(&cache, &format!("/seg{i}"));
            let mut obj = object(b"", Duration::from_secs(60));
            obj.body = Bytes::from(vec![0u8; 4096]);
            writer.finish(obj);
        }
        let (bytes, entries) = cache.usage();
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert!(entries < 100);
    }
}
