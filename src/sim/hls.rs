//! The origin's pure core: live window arithmetic, playlist text, origin paths and URL signing.
//!
//! Nothing here does I/O or reads a clock; `origin.rs` looks up the call, measures elapsed time and calls these.

use std::fmt::Write as _;
use std::time::Duration;

use hmac::{KeyInit, Mac};

use super::Flavour;
use super::clock::rfc3339_ms;
use super::fixtures::{self, Rendition, SEGMENT_COUNT, SEGMENT_SECS};

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

/// Parses `/cdn/{type}/{id}/{session}/master.m3u8`, `…/{rendition}/index.m3u8`, `…/{rendition}/init.mp4` and
/// `…/{rendition}/seg_NNNNNN.{ts,m4s}` (or the same under `EDGE_PREFIX`). Anything else is `None`.
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
                _ => {
                    let (flavour, msn) = parse_segment_name(file)?;
                    Resource::Segment(rendition, flavour, msn)
                }
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

/// The multivariant playlist: two video variants sharing one audio rendition, all URIs relative.
pub fn master_playlist(flavour: Flavour) -> String {
    let audio = fixtures::media(flavour, Rendition::Audio);
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:{}\n#EXT-X-INDEPENDENT-SEGMENTS\n\
         #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"English\",LANGUAGE=\"en\",DEFAULT=YES,AUTOSELECT=YES,\
         CHANNELS=\"2\",URI=\"{}/index.m3u8\"\n",
        flavour.hls_version(),
        Rendition::Audio.dir(),
    );
    for rendition in [Rendition::V360, Rendition::V180] {
        let video = fixtures::media(flavour, rendition);
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

impl MediaPlaylist<'_> {
    /// `file`, with `?sig=…` when URLs are signed.
    fn uri(&self, file: &str) -> String {
        match self.signing {
            Some((signer, dir)) => format!("{file}?sig={}", signer.sign(&format!("{dir}{file}"))),
            None => file.to_owned(),
        }
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
            let offset_ms = msn.saturating_mul(SEGMENT_SECS * 1000);
            let start_ms = self
                .epoch_ms
                .saturating_add(i64::try_from(offset_ms).unwrap_or(i64::MAX));
            let (_, duration) = media.segment(msn);
            let _ = write!(
                text,
                "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{duration:.6},\n{}\n",
                rfc3339_ms(start_ms),
                self.uri(&segment_name(self.flavour, msn)),
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
            let text = master_playlist(flavour);
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
