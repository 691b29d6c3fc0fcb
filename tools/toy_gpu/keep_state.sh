#!/usr/bin/env bash
# Keeps the CPU retrain's resumable state (tools/toy_gpu/run_cpu.sh) in this repository's object
# store, on the ref refs/toy-retrain/state, outside every branch: a session may start on a fresh
# machine where only the repository survives. run_cpu.sh continues from it when $WORK has no
# state. Each call replaces the ref (the previous state becomes garbage for `git gc`).
set -euo pipefail
WORK=${WORK:-/work/toy-cpu}
state="$WORK/run/state.pt"
log="$WORK/run/log.jsonl"
[ -f "$state" ] || { echo "keep_state: no $state" >&2; exit 1; }
blob=$(git hash-object -w "$state")
logblob=$(git hash-object -w "$log")
tree=$(printf '100644 blob %s\tstate.pt\n100644 blob %s\tlog.jsonl\n' "$blob" "$logblob" | git mktree)
last=$(tail -n 1 "$log")
commit=$(git commit-tree "$tree" -m "toy base retrain state: $last")
git update-ref refs/toy-retrain/state "$commit"
echo "refs/toy-retrain/state -> $commit ($(du -h "$state" | cut -f1) state; last log line: $last)"
