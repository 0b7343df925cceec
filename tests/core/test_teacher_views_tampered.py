"""A teacher view cache whose file was replaced by another one, with its manifest's SHA-256 updated to
match (by hand or a tool), is refused by its contents in one line, not read into a KeyError."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.data.tensor import TensorDataset
from distill.data.views import ViewAugment
from distill.errors import DistillError
from distill.io import file_sha256
from distill.tasks import ClassificationTask
from distill.teacher_cache import CachedTeacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")
AUG = ViewAugment(crop_padding=1, flip=True)


def fill(folder, topk=0):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    data = TensorDataset(torch.rand(12, 1, 8, 8), torch.arange(12) % 5)
    cached = CachedTeacher(teacher, ClassificationTask(), ["@logits"], AUG, 2, topk, folder, 0)
    cached.prepare(data, 4, None, True)
    return lambda: CachedTeacher(
        teacher, ClassificationTask(), ["@logits"], AUG, 2, topk, folder, 0
    ).prepare(data, 4, None, True), cached.store.folder


@pytest.mark.parametrize(
    ("topk", "edit", "needle"),
    [
        (0, lambda t: t.pop("params"), "views of shape None"),
        (0, lambda t: t.pop("out:@logits"), "does not hold ['out:@logits']"),
        (0, lambda t: t.update({"out:@logits": t["out:@logits"][:, :5]}), "for 2 views of 12"),
        (2, lambda t: t.pop("rest:@logits"), "rest:@logits"),
    ],
)
def test_a_replaced_file_with_a_matching_checksum_is_refused(tmp_path, topk, edit, needle):
    again, folder = fill(tmp_path, topk)
    path = folder / "views.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = file_sha256(path)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DistillError) as err:
        again()
    assert needle in str(err.value) and "delete it to fill it again" in str(err.value)


def test_an_unwritable_cache_folder_is_one_line_naming_the_setting(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(DistillError) as err:
        fill(tmp_path / "afile" / "views")
    line = str(err.value)
    assert "cannot write the teacher view cache" in line and "DISTILL_CACHE" in line
    assert (tmp_path / "afile").read_text() == "not a folder"
