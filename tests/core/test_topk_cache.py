"""The LM top-k teacher cache: what it stores is the teacher's top-k at the capture temperature, the
re-tempering math, refusals (other fingerprints or settings, damaged shards, changed data) that leave
the folder as it was, a fill that resumes, and training from it without a teacher."""

import io
import json
import math

import pytest
import torch
from rich.console import Console

from distill.distiller import Distiller, Term
from distill.errors import DistillError
from distill.tasks.causal_lm import CausalLMTask
from distill.topk import CacheSettings, Fingerprints, TopKCache, dense_logits, retemper, topk_of
from distill.topk.store import shard_file
from distill.train import TrainConfig, Trainer
from helpers.tiny_lm import TinyLM, TokenData, TokenKL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 11
PRINTS = Fingerprints(teacher="t" * 64, tokenizer="k" * 64, dataset="d" * 64)


def settings(**changes):
    base = {"k": 4, "dtype": "float32", "capture_temperature": 2.0, "shard_samples": 8}
    return CacheSettings(**{**base, **changes})


def filled(tmp_path, data, k=4, dtype="float32", teacher=None):
    teacher = teacher or TinyLM(VOCAB, seed=1)
    cache = TopKCache(
        tmp_path / "cache", settings(k=k, dtype=dtype), PRINTS, CausalLMTask(), ["@logits"], teacher
    )
    cache.prepare(data, 4, None, True)
    return cache, teacher


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_topk_of_keeps_the_largest_log_probs_and_the_rest_of_the_mass() -> None:
    logits = torch.randn(5, 3, VOCAB)
    values, ids, rest = topk_of(logits, 4, temperature=2.0)
    logp = torch.log_softmax(logits / 2.0, -1)
    assert torch.equal(values, logp.gather(-1, ids.long()))
    assert torch.all(values.min(-1).values >= logp.sort(-1, descending=True).values[..., 4])
    assert torch.allclose(rest + values.exp().sum(-1), torch.ones(5, 3), atol=1e-6)


def test_retempering_is_exact_on_the_topk_and_for_a_flat_tail() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, VOCAB) * 3
    logits[:, :4] += 10.0
    logits[:, 4:] = logits[:, 4:].mean(-1, keepdim=True)  # ids 4.. form a flat tail below them
    values, ids, rest = topk_of(logits, 4, temperature=2.0)
    assert set(ids.flatten().tolist()) <= {0, 1, 2, 3}
    for t in (0.5, 1.0, 2.0, 4.0):
        got = retemper(values, ids, rest, VOCAB, 2.0, t)
        assert torch.allclose(got, torch.log_softmax(logits / t, -1), atol=1e-5), t
    # a peaked tail: at T_c exact; at another T the ratios inside the top-k stay exact
    logits = torch.randn(6, VOCAB) * 3
    values, ids, rest = topk_of(logits, 4, temperature=2.0)
    at_capture = retemper(values, ids, rest, VOCAB, 2.0, 2.0).gather(-1, ids.long())
    assert torch.allclose(at_capture, values, atol=1e-5)
    sharp = retemper(values, ids, rest, VOCAB, 2.0, 0.5).gather(-1, ids.long())
    exact = torch.log_softmax(logits / 0.5, -1).gather(-1, ids.long())
    assert torch.allclose(sharp - sharp[:, :1], exact - exact[:, :1], atol=1e-4)


def test_the_cache_stores_the_teachers_topk_at_the_capture_temperature(tmp_path) -> None:
    data = TokenData(n=20)
    cache, teacher = filled(tmp_path, data)
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.safetensors")) == [
        shard_file(i) for i in range(3)
    ]
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["alignment"] == "row j predicts token j+1"
    assert manifest["vocab_size"] == VOCAB and manifest["num_samples"] == 20
    for i in (0, 7, 8, 19):
        rows = cache.reader.sample(i)
        with torch.no_grad():
            logits = teacher(data.ids[i : i + 1, :-1])[0]
        values, ids, rest = topk_of(logits, 4, temperature=2.0)
        assert torch.equal(rows["ids"], ids) and torch.equal(
            rows["tokens"].long(), data.ids[i, :-1]
        )
        assert torch.allclose(rows["logprobs"], values, atol=1e-6)
        assert torch.allclose(rows["rest"], rest, atol=1e-6)


def test_float16_cache_stores_half_precision_log_probs(tmp_path) -> None:
    cache, _ = filled(tmp_path, TokenData(n=9), dtype="float16")
    assert cache.reader.sample(3)["logprobs"].dtype == torch.float16


def kd_distiller(student, cache_or_teacher, temperature=1.0):
    terms = [Term(TokenKL(temperature), name="kl")]
    if isinstance(cache_or_teacher, TopKCache):
        return Distiller(student, CausalLMTask(), terms=terms, source=cache_or_teacher)
    return Distiller(student, CausalLMTask(), teacher=cache_or_teacher, terms=terms)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.0])
def test_with_all_but_one_id_kept_the_cached_loss_equals_the_online_one(tmp_path, temperature):
    """k = V - 1 leaves a one-id tail, so the rebuilt distribution is exact at any loss temperature."""
    data = TokenData(n=12)
    cache, teacher = filled(tmp_path, data, k=VOCAB - 1)
    batch = CausalLMTask().split(torch.utils.data.default_collate([data[i] for i in (3, 9, 0)]))
    student = TinyLM(VOCAB, seed=5)
    cached = kd_distiller(student, cache, temperature)(batch).parts["kl"]
    online = kd_distiller(student, teacher, temperature)(batch).parts["kl"]
    assert cached.item() == pytest.approx(online.item(), rel=1e-5)


def test_training_from_a_full_cache_needs_no_teacher_and_matches_the_filling_run(tmp_path):
    data = TokenData(n=16)
    config = TrainConfig(epochs=2, batch_size=4, lr=0.05, progress=False, device="cpu", seed=3)

    def run(source, where):
        student = TinyLM(VOCAB, seed=5)
        distiller = Distiller(
            student, CausalLMTask(), terms=[Term(TokenKL(), name="kl")], source=source
        )
        trainer = Trainer(
            distiller, data, None, config, tmp_path / where, console=Console(file=io.StringIO())
        )
        trainer.fit()
        return [
            r for r in map(json.loads, (tmp_path / where / "metrics.jsonl").open()) if "kl" in r
        ]

    teacher = TinyLM(VOCAB, seed=1)
    first = run(
        TopKCache(tmp_path / "c", settings(), PRINTS, CausalLMTask(), ["@logits"], teacher), "a"
    )
    assert (tmp_path / "c" / "manifest.json").exists()
    second = run(TopKCache(tmp_path / "c", settings(), PRINTS, CausalLMTask(), ["@logits"]), "b")
    assert [r["kl"] for r in first] == [r["kl"] for r in second]
    assert len(first) >= 1 and all(math.isfinite(r["kl"]) for r in first)


def test_an_unfilled_cache_without_a_teacher_is_refused(tmp_path) -> None:
    with pytest.raises(DistillError, match="not filled yet and there is no teacher"):
        TopKCache(tmp_path / "none", settings(), PRINTS, CausalLMTask(), ["@logits"])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"prints": Fingerprints("x" * 64, "k" * 64, "d" * 64)}, "another teacher"),
        ({"prints": Fingerprints("t" * 64, "y" * 64, "d" * 64)}, "another tokenizer"),
        ({"prints": Fingerprints("t" * 64, "k" * 64, "z" * 64)}, "another dataset"),
        ({"settings": settings(k=3)}, "k=4, this run asks for 3"),
        ({"settings": settings(capture_temperature=1.0)}, "capture_temperature=2.0"),
    ],
)
def test_a_cache_for_other_fingerprints_or_settings_is_refused_and_kept(tmp_path, change, match):
    filled(tmp_path, TokenData(n=10))
    before = snapshot(tmp_path / "cache")
    with pytest.raises(DistillError, match=match) as err:
        TopKCache(
            tmp_path / "cache",
            change.get("settings", settings()),
            change.get("prints", PRINTS),
            CausalLMTask(),
            ["@logits"],
            TinyLM(VOCAB, seed=1),
        )
    line = str(err.value)
    assert "\n" not in line and ("delete" in line or "set distill.topk_cache" in line)
    assert snapshot(tmp_path / "cache") == before


def test_a_truncated_shard_is_refused_and_left_as_it_is(tmp_path) -> None:
    filled(tmp_path, TokenData(n=10))
    shard = tmp_path / "cache" / shard_file(1)
    shard.write_bytes(shard.read_bytes()[:-16])
    before = snapshot(tmp_path / "cache")
    with pytest.raises(
        DistillError, match=r"shard-00001.safetensors fails verification \(\d+ bytes"
    ):
        TopKCache(tmp_path / "cache", settings(), PRINTS, CausalLMTask(), ["@logits"])
    assert snapshot(tmp_path / "cache") == before


def test_a_changed_shard_of_the_same_size_is_refused(tmp_path) -> None:
    filled(tmp_path, TokenData(n=10))
    shard = tmp_path / "cache" / shard_file(0)
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DistillError, match="fails verification \\(sha256\\)"):
        TopKCache(tmp_path / "cache", settings(), PRINTS, CausalLMTask(), ["@logits"])


def test_a_folder_with_other_files_is_not_taken(tmp_path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "notes.txt").write_text("mine")
    with pytest.raises(DistillError, match="not a cache"):
        TopKCache(
            tmp_path / "cache", settings(), PRINTS, CausalLMTask(), ["@logits"], TinyLM(VOCAB)
        )
    assert (tmp_path / "cache" / "notes.txt").read_text() == "mine"


def test_other_data_with_the_same_indices_is_refused(tmp_path) -> None:
    cache, _ = filled(tmp_path, TokenData(n=10, seed=0))
    other = TokenData(n=10, seed=1)
    batch = CausalLMTask().split(torch.utils.data.default_collate([other[i] for i in (0, 1)]))
    with pytest.raises(DistillError, match="sample 0's tokens differ"):
        cache.outputs(batch, ["@logits"])
    with pytest.raises(DistillError, match="holds 10 training samples, this run's data has 12"):
        cache.prepare(TokenData(n=12), 4, None, True)


def test_a_killed_fill_resumes_with_the_shards_it_wrote(tmp_path) -> None:
    data = TokenData(n=20)
    teacher = TinyLM(VOCAB, seed=1)
    first = TopKCache(tmp_path / "cache", settings(), PRINTS, CausalLMTask(), ["@logits"], teacher)
    first.store.claim(len(data), VOCAB)
    first.fill_shard(data, 1, 4)  # then the process died
    written = (tmp_path / "cache" / shard_file(1)).read_bytes()
    again = TopKCache(tmp_path / "cache", settings(), PRINTS, CausalLMTask(), ["@logits"], teacher)
    calls = []
    original = again.fill_shard
    again.fill_shard = lambda d, i, b: (calls.append(i), original(d, i, b))
    again.prepare(data, 4, None, True)
    assert calls == [0, 2] and again.filled
    assert (tmp_path / "cache" / shard_file(1)).read_bytes() == written


def test_dense_logits_spread_the_rest_evenly() -> None:
    values = torch.log(torch.tensor([[0.5, 0.3]]))
    ids = torch.tensor([[2, 0]], dtype=torch.int32)
    probs = torch.softmax(dense_logits(values, ids, torch.tensor([0.2]), 6), -1)
    assert torch.allclose(probs, torch.tensor([[0.3, 0.05, 0.5, 0.05, 0.05, 0.05]]), atol=1e-6)


@pytest.mark.parametrize("missing", ["renormalise", "tail_bucket"])
def test_the_sparse_topk_tap_feeds_the_topk_losses_as_the_online_teacher_would(tmp_path, missing):
    from distill.losses import build_loss

    data = TokenData(n=12)
    cache, teacher = filled(tmp_path, data)
    batch = CausalLMTask().split(torch.utils.data.default_collate([data[i] for i in (3, 9, 0)]))
    values, ids, rest = cache.outputs(batch, ["@topk"])["@topk"]
    with torch.no_grad():
        expected = topk_of(teacher(batch.inputs["input_ids"]), 4, temperature=2.0)
    assert torch.equal(ids, expected[1].long()) and torch.allclose(values, expected[0], atol=1e-6)
    loss = build_loss("topk_kl", missing=missing, temperature=1.0, capture_temperature=2.0)
    student = TinyLM(VOCAB, seed=5)
    terms = [Term(loss, teacher="@topk", name="topk")]
    cached = Distiller(student, CausalLMTask(), terms=terms, source=cache)(batch).parts["topk"]
    online = TopKCache(tmp_path / "fresh", settings(), PRINTS, CausalLMTask(), ["@topk"], teacher)
    assert not online.filled  # answers from the teacher: the top-k of its logits
    fresh = Distiller(student, CausalLMTask(), terms=terms, source=online)(batch).parts["topk"]
    assert cached.item() == pytest.approx(fresh.item(), rel=1e-6)
