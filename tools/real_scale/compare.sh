#!/usr/bin/env bash
# The runtime against transformers on one checkpoint, same dtype, same thread count, in
# alternating rounds (which side goes first alternates), each run after reading the weight
# files once so both start with them in the page cache. Prints per-round ratios and the
# median of each measurement. Issue #17's 7B-width comparison:
#
#   python tools/real_scale/make_checkpoint.py --out /tmp/llava7b-2l --text-layers 2 --dtype float32
#   tools/real_scale/compare.sh /tmp/llava7b-2l runtime/tests/fixtures/parity/images/logo.png /tmp/cmp
#
#   tools/real_scale/compare.sh CHECKPOINT IMAGE OUT [ROUNDS=3] [THREADS=2] [DTYPE=f32]
#
# Run it with nothing else on the machine; it records the load average around each run.
set -euo pipefail
ckpt=$1 image=$2 out=$3 rounds=${4:-3} threads=${5:-2} dtype=${6:-f32}
repo=$(cd "$(dirname "$0")/../.." && pwd)
py=${PY:-python3}
case $dtype in
  f32) torch_dtype=float32 ;;
  f16) torch_dtype=float16 ;;
  bf16) torch_dtype=bfloat16 ;;
  *) echo "dtype f32, f16 or bf16, not $dtype" >&2; exit 2 ;;
esac
mkdir -p "$out"
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OMP_WAIT_POLICY=PASSIVE
cd "$repo"
if [ -z "${BENCH_BIN:-}" ]; then
  cargo bench -p concepts-runtime --bench real_scale --no-run
  BENCH_BIN=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/real_scale-* | grep -v '\.d$' | head -1)
fi
warm() { cat "$ckpt"/*.safetensors > /dev/null; }
runtime() {
  warm
  "$BENCH_BIN" --model "$ckpt" --image "$image" --dtype "$dtype" > "$out/concepts-r$1.json"
}
reference() {
  warm
  "$py" tools/real_scale/bench_transformers.py --model "$ckpt" --image "$image" \
    --dtype "$torch_dtype" --threads "$threads" > "$out/transformers-r$1.json" 2>/dev/null
}
{
  echo "date: $(date -Iseconds)"
  echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cpus"
  echo "git: $(git rev-parse --short HEAD) ($(git status --porcelain | wc -l) paths modified)"
  echo "checkpoint: $ckpt ($(du -sh "$ckpt" | cut -f1)), dtype $dtype, threads $threads, rounds $rounds"
} | tee "$out/env.txt"
for r in $(seq 1 "$rounds"); do
  echo "round $r: load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/env.txt"
  if [ $((r % 2)) -eq 1 ]; then runtime "$r"; reference "$r"; else reference "$r"; runtime "$r"; fi
done
echo "after: load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/env.txt"
"$py" - "$out" "$rounds" <<'PY'
import json, pathlib, statistics, sys
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
runs = {side: [json.loads((out / f"{side}-r{r}.json").read_text()) for r in range(1, rounds + 1)]
        for side in ["concepts", "transformers"]}
# Seconds (lower is better) and rates (higher is better); ratio > 1: the runtime is faster.
rows = [("load s", "load_s", False), ("vision tower + projector s", "image_s", False),
        ("prefill s (image prompt → first token)", "prefill_s", False),
        ("prefill minus the vision tower s", None, False), ("decode tokens/s", "decode_tokens_per_s", True)]
def value(run, key):
    return run["prefill_s"] - run["image_s"] if key is None else run[key]
same = all(a["ids"] == b["ids"] for a, b in zip(runs["concepts"], runs["transformers"]))
print(f"\npositions {runs['concepts'][0]['prompt_positions']}; same greedy ids: {same}; "
      f"peak RSS GB: concepts {max(r['peak_rss_bytes'] for r in runs['concepts']) / 1e9:.2f}, "
      f"transformers {max(r['peak_rss_bytes'] for r in runs['transformers']) / 1e9:.2f}\n")
print("| measurement | concepts (median) | transformers (median) | ratio of medians | per-round ratios |")
print("|---|---:|---:|---:|---|")
for name, key, higher in rows:
    a = [value(r, key) for r in runs["concepts"]]
    b = [value(r, key) for r in runs["transformers"]]
    ratio = lambda x, y: x / y if higher else y / x
    per = ", ".join(f"{ratio(x, y):.2f}" for x, y in zip(a, b))
    print(f"| {name} | {statistics.median(a):.3f} | {statistics.median(b):.3f} | "
          f"**{ratio(statistics.median(a), statistics.median(b)):.2f}×** | {per} |")
PY
