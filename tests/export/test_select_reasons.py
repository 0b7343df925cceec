"""`distill export --select` says why a candidate file could not be made with the whole reason, the
fix at its end included (a missing extra names the pip command)."""

from __future__ import annotations

from pathlib import Path

from distill.errors import DistillError
from distill.export import select


def test_a_missing_extra_keeps_its_fix_in_the_candidate_reason(tmp_path: Path, monkeypatch):
    fix = "pip install 'distill[export]'"
    message = (
        "onnxconverter_common.float16 is not installed (No module named 'onnxconverter_common'); "
        f"ONNX export, parity checks, int8 and float16 conversion and the latency harness need it: {fix}"
    )

    def missing(*args, **kwargs):
        raise DistillError(message)

    monkeypatch.setattr(select, "convert_float16", missing)
    monkeypatch.setattr(select, "quantize_onnx", lambda fp32, out, **kwargs: out)
    made = {c.name: c for c in select.make_candidates(tmp_path / "m.onnx", tmp_path, [1], [])}
    assert made["float16"].path is None and made["float16"].error.endswith(f"{fix})")
    assert made["int8-dynamic"].error is None
