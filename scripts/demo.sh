#!/usr/bin/env bash
# The main job end to end on the synthetic phantom (see README): the DVC pipeline
# (phantom → lock-testset → ingest → federate → validate → release → publish), then a console
# that pulls the signed release over HTTP, verifies, installs and analyses sample images.
# Run through `make demo`, which installs first.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/pipeline

echo "== dvc repro: phantom → lock-testset → ingest per site → federate"
dvc repro federate

echo
echo "== vendor: the locked test set is intact"
sonofed vendor verify-testset "$RUNS/locked"
for site in site-a site-b site-c; do
  echo
  echo "== hospital $site: registry status"
  sonofed hospital status --registry "$RUNS/registries/$site"
done

echo
echo "== dvc repro: validate (release gates) → release → publish"
if ! dvc repro publish; then
  echo
  echo "== NO RELEASE: the candidate failed the declared gates (nothing was signed or published)"
  cat "$RUNS/gates/gate-report.md"
  echo
  echo "== console: analyse sample images with the UNRELEASED candidate (for inspection only)"
  python scripts/demo_cases.py "$RUNS" > /dev/null
  sonofed console analyze --model "$RUNS/candidate" --manifest "$RUNS/console-cases.csv" \
    --out "$RUNS/console-results.jsonl"
  echo "Candidate reports: $RUNS/console-results/<case>/report.html ($RUNS/console-results.jsonl)"
  echo "The gates refused this candidate, so no update was served to the console (see README)."
  exit 0
fi
cat "$RUNS/gates/gate-report.md"

echo
echo "== vendor: serve the update repository on a free loopback port"
sonofed vendor serve --repo "$RUNS/repo" --port 0 --access-log "$RUNS/update-access.log" > "$RUNS/serve.out" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "^serving" "$RUNS/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^serving .* at \(http[^ ]*\)\/ .*/\1/p' "$RUNS/serve.out")
echo "update server at $URL"

echo
echo "== console: provision with the repository's root, pull, verify, self-test, install"
rm -rf "$RUNS/console"
sonofed console provision --root "$RUNS/repo/metadata/root.json" --console-id demo-console-1 --dir "$RUNS/console"
sonofed console update --server "$URL" --dir "$RUNS/console" --json
sonofed console status --dir "$RUNS/console"

echo
echo "== console: analyse sample images with the installed model"
python scripts/demo_cases.py "$RUNS" > /dev/null
sonofed console analyze --dir "$RUNS/console" --manifest "$RUNS/console-cases.csv" --out "$RUNS/console-results.jsonl"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; trap - EXIT

echo
echo "Reports:"
echo "  release gates:     $RUNS/gates/gate-report.md (json beside it)"
echo "  model card:        $RUNS/release/model-card.html"
echo "  console reports:   $RUNS/console-results/<case>/report.html ($RUNS/console-results.jsonl)"
echo "  update access log: $RUNS/update-access.log"
