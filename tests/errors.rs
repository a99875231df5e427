//! Bad input and bad upstreams: the right status and error code, no upstream request where none is due, no panic,
//! and other viewers unaffected.

mod common;

use std::time::Duration;

use common::*;
use hls_relay::sim::CallSetup;
use reqwest::header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a request line exactly as given (reqwest would normalise `..` away) and returns status and body.
async fn raw_get(world: &World, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(world.relay.addr)
        .await
        .unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    // Past the header limit the relay answers and closes without reading the rest: writing may then fail.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn unknown_calls_and_calls_off_air() {
    let world = World::start().await;
    world
        .expect_error(
            "/hls/livestream/nosuchcall/index.m3u8",
            404,
            "call_not_found",
        )
        .await;
    world
        .expect_error("/v1/calls/livestream/nosuchcall", 404, "call_not_found")
        .await;

    world.sim.add_call(
        "livestream",
        "backstage",
        CallSetup {
            broadcasting: false,
            ..CallSetup::default()
        },
    );
    let headers = world
        .expect_error(
            "/hls/livestream/backstage/index.m3u8",
            404,
            "not_broadcasting",
        )
        .await;
    assert!(headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn malformed_call_ids_are_bad_requests() {
    let world = World::start().await;
    world
        .expect_error("/hls/LiveStream/abc/index.m3u8", 400, "bad_request")
        .await;
    world
        .expect_error(
            &format!("/hls/livestream/{}/index.m3u8", "a".repeat(65)),
            400,
            "bad_request",
        )
        .await;
    world
        .expect_error("/v1/calls/livestream/a.b", 400, "bad_request")
        .await;
    let before = world.sim.api_requests();
    world
        .expect_error("/hls/livestream/a%20b/index.m3u8", 400, "bad_request")
        .await;
    assert_eq!(
        world.sim.api_requests(),
        before,
        "no API look-up for a malformed id"
    );
}

#[tokio::test]
async fn traversal_and_encoded_separators_are_refused() {
    let world = World::start().await;
    for target in [
        "/hls/livestream/ts/../../../etc/passwd",
        "/hls/livestream/ts/%2e%2e/%2e%2e/etc/passwd",
        "/hls/livestream/ts/abc%2Fdef/seg.ts",
        "/hls/livestream/ts/abc%5cdef/seg.ts",
        "/hls/..%2f..%2fetc/passwd",
    ] {
        let (status, body) = raw_get(&world, target).await;
        assert_eq!(status, 400, "{target}");
        assert!(body.contains("\"bad_request\""), "{target}: {body}");
    }
    let long = format!(
        "/hls/livestream/ts/{}/AAAAAAAAAAAAm/seg.ts",
        "A".repeat(5000)
    );
    let (status, body) = raw_get(&world, &long).await;
    assert_eq!(status, 414);
    assert!(body.contains("\"uri_too_long\""), "{body}");
    // A request line that fills the whole header limit: the URI is what is too long.
    let longer = format!("/hls/livestream/ts/{}", "A".repeat(20 * 1024));
    let (status, body) = raw_get(&world, &longer).await;
    assert_eq!(status, 414);
    assert!(body.contains("\"uri_too_long\""), "{body}");
    assert_eq!(world.sim.total_origin_requests(), 0);
}

#[tokio::test]
async fn forged_relay_paths_never_reach_upstream() {
    let world = World::start().await;
    let (media_path, media) = world.first_media_playlist("ts").await;
    let genuine = resolve(&media_path, uri_lines(&media)[0]);
    let before = world.sim.total_origin_requests();

    // Same token, another file name; another call's token; a made-up token; a short one.
    let (dir, _) = genuine.rsplit_once('/').unwrap();
    world
        .expect_error(&format!("{dir}/seg_999999.ts"), 404, "not_found")
        .await;
    world
        .expect_error(
            &genuine.replace("/livestream/ts/", "/livestream/fmp4/"),
            404,
            "not_found",
        )
        .await;
    let seal = dir.rsplit('/').next().unwrap();
    let mut tampered: Vec<u8> = seal.bytes().collect();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    world
        .expect_error(&genuine.replace(seal, &tampered), 404, "not_found")
        .await;
    world
        .expect_error("/hls/livestream/ts/abc/def/seg.ts", 400, "bad_request")
        .await;
    world
        .expect_error("/hls/livestream/ts/abc/seg.ts", 404, "not_found")
        .await;
    world
        .expect_error("/hls/livestream/ts/a/b/c/seg.ts", 404, "not_found")
        .await;

    assert_eq!(
        world.sim.total_origin_requests(),
        before,
        "no upstream request for a forged path"
    );
}

#[tokio::test]
async fn foreign_hosts_in_playlists_are_rewritten_but_never_fetched() {
    let world = World::start().await;
    let origin = FixedOrigin::start().await;
    // "localhost" is a different host name from the playlist's 127.0.0.1: not allowed by default.
    let foreign = format!("http://localhost:{}/evil/seg.ts", origin.addr.port());
    origin.serve(
        "/live/media.m3u8",
        200,
        "application/vnd.apple.mpegurl",
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nlocal.ts\n#EXTINF:2.0,\n{foreign}\n"
        ),
    );
    origin.serve("/live/local.ts", 200, "video/mp2t", vec![0x47u8; 188 * 4]);
    world
        .sim
        .set_playlist_url("livestream", "mixed", &origin.url("/live/media.m3u8"));

    let entry = "/hls/livestream/mixed/index.m3u8";
    let playlist = world.playlist(entry).await;
    assert!(
        !playlist.contains("localhost") && !playlist.contains("127.0.0.1"),
        "{playlist}"
    );
    let uris = uri_lines(&playlist);
    assert_eq!(world.get(&resolve(entry, uris[0])).await.status(), 200);
    world
        .expect_error(&resolve(entry, uris[1]), 403, "forbidden")
        .await;
    assert_eq!(origin.requests("/evil/seg.ts"), 0);

    // Allowed explicitly, it is fetched.
    let trusting = start_relay(&world.sim, |c| {
        c.upstream.allowed_hosts = vec!["localhost".into()]
    })
    .await;
    let url = format!("{}{}", trusting.base_url(), resolve(entry, uris[1]));
    let _ = world.http.get(url).send().await.unwrap();
    assert_eq!(origin.requests("/evil/seg.ts"), 1);
}

#[tokio::test]
async fn garbage_playlists_are_refused_and_other_calls_keep_playing() {
    let world = World::start().await;
    world
        .sim
        .set_fault("livestream", "ts", OriginFault::GarbagePlaylists);
    world
        .expect_error(
            "/hls/livestream/ts/index.m3u8",
            502,
            "bad_upstream_playlist",
        )
        .await;
    let (_, media) = world.first_media_playlist("fmp4").await;
    assert!(media.contains("#EXTINF"));

    world.sim.set_fault("livestream", "ts", OriginFault::None);
    eventually("the call recovers once upstream does", || async {
        world.get("/hls/livestream/ts/index.m3u8").await.status() == 200
    })
    .await;
}

#[tokio::test]
async fn binary_junk_as_a_rendition_playlist_is_a_bad_upstream_playlist() {
    let world = World::start().await;
    let origin = FixedOrigin::start().await;
    origin.serve(
        "/m.m3u8",
        200,
        "application/vnd.apple.mpegurl",
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n",
    );
    origin.serve(
        "/v.m3u8",
        200,
        "text/html",
        "<html><body>502 Bad Gateway</body></html>",
    );
    world
        .sim
        .set_playlist_url("livestream", "junk", &origin.url("/m.m3u8"));
    let entry = "/hls/livestream/junk/index.m3u8";
    let master = world.playlist(entry).await;
    let variant = resolve(entry, uri_lines(&master)[0]);
    world
        .expect_error(&variant, 502, "bad_upstream_playlist")
        .await;
}

#[tokio::test]
async fn dead_upstream_is_an_upstream_error() {
    let world = World::start().await;
    // Port 1 on loopback: nothing listens there.
    world
        .sim
        .set_playlist_url("livestream", "dead", "http://127.0.0.1:1/master.m3u8");
    world
        .expect_error("/hls/livestream/dead/index.m3u8", 502, "upstream_error")
        .await;
}

#[tokio::test]
async fn upstream_5xx_is_an_upstream_error_and_is_not_cached() {
    let world = World::start().await;
    world
        .sim
        .set_fault("livestream", "ts", OriginFault::Status(503));
    world
        .expect_error("/hls/livestream/ts/index.m3u8", 502, "upstream_error")
        .await;
    world.sim.set_fault("livestream", "ts", OriginFault::None);
    assert_eq!(
        world.get("/hls/livestream/ts/index.m3u8").await.status(),
        200
    );
}

#[tokio::test]
async fn a_passing_upstream_failure_is_retried() {
    let world = World::start().await;
    let origin = FixedOrigin::start().await;
    origin.serve(
        "/live/media.m3u8",
        200,
        "application/vnd.apple.mpegurl",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg.ts\n",
    );
    origin.serve("/live/seg.ts", 200, "video/mp2t", vec![0x47u8; 188]);
    origin.fail_next("/live/seg.ts", 2, 503);
    world
        .sim
        .set_playlist_url("livestream", "flaky", &origin.url("/live/media.m3u8"));
    let entry = "/hls/livestream/flaky/index.m3u8";
    let playlist = world.playlist(entry).await;
    let response = world.get(&resolve(entry, uri_lines(&playlist)[0])).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        origin.requests("/live/seg.ts"),
        3,
        "two failures, then success"
    );
}

#[tokio::test]
async fn a_stalled_upstream_is_a_timeout() {
    let world =
        World::start_with(|c| c.upstream.first_byte_timeout = Duration::from_millis(300)).await;
    world.sim.set_fault("livestream", "ts", OriginFault::Stall);
    world
        .expect_error("/hls/livestream/ts/index.m3u8", 504, "upstream_timeout")
        .await;
}

#[tokio::test]
async fn upstream_404s_are_remembered_briefly() {
    let world = World::start().await;
    let origin = FixedOrigin::start().await;
    origin.serve(
        "/live/media.m3u8",
        200,
        "application/vnd.apple.mpegurl",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\ngone.ts\n",
    );
    world
        .sim
        .set_playlist_url("livestream", "gone", &origin.url("/live/media.m3u8"));
    let entry = "/hls/livestream/gone/index.m3u8";
    let playlist = world.playlist(entry).await;
    let segment = resolve(entry, uri_lines(&playlist)[0]);
    let headers = world.expect_error(&segment, 404, "not_found").await;
    assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=2");
    world.expect_error(&segment, 404, "not_found").await;
    assert_eq!(origin.requests("/live/gone.ts"), 1);
}

#[tokio::test]
async fn a_truncated_upstream_body_is_never_cached() {
    let world = World::start().await;
    let (media_path, media) = world.first_media_playlist("ts").await;
    let segment = resolve(&media_path, uri_lines(&media)[0]);
    world
        .sim
        .set_fault("livestream", "ts", OriginFault::TruncatedBody);
    let cut = world.get(&segment).await.bytes().await.is_err();
    assert!(cut, "a viewer must not receive a short body as complete");

    world.sim.set_fault("livestream", "ts", OriginFault::None);
    let response = world.get(&segment).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-cache"],
        "MISS",
        "the truncated copy was not kept"
    );
    assert!(response.bytes().await.is_ok());
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let world = World::start().await;
    world.expect_error("/nothing/here", 404, "not_found").await;
    let response = world
        .http
        .post(world.url("/hls/livestream/ts/index.m3u8"))
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "method_not_allowed").await;
}
