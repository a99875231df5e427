//! `hls-relay call …`: the real binary against the simulated Stream API, checked through the simulator's state.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hls_relay::sim::{self, CallSetup, SimConfig, SimHandle};
use serde_json::Value;

/// Upper bound on one command; they make at most two API requests on loopback.
const PATIENCE: Duration = Duration::from_secs(20);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

async fn simulator() -> SimHandle {
    sim::start(SimConfig::default())
        .await
        .expect("simulator starts")
}

/// Runs `hls-relay call ARGS` with the simulator's credentials in the environment, as an operator would.
async fn call(sim: &SimHandle, args: &[&str]) -> Run {
    hls_relay_call(
        args,
        &[
            ("STREAM_API_KEY", sim.api_key()),
            ("STREAM_API_SECRET", sim.api_secret()),
            ("HLS_RELAY_STREAM__BASE_URL", &sim.base_url()),
        ],
    )
    .await
}

/// Runs `hls-relay call ARGS` with only `env`: nothing from the test's own environment leaks in.
async fn hls_relay_call(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hls-relay"));
    command
        .arg("call")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .unwrap_or_else(|_| panic!("`hls-relay call {}` timed out", args.join(" ")))
        .expect("hls-relay runs");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The call's state as the simulator's API reports it to a server token.
async fn state(sim: &SimHandle, id: &str) -> Value {
    let run = call(sim, &["get", "livestream", id, "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()["call"].clone()
}

fn idle() -> CallSetup {
    CallSetup {
        broadcasting: false,
        ..CallSetup::default()
    }
}

#[tokio::test]
async fn get_shows_state_and_playlist_url() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", CallSetup::default());
    let playlist = sim.playlist_url("livestream", "abc").unwrap();

    let run = call(&sim, &["get", "livestream", "abc"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "call          livestream:abc\nbackstage     no\nbroadcasting  yes\nplaylist URL  {playlist}\n"
        )
    );
}

#[tokio::test]
async fn get_of_an_idle_call_says_it_is_not_broadcasting() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", idle());
    let run = call(&sim, &["get", "livestream", "abc"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("broadcasting  no\n"), "{}", run.stdout);
    assert!(
        run.stdout.contains("playlist URL  none (not broadcasting)"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn get_json_prints_streams_response() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", CallSetup::default());
    let run = call(&sim, &["get", "livestream", "abc", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let body = run.json();
    assert_eq!(body["call"]["cid"], "livestream:abc");
    assert_eq!(body["call"]["egress"]["broadcasting"], true);
    assert_eq!(
        body["call"]["egress"]["hls"]["playlist_url"].as_str(),
        sim.playlist_url("livestream", "abc").as_deref()
    );
    assert!(body["own_capabilities"].is_array(), "{body}");
}

#[tokio::test]
async fn start_hls_starts_broadcasting_and_prints_the_playlist_url() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", idle());

    let run = call(&sim, &["start-hls", "livestream", "abc"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let playlist = sim
        .playlist_url("livestream", "abc")
        .expect("the simulator broadcasts");
    assert!(
        run.stdout
            .starts_with("HLS broadcasting started for livestream:abc\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("broadcasting  yes\n"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("playlist URL  {playlist}\n")),
        "{}",
        run.stdout
    );
    assert_eq!(state(&sim, "abc").await["egress"]["broadcasting"], true);
}

#[tokio::test]
async fn start_hls_json_reports_ok_and_the_new_state() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", idle());
    let run = call(&sim, &["start-hls", "livestream", "abc", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let body = run.json();
    assert_eq!(body["ok"], true);
    assert_eq!(body["call"]["egress"]["broadcasting"], true);
    assert_eq!(
        body["call"]["egress"]["hls"]["playlist_url"].as_str(),
        sim.playlist_url("livestream", "abc").as_deref()
    );
}

#[tokio::test]
async fn stop_hls_stops_broadcasting() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", CallSetup::default());
    let run = call(&sim, &["stop-hls", "livestream", "abc"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("HLS broadcasting stopped for livestream:abc\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("broadcasting  no\n"), "{}", run.stdout);
    assert_eq!(state(&sim, "abc").await["egress"]["broadcasting"], false);
}

#[tokio::test]
async fn go_live_with_start_hls_takes_a_backstage_call_live_and_broadcasting() {
    let sim = simulator().await;
    sim.add_call(
        "livestream",
        "show",
        CallSetup {
            backstage: true,
            broadcasting: false,
            ..CallSetup::default()
        },
    );
    assert_eq!(state(&sim, "show").await["backstage"], true);

    let run = call(&sim, &["go-live", "livestream", "show", "--start-hls"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("livestream:show is live, with HLS broadcasting started\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("backstage     no\n"), "{}", run.stdout);
    let playlist = sim.playlist_url("livestream", "show").unwrap();
    assert!(run.stdout.contains(&playlist), "{}", run.stdout);
    let after = state(&sim, "show").await;
    assert_eq!(after["backstage"], false);
    assert_eq!(after["egress"]["broadcasting"], true);
}

#[tokio::test]
async fn stop_live_returns_to_backstage_and_stops_hls() {
    let sim = simulator().await;
    sim.add_call("livestream", "show", CallSetup::default());
    let run = call(&sim, &["stop-live", "livestream", "show", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let body = run.json();
    assert_eq!(body["ok"], true);
    assert_eq!(body["call"]["backstage"], true);
    assert_eq!(body["call"]["egress"]["broadcasting"], false);
    let after = state(&sim, "show").await;
    assert_eq!(after["backstage"], true);
    assert_eq!(after["egress"]["broadcasting"], false);
}

#[tokio::test]
async fn an_unknown_call_fails_with_streams_message() {
    let sim = simulator().await;
    for command in ["get", "start-hls", "stop-hls", "go-live", "stop-live"] {
        let run = call(&sim, &[command, "livestream", "nope"]).await;
        assert_eq!(run.code, 1, "{command}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{command}: {}", run.stdout);
        assert!(
            run.stderr.contains("HTTP 404, code 16")
                && run.stderr.contains("Can't find call with id nope"),
            "{command}: {}",
            run.stderr
        );
    }

    let run = call(&sim, &["get", "livestream", "nope", "--json"]).await;
    assert_eq!(run.code, 1);
    let error = &run.json()["error"];
    assert_eq!(error["status"], 404);
    assert_eq!(error["code"], 16);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("Can't find call with id nope")),
        "{error}"
    );
}

#[tokio::test]
async fn a_user_without_the_capability_is_refused_with_its_name() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", idle());
    sim.add_user("viewer-1", "user");
    let viewer = sim.user_token("viewer-1");

    let run = call(
        &sim,
        &["start-hls", "livestream", "abc", "--user-token", &viewer],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("HTTP 403") && run.stderr.contains("start-broadcast-call"),
        "{}",
        run.stderr
    );
    assert_eq!(sim.playlist_url("livestream", "abc"), None);

    sim.start_broadcasting("livestream", "abc");
    let run = call(
        &sim,
        &[
            "stop-hls",
            "livestream",
            "abc",
            "--json",
            "--user-token",
            &viewer,
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    let error = &run.json()["error"];
    assert_eq!(error["status"], 403);
    assert_eq!(error["code"], 17);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("stop-broadcast-call")),
        "{error}"
    );
    assert_eq!(state(&sim, "abc").await["egress"]["broadcasting"], true);
}

#[tokio::test]
async fn a_host_user_token_needs_no_api_secret() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", idle());
    sim.add_user("anna", "host");
    let host = sim.user_token("anna");
    let base_url = sim.base_url();
    let run = hls_relay_call(
        &["start-hls", "livestream", "abc"],
        &[
            ("STREAM_API_KEY", sim.api_key()),
            ("HLS_RELAY_STREAM__BASE_URL", &base_url),
            ("STREAM_USER_TOKEN", &host),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(sim.playlist_url("livestream", "abc").is_some());
}

#[tokio::test]
async fn a_config_file_supplies_credentials_and_base_url() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", CallSetup::default());
    let file = temp_file(
        "call-config.toml",
        &format!(
            "[stream]\nbase_url = \"{}\"\napi_key = \"{}\"\napi_secret = \"{}\"\n",
            sim.base_url(),
            sim.api_key(),
            sim.api_secret()
        ),
    );
    let path = file.to_str().unwrap();
    let run = hls_relay_call(&["get", "livestream", "abc", "--config", path], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("broadcasting  yes"), "{}", run.stdout);
    std::fs::remove_file(file).ok();
}

#[tokio::test]
async fn missing_credentials_and_bad_ids_are_usage_errors() {
    let run = hls_relay_call(&["get", "livestream", "abc"], &[]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("STREAM_API_KEY") && run.stderr.contains("hls-relay demo"),
        "{}",
        run.stderr
    );

    let run_json = hls_relay_call(&["get", "livestream", "abc", "--json"], &[]).await;
    assert_eq!(run_json.code, 2);
    assert!(
        run_json.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("STREAM_API_KEY")),
        "{}",
        run_json.stdout
    );

    let sim = simulator().await;
    let run = call(&sim, &["get", "Live Stream", "abc"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("call type"), "{}", run.stderr);
    assert_eq!(sim.api_requests(), 0);
}

#[tokio::test]
async fn a_wrong_secret_is_reported_as_streams_401() {
    let sim = simulator().await;
    sim.add_call("livestream", "abc", CallSetup::default());
    let base_url = sim.base_url();
    let run = hls_relay_call(
        &["get", "livestream", "abc"],
        &[
            ("STREAM_API_KEY", sim.api_key()),
            ("STREAM_API_SECRET", "not-the-secret"),
            ("HLS_RELAY_STREAM__BASE_URL", &base_url),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("HTTP 401, code 43") && run.stderr.contains("signature is not valid"),
        "{}",
        run.stderr
    );
}

/// A file of this test binary's own in the temp directory (the process id keeps parallel runs apart).
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("hls-relay-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("temp file is writable");
    path
}
