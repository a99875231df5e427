//! Stream's SQS and SNS→SQS deliveries, over a real SQS wire protocol: moto's server mode on loopback, started per
//! test. CI installs moto (`.ci/run`); elsewhere a test without it says so and stops.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::QueueAttributeName;
use common::*;
use hls_relay::config::Config;
use hls_relay::sim::{self, CallSetup, SimConfig, SimHandle, SqsTarget};

/// moto's account id: the path of every queue URL it hands out.
const ACCOUNT: &str = "123456789012";
/// Bound on moto (a Python server) starting, and on the relay noticing it came back; generous for a loaded machine.
const MOTO_PATIENCE: Duration = Duration::from_secs(60);

/// An SQS-compatible server (moto) on a loopback port; killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// On a free port; None when moto is not installed (and not in CI, which must have it).
    async fn start() -> Option<Moto> {
        if !Moto::installed() {
            return None;
        }
        // A port free a moment ago may be taken by the time moto binds it: then another.
        Some(Moto::retry(free_port).await)
    }

    /// On `port` (again, after a kill: moto then starts empty).
    async fn start_on(port: u16) -> Moto {
        Moto::retry(|| port).await
    }

    fn installed() -> bool {
        python_module_available("moto.server", "python3 -m pip install 'moto[server]'")
    }

    async fn retry(mut port: impl FnMut() -> u16) -> Moto {
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Moto::launch(port()).await {
                Ok(moto) => return moto,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("moto did not start: {failures:#?}");
    }

    /// One try: moto answering, or why not (it exited, e.g. its port was taken, with its stderr).
    async fn launch(port: u16) -> Result<Moto, String> {
        let stderr = tempfile::NamedTempFile::new().expect("a temporary file");
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().expect("the temporary file"))
            .spawn()
            .expect("python3 -m moto.server starts");
        let mut moto = Moto { child, port };
        let http = client();
        let ready = format!("{}/moto-api/", moto.endpoint());
        let deadline = tokio::time::Instant::now() + MOTO_PATIENCE;
        loop {
            let answered = http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                return Ok(moto);
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                let output = std::fs::read_to_string(stderr.path()).unwrap_or_default();
                return Err(format!("port {port}: moto exited ({status}): {output}"));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "port {port}: moto did not answer in {MOTO_PATIENCE:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn endpoint(&self) -> String {
        endpoint(self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Dummy credentials and a region: moto accepts any.
fn aws(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
            Credentials::new("testing", "testing", None, None, "tests"),
        ))
        .endpoint_url(endpoint)
        .build()
}

/// The relay's AWS settings but for the endpoint, which its config names.
fn relay_aws() -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
}

/// The test's own client of the queue, to create it, send hand-made messages and look inside.
struct Queue {
    sqs: aws_sdk_sqs::Client,
    url: String,
    endpoint: String,
}

impl Queue {
    async fn create(endpoint: &str, name: &str) -> Queue {
        let sqs = aws_sdk_sqs::Client::new(&aws(endpoint));
        let created = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("moto creates the queue");
        let url = created.queue_url().expect("a queue URL").to_owned();
        assert_eq!(url, format!("{endpoint}/{ACCOUNT}/{name}"));
        Queue {
            sqs,
            url,
            endpoint: endpoint.to_owned(),
        }
    }

    async fn send(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .expect("moto takes the message");
    }

    /// Messages waiting or held by a consumer that has not deleted them.
    async fn messages_left(&self) -> u64 {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("moto answers");
        attributes
            .attributes()
            .into_iter()
            .flatten()
            .map(|(_, count)| count.parse::<u64>().unwrap_or(u64::MAX))
            .sum()
    }

    /// How the simulator sends to this queue: as Stream does, in the given form.
    fn target(&self, compress: bool, sns_envelope: bool) -> SqsTarget {
        SqsTarget {
            queue_url: self.url.clone(),
            aws: aws(&self.endpoint),
            compress,
            sns_envelope,
        }
    }
}

/// The relay's config for a queue at `queue_url` on the SQS server at `endpoint`. State changes come only from
/// events: call look-ups are trusted for a minute.
fn consume(endpoint: &str, queue_url: &str) -> impl FnOnce(&mut Config) {
    let (endpoint, queue_url) = (endpoint.to_owned(), queue_url.to_owned());
    move |config| {
        config.stream.call_ttl = Duration::from_secs(60);
        config.events.sqs_queue_url = Some(queue_url);
        config.events.sqs_endpoint_url = Some(endpoint);
        config.events.sqs_wait_time = Duration::from_secs(1);
    }
}

/// A simulator (sending to SQS as `sqs` says) with a broadcasting call `livestream:ts`.
async fn simulator(sqs: Option<SqsTarget>) -> SimHandle {
    let sim = sim::start(SimConfig {
        sqs,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    sim.add_call("livestream", "ts", CallSetup::default());
    sim
}

async fn world(sim: SimHandle, endpoint: &str, queue_url: &str) -> World {
    let relay = start_relay_with_aws(&sim, consume(endpoint, queue_url), relay_aws()).await;
    World {
        sim,
        relay,
        http: client(),
    }
}

async fn broadcasting(world: &World, call: &str) -> bool {
    let state: serde_json::Value = world
        .get(&format!("/v1/calls/livestream/{call}"))
        .await
        .json()
        .await
        .unwrap();
    state["call"]["egress"]["broadcasting"].as_bool().unwrap()
}

/// A metric's value (0 when absent), e.g. `metric(&world, r#"hls_relay_sqs_queue_up"#)`.
async fn metric(world: &World, series: &str) -> f64 {
    let text = world.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

const RECEIVE_ERRORS: &str = r#"hls_relay_sqs_receive_errors_total{operation="receive"}"#;
const APPLIED_STOPS: &str =
    r#"hls_relay_events_total{outcome="applied",source="sqs",type="call.broadcasting_stopped"}"#;

/// Polls `condition` until it holds, failing after `bound`.
async fn within<F, Fut>(bound: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A forged event for `livestream:{id}` as the call is now, `age` old: it tells the relay something the API does not.
fn event(world: &World, kind: &str, id: &str, age: Duration) -> String {
    let json = world.sim.event_json(kind, "livestream", id, age).unwrap();
    String::from_utf8(json).unwrap()
}

#[tokio::test]
async fn started_and_stopped_events_from_the_queue_drive_state_pages_and_playlists() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let queue = Queue::create(&moto.endpoint(), "events").await;
    let sim = simulator(Some(queue.target(false, false))).await;
    let off_air = CallSetup {
        broadcasting: false,
        ..CallSetup::default()
    };
    sim.add_call("livestream", "show", off_air);
    let world = world(sim, &moto.endpoint(), &queue.url).await;
    let mut page = SseReader::open(&world.relay, "show").await;
    assert_eq!(page.next().await.1["broadcasting"], false);
    let api_requests = world.sim.api_requests();

    world.sim.start_broadcasting("livestream", "show");
    let (name, data) = page.next().await;
    assert_eq!(name, "broadcasting_started");
    assert_eq!(
        data["playlist_url"],
        world.url("/hls/livestream/show/index.m3u8")
    );
    assert!(broadcasting(&world, "show").await);
    let (media_path, live) = world.first_media_playlist("show").await;
    assert!(!live.contains("#EXT-X-ENDLIST"));

    world.sim.stop_broadcasting("livestream", "show");
    assert_eq!(page.next().await.0, "broadcasting_stopped");
    assert!(!broadcasting(&world, "show").await);
    let last = world.playlist(&media_path).await;
    assert!(last.trim_end().ends_with("#EXT-X-ENDLIST"), "{last}");
    assert_eq!(
        world.sim.api_requests(),
        api_requests,
        "the queue alone told the relay"
    );
    assert_eq!(world.sim.sqs_sent(), 2);
    eventually("both messages deleted", || async {
        queue.messages_left().await == 0
    })
    .await;
}

#[tokio::test]
async fn compressed_and_sns_wrapped_messages_are_applied() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let queue = Queue::create(&moto.endpoint(), "forms").await;
    let world = world(simulator(None).await, &moto.endpoint(), &queue.url).await;
    assert!(broadcasting(&world, "ts").await);

    // Stop and start in turn, each change sent in another form.
    for (compress, sns_envelope) in [(true, false), (false, true), (true, true), (false, false)] {
        world
            .sim
            .set_sqs(Some(queue.target(compress, sns_envelope)));
        let was_broadcasting = broadcasting(&world, "ts").await;
        if was_broadcasting {
            world.sim.stop_broadcasting("livestream", "ts");
        } else {
            world.sim.start_broadcasting("livestream", "ts");
        }
        let form = format!("compress {compress}, SNS {sns_envelope}");
        eventually(&form, || async {
            broadcasting(&world, "ts").await != was_broadcasting
        })
        .await;
    }
    let applied = |kind: &str| {
        format!(r#"hls_relay_events_total{{outcome="applied",source="sqs",type="{kind}"}}"#)
    };
    assert_eq!(
        metric(&world, &applied("call.broadcasting_stopped")).await,
        2.0
    );
    assert_eq!(
        metric(&world, &applied("call.broadcasting_started")).await,
        2.0
    );
}

#[tokio::test]
async fn garbage_is_counted_and_deleted_and_later_events_still_apply() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let queue = Queue::create(&moto.endpoint(), "garbage").await;
    let world = world(simulator(None).await, &moto.endpoint(), &queue.url).await;
    assert!(broadcasting(&world, "ts").await);

    let undecodable = [
        "hello".to_owned(),
        // base64 of "not gzip"
        "bm90IGd6aXA=".to_owned(),
        sim::sqs_message_body(b"not json", true, false),
        r#"{"Type":"Notification","Message":"hello"}"#.to_owned(),
    ];
    let unparsed = [
        r#"{"type":"call.ended"}"#.to_owned(),
        r#"{"Type":"SubscriptionConfirmation","Message":"You have chosen to subscribe"}"#
            .to_owned(),
    ];
    for body in undecodable.iter().chain(&unparsed) {
        queue.send(body).await;
    }
    queue
        .send(&event(
            &world,
            "call.broadcasting_stopped",
            "ts",
            Duration::ZERO,
        ))
        .await;

    eventually("the good event applied", || async {
        !broadcasting(&world, "ts").await
    })
    .await;
    let refused = |kind: &str| {
        format!(r#"hls_relay_events_total{{outcome="refused",source="sqs",type="{kind}"}}"#)
    };
    eventually("every message counted", || async {
        metric(&world, &refused("undecodable")).await == undecodable.len() as f64
            && metric(&world, &refused("unparsed")).await == unparsed.len() as f64
    })
    .await;
    eventually("garbage deleted, not left to come back", || async {
        queue.messages_left().await == 0
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_queue_never_stops_serving_and_is_caught_up_when_back() {
    if !Moto::installed() {
        return;
    }
    // The relay starts while nothing listens on the queue's port.
    let port = free_port();
    let queue_url = format!("{}/{ACCOUNT}/outage", endpoint(port));
    let world = world(simulator(None).await, &endpoint(port), &queue_url).await;
    assert!(
        world
            .playlist("/hls/livestream/ts/index.m3u8")
            .await
            .contains("#EXT-X-STREAM-INF")
    );
    within(MOTO_PATIENCE, "failed receives counted", || async {
        metric(&world, RECEIVE_ERRORS).await >= 1.0
    })
    .await;
    assert_eq!(metric(&world, "hls_relay_sqs_queue_up").await, 0.0);

    let moto = Moto::start_on(port).await;
    let queue = Queue::create(&moto.endpoint(), "outage").await;
    queue
        .send(&event(
            &world,
            "call.broadcasting_stopped",
            "ts",
            Duration::from_secs(2),
        ))
        .await;
    within(MOTO_PATIENCE, "the queue read once it is there", || async {
        !broadcasting(&world, "ts").await
    })
    .await;
    assert_eq!(metric(&world, "hls_relay_sqs_queue_up").await, 1.0);

    // Mid-run: the server goes away (and comes back empty, as moto does).
    let errors_before = metric(&world, RECEIVE_ERRORS).await;
    drop(moto);
    within(MOTO_PATIENCE, "the outage noticed", || async {
        metric(&world, RECEIVE_ERRORS).await > errors_before
    })
    .await;
    assert_eq!(world.get("/healthz").await.status(), 200);
    assert!(!broadcasting(&world, "ts").await, "still serving its state");

    let moto = Moto::start_on(port).await;
    let queue = Queue::create(&moto.endpoint(), "outage").await;
    queue
        .send(&event(
            &world,
            "call.broadcasting_started",
            "ts",
            Duration::ZERO,
        ))
        .await;
    within(
        MOTO_PATIENCE,
        "events applied again after the outage",
        || async { broadcasting(&world, "ts").await },
    )
    .await;
}

#[tokio::test]
async fn events_queued_before_the_relay_starts_are_applied_when_it_does() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let queue = Queue::create(&moto.endpoint(), "backlog").await;
    let sim = simulator(None).await;
    let stopped = sim
        .event_json(
            "call.broadcasting_stopped",
            "livestream",
            "ts",
            Duration::ZERO,
        )
        .unwrap();
    queue
        .send(&sim::sqs_message_body(&stopped, true, true))
        .await;

    let world = world(sim, &moto.endpoint(), &queue.url).await;
    // Asked before the event is applied, the relay would look the call up in the API, which says it broadcasts.
    eventually("the queued stop applied", || async {
        metric(&world, APPLIED_STOPS).await == 1.0
    })
    .await;
    assert!(!broadcasting(&world, "ts").await);
    eventually("the backlog deleted", || async {
        queue.messages_left().await == 0
    })
    .await;
}
