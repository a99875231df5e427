//! The fleet as it is deployed: three relay processes (the real binary) sharing a URL key and a real redis-server,
//! the simulated Stream backend, and the nginx edge of `deploy/nginx/edge.conf` hashing request paths onto the
//! relays. Instances are killed (SIGKILL) and restarted (SIGTERM) under load.
//!
//! Slower than the rest (about two minutes), so not part of `cargo test`: `.ci/run` runs it as
//! `cargo test --locked --test fleet -- --ignored --test-threads 1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hls_relay::events::webhook;
use hls_relay::sim::{self, SimConfig, SimHandle};

/// A child process killed (SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fleet {
    sim: SimHandle,
    redis: RedisServer,
    relays: Vec<Option<Process>>,
    relay_ports: Vec<u16>,
    _edge: Process,
    edge_port: u16,
    dir: tempfile::TempDir,
    call_ttl: Duration,
    http: reqwest::Client,
}

fn nginx() -> Option<PathBuf> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists());
    required("nginx", nginx.is_some(), "apt-get install nginx-light");
    nginx
}

impl Fleet {
    /// Redis, the simulator (with `livestream:ts`), three relays and the edge, all on 127.0.0.1.
    async fn start(call_ttl: Duration) -> Option<Fleet> {
        let nginx = nginx()?;
        let redis = RedisServer::start().await?;
        let sim = sim::start(SimConfig::default()).await.unwrap();
        sim.add_call("livestream", "ts", CallSetup::default());
        let dir = tempfile::tempdir().unwrap();
        // nginx started as root runs its workers as `nobody`, which must reach its files.
        set_mode(dir.path(), 0o755);
        let relay_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let edge_port = free_port();
        let edge = start_edge(&nginx, dir.path(), edge_port, &relay_ports).await;
        let mut fleet = Fleet {
            sim,
            redis,
            relays: Vec::new(),
            relay_ports,
            _edge: edge,
            edge_port,
            dir,
            call_ttl,
            http: client(),
        };
        for instance in 0..3 {
            let relay = fleet.start_relay(instance).await;
            fleet.relays.push(Some(relay));
        }
        Some(fleet)
    }

    fn relay_url(&self, instance: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.relay_ports[instance])
    }

    fn edge_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.edge_port)
    }

    /// Starts relay `instance` (the real binary) on its port and waits until it is ready.
    async fn start_relay(&self, instance: usize) -> Process {
        let port = self.relay_ports[instance];
        let log =
            std::fs::File::create(self.dir.path().join(format!("relay{instance}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hls-relay"))
            // Two threads each (`server.runtime = "per-thread"`): a viewer's requests land on either, so that
            // coalescing, events and shutdown are tested across the runtimes of one process too.
            .args(["--workers", "2", "serve"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("STREAM_API_KEY", self.sim.api_key())
            .env("STREAM_API_SECRET", self.sim.api_secret())
            .env("HLS_RELAY_STREAM__BASE_URL", self.sim.base_url())
            .env(
                "HLS_RELAY_STREAM__CALL_TTL",
                format!("{}ms", self.call_ttl.as_millis()),
            )
            .env("HLS_RELAY_SERVER__URL_KEY", URL_KEY)
            .env("HLS_RELAY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("HLS_RELAY_SERVER__SHUTDOWN_GRACE", "5s")
            .env("HLS_RELAY_CLUSTER__REDIS_URL", self.redis.url())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the relay binary starts");
        let process = Process(child);
        let ready = self.relay_url(instance, "/readyz");
        let http = &self.http;
        eventually(&format!("relay {instance} is ready"), || async {
            http.get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        process
    }

    async fn text(&self, url: &str) -> String {
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        response.text().await.unwrap()
    }

    /// The relay path of the first media playlist of `call`, through the edge, and its text.
    async fn media_playlist(&self, call: &str) -> (String, String) {
        let entry = format!("/hls/livestream/{call}/index.m3u8");
        let master = self.text(&self.edge_url(&entry)).await;
        let path = resolve(&entry, uri_lines(&master)[0]);
        let media = self.text(&self.edge_url(&path)).await;
        (path, media)
    }

    async fn webhook(&self, instance: usize, kind: &str, call: &str, created_at: &str) {
        let body = serde_json::json!({"type": kind, "call_cid": format!("livestream:{call}"),
            "created_at": created_at})
        .to_string();
        let signature = webhook::sign(self.sim.api_secret().as_bytes(), body.as_bytes());
        let response = self
            .http
            .post(self.relay_url(instance, "/v1/webhooks/stream"))
            .header("x-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// The relay that answered `path` last, from the edge's access log (`relay="127.0.0.1:PORT"`).
    fn relay_serving(&self, path: &str) -> Option<usize> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let line = log.lines().rev().find(|line| line.contains(path))?;
        let port: u16 = line
            .split("relay=\"127.0.0.1:")
            .nth(1)?
            .split('"')
            .next()?
            .parse()
            .ok()?;
        self.relay_ports.iter().position(|p| *p == port)
    }

    fn signal(&self, instance: usize, signal: &str) {
        let relay = self.relays[instance].as_ref().expect("running");
        let status = Command::new("kill")
            .args([signal, &relay.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// nginx with `deploy/nginx/edge.conf`, rendered for `relays` by `deploy/nginx/render-edge.sh`.
async fn start_edge(nginx: &Path, dir: &Path, port: u16, relays: &[u16]) -> Process {
    let root = env!("CARGO_MANIFEST_DIR");
    let relays: Vec<String> = relays.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let rendered = Command::new(format!("{root}/deploy/nginx/render-edge.sh"))
        .arg(format!("127.0.0.1:{port}"))
        .args(&relays)
        .output()
        .expect("render-edge.sh runs");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let config = dir.join("edge.conf");
    std::fs::write(&config, rendered.stdout).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(format!("{}/", dir.display()))
        .arg("-c")
        .arg(&config)
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let process = Process(child);
    eventually("the edge listens", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    process
}

#[tokio::test]
#[ignore = "fleet suite (slow): cargo test --test fleet -- --ignored"]
async fn a_webhook_to_one_instance_ends_the_broadcast_on_every_instance() {
    let Some(fleet) = Fleet::start(Duration::from_secs(60)).await else {
        return;
    };
    let (media_path, live) = fleet.media_playlist("ts").await;
    assert!(!live.contains("#EXT-X-ENDLIST"));
    let mut pages = Vec::new();
    for instance in 1..3 {
        // The same playlist on each instance directly: each has it cached, live.
        let direct = fleet.text(&fleet.relay_url(instance, &media_path)).await;
        assert!(!direct.contains("#EXT-X-ENDLIST"));
        let url = fleet.relay_url(instance, "/v1/calls/livestream/ts/events");
        let mut page = SseReader::from_url(&url).await;
        assert_eq!(page.next().await.0, "state");
        pages.push(page);
    }
    let sent = Instant::now();
    fleet
        .webhook(0, "call.broadcasting_stopped", "ts", "2026-12-03T10:00:00Z")
        .await;
    for page in &mut pages {
        assert_eq!(page.next().await.0, "broadcasting_stopped");
    }
    eprintln!(
        "instances 2 and 3 told their pages after {} ms",
        sent.elapsed().as_millis()
    );
    for instance in 1..3 {
        let ended = fleet.text(&fleet.relay_url(instance, &media_path)).await;
        assert!(ended.contains("#EXT-X-ENDLIST"), "instance {instance}");
    }
}

#[tokio::test]
#[ignore = "fleet suite (slow): cargo test --test fleet -- --ignored"]
async fn three_instances_watching_fifty_calls_ask_the_api_once_per_call_ttl() {
    let call_ttl = Duration::from_secs(3);
    let Some(fleet) = Fleet::start(call_ttl).await else {
        return;
    };
    let calls: Vec<String> = (0..50).map(|n| format!("w{n}")).collect();
    for call in &calls {
        fleet.sim.add_call("livestream", call, CallSetup::default());
    }
    let before = fleet.sim.api_requests();
    let started = Instant::now();
    // Every instance has a page watching every call: each instance alone would poll each call every call_ttl.
    let mut pages = Vec::new();
    for instance in 0..3 {
        for call in &calls {
            let url = fleet.relay_url(instance, &format!("/v1/calls/livestream/{call}/events"));
            let mut page = SseReader::from_url(&url).await;
            assert_eq!(page.next().await.0, "state");
            pages.push(page);
        }
    }
    let watched = Duration::from_secs(30);
    tokio::time::sleep(watched.saturating_sub(started.elapsed())).await;
    let requests = fleet.sim.api_requests() - before;
    let periods = started.elapsed().as_secs_f64() / call_ttl.as_secs_f64();
    let bound = (calls.len() as f64 * (periods + 2.0)) as u64;
    eprintln!(
        "3 instances watching 50 calls for {:.0} s: {requests} GetCall requests ({:.1} per call per call_ttl; \
         bound {bound}; three lone instances would make about {:.0})",
        started.elapsed().as_secs_f64(),
        requests as f64 / calls.len() as f64 / periods,
        3.0 * calls.len() as f64 * periods
    );
    assert!(requests <= bound, "{requests} > {bound}");
    drop(pages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fleet suite (slow): cargo test --test fleet -- --ignored"]
async fn three_hundred_viewers_through_the_edge_fetch_each_segment_once_in_total() {
    let Some(fleet) = Fleet::start(Duration::from_secs(3)).await else {
        return;
    };
    let (media_path, media) = fleet.media_playlist("ts").await;
    let segments: Vec<String> = uri_lines(&media)
        .iter()
        .map(|u| resolve(&media_path, u))
        .collect();
    assert!(segments.len() >= 3);
    let viewers = (0..300).map(|_| {
        let (fleet, segments) = (&fleet, &segments);
        async move {
            for segment in segments {
                let response = fleet
                    .http
                    .get(fleet.edge_url(segment))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{segment}");
                response.bytes().await.unwrap();
            }
        }
    });
    futures_util::future::join_all(viewers).await;
    for segment in &segments {
        let upstream = upstream_of(segment).path().to_owned();
        assert_eq!(
            fleet.sim.origin_requests(&upstream),
            1,
            "{upstream}: 300 viewers through the edge, one upstream fetch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fleet suite (slow): cargo test --test fleet -- --ignored"]
async fn a_player_through_the_edge_plays_on_when_an_instance_is_killed() {
    if !tool_available("ffmpeg", "-version", "apt-get install ffmpeg") {
        return;
    }
    let Some(mut fleet) = Fleet::start(Duration::from_secs(3)).await else {
        return;
    };
    let (media_path, _) = fleet.media_playlist("ts").await;
    let player = tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-rw_timeout",
            "10000000",
        ])
        .arg("-i")
        .arg(fleet.edge_url("/hls/livestream/ts/index.m3u8"))
        .args(["-map", "0:v:0", "-t", "14", "-f", "null", "-"])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Once the player is into the stream, kill the instance that serves its media playlist.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let victim = fleet.relay_serving(&media_path).unwrap_or(0);
    fleet.signal(victim, "-KILL");
    fleet.relays[victim] = None;
    let output = tokio::time::timeout(Duration::from_secs(60), player.wait_with_output())
        .await
        .expect("ffmpeg finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ffmpeg failed after relay {victim} was killed: {stderr}"
    );
    assert!(!stderr.contains("HTTP error"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fleet suite (slow): cargo test --test fleet -- --ignored"]
async fn a_rolling_restart_loses_no_request_that_had_started() {
    let Some(mut fleet) = Fleet::start(Duration::from_secs(3)).await else {
        return;
    };
    let (media_path, media) = fleet.media_playlist("ts").await;
    let mut paths = vec![
        media_path.clone(),
        "/hls/livestream/ts/index.m3u8".to_owned(),
    ];
    paths.extend(uri_lines(&media).iter().map(|u| resolve(&media_path, u)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Viewers keep fetching through the edge while every instance is restarted in turn.
    let viewers: Vec<_> = (0..8)
        .map(|viewer| {
            let (http, urls, stop, completed) = (
                fleet.http.clone(),
                paths.iter().map(|p| fleet.edge_url(p)).collect::<Vec<_>>(),
                stop.clone(),
                completed.clone(),
            );
            tokio::spawn(async move {
                let (mut done, mut failures) = (0u64, Vec::new());
                let mut next = viewer;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let url = &urls[next % urls.len()];
                    next += 1;
                    match http.get(url).send().await {
                        Ok(response) if response.status() == 200 => match response.bytes().await {
                            Ok(_) => {
                                done += 1;
                                completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(error) => failures.push(format!("{url}: body cut: {error}")),
                        },
                        Ok(response) => failures.push(format!("{url}: {}", response.status())),
                        Err(error) => failures.push(format!("{url}: {error}")),
                    }
                }
                (done, failures)
            })
        })
        .collect();
    let count = || completed.load(std::sync::atomic::Ordering::Relaxed);
    eventually("viewers are under way", || async { count() > 0 }).await;
    let before_restarts = count();
    for instance in 0..3 {
        fleet.signal(instance, "-TERM");
        let mut relay = fleet.relays[instance].take().unwrap();
        let exited = tokio::task::spawn_blocking(move || {
            let status = relay.0.wait();
            std::mem::forget(relay);
            status
        })
        .await
        .unwrap()
        .unwrap();
        assert!(
            exited.success(),
            "relay {instance} exits cleanly on SIGTERM: {exited}"
        );
        let restarted = fleet.start_relay(instance).await;
        fleet.relays[instance] = Some(restarted);
    }
    let during_restarts = count() - before_restarts;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut done, mut failures) = (0, Vec::new());
    for viewer in viewers {
        let (viewer_done, viewer_failures) = viewer.await.unwrap();
        done += viewer_done;
        failures.extend(viewer_failures);
    }
    eprintln!(
        "rolling restart of 3 instances: {done} requests through the edge ({during_restarts} while \
         instances restarted), {} failed",
        failures.len()
    );
    assert!(
        during_restarts > 0,
        "requests were made while instances restarted"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fleet suite (slow): cargo test --test fleet -- --ignored"]
async fn without_redis_the_fleet_serves_on_and_fans_out_again_once_it_is_back() {
    let Some(mut fleet) = Fleet::start(Duration::from_secs(60)).await else {
        return;
    };
    let (media_path, _) = fleet.media_playlist("ts").await;
    fleet.redis.kill();
    for instance in 0..3 {
        let url = fleet.relay_url(instance, "/readyz");
        let http = &fleet.http;
        eventually(
            &format!("relay {instance} notices Redis is gone"),
            || async {
                let ready: serde_json::Value =
                    http.get(&url).send().await.unwrap().json().await.unwrap();
                ready["redis"] == "unreachable"
            },
        )
        .await;
    }
    // Viewers through the edge see no error.
    for path in ["/hls/livestream/ts/index.m3u8", media_path.as_str()] {
        fleet.text(&fleet.edge_url(path)).await;
    }

    fleet.redis.restart().await;
    for instance in 0..3 {
        let url = fleet.relay_url(instance, "/readyz");
        let http = &fleet.http;
        eventually(&format!("relay {instance} rejoins"), || async {
            let ready: serde_json::Value =
                http.get(&url).send().await.unwrap().json().await.unwrap();
            ready["redis"] == "connected"
        })
        .await;
    }
    let url = fleet.relay_url(2, "/v1/calls/livestream/ts/events");
    let mut page = SseReader::from_url(&url).await;
    assert_eq!(page.next().await.0, "state");
    fleet
        .webhook(0, "call.broadcasting_stopped", "ts", "2026-12-03T10:00:00Z")
        .await;
    assert_eq!(
        page.next().await.0,
        "broadcasting_stopped",
        "fan-out resumed, no relay restarted"
    );
}
