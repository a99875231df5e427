//! The SQS consumer: Stream's events from an Amazon SQS queue (`events.sqs_queue_url`), applied as webhooks are.
//!
//! Stream sends the app's events to the queue itself, or to an SNS topic the queue is subscribed to; a message body
//! is the event JSON, base64(gzip(JSON)), or an SNS envelope around either ([`payload::queue_message_json`]). There
//! is no signature: whoever may send to the queue is trusted, so the queue's IAM policy is the gate.
//!
//! One task long-polls the queue (batches of 10), applies each event with `Relay::apply_event`, then deletes the
//! batch: a message is deleted only once it was applied or judged irrelevant, so events sent while the relay was
//! down or unreachable are applied when it comes back, and a crash between applying and deleting only repeats an
//! event, which ordering by `created_at` makes harmless. Garbage (not an event in any form) is counted, logged once
//! per kind, and deleted too: decoding is deterministic, so it would fail the same way on every redelivery (README,
//! "SQS and SNS"). A failed receive is retried after a jittered, capped exponential backoff; the queue becoming
//! unreachable and reachable again are logged once each.

use std::collections::HashSet;
use std::time::Duration;

use aws_config::{BehaviorVersion, ConfigLoader, Region};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use url::Url;

use super::payload::{self, PayloadError};
use super::{Event, EventError, Source, webhook};
use crate::relay::Relay;

/// SQS's largest receive batch.
const BATCH: i32 = 10;
/// The same bound as a webhook body's: Stream's events are a few KiB.
const MAX_EVENT_BYTES: usize = webhook::MAX_BODY_BYTES;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Low enough that a queue back after an outage is read again within seconds; an idle retry costs one request.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long past the long-poll wait an answer may take before the receive counts as failed.
const ANSWER_MARGIN: Duration = Duration::from_secs(10);
/// Used when neither the queue URL nor the AWS chain names a region (SQS-compatible servers mostly ignore it).
const FALLBACK_REGION: &str = "us-east-1";

/// The standard AWS chain: `AWS_*` variables, profiles, web identity, ECS and EC2 roles.
pub fn aws_defaults() -> ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
}

/// Starts the consumer if `events.sqs_queue_url` is set, until `stop` turns true. Returns at once: loading the AWS
/// settings (which may ask EC2's metadata service) and every request happen in the task, never in serving's way.
pub fn spawn(
    relay: Relay,
    aws: ConfigLoader,
    mut stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let queue_url = relay.config().events.sqs_queue_url.clone()?;
    Some(tokio::spawn(async move {
        tracing::info!(queue = %queue_url, "consuming Stream events from SQS");
        let client = tokio::select! {
            client = client(&relay, &queue_url, aws) => client,
            () = stopped(&mut stop) => return,
        };
        Consumer::new(relay, client, queue_url).run(stop).await;
        tracing::info!("SQS consumer stopped");
    }))
}

/// Completes when `stop` turns true, or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn client(relay: &Relay, queue_url: &str, mut aws: ConfigLoader) -> Client {
    let events = &relay.config().events;
    // The queue lives in the region its URL names, whatever AWS_REGION says.
    if let Some(region) = region_of(queue_url) {
        aws = aws.region(Region::new(region));
    }
    if let Some(endpoint) = &events.sqs_endpoint_url {
        aws = aws.endpoint_url(endpoint);
    }
    let sdk = aws.load().await;
    // One retry policy, the consumer's own backoff, so that an outage is seen and logged as it happens.
    let mut config = aws_sdk_sqs::config::Builder::from(&sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(events.sqs_wait_time + ANSWER_MARGIN)
                .build(),
        );
    if sdk.region().is_none() {
        tracing::warn!(
            region = FALLBACK_REGION,
            "no AWS region in the environment or the queue URL: set AWS_REGION"
        );
        config = config.region(Region::new(FALLBACK_REGION));
    }
    Client::from_conf(config.build())
}

/// The region of an AWS SQS queue URL (`https://sqs.eu-west-1.amazonaws.com/…`, the legacy
/// `https://eu-west-1.queue.amazonaws.com/…`); None for other hosts.
pub fn region_of(queue_url: &str) -> Option<String> {
    let url = Url::parse(queue_url).ok()?;
    let host = url.host_str()?;
    let name = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let labels: Vec<&str> = name.split('.').collect();
    match labels.as_slice() {
        ["sqs" | "sqs-fips", region] | [region, "queue"] => Some((*region).to_owned()),
        ["queue"] => Some("us-east-1".to_owned()),
        _ => None,
    }
}

/// Why a message is not an event. Each kind is a metric label (`type`, with outcome `refused`) and logged once.
#[derive(Debug)]
enum Garbage {
    /// Neither JSON, base64(gzip(JSON)) nor an SNS notification of them, or too large once inflated.
    Undecodable(PayloadError),
    /// JSON, but not an event the relay can read (no type or call, a bad time; also SNS subscription messages).
    Unparsed(EventError),
}

impl Garbage {
    fn label(&self) -> &'static str {
        match self {
            Self::Undecodable(_) => "undecodable",
            Self::Unparsed(_) => "unparsed",
        }
    }
}

impl std::fmt::Display for Garbage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Undecodable(error) => error.fmt(f),
            Self::Unparsed(error) => error.fmt(f),
        }
    }
}

/// A message body as an event.
fn read(body: &str, received_at: OffsetDateTime) -> Result<Event, Garbage> {
    let json = payload::queue_message_json(body, MAX_EVENT_BYTES).map_err(Garbage::Undecodable)?;
    super::parse(&json, received_at).map_err(Garbage::Unparsed)
}

/// Jittered exponential backoff: each pause is drawn from [d/2, d], d doubling from `FIRST_BACKOFF` to `MAX_BACKOFF`.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Whether the queue answered last time, so that a change is logged once rather than every retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    NotYet,
    Up,
    Down,
}

struct Consumer {
    relay: Relay,
    client: Client,
    queue_url: String,
    receive: Reach,
    /// Deletes fail apart from receives when the credentials lack `sqs:DeleteMessage`.
    deletes_failing: bool,
    backoff: Backoff,
    /// Garbage kinds already logged.
    reported: HashSet<&'static str>,
}

impl Consumer {
    fn new(relay: Relay, client: Client, queue_url: String) -> Self {
        Self {
            relay,
            client,
            queue_url,
            receive: Reach::NotYet,
            deletes_failing: false,
            backoff: Backoff::default(),
            reported: HashSet::new(),
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            // Only waiting is interrupted: a received batch is always applied and deleted.
            let received = tokio::select! {
                received = self.receive() => received,
                () = stopped(&mut stop) => return,
            };
            match received {
                Ok(messages) => {
                    self.reachable();
                    self.handle(messages).await;
                }
                Err(error) => {
                    self.unreachable(&error);
                    let pause = self.backoff.next();
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stopped(&mut stop) => return,
                    }
                }
            }
        }
    }

    async fn receive(&self) -> Result<Vec<Message>, String> {
        let wait = self.relay.config().events.sqs_wait_time;
        self.client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(BATCH)
            .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(20))
            .send()
            .await
            .map(|output| output.messages.unwrap_or_default())
            .map_err(|error| DisplayErrorContext(error).to_string())
    }

    fn reachable(&mut self) {
        match self.receive {
            Reach::Up => {}
            Reach::NotYet => tracing::info!(queue = %self.queue_url, "SQS queue reachable"),
            Reach::Down => tracing::info!(queue = %self.queue_url, "SQS queue reachable again"),
        }
        self.receive = Reach::Up;
        self.backoff.reset();
        self.relay.metrics().sqs_queue_up.set(1);
    }

    fn unreachable(&mut self, error: &str) {
        self.relay
            .metrics()
            .sqs_receive_errors
            .with_label_values(&["receive"])
            .inc();
        self.relay.metrics().sqs_queue_up.set(0);
        if self.receive == Reach::Down {
            tracing::debug!(queue = %self.queue_url, error, "SQS receive failed again");
        } else {
            tracing::warn!(
                queue = %self.queue_url,
                error,
                "SQS queue unreachable: retrying with backoff; events wait in the queue"
            );
        }
        self.receive = Reach::Down;
    }

    /// Applies the batch in order, then deletes every message of it.
    async fn handle(&mut self, messages: Vec<Message>) {
        let mut done = Vec::with_capacity(messages.len());
        for message in messages {
            match read(
                message.body().unwrap_or_default(),
                OffsetDateTime::now_utc(),
            ) {
                Ok(event) => {
                    self.relay.apply_event(Source::Sqs, &event).await;
                }
                Err(garbage) => self.refuse(&garbage, message.message_id().unwrap_or_default()),
            }
            done.extend(message.receipt_handle);
        }
        self.delete(done).await;
    }

    fn refuse(&mut self, garbage: &Garbage, message_id: &str) {
        let kind = garbage.label();
        self.relay.count_event(Source::Sqs, kind, "refused");
        if self.reported.insert(kind) {
            tracing::warn!(
                queue = %self.queue_url,
                message_id,
                kind,
                reason = %garbage,
                "SQS message is not a Stream event: deleted (logged once per kind; counted in \
                 hls_relay_events_total{{source=\"sqs\",outcome=\"refused\"}})"
            );
        } else {
            tracing::debug!(message_id, kind, reason = %garbage, "SQS message is not a Stream event: deleted");
        }
    }

    /// A message whose delete fails comes back after the queue's visibility timeout and is applied again, harmlessly.
    async fn delete(&mut self, receipt_handles: Vec<String>) {
        if receipt_handles.is_empty() {
            return;
        }
        let entries: Vec<DeleteMessageBatchRequestEntry> = receipt_handles
            .into_iter()
            .enumerate()
            .filter_map(|(index, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(handle)
                    .build()
                    .ok()
            })
            .collect();
        let sent = self
            .client
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        let failure = match &sent {
            Err(error) => Some((1, DisplayErrorContext(error).to_string())),
            Ok(output) => output.failed().first().map(|first| {
                let reason = format!("{}: {}", first.code(), first.message().unwrap_or_default());
                (output.failed().len() as u64, reason)
            }),
        };
        match failure {
            Some((count, error)) => {
                self.relay
                    .metrics()
                    .sqs_receive_errors
                    .with_label_values(&["delete"])
                    .inc_by(count);
                if !self.deletes_failing {
                    tracing::warn!(
                        queue = %self.queue_url,
                        error,
                        "SQS delete failed: those messages come back after the visibility timeout and are \
                         applied again (the consumer needs sqs:DeleteMessage)"
                    );
                }
                self.deletes_failing = true;
            }
            None if self.deletes_failing => {
                tracing::info!(queue = %self.queue_url, "SQS deletes succeed again");
                self.deletes_failing = false;
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::io::Write;

    #[test]
    fn aws_queue_urls_name_their_region() {
        for (url, region) in [
            (
                "https://sqs.eu-west-1.amazonaws.com/123456789012/q",
                Some("eu-west-1"),
            ),
            (
                "https://sqs-fips.us-gov-west-1.amazonaws.com/1/q",
                Some("us-gov-west-1"),
            ),
            (
                "https://ap-south-1.queue.amazonaws.com/1/q",
                Some("ap-south-1"),
            ),
            (
                "https://sqs.cn-north-1.amazonaws.com.cn/1/q",
                Some("cn-north-1"),
            ),
            ("https://queue.amazonaws.com/1/q", Some("us-east-1")),
            ("http://127.0.0.1:9324/000000000000/q", None),
            ("https://amazonaws.com.evil.example/1/q", None),
            ("not a url", None),
        ] {
            assert_eq!(region_of(url).as_deref(), region, "{url}");
        }
    }

    #[test]
    fn messages_read_as_events_or_as_a_kind_of_garbage() {
        let event = r#"{"type":"call.ended","call_cid":"livestream:a","created_at":"2026-11-26T10:00:00Z"}"#;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(event.as_bytes()).unwrap();
        let compressed = base64::engine::general_purpose::STANDARD.encode(gzip.finish().unwrap());
        let envelope =
            serde_json::json!({"Type": "Notification", "Message": compressed}).to_string();
        for body in [event, &compressed, &envelope] {
            let read = read(body, OffsetDateTime::UNIX_EPOCH).unwrap();
            assert_eq!(read.call.to_string(), "livestream:a");
        }
        for (body, kind) in [
            ("", "undecodable"),
            ("hello", "undecodable"),
            (r#"{"type":"call.ended"}"#, "unparsed"),
            (
                r#"{"Type":"SubscriptionConfirmation","Message":"You have chosen to subscribe"}"#,
                "unparsed",
            ),
        ] {
            let garbage = read(body, OffsetDateTime::UNIX_EPOCH).unwrap_err();
            assert_eq!(garbage.label(), kind, "{body:?}: {garbage}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next();
        assert!(
            first >= FIRST_BACKOFF / 2 && first <= FIRST_BACKOFF,
            "{first:?}"
        );
        let second = backoff.next();
        assert!(
            second >= FIRST_BACKOFF && second <= FIRST_BACKOFF * 2,
            "{second:?}"
        );
        for failures in 2..100 {
            let pause = backoff.next();
            assert!(pause <= MAX_BACKOFF, "{pause:?}");
            // 0.2 s · 2^6 is past the cap.
            if failures >= 6 {
                assert!(pause >= MAX_BACKOFF / 2, "{pause:?}");
            }
        }
        backoff.reset();
        assert!(backoff.next() <= FIRST_BACKOFF);
    }
}
