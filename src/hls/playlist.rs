//! Playlist reading and URI rewriting (pure; no I/O).
//!
//! [`rewrite`] is a line scanner, not a parse-and-serialize round trip: players must get the upstream playlist
//! with nothing but its URIs changed, and any serializer drops or reorders what it does not model (unknown tags,
//! comments, attribute order, spacing, line endings). [`inspect`] reads the few facts the relay needs to cache and
//! serve a playlist. Section numbers refer to draft-pantos-hls-rfc8216bis.

use std::borrow::Cow;
use std::time::Duration;

/// Where a URI sits in the playlist, so the caller can pick the right mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriSite {
    /// A URI line after EXT-X-STREAM-INF (a variant playlist).
    VariantLine,
    /// A URI line in a media playlist (a media segment).
    SegmentLine,
    /// `URI="…"` of the named tag, e.g. "EXT-X-MAP", "EXT-X-KEY", "EXT-X-MEDIA", "EXT-X-PART", "EXT-X-PRELOAD-HINT",
    /// "EXT-X-RENDITION-REPORT", "EXT-X-I-FRAME-STREAM-INF", "EXT-X-SESSION-KEY", "EXT-X-SESSION-DATA";
    /// also "EXT-X-CONTENT-STEERING" (attribute SERVER-URI) and "EXT-X-DATERANGE" (X-ASSET-URI, X-ASSET-LIST).
    Attribute {
        tag: &'static str,
        attribute: &'static str,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaylistError {
    #[error("not an HLS playlist: it does not start with #EXTM3U")]
    NotAPlaylist,
    #[error("playlist is not valid UTF-8")]
    NotUtf8,
    #[error("playlist is malformed: {0}")]
    Malformed(String),
}

/// Rewrites every URI in `body` through `map` and keeps every other byte as it was.
///
/// `map(site, uri)` gets the URI exactly as written, after EXT-X-DEFINE NAME/VALUE substitution, and returns
/// `Some(replacement)` or `None` to leave it untouched. It must be deterministic (players give up when the URI of a
/// media sequence number changes between reloads) and give the same replacement at sites that clients compare:
/// an EXT-X-SESSION-KEY must come out equal to its EXT-X-KEY, an EXT-X-PRELOAD-HINT equal to the EXT-X-PART that
/// later lists the same resource. The replacement must be URI-safe: no `"`, CR or LF (it lands inside quoted
/// strings and on its own line); debug builds assert this.
///
/// What `map` is never asked about, because the URI is not a resource a client fetches through us:
/// - `data:` and `skd:` URIs (inline data; FairPlay key identifiers for the CDM);
/// - EXT-X-KEY / EXT-X-SESSION-KEY with METHOD=NONE, or with a KEYFORMAT other than "identity" (DRM systems);
/// - URIs that still hold a `{$name}` reference after substitution: QUERYPARAM and IMPORT variables get their
///   values outside this playlist, so rewriting such a URI would change what the player later resolves.
///
/// A URI line is a non-blank line whose first non-whitespace character is not `#`; surrounding whitespace stays
/// around the replacement. It is a [`UriSite::VariantLine`] when an EXT-X-STREAM-INF came after the previous URI
/// line (other tags and comments may stand between the two), else a [`UriSite::SegmentLine`].
///
/// Errors: [`PlaylistError::NotAPlaylist`] without `#EXTM3U` at the start (a UTF-8 BOM before it is allowed and
/// kept), [`PlaylistError::NotUtf8`], and [`PlaylistError::Malformed`] when the attribute list of a URI-bearing tag
/// cannot be read or its URI is not a quoted string: passing such a URI through would send players to upstream.
pub fn rewrite(
    body: &[u8],
    map: impl FnMut(UriSite, &str) -> Option<String>,
) -> Result<Vec<u8>, PlaylistError> {
    rewrite_marked(body, map).map(|rewritten| rewritten.body)
}

/// A rewritten playlist and where each replaced URI ends in it, so per-viewer query parameters can be spliced in
/// without rewriting again ([`with_query`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub body: Vec<u8>,
    pub uri_ends: Vec<usize>,
}

/// As [`rewrite`], also marking where the replacements end.
pub fn rewrite_marked(
    body: &[u8],
    map: impl FnMut(UriSite, &str) -> Option<String>,
) -> Result<Rewritten, PlaylistError> {
    let mut mapping = OwnedReplacements {
        map,
        last: String::new(),
    };
    rewrite_marked_with(body, &mut mapping)
}

/// The `map` of [`rewrite`] as a trait whose replacements are lent rather than given: a mapping that keeps what it
/// wrote anyway (the relay's, for the playlist's next version) then costs no allocation per URI.
pub trait UriMapping {
    /// What `uri`, found at `site`, becomes; None leaves it as it is. The contract of `map` in [`rewrite`] holds.
    fn replacement(&mut self, site: UriSite, uri: &str) -> Option<&str>;
}

/// A closure mapping, lending the replacement it last returned.
struct OwnedReplacements<F> {
    map: F,
    last: String,
}

impl<F: FnMut(UriSite, &str) -> Option<String>> UriMapping for OwnedReplacements<F> {
    fn replacement(&mut self, site: UriSite, uri: &str) -> Option<&str> {
        self.last = (self.map)(site, uri)?;
        Some(&self.last)
    }
}

/// As [`rewrite_marked`], through a [`UriMapping`].
pub fn rewrite_marked_with(
    body: &[u8],
    mapping: &mut impl UriMapping,
) -> Result<Rewritten, PlaylistError> {
    let text = playlist_text(body)?;
    let mut rewriter = Rewriter::new(text, mapping);
    for line in lines(without_bom(text)) {
        rewriter.line(line)?;
    }
    Ok(rewriter.finish())
}

/// `body` with `query` (`name=value`, URI-safe) added to the URI ending at each of `uri_ends`: a viewer's access
/// token carried into every URI of a shared playlist, at the cost of one copy.
pub fn with_query(body: &[u8], uri_ends: &[usize], query: &str) -> Vec<u8> {
    with_queries(body, uri_ends, Some(query), &[], None)
}

/// `body` with `every` added to the URI ending at each of `uri_ends`, and `some` to those ending at `some_ends`
/// (a subset of `uri_ends`, both ascending), after `every`: a viewer's token goes into every URI while its session
/// id goes only into playlist URIs, so that media URIs stay the same for every viewer (shared, cacheable). One copy.
pub fn with_queries(
    body: &[u8],
    uri_ends: &[usize],
    every: Option<&str>,
    some_ends: &[usize],
    some: Option<&str>,
) -> Vec<u8> {
    let every_len = every.map_or(0, |query| query.len() + 1);
    let some_len = some.map_or(0, |query| query.len() + 1);
    let mut out =
        Vec::with_capacity(body.len() + uri_ends.len() * every_len + some_ends.len() * some_len);
    let mut copied = 0;
    let mut some_ends = some_ends.iter().peekable();
    for &end in uri_ends {
        let marked = some_ends.next_if_eq(&&end).is_some();
        let queries = [every, some.filter(|_| marked)];
        if queries.iter().all(Option::is_none) {
            continue;
        }
        let uri_start = body[..end]
            .iter()
            .rposition(|&b| matches!(b, b'"' | b'\n' | b' ' | b'\t'))
            .map_or(0, |i| i + 1);
        let mut has_query = body[uri_start..end].contains(&b'?');
        out.extend_from_slice(&body[copied..end]);
        for query in queries.into_iter().flatten() {
            out.push(if has_query { b'&' } else { b'?' });
            out.extend_from_slice(query.as_bytes());
            has_query = true;
        }
        copied = end;
    }
    debug_assert!(
        some_ends.next().is_none(),
        "some_ends is not a subset of uri_ends"
    );
    out.extend_from_slice(&body[copied..]);
    out
}

/// What the relay needs to know about a playlist to cache and serve it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistInfo {
    pub kind: PlaylistKind,
    /// EXT-X-TARGETDURATION; `Some` exactly for media playlists.
    pub target_duration: Option<Duration>,
    /// EXT-X-MEDIA-SEQUENCE, 0 when absent.
    pub media_sequence: u64,
    /// Media segments the playlist accounts for: those listed plus those an EXT-X-SKIP (delta update) stands for,
    /// so that the next segment's media sequence number is always `media_sequence + segment_count`.
    pub segment_count: usize,
    /// EXT-X-ENDLIST present.
    pub ended: bool,
    /// EXT-X-PART-INF PART-TARGET.
    pub part_target: Option<Duration>,
    /// EXT-X-SERVER-CONTROL CAN-BLOCK-RELOAD=YES.
    pub can_block_reload: bool,
    /// EXT-X-SERVER-CONTROL CAN-SKIP-UNTIL.
    pub can_skip_until: Option<Duration>,
    /// Parts (EXT-X-PART) listed after the last full segment, i.e. of the segment being produced
    /// (MSN = media_sequence + segment_count).
    pub trailing_parts: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaylistKind {
    Master,
    Media,
}

/// Reads playlist semantics: m3u8-rs for what it models (kind, target duration, media sequence, end list), the
/// rewriter's tag scanner for Low-Latency HLS, which m3u8-rs does not know, and for what m3u8-rs gets wrong:
/// - segments are the scanner's URI lines (the very lines [`rewrite`] maps as [`UriSite::SegmentLine`]): m3u8-rs
///   cuts an EXTINF title at its first comma and counts the rest of the title as one more segment;
/// - m3u8-rs silently skips values it cannot parse (`#EXT-X-MEDIA-SEQUENCE: 5` reads as sequence 0) and, at a line
///   it cannot read, stops and reports success; so the scanner checks those values and we check that m3u8-rs read
///   everything, since wrong sequence numbers or a missed EXT-X-ENDLIST break blocking reloads and caching.
///
/// Errors: as [`rewrite`], plus [`PlaylistError::Malformed`] for a playlist that mixes master and media tags, a
/// media playlist without a valid EXT-X-TARGETDURATION, unreadable values of the tags read here, and lines
/// m3u8-rs cannot read.
pub fn inspect(body: &[u8]) -> Result<PlaylistInfo, PlaylistError> {
    let text = without_bom(playlist_text(body)?);
    let facts = TagFacts::scan(text)?;
    if facts.has_master_tags && facts.has_media_tags {
        return Err(malformed("it mixes master and media playlist tags"));
    }
    match read_with_m3u8_rs(text)? {
        m3u8_rs::Playlist::MasterPlaylist(_) if !facts.has_media_tags => Ok(master_info()),
        m3u8_rs::Playlist::MediaPlaylist(media) if !facts.has_master_tags => {
            media_info(&media, &facts)
        }
        _ => Err(malformed(
            "m3u8-rs and the tag scanner disagree on its kind",
        )),
    }
}

/// The tags whose attributes hold URIs (§4.4; interstitials: Appendix D), and the attributes that do.
const URI_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("EXT-X-MAP", &["URI"]),
    ("EXT-X-KEY", &["URI"]),
    ("EXT-X-PART", &["URI"]),
    ("EXT-X-PRELOAD-HINT", &["URI"]),
    ("EXT-X-RENDITION-REPORT", &["URI"]),
    ("EXT-X-DATERANGE", &["X-ASSET-URI", "X-ASSET-LIST"]),
    ("EXT-X-MEDIA", &["URI"]),
    ("EXT-X-I-FRAME-STREAM-INF", &["URI"]),
    ("EXT-X-SESSION-DATA", &["URI"]),
    ("EXT-X-SESSION-KEY", &["URI"]),
    ("EXT-X-CONTENT-STEERING", &["SERVER-URI"]),
];

/// Tags that only a master (multivariant) playlist may hold, and tags that only a media playlist may hold.
const MASTER_ONLY_TAGS: &[&str] = &[
    "EXT-X-STREAM-INF",
    "EXT-X-I-FRAME-STREAM-INF",
    "EXT-X-MEDIA",
    "EXT-X-SESSION-DATA",
    "EXT-X-SESSION-KEY",
    "EXT-X-CONTENT-STEERING",
];
const MEDIA_ONLY_TAGS: &[&str] = &[
    "EXTINF",
    "EXT-X-TARGETDURATION",
    "EXT-X-MEDIA-SEQUENCE",
    "EXT-X-DISCONTINUITY-SEQUENCE",
    "EXT-X-ENDLIST",
    "EXT-X-PLAYLIST-TYPE",
    "EXT-X-I-FRAMES-ONLY",
    "EXT-X-BYTERANGE",
    "EXT-X-MAP",
    "EXT-X-PART",
    "EXT-X-PART-INF",
    "EXT-X-SERVER-CONTROL",
    "EXT-X-SKIP",
    "EXT-X-PRELOAD-HINT",
    "EXT-X-RENDITION-REPORT",
];

const BOM: &str = "\u{feff}";

fn malformed(reason: impl Into<String>) -> PlaylistError {
    PlaylistError::Malformed(reason.into())
}

/// The whole body as text, BOM included, so that offsets into it are offsets into `body`.
fn playlist_text(body: &[u8]) -> Result<&str, PlaylistError> {
    let after_bom = body.strip_prefix(BOM.as_bytes()).unwrap_or(body);
    if !after_bom.starts_with(b"#EXTM3U") {
        return Err(PlaylistError::NotAPlaylist);
    }
    std::str::from_utf8(body).map_err(|_| PlaylistError::NotUtf8)
}

fn without_bom(text: &str) -> &str {
    text.strip_prefix(BOM).unwrap_or(text)
}

/// Lines without their terminator. Only LF and CRLF end a line (§4.1); a lone CR is line content.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, after) = match find_byte(rest.as_bytes(), b'\n') {
            Some(newline) => (&rest[..newline], &rest[newline + 1..]),
            None => (rest, ""),
        };
        rest = after;
        Some(line.strip_suffix('\r').unwrap_or(line))
    })
}

/// Where `byte` first occurs, looking at eight bytes at a time. Every byte of a playlist goes through here, and on
/// lines a few dozen bytes long `str::find` spends more time setting up than searching: with it, rewriting a
/// 1,000-line playlist took half as long again.
fn find_byte(haystack: &[u8], byte: u8) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_le_bytes([0x80; 8]);
    let pattern = ONES * u64::from(byte);
    let mut words = haystack.chunks_exact(8);
    for (index, word) in words.by_ref().enumerate() {
        let word = u64::from_le_bytes(word.try_into().expect("chunks of eight")) ^ pattern;
        // Sets the high bit of the first zero byte (and maybe of later ones): the first match.
        let matches = word.wrapping_sub(ONES) & !word & HIGH_BITS;
        if matches != 0 {
            return Some(index * 8 + matches.trailing_zeros() as usize / 8);
        }
    }
    let tail = words.remainder();
    let tail_start = haystack.len() - tail.len();
    tail.iter()
        .position(|&candidate| candidate == byte)
        .map(|position| tail_start + position)
}

/// Where `part`, a slice of `text`, starts in it.
fn offset_in(text: &str, part: &str) -> usize {
    let offset = part.as_ptr().addr() - text.as_ptr().addr();
    debug_assert!(
        offset + part.len() <= text.len(),
        "not a slice of the playlist"
    );
    offset
}

enum Line<'a> {
    Blank,
    Comment,
    Tag(Tag<'a>),
    Uri(&'a str),
}

/// `#NAME` or `#NAME:value`, without the `#`.
struct Tag<'a> {
    name: &'a str,
    value: &'a str,
}

impl<'a> Tag<'a> {
    fn attributes(&self) -> Attributes<'a> {
        Attributes { rest: self.value }
    }

    /// The raw value (quotes kept) of the first attribute called `name`.
    fn attribute(&self, name: &str) -> Result<Option<&'a str>, PlaylistError> {
        for attribute in self.attributes() {
            let attribute = attribute.map_err(|reason| self.malformed(reason))?;
            if attribute.name == name {
                return Ok(Some(attribute.value));
            }
        }
        Ok(None)
    }

    fn malformed(&self, reason: &str) -> PlaylistError {
        malformed(format!("#{}: {reason}", self.name))
    }
}

/// Classifies by the first non-whitespace character: whitespace is not allowed around tags or URIs (§4.1), so a
/// line that has it is read as players and m3u8-rs read it, not as a URI that starts with spaces and `#`.
fn classify(line: &str) -> Line<'_> {
    let content = line.trim_ascii();
    match content.strip_prefix('#') {
        None if content.is_empty() => Line::Blank,
        None => Line::Uri(content),
        Some(tag) if tag.as_bytes().starts_with(b"EXT") => {
            Line::Tag(match find_byte(tag.as_bytes(), b':') {
                Some(colon) => Tag {
                    name: &tag[..colon],
                    value: &tag[colon + 1..],
                },
                None => Tag {
                    name: tag,
                    value: "",
                },
            })
        }
        Some(_) => Line::Comment,
    }
}

/// One `NAME=value` of an attribute list (§4.2). `value` is raw: a quoted string keeps its quotes.
struct Attribute<'a> {
    name: &'a str,
    value: &'a str,
}

impl<'a> Attribute<'a> {
    /// The content of a quoted-string value, as a slice of the playlist.
    fn quoted(&self) -> Option<&'a str> {
        self.value.strip_prefix('"')?.strip_suffix('"')
    }

    /// The value without quotes, for enumerated strings some encoders quote anyway.
    fn unquoted(&self) -> &'a str {
        self.quoted().unwrap_or(self.value)
    }
}

/// Reads an attribute list left to right, so that commas and `=` inside quoted strings are content. Lenient about
/// what §4.2 forbids but encoders write anyway: whitespace around attributes, empty items (`A=1,,B=2`).
struct Attributes<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let Some((name, after_equals)) = rest.split_once('=') else {
            self.rest = "";
            return Some(Err("an attribute without '='"));
        };
        let after_equals = after_equals.trim_start();
        let (value, after_value) = match split_value(after_equals) {
            Ok(split) => split,
            Err(reason) => {
                self.rest = "";
                return Some(Err(reason));
            }
        };
        // Anything between a closing quote and the next comma is not an attribute; skip it.
        self.rest = after_value
            .split_once(',')
            .map_or("", |(_, following)| following);
        let name = name.trim();
        Some(Ok(Attribute { name, value }))
    }
}

/// Splits an attribute value (quoted string, or anything up to the next comma) from what follows it.
fn split_value(text: &str) -> Result<(&str, &str), &'static str> {
    if let Some(quoted) = text.strip_prefix('"') {
        let closing = quoted
            .find('"')
            .ok_or("a quoted string without its closing quote")?;
        return Ok(text.split_at(closing + 2));
    }
    let end = text.find(',').unwrap_or(text.len());
    let (value, after) = text.split_at(end);
    Ok((value.trim_end(), after))
}

/// `data:` URIs hold their resource inline and `skd:` URIs name a FairPlay key for the CDM: no client fetches
/// them over HTTP, so there is nothing to relay.
fn is_never_fetched(uri: &str) -> bool {
    let scheme = |name: &str| {
        uri.get(..name.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(name))
    };
    scheme("data:") || scheme("skd:")
}

fn is_uri_safe(replacement: &str) -> bool {
    !replacement.contains(['"', '\r', '\n'])
}

/// EXT-X-DEFINE NAME/VALUE variables seen so far (§4.4.2.3); a reference resolves only against earlier definitions.
#[derive(Default)]
struct Variables<'a> {
    defined: Vec<(&'a str, &'a str)>,
}

impl<'a> Variables<'a> {
    /// Records a NAME/VALUE definition. IMPORT and QUERYPARAM get their values outside this playlist: references to
    /// them stay unresolved.
    fn define(&mut self, tag: &Tag<'a>) -> Result<(), PlaylistError> {
        let (mut name, mut value) = (None, None);
        for attribute in tag.attributes() {
            let attribute = attribute.map_err(|reason| tag.malformed(reason))?;
            match attribute.name {
                "NAME" => name = attribute.quoted(),
                "VALUE" => value = attribute.quoted(),
                _ => {}
            }
        }
        if let (Some(name), Some(value)) = (name, value) {
            self.defined.push((name, value));
        }
        Ok(())
    }

    /// `written` with every `{$name}` replaced by the value of `name`, or `None` if a reference stays unresolved.
    fn resolve(&self, written: &'a str) -> Option<Cow<'a, str>> {
        if !written.contains("{$") {
            return Some(Cow::Borrowed(written));
        }
        let resolved = self.substitute(written);
        (!resolved.contains("{$")).then_some(Cow::Owned(resolved))
    }

    /// `written` with every `{$name}` of a defined variable replaced by its value; unknown references stay.
    fn substitute(&self, written: &str) -> String {
        let mut resolved = String::with_capacity(written.len());
        let mut rest = written;
        while let Some(start) = rest.find("{$") {
            resolved.push_str(&rest[..start]);
            let reference = &rest[start + 2..];
            let name = reference.split_once('}').map(|(name, _)| name);
            match name.and_then(|name| Some((name, self.value_of(name)?))) {
                Some((name, value)) => {
                    resolved.push_str(value);
                    rest = &reference[name.len() + 1..];
                }
                None => {
                    resolved.push_str("{$");
                    rest = reference;
                }
            }
        }
        resolved.push_str(rest);
        resolved
    }

    fn value_of(&self, name: &str) -> Option<&'a str> {
        let definition = self
            .defined
            .iter()
            .rev()
            .find(|(defined, _)| *defined == name);
        definition.map(|&(_, value)| value)
    }
}

/// Copies the playlist lazily: unchanged text is copied in one piece up to the next replaced URI.
struct Rewriter<'a, 'm, M> {
    text: &'a str,
    output: Output,
    variables: Variables<'a>,
    variant_uri_expected: bool,
    mapping: &'m mut M,
}

/// The rewritten playlist so far; apart from the rest of the rewriter's state because a replacement stays borrowed
/// from the mapping while it is copied in.
struct Output {
    out: Vec<u8>,
    copied_up_to: usize,
    uri_ends: Vec<usize>,
}

impl Output {
    /// Copies `text` up to `written` (a slice of it), then `replacement` instead of `written`.
    fn replace(&mut self, text: &str, written: &str, replacement: &str) {
        debug_assert!(
            is_uri_safe(replacement),
            "the URI mapping returned {replacement:?}, which would break the playlist"
        );
        let start = offset_in(text, written);
        self.out
            .extend_from_slice(&text.as_bytes()[self.copied_up_to..start]);
        self.out.extend_from_slice(replacement.as_bytes());
        self.uri_ends.push(self.out.len());
        self.copied_up_to = start + written.len();
    }
}

impl<'a, 'm, M: UriMapping> Rewriter<'a, 'm, M> {
    fn new(text: &'a str, mapping: &'m mut M) -> Self {
        Self {
            text,
            output: Output {
                // Relay URIs are usually longer than upstream ones; this spares most reallocations.
                out: Vec::with_capacity(text.len() + text.len() / 2),
                copied_up_to: 0,
                uri_ends: Vec::new(),
            },
            variables: Variables::default(),
            variant_uri_expected: false,
            mapping,
        }
    }

    fn line(&mut self, line: &'a str) -> Result<(), PlaylistError> {
        match classify(line) {
            Line::Uri(uri) => {
                let site = if std::mem::take(&mut self.variant_uri_expected) {
                    UriSite::VariantLine
                } else {
                    UriSite::SegmentLine
                };
                self.uri(site, uri);
                Ok(())
            }
            Line::Tag(tag) => self.tag(&tag),
            Line::Blank | Line::Comment => Ok(()),
        }
    }

    fn tag(&mut self, tag: &Tag<'a>) -> Result<(), PlaylistError> {
        match tag.name {
            "EXT-X-STREAM-INF" => self.variant_uri_expected = true,
            "EXT-X-DEFINE" => self.variables.define(tag)?,
            name => {
                if let Some(&(tag_name, uri_attributes)) =
                    URI_ATTRIBUTES.iter().find(|(known, _)| *known == name)
                {
                    self.tag_uris(tag, tag_name, uri_attributes)?;
                }
            }
        }
        Ok(())
    }

    fn tag_uris(
        &mut self,
        tag: &Tag<'a>,
        tag_name: &'static str,
        uri_attributes: &'static [&'static str],
    ) -> Result<(), PlaylistError> {
        if matches!(tag_name, "EXT-X-KEY" | "EXT-X-SESSION-KEY") && !is_relayed_key(tag)? {
            return Ok(());
        }
        for attribute in tag.attributes() {
            let attribute = attribute.map_err(|reason| tag.malformed(reason))?;
            let Some(&attribute_name) = uri_attributes.iter().find(|&&uri| uri == attribute.name)
            else {
                continue;
            };
            let uri = attribute.quoted().ok_or_else(|| {
                tag.malformed(&format!("{attribute_name} is not a quoted string"))
            })?;
            let site = UriSite::Attribute {
                tag: tag_name,
                attribute: attribute_name,
            };
            self.uri(site, uri);
        }
        Ok(())
    }

    fn uri(&mut self, site: UriSite, written: &'a str) {
        let Some(resolved) = self.variables.resolve(written) else {
            return;
        };
        if is_never_fetched(&resolved) {
            return;
        }
        if let Some(replacement) = self.mapping.replacement(site, &resolved) {
            self.output.replace(self.text, written, replacement);
        }
    }

    fn finish(self) -> Rewritten {
        let Output {
            mut out,
            copied_up_to,
            uri_ends,
        } = self.output;
        out.extend_from_slice(&self.text.as_bytes()[copied_up_to..]);
        Rewritten {
            body: out,
            uri_ends,
        }
    }
}

/// Whether a client fetches this key itself over HTTP (§4.4.4.4): METHOD=NONE has no key, and KEYFORMATs other
/// than "identity" name DRM systems whose URIs are for their CDM.
fn is_relayed_key(tag: &Tag<'_>) -> Result<bool, PlaylistError> {
    let mut relayed = true;
    for attribute in tag.attributes() {
        let attribute = attribute.map_err(|reason| tag.malformed(reason))?;
        match attribute.name {
            "METHOD" => relayed &= attribute.unquoted() != "NONE",
            "KEYFORMAT" => relayed &= attribute.unquoted() == "identity",
            _ => {}
        }
    }
    Ok(relayed)
}

/// What the tag scanner reads for [`inspect`].
#[derive(Default)]
struct TagFacts {
    uri_lines: usize,
    has_target_duration: bool,
    part_target: Option<Duration>,
    can_block_reload: bool,
    can_skip_until: Option<Duration>,
    skipped_segments: u64,
    trailing_parts: usize,
    has_master_tags: bool,
    has_media_tags: bool,
}

impl TagFacts {
    fn scan(text: &str) -> Result<Self, PlaylistError> {
        let mut facts = Self::default();
        for line in lines(text) {
            match classify(line) {
                Line::Uri(_) => {
                    facts.uri_lines += 1;
                    facts.trailing_parts = 0;
                }
                Line::Tag(tag) => facts.tag(&tag)?,
                Line::Blank | Line::Comment => {}
            }
        }
        Ok(facts)
    }

    fn tag(&mut self, tag: &Tag<'_>) -> Result<(), PlaylistError> {
        self.has_master_tags |= MASTER_ONLY_TAGS.contains(&tag.name);
        self.has_media_tags |= MEDIA_ONLY_TAGS.contains(&tag.name);
        match tag.name {
            "EXT-X-TARGETDURATION" => {
                decimal_integer(tag, tag.value)?;
                self.has_target_duration = true;
            }
            "EXT-X-MEDIA-SEQUENCE" => {
                decimal_integer(tag, tag.value)?;
            }
            "EXT-X-PART-INF" => {
                let part_target = tag.attribute("PART-TARGET")?;
                let part_target = part_target.ok_or_else(|| tag.malformed("no PART-TARGET"))?;
                self.part_target = Some(seconds(tag, part_target)?);
            }
            "EXT-X-SERVER-CONTROL" => self.server_control(tag)?,
            "EXT-X-SKIP" => {
                let skipped = tag.attribute("SKIPPED-SEGMENTS")?;
                let skipped = skipped.ok_or_else(|| tag.malformed("no SKIPPED-SEGMENTS"))?;
                self.skipped_segments = decimal_integer(tag, skipped)?;
            }
            "EXT-X-PART" => self.trailing_parts += 1,
            _ => {}
        }
        Ok(())
    }

    fn server_control(&mut self, tag: &Tag<'_>) -> Result<(), PlaylistError> {
        for attribute in tag.attributes() {
            let attribute = attribute.map_err(|reason| tag.malformed(reason))?;
            match attribute.name {
                "CAN-BLOCK-RELOAD" => self.can_block_reload = attribute.unquoted() == "YES",
                "CAN-SKIP-UNTIL" => self.can_skip_until = Some(seconds(tag, attribute.value)?),
                _ => {}
            }
        }
        Ok(())
    }
}

/// A decimal-integer (§4.2), checked strictly because m3u8-rs reads what it can and ignores the rest.
fn decimal_integer(tag: &Tag<'_>, value: &str) -> Result<u64, PlaylistError> {
    let digits_only = !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit());
    let number = digits_only.then(|| value.parse().ok()).flatten();
    number.ok_or_else(|| tag.malformed("a value is not a decimal integer"))
}

/// A decimal-floating-point number of seconds (§4.2); `f64` parsing alone would also take "inf", "-1" or "1e9".
fn seconds(tag: &Tag<'_>, value: &str) -> Result<Duration, PlaylistError> {
    let plain = value
        .bytes()
        .all(|byte| byte.is_ascii_digit() || byte == b'.');
    let number = plain.then(|| value.parse::<f64>().ok()).flatten();
    let duration = number.and_then(|seconds| Duration::try_from_secs_f64(seconds).ok());
    duration.ok_or_else(|| tag.malformed("a value is not a number of seconds"))
}

fn master_info() -> PlaylistInfo {
    PlaylistInfo {
        kind: PlaylistKind::Master,
        target_duration: None,
        media_sequence: 0,
        segment_count: 0,
        ended: false,
        part_target: None,
        can_block_reload: false,
        can_skip_until: None,
        trailing_parts: 0,
    }
}

/// `parse_playlist` rather than `parse_playlist_res`, because only it tells how far m3u8-rs read.
fn read_with_m3u8_rs(text: &str) -> Result<m3u8_rs::Playlist, PlaylistError> {
    match m3u8_rs::parse_playlist(text.as_bytes()) {
        Ok((&[], playlist)) => Ok(playlist),
        Ok((unread, _)) => {
            let read = &text.as_bytes()[..text.len() - unread.len()];
            let line = read.iter().filter(|&&byte| byte == b'\n').count() + 1;
            Err(malformed(format!("m3u8-rs cannot read line {line}")))
        }
        Err(_) => Err(malformed("m3u8-rs cannot parse it")),
    }
}

fn media_info(
    media: &m3u8_rs::MediaPlaylist,
    facts: &TagFacts,
) -> Result<PlaylistInfo, PlaylistError> {
    if !facts.has_target_duration {
        return Err(malformed("a media playlist without EXT-X-TARGETDURATION"));
    }
    let skipped = usize::try_from(facts.skipped_segments)
        .map_err(|_| malformed("EXT-X-SKIP skips more segments than can be counted"))?;
    Ok(PlaylistInfo {
        kind: PlaylistKind::Media,
        target_duration: Some(Duration::from_secs(media.target_duration)),
        media_sequence: media.media_sequence,
        segment_count: facts.uri_lines.saturating_add(skipped),
        ended: media.end_list,
        part_target: facts.part_target,
        can_block_reload: facts.can_block_reload,
        can_skip_until: facts.can_skip_until,
        trailing_parts: facts.trailing_parts,
    })
}

/// The playlist with `#EXT-X-ENDLIST` appended, in its own line-ending style, so players finish instead of
/// polling a broadcast that has stopped. Already-ended playlists come back unchanged.
pub fn with_endlist(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    let has_endlist = body
        .split(|&b| b == b'\n')
        .any(|line| line.trim_ascii() == b"#EXT-X-ENDLIST");
    if has_endlist {
        return out;
    }
    let newline: &[u8] = if body.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(newline);
    }
    out.extend_from_slice(b"#EXT-X-ENDLIST");
    out.extend_from_slice(newline);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_query_is_carried_into_every_replaced_uri_and_nowhere_else() {
        let body =
            b"#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2,\nseg.ts?x=1\n#EXTINF:2,\ndata:,hi\n";
        let rewritten = super::rewrite_marked(body, |_, uri| Some(format!("r/{uri}"))).unwrap();
        let viewer = super::with_query(&rewritten.body, &rewritten.uri_ends, "token=abc");
        assert_eq!(
            String::from_utf8(viewer).unwrap(),
            "#EXTM3U\n#EXT-X-MAP:URI=\"r/init.mp4?token=abc\"\n#EXTINF:2,\nr/seg.ts?x=1&token=abc\n#EXTINF:2,\ndata:,hi\n"
        );
    }

    #[test]
    fn a_second_query_goes_only_into_the_marked_uris() {
        let body = b"#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,URI=\"a.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8?x=1\n\
                     #EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"k.key\"\n";
        let rewritten = super::rewrite_marked(body, |_, uri| Some(format!("r/{uri}"))).unwrap();
        let ends = &rewritten.uri_ends;
        let playlists = [ends[0], ends[1]];
        let both = super::with_queries(
            &rewritten.body,
            ends,
            Some("token=t"),
            &playlists,
            Some("vs=s"),
        );
        assert_eq!(
            String::from_utf8(both).unwrap(),
            "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,URI=\"r/a.m3u8?token=t&vs=s\"\n#EXT-X-STREAM-INF:BANDWIDTH=1\n\
             r/v.m3u8?x=1&token=t&vs=s\n#EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"r/k.key?token=t\"\n"
        );
        let session_only =
            super::with_queries(&rewritten.body, ends, None, &playlists, Some("vs=s"));
        assert_eq!(
            String::from_utf8(session_only).unwrap(),
            "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,URI=\"r/a.m3u8?vs=s\"\n#EXT-X-STREAM-INF:BANDWIDTH=1\n\
             r/v.m3u8?x=1&vs=s\n#EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"r/k.key\"\n"
        );
        assert_eq!(
            super::with_queries(&rewritten.body, ends, None, &[], None),
            rewritten.body
        );
    }

    #[test]
    fn endlist_is_appended_once_in_the_playlists_line_style() {
        let live = b"#EXTM3U\r\n#EXT-X-TARGETDURATION:2\r\n#EXTINF:2,\r\na.ts";
        let ended = super::with_endlist(live);
        assert!(ended.ends_with(b"a.ts\r\n#EXT-X-ENDLIST\r\n"));
        assert_eq!(super::with_endlist(&ended), ended);
        assert!(super::inspect(&ended).unwrap().ended);
    }

    use super::*;
    use proptest::prelude::*;

    type Calls = Vec<(UriSite, String)>;

    /// Rewrites with `R(uri)` for every URI, returning the text and the calls `map` got.
    fn rewrite_marked(body: &str) -> (String, Calls) {
        let mut calls = Vec::new();
        let out = rewrite(body.as_bytes(), |site, uri| {
            calls.push((site, uri.to_owned()));
            Some(format!("R({uri})"))
        })
        .expect("rewrite failed");
        (String::from_utf8(out).expect("output is not UTF-8"), calls)
    }

    fn attribute(tag: &'static str, attribute: &'static str) -> UriSite {
        UriSite::Attribute { tag, attribute }
    }

    fn uri(tag: &'static str) -> UriSite {
        attribute(tag, "URI")
    }

    fn call(site: UriSite, uri: &str) -> (UriSite, String) {
        (site, uri.to_owned())
    }

    const MASTER: &str = r#"#EXTM3U
#EXT-X-VERSION:9
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-CONTENT-STEERING:SERVER-URI="/steering?video=00012",PATHWAY-ID="CDN-A"
#EXT-X-SESSION-DATA:DATA-ID="com.example.title",VALUE="Example, with comma"
#EXT-X-SESSION-DATA:DATA-ID="com.example.lyrics",URI="lyrics.json"
#EXT-X-SESSION-KEY:METHOD=AES-128,URI="https://keys.example.com/k1",IV=0x1234
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="English, stereo",LANGUAGE="en",DEFAULT=YES,URI="audio/en.m3u8"
#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="Deutsch",LANGUAGE="de",URI="subs/de.m3u8"
#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="cc",NAME="English",INSTREAM-ID="CC1"
#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS="avc1.4d401f,mp4a.40.2",AUDIO="aac",SUBTITLES="subs",CLOSED-CAPTIONS="cc"
low/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2560000,CODECS="avc1.4d401f,mp4a.40.2",AUDIO="aac"
# a comment between the tag and its URI
#EXT-X-UNKNOWN-VENDOR-TAG:FOO=1

https://cdn.example.com/high/index.m3u8?token=a%3Db
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=86000,CODECS="avc1.4d401f",URI="low/iframe.m3u8"
"#;

    #[test]
    fn master_rewrites_every_uri_and_nothing_else() {
        let (out, calls) = rewrite_marked(MASTER);
        let expected = MASTER
            .replace("\"/steering?video=00012\"", "\"R(/steering?video=00012)\"")
            .replace("\"lyrics.json\"", "\"R(lyrics.json)\"")
            .replace(
                "\"https://keys.example.com/k1\"",
                "\"R(https://keys.example.com/k1)\"",
            )
            .replace("\"audio/en.m3u8\"", "\"R(audio/en.m3u8)\"")
            .replace("\"subs/de.m3u8\"", "\"R(subs/de.m3u8)\"")
            .replace("\nlow/index.m3u8\n", "\nR(low/index.m3u8)\n")
            .replace(
                "\nhttps://cdn.example.com/high/index.m3u8?token=a%3Db\n",
                "\nR(https://cdn.example.com/high/index.m3u8?token=a%3Db)\n",
            )
            .replace("\"low/iframe.m3u8\"", "\"R(low/iframe.m3u8)\"");
        assert_eq!(out, expected);
        assert_eq!(
            calls,
            vec![
                call(
                    attribute("EXT-X-CONTENT-STEERING", "SERVER-URI"),
                    "/steering?video=00012"
                ),
                call(uri("EXT-X-SESSION-DATA"), "lyrics.json"),
                call(uri("EXT-X-SESSION-KEY"), "https://keys.example.com/k1"),
                call(uri("EXT-X-MEDIA"), "audio/en.m3u8"),
                call(uri("EXT-X-MEDIA"), "subs/de.m3u8"),
                call(UriSite::VariantLine, "low/index.m3u8"),
                call(
                    UriSite::VariantLine,
                    "https://cdn.example.com/high/index.m3u8?token=a%3Db"
                ),
                call(uri("EXT-X-I-FRAME-STREAM-INF"), "low/iframe.m3u8"),
            ]
        );
    }

    #[test]
    fn closed_captions_without_uri_are_left_alone() {
        let body = "#EXTM3U\n#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID=\"cc\",NAME=\"En\",INSTREAM-ID=\"CC1\"\n";
        assert_eq!(rewrite_marked(body), (body.to_owned(), vec![]));
    }

    #[test]
    fn tag_names_match_exactly() {
        let body = "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-MAPPING:URI=\"a.mp4\"\n#EXT-X-KEYS:URI=\"k\"\n\
                    #EXT-X-VENDOR:URI=\"v.json\"\n#EXTX-MAP:URI=\"m.mp4\"\n";
        assert_eq!(rewrite_marked(body), (body.to_owned(), vec![]));
    }

    #[test]
    fn only_uri_attributes_are_rewritten_even_when_other_values_look_like_uris() {
        let body = "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,NAME=\"URI=\\\"fake\\\",x\",GROUP-ID=\"a,URI=b\",URI=\"en.m3u8\"\n";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(out, body.replace("\"en.m3u8\"", "\"R(en.m3u8)\""));
        assert_eq!(calls, vec![call(uri("EXT-X-MEDIA"), "en.m3u8")]);
    }

    #[test]
    fn quoted_values_with_commas_and_equals_keep_attribute_order_and_spacing() {
        let body =
            "#EXTM3U\n#EXT-X-SESSION-DATA:DATA-ID=\"a=b,c\", URI=\"x,y=z.json\" ,LANGUAGE=\"en\"\n";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(
            out,
            "#EXTM3U\n#EXT-X-SESSION-DATA:DATA-ID=\"a=b,c\", URI=\"R(x,y=z.json)\" ,LANGUAGE=\"en\"\n"
        );
        assert_eq!(calls, vec![call(uri("EXT-X-SESSION-DATA"), "x,y=z.json")]);
    }

    const VOD: &str = "#EXTM3U\n\
        #EXT-X-VERSION:7\n\
        #EXT-X-TARGETDURATION:6\n\
        #EXT-X-PLAYLIST-TYPE:VOD\n\
        #EXT-X-MAP:URI=\"init.mp4\",BYTERANGE=\"720@0\"\n\
        #EXT-X-KEY:METHOD=AES-128,URI=\"https://keys.example.com/k?id=1\",IV=0x00000000000000000000000000000001\n\
        #EXTINF:6.006,\n\
        #EXT-X-BYTERANGE:75232@720\n\
        main.mp4\n\
        #EXTINF:6.006,title, with comma\n\
        #EXT-X-BYTERANGE:82112\n\
        main.mp4\n\
        #EXT-X-KEY:METHOD=NONE\n\
        #EXTINF:5.000,\n\
        ../other/seg3.mp4\n\
        #EXT-X-ENDLIST\n";

    #[test]
    fn media_playlist_with_byteranges_map_and_keys() {
        let (out, calls) = rewrite_marked(VOD);
        let expected = VOD
            .replace("\"init.mp4\"", "\"R(init.mp4)\"")
            .replace(
                "\"https://keys.example.com/k?id=1\"",
                "\"R(https://keys.example.com/k?id=1)\"",
            )
            .replace("\nmain.mp4\n", "\nR(main.mp4)\n")
            .replace("\n../other/seg3.mp4\n", "\nR(../other/seg3.mp4)\n");
        assert_eq!(out, expected);
        assert_eq!(
            calls,
            vec![
                call(uri("EXT-X-MAP"), "init.mp4"),
                call(uri("EXT-X-KEY"), "https://keys.example.com/k?id=1"),
                call(UriSite::SegmentLine, "main.mp4"),
                call(UriSite::SegmentLine, "main.mp4"),
                call(UriSite::SegmentLine, "../other/seg3.mp4"),
            ]
        );
    }

    #[test]
    fn drm_and_inline_keys_are_not_mapped() {
        let body = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n\
            #EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"skd://key-id-42\",KEYFORMAT=\"com.apple.streamingkeydelivery\",KEYFORMATVERSIONS=\"1\"\n\
            #EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"https://drm.example.com/lic\",KEYFORMAT=\"com.example.drm\"\n\
            #EXT-X-KEY:METHOD=SAMPLE-AES-CTR,KEYFORMAT=\"urn:uuid:edef8ba9-79d6-4ace-a3c8-27dcd51d21ed\",URI=\"data:text/plain;base64,AAAA\"\n\
            #EXT-X-KEY:METHOD=AES-128,URI=\"SKD://upper-case-scheme\"\n\
            #EXT-X-KEY:METHOD=NONE,URI=\"ignored.key\"\n\
            #EXT-X-KEY:URI=\"k.key\",METHOD=AES-128,KEYFORMAT=\"identity\"\n\
            #EXTINF:4,\n\
            data:video/mp2t;base64,R0lG\n";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(out, body.replace("\"k.key\"", "\"R(k.key)\""));
        assert_eq!(calls, vec![call(uri("EXT-X-KEY"), "k.key")]);
    }

    #[test]
    fn session_key_of_a_drm_system_is_not_mapped() {
        let body = "#EXTM3U\n\
            #EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI=\"skd://abc\",KEYFORMAT=\"com.apple.streamingkeydelivery\"\n\
            #EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"key.bin\"\n";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(out, body.replace("\"key.bin\"", "\"R(key.bin)\""));
        assert_eq!(calls, vec![call(uri("EXT-X-SESSION-KEY"), "key.bin")]);
    }

    const LL_HLS: &str = "#EXTM3U\n\
        #EXT-X-VERSION:10\n\
        #EXT-X-TARGETDURATION:4\n\
        #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0,CAN-SKIP-UNTIL=24.0\n\
        #EXT-X-PART-INF:PART-TARGET=0.33334\n\
        #EXT-X-MEDIA-SEQUENCE:266\n\
        #EXT-X-SKIP:SKIPPED-SEGMENTS=3\n\
        #EXT-X-MAP:URI=\"init.mp4\"\n\
        #EXTINF:4.00008,\n\
        fileSequence269.mp4\n\
        #EXT-X-PART:DURATION=0.33334,URI=\"filePart270.0.mp4\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.33334,URI=\"filePart270.1.mp4\",BYTERANGE=\"1000@0\"\n\
        #EXTINF:4.00008,\n\
        fileSequence270.mp4\n\
        #EXT-X-PART:DURATION=0.33334,URI=\"filePart271.0.mp4\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.33334,URI=\"filePart271.1.mp4\"\n\
        #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"filePart271.2.mp4\",BYTERANGE-START=0\n\
        #EXT-X-RENDITION-REPORT:URI=\"../1M/waitForMSN.php\",LAST-MSN=270,LAST-PART=1\n";

    #[test]
    fn low_latency_tags() {
        let (out, calls) = rewrite_marked(LL_HLS);
        let mut expected = LL_HLS.to_owned();
        for uri in [
            "init.mp4",
            "filePart270.0.mp4",
            "filePart270.1.mp4",
            "filePart271.0.mp4",
            "filePart271.1.mp4",
            "filePart271.2.mp4",
            "../1M/waitForMSN.php",
        ] {
            expected = expected.replace(&format!("\"{uri}\""), &format!("\"R({uri})\""));
        }
        for uri in ["fileSequence269.mp4", "fileSequence270.mp4"] {
            expected = expected.replace(&format!("\n{uri}\n"), &format!("\nR({uri})\n"));
        }
        assert_eq!(out, expected);
        let sites: Vec<UriSite> = calls.iter().map(|(site, _)| *site).collect();
        assert_eq!(
            sites,
            vec![
                uri("EXT-X-MAP"),
                UriSite::SegmentLine,
                uri("EXT-X-PART"),
                uri("EXT-X-PART"),
                UriSite::SegmentLine,
                uri("EXT-X-PART"),
                uri("EXT-X-PART"),
                uri("EXT-X-PRELOAD-HINT"),
                uri("EXT-X-RENDITION-REPORT"),
            ]
        );
    }

    #[test]
    fn preload_hint_of_a_map() {
        let body = "#EXTM3U\n#EXT-X-PRELOAD-HINT:TYPE=MAP,URI=\"init2.mp4\"\n";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(
            out,
            "#EXTM3U\n#EXT-X-PRELOAD-HINT:TYPE=MAP,URI=\"R(init2.mp4)\"\n"
        );
        assert_eq!(calls, vec![call(uri("EXT-X-PRELOAD-HINT"), "init2.mp4")]);
    }

    #[test]
    fn interstitial_date_ranges() {
        let body = "#EXTM3U\n\
            #EXT-X-DATERANGE:ID=\"ad1\",CLASS=\"com.apple.hls.interstitial\",START-DATE=\"2024-01-01T00:00:10Z\",\
            X-ASSET-URI=\"https://ads.example.com/ad1/main.m3u8\",X-RESUME-OFFSET=0\n\
            #EXT-X-DATERANGE:ID=\"ad2\",CLASS=\"com.apple.hls.interstitial\",START-DATE=\"2024-01-01T00:00:20Z\",\
            X-ASSET-LIST=\"/assets.json?break=2\"\n\
            #EXT-X-DATERANGE:ID=\"meta\",START-DATE=\"2024-01-01T00:00:30Z\",X-COM-EXAMPLE-URL=\"https://x/\"\n";
        let (out, calls) = rewrite_marked(body);
        let expected = body
            .replace(
                "\"https://ads.example.com/ad1/main.m3u8\"",
                "\"R(https://ads.example.com/ad1/main.m3u8)\"",
            )
            .replace("\"/assets.json?break=2\"", "\"R(/assets.json?break=2)\"");
        assert_eq!(out, expected);
        assert_eq!(
            calls,
            vec![
                call(
                    attribute("EXT-X-DATERANGE", "X-ASSET-URI"),
                    "https://ads.example.com/ad1/main.m3u8"
                ),
                call(
                    attribute("EXT-X-DATERANGE", "X-ASSET-LIST"),
                    "/assets.json?break=2"
                ),
            ]
        );
    }

    #[test]
    fn uri_line_need_not_follow_extinf_directly() {
        let body = "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6,\n\
            #EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z\n#EXT-X-DISCONTINUITY\n#EXT-X-BYTERANGE:100@0\n\
            # comment\n\n#EXT-X-BITRATE:800\nseg1.ts\n";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(out, body.replace("\nseg1.ts\n", "\nR(seg1.ts)\n"));
        assert_eq!(calls, vec![call(UriSite::SegmentLine, "seg1.ts")]);
    }

    #[test]
    fn a_stream_inf_makes_only_the_next_uri_line_a_variant() {
        let body = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n#EXT-X-STREAM-INF:BANDWIDTH=2\na.m3u8\nstray.m3u8\n";
        let (_, calls) = rewrite_marked(body);
        assert_eq!(
            calls,
            vec![
                call(UriSite::VariantLine, "a.m3u8"),
                call(UriSite::SegmentLine, "stray.m3u8"),
            ]
        );
    }

    #[test]
    fn line_endings_bom_and_missing_final_newline_are_kept() {
        let body = "\u{feff}#EXTM3U\r\n#EXT-X-TARGETDURATION:2\n\r\n#EXTINF:2,\r\na.ts\r\n#EXTINF:2,\nb.ts\n\n#EXTINF:2,\r\nc.ts";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(
            out,
            "\u{feff}#EXTM3U\r\n#EXT-X-TARGETDURATION:2\n\r\n#EXTINF:2,\r\nR(a.ts)\r\n#EXTINF:2,\nR(b.ts)\n\n#EXTINF:2,\r\nR(c.ts)"
        );
        assert_eq!(calls.len(), 3);
    }

    #[test]
    fn whitespace_around_a_uri_line_stays_around_the_replacement() {
        let body = "#EXTM3U\n  a.ts \t\r\n\tb.ts";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(out, "#EXTM3U\n  R(a.ts) \t\r\n\tR(b.ts)");
        assert_eq!(
            calls,
            vec![
                call(UriSite::SegmentLine, "a.ts"),
                call(UriSite::SegmentLine, "b.ts")
            ]
        );
    }

    #[test]
    fn a_lone_cr_does_not_end_a_line() {
        let mut calls = Vec::new();
        let out = rewrite(b"#EXTM3U\na.ts\rb.ts\n", |site, uri| {
            calls.push(call(site, uri));
            Some("x.ts".to_owned())
        });
        assert_eq!(out.unwrap(), b"#EXTM3U\nx.ts\n");
        assert_eq!(calls, vec![call(UriSite::SegmentLine, "a.ts\rb.ts")]);
    }

    #[test]
    fn define_substitutes_name_value_variables_before_mapping() {
        let body = "#EXTM3U\n#EXT-X-DEFINE:NAME=\"host\",VALUE=\"https://cdn.example.com\"\n\
            #EXT-X-DEFINE:NAME=\"q\",VALUE=\"v=1\"\n\
            #EXT-X-MAP:URI=\"{$host}/init.mp4\"\n#EXTINF:2,\n{$host}/a.ts?{$q}\n";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(
            out,
            body.replace(
                "\"{$host}/init.mp4\"",
                "\"R(https://cdn.example.com/init.mp4)\""
            )
            .replace(
                "\n{$host}/a.ts?{$q}\n",
                "\nR(https://cdn.example.com/a.ts?v=1)\n"
            )
        );
        assert_eq!(
            calls,
            vec![
                call(uri("EXT-X-MAP"), "https://cdn.example.com/init.mp4"),
                call(UriSite::SegmentLine, "https://cdn.example.com/a.ts?v=1"),
            ]
        );
    }

    #[test]
    fn unresolved_variables_leave_the_uri_alone() {
        let body = "#EXTM3U\n#EXT-X-DEFINE:QUERYPARAM=\"token\"\n#EXT-X-DEFINE:IMPORT=\"base\"\n\
            #EXTINF:2,\na.ts?t={$token}\n#EXTINF:2,\n{$base}/b.ts\n#EXTINF:2,\n{$later}/c.ts\n\
            #EXT-X-DEFINE:NAME=\"later\",VALUE=\"x\"\n#EXTINF:2,\nd.ts?{$\n#EXTINF:2,\n{$later}/e.ts\n";
        let (out, calls) = rewrite_marked(body);
        assert_eq!(out, body.replace("\n{$later}/e.ts\n", "\nR(x/e.ts)\n"));
        assert_eq!(calls, vec![call(UriSite::SegmentLine, "x/e.ts")]);
    }

    #[test]
    fn none_and_identity_mappings_change_nothing() {
        for body in [MASTER, VOD, LL_HLS] {
            assert_eq!(
                rewrite(body.as_bytes(), |_, _| None).unwrap(),
                body.as_bytes()
            );
            let identity = rewrite(body.as_bytes(), |_, uri| Some(uri.to_owned())).unwrap();
            assert_eq!(identity, body.as_bytes());
        }
    }

    #[test]
    fn replacements_of_any_length() {
        let body = "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\nsegment-with-a-long-name.ts\n";
        let shorter = rewrite(body.as_bytes(), |_, _| Some(String::new())).unwrap();
        assert_eq!(shorter, b"#EXTM3U\n#EXT-X-MAP:URI=\"\"\n\n");
        let longer = rewrite(body.as_bytes(), |_, uri| Some(uri.repeat(3))).unwrap();
        assert_eq!(
            String::from_utf8(longer).unwrap(),
            "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4init.mp4init.mp4\"\n\
             segment-with-a-long-name.tssegment-with-a-long-name.tssegment-with-a-long-name.ts\n"
        );
    }

    #[test]
    fn unreadable_uri_attributes_are_errors_not_leaks() {
        for body in [
            "#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\n",
            "#EXTM3U\n#EXT-X-MAP:URI=init.mp4\n",
            "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\",IV\n",
            "#EXTM3U\n#EXT-X-DEFINE:NAME=\"a\",VALUE=\"b\n",
        ] {
            let result = rewrite(body.as_bytes(), |_, uri| Some(uri.to_owned()));
            assert!(
                matches!(result, Err(PlaylistError::Malformed(_))),
                "{body:?}: {result:?}"
            );
        }
    }

    #[test]
    fn unquoted_uri_in_a_tag_we_do_not_rewrite_is_fine() {
        let body = "#EXTM3U\n#EXT-X-VENDOR:URI=unquoted,\"broken\n";
        assert_eq!(rewrite_marked(body), (body.to_owned(), vec![]));
    }

    #[test]
    fn garbage_is_rejected() {
        let cases: [(&[u8], PlaylistError); 7] = [
            (b"", PlaylistError::NotAPlaylist),
            (
                b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>",
                PlaylistError::NotAPlaylist,
            ),
            (b"\x00\x01\x02\xff\xfe#EXTM3U", PlaylistError::NotAPlaylist),
            (b"\xef\xbb\xbf", PlaylistError::NotAPlaylist),
            (b" #EXTM3U\n", PlaylistError::NotAPlaylist),
            (b"#EXTM3U\n\xff\xfe\n", PlaylistError::NotUtf8),
            (b"\xef\xbb\xbf#EXTM3U\nseg\xc3.ts\n", PlaylistError::NotUtf8),
        ];
        for (body, error) in cases {
            assert_eq!(
                rewrite(body, |_, _| None),
                Err(error.clone_for_test()),
                "{body:?}"
            );
            assert_eq!(inspect(body), Err(error), "{body:?}");
        }
    }

    impl PlaylistError {
        fn clone_for_test(&self) -> Self {
            match self {
                Self::NotAPlaylist => Self::NotAPlaylist,
                Self::NotUtf8 => Self::NotUtf8,
                Self::Malformed(reason) => Self::Malformed(reason.clone()),
            }
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "would break the playlist")]
    fn a_replacement_with_a_quote_is_a_caller_bug() {
        let _ = rewrite(b"#EXTM3U\n#EXT-X-MAP:URI=\"a\"\n", |_, _| {
            Some("\"".to_owned())
        });
    }

    // ---- inspect ----

    fn media(target: u64) -> PlaylistInfo {
        PlaylistInfo {
            kind: PlaylistKind::Media,
            target_duration: Some(Duration::from_secs(target)),
            ..master_info()
        }
    }

    #[test]
    fn inspect_master() {
        assert_eq!(inspect(MASTER.as_bytes()), Ok(master_info()));
        let info = inspect(MASTER.as_bytes()).unwrap();
        assert_eq!(info.kind, PlaylistKind::Master);
        assert_eq!(info.target_duration, None);
    }

    #[test]
    fn inspect_vod() {
        let expected = PlaylistInfo {
            segment_count: 3,
            ended: true,
            ..media(6)
        };
        assert_eq!(inspect(VOD.as_bytes()), Ok(expected));
    }

    #[test]
    fn inspect_live_with_bom_and_crlf() {
        let body = "\u{feff}#EXTM3U\r\n#EXT-X-TARGETDURATION:4\r\n#EXT-X-MEDIA-SEQUENCE:1234\r\n\
            #EXTINF:4.0,\r\n#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z\r\nseg1234.ts\r\n\
            #EXTINF:4.0,\r\nseg1235.ts";
        let expected = PlaylistInfo {
            media_sequence: 1234,
            segment_count: 2,
            ..media(4)
        };
        assert_eq!(inspect(body.as_bytes()), Ok(expected));
    }

    #[test]
    fn inspect_low_latency_delta_update() {
        let expected = PlaylistInfo {
            media_sequence: 266,
            segment_count: 3 + 2,
            part_target: Some(Duration::from_secs_f64(0.33334)),
            can_block_reload: true,
            can_skip_until: Some(Duration::from_secs(24)),
            trailing_parts: 2,
            ..media(4)
        };
        assert_eq!(inspect(LL_HLS.as_bytes()), Ok(expected));
    }

    #[test]
    fn inspect_trailing_parts_reset_at_each_segment() {
        let body = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=0.5\n\
            #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=NO\n#EXT-X-PART:DURATION=0.5,URI=\"p0.0\"\n\
            #EXT-X-PART:DURATION=0.5,URI=\"p0.1\"\n#EXTINF:1,\ns0.ts\n";
        let expected = PlaylistInfo {
            segment_count: 1,
            part_target: Some(Duration::from_millis(500)),
            ..media(2)
        };
        assert_eq!(inspect(body.as_bytes()), Ok(expected));
    }

    #[test]
    fn inspect_rejects_unreadable_values() {
        for body in [
            "#EXTM3U\n",
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:4,\na.ts\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:6.5\n#EXTINF:4,\na.ts\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE: 5\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:99999999999999999999999\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-PART-INF:PART-TARGET=-1\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-PART-INF:PART-HOLD-BACK=1\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-SERVER-CONTROL:CAN-SKIP-UNTIL=inf\n",
            "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-SKIP:SKIPPED-SEGMENTS=x\n",
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na.m3u8\n#EXT-X-TARGETDURATION:6\n#EXTINF:4,\nb.ts\n",
            "#EXTM3U\n<html><body>oops</body></html>\n",
        ] {
            let result = inspect(body.as_bytes());
            assert!(
                matches!(result, Err(PlaylistError::Malformed(_))),
                "{body:?}: {result:?}"
            );
        }
    }

    #[test]
    fn inspect_rejects_what_m3u8_rs_stops_reading_at() {
        let body = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\rb.ts\n#EXT-X-ENDLIST\n";
        let result = inspect(body.as_bytes());
        assert_eq!(result, Err(malformed("m3u8-rs cannot read line 4")));
    }

    #[test]
    fn inspect_counts_segments_whose_titles_have_commas() {
        let body = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,Artist, Title, Live\na.ts\n";
        let expected = PlaylistInfo {
            segment_count: 1,
            ..media(2)
        };
        assert_eq!(inspect(body.as_bytes()), Ok(expected));
    }

    // ---- properties ----

    #[derive(Debug, Clone)]
    enum Piece {
        Text(String),
        Uri(String),
    }

    fn text(text: &str) -> Piece {
        Piece::Text(text.to_owned())
    }

    fn uri_text() -> impl Strategy<Value = String> {
        "[a-z0-9_./-]{1,16}(\\?[a-z]{1,4}=[a-z0-9%]{1,6})?"
    }

    /// A line (without its ending) as pieces; `Uri` pieces are what `rewrite` must hand to `map`.
    fn line() -> impl Strategy<Value = Vec<Piece>> {
        let plain = prop_oneof![
            Just(""),
            Just("  \t"),
            Just("# a comment, with URI=\"x.ts\""),
            Just("#"),
            Just("#EXTINF:4.000,"),
            Just("#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z"),
            Just("#EXT-X-MEDIA-SEQUENCE:12"),
            Just("#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS=\"avc1.4d401f,mp4a.40.2\""),
            Just("#EXT-X-KEY:METHOD=NONE"),
            Just("#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"skd://id\",KEYFORMAT=\"com.apple.streamingkeydelivery\""),
            Just("#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID=\"cc\",INSTREAM-ID=\"CC1\""),
            Just("#EXT-X-VENDOR-THING:URI=\"not/ours.json\""),
            Just("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0"),
        ]
        .prop_map(|line| vec![text(line)]);
        let uri_line = (
            uri_text(),
            prop_oneof![Just(""), Just(" ")],
            prop_oneof![Just(""), Just("\t")],
        )
            .prop_map(|(uri, before, after)| vec![text(before), Piece::Uri(uri), text(after)]);
        let uri_tag = (uri_text(), uri_tag_template())
            .prop_map(|(uri, (before, after))| vec![text(before), Piece::Uri(uri), text(after)]);
        prop_oneof![3 => plain, 2 => uri_line, 2 => uri_tag]
    }

    /// The text before and after the URI of a URI-bearing tag.
    fn uri_tag_template() -> impl Strategy<Value = (&'static str, &'static str)> {
        prop_oneof![
            Just(("#EXT-X-MAP:URI=\"", "\",BYTERANGE=\"720@0\"")),
            Just(("#EXT-X-KEY:METHOD=AES-128,URI=\"", "\",IV=0x01")),
            Just((
                "#EXT-X-KEY:METHOD=AES-128,KEYFORMAT=\"identity\",URI=\"",
                "\""
            )),
            Just(("#EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"", "\"")),
            Just((
                "#EXT-X-MEDIA:TYPE=AUDIO,NAME=\"a, b=c\",URI=\"",
                "\",DEFAULT=YES"
            )),
            Just(("#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI=\"", "\"")),
            Just(("#EXT-X-SESSION-DATA:DATA-ID=\"d\",URI=\"", "\"")),
            Just(("#EXT-X-PART:DURATION=0.5,URI=\"", "\",INDEPENDENT=YES")),
            Just(("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"", "\"")),
            Just(("#EXT-X-RENDITION-REPORT:URI=\"", "\",LAST-MSN=1")),
            Just(("#EXT-X-CONTENT-STEERING:SERVER-URI=\"", "\"")),
            Just(("#EXT-X-DATERANGE:ID=\"i\",X-ASSET-LIST=\"", "\"")),
        ]
    }

    /// A playlist as pieces: optional BOM, #EXTM3U, lines with LF or CRLF, maybe no final newline.
    fn playlist() -> impl Strategy<Value = Vec<Piece>> {
        let ending = prop_oneof![Just("\n"), Just("\r\n")];
        (
            any::<bool>(),
            prop::collection::vec((ending, line()), 0..40),
            any::<bool>(),
        )
            .prop_map(|(bom, lines, final_newline)| {
                let mut pieces = vec![text(if bom { "\u{feff}#EXTM3U" } else { "#EXTM3U" })];
                for (ending, line) in lines {
                    pieces.push(text(ending));
                    pieces.extend(line);
                }
                if final_newline {
                    pieces.push(text("\n"));
                }
                pieces
            })
    }

    fn joined(pieces: &[Piece], with_uris: bool) -> String {
        let mut joined = String::new();
        for piece in pieces {
            match piece {
                Piece::Text(text) => joined.push_str(text),
                Piece::Uri(uri) if with_uris => joined.push_str(uri),
                Piece::Uri(_) => {}
            }
        }
        joined
    }

    const MARKER: &str = "\u{2603}";
    /// A media playlist and the segments and trailing parts it lists.
    fn media_playlist() -> impl Strategy<Value = (String, usize, usize)> {
        let item = prop_oneof![
            Just(("#EXTINF:2.000,\nseg.ts", 1, false)),
            Just((
                "#EXTINF:2.000,Artist, Title\n#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00Z\nseg.ts?a=1",
                1,
                false
            )),
            Just((
                "#EXTINF:2,\n#EXT-X-BYTERANGE:100@0\n# note\n\nseg.mp4",
                1,
                false
            )),
            Just(("#EXT-X-PART:DURATION=0.5,URI=\"p.mp4\"", 0, true)),
            Just(("#EXT-X-DISCONTINUITY", 0, false)),
            Just(("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p.mp4\"", 0, false)),
        ];
        let ending = prop_oneof![Just("\n"), Just("\r\n")];
        prop::collection::vec((item, ending), 0..30).prop_map(|items| {
            let mut body = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n");
            let (mut segments, mut trailing_parts) = (0, 0);
            for ((text, new_segments, part), ending) in items {
                body.push_str(&text.replace('\n', ending));
                body.push_str(ending);
                segments += new_segments;
                trailing_parts = if new_segments > 0 {
                    0
                } else {
                    trailing_parts + usize::from(part)
                };
            }
            (body, segments, trailing_parts)
        })
    }

    proptest! {
        #[test]
        fn queries_go_exactly_where_they_are_marked(
            pieces in playlist(),
            marks in prop::collection::vec(any::<bool>(), 0..64),
        ) {
            let body = joined(&pieces, true);
            let rewritten = super::rewrite_marked(body.as_bytes(), |_, _| Some("r/x".to_owned())).unwrap();
            let ends = &rewritten.uri_ends;
            let some: Vec<usize> = ends
                .iter()
                .zip(marks.iter().chain(std::iter::repeat(&true)))
                .filter_map(|(&end, &marked)| marked.then_some(end))
                .collect();
            let out = with_queries(&rewritten.body, ends, Some("qe=1"), &some, Some("qs=2"));
            let out = String::from_utf8(out).unwrap();
            prop_assert_eq!(out.matches("r/x?qe=1").count(), ends.len());
            prop_assert_eq!(out.matches("r/x?qe=1&qs=2").count(), some.len());
            let plain = String::from_utf8(rewritten.body.clone()).unwrap();
            prop_assert_eq!(out.replace("&qs=2", "").replace("?qe=1", ""), plain);
        }

        #[test]
        fn rewriting_changes_nothing_but_uris(pieces in playlist()) {
            let body = joined(&pieces, true);
            let mut seen = Vec::new();
            let out = rewrite(body.as_bytes(), |_, uri| {
                seen.push(uri.to_owned());
                Some(MARKER.to_owned())
            })
            .unwrap();
            let out = String::from_utf8(out).unwrap();
            let uris: Vec<String> = pieces
                .iter()
                .filter_map(|piece| match piece {
                    Piece::Uri(uri) => Some(uri.clone()),
                    Piece::Text(_) => None,
                })
                .collect();
            prop_assert_eq!(&seen, &uris);
            prop_assert_eq!(out.matches(MARKER).count(), uris.len());
            prop_assert_eq!(out.replace(MARKER, ""), joined(&pieces, false));
        }

        #[test]
        fn identity_mapping_returns_the_input(pieces in playlist()) {
            let body = joined(&pieces, true);
            let out = rewrite(body.as_bytes(), |_, uri| Some(uri.to_owned())).unwrap();
            prop_assert_eq!(out, body.into_bytes());
        }

        #[test]
        fn inspect_counts_the_segment_lines_that_rewrite_maps((body, segments, parts) in media_playlist()) {
            let info = inspect(body.as_bytes()).unwrap();
            prop_assert_eq!(info.segment_count, segments);
            prop_assert_eq!(info.trailing_parts, parts);
            let mut segment_lines = 0;
            rewrite(body.as_bytes(), |site, _| {
                segment_lines += usize::from(site == UriSite::SegmentLine);
                None
            })
            .unwrap();
            prop_assert_eq!(segment_lines, segments);
        }

        #[test]
        fn find_byte_finds_the_first_match(haystack in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b':'), any::<u8>()], 0..80), byte in prop_oneof![Just(b'\n'), Just(b':'), any::<u8>()]) {
            prop_assert_eq!(find_byte(&haystack, byte), haystack.iter().position(|&b| b == byte));
        }

        #[test]
        fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut body = b"#EXTM3U\n".to_vec();
            body.extend(tail);
            let _ = rewrite(&body, |_, uri| Some(uri.replace(['"', '\r', '\n'], "")));
            let _ = inspect(&body);
        }

        #[test]
        fn arbitrary_playlist_text_never_panics(tail in "(#EXT[-A-Z]{0,12}[:=,\"]?|[ -~]{0,12}|\r?\n|\r|\u{feff}){0,30}") {
            let body = format!("#EXTM3U\n{tail}");
            let _ = rewrite(body.as_bytes(), |_, uri| Some(uri.replace(['"', '\r', '\n'], "")));
            let _ = inspect(body.as_bytes());
        }
    }
}
