//! Stream's webhooks: signature check over the raw body, then what each event means for the call's broadcast.
//!
//! Stream signs each delivery with `X-Signature`, the hex HMAC-SHA256 of the exact body keyed by the API secret.
//! The check runs before parsing, in constant time. Deliveries may repeat or arrive out of order; the resolver
//! applies an event only if it is not older than one already applied to the call.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

use crate::call::CallId;
use crate::stream_api;

/// Larger bodies are refused (413): Stream's events are a few KiB.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Whether `signature` (hex) is the HMAC-SHA256 of `body` under `secret`.
pub fn signature_is_valid(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(signature) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// A verified event, reduced to what the relay acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    pub call: CallId,
    pub created_at: OffsetDateTime,
    pub action: Action,
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
    #[error("event created_at is not an RFC 3339 time: {0}")]
    BadTime(String),
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    created_at: Option<String>,
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

/// Reads a (verified) event body. `received_at` stands in for a missing `created_at`.
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
    let created_at = match &raw.created_at {
        Some(text) => {
            OffsetDateTime::parse(text, &Rfc3339).map_err(|_| EventError::BadTime(text.clone()))?
        }
        None => received_at,
    };
    let action = action_of(&raw);
    Ok(Event {
        kind: raw.kind,
        call,
        created_at,
        action,
    })
}

fn action_of(raw: &RawEvent) -> Action {
    // The event's `call` is the get-call response's `call`: read it the same way.
    let playlist_in_call = || {
        let call = raw.call.as_ref()?;
        let body = serde_json::to_vec(&serde_json::json!({ "call": call })).ok()?;
        stream_api::parse_call_state(&body).ok()
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
    fn signatures_are_hmac_sha256_hex_of_the_raw_body() {
        let body = br#"{"type":"call.ended"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(body);
        let good = hex::encode(mac.finalize().into_bytes());
        assert!(signature_is_valid(b"secret", body, &good));
        assert!(!signature_is_valid(b"other", body, &good));
        assert!(!signature_is_valid(b"secret", b"{}", &good));
        assert!(!signature_is_valid(b"secret", body, "zz"));
        assert!(!signature_is_valid(b"secret", body, ""));
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
        assert!(matches!(
            parse(
                br#"{"type":"call.ended","call_cid":"a:b","created_at":"yesterday"}"#,
                now()
            ),
            Err(EventError::BadTime(_))
        ));
    }
}
