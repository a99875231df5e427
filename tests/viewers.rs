//! Who is watching: viewers get session ids at the entry playlist, carried in their playlist URIs only; every
//! playlist reload counts; counts show in the API, SSE and metrics, alone and across a fleet sharing Redis; the
//! optional cap turns new viewers away and never those watching; off, playlists are shared as before.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use hls_relay::http::server::RunningRelay;
use hls_relay::sim::{self, SimConfig};

/// The simulator's target duration: players reload their media playlist about this often.
const TARGET: Duration = Duration::from_secs(2);

/// The `viewers` object of a call's state on `relay`.
async fn viewers(http: &reqwest::Client, relay: &RunningRelay, call: &str) -> serde_json::Value {
    let state: serde_json::Value = http
        .get(format!("{}/v1/calls/livestream/{call}", relay.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    state["viewers"].clone()
}

/// The value of `session` in a URI's query.
fn session_of(uri: &str) -> Option<&str> {
    uri.split_once('?')?
        .1
        .split('&')
        .find_map(|pair| pair.strip_prefix("vs="))
}

/// A plain HTTP player: loads the entry once from `relays[0]`, then reloads its first variant's media playlist
/// about every target duration, each time from the next of `relays`, until `stop`.
async fn poller(
    http: reqwest::Client,
    relays: Vec<String>,
    call: &'static str,
    stop: Arc<AtomicBool>,
) {
    let entry = format!("/hls/livestream/{call}/index.m3u8");
    let master = http
        .get(format!("{}{entry}", relays[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let media = resolve(&entry, uri_lines(&master)[0]);
    assert!(session_of(&media).is_some(), "{media}");
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        let relay = &relays[next % relays.len()];
        next += 1;
        let response = http.get(format!("{relay}{media}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{media}");
        tokio::time::sleep(TARGET).await;
    }
}

struct Crowd {
    stop: Arc<AtomicBool>,
    players: Vec<tokio::task::JoinHandle<()>>,
}

impl Crowd {
    /// `count` pollers; player `n` starts at relay `n % relays.len()` and moves on one relay a reload.
    fn start(count: usize, relays: &[String], call: &'static str) -> Crowd {
        let stop = Arc::new(AtomicBool::new(false));
        let http = client();
        let players = (0..count)
            .map(|n| {
                let mut order = relays.to_vec();
                order.rotate_left(n % relays.len());
                tokio::spawn(poller(http.clone(), order, call, stop.clone()))
            })
            .collect();
        Crowd { stop, players }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for player in self.players {
            player.await.expect("the player ran without failing");
        }
    }
}

/// Waits until `relay` counts `now` viewers of `call`, and returns its `viewers` object then.
async fn until_counted(
    http: &reqwest::Client,
    relay: &RunningRelay,
    call: &str,
    now: u64,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let last = viewers(http, relay, call).await;
        if last["now"] == now {
            return last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never counted {now} viewers of {call}: {last}",
            relay.base_url()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pollers_are_fifty_viewers_until_they_stop() {
    let world = World::start().await;
    let crowd = Crowd::start(50, &[world.relay.base_url()], "ts");
    let counted = until_counted(&world.http, &world.relay, "ts", 50).await;
    assert_eq!(counted["peak"], 50, "{counted}");
    assert_eq!(
        counted["sessions"], 50,
        "one session per entry load: {counted}"
    );
    assert_eq!(counted["renditions"]["v360"], 50, "{counted}");
    assert_eq!(counted["scope"], "instance");
    let metrics = world.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("hls_relay_viewers 50\n"), "{metrics}");
    assert!(
        metrics.contains("hls_relay_call_viewers{cid=\"livestream:ts\"} 50\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hls_relay_call_viewers{cid=\"other\"} 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hls_relay_viewer_sessions_total 50\n"),
        "{metrics}"
    );

    crowd.stop().await;
    // Within a window (2 target durations) and a tally of their last reloads; `until_counted` waits up to 20 s.
    let gone = until_counted(&world.http, &world.relay, "ts", 0).await;
    assert_eq!(
        (gone["peak"].as_u64(), gone["sessions"].as_u64()),
        (Some(50), Some(50))
    );
    assert_eq!(gone["renditions"], serde_json::json!({}));
}

#[tokio::test]
async fn session_ids_go_into_playlist_uris_only_and_make_them_private() {
    let world = World::start().await;
    let entry = "/hls/livestream/fmp4/index.m3u8";
    let response = world.get(entry).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private"),
        "a master with a session id is the viewer's own"
    );
    let master = response.text().await.unwrap();
    let playlists: Vec<String> = uri_lines(&master)
        .into_iter()
        .map(str::to_owned)
        .chain(uri_attributes(&master))
        .collect();
    let session = session_of(&playlists[0]).unwrap().to_owned();
    assert_eq!(session.len(), 27);
    for uri in &playlists {
        assert_eq!(session_of(uri), Some(session.as_str()), "{uri}");
    }
    let again = world.playlist(entry).await;
    assert_ne!(
        session_of(uri_lines(&again)[0]),
        Some(session.as_str()),
        "each load of the entry is a new session"
    );

    let media_path = resolve(entry, &playlists[0]);
    let response = world.get(&media_path).await;
    assert_eq!(response.status(), 200);
    let cache_control = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cache_control.starts_with("private, max-age="),
        "{cache_control}"
    );
    // The bytes every viewer gets, with their ETag (and compressed variants): nothing was spliced in.
    assert!(response.headers().contains_key("etag"));
    let media = response.text().await.unwrap();
    assert!(!media.contains("vs="), "media URIs stay shared:\n{media}");
    let shared = world.get(media_path.split('?').next().unwrap()).await;
    assert!(
        shared.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("public"),
        "without a session, the shared playlist as before"
    );
    for uri in uri_attributes(&media)
        .iter()
        .map(String::as_str)
        .chain(uri_lines(&media))
    {
        let object = world.get(&resolve(&media_path, uri)).await;
        assert_eq!(object.status(), 200, "{uri}");
        assert!(
            object.headers()["cache-control"]
                .to_str()
                .unwrap()
                .starts_with("public"),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn forged_or_foreign_session_ids_are_served_but_not_counted() {
    let world = World::start().await;
    let (media_path, _) = world.first_media_playlist("ts").await;
    let bare = media_path.split('?').next().unwrap().to_owned();
    let session = session_of(&media_path).unwrap().to_owned();
    let mut forged = session.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for query in [
        format!("vs={forged}"),
        "vs=short".to_owned(),
        "vs=".to_owned(),
        String::new(),
    ] {
        let response = world.get(&format!("{bare}?{query}")).await;
        assert_eq!(response.status(), 200, "{query}");
        assert!(
            response.headers()["cache-control"]
                .to_str()
                .unwrap()
                .starts_with("public"),
            "{query}"
        );
    }
    // A session of another call counts nothing on this one.
    let fmp4_master = world.playlist("/hls/livestream/fmp4/index.m3u8").await;
    let foreign = session_of(uri_lines(&fmp4_master)[0]).unwrap().to_owned();
    world.get(&format!("{bare}?vs={foreign}")).await;
    world.get(&media_path).await;
    let counted = until_counted(&world.http, &world.relay, "ts", 1).await;
    assert_eq!(counted["sessions"], 1, "{counted}");
    tokio::time::sleep(hls_relay::viewers::TICK * 2).await;
    assert_eq!(viewers(&world.http, &world.relay, "ts").await["now"], 1);
}

#[tokio::test]
async fn a_media_playlist_entry_redirects_each_new_viewer_to_its_session() {
    let world = World::start().await;
    let master_url = world.sim.playlist_url("livestream", "ts").unwrap();
    let media_url = url::Url::parse(&master_url)
        .unwrap()
        .join("v360/index.m3u8")
        .unwrap();
    world
        .sim
        .add_call("livestream", "single", CallSetup::default());
    world
        .sim
        .set_playlist_url("livestream", "single", media_url.as_str());
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let entry = "/hls/livestream/single/index.m3u8";
    let response = no_redirects.get(world.url(entry)).send().await.unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("index.m3u8?vs="), "{location}");
    let session = session_of(&location).unwrap().to_owned();

    let followed = resolve(entry, &location);
    let response = no_redirects.get(world.url(&followed)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private")
    );
    let media = response.text().await.unwrap();
    assert!(media.contains("#EXTINF") && !media.contains(&session));
    let counted = until_counted(&world.http, &world.relay, "single", 1).await;
    assert_eq!(counted["sessions"], 1, "{counted}");
    assert_eq!(counted["renditions"]["v360"], 1, "{counted}");
    // A player following redirects gets there in one go.
    assert!(world.playlist(entry).await.contains("#EXTINF"));
}

#[tokio::test]
async fn token_mode_carries_the_token_everywhere_and_the_session_into_playlists() {
    let world =
        World::start_with(|c| c.access.mode = hls_relay::http::access::AccessMode::Token).await;
    let key = jsonwebtoken::EncodingKey::from_secret(world.sim.api_secret().as_bytes());
    let claims = serde_json::json!({"user_id": "alice"});
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let entry = format!("/hls/livestream/ts/index.m3u8?token={token}");
    let master = world.playlist(&entry).await;
    let variant = uri_lines(&master)[0];
    assert!(variant.contains(&format!("token={token}")) && session_of(variant).is_some());
    let media_path = resolve(&entry, variant);
    let media = world.playlist(&media_path).await;
    for segment in uri_lines(&media) {
        assert!(segment.ends_with(&format!("?token={token}")), "{segment}");
    }
    let state: serde_json::Value = world
        .http
        .get(world.url("/v1/calls/livestream/ts"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(state["viewers"]["now"].is_u64(), "{state}");
}

#[tokio::test]
async fn the_cap_turns_new_viewers_away_and_keeps_those_watching() {
    let world = World::start_with(|c| c.access.max_viewers_per_call = Some(3)).await;
    let mut watching = Vec::new();
    for _ in 0..3 {
        let (media_path, _) = world.first_media_playlist("ts").await;
        watching.push(media_path);
    }
    let headers = world
        .expect_error("/hls/livestream/ts/index.m3u8", 503, "viewer_limit")
        .await;
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(headers["cache-control"], "no-store");
    // Another call has room.
    world.playlist("/hls/livestream/fmp4/index.m3u8").await;
    // Those watching keep playing, reload after reload, tally after tally.
    for _ in 0..3 {
        for media_path in &watching {
            let media = world.playlist(media_path).await;
            let segment = resolve(media_path, uri_lines(&media).last().unwrap());
            assert_eq!(world.get(&segment).await.status(), 200);
        }
        tokio::time::sleep(hls_relay::viewers::TICK).await;
    }
    world
        .expect_error("/hls/livestream/ts/index.m3u8", 503, "viewer_limit")
        .await;
    assert_eq!(viewers(&world.http, &world.relay, "ts").await["now"], 3);
}

#[tokio::test]
async fn off_playlists_are_shared_and_public_as_before() {
    let world = World::start_with(|c| c.viewers.enabled = false).await;
    let entry = "/hls/livestream/ts/index.m3u8";
    let response = world.get(entry).await;
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("public")
    );
    let master = response.text().await.unwrap();
    assert!(!master.contains("vs="), "{master}");
    assert_eq!(
        master,
        world.playlist(entry).await,
        "every viewer gets the same bytes"
    );
    let (media_path, media) = world.first_media_playlist("ts").await;
    assert!(!media_path.contains('?') && !media.contains("vs="));
    let response = world.get(&media_path).await;
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("public")
    );
    let state: serde_json::Value = world
        .get("/v1/calls/livestream/ts")
        .await
        .json()
        .await
        .unwrap();
    assert!(state.get("viewers").is_none(), "{state}");
    assert!(
        !world
            .get("/metrics")
            .await
            .text()
            .await
            .unwrap()
            .contains("hls_relay_call_viewers{")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_hear_the_count_change_through_their_event_stream() {
    let world = World::start().await;
    // A change reaches pages within a window, a tally and one period of the call's timer (5 s).
    let mut events = SseReader::open(&world.relay, "ts")
        .await
        .patient(Duration::from_secs(30));
    assert_eq!(events.next().await.0, "state");
    let first = events.next_viewers().await;
    assert_eq!(first["now"], 0, "{first}");
    let crowd = Crowd::start(2, &[world.relay.base_url()], "ts");
    let mut seen = first;
    while seen["now"] != 2 {
        seen = events.next_viewers().await;
    }
    assert_eq!(seen["scope"], "instance");
    crowd.stop().await;
    while seen["now"] != 0 {
        seen = events.next_viewers().await;
    }
}

/// The same 50 viewers, each loading its entry from one of three instances and reloading from each in turn, are
/// 50 on every instance: they share one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_viewers_spread_over_three_instances_count_fifty_on_each() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = sim::start(SimConfig::default()).await.unwrap();
    sim.add_call("livestream", "ts", CallSetup::default());
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(start_relay(&sim, |c| c.cluster.redis_url = Some(redis.url())).await);
    }
    let bases: Vec<String> = relays.iter().map(RunningRelay::base_url).collect();
    let http = client();
    let crowd = Crowd::start(50, &bases, "ts");
    for relay in &relays {
        let counted = until_counted(&http, relay, "ts", 50).await;
        assert_eq!(counted["scope"], "fleet", "{counted}");
        assert_eq!(counted["sessions"], 50, "{counted}");
        assert_eq!(counted["renditions"]["v360"], 50, "{counted}");
    }
    crowd.stop().await;
    for relay in &relays {
        let gone = until_counted(&http, relay, "ts", 0).await;
        assert_eq!(gone["peak"], 50, "{gone}");
    }
}

/// An instance that stops (crashes, is scaled away) stops counting for the fleet within a window: its viewers'
/// entries are no longer refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_an_instance_that_went_away_stop_counting_within_a_window() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = sim::start(SimConfig::default()).await.unwrap();
    sim.add_call("livestream", "ts", CallSetup::default());
    let stays = start_relay(&sim, |c| c.cluster.redis_url = Some(redis.url())).await;
    let goes = start_relay(&sim, |c| c.cluster.redis_url = Some(redis.url())).await;
    let http = client();
    let here = Crowd::start(2, &[stays.base_url()], "ts");
    let there = Crowd::start(3, &[goes.base_url()], "ts");
    until_counted(&http, &stays, "ts", 5).await;
    // Its players stop with it (their requests would fail).
    there.stop().await;
    drop(goes);
    until_counted(&http, &stays, "ts", 2).await;
    here.stop().await;
}

/// A real player counts as exactly one viewer: ffmpeg's HLS demuxer loads the entry once and then reloads every
/// rendition's playlist (it reads all of them) with the one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_is_one_viewer() {
    if !tool_available("ffmpeg", "-version", "apt-get install ffmpeg") {
        return;
    }
    let world = World::start().await;
    let url = world.url("/hls/livestream/ts/index.m3u8");
    let mut ffmpeg = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args([
            "-rw_timeout",
            "5000000",
            "-i",
            &url,
            "-t",
            "12",
            "-f",
            "null",
            "-",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg starts");
    let counted = until_counted(&world.http, &world.relay, "ts", 1).await;
    assert_eq!(counted["sessions"], 1, "{counted}");
    let output = tokio::time::timeout(Duration::from_secs(60), async {
        let status = ffmpeg.wait().await.unwrap();
        let mut errors = String::new();
        if let Some(mut stderr) = ffmpeg.stderr.take() {
            tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut errors)
                .await
                .ok();
        }
        (status, errors)
    })
    .await
    .expect("ffmpeg finishes");
    assert!(output.0.success(), "ffmpeg failed: {}", output.1);
    let after = viewers(&world.http, &world.relay, "ts").await;
    assert_eq!(
        (after["peak"].as_u64(), after["sessions"].as_u64()),
        (Some(1), Some(1)),
        "{after}"
    );
}

/// LL-HLS players reload with blocking requests (`_HLS_msn`, `_HLS_part`) next to their session: those count like
/// any reload, and the rendition reports in the answer carry the session as the master's URIs do.
#[tokio::test]
async fn ll_hls_blocking_reloads_count_like_any_reload() {
    let world = World::start().await;
    let low_latency = CallSetup {
        flavour: Flavour::Fmp4,
        low_latency: true,
        ..CallSetup::default()
    };
    world.sim.add_call("livestream", "ll", low_latency);
    let (media_path, media) = world.first_media_playlist("ll").await;
    let session = session_of(&media_path).unwrap().to_owned();
    let info = hls_relay::hls::playlist::inspect(media.as_bytes()).unwrap();
    let (msn, part) = (
        info.media_sequence + info.segment_count as u64,
        info.trailing_parts,
    );
    let blocked = world
        .playlist(&format!("{media_path}&_HLS_msn={msn}&_HLS_part={part}"))
        .await;
    let reports: Vec<String> = blocked
        .lines()
        .filter(|line| line.starts_with("#EXT-X-RENDITION-REPORT"))
        .map(str::to_owned)
        .collect();
    assert!(!reports.is_empty(), "{blocked}");
    for report in &reports {
        assert!(report.contains(&format!("vs={session}")), "{report}");
    }
    let counted = until_counted(&world.http, &world.relay, "ll", 1).await;
    assert_eq!(counted["sessions"], 1, "{counted}");
    assert_eq!(counted["renditions"]["v360"], 1, "{counted}");
}
