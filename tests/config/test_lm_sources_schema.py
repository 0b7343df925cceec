"""The recipe keys of the LM teacher sources and sharded training are checked before anything runs:
distill.topk_cache, distill.data_mode and train.distributed, one line naming the key and the fix."""

from __future__ import annotations

import pytest

from distill.config.load import load_recipe
from distill.errors import ConfigError

CACHE = "distill.topk_cache={dir: /tmp/never-written, k: 8}"


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ([CACHE, "distill.cache_teacher=true"], "two caches of the teacher; keep one"),
        ([CACHE, "distill.terms=[{loss: forward_kl, teacher: '@hidden_states.1'}]"],
         "distill.terms.0.teacher taps ['@hidden_states.1']"),
        ([CACHE, "distill.terms=[{loss: topk_kl, teacher: '@topk', options: {capture_temperature: 2.0}}]"],
         "capture_temperature is 2.0, but the cache stores its top-k at 1.0"),
        ([CACHE, "distill.terms=[]"], "no terms to feed"),
        (["distill.topk_cache={dir: x, k: 0}"], "k"),
        (["distill.topk_cache={dir: x, dtype: int8}"], "dtype"),
        (["distill.data_mode={mode: sideways}"], "mode"),
        (["distill.data_mode={lam: 1.5}"], "lam"),
        (["distill.data_mode={temperature: 0}"], "temperature"),
        (["teacher=null", "distill.terms=[]", "distill.data_mode={mode: on_policy}"],
         "the teacher scores (or writes) the text"),
        (["train.distributed=zero3"], "distributed"),
        (["train.distributed=fsdp", "train.ema=0.999"], "ema keeps a whole copy"),
    ],
)  # fmt: skip
def test_bad_lm_source_settings_are_one_line_errors(overrides, needle) -> None:
    with pytest.raises(ConfigError) as err:
        load_recipe("shakespeare/kd", overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_shipped_lm_source_recipes_validate() -> None:
    cached = load_recipe("shakespeare/cached")
    assert cached.distill.topk_cache is not None and cached.distill.topk_cache.k == 8
    assert cached.distill.terms[0].teacher == "@topk"
    on_policy = load_recipe("shakespeare/on_policy")
    assert on_policy.distill.data_mode is not None and on_policy.distill.data_mode.lam == 1.0
    mix = load_recipe("shakespeare/on_policy_mix")  # half the steps on the text, with the task loss
    assert mix.distill.data_mode is not None and mix.distill.data_mode.lam == 0.5
    assert mix.distill.task_weight == 0.5 and mix.distill.terms[0].loss == "reverse_kl"
    assert load_recipe("shakespeare/kd", ["train.distributed=fsdp"]).train.distributed == "fsdp"


def test_the_dataset_fingerprint_follows_the_seed_that_picks_a_subset() -> None:
    from distill.config.topk import dataset_fingerprint

    def fingerprint(*overrides: str) -> str:
        return dataset_fingerprint(load_recipe("shakespeare/cached", list(overrides)), range(10))

    subset = "data.train_subset=10"
    assert fingerprint(subset, "train.seed=0") != fingerprint(subset, "train.seed=1")
    assert fingerprint("train.seed=0") == fingerprint("train.seed=1")  # all the text: no subset
    assert fingerprint(subset) != fingerprint("data.train_subset=11")
