#!/usr/bin/env python3
"""A live media playlist for the `churn` test of run.sh (benches/load): rewrites DIR/index.m3u8 every INTERVAL
seconds, one segment more and EXT-X-MEDIA-SEQUENCE one higher each time, the last WINDOW segments listed.

  churn.py --dir ORIGIN_DIR/live --segments ORIGIN_DIR/ts --log RUN_DIR/churn.log [--interval 2] [--window 6]

* Segment N is DIR/seg_N.ts, a symlink to the existing segment SEGMENTS/seg_{N mod count}.ts (the origin nginx
  follows symlinks), made before the playlist that names it. Links more than 3 windows old are removed.
* Where the source wraps around to seg_000 the playlist has EXT-X-DISCONTINUITY (and EXT-X-DISCONTINUITY-SEQUENCE
  counts the ones that slid out), so a real player could follow it too.
* TARGETDURATION is the interval and there is no EXT-X-ENDLIST: a live playlist, which the relay keeps fresh for
  half a target duration.
* Each version is written to a temporary file and renamed over index.m3u8: the origin never serves half a file.
* DIR/master.m3u8 (one variant, index.m3u8) is the entry playlist of the relay's `livestream:churn` call.
* Starts at media sequence 0 (old links in DIR are removed first) and writes the first version at once; run.sh
  removes index.m3u8 before it starts this and waits for it to appear. Each version is logged to --log as
  "unix_time media_sequence". SIGTERM / SIGINT end it.
"""
import argparse, glob, os, re, signal, sys, time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--segments", required=True, help="directory with seg_NNN.ts to reuse")
    ap.add_argument("--log", required=True)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--window", type=int, default=6)
    a = ap.parse_args()

    sources = sorted(f for f in os.listdir(a.segments) if re.fullmatch(r"seg_\d+\.ts", f))
    if not sources:
        sys.exit(f"churn.py: no seg_NNN.ts in {a.segments}")
    rel = os.path.relpath(os.path.abspath(a.segments), os.path.abspath(a.dir))
    os.makedirs(a.dir, exist_ok=True)
    os.chmod(a.dir, 0o755)   # the origin's workers run as nobody
    for f in glob.glob(os.path.join(a.dir, "seg_*.ts")) + glob.glob(os.path.join(a.dir, "*.tmp")):
        os.unlink(f)
    target = max(1, round(a.interval))
    n = len(sources)

    def link(msn):
        p = os.path.join(a.dir, f"seg_{msn}.ts")
        if not os.path.lexists(p):
            os.symlink(os.path.join(rel, sources[msn % n]), p)

    def write(path, text):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    write(os.path.join(a.dir, "master.m3u8"),
          "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-STREAM-INF:BANDWIDTH=3428000,RESOLUTION=1280x720,"
          "CODECS=\"avc1.640028,mp4a.40.2\"\nindex.m3u8\n")

    log = open(a.log, "a", buffering=1)

    def publish(first):
        last = first + a.window - 1
        for msn in range(first, last + 1):
            link(msn)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}", f"#EXT-X-DISCONTINUITY-SEQUENCE:{first // n}"]
        for msn in range(first, last + 1):
            if msn > first and msn % n == 0:
                lines.append("#EXT-X-DISCONTINUITY")
            lines += [f"#EXTINF:{a.interval:.3f},", f"seg_{msn}.ts"]
        write(os.path.join(a.dir, "index.m3u8"), "\n".join(lines) + "\n")
        old = first - 3 * a.window
        if old >= 0:
            p = os.path.join(a.dir, f"seg_{old}.ts")
            if os.path.lexists(p):
                os.unlink(p)
        log.write(f"{time.time():.3f} {first}\n")

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    first = 0
    publish(first)
    start = time.monotonic()
    while not stop:
        due = start + (first + 1) * a.interval
        while not stop and time.monotonic() < due:
            time.sleep(min(0.2, max(0.0, due - time.monotonic())))
        if stop:
            break
        first += 1
        publish(first)


if __name__ == "__main__":
    main()
