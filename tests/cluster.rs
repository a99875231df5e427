//! Several relays as one service through a real redis-server (started here on a free port): an event applied by
//! one instance reaches every instance, call look-ups are shared across the fleet, and a Redis outage only makes
//! each instance carry on alone until Redis is back. (The whole fleet behind an nginx edge, with instances killed,
//! is `tests/fleet.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use hls_relay::events::webhook;
use hls_relay::http::server::RunningRelay;
use hls_relay::sim::{self, SimConfig, SimHandle};

struct Fleet {
    sim: SimHandle,
    redis: RedisServer,
    relays: Vec<RunningRelay>,
    http: reqwest::Client,
}

/// `instances` relays sharing one URL key and one Redis, in front of a simulator with the call `livestream:ts`.
async fn fleet(instances: usize, call_ttl: Duration) -> Option<Fleet> {
    let redis = RedisServer::start().await?;
    let sim = sim::start(SimConfig::default()).await.unwrap();
    sim.add_call("livestream", "ts", CallSetup::default());
    let mut relays = Vec::new();
    for _ in 0..instances {
        let relay = start_relay(&sim, |config| {
            config.stream.call_ttl = call_ttl;
            config.cluster.redis_url = Some(redis.url());
        })
        .await;
        relays.push(relay);
    }
    Some(Fleet {
        sim,
        redis,
        relays,
        http: client(),
    })
}

impl Fleet {
    async fn get(&self, instance: usize, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.relays[instance].base_url()))
            .send()
            .await
            .unwrap()
    }

    /// Delivers a signed webhook to one instance and returns its outcome.
    async fn webhook(&self, instance: usize, kind: &str, call: &str, created_at: &str) -> String {
        let body = serde_json::json!({"type": kind, "call_cid": format!("livestream:{call}"),
            "created_at": created_at})
        .to_string();
        let signature = webhook::sign(self.sim.api_secret().as_bytes(), body.as_bytes());
        let response = self
            .http
            .post(format!(
                "{}/v1/webhooks/stream",
                self.relays[instance].base_url()
            ))
            .header("x-signature", signature)
            .header("x-api-key", self.sim.api_key())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let outcome: serde_json::Value = response.json().await.unwrap();
        outcome["outcome"].as_str().unwrap().to_owned()
    }

    /// The relay path and text of the first media playlist of `call` on one instance.
    async fn media_playlist(&self, instance: usize, call: &str) -> (String, String) {
        let entry = format!("/hls/livestream/{call}/index.m3u8");
        let master = self.get(instance, &entry).await.text().await.unwrap();
        let path = resolve(&entry, uri_lines(&master)[0]);
        let response = self.get(instance, &path).await;
        assert_eq!(response.status(), 200);
        (path.clone(), response.text().await.unwrap())
    }

    async fn redis_state(&self, instance: usize) -> String {
        let ready: serde_json::Value = self.get(instance, "/readyz").await.json().await.unwrap();
        ready["redis"].as_str().unwrap_or_default().to_owned()
    }

    async fn wait_redis_state(&self, state: &str) {
        for instance in 0..self.relays.len() {
            eventually(
                &format!("instance {instance} sees Redis {state}"),
                || async move { self.redis_state(instance).await == state },
            )
            .await;
        }
    }
}

#[tokio::test]
async fn an_event_on_one_instance_reaches_every_instance() {
    let Some(fleet) = fleet(3, Duration::from_secs(60)).await else {
        return;
    };
    let mut pages = Vec::new();
    let mut playlists = Vec::new();
    for instance in 1..3 {
        let mut page = SseReader::open(&fleet.relays[instance], "ts").await;
        assert_eq!(page.next().await.0, "state");
        pages.push(page);
        let (path, live) = fleet.media_playlist(instance, "ts").await;
        assert!(!live.contains("#EXT-X-ENDLIST"));
        playlists.push((instance, path));
    }

    let sent = Instant::now();
    let outcome = fleet
        .webhook(0, "call.broadcasting_stopped", "ts", "2026-12-03T10:00:00Z")
        .await;
    assert_eq!(outcome, "applied");
    for page in &mut pages {
        let (name, data) = page.next().await;
        assert_eq!(name, "broadcasting_stopped");
        assert_eq!(data["broadcasting"], false);
    }
    eprintln!(
        "the other instances' pages heard the stop {} ms after it was sent to one",
        sent.elapsed().as_millis()
    );
    for (instance, path) in &playlists {
        let ended = fleet.get(*instance, path).await.text().await.unwrap();
        assert!(
            ended.trim_end().ends_with("#EXT-X-ENDLIST"),
            "instance {instance}: {ended}"
        );
    }
    let metrics = fleet.get(2, "/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"hls_relay_events_total{outcome="applied",source="fleet",type="call.broadcasting_stopped"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_fleet_asks_the_api_once_per_call_per_call_ttl() {
    let call_ttl = Duration::from_secs(1);
    let Some(fleet) = fleet(3, call_ttl).await else {
        return;
    };
    let calls: Vec<String> = (0..20).map(|n| format!("c{n}")).collect();
    for call in &calls {
        fleet.sim.add_call("livestream", call, CallSetup::default());
    }
    let before = fleet.sim.api_requests();
    let started = Instant::now();
    // Every instance looks every call up, again and again, for four call_ttl periods.
    while started.elapsed() < call_ttl * 4 {
        let rounds = (0..fleet.relays.len())
            .flat_map(|instance| calls.iter().map(move |call| (instance, call)));
        let fleet = &fleet;
        let lookups = rounds.map(|(instance, call)| async move {
            let state = fleet
                .get(instance, &format!("/v1/calls/livestream/{call}"))
                .await;
            assert_eq!(state.status(), 200);
        });
        futures_util::future::join_all(lookups).await;
    }
    let periods = started.elapsed().as_secs_f64() / call_ttl.as_secs_f64();
    let requests = fleet.sim.api_requests() - before;
    let bound = (calls.len() as f64 * (periods.ceil() + 2.0)) as u64;
    eprintln!(
        "3 instances, {} calls, {periods:.1} call_ttl periods: {requests} GetCall requests (bound {bound}; \
         alone, each instance would make its own)",
        calls.len()
    );
    assert!(
        requests <= bound,
        "{requests} API requests for {} calls over {periods:.1} periods",
        calls.len()
    );
    let mut shared = 0;
    for instance in 0..3 {
        let metrics = fleet.get(instance, "/metrics").await.text().await.unwrap();
        shared += ["shared", "waited"]
            .iter()
            .filter_map(|outcome| {
                let line = format!("hls_relay_cluster_lookups_total{{outcome=\"{outcome}\"}} ");
                let at = metrics.find(&line)? + line.len();
                metrics[at..].lines().next()?.parse::<u64>().ok()
            })
            .sum::<u64>();
    }
    assert!(
        shared > requests,
        "most look-ups were answered by the fleet ({shared})"
    );
}

#[tokio::test]
async fn without_redis_every_instance_serves_alone_and_rejoins_when_it_is_back() {
    let Some(mut fleet) = fleet(3, Duration::from_secs(60)).await else {
        return;
    };
    fleet
        .sim
        .add_call("livestream", "other", CallSetup::default());
    fleet.wait_redis_state("connected").await;
    let (path, _) = fleet.media_playlist(2, "ts").await;

    fleet.redis.kill();
    fleet.wait_redis_state("unreachable").await;
    for instance in 0..3 {
        let entry = fleet.get(instance, "/hls/livestream/ts/index.m3u8").await;
        assert_eq!(
            entry.status(),
            200,
            "instance {instance} serves without Redis"
        );
        let state = fleet.get(instance, "/v1/calls/livestream/other").await;
        assert_eq!(state.status(), 200);
    }
    let outcome = fleet
        .webhook(
            0,
            "call.broadcasting_stopped",
            "other",
            "2026-12-03T10:00:00Z",
        )
        .await;
    assert_eq!(
        outcome, "applied",
        "webhooks still apply on the instance that gets them"
    );
    let metrics = fleet.get(0, "/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("hls_relay_cluster_redis_up 0"),
        "{metrics}"
    );

    fleet.redis.restart().await;
    fleet.wait_redis_state("connected").await;
    let mut page = SseReader::open(&fleet.relays[2], "ts").await;
    assert_eq!(page.next().await.0, "state");
    let outcome = fleet
        .webhook(0, "call.broadcasting_stopped", "ts", "2026-12-03T10:00:01Z")
        .await;
    assert_eq!(outcome, "applied");
    assert_eq!(
        page.next().await.0,
        "broadcasting_stopped",
        "fan-out resumed"
    );
    let ended = fleet.get(2, &path).await.text().await.unwrap();
    assert!(ended.contains("#EXT-X-ENDLIST"));
}

#[tokio::test]
async fn a_rate_limit_is_honoured_by_the_whole_fleet() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // A Stream API that answers every request 429, asking for 30 s of quiet.
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = asked.clone();
    let api = axum::Router::new().fallback(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "30"), ("content-type", "application/json")],
                r#"{"code":9,"message":"Too many requests","StatusCode":429,"duration":"0.1ms"}"#,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api).await });
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let relay = start_relay(&sim, |config| {
            config.stream.base_url = api_url.clone();
            config.stream.call_ttl = Duration::from_millis(100);
            config.cluster.redis_url = Some(redis.url());
        })
        .await;
        relays.push(relay);
    }
    let http = client();
    for round in 0..5 {
        for relay in &relays {
            let url = format!("{}/v1/calls/livestream/limited{round}", relay.base_url());
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 502, "the API's refusal, passed on");
        }
    }
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "after one 429, no instance asks again before Retry-After"
    );
}
