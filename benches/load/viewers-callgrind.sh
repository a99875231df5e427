#!/usr/bin/env bash
# Instructions per cached playlist hit with viewer counting off and on, under callgrind: deterministic, so it shows
# what counting costs where wrk on a shared 2-core box cannot (see benches/load/README.md, "Viewer counting").
#
#   cargo build --release && benches/load/viewers-callgrind.sh        # ~2 min
#
# For each case the relay (--workers 1) runs under `valgrind --tool=callgrind` in front of `hls-relay sim`; one
# keep-alive client sends 200 warm-up requests and then N requests for the call's media playlist (N = 1000 and
# 3000, two runs); instructions per request = (I(3000) - I(1000)) / 2000, so start-up and warm-up cancel out.
# Cases: off / on, each with every request naming one of 200 sessions (vs=, ignored when off) and with no query.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/hls-relay}
SIM_PORT=${SIM_PORT:-18390}
PORT=${PORT:-18392}
RUN_DIR=$(mktemp -d /tmp/hls-relay-viewers-cg.XXXXXX)
ENV=(STREAM_API_KEY=sim-key STREAM_API_SECRET=sim-secret HLS_RELAY_STREAM__BASE_URL="http://127.0.0.1:$SIM_PORT"
     HLS_RELAY_SERVER__URL_KEY=bench-url-key-0123456789 HLS_RELAY_LOG__LEVEL=warn)
command -v valgrind > /dev/null || { echo "apt-get install -y valgrind" >&2; exit 1; }

PIDS=()
trap 'for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT

cat > "$RUN_DIR/client.py" <<'PY'
import http.client, sys
port, path, n, sessions = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
ids = [line.strip() for line in open(sessions)] if sessions != "-" else [None]
connection = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    session = ids[i % len(ids)]
    connection.request("GET", path + (f"?vs={session}" if session else ""))
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
PY

"$BIN" sim --listen "127.0.0.1:$SIM_PORT" > "$RUN_DIR/sim.log" 2>&1 &
PIDS+=($!)
up() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$1/healthz" > /dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
for _ in $(seq 100); do curl -s "http://127.0.0.1:$SIM_PORT/" > /dev/null 2>&1 && break; sleep 0.1; done

env "${ENV[@]}" "$BIN" --workers 1 serve --listen "127.0.0.1:$PORT" > "$RUN_DIR/mint.log" 2>&1 &
MINT=$!
up "$PORT"
ENTRY="http://127.0.0.1:$PORT/hls/livestream/demo/index.m3u8"
variant=$(curl -sf "$ENTRY" | tr -d '\r' | awk '!/^#/ && NF && !n++')
MEDIA="/hls/livestream/demo/${variant%%\?*}"
for _ in $(seq 200); do
  curl -sf "$ENTRY" | tr -d '\r' | awk '!/^#/ && NF && !n++' | sed -n 's/.*[?&]vs=\([A-Za-z0-9_-]*\).*/\1/p'
done > "$RUN_DIR/sessions.txt"
kill "$MINT"; wait "$MINT" 2>/dev/null || true

instructions() {  # enabled sessions requests -> total instructions of the run
  local out=$RUN_DIR/cg.$1.$(basename "$2").$3.out pid
  env "${ENV[@]}" HLS_RELAY_VIEWERS__ENABLED="$1" valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" --workers 1 serve --listen "127.0.0.1:$PORT" > "$RUN_DIR/relay.log" 2>&1 &
  pid=$!
  up "$PORT"
  python3 "$RUN_DIR/client.py" "$PORT" "$MEDIA" 200 "$2"
  python3 "$RUN_DIR/client.py" "$PORT" "$MEDIA" "$3" "$2"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^totals:|^summary:/ {print $2; exit}' "$out"
}

printf 'case\tinstructions_per_request\n'
for case in "off false $RUN_DIR/sessions.txt" "on false -" "on true $RUN_DIR/sessions.txt" "on true -"; do
  read -r _ enabled sessions <<< "$case"
  a=$(instructions "$enabled" "$sessions" 1000)
  b=$(instructions "$enabled" "$sessions" 3000)
  label="viewers.enabled=$enabled, $([[ $sessions == - ]] && echo "no query" || echo "vs= on every request")"
  printf '%s\t%s\n' "$label" "$(( (b - a) / 2000 ))"
done
