#!/usr/bin/env bash
# Memory benchmark of hls-relay: RSS while 10,000 distinct segments stream through a 64 MiB cache, then with
# 5,000 idle connections open. bash + python3 stdlib only; 127.0.0.1 only; bounded in time; starts and stops only
# its own processes (pid files in $RUN_DIR). See benches/memory/README.md.
#
#   origin   benches/memory/origin.py            127.0.0.1:$ORIGIN_PORT  /live/media.m3u8 (VOD, $SEGMENTS segments),
#                                                 /live/seg_NNNNN.ts ($SEG_BYTES pseudo-random bytes each)
#   sim      hls-relay sim (Stream API)          127.0.0.1:$SIM_PORT     call livestream:mem -> the origin playlist
#   relay    hls-relay serve                     127.0.0.1:$RELAY_PORT   cache.max_bytes = $CACHE_MIB MiB
#   driver   benches/memory/drive.py             the phases (baseline, stream, final, idle-*), RSS every 0.5 s
#
# Exit status: 0 peak RSS <= cache + $OVERHEAD_MIB MiB; 1 over that bound; 2 errors (segments failed or wrong,
# or a process did not start). The numbers are printed and written to $RESULTS_DIR either way.
#
# Experiments: RELAY_ENV="_RJEM_MALLOC_CONF=narenas:1" (the relay uses jemalloc; glibc: MALLOC_ARENA_MAX=2, RELAY_ENV="MALLOC_MMAP_THRESHOLD_=131072"),
# WORKERS=1, CACHE_MIB=256, CLIENTS=32, SEGMENTS=1000, IDLE_KINDS=silent (or none), IDLE_CONNS, HOLD, ...
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/../.." && pwd)

ORIGIN_PORT=${ORIGIN_PORT:-18180}
SIM_PORT=${SIM_PORT:-18190}
RELAY_PORT=${RELAY_PORT:-18183}
SEGMENTS=${SEGMENTS:-10000}
SEG_BYTES=${SEG_BYTES:-262144}
CACHE_MIB=${CACHE_MIB:-64}
OVERHEAD_MIB=${OVERHEAD_MIB:-64}
CLIENTS=${CLIENTS:-8}
IDLE_CONNS=${IDLE_CONNS:-5000}
IDLE_KINDS=${IDLE_KINDS:-"keepalive silent partial"}   # any of them, in order; "none": stream phase only
HOLD=${HOLD:-12}                           # > the relay's header_read_timeout (10 s), to see it close them
WORKERS=${WORKERS:-}                       # relay runtime worker threads (empty: the relay's default, one per CPU)
TIMEOUT=${TIMEOUT:-900}                    # hard bound on the driver, seconds
RELAY_BIN=${RELAY_BIN:-$REPO_DIR/target/release/hls-relay}
TAG=${TAG:-$(date -u +%Y%m%dT%H%M%SZ)${MALLOC_ARENA_MAX:+-arena$MALLOC_ARENA_MAX}}
RUN_DIR=${RUN_DIR:-/tmp/hlsmem/$TAG}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results/$TAG}
# glibc tunable passed to the relay only (not to python): empty = glibc default (8 arenas per core)
RELAY_MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-}
unset MALLOC_ARENA_MAX
# more environment for the relay only, e.g. RELAY_ENV="MALLOC_MMAP_THRESHOLD_=131072" (space-separated K=V)
RELAY_ENV=${RELAY_ENV:-}

mkdir -p "$RUN_DIR" "$RESULTS_DIR"
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- processes (own pid files only)
PIDS=()
stop_pid() { # name
  local f="$RUN_DIR/$1.pid" pid
  [[ -f $f ]] || return 0
  pid=$(<"$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
cleanup() {
  local rc=$?
  for name in relay sim origin; do stop_pid "$name"; done
  [[ -s $RUN_DIR/relay.log ]] && cp "$RUN_DIR/relay.log" "$RESULTS_DIR/relay.log" 2>/dev/null || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}
wait_http() { # url name pidfile
  python3 - "$1" "$2" "$3" <<'EOF'
import os, sys, time, urllib.request, urllib.error
url, name, pidfile = sys.argv[1:]
pid = int(open(pidfile).read())
for _ in range(200):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"{name} exited during start-up")
    try:
        urllib.request.urlopen(url, timeout=1).read()
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)  # it answers
    except OSError:
        time.sleep(0.1)
sys.exit(f"{name} did not answer {url} within 20 s")
EOF
}

for p in "$ORIGIN_PORT" "$SIM_PORT" "$RELAY_PORT"; do
  port_free "$p" || { log "port 127.0.0.1:$p is in use (ORIGIN_PORT/SIM_PORT/RELAY_PORT)"; exit 2; }
done

# 5,000 idle sockets in the driver and in the relay (both inherit this limit)
want_fds=$((IDLE_CONNS + 1024))
if (( $(ulimit -n) < want_fds )); then
  ulimit -n "$(( $(ulimit -Hn) < want_fds ? $(ulimit -Hn) : want_fds ))" || true
fi
(( $(ulimit -n) >= want_fds )) || log "warning: ulimit -n is $(ulimit -n) < $want_fds; some idle connections will fail"

# A private copy of the binary: a rebuild by someone else during the run does not change what is measured.
[[ -x $RELAY_BIN ]] || { log "no $RELAY_BIN: cargo build --release"; exit 2; }
cp "$RELAY_BIN" "$RUN_DIR/hls-relay"
BIN=$RUN_DIR/hls-relay
{
  echo "date: $(date -u +%FT%TZ)"
  echo "git: $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO_DIR" diff --quiet -- src 2>/dev/null || echo ' (src modified in the work tree)')"
  echo "binary: $RELAY_BIN, built $(date -u -r "$RELAY_BIN" +%FT%TZ), sha256 $(sha256sum "$RELAY_BIN" | cut -c1-16)"
  echo "params: SEGMENTS=$SEGMENTS SEG_BYTES=$SEG_BYTES CACHE_MIB=$CACHE_MIB OVERHEAD_MIB=$OVERHEAD_MIB CLIENTS=$CLIENTS IDLE_CONNS=$IDLE_CONNS IDLE_KINDS='$IDLE_KINDS' HOLD=$HOLD WORKERS=${WORKERS:-default} MALLOC_ARENA_MAX=${RELAY_MALLOC_ARENA_MAX:-unset} RELAY_ENV='$RELAY_ENV' ulimit_n=$(ulimit -n) nproc=$(nproc)"
} | tee "$RESULTS_DIR/env.txt" >&2

log "origin on 127.0.0.1:$ORIGIN_PORT ($SEGMENTS segments x $SEG_BYTES bytes)"
python3 "$BENCH_DIR/origin.py" "$ORIGIN_PORT" "$SEGMENTS" "$SEG_BYTES" >"$RUN_DIR/origin.log" 2>&1 &
echo $! >"$RUN_DIR/origin.pid"
wait_http "http://127.0.0.1:$ORIGIN_PORT/stats" origin "$RUN_DIR/origin.pid"

log "sim API on 127.0.0.1:$SIM_PORT"
"$BIN" sim --listen "127.0.0.1:$SIM_PORT" \
  --call "livestream:mem=http://127.0.0.1:$ORIGIN_PORT/live/media.m3u8" >"$RUN_DIR/sim.log" 2>&1 &
echo $! >"$RUN_DIR/sim.pid"
wait_http "http://127.0.0.1:$SIM_PORT/" sim "$RUN_DIR/sim.pid"

log "relay on 127.0.0.1:$RELAY_PORT (cache $CACHE_MIB MiB${RELAY_MALLOC_ARENA_MAX:+, MALLOC_ARENA_MAX=$RELAY_MALLOC_ARENA_MAX})"
relay_env=(STREAM_API_KEY=sim-key STREAM_API_SECRET=sim-secret
  HLS_RELAY_STREAM__BASE_URL="http://127.0.0.1:$SIM_PORT"
  HLS_RELAY_SERVER__URL_KEY=mem-url-key-0123456789
  HLS_RELAY_CACHE__MAX_BYTES="${CACHE_MIB}MiB"
  HLS_RELAY_LOG__LEVEL=warn)
[[ -n $RELAY_MALLOC_ARENA_MAX ]] && relay_env+=(MALLOC_ARENA_MAX="$RELAY_MALLOC_ARENA_MAX")
[[ -n $RELAY_ENV ]] && read -r -a extra_env <<<"$RELAY_ENV" && relay_env+=("${extra_env[@]}")
env "${relay_env[@]}" "$BIN" ${WORKERS:+--workers "$WORKERS"} serve --listen "127.0.0.1:$RELAY_PORT" \
  >"$RUN_DIR/relay.log" 2>&1 &
echo $! >"$RUN_DIR/relay.pid"
wait_http "http://127.0.0.1:$RELAY_PORT/healthz" relay "$RUN_DIR/relay.pid"
sleep 1   # baseline after start-up has settled

set +e
timeout "$TIMEOUT" python3 "$BENCH_DIR/drive.py" \
  --port "$RELAY_PORT" --pid "$(<"$RUN_DIR/relay.pid")" --origin-port "$ORIGIN_PORT" \
  --segments "$SEGMENTS" --seg-bytes "$SEG_BYTES" --clients "$CLIENTS" \
  --idle-conns "$IDLE_CONNS" --idle-kinds "$IDLE_KINDS" --hold "$HOLD" \
  --cache-bytes $((CACHE_MIB * 1024 * 1024)) --overhead-bytes $((OVERHEAD_MIB * 1024 * 1024)) \
  --label "$TAG (MALLOC_ARENA_MAX=${RELAY_MALLOC_ARENA_MAX:-unset}${RELAY_ENV:+, $RELAY_ENV}, workers ${WORKERS:-default})" \
  --out "$RESULTS_DIR"
rc=$?
set -e
(( rc == 124 )) && log "driver timed out after $TIMEOUT s" && rc=2
log "results in $RESULTS_DIR (exit $rc)"
exit "$rc"
