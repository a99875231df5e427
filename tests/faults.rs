//! Upstream faults, injected in the simulator: what the viewers of the faulty call get, that viewers of other calls
//! see nothing, and that the faulty call recovers when upstream does.

mod common;

use std::time::Duration;

use common::*;

/// Fetches the whole chain of `call` (entry, first rendition, newest segment) and says whether all of it worked.
async fn plays(world: &World, call: &str) -> bool {
    let entry = format!("/hls/livestream/{call}/index.m3u8");
    let Ok(master) = world.get(&entry).await.error_for_status() else {
        return false;
    };
    let master = master.text().await.unwrap_or_default();
    let Some(variant) = uri_lines(&master).first().map(|v| resolve(&entry, v)) else {
        return false;
    };
    let Ok(media) = world.get(&variant).await.error_for_status() else {
        return false;
    };
    let media = media.text().await.unwrap_or_default();
    let Some(segment) = uri_lines(&media).last().map(|s| resolve(&variant, s)) else {
        return false;
    };
    match world.get(&segment).await.error_for_status() {
        Ok(response) => response.bytes().await.is_ok_and(|b| !b.is_empty()),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_each_fault_other_calls_play_and_the_faulty_call_recovers() {
    let world = World::start_with(|c| {
        c.upstream.first_byte_timeout = Duration::from_millis(500);
        c.upstream.total_timeout = Duration::from_secs(2);
    })
    .await;
    let faults = [
        OriginFault::Stall,
        OriginFault::Status(500),
        OriginFault::Status(503),
        OriginFault::TruncatedBody,
        OriginFault::GarbagePlaylists,
        OriginFault::SlowBody(Duration::from_millis(100)),
    ];
    for fault in faults {
        // A fresh call per fault, so nothing cached from the previous round hides the fault.
        let call = format!(
            "faulty-{}",
            format!("{fault:?}")
                .to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        world.sim.add_call("livestream", &call, Default::default());
        world.sim.set_fault("livestream", &call, fault.clone());

        let faulty_plays = plays(&world, &call).await;
        let slow_but_whole = matches!(fault, OriginFault::SlowBody(_));
        assert_eq!(
            faulty_plays, slow_but_whole,
            "{fault:?}: a slow body still plays, every other fault fails"
        );
        assert!(
            plays(&world, "fmp4").await,
            "{fault:?} on {call} must not disturb other calls"
        );

        world.sim.set_fault("livestream", &call, OriginFault::None);
        eventually(&format!("{call} recovers after {fault:?}"), || {
            plays(&world, &call)
        })
        .await;
    }
}

#[tokio::test]
async fn a_playlist_whose_refresh_fails_is_served_stale_for_a_while_and_marked() {
    let world = World::start().await;
    let (media_path, _) = world.first_media_playlist("ts").await;
    world
        .sim
        .set_fault("livestream", "ts", OriginFault::Status(500));
    // Fresh for one second; then every refresh fails and the last good copy answers, marked.
    eventually("the playlist is served stale", || async {
        let response = world.get(&media_path).await;
        response.status() == 200 && response.headers()["x-cache"] == "STALE"
    })
    .await;
}

#[tokio::test]
async fn an_upstream_object_over_the_size_limit_is_refused_and_not_kept() {
    let world =
        World::start_with(|c| c.upstream.max_object_bytes = bytesize::ByteSize::kib(64)).await;
    let origin = FixedOrigin::start().await;
    origin.serve(
        "/live/media.m3u8",
        200,
        "application/vnd.apple.mpegurl",
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nhuge.ts\n",
    );
    origin.serve(
        "/live/huge.ts",
        200,
        "video/mp2t",
        vec![0x47u8; 1024 * 1024],
    );
    world
        .sim
        .set_playlist_url("livestream", "huge", &origin.url("/live/media.m3u8"));
    let entry = "/hls/livestream/huge/index.m3u8";
    let playlist = world.playlist(entry).await;
    let segment = resolve(entry, uri_lines(&playlist)[0]);
    let response = world.get(&segment).await;
    // The head announced 1 MiB: refused before a byte is relayed.
    assert!(response.status() == 502 || response.bytes().await.is_err());
    let _ = world.get(&segment).await;
    assert_eq!(origin.requests("/live/huge.ts"), 2, "nothing was cached");
}

#[tokio::test]
async fn calls_already_resolved_keep_playing_when_the_api_is_down() {
    let world = World::start().await;
    // A Stream API double that knows one call, broadcasting from the simulator's origin.
    let api = FixedOrigin::start().await;
    let playlist_url = world.sim.playlist_url("livestream", "ts").unwrap();
    let call_path = "/api/v2/video/call/livestream/ts";
    api.serve(
        call_path,
        200,
        "application/json",
        serde_json::json!({"call": {"cid": "livestream:ts", "egress": {"broadcasting": true,
            "hls": {"playlist_url": playlist_url}}}})
        .to_string(),
    );
    let relay = start_relay(&world.sim, |c| {
        c.stream.base_url = format!("http://{}", api.addr);
        c.stream.call_ttl = Duration::from_millis(100);
    })
    .await;
    let viewer = World {
        sim: world.sim.clone(),
        relay,
        http: client(),
    };
    assert!(plays(&viewer, "ts").await);

    api.fail_next(call_path, u32::MAX, 503);
    let asked = api.requests(call_path);
    eventually(
        "the relay asks the failing API again and still plays",
        || async { plays(&viewer, "ts").await && api.requests(call_path) > asked },
    )
    .await;
}
