"""benchmarks/lm_cache.py writes only its own top-level figure to lm.json: the on-policy ratios and
topk_retention at the top are benchmarks/lm.py's, named by on_policy_recipe, and a rerun of this
benchmark must not replace them with figures of other students."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_lm_cache", Path(__file__).parents[2] / "benchmarks" / "lm_cache.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_update_keeps_lm_py_figures_and_sets_cache_speedup(tmp_path: Path):
    path = tmp_path / "lm.json"
    owned = {"on_policy_sample_nll_ratio": 0.93, "on_policy_recipe": "shakespeare/on_policy_stage2",
             "topk_retention": 1.1, "cache_speedup": 2.0}  # fmt: skip
    path.write_text(json.dumps(owned))
    summary = {"cache_speedup": (3.0, 0.1), "topk_retention": (0.4, 0.1),
               "on_policy_sample_nll_ratio": (1.3, 0.1)}  # fmt: skip
    bench.update_json(path, summary, "lm_cache_speed")
    data = json.loads(path.read_text())
    assert data["cache_speedup"] == 3.0
    assert {k: data[k] for k in owned if k != "cache_speedup"} == {
        k: v for k, v in owned.items() if k != "cache_speedup"
    }
    assert data["lm_cache_speed"]["on_policy_sample_nll_ratio"] == [1.3, 0.1]
