//! Mapping between upstream URLs and the relay URLs written into playlists (pure; no I/O).
//!
//! A relay object URL is `/hls/{type}/{id}/{location}/{name}/{file}`, and reveals nothing of upstream:
//! - `location` is the upstream URL's directory, query included (the CDN's host, path and signature), encrypted
//!   with AES-SIV under a key derived from `server.url_key` and bound to the call. Every file of one upstream
//!   directory shares it, so a media playlist refers to its segments as `../{name}/{file}`: relayed playlists
//!   stay close to upstream's size.
//! - `name` is the upstream file name and the object's kind (playlist or media), encrypted and bound to the
//!   `location` it came with.
//! - `file` is `p` or `m` (the kind) plus the upstream file's extension (`m.ts`, `p.m3u8`), because players and
//!   ffmpeg look at the extension; the rest of the upstream name is only in `name`.
//!
//! AES-SIV is deterministic authenticated encryption: the same object always gets the same URL, as HLS requires
//! (a media sequence number keeps its URI across reloads), and a URL the relay did not write fails to decrypt, so
//! nothing is fetched for it: the relay is not an open proxy. No state is kept, so URLs hold across restarts and
//! across instances that share the key. Several keys can be accepted at once (`server.url_keys`): URLs are
//! written with the first and read with any, which makes key rotation painless.

use std::sync::Arc;

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::Sha256;
use url::Url;

use crate::hls::playlist::{UriMapping, UriSite};
use crate::stream::call::CallId;

/// File name of the stable entry URL `/hls/{type}/{id}/index.m3u8`.
pub const ENTRY_PLAYLIST: &str = "index.m3u8";
/// Longest location accepted; upstream URLs with long CDN signatures fit with room to spare.
pub const MAX_LOCATION_LEN: usize = 3072;
/// Longest encrypted file name accepted.
pub const MAX_NAME_LEN: usize = 1024;
/// AES-SIV's synthetic IV, which is also its authentication tag: every encrypted part starts with it.
const SIV_BYTES: usize = 16;
/// Longest extension kept in the visible file name; longer ones are dropped (nothing a player looks at).
const MAX_EXTENSION_LEN: usize = 5;
/// How many of the previous version's references past the last one reused are looked at for the next URI: more
/// than the segments (or LL-HLS parts) a live playlist drops between two reloads; a URI further away is signed
/// again, which costs time but never correctness.
const MEMO_LOOKAHEAD: usize = 32;

/// What an object is, decided by where the relay found its URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// Fetched whole, checked, rewritten, then served.
    Playlist,
    /// Segments, parts, init sections, keys and other bytes: streamed through untouched.
    Media,
}

impl ObjectKind {
    /// Whether the URI at `site` names a playlist (fetched whole and rewritten) or media (streamed untouched).
    pub fn at(site: UriSite) -> Self {
        match site {
            UriSite::VariantLine => Self::Playlist,
            UriSite::SegmentLine => Self::Media,
            UriSite::Attribute { tag, attribute } => match (tag, attribute) {
                ("EXT-X-MEDIA" | "EXT-X-I-FRAME-STREAM-INF" | "EXT-X-RENDITION-REPORT", _)
                | ("EXT-X-DATERANGE", "X-ASSET-URI") => Self::Playlist,
                _ => Self::Media,
            },
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::Playlist => b'p',
            Self::Media => b'm',
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
pub enum PlaylistLocation<'a> {
    /// The stable entry URL `/hls/{type}/{id}/index.m3u8`.
    Entry,
    /// An object URL `/hls/{type}/{id}/{location}/{name}/{file}`, with its `location` segment.
    Object { location: &'a str },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("malformed relay URL")]
    Malformed,
    #[error("this URL was not issued by the relay (or under a key it no longer accepts)")]
    BadSignature,
}

/// A verified upstream object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamObject {
    pub url: Url,
    pub kind: ObjectKind,
}

/// One URL key, as AES-SIV-256 key material derived from the configured secret.
#[derive(Clone)]
struct UrlKey([u8; 64]);

impl UrlKey {
    /// HKDF-SHA256 from the configured secret: the secret may be any string, the cipher needs 64 uniform bytes.
    fn derive(secret: &[u8]) -> Self {
        let mut key = [0; 64];
        hkdf::Hkdf::<Sha256>::new(Some(b"hls-relay"), secret)
            .expand(b"relay URL AES-SIV v1", &mut key)
            .expect("64 bytes is a valid HKDF-SHA256 length");
        Self(key)
    }

    fn cipher(&self) -> Aes256Siv {
        Aes256Siv::new(&self.0.into())
    }
}

/// Writes and reads relay object URLs: the first key writes, any key reads.
#[derive(Clone)]
pub struct UrlCodec {
    keys: Arc<[UrlKey]>,
    /// Tells the writing key from another without revealing it, so references made under one key are never
    /// reused under another (see [`MappedUris`]). Never leaves the process.
    identity: [u8; 16],
}

impl std::fmt::Debug for UrlCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlCodec")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl UrlCodec {
    /// A codec with one key.
    pub fn new(key: &[u8]) -> Self {
        Self::with_keys(&[key])
    }

    /// A codec that writes with `keys[0]` and reads URLs written under any of `keys` (at least one).
    pub fn with_keys(keys: &[&[u8]]) -> Self {
        assert!(!keys.is_empty(), "a URL codec needs a key");
        let keys: Arc<[UrlKey]> = keys.iter().map(|key| UrlKey::derive(key)).collect();
        let mut identity = [0; 16];
        hkdf::Hkdf::<Sha256>::new(Some(b"hls-relay"), &keys[0].0)
            .expand(b"codec identity", &mut identity)
            .expect("16 bytes is a valid HKDF-SHA256 length");
        Self { keys, identity }
    }

    /// A codec with a random key: URLs it writes are valid for this process only.
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        Self::new(&key)
    }

    /// The relay reference for `upstream`, relative to a playlist served at `from`.
    /// Returns None for URLs the relay cannot fetch (no http(s)), which stay as they are.
    pub fn relay_ref(
        &self,
        call: &CallId,
        upstream: &Url,
        kind: ObjectKind,
        from: PlaylistLocation<'_>,
    ) -> Option<String> {
        let (location, file) = upstream_location(upstream)?;
        let mut location = Location::new(self, call, location, from);
        let mut reference = String::new();
        location.write_reference(file, kind, &mut reference);
        Some(reference)
    }

    /// Reads the `{location}/{name}/{file}` segments of a request path and returns the upstream object they stand
    /// for, if the relay wrote them (under any key it accepts) for this call.
    pub fn verify(
        &self,
        call: &CallId,
        location: &str,
        name: &str,
        file: &str,
    ) -> Result<UpstreamObject, MapError> {
        if location.is_empty() || location.len() > MAX_LOCATION_LEN {
            return Err(MapError::Malformed);
        }
        if name.is_empty() || name.len() > MAX_NAME_LEN || file.is_empty() {
            return Err(MapError::Malformed);
        }
        let decode = |text: &str| {
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| MapError::Malformed)
        };
        let (sealed_location, sealed_name) = (decode(location)?, decode(name)?);
        if sealed_location.len() < SIV_BYTES || sealed_name.len() <= SIV_BYTES {
            return Err(MapError::Malformed);
        }
        let opened = self.keys.iter().find_map(|key| {
            let mut cipher = key.cipher();
            let location = cipher
                .decrypt(location_headers(call), &sealed_location)
                .ok()?;
            let name = cipher
                .decrypt(name_headers(&sealed_location), &sealed_name)
                .ok()?;
            Some((location, name))
        });
        let (location, name) = opened.ok_or(MapError::BadSignature)?;
        // Written by the relay, so well-formed: anything else is a bug, not an attack, but is refused all the same.
        let (&tag, upstream_file) = name.split_first().ok_or(MapError::Malformed)?;
        let kind = ObjectKind::from_tag(tag).ok_or(MapError::Malformed)?;
        let upstream_file = std::str::from_utf8(upstream_file).map_err(|_| MapError::Malformed)?;
        let location = String::from_utf8(location).map_err(|_| MapError::Malformed)?;
        if file != visible_file(kind, upstream_file) {
            return Err(MapError::BadSignature);
        }
        let url = join_location(&location, upstream_file).ok_or(MapError::Malformed)?;
        Ok(UpstreamObject { url, kind })
    }
}

/// What a location's encryption is bound to: the call, so a URL of one call is worthless for another.
fn location_headers(call: &CallId) -> [&[u8]; 3] {
    [
        b"hls-relay location",
        call.kind().as_bytes(),
        call.id().as_bytes(),
    ]
}

/// What a file name's encryption is bound to: its location (through the location's synthetic IV, a MAC of the
/// call and the location), so names cannot be moved to another directory.
fn name_headers(sealed_location: &[u8]) -> [&[u8]; 2] {
    [b"hls-relay name", &sealed_location[..SIV_BYTES]]
}

/// The last path segment of a relay URL: the kind, and the upstream file's extension when it has a short one.
fn visible_file(kind: ObjectKind, upstream_file: &str) -> String {
    let stem = char::from(kind.tag());
    let extension = upstream_file
        .rsplit_once('.')
        .map(|(_, ext)| ext)
        .filter(|ext| {
            (1..=MAX_EXTENSION_LEN).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    match extension {
        Some(extension) => format!("{stem}.{}", extension.to_ascii_lowercase()),
        None => stem.to_string(),
    }
}

/// Maps the URIs of one playlist. They mostly share a location (segments side by side, often with one CDN query),
/// so a location's encoding and the MAC over everything before the file name are worked out once per location,
/// and plain relative names are joined to the playlist's directory without a URL parse: a live playlist of
/// hundreds of segments is rewritten on every upstream version. Given the previous version's [`MappedUris`]
/// ([`Self::reusing`]), URIs it already mapped are copied from it rather than signed again.
pub struct PlaylistMapper<'a> {
    codec: &'a UrlCodec,
    call: &'a CallId,
    base: &'a Url,
    from: PlaylistLocation<'a>,
    /// `scheme://authority/dir/` of `base`, when plain names can be appended to it as they are.
    base_dir: Option<String>,
    /// The location of the last URI signed, reused while the next ones share it.
    last: Option<Location>,
    /// The previous version's references, when they were made for this very mapping.
    previous: Option<&'a MappedUris>,
    /// Where in `previous` the next URI is looked for first: just after the last one found there.
    cursor: usize,
    /// This version's references, which also lends them to the rewriter.
    mapped: MappedUris,
}

impl<'a> PlaylistMapper<'a> {
    pub fn new(
        codec: &'a UrlCodec,
        call: &'a CallId,
        base: &'a Url,
        from: PlaylistLocation<'a>,
    ) -> Self {
        let base_dir = matches!(base.scheme(), "http" | "https").then(|| {
            let path = base.path();
            let dir_end = path.rfind('/').map_or(0, |slash| slash + 1);
            format!("{}{}", &base[..url::Position::BeforePath], &path[..dir_end])
        });
        let context = MappingContext {
            codec: codec.identity,
            call: call.clone(),
            base: base.as_str().to_owned(),
            served_at: match from {
                PlaylistLocation::Entry => None,
                PlaylistLocation::Object { location } => Some(location.to_owned()),
            },
        };
        Self {
            codec,
            call,
            base,
            from,
            base_dir,
            last: None,
            previous: None,
            cursor: 0,
            mapped: MappedUris {
                context,
                text: String::new(),
                entries: Vec::new(),
            },
        }
    }

    /// Copies references from `previous` (the references of the playlist's previous version) wherever it holds
    /// the same URI and kind, when it was made with the same key, call, base URL and serving location: references
    /// depend on all of them, so a memo made for a playlist that moved (a new playlist URL, another redirect) or
    /// for another call or key is ignored.
    pub fn reusing(mut self, previous: Option<&'a MappedUris>) -> Self {
        self.previous = previous.filter(|previous| previous.context == self.mapped.context);
        if let Some(previous) = self.previous {
            // The next version is about as long as the previous one.
            self.mapped
                .text
                .reserve(previous.text.len() + previous.text.len() / 8);
            self.mapped.entries.reserve(previous.entries.len() + 4);
        }
        self
    }

    /// Whether [`Self::reusing`] accepted the previous version's references.
    pub fn reuses_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// What `uri`, found at `site`, becomes in the relayed playlist; None leaves it as it is (not http(s)).
    pub fn map(&mut self, site: UriSite, uri: &str) -> Option<String> {
        self.replacement(site, uri).map(str::to_owned)
    }

    /// The kind of each URI replaced so far, in playlist order: one per mark the rewriter made, so the marks of
    /// playlist URIs can be told from those of media URIs.
    pub fn kinds(&self) -> impl Iterator<Item = ObjectKind> + '_ {
        self.mapped.entries.iter().map(|entry| entry.kind)
    }

    /// The references this mapper wrote, for the rewrite of the playlist's next version.
    pub fn into_mapped(self) -> MappedUris {
        let mut mapped = self.mapped;
        if mapped.text.capacity() - mapped.text.len() > mapped.text.len() / 8 {
            mapped.text.shrink_to_fit();
        }
        mapped.entries.shrink_to_fit();
        mapped
    }

    /// The reference `previous` holds for `uri` of `kind`, looked for from the cursor on: the URIs of a live
    /// playlist's next version come in the previous version's order, less those dropped from the start.
    fn remembered(&mut self, kind: ObjectKind, uri: &str) -> Option<&'a str> {
        let previous = self.previous?;
        let found = (self.cursor..previous.entries.len())
            .take(MEMO_LOOKAHEAD)
            .find(|&index| previous.entries[index].kind == kind && previous.uri(index) == uri)?;
        self.cursor = found + 1;
        Some(previous.reference(found))
    }

    /// Appends the reference for `uri` to `self.mapped.text`; false when the relay cannot fetch `uri`.
    fn write_reference(&mut self, kind: ObjectKind, uri: &str) -> bool {
        let joined;
        let file = match (&self.base_dir, plain_relative(uri)) {
            (Some(base_dir), Some((file, query))) => {
                let same = (self.last.as_ref()).is_some_and(|last| last.is_in(base_dir, query));
                if !same {
                    let query_len = query.map_or(0, |query| query.len() + 1);
                    let mut location = String::with_capacity(base_dir.len() + query_len);
                    location.push_str(base_dir);
                    if let Some(query) = query {
                        location.push('?');
                        location.push_str(query);
                    }
                    self.last = Some(Location::new(self.codec, self.call, location, self.from));
                }
                file
            }
            _ => {
                let Ok(url) = self.base.join(uri) else {
                    return false;
                };
                joined = url;
                let Some((location, file)) = upstream_location(&joined) else {
                    return false;
                };
                if self.last.as_ref().is_none_or(|last| last.text != location) {
                    self.last = Some(Location::new(self.codec, self.call, location, self.from));
                }
                file
            }
        };
        let location = self.last.as_mut().expect("set above");
        location.write_reference(file, kind, &mut self.mapped.text);
        true
    }
}

impl UriMapping for PlaylistMapper<'_> {
    fn replacement(&mut self, site: UriSite, uri: &str) -> Option<&str> {
        let kind = ObjectKind::at(site);
        let start = self.mapped.text.len();
        self.mapped.text.push_str(uri);
        let uri_end = self.mapped.text.len();
        match self.remembered(kind, uri) {
            Some(reference) => self.mapped.text.push_str(reference),
            None if self.write_reference(kind, uri) => {}
            None => {
                self.mapped.text.truncate(start);
                return None;
            }
        }
        self.mapped.entries.push(MappedUri {
            kind,
            uri_end,
            reference_end: self.mapped.text.len(),
        });
        Some(&self.mapped.text[uri_end..])
    }
}

/// The references one rewrite of a playlist wrote, in playlist order, kept with the cached playlist so the rewrite
/// of its next version copies them instead of signing again: a live playlist's next version is the previous one
/// less a segment or two at the start and plus one or two at the end, and signing is most of a cold rewrite.
/// Holds exactly one version's URIs, so it is about as large as the playlist.
pub struct MappedUris {
    /// What references depend on besides the URI and its kind.
    context: MappingContext,
    /// Each entry's URI, then its reference, back to back in entry order.
    text: String,
    entries: Vec<MappedUri>,
}

impl std::fmt::Debug for MappedUris {
    // Upstream URIs carry CDN signatures: kept out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedUris")
            .field("entries", &self.entries.len())
            .field("text_bytes", &self.text.len())
            .finish()
    }
}

impl MappedUris {
    /// Bytes held on the heap, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity()
            + self.entries.capacity() * std::mem::size_of::<MappedUri>()
            + self.context.base.len()
            + self.context.served_at.as_ref().map_or(0, String::len)
    }

    /// How many URIs it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn uri_start(&self, index: usize) -> usize {
        index
            .checked_sub(1)
            .map_or(0, |before| self.entries[before].reference_end)
    }

    fn uri(&self, index: usize) -> &str {
        &self.text[self.uri_start(index)..self.entries[index].uri_end]
    }

    fn reference(&self, index: usize) -> &str {
        let entry = &self.entries[index];
        &self.text[entry.uri_end..entry.reference_end]
    }
}

/// Everything besides a URI and its kind that its reference depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MappingContext {
    codec: [u8; 16],
    call: CallId,
    /// The URL relative URIs resolve against.
    base: String,
    /// The `location` segment the playlist is served at; None for the entry playlist.
    served_at: Option<String>,
}

/// One URI of [`MappedUris`]: its URI starts where the entry before it ends.
#[derive(Debug, Clone, Copy)]
struct MappedUri {
    kind: ObjectKind,
    uri_end: usize,
    reference_end: usize,
}

/// Splits `uri` into a file name and query when it is a plain relative reference (`seg_1.ts`, `seg_1.ts?sig=…`)
/// whose resolution against a directory is that directory followed by the URI, byte for byte: a name of
/// unreserved characters that is not a dot segment, and a query of characters URL parsing keeps as they are.
/// Anything else takes the full URL join.
fn plain_relative(uri: &str) -> Option<(&str, Option<&str>)> {
    let (file, query) = match uri.split_once('?') {
        Some((file, query)) => (file, Some(query)),
        None => (uri, None),
    };
    let plain_file = !file.is_empty()
        && file != "."
        && file != ".."
        && file.bytes().all(|b| PLAIN_FILE_BYTES[usize::from(b)]);
    let plain_query =
        query.is_none_or(|query| query.bytes().all(|b| PLAIN_QUERY_BYTES[usize::from(b)]));
    (plain_file && plain_query).then_some((file, query))
}

/// The bytes of a plain file name: unreserved characters. Tables rather than comparisons because every byte of
/// every URI of a playlist's first version is checked (this was a tenth of a cold rewrite).
const PLAIN_FILE_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-');
        byte += 1;
    }
    table
};

/// The bytes of a plain query: those URL parsing keeps as they are in a query.
const PLAIN_QUERY_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_graphic() && !matches!(b, b'"' | b'#' | b'<' | b'>' | b'\'');
        byte += 1;
    }
    table
};

/// The location and file name the relay URL of `upstream` carries, or None when the relay cannot fetch it.
fn upstream_location(upstream: &Url) -> Option<(String, &str)> {
    matches!(upstream.scheme(), "http" | "https").then(|| split_location(upstream))
}

/// One upstream location, ready to write references to the files in it.
struct Location {
    text: String,
    /// How the relay path names it from the playlist being rewritten: `../`, `../../{sealed}/` or `{sealed}/`.
    prefix: String,
    /// The location encrypted, as bytes: its first [`SIV_BYTES`] bind the names written in it.
    sealed: Vec<u8>,
    cipher: Aes256Siv,
}

impl Location {
    fn new(codec: &UrlCodec, call: &CallId, text: String, from: PlaylistLocation<'_>) -> Self {
        let mut cipher = codec.keys[0].cipher();
        let sealed = cipher
            .encrypt(location_headers(call), text.as_bytes())
            .expect("AES-SIV encrypts any length with three headers");
        let mut encoded = String::with_capacity(sealed.len() * 4 / 3 + 4);
        URL_SAFE_NO_PAD.encode_string(&sealed, &mut encoded);
        let prefix = match from {
            PlaylistLocation::Object { location } if location == encoded => "../".to_owned(),
            PlaylistLocation::Object { .. } => format!("../../{encoded}/"),
            PlaylistLocation::Entry => format!("{encoded}/"),
        };
        Self {
            text,
            prefix,
            sealed,
            cipher,
        }
    }

    /// Whether this is the directory `dir` with `query`, compared in place: building that location to compare
    /// would copy it once per URI.
    fn is_in(&self, dir: &str, query: Option<&str>) -> bool {
        let Some(rest) = self.text.strip_prefix(dir) else {
            return false;
        };
        match query {
            Some(query) => rest.strip_prefix('?') == Some(query),
            None => rest.is_empty(),
        }
    }

    /// Appends `{prefix}{name}/{file}` to `out`.
    fn write_reference(&mut self, upstream_file: &str, kind: ObjectKind, out: &mut String) {
        let mut name = Vec::with_capacity(1 + upstream_file.len() + SIV_BYTES);
        name.push(kind.tag());
        name.extend_from_slice(upstream_file.as_bytes());
        self.cipher
            .encrypt_in_place(name_headers(&self.sealed), &mut name)
            .expect("AES-SIV encrypts any length with two headers");
        let file = visible_file(kind, upstream_file);
        out.reserve(self.prefix.len() + name.len() * 4 / 3 + 2 + file.len());
        out.push_str(&self.prefix);
        URL_SAFE_NO_PAD.encode_string(&name, out);
        out.push('/');
        out.push_str(&file);
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

    #[test]
    fn renditions_are_playlists_and_everything_else_is_media() {
        assert_eq!(ObjectKind::at(UriSite::VariantLine), ObjectKind::Playlist);
        assert_eq!(ObjectKind::at(UriSite::SegmentLine), ObjectKind::Media);
        let media = UriSite::Attribute {
            tag: "EXT-X-MEDIA",
            attribute: "URI",
        };
        assert_eq!(ObjectKind::at(media), ObjectKind::Playlist);
        let map = UriSite::Attribute {
            tag: "EXT-X-MAP",
            attribute: "URI",
        };
        assert_eq!(ObjectKind::at(map), ObjectKind::Media);
    }

    fn call() -> CallId {
        CallId::new("livestream", "abc").unwrap()
    }

    /// The mapper's shortcuts (plain names joined without a URL parse, one MAC prefix per location) must write
    /// exactly what resolving each URI and signing it from scratch writes.
    fn assert_mapper_matches_full_join(base: &str, uris: &[&str]) {
        let signer = UrlCodec::new(b"k");
        let call = call();
        let base = Url::parse(base).unwrap();
        let served_at = "c29tZXdoZXJl";
        for from in [
            PlaylistLocation::Entry,
            PlaylistLocation::Object {
                location: served_at,
            },
        ] {
            let mut mapper = PlaylistMapper::new(&signer, &call, &base, from);
            for site in [UriSite::SegmentLine, UriSite::VariantLine] {
                for uri in uris {
                    let expected = base
                        .join(uri)
                        .ok()
                        .and_then(|url| signer.relay_ref(&call, &url, ObjectKind::at(site), from));
                    assert_eq!(mapper.map(site, uri), expected, "{uri} against {base}");
                }
            }
        }
    }

    #[test]
    fn playlist_mapper_writes_what_a_full_join_writes() {
        let uris = [
            "seg_1.ts",
            "seg_2.ts",
            "seg_2.ts?sig=abc&exp=1",
            "seg_3.ts?sig=abc&exp=1",
            "seg 4.ts",
            "seg%2e5.ts",
            "Seg_6.TS?a=b/c:d@e~!$()*+,;=%41`|^{}",
            "seg_7.ts?q=\"quoted\"",
            "seg_8.ts?q='single'",
            "seg_9.ts#fragment",
            "_",
            ".",
            "..",
            "a:b",
            "",
            "?only=query",
            "../up/seg.ts",
            "/root/seg.ts",
            "//other.example.com/seg.ts",
            "https://cdn.example.com/live/seg.ts?x=1",
            "data:text/plain,hello",
            "seg_é.ts",
            "seg_10.ts?é=1",
        ];
        assert_mapper_matches_full_join(
            "https://cdn.example.com/live/v1/index.m3u8?token=t",
            &uris,
        );
        assert_mapper_matches_full_join("http://127.0.0.1:8080/index.m3u8", &uris);
        assert_mapper_matches_full_join("https://cdn.example.com", &uris);
        assert_mapper_matches_full_join("https://cdn.example.com/a%20b/c.m3u8", &uris);
    }

    proptest::proptest! {
        #[test]
        fn playlist_mapper_matches_a_full_join_for_any_uri(uri in "[a-zA-Z0-9._~%?&=#:/ '\"<>-]{0,24}") {
            assert_mapper_matches_full_join("https://cdn.example.com/live/index.m3u8", &[&uri]);
        }
    }

    /// The version after `uris`: what a live playlist does between reloads, and what it should not but might.
    fn next_versions(uris: &[(UriSite, String)]) -> Vec<Vec<(UriSite, String)>> {
        let new = |name: &str| (UriSite::SegmentLine, name.to_owned());
        let mut slid = uris.get(1..).unwrap_or_default().to_vec();
        slid.push(new("seg_new.ts"));
        let mut many_dropped = uris[uris.len().min(40)..].to_vec();
        many_dropped.push(new("seg_new.ts"));
        let mut inserted = uris.to_vec();
        inserted.insert(uris.len() / 2, new("seg_inserted.ts"));
        let mut reversed = uris.to_vec();
        reversed.reverse();
        let as_playlists = uris
            .iter()
            .map(|(_, uri)| (UriSite::VariantLine, uri.clone()))
            .collect();
        vec![
            uris.to_vec(),
            slid,
            many_dropped,
            inserted,
            reversed,
            as_playlists,
            vec![],
        ]
    }

    /// Maps `uris` with `mapper`, returning what each became.
    fn map_all(mut mapper: PlaylistMapper<'_>, uris: &[(UriSite, String)]) -> Vec<Option<String>> {
        uris.iter()
            .map(|(site, uri)| mapper.map(*site, uri))
            .collect()
    }

    fn mapped(mapper: PlaylistMapper<'_>, uris: &[(UriSite, String)]) -> MappedUris {
        let mut mapper = mapper;
        for (site, uri) in uris {
            mapper.map(*site, uri);
        }
        mapper.into_mapped()
    }

    /// A next version mapped with the previous version's references must come out exactly as mapped from scratch.
    fn assert_memo_changes_nothing(base: &str, uris: &[(UriSite, String)]) {
        let signer = UrlCodec::new(b"k");
        let call = call();
        let base = Url::parse(base).unwrap();
        for from in [
            PlaylistLocation::Entry,
            PlaylistLocation::Object {
                location: "c29tZXdoZXJl",
            },
        ] {
            let previous = mapped(PlaylistMapper::new(&signer, &call, &base, from), uris);
            for next in next_versions(uris) {
                let cold = map_all(PlaylistMapper::new(&signer, &call, &base, from), &next);
                let mapper =
                    PlaylistMapper::new(&signer, &call, &base, from).reusing(Some(&previous));
                assert!(mapper.reuses_previous());
                assert_eq!(map_all(mapper, &next), cold, "{next:?}");
            }
        }
    }

    fn live_uris(count: usize) -> Vec<(UriSite, String)> {
        let map = UriSite::Attribute {
            tag: "EXT-X-MAP",
            attribute: "URI",
        };
        let key = UriSite::Attribute {
            tag: "EXT-X-KEY",
            attribute: "URI",
        };
        let mut uris = vec![
            (map, "init.mp4?token=t".to_owned()),
            (key, "https://keys.example.com/k/1".to_owned()),
        ];
        for sequence in 0..count {
            uris.push((UriSite::SegmentLine, format!("seg_{sequence}.m4s?token=t")));
            if sequence % 10 == 9 {
                // Keys rotate: the same key URI comes back, as do others now and then.
                uris.push((key, "https://keys.example.com/k/1".to_owned()));
            }
        }
        uris.push((
            UriSite::Attribute {
                tag: "EXT-X-PRELOAD-HINT",
                attribute: "URI",
            },
            format!("seg_{count}.m4s?token=t"),
        ));
        uris.push((
            UriSite::Attribute {
                tag: "EXT-X-RENDITION-REPORT",
                attribute: "URI",
            },
            "../720p/index.m3u8".to_owned(),
        ));
        uris.push((UriSite::SegmentLine, "data-but-not-really:x".to_owned()));
        uris
    }

    #[test]
    fn the_previous_versions_references_change_nothing() {
        assert_memo_changes_nothing(
            "https://cdn.example.com/live/1080p/index.m3u8?token=t",
            &live_uris(100),
        );
        assert_memo_changes_nothing("http://127.0.0.1:8080/index.m3u8", &live_uris(3));
    }

    proptest::proptest! {
        #[test]
        fn the_previous_versions_references_change_nothing_for_any_uris(
            uris in proptest::collection::vec(
                (proptest::bool::ANY, "[a-c0-9._?=/:%-]{0,8}"),
                0..24,
            ),
        ) {
            let uris: Vec<(UriSite, String)> = uris
                .into_iter()
                .map(|(variant, uri)| {
                    let site = if variant { UriSite::VariantLine } else { UriSite::SegmentLine };
                    (site, uri)
                })
                .collect();
            assert_memo_changes_nothing("https://cdn.example.com/live/index.m3u8", &uris);
        }
    }

    #[test]
    fn references_are_reused_only_for_the_same_key_call_base_and_location() {
        let signer = UrlCodec::new(b"k");
        let call = call();
        let base = Url::parse("https://cdn.example.com/live/index.m3u8").unwrap();
        let from = PlaylistLocation::Object {
            location: "c29tZXdoZXJl",
        };
        let uris = live_uris(5);
        let mut previous = mapped(PlaylistMapper::new(&signer, &call, &base, from), &uris);
        // Mark every reference kept, so that one reused shows.
        let marked = previous.text.replace("/m.m4s", "/M.m4s");
        previous.text = marked;
        let reused = map_all(
            PlaylistMapper::new(&signer, &call, &base, from).reusing(Some(&previous)),
            &uris,
        );
        assert!(reused.iter().flatten().any(|r| r.contains("/M.m4s")));

        let other_signer = UrlCodec::new(b"other key");
        let other_call = CallId::new("livestream", "other").unwrap();
        let other_base = Url::parse("https://cdn2.example.com/live/index.m3u8").unwrap();
        let moved = Url::parse("https://cdn.example.com/live/index.m3u8?token=new").unwrap();
        let elsewhere = PlaylistLocation::Object {
            location: "ZWxzZXdoZXJl",
        };
        for mapper in [
            PlaylistMapper::new(&other_signer, &call, &base, from),
            PlaylistMapper::new(&signer, &other_call, &base, from),
            PlaylistMapper::new(&signer, &call, &other_base, from),
            PlaylistMapper::new(&signer, &call, &moved, from),
            PlaylistMapper::new(&signer, &call, &base, elsewhere),
            PlaylistMapper::new(&signer, &call, &base, PlaylistLocation::Entry),
        ] {
            let (signer, call, base, from) = (mapper.codec, mapper.call, mapper.base, mapper.from);
            let mapper = mapper.reusing(Some(&previous));
            assert!(!mapper.reuses_previous());
            let cold = map_all(PlaylistMapper::new(signer, call, base, from), &uris);
            assert_eq!(map_all(mapper, &uris), cold);
        }
    }

    #[test]
    fn mapped_uris_hold_exactly_the_last_versions_uris() {
        let signer = UrlCodec::new(b"k");
        let call = call();
        let base = Url::parse("https://cdn.example.com/live/index.m3u8").unwrap();
        let from = PlaylistLocation::Entry;
        let uris = live_uris(50);
        let first = mapped(PlaylistMapper::new(&signer, &call, &base, from), &uris);
        // All but the one the relay cannot fetch.
        assert_eq!(first.len(), uris.len() - 1);
        let next = &uris[uris.len() - 3..];
        let second = mapped(
            PlaylistMapper::new(&signer, &call, &base, from).reusing(Some(&first)),
            next,
        );
        assert_eq!(second.len(), 2);
        let kept: Vec<&str> = (0..second.len()).map(|index| second.uri(index)).collect();
        assert_eq!(kept, ["seg_50.m4s?token=t", "../720p/index.m3u8"]);
        assert!(second.heap_bytes() < first.heap_bytes());
    }

    /// Splits a reference written from the entry playlist into (location, seal, file).
    fn parts(reference: &str) -> (&str, &str, &str) {
        let mut parts = reference.splitn(3, '/');
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    }

    fn from_entry(signer: &UrlCodec, url: &str, kind: ObjectKind) -> String {
        let url = Url::parse(url).unwrap();
        signer
            .relay_ref(&call(), &url, kind, PlaylistLocation::Entry)
            .unwrap()
    }

    #[test]
    fn round_trips_with_query_and_keeps_only_the_extension_in_clear() {
        let signer = UrlCodec::new(b"0123456789abcdef");
        let reference = from_entry(
            &signer,
            "https://cdn.example.com/a/b/seg_0042.ts?sig=x%2Fy&e=1#frag",
            ObjectKind::Media,
        );
        assert!(reference.ends_with("/m.ts"), "{reference}");
        for secret in ["cdn.example.com", "seg_0042", "sig=", "/a/b/"] {
            assert!(!reference.contains(secret), "{reference}");
        }
        let (location, seal, file) = parts(&reference);
        let object = signer.verify(&call(), location, seal, file).unwrap();
        assert_eq!(
            object.url.as_str(),
            "https://cdn.example.com/a/b/seg_0042.ts?sig=x%2Fy&e=1"
        );
        assert_eq!(object.kind, ObjectKind::Media);
    }

    #[test]
    fn siblings_of_a_playlist_are_referred_to_briefly_and_deterministically() {
        let signer = UrlCodec::new(b"0123456789abcdef");
        let playlist = from_entry(&signer, "http://h/live/v1/index.m3u8", ObjectKind::Playlist);
        let (location, _, _) = parts(&playlist);
        let from = PlaylistLocation::Object { location };
        let segment = Url::parse("http://h/live/v1/seg_1.ts").unwrap();
        let sibling = signer
            .relay_ref(&call(), &segment, ObjectKind::Media, from)
            .unwrap();
        let name_chars = ((SIV_BYTES + 1 + "seg_1.ts".len()) * 4).div_ceil(3);
        assert_eq!(sibling.len(), "../".len() + name_chars + "/m.ts".len());
        assert_eq!(
            Some(sibling),
            signer.relay_ref(&call(), &segment, ObjectKind::Media, from)
        );

        let elsewhere = Url::parse("http://h/live/v2/seg_1.ts").unwrap();
        let cousin = signer
            .relay_ref(&call(), &elsewhere, ObjectKind::Media, from)
            .unwrap();
        assert!(cousin.starts_with("../../"));
    }

    #[test]
    fn refuses_what_it_did_not_sign() {
        let signer = UrlCodec::new(b"0123456789abcdef");
        let reference = from_entry(
            &signer,
            "https://cdn.example.com/a/seg.ts",
            ObjectKind::Media,
        );
        let (location, seal, file) = parts(&reference);

        let other_call = CallId::new("livestream", "other").unwrap();
        assert_eq!(
            signer.verify(&other_call, location, seal, file),
            Err(MapError::BadSignature)
        );
        for other_file in ["p.ts", "m.mp4", "m", "seg.ts"] {
            assert_eq!(
                signer.verify(&call(), location, seal, other_file),
                Err(MapError::BadSignature)
            );
        }
        let evil = URL_SAFE_NO_PAD.encode("https://evil.example.com/");
        assert_eq!(
            signer.verify(&call(), &evil, seal, file),
            Err(MapError::BadSignature)
        );
        let other_key = UrlCodec::new(b"another key entirely");
        assert_eq!(
            other_key.verify(&call(), location, seal, file),
            Err(MapError::BadSignature)
        );
        assert_eq!(
            signer.verify(&call(), location, "short", file),
            Err(MapError::Malformed)
        );
        let long = "A".repeat(5000);
        assert_eq!(
            signer.verify(&call(), &long, seal, file),
            Err(MapError::Malformed)
        );
    }

    #[test]
    fn urls_written_under_an_old_key_are_read_while_it_is_listed() {
        let old = UrlCodec::new(b"the old key, 16+");
        let reference = from_entry(
            &old,
            "https://cdn.example.com/a/seg.ts?s=1",
            ObjectKind::Media,
        );
        let (location, name, file) = parts(&reference);
        let rotated = UrlCodec::with_keys(&[b"the new key, 16+", b"the old key, 16+"]);
        let object = rotated.verify(&call(), location, name, file).unwrap();
        assert_eq!(object.url.as_str(), "https://cdn.example.com/a/seg.ts?s=1");
        let written = from_entry(
            &rotated,
            "https://cdn.example.com/a/seg.ts?s=1",
            ObjectKind::Media,
        );
        assert_ne!(
            written, reference,
            "new URLs are written with the first key"
        );
        let retired = UrlCodec::new(b"the new key, 16+");
        assert_eq!(
            retired.verify(&call(), location, name, file),
            Err(MapError::BadSignature)
        );
        let (location, name, file) = parts(&written);
        assert!(retired.verify(&call(), location, name, file).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn decode_of_encode_is_the_upstream_url_and_any_changed_byte_is_refused(
            path in "(/[a-zA-Z0-9._~%-]{0,12}){1,4}",
            query in proptest::option::of("[a-zA-Z0-9=&%._-]{0,40}"),
            playlist in proptest::bool::ANY,
            flip in 0usize..4096,
            bit in 0u8..8,
        ) {
            let codec = UrlCodec::new(b"0123456789abcdef");
            let kind = if playlist { ObjectKind::Playlist } else { ObjectKind::Media };
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            let upstream = Url::parse(&format!("https://cdn.example.com{path}{query}")).unwrap();
            let reference = codec
                .relay_ref(&call(), &upstream, kind, PlaylistLocation::Entry)
                .unwrap();
            let (location, name, file) = parts(&reference);
            let object = codec.verify(&call(), location, name, file).unwrap();
            proptest::prop_assert_eq!(&object.url, &upstream);
            proptest::prop_assert_eq!(object.kind, kind);
            // One bit changed anywhere in the two encrypted segments: never accepted.
            let mut bytes = format!("{location}/{name}").into_bytes();
            let at = flip % bytes.len();
            bytes[at] ^= 1 << bit;
            if let Ok(changed) = String::from_utf8(bytes)
                && let Some((location, name)) = changed.split_once('/')
            {
                proptest::prop_assert!(codec.verify(&call(), location, name, file).is_err());
            }
        }
    }

    #[test]
    fn awkward_file_names_round_trip_inside_the_location() {
        let signer = UrlCodec::new(b"0123456789abcdef");
        for url in [
            "http://h/a%2Eb.ts",
            "http://h/a%2Fb.ts?x=1",
            "http://h/_",
            "http://h/dir/",
        ] {
            let reference = from_entry(&signer, url, ObjectKind::Media);
            let (location, seal, file) = parts(&reference);
            assert!(
                crate::http::server::check_path(&reference).is_ok(),
                "{reference}"
            );
            assert_eq!(
                signer
                    .verify(&call(), location, seal, file)
                    .unwrap()
                    .url
                    .as_str(),
                url
            );
        }
        assert_eq!(
            signer.verify(&call(), "aHR0cHM6Ly9oLw", "aaaaaaaaaaa\u{e9}", "x.ts"),
            Err(MapError::Malformed)
        );
    }

    #[test]
    fn leaves_unfetchable_schemes_alone_and_handles_directory_urls() {
        let signer = UrlCodec::random();
        let data = Url::parse("data:text/plain,hello").unwrap();
        assert!(
            signer
                .relay_ref(&call(), &data, ObjectKind::Media, PlaylistLocation::Entry)
                .is_none()
        );
        let reference = from_entry(&signer, "https://h/live/", ObjectKind::Playlist);
        let (location, seal, file) = parts(&reference);
        let object = signer.verify(&call(), location, seal, file).unwrap();
        assert_eq!(object.url.as_str(), "https://h/live/");
    }
}
