"""Every third-party module distill's code imports is declared in pyproject.toml, as a core dependency or
in an extra: an optional import without an extra leaves the user no install command that makes it work."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "distill"

# import name -> distribution name, for each third-party module distill may import
DISTRIBUTION = {
    "torch": "torch",
    "numpy": "numpy",
    "yaml": "pyyaml",
    "pydantic": "pydantic",
    "typer": "typer",
    "rich": "rich",
    "safetensors": "safetensors",
    "matplotlib": "matplotlib",
    "PIL": "pillow",
    "torchvision": "torchvision",
    "timm": "timm",
    "tensorboard": "tensorboard",
    "torch_pruning": "torch-pruning",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxscript": "onnxscript",
    "onnxconverter_common": "onnxconverter-common",
    "openvino": "openvino",
    "executorch": "executorch",
    "coremltools": "coremltools",
    "torchao": "torchao",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "datasets": "datasets",
    "ultralytics": "ultralytics",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "optuna": "optuna",
}
# import name -> the distribution a submodule of another package needs
SUBMODULE = {"torch.utils.tensorboard": "tensorboard"}
# imported only where the platform has them, standard library on the others
PLATFORM = {"msvcrt", "fcntl"}


def _imported_modules() -> dict[str, set[str]]:
    """Third-party module -> the source files importing it (``import x``, ``from x import``,
    ``importlib.import_module("x")``, ``require("x")``)."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None))
                in ("import_module", "require")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            for name in names:
                top = next((s for s in SUBMODULE if name.startswith(s)), name.split(".")[0])
                if top in sys.stdlib_module_names or top in PLATFORM or top == "distill":
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("[project]", 1)[1].split("[project.scripts]", 1)[0]
    return {m.lower() for m in re.findall(r'"([A-Za-z0-9_.-]+)\s*[<>=~!\[]', block)}


def test_every_third_party_import_is_declared() -> None:
    declared = _declared()
    imported = _imported_modules()
    unknown = {
        m: sorted(f) for m, f in imported.items() if m not in DISTRIBUTION and m not in SUBMODULE
    }
    assert not unknown, f"add these to DISTRIBUTION and to pyproject.toml: {unknown}"
    missing = {
        m: sorted(files)
        for m, files in imported.items()
        if (SUBMODULE.get(m) or DISTRIBUTION[m]) not in declared
    }
    assert not missing, f"imported but in no dependency list or extra of pyproject.toml: {missing}"


@pytest.mark.parametrize("module", ["datasets", "PIL"])
def test_the_modules_once_missing_are_found_and_declared(module: str) -> None:
    assert module in _imported_modules() and DISTRIBUTION[module] in _declared()
