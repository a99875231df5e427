#!/usr/bin/env bash
# Offline checks of deploy/: the nginx edge config, rendered for three relays, passes `nginx -t`; every Kubernetes
# manifest validates (kubernetes-validate, strict, against the oldest and newest Kubernetes the manifests claim);
# kustomization.yaml lists every manifest and builds. With --fleet BIN, also runs scripts/fleet.sh --check with that
# hls-relay binary (Redis, simulator, three relays, the edge, requests through it).
#   deploy/check.sh [--fleet BIN]
set -euo pipefail
cd "$(dirname "$0")/.."

fleet_bin=
case "${1:-}" in
  "") ;;
  --fleet) fleet_bin=${2:?--fleet needs the hls-relay binary} ;;
  *) echo "usage: $0 [--fleet BIN]" >&2; exit 2 ;;
esac
# Kubernetes versions the manifests must be valid for: 1.30 is the oldest whose APIs they use as written
# (autoscaling/v2 behaviour, policy/v1), 1.37 the newest the validator knows.
kubernetes_versions=(1.30.0 1.37.0)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "deploy: nginx -t on deploy/nginx/edge.conf (3 relays)"
nginx=$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx) || { echo "deploy/check.sh: nginx is needed" >&2; exit 1; }
mkdir "$tmp/edge"
deploy/nginx/render-edge.sh 127.0.0.1:18080 127.0.0.1:18081 127.0.0.1:18082 127.0.0.1:18083 >"$tmp/edge/edge.conf"
"$nginx" -t -q -p "$tmp/edge/" -c "$tmp/edge/edge.conf" -e "$tmp/edge/error.log"

echo "deploy: kubernetes-validate on deploy/kubernetes"
validator="${XDG_CACHE_HOME:-$HOME/.cache}/hls-relay/check-$(sha256sum deploy/check-requirements.txt | cut -c1-16)"
if [[ ! -d $validator ]]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$validator.partial" \
    -r deploy/check-requirements.txt
  mv "$validator.partial" "$validator"
fi
validate() { PYTHONPATH="$validator" python3 -m kubernetes_validate --strict --quiet "$@"; }
manifests=()
for file in deploy/kubernetes/*.yaml; do
  [[ $file == */kustomization.yaml ]] || manifests+=("$file")
done
for version in "${kubernetes_versions[@]}"; do
  validate -k "$version" "${manifests[@]}"
done

# Secrets stay out of the kustomization on purpose (secrets.example.yaml says why); everything else is in it.
for file in "${manifests[@]}"; do
  name=${file##*/}
  [[ $name == secrets.example.yaml ]] && continue
  grep -qx "  - $name" deploy/kubernetes/kustomization.yaml ||
    { echo "deploy/kubernetes/kustomization.yaml does not list $name" >&2; exit 1; }
done
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/kubernetes >"$tmp/rendered.yaml"
  validate -k "${kubernetes_versions[-1]}" "$tmp/rendered.yaml"
else
  echo "deploy: kubectl not found: the kustomization's build is not checked"
fi

if [[ -n $fleet_bin ]]; then
  # The ConfigMap's TOML must load in the relay (unknown or misspelt keys stop start-up).
  echo "deploy: the relay starts with deploy/kubernetes/configmap.yaml's config"
  PYTHONPATH="$validator" python3 -c 'import sys, yaml
sys.stdout.write(yaml.safe_load(open(sys.argv[1]))["data"]["hls-relay.toml"])' \
    deploy/kubernetes/configmap.yaml >"$tmp/hls-relay.toml"
  : >"$tmp/relay.log"
  STREAM_API_KEY=key STREAM_API_SECRET=secret HLS_RELAY_SERVER__URL_KEY=check-url-key-0123456789 \
    "$fleet_bin" serve --config "$tmp/hls-relay.toml" --listen 127.0.0.1:0 >"$tmp/relay.log" 2>&1 &
  relay=$!
  for ((i = 0; i < 100; i++)); do
    grep -q "hls-relay listening" "$tmp/relay.log" && break
    kill -0 "$relay" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "hls-relay listening" "$tmp/relay.log"; then
    cat "$tmp/relay.log" >&2
    exit 1
  fi
  kill "$relay"
  wait "$relay" || true

  echo "deploy: scripts/fleet.sh --check"
  HLS_RELAY_BIN=$fleet_bin scripts/fleet.sh --check
fi
echo "deploy: checks passed"
