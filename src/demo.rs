//! `hls-relay demo`: a simulated Stream call and a relay in front of it, on loopback, for a first look.

use std::net::SocketAddr;

use crate::config::Config;
use crate::http::server::{self, RunningRelay};
use crate::sim::{self, CallSetup, Flavour, SimConfig};
use crate::telemetry;

/// Fixed so that relay URLs stay valid across demo restarts (a player left open keeps working).
const DEMO_URL_KEY: &str = "hls-relay-demo-url-key";

pub async fn run(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut config = Config::default();
    telemetry::init_logging(&config.log);
    let simulator = sim::start(SimConfig::default()).await?;
    simulator.add_call("livestream", "demo", CallSetup::default());
    simulator.add_call(
        "livestream",
        "demo-fmp4",
        CallSetup {
            flavour: Flavour::Fmp4,
            ..CallSetup::default()
        },
    );
    config.server.listen = listen;
    config.server.url_key = Some(DEMO_URL_KEY.into());
    config.stream.base_url = simulator.base_url();
    config.stream.api_key = Some(simulator.api_key().to_owned());
    config.stream.api_secret = Some(simulator.api_secret().to_owned());
    let relay = RunningRelay::start(config).await?;
    let base = relay.base_url();
    println!(
        "\nhls-relay demo: a simulated Stream backend on {sim} and the relay on {base}\n\n\
         Call state (Stream's shape):  curl {base}/v1/calls/livestream/demo\n\
         Playlist (MPEG-TS):           {base}/hls/livestream/demo/index.m3u8\n\
         Playlist (fMP4):              {base}/hls/livestream/demo-fmp4/index.m3u8\n\
         Player page (web embed):      {base}/embed/livestream/demo\n\
         Metrics:                      {base}/metrics\n\n\
         Play it:  ffplay {base}/hls/livestream/demo/index.m3u8\n\
         \x20     or  vlc {base}/hls/livestream/demo/index.m3u8\n\
         \x20     or  ffmpeg -i {base}/hls/livestream/demo/index.m3u8 -t 10 -f null -\n\
         \x20     or  open {base}/embed/livestream/demo in a browser (hls.js comes from the relay)\n\n\
         Embed it in a web page:\n\
         \x20 <iframe src=\"{base}/embed/livestream/demo\" width=\"640\" height=\"360\" style=\"border:0\"\n\
         \x20         allow=\"autoplay; fullscreen\" allowfullscreen title=\"Live broadcast\"></iframe>\n\n\
         Ctrl-C stops.",
        sim = simulator.base_url(),
    );
    server::shutdown_signal().await;
    drop(relay);
    simulator.shutdown();
    Ok(())
}

/// `hls-relay sim`: the simulator alone, with calls pointing wherever the caller says.
pub async fn run_simulator(
    config: SimConfig,
    calls: &[String],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    telemetry::init_logging(&Config::default().log);
    let time_format = config.time_format;
    let simulator = sim::start(config).await?;
    if calls.is_empty() {
        simulator.add_call("livestream", "demo", CallSetup::default());
    }
    for call in calls {
        let (cid, url) = call
            .split_once('=')
            .ok_or_else(|| format!("--call {call}: expected TYPE:ID=URL"))?;
        let (kind, id) = cid
            .split_once(':')
            .ok_or_else(|| format!("--call {call}: expected TYPE:ID=URL"))?;
        url::Url::parse(url).map_err(|e| format!("--call {call}: {e}"))?;
        simulator.set_playlist_url(kind, id, url);
    }
    println!(
        "simulated Stream API on {} (api key {}, secret {}, times as {time_format})",
        simulator.base_url(),
        simulator.api_key(),
        simulator.api_secret()
    );
    server::shutdown_signal().await;
    simulator.shutdown();
    Ok(())
}
