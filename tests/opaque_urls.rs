//! Relay URLs reveal nothing of upstream: no host, path or query of the object behind a relay URL can be read in it,
//! in clear or encoded. And they survive key rotation: URLs written under an old key keep working while it is
//! listed in `server.url_keys`, and stop once it is removed.

mod common;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use common::*;
use hls_relay::http::access::AccessMode;

/// Every form in which `secret` could be read in a URL: in clear, base64 (standard or URL-safe, at any of the three
/// byte alignments it could start at inside a longer encoded string), hex, and percent-encoding.
fn encodings(secret: &str) -> Vec<String> {
    let mut forms = vec![
        secret.to_owned(),
        hex::encode(secret),
        hex::encode_upper(secret),
    ];
    forms.push(secret.bytes().map(|b| format!("%{b:02X}")).collect());
    forms.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
    for engine in [STANDARD, URL_SAFE] {
        for offset in 0..3 {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(secret.as_bytes());
            let encoded = engine.encode(&shifted);
            // The characters that depend only on `secret`: past the padding bytes, before the last group.
            let start = (offset * 4).div_ceil(3);
            let end = encoded.trim_end_matches('=').len().saturating_sub(3);
            if end > start + 6 {
                forms.push(encoded[start..end].to_owned());
            }
        }
    }
    forms
}

/// The relay URIs of a relayed playlist served at `path`: URI lines and `URI="…"` attributes, made absolute paths.
fn relay_uris(path: &str, playlist: &str) -> Vec<String> {
    let mut uris: Vec<String> = uri_lines(playlist)
        .iter()
        .map(|u| resolve(path, u))
        .collect();
    uris.extend(uri_attributes(playlist).iter().map(|u| resolve(path, u)));
    uris
}

/// What must not show: the upstream URL's host (with its port), its path and directories, its file name, its query.
fn secrets_of(upstream: &url::Url) -> Vec<String> {
    let mut secrets =
        vec![upstream[url::Position::BeforeHost..url::Position::AfterPort].to_owned()];
    let path = upstream.path();
    secrets.push(path.to_owned());
    let file = path.rsplit('/').next().unwrap_or_default();
    secrets.push(path[..path.len() - file.len()].to_owned());
    // The file name without its extension (the extension is kept in clear, for players).
    if let Some((stem, _)) = file.rsplit_once('.') {
        secrets.push(stem.to_owned());
    }
    if let Some(query) = upstream.query() {
        secrets.push(query.to_owned());
    }
    secrets.retain(|secret| secret.len() >= 4 && secret != "/cdn/");
    secrets
}

/// Walks every playlist reachable from `entry` (query `suffix` appended, as a player with a token would), checking
/// every relay URI against every upstream secret; returns how many URIs were checked.
async fn assert_nothing_shows(world: &World, entry: &str, suffix: &str) -> usize {
    let mut pending = vec![entry.to_owned()];
    let mut checked = 0;
    let mut seen = std::collections::HashSet::new();
    while let Some(path) = pending.pop() {
        let bare = path.split('?').next().unwrap().to_owned();
        if !seen.insert(bare.clone()) {
            continue;
        }
        let playlist = world.playlist(&format!("{bare}{suffix}")).await;
        for uri in relay_uris(&bare, &playlist) {
            let bare_uri = uri.split('?').next().unwrap().to_owned();
            let upstream = upstream_of(&bare_uri);
            let (location, name) = {
                let parts: Vec<&str> = bare_uri.split('/').collect();
                (
                    parts[parts.len() - 3].to_owned(),
                    parts[parts.len() - 2].to_owned(),
                )
            };
            for secret in secrets_of(&upstream) {
                for form in encodings(&secret) {
                    assert!(
                        !uri.contains(&form),
                        "{uri} shows {secret:?} of {upstream} as {form:?}"
                    );
                }
            }
            assert!(location.len() > 16 && name.len() > 16, "{uri}");
            checked += 1;
            if bare_uri.ends_with(".m3u8") {
                pending.push(bare_uri);
            }
        }
    }
    checked
}

#[tokio::test]
async fn relayed_playlists_reveal_nothing_of_upstream() {
    let world = World::start().await;
    world.sim.add_call(
        "livestream",
        "ll",
        CallSetup {
            flavour: Flavour::Fmp4,
            low_latency: true,
            ..CallSetup::default()
        },
    );
    // A stream with keys, byte ranges and a session key, on another origin (the simulator has none of these).
    let origin = FixedOrigin::start().await;
    origin.serve(
        "/secret-path/live/master.m3u8",
        200,
        "application/vnd.apple.mpegurl",
        "#EXTM3U\n#EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"https://127.0.0.1/keys/session.key?kid=77\"\n\
         #EXT-X-STREAM-INF:BANDWIDTH=1\nrendition/media.m3u8?auth=hidden-token\n",
    );
    world
        .sim
        .add_call("livestream", "crypt", CallSetup::default());
    world.sim.set_playlist_url(
        "livestream",
        "crypt",
        &origin.url("/secret-path/live/master.m3u8"),
    );
    origin.serve(
        "/secret-path/live/rendition/media.m3u8",
        200,
        "application/vnd.apple.mpegurl",
        "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n\
         #EXT-X-MAP:URI=\"init-secret.mp4?auth=hidden-token\"\n\
         #EXT-X-KEY:METHOD=AES-128,URI=\"../keys/key-secret.bin?auth=hidden-token\",IV=0x1\n\
         #EXTINF:2,\n#EXT-X-BYTERANGE:1000@0\nsegment-secret-7.m4s?auth=hidden-token\n\
         #EXTINF:2,\nsegment-secret-8.m4s?auth=hidden-token\n",
    );

    let mut checked = 0;
    for call in ["ts", "fmp4", "ll", "crypt"] {
        checked +=
            assert_nothing_shows(&world, &format!("/hls/livestream/{call}/index.m3u8"), "").await;
    }
    eprintln!("{checked} relay URIs checked");
    let master = world.playlist("/hls/livestream/crypt/index.m3u8").await;
    assert!(
        master.contains("/m.key\""),
        "the session key is relayed: {master}"
    );
    assert!(checked > 40);
}

#[tokio::test]
async fn in_token_mode_too() {
    let world = World::start_with(|config| config.access.mode = AccessMode::Token).await;
    let key = jsonwebtoken::EncodingKey::from_secret(world.sim.api_secret().as_bytes());
    let claims = serde_json::json!({"user_id": "viewer"});
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let suffix = format!("?token={token}");
    let checked = assert_nothing_shows(&world, "/hls/livestream/fmp4/index.m3u8", &suffix).await;
    assert!(checked > 10);
}

#[tokio::test]
async fn urls_written_under_an_old_key_work_while_it_is_listed() {
    let old_key = "the-old-url-key-0123456789";
    let new_key = "the-new-url-key-0123456789";
    let world = World::start_with(|config| config.server.url_key = Some(old_key.into())).await;
    let (media_path, media) = world.first_media_playlist("ts").await;
    let segment = resolve(&media_path, uri_lines(&media)[0]);

    let rotated = start_relay(&world.sim, |config| {
        config.server.url_key = None;
        config.server.url_keys = vec![new_key.into(), old_key.into()];
    })
    .await;
    let get = |relay: &hls_relay::http::server::RunningRelay, path: &str| {
        let url = format!("{}{path}", relay.base_url());
        let http = world.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    assert_eq!(get(&rotated, &media_path).await.status(), 200);
    assert_eq!(get(&rotated, &segment).await.status(), 200);
    // New URLs are written with the new key: the entry playlist names its renditions differently.
    let entry = "/hls/livestream/ts/index.m3u8";
    let before = world.playlist(entry).await;
    let after = get(&rotated, entry).await.text().await.unwrap();
    assert_ne!(uri_lines(&before), uri_lines(&after));

    let retired = start_relay(&world.sim, |config| {
        config.server.url_key = None;
        config.server.url_keys = vec![new_key.into()];
    })
    .await;
    for old in [&media_path, &segment] {
        let response = get(&retired, old).await;
        assert_eq!(response.status(), 404, "{old}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    let new_media = resolve(entry, uri_lines(&after)[0]);
    assert_eq!(get(&retired, &new_media).await.status(), 200);
}
