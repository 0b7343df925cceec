"""Model files are an attack surface: nothing distill loads may run code.

distill's own files are safetensors + JSON; foreign ``.pt``/``.pth``/``.bin`` files go through
``torch.load(weights_only=True)`` only, and anything that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from distill.cli import main
from distill.config.build import load_weights
from distill.errors import DistillError

SRC = Path(__file__).resolve().parents[2] / "src" / "distill"


class Payload:
    """Unpickling this runs ``exec``: it writes a marker file (a stand-in for any code an attacker likes)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("where", ["top level", "inside a state dict"])
def test_malicious_pickle_never_runs(tmp_path, suffix, where):
    marker = tmp_path / "marker"
    evil = tmp_path / f"evil{suffix}"
    payload = Payload(marker)
    obj = payload if where == "top level" else {"0.weight": torch.zeros(2, 4), "extra": payload}
    torch.save(obj, evil)
    assert not marker.exists()
    with pytest.raises(DistillError) as info:
        load_weights(tiny(), str(evil), "teacher")
    message = str(info.value)
    assert "\n" not in message and str(evil) in message
    assert "unpickling" in message and "run code" in message and ".safetensors" in message
    assert not marker.exists(), "the payload ran"


def test_malicious_pickle_through_the_cli(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "teacher.pt"
    torch.save(Payload(marker), evil)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {name: tensors, root: nowhere}\n"
        "student: {name: mlp}\n"
        f"teacher: {{name: mlp, weights: {evil}}}\n"
        f"output: {tmp_path / 'run'}\n"
    )
    code = main(["train", str(recipe)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert not marker.exists(), "the payload ran"


def test_a_pickled_module_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(tiny(), path)  # the whole module object, not a state dict
    with pytest.raises(DistillError, match=r"unpickling.*state_dict\(\)"):
        load_weights(tiny(), str(path), "teacher")


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_plain_state_dicts_load(tmp_path, wrap):
    source = tiny()
    with torch.no_grad():
        source[1].weight.add_(1.0)
    state = source.state_dict()
    path = tmp_path / "ok.pt"
    torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    target = tiny()
    load_weights(target, str(path), "teacher")
    assert torch.equal(target[1].weight, source[1].weight)


def test_source_never_unpickles():
    """Every torch.load in the package passes weights_only=True; no pickle-based loaders at all."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.name}: {match.group(0)}")
        for pattern in (
            r"^\s*import pickle",
            r"pickle\.loads?\(",
            r"allow_pickle\s*=\s*True",
            r"import dill",
        ):
            if re.search(pattern, text, re.MULTILINE):
                offenders.append(f"{path.name}: {pattern}")
    assert not offenders, offenders


def test_own_checkpoints_contain_no_pickle(tmp_path):
    """A distill run dir holds only safetensors and JSON (plus text logs)."""
    from distill.train.checkpoint import CheckpointStore, save_model

    model = tiny()
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save(
        "last", model, {"global_step": 1}, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )
    store.save("best", model, {"global_step": 1})
    save_model(tmp_path / "model.safetensors", model)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert path.suffix in (".safetensors", ".json"), path
            if path.suffix == ".json":
                json.loads(path.read_text())
            else:
                with safe_open(str(path), "pt") as f:  # a valid safetensors file: data, not code
                    assert list(f.keys())
