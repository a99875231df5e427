//! A webhook delivery's checks, in the order that costs least to a forger: the app key, the content coding, the
//! size (decompressed, bounded while inflating), then the signature over the uncompressed JSON.
//!
//! Stream signs each delivery with `X-Signature`, the hex HMAC-SHA256 of the **uncompressed** JSON keyed by the
//! API secret, and names its app in `X-Api-Key`. With webhook compression on, the body is gzipped and says so in
//! `Content-Encoding`; a proxy may have inflated it on the way (header kept or dropped), so gzip is recognised by
//! its magic bytes whatever the header says.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::payload::{self, PayloadError};

/// Larger events are refused (413), compressed or not: Stream's events are a few KiB.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What arrived, as the HTTP shell read it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub content_encoding: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub api_key: Option<&'a str>,
    /// The body as received (gzip or not).
    pub body: &'a [u8],
}

/// The app a delivery must come from.
#[derive(Debug, Clone, Copy)]
pub struct App<'a> {
    pub api_key: &'a str,
    pub api_secret: &'a [u8],
}

/// Why a delivery was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("X-Api-Key names another Stream app than this relay's")]
    OtherApp,
    #[error("Content-Encoding {0:?} is not supported: Stream sends gzip or nothing")]
    UnsupportedEncoding(String),
    #[error("webhook body is over {limit} bytes (decompressed)")]
    TooLarge { limit: usize },
    #[error("webhook body is not valid gzip: {0}")]
    BadGzip(String),
    #[error(
        "missing or wrong X-Signature: the uncompressed body must be signed with the app's API secret"
    )]
    BadSignature,
}

/// Checks a delivery and gives its JSON (inflated), or says why it is refused.
pub fn open(delivery: Delivery<'_>, app: App<'_>) -> Result<Vec<u8>, Refusal> {
    if delivery
        .api_key
        .is_some_and(|key| key.trim() != app.api_key)
    {
        return Err(Refusal::OtherApp);
    }
    if let Some(coding) = delivery.content_encoding {
        let coding = coding.trim();
        let known = ["", "identity", "gzip", "x-gzip"]
            .iter()
            .any(|known| coding.eq_ignore_ascii_case(known));
        if !known {
            return Err(Refusal::UnsupportedEncoding(coding.to_owned()));
        }
    }
    let json =
        payload::webhook_json(delivery.body, MAX_BODY_BYTES).map_err(|error| match error {
            PayloadError::TooLarge { limit } => Refusal::TooLarge { limit },
            PayloadError::BadGzip(reason) => Refusal::BadGzip(reason),
            PayloadError::Unrecognised => Refusal::BadGzip(error.to_string()),
        })?;
    let signed = delivery
        .signature
        .is_some_and(|signature| signature_is_valid(app.api_secret, &json, signature));
    if !signed {
        return Err(Refusal::BadSignature);
    }
    Ok(json)
}

/// Whether `signature` (hex) is the HMAC-SHA256 of `body` under `secret`, compared in constant time.
pub fn signature_is_valid(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(signature) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// The hex HMAC-SHA256 of `body` under `secret`: what Stream puts in `X-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const APP: App<'static> = App {
        api_key: "key",
        api_secret: b"secret",
    };
    const EVENT: &[u8] = br#"{"type":"call.ended","call_cid":"a:b"}"#;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn delivery<'a>(body: &'a [u8], signature: &'a str) -> Delivery<'a> {
        Delivery {
            content_encoding: None,
            signature: Some(signature),
            api_key: Some("key"),
            body,
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_hex_of_the_body() {
        let good = sign(b"secret", EVENT);
        assert!(signature_is_valid(b"secret", EVENT, &good));
        assert!(!signature_is_valid(b"other", EVENT, &good));
        assert!(!signature_is_valid(b"secret", b"{}", &good));
        assert!(!signature_is_valid(b"secret", EVENT, "zz"));
        assert!(!signature_is_valid(b"secret", EVENT, ""));
    }

    #[test]
    fn plain_and_compressed_deliveries_open_to_the_same_json() {
        let signature = sign(b"secret", EVENT);
        assert_eq!(open(delivery(EVENT, &signature), APP).unwrap(), EVENT);
        let compressed = gzip(EVENT);
        for coding in [None, Some("gzip"), Some("GZIP"), Some("identity")] {
            let delivery = Delivery {
                content_encoding: coding,
                ..delivery(&compressed, &signature)
            };
            assert_eq!(open(delivery, APP).unwrap(), EVENT, "{coding:?}");
        }
        // Inflated by a proxy that kept the header.
        let inflated = Delivery {
            content_encoding: Some("gzip"),
            ..delivery(EVENT, &signature)
        };
        assert_eq!(open(inflated, APP).unwrap(), EVENT);
        // No X-Api-Key at all is not a refusal: older deliveries may lack it.
        let keyless = Delivery {
            api_key: None,
            ..delivery(EVENT, &signature)
        };
        assert!(open(keyless, APP).is_ok());
    }

    #[test]
    fn refusals() {
        let compressed = gzip(EVENT);
        let over_compressed = sign(b"secret", &compressed);
        assert_eq!(
            open(delivery(&compressed, &over_compressed), APP),
            Err(Refusal::BadSignature),
            "the signature covers the uncompressed JSON"
        );
        let signature = sign(b"secret", EVENT);
        let other_app = Delivery {
            api_key: Some("another-key"),
            ..delivery(EVENT, &signature)
        };
        assert_eq!(open(other_app, APP), Err(Refusal::OtherApp));
        let brotli = Delivery {
            content_encoding: Some("br"),
            ..delivery(EVENT, &signature)
        };
        assert_eq!(
            open(brotli, APP),
            Err(Refusal::UnsupportedEncoding("br".into()))
        );
        let bomb = gzip(&vec![b'{'; 10 << 20]);
        assert_eq!(
            open(delivery(&bomb, &signature), APP),
            Err(Refusal::TooLarge {
                limit: MAX_BODY_BYTES
            })
        );
        assert!(matches!(
            open(delivery(&[0x1f, 0x8b, 1, 2, 3], &signature), APP),
            Err(Refusal::BadGzip(_))
        ));
    }
}
