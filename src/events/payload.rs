//! The forms an event's JSON arrives in, decoded with bounded memory.
//!
//! - A webhook body: the JSON, or gzip of it (Stream's "webhook compression"). A proxy may have inflated it on the
//!   way, so gzip is recognised by its magic bytes (`1f 8b`, which JSON never starts with), as Stream's SDKs do.
//! - An SQS message body: the JSON, or base64(gzip(JSON)) when compression is on, or an SNS notification envelope
//!   (`{"Type":"Notification","Message":"<one of those>",…}`) when the queue is subscribed to a topic without raw
//!   delivery.
//!
//! Inflation stops at the limit, so a gzip bomb costs at most the limit in memory.

use std::io::Read;

use base64::Engine;
use serde::Deserialize;

/// gzip's magic bytes (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("the event is larger than {limit} bytes once decompressed")]
    TooLarge { limit: usize },
    #[error("the body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("the message is neither event JSON, base64(gzip(JSON)) nor an SNS notification")]
    Unrecognised,
}

pub fn is_gzip(body: &[u8]) -> bool {
    body.starts_with(&GZIP_MAGIC)
}

/// gzip-decompresses `compressed` into at most `limit` bytes.
pub fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, PayloadError> {
    let mut inflated = Vec::with_capacity(limit.min(compressed.len().saturating_mul(4)));
    // One byte past the limit tells "exactly at the limit" from "over it" without reading the rest.
    let read = flate2::read::MultiGzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated);
    match read {
        Err(error) => Err(PayloadError::BadGzip(error.to_string())),
        Ok(_) if inflated.len() > limit => Err(PayloadError::TooLarge { limit }),
        Ok(_) => Ok(inflated),
    }
}

/// A webhook body as JSON: inflated when it is gzip (whatever `Content-Encoding` said), as is otherwise.
pub fn webhook_json(body: &[u8], limit: usize) -> Result<Vec<u8>, PayloadError> {
    if is_gzip(body) {
        gunzip(body, limit)
    } else if body.len() > limit {
        Err(PayloadError::TooLarge { limit })
    } else {
        Ok(body.to_vec())
    }
}

#[derive(Deserialize)]
struct SnsEnvelope {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Message")]
    message: String,
}

/// An SQS message body as event JSON: the JSON itself, base64(gzip(JSON)), or either inside an SNS envelope.
pub fn queue_message_json(body: &str, limit: usize) -> Result<Vec<u8>, PayloadError> {
    let body = body.trim();
    if body.len() > limit.saturating_mul(2) {
        // Even base64 of a compressed event that big would inflate past the limit.
        return Err(PayloadError::TooLarge { limit });
    }
    if body.starts_with('{') {
        if let Ok(envelope) = serde_json::from_str::<SnsEnvelope>(body)
            && envelope.kind == "Notification"
        {
            return unwrapped_json(envelope.message.trim(), limit);
        }
        return checked_json(body.as_bytes().to_vec(), limit);
    }
    unwrapped_json(body, limit)
}

/// A payload that is not an envelope: JSON, or base64(gzip(JSON)).
fn unwrapped_json(payload: &str, limit: usize) -> Result<Vec<u8>, PayloadError> {
    if payload.starts_with('{') {
        return checked_json(payload.as_bytes().to_vec(), limit);
    }
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|_| PayloadError::Unrecognised)?;
    if !is_gzip(&compressed) {
        return Err(PayloadError::Unrecognised);
    }
    checked_json(gunzip(&compressed, limit)?, limit)
}

fn checked_json(json: Vec<u8>, limit: usize) -> Result<Vec<u8>, PayloadError> {
    if json.len() > limit {
        return Err(PayloadError::TooLarge { limit });
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&json).is_err() {
        return Err(PayloadError::Unrecognised);
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const EVENT: &str = r#"{"type":"call.ended","call_cid":"livestream:a"}"#;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn base64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn webhook_bodies_are_inflated_by_their_magic_bytes() {
        assert_eq!(
            webhook_json(&gzip(EVENT.as_bytes()), 1024).unwrap(),
            EVENT.as_bytes()
        );
        assert_eq!(
            webhook_json(EVENT.as_bytes(), 1024).unwrap(),
            EVENT.as_bytes()
        );
        assert_eq!(
            webhook_json(EVENT.as_bytes(), 10),
            Err(PayloadError::TooLarge { limit: 10 })
        );
        assert!(matches!(
            webhook_json(&[0x1f, 0x8b, 0, 0], 1024),
            Err(PayloadError::BadGzip(_))
        ));
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b' '; 10 << 20]);
        assert!(bomb.len() < 64 * 1024, "10 MiB of spaces compress well");
        assert_eq!(
            gunzip(&bomb, 256 * 1024),
            Err(PayloadError::TooLarge { limit: 256 * 1024 })
        );
        let exact = gzip(&[b'x'; 100]);
        assert_eq!(gunzip(&exact, 100).unwrap().len(), 100);
    }

    #[test]
    fn queue_messages_in_every_form_give_the_event() {
        let compressed = base64(&gzip(EVENT.as_bytes()));
        let envelope = |message: &str| {
            serde_json::json!({"Type": "Notification", "MessageId": "m-1",
                "TopicArn": "arn:aws:sns:us-east-1:1:stream", "Message": message})
            .to_string()
        };
        for body in [
            EVENT.to_owned(),
            format!("  {EVENT}\n"),
            compressed.clone(),
            envelope(EVENT),
            envelope(&compressed),
        ] {
            assert_eq!(
                queue_message_json(&body, 1024).unwrap(),
                EVENT.as_bytes(),
                "{body}"
            );
        }
    }

    #[test]
    fn garbage_messages_are_unrecognised() {
        for body in [
            "",
            "hello",
            "{not json",
            &base64(b"not gzip"),
            &base64(&gzip(b"not json")),
            r#"{"Type":"Notification","Message":"hello"}"#,
        ] {
            assert!(queue_message_json(body, 1024).is_err(), "{body:?}");
        }
        let bomb = base64(&gzip(&vec![b' '; 10 << 20]));
        assert_eq!(
            queue_message_json(&bomb, 256 * 1024),
            Err(PayloadError::TooLarge { limit: 256 * 1024 })
        );
    }
}
