//! Events as instances of one fleet pass them to each other through the shared event log (`cluster`): what an
//! instance applied, with the time that orders it, so that every other instance applies the same change.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;

use super::{Action, Event};
use crate::stream::call::CallId;

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    cid: String,
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    playlist_url: Option<String>,
    /// Unix nanoseconds: exact, so ordering by `created_at` is the same on every instance.
    created_at: i128,
}

/// The log entry for an applied event.
pub fn encode(event: &Event) -> String {
    let playlist_url = match &event.action {
        Action::Started { playlist_url } => playlist_url.as_ref().map(Url::to_string),
        _ => None,
    };
    let wire = Wire {
        kind: event.kind.clone(),
        cid: event.call.to_string(),
        action: event.action.label().to_owned(),
        playlist_url,
        created_at: event.created_at.unix_timestamp_nanos(),
    };
    serde_json::to_string(&wire).expect("an event always serializes")
}

/// An entry another instance appended; `None` for one this version cannot read (a newer or older format).
pub fn decode(entry: &str) -> Option<Event> {
    let wire: Wire = serde_json::from_str(entry).ok()?;
    let action = match wire.action.as_str() {
        "started" => Action::Started {
            playlist_url: wire
                .playlist_url
                .as_deref()
                .and_then(|u| Url::parse(u).ok()),
        },
        "stopped" => Action::Stopped,
        "failed" => Action::Failed,
        _ => return None,
    };
    Some(Event {
        kind: wire.kind,
        call: CallId::from_cid(&wire.cid).ok()?,
        created_at: OffsetDateTime::from_unix_timestamp_nanos(wire.created_at).ok()?,
        timed: true,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_log() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_687_200_123_456_789).unwrap();
        for action in [
            Action::Started {
                playlist_url: Some(
                    Url::parse("https://cdn.example.com/a/master.m3u8?sig=x").unwrap(),
                ),
            },
            Action::Started { playlist_url: None },
            Action::Stopped,
            Action::Failed,
        ] {
            let event = Event {
                kind: "call.broadcasting_started".into(),
                call: CallId::new("livestream", "a").unwrap(),
                created_at: at,
                timed: true,
                action,
            };
            assert_eq!(decode(&encode(&event)), Some(event));
        }
        assert_eq!(decode("garbage"), None);
        assert_eq!(
            decode(r#"{"type":"x","cid":"a:b","action":"exploded","created_at":1}"#),
            None
        );
    }
}
