//! The relay as a cache and as an HTTP origin: coalescing, freshness, validators, ranges, CORS, compression.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use reqwest::header;

/// The relay path of the newest segment of the first rendition of `call`, and its upstream file name.
async fn newest_segment(world: &World, call: &str) -> (String, String) {
    let (media_path, media) = world.first_media_playlist(call).await;
    let segment = resolve(&media_path, uri_lines(&media).last().unwrap());
    let upstream = upstream_of(&segment);
    let file = upstream.path().rsplit('/').next().unwrap().to_owned();
    (segment, file)
}

/// The origin path (as the simulator counts it) of the upstream object behind a relay path.
fn origin_path_of(relay_path: &str) -> String {
    upstream_of(relay_path).path().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_viewers_of_a_new_segment_cause_one_upstream_fetch() {
    let world = World::start().await;
    // A slow body keeps the fill in flight while the viewers arrive, as on a distant origin.
    world.sim.set_fault(
        "livestream",
        "ts",
        OriginFault::SlowBody(Duration::from_millis(50)),
    );
    let (segment_path, _) = newest_segment(&world, "ts").await;
    let before = world.sim.total_origin_requests();

    let viewers = (0..200).map(|_| async {
        let response = world.get(&segment_path).await;
        assert_eq!(response.status(), 200);
        let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
        (cache, response.bytes().await.unwrap())
    });
    let results = join_all(viewers).await;

    assert_eq!(
        world.sim.total_origin_requests() - before,
        1,
        "one upstream fetch for 200 viewers"
    );
    let first = &results[0].1;
    assert!(
        results.iter().all(|(_, body)| body == first),
        "every viewer got the same bytes"
    );
    let misses = results.iter().filter(|(cache, _)| cache == "MISS").count();
    assert_eq!(misses, 1);
}

#[tokio::test]
async fn segments_are_cached_long_and_playlists_briefly() {
    let world = World::start().await;
    let (media_path, _) = world.first_media_playlist("ts").await;
    let (segment_path, file) = newest_segment(&world, "ts").await;
    let origin_path = origin_path_of(&segment_path);

    let first = world.get(&segment_path).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()[header::CONTENT_TYPE], "video/mp2t");
    let cache_control = first.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cache_control.contains("immutable") && cache_control.contains("max-age=1209600"));
    let body = first.bytes().await.unwrap();

    let again = world.get(&segment_path).await;
    assert_eq!(again.headers()["x-cache"], "HIT");
    assert!(again.headers().contains_key(header::AGE));
    assert_eq!(again.bytes().await.unwrap(), body);
    assert_eq!(
        world.sim.origin_requests(&origin_path),
        1,
        "{origin_path} ({file}) fetched once"
    );

    // Target duration 2 s: a live media playlist is fresh for 1 s, here and downstream (a viewer's own copy,
    // named by its session, is private: tests/viewers.rs).
    let (viewers_copy, media_path) = (media_path.clone(), media_path.split('?').next().unwrap());
    let playlist = world.get(media_path).await;
    assert_eq!(
        playlist.headers()[header::CACHE_CONTROL],
        "public, max-age=1"
    );
    assert_eq!(
        world.get(&viewers_copy).await.headers()[header::CACHE_CONTROL],
        "private, max-age=1"
    );
    let fetched_at = world.sim.total_origin_requests();
    let hit = world.get(media_path).await;
    let refetched = world.sim.total_origin_requests() - fetched_at;
    assert!(hit.headers()["x-cache"] == "HIT" || refetched == 1);

    // And it is refreshed once stale: the window moves.
    let before = world.playlist(media_path).await;
    eventually("the relayed media playlist advances", || async {
        world.playlist(media_path).await != before
    })
    .await;
}

#[tokio::test]
async fn etag_revalidation_answers_304() {
    let world = World::start().await;
    let (segment_path, _) = newest_segment(&world, "ts").await;
    let response = world.get(&segment_path).await;
    let etag = response.headers()[header::ETAG].clone();
    let _ = response.bytes().await;
    let response = world
        .http
        .get(world.url(&segment_path))
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    assert_eq!(response.headers()[header::ETAG], etag);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn ranges_are_served_from_cached_media() {
    let world = World::start().await;
    let (segment_path, _) = newest_segment(&world, "ts").await;
    let whole = world.get(&segment_path).await.bytes().await.unwrap();
    let ranged = |range: &'static str| {
        world
            .http
            .get(world.url(&segment_path))
            .header(header::RANGE, range)
            .send()
    };
    let response = ranged("bytes=188-375").await.unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()[header::CONTENT_RANGE],
        format!("bytes 188-375/{}", whole.len()).as_str()
    );
    assert_eq!(response.bytes().await.unwrap(), whole.slice(188..376));

    let response = ranged("bytes=99999999-").await.unwrap();
    assert_eq!(response.status(), 416);
}

#[tokio::test]
async fn a_range_on_an_uncached_segment_is_cut_from_the_fill() {
    let world = World::start().await;
    let (segment_path, _) = newest_segment(&world, "ts").await;
    let response = world
        .http
        .get(world.url(&segment_path))
        .header(header::RANGE, "bytes=0-187")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len(), 188);
    assert_eq!(bytes[0], 0x47);
}

#[tokio::test]
async fn head_requests_get_headers_only() {
    let world = World::start().await;
    let (segment_path, _) = newest_segment(&world, "ts").await;
    let length = world.get(&segment_path).await.bytes().await.unwrap().len();
    let response = world
        .http
        .head(world.url(&segment_path))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        length.to_string().as_str()
    );
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn browsers_may_read_every_response_and_preflights_are_answered() {
    let world = World::start().await;
    let response = world
        .http
        .get(world.url("/hls/livestream/ts/index.m3u8"))
        .header(header::ORIGIN, "https://player.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let exposed = response.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap();
    assert!(exposed.to_ascii_lowercase().contains("age"), "{exposed}");

    let preflight = world
        .http
        .request(
            reqwest::Method::OPTIONS,
            world.url("/hls/livestream/ts/index.m3u8"),
        )
        .header(header::ORIGIN, "https://player.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "range")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let methods = preflight.headers()[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .unwrap();
    assert!(methods.contains("GET"));

    // Errors are readable by pages too.
    let error = world
        .http
        .get(world.url("/hls/livestream/nosuchcall/index.m3u8"))
        .header(header::ORIGIN, "https://player.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(error.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
}

#[tokio::test]
async fn configured_origins_are_the_only_ones_allowed() {
    let world =
        World::start_with(|c| c.cors.allowed_origins = vec!["https://good.example.com".into()])
            .await;
    let ask = |origin: &'static str| {
        world
            .http
            .get(world.url("/hls/livestream/ts/index.m3u8"))
            .header(header::ORIGIN, origin)
            .send()
    };
    let good = ask("https://good.example.com").await.unwrap();
    assert_eq!(
        good.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://good.example.com"
    );
    let bad = ask("https://evil.example.com").await.unwrap();
    assert!(
        !bad.headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );
}

#[tokio::test]
async fn playlists_are_compressed_when_accepted_and_media_never() {
    use std::io::Read;

    // The shared entry playlist (with viewer counting, each viewer's is its own, compressed per request).
    let world = World::start_with(|c| c.viewers.enabled = false).await;
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let entry = world.url("/hls/livestream/ts/index.m3u8");
    let ask = |accept: &'static str, if_none_match: Option<String>| {
        let mut request = raw.get(&entry).header(header::ACCEPT_ENCODING, accept);
        if let Some(etag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        request.send()
    };
    let plain = ask("identity", None).await.unwrap();
    assert!(!plain.headers().contains_key(header::CONTENT_ENCODING));
    assert_eq!(plain.headers()[header::VARY], "accept-encoding");
    let plain_etag = plain.headers()[header::ETAG].to_str().unwrap().to_owned();
    let plain = plain.text().await.unwrap();

    let gzip = ask("gzip", None).await.unwrap();
    assert_eq!(gzip.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(gzip.headers()[header::VARY], "accept-encoding");
    let gzip_etag = gzip.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert_ne!(
        gzip_etag, plain_etag,
        "each representation has its own validator"
    );
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gzip.bytes().await.unwrap()[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain);

    // Browsers offer br too; it wins.
    let brotli = ask("gzip, deflate, br, zstd", None).await.unwrap();
    assert_eq!(brotli.headers()[header::CONTENT_ENCODING], "br");
    let mut unbrotlied = String::new();
    brotli::Decompressor::new(&brotli.bytes().await.unwrap()[..], 4096)
        .read_to_string(&mut unbrotlied)
        .unwrap();
    assert_eq!(unbrotlied, plain);

    // A revalidation is answered for the representation it names.
    let revalidated = ask("gzip", Some(gzip_etag)).await.unwrap();
    assert_eq!(revalidated.status(), 304);
    let other_representation = ask("gzip", Some(plain_etag)).await.unwrap();
    assert_eq!(other_representation.status(), 200);

    let (segment_path, _) = newest_segment(&world, "ts").await;
    let segment = raw
        .get(world.url(&segment_path))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert!(!segment.headers().contains_key(header::CONTENT_ENCODING));
}

#[tokio::test]
async fn relay_urls_work_on_another_instance_sharing_the_key() {
    let world = World::start().await;
    let (segment_path, _) = newest_segment(&world, "ts").await;
    let twin = start_relay(&world.sim, |_| {}).await;
    let response = world
        .http
        .get(format!("{}{segment_path}", twin.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let stranger = start_relay(&world.sim, |c| {
        c.server.url_key = Some("a-different-key-entirely".into())
    })
    .await;
    let response = world
        .http
        .get(format!("{}{segment_path}", stranger.base_url()))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn metrics_count_requests_cache_outcomes_and_upstream_fetches() {
    let world = World::start().await;
    let (segment_path, _) = newest_segment(&world, "ts").await;
    for _ in 0..3 {
        let _ = world.get(&segment_path).await.bytes().await;
    }
    let metrics = world.get("/metrics").await.text().await.unwrap();
    for needle in [
        "hls_relay_requests_total{route=\"hls_object\",status=\"200\"}",
        "hls_relay_cache_lookups_total{outcome=\"hit\"}",
        "hls_relay_cache_lookups_total{outcome=\"miss\"}",
        "hls_relay_upstream_requests_total{status=\"200\"}",
        "hls_relay_upstream_response_seconds_bucket",
        "hls_relay_api_lookups_total{outcome=\"live\"}",
        "hls_relay_cache_bytes",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
    assert_eq!(world.get("/healthz").await.status(), 200);
    assert_eq!(world.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn concurrent_call_lookups_share_one_api_request() {
    let world = World::start().await;
    let before = world.sim.api_requests();
    let lookups = (0..50).map(|_| world.get("/v1/calls/livestream/ts"));
    for response in join_all(lookups).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(world.sim.api_requests() - before, 1);
}

/// One HTTP/1.1 response read off a raw connection: status, headers (lower-case names, in order) and body.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    /// The headers that do not change from one second or one answer to the next, sorted.
    fn stable_headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<_> = self
            .headers
            .iter()
            .filter(|(name, _)| name != "date" && name != "age")
            .cloned()
            .collect();
        headers.sort();
        headers
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `requests` back to back on one connection (pipelined) and reads one response to each, in order. HEAD
/// responses have no body; others are framed by Content-Length or chunked.
async fn pipelined(addr: std::net::SocketAddr, requests: &[String]) -> Vec<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(requests.concat().as_bytes())
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let mut responses = Vec::new();
    async fn fill(buffer: &mut Vec<u8>, stream: &mut tokio::net::TcpStream) {
        let mut chunk = [0; 16384];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("the relay answers in time")
            .unwrap();
        assert!(n > 0, "the relay closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
    }
    for request in requests {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = response.parse(&buffer).unwrap() {
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                break (response.code.unwrap(), headers, len);
            }
            fill(&mut buffer, &mut stream).await;
        };
        buffer.drain(..head_len);
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if request.starts_with("HEAD ") || status == 304 {
        } else if let Some(length) = value("content-length") {
            let length: usize = length.parse().unwrap();
            while buffer.len() < length {
                fill(&mut buffer, &mut stream).await;
            }
            body = buffer.drain(..length).collect();
        } else {
            assert_eq!(value("transfer-encoding").as_deref(), Some("chunked"));
            loop {
                let line_end = loop {
                    if let Some(at) = buffer.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    fill(&mut buffer, &mut stream).await;
                };
                let size_text = String::from_utf8(buffer[..line_end].to_vec()).unwrap();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
                while buffer.len() < line_end + 2 + size + 2 {
                    fill(&mut buffer, &mut stream).await;
                }
                body.extend_from_slice(&buffer[line_end + 2..line_end + 2 + size]);
                buffer.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        responses.push(RawResponse {
            status,
            headers,
            body,
        });
    }
    responses
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: relay.test\r\nUser-Agent: t\r\n{extra}\r\n")
}

/// The listener answers plain requests for cached objects itself, without hyper (src/http/fast.rs). Its answers
/// must be the router's: a `Connection: keep-alive` header (which the fast lane leaves to hyper) gets the same
/// request answered by the router, for comparison.
#[tokio::test]
async fn cached_hits_answered_by_the_listener_are_the_routers_answers() {
    let world = World::start().await;
    let (playlist, text) = world.first_media_playlist("ts").await;
    let segment = resolve(&playlist, uri_lines(&text)[0]);
    let cached = world.get(&segment).await;
    assert_eq!(cached.status(), 200);
    cached.bytes().await.unwrap();
    let addr = world.relay.addr;
    // In public mode a token in the query is ignored, by the router and so by the lane.
    let with_token = format!("{segment}?token=ignored");
    for path in [&segment, &playlist, &with_token] {
        for accept in [
            "",
            "Accept-Encoding: gzip\r\n",
            "Accept-Encoding: br;q=1, gzip;q=0.5\r\n",
        ] {
            let lane = &pipelined(addr, &[get(path, accept)]).await[0];
            let keep_alive = format!("{accept}Connection: keep-alive\r\n");
            let router = &pipelined(addr, &[get(path, &keep_alive)]).await[0];
            assert_eq!((lane.status, router.status), (200, 200), "{path} {accept}");
            assert_eq!(lane.header("x-cache"), Some("HIT"));
            assert!(lane.header("date").is_some() && lane.header("age").is_some());
            if path != &playlist || lane.header("etag") == router.header("etag") {
                assert_eq!(
                    lane.stable_headers(),
                    router.stable_headers(),
                    "{path} {accept}"
                );
                assert_eq!(lane.body, router.body, "{path} {accept}");
            } else {
                // A live playlist may have moved on between the two requests: only its version differs.
                let names = |r: &RawResponse| {
                    let mut names: Vec<_> =
                        r.stable_headers().into_iter().map(|(n, _)| n).collect();
                    names.dedup();
                    names
                };
                assert_eq!(names(lane), names(router), "{path} {accept}");
            }
        }
    }
    // On one connection, pipelined: hits (the lane), a miss and a HEAD (hyper, one request each, the connection
    // then taken back), a conditional request (hyper), hits again; every answer in order.
    let uncached = resolve(&playlist, uri_lines(&text).last().unwrap());
    let etag = pipelined(addr, &[get(&segment, "")]).await[0]
        .header("etag")
        .unwrap()
        .to_owned();
    let requests = [
        get(&playlist, ""),
        get(&uncached, ""),
        get(&segment, ""),
        format!("HEAD {segment} HTTP/1.1\r\nHost: relay.test\r\n\r\n"),
        get(&segment, &format!("If-None-Match: {etag}\r\n")),
        get(&playlist, "Accept-Encoding: gzip\r\n"),
        get(&segment, ""),
    ];
    let answers = pipelined(addr, &requests).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 304, 200, 200]);
    let whole = world.get(&segment).await.bytes().await.unwrap();
    for at in [2, 6] {
        assert_eq!(answers[at].body, whole, "response {at}");
    }
    assert_eq!(
        answers[3].header("content-length"),
        Some(&*whole.len().to_string())
    );
    assert!(answers[0].body.starts_with(b"#EXTM3U"));
    assert_eq!(answers[5].header("content-encoding"), Some("gzip"));
}
