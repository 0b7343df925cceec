"""Checkpoints: round trip, checksums, fallback to the previous good file, crash leftovers, write failures."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.io import file_sha256
from distill.train import checkpoint_store as ck
from distill.train.checkpoint import (
    CheckpointStore,
    load_checkpoint,
    model_tensors,
    optimizer_state_from_json,
    save_checkpoint,
    unflatten_state,
)


def _pair(seed, kind="sgd"):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)
    )
    if kind == "adamw":
        return model, torch.optim.AdamW(model.parameters(), lr=0.01)
    return model, torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3
    )


def _step(model, optimizer, x):
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def _equal(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_round_trip_restores_model_and_optimizer_bit_exactly(tmp_path, kind):
    x = torch.randn(8, 1, 4, 4)
    model, optimizer = _pair(0, kind)
    for _ in range(3):
        _step(model, optimizer, x)
    save_checkpoint(tmp_path, "last", model, {"global_step": 3, "note": "hi"}, optimizer)

    tensors, state = load_checkpoint(tmp_path, "last")
    assert state["global_step"] == 3 and state["note"] == "hi"
    model2, optimizer2 = _pair(99, kind)
    assert not _equal(model, model2)
    model2.load_state_dict(model_tensors(tensors))
    optimizer2.load_state_dict(
        optimizer_state_from_json(unflatten_state(state["optimizer"], tensors))
    )
    assert _equal(model, model2)
    a, b = optimizer.state_dict(), optimizer2.state_dict()
    assert a["param_groups"] == b["param_groups"]  # tuples (AdamW's betas) come back as tuples
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(torch.as_tensor(a["state"][i][k]), torch.as_tensor(b["state"][i][k]))
    for _ in range(2):  # continuing from the restored state is bit-identical
        _step(model, optimizer, x)
        _step(model2, optimizer2, x)
    assert _equal(model, model2)


def test_manifest_records_checksums_and_keeps_the_newest(tmp_path):
    model, optimizer = _pair(0)
    store = CheckpointStore(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        _step(model, optimizer, torch.randn(4, 1, 4, 4))
        store.save("last", model, {"global_step": step}, optimizer)
    store.save("best", model, {"global_step": 3})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["step"] for e in manifest["last"]] == [3, 2]  # newest first, step 1 deleted
    assert manifest["best"]["file"] == "best-00000003.safetensors"
    for entry in [*manifest["last"], manifest["best"]]:
        assert (
            len(entry["sha256"]) == 64
            and (tmp_path / entry["file"]).stat().st_size == entry["bytes"]
        )
    assert _files(tmp_path) == [
        "best-00000003.safetensors",
        "last-00000002.safetensors",
        "last-00000003.safetensors",
        "manifest.json",
    ]  # and no temporary files


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "garbage"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, damage):
    model, optimizer = _pair(0)
    store = CheckpointStore(tmp_path)
    _step(model, optimizer, torch.randn(4, 1, 4, 4))
    store.save("last", model, {"global_step": 1}, optimizer)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, optimizer, torch.randn(4, 1, 4, 4))
    newest = store.save("last", model, {"global_step": 2}, optimizer)
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        for i in range(len(data) - 16, len(data)):
            data[i] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "delete":
        newest.unlink()
    else:
        newest.write_bytes(b"\x00" * len(data))

    loaded = store.load("last")
    assert loaded.state["global_step"] == 1 and loaded.path.name == "last-00000001.safetensors"
    assert len(loaded.skipped) == 1 and newest.name in loaded.skipped[0]
    assert all(torch.equal(loaded.tensors["model." + k], v) for k, v in good.items())
    with pytest.raises(DistillError, match="checksum|missing"):
        store.load("last", fallback=False)


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    model, optimizer = _pair(0)
    store = CheckpointStore(tmp_path)
    for step in (1, 2):
        path = store.save("last", model, {"global_step": step}, optimizer)
    for path in tmp_path.glob("last-*.safetensors"):
        path.write_bytes(b"broken")
    with pytest.raises(DistillError, match=r"every 'last' checkpoint .* is damaged.*--overwrite"):
        store.load("last")


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    model, _ = _pair(0)
    store = CheckpointStore(tmp_path)
    store.save("best", model, {"global_step": 1})
    (tmp_path / "manifest.json").write_text('{"format": 1, "last": [')
    with pytest.raises(DistillError, match=r"manifest\.json is unreadable"):
        store.load("best")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(DistillError, match="no 'best' checkpoint"):
        load_checkpoint(tmp_path, "best")


def test_crash_before_the_manifest_names_a_file_keeps_the_old_one(tmp_path, monkeypatch):
    """A kill after the new file's rename but before the manifest update: the manifest still names the
    previous checkpoint, and cleanup() removes the orphan."""
    model, optimizer = _pair(0)
    store = CheckpointStore(tmp_path)
    store.save("last", model, {"global_step": 1}, optimizer)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save("last", model, {"global_step": 2}, optimizer)
    monkeypatch.undo()
    assert (tmp_path / "last-00000002.safetensors").is_file()  # renamed, but not in the manifest
    assert store.load("last").state["global_step"] == 1
    (tmp_path / ".last-00000003.safetensors.abc.tmp").write_bytes(b"half")  # a torn temporary
    removed = {p.name for p in store.cleanup()}
    assert removed == {"last-00000002.safetensors", ".last-00000003.safetensors.abc.tmp"}
    assert _files(tmp_path) == ["last-00000001.safetensors", "manifest.json"]


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_write_failure_is_one_line_and_leaves_nothing_partial(tmp_path, monkeypatch, code, words):
    model, optimizer = _pair(0)
    store = CheckpointStore(tmp_path)
    store.save("last", model, {"global_step": 1}, optimizer)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial bytes")  # some bytes made it to disk before the failure
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ck, "save_file", failing_save)
    with pytest.raises(DistillError, match=words) as info:
        store.save("last", model, {"global_step": 2}, optimizer)
    assert "\n" not in str(info.value) and "nothing partial" in str(info.value)
    assert {
        p.name: p.read_bytes() for p in tmp_path.iterdir()
    } == before  # no temporaries, no change
    assert store.load("last").state["global_step"] == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path):
    model, optimizer = _pair(0)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(DistillError, match="permission denied"):
            CheckpointStore(tmp_path).save("last", model, {"global_step": 1}, optimizer)
        assert list(tmp_path.iterdir()) == []
    finally:
        tmp_path.chmod(0o755)


def test_tied_weights(tmp_path):
    model = nn.Module()
    model.embed = nn.Linear(4, 4, bias=False)
    model.head = nn.Linear(4, 4, bias=False)
    model.head.weight = model.embed.weight
    save_checkpoint(tmp_path, "best", model, {})
    tensors, _ = load_checkpoint(tmp_path, "best")
    model.load_state_dict(model_tensors(tensors))


def test_reads_runs_written_before_the_manifest(tmp_path):
    """Run dirs from the first layout (``last.safetensors`` + ``last.json`` with its checksum) still load,
    and the next save moves them to the manifest layout."""
    from safetensors.torch import save_file

    model, optimizer = _pair(0)
    tensors = ck.state_tensors(model.state_dict(), "model.")
    save_file(tensors, str(tmp_path / "last.safetensors"))
    (tmp_path / "last.json").write_text(
        json.dumps({"global_step": 7, "sha256": file_sha256(tmp_path / "last.safetensors")})
    )
    store = CheckpointStore(tmp_path)
    assert store.load("last").state["global_step"] == 7
    (tmp_path / "last.safetensors").write_bytes(b"x")
    with pytest.raises(DistillError, match="damaged"):
        store.load("last")
