#!/usr/bin/env bash
# Runs the runtime benchmark (runtime/benches/inference.rs) and the transformers benchmark
# (tools/bench/bench_transformers.py) on the parity checkpoint with the same thread count,
# one after the other, for several rounds, and prints the ratio table.
#
#   tools/bench/run.sh            # 1 and 2 threads
#   tools/bench/run.sh 2          # 2 threads only
#
# Environment:
#   ROUNDS=5        rounds per thread count (the two sides alternate which goes first)
#   SCALE=1         multiplies every repetition count of both benchmarks
#   OUT_DIR=...     where results go (default target/bench/<date-time>)
#   PYTHON=...      Python with torch + transformers (default /work/pyenv/bin/python)
#   BENCH_BIN=...   a prebuilt bench executable; otherwise it is built with
#                   `cargo bench -p concepts-runtime --bench inference --no-run`
#
# The machine should be otherwise idle; the table reports the load average and how many
# cores other processes used during each run, so a busy run can at least be recognised.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
threads=("$@")
[ ${#threads[@]} -eq 0 ] && threads=(1 2)
rounds=${ROUNDS:-5}
scale=${SCALE:-1}
python=${PYTHON:-/work/pyenv/bin/python}
out=${OUT_DIR:-$repo/target/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

if [ -z "${BENCH_BIN:-}" ]; then
    echo "building the bench (release)..." >&2
    BENCH_BIN=$(cargo bench -p concepts-runtime --bench inference --no-run --message-format=json |
        "$python" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "inference" and m.get("executable"):
        print(m["executable"])')
fi
[ -x "$BENCH_BIN" ] || { echo "no bench executable: '$BENCH_BIN'" >&2; exit 1; }

# OpenMP threads sleep instead of spinning between parallel regions, so neither side burns
# cores it is not computing on (the machine is shared).
export OMP_WAIT_POLICY=PASSIVE

{
    echo "date: $(date -Iseconds)"
    echo "host: $(uname -srm); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cpus"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') ($(git status --porcelain 2>/dev/null | wc -l) paths modified or untracked)"
    echo "bench binary: $BENCH_BIN"
    echo "python: $("$python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
    echo "threads: ${threads[*]}; rounds: $rounds; scale: $scale"
    echo "uptime before: $(uptime)"
} | tee "$out/env.txt" >&2

run_rust() {
    local t=$1 r=$2
    RAYON_NUM_THREADS=$t "$python" tools/bench/report.py exec --meta "$out/rust-t$t-r$r.meta.json" -- \
        "$BENCH_BIN" --out "$out/rust-t$t-r$r.json" --scale "$scale" >"$out/rust-t$t-r$r.md"
}

run_py() {
    local t=$1 r=$2
    OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t "$python" tools/bench/report.py exec \
        --meta "$out/py-t$t-r$r.meta.json" -- "$python" tools/bench/bench_transformers.py \
        --threads "$t" --scale "$scale" --out "$out/py-t$t-r$r.json" >"$out/py-t$t-r$r.md"
}

for r in $(seq 1 "$rounds"); do
    for t in "${threads[@]}"; do
        echo "round $r/$rounds, $t thread(s): $(cut -d' ' -f1-3 /proc/loadavg)" >&2
        if [ $((r % 2)) -eq 1 ]; then
            run_rust "$t" "$r"
            run_py "$t" "$r"
        else
            run_py "$t" "$r"
            run_rust "$t" "$r"
        fi
    done
done

echo "uptime after: $(uptime)" | tee -a "$out/env.txt" >&2
"$python" tools/bench/report.py table "$out" | tee "$out/table.md"
echo "results: $out" >&2
