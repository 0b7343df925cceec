"""The manifest is checked, never trusted: a damaged, crafted or deleted ``manifest.json`` never costs an
intact checkpoint, never reaches outside the run folder, and a listed file is never re-written."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.train import checkpoint_store as ck
from distill.train.checkpoint import CheckpointStore


def _model(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(4, 1, 4, 4)).pow(2).mean().backward()
    optimizer.step()


def _run(directory, keep_last=2, steps=(1, 2, 3)) -> CheckpointStore:
    """``last`` checkpoints at ``steps`` (the newest ``keep_last`` kept) and a ``best`` at step 2."""
    model, optimizer = _model()
    store = CheckpointStore(directory, keep_last=keep_last)
    for step in steps:
        _step(model, optimizer)
        store.save("last", model, {"global_step": step, "epoch": 0}, optimizer)
        if step == 2:
            store.save("best", model, {"global_step": step})
    return store


def _contents(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.suffix == ".safetensors"}


def _manifest(store: CheckpointStore) -> dict:
    return json.loads(store.manifest_path.read_text())


def _write_manifest(store: CheckpointStore, data) -> None:
    store.manifest_path.write_text(json.dumps(data))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------- a changed character
def test_a_changed_character_in_the_newest_name_deletes_nothing(tmp_path):
    store = _run(tmp_path)
    manifest = _manifest(store)
    assert manifest["last"][0]["file"] == "last-00000003.safetensors"
    manifest["last"][0]["file"] = "last-00000004.safetensors"  # one character
    _write_manifest(store, manifest)
    before = _contents(tmp_path)

    store.cleanup()  # what --resume does first
    loaded = store.load("last")  # the listed older one verifies: an exact resume from step 2
    assert loaded.state["global_step"] == 2 and "last-00000004" in loaded.skipped[0]
    model, optimizer = _model(1)
    store.save("last", model, {"global_step": 3}, optimizer)  # the resumed run saves step 3 again
    after = _contents(tmp_path)
    assert all(after.get(name) == data for name, data in before.items())  # nothing lost or changed


def test_a_changed_character_with_one_kept_checkpoint_is_one_line(tmp_path):
    store = _run(tmp_path, keep_last=1)
    manifest = _manifest(store)
    manifest["last"][0]["file"] = "last-00000004.safetensors"
    _write_manifest(store, manifest)
    before = _contents(tmp_path)
    store.cleanup()
    with pytest.raises(DistillError) as err:
        store.load("last")
    assert "delete" in _one_line(err) and "manifest.json" in str(err.value)
    assert _contents(tmp_path) == before
    store.manifest_path.unlink()  # the fix the message gives
    assert store.load("last").state["global_step"] == 3


def test_a_changed_checksum_deletes_nothing(tmp_path):
    """A dropped entry whose checksum does not match its file does not vouch for it: the file stays."""
    store = _run(tmp_path, steps=(1, 2))
    manifest = _manifest(store)
    manifest["last"][1]["sha256"] = "0" * 64  # step 1's entry
    _write_manifest(store, manifest)
    model, optimizer = _model(1)
    store.save("last", model, {"global_step": 3}, optimizer)  # drops step 1 from the manifest
    assert (tmp_path / "last-00000001.safetensors").is_file()
    store.save("last", model, {"global_step": 4}, optimizer)  # drops step 2, which verifies
    assert not (tmp_path / "last-00000002.safetensors").exists()


# ------------------------------------------------------------------------- a wrong structure
WRONG = {
    "last-is-an-object": lambda m: {**m, "last": m["last"][0]},
    "entry-without-file": lambda m: {**m, "last": [{"sha256": "0" * 64}]},
    "entry-is-a-string": lambda m: {**m, "last": ["last-00000003.safetensors"]},
    "file-is-a-number": lambda m: {**m, "last": [{**m["last"][0], "file": 3}]},
    "best-is-a-list": lambda m: {**m, "best": [m["best"]]},
    "best-names-a-last": lambda m: {**m, "best": m["last"][0]},
    "no-checksum": lambda m: {**m, "last": [{"file": m["last"][0]["file"]}]},
    "duplicate": lambda m: {**m, "last": [m["last"][0], m["last"][0]]},
    "step-is-text": lambda m: {**m, "last": [{**m["last"][0], "step": "3"}]},
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_a_wrong_structure_is_one_line_and_deletes_nothing(tmp_path, wrong):
    store = _run(tmp_path)
    _write_manifest(store, WRONG[wrong](_manifest(store)))
    before = _contents(tmp_path)
    model, optimizer = _model(1)
    for action in (
        store.cleanup,
        lambda: store.load("last"),
        lambda: store.save("last", model, {"global_step": 4}, optimizer),
    ):
        with pytest.raises(DistillError, match="manifest.json is damaged") as err:
            action()
        assert "delete it" in _one_line(err)
    assert _contents(tmp_path) == before


# ------------------------------------------------------------------- names outside the folder
@pytest.mark.parametrize(
    "key, name",
    [
        ("file", "../../outside.txt"),
        ("file", "../../last-00000001.safetensors"),
        ("file", "/tmp/last-00000001.safetensors"),
        ("file", "sub/last-00000001.safetensors"),
        ("legacy_state", "../../outside.txt"),
    ],
)
def test_a_name_that_leaves_the_folder_is_refused(tmp_path, key, name):
    run = tmp_path / "run" / "checkpoints"
    store = _run(run)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    manifest = _manifest(store)
    sha = hashlib.sha256(outside.read_bytes()).hexdigest()
    if key == "file":
        manifest["last"].append({"file": name, "sha256": sha, "step": 1})
    else:  # the layout before the manifest: weights plus a JSON state file beside them
        manifest["last"].append({"file": "last.safetensors", "sha256": sha, key: name})
    _write_manifest(store, manifest)
    before = _contents(run)
    model, optimizer = _model(1)
    for step in (4, 5, 6):  # enough saves to drop every entry the manifest held
        with pytest.raises(DistillError, match="damaged") as err:
            store.save("last", model, {"global_step": step}, optimizer)
        assert repr(name)[:20] in _one_line(err)
    with pytest.raises(DistillError, match="damaged"):
        store.cleanup()
    assert outside.read_text() == "precious"
    assert _contents(run) == before


# -------------------------------------------------------------------------- a deleted manifest
def test_a_deleted_manifest_is_rebuilt_from_the_files_headers(tmp_path):
    store = _run(tmp_path)
    listed = _manifest(store)
    store.manifest_path.unlink()
    before = _contents(tmp_path)

    assert store.cleanup() == []  # nothing to compare with: nothing is deleted
    loaded = store.load("last")
    assert loaded.state["global_step"] == 3 and loaded.recovered
    assert [e["file"] for e in store.entries("last")] == [e["file"] for e in listed["last"]]
    assert [e["sha256"] for e in store.entries("last")] == [e["sha256"] for e in listed["last"]]
    assert store.load("best").state["global_step"] == 2
    assert _contents(tmp_path) == before
    model, optimizer = _model(1)
    store.save("last", model, {"global_step": 4}, optimizer)  # writes a manifest again
    assert [e["step"] for e in _manifest(store)["last"]] == [4, 3]
    assert _manifest(store)["best"]["file"] == "best-00000002.safetensors"


def test_rebuilding_skips_files_whose_header_does_not_verify(tmp_path):
    store = _run(tmp_path)
    store.manifest_path.unlink()
    newest = tmp_path / "last-00000003.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated
    other = tmp_path / "last-00000009.safetensors"  # its header says step 2: renamed by hand
    other.write_bytes((tmp_path / "last-00000002.safetensors").read_bytes())
    assert [e["file"] for e in store.entries("last")] == ["last-00000002.safetensors"]
    assert store.load("last").state["global_step"] == 2
    assert newest.is_file() and other.is_file()


# ------------------------------------------------------------------- the same step saved again
def test_saving_a_step_again_never_replaces_the_listed_file(tmp_path, monkeypatch):
    """After an evaluation the trainer saves ``last`` again at the same step, with the new history: a
    kill before the manifest names the new file must leave the listed one intact (keep_last=1)."""
    model, optimizer = _model()
    store = CheckpointStore(tmp_path, keep_last=1)
    _step(model, optimizer)
    first = store.save("last", model, {"global_step": 4, "history": []}, optimizer)
    listed = first.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save("last", model, {"global_step": 4, "history": [{"top1": 50.0}]}, optimizer)
    monkeypatch.undo()
    assert first.read_bytes() == listed
    assert store.load("last", fallback=False).state["history"] == []

    second = store.save("last", model, {"global_step": 4, "history": [{"top1": 50.0}]}, optimizer)
    assert second != first and second.name.startswith("last-00000004")
    assert store.load("last", fallback=False).state["history"] == [{"top1": 50.0}]
    assert not first.exists()  # dropped from the manifest (keep_last=1) once the new one is listed
    store.save("best", model, {"global_step": 4})
    again = store.save("best", model, {"global_step": 4, "note": "better"})
    assert store.load("best", fallback=False).state["note"] == "better"
    assert [p.name for p in tmp_path.glob("best-*")] == [again.name]
