#!/usr/bin/env bash
# Deployed rounds under homomorphic aggregation, timed against plain and
# SecAgg+ rounds: the bundled heart plan (4 participants on 127.0.0.1, site
# metrics clear) for 30 rounds, synchronous; the homomorphic runs with key
# holders Cleveland and VA. Prints each run's wall seconds (from the
# coordinator's start to its exit, agreement and final evaluation included)
# and what VA's participant counted. Run from the repository root:
#   TESSERA=target/release/tessera deploy/drills/homomorphic.sh
# With HIDDEN=62500 ROUNDS=3 the model is an MLP of one hidden layer of
# that width (1,000,002 parameters), for that many rounds.
set -euo pipefail
T="$(realpath "${TESSERA:-target/release/tessera}")"
root="$(realpath .)"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rounds="${ROUNDS:-30}"
base="$(sed -e "s#\"../data/#\"$root/data/#" -e "s/^rounds = 15\$/rounds = $rounds/" \
  "$root/examples/fed-heart-disease.toml")"
if [ -n "${HIDDEN:-}" ]; then
  base="$(echo "$base" | sed "s/^kind = \"logistic\"\$/kind = \"mlp\"\nhidden = [$HIDDEN]/")"
fi
plan() { # NAME SCHEME (none, secagg_plus or homomorphic)
  echo "$base" > "$1.toml"
  printf '\n[privacy]\nsite_metrics = "clear"\n' >> "$1.toml"
  case "$2" in
    secagg_plus) printf '[secure_aggregation]\nenabled = true\n' >> "$1.toml" ;;
    homomorphic) printf '[secure_aggregation]\nenabled = true\nscheme = "homomorphic"\nkey_holders = ["cleveland", "va"]\n' >> "$1.toml" ;;
  esac
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
  printf '%-12s %6.2f s   va: %s\n' "$1" "$(echo "$end - $start" | bc)" \
    "$(grep -o 'done: [0-9]* updates accepted' "$1.va.log")"
  rm -f "$1.sqlite"*
}
plan plain none
plan secagg secagg_plus
plan homomorphic homomorphic
for _ in 1 2; do
  for name in plain secagg homomorphic; do run "$name"; done
done
