//! Stream's official Python SDK (`getstream`, pinned in `.ci/run`) as a real client of the simulator: the SDK's
//! server token, every HLS operation, its models parsing the answers (every required field, times as it reads
//! them), its error type, and its webhook verification on plain and gzipped deliveries. The relay then plays the
//! broadcast the SDK started. `tests/sdk/conformance.py` drives the SDK and reports; the assertions are here.
//!
//! Without the SDK the test says so and skips, except in CI (`CI` set), where it fails.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use hls_relay::sim::{self, SimConfig, SimHandle};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/conformance.py");
/// The driver makes a handful of loopback requests; this only bounds a hung interpreter.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether `python3` can import the SDK. CI must have it (`.ci/run` installs it).
fn sdk_installed() -> bool {
    python_module_available("getstream", "python3 -m pip install 'getstream==7.0.0'")
}

/// Runs the driver against the simulator with `args`, feeding it `input`, and returns its JSON report.
async fn driver(sim: &SimHandle, args: &[&str], input: &[u8]) -> Value {
    let mut child = tokio::process::Command::new("python3")
        .arg(DRIVER)
        .args(args)
        .env("STREAM_API_KEY", sim.api_key())
        .env("STREAM_API_SECRET", sim.api_secret())
        .env("STREAM_BASE_URL", sim.base_url())
        // The SDK's HTTP client honours proxy variables; the simulator is on loopback.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input)
        .await
        .expect("driver reads its input");
    drop(stdin);
    let output = tokio::time::timeout(DRIVER_TIMEOUT, child.wait_with_output())
        .await
        .expect("driver finishes")
        .expect("driver runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "driver {args:?} failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "driver {args:?} printed no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A step of the report, asserted to have succeeded.
fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    let result = &report[name];
    assert!(
        result.is_object() && result.get("error").is_none(),
        "{name}: {result}"
    );
    result
}

/// A time the SDK parsed, in seconds since the epoch, is today's: the simulator's unit is the SDK's (nanoseconds
/// read as milliseconds would be 1970, milliseconds read as nanoseconds far in the future).
fn assert_today(seconds: &Value, what: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let at = seconds
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a datetime: {seconds}"));
    assert!((at - now).abs() < 86_400.0, "{what}: {at} is not today");
}

/// A webhook receiver on loopback that keeps every request's headers and raw body and answers 200.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        let got = receiver.got.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let got = got.clone();
            async move { got.lock().unwrap().push((headers, body)) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn deliveries(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<(HeaderMap, Bytes)> {
        eventually(&format!("{count} webhook deliveries"), || async {
            self.deliveries().len() >= count
        })
        .await;
        self.deliveries()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_drives_the_simulator_and_the_relay_plays_what_it_started() {
    if !sdk_installed() {
        return;
    }
    // The `call.hls_*` names are the ones the SDK's models know (it reads others as `UnknownEvent`).
    let sim = sim::start(SimConfig {
        new_event_names: true,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let (receiver, webhook_url) = Receiver::start().await;
    sim.set_webhook_url(Some(webhook_url));
    sim.add_call(
        "livestream",
        "sdk",
        CallSetup {
            broadcasting: false,
            backstage: true,
            ..CallSetup::default()
        },
    );

    let report = driver(&sim, &["api", "livestream", "sdk"], b"").await;
    assert_eq!(
        report["token_claims"],
        json!({}),
        "the SDK's server token has empty claims"
    );
    let before = step(&report, "get");
    assert_eq!(
        (&before["backstage"], &before["broadcasting"]),
        (&json!(true), &json!(false))
    );
    assert!(before["playlist_url"].is_null());
    for field in [
        "created_at",
        "updated_at",
        "created_by_created_at",
        "member_created_at",
    ] {
        assert_today(&before[field], field);
    }
    assert!(
        before["own_capabilities"]
            .as_array()
            .is_some_and(|caps| caps.contains(&json!("start-broadcast-call")))
    );
    let on_origin = |url: &Value| {
        url.as_str()
            .is_some_and(|u| u.starts_with(&sim.base_url()) && u.ends_with("/master.m3u8"))
    };
    assert!(on_origin(
        &step(&report, "start_hls_broadcasting")["playlist_url"]
    ));
    assert!(step(&report, "stop_hls_broadcasting")["duration"].is_string());
    let live = step(&report, "go_live");
    assert_eq!(
        (&live["backstage"], &live["broadcasting"]),
        (&json!(false), &json!(true))
    );
    assert_today(&live["live_started_at"], "live_started_at");
    let backstage = step(&report, "stop_live");
    assert_eq!(
        (&backstage["backstage"], &backstage["broadcasting"]),
        (&json!(true), &json!(true)),
        "continue_hls keeps HLS on"
    );
    let after = step(&report, "get_after");
    assert_eq!(after["broadcasting"], true);
    assert!(on_origin(&after["playlist_url"]));
    assert_eq!(after["playlist_url"], live["playlist_url"]);

    let missing = &report["get_unknown"];
    assert_eq!(
        (&missing["status"], &missing["code"]),
        (&json!(404), &json!(16)),
        "{missing}"
    );
    assert_eq!(
        missing["api_error_parsed"], true,
        "the SDK reads the error body as its APIError"
    );
    assert_eq!(missing["details"], json!([]));

    // The playlist URL the SDK read plays through the relay, and the relay's state agrees with the SDK's.
    let playlist_url = after["playlist_url"].as_str().unwrap_or_default();
    let relay = start_relay(&sim, |_| {}).await;
    let world = World {
        sim: sim.clone(),
        relay,
        http: client(),
    };
    let state: Value = world
        .get("/v1/calls/livestream/sdk")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state["call"]["egress"]["broadcasting"], true);
    assert_eq!(
        state["call"]["egress"]["hls"]["playlist_url"],
        world.url("/hls/livestream/sdk/index.m3u8")
    );
    let upstream = world
        .http
        .get(playlist_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let entry = world.playlist("/hls/livestream/sdk/index.m3u8").await;
    assert_eq!(
        uri_lines(&entry).len(),
        uri_lines(&upstream).len(),
        "the relay serves the variants of the playlist the SDK read:\n{entry}"
    );
    let (media_path, media) = world.first_media_playlist("sdk").await;
    let segment = resolve(&media_path, uri_lines(&media)[0]);
    assert_eq!(world.get(&segment).await.status(), 200, "{segment}");

    // Events of the SDK's operations arrive plain; then compression is switched on for two more.
    let plain = receiver.wait_for(4).await;
    sim.set_compress_webhooks(true);
    assert!(sim.stop_broadcasting("livestream", "sdk"));
    assert!(sim.end_call("livestream", "sdk"));
    let deliveries = receiver.wait_for(plain.len() + 2).await;
    let mut input: Vec<Value> = deliveries
        .iter()
        .map(|(headers, body)| {
            assert_eq!(header(headers, "x-api-key"), sim.api_key());
            assert_eq!(header(headers, "x-webhook-attempt"), "1");
            assert_eq!(header(headers, "x-webhook-id").len(), 36);
            json!({ "body_b64": BASE64.encode(body), "signature": header(headers, "x-signature") })
        })
        .collect();
    let encodings: Vec<&str> = deliveries
        .iter()
        .map(|(headers, _)| header(headers, "content-encoding"))
        .collect();
    assert_eq!(encodings, ["", "", "", "", "gzip", "gzip"]);
    // And one the SDK must refuse: a real body under another event's signature.
    input.push(json!({ "body_b64": input[1]["body_b64"], "signature": input[0]["signature"] }));

    let report = driver(&sim, &["webhooks"], &serde_json::to_vec(&input).unwrap()).await;
    let verified = report["verified"].as_array().cloned().unwrap_or_default();
    assert_eq!(verified.len(), input.len(), "{report}");
    let (accepted, refused) = verified.split_at(deliveries.len());
    let classes: Vec<&str> = accepted
        .iter()
        .map(|event| event["class"].as_str().unwrap_or_else(|| panic!("{event}")))
        .collect();
    assert_eq!(
        classes,
        [
            "CallHLSBroadcastingStartedEvent",
            "CallHLSBroadcastingStoppedEvent",
            "CallLiveStartedEvent",
            "CallHLSBroadcastingStartedEvent",
            "CallHLSBroadcastingStoppedEvent",
            "CallEndedEvent",
        ]
    );
    let mut previous = 0.0;
    for (event, encoding) in accepted.iter().zip(&encodings) {
        assert_eq!(event["gzip"], *encoding == "gzip", "{event}");
        assert_eq!(event["call_cid"], "livestream:sdk");
        assert_today(&event["created_at"], "created_at");
        let created = event["created_at"].as_f64().unwrap_or_default();
        assert!(created >= previous, "events in order: {event}");
        previous = created;
        if event["type"] == "call.hls_broadcasting_started" {
            assert!(on_origin(&event["hls_playlist_url"]), "{event}");
            assert_eq!(event["call_broadcasting"], true);
        }
    }
    assert!(
        refused[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("signature mismatch")),
        "{refused:?}"
    );
}
