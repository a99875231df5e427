//! Real-browser tests of the web embed: headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `tests/browser/play.mjs`) opens `/embed/{type}/{id}` and watches the broadcast through the relay: the video
//! plays (its clock advances, frames decode) for MPEG-TS and fMP4 streams, waits for a broadcast that has not
//! started, and says when the broadcast ends or fails. The browser reaches nothing but loopback (`--only-loopback`):
//! the page plays with the hls.js built into the relay, and `hls-relay demo`'s player page plays as printed.
//!
//! CI installs Chromium and Node (`.ci/run`); elsewhere the browser tests say what is missing and stop. The npm
//! packages (playwright-core, and hls.js to compare with the built-in copy) are installed into
//! `tests/browser/node_modules` on first use.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use hls_relay::http::embed::hls_js;
use hls_relay::sim::CallSetup;
use sha2::{Digest, Sha256};
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
/// order; `on_reached` is called as each one is reached (to act on the broadcast then). The browser can reach
/// loopback only, and any attempt to reach further fails the run. Returns the findings; panics with them if the
/// run failed.
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
        .arg("--only-loopback")
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
    assert_eq!(
        findings["blockedRequests"],
        serde_json::json!([]),
        "{findings:#}"
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
    let world = World::start().await;
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
    let world = World::start().await;
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

/// hls.js in the embed is one viewer (one session, whatever it reloads), and the page says so when asked
/// (`?viewers=1`), from its event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_is_one_viewer_and_shows_the_count() {
    let Some(_browser) = browser_ready().await else {
        return;
    };
    let world = World::start().await;
    let url = world.url("/embed/livestream/fmp4?viewers=1");
    let findings = play(&url, &["--viewers", "1 watching"], &["playing"], |_| {}).await;
    assert_played(&findings);
    assert_eq!(findings["viewers"], "1 watching", "{findings:#}");
    let state: serde_json::Value = world
        .get("/v1/calls/livestream/fmp4")
        .await
        .json()
        .await
        .unwrap();
    let viewers = &state["viewers"];
    assert_eq!(viewers["sessions"], 1, "{state}");
    assert_eq!(viewers["peak"], 1, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_waits_for_the_broadcast_then_plays_it() {
    let Some(_browser) = browser_ready().await else {
        return;
    };
    // No webhooks here: the relay learns of the start by asking the API every call_ttl.
    let world = World::start_with(|c| {
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
    let world = World::start().await;
    let url = world.url("/embed/livestream/nosuchcall");
    let findings = play(&url, &[], &["error"], |_| {}).await;
    assert_eq!(at(&findings, "error")["status"], "This call does not exist");
}

/// Issue 16, as a new user on a machine without internet tries it: `hls-relay demo` prints the player page, and
/// that page plays the demo call in Chromium with everything, hls.js included, from the relay on 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_player_page_plays_with_nothing_but_the_relay() {
    let Some(_browser) = browser_ready().await else {
        return;
    };
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_hls-relay"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("hls-relay demo starts");
    let mut lines = BufReader::new(demo.stdout.take().expect("piped")).lines();
    let printed = async {
        let (mut page, mut iframe, mut output) = (None, None, String::new());
        while let Some(line) = lines.next_line().await.expect("the demo's output") {
            if let Some(url) = line.trim().strip_prefix("Player page (web embed):") {
                page = Some(url.trim().to_owned());
            } else if line.trim_start().starts_with("<iframe src=") {
                iframe = Some(line.clone());
            }
            if let (Some(page), Some(iframe)) = (&page, &iframe) {
                return (page.clone(), iframe.clone());
            }
            output.push_str(&line);
            output.push('\n');
            if line.contains("Ctrl-C stops.") {
                break;
            }
        }
        panic!("the demo printed no player page and <iframe> snippet:\n{output}");
    };
    let (page, iframe) = tokio::time::timeout(Duration::from_secs(30), printed)
        .await
        .expect("the demo prints its URLs in time");
    assert!(
        iframe.contains(&format!(r#"<iframe src="{page}""#)),
        "{iframe}"
    );
    // The demo logs to stdout: keep reading, or a full pipe would stall it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let relay = page
        .strip_suffix("/embed/livestream/demo")
        .unwrap_or_else(|| panic!("the player page of livestream:demo, not {page}"));
    assert!(relay.starts_with("http://127.0.0.1:"), "{page}");
    let findings = play(&page, &[], &["playing"], |_| {}).await;
    assert_played(&findings);
    assert_eq!(
        findings["origins"],
        serde_json::json!([relay]),
        "{findings:#}"
    );
    assert_eq!(
        findings["scripts"],
        serde_json::json!([format!("{relay}{}", hls_js::VERSIONED_ROUTE)]),
        "{findings:#}"
    );
    demo.kill().await.ok();
}

/// The page itself, without a browser: frameable HTML whose policy allows the relay and nothing else.
#[tokio::test]
async fn the_embed_page_is_frameable_html_with_a_strict_policy() {
    let world = World::start().await;
    let response = world.get("/embed/livestream/ts").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert!(!headers.contains_key("x-frame-options"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors *"), "{csp}");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self' 'sha256-"), "{csp}");
    assert!(!csp.contains("http") && !csp.contains("unsafe-"), "{csp}");
    let page = response.text().await.unwrap();
    assert!(page.contains("<title>Live: livestream:ts</title>"));
    assert!(page.contains(&format!(
        r#"<script src="../hls-{}.min.js"></script>"#,
        hls_js::VERSION
    )));

    world
        .expect_error("/embed/livestream/Not%20Valid", 400, "bad_request")
        .await;
    world
        .expect_error("/embed/livestream/ts/extra", 404, "not_found")
        .await;
}

/// A client that shows the bytes as sent: no automatic `Accept-Encoding`, no decoding.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[tokio::test]
async fn the_relay_serves_its_hls_js_as_an_immutable_versioned_file() {
    let world = World::start().await;
    let http = raw_client();
    let versioned = world.url(hls_js::VERSIONED_ROUTE);
    assert_eq!(
        versioned,
        world.url(&format!("/embed/hls-{}.min.js", hls_js::VERSION))
    );

    let response = http.get(&versioned).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", hls_js::SHA256));
    assert!(!headers.contains_key("content-encoding"));
    let body = response.bytes().await.unwrap();
    assert_eq!(sha256_hex(&body), hls_js::SHA256);
    // The npm package the browser tests install (when they have run) is the same file.
    if let Ok(npm) = std::fs::read(hls_js_file()) {
        assert!(body == npm, "the built-in hls.js is the locked npm release");
    }

    let revalidated = http
        .get(&versioned)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);
    assert_eq!(revalidated.headers()["etag"], etag.as_str());

    // Compressed once for every viewer, with its own validator.
    let brotli = http
        .get(&versioned)
        .header("accept-encoding", "br, gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(brotli.status(), 200);
    assert_eq!(brotli.headers()["content-encoding"], "br");
    assert_eq!(brotli.headers()["vary"], "accept-encoding");
    assert_ne!(brotli.headers()["etag"], etag.as_str());
    let compressed = brotli.bytes().await.unwrap();
    assert!(compressed.len() < body.len() / 2);
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(
        &mut brotli::Decompressor::new(&compressed[..], 4096),
        &mut decoded,
    )
    .unwrap();
    assert!(decoded == body);

    // The unversioned URL still works, revalidated since its bytes change with the relay.
    let unversioned = http
        .get(world.url("/embed/hls.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(unversioned.status(), 200);
    assert_eq!(
        unversioned.headers()["cache-control"],
        "public, max-age=3600"
    );
    assert_eq!(unversioned.headers()["etag"], etag.as_str());
    assert!(unversioned.bytes().await.unwrap() == body);
}

#[tokio::test]
async fn a_local_file_or_a_cdn_replaces_the_built_in_hls_js() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hls.min.js");
    std::fs::write(&file, "/* a site's own hls.js build */").unwrap();
    let world = World::start_with(|c| c.embed.hls_js_path = Some(file.clone())).await;
    let page = world
        .get("/embed/livestream/ts")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<script src="../hls.min.js"></script>"#));
    let local = world.get("/embed/hls.min.js").await;
    assert_eq!(local.status(), 200);
    assert_eq!(local.headers()["cache-control"], "public, max-age=3600");
    assert_eq!(
        local.text().await.unwrap(),
        "/* a site's own hls.js build */"
    );
    // The versioned URL names the built-in file whatever the config says.
    let built_in = world.get(hls_js::VERSIONED_ROUTE).await;
    assert_eq!(sha256_hex(&built_in.bytes().await.unwrap()), hls_js::SHA256);

    let cdn = "https://cdn.jsdelivr.net/npm/hls.js@1.7.4/dist/hls.min.js";
    let world = World::start_with(|c| c.embed.hls_js_url = Some(cdn.into())).await;
    let response = world.get("/embed/livestream/ts").await;
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self' https://cdn.jsdelivr.net 'sha256-"),
        "{csp}"
    );
    let page = response.text().await.unwrap();
    assert!(page.contains(&format!(r#"<script src="{cdn}"></script>"#)));
}
