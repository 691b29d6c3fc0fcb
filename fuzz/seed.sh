#!/bin/sh
# Seeds fuzz/corpus/parse_package with the golden file and the malformed corpus, and
# fuzz/corpus/decode_image with the parity fixtures' images.
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/parse_package
cp ../spec/golden/bo-v1.0.ycpt corpus/parse_package/golden.ycpt
for f in ../concept-format/tests/malformed/*.ycpt; do
    cp "$f" "corpus/parse_package/$(basename "$f")"
done
mkdir -p corpus/decode_image
cp ../runtime/tests/fixtures/parity/images/logo.png ../runtime/tests/fixtures/parity/images/photo.jpg \
    corpus/decode_image/
