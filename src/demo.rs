//! `hls-relay demo`: a simulated Stream call and a relay in front of it, on loopback, for a first look.

use std::net::SocketAddr;

use crate::config::Config;
use crate::events::sqs;
use crate::http::server::{self, RunningRelay};
use crate::sim::{self, CallSetup, Flavour, SimConfig, SqsTarget};
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

/// `hls-relay sim`'s SQS delivery, as Stream's SQS (or SNS→SQS) integration sends events.
#[derive(clap::Args, Debug)]
pub struct SqsArgs {
    /// Also send every event to this SQS queue (AWS credentials and region from the standard chain; an
    /// SQS-compatible server through AWS_ENDPOINT_URL_SQS).
    #[arg(long, value_name = "URL")]
    sqs_queue_url: Option<String>,
    /// Send base64(gzip(JSON)) message bodies, as Stream's compression does.
    #[arg(long, requires = "sqs_queue_url")]
    sqs_compress: bool,
    /// Wrap each message in an SNS notification envelope, as a queue subscribed to a topic receives it.
    #[arg(long, requires = "sqs_queue_url")]
    sqs_sns_envelope: bool,
}

impl SqsArgs {
    async fn target(self) -> Result<Option<SqsTarget>, String> {
        let Some(queue_url) = self.sqs_queue_url else {
            return Ok(None);
        };
        url::Url::parse(&queue_url).map_err(|e| format!("--sqs-queue-url {queue_url}: {e}"))?;
        let mut aws = sqs::aws_defaults();
        if let Some(region) = sqs::region_of(&queue_url) {
            aws = aws.region(aws_config::Region::new(region));
        }
        Ok(Some(SqsTarget {
            queue_url,
            aws: aws.load().await,
            compress: self.sqs_compress,
            sns_envelope: self.sqs_sns_envelope,
        }))
    }
}

/// `hls-relay sim`: the simulator alone, with calls pointing wherever the caller says.
pub async fn run_simulator(
    config: SimConfig,
    calls: &[String],
    sqs: SqsArgs,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    telemetry::init_logging(&Config::default().log);
    let time_format = config.time_format;
    let simulator = sim::start(SimConfig {
        sqs: sqs.target().await?,
        ..config
    })
    .await?;
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
