//! The playlist rewriter: `rewrite_marked` over arbitrary bytes, with three mappings.
//!
//! - A plain mapping (`x/{uri}`, made URI-safe as the rewriter's contract asks): the result marks every
//!   replacement, `uri_ends` are strictly increasing, inside the body and each ends a replacement, and
//!   `with_query` adds exactly one `?`/`&` + query per mark.
//! - The identity (`None` for every URI): the body comes back byte for byte, with no marks, and the playlist is
//!   accepted or refused exactly as with the plain mapping.
//! - The relay's own mapping (`PlaylistMapper`: resolve against the upstream URL and sign, from the entry playlist
//!   and from an object playlist), which must always give URI-safe replacements (debug builds assert it), and must
//!   write the same playlist when it reuses the references of a previous version (the playlist itself, and the
//!   playlist with its first half dropped, as a live playlist drops old segments).
#![no_main]

use hls_relay::stream::call::CallId;
use hls_relay::hls::playlist::{Rewritten, rewrite_marked, rewrite_marked_with, with_query};
use hls_relay::hls::urlmap::{PlaylistLocation, PlaylistMapper, UrlCodec};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use url::Url;

static CODEC: LazyLock<UrlCodec> = LazyLock::new(|| UrlCodec::new(b"fuzz-key-0123456789"));
static CALL: LazyLock<CallId> = LazyLock::new(|| CallId::new("livestream", "fuzz").unwrap());
static BASE: LazyLock<Url> =
    LazyLock::new(|| Url::parse("https://cdn.example.com/live/v1/index.m3u8?sig=abc").unwrap());

const QUERY: &str = "token=t";

fuzz_target!(|data: &[u8]| {
    let mut replacements = Vec::new();
    let plain = rewrite_marked(data, |_site, uri| {
        let replacement = format!("x/{}", uri.replace(['"', '\r', '\n'], ""));
        replacements.push(replacement.clone());
        Some(replacement)
    });

    let identity = rewrite_marked(data, |_, _| None);
    assert_eq!(
        plain.is_ok(),
        identity.is_ok(),
        "accepted with one mapping and refused with the other: {plain:?} / {identity:?}"
    );
    if let Ok(Rewritten { body, uri_ends }) = &identity {
        assert_eq!(
            body.as_slice(),
            data,
            "the identity mapping changed the playlist"
        );
        assert!(
            uri_ends.is_empty(),
            "marks without replacements: {uri_ends:?}"
        );
    }

    if let Ok(out) = &plain {
        check_marks(out, &replacements);
    }

    // The relay's mapping, as `Relay::rewritten_playlist` does it.
    for from in [
        PlaylistLocation::Entry,
        PlaylistLocation::Object {
            location: "aHR0cHM6Ly9jZG4uZXhhbXBsZS5jb20vbGl2ZS92MS8_c2lnPWFiYw",
        },
    ] {
        let mut mapper = PlaylistMapper::new(&CODEC, &CALL, &BASE, from);
        let relayed = rewrite_marked_with(data, &mut mapper);
        assert_eq!(relayed.is_ok(), identity.is_ok());
        let Ok(out) = relayed else { continue };
        let _ = with_query(&out.body, &out.uri_ends, QUERY);

        let this_version = mapper.into_mapped();
        let mut mapper = PlaylistMapper::new(&CODEC, &CALL, &BASE, from);
        let tail = data.get(data.len() / 2..).unwrap_or_default();
        let mut older = b"#EXTM3U\n".to_vec();
        older.extend_from_slice(tail);
        let older_version = rewrite_marked_with(&older, &mut mapper)
            .is_ok()
            .then(|| mapper.into_mapped());
        for previous in [Some(&this_version), older_version.as_ref()] {
            let mut mapper = PlaylistMapper::new(&CODEC, &CALL, &BASE, from).reusing(previous);
            let again = rewrite_marked_with(data, &mut mapper);
            assert_eq!(
                again.as_ref().ok(),
                Some(&out),
                "reusing a previous version's references changed the playlist"
            );
        }
    }
});

fn check_marks(out: &Rewritten, replacements: &[String]) {
    let Rewritten { body, uri_ends } = out;
    assert_eq!(
        uri_ends.len(),
        replacements.len(),
        "one mark per replacement"
    );
    let mut previous = 0;
    for (&end, replacement) in uri_ends.iter().zip(replacements) {
        assert!(
            end <= body.len(),
            "mark {end} past the body ({})",
            body.len()
        );
        // Every replacement is at least "x/": marks strictly increase from 2 on.
        assert!(end > previous, "marks not increasing: {uri_ends:?}");
        assert!(
            body[..end].ends_with(replacement.as_bytes()),
            "mark {end} does not end the replacement {replacement:?}"
        );
        previous = end;
    }
    let viewer = with_query(body, uri_ends, QUERY);
    assert_eq!(
        viewer.len(),
        body.len() + uri_ends.len() * (QUERY.len() + 1)
    );
}
