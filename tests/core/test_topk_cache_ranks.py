"""Under torchrun each rank fills its own shards of the top-k cache (rank r: shards r, r + world, ...),
rank 0 completes the manifest, and the cache holds the tensors a single process writes."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.torchrun import torchrun

pytestmark = pytest.mark.integration


SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys

    import torch
    import torch.distributed as dist

    from distill.tasks.causal_lm import CausalLMTask
    from distill.topk import CacheSettings, Fingerprints, TopKCache
    from helpers.tiny_lm import TinyLM, TokenData

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    settings = CacheSettings(k=3, dtype="float16", capture_temperature=1.0, shard_samples=4)
    prints = Fingerprints("t" * 64, "k" * 64, "d" * 64)
    cache = TopKCache(sys.argv[1], settings, prints, CausalLMTask(), ["@logits"], TinyLM(11, seed=1))
    calls = []
    fill = cache.fill_shard
    cache.fill_shard = lambda data, i, b: (calls.append(i), fill(data, i, b))
    cache.prepare(TokenData(n=18, length=9), 4, None, True)
    rank = dist.get_rank() if world > 1 else 0
    with open(os.path.join(sys.argv[1], f"..", f"calls{rank}-{world}.json"), "w") as f:
        json.dump(calls, f)
    if world > 1:
        dist.destroy_process_group()
    """
)


def fill(tmp_path: Path, folder: Path, processes: int) -> None:
    torchrun(tmp_path, "fill.py", SCRIPT, [str(folder)], processes, tests_on_path=True)


def test_two_ranks_fill_their_own_shards_into_the_same_cache(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    fill(tmp_path, tmp_path / "one" / "cache", 1)
    fill(tmp_path, tmp_path / "two" / "cache", 2)
    assert json.loads((tmp_path / "one" / "calls0-1.json").read_text()) == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "two" / "calls0-2.json").read_text()) == [0, 2, 4]
    assert json.loads((tmp_path / "two" / "calls1-2.json").read_text()) == [1, 3]
    one, two = tmp_path / "one" / "cache", tmp_path / "two" / "cache"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for shard in one.glob("shard-*.safetensors"):  # the same tensors (header key order may differ)
        a, b = load_file(shard), load_file(two / shard.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["complete"] and [s["first"] for s in manifest["shards"]] == [0, 4, 8, 12, 16]
