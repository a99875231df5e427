#!/usr/bin/env bash
# A relay fleet on this machine, in one command: Redis, the simulated Stream backend, three relays sharing a URL key
# (and Redis, when the binary has the cluster tier), and the nginx edge of deploy/nginx/edge.conf in front of them,
# all on 127.0.0.1 with free ports, logs in a temporary directory.
#
#   scripts/fleet.sh           start, print the URLs and a few things to try, run until Ctrl-C
#   scripts/fleet.sh --check   start, fetch through the edge (state, entry playlist, segment, a blocking reload,
#                              SSE, a dead relay's URLs), stop; exits non-zero on any failure
#
# HLS_RELAY_BIN: the hls-relay binary (default: target/release/hls-relay, built with cargo if missing).
# Needs nginx, redis-server and curl.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mode=run
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
relay_count=3

bin=${HLS_RELAY_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/hls-relay}
# The relays get exactly the environment below: a variable left in the caller's shell would change them.
while IFS= read -r name; do
  case $name in HLS_RELAY_* | STREAM_API_*) unset "$name" ;; esac
done < <(compgen -e)
# Their logs go to files: plain text.
export NO_COLOR=1

need() {
  local found
  found=$(PATH="$PATH:/usr/sbin:/sbin" command -v "$1") || {
    echo "$0: $1 is needed ($2)" >&2
    exit 1
  }
  printf '%s' "$found"
}
nginx=$(need nginx "apt-get install nginx")
redis=$(need redis-server "apt-get install redis-server")
need curl "apt-get install curl" >/dev/null

if [[ ! -x $bin ]]; then
  echo "building hls-relay (cargo build --release --locked)..."
  (cd "$root" && cargo build --release --locked --bin hls-relay)
fi

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/hls-relay-fleet.XXXXXX")
# nginx started as root runs its workers as `nobody`, which must reach the edge's files under here.
chmod 711 "$run_dir"
pids=()
names=()
keep_logs=1

stop_all() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if ((keep_logs)); then
    echo "fleet stopped; logs in $run_dir"
  else
    rm -rf "$run_dir"
  fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# A port nothing listens on; ports handed out in this run are not handed out again. Below Linux's ephemeral range,
# so that no outgoing connection holds it meanwhile.
taken=" "
free_port() {
  local port
  while :; do
    port=$((10000 + RANDOM % 22000))
    [[ $taken == *" $port "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      taken+="$port "
      echo "$port"
      return
    fi
  done
}

# start NAME LOG COMMAND...: runs it in the background, remembered for stop_all.
start() {
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  pids+=("$!")
  names+=("$name")
}

# wait_up NAME PID CHECK...: until CHECK succeeds (10 s); fails if the process exits first.
wait_up() {
  local name=$1 pid=$2 i
  shift 2
  for ((i = 0; i < 100; i++)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited before it was up" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$name not up after 10 s" >&2
  return 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -fsS --max-time 2 -o /dev/null "$1"; }

redis_port=$(free_port)
sim_port=$(free_port)
edge_port=$(free_port)
relay_ports=()
for ((i = 1; i <= relay_count; i++)); do
  relay_ports+=("$(free_port)")
done
url_key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

start redis "$run_dir/redis.log" "$redis" --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --dir "$run_dir"
wait_up redis "${pids[-1]}" port_open "$redis_port"

start sim "$run_dir/sim.log" "$bin" sim --listen "127.0.0.1:$sim_port"
wait_up "simulated Stream backend" "${pids[-1]}" port_open "$sim_port"

# start_relay N [CLUSTER]: relay N on its port; with CLUSTER, joined to Redis.
start_relay() {
  local n=$1 port=${relay_ports[$1 - 1]}
  local env=(
    STREAM_API_KEY=sim-key STREAM_API_SECRET=sim-secret
    "HLS_RELAY_STREAM__BASE_URL=http://127.0.0.1:$sim_port"
    "HLS_RELAY_SERVER__URL_KEY=$url_key"
    "HLS_RELAY_SERVER__LISTEN=127.0.0.1:$port"
  )
  if [[ ${2:-} == cluster ]]; then
    env+=("HLS_RELAY_CLUSTER__REDIS_URL=redis://127.0.0.1:$redis_port")
  fi
  start "relay $n" "$run_dir/relay$n.log" env "${env[@]}" "$bin" --workers 1 serve
  wait_up "relay $n" "${pids[-1]}" http_ok "http://127.0.0.1:$port/readyz"
}

# The cluster tier (cluster.redis_url) is newer than some binaries, and the config refuses keys it does not know:
# the first relay tells whether this one has it.
cluster=on
if ! start_relay 1 cluster 2>/dev/null; then
  if grep -qF "found \`cluster\`" "$run_dir/relay1.log"; then
    cluster=off
    mv "$run_dir/relay1.log" "$run_dir/relay1-cluster-refused.log"
    pids=("${pids[@]:0:${#pids[@]}-1}")
    names=("${names[@]:0:${#names[@]}-1}")
    start_relay 1
  else
    cat "$run_dir/relay1.log" >&2
    exit 1
  fi
fi
for ((i = 2; i <= relay_count; i++)); do
  if [[ $cluster == on ]]; then start_relay "$i" cluster; else start_relay "$i"; fi
done

mkdir -m 755 "$run_dir/nginx"
relay_addrs=()
for port in "${relay_ports[@]}"; do
  relay_addrs+=("127.0.0.1:$port")
done
"$root/deploy/nginx/render-edge.sh" "127.0.0.1:$edge_port" "${relay_addrs[@]}" >"$run_dir/nginx/edge.conf"
start edge "$run_dir/nginx/stderr.log" "$nginx" -p "$run_dir/nginx/" -c "$run_dir/nginx/edge.conf" \
  -e "$run_dir/nginx/error.log" -g "daemon off;"
wait_up "nginx edge" "${pids[-1]}" port_open "$edge_port"

edge="http://127.0.0.1:$edge_port"
pid_of() {
  local i
  for i in "${!names[@]}"; do
    [[ ${names[i]} == "$1" ]] && echo "${pids[i]}"
  done
}

print_fleet() {
  local i
  echo
  echo "hls-relay fleet on 127.0.0.1 (logs: $run_dir)"
  echo
  echo "  edge (nginx, deploy/nginx/edge.conf)  $edge/"
  echo "    entry playlist   $edge/hls/livestream/demo/index.m3u8"
  echo "    embed page       $edge/embed/livestream/demo"
  echo "    call state       $edge/v1/calls/livestream/demo"
  for ((i = 1; i <= relay_count; i++)); do
    printf '  relay %d           http://127.0.0.1:%s/   (pid %s; /metrics)\n' "$i" "${relay_ports[i - 1]}" \
      "$(pid_of "relay $i")"
  done
  echo "  simulated Stream  http://127.0.0.1:$sim_port   (api key sim-key, secret sim-secret; call livestream:demo)"
  echo "  redis             redis://127.0.0.1:$redis_port"
  if [[ $cluster == on ]]; then
    echo "  cluster tier      on: the relays share Redis (HLS_RELAY_CLUSTER__REDIS_URL)"
  else
    echo "  cluster tier      OFF: this hls-relay does not know cluster.redis_url (it refused the key), so the"
    echo "                    relays run without Redis, each alone; they still share the URL key."
  fi
  echo
  echo "Try:"
  echo "  curl -si $edge/hls/livestream/demo/index.m3u8"
  echo "  ffplay $edge/hls/livestream/demo/index.m3u8"
  echo "  tail -f $run_dir/nginx/access.log      # relay=... each URL's relay, cache=HIT|MISS at the edge"
  echo "  kill $(pid_of "relay 1")   # relay 1 dies: its URLs go to the next relay on the ring, playback goes on"
  echo
}

# --check ---------------------------------------------------------------------------------------------------------

passed=0
failures=0
ok() {
  echo "ok    $*"
  passed=$((passed + 1))
}
fail() {
  echo "FAIL  $*" >&2
  failures=$((failures + 1))
}

# The path a playlist reference points at, from the playlist's own path (references are relative).
resolve() {
  local base=$1 ref=${2%%\?*} path seg
  local -a parts out=()
  case $ref in
    http://* | https://*) ref=/${ref#*://*/} ;;
  esac
  if [[ $ref == /* ]]; then path=$ref; else path=${base%/*}/$ref; fi
  IFS=/ read -ra parts <<<"$path"
  for seg in "${parts[@]}"; do
    case $seg in
      "" | .) ;;
      ..) ((${#out[@]})) && unset 'out[-1]' ;;
      *) out+=("$seg") ;;
    esac
  done
  printf '/%s' "${out[@]}"
}
first_uri() { grep -v -e '^#' -e '^[[:space:]]*$' | head -n 1 | tr -d '\r'; }
access_log=$run_dir/nginx/access.log
# fetch PATH [QUERY]: body to $run_dir/body, headers to $run_dir/head, the status to stdout; then waits for the edge
# to log it (nginx writes the line just after the last byte), so that `last_relay` reads this request's line.
fetch() {
  local before i
  before=$(wc -l <"$access_log")
  local url=$edge$1
  # A playlist URL may carry a query already (the viewer session, vs=, when the relays count viewers).
  if [[ -n ${2:-} && $1 == *\?* ]]; then
    url+="&$2"
  elif [[ -n ${2:-} ]]; then
    url+="?$2"
  fi
  curl -sS --max-time 10 -o "$run_dir/body" -D "$run_dir/head" -w '%{http_code}' "$url" || true
  for ((i = 0; i < 50; i++)); do
    (($(wc -l <"$access_log") > before)) && return
    sleep 0.02
  done
}
header() { grep -i "^$1:" "$run_dir/head" | head -n 1 | cut -d: -f2- | tr -d ' \r'; }
# The relay that answered the last request ("-" when the edge's cache did). After a failed try nginx lists every
# relay it tried, "A, B": the last one answered.
last_relay() {
  local tried
  tried=$(tail -n 1 "$access_log" | sed -n 's/.* relay="\([^"]*\)".*/\1/p')
  echo "${tried##*, }"
}

run_check() {
  local status state entry media segment msn owner victim

  state=$(curl -sS --max-time 5 "$edge/v1/calls/livestream/demo")
  if [[ $state == *"\"playlist_url\":\"$edge/hls/livestream/demo/index.m3u8\""* ]]; then
    ok "call state through the edge names the edge's URL (Host passed on)"
  else
    fail "call state: $state"
  fi

  entry=/hls/livestream/demo/index.m3u8
  status=$(fetch "$entry")
  if [[ $status == 200 ]] && head -n 1 "$run_dir/body" | grep -q '^#EXTM3U'; then
    ok "entry playlist: 200, $(wc -c <"$run_dir/body") bytes, edge cache $(header X-Edge-Cache), via $(last_relay)"
  else
    fail "entry playlist: $status"
    return
  fi

  # The entry is a multivariant playlist: follow its first rendition, then that rendition's first segment.
  media=$entry
  if grep -q '^#EXT-X-STREAM-INF' "$run_dir/body"; then
    media=$(resolve "$entry" "$(first_uri <"$run_dir/body")")
    status=$(fetch "$media")
    if [[ $status == 200 ]]; then
      ok "media playlist: 200 ($media), via $(last_relay)"
    else
      fail "media playlist $media: $status"
    fi
  fi
  msn=$(sed -n 's/^#EXT-X-MEDIA-SEQUENCE:\([0-9]*\).*/\1/p' "$run_dir/body")
  segment=$(resolve "$media" "$(first_uri <"$run_dir/body")")

  status=$(fetch "$segment")
  local type size segment_relay
  type=$(header Content-Type)
  size=$(wc -c <"$run_dir/body")
  segment_relay=$(last_relay)
  if [[ $status == 200 && $type == video/* && $size -gt 0 ]]; then
    ok "segment: 200, $type, $size bytes, edge cache $(header X-Edge-Cache), via $segment_relay"
  else
    fail "segment $segment: $status $type $size bytes"
  fi
  status=$(fetch "$segment")
  if [[ $status == 200 && $(header X-Edge-Cache) == HIT ]]; then
    ok "segment again: served from the edge's cache (HIT)"
  else
    fail "segment again: $status, edge cache $(header X-Edge-Cache)"
  fi
  # Another cache key (the query is in it) but the same relay (the ring hashes the path only).
  status=$(fetch "$segment" "token=anything")
  if [[ $status == 200 && $(last_relay) == "$segment_relay" ]]; then
    ok "segment with a query: a miss at the edge, answered by the same relay $segment_relay"
  else
    fail "segment with a query: $status, relay $(last_relay) (the segment's: $segment_relay)"
  fi

  # A blocking reload the playlist already satisfies: answered at once, through the lock-free @ll_hls path with
  # the request line intact (the relay checks the signature of the raw path).
  status=$(fetch "$media" "_HLS_msn=$msn")
  if [[ $status == 200 ]]; then
    ok "blocking reload (_HLS_msn=$msn): 200, edge cache $(header X-Edge-Cache)"
  else
    fail "blocking reload: $status $(head -c 200 "$run_dir/body")"
  fi

  # That reload was a miss at the edge (a new key), so it names the relay that owns the media playlist.
  owner=$(last_relay)
  local events
  events=$(curl -sN --max-time 2 "$edge/v1/calls/livestream/demo/events" || true)
  if [[ $events == *"event: state"* || $events == *'"broadcasting":true'* ]]; then
    ok "SSE through the edge: the state event arrives unbuffered"
  else
    fail "SSE: ${events:0:200}"
  fi

  # The relay that owns the media playlist dies: once the edge's copy is stale (max-age: 1 s here), the next
  # relay on the ring answers.
  for ((i = 1; i <= relay_count; i++)); do
    [[ 127.0.0.1:${relay_ports[i - 1]} == "$owner" ]] && victim="relay $i"
  done
  if [[ -z ${victim:-} ]]; then
    fail "which relay served $media: '$owner'"
    return
  fi
  kill "$(pid_of "$victim")"
  wait "$(pid_of "$victim")" 2>/dev/null || true
  sleep 2.5
  status=$(fetch "$media")
  local now_by
  now_by=$(last_relay)
  if [[ $status == 200 && -n $now_by && $now_by != "$owner" ]]; then
    ok "$victim ($owner) killed: its media playlist now from $now_by, edge cache $(header X-Edge-Cache)"
  else
    fail "after killing $victim: $status from '$now_by', edge cache $(header X-Edge-Cache)"
  fi
}

print_fleet
if [[ $mode == check ]]; then
  run_check
  echo "(cluster tier $cluster)"
  echo "fleet: $passed passed, $failures failed"
  ((failures)) && exit 1
  keep_logs=0
  exit 0
fi
echo "Ctrl-C stops everything."
while :; do
  sleep 1
done
