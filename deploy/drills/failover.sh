#!/usr/bin/env bash
# The failover drill, timed: two coordinators on one PostgreSQL database,
# four participants given both URLs (VA pausing 1.5 s before each update),
# the leader killed with SIGKILL once round 3 holds three stored updates.
# Prints the time from the kill to the standby listening, and to the run's
# end. Run from the repository root:
#   TESSERA=target/release/tessera POSTGRES_URL=postgres://USER@HOST:PORT/postgres \
#     deploy/drills/failover.sh
# (POSTGRES_URL: a role that may create databases; `.ci/postgres` starts one.)
set -euo pipefail
T="$(realpath "${TESSERA:-target/release/tessera}")"
admin="${POSTGRES_URL:?give POSTGRES_URL, a database URL whose role may create databases}"
examples="$(realpath examples)"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
psql -q "$admin" -c "DROP DATABASE IF EXISTS tessera_failover_drill WITH (FORCE)" \
  -c "CREATE DATABASE tessera_failover_drill"
db="${admin%/*}/tessera_failover_drill"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
a="$(free_port)"; b="$(free_port)"
plan="$examples/fed-heart-disease.toml"
"$T" coordinator --plan "$plan" --db "$db" --listen "127.0.0.1:$a" --insecure > leader.log 2>&1 &
leader=$!
until grep -q "listening on" leader.log; do sleep 0.05; done
"$T" coordinator --plan "$plan" --db "$db" --listen "127.0.0.1:$b" --insecure \
  --report drill.json > standby.log 2>&1 &
standby=$!
until grep -q "standby" standby.log; do sleep 0.05; done
for site in cleveland hungarian switzerland va; do
  pause=()
  [ "$site" = va ] && pause=(--pause-before-update 1.5)
  "$T" participant --coordinator "http://127.0.0.1:$a,http://127.0.0.1:$b" --site "$site" \
    --insecure --plan-dir "$examples" "${pause[@]}" > "$site.log" 2>&1 &
done
stored() {
  "$T" status --db "$db" --json 2>/dev/null |
    python3 -c 'import json,sys; print(sum(u["round"] == 3 for u in json.load(sys.stdin)["pending_updates"]))' 2>/dev/null ||
    echo 0
}
until [ "$(stored)" = 3 ]; do sleep 0.05; done
killed=$(date +%s.%N)
kill -9 "$leader"
until grep -q "listening on" standby.log; do sleep 0.01; done
listening=$(date +%s.%N)
wait "$standby"
ended=$(date +%s.%N)
wait
python3 -c "print(f'kill to the standby listening: {$listening - $killed:.3f} s; kill to the run\'s end: {$ended - $killed:.1f} s')"
grep -h "leading on\|resumed" standby.log | sed 's/^[^ ]* *//'
# (The byte-for-byte comparison of the models is the test `deploy --
# failover`; here, the final figures of the run and of its simulation.)
"$T" simulate -q --plan "$plan" --report sim.json --plot sim.svg
python3 - <<'PY'
import json
drill, sim = (json.load(open(f))["final"] for f in ("drill.json", "sim.json"))
same = all(drill[k] == sim[k] for k in ("accuracy", "loss", "auc"))
print(f"final loss {drill['loss']!r} (simulation {sim['loss']!r}): {'the same' if same else 'DIFFERENT'}")
raise SystemExit(0 if same else 1)
PY
