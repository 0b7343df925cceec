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


def test_speedups_are_against_the_teacher_row_at_batch_1():
    from distill.compare import add_speedups

    rows = [row("teacher", 2.0, 91.0), row("student-kd-int8", 0.08, 89.0)]
    rows.append(row("student-kd-onnx", None, None, status="failed: parity"))
    add_speedups(rows)
    assert [r.get("speedup_b1_t1") for r in rows] == [1.0, 25.0, None]
    alone = [row("student-kd", 0.5, 88.0)]  # no teacher row: nothing to compare with
    add_speedups(alone)
    assert "speedup_b1_t1" not in alone[0]


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
