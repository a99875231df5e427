//! Stream's SQS deliveries: with an `SqsTarget`, every event the simulator emits is also sent to an SQS queue with
//! `SendMessage`, in order, as the plain JSON, or base64(gzip(JSON)) with compression on, and optionally inside an
//! SNS notification envelope (what a queue subscribed to a topic without raw delivery receives).
//!
//! A failed send is retried after `webhooks::BACKOFF`, then dropped with a warning; `SimHandle::sqs_sent` counts the
//! messages the queue accepted.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use base64::Engine;
use serde_json::json;
use tokio::sync::mpsc;

use super::state::Shared;
use super::webhooks::{BACKOFF, webhook_id};

/// The topic named in SNS envelopes.
const TOPIC_ARN: &str = "arn:aws:sns:us-east-1:000000000000:stream-events";

/// Where and how the simulator sends events to SQS.
#[derive(Clone, Debug)]
pub struct SqsTarget {
    pub queue_url: String,
    /// The sending client's settings: credentials, region, endpoint (an SQS-compatible server in tests).
    pub aws: aws_config::SdkConfig,
    /// base64(gzip(JSON)) bodies, as Stream sends with compression on (default JSON).
    pub compress: bool,
    /// Each body inside an SNS notification envelope.
    pub sns_envelope: bool,
}

/// A message body as Stream (or SNS) would send `event` (JSON).
pub fn message_body(event: &[u8], compress: bool, sns_envelope: bool) -> String {
    let payload = if compress {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to a Vec cannot fail.
        let _ = gzip.write_all(event);
        base64::engine::general_purpose::STANDARD.encode(gzip.finish().unwrap_or_default())
    } else {
        String::from_utf8_lossy(event).into_owned()
    };
    if !sns_envelope {
        return payload;
    }
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({
        "Type": "Notification",
        "MessageId": webhook_id(),
        "TopicArn": TOPIC_ARN,
        "Message": payload,
        "Timestamp": timestamp,
        "SignatureVersion": "1",
        "Signature": base64::engine::general_purpose::STANDARD.encode(b"simulated"),
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-sim.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    })
    .to_string()
}

struct Destination {
    client: Client,
    queue_url: String,
    compress: bool,
    sns_envelope: bool,
}

struct Job {
    destination: Arc<Destination>,
    body: String,
}

/// The SQS side of the shared state: the target, the queue of messages to send, and what was sent.
pub struct SqsOut {
    destination: Mutex<Option<Arc<Destination>>>,
    queue: mpsc::UnboundedSender<Job>,
    /// Taken by the sending task when the simulator starts.
    pending: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    sent: AtomicU64,
}

impl Default for SqsOut {
    fn default() -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        SqsOut {
            destination: Mutex::new(None),
            queue,
            pending: Mutex::new(Some(pending)),
            sent: AtomicU64::new(0),
        }
    }
}

impl SqsOut {
    /// Where events go from now on (None: not to SQS). Messages already queued keep their destination.
    pub fn configure(&self, target: Option<SqsTarget>) {
        let destination = target.map(|target| {
            Arc::new(Destination {
                client: Client::new(&target.aws),
                queue_url: target.queue_url,
                compress: target.compress,
                sns_envelope: target.sns_envelope,
            })
        });
        *lock(&self.destination) = destination;
    }

    /// Queues the event `body()` makes, if there is a target.
    pub fn send(&self, body: impl FnOnce() -> Vec<u8>) {
        let Some(destination) = lock(&self.destination).clone() else {
            return;
        };
        let body = message_body(&body(), destination.compress, destination.sns_envelope);
        // The receiver lives as long as the sending task; once the simulator is shut down events are dropped.
        let _ = self.queue.send(Job { destination, body });
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

/// The sending task: sends queued messages one after another until the simulator shuts down.
pub async fn run(shared: Arc<Shared>) {
    let Some(mut pending) = lock(&shared.sqs.pending).take() else {
        return;
    };
    let mut stopped = shared.shutdown.subscribe();
    loop {
        let job = tokio::select! {
            job = pending.recv() => job,
            _ = stopped.wait_for(|stopped| *stopped) => None,
        };
        let Some(job) = job else {
            return;
        };
        if send(&job).await {
            shared.sqs.sent.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn send(job: &Job) -> bool {
    let destination = &job.destination;
    let mut pauses = BACKOFF.iter();
    loop {
        let sent = destination
            .client
            .send_message()
            .queue_url(&destination.queue_url)
            .message_body(&job.body)
            .send()
            .await;
        let Err(error) = sent else {
            return true;
        };
        let Some(pause) = pauses.next() else {
            tracing::warn!(
                queue = %destination.queue_url,
                error = %DisplayErrorContext(&error),
                "simulator: SQS send failed; event dropped"
            );
            return false;
        };
        tokio::time::sleep(*pause).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::payload::queue_message_json;

    #[test]
    fn every_form_decodes_to_the_event() {
        let event = br#"{"type":"call.ended","call_cid":"livestream:a"}"#;
        for (compress, sns_envelope) in [(false, false), (true, false), (false, true), (true, true)]
        {
            let body = message_body(event, compress, sns_envelope);
            assert_eq!(body.starts_with('{'), !compress || sns_envelope, "{body}");
            assert_eq!(queue_message_json(&body, 4096).unwrap(), event, "{body}");
        }
    }
}
