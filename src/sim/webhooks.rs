//! Events and their signed webhook deliveries.
//!
//! `emit` builds an event while its call is locked (so a call's events queue in the order its state changed, with
//! strictly increasing `created_at`) and queues it if a webhook URL is configured (and for SQS, `super::sqs`). One background task (`run`)
//! delivers the queue in order, as Stream does: `POST`, JSON body, `X-Signature` = hex HMAC-SHA256 of the exact
//! JSON keyed by the API secret, `X-Api-Key`, `X-Webhook-Id`, `X-Webhook-Attempt`. With compression on (Stream's
//! dashboard setting) the body is gzipped with `Content-Encoding: gzip`, and the signature is still over the
//! uncompressed JSON. A non-2xx answer or no answer within `ATTEMPT_TIMEOUT` is retried after `BACKOFF`; every
//! attempt is logged for tests.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::api::call_object;
use super::state::{Call, Shared};

/// The pause before the second and third attempts; there is no fourth.
pub const BACKOFF: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(200)];
/// How long one attempt may take, answer included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// An event the simulator emits on a state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    BroadcastingStarted,
    BroadcastingStopped,
    BroadcastingFailed,
    LiveStarted,
    Ended,
}

impl EventKind {
    /// The event's `type`: the classic names, or with `new_names` the `call.hls_broadcasting_*` ones.
    pub fn name(self, new_names: bool) -> &'static str {
        match (self, new_names) {
            (EventKind::BroadcastingStarted, false) => "call.broadcasting_started",
            (EventKind::BroadcastingStarted, true) => "call.hls_broadcasting_started",
            (EventKind::BroadcastingStopped, false) => "call.broadcasting_stopped",
            (EventKind::BroadcastingStopped, true) => "call.hls_broadcasting_stopped",
            (EventKind::BroadcastingFailed, false) => "call.broadcasting_failed",
            (EventKind::BroadcastingFailed, true) => "call.hls_broadcasting_failed",
            (EventKind::LiveStarted, _) => "call.live_started",
            (EventKind::Ended, _) => "call.ended",
        }
    }
}

/// One delivery attempt, as the simulator saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub event_type: String,
    pub call_cid: String,
    /// The receiver's status; None if it was unreachable or did not answer in time.
    pub status: Option<u16>,
    /// 1 for the first attempt, 2 and 3 for retries.
    pub attempt: u32,
}

/// How `SimHandle::send_webhook` signs a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signature {
    /// The correct HMAC, as Stream sends it.
    Valid,
    /// A well-formed HMAC under the wrong key.
    Forged,
    /// No `X-Signature` header at all.
    Missing,
}

/// An event's JSON body. `hls_playlist_url` is added for `*broadcasting_started` events.
pub fn event_body(
    event_type: &str,
    call_cid: &str,
    created_at: Value,
    call: Value,
    hls_playlist_url: Option<&str>,
) -> Vec<u8> {
    let mut event = json!({
        "type": event_type,
        "created_at": created_at,
        "call_cid": call_cid,
        "call": call,
    });
    if event_type.ends_with("broadcasting_started") {
        event["hls_playlist_url"] = json!(hls_playlist_url.unwrap_or_default());
    }
    // Serialising a `Value` cannot fail.
    serde_json::to_vec(&event).unwrap_or_default()
}

/// The event body for the call as it is now, created `created_ns`.
pub fn call_event(
    shared: &Shared,
    call: &Call,
    call_type: &str,
    id: &str,
    event_type: &str,
    created_ns: i128,
) -> Vec<u8> {
    let base = shared.base_url.as_str();
    event_body(
        event_type,
        &format!("{call_type}:{id}"),
        shared.time_format.ns(created_ns),
        call_object(shared, call, call_type, id),
        call.live_playlist_url(base, call_type, id).as_deref(),
    )
}

/// Hex HMAC-SHA256 of `body` keyed by `secret`: Stream's `X-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A random UUID (version 4 layout) for `X-Webhook-Id`.
pub fn webhook_id() -> String {
    const VERSION: u128 = 0xf << 76; // the 13th hex digit: 4
    const VARIANT: u128 = 0xc << 60; // the top bits of the 17th: 10
    let bits = (rand::random::<u128>() & !VERSION & !VARIANT) | (0x4 << 76) | (0x8 << 60);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `body` gzipped; None if compression failed (it cannot, writing to memory), so the body goes as it is.
fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

/// What goes on the wire for `json`: gzipped if asked (and then true), else as it is.
fn wire_body(json: &[u8], compress: bool) -> (Vec<u8>, bool) {
    match compress.then(|| gzip(json)).flatten() {
        Some(gzipped) => (gzipped, true),
        None => (json.to_vec(), false),
    }
}

/// A delivery's headers; `signature` None leaves `X-Signature` out.
pub fn headers(
    api_key: &str,
    signature: Option<String>,
    webhook_id: &str,
    attempt: u32,
    gzipped: bool,
) -> Vec<(String, String)> {
    let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    if gzipped {
        headers.push(("Content-Encoding".to_owned(), "gzip".to_owned()));
    }
    if let Some(signature) = signature {
        headers.push(("X-Signature".to_owned(), signature));
    }
    headers.extend([
        ("X-Api-Key".to_owned(), api_key.to_owned()),
        ("X-Webhook-Id".to_owned(), webhook_id.to_owned()),
        ("X-Webhook-Attempt".to_owned(), attempt.to_string()),
    ]);
    headers
}

/// A webhook's exact body and its headers, as sent.
pub type SentWebhook = (Vec<u8>, Vec<(String, String)>);

struct Job {
    url: String,
    event_type: &'static str,
    call_cid: String,
    /// The event's JSON, uncompressed.
    body: Vec<u8>,
    webhook_id: String,
    compress: bool,
}

struct Config {
    url: Option<String>,
    new_event_names: bool,
    compress: bool,
}

/// The webhook side of the shared state: where events go, the queue, and what was sent.
pub struct Webhooks {
    config: Mutex<Config>,
    /// The latest `created_at` handed out, so events are strictly ordered even within one clock tick.
    last_created_ns: Mutex<i128>,
    queue: mpsc::UnboundedSender<Job>,
    /// Taken by the delivery task when the simulator starts.
    pending: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    deliveries: Mutex<Vec<Delivery>>,
    last: Mutex<Option<SentWebhook>>,
}

impl Default for Webhooks {
    fn default() -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        Webhooks {
            config: Mutex::new(Config {
                url: None,
                new_event_names: false,
                compress: false,
            }),
            last_created_ns: Mutex::new(i128::MIN),
            queue,
            pending: Mutex::new(Some(pending)),
            deliveries: Mutex::new(Vec::new()),
            last: Mutex::new(None),
        }
    }
}

impl Webhooks {
    pub fn configure(&self, url: Option<String>, new_event_names: bool) {
        let mut config = lock(&self.config);
        config.url = url;
        config.new_event_names = new_event_names;
    }

    pub fn set_compress(&self, compress: bool) {
        lock(&self.config).compress = compress;
    }

    pub fn compress(&self) -> bool {
        lock(&self.config).compress
    }

    pub fn set_url(&self, url: Option<String>) {
        lock(&self.config).url = url;
    }

    pub fn url(&self) -> Option<String> {
        lock(&self.config).url.clone()
    }

    /// `now_ns`, or just after the previous event if the clock has not moved past it.
    fn next_created_ns(&self, now_ns: i128) -> i128 {
        let mut last = lock(&self.last_created_ns);
        *last = now_ns.max(last.saturating_add(1));
        *last
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    pub fn last(&self) -> Option<SentWebhook> {
        lock(&self.last).clone()
    }
}

/// Queues the event for the call's new state, if a webhook URL is configured.
pub fn emit(shared: &Shared, call: &Call, call_type: &str, id: &str, kind: EventKind) {
    let webhooks = &shared.webhooks;
    let (url, new_names, compress) = {
        let config = lock(&webhooks.config);
        (config.url.clone(), config.new_event_names, config.compress)
    };
    let event_type = kind.name(new_names);
    let created_ns = webhooks.next_created_ns(shared.clock.unix_ns());
    shared
        .sqs
        .send(|| call_event(shared, call, call_type, id, event_type, created_ns));
    let Some(url) = url else {
        return;
    };
    let job = Job {
        url,
        event_type,
        call_cid: format!("{call_type}:{id}"),
        body: call_event(shared, call, call_type, id, event_type, created_ns),
        webhook_id: webhook_id(),
        compress,
    };
    // The receiver lives as long as the delivery task; once the simulator is shut down events are dropped.
    let _ = webhooks.queue.send(job);
}

/// The HTTP client for deliveries: no proxy (the receiver is on loopback), no redirects.
pub fn client() -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .build()
        .inspect_err(|e| tracing::warn!(error = %e, "simulator webhook client failed"))
        .ok()
}

/// POSTs `body` with `headers`; the status, or None if there was no answer in time.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    headers: &[(String, String)],
) -> Option<u16> {
    let mut request = client.post(url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => Some(response.status().as_u16()),
        Err(e) => {
            tracing::debug!(error = %e, url, "simulator webhook delivery failed");
            None
        }
    }
}

/// The delivery task: sends queued events one after another until the simulator shuts down.
pub async fn run(shared: Arc<Shared>) {
    let Some(mut pending) = lock(&shared.webhooks.pending).take() else {
        return;
    };
    let Some(client) = client() else {
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
        deliver(&shared, &client, &job).await;
    }
}

/// Sends one event, retrying after `BACKOFF` until the receiver answers 2xx or the attempts run out.
async fn deliver(shared: &Shared, client: &reqwest::Client, job: &Job) {
    let signature = sign(shared.api_secret.as_bytes(), &job.body);
    let (body, gzipped) = wire_body(&job.body, job.compress);
    for attempt in 1..=BACKOFF.len() as u32 + 1 {
        let sent = headers(
            &shared.api_key,
            Some(signature.clone()),
            &job.webhook_id,
            attempt,
            gzipped,
        );
        *lock(&shared.webhooks.last) = Some((body.clone(), sent.clone()));
        let status = post(client, &job.url, &body, &sent).await;
        lock(&shared.webhooks.deliveries).push(Delivery {
            event_type: job.event_type.to_owned(),
            call_cid: job.call_cid.clone(),
            status,
            attempt,
        });
        if status.is_some_and(|s| (200..300).contains(&s)) {
            return;
        }
        if let Some(pause) = BACKOFF.get(attempt as usize - 1) {
            tokio::time::sleep(*pause).await;
        }
    }
}

/// A body signed as asked, gzipped if asked, with fresh delivery headers (attempt 1).
pub fn forged_or_signed(
    api_key: &str,
    secret: &str,
    body: &[u8],
    how: Signature,
    compress: bool,
) -> SentWebhook {
    let signature = match how {
        Signature::Valid => Some(sign(secret.as_bytes(), body)),
        Signature::Forged => Some(sign(format!("not-{secret}").as_bytes(), body)),
        Signature::Missing => None,
    };
    let (body, gzipped) = wire_body(body, compress);
    let headers = headers(api_key, signature, &webhook_id(), 1, gzipped);
    (body, headers)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::CallSetup;
    use crate::sim::clock::TimeFormat;
    use crate::sim::state::Op;

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn event_bodies_carry_streams_fields() {
        let started = event_body(
            "call.broadcasting_started",
            "livestream:abc",
            TimeFormat::Rfc3339.ns(1_714_564_800_000_000_007),
            json!({ "cid": "livestream:abc" }),
            Some("http://sim/master.m3u8"),
        );
        let event: Value = serde_json::from_slice(&started).unwrap_or_default();
        assert_eq!(event["type"], "call.broadcasting_started");
        assert_eq!(event["created_at"], "2024-05-01T12:00:00.000000007Z");
        assert_eq!(event["call_cid"], "livestream:abc");
        assert_eq!(event["call"]["cid"], "livestream:abc");
        assert_eq!(event["hls_playlist_url"], "http://sim/master.m3u8");

        let ended = event_body("call.ended", "livestream:abc", json!(0), json!({}), None);
        let event: Value = serde_json::from_slice(&ended).unwrap_or_default();
        assert_eq!(event["type"], "call.ended");
        assert!(event.get("hls_playlist_url").is_none());
    }

    #[test]
    fn new_names_rename_only_the_hls_events() {
        assert_eq!(
            EventKind::BroadcastingFailed.name(true),
            "call.hls_broadcasting_failed"
        );
        assert_eq!(
            EventKind::BroadcastingStopped.name(false),
            "call.broadcasting_stopped"
        );
        assert_eq!(EventKind::Ended.name(true), "call.ended");
        assert_eq!(EventKind::LiveStarted.name(true), "call.live_started");
    }

    #[test]
    fn signatures_are_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let (body, signed) = forged_or_signed("key", "secret", b"{}", Signature::Valid, false);
        assert_eq!(body, b"{}");
        assert_eq!(
            header(&signed, "x-signature"),
            Some(sign(b"secret", b"{}").as_str())
        );
        assert_eq!(header(&signed, "x-api-key"), Some("key"));
        assert_eq!(header(&signed, "x-webhook-attempt"), Some("1"));
        assert_eq!(header(&signed, "content-type"), Some("application/json"));
        assert_eq!(header(&signed, "content-encoding"), None);
        let (_, forged) = forged_or_signed("key", "secret", b"{}", Signature::Forged, false);
        let forged = header(&forged, "x-signature").unwrap_or_default();
        assert_eq!(forged.len(), 64);
        assert_ne!(forged, sign(b"secret", b"{}"));
        let (_, missing) = forged_or_signed("key", "secret", b"{}", Signature::Missing, false);
        assert_eq!(header(&missing, "x-signature"), None);
    }

    #[test]
    fn compressed_bodies_are_gzip_signed_over_the_json() {
        let json = br#"{"type":"call.ended"}"#;
        let (body, headers) = forged_or_signed("key", "secret", json, Signature::Valid, true);
        assert_eq!(&body[..2], [0x1f, 0x8b], "gzip magic");
        assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
        assert_eq!(
            header(&headers, "x-signature"),
            Some(sign(b"secret", json).as_str())
        );
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut inflated)
            .expect("valid gzip");
        assert_eq!(inflated, json);
    }

    #[test]
    fn webhook_ids_look_like_uuids_and_differ() {
        let (a, b) = (webhook_id(), webhook_id());
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(a.as_bytes()[14], b'4');
        assert!(matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{a}");
    }

    #[test]
    fn events_queue_in_order_with_increasing_times_only_with_a_url() {
        let shared = Shared::new("key".into(), "secret".into(), "http://sim".into());
        shared.add_call("livestream", "abc", CallSetup::default());
        let mut pending = lock(&shared.webhooks.pending).take().expect("receiver");
        shared.with_call("livestream", "abc", |c| {
            shared.apply(c, "livestream", "abc", Op::StopBroadcasting)
        });
        assert!(pending.try_recv().is_err(), "no URL, no delivery");

        shared
            .webhooks
            .configure(Some("http://receiver/hook".into()), true);
        shared.with_call("livestream", "abc", |c| {
            let _ = shared.apply(c, "livestream", "abc", Op::StartBroadcasting);
            let _ = shared.apply(c, "livestream", "abc", Op::StartBroadcasting);
            let _ = shared.apply(c, "livestream", "abc", Op::End);
            let _ = shared.apply(c, "livestream", "abc", Op::End);
        });
        let mut jobs = Vec::new();
        while let Ok(job) = pending.try_recv() {
            jobs.push(job);
        }
        let types: Vec<&str> = jobs.iter().map(|j| j.event_type).collect();
        assert_eq!(types, ["call.hls_broadcasting_started", "call.ended"]);
        let events: Vec<Value> = jobs
            .iter()
            .map(|j| serde_json::from_slice(&j.body).unwrap_or_default())
            .collect();
        assert!(
            events[0]["hls_playlist_url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/master.m3u8"))
        );
        assert_eq!(events[0]["call"]["egress"]["broadcasting"], true);
        assert_eq!(events[1]["call"]["egress"]["broadcasting"], false);
        assert!(events[1]["call"]["ended_at"].is_i64());
        // Unix nanoseconds by default, as the official SDKs read them.
        let times: Vec<i64> = events
            .iter()
            .filter_map(|e| e["created_at"].as_i64())
            .collect();
        assert_eq!(times.len(), 2);
        assert!(times[0] < times[1], "{times:?}");
        assert_ne!(jobs[0].webhook_id, jobs[1].webhook_id);
    }
}
