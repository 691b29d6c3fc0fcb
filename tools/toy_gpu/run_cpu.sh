#!/usr/bin/env bash
# Pretrains the toy base model from scratch on this machine's CPUs, in the background, resumably:
# run it again with the same settings and it continues where it stopped (the corpus is written
# once; the trainer continues from $WORK/run/state.pt). Meant for hours on 2 cores at low priority
# (nice 19), beside normal work. 24 000 stage-1 steps × 128 (3.1 M samples, about the GPU
# recipe's 3.5 M; the 12 000 of the first run fell short of the gate, docs/evaluation.md). Results land in $WORK/run: weights.safetensors,
# best.safetensors, log.jsonl. Import with `concepts base import --weights $WORK/run/best.safetensors …`.
set -euo pipefail
BIN=${BIN:-target/release/concepts}
WORK=${WORK:-/work/toy-cpu}
PY=${PY:-python3}
STAGE0=${STAGE0:-120000}
STAGE1=${STAGE1:-600000}
THREADS=${THREADS:-2}
mkdir -p "$WORK"
# A fresh machine keeps only the repository: continue from the state kept on the git ref
# refs/toy-retrain/state (written by tools/toy_gpu/keep_state.sh) when $WORK has none.
# Without that ref (a fresh clone), from the newest state keep_state.sh ON_BRANCH=1 merged into
# the checked-out branch (the merge's second parent).
kept=$(git rev-parse -q --verify refs/toy-retrain/state || true)
if [ -z "$kept" ]; then
  merge=$(git log --merges -1 --format=%H --grep='^toy retrain state kept on the branch' HEAD || true)
  [ -n "$merge" ] && kept=$(git rev-parse "$merge^2")
fi
if [ ! -f "$WORK/run/state.pt" ] && [ -n "$kept" ]; then
  mkdir -p "$WORK/run"
  git show "$kept:state.pt" > "$WORK/run/state.pt.partial"
  git show "$kept:log.jsonl" > "$WORK/run/log.jsonl"
  mv "$WORK/run/state.pt.partial" "$WORK/run/state.pt"
fi
if [ ! -f "$WORK/c/corpus.json" ]; then
  rm -rf "$WORK/c.partial"
  "$BIN" base export-corpus --out "$WORK/c.partial" --stage0 "$STAGE0" --stage1 "$STAGE1" --threads "$THREADS"
  mv "$WORK/c.partial" "$WORK/c"
fi
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="$THREADS"
exec "$PY" tools/toy_gpu/train.py --corpus0 "$WORK/c" --out "$WORK/run" --device cpu \
  --stage0-steps 3000 --stage0-batch 128 --stage1-steps 24000 --batch 128 --lr 1.5e-3 \
  --eval-every 1000 --holdout 2000 --checkpoint-minutes 10 "$@"
