#!/usr/bin/env python3
"""Memory benchmark driver (python3 stdlib only). Started by run.sh once origin, sim API and relay are up.

Phases, with the relay's /proc/PID/status sampled every --interval s throughout (samples.tsv):
  baseline  relay started, nothing asked yet
  stream    entry playlist, then every segment it lists through the relay with --clients keep-alive clients,
            sizes checked (contents too, every --verify-every-th segment)
  settle    --settle s idle after the stream; then "final" RSS and /metrics (hls_relay_cache_bytes, ...)
  idle-*    for each kind in --idle-kinds: --idle-conns TCP connections opened and held --hold s, then closed:
              keepalive  one request (GET /healthz), response read, then idle (an idle keep-alive viewer)
              silent     connect, send nothing
              partial    connect, send a partial request line and nothing more (slowloris-like)
Writes summary.json and summary.md into --out; exit status 0 (within bound), 1 (peak RSS over the bound),
2 (errors: failed or wrong segments).
"""
import argparse
import http.client
import json
import os
import queue
import random
import re
import select
import socket
import sys
import threading
import time
import urllib.parse

MiB = 1024 * 1024


def segment_bytes(index: int, size: int) -> bytes:  # same as origin.py
    head = b"\x47" + index.to_bytes(4, "big")
    return head + random.Random(index).randbytes(size - len(head))


# ------------------------------------------------------------------ sampling

def read_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                    out[key] = int(val.split()[0])  # kB, or a count
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return out


class Sampler(threading.Thread):
    def __init__(self, pid, interval, path):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.phase = "baseline"
        self.samples = []  # (t, phase, status)
        self.t0 = time.monotonic()
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.file = open(path, "w")
        self.file.write("t_s\tphase\tvmrss_kib\tvmhwm_kib\trss_anon_kib\trss_file_kib\tthreads\tfds\n")

    def sample(self):
        st = read_status(self.pid)
        if st is None:
            return None
        t = time.monotonic() - self.t0
        with self.lock:
            self.samples.append((t, self.phase, st))
            self.file.write(f"{t:.2f}\t{self.phase}\t{st['VmRSS']}\t{st['VmHWM']}\t{st.get('RssAnon', 0)}\t"
                            f"{st.get('RssFile', 0)}\t{st['Threads']}\t{st['fds']}\n")
            self.file.flush()
        return st

    def set_phase(self, phase):
        with self.lock:
            self.phase = phase
        return self.must_sample()

    def must_sample(self):
        st = self.sample()
        if st is None:
            raise SystemExit(f"relay process {self.pid} is gone")
        return st

    def run(self):
        while not self.stop_ev.wait(self.interval):
            if self.sample() is None:
                print("relay process is gone", file=sys.stderr)
                return

    def phase_stats(self, prefix):
        with self.lock:
            rows = [s for (_, p, s) in self.samples if p.startswith(prefix)]
        if not rows:
            return None
        return {"max_rss_kib": max(r["VmRSS"] for r in rows), "hwm_kib": max(r["VmHWM"] for r in rows),
                "max_fds": max(r["fds"] for r in rows), "max_threads": max(r["Threads"] for r in rows),
                "samples": len(rows)}


# ------------------------------------------------------------------ HTTP helpers

def get(host, port, path, timeout=30):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def metrics(host, port):
    _, _, body = get(host, port, "/metrics")
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        if base in ("hls_relay_cache_bytes", "hls_relay_cache_entries"):
            out[base] = float(value)
        elif base.startswith("hls_relay_upstream_requests_total") or base.startswith("hls_relay_cache_"):
            out[name] = float(value)
    return out


def entry_playlist(host, port, path, max_hops=5):
    """The rewritten entry playlist and the URL it was served at (following redirects)."""
    url = f"http://{host}:{port}{path}"
    for _ in range(max_hops):
        parts = urllib.parse.urlsplit(url)
        # The query matters: with viewer counting on, a media-playlist entry redirects to itself with `?vs=`.
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        status, headers, body = get(host, port, target)
        if status in (301, 302, 303, 307, 308):
            url = urllib.parse.urljoin(url, headers.get("Location") or headers.get("location"))
            continue
        if status != 200:
            raise RuntimeError(f"entry playlist: HTTP {status}: {body[:300]!r}")
        return url, body.decode()
    raise RuntimeError("entry playlist: too many redirects")


def segment_uris(base_url, text):
    uris = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [urllib.parse.urljoin(base_url, u) for u in uris]


# ------------------------------------------------------------------ phase: stream

def stream(host, port, urls, seg_bytes, clients, verify_every, deadline):
    work = queue.Queue()
    for i, u in enumerate(urls):
        work.put((i, u))
    lock = threading.Lock()
    res = {"ok": 0, "bad_status": 0, "bad_size": 0, "bad_body": 0, "errors": 0, "bytes": 0, "x_cache": {},
           "first_errors": []}

    def note(kind, msg):
        with lock:
            res[kind] += 1
            if len(res["first_errors"]) < 10:
                res["first_errors"].append(msg)

    def worker():
        conn = None
        while time.monotonic() < deadline:
            try:
                i, u = work.get_nowait()
            except queue.Empty:
                break
            path = urllib.parse.urlsplit(u).path
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                conn.request("GET", path)
                r = conn.getresponse()
                body = r.read()
                xc = r.getheader("X-Cache", "-")
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                note("errors", f"seg {i}: {type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if r.status != 200:
                note("bad_status", f"seg {i}: HTTP {r.status}: {body[:200]!r}")
            elif len(body) != seg_bytes:
                note("bad_size", f"seg {i}: {len(body)} bytes, expected {seg_bytes}")
            elif verify_every and i % verify_every == 0 and body != segment_bytes(i, seg_bytes):
                note("bad_body", f"seg {i}: body differs from the origin's")
            else:
                with lock:
                    res["ok"] += 1
                    res["bytes"] += len(body)
                    res["x_cache"][xc] = res["x_cache"].get(xc, 0) + 1
                    done = res["ok"]
                if done % 1000 == 0:
                    print(f"  {done} segments", flush=True)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["not_done"] = work.qsize()
    return res


# ------------------------------------------------------------------ phase: idle connections

def open_idle(host, port, n, kind):
    """Returns the open sockets, failures, 200s, and for each socket (by fd) when it went idle: connected
    (silent, partial) or its response read (keepalive)."""
    socks, failed = [], 0
    idle_from = {}
    for _ in range(n):
        s = None
        for attempt in range(3):
            try:
                s = socket.create_connection((host, port), timeout=10)
                break
            except OSError:
                s = None
                time.sleep(0.05 * (attempt + 1))
        if s is None:
            failed += 1
            continue
        # RST on close: no TIME_WAIT pile-up on a shared box (irrelevant to the relay's memory)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        try:
            if kind == "keepalive":
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: mem-bench\r\n\r\n")
            elif kind == "partial":
                s.sendall(b"GET /hls/livestream/mem/ind")
        except OSError:
            failed += 1
            s.close()
            continue
        socks.append(s)
        idle_from[s.fileno()] = time.monotonic()
    answered = 0
    if kind == "keepalive":  # read every response (after all were sent: the relay works on them meanwhile)
        for s in list(socks):
            try:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("closed")
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                need = int(m.group(1)) if m else 0
                while len(rest) < need:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("closed")
                    rest += chunk
                if head.startswith(b"HTTP/1.1 200"):
                    answered += 1
                idle_from[s.fileno()] = time.monotonic()
            except OSError:
                failed += 1
                socks.remove(s)
                s.close()
    return socks, failed, answered, idle_from


def still_open(socks):
    alive = closed = spoke = 0
    for s in socks:
        s.setblocking(False)  # with a timeout set, Python polls for readability before recv, flags or not
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                spoke += 1  # the relay wrote something (e.g. a 408) - counted apart
            else:
                closed += 1
        except BlockingIOError:
            alive += 1
        except OSError:
            closed += 1
    return {"alive": alive, "closed_by_relay": closed, "relay_wrote": spoke}


class CloseWatch:
    """Notes when the relay closes each idle socket (EOF), in seconds after the socket went idle."""

    def __init__(self, socks, idle_from):
        self.idle_from = idle_from
        self.by_fd = {s.fileno(): s for s in socks}
        self.poller = select.poll()
        for fd in self.by_fd:
            self.poller.register(fd, select.POLLIN)
        self.after = []

    def check(self):
        now = time.monotonic()
        for fd, _ in self.poller.poll(0):
            try:
                data = self.by_fd[fd].recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            self.poller.unregister(fd)
            if not data:
                self.after.append(now - self.idle_from[fd])

    def summary(self):
        a = sorted(self.after)
        if not a:
            return {"closed": 0}
        return {"closed": len(a), "min_s": round(a[0], 1), "median_s": round(a[len(a) // 2], 1),
                "max_s": round(a[-1], 1)}


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--origin-port", type=int, required=True)
    ap.add_argument("--entry", default="/hls/livestream/mem/index.m3u8")
    ap.add_argument("--segments", type=int, required=True)
    ap.add_argument("--seg-bytes", type=int, required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--verify-every", type=int, default=50)
    ap.add_argument("--idle-conns", type=int, default=5000)
    ap.add_argument("--idle-kinds", default="keepalive silent partial")  # "none": stream phase only
    ap.add_argument("--hold", type=float, default=12)
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--cache-bytes", type=int, required=True)
    ap.add_argument("--overhead-bytes", type=int, default=64 * MiB)
    ap.add_argument("--stream-timeout", type=float, default=900)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    sampler = Sampler(a.pid, a.interval, os.path.join(a.out, "samples.tsv"))
    summary = {"label": a.label, "segments": a.segments, "seg_bytes": a.seg_bytes, "clients": a.clients,
               "cache_max_bytes": a.cache_bytes, "overhead_bytes": a.overhead_bytes,
               "bound_bytes": a.cache_bytes + a.overhead_bytes, "idle_conns": a.idle_conns,
               "hold": a.hold}
    base = sampler.set_phase("baseline")
    summary["baseline_kib"] = base["VmRSS"]
    sampler.start()

    # ---- stream
    sampler.set_phase("stream")
    url, text = entry_playlist(a.host, a.port, a.entry)
    urls = segment_uris(url, text)
    summary["entry_url"], summary["playlist_bytes"], summary["playlist_uris"] = url, len(text), len(urls)
    print(f"entry playlist {url}: {len(text)} bytes, {len(urls)} URIs; first {urls[0] if urls else None}")
    if len(urls) != a.segments:
        print(f"expected {a.segments} segment URIs, got {len(urls)}", file=sys.stderr)
    res = stream(a.host, a.port, urls, a.seg_bytes, a.clients, a.verify_every, time.monotonic() + a.stream_timeout)
    summary["stream"] = res
    st = sampler.set_phase("settle")
    summary["stream_end_kib"], summary["stream_hwm_kib"] = st["VmRSS"], st["VmHWM"]
    print(f"stream: {res['ok']} ok in {res['seconds']} s ({res['bytes'] / MiB / max(res['seconds'], 0.1):.0f} MiB/s), "
          f"errors {res['errors']}, bad status/size/body {res['bad_status']}/{res['bad_size']}/{res['bad_body']}; "
          f"RSS {st['VmRSS'] // 1024} MiB, HWM {st['VmHWM'] // 1024} MiB", flush=True)
    time.sleep(a.settle)
    st = sampler.set_phase("final")
    summary["final_kib"], summary["final_hwm_kib"] = st["VmRSS"], st["VmHWM"]
    summary["final_rss_anon_kib"] = st.get("RssAnon")
    summary["metrics_after_stream"] = metrics(a.host, a.port)
    try:
        summary["origin"] = json.loads(get(a.host, a.origin_port, "/stats")[2])
    except OSError as e:
        summary["origin"] = str(e)
    print(f"final: RSS {st['VmRSS'] // 1024} MiB; cache bytes "
          f"{summary['metrics_after_stream'].get('hls_relay_cache_bytes', float('nan')) / MiB:.1f} MiB; "
          f"origin {summary['origin']}", flush=True)

    # ---- idle connections
    summary["idle"] = {}
    for kind in [k for k in a.idle_kinds.split() if k != "none"]:
        st0 = sampler.set_phase(f"idle-{kind}-opening")
        t0 = time.monotonic()
        socks, failed, answered, idle_from = open_idle(a.host, a.port, a.idle_conns, kind)
        opened_s = time.monotonic() - t0
        st1 = sampler.set_phase(f"idle-{kind}-held")
        held_max = st1["VmRSS"]
        watch = CloseWatch(socks, idle_from)
        end = time.monotonic() + a.hold
        while time.monotonic() < end:
            time.sleep(a.interval)
            st = sampler.must_sample()
            held_max = max(held_max, st["VmRSS"])
            watch.check()
        watch.check()
        alive = still_open(socks)
        st2 = sampler.must_sample()
        for s in socks:
            s.close()
        sampler.set_phase(f"idle-{kind}-closed")
        time.sleep(a.settle)
        st3 = sampler.must_sample()
        ph = sampler.phase_stats(f"idle-{kind}-")
        summary["idle"][kind] = {
            "opened": len(socks), "failed": failed, "answered_200": answered, "open_seconds": round(opened_s, 1),
            "rss_before_kib": st0["VmRSS"], "rss_all_open_kib": st1["VmRSS"], "rss_held_max_kib": held_max,
            "rss_end_of_hold_kib": st2["VmRSS"], "rss_after_close_kib": st3["VmRSS"],
            "relay_fds_max": ph["max_fds"], "relay_fds_all_open": st1["fds"], "at_end_of_hold": alive,
            "closed_by_relay_after_idle": watch.summary(),
            "per_conn_bytes": round((held_max - st0["VmRSS"]) * 1024 / max(len(socks), 1)),
        }
        print(f"idle {kind}: {len(socks)} open ({failed} failed) in {opened_s:.1f} s; RSS before "
              f"{st0['VmRSS'] // 1024} MiB, all open {st1['VmRSS'] // 1024} MiB, held max {held_max // 1024} MiB, "
              f"after close {st3['VmRSS'] // 1024} MiB; relay fds {st1['fds']}; end of hold {alive}; "
              f"closed by the relay after idle {watch.summary()}", flush=True)

    st = sampler.set_phase("end")
    sampler.stop_ev.set()
    summary["end_kib"], summary["peak_hwm_kib"] = st["VmRSS"], st["VmHWM"]
    summary["peak_sampled_kib"] = max(s["VmRSS"] for (_, _, s) in sampler.samples)
    summary["metrics_end"] = metrics(a.host, a.port)
    peak = max(summary["peak_hwm_kib"], summary["peak_sampled_kib"]) * 1024
    summary["peak_bytes"] = peak
    summary["within_bound"] = peak <= summary["bound_bytes"]
    res = summary["stream"]
    errors = res["errors"] + res["bad_status"] + res["bad_size"] + res["bad_body"] + res["not_done"]
    summary["errors"] = errors
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = render(summary)
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    if errors:
        return 2
    return 0 if summary["within_bound"] else 1


def render(s):
    mib = lambda kib: f"{kib / 1024:.1f}"  # noqa: E731
    b = lambda n: f"{n / MiB:.1f}"  # noqa: E731
    res = s["stream"]
    cache = s["metrics_after_stream"].get("hls_relay_cache_bytes", float("nan"))
    entries = s["metrics_after_stream"].get("hls_relay_cache_entries", float("nan"))
    lines = [
        f"### {s['label'] or 'run'}",
        "",
        f"{res['ok']}/{s['segments']} segments × {s['seg_bytes'] // 1024} KiB ({b(res['bytes'])} MiB) in "
        f"{res['seconds']} s with {s['clients']} clients; errors {s['errors']}; X-Cache {res['x_cache']}; "
        f"origin requests {s.get('origin')}",
        "",
        "| measure | MiB |",
        "| --- | ---: |",
        f"| baseline RSS (started, idle) | {mib(s['baseline_kib'])} |",
        f"| RSS at end of stream | {mib(s['stream_end_kib'])} |",
        f"| peak RSS during stream (VmHWM) | {mib(s['stream_hwm_kib'])} |",
        f"| final RSS (after {s['segments']} segments, settled) | {mib(s['final_kib'])} |",
        f"| `hls_relay_cache_bytes` after stream ({int(entries)} entries) | {b(cache)} |",
    ]
    for kind, d in s["idle"].items():
        lines.append(f"| RSS with {d['opened']} idle `{kind}` connections (max while held; "
                     f"{d['per_conn_bytes'] / 1024:.1f} KiB/conn) | {mib(d['rss_held_max_kib'])} |")
        lines.append(f"| RSS after closing them | {mib(d['rss_after_close_kib'])} |")
    lines += [
        f"| **peak RSS, whole run (VmHWM)** | **{b(s['peak_bytes'])}** |",
        f"| bound: cache.max_bytes + overhead | {b(s['bound_bytes'])} |",
        "",
        f"within bound: **{'yes' if s['within_bound'] else 'NO'}**",
        "",
    ]
    for kind, d in s["idle"].items():
        lines.append(f"- idle `{kind}`: opened {d['opened']} ({d['failed']} failed) in {d['open_seconds']} s, relay fds "
                     f"{d['relay_fds_all_open']}; at end of the {s['hold']:g} s hold: {d['at_end_of_hold']}; "
                     f"closed by the relay, seconds after going idle: {d.get('closed_by_relay_after_idle')}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
