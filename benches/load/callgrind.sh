#!/usr/bin/env bash
# User-space instructions per cached playlist hit, the relay next to nginx proxy_cache, under callgrind: a count
# that does not depend on what else runs on a shared 2-core box, where wrk's req/s and CPU µs/req do
# (see benches/load/README.md, "Instructions per playlist hit (callgrind)").
#
#   cargo build --release && benches/load/callgrind.sh        # ~30 s
#
# The server under test runs under `valgrind --tool=callgrind`, alone: the harness's static nginx origin
# (/tmp/hlsbench/origin, made by make-stream.sh) and, for the relay, `hls-relay sim` run natively. One keep-alive
# Python client, the same for every server, sends 200 warm-up requests for the media playlist (the origin's
# ts/index.m3u8, through the server), then N on a new connection; N = 1000 and 3000, each on a freshly started
# server. Instructions per request = (I(3000) - I(1000)) / 2000: start-up, warm-up and shutdown cancel out.
# Servers:
#   relay              hls-relay --workers 1 serve, access.mode = public, viewers.enabled = true (the default);
#                      the URL has no query, so it is served shared
#   relay-viewers-off  the same with viewers.enabled = false
#   nginx              conf/cache.nginx.conf.in as run.sh renders it (worker_processes 1), in the foreground with
#                      master_process off (one process), playlists kept 10m instead of 1s: see PLAYLIST_VALID
# Every measured request must be a cache hit: X-Cache: HIT on each response and no playlist request reaching the
# origin while the measured requests run (origin access log).
#
# Knobs: BIN, SERVERS, N1/N2/WARMUP, PLAYLIST_VALID, the ports (18480-18483), KEEP=1, COMMIT (see below); other
# HLS_RELAY_* variables pass through to the relay, as in run.sh.
# Output: TSV on stdout (server, instructions_per_request, bytes_per_response = body bytes), and the same rows with
# date, commit, CPU model and the raw totals appended to results/callgrind/runs.tsv.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/../.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/hls-relay}
ORIGIN_DIR=${ORIGIN_DIR:-/tmp/hlsbench/origin}
ORIGIN_PORT=${ORIGIN_PORT:-18480}
SIM_PORT=${SIM_PORT:-18481}
RELAY_PORT=${RELAY_PORT:-18482}
NGINX_PORT=${NGINX_PORT:-18483}
SERVERS=${SERVERS:-"relay relay-viewers-off nginx"}
WARMUP=${WARMUP:-200}
N1=${N1:-1000}
N2=${N2:-3000}
# The harness keeps playlists in nginx for 1 s (live-style); under callgrind a run lasts far longer than that, and
# an expired playlist would be revalidated against the origin in the middle of the measured requests.
PLAYLIST_VALID=${PLAYLIST_VALID:-10m}
START_TIMEOUT=${START_TIMEOUT:-180}   # s: a server under valgrind starts slowly, more so on a busy box
STOP_TIMEOUT=${STOP_TIMEOUT:-60}      # s: until callgrind has written its totals
OUT=${OUT:-$BENCH_DIR/results/callgrind/runs.tsv}
KEEP=${KEEP:-0}                       # 1: keep the run dir (callgrind.out.* for callgrind_annotate)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in valgrind nginx curl python3; do
  command -v "$tool" > /dev/null || die "$tool missing (apt-get install -y nginx valgrind curl python3)"
done
for server in $SERVERS; do
  [[ $server == @(relay|relay-viewers-off|nginx) ]] || die "unknown server '$server' in SERVERS (relay relay-viewers-off nginx)"
done
[[ -x $BIN ]] || die "no relay binary $BIN: cargo build --release (or BIN=...)"
if [[ ! -f $ORIGIN_DIR/ts/index.m3u8 ]]; then
  [[ $ORIGIN_DIR == /tmp/hlsbench/origin ]] || die "no stream in $ORIGIN_DIR: run OUT_DIR=$ORIGIN_DIR make-stream.sh first"
  log "no test stream yet: running make-stream.sh"; "$BENCH_DIR/make-stream.sh" >&2
fi
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$ORIGIN_PORT" "$SIM_PORT" "$RELAY_PORT" "$NGINX_PORT"; do
  port_free "$port" || die "port $port is in use (set ORIGIN_PORT, SIM_PORT, RELAY_PORT, NGINX_PORT)"
done

RUN_DIR=$(mktemp -d /tmp/hls-relay-cg.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2> /dev/null || true
  done
  if [[ $KEEP == 1 ]]; then log "run dir kept: $RUN_DIR"; else rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

up() {  # port pid: wait until the port accepts connections (no request: nothing to count); fail at once if pid died
  for _ in $(seq $((START_TIMEOUT * 5))); do
    port_free "$1" || return 0
    kill -0 "$2" 2> /dev/null || return 1
    sleep 0.2
  done
  return 1
}
stop() {  # pid signal: stop a server and reap it, bounded
  local p rest=()
  kill "-$2" "$1" 2> /dev/null || true
  for _ in $(seq $((STOP_TIMEOUT * 10))); do kill -0 "$1" 2> /dev/null || break; sleep 0.1; done
  kill -0 "$1" 2> /dev/null && { kill -KILL "$1" 2> /dev/null || true; log "pid $1 did not stop on SIG$2"; }
  wait "$1" 2> /dev/null || true
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || rest+=("$p"); done
  PIDS=("${rest[@]}")
}

# The same client for every server: one keep-alive connection, http.client's default headers (Host,
# Accept-Encoding: identity). Prints "<body bytes> <X-Cache values with counts> <connections the server closed>".
cat > "$RUN_DIR/client.py" << 'PY'
import collections, http.client, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
sizes, cache, closed = set(), collections.Counter(), 0
for _ in range(n):
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"GET {path}: {response.status}")
    sizes.add(len(body))
    cache[response.getheader("X-Cache", "none")] += 1
    closed += response.will_close
if len(sizes) != 1:
    sys.exit(f"GET {path}: bodies of {len(sizes)} different sizes: {sorted(sizes)}")
print(sizes.pop(), ",".join(f"{k}:{v}" for k, v in sorted(cache.items())), closed)
PY

# A copy, so that a rebuild of target/ during the run does not change the binary under test.
cp "$BIN" "$RUN_DIR/hls-relay"
RELAY_SHA=$(sha256sum < "$RUN_DIR/hls-relay" | cut -c1-12)

render() {  # template -> rendered file, as run.sh renders it, one worker
  sed -e "s|@ORIGIN_DIR@|$ORIGIN_DIR|g" -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@CACHE_DIR@|$RUN_DIR/cache|g" \
      -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@SLOW_RATE@|512k|g" \
      -e "s|@WORKERS@|1|g" "$1" > "$2"
}
mkdir -p "$RUN_DIR/origin-tmp" "$RUN_DIR/cache-tmp"
chown nobody "$RUN_DIR/origin-tmp" "$RUN_DIR/cache-tmp"
chmod a+rx "$RUN_DIR"
# The origin's second listener (run.sh's "physical limit" target) is not needed here.
sed -e '/listen .*@ORIGIN_STATIC_PORT@/d' "$BENCH_DIR/conf/origin.nginx.conf.in" > "$RUN_DIR/origin.nginx.conf.in"
render "$RUN_DIR/origin.nginx.conf.in" "$RUN_DIR/origin.nginx.conf"
render "$BENCH_DIR/conf/cache.nginx.conf.in" "$RUN_DIR/nginx-cache.conf"
sed -i "s|proxy_cache_valid 200 1s;|proxy_cache_valid 200 $PLAYLIST_VALID;|" "$RUN_DIR/nginx-cache.conf"
grep -q "proxy_cache_valid 200 $PLAYLIST_VALID;" "$RUN_DIR/nginx-cache.conf" \
  || die "conf/cache.nginx.conf.in changed: no 'proxy_cache_valid 200 1s;' for playlists to lengthen"
grep -qF "X-Cache \$upstream_cache_status" "$RUN_DIR/nginx-cache.conf" || die "the cache conf no longer sends X-Cache"

: > "$RUN_DIR/origin.access.log"
nginx -e "$RUN_DIR/origin.error.log" -p "$RUN_DIR" -c "$RUN_DIR/origin.nginx.conf" -g 'daemon off;' &
ORIGIN_PID=$!; PIDS+=("$ORIGIN_PID")
up "$ORIGIN_PORT" "$ORIGIN_PID" || { cat "$RUN_DIR/origin.error.log" >&2; die "origin nginx did not start"; }
curl -sf -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/ts/index.m3u8" || die "origin does not serve /ts/index.m3u8"

"$RUN_DIR/hls-relay" sim --listen "127.0.0.1:$SIM_PORT" --call "livestream:bench=http://127.0.0.1:$ORIGIN_PORT/master.m3u8" \
  > "$RUN_DIR/sim.log" 2>&1 &
SIM_PID=$!; PIDS+=("$SIM_PID")
up "$SIM_PORT" "$SIM_PID" || { cat "$RUN_DIR/sim.log" >&2; die "hls-relay sim did not start"; }

RELAY_ENV=(STREAM_API_KEY=sim-key STREAM_API_SECRET=sim-secret HLS_RELAY_STREAM__BASE_URL="http://127.0.0.1:$SIM_PORT"
           HLS_RELAY_SERVER__URL_KEY=bench-url-key-0123456789 HLS_RELAY_LOG__LEVEL=warn HLS_RELAY_ACCESS__MODE=public)

# The relay serves only URLs it wrote into its playlists, signed with url_key (so the same on every start): its
# copy of ts/index.m3u8 is the variant its entry playlist names, found once on a relay outside valgrind. The
# variant URI may carry a viewer session (?vs=); without the query the request is served shared.
env "${RELAY_ENV[@]}" "$RUN_DIR/hls-relay" --workers 1 serve --listen "127.0.0.1:$RELAY_PORT" > "$RUN_DIR/relay.log" 2>&1 &
pid=$!; PIDS+=("$pid")
up "$RELAY_PORT" "$pid" || { cat "$RUN_DIR/relay.log" >&2; die "relay did not start"; }
ENTRY="http://127.0.0.1:$RELAY_PORT/hls/livestream/bench/index.m3u8"
variant=$(curl -sf --max-time 10 "$ENTRY" | tr -d '\r' | awk '!/^#/ && NF && !n++') || die "GET $ENTRY failed"
[[ -n $variant ]] || die "no variant in $ENTRY"
RELAY_PATH=$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(u.urljoin(sys.argv[1], sys.argv[2])).path)' "$ENTRY" "$variant")
stop "$pid" INT
log "relay playlist URL: $RELAY_PATH"

playlist_fetches() { grep -c '"GET /ts/index.m3u8 ' "$RUN_DIR/origin.access.log" || true; }

# Runs in this shell, not in $(...), so that its die stops the script and its PIDS reach the EXIT trap.
measure() {  # server n -> TOTAL (instructions of the run), BYTES (body); checks every measured request was a hit
  local server=$1 n=$2 out=$RUN_DIR/callgrind.out.$1.$2 port path pid signal before after result cache closed
  local cg=(valgrind --tool=callgrind --trace-children=no --callgrind-out-file="$out") extra=()
  rm -f "$out"
  case $server in
    relay*)
      [[ $server == relay-viewers-off ]] && extra=(HLS_RELAY_VIEWERS__ENABLED=false)
      port=$RELAY_PORT path=$RELAY_PATH signal=INT
      # -u: "relay" is the default setting, whatever the caller's environment says.
      env -u HLS_RELAY_VIEWERS__ENABLED "${RELAY_ENV[@]}" "${extra[@]}" "${cg[@]}" \
        "$RUN_DIR/hls-relay" --workers 1 serve --listen "127.0.0.1:$port" > "$RUN_DIR/$server.$n.log" 2>&1 &
      ;;
    nginx)
      # A fresh cache each time: the first warm-up request is the miss, as for the relay.
      rm -rf "$RUN_DIR/cache"; mkdir -p "$RUN_DIR/cache/nginx"
      # master_process off: one process does it all, so callgrind sees all of it; SIGQUIT makes it exit cleanly.
      port=$NGINX_PORT path=/ts/index.m3u8 signal=QUIT
      "${cg[@]}" nginx -e "$RUN_DIR/nginx-cache.error.log" -p "$RUN_DIR" -c "$RUN_DIR/nginx-cache.conf" \
        -g 'daemon off; master_process off;' > "$RUN_DIR/$server.$n.log" 2>&1 &
      ;;
  esac
  pid=$!; PIDS+=("$pid")
  up "$port" "$pid" || { tail -20 "$RUN_DIR/$server.$n.log" >&2; die "$server did not start under callgrind"; }
  python3 "$RUN_DIR/client.py" "$port" "$path" "$WARMUP" > /dev/null
  before=$(playlist_fetches)
  result=$(python3 "$RUN_DIR/client.py" "$port" "$path" "$n")
  after=$(playlist_fetches)
  stop "$pid" "$signal"
  read -r BYTES cache closed <<< "$result"
  [[ $cache == "HIT:$n" ]] || die "$server: X-Cache of the $n measured responses: $cache (all HIT expected)"
  (( after == before )) || die "$server: $((after - before)) origin request(s) for the playlist during the measured requests"
  (( closed == 0 )) || die "$server: closed the keep-alive connection $closed time(s)"
  [[ -s $out ]] || { tail -20 "$RUN_DIR/$server.$n.log" >&2; die "$server: callgrind wrote no $out"; }
  TOTAL=$(awk '/^totals:/ {print $2; exit}' "$out")
  [[ $TOTAL =~ ^[0-9]+$ ]] || die "$server: no totals in $out"
  log "$server N=$n: $TOTAL instructions, $BYTES-byte body, X-Cache $cache"
}

mkdir -p "$(dirname "$OUT")"
[[ -s $OUT ]] || printf 'date\tcommit\tcpu\tserver\tinstructions_per_request\tbytes_per_response\tbuild\tinstructions_n1\tinstructions_n2\tn1\tn2\n' > "$OUT"
DATE=$(date -u +%F)
# The checkout's commit; say COMMIT=... when BIN was built from another one (the build column names the binary).
COMMIT=${COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD)}
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')

printf 'server\tinstructions_per_request\tbytes_per_response\n'
for server in $SERVERS; do
  measure "$server" "$N1"; i1=$TOTAL bytes=$BYTES
  measure "$server" "$N2"; i2=$TOTAL
  per=$(awk -v a="$i1" -v b="$i2" -v n=$((N2 - N1)) 'BEGIN {printf "%.0f", (b - a) / n}')
  build="hls-relay sha256:$RELAY_SHA"; [[ $server == nginx ]] && build=$NGINX_VERSION
  printf '%s\t%s\t%s\n' "$server" "$per" "$bytes"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$DATE" "$COMMIT" "$CPU" "$server" "$per" "$bytes" "$build" \
    "$i1" "$i2" "$N1" "$N2" >> "$OUT"
done
