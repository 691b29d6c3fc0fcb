#!/usr/bin/env bash
# The bindings' overhead on a recognition call (issue #22): the same photo, concept and model
# through the Rust API, through the facade the C ABI calls, and through the Python package.
#
#   tools/bench/bindings.sh [ROUNDS]     # default 200
#
# Needs the Python package installed in PYTHON (default python3): pip install ./bindings/python.
# Run on an otherwise idle machine; both sides use the same thread count (RAYON_NUM_THREADS).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
rounds=${1:-200}
python=${PYTHON:-python3}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cargo bench -q -p concepts-embed --bench recognise_overhead --no-run
echo "== load: $(cut -d' ' -f1-3 /proc/loadavg), threads $RAYON_NUM_THREADS, rounds $rounds"
# Three rounds, the Rust and Python processes alternating.
for round in 1 2 3; do
echo "-- round $round"
cargo bench -q -p concepts-embed --bench recognise_overhead -- "$dir" "$rounds"
"$python" - "$dir" "$rounds" <<'PY'
import statistics, sys, time
import concepts
d, rounds = sys.argv[1], int(sys.argv[2])
rt = concepts.Runtime(home=f"{d}/home")
photo = f"{d}/photo.png"
for _ in range(10):
    rt.recognise(photo, ["bo"])
times = []
for _ in range(rounds):
    t = time.perf_counter()
    rt.recognise(photo, ["bo"])
    times.append(time.perf_counter() - t)
print(f"python Runtime.recognise          median {statistics.median(times) * 1e3:.3f} ms")
PY
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"
