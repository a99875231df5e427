#!/usr/bin/env python3
"""Synthetic HLS origin for the memory benchmark (python3 stdlib only, 127.0.0.1 only).

  GET /live/media.m3u8   VOD media playlist (TARGETDURATION 2, ENDLIST) of SEGMENTS distinct segments
  GET /live/seg_NNNNN.ts SEG_BYTES deterministic pseudo-random bytes, generated on the fly from the index
  GET /stats             JSON: requests served per kind (to check one upstream fetch per segment)

Usage: origin.py PORT SEGMENTS SEG_BYTES
"""
import json
import random
import re
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEG_RE = re.compile(r"^/live/seg_(\d{5})\.ts$")


def segment_bytes(index: int, size: int) -> bytes:
    """The body of segment `index`: distinct per index, reproducible by the client for verification."""
    head = b"\x47" + index.to_bytes(4, "big")  # TS sync byte, then the index: no two segments are equal
    return head + random.Random(index).randbytes(size - len(head))


def playlist(segments: int) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-PLAYLIST-TYPE:VOD"]
    for i in range(segments):
        lines.append("#EXTINF:2.000,")
        lines.append(f"seg_{i:05d}.ts")
    lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for the relay's connection pool
    server_version = "mem-origin"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send(self, status, ctype, body, head_only=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _route(self, head_only):
        srv = self.server
        path = self.path.split("?", 1)[0]
        if path == "/live/media.m3u8":
            srv.count("playlist")
            return self._send(200, "application/vnd.apple.mpegurl", srv.playlist, head_only)
        m = SEG_RE.match(path)
        if m and int(m.group(1)) < srv.segments:
            srv.count("segment")
            return self._send(200, "video/mp2t", segment_bytes(int(m.group(1)), srv.seg_bytes), head_only)
        if path == "/stats":
            with srv.lock:
                body = json.dumps(srv.stats).encode()
            return self._send(200, "application/json", body, head_only)
        srv.count("not_found")
        return self._send(404, "text/plain", b"not found\n", head_only)

    def do_GET(self):
        self._route(False)

    def do_HEAD(self):
        self._route(True)


class Origin(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, addr, segments, seg_bytes):
        super().__init__(addr, Handler)
        self.segments = segments
        self.seg_bytes = seg_bytes
        self.playlist = playlist(segments)
        self.lock = threading.Lock()
        self.stats = {"playlist": 0, "segment": 0, "not_found": 0}

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS look-up that can hang without a resolver
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def count(self, kind):
        with self.lock:
            self.stats[kind] += 1


def main():
    port, segments, seg_bytes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    Origin(("127.0.0.1", port), segments, seg_bytes).serve_forever()


if __name__ == "__main__":
    main()
