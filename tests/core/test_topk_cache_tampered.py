"""A top-k cache whose manifest or shards were edited (by hand, a tool or an attacker) is refused with
one line naming the damage, never read with a traceback, out of its folder or with ids beyond the
vocabulary; the folder is left as it was."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.errors import DistillError
from distill.io import file_sha256
from distill.tasks.causal_lm import CausalLMTask
from distill.topk import CacheSettings, Fingerprints, TopKCache
from distill.topk.store import shard_file
from helpers.tiny_lm import TinyLM, TokenData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 11
PRINTS = Fingerprints(teacher="t" * 64, tokenizer="k" * 64, dataset="d" * 64)
SETTINGS = CacheSettings(k=4, dtype="float32", capture_temperature=1.0, shard_samples=8)


def edit_manifest(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return edit


def reshaped_shard(folder: Path) -> None:
    """Shard 0 rewritten with one column of ids less, its record and the manifest's sha256 updated to
    match: only the shapes can tell."""
    path = folder / shard_file(0)
    tensors = load_file(str(path))
    tensors["ids"] = tensors["ids"][:, :-1].contiguous()
    save_file(tensors, str(path))
    edit_manifest(
        lambda m: m["shards"][0].update(bytes=path.stat().st_size, sha256=file_sha256(path))
    )(folder)


CASES = {
    "no shards listed": (edit_manifest(lambda m: m.update(shards=[])), "lists 0 shard(s)"),
    "record without file": (edit_manifest(lambda m: m["shards"][0].pop("file")), "damaged"),
    "file outside the folder": (
        edit_manifest(lambda m: m["shards"][0].update(file="/etc/passwd")),
        "'/etc/passwd' is not a shard-NNNNN.safetensors name",
    ),
    "bytes not a number": (edit_manifest(lambda m: m["shards"][0].update(bytes="x")), "damaged"),
    "vocab_size not a number": (edit_manifest(lambda m: m.update(vocab_size="big")), "vocab_size"),
    "vocab_size too small": (
        edit_manifest(lambda m: m.update(vocab_size=3)),
        "token ids outside 0..2",
    ),
    "shards not a list": (edit_manifest(lambda m: m.update(shards=5)), "shards is not a list"),
    "settings not a mapping": (edit_manifest(lambda m: m.update(settings=[1])), "settings"),
    "fingerprints a string": (edit_manifest(lambda m: m.update(fingerprints="x")), "fingerprints"),
    "shards out of order": (
        edit_manifest(lambda m: m.update(shards=m["shards"][::-1])),
        "shard 0 is listed as shard-00001",
    ),
    "shard of the wrong shape": (reshaped_shard, "ids has shape [64, 3], not [64, 4]"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_tampered_cache_is_refused_in_one_line(tmp_path, name) -> None:
    data = TokenData(n=10)
    cache = TopKCache(
        tmp_path / "cache", SETTINGS, PRINTS, CausalLMTask(), ["@logits"], TinyLM(VOCAB, seed=1)
    )
    cache.prepare(data, 4, None, True)
    tamper, needle = CASES[name]
    tamper(tmp_path / "cache")
    before = {p.name: p.read_bytes() for p in sorted((tmp_path / "cache").iterdir())}
    with pytest.raises(DistillError) as err:
        reopened = TopKCache(tmp_path / "cache", SETTINGS, PRINTS, CausalLMTask(), ["@logits"])
        batch = CausalLMTask().split(torch.utils.data.default_collate([data[0], data[1]]))
        reopened.outputs(batch, ["@logits"])
    line = str(err.value)
    assert needle in line and "\n" not in line and "delete" in line, line
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "cache").iterdir())} == before


def test_a_cache_folder_that_cannot_be_made_names_the_setting(tmp_path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    cache = TopKCache(
        tmp_path / "afile" / "cache", SETTINGS, PRINTS, CausalLMTask(), ["@logits"], TinyLM(VOCAB)
    )
    with pytest.raises(DistillError, match="cannot create the topk cache folder .*topk_cache.dir"):
        cache.prepare(TokenData(n=10), 4, None, True)
    assert (tmp_path / "afile").read_text() == "not a folder"
