"""`distill bench` of a damaged ExecuTorch program, as a separate process: stderr holds distill's one
error line and nothing from ExecuTorch's C++ loader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("executorch.runtime", reason="needs the executorch extra")


def test_a_damaged_pte_is_one_stderr_line(tmp_path: Path) -> None:
    program = tmp_path / "model.pte"
    program.write_bytes(b"not a program")
    src = Path(__file__).resolve().parents[2] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "distill", "bench", str(program), "--runtime", "executorch"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: executorch cannot load {program}")
