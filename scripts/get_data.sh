#!/usr/bin/env bash
# Make sure Fashion-MNIST is available: use it where it already is, install the Debian package
# `dataset-fashion-mnist` where apt is available, otherwise download it from the public mirror.
# Then the text data (scripts/get_text_data.sh).
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHON
fashion_mnist() {
    if "$PYTHON" -m distill.data.fashion_mnist >/dev/null 2>&1; then
        echo "Fashion-MNIST: $("$PYTHON" -m distill.data.fashion_mnist)"
        return 0
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "Fashion-MNIST: installing the Debian package dataset-fashion-mnist"
        if apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; then
            echo "Fashion-MNIST: $("$PYTHON" -m distill.data.fashion_mnist)"
            return 0
        fi
        echo "Fashion-MNIST: apt-get failed; downloading instead"
    fi
    "$PYTHON" -m distill.data.fashion_mnist --ensure
}
fashion_mnist
# Rotten Tomatoes and the MiniLM teacher for the text examples and tests
bash "$(dirname "$0")/get_text_data.sh"
