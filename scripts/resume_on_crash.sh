#!/usr/bin/env bash
# Run a federated cycle; if it dies (for example Ray failing to start or a worker crashing on a
# loaded machine), say so plainly and run it once more without --restart, so it resumes from
# the checkpoint of its last finished round. A run that has printed its error but hangs in
# Ray's or Flower's shutdown (seen under load 27 on 2 cores) is killed, with its Ray processes,
# 30 s after the error. A second failure stops the pipeline with the command's own status.
set -uo pipefail

run_once() {
  local err out pid status
  err=$(mktemp)
  out=$(mktemp)
  setsid "$@" >"$out" 2> >(tee "$err" >&2) &
  pid=$!
  trap 'kill -TERM -- "-$pid" 2>/dev/null' INT TERM
  local since=""
  while kill -0 "$pid" 2>/dev/null; do
    if [ -z "$since" ] && grep -q '^sonofed: error:' "$err"; then since=$SECONDS; fi
    if [ -n "$since" ] && [ $((SECONDS - since)) -ge 30 ]; then
      echo "resume_on_crash: the run reported its error but did not exit; killing it" >&2
      kill -KILL -- "-$pid" 2>/dev/null
    fi
    sleep 1
  done
  wait "$pid"
  status=$?
  kill -KILL -- "-$pid" 2>/dev/null # Ray processes left behind by a crash
  trap - INT TERM
  [ "$status" -eq 0 ] && cat "$out" # only the attempt that succeeded speaks on stdout
  rm -f "$err" "$out"
  return "$status"
}

run_once "$@" && exit 0
status=$?
echo "resume_on_crash: '$1 ${*:2:2}' failed with exit status $status; retrying once, resuming" \
  "from the last round's checkpoint (a resumed run's numbers can differ: the hospitals'" \
  "optimiser moments restart)" >&2
sleep 5
args=()
for a in "$@"; do [ "$a" = "--restart" ] || args+=("$a"); done
run_once "${args[@]}"
