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

/// A session, by its id as written (ids are canonical base64url, so equal ids are equal sessions): looking one up
/// needs no decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId(pub [u8; ID_LEN]);

impl SessionId {
    /// A short, stable name for the session in the fleet's shared state: its random part (16 characters of
    /// base64url are exactly its 12 random bytes).
    pub fn shared_name(&self) -> &str {
        std::str::from_utf8(&self.0[..RANDOM_BYTES / 3 * 4]).expect("ids are ASCII")
    }
}

/// Ids are random, and only verified ones are ever stored: their first bytes are as good as a hash (hashing them
/// again with SipHash was a fifth of the cost of counting a reload).
impl std::hash::Hash for SessionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// The hasher of maps keyed by [`SessionId`]: it passes on the `u64` an id gives it.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

pub type BuildIdHasher = std::hash::BuildHasherDefault<IdHasher>;

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
        let text = URL_SAFE_NO_PAD.encode(raw);
        let id = Self::parse(&text).expect("an encoded id has the length of one");
        (id, text)
    }

    /// The session `text` names, if it is an id this key minted for `call`.
    pub fn verify(&self, call: &CallId, text: &str) -> Option<SessionId> {
        let id = Self::parse(text)?;
        let mut raw = [0; RANDOM_BYTES + TAG_BYTES];
        // Canonical decoding (stray trailing bits are refused): one id per session.
        let written = URL_SAFE_NO_PAD.decode_slice(text, &mut raw).ok()?;
        if written != raw.len() {
            return None;
        }
        let mut random = [0; RANDOM_BYTES];
        random.copy_from_slice(&raw[..RANDOM_BYTES]);
        let expected = self.tag(call, &random);
        let valid = subtle::ConstantTimeEq::ct_eq(&raw[RANDOM_BYTES..], &expected[..]);
        bool::from(valid).then_some(id)
    }

    /// The session `text` claims to be, unverified: to find a session already verified on this instance without
    /// decoding it or computing its tag again.
    pub fn parse(text: &str) -> Option<SessionId> {
        let bytes: [u8; ID_LEN] = text.as_bytes().try_into().ok()?;
        Some(SessionId(bytes))
    }
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
        assert_eq!(id.shared_name(), &text[..16]);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(id.shared_name()).unwrap(),
            [7; RANDOM_BYTES]
        );
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
