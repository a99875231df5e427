//! Viewer session ids (pure; no I/O): random, unguessable, and verifiable by any instance that shares the URL key,
//! with no state kept anywhere.
//!
//! An id is `base64url(12 random bytes ‖ 8-byte tag)`, 27 characters, where the tag is HMAC-SHA256 over the call
//! and the random bytes, under a key derived (HKDF-SHA256) from the URL key. 96 random bits make ids unguessable
//! and collisions negligible; 64 bits of tag make forging one as hard as guessing it. The tag binds an id to its
//! call, so an id from one call counts nothing on another.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::stream::call::CallId;

/// Random bytes of an id: what identifies the session.
pub const RANDOM_BYTES: usize = 12;
const TAG_BYTES: usize = 8;
/// Length of an id as written into URLs.
pub const ID_LEN: usize = 27;

/// A verified session: its random part, the same on every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; RANDOM_BYTES]);

impl SessionId {
    /// A short, stable name for the session in the fleet's shared state (the random part, base64url).
    pub fn shared_name(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

/// Mints and verifies session ids.
#[derive(Clone)]
pub struct SessionKey {
    mac: hmac::Hmac<Sha256>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// The key for ids under `secret` (the URL key): instances sharing it accept each other's ids.
    pub fn derive(secret: &[u8]) -> Self {
        let mut key = [0; 32];
        hkdf::Hkdf::<Sha256>::new(Some(b"hls-relay"), secret)
            .expand(b"viewer session id v1", &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Self {
            mac: hmac::Hmac::new_from_slice(&key).expect("HMAC takes any key length"),
        }
    }

    fn tag(&self, call: &CallId, random: &[u8; RANDOM_BYTES]) -> [u8; TAG_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(call.kind().as_bytes());
        mac.update(b":");
        mac.update(call.id().as_bytes());
        mac.update(b"\0");
        mac.update(random);
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }

    /// The id of a new session of `call`, from `random` (the caller's CSPRNG output).
    pub fn mint(&self, call: &CallId, random: [u8; RANDOM_BYTES]) -> (SessionId, String) {
        let mut raw = [0; RANDOM_BYTES + TAG_BYTES];
        raw[..RANDOM_BYTES].copy_from_slice(&random);
        raw[RANDOM_BYTES..].copy_from_slice(&self.tag(call, &random));
        (SessionId(random), URL_SAFE_NO_PAD.encode(raw))
    }

    /// The session `text` names, if it is an id this key minted for `call`.
    pub fn verify(&self, call: &CallId, text: &str) -> Option<SessionId> {
        let raw = decode(text)?;
        let id = random_part(&raw);
        let expected = self.tag(call, &id.0);
        bool::from(subtle::ConstantTimeEq::ct_eq(
            &raw[RANDOM_BYTES..],
            &expected[..],
        ))
        .then_some(id)
    }

    /// The session `text` claims to be, unverified: to find a session already verified on this instance without
    /// computing its tag again.
    pub fn parse(text: &str) -> Option<SessionId> {
        decode(text).map(|raw| random_part(&raw))
    }
}

fn decode(text: &str) -> Option<[u8; RANDOM_BYTES + TAG_BYTES]> {
    if text.len() != ID_LEN {
        return None;
    }
    let mut raw = [0; RANDOM_BYTES + TAG_BYTES];
    let written = URL_SAFE_NO_PAD.decode_slice(text, &mut raw).ok()?;
    (written == raw.len()).then_some(raw)
}

fn random_part(raw: &[u8; RANDOM_BYTES + TAG_BYTES]) -> SessionId {
    let mut random = [0; RANDOM_BYTES];
    random.copy_from_slice(&raw[..RANDOM_BYTES]);
    SessionId(random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(id: &str) -> CallId {
        CallId::new("livestream", id).unwrap()
    }

    #[test]
    fn ids_verify_under_the_same_key_for_the_same_call_only() {
        let key = SessionKey::derive(b"test-url-key-0123456789");
        let (id, text) = key.mint(&call("a"), [7; RANDOM_BYTES]);
        assert_eq!(text.len(), ID_LEN);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(key.verify(&call("a"), &text), Some(id));
        let same_key = SessionKey::derive(b"test-url-key-0123456789");
        assert_eq!(
            same_key.verify(&call("a"), &text),
            Some(id),
            "another instance"
        );
        assert_eq!(key.verify(&call("b"), &text), None, "another call");
        let other_key = SessionKey::derive(b"another-url-key-0123456789");
        assert_eq!(other_key.verify(&call("a"), &text), None);
        assert_eq!(key.verify(&call("a"), ""), None);
        assert_eq!(key.verify(&call("a"), &text[1..]), None);
        assert_eq!(key.verify(&call("a"), &format!("{text}A")), None);
        assert_eq!(SessionKey::parse(&text), Some(id));
    }

    proptest! {
        #[test]
        fn any_changed_character_is_refused(random in any::<[u8; RANDOM_BYTES]>(), at in 0..ID_LEN, to in "[A-Za-z0-9_-]") {
            let key = SessionKey::derive(b"k");
            let (_, text) = key.mint(&call("a"), random);
            let mut forged = text.clone();
            forged.replace_range(at..at + 1, &to);
            prop_assert_eq!(key.verify(&call("a"), &forged).is_some(), forged == text);
        }
    }
}
