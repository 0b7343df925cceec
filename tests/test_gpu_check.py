"""scripts/gpu_check.sh, the one prepared check run on an accelerator machine, runs here too at tiny sizes
on the CPU (no install step), so that a recipe, override or flag it uses cannot rot unnoticed: every run it
lists ends ok (or skipped where this machine lacks what it needs) with its final top-1 and samples/s."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    return env


def _rows(summary: Path) -> dict[str, list[str]]:
    """The summary table's rows by run name: [status, wall s, final metric, samples/s]."""
    rows = {}
    for line in summary.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] not in ("run", "---"):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.integration
def test_cpu_tiny_run_lists_every_run_ok(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--no-install", "--out", str(out)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = out / "gpu_check.md"
    text = summary.read_text()
    assert "- device: cpu" in text and "torch " in text
    rows = _rows(summary)
    for name in ("fashion_mnist-kd-bf16", "fashion_mnist-crd-bf16"):
        status, wall, metric, rate = rows[name]
        assert status == "ok", (name, (out / f"{name}.log").read_text()[-2000:])
        assert float(wall) > 0 and metric.startswith("top1 ") and float(rate) > 0
    scenes = rows["scenes-kd-bf16"][0]
    if importlib.util.find_spec("ultralytics"):
        assert scenes == "ok", (out / "scenes-kd-bf16.log").read_text()[-2000:]
    else:
        assert scenes.startswith("skipped (ultralytics")
    status, _, metric, _ = rows["fashion_mnist-kd-ddp2"]  # two gloo processes on the CPU
    assert status == "ok" and metric.startswith("top1 "), (
        out / "fashion_mnist-kd-ddp2.log"
    ).read_text()
    assert rows["throughput"][0] == "ok"
    assert "device cpu" in text  # throughput.py ran with --device cpu and its table is included
    assert "| hand-written PyTorch |" in text


def test_unknown_device_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--device", "tpu", "--no-install", "--out", str(tmp_path)],
        env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --device tpu is not known; use cuda or cpu"
    assert not (tmp_path / "gpu_check.md").exists()


def test_a_failed_run_fails_the_script_and_shows_in_the_summary(tmp_path: Path) -> None:
    """A run that fails is listed as failed and the script exits 1 (a device session can read it)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    python = fake / "python3"
    # every training run fails; everything else (the summary writer, throughput.py) is the real python
    python.write_text(
        f'#!/bin/sh\ncase "$1 $2" in "-m distill" | "-m torch.distributed.run") echo boom >&2; exit 3 ;; esac\n'
        f'if [ "$1" = benchmarks/throughput.py ]; then echo skipped; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    env = _env()
    env["PYTHON"] = str(python)
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--no-install", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    rows = _rows(out / "gpu_check.md")
    assert rows["fashion_mnist-kd-bf16"][0] == "failed (exit 3)"
    assert rows["fashion_mnist-kd-ddp2"][0] == "failed (exit 3)"
