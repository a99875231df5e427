//! How the relay learns that a broadcast started, stopped or failed, and how it tells pages.
//!
//! Stream delivers the same events several ways; each way only gets the event's JSON to [`parse`], and the relay
//! applies every event the same way (`Relay::apply_event`), whatever its [`Source`]:
//!
//! ```text
//! webhook  (POST, X-Signature, maybe gzip) ─► webhook::open ──┐
//! SQS / SNS→SQS (JSON, base64(gzip), envelope) ─► payload ────┼─► parse ─► Relay::apply_event ─► resolver, hub
//! ```
//!
//! - [`timestamp`]: Stream's timestamps in every form it sends them.
//! - [`payload`]: bounded gzip inflation and the queue message forms (pure).
//! - [`webhook`]: a delivery's checks: app key, content coding, size, signature (pure).
//! - [`replay`]: the webhook ids already applied, so that a retried delivery is applied once.
//! - [`fleet`]: events as instances of one fleet pass them on (through `cluster`).
//! - [`sqs`]: the SQS consumer (long polling, backoff, deletes once applied), off unless `events.sqs_queue_url`.
//! - [`hub`]: the per-call channels that Server-Sent Events read.

pub mod fleet;
pub mod hub;
pub mod payload;
pub mod replay;
pub mod sqs;
pub mod timestamp;
pub mod webhook;

use serde::Deserialize;
use time::OffsetDateTime;
use url::Url;

use crate::stream::api;
use crate::stream::call::CallId;
use crate::stream::resolver::Resolution;

/// Where an event reached the relay from: a metric label and a log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Webhook,
    Sqs,
    /// Another instance of the fleet applied it (`cluster`).
    Fleet,
    /// This instance's own look-up found the change (no event said so).
    Poll,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Sqs => "sqs",
            Self::Fleet => "fleet",
            Self::Poll => "poll",
        }
    }
}

/// What became of an event, as metrics, logs and webhook answers say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Older (`created_at`) than an event already applied to the call: a late or replayed delivery.
    Stale,
    /// A webhook delivery whose `X-Webhook-Id` was already applied.
    Duplicate,
    /// Not about a broadcast: acknowledged and counted.
    Ignored,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }
}

/// A verified event, reduced to what the relay acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    pub call: CallId,
    pub created_at: OffsetDateTime,
    /// Whether `created_at` came from the event (false: the time it was received stands in).
    pub timed: bool,
    pub action: Action,
}

impl Event {
    /// What a look-up found, as an event: how an instance tells its fleet of a change that no event announced.
    pub fn found_by_poll(call: &CallId, resolution: &Resolution, at: OffsetDateTime) -> Self {
        let (kind, action) = match resolution {
            Resolution::Live { playlist_url } => (
                "call.broadcasting_started",
                Action::Started {
                    playlist_url: Some(playlist_url.clone()),
                },
            ),
            Resolution::NotBroadcasting | Resolution::NotFound => {
                ("call.broadcasting_stopped", Action::Stopped)
            }
        };
        Event {
            kind: kind.into(),
            call: call.clone(),
            created_at: at,
            timed: true,
            action,
        }
    }

    /// The call's state once the event is applied; `None` when the event does not say it all (a start without a
    /// playlist URL) or says nothing about the broadcast.
    pub fn resolution(&self) -> Option<Resolution> {
        match &self.action {
            Action::Started { playlist_url } => playlist_url
                .clone()
                .map(|playlist_url| Resolution::Live { playlist_url }),
            Action::Stopped | Action::Failed => Some(Resolution::NotBroadcasting),
            Action::Ignored => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// HLS is on; the playlist URL when the event carries one.
    Started {
        playlist_url: Option<Url>,
    },
    Stopped,
    Failed,
    /// Not about the broadcast: counted and acknowledged.
    Ignored,
}

impl Action {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Ignored => "ignored",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("event is not JSON: {0}")]
    NotJson(String),
    #[error("event has no usable call_cid")]
    NoCall,
    #[error("event created_at is neither an RFC 3339 time nor Unix nanoseconds: {0}")]
    BadTime(String),
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    created_at: Option<serde_json::Value>,
    call_cid: Option<String>,
    hls_playlist_url: Option<String>,
    #[serde(default)]
    call: Option<serde_json::Value>,
}

/// Event types whose names are metric labels; any other type counts as "other", so senders cannot grow the
/// metric's cardinality.
const KNOWN_TYPES: &[&str] = &[
    "call.broadcasting_started",
    "call.broadcasting_stopped",
    "call.broadcasting_failed",
    "call.hls_broadcasting_started",
    "call.hls_broadcasting_stopped",
    "call.hls_broadcasting_failed",
    "call.live_started",
    "call.ended",
    "call.session_ended",
    "call.updated",
];

pub fn type_label(kind: &str) -> &'static str {
    KNOWN_TYPES
        .iter()
        .find(|known| **known == kind)
        .copied()
        .unwrap_or("other")
}

/// Reads an event's JSON (already verified or trusted). `received_at` stands in for a missing `created_at`.
pub fn parse(body: &[u8], received_at: OffsetDateTime) -> Result<Event, EventError> {
    let raw: RawEvent =
        serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    let cid = raw
        .call_cid
        .clone()
        .or_else(|| {
            let cid = raw.call.as_ref()?.get("cid")?.as_str()?;
            Some(cid.to_owned())
        })
        .ok_or(EventError::NoCall)?;
    let call = CallId::from_cid(&cid).map_err(|_| EventError::NoCall)?;
    let (created_at, timed) = match &raw.created_at {
        None | Some(serde_json::Value::Null) => (received_at, false),
        Some(value) => (
            timestamp::parse(value).ok_or_else(|| EventError::BadTime(value.to_string()))?,
            true,
        ),
    };
    let action = action_of(&raw);
    Ok(Event {
        kind: raw.kind,
        call,
        created_at,
        timed,
        action,
    })
}

fn action_of(raw: &RawEvent) -> Action {
    // The event's `call` is the get-call response's `call`: read it the same way.
    let playlist_in_call = || {
        let call = raw.call.as_ref()?;
        api::call_state(&serde_json::json!({ "call": call })).ok()
    };
    match raw.kind.as_str() {
        "call.broadcasting_started" | "call.hls_broadcasting_started" => {
            let from_event = raw
                .hls_playlist_url
                .as_deref()
                .and_then(|u| Url::parse(u).ok());
            let playlist_url = from_event
                .or_else(|| playlist_in_call().and_then(|state| state.playlist_url))
                .filter(|url| matches!(url.scheme(), "http" | "https"));
            Action::Started { playlist_url }
        }
        "call.broadcasting_stopped"
        | "call.hls_broadcasting_stopped"
        | "call.ended"
        | "call.session_ended" => Action::Stopped,
        "call.broadcasting_failed" | "call.hls_broadcasting_failed" => Action::Failed,
        // These carry the call's state; they matter only when it says something about HLS.
        "call.updated" | "call.live_started" => match playlist_in_call() {
            Some(state) if state.broadcasting => Action::Started {
                playlist_url: state.playlist_url,
            },
            Some(_) if raw.kind == "call.updated" => Action::Stopped,
            _ => Action::Ignored,
        },
        _ => Action::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    #[test]
    fn started_events_carry_the_playlist_url_under_either_name() {
        for kind in ["call.broadcasting_started", "call.hls_broadcasting_started"] {
            let body = format!(
                r#"{{"type":"{kind}","created_at":"2026-11-26T10:00:00.123456789Z",
                "call_cid":"livestream:abc","hls_playlist_url":"https://cdn.example.com/m.m3u8"}}"#
            );
            let event = parse(body.as_bytes(), now()).unwrap();
            assert_eq!(event.call.to_string(), "livestream:abc");
            assert_eq!(event.created_at.nanosecond(), 123_456_789);
            assert!(event.timed);
            let Action::Started { playlist_url } = event.action else {
                panic!("expected a start");
            };
            assert_eq!(
                playlist_url.unwrap().as_str(),
                "https://cdn.example.com/m.m3u8"
            );
        }
    }

    #[test]
    fn created_at_is_read_as_text_or_unix_nanoseconds() {
        let at = |created_at: &str| {
            let body =
                format!(r#"{{"type":"call.ended","call_cid":"a:b","created_at":{created_at}}}"#);
            parse(body.as_bytes(), now()).unwrap().created_at
        };
        let text = at(r#""2026-11-26T10:00:00.5Z""#);
        assert_eq!(at("1795687200500000000"), text);
        assert_eq!(at(r#""1795687200500000000""#), text);
        let untimed = parse(br#"{"type":"call.ended","call_cid":"a:b"}"#, now()).unwrap();
        assert!(!untimed.timed);
        assert_eq!(untimed.created_at, now());
    }

    #[test]
    fn endings_and_failures_and_the_rest() {
        let event = |kind: &str| {
            let body = format!(r#"{{"type":"{kind}","call_cid":"default:x"}}"#);
            parse(body.as_bytes(), now()).unwrap().action
        };
        assert_eq!(event("call.broadcasting_stopped"), Action::Stopped);
        assert_eq!(event("call.hls_broadcasting_stopped"), Action::Stopped);
        assert_eq!(event("call.ended"), Action::Stopped);
        assert_eq!(event("call.session_ended"), Action::Stopped);
        assert_eq!(event("call.broadcasting_failed"), Action::Failed);
        assert_eq!(event("call.reaction_new"), Action::Ignored);
        assert_eq!(event("call.live_started"), Action::Ignored);
        assert_eq!(type_label("call.reaction_new"), "other");
    }

    #[test]
    fn call_updated_follows_the_egress_state_it_carries() {
        let body =
            br#"{"type":"call.updated","call":{"cid":"livestream:y","egress":{"broadcasting":true,
            "hls":{"playlist_url":"https://cdn.example.com/y.m3u8"}}}}"#;
        let event = parse(body, now()).unwrap();
        assert_eq!(event.call.to_string(), "livestream:y");
        assert!(matches!(
            event.action,
            Action::Started {
                playlist_url: Some(_)
            }
        ));
    }

    #[test]
    fn malformed_events_are_errors() {
        assert!(matches!(
            parse(b"<xml/>", now()),
            Err(EventError::NotJson(_))
        ));
        assert_eq!(
            parse(br#"{"type":"call.ended"}"#, now()),
            Err(EventError::NoCall)
        );
        assert_eq!(
            parse(br#"{"type":"call.ended","call_cid":"BAD CID"}"#, now()),
            Err(EventError::NoCall)
        );
        for created_at in [r#""yesterday""#, "1.5", "true"] {
            let body =
                format!(r#"{{"type":"call.ended","call_cid":"a:b","created_at":{created_at}}}"#);
            assert!(matches!(
                parse(body.as_bytes(), now()),
                Err(EventError::BadTime(_))
            ));
        }
    }
}
