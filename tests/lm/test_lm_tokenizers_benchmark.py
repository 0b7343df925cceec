"""benchmarks/lm_tokenizers.py: the runs it asks for and the JSON key it sets, other keys kept."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_lm_tokenizers", Path(__file__).parents[2] / "benchmarks" / "lm_tokenizers.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_students_share_data_and_teacher_and_the_json_keeps_other_keys(tmp_path: Path, monkeypatch):
    asked = {}
    bpc = {"teacher_bpe": 2.4, "scratch": 3.3, "aligned_kl": 3.2, "aligned_kl_w1": 3.25,
           "marginal_kl": 3.35, "seq_kd": 3.28, "uld_positional": 3.5}  # fmt: skip

    def fake_train(recipe, overrides, out):
        asked[out.name] = (recipe, overrides)
        return {"last": {"bpc": bpc[out.name]}}

    monkeypatch.setattr(bench, "train", fake_train)
    path = tmp_path / "lm_tokenizers.json"
    path.write_text(json.dumps({"other": 1}))
    bench.main(["--out", str(tmp_path), "--steps", "10", "--positional", "--write", str(path)])
    assert set(asked) == set(bpc)
    scratch, aligned = asked["scratch"][1], asked["aligned_kl"][1]
    assert scratch == aligned  # the same rows, steps and teacher; only the recipe differs
    assert asked["aligned_kl_w1"][1][: len(scratch)] == scratch
    assert "data.train_subset=320" in scratch and "data.options.teacher_tokenizer=bpe" in scratch
    assert f"teacher.weights={tmp_path / 'teacher_bpe'}" in scratch
    stored = json.loads(path.read_text())
    assert stored["other"] == 1
    pair = stored["tokenizer_pair"]
    assert pair["aligned_kl_beats_scratch"] and pair["aligned_kl_minus_scratch_bpc"] == -0.1
    assert not pair["marginal_kl_beats_scratch"] and asked["marginal_kl"][1] == scratch
    # seq_kd: the same rows and teacher, its completions written 256 rows at a time
    assert asked["seq_kd"] == ("shakespeare/seq_kd_bpe", [*scratch, "train.eval_batch_size=256"])
    assert pair["seq_kd_beats_scratch"] and pair["seq_kd_minus_scratch_bpc"] == -0.02
