//! The simulated CDN: serves each broadcast's master, live media playlists and looping fixture segments, and
//! misbehaves on request (`OriginFault`).
//!
//! `plan` decides the answer from the path, the query and the call's state (no I/O); `serve` counts the request and
//! turns the plan into a response, which is where faults that are about timing (stall, slow or cut bodies) happen,
//! where LL-HLS blocking requests are held (`hold` plans again whenever the answer may have changed) and where a
//! part being produced is sent piece by piece.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;

use super::fixtures::{self, PARTS_PER_SEGMENT, Rendition};
use super::hls::{
    BLOCK_TIMEOUT, Block, LlPlaylist, MediaPlaylist, PART_CHUNKS, PART_INTERVAL, Resource,
    UriSigner, block, master_playlist, parse_origin_path, session_dir,
};
use super::state::{Broadcast, Shared};
use super::{Flavour, OriginFault};

/// A slow body arrives in this many pieces, `SlowBody`'s delay apart.
pub const SLOW_CHUNKS: usize = 8;

/// How long a truncated body's first half has to reach the client before the connection is cut.
const TRUNCATION_PAUSE: Duration = Duration::from_millis(20);

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
/// What a CDN sends: playlists change every segment, segment bytes never change, errors are retried soon.
const PLAYLIST_CACHE: &str = "public, max-age=1";
/// A blocking reload's URL names one version of the playlist: six target durations (RFC 8216bis Appendix B).
const BLOCKING_PLAYLIST_CACHE: &str = "public, max-age=12";
const MEDIA_CACHE: &str = "public, max-age=86400";
const ERROR_CACHE: &str = "public, max-age=2";

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/cdn/{*rest}", get(serve))
        .route("/edge/{*rest}", get(serve))
}

/// How media bytes go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    Whole,
    Slow(Duration),
    Truncated,
}

/// The origin's decision for one request.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Error(StatusCode),
    Stall,
    Redirect(String),
    Garbage,
    Playlist(String),
    /// The answer to a blocking reload (`_HLS_msn`): a playlist that may be cached longer.
    BlockingPlaylist(String),
    /// A blocking reload whose segment or part is not there yet: plan again after this much (simulated) time.
    Held(Duration),
    Media {
        bytes: &'static [u8],
        content_type: &'static str,
        delivery: Delivery,
    },
    /// The part being produced (the preload hint's): headers at once, then its bytes in `PART_CHUNKS` pieces as
    /// they are produced. `into`: how far into its `PART_INTERVAL` production is.
    LivePart {
        bytes: &'static [u8],
        into: Duration,
    },
}

/// The query parameters the origin reads; the first of each name counts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    sig: Option<String>,
    /// LL-HLS delivery directives, as given: bad values are refused only where they apply.
    msn: Option<String>,
    part: Option<String>,
    skip: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut out = Query::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let slot = match &*name {
                "sig" => &mut out.sig,
                "_HLS_msn" => &mut out.msn,
                "_HLS_part" => &mut out.part,
                "_HLS_skip" => &mut out.skip,
                _ => continue,
            };
            slot.get_or_insert_with(|| value.into_owned());
        }
        out
    }
}

async fn serve(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    shared.counters.count_origin(uri.path());
    let query = Query::parse(uri.query());
    if query.msn.is_some() {
        shared.counters.count_blocking(uri.path());
    }
    match hold(&shared, uri.path(), &query).await {
        Reply::Error(status) => (
            status,
            [(header::CACHE_CONTROL, ERROR_CACHE)],
            status.canonical_reason().unwrap_or("error"),
        )
            .into_response(),
        Reply::Stall => stall(&shared).await,
        Reply::Redirect(location) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, PLAYLIST_CACHE.to_owned()),
            ],
        )
            .into_response(),
        Reply::Garbage => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><body><h1>Service temporarily unavailable</h1></body></html>",
        )
            .into_response(),
        Reply::Playlist(text) => (
            [
                (header::CONTENT_TYPE, PLAYLIST_TYPE),
                (header::CACHE_CONTROL, PLAYLIST_CACHE),
            ],
            text,
        )
            .into_response(),
        Reply::BlockingPlaylist(text) => (
            [
                (header::CONTENT_TYPE, PLAYLIST_TYPE),
                (header::CACHE_CONTROL, BLOCKING_PLAYLIST_CACHE),
            ],
            text,
        )
            .into_response(),
        // `hold` never returns it.
        Reply::Held(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Reply::Media {
            bytes,
            content_type,
            delivery,
        } => media_response(bytes, content_type, delivery),
        Reply::LivePart { bytes, into } => live_part_response(shared.clone(), bytes, into),
    }
}

/// `plan`, holding a blocking reload until its answer is there: it plans again whenever that may have changed (the
/// wait is over, the clock was advanced, a call changed). 503 after `BLOCK_TIMEOUT`, or at shutdown.
async fn hold(shared: &Shared, path: &str, query: &Query) -> Reply {
    let give_up = tokio::time::Instant::now() + BLOCK_TIMEOUT;
    let mut advances = shared.clock.advances();
    let mut changes = shared.changes.subscribe();
    let mut stopped = shared.shutdown.subscribe();
    loop {
        // Mark what has been seen before looking, so a change while planning wakes the wait below.
        advances.borrow_and_update();
        changes.borrow_and_update();
        let wait = match plan(shared, path, query) {
            Reply::Held(wait) => wait,
            reply => return reply,
        };
        // The senders live in `shared`, which outlives this request: `changed` only fails at teardown.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = advances.changed() => {}
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(give_up) => return Reply::Error(StatusCode::SERVICE_UNAVAILABLE),
            _ = stopped.wait_for(|stopped| *stopped) => return Reply::Error(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

/// The answer for `path` (and its query), from the state of the call it names.
fn plan(shared: &Shared, path: &str, query: &Query) -> Reply {
    plan_at(shared, path, query, shared.clock.now())
}

/// `plan` at `now` on the simulator's clock.
fn plan_at(shared: &Shared, path: &str, query: &Query, now: Instant) -> Reply {
    let not_found = Reply::Error(StatusCode::NOT_FOUND);
    let Some(p) = parse_origin_path(path) else {
        return not_found;
    };
    let Some((setup, fault, broadcast)) = shared.with_call(p.call_type, p.id, |c| {
        (c.setup.clone(), c.fault.clone(), c.broadcast.clone())
    }) else {
        return not_found;
    };
    let low_latency = setup.is_low_latency();
    if matches!(p.resource, Resource::Part(..)) && !low_latency {
        // Parts only exist in LL-HLS; elsewhere the path is as unknown as any other.
        return not_found;
    }
    match fault {
        OriginFault::Status(code) => {
            return Reply::Error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            );
        }
        OriginFault::Stall => return Reply::Stall,
        _ => {}
    }
    let Some(broadcast) = broadcast.filter(|b| b.session == p.session && !b.expired(now)) else {
        return not_found;
    };
    if p.edge != setup.redirect_master {
        // With redirect_master the master's URL is a redirect and everything lives under the edge path; without
        // it the edge path does not exist. Either way a wrongly resolved URL gets a 404.
        return if p.resource == Resource::Master && setup.redirect_master {
            let dir = session_dir(true, p.call_type, p.id, p.session);
            Reply::Redirect(format!("{}{dir}master.m3u8", shared.base_url))
        } else {
            not_found
        };
    }
    let garbage = fault == OriginFault::GarbagePlaylists;
    let delivery = match fault {
        OriginFault::SlowBody(delay) => Delivery::Slow(delay),
        OriginFault::TruncatedBody => Delivery::Truncated,
        _ => Delivery::Whole,
    };
    let window = broadcast.window(now);
    let media_dir = |rendition: Rendition| {
        format!(
            "{}{}/",
            session_dir(p.edge, p.call_type, p.id, p.session),
            rendition.dir()
        )
    };
    let signed_ok = || {
        !setup.signed_urls
            || query
                .sig
                .as_deref()
                .is_some_and(|sig| shared.signer.verify(path, sig))
    };
    let media = |rendition| fixtures::media_for(setup.flavour, low_latency, rendition);
    match p.resource {
        Resource::Master if garbage => Reply::Garbage,
        Resource::Master => Reply::Playlist(master_playlist(setup.flavour, low_latency)),
        Resource::MediaPlaylist(_) if garbage => Reply::Garbage,
        Resource::MediaPlaylist(rendition) if low_latency => {
            let dir = media_dir(rendition);
            let signing = setup.signed_urls.then_some((&shared.signer, dir.as_str()));
            ll_playlist(&broadcast, now, rendition, query, signing)
        }
        Resource::MediaPlaylist(rendition) => {
            let dir = media_dir(rendition);
            Reply::Playlist(
                MediaPlaylist {
                    flavour: setup.flavour,
                    rendition,
                    window,
                    ended: broadcast.ended.is_some(),
                    epoch_ms: broadcast.epoch_ms,
                    signing: setup.signed_urls.then_some((&shared.signer, dir.as_str())),
                }
                .render(),
            )
        }
        Resource::Init(rendition) => match media(rendition).init {
            None => not_found,
            Some(_) if !signed_ok() => Reply::Error(StatusCode::FORBIDDEN),
            Some(bytes) => Reply::Media {
                bytes,
                content_type: setup.flavour.media_content_type(),
                delivery,
            },
        },
        Resource::Segment(rendition, flavour, msn) => {
            if flavour != setup.flavour || msn > window.last {
                not_found
            } else if !signed_ok() {
                Reply::Error(StatusCode::FORBIDDEN)
            } else {
                Reply::Media {
                    bytes: media(rendition).segment(msn).0,
                    content_type: flavour.media_content_type(),
                    delivery,
                }
            }
        }
        Resource::Part(rendition, flavour, msn, index) => {
            let production = broadcast.production(now);
            let number = msn
                .saturating_mul(PARTS_PER_SEGMENT as u64)
                .saturating_add(index);
            let part = fixtures::ll_media(rendition).part(msn, index as usize);
            let producing = production
                .producing(number)
                .filter(|_| broadcast.ended.is_none());
            let Some((bytes, _)) = part.filter(|_| flavour == setup.flavour) else {
                return not_found;
            };
            if number < production.parts() {
                if !signed_ok() {
                    return Reply::Error(StatusCode::FORBIDDEN);
                }
                Reply::Media {
                    bytes,
                    content_type: flavour.media_content_type(),
                    delivery,
                }
            } else if let Some(into) = producing {
                // The hinted part: held, then sent as it is produced.
                if !signed_ok() {
                    return Reply::Error(StatusCode::FORBIDDEN);
                }
                Reply::LivePart { bytes, into }
            } else {
                // Further in the future than the preload hint, or lost when the broadcast stopped.
                not_found
            }
        }
    }
}

/// An LL-HLS media playlist, honouring the delivery directives (RFC 8216bis §6.2.5): `_HLS_msn` (with `_HLS_part`)
/// holds the request until the playlist has that segment or part (400 if it is too far ahead, or for a bad value
/// or `_HLS_part` alone), `_HLS_skip=YES` (or `v2`) asks for a delta update. Once the playlist has EXT-X-ENDLIST the
/// directives are ignored.
fn ll_playlist(
    broadcast: &Broadcast,
    now: Instant,
    rendition: Rendition,
    query: &Query,
    signing: Option<(&UriSigner, &str)>,
) -> Reply {
    let bad_request = Reply::Error(StatusCode::BAD_REQUEST);
    let number = |value: &Option<String>| value.as_deref().map(str::parse::<u64>).transpose();
    let (Ok(msn), Ok(part)) = (number(&query.msn), number(&query.part)) else {
        return bad_request;
    };
    if part.is_some() && msn.is_none() {
        return bad_request;
    }
    let ended = broadcast.ended.is_some();
    let production = broadcast.production(now);
    if let Some(msn) = msn.filter(|_| !ended) {
        match block(production, msn, part) {
            Block::TooFar => return bad_request,
            Block::Wait(wait) => return Reply::Held(wait),
            Block::Ready => {}
        }
    }
    let text = LlPlaylist {
        rendition,
        production,
        ended,
        epoch_ms: broadcast.epoch_ms,
        signing,
        skip: matches!(query.skip.as_deref(), Some("YES" | "v2")),
    }
    .render();
    if msn.is_some() {
        Reply::BlockingPlaylist(text)
    } else {
        Reply::Playlist(text)
    }
}

/// A part still being produced: headers now, then `PART_CHUNKS` pieces, each when production reaches its end (on
/// the simulator's clock: advancing it releases them early). No Content-Length, as an origin that does not know the
/// size yet would send it: the body is chunked.
fn live_part_response(shared: Arc<Shared>, bytes: &'static [u8], into: Duration) -> Response {
    let start = shared.clock.now();
    let size = bytes.len().div_ceil(PART_CHUNKS).max(1);
    let pieces = bytes.chunks(size).enumerate().map(move |(i, piece)| {
        let produced = PART_INTERVAL.mul_f64((i + 1) as f64 / PART_CHUNKS as f64);
        (
            start + produced.saturating_sub(into),
            Bytes::from_static(piece),
        )
    });
    let body = Body::from_stream(futures_util::stream::iter(pieces).then(move |(at, piece)| {
        let shared = shared.clone();
        async move {
            shared.clock.sleep_until(at).await;
            Ok::<_, std::io::Error>(piece)
        }
    }));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(Flavour::Fmp4.media_content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(MEDIA_CACHE));
    response
}

/// `Stall`: the headers never come. The request waits for the simulator's shutdown so the server can still stop.
async fn stall(shared: &Shared) -> Response {
    let mut stopped = shared.shutdown.subscribe();
    let _ = stopped.wait_for(|stopped| *stopped).await;
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

fn media_response(
    bytes: &'static [u8],
    content_type: &'static str,
    delivery: Delivery,
) -> Response {
    let body = match delivery {
        Delivery::Whole => Body::from(Bytes::from_static(bytes)),
        Delivery::Slow(delay) => {
            let chunk = bytes.len().div_ceil(SLOW_CHUNKS).max(1);
            let pieces = bytes.chunks(chunk).map(Bytes::from_static).enumerate();
            Body::from_stream(futures_util::stream::iter(pieces).then(
                move |(i, piece)| async move {
                    if i > 0 {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, std::io::Error>(piece)
                },
            ))
        }
        Delivery::Truncated => {
            // Half the bytes, then an error: hyper closes the connection short of the Content-Length below. The
            // pause lets hyper flush the headers and the half first; an error at once would discard them unsent.
            let half = Bytes::from_static(&bytes[..bytes.len() / 2]);
            let cut = async {
                tokio::time::sleep(TRUNCATION_PAUSE).await;
                Err(std::io::Error::other("simulated truncated body"))
            };
            Body::from_stream(
                futures_util::stream::once(async { Ok(half) })
                    .chain(futures_util::stream::once(cut)),
            )
        }
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(MEDIA_CACHE));
    // Streamed bodies have no length of their own; the header promises all of it (which `Truncated` breaks).
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::CallSetup;

    fn shared_with(setup: CallSetup) -> Shared {
        let shared = Shared::new("k".into(), "s".into(), "http://sim".into());
        shared.add_call("livestream", "abc", setup);
        shared
    }

    fn session(shared: &Shared) -> String {
        shared
            .with_call("livestream", "abc", |c| {
                c.broadcast.clone().map(|b| b.session)
            })
            .flatten()
            .unwrap_or_default()
    }

    #[test]
    fn unknown_paths_and_calls_are_404() {
        let shared = shared_with(CallSetup::default());
        let s = session(&shared);
        for path in [
            "/cdn/x".to_owned(),
            format!("/cdn/livestream/other/{s}/master.m3u8"),
            "/cdn/livestream/abc/wrong-session/master.m3u8".to_owned(),
            format!("/edge/e1/livestream/abc/{s}/master.m3u8"),
            format!("/cdn/livestream/abc/{s}/v360/seg_000001.m4s"),
            format!("/cdn/livestream/abc/{s}/v360/init.mp4"),
            format!("/cdn/livestream/abc/{s}/v360/seg_000006.ts"),
        ] {
            assert_eq!(
                plan(&shared, &path, &Query::default()),
                Reply::Error(StatusCode::NOT_FOUND),
                "{path}"
            );
        }
    }

    #[test]
    fn redirect_master_moves_everything_to_the_edge_path() {
        let shared = shared_with(CallSetup {
            redirect_master: true,
            signed_urls: false,
            ..CallSetup::default()
        });
        let s = session(&shared);
        assert_eq!(
            plan(
                &shared,
                &format!("/cdn/livestream/abc/{s}/master.m3u8"),
                &Query::default()
            ),
            Reply::Redirect(format!("http://sim/edge/e1/livestream/abc/{s}/master.m3u8"))
        );
        assert_eq!(
            plan(
                &shared,
                &format!("/cdn/livestream/abc/{s}/v360/index.m3u8"),
                &Query::default()
            ),
            Reply::Error(StatusCode::NOT_FOUND)
        );
        assert!(matches!(
            plan(
                &shared,
                &format!("/edge/e1/livestream/abc/{s}/v360/index.m3u8"),
                &Query::default()
            ),
            Reply::Playlist(_)
        ));
        assert!(matches!(
            plan(
                &shared,
                &format!("/edge/e1/livestream/abc/{s}/v360/seg_000000.ts"),
                &Query::default()
            ),
            Reply::Media { .. }
        ));
    }

    fn ll_setup(signed_urls: bool) -> CallSetup {
        CallSetup {
            flavour: Flavour::Fmp4,
            low_latency: true,
            signed_urls,
            ..CallSetup::default()
        }
    }

    fn started(shared: &Shared) -> Instant {
        shared
            .with_call("livestream", "abc", |c| {
                c.broadcast.as_ref().map(|b| b.started)
            })
            .flatten()
            .unwrap_or_else(Instant::now)
    }

    fn query(text: &str) -> Query {
        Query::parse(Some(text))
    }

    #[test]
    fn queries_keep_the_first_of_each_parameter() {
        assert_eq!(
            query("sig=a&_HLS_msn=12&x=1&_HLS_part=2&_HLS_skip=YES&sig=b&_HLS_msn=9"),
            Query {
                sig: Some("a".into()),
                msn: Some("12".into()),
                part: Some("2".into()),
                skip: Some("YES".into()),
            }
        );
        assert_eq!(Query::parse(None), Query::default());
    }

    #[test]
    fn parts_exist_only_in_ll_mode() {
        // fMP4 without low_latency, and TS with it: no parts, and part paths are unknown before any fault applies.
        for setup in [
            CallSetup {
                flavour: Flavour::Fmp4,
                ..CallSetup::default()
            },
            CallSetup {
                low_latency: true,
                ..CallSetup::default()
            },
        ] {
            let ext = setup.flavour.segment_extension();
            let shared = shared_with(setup);
            let s = session(&shared);
            let playlist = plan(
                &shared,
                &format!("/cdn/livestream/abc/{s}/v360/index.m3u8"),
                &query("_HLS_msn=999"),
            );
            let Reply::Playlist(text) = playlist else {
                panic!("a plain playlist, directives ignored: {playlist:?}");
            };
            assert!(!text.contains("#EXT-X-PART") && !text.contains("SERVER-CONTROL"));
            shared.with_call("livestream", "abc", |c| c.fault = OriginFault::Status(503));
            let part = format!("/cdn/livestream/abc/{s}/v360/seg_000001.part0.{ext}");
            assert_eq!(
                plan(&shared, &part, &Query::default()),
                Reply::Error(StatusCode::NOT_FOUND)
            );
            let segment = format!("/cdn/livestream/abc/{s}/v360/seg_000001.{ext}");
            assert_eq!(
                plan(&shared, &segment, &Query::default()),
                Reply::Error(StatusCode::SERVICE_UNAVAILABLE)
            );
        }
    }

    #[test]
    fn ll_parts_are_served_held_or_unknown() {
        let shared = shared_with(ll_setup(false));
        let s = session(&shared);
        // 1.3 s in: MSN 12 in production, parts 0 and 1 done, part 2 the preload hint.
        let now = started(&shared) + Duration::from_millis(1_300);
        let at = |file: &str| {
            plan_at(
                &shared,
                &format!("/cdn/livestream/abc/{s}/v180/{file}"),
                &Query::default(),
                now,
            )
        };
        let part = |msn, index| {
            fixtures::ll_media(Rendition::V180)
                .part(msn, index)
                .map(|(b, _)| b)
                .unwrap_or_default()
        };
        let media = |bytes| Reply::Media {
            bytes,
            content_type: "video/mp4",
            delivery: Delivery::Whole,
        };
        assert_eq!(at("seg_000012.part1.m4s"), media(part(12, 1)));
        assert_eq!(
            at("seg_000000.part3.m4s"),
            media(part(0, 3)),
            "long out of the playlist, still there"
        );
        assert_eq!(
            at("seg_000012.part2.m4s"),
            Reply::LivePart {
                bytes: part(12, 2),
                into: Duration::from_millis(300)
            }
        );
        assert_eq!(
            at("seg_000012.part3.m4s"),
            Reply::Error(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            at("seg_000013.part0.m4s"),
            Reply::Error(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            at("seg_000012.m4s"),
            Reply::Error(StatusCode::NOT_FOUND),
            "not complete yet"
        );
        assert_eq!(
            at("seg_000011.m4s"),
            media(fixtures::ll_media(Rendition::V180).media.segment(11).0)
        );
        let init = fixtures::ll_media(Rendition::V180)
            .media
            .init
            .unwrap_or_default();
        assert_eq!(at("init.mp4"), media(init));
        assert_eq!(
            at("seg_000012.part1.ts"),
            Reply::Error(StatusCode::NOT_FOUND)
        );

        // Once stopped, the part in production never completes.
        shared.with_call("livestream", "abc", |c| {
            if let Some(b) = c.broadcast.as_mut() {
                b.ended = Some(now);
            }
        });
        assert_eq!(
            at("seg_000012.part2.m4s"),
            Reply::Error(StatusCode::NOT_FOUND)
        );
        assert_eq!(at("seg_000012.part1.m4s"), media(part(12, 1)));
    }

    #[test]
    fn ll_parts_need_their_signature() {
        let shared = shared_with(ll_setup(true));
        let s = session(&shared);
        let now = started(&shared) + Duration::from_millis(1_300);
        for file in ["seg_000012.part1.m4s", "seg_000012.part2.m4s"] {
            let path = format!("/cdn/livestream/abc/{s}/audio/{file}");
            assert_eq!(
                plan_at(&shared, &path, &Query::default(), now),
                Reply::Error(StatusCode::FORBIDDEN)
            );
            let signed = query(&format!("sig={}", shared.signer.sign(&path)));
            assert!(matches!(
                plan_at(&shared, &path, &signed, now),
                Reply::Media { .. } | Reply::LivePart { .. }
            ));
        }
    }

    #[test]
    fn ll_playlists_honour_delivery_directives() {
        let shared = shared_with(ll_setup(false));
        let s = session(&shared);
        let path = format!("/cdn/livestream/abc/{s}/v360/index.m3u8");
        let now = started(&shared) + Duration::from_millis(1_300);
        let at = |q: &str| plan_at(&shared, &path, &query(q), now);
        let bad = Reply::Error(StatusCode::BAD_REQUEST);

        let Reply::Playlist(plain) = at("") else {
            panic!("a playlist");
        };
        assert!(plain.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_000012.part2.m4s\"\n"));
        assert_eq!(
            at("_HLS_msn=12&_HLS_part=1"),
            Reply::BlockingPlaylist(plain.clone())
        );
        assert_eq!(at("_HLS_msn=11"), Reply::BlockingPlaylist(plain.clone()));
        assert_eq!(
            at("_HLS_msn=12&_HLS_part=2"),
            Reply::Held(Duration::from_millis(200))
        );
        assert_eq!(at("_HLS_msn=12"), Reply::Held(Duration::from_millis(700)));
        assert_eq!(at("_HLS_msn=13"), Reply::Held(Duration::from_millis(2_700)));
        for refused in [
            "_HLS_msn=14",
            "_HLS_msn=13&_HLS_part=3",
            "_HLS_part=1",
            "_HLS_msn=x",
            "_HLS_msn=12&_HLS_part=-1",
        ] {
            assert_eq!(at(refused), bad, "{refused}");
        }
        let Reply::Playlist(delta) = at("_HLS_skip=YES") else {
            panic!("a delta update");
        };
        assert!(delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=6\n"));
        assert!(
            matches!(at("_HLS_msn=12&_HLS_part=1&_HLS_skip=v2"), Reply::BlockingPlaylist(t) if t == delta)
        );
        assert_eq!(at("_HLS_skip=NO"), Reply::Playlist(plain));

        // Ended: directives are ignored (but malformed ones are still refused).
        shared.with_call("livestream", "abc", |c| {
            if let Some(b) = c.broadcast.as_mut() {
                b.ended = Some(now);
            }
        });
        let Reply::BlockingPlaylist(ended) = at("_HLS_msn=99&_HLS_skip=YES") else {
            panic!("answered at once");
        };
        assert!(ended.ends_with("#EXT-X-ENDLIST\n") && !ended.contains("EXT-X-SKIP"));
        assert_eq!(at("_HLS_part=1"), bad);
    }

    #[test]
    fn faults_shape_the_plan() {
        let shared = shared_with(CallSetup::default());
        let s = session(&shared);
        let master = format!("/cdn/livestream/abc/{s}/master.m3u8");
        let set = |fault| shared.with_call("livestream", "abc", |c| c.fault = fault);
        set(OriginFault::GarbagePlaylists);
        assert_eq!(plan(&shared, &master, &Query::default()), Reply::Garbage);
        set(OriginFault::Status(503));
        assert_eq!(
            plan(&shared, &master, &Query::default()),
            Reply::Error(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            plan(&shared, "/cdn/livestream/abc/x/y/z.ts", &Query::default()),
            Reply::Error(StatusCode::NOT_FOUND)
        );
        set(OriginFault::Status(7));
        assert_eq!(
            plan(&shared, &master, &Query::default()),
            Reply::Error(StatusCode::INTERNAL_SERVER_ERROR)
        );
        set(OriginFault::Stall);
        assert_eq!(plan(&shared, &master, &Query::default()), Reply::Stall);
    }
}
