"""``distill export --select``: per target the fastest file within the accuracy budget, with a reason per
candidate (timer stubbed: the choice must follow the timings, not this machine's); ``distill bench``:
a JSON result, read back and checked; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from distill import api
from distill.cli import main
from distill.errors import DistillError
from distill.export.select import Candidate, choose
from helpers import tiny_recipe_dict

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def cand(name: str, metric: float | None, ms: float | None, error: str | None = None) -> Candidate:
    return Candidate(name, Path(f"{name}.onnx"), error=error, metric=metric, latency_ms=ms)


def test_choose_takes_the_fastest_candidate_within_the_budget():
    candidates = [
        cand("float32", 90.0, 0.10),
        cand("float16", 89.5, 0.08),
        cand("int8-static", 88.5, 0.05),  # fastest, but 1.5 points down
        cand("int8-dynamic", 89.9, 0.20),
        cand("int8-mixed", None, None, error="no layer is faster in int8"),
    ]
    chosen, reasons = choose(candidates, reference=90.0, budget=1.0)
    assert chosen is not None and chosen.name == "float16"
    assert reasons["float16"].startswith("chosen: fastest within the budget (0.0800 ms")
    assert "1.50 points below" in reasons["int8-static"] and "budget of 1" in reasons["int8-static"]
    assert "1.25x the time of float16" in reasons["float32"]
    assert reasons["int8-mixed"] == "not a candidate: no layer is faster in int8"
    # a wider budget admits the int8 file; none within a negative margin
    assert choose(candidates, 90.0, 2.0)[0].name == "int8-static"
    assert choose(candidates, 95.0, 1.0)[0] is None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("select-run")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(folder / "run")))
    api.train(recipe)
    return folder / "run"


def stub_timer(times: dict[str, float], seen: list):
    """Latency by file name pattern (int8 single-layer files: by layer index)."""

    def timer(path: Path, runtime: str) -> float:
        seen.append((path.name, runtime))
        for pattern, ms in times.items():
            if pattern in path.name:
                return ms
        raise AssertionError(f"no stub time for {path.name}")

    return timer


def test_export_select_picks_the_fastest_passing_file_per_target(run_dir, tmp_path):
    from distill.export import export_run
    from distill.export.select import compute_nodes

    seen: list = []
    # layer 0 faster in int8 than float32, the others slower: int8-mixed quantizes layer 0 alone
    times = {
        "layer0.": 0.5,
        "layer": 2.0,
        "int8-mixed": 0.4,
        "int8-static": 0.6,
        "int8-dynamic": 3.0,
        "fp16": 0.9,
        "student.onnx": 1.0,
    }
    result = export_run(
        run_dir,
        checkpoint="last",
        out=tmp_path / "x",
        select=True,
        budget=100.0,  # every file passes: the timings decide
        timer=stub_timer(times, seen),
    )
    picked = result["selection"]["onnxruntime"]
    assert picked["chosen"] == "int8-mixed" and picked["reason"].startswith("chosen")
    assert Path(picked["path"]).is_file() and Path(picked["path"]).parent == tmp_path / "x"
    by_name = {c["name"]: c for c in picked["candidates"]}
    assert list(by_name) == ["float32", "float16", "int8-static", "int8-dynamic", "int8-mixed"]
    nodes = compute_nodes(tmp_path / "x" / "student.onnx")
    assert by_name["int8-mixed"]["int8_layers"] == nodes[:1]
    assert by_name["int8-mixed"]["layer_ratios"][nodes[1]] == 2.0
    assert "0.6000 ms, 1.50x the time of int8-mixed" in by_name["int8-static"]["reason"]
    for c in by_name.values():
        assert c["metric"] is not None and (tmp_path / "x" / c["file"]).is_file()
    saved = json.loads((tmp_path / "x" / "export.json").read_text())
    assert saved["selection"]["onnxruntime"]["file"] == picked["file"]
    assert not (tmp_path / "x" / ".layers").exists()  # the one-layer timing files are gone
    assert {runtime for _, runtime in seen} == {"onnxruntime"}


def test_export_select_without_a_faster_int8_layer_says_so_and_keeps_the_budget(run_dir, tmp_path):
    from distill.export import export_run

    times = {"layer": 1.5, "int8": 0.2, "fp16": 0.9, "student.onnx": 1.0}
    result = export_run(
        run_dir,
        checkpoint="last",
        out=tmp_path / "y",
        select=True,
        budget=0.0,
        timer=stub_timer(times, []),
    )
    picked = result["selection"]["onnxruntime"]
    by_name = {c["name"]: c for c in picked["candidates"]}
    assert by_name["int8-mixed"]["file"] is None
    assert by_name["int8-mixed"]["reason"].startswith("not a candidate: no layer is faster in int8")
    reference = result["metrics"]["torch"]["top1"]
    passing = [c for c in by_name.values() if c["metric"] is not None and c["metric"] >= reference]
    fastest = min(passing, key=lambda c: c["latency_ms"])
    assert picked["chosen"] == fastest["name"]  # float32 passes a zero budget: never None here


def test_bench_writes_a_result_that_compare_reads(run_dir, tmp_path, capsys):
    from distill.export import export_run
    from distill.export.bench import read_results
    from distill.io import file_sha256

    folder = tmp_path / "b"
    export_run(run_dir, checkpoint="last", out=folder)
    onnx = folder / "student.onnx"
    code = main(
        [
            "bench",
            str(onnx),
            "--batch",
            "4",
            "--threads",
            "1",
            "--repeats",
            "3",
            "--label",
            "pi-5",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "student.onnx on onnxruntime" in out and "batch 4, threads 1" in out
    (result,) = read_results([tmp_path / "r.json"])
    assert result["sha256"] == file_sha256(onnx) and result["size_bytes"] == onnx.stat().st_size
    assert (result["batch"], result["threads"], result["precision"]) == (4, 1, "float32")
    assert result["machine"]["label"] == "pi-5" and result["latency_ms"] > 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--runtime", "onnxrt"], "unknown runtime 'onnxrt'"),
        (["--batch", "0"], "--batch must be an int >= 1"),
        (["--threads", "-1"], "--threads must be >= 1"),
    ],
)
def test_bench_bad_options_are_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "m.onnx").write_bytes(b"not onnx")
    code = main(["bench", str(tmp_path / "m.onnx"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "not found"),
        (b"not onnx", "is not an ONNX file"),
    ],
)
def test_bench_bad_files_are_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    code = main(["bench", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{", "is not JSON"),
        ('{"file": "a.onnx"}', "'sha256' is None"),
        ("[1]", "holds int"),
    ],
)
def test_bad_bench_results_are_refused(tmp_path, content, needle):
    from distill.export.bench import read_results

    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(DistillError, match=needle):
        read_results([path])
    with pytest.raises(DistillError, match="not found"):
        read_results([tmp_path / "missing.json"])


def test_export_bad_target_and_budget_are_one_line(run_dir, capsys):
    code = main(["export", str(run_dir), "--select", "--targets", "openvno"])
    err = capsys.readouterr().err
    assert (
        code == 2 and "unknown target runtime 'openvno'" in err and "Did you mean 'openvino'" in err
    )
    code = main(["export", str(run_dir), "--select", "--budget", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "budget must be >= 0" in err
