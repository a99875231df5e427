//! Real-browser tests of the web embed: headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `tests/browser/play.mjs`) opens `/embed/{type}/{id}` and watches the broadcast through the relay: the video
//! plays (its clock advances, frames decode) for MPEG-TS and fMP4 streams, waits for a broadcast that has not
//! started, and says when the broadcast ends or fails.
//!
//! CI installs Chromium and Node (`.ci/run`); elsewhere the browser tests say what is missing and stop. The npm
//! packages (playwright-core, hls.js) are installed into `tests/browser/node_modules` on first use.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use hls_relay::config::Config;
use hls_relay::sim::CallSetup;
use tokio::io::{AsyncBufReadExt, BufReader};

/// One browser at a time: on a small shared machine, parallel Chromiums starve each other's decoders and
/// playback checks then fail for reasons that have nothing to do with the relay.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound on one run of `play.mjs` (it has its own, shorter deadline; this one catches a wedged Node).
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn hls_js_file() -> PathBuf {
    browser_dir().join("node_modules/hls.js/dist/hls.min.js")
}

/// Makes the embed page load hls.js from the relay (`/embed/hls.min.js`, the npm package's file): the tests
/// have no internet, so the default CDN URL would not load.
fn local_hls_js(config: &mut Config) {
    config.embed.hls_js_path = Some(hls_js_file());
}

/// What a browser run needs, or None (after saying what is missing) where this machine cannot run one. In CI
/// a missing piece is a failure: `.ci/run` installs them.
async fn browser_ready() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    let guard = ONE_BROWSER.lock().await;
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing = if !Path::new(&chromium).is_file() {
        Some(format!(
            "no Chromium at {chromium} (apt-get install chromium, or set CHROMIUM)"
        ))
    } else if !runs("node", &["--version"]).await {
        Some("Node.js is not installed (apt-get install nodejs npm)".into())
    } else {
        install_npm_packages().await.err()
    };
    match missing {
        None => Some(guard),
        Some(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to run the browser tests (see .ci/run): {why}"
            );
            eprintln!("skipping the real-browser check: {why}");
            None
        }
    }
}

async fn runs(program: &str, args: &[&str]) -> bool {
    let status = tokio::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(20), status).await,
        Ok(Ok(status)) if status.success()
    )
}

/// `npm ci` in `tests/browser` unless its packages are there (the caller holds the browser lock, so at most one
/// install runs).
async fn install_npm_packages() -> Result<(), String> {
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
        && hls_js_file().is_file()
    {
        return Ok(());
    }
    eprintln!("installing the browser tests' npm packages (npm ci in tests/browser)");
    let output = tokio::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(300), output).await {
        Ok(Ok(output)) if output.status.success() => Ok(()),
        Ok(Ok(output)) => Err(format!(
            "npm ci in tests/browser failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )),
        Ok(Err(error)) => Err(format!("npm cannot run ({error}): apt-get install npm")),
        Err(_) => Err("npm ci in tests/browser took over 5 minutes".into()),
    }
}

/// Runs `play.mjs` on `url` (with `options` such as `--iframe`), expecting the page to go through `states` in
/// order; `on_reached` is called as each one is reached (to act on the broadcast then). Returns the findings;
/// panics with them if the run failed.
async fn play(
    url: &str,
    options: &[&str],
    states: &[&str],
    mut on_reached: impl FnMut(&str),
) -> serde_json::Value {
    let mut child = tokio::process::Command::new("node")
        .arg("play.mjs")
        .arg(url)
        .args(["--expect", &states.join(","), "--timeout", "60"])
        .args(options)
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let run = async {
        let mut lines = BufReader::new(stdout).lines();
        let mut findings = None;
        while let Some(line) = lines.next_line().await.expect("play.mjs output") {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                eprintln!("play.mjs: {line}");
                continue;
            };
            if let Some(state) = value["reached"].as_str() {
                eprintln!("play.mjs reached {state}: {line}");
                on_reached(state);
            } else if value.get("ok").is_some() {
                findings = Some(value);
            }
        }
        let status = child.wait().await.expect("play.mjs exits");
        let mut errors = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut errors)
            .await
            .ok();
        (status, findings, errors)
    };
    let (status, findings, errors) = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("play.mjs finishes in time");
    let findings = findings.unwrap_or_else(|| panic!("play.mjs printed no findings: {errors}"));
    assert!(
        status.success() && findings["ok"] == true,
        "the page did not go through {states:?} at {url}:\n{findings:#}\n{errors}"
    );
    findings
}

/// The findings recorded when the page reached `state`.
fn at<'a>(findings: &'a serde_json::Value, state: &str) -> &'a serde_json::Value {
    findings["reached"]
        .as_array()
        .and_then(|reached| reached.iter().find(|r| r["state"] == state))
        .unwrap_or_else(|| panic!("no {state} in {findings:#}"))
}

fn assert_played(findings: &serde_json::Value) {
    let playing = at(findings, "playing");
    assert_eq!(playing["engine"], "hls.js", "{findings:#}");
    assert!(
        playing["advancedBy"].as_f64().unwrap() >= 1.5,
        "{findings:#}"
    );
    assert!(
        playing["framesDecoded"].as_u64().unwrap() > 0,
        "{findings:#}"
    );
    assert!(playing["videoWidth"].as_u64().unwrap() > 0, "{findings:#}");
}

async fn plays(call: &str, options: &[&str]) -> Option<serde_json::Value> {
    let _browser = browser_ready().await?;
    let world = World::start_with(local_hls_js).await;
    let url = world.url(&format!("/embed/livestream/{call}"));
    let findings = play(&url, options, &["playing"], |_| {}).await;
    assert_played(&findings);
    Some(findings)
}

/// As a viewer on another site sees it: the page in an `<iframe>` there (the README's snippet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_an_mpeg_ts_broadcast_in_an_iframe_on_another_site() {
    if let Some(findings) = plays("ts", &["--iframe"]).await {
        assert_eq!(findings["inIframe"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_an_fmp4_broadcast_in_the_embed() {
    plays("fmp4", &[]).await;
}

/// LL-HLS (EXT-X-PART, blocking reloads, preload hints) through the embed: hls.js plays it in low-latency mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_an_ll_hls_broadcast_in_the_embed() {
    let Some(_browser) = browser_ready().await else {
        return;
    };
    let world = World::start_with(local_hls_js).await;
    let low_latency = CallSetup {
        flavour: Flavour::Fmp4,
        low_latency: true,
        ..CallSetup::default()
    };
    world.sim.add_call("livestream", "ll", low_latency);
    let url = world.url("/embed/livestream/ll");
    let findings = play(&url, &[], &["playing"], |_| {}).await;
    assert_played(&findings);
    let playing = at(&findings, "playing");
    assert_eq!(playing["lowLatencyMode"], true, "{findings:#}");
    assert!(
        playing["parts"].as_u64().unwrap() > 0,
        "hls.js saw the parts: {findings:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_waits_for_the_broadcast_then_plays_it() {
    let Some(_browser) = browser_ready().await else {
        return;
    };
    // No webhooks here: the relay learns of the start by asking the API every call_ttl.
    let world = World::start_with(|c| {
        local_hls_js(c);
        c.stream.call_ttl = Duration::from_millis(300);
    })
    .await;
    let off_air = CallSetup {
        broadcasting: false,
        ..CallSetup::default()
    };
    world.sim.add_call("livestream", "later", off_air);
    let findings = play(
        &world.url("/embed/livestream/later"),
        &[],
        &["waiting", "playing"],
        |state| {
            if state == "waiting" {
                assert!(world.sim.start_broadcasting("livestream", "later"));
            }
        },
    )
    .await;
    assert_eq!(
        at(&findings, "waiting")["status"],
        "Waiting for the broadcast to start…"
    );
    assert_played(&findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_shows_the_end_of_the_broadcast() {
    let Some(_browser) = browser_ready().await else {
        return;
    };
    // The relay learns of the stop by asking the API every call_ttl, and the page from the state stream.
    let world = World::start_with(|c| {
        local_hls_js(c);
        c.stream.call_ttl = Duration::from_millis(300);
    })
    .await;
    let findings = play(
        &world.url("/embed/livestream/ts"),
        &[],
        &["playing", "ended"],
        |state| {
            if state == "playing" {
                assert!(world.sim.stop_broadcasting("livestream", "ts"));
            }
        },
    )
    .await;
    assert_played(&findings);
    let ended = at(&findings, "ended");
    assert_eq!(ended["status"], "The broadcast has ended");
    // The page played the tail out to the EXT-X-ENDLIST the relay added, rather than giving up on a stall.
    assert_eq!(ended["endedBy"], "media-ended", "{findings:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_says_when_the_broadcast_failed() {
    let Some(_browser) = browser_ready().await else {
        return;
    };
    // Only Stream's webhook says a broadcast failed (the API just says it stopped): the simulator delivers it,
    // signed, to the relay, which trusts its look-ups for a minute so the webhook alone changes the state.
    let world = World::start_with(|c| {
        local_hls_js(c);
        c.stream.call_ttl = Duration::from_secs(60);
    })
    .await;
    world
        .sim
        .set_webhook_url(Some(world.url("/v1/webhooks/stream")));
    let findings = play(
        &world.url("/embed/livestream/fmp4"),
        &[],
        &["playing", "failed"],
        |state| {
            if state == "playing" {
                assert!(world.sim.fail_broadcasting("livestream", "fmp4"));
            }
        },
    )
    .await;
    assert_eq!(at(&findings, "failed")["status"], "The broadcast failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_says_when_there_is_no_such_call() {
    let Some(_browser) = browser_ready().await else {
        return;
    };
    // The state stream refuses an unknown call (404), so the page falls back to polling, which says why.
    let world = World::start_with(local_hls_js).await;
    let url = world.url("/embed/livestream/nosuchcall");
    let findings = play(&url, &[], &["error"], |_| {}).await;
    assert_eq!(at(&findings, "error")["status"], "This call does not exist");
}

/// The page itself, without a browser: frameable HTML with a strict policy, and the local hls.js.
#[tokio::test]
async fn the_embed_page_is_frameable_html_with_a_strict_policy() {
    let world = World::start_with(local_hls_js).await;
    let response = world.get("/embed/livestream/ts").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert!(!headers.contains_key("x-frame-options"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors *"), "{csp}");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let page = response.text().await.unwrap();
    assert!(page.contains("<title>Live: livestream:ts</title>"));
    assert!(page.contains(r#"<script src="../hls.min.js"></script>"#));

    // The npm package is there once any browser test ran (or `npm ci`); without it the route says so.
    if let Ok(file) = std::fs::read(hls_js_file()) {
        let hls_js = world.get("/embed/hls.min.js").await;
        assert_eq!(hls_js.status(), 200);
        assert!(
            hls_js.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        assert!(hls_js.bytes().await.unwrap() == file);
    } else {
        world
            .expect_error("/embed/hls.min.js", 404, "not_found")
            .await;
    }

    world
        .expect_error("/embed/livestream/Not%20Valid", 400, "bad_request")
        .await;
    world
        .expect_error("/embed/livestream/ts/extra", 404, "not_found")
        .await;
}
