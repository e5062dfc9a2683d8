#!/usr/bin/env bash
# The main job end to end on the synthetic phantom (see README): the DVC pipeline, then a look
# at what each role has. Run through `make demo`, which installs first.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/pipeline

echo "== dvc repro: phantom → lock-testset → ingest per site"
dvc repro

echo
echo "== vendor: the locked test set is intact"
sonofed vendor verify-testset "$RUNS/locked"

for site in site-a site-b site-c; do
  echo
  echo "== hospital $site: registry status"
  sonofed hospital status --registry "$RUNS/registries/$site"
done
echo
echo "Outputs are under $RUNS/ (registries, locked test set, ingest summaries)."
