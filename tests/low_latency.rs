//! LL-HLS delivery directives through the relay: blocking playlist reloads, shared by every waiting viewer.

mod common;

use common::*;
use futures_util::future::join_all;
use reqwest::header;

/// A live media playlist of one-second segments `first..next`.
fn media(first: u64, next: u64) -> String {
    let mut playlist = format!("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{first}\n");
    for msn in first..next {
        playlist.push_str(&format!("#EXTINF:1.0,\nseg_{msn}.ts\n"));
    }
    playlist
}

const PLAYLIST: &str = "application/vnd.apple.mpegurl";

/// An origin whose playlist the test moves forward by hand, behind a relay; returns the relay path of the
/// media playlist.
async fn live_origin(world: &World) -> (FixedOrigin, String) {
    let origin = FixedOrigin::start().await;
    origin.serve(
        "/live/master.m3u8",
        200,
        PLAYLIST,
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nmedia.m3u8\n",
    );
    origin.serve("/live/media.m3u8", 200, PLAYLIST, media(0, 3));
    world
        .sim
        .set_playlist_url("livestream", "ll", &origin.url("/live/master.m3u8"));
    let entry = "/hls/livestream/ll/index.m3u8";
    let master = world.playlist(entry).await;
    let media_path = resolve(entry, uri_lines(&master)[0]);
    (origin, media_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_reload_is_held_until_the_segment_exists_and_shared_by_all_waiters() {
    let world = World::start().await;
    let (origin, media_path) = live_origin(&world).await;
    let has = |playlist: &str, file: &str| {
        upstream_files(&media_path, playlist)
            .iter()
            .any(|f| f == file)
    };
    assert!(has(&world.playlist(&media_path).await, "seg_2.ts"));

    // Already there: answered at once.
    let now = world.playlist(&format!("{media_path}&_HLS_msn=2")).await;
    assert!(has(&now, "seg_2.ts"));

    let blocked = format!("{media_path}&_HLS_msn=3");
    let viewers = join_all((0..50).map(|_| world.get(&blocked)));
    let publish = async {
        let before = origin.requests("/live/media.m3u8");
        eventually(
            "the relay re-reads the playlist while viewers wait",
            || async { origin.requests("/live/media.m3u8") > before },
        )
        .await;
        origin.serve("/live/media.m3u8", 200, PLAYLIST, media(0, 4));
    };
    let (responses, ()) = tokio::join!(viewers, publish);
    for response in responses {
        assert_eq!(response.status(), 200);
        // Private: the URL names the viewer's session (shared without one).
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "private, max-age=6"
        );
        assert!(has(&response.text().await.unwrap(), "seg_3.ts"));
    }
    // One shared re-read loop, not fifty: a handful of polls at half a target duration.
    let polls = origin.requests("/live/media.m3u8");
    assert!(polls < 20, "{polls} upstream reads for 50 waiting viewers");

    // The non-blocking URL moved on with it.
    assert!(has(&world.playlist(&media_path).await, "seg_3.ts"));
}

#[tokio::test]
async fn directives_the_spec_forbids_are_refused() {
    let world = World::start().await;
    let (_origin, media_path) = live_origin(&world).await;
    world
        .expect_error(&format!("{media_path}&_HLS_part=1"), 400, "bad_request")
        .await;
    world
        .expect_error(&format!("{media_path}&_HLS_msn=abc"), 400, "bad_request")
        .await;
    // Segments 0..=2 exist: 5 is more than two past the last.
    world
        .expect_error(&format!("{media_path}&_HLS_msn=5"), 400, "bad_request")
        .await;
}

#[tokio::test]
async fn a_segment_that_never_comes_is_a_503_after_three_target_durations() {
    let world = World::start().await;
    let (_origin, media_path) = live_origin(&world).await;
    world
        .expect_error(&format!("{media_path}&_HLS_msn=4"), 503, "not_ready")
        .await;
}

#[tokio::test]
async fn an_ended_playlist_answers_every_directive() {
    let world = World::start().await;
    let (origin, _) = live_origin(&world).await;
    origin.serve(
        "/live/media.m3u8",
        200,
        PLAYLIST,
        media(0, 3) + "#EXT-X-ENDLIST\n",
    );
    let fresh = World::start().await;
    fresh
        .sim
        .set_playlist_url("livestream", "ll", &origin.url("/live/master.m3u8"));
    let entry = "/hls/livestream/ll/index.m3u8";
    let master = fresh.playlist(entry).await;
    let media_path = resolve(entry, uri_lines(&master)[0]);
    let ended = fresh.playlist(&format!("{media_path}&_HLS_msn=4")).await;
    assert!(ended.contains("#EXT-X-ENDLIST"));
}

/// An LL-HLS broadcast from the simulator (CAN-BLOCK-RELOAD=YES, 0.5 s parts): 500 viewers blocked on the next
/// part share one blocking request upstream, and all of them get the part as soon as it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_viewers_blocked_on_the_next_part_cause_one_upstream_request() {
    let world = World::start().await;
    let low_latency = hls_relay::sim::CallSetup {
        flavour: Flavour::Fmp4,
        low_latency: true,
        ..Default::default()
    };
    world.sim.add_call("livestream", "ll", low_latency);
    let (media_path, media) = world.first_media_playlist("ll").await;
    assert!(media.contains("#EXT-X-PART:") && media.contains("#EXT-X-PRELOAD-HINT"));
    assert!(
        !media.contains(&world.sim.addr().to_string()),
        "parts and hints are relayed"
    );
    let info = hls_relay::hls::playlist::inspect(media.as_bytes()).unwrap();
    let (msn, part) = (
        info.media_sequence + info.segment_count as u64,
        info.trailing_parts,
    );

    let upstream_path = {
        let master = world.sim.playlist_url("livestream", "ll").unwrap();
        let master = url::Url::parse(&master).unwrap();
        let first_variant = uri_lines(
            &world
                .http
                .get(master.clone())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )[0]
        .to_owned();
        master.join(&first_variant).unwrap().path().to_owned()
    };
    let before = world.sim.blocking_requests(&upstream_path);
    let blocked = format!("{media_path}&_HLS_msn={msn}&_HLS_part={part}");
    let viewers = (0..500).map(|_| world.get(&blocked));
    for response in join_all(viewers).await {
        assert_eq!(response.status(), 200);
        let playlist = response.text().await.unwrap();
        let info = hls_relay::hls::playlist::inspect(playlist.as_bytes()).unwrap();
        let next = info.media_sequence + info.segment_count as u64;
        assert!(
            next > msn || info.trailing_parts as u64 > part as u64,
            "the part is there"
        );
    }
    assert_eq!(
        world.sim.blocking_requests(&upstream_path) - before,
        1,
        "one blocking request upstream"
    );
}
