//! Mapping between upstream URLs and the relay URLs written into playlists (pure; no I/O).
//!
//! A relay object URL is `/hls/{type}/{id}/{token}/{file}`:
//! - `file` is the upstream file name, kept so players and CDNs see the real extension (ffmpeg insists on it);
//! - `token` is `{signature}{kind}{location}`: `location` is the upstream URL without its file name (base64url),
//!   `kind` says whether the object is a playlist, and `signature` is an HMAC over the call, kind, location and
//!   file, keyed by `server.url_key`.
//!
//! The signature is what keeps the relay from being an open proxy: only URLs the relay itself wrote verify, with no
//! state to look up, so verification holds across restarts and across instances sharing the key. The mapping is
//! deterministic, as HLS requires (a media sequence number must keep its URI across reloads).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use url::Url;

use crate::call::CallId;

/// File name of the stable entry URL `/hls/{type}/{id}/index.m3u8`.
pub const ENTRY_PLAYLIST: &str = "index.m3u8";
/// Bytes of HMAC-SHA256 kept in a URL: 96 bits is far beyond guessing range and keeps URLs short.
const SIGNATURE_BYTES: usize = 12;
/// Base64url length of the signature.
const SIGNATURE_CHARS: usize = 16;
/// Longest token accepted; upstream URLs with long CDN signatures fit with room to spare.
pub const MAX_TOKEN_LEN: usize = 3072;
/// Stands for an empty upstream file name (a URL ending in `/`), which cannot be a path segment.
const EMPTY_FILE: &str = "_";

/// What an object is, decided by where the relay found its URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// Fetched whole, checked, rewritten, then served.
    Playlist,
    /// Segments, parts, init sections, keys and other bytes: streamed through untouched.
    Media,
}

impl ObjectKind {
    fn tag(self) -> char {
        match self {
            Self::Playlist => 'p',
            Self::Media => 'm',
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            b'p' => Some(Self::Playlist),
            b'm' => Some(Self::Media),
            _ => None,
        }
    }
}

/// Where a playlist the relay serves lives, so URIs inside it can be written relative to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaylistLocation {
    /// The stable entry URL `/hls/{type}/{id}/index.m3u8`.
    Entry,
    /// An object URL `/hls/{type}/{id}/{token}/{file}`.
    Object,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("malformed relay URL")]
    Malformed,
    #[error("this URL was not issued by the relay")]
    BadSignature,
}

/// A verified upstream object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamObject {
    pub url: Url,
    pub kind: ObjectKind,
}

/// Signs and verifies relay object URLs.
#[derive(Clone)]
pub struct UrlSigner {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner")
    }
}

impl UrlSigner {
    pub fn new(key: &[u8]) -> Self {
        Self {
            mac: Hmac::new_from_slice(key).expect("HMAC accepts keys of any length"),
        }
    }

    /// A signer with a random key: URLs it writes are valid for this process only.
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        Self::new(&key)
    }

    fn signature(
        &self,
        call: &CallId,
        kind: ObjectKind,
        location: &str,
        file: &str,
    ) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        for part in [call.kind(), call.id(), location, file] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&[kind.tag() as u8]);
        mac
    }

    /// The relay reference for `upstream`, relative to a playlist served at `from`.
    /// Returns None for URLs the relay cannot fetch (no http(s)), which stay as they are.
    pub fn relay_ref(
        &self,
        call: &CallId,
        upstream: &Url,
        kind: ObjectKind,
        from: PlaylistLocation,
    ) -> Option<String> {
        if !matches!(upstream.scheme(), "http" | "https") {
            return None;
        }
        let (location, file) = split_location(upstream);
        let file = if file.is_empty() { EMPTY_FILE } else { file };
        let signature = self
            .signature(call, kind, &location, file)
            .finalize()
            .into_bytes();
        let prefix = match from {
            PlaylistLocation::Entry => "",
            PlaylistLocation::Object => "../",
        };
        let mut out =
            String::with_capacity(prefix.len() + 24 + location.len() * 4 / 3 + file.len());
        out.push_str(prefix);
        URL_SAFE_NO_PAD.encode_string(&signature[..SIGNATURE_BYTES], &mut out);
        out.push(kind.tag());
        URL_SAFE_NO_PAD.encode_string(location.as_bytes(), &mut out);
        out.push('/');
        out.push_str(file);
        Some(out)
    }

    /// Checks a `{token}/{file}` pair from a request path and returns the upstream object it stands for.
    pub fn verify(
        &self,
        call: &CallId,
        token: &str,
        file: &str,
    ) -> Result<UpstreamObject, MapError> {
        if token.len() > MAX_TOKEN_LEN || token.len() <= SIGNATURE_CHARS + 1 || file.is_empty() {
            return Err(MapError::Malformed);
        }
        let (signature, rest) = token.split_at(SIGNATURE_CHARS);
        let kind = ObjectKind::from_tag(rest.as_bytes()[0]).ok_or(MapError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| MapError::Malformed)?;
        let location = URL_SAFE_NO_PAD
            .decode(&rest[1..])
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(MapError::Malformed)?;
        self.signature(call, kind, &location, file)
            .verify_truncated_left(&signature)
            .map_err(|_| MapError::BadSignature)?;
        let url = join_location(&location, file).ok_or(MapError::Malformed)?;
        Ok(UpstreamObject { url, kind })
    }
}

/// Splits an upstream URL into its location (everything but the file name, query included) and file name.
/// The fragment is dropped: it is never sent to a server.
fn split_location(url: &Url) -> (String, &str) {
    let path = url.path();
    let slash = path.rfind('/').map_or(0, |i| i + 1);
    let file = &path[slash..];
    let before_path = &url[..url::Position::BeforePath];
    let mut location = String::with_capacity(url.as_str().len());
    location.push_str(before_path);
    location.push_str(&path[..slash]);
    if let Some(query) = url.query() {
        location.push('?');
        location.push_str(query);
    }
    (location, file)
}

fn join_location(location: &str, file: &str) -> Option<Url> {
    let file = if file == EMPTY_FILE { "" } else { file };
    let (dir, query) = match location.split_once('?') {
        Some((dir, query)) => (dir, Some(query)),
        None => (location, None),
    };
    let mut joined = String::with_capacity(location.len() + file.len() + 1);
    joined.push_str(dir);
    joined.push_str(file);
    if let Some(query) = query {
        joined.push('?');
        joined.push_str(query);
    }
    let url = Url::parse(&joined).ok()?;
    matches!(url.scheme(), "http" | "https").then_some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallId {
        CallId::new("livestream", "abc").unwrap()
    }

    fn token_and_file(reference: &str) -> (&str, &str) {
        reference.trim_start_matches("../").split_once('/').unwrap()
    }

    #[test]
    fn round_trips_with_query_and_keeps_the_file_name() {
        let signer = UrlSigner::new(b"0123456789abcdef");
        let upstream =
            Url::parse("https://cdn.example.com/a/b/seg_0042.ts?sig=x%2Fy&e=1#frag").unwrap();
        let reference = signer
            .relay_ref(
                &call(),
                &upstream,
                ObjectKind::Media,
                PlaylistLocation::Entry,
            )
            .unwrap();
        assert!(reference.ends_with("/seg_0042.ts"));
        assert!(!reference.contains("cdn.example.com"));
        let (token, file) = token_and_file(&reference);
        let object = signer.verify(&call(), token, file).unwrap();
        assert_eq!(
            object.url.as_str(),
            "https://cdn.example.com/a/b/seg_0042.ts?sig=x%2Fy&e=1"
        );
        assert_eq!(object.kind, ObjectKind::Media);
    }

    #[test]
    fn is_deterministic_and_relative_to_the_playlist() {
        let signer = UrlSigner::new(b"0123456789abcdef");
        let upstream = Url::parse("http://h/x/index.m3u8").unwrap();
        let a = signer.relay_ref(
            &call(),
            &upstream,
            ObjectKind::Playlist,
            PlaylistLocation::Object,
        );
        let b = signer.relay_ref(
            &call(),
            &upstream,
            ObjectKind::Playlist,
            PlaylistLocation::Object,
        );
        assert_eq!(a, b);
        assert!(a.unwrap().starts_with("../"));
    }

    #[test]
    fn refuses_what_it_did_not_sign() {
        let signer = UrlSigner::new(b"0123456789abcdef");
        let upstream = Url::parse("https://cdn.example.com/a/seg.ts").unwrap();
        let reference = signer
            .relay_ref(
                &call(),
                &upstream,
                ObjectKind::Media,
                PlaylistLocation::Entry,
            )
            .unwrap();
        let (token, file) = token_and_file(&reference);

        let other_call = CallId::new("livestream", "other").unwrap();
        assert_eq!(
            signer.verify(&other_call, token, file),
            Err(MapError::BadSignature)
        );
        assert_eq!(
            signer.verify(&call(), token, "other.ts"),
            Err(MapError::BadSignature)
        );
        let as_playlist = token.replacen('m', "p", 1);
        assert!(signer.verify(&call(), &as_playlist, file).is_err());
        let evil = URL_SAFE_NO_PAD.encode("https://evil.example.com/");
        let forged = format!("{}m{evil}", &token[..SIGNATURE_CHARS]);
        assert_eq!(
            signer.verify(&call(), &forged, file),
            Err(MapError::BadSignature)
        );
        let other_key = UrlSigner::new(b"another key entirely");
        assert_eq!(
            other_key.verify(&call(), token, file),
            Err(MapError::BadSignature)
        );
        assert_eq!(
            signer.verify(&call(), "short", file),
            Err(MapError::Malformed)
        );
        assert_eq!(
            signer.verify(&call(), &"A".repeat(5000), file),
            Err(MapError::Malformed)
        );
    }

    #[test]
    fn leaves_unfetchable_schemes_alone_and_handles_directory_urls() {
        let signer = UrlSigner::random();
        let data = Url::parse("data:text/plain,hello").unwrap();
        assert!(
            signer
                .relay_ref(&call(), &data, ObjectKind::Media, PlaylistLocation::Entry)
                .is_none()
        );
        let dir = Url::parse("https://h/live/").unwrap();
        let reference = signer
            .relay_ref(&call(), &dir, ObjectKind::Playlist, PlaylistLocation::Entry)
            .unwrap();
        let (token, file) = token_and_file(&reference);
        assert_eq!(
            signer.verify(&call(), token, file).unwrap().url.as_str(),
            "https://h/live/"
        );
    }
}
