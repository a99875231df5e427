//! The media the simulated origin serves, embedded in the binary so `hls-relay demo` needs no files.
//!
//! `scripts/make-fixtures.sh` writes `fixtures/`: 30 s of test pattern and tone in 15 segments of 2 s, per
//! rendition and flavour, each with the VOD playlist ffmpeg wrote. The origin loops these segments forever; the
//! segment durations come from those playlists, so the live playlists advertise what the bytes really hold.
//!
//! `fixtures/ll/` is the low-latency set (fMP4 only): the same 15 segments of 2 s, each made of four movie fragments
//! of about 0.5 s, which LL-HLS broadcasts serve as partial segments. Their boundaries, durations and keyframes are
//! read from the boxes (`mp4.rs`) when the set is first used.

use std::ops::Range;
use std::sync::LazyLock;

use super::Flavour;
use super::mp4;

/// Segments per rendition in `fixtures/` (the script checks it produced exactly this many).
pub const SEGMENT_COUNT: usize = 15;

/// Nominal segment length, which is also the fixed GOP and the live playlists' target duration.
pub const SEGMENT_SECS: u64 = 2;

/// One of the three renditions every broadcast offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rendition {
    /// 640x360 H.264 main profile, no audio.
    V360,
    /// 320x180 H.264 baseline profile, no audio.
    V180,
    /// AAC-LC stereo 64 kb/s, no video.
    Audio,
}

impl Rendition {
    pub const ALL: [Rendition; 3] = [Rendition::V360, Rendition::V180, Rendition::Audio];

    /// The directory name, both in `fixtures/` and in origin URLs.
    pub fn dir(self) -> &'static str {
        match self {
            Rendition::V360 => "v360",
            Rendition::V180 => "v180",
            Rendition::Audio => "audio",
        }
    }

    pub fn from_dir(dir: &str) -> Option<Rendition> {
        Rendition::ALL.into_iter().find(|r| r.dir() == dir)
    }

    /// The RFC 6381 codec string; fixed by the profile and level the script asks x264 for.
    pub fn codecs(self) -> &'static str {
        match self {
            Rendition::V360 => "avc1.4d401e",
            Rendition::V180 => "avc1.42c015",
            Rendition::Audio => "mp4a.40.2",
        }
    }

    /// Width and height of a video rendition.
    pub fn resolution(self) -> Option<(u32, u32)> {
        match self {
            Rendition::V360 => Some((640, 360)),
            Rendition::V180 => Some((320, 180)),
            Rendition::Audio => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Rendition::V360 => 0,
            Rendition::V180 => 1,
            Rendition::Audio => 2,
        }
    }
}

/// The embedded files of one rendition in one flavour.
pub struct Media {
    /// `init.mp4` (fMP4 only).
    pub init: Option<&'static [u8]>,
    pub segments: [&'static [u8]; SEGMENT_COUNT],
    /// Seconds of each segment, from the fixture's own playlist.
    pub durations: [f64; SEGMENT_COUNT],
    /// The VOD playlist ffmpeg wrote, which `durations` come from.
    #[cfg(test)]
    pub playlist: &'static str,
}

impl Media {
    /// The segment that plays at media sequence number `msn`: the fixtures loop.
    pub fn segment(&self, msn: u64) -> (&'static [u8], f64) {
        let i = loop_index(msn);
        (self.segments[i], self.durations[i])
    }

    /// Highest bit rate of any one segment, for BANDWIDTH.
    pub fn peak_bps(&self) -> u64 {
        self.segments
            .iter()
            .zip(self.durations)
            .map(|(s, d)| (s.len() as f64 * 8.0 / d) as u64)
            .max()
            .unwrap_or(0)
    }

    /// Mean bit rate over the loop, for AVERAGE-BANDWIDTH.
    pub fn average_bps(&self) -> u64 {
        let bytes: usize = self.segments.iter().map(|s| s.len()).sum();
        let secs: f64 = self.durations.iter().sum();
        (bytes as f64 * 8.0 / secs) as u64
    }
}

/// Position of `msn` in the fixture loop.
pub fn loop_index(msn: u64) -> usize {
    (msn % SEGMENT_COUNT as u64) as usize
}

/// The fixtures of a rendition in a flavour.
pub fn media(flavour: Flavour, rendition: Rendition) -> &'static Media {
    let set = match flavour {
        Flavour::Ts => &*TS,
        Flavour::Fmp4 => &*FMP4,
    };
    &set[rendition.index()]
}

/// `#EXTINF` durations of a VOD playlist, in order.
fn extinf_durations(playlist: &str) -> Vec<f64> {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|rest| rest.split(',').next()?.trim().parse().ok())
        .collect()
}

fn build(
    playlist: &'static str,
    init: Option<&'static [u8]>,
    segments: [&'static [u8]; SEGMENT_COUNT],
) -> Media {
    let parsed = extinf_durations(playlist);
    // A playlist that does not parse would be caught by the tests; until then the nominal length is close enough.
    let durations = std::array::from_fn(|i| parsed.get(i).copied().unwrap_or(SEGMENT_SECS as f64));
    Media {
        init,
        segments,
        durations,
        #[cfg(test)]
        playlist,
    }
}

macro_rules! fixture_path {
    ($($part:literal),+) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/", $($part),+)
    };
}

/// The 15 segments of a fixture directory; the file names are those `make-fixtures.sh` writes.
macro_rules! segments {
    ($flavour:literal, $dir:literal, $ext:literal) => {
        segments!(@ $flavour, $dir, $ext, "000", "001", "002", "003", "004", "005", "006", "007", "008", "009", "010",
            "011", "012", "013", "014")
    };
    (@ $flavour:literal, $dir:literal, $ext:literal, $($n:literal),+) => {
        [$(include_bytes!(fixture_path!($flavour, "/", $dir, "/seg_", $n, ".", $ext)).as_slice()),+]
    };
}

macro_rules! ts {
    ($rendition:literal) => {
        build(
            include_str!(fixture_path!("ts/", $rendition, "/index.m3u8")),
            None,
            segments!("ts", $rendition, "ts"),
        )
    };
}

macro_rules! fmp4 {
    ($rendition:literal) => {
        build(
            include_str!(fixture_path!("fmp4/", $rendition, "/index.m3u8")),
            Some(include_bytes!(fixture_path!("fmp4/", $rendition, "/init.mp4")).as_slice()),
            segments!("fmp4", $rendition, "m4s"),
        )
    };
}

/// Indexed by `Rendition::index`.
static TS: LazyLock<[Media; 3]> = LazyLock::new(|| [ts!("v360"), ts!("v180"), ts!("audio")]);
static FMP4: LazyLock<[Media; 3]> =
    LazyLock::new(|| [fmp4!("v360"), fmp4!("v180"), fmp4!("audio")]);

/// Parts per segment in the low-latency fixtures (the script cuts a fragment every 0.5 s of a 2 s segment).
pub const PARTS_PER_SEGMENT: usize = 4;

/// One movie fragment of a low-latency segment: an LL-HLS partial segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// Where it lies in its segment.
    pub range: Range<usize>,
    /// Seconds, from the sample durations in its `trun` boxes.
    pub duration: f64,
    /// It starts with a sync sample (a keyframe; every AAC frame is one): `INDEPENDENT=YES`.
    pub independent: bool,
}

/// The low-latency fixtures of a rendition: `media` as for the other sets (its durations the sums of the parts'),
/// and each segment's parts.
pub struct LlMedia {
    pub media: Media,
    /// Per segment. Empty for a segment that does not split into fragments (the fixture tests catch that).
    pub parts: [Vec<Part>; SEGMENT_COUNT],
}

impl LlMedia {
    /// Part `index` of the segment that plays at `msn`: its bytes and description.
    pub fn part(&self, msn: u64, index: usize) -> Option<(&'static [u8], &Part)> {
        let i = loop_index(msn);
        let part = self.parts[i].get(index)?;
        Some((self.media.segments[i].get(part.range.clone())?, part))
    }

    /// The parts of the segment that plays at `msn`.
    pub fn parts(&self, msn: u64) -> &[Part] {
        &self.parts[loop_index(msn)]
    }
}

/// The low-latency fixtures of a rendition.
pub fn ll_media(rendition: Rendition) -> &'static LlMedia {
    &LL[rendition.index()]
}

/// The fixtures a broadcast serves: the low-latency set for LL-HLS, else its flavour's.
pub fn media_for(flavour: Flavour, low_latency: bool, rendition: Rendition) -> &'static Media {
    if low_latency {
        &ll_media(rendition).media
    } else {
        media(flavour, rendition)
    }
}

fn build_ll(init: &'static [u8], segments: [&'static [u8]; SEGMENT_COUNT]) -> LlMedia {
    let defaults = mp4::track_defaults(init);
    let parts: [Vec<Part>; SEGMENT_COUNT] = std::array::from_fn(|i| {
        let segment = segments[i];
        let split = defaults.and_then(|defaults| {
            mp4::fragments(segment)?
                .into_iter()
                .map(|range| {
                    let (duration, independent) =
                        mp4::fragment_timing(segment.get(range.clone())?, defaults)?;
                    Some(Part {
                        range,
                        duration,
                        independent,
                    })
                })
                .collect::<Option<Vec<_>>>()
        });
        split.unwrap_or_default()
    });
    let durations = std::array::from_fn(|i| match parts[i].as_slice() {
        [] => SEGMENT_SECS as f64,
        parts => parts.iter().map(|p| p.duration).sum(),
    });
    LlMedia {
        media: Media {
            init: Some(init),
            segments,
            durations,
            #[cfg(test)]
            playlist: "",
        },
        parts,
    }
}

macro_rules! ll {
    ($rendition:literal) => {
        build_ll(
            include_bytes!(fixture_path!("ll/", $rendition, "/init.mp4")).as_slice(),
            segments!("ll", $rendition, "m4s"),
        )
    };
}

static LL: LazyLock<[LlMedia; 3]> = LazyLock::new(|| [ll!("v360"), ll!("v180"), ll!("audio")]);

#[cfg(test)]
mod tests {
    use super::*;

    const FLAVOURS: [Flavour; 2] = [Flavour::Ts, Flavour::Fmp4];

    #[test]
    fn every_playlist_lists_the_expected_segments_with_plausible_durations() {
        for flavour in FLAVOURS {
            for rendition in Rendition::ALL {
                let media = media(flavour, rendition);
                assert_eq!(
                    extinf_durations(media.playlist).len(),
                    SEGMENT_COUNT,
                    "{flavour:?} {rendition:?}"
                );
                for d in media.durations {
                    assert!((1.9..=2.1).contains(&d), "{flavour:?} {rendition:?}: {d}");
                }
            }
        }
    }

    #[test]
    fn ts_segments_are_transport_streams() {
        for rendition in Rendition::ALL {
            let media = media(Flavour::Ts, rendition);
            assert!(media.init.is_none());
            for seg in media.segments {
                assert_eq!(seg.len() % 188, 0, "{rendition:?}: whole TS packets");
                assert!(
                    seg.chunks(188).all(|p| p[0] == 0x47),
                    "{rendition:?}: sync bytes"
                );
            }
        }
    }

    #[test]
    fn fmp4_has_an_init_section_and_movie_fragments() {
        for rendition in Rendition::ALL {
            let media = media(Flavour::Fmp4, rendition);
            let init = media.init.expect("fMP4 has init.mp4");
            assert_eq!(&init[4..8], b"ftyp", "{rendition:?}");
            assert!(init.windows(4).any(|w| w == b"moov"), "{rendition:?}");
            for seg in media.segments {
                assert!(seg.windows(4).any(|w| w == b"moof"), "{rendition:?}");
                assert!(seg.windows(4).any(|w| w == b"mdat"), "{rendition:?}");
            }
        }
    }

    #[test]
    fn ll_segments_split_into_four_fragments_that_concatenate_back() {
        for rendition in Rendition::ALL {
            let ll = ll_media(rendition);
            let init = ll.media.init.unwrap_or_default();
            assert_eq!(init.get(4..8), Some(b"ftyp".as_slice()), "{rendition:?}");
            for (i, segment) in ll.media.segments.iter().enumerate() {
                let ranges = mp4::fragments(segment).expect("the segment splits");
                assert_eq!(ranges.len(), PARTS_PER_SEGMENT, "{rendition:?} {i}");
                let parts: Vec<&[u8]> = (0..PARTS_PER_SEGMENT)
                    .map(|p| {
                        ll.part(i as u64, p)
                            .map(|(bytes, _)| bytes)
                            .unwrap_or_default()
                    })
                    .collect();
                assert_eq!(
                    parts.concat(),
                    *segment,
                    "{rendition:?} {i}: nothing lost or added"
                );
                for (p, part) in parts.iter().enumerate() {
                    let first = part.get(4..8).unwrap_or_default();
                    assert!(
                        first == b"moof" || first == b"styp",
                        "{rendition:?} {i}.{p}: {first:?}"
                    );
                    let boxes = mp4::boxes(part).expect("whole boxes");
                    assert_eq!(boxes.iter().filter(|b| &b.kind == b"moof").count(), 1);
                    assert_eq!(boxes.last().map(|b| b.kind), Some(*b"mdat"));
                }
                // The same segment a little later in the loop: the parts follow the fixture.
                assert_eq!(
                    ll.parts(i as u64 + SEGMENT_COUNT as u64),
                    ll.parts[i].as_slice()
                );
            }
            assert!(ll.part(0, PARTS_PER_SEGMENT).is_none());
        }
    }

    #[test]
    fn ll_part_durations_and_keyframes() {
        let target = crate::sim::hls::PART_TARGET;
        let mut longest: f64 = 0.0;
        for rendition in Rendition::ALL {
            let ll = ll_media(rendition);
            let video = rendition != Rendition::Audio;
            for (i, parts) in ll.parts.iter().enumerate() {
                let total: f64 = parts.iter().map(|p| p.duration).sum();
                assert!((total - ll.media.durations[i]).abs() < 1e-9);
                assert!((1.9..=2.1).contains(&total), "{rendition:?} {i}: {total}");
                for (p, part) in parts.iter().enumerate() {
                    longest = longest.max(part.duration);
                    assert!(
                        part.duration <= target,
                        "{rendition:?} {i}.{p}: {}",
                        part.duration
                    );
                    // RFC 8216bis: at least 85% of the target, except independent and last parts.
                    assert!(
                        part.duration >= 0.85 * target
                            || part.independent
                            || p == PARTS_PER_SEGMENT - 1,
                        "{rendition:?} {i}.{p}: {}",
                        part.duration
                    );
                    if video {
                        assert_eq!(
                            part.duration, 0.5,
                            "{rendition:?} {i}.{p}: 15 frames at 30 fps"
                        );
                        assert_eq!(
                            part.independent,
                            p == 0,
                            "{rendition:?} {i}.{p}: a keyframe a segment"
                        );
                    } else {
                        assert!(
                            part.independent,
                            "{rendition:?} {i}.{p}: every AAC frame is a sync sample"
                        );
                    }
                }
            }
        }
        assert!(
            target - longest < 0.001,
            "PART-TARGET {target} is the longest part, {longest}, rounded up"
        );
    }

    #[test]
    fn video_codec_strings_match_the_encoded_streams() {
        for rendition in [Rendition::V360, Rendition::V180] {
            let init = media(Flavour::Fmp4, rendition).init.unwrap_or_default();
            let ll = ll_media(rendition).media.init.unwrap_or_default();
            assert_eq!(avc_codec(init), avc_codec(ll), "the same encoder settings");
            assert_eq!(rendition.codecs(), avc_codec(init));
        }
    }

    /// `avc1.PPCCLL` from an init section's avcC box: configurationVersion, then profile, constraint flags, level.
    fn avc_codec(init: &[u8]) -> String {
        let at = init
            .windows(4)
            .position(|w| w == b"avcC")
            .expect("avcC box");
        format!("avc1.{}", hex::encode(&init[at + 5..at + 8]))
    }

    #[test]
    fn bit_rates_are_in_the_advertised_ballpark() {
        let v360 = media(Flavour::Ts, Rendition::V360);
        let v180 = media(Flavour::Ts, Rendition::V180);
        assert!(v360.average_bps() > v180.average_bps());
        assert!(v360.peak_bps() >= v360.average_bps());
        assert!((100_000..600_000).contains(&v360.average_bps()));
    }
}
