//! The origin's pure core: live window arithmetic, playlist text, origin paths and URL signing.
//!
//! Nothing here does I/O or reads a clock; `origin.rs` looks up the call, measures elapsed time and calls these.

use std::fmt::Write as _;
use std::time::Duration;

use hmac::{KeyInit, Mac};

use super::Flavour;
use super::clock::rfc3339_ms;
use super::fixtures::{self, PARTS_PER_SEGMENT as PARTS, Rendition, SEGMENT_COUNT, SEGMENT_SECS};

/// Segments in a live media playlist.
pub const WINDOW_SEGMENTS: u64 = 6;

/// How far back a broadcast's clock is set when it starts, so its first playlist already holds a full window
/// (a real encoder would have been running; players want three segments before they start).
pub const PREROLL: Duration = Duration::from_secs(WINDOW_SEGMENTS * SEGMENT_SECS);

/// The media sequence numbers a live playlist lists, inclusive at both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub first: u64,
    pub last: u64,
}

impl Window {
    /// The window `since_start` after a broadcast started: every segment that has been completely produced, the
    /// last `WINDOW_SEGMENTS` of them (MSN n covers [2n s, 2n + 2 s) of the broadcast's pre-rolled clock).
    pub fn live(since_start: Duration) -> Window {
        let complete = since_start.saturating_add(PREROLL).as_secs() / SEGMENT_SECS;
        Window {
            first: complete.saturating_sub(WINDOW_SEGMENTS),
            last: complete.saturating_sub(1),
        }
    }
}

/// Whether MSN `msn` is the first segment of a new pass through the fixtures: their timestamps jump back, so the
/// playlist marks it with EXT-X-DISCONTINUITY.
pub fn starts_loop(msn: u64) -> bool {
    msn > 0 && msn.is_multiple_of(SEGMENT_COUNT as u64)
}

/// EXT-X-DISCONTINUITY-SEQUENCE for a playlist starting at `first`: the discontinuity tags already removed from
/// its head. A tag on `first` itself is still listed, so it does not count yet (RFC 8216 §6.2.1).
pub fn discontinuity_sequence(first: u64) -> u64 {
    first.saturating_sub(1) / SEGMENT_COUNT as u64
}

impl Flavour {
    pub(crate) fn segment_extension(self) -> &'static str {
        match self {
            Flavour::Ts => "ts",
            Flavour::Fmp4 => "m4s",
        }
    }

    pub(crate) fn media_content_type(self) -> &'static str {
        match self {
            Flavour::Ts => "video/mp2t",
            Flavour::Fmp4 => "video/mp4",
        }
    }

    /// EXT-X-VERSION: 3 for decimal EXTINF, 7 for EXT-X-MAP in a non-I-frame playlist (6 would do; ffmpeg says 7).
    fn hls_version(self) -> u8 {
        match self {
            Flavour::Ts => 3,
            Flavour::Fmp4 => 7,
        }
    }
}

/// `seg_000042.ts`: the live name of MSN 42, which plays fixture 42 mod 15.
pub fn segment_name(flavour: Flavour, msn: u64) -> String {
    format!("seg_{msn:06}.{}", flavour.segment_extension())
}

/// `seg_000042.part2.m4s`: the name of part 2 of MSN 42 in LL-HLS mode.
pub fn part_name(flavour: Flavour, msn: u64, part: u64) -> String {
    format!("seg_{msn:06}.part{part}.{}", flavour.segment_extension())
}

/// The inverse of `part_name`, for part indexes that exist (below `PARTS_PER_SEGMENT`); canonical spellings only.
pub fn parse_part_name(name: &str) -> Option<(Flavour, u64, u64)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let (segment, part) = stem.rsplit_once(".part")?;
    let (flavour, msn) = parse_segment_name(&format!("{segment}.{ext}"))?;
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let part = part.parse().ok().filter(|&p| p < PARTS as u64)?;
    (part_name(flavour, msn, part) == name).then_some((flavour, msn, part))
}

/// The inverse of `segment_name`. Only the canonical spelling is accepted, so each segment has one URL.
pub fn parse_segment_name(name: &str) -> Option<(Flavour, u64)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let flavour = [Flavour::Ts, Flavour::Fmp4]
        .into_iter()
        .find(|f| f.segment_extension() == ext)?;
    let digits = stem.strip_prefix("seg_")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let msn = digits.parse().ok()?;
    (segment_name(flavour, msn) == name).then_some((flavour, msn))
}

/// Signs origin paths the way a CDN signs URLs: `?sig=<hex HMAC-SHA256 of the path>`, checked on every media
/// request, so a relay that drops or mangles the query of a segment URI gets 403 like it would in production.
#[derive(Clone)]
pub struct UriSigner {
    key: [u8; 32],
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl UriSigner {
    pub fn new(key: [u8; 32]) -> UriSigner {
        UriSigner { key }
    }

    fn mac(&self, path: &str) -> Option<HmacSha256> {
        // HMAC takes keys of any length, so this never fails; the Option only avoids a panic path.
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        mac.update(path.as_bytes());
        Some(mac)
    }

    pub fn sign(&self, path: &str) -> String {
        self.mac(path)
            .map(|m| hex::encode(m.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// Constant-time check of a `sig` value against the request path.
    pub fn verify(&self, path: &str, sig: &str) -> bool {
        match (hex::decode(sig), self.mac(path)) {
            (Ok(bytes), Some(mac)) => mac.verify_slice(&bytes).is_ok(),
            _ => false,
        }
    }
}

/// The path prefix of the URLs the API hands out.
pub const CDN_PREFIX: &str = "/cdn/";
/// Where a master redirects to when the call has `redirect_master`: a different depth, so relative URIs resolved
/// against the pre-redirect URL land on 404s.
pub const EDGE_PREFIX: &str = "/edge/e1/";

/// `/cdn/{type}/{id}/{session}/`: the directory that holds a broadcast's master playlist.
pub fn session_dir(edge: bool, call_type: &str, id: &str, session: &str) -> String {
    let prefix = if edge { EDGE_PREFIX } else { CDN_PREFIX };
    format!("{prefix}{call_type}/{id}/{session}/")
}

/// What an origin path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Master,
    MediaPlaylist(Rendition),
    Init(Rendition),
    Segment(Rendition, Flavour, u64),
    /// An LL-HLS partial segment: MSN and part index.
    Part(Rendition, Flavour, u64, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginPath<'a> {
    /// Under `EDGE_PREFIX` rather than `CDN_PREFIX`.
    pub edge: bool,
    pub call_type: &'a str,
    pub id: &'a str,
    pub session: &'a str,
    pub resource: Resource,
}

/// Parses `/cdn/{type}/{id}/{session}/master.m3u8`, `…/{rendition}/index.m3u8`, `…/{rendition}/init.mp4`,
/// `…/{rendition}/seg_NNNNNN.{ts,m4s}` and `…/{rendition}/seg_NNNNNN.partK.{ts,m4s}` (or the same under
/// `EDGE_PREFIX`). Anything else is `None`.
pub fn parse_origin_path(path: &str) -> Option<OriginPath<'_>> {
    let (edge, rest) = match (
        path.strip_prefix(CDN_PREFIX),
        path.strip_prefix(EDGE_PREFIX),
    ) {
        (Some(rest), _) => (false, rest),
        (None, Some(rest)) => (true, rest),
        (None, None) => return None,
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let [call_type, id, session, resource @ ..] = parts.as_slice() else {
        return None;
    };
    let resource = match *resource {
        ["master.m3u8"] => Resource::Master,
        [dir, file] => {
            let rendition = Rendition::from_dir(dir)?;
            match file {
                "index.m3u8" => Resource::MediaPlaylist(rendition),
                "init.mp4" => Resource::Init(rendition),
                _ => match parse_segment_name(file) {
                    Some((flavour, msn)) => Resource::Segment(rendition, flavour, msn),
                    None => {
                        let (flavour, msn, part) = parse_part_name(file)?;
                        Resource::Part(rendition, flavour, msn, part)
                    }
                },
            }
        }
        _ => return None,
    };
    Some(OriginPath {
        edge,
        call_type,
        id,
        session,
        resource,
    })
}

/// The multivariant playlist: two video variants sharing one audio rendition, all URIs relative. Bit rates come
/// from the fixtures the broadcast serves (`low_latency`: the LL set).
pub fn master_playlist(flavour: Flavour, low_latency: bool) -> String {
    let audio = fixtures::media_for(flavour, low_latency, Rendition::Audio);
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:{}\n#EXT-X-INDEPENDENT-SEGMENTS\n\
         #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"English\",LANGUAGE=\"en\",DEFAULT=YES,AUTOSELECT=YES,\
         CHANNELS=\"2\",URI=\"{}/index.m3u8\"\n",
        flavour.hls_version(),
        Rendition::Audio.dir(),
    );
    for rendition in [Rendition::V360, Rendition::V180] {
        let video = fixtures::media_for(flavour, low_latency, rendition);
        let (width, height) = rendition.resolution().unwrap_or_default();
        let _ = write!(
            text,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={width}x{height},\
             CODECS=\"{},{}\",FRAME-RATE=30.000,AUDIO=\"aud\"\n{}/index.m3u8\n",
            video.peak_bps() + audio.peak_bps(),
            video.average_bps() + audio.average_bps(),
            rendition.codecs(),
            Rendition::Audio.codecs(),
            rendition.dir(),
        );
    }
    text
}

/// Everything a live media playlist depends on.
pub struct MediaPlaylist<'a> {
    pub flavour: Flavour,
    pub rendition: Rendition,
    pub window: Window,
    /// The broadcast stopped: the playlist gets EXT-X-ENDLIST.
    pub ended: bool,
    /// Wall-clock Unix milliseconds at which MSN 0 began (PROGRAM-DATE-TIME of MSN n is this + 2 n s).
    pub epoch_ms: i64,
    /// For signed URLs: the signer and the request path of the directory this playlist lives in (ending in `/`).
    pub signing: Option<(&'a UriSigner, &'a str)>,
}

/// `file`, with `?sig=…` when URLs are signed (`signing`: the signer and the playlist's directory).
fn signed_uri(signing: Option<(&UriSigner, &str)>, file: &str) -> String {
    match signing {
        Some((signer, dir)) => format!("{file}?sig={}", signer.sign(&format!("{dir}{file}"))),
        None => file.to_owned(),
    }
}

/// `#EXT-X-PROGRAM-DATE-TIME` of MSN `msn`, which began `msn` segments after `epoch_ms`.
fn program_date_time(epoch_ms: i64, msn: u64) -> String {
    let offset_ms = msn.saturating_mul(SEGMENT_SECS * 1000);
    let start_ms = epoch_ms.saturating_add(i64::try_from(offset_ms).unwrap_or(i64::MAX));
    rfc3339_ms(start_ms)
}

impl MediaPlaylist<'_> {
    /// `file`, with `?sig=…` when URLs are signed.
    fn uri(&self, file: &str) -> String {
        signed_uri(self.signing, file)
    }

    pub fn render(&self) -> String {
        let media = fixtures::media(self.flavour, self.rendition);
        let Window { first, last } = self.window;
        let mut text = format!(
            "#EXTM3U\n#EXT-X-VERSION:{}\n#EXT-X-TARGETDURATION:{SEGMENT_SECS}\n#EXT-X-MEDIA-SEQUENCE:{first}\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:{}\n#EXT-X-INDEPENDENT-SEGMENTS\n",
            self.flavour.hls_version(),
            discontinuity_sequence(first),
        );
        if self.flavour == Flavour::Fmp4 {
            let _ = writeln!(text, "#EXT-X-MAP:URI=\"{}\"", self.uri("init.mp4"));
        }
        for msn in first..=last {
            if starts_loop(msn) {
                text.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let (_, duration) = media.segment(msn);
            let _ = write!(
                text,
                "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{duration:.6},\n{}\n",
                program_date_time(self.epoch_ms, msn),
                self.uri(&segment_name(self.flavour, msn)),
            );
        }
        if self.ended {
            text.push_str("#EXT-X-ENDLIST\n");
        }
        text
    }
}

// Low-latency HLS (RFC 8216bis): parts, blocking reloads, preload hints, delta updates, rendition reports.

/// Parts per segment, as a u64 for MSN arithmetic.
const PPS: u64 = PARTS as u64;

/// How often the encoder completes a part: `PARTS_PER_SEGMENT` per segment.
pub const PART_INTERVAL: Duration = Duration::from_millis(SEGMENT_SECS * 1000 / PPS);

/// `PART-TARGET`: no part may be longer (RFC 8216bis §4.4.4.9). Video parts are 15 frames, exactly 0.5 s, but AAC
/// frames (1024 samples at 48 kHz) do not divide 0.5 s: audio parts are 24 frames, 0.512 s, and one shorter part
/// per segment. One target for every rendition keeps PART-HOLD-BACK the same everywhere.
pub const PART_TARGET: f64 = 0.512;

/// `PART-HOLD-BACK`: three part targets, as the spec recommends (it requires two).
pub const PART_HOLD_BACK: f64 = 3.0 * PART_TARGET;

/// `CAN-SKIP-UNTIL`: six target durations, the least the spec allows. Delta updates leave out the segments that
/// ended at least this long before the end of the playlist.
pub const SKIP_UNTIL: Duration = Duration::from_secs(6 * SEGMENT_SECS);

/// Complete segments in an LL-HLS media playlist: twice the skip boundary, so delta updates skip half of them.
pub const LL_WINDOW_SEGMENTS: u64 = 12;

/// `PREROLL` for LL-HLS broadcasts: a full LL window from the start.
pub const LL_PREROLL: Duration = Duration::from_secs(LL_WINDOW_SEGMENTS * SEGMENT_SECS);

/// Complete segments whose parts are still listed (as well as the segment in progress).
pub const PART_SEGMENTS: u64 = 3;

/// The Advance Part Limit (§6.2.5.2): `_HLS_part` may ask for at most ⌊3 / PART-TARGET⌋ parts past the last one.
pub const ADVANCE_PART_LIMIT: u64 = 5;

/// A blocking playlist request gives up with 503 after three target durations.
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(3 * SEGMENT_SECS);

/// A part still being produced is sent in this many pieces, as they are produced.
pub const PART_CHUNKS: usize = 4;

/// How far an LL-HLS broadcast's encoder has got: `position` into its pre-rolled timeline. MSN n is produced over
/// [2n s, 2n + 2 s), its part k over [2n + 0.5k s, 2n + 0.5k + 0.5 s); a segment is listed once its last part is
/// complete, parts as each completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Production {
    pub position: Duration,
}

impl Production {
    /// The encoder `since_start` after the broadcast started (`LL_PREROLL` earlier on its timeline).
    pub fn since_start(since_start: Duration) -> Production {
        Production {
            position: since_start.saturating_add(LL_PREROLL),
        }
    }

    /// Parts complete so far, counting from part 0 of MSN 0: part number g (part g mod 4 of MSN g / 4) is complete
    /// when g is below this.
    pub fn parts(self) -> u64 {
        u64::try_from(self.position.as_millis() / PART_INTERVAL.as_millis()).unwrap_or(u64::MAX)
    }

    /// The segment in production and how many of its parts are complete.
    pub fn in_progress(self) -> (u64, u64) {
        let parts = self.parts();
        (parts / PPS, parts % PPS)
    }

    /// The complete segments the playlist lists: the last `LL_WINDOW_SEGMENTS`.
    pub fn window(self) -> Window {
        let complete = self.parts() / PPS;
        Window {
            first: complete.saturating_sub(LL_WINDOW_SEGMENTS),
            last: complete.saturating_sub(1),
        }
    }

    /// The last complete part, as (MSN, part index): what a rendition report gives as LAST-MSN and LAST-PART.
    pub fn last_part(self) -> (u64, u64) {
        let last = self.parts().saturating_sub(1);
        (last / PPS, last % PPS)
    }

    /// How far into its production part number `part` is, if it is the one being produced.
    pub fn producing(self, part: u64) -> Option<Duration> {
        (part == self.parts()).then(|| self.position.saturating_sub(part_start(part)))
    }

    /// Time until `parts` parts are complete (zero if they are).
    pub fn until_parts(self, parts: u64) -> Duration {
        part_start(parts).saturating_sub(self.position)
    }
}

/// Where part number `part` starts on the production timeline (where the one before it is complete).
fn part_start(part: u64) -> Duration {
    Duration::from_millis(part.saturating_mul(PART_INTERVAL.as_millis() as u64))
}

/// What to do with a blocking request's `_HLS_msn` (and `_HLS_part`), §6.2.5.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// The playlist already holds what was asked for.
    Ready,
    /// Hold the request: it will be there after this much time.
    Wait(Duration),
    /// `_HLS_msn` more than two past the last segment, or `_HLS_part` beyond the Advance Part Limit: 400.
    TooFar,
}

/// When the playlist holds MSN `msn` (all of it), or with `part` that part of it; a part index past a segment's
/// last is part 0 of the next segment.
pub fn block(production: Production, msn: u64, part: Option<u64>) -> Block {
    if msn > production.window().last.saturating_add(2) {
        return Block::TooFar;
    }
    let needed = match part {
        None => msn.saturating_add(1).saturating_mul(PPS),
        Some(part) => {
            let wanted = if part >= PPS {
                msn.saturating_add(1).saturating_mul(PPS)
            } else {
                msn.saturating_mul(PPS) + part
            };
            let last = production.parts().saturating_sub(1);
            if wanted > last.saturating_add(ADVANCE_PART_LIMIT) {
                return Block::TooFar;
            }
            wanted + 1
        }
    };
    match production.until_parts(needed) {
        Duration::ZERO => Block::Ready,
        wait => Block::Wait(wait),
    }
}

/// An LL-HLS media playlist (fMP4, from the low-latency fixtures).
pub struct LlPlaylist<'a> {
    pub rendition: Rendition,
    pub production: Production,
    /// The broadcast stopped (production froze then): EXT-X-ENDLIST, and no parts of an unfinished segment.
    pub ended: bool,
    /// Wall-clock Unix milliseconds at which MSN 0 began.
    pub epoch_ms: i64,
    pub signing: Option<(&'a UriSigner, &'a str)>,
    /// `_HLS_skip=YES`: a delta update (ignored once the playlist has ended).
    pub skip: bool,
}

impl LlPlaylist<'_> {
    const FLAVOUR: Flavour = Flavour::Fmp4;

    fn uri(&self, file: &str) -> String {
        signed_uri(self.signing, file)
    }

    /// The segments a delta update leaves out: from the first, those that end `SKIP_UNTIL` or more before the end of
    /// the playlist (its last listed part included).
    fn skipped(&self, first: u64, last: u64, open_parts: u64) -> u64 {
        if !self.skip || self.ended {
            return 0;
        }
        let ll = fixtures::ll_media(self.rendition);
        let (current, _) = self.production.in_progress();
        let open: f64 = ll
            .parts(current)
            .iter()
            .take(open_parts as usize)
            .map(|p| p.duration)
            .sum();
        let total: f64 = (first..=last)
            .map(|msn| ll.media.segment(msn).1)
            .sum::<f64>()
            + open;
        let boundary = SKIP_UNTIL.as_secs_f64();
        let mut end = 0.0;
        let mut skipped = 0;
        for msn in first..=last {
            end += ll.media.segment(msn).1;
            if total - end < boundary {
                break;
            }
            skipped += 1;
        }
        skipped
    }

    /// DISCONTINUITY (on a loop wrap) and PROGRAM-DATE-TIME of a segment, before its parts.
    fn segment_tags(&self, text: &mut String, msn: u64) {
        if starts_loop(msn) {
            text.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = writeln!(
            text,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            program_date_time(self.epoch_ms, msn)
        );
    }

    fn part_lines(&self, text: &mut String, msn: u64, count: u64) {
        let ll = fixtures::ll_media(self.rendition);
        for (index, part) in ll.parts(msn).iter().enumerate().take(count as usize) {
            let _ = writeln!(
                text,
                "#EXT-X-PART:DURATION={:.6},URI=\"{}\"{}",
                part.duration,
                self.uri(&part_name(Self::FLAVOUR, msn, index as u64)),
                if part.independent {
                    ",INDEPENDENT=YES"
                } else {
                    ""
                },
            );
        }
    }

    pub fn render(&self) -> String {
        let ll = fixtures::ll_media(self.rendition);
        let Window { first, last } = self.production.window();
        let (current, done) = self.production.in_progress();
        let open_parts = if self.ended { 0 } else { done };
        let skipped = self.skipped(first, last, open_parts);
        let mut text = format!(
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{SEGMENT_SECS}\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={PART_HOLD_BACK:.3},CAN-SKIP-UNTIL={:.1}\n\
             #EXT-X-PART-INF:PART-TARGET={PART_TARGET}\n#EXT-X-MEDIA-SEQUENCE:{first}\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:{}\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"{}\"\n",
            SKIP_UNTIL.as_secs_f64(),
            discontinuity_sequence(first),
            self.uri("init.mp4"),
        );
        if skipped > 0 {
            let _ = writeln!(text, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
        }
        for msn in first + skipped..=last {
            self.segment_tags(&mut text, msn);
            if msn + PART_SEGMENTS > last {
                self.part_lines(&mut text, msn, PPS);
            }
            let _ = write!(
                text,
                "#EXTINF:{:.6},\n{}\n",
                ll.media.segment(msn).1,
                self.uri(&segment_name(Self::FLAVOUR, msn)),
            );
        }
        let (last_msn, last_part) = if self.ended {
            (last, PPS - 1)
        } else {
            if open_parts > 0 {
                self.segment_tags(&mut text, current);
                self.part_lines(&mut text, current, open_parts);
            }
            let _ = writeln!(
                text,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"",
                self.uri(&part_name(Self::FLAVOUR, current, open_parts)),
            );
            self.production.last_part()
        };
        // Every rendition is produced on the same clock, so they all report the same last part.
        for other in Rendition::ALL.into_iter().filter(|&r| r != self.rendition) {
            let _ = writeln!(
                text,
                "#EXT-X-RENDITION-REPORT:URI=\"../{}/index.m3u8\",LAST-MSN={last_msn},LAST-PART={last_part}",
                other.dir(),
            );
        }
        if self.ended {
            text.push_str("#EXT-X-ENDLIST\n");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playlist(flavour: Flavour, window: Window, ended: bool) -> String {
        MediaPlaylist {
            flavour,
            rendition: Rendition::V360,
            window,
            ended,
            epoch_ms: 1_714_564_800_000,
            signing: None,
        }
        .render()
    }

    fn uris(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    }

    #[test]
    fn a_new_broadcast_has_a_full_window_at_once() {
        let w = Window::live(Duration::ZERO);
        assert_eq!(w, Window { first: 0, last: 5 });
        assert_eq!(
            Window::live(Duration::from_millis(1999)),
            Window { first: 0, last: 5 }
        );
        assert_eq!(
            Window::live(Duration::from_secs(2)),
            Window { first: 1, last: 6 }
        );
        assert_eq!(
            Window::live(Duration::from_secs(61)),
            Window {
                first: 30,
                last: 35
            }
        );
    }

    #[test]
    fn live_playlist_lists_the_window_with_dates_and_no_endlist() {
        let text = playlist(Flavour::Ts, Window { first: 3, last: 8 }, false);
        assert!(text.starts_with("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"));
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:3\n"));
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"));
        assert!(!text.contains("ENDLIST"));
        assert!(!text.contains("EXT-X-MAP"));
        assert!(!text.contains("#EXT-X-DISCONTINUITY\n"));
        assert_eq!(
            uris(&text),
            [
                "seg_000003.ts",
                "seg_000004.ts",
                "seg_000005.ts",
                "seg_000006.ts",
                "seg_000007.ts",
                "seg_000008.ts"
            ]
        );
        assert!(text.contains(
            "#EXT-X-PROGRAM-DATE-TIME:2024-05-01T12:00:06.000Z\n#EXTINF:2.000000,\nseg_000003.ts\n"
        ));
        assert_eq!(text.matches("#EXT-X-PROGRAM-DATE-TIME").count(), 6);
    }

    #[test]
    fn ended_playlist_gets_endlist() {
        let text = playlist(Flavour::Ts, Window { first: 3, last: 8 }, true);
        assert!(text.ends_with("seg_000008.ts\n#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn fmp4_playlist_maps_the_init_section() {
        let text = playlist(Flavour::Fmp4, Window { first: 0, last: 5 }, false);
        assert!(text.contains("#EXT-X-VERSION:7\n"));
        assert!(text.contains("#EXT-X-MAP:URI=\"init.mp4\"\n"));
        assert_eq!(uris(&text)[0], "seg_000000.m4s");
    }

    #[test]
    fn the_loop_wrap_is_a_discontinuity_and_the_sequence_counts_dropped_tags() {
        // MSN 15 replays fixture 0.
        let text = playlist(
            Flavour::Ts,
            Window {
                first: 12,
                last: 17,
            },
            false,
        );
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"));
        assert!(text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:"));
        let before_15 = text.split("seg_000015.ts").next().unwrap_or_default();
        assert!(before_15.ends_with("#EXTINF:2.000000,\n"));
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1);

        // Still listed while MSN 15 heads the playlist, counted once it is gone.
        let text = playlist(
            Flavour::Ts,
            Window {
                first: 15,
                last: 20,
            },
            false,
        );
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"));
        assert!(text.contains("#EXT-X-DISCONTINUITY\n"));
        let text = playlist(
            Flavour::Ts,
            Window {
                first: 16,
                last: 21,
            },
            false,
        );
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"));
        assert!(!text.contains("#EXT-X-DISCONTINUITY\n"));
        assert_eq!(discontinuity_sequence(0), 0);
        assert_eq!(discontinuity_sequence(30), 1);
        assert_eq!(discontinuity_sequence(31), 2);
    }

    #[test]
    fn discontinuity_sequence_only_grows_as_the_window_slides() {
        let mut previous = (0, 0);
        for first in 0..100u64 {
            let dsn = discontinuity_sequence(first);
            // Each slide by one drops at most one tag.
            assert!(dsn == previous.0 || dsn == previous.0 + 1, "at {first}");
            let dropped = (previous.1..first).filter(|&m| starts_loop(m)).count() as u64;
            if first > 0 {
                assert_eq!(dsn, previous.0 + dropped, "at {first}");
            }
            previous = (dsn, first);
        }
    }

    #[test]
    fn signed_uris_carry_the_hmac_of_their_full_path() {
        let signer = UriSigner::new([7; 32]);
        let dir = "/cdn/livestream/abc/s1/v360/";
        let text = MediaPlaylist {
            flavour: Flavour::Fmp4,
            rendition: Rendition::V360,
            window: Window { first: 0, last: 5 },
            ended: false,
            epoch_ms: 0,
            signing: Some((&signer, dir)),
        }
        .render();
        let init_sig = signer.sign("/cdn/livestream/abc/s1/v360/init.mp4");
        assert!(text.contains(&format!("#EXT-X-MAP:URI=\"init.mp4?sig={init_sig}\"")));
        let first = uris(&text)[0];
        let (file, sig) = first.split_once("?sig=").unwrap_or_default();
        assert_eq!(file, "seg_000000.m4s");
        assert_eq!(sig.len(), 64);
        assert!(signer.verify(&format!("{dir}{file}"), sig));
        assert!(!signer.verify(&format!("{dir}seg_000001.m4s"), sig));
        assert!(!signer.verify(&format!("{dir}{file}"), "zz"));
        assert!(!UriSigner::new([8; 32]).verify(&format!("{dir}{file}"), sig));
    }

    #[test]
    fn master_offers_two_video_variants_and_an_audio_rendition() {
        for flavour in [Flavour::Ts, Flavour::Fmp4] {
            let text = master_playlist(flavour, false);
            assert!(text.contains("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\""));
            assert!(text.contains("URI=\"audio/index.m3u8\""));
            assert_eq!(uris(&text), ["v360/index.m3u8", "v180/index.m3u8"]);
            assert!(text.contains("RESOLUTION=640x360,CODECS=\"avc1.4d401e,mp4a.40.2\""));
            assert!(text.contains("RESOLUTION=320x180,CODECS=\"avc1.42c015,mp4a.40.2\""));
            assert_eq!(text.matches("AUDIO=\"aud\"").count(), 2);
        }
    }

    #[test]
    fn segment_names_round_trip_and_reject_other_spellings() {
        assert_eq!(segment_name(Flavour::Ts, 42), "seg_000042.ts");
        assert_eq!(parse_segment_name("seg_000042.ts"), Some((Flavour::Ts, 42)));
        assert_eq!(
            parse_segment_name("seg_1234567.m4s"),
            Some((Flavour::Fmp4, 1_234_567))
        );
        for bad in [
            "seg_42.ts",
            "seg_000042.mp4",
            "seg_+00042.ts",
            "seg_.ts",
            "x_000042.ts",
            "seg_000042",
            "seg_99999999999999999999999.ts",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn master_bit_rates_follow_the_fixtures_served() {
        let ll = master_playlist(Flavour::Fmp4, true);
        assert_eq!(uris(&ll), ["v360/index.m3u8", "v180/index.m3u8"]);
        let bandwidth = |text: &str| -> Vec<u64> {
            text.lines()
                .flat_map(|l| l.split("BANDWIDTH=").skip(1))
                .filter_map(|v| v.split(',').next()?.parse().ok())
                .collect()
        };
        let (ll_rates, rates) = (
            bandwidth(&ll),
            bandwidth(&master_playlist(Flavour::Fmp4, false)),
        );
        assert_eq!(ll_rates.len(), 4);
        // Another encode of the same recipe: close, not equal.
        for (a, b) in ll_rates.iter().zip(&rates) {
            assert!(a.abs_diff(*b) * 5 < *b, "{ll_rates:?} {rates:?}");
        }
    }

    #[test]
    fn part_names_round_trip_and_reject_other_spellings() {
        assert_eq!(part_name(Flavour::Fmp4, 42, 2), "seg_000042.part2.m4s");
        assert_eq!(
            parse_part_name("seg_000042.part2.m4s"),
            Some((Flavour::Fmp4, 42, 2))
        );
        assert_eq!(
            parse_part_name("seg_000007.part0.ts"),
            Some((Flavour::Ts, 7, 0))
        );
        for bad in [
            "seg_000042.part4.m4s",
            "seg_000042.part02.m4s",
            "seg_000042.part.m4s",
            "seg_000042.part+1.m4s",
            "seg_000042.partx.m4s",
            "seg_42.part1.m4s",
            "seg_000042.m4s",
            "seg_000042.part1.mp4",
            "seg_000042.part1",
        ] {
            assert_eq!(parse_part_name(bad), None, "{bad}");
        }
        assert_eq!(
            parse_origin_path("/cdn/t/i/s/audio/seg_000042.part3.m4s").map(|p| p.resource),
            Some(Resource::Part(Rendition::Audio, Flavour::Fmp4, 42, 3))
        );
        assert_eq!(
            parse_origin_path("/cdn/t/i/s/audio/seg_000042.part9.m4s"),
            None
        );
    }

    fn at(since_start_ms: u64) -> Production {
        Production::since_start(Duration::from_millis(since_start_ms))
    }

    #[test]
    fn production_completes_a_part_every_half_second() {
        let start = at(0);
        assert_eq!(start.parts(), 48);
        assert_eq!(start.in_progress(), (12, 0));
        assert_eq!(start.window(), Window { first: 0, last: 11 });
        assert_eq!(start.last_part(), (11, 3));
        assert_eq!(start.producing(48), Some(Duration::ZERO));
        assert_eq!(start.producing(49), None);
        assert_eq!(start.until_parts(48), Duration::ZERO);
        assert_eq!(start.until_parts(50), Duration::from_secs(1));

        let later = at(1_300);
        assert_eq!(later.in_progress(), (12, 2));
        assert_eq!(later.last_part(), (12, 1));
        assert_eq!(later.window(), Window { first: 0, last: 11 });
        assert_eq!(later.producing(50), Some(Duration::from_millis(300)));
        assert_eq!(later.until_parts(51), Duration::from_millis(200));
        assert_eq!(at(2_000).window(), Window { first: 1, last: 12 });
    }

    #[test]
    fn blocking_waits_for_the_segment_or_part_and_refuses_too_far() {
        let now = at(1_300); // MSN 12 in progress, parts 0 and 1 done; last segment 11.
        assert_eq!(block(now, 11, None), Block::Ready);
        assert_eq!(block(now, 12, Some(1)), Block::Ready);
        assert_eq!(block(now, 3, Some(0)), Block::Ready, "old parts are there");
        assert_eq!(
            block(now, 12, Some(2)),
            Block::Wait(Duration::from_millis(200))
        );
        assert_eq!(
            block(now, 12, None),
            Block::Wait(Duration::from_millis(700))
        );
        assert_eq!(
            block(now, 13, None),
            Block::Wait(Duration::from_millis(2_700))
        );
        // Part 4 and beyond are part 0 of the next segment.
        assert_eq!(block(now, 12, Some(4)), block(now, 13, Some(0)));
        assert_eq!(block(now, 12, Some(9)), block(now, 13, Some(0)));
        assert_eq!(
            block(now, 13, Some(0)),
            Block::Wait(Duration::from_millis(1_200))
        );
        // MSN at most two past the last segment; parts at most ADVANCE_PART_LIMIT past the last part.
        assert_eq!(block(now, 14, None), Block::TooFar);
        assert_eq!(
            block(now, 13, Some(2)),
            Block::Wait(Duration::from_millis(2_200))
        );
        assert_eq!(block(now, 13, Some(3)), Block::TooFar);
        assert_eq!(ADVANCE_PART_LIMIT, (3.0 / PART_TARGET).floor() as u64);
    }

    fn ll(production: Production, rendition: Rendition, ended: bool, skip: bool) -> String {
        LlPlaylist {
            rendition,
            production,
            ended,
            epoch_ms: 1_714_564_800_000,
            signing: None,
            skip,
        }
        .render()
    }

    fn tagged<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
        text.lines().filter_map(|l| l.strip_prefix(tag)).collect()
    }

    #[test]
    fn ll_playlist_at_the_start() {
        let text = ll(at(0), Rendition::V360, false, false);
        assert!(text.starts_with(
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.536,CAN-SKIP-UNTIL=12.0\n\
             #EXT-X-PART-INF:PART-TARGET=0.512\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-DISCONTINUITY-SEQUENCE:0\n\
             #EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:"
        ), "{text}");
        assert_eq!(uris(&text).len(), 12);
        assert_eq!(uris(&text)[11], "seg_000011.m4s");
        // The parts of the last three segments, then straight to the hint: nothing of MSN 12 is done yet.
        let parts = tagged(&text, "#EXT-X-PART:");
        assert_eq!(parts.len(), 12);
        assert_eq!(
            parts[0],
            "DURATION=0.500000,URI=\"seg_000009.part0.m4s\",INDEPENDENT=YES"
        );
        assert_eq!(parts[1], "DURATION=0.500000,URI=\"seg_000009.part1.m4s\"");
        assert_eq!(
            parts
                .iter()
                .filter(|p| p.ends_with("INDEPENDENT=YES"))
                .count(),
            3
        );
        assert!(text.contains(
            "#EXT-X-PART:DURATION=0.500000,URI=\"seg_000011.part3.m4s\"\n#EXTINF:2.000000,\nseg_000011.m4s\n\
             #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_000012.part0.m4s\"\n"
        ), "{text}");
        assert_eq!(
            tagged(&text, "#EXT-X-RENDITION-REPORT:"),
            [
                "URI=\"../v180/index.m3u8\",LAST-MSN=11,LAST-PART=3",
                "URI=\"../audio/index.m3u8\",LAST-MSN=11,LAST-PART=3"
            ]
        );
        assert!(!text.contains("ENDLIST") && !text.contains("EXT-X-SKIP"));
        // Tags come before the parts of their segment.
        let seg_10 = text.split("seg_000009.m4s\n").nth(1).unwrap_or_default();
        assert!(
            seg_10.starts_with("#EXT-X-PROGRAM-DATE-TIME:2024-05-01T12:00:20.000Z\n#EXT-X-PART:")
        );
    }

    #[test]
    fn ll_playlist_mid_segment_lists_the_done_parts_and_hints_the_next() {
        let text = ll(at(1_300), Rendition::Audio, false, false);
        let tail = text.split("seg_000011.m4s\n").nth(1).unwrap_or_default();
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(
            lines[0],
            "#EXT-X-PROGRAM-DATE-TIME:2024-05-01T12:00:24.000Z"
        );
        assert!(lines[1].starts_with(
            "#EXT-X-PART:DURATION=0.512000,URI=\"seg_000012.part0.m4s\",INDEPENDENT=YES"
        ));
        assert!(lines[2].starts_with(
            "#EXT-X-PART:DURATION=0.512000,URI=\"seg_000012.part1.m4s\",INDEPENDENT=YES"
        ));
        assert_eq!(
            lines[3],
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_000012.part2.m4s\""
        );
        assert_eq!(
            lines[4],
            "#EXT-X-RENDITION-REPORT:URI=\"../v360/index.m3u8\",LAST-MSN=12,LAST-PART=1"
        );
        assert_eq!(lines.len(), 6);
        // Every audio part starts with a sync sample.
        let parts = tagged(&text, "#EXT-X-PART:");
        assert_eq!(parts.len(), 14);
        assert!(parts.iter().all(|p| p.ends_with("INDEPENDENT=YES")));
        assert!(
            text.contains("#EXTINF:2.005333,\nseg_000011.m4s\n"),
            "{text}"
        );
    }

    #[test]
    fn ll_playlist_marks_the_loop_wrap_before_the_parts_of_the_new_pass() {
        // MSN 15 (fixture 0 again) in progress with one part done.
        let text = ll(at(6_600), Rendition::V180, false, false);
        assert!(text.contains(
            "seg_000014.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2024-05-01T12:00:30.000Z\n\
             #EXT-X-PART:DURATION=0.500000,URI=\"seg_000015.part0.m4s\",INDEPENDENT=YES\n\
             #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg_000015.part1.m4s\"\n"
        ), "{text}");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-DISCONTINUITY-SEQUENCE:0\n"));
    }

    #[test]
    fn delta_updates_skip_what_ended_a_skip_boundary_before_the_end() {
        let full = ll(at(1_300), Rendition::V360, false, false);
        let delta = ll(at(1_300), Rendition::V360, false, true);
        // 12 segments of 2 s and 1 s of parts: the first 6 end at least 12 s before the end (25 s).
        assert!(delta.contains(
            "#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-SKIP:SKIPPED-SEGMENTS=6\n#EXT-X-PROGRAM-DATE-TIME:"
        ), "{delta}");
        assert!(delta.contains("#EXT-X-MEDIA-SEQUENCE:0\n"));
        assert_eq!(uris(&delta), uris(&full)[6..]);
        let after_skip = |text: &str| text.split("seg_000005.m4s\n").nth(1).map(str::to_owned);
        assert_eq!(
            delta
                .split("SKIPPED-SEGMENTS=6\n")
                .nth(1)
                .map(str::to_owned),
            after_skip(&full)
        );
        assert_eq!(
            ll(at(0), Rendition::Audio, false, true)
                .matches("SKIPPED-SEGMENTS=6\n")
                .count(),
            1
        );
        // Not once the playlist has ended.
        assert!(!ll(at(1_300), Rendition::V360, true, true).contains("EXT-X-SKIP"));
    }

    #[test]
    fn ended_ll_playlist_drops_the_unfinished_segment_and_the_hint() {
        let text = ll(at(1_300), Rendition::V360, true, false);
        assert!(text.ends_with(
            "seg_000011.m4s\n#EXT-X-RENDITION-REPORT:URI=\"../v180/index.m3u8\",LAST-MSN=11,LAST-PART=3\n\
             #EXT-X-RENDITION-REPORT:URI=\"../audio/index.m3u8\",LAST-MSN=11,LAST-PART=3\n#EXT-X-ENDLIST\n"
        ), "{text}");
        assert!(!text.contains("PRELOAD-HINT") && !text.contains("seg_000012"));
    }

    #[test]
    fn ll_part_and_hint_uris_are_signed_like_segments() {
        let signer = UriSigner::new([7; 32]);
        let dir = "/cdn/livestream/abc/s1/v180/";
        let text = LlPlaylist {
            rendition: Rendition::V180,
            production: at(1_300),
            ended: false,
            epoch_ms: 0,
            signing: Some((&signer, dir)),
            skip: false,
        }
        .render();
        let hint = tagged(&text, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"")[0]
            .trim_end_matches('"')
            .to_owned();
        let (file, sig) = hint.split_once("?sig=").unwrap_or_default();
        assert_eq!(file, "seg_000012.part2.m4s");
        assert!(signer.verify(&format!("{dir}{file}"), sig));
        // The same URI as the part will have once listed.
        let later = LlPlaylist {
            rendition: Rendition::V180,
            production: at(1_600),
            ended: false,
            epoch_ms: 0,
            signing: Some((&signer, dir)),
            skip: false,
        }
        .render();
        assert!(
            later.contains(&format!("URI=\"{hint}\"\n"))
                || later.contains(&format!("URI=\"{hint}\","))
        );
        assert!(tagged(&text, "#EXT-X-RENDITION-REPORT:URI=\"../v360/index.m3u8\",").len() == 1);
    }

    #[test]
    fn origin_paths_parse() {
        let p = parse_origin_path("/cdn/livestream/abc/s1/master.m3u8");
        assert_eq!(
            p,
            Some(OriginPath {
                edge: false,
                call_type: "livestream",
                id: "abc",
                session: "s1",
                resource: Resource::Master
            })
        );
        let p = parse_origin_path("/edge/e1/livestream/abc/s1/audio/seg_000007.m4s");
        assert_eq!(
            p.map(|p| (p.edge, p.resource)),
            Some((true, Resource::Segment(Rendition::Audio, Flavour::Fmp4, 7)))
        );
        assert_eq!(
            parse_origin_path("/cdn/t/i/s/v180/index.m3u8").map(|p| p.resource),
            Some(Resource::MediaPlaylist(Rendition::V180))
        );
        assert_eq!(
            parse_origin_path("/cdn/t/i/s/v180/init.mp4").map(|p| p.resource),
            Some(Resource::Init(Rendition::V180))
        );
        for bad in [
            "/cdn/",
            "/cdn/t",
            "/cdn/t/i/s",
            "/cdn/t/i/s/",
            "/cdn/t//s/master.m3u8",
            "/cdn/t/i/s/v720/index.m3u8",
            "/cdn/t/i/s/v360/other.m3u8",
            "/cdn/t/i/s/v360/seg_000001.ts/x",
            "/edge/t/i/s/master.m3u8",
            "/other/t/i/s/master.m3u8",
        ] {
            assert_eq!(parse_origin_path(bad), None, "{bad}");
        }
    }
}
