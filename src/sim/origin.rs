//! The simulated CDN: serves each broadcast's master, live media playlists and looping fixture segments, and
//! misbehaves on request (`OriginFault`).
//!
//! `plan` decides the answer from the path and the call's state (no I/O); `serve` counts the request and turns the
//! plan into a response, which is where faults that are about timing (stall, slow or cut bodies) happen.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;

use super::OriginFault;
use super::fixtures::{self, Rendition};
use super::hls::{MediaPlaylist, Resource, master_playlist, parse_origin_path, session_dir};
use super::state::Shared;

/// A slow body arrives in this many pieces, `SlowBody`'s delay apart.
pub const SLOW_CHUNKS: usize = 8;

/// How long a truncated body's first half has to reach the client before the connection is cut.
const TRUNCATION_PAUSE: Duration = Duration::from_millis(20);

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
/// What a CDN sends: playlists change every segment, segment bytes never change, errors are retried soon.
const PLAYLIST_CACHE: &str = "public, max-age=1";
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
    Media {
        bytes: &'static [u8],
        content_type: &'static str,
        delivery: Delivery,
    },
}

async fn serve(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    shared.counters.count_origin(uri.path());
    let sig = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "sig")
            .map(|(_, v)| v.into_owned())
    });
    match plan(&shared, uri.path(), sig.as_deref()) {
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
        Reply::Media {
            bytes,
            content_type,
            delivery,
        } => media_response(bytes, content_type, delivery),
    }
}

/// The answer for `path`, from the state of the call it names.
fn plan(shared: &Shared, path: &str, sig: Option<&str>) -> Reply {
    let not_found = Reply::Error(StatusCode::NOT_FOUND);
    let Some(p) = parse_origin_path(path) else {
        return not_found;
    };
    let Some((setup, fault, broadcast)) = shared.with_call(p.call_type, p.id, |c| {
        (c.setup.clone(), c.fault.clone(), c.broadcast.clone())
    }) else {
        return not_found;
    };
    match fault {
        OriginFault::Status(code) => {
            return Reply::Error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            );
        }
        OriginFault::Stall => return Reply::Stall,
        _ => {}
    }
    let now = shared.clock.now();
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
    let signed_ok = || !setup.signed_urls || sig.is_some_and(|sig| shared.signer.verify(path, sig));
    match p.resource {
        Resource::Master if garbage => Reply::Garbage,
        Resource::Master => Reply::Playlist(master_playlist(setup.flavour)),
        Resource::MediaPlaylist(_) if garbage => Reply::Garbage,
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
        Resource::Init(rendition) => match fixtures::media(setup.flavour, rendition).init {
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
                    bytes: fixtures::media(flavour, rendition).segment(msn).0,
                    content_type: flavour.media_content_type(),
                    delivery,
                }
            }
        }
    }
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
                plan(&shared, &path, None),
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
                None
            ),
            Reply::Redirect(format!("http://sim/edge/e1/livestream/abc/{s}/master.m3u8"))
        );
        assert_eq!(
            plan(
                &shared,
                &format!("/cdn/livestream/abc/{s}/v360/index.m3u8"),
                None
            ),
            Reply::Error(StatusCode::NOT_FOUND)
        );
        assert!(matches!(
            plan(
                &shared,
                &format!("/edge/e1/livestream/abc/{s}/v360/index.m3u8"),
                None
            ),
            Reply::Playlist(_)
        ));
        assert!(matches!(
            plan(
                &shared,
                &format!("/edge/e1/livestream/abc/{s}/v360/seg_000000.ts"),
                None
            ),
            Reply::Media { .. }
        ));
    }

    #[test]
    fn faults_shape_the_plan() {
        let shared = shared_with(CallSetup::default());
        let s = session(&shared);
        let master = format!("/cdn/livestream/abc/{s}/master.m3u8");
        let set = |fault| shared.with_call("livestream", "abc", |c| c.fault = fault);
        set(OriginFault::GarbagePlaylists);
        assert_eq!(plan(&shared, &master, None), Reply::Garbage);
        set(OriginFault::Status(503));
        assert_eq!(
            plan(&shared, &master, None),
            Reply::Error(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            plan(&shared, "/cdn/livestream/abc/x/y/z.ts", None),
            Reply::Error(StatusCode::NOT_FOUND)
        );
        set(OriginFault::Status(7));
        assert_eq!(
            plan(&shared, &master, None),
            Reply::Error(StatusCode::INTERNAL_SERVER_ERROR)
        );
        set(OriginFault::Stall);
        assert_eq!(plan(&shared, &master, None), Reply::Stall);
    }
}
