"""The layers contract (DESIGN.md principle 11): ``[tool.importlinter]`` in pyproject.toml, checked by
import-linter (the ``dev`` extra). ``make test`` runs ``lint-imports`` too; this test runs it on the code
being tested, so an upward import fails the suite wherever the suite runs.

It runs in a child process with this process's ``sys.path``: in-process, a package imported by an earlier
test can break import-linter's output under pytest's capture (``import openvino`` did: "I/O operation on
closed file")."""

import os
import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
CODE = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))"
)


def test_layers_point_down():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, "-c", CODE, str(PYPROJECT)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "KEPT" in done.stdout
