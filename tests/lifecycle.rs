//! A broadcast's life as the relay sees it: signed webhooks, clean endings, restarts, and the SSE state stream.

mod common;

use std::time::Duration;

use common::*;
use hls_relay::sim::CallSetup;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A relay that trusts its call look-ups for a minute: any state change it shows must come from a webhook.
async fn world() -> World {
    World::start_with(|c| c.stream.call_ttl = Duration::from_secs(60)).await
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn event(kind: &str, cid: &str, created_at: &str, playlist_url: Option<&str>) -> Vec<u8> {
    let mut event = serde_json::json!({"type": kind, "created_at": created_at, "call_cid": cid});
    if let Some(url) = playlist_url {
        event["hls_playlist_url"] = url.into();
    }
    event.to_string().into_bytes()
}

/// A `call.broadcasting_stopped` event for `livestream:ts`.
fn stopped_ts(created_at: &str) -> Vec<u8> {
    event(
        "call.broadcasting_stopped",
        "livestream:ts",
        created_at,
        None,
    )
}

async fn post_webhook(
    world: &World,
    body: Vec<u8>,
    signature: Option<String>,
) -> reqwest::Response {
    post_delivery(
        world,
        body,
        signature,
        &[("x-api-key", world.sim.api_key())],
    )
    .await
}

/// A delivery with Stream's content type and any other headers (`content-encoding`, `x-webhook-id`, …).
async fn post_delivery(
    world: &World,
    body: Vec<u8>,
    signature: Option<String>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = world
        .http
        .post(world.url("/v1/webhooks/stream"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(signature) = signature {
        request = request.header("x-signature", signature);
    }
    request.body(body).send().await.unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn deliver(world: &World, body: Vec<u8>) -> serde_json::Value {
    let signature = sign(world.sim.api_secret(), &body);
    let response = post_webhook(world, body, Some(signature)).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn broadcasting(world: &World, call: &str) -> bool {
    let state: serde_json::Value = world
        .get(&format!("/v1/calls/livestream/{call}"))
        .await
        .json()
        .await
        .unwrap();
    state["call"]["egress"]["broadcasting"].as_bool().unwrap()
}

#[tokio::test]
async fn a_signed_start_flips_the_state_with_no_api_request() {
    let world = world().await;
    let off_air = CallSetup {
        broadcasting: false,
        ..CallSetup::default()
    };
    world.sim.add_call("livestream", "later", off_air);
    assert!(!broadcasting(&world, "later").await);
    let api_requests = world.sim.api_requests();

    world.sim.start_broadcasting("livestream", "later");
    let url = world.sim.playlist_url("livestream", "later").unwrap();
    let outcome = deliver(
        &world,
        event(
            "call.broadcasting_started",
            "livestream:later",
            "2026-11-26T10:00:00Z",
            Some(&url),
        ),
    )
    .await;
    assert_eq!(outcome["outcome"], "applied");

    assert!(broadcasting(&world, "later").await);
    let (_, media) = world.first_media_playlist("later").await;
    assert!(media.contains("#EXTINF"));
    assert_eq!(
        world.sim.api_requests(),
        api_requests,
        "no API request after the webhook"
    );
}

#[tokio::test]
async fn forged_missing_and_oversized_deliveries_change_nothing() {
    let world = world().await;
    assert!(broadcasting(&world, "ts").await);
    let stop = stopped_ts("2026-11-26T10:00:00Z");

    let forged = sign("not-the-secret", &stop);
    assert_error(
        post_webhook(&world, stop.clone(), Some(forged)).await,
        401,
        "invalid_signature",
    )
    .await;
    assert_error(
        post_webhook(&world, stop.clone(), None).await,
        401,
        "invalid_signature",
    )
    .await;
    // Signed, then altered in transit.
    let signature = sign(world.sim.api_secret(), &stop);
    let mut altered = stop.clone();
    altered.extend_from_slice(b" ");
    assert_error(
        post_webhook(&world, altered, Some(signature)).await,
        401,
        "invalid_signature",
    )
    .await;
    let huge = vec![b' '; 1024 * 1024];
    let signature = sign(world.sim.api_secret(), &huge);
    assert_error(
        post_webhook(&world, huge, Some(signature)).await,
        413,
        "payload_too_large",
    )
    .await;

    assert!(broadcasting(&world, "ts").await);
    let metrics = world.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            "hls_relay_events_total{outcome=\"refused\",source=\"webhook\",type=\"unverified\"} 3"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn compressed_deliveries_are_signed_over_the_uncompressed_json() {
    let world = world().await;
    assert!(broadcasting(&world, "ts").await);
    let stop = stopped_ts("2026-11-26T10:00:00Z");
    let compressed = gzip(&stop);
    let key = world.sim.api_key();

    // Signed over the compressed bytes: not Stream's signature.
    let over_compressed = sign(world.sim.api_secret(), &compressed);
    let headers = [("content-encoding", "gzip"), ("x-api-key", key)];
    let response = post_delivery(&world, compressed.clone(), Some(over_compressed), &headers).await;
    assert_error(response, 401, "invalid_signature").await;
    assert!(broadcasting(&world, "ts").await);

    let signature = sign(world.sim.api_secret(), &stop);
    let response = post_delivery(&world, compressed, Some(signature.clone()), &headers).await;
    assert_eq!(response.status(), 200);
    let outcome: serde_json::Value = response.json().await.unwrap();
    assert_eq!(outcome["outcome"], "applied");
    assert!(!broadcasting(&world, "ts").await);

    // A proxy on the way inflated it and left the header: still the same delivery.
    let restart = event(
        "call.broadcasting_started",
        "livestream:ts",
        "2026-11-26T10:00:01Z",
        Some(&world.sim.playlist_url("livestream", "ts").unwrap()),
    );
    let signature = sign(world.sim.api_secret(), &restart);
    let response = post_delivery(&world, restart, Some(signature), &headers).await;
    assert_eq!(response.status(), 200);
    assert!(broadcasting(&world, "ts").await);
}

#[tokio::test]
async fn gzip_bombs_other_apps_and_other_codings_are_refused() {
    let world = world().await;
    assert!(broadcasting(&world, "ts").await);
    let stop = stopped_ts("2026-11-26T10:00:00Z");
    let signature = sign(world.sim.api_secret(), &stop);
    let key = world.sim.api_key();

    // 10 MB of JSON-looking bytes in ~10 KB of gzip: refused once 256 KiB are inflated.
    let bomb = gzip(&vec![b' '; 10_000_000]);
    assert!(bomb.len() < 64 * 1024);
    let headers = [("content-encoding", "gzip"), ("x-api-key", key)];
    let response = post_delivery(&world, bomb, Some(signature.clone()), &headers).await;
    assert_error(response, 413, "payload_too_large").await;

    let other_app = [("x-api-key", "another-apps-key")];
    let response = post_delivery(&world, stop.clone(), Some(signature.clone()), &other_app).await;
    assert_error(response, 401, "wrong_app").await;

    let brotli = [("content-encoding", "br"), ("x-api-key", key)];
    let response = post_delivery(&world, stop, Some(signature), &brotli).await;
    let headers = assert_error(response, 415, "unsupported_media_type").await;
    assert!(headers.contains_key("content-type"));

    assert!(broadcasting(&world, "ts").await, "nothing changed");
}

#[tokio::test]
async fn a_retried_webhook_id_is_applied_once() {
    let world = world().await;
    let stop = stopped_ts("2026-11-26T10:00:00Z");
    let signature = sign(world.sim.api_secret(), &stop);
    let key = world.sim.api_key();
    let mut outcomes = Vec::new();
    for attempt in ["1", "2", "3"] {
        let headers = [
            ("x-api-key", key),
            ("x-webhook-id", "2f1d1a52-retried"),
            ("x-webhook-attempt", attempt),
        ];
        let response = post_delivery(&world, stop.clone(), Some(signature.clone()), &headers).await;
        assert_eq!(
            response.status(),
            200,
            "a repeat is acknowledged, so Stream stops retrying"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        outcomes.push(body["outcome"].as_str().unwrap().to_owned());
    }
    assert_eq!(outcomes, ["applied", "duplicate", "duplicate"]);
    assert!(!broadcasting(&world, "ts").await);
    let metrics = world.get("/metrics").await.text().await.unwrap();
    let applied = r#"hls_relay_events_total{outcome="applied",source="webhook",type="call.broadcasting_stopped"} 1"#;
    let duplicate = r#"hls_relay_events_total{outcome="duplicate",source="webhook",type="call.broadcasting_stopped"} 2"#;
    assert!(metrics.contains(applied), "{metrics}");
    assert!(metrics.contains(duplicate), "{metrics}");
}

#[tokio::test]
async fn times_in_unix_nanoseconds_order_with_rfc3339_ones() {
    let world = world().await;
    let stop_ns =
        serde_json::json!({"type": "call.broadcasting_stopped", "call_cid": "livestream:ts",
        "created_at": 1_795_687_200_000_000_000_i64})
        .to_string()
        .into_bytes();
    assert_eq!(deliver(&world, stop_ns).await["outcome"], "applied");
    // One second earlier, written as text: a late delivery.
    let url = world.sim.playlist_url("livestream", "ts").unwrap();
    let late_start = event(
        "call.broadcasting_started",
        "livestream:ts",
        "2026-11-26T09:59:59Z",
        Some(&url),
    );
    assert_eq!(deliver(&world, late_start).await["outcome"], "stale");
    assert!(!broadcasting(&world, "ts").await);
}

#[tokio::test]
async fn stopping_ends_players_with_an_endlist_playlist() {
    let world = world().await;
    let entry = "/hls/livestream/ts/index.m3u8";
    let master = world.playlist(entry).await;
    let (media_path, live) = world.first_media_playlist("ts").await;
    assert!(!live.contains("#EXT-X-ENDLIST"));

    // Upstream has not ended its playlists yet: the relay ends them itself.
    deliver(&world, stopped_ts("2026-11-26T10:00:00Z")).await;

    let last = world.playlist(&media_path).await;
    assert!(last.trim_end().ends_with("#EXT-X-ENDLIST"), "{last}");
    let unfetched_rendition = resolve(entry, &uri_attributes(&master)[0]);
    let last = world.playlist(&unfetched_rendition).await;
    assert!(last.trim_end().ends_with("#EXT-X-ENDLIST"), "{last}");
    assert!(!broadcasting(&world, "ts").await);
    world.expect_error(entry, 404, "not_broadcasting").await;
}

#[tokio::test]
async fn a_restart_with_a_new_playlist_url_is_followed() {
    let world = world().await;
    let before = world.playlist("/hls/livestream/ts/index.m3u8").await;
    let old_url = world.sim.playlist_url("livestream", "ts").unwrap();

    world.sim.stop_broadcasting("livestream", "ts");
    deliver(&world, stopped_ts("2026-11-26T10:00:00Z")).await;
    world.sim.start_broadcasting("livestream", "ts");
    let new_url = world.sim.playlist_url("livestream", "ts").unwrap();
    assert_ne!(old_url, new_url);
    deliver(
        &world,
        event(
            "call.broadcasting_started",
            "livestream:ts",
            "2026-11-26T10:00:05Z",
            Some(&new_url),
        ),
    )
    .await;

    let after = world.playlist("/hls/livestream/ts/index.m3u8").await;
    assert_ne!(before, after, "the entry URL now serves the new broadcast");
    let (_, media) = world.first_media_playlist("ts").await;
    assert!(!media.contains("#EXT-X-ENDLIST"));
}

#[tokio::test]
async fn late_and_repeated_deliveries_never_override_newer_events() {
    let world = world().await;
    let url = world.sim.playlist_url("livestream", "ts").unwrap();
    let stop = stopped_ts("2026-11-26T10:00:10Z");
    assert_eq!(deliver(&world, stop.clone()).await["outcome"], "applied");
    let late_start = event(
        "call.broadcasting_started",
        "livestream:ts",
        "2026-11-26T10:00:05Z",
        Some(&url),
    );
    assert_eq!(deliver(&world, late_start).await["outcome"], "stale");
    assert_eq!(
        deliver(&world, stop).await["outcome"],
        "applied",
        "a duplicate is harmless"
    );
    assert!(!broadcasting(&world, "ts").await);

    let other = event(
        "call.reaction_new",
        "livestream:ts",
        "2026-11-26T10:00:20Z",
        None,
    );
    assert_eq!(deliver(&world, other).await["outcome"], "ignored");
}

#[tokio::test]
async fn pages_see_each_change_once_and_in_order() {
    let world = world().await;
    let mut page = SseReader::open(&world.relay, "ts").await;
    let (name, state) = page.next().await;
    assert_eq!(name, "state");
    assert_eq!(state["broadcasting"], true);
    assert_eq!(
        state["playlist_url"],
        world.url("/hls/livestream/ts/index.m3u8")
    );

    deliver(&world, stopped_ts("2026-11-26T10:00:01Z")).await;
    // A duplicate delivery is not a change.
    deliver(&world, stopped_ts("2026-11-26T10:00:01Z")).await;
    let url = world.sim.playlist_url("livestream", "ts").unwrap();
    deliver(
        &world,
        event(
            "call.broadcasting_started",
            "livestream:ts",
            "2026-11-26T10:00:02Z",
            Some(&url),
        ),
    )
    .await;
    deliver(
        &world,
        event(
            "call.broadcasting_failed",
            "livestream:ts",
            "2026-11-26T10:00:03Z",
            None,
        ),
    )
    .await;

    let (name, data) = page.next().await;
    assert_eq!(
        (name.as_str(), &data["broadcasting"]),
        ("broadcasting_stopped", &false.into())
    );
    let (name, data) = page.next().await;
    assert_eq!(name, "broadcasting_started");
    assert_eq!(
        data["playlist_url"],
        world.url("/hls/livestream/ts/index.m3u8")
    );
    let (name, _) = page.next().await;
    assert_eq!(name, "broadcasting_failed");
}

#[tokio::test]
async fn pages_follow_the_api_when_no_webhook_comes() {
    let world = World::start_with(|c| c.stream.call_ttl = Duration::from_millis(200)).await;
    let mut page = SseReader::open(&world.relay, "ts").await;
    assert_eq!(page.next().await.0, "state");
    world.sim.stop_broadcasting("livestream", "ts");
    let (name, data) = page.next().await;
    assert_eq!(name, "broadcasting_stopped");
    assert_eq!(data["broadcasting"], false);
}

#[tokio::test]
async fn unknown_calls_have_no_event_stream() {
    let world = world().await;
    world
        .expect_error(
            "/v1/calls/livestream/nosuchcall/events",
            404,
            "call_not_found",
        )
        .await;
}

/// The simulator delivers its own signed events, as Stream does, to the relay's webhook endpoint.
#[tokio::test]
async fn deliveries_from_a_stream_compatible_backend_drive_the_state() {
    let world = world().await;
    world
        .sim
        .set_webhook_url(Some(world.url("/v1/webhooks/stream")));
    let off_air = CallSetup {
        broadcasting: false,
        ..CallSetup::default()
    };
    world.sim.add_call("livestream", "show", off_air);
    let mut page = SseReader::open(&world.relay, "show").await;
    assert_eq!(page.next().await.1["broadcasting"], false);
    let api_requests = world.sim.api_requests();

    world.sim.start_broadcasting("livestream", "show");
    let (name, data) = page.next().await;
    assert_eq!(name, "broadcasting_started");
    assert_eq!(
        data["playlist_url"],
        world.url("/hls/livestream/show/index.m3u8")
    );
    assert!(broadcasting(&world, "show").await);

    world.sim.end_call("livestream", "show");
    assert_eq!(page.next().await.0, "broadcasting_stopped");
    assert!(!broadcasting(&world, "show").await);
    assert_eq!(
        world.sim.api_requests(),
        api_requests,
        "webhooks alone told the relay"
    );
    let deliveries = world.sim.webhook_deliveries();
    assert!(
        deliveries.iter().all(|d| d.status == Some(200)),
        "{deliveries:?}"
    );
}
