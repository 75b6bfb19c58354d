#!/usr/bin/env bash
# Wheels of what Lethe needs and the GPU machine's Python (3.12, x86-64, no network) lacks, into .whl/ (ignored
# by git; carried with `run`'s carry=[".whl"]). Everything else Lethe imports is already there (torch,
# transformers, peft, accelerate, safetensors, sentence-transformers, sacrebleu, scipy, scikit-learn, pyarrow,
# pandas, rich, tqdm, pyyaml). Under 64 MiB in all; the script prints the total.
# usage: bash benchmarks/gpu/fetch_wheels.sh [DEST=.whl]
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-.whl}
PY=${PYTHON:-python3}
rm -rf "$DEST"; mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# binary wheels for CPython 3.12 on x86-64 (pure-Python ones match "any")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d "$DEST" "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19" "nltk==3.10.4"
# rouge-score ships only a source archive: build its pure-Python wheel here
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "rouge-score==0.1.2" 2>/dev/null || \
    "$PY" -m pip wheel -q --no-deps -w "$DEST" "rouge-score==0.1.2"
ls -1 "$DEST"
du -sh "$DEST"
size=$(du -sm "$DEST" | cut -f1)
if [ "$size" -ge 64 ]; then echo "error: $DEST is ${size} MiB, over the 64 MiB a device call can carry" >&2; exit 1; fi
