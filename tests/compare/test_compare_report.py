"""Comparison reports: the Pareto front, the self-contained HTML page, failed rows shown as failed."""

from __future__ import annotations

import base64
import json
import re

from distill.report import COMPARE_COLUMNS, pareto_front, write_report


def row(name: str, latency: float | None, accuracy: float | None, **extra: object) -> dict:
    return {
        "name": name,
        "pipeline": name,
        "runtime": "torch",
        "accuracy": accuracy,
        "params": 100,
        "size_bytes": 4096,
        "latency_ms_b1_t1": latency,
        "status": "ok",
        **extra,
    }


def test_pareto_front_keeps_exactly_the_undominated_rows():
    rows = [
        row("slow-best", 10.0, 90.0),
        row("fast-worst", 0.1, 80.0),
        row("dominated", 5.0, 85.0),  # beaten by "middle" on both
        row("middle", 1.0, 88.0),
        row("tie-worse", 1.0, 87.0),  # same latency as "middle", lower accuracy
        row("failed", None, None, status="failed: parity"),
    ]
    front = pareto_front(rows, "latency_ms_b1_t1")
    assert [rows[i]["name"] for i in front] == ["fast-worst", "middle", "slow-best"]
    for i, r in enumerate(rows):  # property: a row is off the front iff another beats it
        if r["accuracy"] is None:
            continue
        beaten = any(
            o["accuracy"] is not None
            and o["latency_ms_b1_t1"] <= r["latency_ms_b1_t1"]
            and o["accuracy"] >= r["accuracy"]
            and (o["latency_ms_b1_t1"], o["accuracy"]) != (r["latency_ms_b1_t1"], r["accuracy"])
            for o in rows
        )
        assert (i in front) != beaten


def test_html_report_is_self_contained_and_marks_failed_rows(tmp_path):
    rows = [
        row("teacher", 2.0, 91.5),
        row("student <KD>", 0.1, 89.25),
        row("student-int8", None, None, status="failed: ONNX parity max |diff| 0.5"),
    ]
    paths = write_report(
        tmp_path,
        rows,
        "compare & check",
        "first paragraph\n\nsecond paragraph",
        columns=COMPARE_COLUMNS,
        plot_keys=("latency_ms_b1_t1", "size_bytes", "pipeline"),
        html=True,
    )
    page = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:|//|[\w./-]+\.(png|css|js))""", page)
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert png and base64.b64decode(png.group(1)) == paths["plot"].read_bytes()
    assert "student &lt;KD&gt;" in page and "<KD>" not in page  # names are escaped
    assert "89.25" in page and "compare &amp; check" in page
    assert page.count("<tr class=failed>") == 1 and "failed: ONNX parity" in page
    assert page.count("<p>") == 2
    payload = json.loads(paths["json"].read_text())
    assert payload["rows"] == rows
    md = paths["md"].read_text()
    assert "| ms @ b1, 1 thread |" in md and "| student-int8 | student-int8 | torch | - |" in md


def test_console_table_fits_80_columns_with_whole_pipeline_names():
    """The terminal table keeps pipeline names, runtimes and numbers whole at 80 columns (the full table with
    every column is in report.md / report.html)."""
    from rich.console import Console

    from distill.report import COMPARE_CONSOLE_COLUMNS, rows_table

    rows = [
        row("student-kd-int8", 0.1025, 86.45, runtime="onnxruntime"),
        row("teacher-pruned", 0.4691, 79.79),
        row(
            "pruned-kd-onnx", None, None, runtime="onnxruntime", status="failed: parity 0.3 > 1e-4"
        ),
    ]
    console = Console(width=80, record=True, color_system=None)
    console.print(rows_table(rows, "distill compare: fashion_mnist/kd", COMPARE_CONSOLE_COLUMNS))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    lines = {line for line in text.splitlines()}
    for name, value in (("student-kd-int8", "0.102"), ("teacher-pruned", "79.79")):
        assert any(name in line and value in line for line in lines), text
    assert "onnxruntime" in text and "failed" in text


def test_speedups_are_against_the_teacher_made_the_same_way():
    """A row's speed-up is against the teacher of the same runtime and precision, per batch and threads;
    never the ratio of two runtimes (issue 22: int8 student / float PyTorch teacher was the old claim)."""
    from distill.compare import add_speedups

    rows = [
        row("teacher", 2.0, 91.0, latency_ms_b256_tall=100.0),
        row("teacher-int8", 0.2, 91.0, runtime="onnxruntime", latency_ms_b256_tall=40.0),
        row("student-kd", 0.5, 89.0, latency_ms_b256_tall=50.0),
        row("student-kd-int8", 0.08, 89.0, runtime="onnxruntime", latency_ms_b256_tall=10.0),
        row("student-kd-onnx", 0.05, 89.0, runtime="onnxruntime"),  # teacher-onnx not measured
    ]
    rows.append(row("student-kd-fp16", None, None, status="failed: parity"))
    add_speedups(rows)
    got = {r["pipeline"]: (r.get("reference"), r.get("speedup_b1_t1")) for r in rows}
    assert got == {
        "teacher": ("teacher", 1.0),
        "teacher-int8": ("teacher-int8", 1.0),
        "student-kd": ("teacher", 4.0),
        "student-kd-int8": ("teacher-int8", 2.5),  # not 2.0 / 0.08 = 25x
        "student-kd-onnx": (None, None),
        "student-kd-fp16": (None, None),
    }
    assert rows[3]["speedup_b256_tall"] == 4.0 and rows[2]["speedup_b256_tall"] == 2.0
    alone = [row("student-kd", 0.5, 88.0)]  # no teacher row: nothing to compare with
    add_speedups(alone)
    assert "speedup_b1_t1" not in alone[0]


def test_missing_reference_teachers_are_added_once_before_their_rows():
    from distill.compare.fair import reference_of, with_references

    names, added = with_references(
        [
            "student-kd",
            "student-kd-int8",
            "student-kd-openvino-int8",
            "student-kd-qat",
            "teacher-int8",
        ]
    )
    assert names == [
        "teacher",
        "student-kd",
        "student-kd-int8",  # teacher-int8 was asked for: it keeps its place
        "teacher-openvino-int8",
        "student-kd-openvino-int8",
        "student-kd-qat",
        "teacher-int8",
    ]
    assert added == ["teacher", "teacher-openvino-int8"]  # teacher-int8 was asked for
    assert (
        reference_of("teacher-pruned") == "teacher"
        and reference_of("pruned-kd-fp16") == "teacher-fp16"
    )


def test_pareto_marks_per_runtime_name_the_dominating_row_and_margin():
    from distill.compare.fair import mark_pareto, pareto_note

    rows = [
        row("teacher", 2.0, 91.0, size_bytes=1000),
        row("student-kd", 0.5, 89.0, size_bytes=30),
        row("teacher-int8", 0.1, 91.5, runtime="onnxruntime", size_bytes=500),
        row("student-kd-int8", 0.12, 89.0, runtime="onnxruntime", size_bytes=18),
        row("student-kd-onnx", 0.05, 89.0, runtime="onnxruntime", size_bytes=32),
        row("student-kd-fp16", None, None, runtime="onnxruntime", status="failed: parity"),
    ]
    mark_pareto(rows)
    by = {r["pipeline"]: r for r in rows}
    # torch: the student is faster and smaller, the teacher more accurate: both on the front
    assert by["teacher"]["pareto"]["latency_ms_b1_t1"] is None
    assert by["student-kd"]["pareto_b1_t1"] == "front"
    # onnxruntime: the int8 teacher beats the int8 student on accuracy AND speed (not on size)
    mark = by["student-kd-int8"]["pareto"]["latency_ms_b1_t1"]
    assert mark == {"by": "teacher-int8", "accuracy_pts": 2.5, "ratio": 1.2}
    assert by["student-kd-int8"]["pareto"]["size_bytes"] is None  # smallest file: on the size front
    assert by["student-kd-onnx"]["pareto"]["latency_ms_b1_t1"] is None  # fastest
    assert "pareto" not in by["student-kd-fp16"]
    assert by["student-kd-int8"]["pareto_b1_t1"] == "teacher-int8: +2.50 pts, 1.2x faster"
    note = pareto_note(rows)
    assert "Pareto, onnxruntime" in note and "Pareto, torch" in note
    assert "dominated student-kd-int8 (by teacher-int8: +2.50 pts, 1.2x faster)" in note
    for r in rows:  # property: off the front iff some row of its runtime beats it
        if "pareto" not in r:
            continue
        beaten = any(
            o is not r
            and o.get("status") == "ok"
            and o["runtime"] == r["runtime"]
            and o["accuracy"] >= r["accuracy"]
            and o["latency_ms_b1_t1"] <= r["latency_ms_b1_t1"]
            and (o["accuracy"], o["latency_ms_b1_t1"]) != (r["accuracy"], r["latency_ms_b1_t1"])
            for o in rows
        )
        assert (r["pareto"]["latency_ms_b1_t1"] is not None) == beaten


def test_int8_rows_slower_than_their_float_file_get_a_note(monkeypatch):
    import distill.report
    from distill.compare import int8_slower_note

    rows = [row("student-kd-onnx", 0.07, 89.0), row("student-kd-int8", 0.09, 89.1)]
    rows.append(row("teacher-int8", 0.2, 91.0))  # no float32 ONNX row of the teacher: no pair
    monkeypatch.setattr(distill.report, "int8_dot_product", lambda: False)
    note = int8_slower_note(rows)
    assert note.startswith("student-kd-int8 (0.090 ms) is slower than student-kd-onnx (0.070 ms)")
    assert "teacher-int8" not in note and "no int8 dot-product instructions" in note
    monkeypatch.setattr(distill.report, "int8_dot_product", lambda: True)
    assert "dot-product" not in int8_slower_note(rows)  # the reason only where it applies
    rows[1]["latency_ms_b1_t1"] = 0.05
    assert int8_slower_note(rows) == ""


def test_int8_dot_product_is_read_from_the_cpu_flags(tmp_path):
    from distill.report import int8_dot_product

    cpuinfo = tmp_path / "cpuinfo"
    for text, want in (
        ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n", False),
        ("flags\t\t: fpu avx2 avx512f avx512_vnni\n", True),
        ("flags\t\t: fpu avx2 avx_vnni\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp\n", True),  # ARM dotprod
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n", False),
        ("processor\t: 0\n", None),  # no flags line: unknown
    ):
        cpuinfo.write_text(text)
        assert int8_dot_product(cpuinfo) is want, text
    assert int8_dot_product(tmp_path / "missing") is None


def test_bench_results_join_the_row_of_the_file_they_timed(tmp_path):
    """A ``distill bench`` result lands on the row whose file has its hash, with the ratio to the
    same-runtime teacher timed on the same machine, batch and threads; others are ignored."""
    from distill.compare.fair import bench_note, merge_bench
    from distill.io import file_sha256

    files = {}
    for name, data in (("teacher-int8", b"teacher"), ("student-kd-int8", b"student")):
        files[name] = tmp_path / f"{name}.onnx"
        files[name].write_bytes(data)
    rows = [row(n, 1.0, 90.0, runtime="onnxruntime", artefact=str(p)) for n, p in files.items()] + [
        row("student-kd", 0.5, 89.0)
    ]

    def result(name, ms, label="pi-5", threads=1):
        return {
            "sha256": file_sha256(files[name]),
            "runtime": "onnxruntime",
            "batch": 1,
            "threads": threads,
            "latency_ms": ms,
            "machine": {"label": label, "cpu": "Cortex-A76"},
        }

    other = {**result("student-kd-int8", 9.0), "sha256": "0" * 64}  # a file not in the comparison
    merge_bench(
        rows,
        [
            result("teacher-int8", 2.0),
            result("student-kd-int8", 0.5),
            result("student-kd-int8", 0.7, "nuc"),
            other,
        ],
    )
    teacher, student, torch_row = rows
    assert [e["machine"] for e in student["bench"]] == ["pi-5", "nuc"]
    assert student["bench"][0]["ratio"] == 4.0  # teacher-int8 on the pi-5 / student-kd-int8 there
    assert "ratio" not in student["bench"][1]  # the teacher was not timed on the nuc
    assert teacher["bench"][0]["ratio"] == 1.0 and "bench" not in torch_row
    note = bench_note(rows)
    assert (
        "| student-kd-int8 | pi-5 | onnxruntime | 1 | 1 | 0.5000 | 4.00x vs teacher-int8 |" in note
    )
