#!/usr/bin/env bash
# The cost of viewer counting on cached playlist hits: the relay alone (no nginx, no Varnish), in front of
# `hls-relay sim`, with viewers.enabled off and on, same build, same machine, back to back, ROUNDS times.
#
#   cargo build --release && benches/load/viewers.sh         # ~2 min with the defaults
#
# Pinned as run.sh's pinned mode: the relay (--workers 1) and the simulator on CPU 1, wrk on CPU 0. Each wrk run
# reads the call's cached media playlist (a live MPEG-TS playlist, refreshed upstream every second) for DURATION at
# CONNS connections, keep-alive, through token.lua, one case per row:
#
#   off              viewers.enabled = false; each request carries one of SESSIONS vs= ids (ignored: same URLs, same
#                    client cost as "on, sessions")
#   on, no session   viewers.enabled = true; the playlist URL without vs= (a request that is not a session: served
#                    shared, counted nowhere)
#   on, sessions     viewers.enabled = true; each request carries one of SESSIONS ids the relay issued (minted by
#                    loading the entry SESSIONS times): every request is a counted reload
#
# Printed per run: req/s, p99, and the relay's CPU per request (utime+stime of the relay process from /proc over
# the run, divided by the requests wrk completed). Results are appended to $OUT (default
# benches/load/results/viewers/runs.tsv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/hls-relay}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10s}
SESSIONS=${SESSIONS:-1000}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-1}
SIM_PORT=${SIM_PORT:-18190}
RELAY_PORT=${RELAY_PORT:-18191}
OUT=${OUT:-$ROOT/benches/load/results/viewers/runs.tsv}
RUN_DIR=$(mktemp -d /tmp/hls-relay-viewers.XXXXXX)
URL_KEY=bench-url-key-0123456789
TICK=$(getconf CLK_TCK)

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "$*"; exit 1; }
[[ -x $BIN ]] || die "no $BIN: cargo build --release first (or set BIN)"
command -v wrk > /dev/null || die "apt-get install -y wrk"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" > /dev/null 2>&1 && return 0; sleep 0.1; done; die "nothing on port $1"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

taskset -c 1 "$BIN" sim --listen "127.0.0.1:$SIM_PORT" > "$RUN_DIR/sim.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$SIM_PORT/" > /dev/null 2>&1 && break; sleep 0.1; done

start_relay() {  # enabled -> RELAY_PID
  env STREAM_API_KEY=sim-key STREAM_API_SECRET=sim-secret HLS_RELAY_STREAM__BASE_URL="http://127.0.0.1:$SIM_PORT" \
      HLS_RELAY_SERVER__URL_KEY="$URL_KEY" HLS_RELAY_LOG__LEVEL=warn HLS_RELAY_VIEWERS__ENABLED="$1" \
      taskset -c 1 "$BIN" --workers 1 serve --listen "127.0.0.1:$RELAY_PORT" > "$RUN_DIR/relay-$1.log" 2>&1 &
  RELAY_PID=$!
  PIDS+=("$RELAY_PID")
  wait_up "$RELAY_PORT"
}

stop_relay() { kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; }

ENTRY="http://127.0.0.1:$RELAY_PORT/hls/livestream/demo/index.m3u8"
first_variant() { curl -sf "$ENTRY" | tr -d '\r' | awk '!/^#/ && NF && !n++'; }

# Session ids, minted by a relay with counting on (they are valid on any instance sharing the URL key).
start_relay true
variant=$(first_variant)
MEDIA="http://127.0.0.1:$RELAY_PORT/hls/livestream/demo/${variant%%\?*}"
for _ in $(seq "$SESSIONS"); do first_variant | sed -n 's/.*[?&]vs=\([A-Za-z0-9_-]*\).*/\1/p'; done > "$RUN_DIR/sessions.txt"
stop_relay
[[ $(wc -l < "$RUN_DIR/sessions.txt") == "$SESSIONS" ]] || die "could not mint $SESSIONS sessions"
log "media playlist $MEDIA ($(wc -l < "$RUN_DIR/sessions.txt") sessions)"

mkdir -p "$(dirname "$OUT")"
[[ -s $OUT ]] || printf 'date\tcommit\tcase\tconns\trps\tp99_ms\tcpu_us_per_req\tnon2xx\n' > "$OUT"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)

run() {  # case enabled sessions-file-or-dash
  local case=$1 enabled=$2 file=$3 t0 t1 raw rps reqs p99 non2xx
  start_relay "$enabled"
  curl -sf "$MEDIA" > /dev/null
  taskset -c 0 wrk -t"$THREADS" -c"$CONNS" -d2s -s "$ROOT/benches/load/token.lua" "$MEDIA" -- "$file" "$THREADS" vs > /dev/null
  t0=$(cpu_ticks "$RELAY_PID")
  raw=$(taskset -c 0 wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$ROOT/benches/load/token.lua" "$MEDIA" -- "$file" "$THREADS" vs)
  t1=$(cpu_ticks "$RELAY_PID")
  stop_relay
  rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' <<< "$raw")
  reqs=$(awk '/requests in/ {print $1}' <<< "$raw")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/, "", v); v/=1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v*=1000}; printf "%.2f", v}' <<< "$raw")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<< "$raw")
  local cpu_us
  cpu_us=$(awk -v a="$t0" -v b="$t1" -v r="$reqs" -v hz="$TICK" 'BEGIN {printf "%.2f", (b - a) / hz * 1e6 / r}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date +%F)" "$COMMIT" "$case" "$CONNS" "$rps" "$p99" "$cpu_us" "${non2xx:-0}" | tee -a "$OUT"
}

for round in $(seq "$ROUNDS"); do
  log "round $round of $ROUNDS"
  run "off" false "$RUN_DIR/sessions.txt"
  run "on, no session" true -
  run "on, sessions" true "$RUN_DIR/sessions.txt"
done
