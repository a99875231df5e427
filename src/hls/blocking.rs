//! Low-Latency HLS delivery directives (RFC 8216bis §6.2.5): reading `_HLS_msn`, `_HLS_part` and `_HLS_skip`, and
//! deciding whether a playlist version answers a blocking request (pure; no I/O).

use std::time::Duration;

use crate::hls::playlist::{PlaylistInfo, PlaylistKind};

/// What a player asked for with the reserved `_HLS_` query parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Directives {
    /// Hold until the playlist holds this media sequence number (`_HLS_msn`)...
    pub msn: Option<u64>,
    /// ...and this part of it (`_HLS_part`).
    pub part: Option<u64>,
    /// A delta update (`_HLS_skip=YES` or `v2`).
    pub skip: Option<Skip>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Yes,
    V2,
}

impl Skip {
    fn as_str(self) -> &'static str {
        match self {
            Self::Yes => "YES",
            Self::V2 => "v2",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectiveError {
    #[error("_HLS_part needs _HLS_msn")]
    PartWithoutMsn,
    #[error("{0} is not a valid value")]
    BadValue(&'static str),
    #[error("_HLS_msn is more than two segments past the end of the playlist")]
    TooFarAhead,
}

impl Directives {
    /// Reads the directives from a request's query; other parameters are ignored.
    pub fn parse(query: Option<&str>) -> Result<Self, DirectiveError> {
        let mut directives = Self::default();
        for pair in query.unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "_HLS_msn" => {
                    directives.msn = Some(
                        value
                            .parse()
                            .map_err(|_| DirectiveError::BadValue("_HLS_msn"))?,
                    )
                }
                "_HLS_part" => {
                    directives.part = Some(
                        value
                            .parse()
                            .map_err(|_| DirectiveError::BadValue("_HLS_part"))?,
                    )
                }
                "_HLS_skip" => {
                    directives.skip = Some(match value {
                        "YES" => Skip::Yes,
                        "v2" => Skip::V2,
                        _ => return Err(DirectiveError::BadValue("_HLS_skip")),
                    })
                }
                _ => {}
            }
        }
        if directives.part.is_some() && directives.msn.is_none() {
            return Err(DirectiveError::PartWithoutMsn);
        }
        Ok(directives)
    }

    pub fn is_blocking(&self) -> bool {
        self.msn.is_some()
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The canonical query for these directives: the cache key suffix and what is forwarded upstream, so that every
    /// viewer waiting for the same version shares one fill however their query was ordered.
    pub fn query(&self) -> String {
        let mut query = String::new();
        let mut add = |name: &str, value: &str| {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(name);
            query.push('=');
            query.push_str(value);
        };
        if let Some(msn) = self.msn {
            add("_HLS_msn", &msn.to_string());
        }
        if let Some(part) = self.part {
            add("_HLS_part", &part.to_string());
        }
        if let Some(skip) = self.skip {
            add("_HLS_skip", skip.as_str());
        }
        query
    }
}

/// The media sequence number of the segment being produced: the one after the last complete segment.
fn next_msn(info: &PlaylistInfo) -> u64 {
    info.media_sequence
        .saturating_add(info.segment_count as u64)
}

/// Target durations are whatever upstream wrote; bounded here so that a hostile value cannot overflow a clock.
fn target(info: &PlaylistInfo) -> Duration {
    info.target_duration
        .unwrap_or(Duration::from_secs(2))
        .min(MAX_TARGET_DURATION)
}

/// No real stream has segments longer than this.
const MAX_TARGET_DURATION: Duration = Duration::from_secs(600);

/// Whether `info` answers a request blocked on `directives`: it holds segment `msn` (complete), or part `part` of
/// segment `msn` while that segment is still being produced. An ended playlist answers everything (§6.2.5.2).
pub fn satisfies(info: &PlaylistInfo, directives: &Directives) -> bool {
    let Some(msn) = directives.msn else {
        return true;
    };
    if info.ended || info.kind == PlaylistKind::Master {
        return true;
    }
    let next = next_msn(info);
    match directives.part {
        None => msn < next,
        // A part number past the segment's last part means part 0 of the next segment; the segment then being
        // complete (msn < next) answers it, as the spec says.
        Some(part) => msn < next || (msn == next && part < info.trailing_parts as u64),
    }
}

/// Refuses at once what the playlist can never reach soon: more than two segments past its last (§6.2.5.2).
pub fn check_reachable(info: &PlaylistInfo, directives: &Directives) -> Result<(), DirectiveError> {
    match directives.msn {
        Some(msn) if !info.ended && msn > next_msn(info).saturating_add(1) => {
            Err(DirectiveError::TooFarAhead)
        }
        _ => Ok(()),
    }
}

/// How long a blocking request may be held: about three target durations (§6.2.5.2).
pub fn hold_limit(info: &PlaylistInfo) -> Duration {
    target(info) * 3
}

/// Freshness of a blocking response: the URL names a version, so it may be cached for six target durations
/// (RFC 8216bis appendix B.1).
pub fn blocking_max_age(info: &PlaylistInfo) -> Duration {
    target(info) * 6
}

/// How often the relay re-reads a playlist whose upstream cannot block: about half a part (or segment) duration.
pub fn poll_interval(info: &PlaylistInfo) -> Duration {
    let step = info
        .part_target
        .or(info.target_duration)
        .unwrap_or(Duration::from_secs(1));
    (step / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(media_sequence: u64, segments: usize, parts: usize) -> PlaylistInfo {
        PlaylistInfo {
            kind: PlaylistKind::Media,
            target_duration: Some(Duration::from_secs(2)),
            media_sequence,
            segment_count: segments,
            ended: false,
            part_target: Some(Duration::from_millis(500)),
            can_block_reload: true,
            can_skip_until: None,
            trailing_parts: parts,
        }
    }

    fn blocked(msn: u64, part: Option<u64>) -> Directives {
        Directives {
            msn: Some(msn),
            part,
            skip: None,
        }
    }

    #[test]
    fn parses_directives_and_refuses_a_part_without_msn() {
        let d = Directives::parse(Some("token=x&_HLS_part=2&_HLS_msn=41&_HLS_skip=YES")).unwrap();
        assert_eq!(d.msn, Some(41));
        assert_eq!(d.part, Some(2));
        assert_eq!(d.skip, Some(Skip::Yes));
        assert_eq!(d.query(), "_HLS_msn=41&_HLS_part=2&_HLS_skip=YES");
        assert_eq!(
            Directives::parse(Some("_HLS_part=1")),
            Err(DirectiveError::PartWithoutMsn)
        );
        assert!(Directives::parse(Some("_HLS_msn=-1")).is_err());
        assert!(Directives::parse(Some("_HLS_skip=maybe")).is_err());
        assert!(Directives::parse(None).unwrap().is_empty());
    }

    #[test]
    fn a_playlist_answers_when_it_holds_the_segment_or_part() {
        // Segments 10..=15 complete, segment 16 has 2 parts so far.
        let info = live(10, 6, 2);
        assert!(satisfies(&info, &blocked(15, None)));
        assert!(!satisfies(&info, &blocked(16, None)));
        assert!(satisfies(&info, &blocked(16, Some(1))));
        assert!(!satisfies(&info, &blocked(16, Some(2))));
        assert!(!satisfies(&info, &blocked(17, Some(0))));
        assert!(satisfies(&info, &Directives::default()));
        let mut ended = info.clone();
        ended.ended = true;
        assert!(satisfies(&ended, &blocked(99, None)));
    }

    #[test]
    fn more_than_two_segments_ahead_is_refused_at_once() {
        let info = live(10, 6, 0);
        assert!(check_reachable(&info, &blocked(17, None)).is_ok());
        assert_eq!(
            check_reachable(&info, &blocked(18, None)),
            Err(DirectiveError::TooFarAhead)
        );
    }

    #[test]
    fn bounds_follow_the_target_duration() {
        let info = live(0, 1, 0);
        assert_eq!(hold_limit(&info), Duration::from_secs(6));
        assert_eq!(blocking_max_age(&info), Duration::from_secs(12));
        assert_eq!(poll_interval(&info), Duration::from_millis(250));
    }
}
