//! The relay's answers in the listener's fast lane ([`crate::http::fast`]): fresh cached objects, in public mode,
//! requested without LL-HLS delivery directives (a viewer session counts a reload of a media playlist). The answer is
//! the router's (`server::render_whole` for a hit, the CORS layer's headers, the request and the hit counted),
//! written straight into the connection's header buffer. Anything with more to it (tokens, LL-HLS blocking
//! reloads, a viewer's first playlist with counting on, a session spliced into a multivariant playlist,
//! conditional and range requests, misses) is left to the router.

use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use futures_util::FutureExt;
use prometheus::IntCounter;
use tower::{Layer, Service};

use crate::hls::encoding::{self, Coding};
use crate::http::fast::{FastLane, FastRequest};
use crate::http::server::{check_path, cors_layer, is_entry, private, query_value};
use crate::relay::Relay;
use crate::stream::call::CallId;

pub struct RelayHits {
    relay: Relay,
    /// The header lines the CORS layer adds to a response for a request without `Origin` (the only kind the lane
    /// takes), found by asking the layer itself once.
    cors: Vec<u8>,
    /// `hls_relay_requests_total` for 200s, by route: resolved once rather than hashed per request.
    entries_ok: IntCounter,
    objects_ok: IntCounter,
}

impl RelayHits {
    pub fn new(relay: Relay) -> Self {
        let requests = &relay.metrics().requests;
        Self {
            cors: cors_lines(&relay.config().cors.allowed_origins),
            entries_ok: requests.with_label_values(&["hls_entry", "200"]),
            objects_ok: requests.with_label_values(&["hls_object", "200"]),
            relay,
        }
    }
}

impl FastLane for RelayHits {
    fn answer(&self, request: &FastRequest<'_>, head: &mut Vec<u8>) -> Option<Bytes> {
        if request.if_none_match.is_some()
            || !self.relay.gate().is_open()
            // Per-request debug spans are the router's (`observed`).
            || tracing::enabled!(target: "hls_relay::http::server", tracing::Level::DEBUG)
        {
            return None;
        }
        let mut parts = request.path.strip_prefix("/hls/")?.splitn(3, '/');
        let (kind, id) = (parts.next()?, parts.next()?);
        // The query means what it means to the router: LL-HLS delivery directives are its work, a viewer
        // session (`vs=…`) counts when counting is on, anything else is ignored (in public mode a token is).
        if request.query.is_some_and(|query| query.contains("_HLS_")) {
            return None;
        }
        let session = query_value(request.query, "vs");
        let viewers = self.relay.viewers();
        let entry = is_entry(request.path, kind, id);
        // With counting on, the entry starts a viewer's session.
        if entry && viewers.is_some() {
            return None;
        }
        check_path(request.path).ok()?;
        let coding = match request.accept_encoding {
            None => None,
            Some(value) => encoding::preferred_of(header_text(value)?),
        };
        let object = self.relay.fresh_object(request.path)?;
        if object.status != StatusCode::OK {
            return None;
        }
        let mut cache_control = &object.cache_control;
        let private_cache_control;
        if let (Some(session), Some(viewers), Some(playlist)) = (session, viewers, &object.playlist)
        {
            // A playlist with playlist URIs gets the session spliced into them: the router's work.
            if !playlist.playlist_uri_ends.is_empty() {
                return None;
            }
            let call = CallId::new(kind, id).ok()?;
            let counted = viewers.reload(
                &call,
                session,
                playlist.rendition.as_ref(),
                playlist.info.target_duration,
            );
            if counted {
                private_cache_control = private(&object.cache_control);
                cache_control = &private_cache_control;
            }
        }
        self.relay.count_hit();
        let (body, etag, coding) = match (coding, &object.playlist) {
            (Some(coding), Some(playlist)) => {
                let variant = playlist.variants.get(coding, &object.body, &object.etag);
                (variant.body.clone(), &variant.etag, Some(coding))
            }
            _ => (object.body.clone(), &object.etag, None),
        };
        head.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: ");
        head.extend_from_slice(object.content_type.as_bytes());
        head.extend_from_slice(b"\r\ncache-control: ");
        head.extend_from_slice(cache_control.as_bytes());
        head.extend_from_slice(b"\r\netag: ");
        head.extend_from_slice(etag.as_bytes());
        head.extend_from_slice(b"\r\naccept-ranges: bytes\r\nage: ");
        let age = object.age_secs(Instant::now());
        head.extend_from_slice(itoa::Buffer::new().format(age).as_bytes());
        head.extend_from_slice(b"\r\nx-cache: HIT\r\n");
        if object.playlist.is_some() {
            head.extend_from_slice(b"vary: accept-encoding\r\n");
        }
        match coding {
            Some(Coding::Gzip) => head.extend_from_slice(b"content-encoding: gzip\r\n"),
            Some(Coding::Brotli) => head.extend_from_slice(b"content-encoding: br\r\n"),
            None => {}
        }
        head.extend_from_slice(&self.cors);
        match entry {
            true => self.entries_ok.inc(),
            false => self.objects_ok.inc(),
        }
        Some(body)
    }
}

/// A header value as `HeaderValue::to_str` accepts it (visible ASCII, spaces and tabs), or `None`.
fn header_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Runs the relay's CORS layer once over an empty response to a GET without `Origin`, and returns what it added
/// as header lines.
fn cors_lines(origins: &[String]) -> Vec<u8> {
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
    });
    let mut service = cors_layer(origins).layer(inner);
    let request = Request::get("/hls/").body(Body::empty()).expect("static");
    let response = service
        .call(request)
        .now_or_never()
        .expect("the CORS layer answers a non-preflight request at once")
        .expect("infallible");
    let mut lines = Vec::new();
    for (name, value) in response.headers() {
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(value.as_bytes());
        lines.extend_from_slice(b"\r\n");
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn header_text_is_what_to_str_accepts() {
        for value in [
            &b"gzip, br"[..],
            b"gzip;q=0.5,\tbr",
            b"",
            b"caf\xc3\xa9",
            b"a\x01b",
            b"\x7f",
        ] {
            let expected = HeaderValue::from_bytes(value)
                .ok()
                .and_then(|v| v.to_str().ok().map(str::to_owned));
            assert_eq!(header_text(value).map(str::to_owned), expected, "{value:?}");
        }
    }

    #[test]
    fn cors_lines_are_the_layers_own() {
        let any = String::from_utf8(cors_lines(&["*".into()])).unwrap();
        assert!(any.contains("access-control-allow-origin: *\r\n"), "{any}");
        assert!(any.contains("access-control-expose-headers: "), "{any}");
        assert!(any.ends_with("\r\n"));
    }
}
