//! Token mode: nothing is served without a valid viewer token, and players work unchanged with one.

mod common;

use common::*;
use hls_relay::http::access::AccessMode;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(world: &World, claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(world.sim.api_secret().as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn world() -> World {
    World::start_with(|c| c.access.mode = AccessMode::Token).await
}

#[tokio::test]
async fn nothing_is_served_without_a_valid_token() {
    let world = world().await;
    let entry = "/hls/livestream/ts/index.m3u8";
    world.expect_error(entry, 401, "token_required").await;
    world
        .expect_error("/v1/calls/livestream/ts", 401, "token_required")
        .await;
    world
        .expect_error("/v1/calls/livestream/ts/events", 401, "token_required")
        .await;

    let expired = token(
        &world,
        serde_json::json!({"user_id": "anna", "exp": now() - 3600}),
    );
    world
        .expect_error(&format!("{entry}?token={expired}"), 401, "token_expired")
        .await;
    let forged = {
        let key = jsonwebtoken::EncodingKey::from_secret(b"not the secret");
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"user_id": "x"}),
            &key,
        )
        .unwrap()
    };
    world
        .expect_error(&format!("{entry}?token={forged}"), 401, "token_invalid")
        .await;
    let elsewhere = token(
        &world,
        serde_json::json!({"user_id": "anna", "call_cids": ["livestream:fmp4"]}),
    );
    world
        .expect_error(&format!("{entry}?token={elsewhere}"), 403, "forbidden")
        .await;
    assert_eq!(
        world.sim.api_requests(),
        0,
        "refused before any API request"
    );
    assert_eq!(world.sim.total_origin_requests(), 0);
}

#[tokio::test]
async fn a_stream_user_token_plays_and_is_carried_into_every_uri() {
    let world = world().await;
    let viewer = token(
        &world,
        serde_json::json!({"user_id": "anna", "exp": now() + 3600, "call_cids": ["livestream:ts"]}),
    );

    // The state endpoint accepts a bearer token and hands out a playlist URL that carries it.
    let state: serde_json::Value = world
        .http
        .get(world.url("/v1/calls/livestream/ts"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let playlist_url = state["call"]["egress"]["hls"]["playlist_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(playlist_url.ends_with(&format!("?token={viewer}")));

    let response = world.http.get(&playlist_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private")
    );
    let master = response.text().await.unwrap();
    let entry = "/hls/livestream/ts/index.m3u8";
    let uris: Vec<String> = uri_lines(&master)
        .into_iter()
        .map(str::to_owned)
        .chain(uri_attributes(&master))
        .collect();
    // Playlist URIs also carry the viewer's session (tests/viewers.rs).
    assert!(
        uris.iter()
            .all(|uri| uri.contains(&format!("?token={viewer}&vs="))),
        "{master}"
    );

    // A player follows the URIs as written and never needs to know about tokens.
    let media_path = resolve(entry, uri_lines(&master)[0]);
    let media = world.playlist(&media_path).await;
    let segment = resolve(&media_path, uri_lines(&media)[0]);
    assert!(segment.contains("?token="));
    let response = world.get(&segment).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap()[0], 0x47);

    // Without the token, the same segment is refused even though it is cached now.
    let (bare, _) = segment.split_once('?').unwrap();
    world.expect_error(bare, 401, "token_required").await;
}
