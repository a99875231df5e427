//! The simulator over real HTTP on 127.0.0.1:0, as the relay's tests will use it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Client, StatusCode, redirect};
use serde_json::{Value, json};
use url::Url;

use super::*;

const CALL_TYPE: &str = "livestream";

async fn sim() -> SimHandle {
    start(SimConfig::default()).await.expect("simulator binds")
}

fn client() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .expect("client")
}

/// Calls the API as Stream's SDKs do, with `token` and the simulator's API key.
async fn api(
    sim: &SimHandle,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> (StatusCode, Value) {
    let url = format!(
        "{}/api/v2/video/call/{CALL_TYPE}/{path}?api_key={}",
        sim.base_url(),
        sim.api_key()
    );
    let response = client()
        .request(method, url)
        .header("authorization", token)
        .header("stream-auth-type", "jwt")
        .send()
        .await
        .expect("api answers");
    let status = response.status();
    let body = response.text().await.expect("api body");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn get_call(sim: &SimHandle, id: &str) -> (StatusCode, Value) {
    api(sim, reqwest::Method::GET, id, &sim.server_token()).await
}

async fn post(sim: &SimHandle, id: &str, action: &str, token: &str) -> (StatusCode, Value) {
    api(sim, reqwest::Method::POST, &format!("{id}/{action}"), token).await
}

async fn fetch(url: &str) -> reqwest::Response {
    client().get(url).send().await.expect("origin answers")
}

async fn text(url: &str) -> (StatusCode, String) {
    let response = fetch(url).await;
    (response.status(), response.text().await.unwrap_or_default())
}

/// URIs of a playlist, resolved against its URL.
fn uris(base: &str, playlist: &str) -> Vec<String> {
    let base = Url::parse(base).expect("playlist URL");
    playlist
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| base.join(l).ok())
        .map(String::from)
        .collect()
}

fn media_sequence(playlist: &str) -> Option<u64> {
    playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))?
        .parse()
        .ok()
}

fn stream_error(body: &Value, code: u64, status: u64) {
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["StatusCode"], status, "{body}");
    assert!(
        body["message"].is_string() && body["duration"].is_string(),
        "{body}"
    );
    assert!(body["more_info"].is_string(), "{body}");
    assert_eq!(body["details"], json!([]), "{body}");
}

#[tokio::test]
async fn api_accepts_server_tokens_and_refuses_bad_credentials() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "abc", CallSetup::default());

    let (status, _) = get_call(&sim, "abc").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api(
        &sim,
        reqwest::Method::GET,
        "abc",
        &format!("Bearer {}", sim.server_token()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a Bearer prefix is tolerated");

    let url = format!(
        "{}/api/v2/video/call/{CALL_TYPE}/abc?api_key=wrong",
        sim.base_url()
    );
    let response = client()
        .get(url)
        .header("authorization", sim.server_token())
        .send()
        .await;
    let response = response.expect("api answers");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    stream_error(
        &serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or_default(),
        2,
        401,
    );

    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "server": true }),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap_or_default();
    let (status, body) = api(&sim, reqwest::Method::GET, "abc", &forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    stream_error(&body, 43, 401);

    let (status, body) = api(&sim, reqwest::Method::GET, "abc", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    stream_error(&body, 5, 401);
    assert_eq!(
        sim.api_requests(),
        5,
        "every get-call request counts, whatever its status"
    );
}

#[tokio::test]
async fn only_hosts_may_start_and_stop_broadcasts() {
    let sim = sim().await;
    sim.add_call(
        CALL_TYPE,
        "abc",
        CallSetup {
            broadcasting: false,
            ..CallSetup::default()
        },
    );

    let (status, body) = post(&sim, "abc", "start_broadcasting", &sim.user_token("alice")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    stream_error(&body, 17, 403);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("start-broadcast-call")),
        "{body}"
    );

    let (status, body) = api(&sim, reqwest::Method::GET, "abc", &sim.user_token("alice")).await;
    assert_eq!(status, StatusCode::OK, "viewers may read the call");
    assert_eq!(body["own_capabilities"], json!(["join-call", "read-call"]));

    let (status, body) = post(
        &sim,
        "abc",
        "start_broadcasting",
        &sim.user_token("host-bob"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["playlist_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/master.m3u8"))
    );
    let (status, body) = post(&sim, "abc", "stop_broadcasting", &sim.user_token("alice")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("stop-broadcast-call")),
        "{body}"
    );
    assert_eq!(sim.api_action_requests(), 3);
}

#[tokio::test]
async fn unknown_calls_are_404_in_streams_error_shape() {
    let sim = sim().await;
    let (status, body) = get_call(&sim, "nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stream_error(&body, 16, 404);
    assert_eq!(
        body["message"],
        "GetCall failed with error: \"Can't find call with id nope\""
    );
    let (status, body) = post(&sim, "nope", "start_broadcasting", &sim.server_token()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stream_error(&body, 16, 404);
    assert!(!sim.start_broadcasting(CALL_TYPE, "nope"));
    assert!(!sim.stop_broadcasting(CALL_TYPE, "nope"));
    assert_eq!(sim.playlist_url(CALL_TYPE, "nope"), None);
}

#[tokio::test]
async fn get_call_has_streams_shape() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "abc", CallSetup::default());
    let (status, body) = get_call(&sim, "abc").await;
    assert_eq!(status, StatusCode::OK);
    let call = &body["call"];
    assert_eq!(call["cid"], "livestream:abc");
    assert_eq!(call["type"], CALL_TYPE);
    assert_eq!(call["id"], "abc");
    assert_eq!(call["backstage"], false);
    assert_eq!(call["egress"]["broadcasting"], true);
    assert_eq!(
        call["egress"]["hls"]["playlist_url"],
        json!(sim.playlist_url(CALL_TYPE, "abc"))
    );
    assert_eq!(call["egress"]["rtmps"], json!([]));
    assert!(call["session"]["live_started_at"].is_i64(), "Unix ns");
    assert_eq!(call["ended_at"], Value::Null);
    assert!(body["members"].is_array());
    assert!(body["own_capabilities"].is_array());
    assert!(body["duration"].as_str().is_some_and(|d| d.ends_with("ms")));
}

#[tokio::test]
async fn start_and_stop_change_state_and_url() {
    let sim = sim().await;
    sim.add_call(
        CALL_TYPE,
        "abc",
        CallSetup {
            broadcasting: false,
            ..CallSetup::default()
        },
    );
    let (_, body) = get_call(&sim, "abc").await;
    assert_eq!(body["call"]["egress"]["broadcasting"], false);
    assert_eq!(body["call"]["egress"]["hls"], Value::Null);

    let token = sim.server_token();
    let (status, started) = post(&sim, "abc", "start_broadcasting", &token).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = get_call(&sim, "abc").await;
    let first_url = body["call"]["egress"]["hls"]["playlist_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(body["call"]["egress"]["broadcasting"], true);
    assert_eq!(started["playlist_url"], first_url.as_str());
    assert!(first_url.starts_with(&format!("{}/cdn/livestream/abc/", sim.base_url())));
    let media_url = uris(&first_url, &text(&first_url).await.1)[0].clone();
    assert!(!text(&media_url).await.1.contains("#EXT-X-ENDLIST"));

    let (status, _) = post(&sim, "abc", "stop_broadcasting", &token).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = get_call(&sim, "abc").await;
    assert_eq!(body["call"]["egress"]["broadcasting"], false);
    assert_eq!(body["call"]["egress"]["hls"], Value::Null);
    let (status, ended) = text(&media_url).await;
    assert_eq!(status, StatusCode::OK, "the last window stays served");
    assert!(ended.ends_with("#EXT-X-ENDLIST\n"));
    assert_eq!(
        text(&first_url).await.0,
        StatusCode::OK,
        "so does the master"
    );

    post(&sim, "abc", "start_broadcasting", &token).await;
    let second_url = sim.playlist_url(CALL_TYPE, "abc").unwrap_or_default();
    assert_ne!(second_url, first_url, "a restart gives a new URL");
    assert_eq!(text(&first_url).await.0, StatusCode::NOT_FOUND);
    assert_eq!(text(&second_url).await.0, StatusCode::OK);
}

#[tokio::test]
async fn go_live_can_start_hls_and_stop_live_stops_it() {
    let sim = sim().await;
    sim.add_call(
        CALL_TYPE,
        "abc",
        CallSetup {
            broadcasting: false,
            backstage: true,
            ..CallSetup::default()
        },
    );
    let url = format!(
        "{}/api/v2/video/call/{CALL_TYPE}/abc/go_live?api_key=sim-key",
        sim.base_url()
    );
    let response = client()
        .post(url)
        .header("authorization", sim.user_token("host-1"))
        .header("stream-auth-type", "jwt")
        .header("content-type", "application/json")
        .body(r#"{"start_hls": true, "start_recording": true}"#)
        .send()
        .await
        .expect("api answers");
    assert_eq!(response.status(), StatusCode::OK);
    let (_, body) = get_call(&sim, "abc").await;
    assert_eq!(body["call"]["backstage"], false);
    assert_eq!(body["call"]["egress"]["broadcasting"], true);

    let (status, body) = post(&sim, "abc", "stop_live", &sim.server_token()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["call"]["backstage"], true);
    assert_eq!(body["call"]["egress"]["broadcasting"], false);
}

#[tokio::test]
async fn master_lists_renditions_and_the_live_playlist_advances() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "abc", CallSetup::default());
    let master_url = sim.playlist_url(CALL_TYPE, "abc").unwrap_or_default();
    let response = fetch(&master_url).await;
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    let master = response.text().await.unwrap_or_default();
    assert!(master.contains("URI=\"audio/index.m3u8\""));
    let variants = uris(&master_url, &master);
    assert_eq!(variants.len(), 2);
    assert!(variants[0].ends_with("/v360/index.m3u8"));

    let (status, before) = text(&variants[0]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        uris(&variants[0], &before).len(),
        WINDOW_SEGMENTS as usize,
        "full window at once"
    );
    assert!(before.contains("#EXT-X-TARGETDURATION:2\n"));
    assert!(before.contains("#EXT-X-PROGRAM-DATE-TIME:"));
    assert!(!before.contains("#EXT-X-ENDLIST"));
    let first = media_sequence(&before).expect("media sequence");

    sim.advance_clock(Duration::from_secs(2 * SEGMENT_SECS));
    let (_, after) = text(&variants[0]).await;
    // Two segments on, or three if real time crossed a segment boundary meanwhile.
    let moved = media_sequence(&after).unwrap_or(0) - first;
    assert!(moved == 2 || moved == 3, "moved by {moved}");
    // The window slid: its head is a segment the old window listed.
    let files = |p: &str| -> Vec<String> {
        uris(&variants[0], p)
            .iter()
            .filter_map(|u| u.split('?').next().map(str::to_owned))
            .collect()
    };
    assert_eq!(files(&after)[0], files(&before)[moved as usize]);
}

#[tokio::test]
async fn signed_segments_are_served_and_unsigned_refused() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "abc", CallSetup::default());
    let master_url = sim.playlist_url(CALL_TYPE, "abc").unwrap_or_default();
    let audio_url = master_url.replace("master.m3u8", "audio/index.m3u8");
    let (_, playlist) = text(&audio_url).await;
    let segments = uris(&audio_url, &playlist);
    let signed = segments.last().cloned().unwrap_or_default();
    assert!(signed.contains(".ts?sig="), "{signed}");

    let response = fetch(&signed).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "video/mp2t");
    assert!(response.headers().contains_key("cache-control"));
    let length: usize = response.headers()["content-length"]
        .to_str()
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let body = response.bytes().await.unwrap_or_default();
    assert_eq!(body.len(), length);
    assert_eq!(body.first(), Some(&0x47));

    let unsigned = signed.split('?').next().unwrap_or_default().to_owned();
    assert_eq!(fetch(&unsigned).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        fetch(&format!("{unsigned}?sig=00")).await.status(),
        StatusCode::FORBIDDEN
    );

    // Far enough ahead that real time cannot catch up while the test runs.
    let last = media_sequence(&playlist).unwrap_or(0) + WINDOW_SEGMENTS - 1;
    let too_new = unsigned.replace(&format!("seg_{last:06}"), &format!("seg_{:06}", last + 100));
    assert_ne!(too_new, unsigned);
    assert_eq!(fetch(&too_new).await.status(), StatusCode::NOT_FOUND);

    let path = Url::parse(&unsigned)
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    assert_eq!(
        sim.origin_requests(&path),
        3,
        "counted by path without query, failures included"
    );
    assert_eq!(sim.total_origin_requests(), 5);
    let stats: Value =
        serde_json::from_str(&text(&format!("{}/_sim/stats", sim.base_url())).await.1)
            .unwrap_or_default();
    assert_eq!(stats["origin_requests"][&path], 3);
    assert_eq!(stats["total_origin_requests"], 5);
}

#[tokio::test]
async fn fmp4_broadcasts_map_an_init_section() {
    let sim = sim().await;
    sim.add_call(
        CALL_TYPE,
        "abc",
        CallSetup {
            flavour: Flavour::Fmp4,
            ..CallSetup::default()
        },
    );
    let media_url = sim
        .playlist_url(CALL_TYPE, "abc")
        .unwrap_or_default()
        .replace("master.m3u8", "v180/index.m3u8");
    let (_, playlist) = text(&media_url).await;
    let map = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("EXT-X-MAP");
    let init_url = Url::parse(&media_url)
        .and_then(|u| u.join(map))
        .map(String::from)
        .unwrap_or_default();
    let response = fetch(&init_url).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    let init = response.bytes().await.unwrap_or_default();
    assert_eq!(init.get(4..8), Some(b"ftyp".as_slice()));
    let segment = uris(&media_url, &playlist)[0].clone();
    assert!(segment.contains(".m4s?sig="));
    assert_eq!(fetch(&segment).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_redirected_master_resolves_against_its_final_url() {
    let sim = sim().await;
    sim.add_call(
        CALL_TYPE,
        "abc",
        CallSetup {
            redirect_master: true,
            ..CallSetup::default()
        },
    );
    let playlist_url = sim.playlist_url(CALL_TYPE, "abc").unwrap_or_default();
    let response = fetch(&playlist_url).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(location, playlist_url);
    let (status, master) = text(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&uris(&location, &master)[0]).await.0, StatusCode::OK);
    assert_eq!(
        text(&uris(&playlist_url, &master)[0]).await.0,
        StatusCode::NOT_FOUND,
        "wrong base URL"
    );
}

#[tokio::test]
async fn set_playlist_url_points_the_call_anywhere() {
    let sim = sim().await;
    sim.set_playlist_url(CALL_TYPE, "ext", "http://127.0.0.1:9/live/master.m3u8");
    let (status, body) = get_call(&sim, "ext").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["call"]["egress"]["broadcasting"], true);
    assert_eq!(
        body["call"]["egress"]["hls"]["playlist_url"],
        "http://127.0.0.1:9/live/master.m3u8"
    );
    assert!(sim.start_broadcasting(CALL_TYPE, "ext"));
    assert!(
        sim.playlist_url(CALL_TYPE, "ext")
            .is_some_and(|u| u.starts_with(&sim.base_url()))
    );
}

#[tokio::test]
async fn faults_garbage_status_and_stall() {
    let sim = sim().await;
    sim.add_call(
        CALL_TYPE,
        "abc",
        CallSetup {
            signed_urls: false,
            ..CallSetup::default()
        },
    );
    let master_url = sim.playlist_url(CALL_TYPE, "abc").unwrap_or_default();
    let segment_url = master_url.replace("master.m3u8", "v360/seg_000000.ts");

    sim.set_fault(CALL_TYPE, "abc", OriginFault::GarbagePlaylists);
    let response = fetch(&master_url).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/html"))
    );
    assert_eq!(
        fetch(&segment_url).await.status(),
        StatusCode::OK,
        "segments are fine"
    );

    sim.set_fault(CALL_TYPE, "abc", OriginFault::Status(503));
    assert_eq!(
        fetch(&master_url).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        fetch(&segment_url).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    sim.set_fault(CALL_TYPE, "abc", OriginFault::Stall);
    let stalled = client()
        .get(&master_url)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(stalled.is_err_and(|e| e.is_timeout()));
    let pending = tokio::spawn(fetch_owned(segment_url.clone()));
    let segment_path = Url::parse(&segment_url)
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    wait_until(|| sim.origin_requests(&segment_path) == 3).await;
    sim.shutdown();
    assert_eq!(
        pending.await.map(|r| r.status()).ok(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
}

/// Polls `condition` until it holds, for at most five seconds.
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// `fetch` takes &str; the spawned task needs an owned future.
async fn fetch_owned(url: String) -> reqwest::Response {
    fetch(&url).await
}

#[tokio::test]
async fn faults_slow_and_truncated_bodies() {
    let sim = sim().await;
    sim.add_call(
        CALL_TYPE,
        "abc",
        CallSetup {
            signed_urls: false,
            ..CallSetup::default()
        },
    );
    let segment_url = sim
        .playlist_url(CALL_TYPE, "abc")
        .unwrap_or_default()
        .replace("master.m3u8", "v180/seg_000001.ts");
    let whole = fetch(&segment_url).await.bytes().await.unwrap_or_default();

    let delay = Duration::from_millis(100);
    sim.set_fault(CALL_TYPE, "abc", OriginFault::SlowBody(delay));
    let http = client();
    let began = Instant::now();
    let response = http.get(&segment_url).send().await.expect("origin answers");
    let headers_after = began.elapsed();
    let slow = response.bytes().await.unwrap_or_default();
    let body_after = began.elapsed();
    assert_eq!(slow, whole);
    // Headers and the first chunk at once, then seven pauses; generous bounds keep a loaded machine from failing it.
    assert!(headers_after < 3 * delay, "headers after {headers_after:?}");
    assert!(body_after >= 7 * delay, "body after {body_after:?}");

    sim.set_fault(CALL_TYPE, "abc", OriginFault::TruncatedBody);
    let response = fetch(&segment_url).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.content_length(), Some(whole.len() as u64));
    assert!(response.bytes().await.is_err(), "the body ends early");

    sim.set_fault(CALL_TYPE, "abc", OriginFault::None);
    assert_eq!(
        fetch(&segment_url).await.bytes().await.unwrap_or_default(),
        whole
    );
}

/// A webhook receiver on 127.0.0.1:0 that records every request. It answers `script`'s statuses in turn, then 200;
/// with `verify` it answers 401 to requests whose `X-Signature` is missing or wrong, as the relay must.
struct Receiver {
    url: String,
    requests: Log,
}

type Log = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

impl Receiver {
    async fn start(verify: Option<&str>, script: &[u16]) -> Receiver {
        use axum::extract::State;
        let requests: Log = Arc::default();
        let secret = verify.map(str::to_owned);
        let script = script.to_vec();
        let handler = move |State(log): State<Log>,
                            headers: axum::http::HeaderMap,
                            body: axum::body::Bytes| {
            let secret = secret.clone();
            let script = script.clone();
            async move {
                let signed = headers
                    .get("x-signature")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|sig| secret.as_deref().is_none_or(|s| hmac_hex(s, &body) == sig));
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                let status = if secret.is_some() && !signed {
                    401
                } else {
                    script.get(log.len()).copied().unwrap_or(200)
                };
                log.push((headers, body.to_vec()));
                axum::http::StatusCode::from_u16(status).unwrap_or_default()
            }
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handler))
            .with_state(requests.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("receiver binds");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            requests,
        }
    }

    fn requests(&self) -> Vec<(axum::http::HeaderMap, Vec<u8>)> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The signature computed independently of the simulator.
fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn header(headers: &axum::http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn sim_with_webhook(url: &str, new_event_names: bool) -> SimHandle {
    start(SimConfig {
        webhook_url: Some(url.to_owned()),
        new_event_names,
        ..SimConfig::default()
    })
    .await
    .expect("simulator binds")
}

fn delivered(sim: &SimHandle) -> Vec<(String, Option<u16>, u32)> {
    sim.webhook_deliveries()
        .into_iter()
        .map(|d| (d.event_type, d.status, d.attempt))
        .collect()
}

#[tokio::test]
async fn compressed_webhooks_are_gzip_signed_over_the_json_and_retried_as_sent() {
    let receiver = Receiver::start(None, &[500]).await;
    let sim = start(SimConfig {
        webhook_url: Some(receiver.url.clone()),
        compress_webhooks: true,
        time_format: TimeFormat::Rfc3339,
        ..SimConfig::default()
    })
    .await
    .expect("simulator binds");
    sim.add_call(CALL_TYPE, "abc", CallSetup::default());
    assert!(sim.stop_broadcasting(CALL_TYPE, "abc"));
    wait_until(|| receiver.requests().len() == 2).await;
    let requests = receiver.requests();
    let (first, body) = &requests[0];
    assert_eq!(header(first, "content-encoding"), "gzip");
    assert_eq!(&body[..2], [0x1f, 0x8b]);
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut json)
        .expect("a gzip body");
    assert_eq!(
        header(first, "x-signature"),
        hmac_hex(sim.api_secret(), &json),
        "signed over the uncompressed JSON"
    );
    let event: Value = serde_json::from_slice(&json).unwrap_or_default();
    assert_eq!(event["type"], "call.broadcasting_stopped");
    assert!(
        event["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "RFC 3339 when asked: {event}"
    );
    let (second, retried) = &requests[1];
    assert_eq!(retried, body, "a retry sends the same bytes");
    assert_eq!(header(second, "x-webhook-attempt"), "2");
    assert_eq!(
        header(second, "x-webhook-id"),
        header(first, "x-webhook-id")
    );

    sim.set_compress_webhooks(false);
    assert!(sim.end_call(CALL_TYPE, "abc"));
    wait_until(|| receiver.requests().len() == 3).await;
    let (plain, body) = &receiver.requests()[2];
    assert_eq!(header(plain, "content-encoding"), "");
    assert_eq!(
        header(plain, "x-signature"),
        hmac_hex(sim.api_secret(), body)
    );

    let (_, call) = get_call(&sim, "abc").await;
    assert!(call["call"]["created_at"].is_string(), "{call}");
    assert!(call["call"]["ended_at"].is_string(), "{call}");
}

#[tokio::test]
async fn webhooks_are_signed_and_retried_after_a_500() {
    let receiver = Receiver::start(None, &[500]).await;
    let sim = sim_with_webhook(&receiver.url, false).await;
    sim.add_call(
        CALL_TYPE,
        "abc",
        CallSetup {
            broadcasting: false,
            ..CallSetup::default()
        },
    );
    let (status, _) = post(&sim, "abc", "start_broadcasting", &sim.user_token("host-1")).await;
    assert_eq!(status, StatusCode::OK);
    wait_until(|| sim.webhook_deliveries().len() == 2).await;
    let started = "call.broadcasting_started".to_owned();
    assert_eq!(
        delivered(&sim),
        [(started.clone(), Some(500), 1), (started, Some(200), 2)]
    );
    assert_eq!(sim.webhook_deliveries()[0].call_cid, "livestream:abc");

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    let (first, body) = &requests[0];
    assert_eq!(
        header(first, "x-signature"),
        hmac_hex(sim.api_secret(), body)
    );
    assert_eq!(header(first, "x-api-key"), sim.api_key());
    assert_eq!(header(first, "content-type"), "application/json");
    assert_eq!(header(first, "x-webhook-attempt"), "1");
    let (second, retried) = &requests[1];
    assert_eq!(retried, body, "a retry sends the same bytes");
    assert_eq!(header(second, "x-webhook-attempt"), "2");
    assert_eq!(
        header(second, "x-webhook-id"),
        header(first, "x-webhook-id")
    );
    assert_eq!(header(first, "x-webhook-id").len(), 36);

    let event: Value = serde_json::from_slice(body).unwrap_or_default();
    assert_eq!(event["type"], "call.broadcasting_started");
    assert_eq!(event["call_cid"], "livestream:abc");
    assert_eq!(event["call"]["egress"]["broadcasting"], true);
    assert_eq!(
        event["hls_playlist_url"],
        json!(sim.playlist_url(CALL_TYPE, "abc"))
    );
    // Unix nanoseconds, after 2023.
    let created = &event["created_at"];
    assert!(
        created
            .as_i64()
            .is_some_and(|ns| ns > 1_700_000_000_000_000_000),
        "{created}"
    );
    assert_eq!(
        sim.last_webhook().map(|(b, _)| b).as_ref(),
        Some(body),
        "the last attempt is kept"
    );
}

#[tokio::test]
async fn the_lifecycle_emits_its_events_in_order() {
    let receiver = Receiver::start(None, &[]).await;
    let sim = sim_with_webhook(&receiver.url, false).await;
    sim.add_call(
        CALL_TYPE,
        "abc",
        CallSetup {
            broadcasting: false,
            backstage: true,
            ..CallSetup::default()
        },
    );
    sim.add_user("bob", "user");
    sim.add_member(CALL_TYPE, "abc", "carol", "host");

    let (status, body) = post(&sim, "abc", "mark_ended", &sim.user_token("bob")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    stream_error(&body, 17, 403);
    assert_eq!(
        body["message"],
        "EndCall failed with error: \"User 'bob' with role 'user' is not allowed to perform action end-call in \
         scope 'video:livestream'\""
    );

    assert!(sim.go_live(CALL_TYPE, "abc", true));
    assert!(sim.stop_broadcasting(CALL_TYPE, "abc"));
    assert!(
        sim.stop_broadcasting(CALL_TYPE, "abc"),
        "no change, no event"
    );
    let (status, _) = post(&sim, "abc", "mark_ended", &sim.user_token("carol")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&sim, "abc", "mark_ended", &sim.server_token()).await;
    assert_eq!(status, StatusCode::OK, "ending twice is harmless");

    let (_, body) = get_call(&sim, "abc").await;
    assert!(body["call"]["ended_at"].is_i64(), "{body}");
    assert!(body["call"]["session"]["ended_at"].is_i64(), "{body}");
    assert_eq!(body["call"]["egress"]["broadcasting"], false);
    let (status, body) = post(&sim, "abc", "start_broadcasting", &sim.server_token()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    stream_error(&body, 4, 400);
    assert!(!sim.start_broadcasting(CALL_TYPE, "abc"));

    wait_until(|| receiver.requests().len() == 4).await;
    let events: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap_or_default())
        .collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "call.live_started",
            "call.broadcasting_started",
            "call.broadcasting_stopped",
            "call.ended"
        ]
    );
    assert_eq!(events[0]["call"]["backstage"], false);
    assert_eq!(
        events[0]["call"]["egress"]["broadcasting"], false,
        "before HLS"
    );
    assert!(events[3]["call"]["ended_at"].is_i64());
    let times: Vec<i64> = events
        .iter()
        .filter_map(|e| e["created_at"].as_i64())
        .collect();
    assert_eq!(times.len(), events.len());
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert_eq!(sim.api_action_requests(), 4);
}

#[tokio::test]
async fn new_event_names_and_failures() {
    let receiver = Receiver::start(None, &[]).await;
    let sim = sim_with_webhook(&receiver.url, true).await;
    sim.set_playlist_url(CALL_TYPE, "ext", "http://127.0.0.1:9/live/master.m3u8");
    assert!(sim.fail_broadcasting(CALL_TYPE, "ext"));
    wait_until(|| sim.webhook_deliveries().len() == 2).await;
    assert_eq!(
        delivered(&sim),
        [
            ("call.hls_broadcasting_started".to_owned(), Some(200), 1),
            ("call.hls_broadcasting_failed".to_owned(), Some(200), 1)
        ]
    );
    let started: Value = serde_json::from_slice(&receiver.requests()[0].1).unwrap_or_default();
    assert_eq!(
        started["hls_playlist_url"],
        "http://127.0.0.1:9/live/master.m3u8"
    );
}

#[tokio::test]
async fn forged_missing_and_replayed_webhooks() {
    let receiver = Receiver::start(Some("sim-secret"), &[]).await;
    let sim = sim().await;
    let body = br#"{"type":"call.ended","call_cid":"livestream:abc"}"#;
    assert_eq!(
        sim.send_webhook(body, Signature::Valid).await,
        None,
        "no URL yet"
    );
    sim.set_webhook_url(Some(receiver.url.clone()));
    assert_eq!(sim.send_webhook(body, Signature::Valid).await, Some(200));
    assert_eq!(sim.send_webhook(body, Signature::Forged).await, Some(401));
    assert_eq!(sim.send_webhook(body, Signature::Missing).await, Some(401));
    assert!(
        sim.webhook_deliveries().is_empty(),
        "hand-sent webhooks are not deliveries"
    );

    sim.add_call(CALL_TYPE, "abc", CallSetup::default());
    assert!(sim.end_call(CALL_TYPE, "abc"));
    wait_until(|| sim.webhook_deliveries().len() == 1).await;
    assert_eq!(sim.replay_last_webhook().await, Some(200));
    let requests = receiver.requests();
    let (delivered, replayed) = (&requests[3], &requests[4]);
    assert_eq!(delivered.1, replayed.1);
    assert_eq!(
        header(&delivered.0, "x-webhook-id"),
        header(&replayed.0, "x-webhook-id")
    );

    let stale = sim
        .event_json(
            "call.broadcasting_started",
            CALL_TYPE,
            "abc",
            Duration::from_secs(60),
        )
        .expect("known call");
    let stale: Value = serde_json::from_slice(&stale).unwrap_or_default();
    let ended: Value = serde_json::from_slice(&delivered.1).unwrap_or_default();
    assert!(
        stale["created_at"].as_i64() < ended["created_at"].as_i64(),
        "{stale} {ended}"
    );
    assert!(stale["hls_playlist_url"].is_string());
    assert_eq!(
        sim.event_json("call.ended", CALL_TYPE, "nope", Duration::ZERO),
        None
    );
}

#[tokio::test]
async fn unreachable_receivers_get_three_attempts() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| l.local_addr())
        .expect("free port");
    let sim = sim_with_webhook(&format!("http://{closed}/hook"), false).await;
    sim.add_call(CALL_TYPE, "abc", CallSetup::default());
    assert!(sim.stop_broadcasting(CALL_TYPE, "abc"));
    wait_until(|| sim.webhook_deliveries().len() == 3).await;
    let stopped = "call.broadcasting_stopped".to_owned();
    assert_eq!(
        delivered(&sim),
        [
            (stopped.clone(), None, 1),
            (stopped.clone(), None, 2),
            (stopped, None, 3)
        ]
    );
}

#[tokio::test]
async fn explicit_roles_replace_the_host_prefix() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "abc", CallSetup::default());
    sim.add_user("host-demoted", "user");
    sim.add_user("root", "admin");
    let (status, body) = post(
        &sim,
        "abc",
        "stop_broadcasting",
        &sim.user_token("host-demoted"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("role 'user'") && m.contains("stop-broadcast-call")),
        "{body}"
    );
    let (status, _) = post(&sim, "abc", "stop_broadcasting", &sim.user_token("root")).await;
    assert_eq!(status, StatusCode::OK);

    sim.add_member(CALL_TYPE, "abc", "host-demoted", "host");
    let (status, body) = api(
        &sim,
        reqwest::Method::GET,
        "abc",
        &sim.user_token("host-demoted"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["own_capabilities"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("start-broadcast-call")))
    );
    assert!(body["members"].as_array().is_some_and(|m| {
        m.iter()
            .any(|m| m["user_id"] == "host-demoted" && m["role"] == "host")
    }));
}

// LL-HLS: blocking reloads, preload hints, parts, delta updates, rendition reports.

fn ll_setup() -> CallSetup {
    CallSetup {
        flavour: Flavour::Fmp4,
        low_latency: true,
        ..CallSetup::default()
    }
}

/// The URL of a rendition's media playlist of the call.
fn media_url(sim: &SimHandle, id: &str, rendition: &str) -> String {
    sim.playlist_url(CALL_TYPE, id)
        .unwrap_or_default()
        .replace("master.m3u8", &format!("{rendition}/index.m3u8"))
}

fn path_of(url: &str) -> String {
    Url::parse(url)
        .map(|u| u.path().to_owned())
        .unwrap_or_default()
}

/// The URI of the playlist's preload hint.
fn hint(playlist: &str) -> String {
    playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
        .map(|rest| rest.trim_end_matches('"').to_owned())
        .expect("a preload hint")
}

/// (MSN, part index) of a part URI such as `seg_000012.part2.m4s?sig=…`.
fn part_numbers(uri: &str) -> (u64, u64) {
    let file = uri.split('?').next().unwrap_or_default();
    let numbers = file
        .strip_prefix("seg_")
        .and_then(|rest| rest.strip_suffix(".m4s"))
        .and_then(|rest| rest.split_once(".part"))
        .and_then(|(msn, part)| Some((msn.parse().ok()?, part.parse().ok()?)));
    numbers.expect("a part URI")
}

/// Whether the playlist lists part `part` of MSN `msn` as produced (an EXT-X-PART, not just the hint).
fn lists_part(playlist: &str, (msn, part): (u64, u64)) -> bool {
    let name = format!("URI=\"seg_{msn:06}.part{part}.m4s");
    playlist
        .lines()
        .any(|l| l.starts_with("#EXT-X-PART:") && l.contains(&name))
}

/// Fetches with a bound: a held request that never answers fails the test instead of hanging it.
async fn fetch_within(url: String, within: Duration) -> reqwest::Response {
    tokio::time::timeout(within, fetch(&url))
        .await
        .expect("answered in time")
}

#[tokio::test]
async fn ll_blocking_reload_is_held_until_the_part_appears() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "ll", ll_setup());
    let url = media_url(&sim, "ll", "v360");
    let path = path_of(&url);
    let (status, playlist) = text(&url).await;
    assert_eq!(status, StatusCode::OK);
    let wanted = part_numbers(&hint(&playlist));
    assert!(!lists_part(&playlist, wanted));

    // Held until the hinted part is produced: here the clock is advanced past it.
    let (msn, part) = wanted;
    let pending = tokio::spawn(fetch_within(
        format!("{url}?_HLS_msn={msn}&_HLS_part={part}"),
        Duration::from_secs(5),
    ));
    wait_until(|| sim.blocking_requests(&path) == 1).await;
    sim.advance_clock(PART_INTERVAL);
    let response = pending.await.expect("request task");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "public, max-age=12");
    let answer = response.text().await.unwrap_or_default();
    assert!(lists_part(&answer, wanted), "{answer}");
    assert_eq!(sim.origin_requests(&path), 2);

    // A whole segment further on is more than 2 s of real time away; advancing the clock releases it at once.
    let (current, _) = part_numbers(&hint(&answer));
    let began = Instant::now();
    let pending = tokio::spawn(fetch_within(
        format!("{url}?_HLS_msn={}", current + 1),
        Duration::from_secs(5),
    ));
    wait_until(|| sim.blocking_requests(&path) == 2).await;
    sim.advance_clock(Duration::from_secs(5));
    let answer = pending.await.expect("request task");
    let elapsed = began.elapsed();
    let answer = answer.text().await.unwrap_or_default();
    assert!(
        answer.contains(&format!("seg_{:06}.m4s?sig=", current + 1)),
        "{answer}"
    );
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(sim.blocking_requests(&path), 2);
    assert_eq!(sim.origin_requests(&path), 3);

    // In real time too: the next part is at most PART_INTERVAL away.
    let (msn, part) = part_numbers(&hint(&answer));
    let response = fetch_within(
        format!("{url}?_HLS_msn={msn}&_HLS_part={part}"),
        Duration::from_secs(5),
    )
    .await;
    assert!(lists_part(
        &response.text().await.unwrap_or_default(),
        (msn, part)
    ));
}

#[tokio::test]
async fn ll_requests_too_far_ahead_are_refused() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "ll", ll_setup());
    let url = media_url(&sim, "ll", "audio");
    let (_, playlist) = text(&url).await;
    let (current, part) = part_numbers(&hint(&playlist));
    // The last complete segment is current - 1: current + 1 is the furthest one may wait for (one more in case a
    // segment completes meanwhile).
    for query in [
        format!("_HLS_msn={}", current + 3),
        format!("_HLS_msn={}&_HLS_part=0", current + 10),
        "_HLS_part=1".to_owned(),
        "_HLS_msn=twelve".to_owned(),
    ] {
        let response = fetch_within(format!("{url}?{query}"), Duration::from_secs(2)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    assert_eq!(sim.blocking_requests(&path_of(&url)), 3);

    // A part further ahead than the hint does not exist yet.
    let later = hint(&playlist).replace(
        &format!("seg_{current:06}.part{part}"),
        &format!("seg_{:06}.part{part}", current + 2),
    );
    let later = Url::parse(&url)
        .and_then(|u| u.join(&later))
        .map(String::from)
        .unwrap_or_default();
    assert_eq!(fetch(&later).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ll_delta_updates_skip_the_old_segments() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "ll", ll_setup());
    let url = media_url(&sim, "ll", "v180");
    let (status, delta) = text(&format!("{url}?_HLS_skip=YES")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(delta.contains("#EXT-X-VERSION:9\n"));
    let skipped: u64 = delta
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-SKIP:SKIPPED-SEGMENTS="))
        .and_then(|n| n.parse().ok())
        .expect("EXT-X-SKIP");
    assert_eq!(skipped, LL_WINDOW_SEGMENTS / 2);
    let first = media_sequence(&delta).unwrap_or_default() + skipped;
    let listed = uris(&url, &delta);
    assert_eq!(listed.len() as u64, LL_WINDOW_SEGMENTS - skipped);
    assert!(
        listed[0].contains(&format!("/seg_{first:06}.m4s?sig=")),
        "{delta}"
    );
    let (_, full) = text(&url).await;
    assert!(!full.contains("EXT-X-SKIP"));
}

#[tokio::test]
async fn ll_hinted_part_is_held_and_streams_as_it_is_produced() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "ll", ll_setup());
    let url = media_url(&sim, "ll", "v360");
    // Real time drives production: a machine so busy that the test misses a whole part interval tries again.
    for _attempt in 0..5 {
        if let Some(part_url) = stream_a_hinted_part(&url).await {
            assert_eq!(sim.origin_requests(&path_of(&part_url)), 2);
            return;
        }
    }
    panic!("never caught a part while it was produced");
}

/// Requests the preload hint's part while it is produced and checks it arrives in pieces, the first before the part
/// is complete, then in one piece once complete. The part's URL, or None if the test was too slow to catch it.
async fn stream_a_hinted_part(url: &str) -> Option<String> {
    let (_, playlist) = text(url).await;
    // Line up with a part boundary: a blocking reload for the part after the hinted one answers once that part is
    // produced (at least one part interval away), and its hint is then a part whose production has just begun.
    let (msn, part) = part_numbers(&hint(&playlist));
    let (_, playlist) = text(&format!("{url}?_HLS_msn={msn}&_HLS_part={}", part + 1)).await;
    let hinted = hint(&playlist);
    let (msn, part) = part_numbers(&hinted);
    let part_url = Url::parse(url)
        .and_then(|u| u.join(&hinted))
        .map(String::from)
        .unwrap_or_default();
    // Tells when the part is complete.
    let complete = tokio::spawn(fetch_within(
        format!("{url}?_HLS_msn={msn}&_HLS_part={part}"),
        Duration::from_secs(5),
    ));

    let response = fetch_within(part_url.clone(), Duration::from_secs(5)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    if response.content_length().is_some() {
        // Already complete: sent whole, with its length.
        return None;
    }
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("a first piece in time")
        .and_then(Result::ok)
        .unwrap_or_default();
    let early = !complete.is_finished();
    let mut received = first.to_vec();
    while let Some(piece) = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the rest in time")
    {
        received.extend_from_slice(&piece.expect("body piece"));
    }
    assert!(first.len() < received.len(), "in pieces");
    assert_eq!(received.get(4..8), Some(b"moof".as_slice()));
    let listed = complete.await.expect("request task");
    assert!(lists_part(
        &listed.text().await.unwrap_or_default(),
        (msn, part)
    ));

    // Now produced: the same bytes at once, with their length.
    let response = fetch(&part_url).await;
    assert_eq!(response.content_length(), Some(received.len() as u64));
    assert_eq!(response.bytes().await.unwrap_or_default(), received);
    // The first piece came before the part was produced (unless this machine was too slow to tell).
    early.then_some(part_url)
}

#[tokio::test]
async fn ll_rendition_reports_point_at_the_other_playlists() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "ll", ll_setup());
    let url = media_url(&sim, "ll", "v360");
    let (_, playlist) = text(&url).await;
    let (msn, part) = part_numbers(&hint(&playlist));
    let last = if part == 0 {
        (msn - 1, 3)
    } else {
        (msn, part - 1)
    };
    let reports: Vec<&str> = playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-RENDITION-REPORT:"))
        .collect();
    assert_eq!(reports.len(), 2, "{playlist}");
    for (report, other) in reports.iter().zip(["v180", "audio"]) {
        assert_eq!(
            *report,
            format!(
                "URI=\"../{other}/index.m3u8\",LAST-MSN={},LAST-PART={}",
                last.0, last.1
            )
        );
        let uri = report
            .strip_prefix("URI=\"")
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        let resolved = Url::parse(&url)
            .and_then(|u| u.join(uri))
            .map(String::from)
            .unwrap_or_default();
        assert_eq!(resolved, media_url(&sim, "ll", other));
        let (status, theirs) = text(&resolved).await;
        assert_eq!(status, StatusCode::OK);
        assert!(part_numbers(&hint(&theirs)) >= (msn, part));
    }
}

/// `ffmpeg` reads the LL-HLS playlists (ignoring parts) and decodes the segments. Needs ffmpeg on PATH:
/// `cargo test --lib sim::tests::ffmpeg_plays_an_ll_broadcast -- --ignored`.
#[tokio::test]
#[ignore = "needs ffmpeg"]
async fn ffmpeg_plays_an_ll_broadcast() {
    let sim = sim().await;
    sim.add_call(CALL_TYPE, "ll", ll_setup());
    let master = sim.playlist_url(CALL_TYPE, "ll").unwrap_or_default();
    for url in [master, media_url(&sim, "ll", "v360")] {
        let output = tokio::process::Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-nostdin",
                "-v",
                "error",
                "-i",
                &url,
                "-t",
                "4",
                "-f",
                "null",
                "-",
            ])
            .output()
            .await
            .expect("ffmpeg runs");
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
