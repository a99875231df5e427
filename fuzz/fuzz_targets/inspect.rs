//! Playlist reading: `inspect` and `with_endlist` over arbitrary bytes.
//!
//! Neither may panic. When the relay takes a media playlist (`inspect` reads it and `rewrite` can rewrite it, as
//! `Relay::rewritten_playlist` requires), the same playlist with `with_endlist` (what the relay serves once a
//! broadcast has stopped) must read as the same playlist, now ended. `with_endlist` only appends, and only once.
//!
//! (`inspect` alone also reads playlists whose URI-bearing tags have unreadable attribute lists, e.g. an unclosed
//! quote in EXT-X-MAP; m3u8-rs then reads the quoted string on across lines, so an EXT-X-ENDLIST line inside it
//! is not seen. `rewrite` refuses such playlists, so the relay never serves them.)
#![no_main]

use hls_relay::hls::playlist::{PlaylistInfo, PlaylistKind, inspect, rewrite, with_endlist};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let before = inspect(data);
    let ended = with_endlist(data);
    assert!(
        ended.starts_with(data),
        "with_endlist changed what was there"
    );
    assert_eq!(
        with_endlist(&ended),
        ended,
        "with_endlist is not idempotent"
    );
    let after = inspect(&ended);
    if let Ok(info) = &before
        && info.kind == PlaylistKind::Media
        && rewrite(data, |_, _| None).is_ok()
    {
        let expected = PlaylistInfo {
            ended: true,
            ..info.clone()
        };
        assert_eq!(
            after.as_ref(),
            Ok(&expected),
            "with_endlist changed what inspect reads"
        );
    }
});
