#!/usr/bin/env bash
# Run a federated cycle; if it dies (for example a Ray worker crash on a loaded machine), say so
# plainly and run it once more without --restart, so it resumes from the checkpoint of its last
# finished round. A second failure stops the pipeline with the command's own exit status.
set -uo pipefail
"$@"
status=$?
[ "$status" -eq 0 ] && exit 0
echo "resume_on_crash: '$1 ${*:2:2}' died with exit status $status; retrying once, resuming" \
  "from the last round's checkpoint (a resumed run's numbers can differ: the hospitals'" \
  "optimiser moments restart)" >&2
args=()
for a in "$@"; do [ "$a" = "--restart" ] || args+=("$a"); done
"${args[@]}"
