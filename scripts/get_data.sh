#!/usr/bin/env bash
# Make sure Fashion-MNIST is available (all `make demo` needs): use it where it already is, install the
# Debian package `dataset-fashion-mnist` where apt is available, otherwise download it from the public
# mirror (each file checked against its pinned SHA-256). The text data and encoder are a separate step:
# scripts/get_text_data.sh (`make data-text`, which `make test` runs).
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
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
    folder=$("$PYTHON" -m distill.data.fashion_mnist --ensure)  # an assignment keeps set -e's exit
    echo "Fashion-MNIST: $folder"
}
fashion_mnist
