#!/usr/bin/env bash
# Deployed rounds against secure asynchronous buffers, timed: the bundled
# heart plan (4 participants on 127.0.0.1, site metrics clear) for 30 rounds
# or steps, synchronous and asynchronous (buffer_size = 4), each plain and
# under secure aggregation. Prints each run's wall seconds (from the
# coordinator's start to its exit, agreement and final evaluation included)
# and what VA's participant counted. Run from the repository root:
#   TESSERA=target/release/tessera deploy/drills/secure-buffers.sh
set -euo pipefail
T="$(realpath "${TESSERA:-target/release/tessera}")"
root="$(realpath .)"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
base="$(sed -e "s#\"../data/#\"$root/data/#" -e 's/^rounds = 15$/rounds = 30/' \
  "$root/examples/fed-heart-disease.toml")"
plan() { # NAME MODE SECURE
  local extra=""
  [ "$2" = async ] && extra='mode = "async"\nbuffer_size = 4'
  echo "$base" | sed "s/^strategy = \"fedavg\"$/strategy = \"fedavg\"\n$extra/" > "$1.toml"
  printf '\n[privacy]\nsite_metrics = "clear"\n' >> "$1.toml"
  if [ "$3" = 1 ]; then printf '[secure_aggregation]\nenabled = true\n' >> "$1.toml"; fi
}
run() { # NAME
  local port start end
  port="$(free_port)"
  start="$(date +%s.%N)"
  "$T" coordinator --plan "$1.toml" --db "$1.sqlite" --listen "127.0.0.1:$port" --insecure \
    > "$1.coordinator.log" 2>&1 &
  local coordinator=$!
  for site in cleveland hungarian switzerland va; do
    "$T" participant --coordinator "http://127.0.0.1:$port" --site "$site" \
      --data "$root/data/uci-heart-disease/processed.$site.data" --plan-dir "$root" \
      --insecure --give-up-after 60 > "$1.$site.log" 2>&1 &
  done
  wait "$coordinator"
  wait
  end="$(date +%s.%N)"
  printf '%-13s %6.2f s   va: %s\n' "$1" "$(echo "$end - $start" | bc)" \
    "$(grep -o 'done: [0-9]* updates accepted' "$1.va.log")"
  rm -f "$1.sqlite"*
}
plan sync-plain sync 0
plan sync-secure sync 1
plan async-plain async 0
plan async-secure async 1
for _ in 1 2; do
  for name in sync-plain sync-secure async-plain async-secure; do run "$name"; done
done
