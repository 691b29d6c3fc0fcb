#!/usr/bin/env bash
# Pretrains the toy base model on a lent GPU machine in one command (see README.md here):
# two corpus writers on its CPUs (stage 0 first, so the GPU starts early), the PyTorch trainer
# on its GPU. Results land in $OUT: weights.safetensors, best.safetensors, log.jsonl and the
# writers' logs. Import them here with `concepts base import --weights …`.
set -uo pipefail
BIN=${BIN:-.gpu/concepts}
OUT=${OUT:-/tmp/toy-gpu-out}
WORK=${WORK:-/tmp/toy-gpu}
STAGE0=${STAGE0:-120000}
STAGE1=${STAGE1:-900000}
STAGE1_SECONDS=${STAGE1_SECONDS:-230}
DEADLINE=${DEADLINE:-540}
mkdir -p "$WORK" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$BIN" base export-corpus --out "$WORK/c0" --stage0 "$STAGE0" --stage1 4000 --threads 6 >"$OUT/corpus0.log" 2>&1 &
"$BIN" base export-corpus --out "$WORK/c1" --stage0 16 --stage1 "$STAGE1" --threads 10 >"$OUT/corpus1.log" 2>&1 &
PYTHONUNBUFFERED=1 python3 tools/toy_gpu/train.py --corpus0 "$WORK/c0" --corpus1 "$WORK/c1" --out "$OUT" \
  --stage1-seconds "$STAGE1_SECONDS" --deadline-seconds "$DEADLINE" "$@" 2>&1 | tee "$OUT/train.log"
status=$?
cat "$OUT/corpus0.log" "$OUT/corpus1.log"
exit $status
