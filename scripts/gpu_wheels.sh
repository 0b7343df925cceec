#!/usr/bin/env bash
# Prepare, on a machine with a package index, what scripts/gpu_check.sh needs on an accelerator machine
# without one: the wheels of distill's dependencies that machine lacks (pydantic and matplotlib with their
# pure-Python and compiled dependencies, never the torch stack) in gpu_wheels/, for each Python version
# in PY_VERSIONS (set it to the version of that machine's python3; each version adds about 21 MB, the
# data about 30 MB), and Fashion-MNIST copied into gpu_data/. Both folders are gitignored: carry them
# with the tree.
#
#   PY_VERSIONS="3.12" PYTHON=.venv/bin/python bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY_VERSIONS=${PY_VERSIONS:-3.12}
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions
          matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six packaging)
mkdir -p gpu_wheels
for version in $PY_VERSIONS; do
    echo "wheels: Python $version"
    "$PYTHON" -m pip download -q --no-deps --only-binary :all: --python-version "$version" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d gpu_wheels "${PACKAGES[@]}"
done
echo "wheels: $(ls gpu_wheels | wc -l) files, $(du -sh gpu_wheels | cut -f1) in gpu_wheels/"
folder=$("$PYTHON" -m distill.data.fashion_mnist)
mkdir -p gpu_data/fashion-mnist
cp -r "$folder"/. gpu_data/fashion-mnist/
echo "data: $folder copied into gpu_data/fashion-mnist"
