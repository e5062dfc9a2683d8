#!/usr/bin/env bash
# The main job end to end on the synthetic phantom (see README), in two release cycles:
#   1. three hospitals ingest their exports; the vendor locks its test set;
#   2. cycle 0 trains from scratch (one line per federated round), passes the gates and becomes
#      release 1.0.0: signed, published and served on loopback;
#   3. a console provisions, pulls, verifies, self-tests and installs 1.0.0, and analyses lesions;
#   4. each hospital ingests newly confirmed cases of new patients (a new registry version);
#   5. cycle 1 continues from 1.0.0 on what is new since it plus rehearsal, gated against 1.0.0;
#   6. it becomes 1.1.0, published with a staged rollout that covers the demo console;
#   7. the console updates 1.0.0 -> 1.1.0 (keeping 1.0.0 in its other slot) and analyses again.
# Every step is a DVC stage (dvc.yaml) or a console command. Run through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/pipeline
CONSOLE="$RUNS/console"
CONSOLE_ID=demo-console # rollout bucket 19: inside the 25 % staged rollout of 1.1.0
SITES=(site-a site-b site-c)
START=$SECONDS
# registry versions and the locked set carry this time instead of the clock's, so two fresh clones
# seal the same set (reproducible-builds convention; data_registry/clock.py)
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1767225600)}"

step() {
  local t=$((SECONDS - START))
  printf '\n== [%d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"
}

param() { python -c "import yaml,sys; d=yaml.safe_load(open('params.yaml'))
for k in sys.argv[1].split('.'): d=d[k]
print(d)" "$1"; }

# dvc repro TARGET, with one line per federated round read from the run's history as it grows;
# Flower's and Ray's own chatter goes to RUNS/LOG (printed if the stage fails).
repro_federation() {
  local target=$1 history=$2 rounds=$3 log="$RUNS/$4"
  mkdir -p "$(dirname "$log")"
  dvc repro "$target" 2>"$log" &
  local pid=$!
  python scripts/demo_rounds.py "$history" "$pid" "$rounds"
  if ! wait "$pid"; then
    tail -n 40 "$log"
    echo "== STOPPED: dvc repro $target failed (log: $log)"
    exit 1
  fi
}

gated_publish() {
  local target=$1 gates=$2 version=$3
  if ! dvc repro "$target"; then
    echo
    if [ -f "$gates/gate-report.md" ]; then cat "$gates/gate-report.md"; fi
    echo "== NO RELEASE $version: the candidate did not pass the declared gates, so nothing was"
    echo "   signed or published and the console keeps what it has. The demo stops here."
    exit 1
  fi
  cat "$gates/gate-report.md"
}

analyse() {
  local version=$1
  python scripts/demo_cases.py "$RUNS" >/dev/null
  sonofed console analyze --dir "$CONSOLE" --manifest "$RUNS/console-cases.csv" \
    --out "$RUNS/console-results-$version.jsonl"
  python scripts/demo_cases.py "$RUNS" --show "$RUNS/console-results-$version.jsonl"
}

step "1. three hospitals ingest their exports; the vendor locks its test set (dvc repro)"
dvc repro lock-testset ingest
sonofed vendor verify-testset "$RUNS/locked"
python scripts/bayes_ceiling.py "$RUNS/phantom" "$RUNS/locked"
for site in "${SITES[@]}"; do sonofed hospital status --registry "$RUNS/registries/$site"; done

step "2. cycle 0: federated training from scratch, scored on the locked set every round"
repro_federation federate "$RUNS/federate-run/history.json" "$(param federate.rounds)" federate.log

step "2. cycle 0: release gates (first release: absolute floors) -> release 1.0.0 -> publish"
gated_publish publish "$RUNS/gates" 1.0.0

step "2. the vendor serves the signed update repository on a free loopback port"
sonofed vendor serve --repo "$RUNS/repo" --port 0 --access-log "$RUNS/update-access.log" \
  >"$RUNS/serve.out" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "^serving" "$RUNS/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^serving .* at \(http[^ ]*\)\/ .*/\1/p' "$RUNS/serve.out")
echo "update server at $URL"

step "3. console $CONSOLE_ID: provision, pull, verify, self-test, install 1.0.0"
rm -rf "$CONSOLE"
sonofed console provision --root "$RUNS/repo/metadata/root.json" --console-id "$CONSOLE_ID" \
  --dir "$CONSOLE"
sonofed console update --server "$URL" --dir "$CONSOLE"
sonofed console status --dir "$CONSOLE"

step "3. console: analyse five clicked lesions with 1.0.0"
analyse 1.0.0

step "4. each hospital ingests newly confirmed cases of new patients (registry version 2)"
dvc repro ingest-batch2
for site in "${SITES[@]}"; do sonofed hospital status --registry "$RUNS/cycle1/registries/$site"; done

step "5. cycle 1: continue from 1.0.0 on the cases new since it, plus rehearsal"
repro_federation federate-cycle1 "$RUNS/cycle1/federate-run/history.json" \
  "$(param pipeline.cycle1.rounds)" cycle1/federate.log

step "5. cycle 1: release gates against 1.0.0 -> release 1.1.0 -> publish (staged rollout)"
gated_publish publish-cycle1 "$RUNS/cycle1/gates" 1.1.0

step "6-7. console: update 1.0.0 -> 1.1.0 (1.0.0 stays in the other slot), analyse again"
sonofed console update --server "$URL" --dir "$CONSOLE"
analyse 1.1.0
kill "$SERVER"
wait "$SERVER" 2>/dev/null || true
trap - EXIT
sonofed console status --dir "$CONSOLE" --json

step "summary"
python scripts/demo_summary.py "$RUNS"
t=$((SECONDS - START))
printf 'Demo finished in %d min %02d s (after install).\n' $((t / 60)) $((t % 60))
