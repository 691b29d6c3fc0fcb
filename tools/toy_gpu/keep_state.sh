#!/usr/bin/env bash
# Keeps the CPU retrain's resumable state (tools/toy_gpu/run_cpu.sh) in this repository's object
# store, on the ref refs/toy-retrain/state: a session may start on a fresh machine where only the
# repository survives. run_cpu.sh continues from it when $WORK has no state. Each call replaces
# the ref. A fresh machine gets only what the main branch reaches, not other refs, so with
# ON_BRANCH=1 the state commit is also merged into the checked-out branch with the `ours`
# strategy: the branch's files do not change, its history reaches the state (about 14 MB a
# call, kept for good), and run_cpu.sh finds the newest such merge when the ref is gone.
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
if [ "${ON_BRANCH:-0}" = 1 ]; then
  git merge -q -s ours --allow-unrelated-histories --no-edit -m "toy retrain state kept on the branch: $last" "$commit"
  echo "merged into $(git rev-parse --abbrev-ref HEAD) (files unchanged)"
fi
