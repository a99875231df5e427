//! A viewer's path through the relay: call state, entry playlist, renditions, segments — for both flavours.

mod common;

use common::*;

#[tokio::test]
async fn state_endpoint_speaks_streams_shape_with_the_relays_playlist_url() {
    let world = World::start().await;
    let response = world.get("/v1/calls/livestream/ts").await;
    assert_eq!(response.status(), 200);
    let state: serde_json::Value = response.json().await.unwrap();
    assert_eq!(state["call"]["cid"], "livestream:ts");
    assert_eq!(state["call"]["type"], "livestream");
    assert_eq!(state["call"]["id"], "ts");
    assert_eq!(state["call"]["egress"]["broadcasting"], true);
    assert_eq!(
        state["call"]["egress"]["hls"]["playlist_url"],
        world.url("/hls/livestream/ts/index.m3u8")
    );

    world.sim.add_call(
        "livestream",
        "offair",
        hls_relay::sim::CallSetup {
            broadcasting: false,
            ..Default::default()
        },
    );
    let state: serde_json::Value = world
        .get("/v1/calls/livestream/offair")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state["call"]["egress"]["broadcasting"], false);
    assert!(state["call"]["egress"]["hls"].is_null());
}

#[tokio::test]
async fn public_url_is_used_for_the_playlist_url() {
    let world =
        World::start_with(|c| c.server.public_url = Some("https://live.example.com".into())).await;
    let state: serde_json::Value = world
        .get("/v1/calls/livestream/ts")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        state["call"]["egress"]["hls"]["playlist_url"],
        "https://live.example.com/hls/livestream/ts/index.m3u8"
    );
}

async fn plays_through_the_relay(call: &str, segment_extension: &str, first_bytes: &[u8]) {
    let world = World::start().await;
    let upstream_host = world.sim.addr().to_string();
    let entry = "/hls/livestream/{call}/index.m3u8".replace("{call}", call);
    let master = world.playlist(&entry).await;
    assert!(master.contains("#EXT-X-STREAM-INF"));
    assert!(
        !master.contains(&upstream_host),
        "master names the upstream host:\n{master}"
    );
    let audio = uri_attributes(&master);
    assert!(!audio.is_empty(), "the audio rendition is relayed too");

    for variant in uri_lines(&master)
        .into_iter()
        .chain(audio.iter().map(String::as_str))
    {
        let media_path = resolve(&entry, variant);
        assert!(
            media_path.starts_with(&format!("/hls/livestream/{call}/")),
            "{media_path}"
        );
        let media = world.playlist(&media_path).await;
        assert!(
            !media.contains(&upstream_host),
            "media playlist names the upstream host"
        );
        for uri in uri_attributes(&media) {
            let path = resolve(&media_path, &uri);
            let init = world.get(&path).await;
            assert_eq!(init.status(), 200, "EXT-X-MAP {path}");
            assert!(init.bytes().await.unwrap().windows(4).any(|w| w == b"ftyp"));
        }
        let segment = uri_lines(&media)[0];
        assert!(segment.ends_with(segment_extension), "{segment}");
        let segment_path = resolve(&media_path, segment);
        let response = world.get(&segment_path).await;
        assert_eq!(response.status(), 200, "{segment_path}");
        let body = response.bytes().await.unwrap();
        assert!(body.len() > 1000);
        assert!(body.starts_with(first_bytes) || body.windows(4).any(|w| w == first_bytes));
    }
}

#[tokio::test]
async fn mpeg_ts_broadcast_plays_through_the_relay() {
    plays_through_the_relay("ts", ".ts", &[0x47]).await;
}

#[tokio::test]
async fn fmp4_broadcast_plays_through_the_relay() {
    plays_through_the_relay("fmp4", ".m4s", b"moof").await;
}

#[tokio::test]
async fn segments_reach_upstream_with_their_query_string() {
    // The simulator's segment URLs carry a CDN-style signature and it refuses them without it.
    let world = World::start().await;
    let (media_path, media) = world.first_media_playlist("ts").await;
    let segment_path = resolve(&media_path, uri_lines(&media)[0]);
    assert!(!segment_path.contains('?'));
    assert_eq!(world.get(&segment_path).await.status(), 200);
}

#[tokio::test]
async fn relative_uris_resolve_against_the_redirected_url() {
    let world = World::start().await;
    world.sim.add_call(
        "livestream",
        "moved",
        hls_relay::sim::CallSetup {
            redirect_master: true,
            ..Default::default()
        },
    );
    let (_, media) = world.first_media_playlist("moved").await;
    assert!(media.contains("#EXTINF"));
}

/// Rewriting changes URIs and nothing else: the relay's playlist equals upstream's line for line outside URIs.
#[tokio::test]
async fn served_playlists_equal_upstream_outside_uris() {
    let world = World::start().await;
    let upstream_master_url = world.sim.playlist_url("livestream", "ts").unwrap();
    let upstream_master = world
        .http
        .get(&upstream_master_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let relayed_master = world.playlist("/hls/livestream/ts/index.m3u8").await;
    assert_same_outside_uris(&upstream_master, &relayed_master);

    // A live playlist moves on: compare copies fetched within the same window position.
    let upstream_media_url = url::Url::parse(&upstream_master_url)
        .unwrap()
        .join(uri_lines(&upstream_master)[0])
        .unwrap();
    let mut attempts = 0;
    loop {
        let (_, relayed) = world.first_media_playlist("ts").await;
        let upstream = world
            .http
            .get(upstream_media_url.clone())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if media_sequence(&relayed) == media_sequence(&upstream) {
            assert_same_outside_uris(&upstream, &relayed);
            break;
        }
        attempts += 1;
        assert!(attempts < 5, "the playlist kept moving");
    }
}

fn media_sequence(playlist: &str) -> Option<&str> {
    playlist
        .lines()
        .find(|l| l.starts_with("#EXT-X-MEDIA-SEQUENCE"))
}

fn assert_same_outside_uris(upstream: &str, relayed: &str) {
    let strip = |text: &str| -> Vec<String> {
        text.split('\n')
            .map(|line| {
                if !line.trim().is_empty() && !line.starts_with('#') {
                    return "<uri>".to_owned();
                }
                let mut out = String::new();
                let mut rest = line;
                while let Some(start) = rest.find("URI=\"") {
                    out.push_str(&rest[..start + 5]);
                    let after = &rest[start + 5..];
                    let end = after.find('"').unwrap();
                    out.push_str("<uri>");
                    rest = &after[end..];
                }
                out.push_str(rest);
                out
            })
            .collect()
    };
    assert_eq!(strip(upstream), strip(relayed));
}

/// ffmpeg's HLS demuxer reads 10 s of the live stream through the relay, in MPEG-TS, fMP4 and LL-HLS (ffmpeg
/// reads an LL-HLS playlist's full segments and ignores its parts, as a legacy player must be able to). CI
/// installs ffmpeg; elsewhere the test says so and stops if it is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_reads_the_live_stream_through_the_relay() {
    if !tool_available("ffmpeg", "-version", "apt-get install ffmpeg") {
        return;
    }
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
    for call in ["ts", "fmp4", "ll"] {
        let url = world.url(&format!("/hls/livestream/{call}/index.m3u8"));
        let output = tokio::process::Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-rw_timeout",
                "5000000",
            ])
            .args(["-i", &url, "-t", "10", "-f", "null", "-"])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(std::time::Duration::from_secs(60), output)
            .await
            .expect("ffmpeg finishes")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "ffmpeg failed on {call}: {stderr}");
        assert!(!stderr.contains("HTTP error"), "{stderr}");
    }
}
