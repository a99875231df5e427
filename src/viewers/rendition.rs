//! What a rendition is called in viewer counts (pure): a short label from its upstream media playlist URL.
//!
//! Packagers name renditions either by directory (`…/v720/index.m3u8`, Stream's and most origins') or by file
//! (`…/720p.m3u8`). So the label is the file stem, unless that stem is one of the names packagers give every
//! rendition alike (`index`, `playlist`, `prog_index`, `chunklist`, …), in which case it is the directory's name.
//! Labels are at most [`MAX_LABEL_LEN`] characters of `[A-Za-z0-9_.-]` (anything else becomes `_`): they end up in
//! JSON, Redis keys and Prometheus labels.

use url::Url;

pub const MAX_LABEL_LEN: usize = 32;

/// File stems that say nothing about the rendition.
const GENERIC_STEMS: &[&str] = &[
    "index",
    "playlist",
    "prog_index",
    "chunklist",
    "media",
    "manifest",
    "stream",
    "mono",
    "live",
];

/// The label of the rendition whose media playlist is at `url`.
pub fn label(url: &Url) -> String {
    let mut segments = url
        .path_segments()
        .map(|segments| segments.rev().filter(|s| !s.is_empty()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter();
    let file = segments.next().unwrap_or_default();
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    let generic = GENERIC_STEMS.iter().any(|g| stem.eq_ignore_ascii_case(g));
    let name = match (generic, segments.next()) {
        (true, Some(directory)) => directory,
        _ => stem,
    };
    let label: String = name
        .chars()
        .take(MAX_LABEL_LEN)
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '.' | '-' => c,
            _ => '_',
        })
        .collect();
    if label.is_empty() {
        "main".into()
    } else {
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(url: &str) -> String {
        label(&Url::parse(url).unwrap())
    }

    #[test]
    fn directories_name_generic_files_and_files_name_themselves() {
        assert_eq!(
            of("https://cdn.example/s/abc/v720/index.m3u8?sig=1"),
            "v720"
        );
        assert_eq!(of("https://cdn.example/s/abc/audio/playlist.m3u8"), "audio");
        assert_eq!(
            of("https://cdn.example/s/abc/1080p/prog_index.m3u8"),
            "1080p"
        );
        assert_eq!(of("https://cdn.example/s/abc/720p.m3u8"), "720p");
        assert_eq!(
            of("https://cdn.example/s/chunklist_b800000.m3u8"),
            "chunklist_b800000"
        );
        assert_eq!(of("https://cdn.example/index.m3u8"), "index");
        assert_eq!(of("https://cdn.example/"), "main");
        assert_eq!(
            of("https://cdn.example/a/%E2%9C%93%20x.m3u8"),
            "_E2_9C_93_20x"
        );
        assert_eq!(
            of(&format!("https://cdn.example/{}.m3u8", "x".repeat(80))).len(),
            MAX_LABEL_LEN
        );
    }
}
