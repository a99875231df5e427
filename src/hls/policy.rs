//! Cache policy and content types (pure): how long each kind of object stays fresh here and downstream.
//!
//! The rules follow RFC 8216bis appendix B.1 and AWS MediaPackage's CDN guidance (see `hls-notes.md`):
//! media bytes at a URL never change, live media playlists change every target duration, so they are fresh for
//! half of it, and failures are remembered only briefly.

use std::time::Duration;

use crate::config::CacheConfig;
use crate::hls::playlist::{PlaylistInfo, PlaylistKind};

pub const PLAYLIST_CONTENT_TYPE: &str = "application/vnd.apple.mpegurl";

/// Freshness of one cached response, here and in the `Cache-Control` sent downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// How long the relay serves it without asking upstream again.
    pub fresh_for: Duration,
    /// `max-age` sent downstream, in seconds.
    pub max_age: u64,
    /// Whether the bytes can never change (lets browsers skip revalidation).
    pub immutable: bool,
}

impl Freshness {
    pub fn cache_control(&self) -> String {
        if self.immutable {
            format!("public, max-age={}, immutable", self.max_age)
        } else {
            format!("public, max-age={}", self.max_age)
        }
    }
}

/// Live playlists are never considered fresh for less than this, so a misbehaving upstream with a zero target
/// duration cannot turn every viewer request into an upstream request.
const MIN_LIVE_PLAYLIST_FRESHNESS: Duration = Duration::from_millis(500);

pub fn playlist_freshness(info: &PlaylistInfo, config: &CacheConfig) -> Freshness {
    if info.kind == PlaylistKind::Master {
        return seconds(config.master_ttl, false);
    }
    if info.ended {
        return ended_playlist_freshness(config);
    }
    // LL-HLS playlists change with every part: a part target (≤ 1 s typically) bounds staleness instead.
    let change_interval = match (info.part_target, info.target_duration) {
        (Some(part), _) => part,
        (None, Some(target)) => target / 2,
        (None, None) => MIN_LIVE_PLAYLIST_FRESHNESS,
    };
    seconds(change_interval.max(MIN_LIVE_PLAYLIST_FRESHNESS), false)
}

pub fn ended_playlist_freshness(config: &CacheConfig) -> Freshness {
    seconds(config.ended_playlist_ttl, false)
}

pub fn media_freshness(config: &CacheConfig) -> Freshness {
    seconds(config.media_ttl, true)
}

pub fn not_found_freshness(config: &CacheConfig) -> Freshness {
    seconds(config.not_found_ttl, false)
}

const MAX_FRESHNESS: Duration = Duration::from_secs(365 * 24 * 3600);

/// `max-age` is whole seconds; a sub-second freshness rounds down to 0 ("revalidate"), never up.
fn seconds(fresh_for: Duration, immutable: bool) -> Freshness {
    // Upstream's target durations and part targets are untrusted: a year bounds any clock arithmetic on them.
    let fresh_for = fresh_for.min(MAX_FRESHNESS);
    Freshness {
        fresh_for,
        max_age: fresh_for.as_secs(),
        immutable,
    }
}

/// The Content-Type for a media object: by file extension when it is a known HLS media type, else what upstream
/// said, else bytes. fMP4 audio keeps upstream's `audio/mp4`.
pub fn media_content_type<'a>(file: &str, upstream: Option<&'a str>) -> &'a str {
    let extension = file.rsplit_once('.').map(|(_, ext)| ext).unwrap_or("");
    let upstream_is_audio = upstream.is_some_and(|ct| ct.starts_with("audio/"));
    match extension.to_ascii_lowercase().as_str() {
        "ts" | "m2ts" => "video/mp2t",
        "mp4" | "m4s" | "m4v" | "cmfv" if upstream_is_audio => "audio/mp4",
        "mp4" | "m4s" | "m4v" | "cmfv" => "video/mp4",
        "m4a" | "cmfa" => "audio/mp4",
        "aac" => "audio/aac",
        "mp3" => "audio/mpeg",
        "ac3" => "audio/ac3",
        "ec3" => "audio/eac3",
        "vtt" | "webvtt" => "text/vtt",
        "key" => "application/octet-stream",
        "m3u8" | "m3u" => PLAYLIST_CONTENT_TYPE,
        "json" => "application/json",
        _ => upstream.unwrap_or("application/octet-stream"),
    }
}

/// Whether upstream labels a response as a playlist (recognised by content type, not by file name).
pub fn is_playlist_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/vnd.apple.mpegurl")
        || essence.eq_ignore_ascii_case("application/x-mpegurl")
        || essence.eq_ignore_ascii_case("audio/mpegurl")
        || essence.eq_ignore_ascii_case("audio/x-mpegurl")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media_playlist(target: u64, ended: bool, part: Option<Duration>) -> PlaylistInfo {
        PlaylistInfo {
            kind: PlaylistKind::Media,
            target_duration: Some(Duration::from_secs(target)),
            media_sequence: 0,
            segment_count: 6,
            ended,
            part_target: part,
            can_block_reload: false,
            can_skip_until: None,
            trailing_parts: 0,
        }
    }

    #[test]
    fn live_playlists_are_fresh_for_half_a_target_duration() {
        let config = CacheConfig::default();
        let fresh = playlist_freshness(&media_playlist(6, false, None), &config);
        assert_eq!(fresh.fresh_for, Duration::from_secs(3));
        assert_eq!(fresh.cache_control(), "public, max-age=3");
        let fresh = playlist_freshness(&media_playlist(0, false, None), &config);
        assert_eq!(fresh.fresh_for, MIN_LIVE_PLAYLIST_FRESHNESS);
    }

    #[test]
    fn low_latency_playlists_follow_the_part_target() {
        let config = CacheConfig::default();
        let info = media_playlist(4, false, Some(Duration::from_millis(1000)));
        assert_eq!(
            playlist_freshness(&info, &config).fresh_for,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn ended_and_master_playlists_use_their_own_ttls() {
        let config = CacheConfig::default();
        let ended = playlist_freshness(&media_playlist(2, true, None), &config);
        assert_eq!(ended.fresh_for, config.ended_playlist_ttl);
        let mut master = media_playlist(2, false, None);
        master.kind = PlaylistKind::Master;
        assert_eq!(
            playlist_freshness(&master, &config).fresh_for,
            config.master_ttl
        );
    }

    #[test]
    fn media_is_immutable() {
        let fresh = media_freshness(&CacheConfig::default());
        assert!(fresh.cache_control().ends_with("immutable"));
        assert_eq!(fresh.max_age, 14 * 24 * 3600);
    }

    #[test]
    fn content_types_by_extension_then_upstream() {
        assert_eq!(
            media_content_type("seg_1.ts", Some("text/plain")),
            "video/mp2t"
        );
        assert_eq!(media_content_type("init.mp4", None), "video/mp4");
        assert_eq!(media_content_type("a.m4s", Some("audio/mp4")), "audio/mp4");
        assert_eq!(media_content_type("a.AAC", None), "audio/aac");
        assert_eq!(media_content_type("sub.vtt", None), "text/vtt");
        assert_eq!(
            media_content_type("key", Some("application/x-key")),
            "application/x-key"
        );
        assert_eq!(media_content_type("blob", None), "application/octet-stream");
        assert!(is_playlist_content_type(
            "application/vnd.apple.mpegurl; charset=utf-8"
        ));
        assert!(is_playlist_content_type("audio/x-mpegURL"));
        assert!(!is_playlist_content_type("text/html"));
    }
}
