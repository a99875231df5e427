//! Playlist rewriting and inspection on the shapes the relay serves: a 1,000-line live media playlist (fetched every
//! few seconds per rendition) and a master playlist with every URI-bearing tag. The relay's own mapping is measured
//! cold (a playlist's first version) and in the steady state of a live playlist: the next version, one segment
//! dropped and one added, rewritten with the references of the version before.

use std::fmt::Write;
use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hls_relay::hls::playlist::{UriSite, inspect, rewrite, rewrite_marked_with};
use hls_relay::hls::urlmap::{ObjectKind, PlaylistLocation, PlaylistMapper, UrlCodec};
use hls_relay::stream::call::CallId;
use url::Url;

const MEDIA_LINES: usize = 1_000;

/// The version of the live playlist whose first segment is `first_sequence`.
fn live_media_playlist(first_sequence: u64) -> String {
    let mut playlist = format!(
        "#EXTM3U\n\
         #EXT-X-VERSION:7\n\
         #EXT-X-TARGETDURATION:4\n\
         #EXT-X-MEDIA-SEQUENCE:{first_sequence}\n\
         #EXT-X-DISCONTINUITY-SEQUENCE:3\n\
         #EXT-X-MAP:URI=\"init_1080p.mp4?token=eyJhbGciOiJIUzI1NiJ9.e30&exp=1714567890\"\n\
         #EXT-X-KEY:METHOD=AES-128,URI=\"https://keys.example.com/v1/keys/5f3a?exp=1714567890\",\
         IV=0x00000000000000000000000000002d0b\n",
    );
    let mut line_count = playlist.lines().count();
    let mut sequence = first_sequence;
    while line_count + 3 <= MEDIA_LINES {
        let seconds = (sequence % 15) * 4;
        writeln!(playlist, "#EXTINF:4.000,").unwrap();
        writeln!(
            playlist,
            "#EXT-X-PROGRAM-DATE-TIME:2024-05-01T12:{:02}:{seconds:02}.000Z",
            sequence % 60
        )
        .unwrap();
        writeln!(
            playlist,
            "seg_1080p_{sequence:08}.m4s?token=eyJhbGciOiJIUzI1NiJ9.e30&exp=1714567890"
        )
        .unwrap();
        line_count += 3;
        sequence += 1;
    }
    playlist
}

fn master_playlist() -> String {
    let mut playlist = String::from(
        "#EXTM3U\n\
         #EXT-X-VERSION:9\n\
         #EXT-X-INDEPENDENT-SEGMENTS\n\
         #EXT-X-CONTENT-STEERING:SERVER-URI=\"https://steer.example.com/v1?session=abc\",PATHWAY-ID=\"cdn-a\"\n\
         #EXT-X-SESSION-DATA:DATA-ID=\"com.example.title\",VALUE=\"Keynote, live\"\n\
         #EXT-X-SESSION-DATA:DATA-ID=\"com.example.chapters\",URI=\"chapters.json\"\n\
         #EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"https://keys.example.com/v1/keys/5f3a?exp=1714567890\"\n\
         #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"English\",LANGUAGE=\"en\",DEFAULT=YES,URI=\"audio/en/index.m3u8\"\n\
         #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"Deutsch\",LANGUAGE=\"de\",URI=\"audio/de/index.m3u8\"\n\
         #EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"English\",LANGUAGE=\"en\",URI=\"subs/en/index.m3u8\"\n\
         #EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID=\"cc\",NAME=\"English\",INSTREAM-ID=\"CC1\"\n",
    );
    for (height, bandwidth) in [
        (360, 800_000),
        (540, 1_600_000),
        (720, 3_000_000),
        (1080, 6_000_000),
    ] {
        writeln!(
            playlist,
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION={}x{height},\
             AUDIO=\"aac\",SUBTITLES=\"subs\",CLOSED-CAPTIONS=\"cc\"\nvideo/{height}p/index.m3u8?token=abc",
            height * 16 / 9
        )
        .unwrap();
        writeln!(
            playlist,
            "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={},CODECS=\"avc1.64001f\",URI=\"video/{height}p/iframes.m3u8\"",
            bandwidth / 10
        )
        .unwrap();
    }
    playlist
}

/// Shaped like the relay's mapping: a token (signature, then the upstream location in base64) and the upstream
/// file name, so that players and CDNs still see the extension.
fn relay_uri(_site: UriSite, uri: &str) -> Option<String> {
    let path_end = uri.find('?').unwrap_or(uri.len());
    let file_start = uri[..path_end].rfind('/').map_or(0, |slash| slash + 1);
    let file = &uri[file_start..path_end];
    let location_len = uri.len() - file.len();
    let signature = xxhash_rust::xxh3::xxh3_64(uri.as_bytes()).to_le_bytes();
    let mut out = String::with_capacity(3 + 12 + 1 + location_len * 4 / 3 + 4 + file.len());
    out.push_str("../");
    URL_SAFE_NO_PAD.encode_string(signature, &mut out);
    out.push('m');
    URL_SAFE_NO_PAD.encode_string(&uri[..file_start], &mut out);
    URL_SAFE_NO_PAD.encode_string(&uri[path_end..], &mut out);
    out.push('/');
    out.push_str(file);
    Some(out)
}

fn benches(c: &mut Criterion) {
    let media = live_media_playlist(184_467);
    let next_media = live_media_playlist(184_468);
    let master = master_playlist();
    assert_eq!(media.lines().count(), MEDIA_LINES);
    assert_eq!(next_media.lines().count(), MEDIA_LINES);

    // The relay's own mapping, as it runs on each new upstream version of a rendition's playlist: resolve against
    // the playlist's URL, sign, encode, write relative to where the relay serves the playlist.
    let signer = UrlCodec::new(b"bench-url-key-0123456789");
    let call = CallId::new("livestream", "bench").unwrap();
    let base = Url::parse(
        "https://hls.stream-io-cdn.com/livestream/bench/1080p/index.m3u8?token=eyJhbGciOiJIUzI1NiJ9.e30&exp=1714567890",
    )
    .unwrap();
    // Where the relay serves this playlist: its own relay URL's location, shared by the segments beside it.
    let own_reference = signer
        .relay_ref(&call, &base, ObjectKind::Playlist, PlaylistLocation::Entry)
        .unwrap();
    let served_at = own_reference.split('/').next().unwrap();
    let from = PlaylistLocation::Object {
        location: served_at,
    };
    let relayed = rewrite_marked_with(
        media.as_bytes(),
        &mut PlaylistMapper::new(&signer, &call, &base, from),
    )
    .unwrap();
    eprintln!(
        "1,000-line media playlist: upstream {} bytes, relayed {} bytes ({:+.1} %)",
        media.len(),
        relayed.body.len(),
        (relayed.body.len() as f64 / media.len() as f64 - 1.0) * 100.0
    );

    let mut group = c.benchmark_group("media_1000_lines");
    group.throughput(Throughput::Bytes(media.len() as u64));
    // As `Relay::rewritten_playlist` does it, keeping the references for the next version.
    group.bench_function("rewrite_real_mapping", |b| {
        b.iter(|| {
            let mut mapper = PlaylistMapper::new(&signer, &call, &base, from);
            let rewritten = rewrite_marked_with(black_box(media.as_bytes()), &mut mapper).unwrap();
            (rewritten, mapper.into_mapped())
        })
    });
    let mut mapper = PlaylistMapper::new(&signer, &call, &base, from);
    let cold_next = rewrite_marked_with(next_media.as_bytes(), &mut mapper).unwrap();
    let mut mapper = PlaylistMapper::new(&signer, &call, &base, from);
    rewrite_marked_with(media.as_bytes(), &mut mapper).unwrap();
    let previous = mapper.into_mapped();
    let reusing = || PlaylistMapper::new(&signer, &call, &base, from).reusing(Some(&previous));
    assert!(reusing().reuses_previous());
    assert_eq!(
        rewrite_marked_with(next_media.as_bytes(), &mut reusing()).unwrap(),
        cold_next
    );
    group.bench_function("rewrite_real_mapping_next_version", |b| {
        b.iter(|| {
            let mut mapper = reusing();
            let rewritten =
                rewrite_marked_with(black_box(next_media.as_bytes()), &mut mapper).unwrap();
            (rewritten, mapper.into_mapped())
        })
    });
    group.bench_function("rewrite_relay_uri", |b| {
        b.iter(|| rewrite(black_box(media.as_bytes()), relay_uri).unwrap())
    });
    group.bench_function("rewrite_unchanged", |b| {
        b.iter(|| rewrite(black_box(media.as_bytes()), |_, _| None).unwrap())
    });
    group.bench_function("inspect", |b| {
        b.iter(|| inspect(black_box(media.as_bytes())).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("master_all_uri_tags");
    group.throughput(Throughput::Bytes(master.len() as u64));
    group.bench_function("rewrite_relay_uri", |b| {
        b.iter(|| rewrite(black_box(master.as_bytes()), relay_uri).unwrap())
    });
    group.bench_function("inspect", |b| {
        b.iter(|| inspect(black_box(master.as_bytes())).unwrap())
    });
    group.finish();
}

criterion_group!(rewrite_benches, benches);
criterion_main!(rewrite_benches);
