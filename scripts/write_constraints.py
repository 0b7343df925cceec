"""Print constraints.txt: the installed version of each package distill names in pyproject.toml (its
dependencies and every extra), from `pip freeze` of the running interpreter. `make constraints` runs it
after a passing `make test`; `make test CONSTRAINTS=constraints.txt` installs those versions again.
A package of an extra that is not installed here (CI does not install every extra) is left out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    sys.exit("error: write_constraints.py needs Python 3.11+ (tomllib); run it with .venv/bin/python")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        wanted += extra
    names = {canonical(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in wanted}
    names.discard("distill")
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    pins = {canonical(line.split("==")[0]): line for line in frozen if "==" in line}
    python = ".".join(map(str, sys.version_info[:3]))
    print(f"# Versions CI passed with (Python {python}); regenerate with `make constraints`.")
    print("# Use: make test CONSTRAINTS=constraints.txt  (or pip install -c constraints.txt ...)")
    for name in sorted(names):
        if name in pins:
            print(pins[name])
        else:
            print(f"# {name}: not installed when this file was written")


if __name__ == "__main__":
    main()
