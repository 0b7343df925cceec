"""KD that pays (issue 19): patient full-label KD, the augmentation cache's cost, transfer sets, tuning.

Each part is a module ``benchmarks/kd_parts/NAME.py`` with ``run(args) -> dict``; ``--part NAME`` runs one
and writes ``docs/benchmarks/kd_recipes/NAME.json``. Every call (``--merge-only`` for no run at all) merges
the part files into ``docs/benchmarks/kd_recipes.json`` (one top-level key per part's ``summary`` keys,
e.g. ``full_label``, ``cache_cost_ratio``, ``label_scarce``, ``tune_wins``, plus ``parts``: every part's
whole result) and renders ``docs/benchmarks/kd_recipes.md`` from the parts' ``render(result)`` sections.

Examples::

    OMP_NUM_THREADS=1 python benchmarks/kd_recipes.py --part full
    OMP_NUM_THREADS=1 python benchmarks/kd_recipes.py --part cost
    python benchmarks/kd_recipes.py --merge-only
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS = ROOT / "docs" / "benchmarks"
PARTS_DIR = DOCS / "kd_recipes"
sys.path.insert(0, str(HERE))


def part_names() -> list[str]:
    import kd_parts

    return sorted(
        m.name for m in pkgutil.iter_modules(kd_parts.__path__) if not m.name.startswith("_")
    )


def load_part(name: str) -> Any:
    names = part_names()
    if name not in names:
        raise SystemExit(f"unknown part {name!r}; parts: {', '.join(names) or 'none yet'}")
    return importlib.import_module(f"kd_parts.{name}")


def write_json(path: Path, payload: Any) -> None:
    from distill.io import write_json as atomic_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(path, payload)


def merge(parts_dir: Path = PARTS_DIR) -> dict[str, Any]:
    """Every part file's ``summary`` keys at the top level, and each whole result under ``parts``."""
    merged: dict[str, Any] = {"parts": {}}
    for path in sorted(parts_dir.glob("*.json")):
        result = json.loads(path.read_text())
        merged["parts"][path.stem] = result
        for key, value in result.get("summary", {}).items():
            merged[key] = value
    return merged


def render(merged: dict[str, Any]) -> str:
    lines = [
        "# KD that pays: patient, consistent teaching, the teacher cache, transfer sets, tuning",
        "",
        "Written by `benchmarks/kd_recipes.py` (issue 19); the machine-readable figures are in "
        "`kd_recipes.json`, each part's whole result in `kd_recipes/NAME.json`.",
        "",
    ]
    for name, result in merged["parts"].items():
        try:
            module = load_part(name)
        except SystemExit:
            module = None
        section = getattr(module, "render", None)
        if section is not None:
            lines += [section(result).rstrip(), ""]
        else:
            lines += [
                f"## {name}",
                "",
                "```json",
                json.dumps(result.get("summary", {}), indent=2),
                "```",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", help="one part to run (kd_parts/NAME.py)")
    parser.add_argument(
        "--merge-only", action="store_true", help="only merge the part files and render"
    )
    known, _ = parser.parse_known_args(argv)
    module = None
    if known.part and not known.merge_only:
        module = load_part(known.part)
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    args = parser.parse_args(argv)
    if module is not None:
        result = module.run(args)
        write_json(PARTS_DIR / f"{args.part}.json", result)
    merged = merge()
    write_json(DOCS / "kd_recipes.json", merged)
    from distill.io import write_text

    write_text(DOCS / "kd_recipes.md", render(merged))


if __name__ == "__main__":
    main()
