//! Just enough ISO BMFF (MP4) reading to serve LL-HLS parts from whole fMP4 segments: the top-level boxes of a
//! segment, its movie fragments (each `moof` with its `mdat`, and the `styp`/`sidx`/`prft`/`emsg` boxes in front
//! of it), and each fragment's duration and whether it starts on a sync sample (a keyframe).
//!
//! Only the single-track files `scripts/make-fixtures.sh` writes need to work; anything malformed gives `None`
//! (never a panic), and the fixture tests fail on it.

use std::ops::Range;

/// A box in a byte buffer: its four-character type and where it and its payload lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mp4Box {
    pub kind: [u8; 4],
    /// From the first byte of the header to the end of the box.
    pub range: (usize, usize),
    /// Where the payload (after the size, type and any 64-bit size) starts.
    pub payload: usize,
}

impl Mp4Box {
    fn payload<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        data.get(self.payload..self.range.1).unwrap_or_default()
    }
}

/// The boxes directly inside `data`, in order; None if a size is inconsistent with the buffer.
pub fn boxes(data: &[u8]) -> Option<Vec<Mp4Box>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let size = u64::from(read_u32(data, at)?);
        let kind: [u8; 4] = data.get(at + 4..at + 8)?.try_into().ok()?;
        let (size, header) = match size {
            // The box runs to the end of its container.
            0 => ((data.len() - at) as u64, 8),
            1 => (read_u64(data, at + 8)?, 16),
            size => (size, 8),
        };
        let end = at.checked_add(usize::try_from(size).ok()?)?;
        if size < header as u64 || end > data.len() {
            return None;
        }
        out.push(Mp4Box {
            kind,
            range: (at, end),
            payload: at + header,
        });
        at = end;
    }
    Some(out)
}

/// The byte ranges of the movie fragments of an fMP4 segment, in order. Each is a `moof` and the `mdat` after it,
/// with any boxes between the previous fragment and the `moof` (`styp`, `sidx`, `prft`, `emsg`…), which belong to
/// it; boxes after the last `mdat` join the last fragment. The ranges cover the whole segment, so the fragments
/// concatenated are the segment. None if the segment does not parse or has no complete fragment.
pub fn fragments(segment: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_fragment = false;
    for b in boxes(segment)? {
        match &b.kind {
            b"moof" if in_fragment => return None,
            b"moof" => in_fragment = true,
            b"mdat" if in_fragment => {
                out.push(start..b.range.1);
                start = b.range.1;
                in_fragment = false;
            }
            _ => {}
        }
    }
    if in_fragment {
        return None;
    }
    let last = out.last_mut()?;
    last.end = segment.len();
    Some(out)
}

/// What an init section says about its (first) track that fragments need: the timescale and the `trex` defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackDefaults {
    pub timescale: u32,
    pub sample_duration: u32,
    pub sample_flags: u32,
}

/// The first track's timescale (`moov/trak/mdia/mdhd`) and fragment defaults (`moov/mvex/trex`, zero if absent).
pub fn track_defaults(init: &[u8]) -> Option<TrackDefaults> {
    let moov = child(init, &boxes(init)?, b"moov")?;
    let moov_boxes = boxes(moov)?;
    let trak = child(moov, &moov_boxes, b"trak")?;
    let mdia = child(trak, &boxes(trak)?, b"mdia")?;
    let mdhd = child(mdia, &boxes(mdia)?, b"mdhd")?;
    // Full box: version and flags, then creation and modification times of 32 or 64 bits, then the timescale.
    let timescale = match mdhd.first()? {
        0 => read_u32(mdhd, 12)?,
        1 => read_u32(mdhd, 20)?,
        _ => return None,
    };
    let trex = child(moov, &moov_boxes, b"mvex").and_then(|mvex| {
        let trex = child(mvex, &boxes(mvex)?, b"trex")?;
        // version/flags, track_ID, default_sample_description_index, then duration, size, flags.
        Some((read_u32(trex, 12)?, read_u32(trex, 20)?))
    });
    let (sample_duration, sample_flags) = trex.unwrap_or((0, 0));
    (timescale > 0).then_some(TrackDefaults {
        timescale,
        sample_duration,
        sample_flags,
    })
}

/// Bit of the ISO BMFF sample flags that marks a sample that is not a sync sample.
const SAMPLE_IS_NON_SYNC: u32 = 0x0001_0000;

/// The duration of a movie fragment in seconds (every `trun` sample of its first `traf`), and whether its first
/// sample is a sync sample, so that a player can start decoding there.
pub fn fragment_timing(fragment: &[u8], defaults: TrackDefaults) -> Option<(f64, bool)> {
    let top = boxes(fragment)?;
    let moof = child(fragment, &top, b"moof")?;
    let traf = child(moof, &boxes(moof)?, b"traf")?;
    let traf_boxes = boxes(traf)?;
    let tfhd = child(traf, &traf_boxes, b"tfhd")?;
    let tfhd_flags = read_u32(tfhd, 0)? & 0x00ff_ffff;
    // After version/flags and track_ID: optional base_data_offset (8), sample_description_index (4), then the
    // default duration (4), size (4) and flags (4).
    let mut at = 8;
    if tfhd_flags & 0x01 != 0 {
        at += 8;
    }
    if tfhd_flags & 0x02 != 0 {
        at += 4;
    }
    let mut default_duration = defaults.sample_duration;
    if tfhd_flags & 0x08 != 0 {
        default_duration = read_u32(tfhd, at)?;
        at += 4;
    }
    if tfhd_flags & 0x10 != 0 {
        at += 4;
    }
    let mut default_flags = defaults.sample_flags;
    if tfhd_flags & 0x20 != 0 {
        default_flags = read_u32(tfhd, at)?;
    }

    let mut ticks = 0u64;
    let mut first_flags = None;
    for trun in traf_boxes.iter().filter(|b| &b.kind == b"trun") {
        let trun = trun.payload(traf);
        let flags = read_u32(trun, 0)? & 0x00ff_ffff;
        let count = read_u32(trun, 4)?;
        let mut at = 8;
        if flags & 0x001 != 0 {
            at += 4;
        }
        let mut first_sample_flags = None;
        if flags & 0x004 != 0 {
            first_sample_flags = Some(read_u32(trun, at)?);
            at += 4;
        }
        for i in 0..count {
            let mut duration = default_duration;
            let mut sample_flags = default_flags;
            if flags & 0x100 != 0 {
                duration = read_u32(trun, at)?;
                at += 4;
            }
            if flags & 0x200 != 0 {
                at += 4;
            }
            if flags & 0x400 != 0 {
                sample_flags = read_u32(trun, at)?;
                at += 4;
            }
            if flags & 0x800 != 0 {
                at += 4;
            }
            if i == 0 {
                sample_flags = first_sample_flags.unwrap_or(sample_flags);
                first_flags.get_or_insert(sample_flags);
            }
            ticks += u64::from(duration);
        }
    }
    let independent = first_flags? & SAMPLE_IS_NON_SYNC == 0;
    Some((ticks as f64 / f64::from(defaults.timescale), independent))
}

/// The payload of the first box of `kind` among `within`, the boxes of `data`.
fn child<'a>(data: &'a [u8], within: &[Mp4Box], kind: &[u8; 4]) -> Option<&'a [u8]> {
    within
        .iter()
        .find(|b| &b.kind == kind)
        .map(|b| b.payload(data))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn boxes_read_sizes_and_refuse_inconsistent_ones() {
        let data = [mp4_box(b"styp", b"abcd"), mp4_box(b"free", b"")].concat();
        let parsed = boxes(&data).expect("parses");
        assert_eq!(parsed.len(), 2);
        assert_eq!(&parsed[0].kind, b"styp");
        assert_eq!(parsed[0].range, (0, 12));
        assert_eq!(parsed[0].payload, 8);
        assert_eq!(parsed[1].range, (12, 20));

        // A 64-bit size, and a size of 0 (to the end).
        let mut large = 1u32.to_be_bytes().to_vec();
        large.extend_from_slice(b"mdat");
        large.extend_from_slice(&20u64.to_be_bytes());
        large.extend_from_slice(b"xyzw");
        assert_eq!(boxes(&large).map(|b| b[0].payload), Some(16));
        let mut rest = 0u32.to_be_bytes().to_vec();
        rest.extend_from_slice(b"mdat123");
        assert_eq!(boxes(&rest).map(|b| b[0].range), Some((0, 11)));

        for bad in [
            [mp4_box(b"styp", b"abcd"), vec![0, 0, 0]].concat(),
            [100u32.to_be_bytes().as_slice(), b"moof"].concat(),
            [4u32.to_be_bytes().as_slice(), b"moof"].concat(),
        ] {
            assert_eq!(boxes(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fragments_group_prefix_boxes_with_their_moof() {
        let styp = mp4_box(b"styp", b"msdh");
        let moof = mp4_box(b"moof", b"m1");
        let mdat = mp4_box(b"mdat", b"d1");
        let prft = mp4_box(b"prft", b"p");
        let moof2 = mp4_box(b"moof", b"m2");
        let mdat2 = mp4_box(b"mdat", b"d2");
        let free = mp4_box(b"free", b"");
        let segment = [
            styp.clone(),
            moof.clone(),
            mdat.clone(),
            prft.clone(),
            moof2,
            mdat2,
            free,
        ]
        .concat();
        let ranges = fragments(&segment).expect("two fragments");
        assert_eq!(ranges.len(), 2);
        let first = styp.len() + moof.len() + mdat.len();
        assert_eq!(ranges[0], 0..first);
        assert_eq!(ranges[1], first..segment.len());
        assert_eq!(&segment[ranges[1].start + 4..ranges[1].start + 8], b"prft");

        assert_eq!(fragments(&[styp.clone(), moof.clone()].concat()), None);
        assert_eq!(
            fragments(&[moof.clone(), moof, mdat.clone()].concat()),
            None
        );
        assert_eq!(fragments(&[styp, mdat].concat()), None);
    }
}
