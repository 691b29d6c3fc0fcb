#!/bin/sh
# Seeds fuzz/corpus/parse_package with the golden file and the malformed corpus.
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/parse_package
cp ../spec/golden/bo-v1.0.ycpt corpus/parse_package/golden.ycpt
for f in ../concept-format/tests/malformed/*.ycpt; do
    cp "$f" "corpus/parse_package/$(basename "$f")"
done
