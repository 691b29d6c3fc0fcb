#!/usr/bin/env bash
# Real-scale side-by-side: the runtime (f16 compute on the f16 checkpoint, and its q8_0 and q4k
# folders), transformers (bf16) and llama.cpp (the same q8_0 / q4k bytes, decoder only), one
# pass each, one after the other, same thread count. Writes one JSON per run to OUT and prints
# a Markdown table. Run it with nothing else on the machine.
#
#   tools/real_scale/bench.sh CHECKPOINT IMAGE OUT [THREADS]
#
# CHECKPOINT is a folder written by make_checkpoint.py (e.g. --dtype float16); its quantized
# copies CHECKPOINT-q8_0 and CHECKPOINT-q4k are made with `concepts quantize` when absent.
set -euo pipefail
ckpt=$1 image=$2 out=$3 threads=${4:-2}
repo=$(cd "$(dirname "$0")/../.." && pwd)
py=${PY:-python3}
mkdir -p "$out"
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=PASSIVE
cd "$repo"
cargo build --release -p concepts-cli
cargo bench -p concepts-runtime --bench real_scale --no-run
bench=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/real_scale-* | grep -v '\.d$' | head -1)
for f in q8_0 q4k; do
  [ -d "$ckpt-$f" ] || "${CARGO_TARGET_DIR:-target}/release/concepts" quantize --model "$ckpt" --format "$f" -o "$ckpt-$f"
done
"$bench" --model "$ckpt" --image "$image" --dtype f16 > "$out/concepts-f16.json"
"$bench" --model "$ckpt-q8_0" --image "$image" > "$out/concepts-q8_0.json"
"$bench" --model "$ckpt-q4k" --image "$image" > "$out/concepts-q4k.json"
positions=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['prompt_positions'])" "$out/concepts-q4k.json")
"$py" tools/real_scale/bench_transformers.py --model "$ckpt" --image "$image" --dtype bfloat16 --threads "$threads" > "$out/transformers-bf16.json"
for f in q8_0 q4k; do
  "$py" tools/real_scale/bench_llamacpp.py --model "$ckpt-$f" --gguf "$out/llama-$f.gguf" \
    --positions "$positions" --threads "$threads" > "$out/llamacpp-$f.json"
  rm -f "$out/llama-$f.gguf"
done
"$py" - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| run | load s | peak RSS GB | image s | prefill s (positions) | decode tok/s |")
print("|---|---:|---:|---:|---:|---:|")
for name in ["concepts-f16", "concepts-q8_0", "concepts-q4k", "transformers-bf16", "llamacpp-q8_0", "llamacpp-q4k"]:
    p = out / f"{name}.json"
    if not p.exists():
        continue
    r = json.loads(p.read_text())
    image = f"{r['image_s']:.1f}" if "image_s" in r else "–"
    print(f"| {name} | {r['load_s']:.1f} | {r['peak_rss_bytes'] / 1e9:.2f} | {image} | "
          f"{r['prefill_s']:.1f} ({r['prompt_positions']}) | {r['decode_tokens_per_s']:.2f} |")
PY
