#!/usr/bin/env bash
# Generates the small, real media the simulator (src/sim) serves as a live HLS origin.
#
# Output (committed, so building and testing never need ffmpeg):
#   fixtures/{ts,fmp4}/{v360,v180,audio}/index.m3u8   VOD playlists written by ffmpeg's hls muxer;
#                                                     the simulator reads segment durations from them
#   fixtures/ts/<rendition>/seg_000.ts … seg_014.ts   MPEG-TS segments
#   fixtures/fmp4/<rendition>/init.mp4 + seg_000.m4s … fMP4 segments
#
# 30 s of testsrc2 + a sine tone, cut in 2 s segments. Every rendition is encoded once with a fixed GOP of exactly
# 2 s (no scene-cut keyframes), then remuxed without re-encoding into both flavours, so segment N of every
# rendition and flavour covers the same 2 s: the simulator can loop them and switch renditions at any boundary.
# src/sim/fixtures.rs lists the files by name: if you change SEGMENTS here, change SEGMENT_COUNT there.
set -euo pipefail

FFMPEG=${FFMPEG:-ffmpeg}
DURATION=30
SEGMENT=2
FPS=30
GOP=$((FPS * SEGMENT))
SEGMENTS=$((DURATION / SEGMENT))

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/fixtures"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ff() { "$FFMPEG" -hide_banner -loglevel error -nostdin -y "$@"; }

# Mezzanine encodes (kept in $work only).
# The level and profile fix the CODECS strings the simulator advertises: avc1.42c015 and avc1.4d401e.
video() { # name size kbps profile level
    ff -f lavfi -i "testsrc2=size=$2:rate=$FPS:duration=$DURATION" \
        -c:v libx264 -preset veryfast -profile:v "$4" -level "$5" -pix_fmt yuv420p \
        -b:v "${3}k" -maxrate "${3}k" -bufsize "$(($3 * 2))k" \
        -g "$GOP" -keyint_min "$GOP" -sc_threshold 0 -bf 0 \
        -x264-params "nal-hrd=none" -an "$work/$1.mp4"
}
video v180 320x180 140 baseline 2.1
video v360 640x360 360 main 3.0
# AAC frames are 1024 samples, and 30 s at 48 kHz is 1406.25 of them: the encoder would pad a 16th, 21 ms segment.
# Trimming to 1406 whole frames keeps 15 segments, the last 5 ms short of 2 s.
ff -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=$DURATION" \
    -af "atrim=end_sample=$((48000 * DURATION / 1024 * 1024))" -c:a aac -profile:a aac_low -b:a 64k -ac 2 -vn "$work/audio.mp4"

# `make-fixtures.sh ll` makes only the low-latency set (last section) and leaves ts/ and fmp4/ as they are.
if [ "${1:-}" != ll ]; then
rm -rf "$out/ts" "$out/fmp4"
for rendition in v180 v360 audio; do
    mkdir -p "$out/ts/$rendition" "$out/fmp4/$rendition"
    ff -i "$work/$rendition.mp4" -c copy -f hls -hls_time "$SEGMENT" -hls_playlist_type vod \
        -hls_segment_type mpegts -hls_segment_filename "$out/ts/$rendition/seg_%03d.ts" \
        "$out/ts/$rendition/index.m3u8"
    ff -i "$work/$rendition.mp4" -c copy -f hls -hls_time "$SEGMENT" -hls_playlist_type vod \
        -hls_segment_type fmp4 -hls_fmp4_init_filename init.mp4 \
        -hls_segment_filename "$out/fmp4/$rendition/seg_%03d.m4s" \
        "$out/fmp4/$rendition/index.m3u8"
done

# The simulator expects exactly $SEGMENTS segments per rendition and flavour; fail here rather than at build time.
for dir in "$out"/ts/* "$out"/fmp4/*; do
    count=$(grep -c '^seg_' "$dir/index.m3u8")
    if [ "$count" -ne "$SEGMENTS" ]; then
        echo "$dir: $count segments, expected $SEGMENTS" >&2
        exit 1
    fi
done
du -sh "$out"
fi

# Low-latency HLS: fixtures/ll/<rendition>/init.mp4 + seg_000.m4s … seg_014.m4s
#
# The same mezzanines cut into the same 2 s segments, each made of four movie fragments (moof+mdat) of about 0.5 s,
# which the simulator's LL-HLS mode serves one by one as partial segments (src/sim/mp4.rs splits the segments at
# their top-level boxes, and reads part durations and keyframes from the boxes). ffmpeg's dash muxer does the
# cutting: `-frag_type duration` closes a fragment once it holds 0.5 s (15 video frames; 24 AAC frames, so 0.512 s,
# with a shorter last fragment per segment) and `-streaming 1` leaves out the per-fragment sidx boxes. Each video
# segment starts on its keyframe; its later fragments start on P-frames. fMP4 only: there are no TS parts.
ll="$out/ll"
rm -rf "$ll"
for rendition in v180 v360 audio; do
    dash="$work/dash-$rendition"
    mkdir -p "$dash" "$ll/$rendition"
    ff -i "$work/$rendition.mp4" -c copy -f dash -streaming 1 -seg_duration "$SEGMENT" \
        -frag_type duration -frag_duration 0.5 -init_seg_name init.mp4 -media_seg_name 'seg_$Number%03d$.m4s' \
        "$dash/manifest.mpd"
    mv "$dash/init.mp4" "$ll/$rendition/init.mp4"
    # The dash muxer numbers segments from 1; the fixtures count from 0. Exactly $SEGMENTS, as for the other sets.
    for ((i = 0; i < SEGMENTS; i++)); do
        mv "$dash/$(printf 'seg_%03d.m4s' $((i + 1)))" "$ll/$rendition/$(printf 'seg_%03d.m4s' "$i")"
    done
    if [ -n "$(find "$dash" -name 'seg_*.m4s')" ]; then
        echo "$rendition: more than $SEGMENTS low-latency segments" >&2
        exit 1
    fi
done
du -sh "$ll"
