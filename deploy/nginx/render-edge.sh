#!/usr/bin/env bash
# Renders deploy/nginx/edge.conf for a listen address and a list of relays, on stdout:
#   deploy/nginx/render-edge.sh LISTEN RELAY...      e.g.  render-edge.sh 127.0.0.1:8000 127.0.0.1:8081 127.0.0.1:8082
# Every template line holding @RELAY@ is written once per relay, so per-server parameters stay in edge.conf.
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 LISTEN RELAY..." >&2
  exit 2
fi
# Addresses are written into nginx's config as they are: refuse anything that could end a directive.
address='^[][A-Za-z0-9.:_-]+$'
for arg in "$@"; do
  if [[ ! $arg =~ $address ]]; then
    echo "$0: not a host:port: $arg" >&2
    exit 2
  fi
done
listen=$1
shift

awk -v listen="$listen" -v relays="$*" '
  BEGIN { n = split(relays, relay, " ") }
  /@RELAY@/ {
    for (i = 1; i <= n; i++) { line = $0; gsub(/@RELAY@/, relay[i], line); print line }
    next
  }
  { gsub(/@LISTEN@/, listen); print }
' "$(dirname "$0")/edge.conf"
