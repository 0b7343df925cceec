"""Launching a test's script on several CPU processes with ``torchrun``, as the DDP and FSDP tests do.

The script runs in a clean environment: the caller's torchrun variables are dropped (a test run under
torchrun itself must not hand its rank to the children), ``PYTHONPATH`` is this checkout's ``src`` (and
``tests``, for scripts that import the test helpers), one OpenMP thread each and no GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# what torch.distributed.run sets for each process
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun(
    folder: Path,
    name: str,
    source: str,
    args: Sequence[str] = (),
    processes: int = 2,
    timeout: float = 240,
    tests_on_path: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Write ``source`` to ``folder / name`` and run it with ``args`` from ``folder``: under
    ``python -m torch.distributed.run --standalone`` with ``processes`` processes, or as a plain
    ``python`` script when ``processes`` is 1, with ``env``'s variables added (e.g. a setting the script
    reads). Fails the test (the output's tail as the message) unless it exits 0; returns the finished
    process."""
    script = folder / name
    script.write_text(source)
    variables = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    paths = [ROOT / "src", *([ROOT / "tests"] if tests_on_path else [])]
    variables.update(
        PYTHONPATH=os.pathsep.join(str(p) for p in paths),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        **(env or {}),
    )
    launcher = (
        ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone"]
        if processes > 1
        else []
    )
    proc = subprocess.run(
        [sys.executable, *launcher, str(script), *args],
        cwd=folder,
        env=variables,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"rc={proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc
