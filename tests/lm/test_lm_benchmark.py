"""benchmarks/lm.py's arithmetic: the gap closed per seed, and a JSON update that keeps other keys."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_lm", Path(__file__).parents[2] / "benchmarks" / "lm.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _rows(variant, pairs):
    return [
        {"variant": variant, "method": m, "seed": s, "bpc": b, "seconds": 1.0}
        for s, (scratch, kd) in enumerate(pairs)
        for m, b in (("scratch", scratch), ("kd", kd))
    ]


def test_gap_closed_is_paired_by_seed():
    rows = _rows("offline", [(2.0, 1.9), (2.2, 2.0)]) + _rows("scarce", [(2.5, 2.6)])
    summary = bench.summarise(rows, teacher_bpc=1.5)
    # seed 0: 0.1 / 0.5; seed 1: 0.2 / 0.7
    assert summary["offline"]["gap_closed_per_seed"] == pytest.approx([0.2, 0.2 / 0.7])
    assert summary["offline"]["kd_beats_scratch_every_seed"]
    assert summary["scarce"]["gap_closed"][0] == pytest.approx(-0.1)  # KD worse: a negative share
    assert not summary["scarce"]["kd_beats_scratch_every_seed"]


def test_json_update_keeps_the_other_benchmarks_keys(tmp_path: Path):
    path = tmp_path / "lm.json"
    path.write_text(json.dumps({"topk_retention": 0.93, "offline_gap_closed": 0.01}))
    summary = bench.summarise(_rows("offline", [(2.0, 1.9)]), teacher_bpc=1.5)
    bench.update_json(path, summary)
    data = json.loads(path.read_text())
    assert data["topk_retention"] == 0.93 and data["offline_gap_closed"] == pytest.approx(0.2)
    assert "scarce_gap_closed" not in data  # not measured: not written


def test_topk_retention_is_paired_by_seed_and_written_where_cached_ran(tmp_path: Path):
    rows = _rows("offline", [(2.0, 1.8), (2.2, 1.8)]) + _rows("scarce", [(2.5, 2.4)])
    rows += [
        {"variant": "offline", "method": "cached", "seed": s, "bpc": b, "seconds": 1.0}
        for s, b in ((0, 1.85), (1, 2.0))
    ]
    summary = bench.summarise(rows, teacher_bpc=1.5)
    # seed 0: 0.15 / 0.2; seed 1: 0.2 / 0.4
    assert summary["offline"]["topk_retention_per_seed"] == pytest.approx([0.75, 0.5])
    assert summary["offline"]["cached_bpc"][0] == pytest.approx(1.925)
    assert "topk_retention" not in summary["scarce"]  # no cached student there
    path = tmp_path / "lm.json"
    bench.update_json(path, summary)
    assert json.loads(path.read_text())["topk_retention"] == pytest.approx(0.625)


def test_write_keeps_the_hand_written_sections_of_an_existing_page(tmp_path: Path):
    page = tmp_path / "lm.md"
    hand = (
        "## Reading (written by hand after the runs)\n\nBudget and load: ...\n\n"
        "## Different tokenizers: character-aligned KD\n\nmarginal_kl beats ...\n"
    )
    page.write_text("# Causal LM: old table\n\n| old | 1 |\n\n" + hand)
    bench.write_page(page, "# Causal LM: new table\n\n| new | 2 |\n")
    text = page.read_text()
    assert text == "# Causal LM: new table\n\n| new | 2 |\n\n" + hand
    assert "old" not in text.split("## Reading")[0]


def test_write_keeps_from_a_marker_line_and_writes_a_new_page_whole(tmp_path: Path):
    page = tmp_path / "lm.md"
    page.write_text(f"# old\n{bench.KEEP_MARKER}\nnotes\n## Reading later\n")
    bench.write_page(page, "# new\n")
    assert page.read_text() == f"# new\n\n{bench.KEEP_MARKER}\nnotes\n## Reading later\n"
    fresh = tmp_path / "fresh.md"
    bench.write_page(fresh, "# new\n")
    assert fresh.read_text() == "# new\n"


def test_on_policy_ratios_are_paired_by_seed_against_kd_more_and_written(tmp_path: Path):
    rows = _rows("offline", [(2.0, 1.8), (2.2, 1.9)])
    for row in rows:
        row["nll"], row["sample_nll"] = (2.5, 6.0) if row["method"] == "kd" else (3.0, 9.0)
    rows += [
        {"variant": "offline", "method": m, "seed": s, "bpc": 2.5, "seconds": 1.0,
         "nll": n, "sample_nll": sn}
        for m, s, n, sn in (("kd_more", 0, 2.0, 4.0), ("kd_more", 1, 2.0, 5.0),
                            ("on_policy", 0, 2.02, 3.6), ("on_policy", 1, 2.1, 4.0))
    ]  # fmt: skip
    summary = bench.summarise(rows, teacher_bpc=1.5)["offline"]
    # the student's own samples scored by the teacher, on_policy / kd_more (the same total steps);
    # the held-out NLL the same way; against the first stage's kd for reference
    assert summary["on_policy_sample_nll_ratio_per_seed"] == pytest.approx([0.9, 0.8])
    assert summary["on_policy_heldout_nll_ratio_per_seed"] == pytest.approx([1.01, 1.05])
    assert summary["on_policy_sample_nll_ratio_vs_kd_per_seed"] == pytest.approx([0.6, 4.0 / 6])
    path = tmp_path / "lm.json"
    path.write_text(json.dumps({"cache_speedup": 2.5}))
    bench.update_json(path, {"offline": summary})
    data = json.loads(path.read_text())
    assert data["on_policy_sample_nll_ratio"] == pytest.approx(0.85)
    assert data["on_policy_heldout_nll_ratio"] == pytest.approx(1.03)
    assert (data["on_policy_recipe"], data["on_policy_lam"]) == (
        "shakespeare/on_policy_stage2",
        1.0,
    )
    assert data["cache_speedup"] == 2.5
    line = bench.on_policy_lines({"offline": summary})
    # 0.85 on the mean, 0.9 and 0.8 per seed; 1.03 on the mean
    assert "0.95 met on every seed" in line and "1.02 **not met**" in line
    summary["on_policy_sample_nll_ratio_per_seed"] = [0.8, 0.96]
    assert "0.95 met on the mean, **not on every seed**" in bench.on_policy_lines(
        {"offline": summary}
    )


def test_second_stage_starts_from_the_seeds_kd_run_with_equal_steps_and_rate():
    args = bench.argparse.Namespace(
        steps=1000, scarce_steps=2000, scarce_eval_every=2, fraction=0.1, kd_k=32, topk_k=8,
        out="runs/x", stage2_steps=150, stage2_lr=7e-4,
    )  # fmt: skip
    teacher = Path("runs/teacher")
    on_policy = bench.student_recipe(args, "offline", "on_policy", 2, teacher)
    kd_more = bench.student_recipe(args, "offline", "kd_more", 2, teacher)
    for recipe in (on_policy, kd_more):
        assert recipe.student.weights == str(Path("runs/x/offline-kd-s2"))
        assert (recipe.train.max_steps, recipe.train.lr, recipe.train.seed) == (150, 7e-4, 2)
    assert on_policy.distill.data_mode.lam == 1.0 and on_policy.distill.task_weight == 0.0
    # kd_more is kd's loss on the text, read from kd's cache
    assert kd_more.distill.data_mode is None
    assert [t.loss for t in kd_more.distill.terms] == ["forward_kl"]
    assert kd_more.distill.topk_cache.dir == str(Path("runs/x/cache/offline-k32"))


def test_scarce_runs_its_own_steps_and_keeps_a_held_out_curve():
    args = bench.argparse.Namespace(
        steps=1000, scarce_steps=3000, scarce_eval_every=2, fraction=0.1, kd_k=32, topk_k=8,
        out="runs/x", scarce_student="", scarce_student_option=[], scarce_lr=[],
    )  # fmt: skip
    teacher = Path("runs/teacher")
    scarce = bench.student_recipe(args, "scarce", "scratch", 0, teacher)
    offline = bench.student_recipe(args, "offline", "scratch", 0, teacher)
    assert (scarce.train.max_steps, scarce.train.eval_every) == (3000, 2)
    assert (offline.train.max_steps, offline.train.eval_every) == (1000, 1000)
    # enough passes over the tenth for the steps asked
    per_epoch = -(-scarce.data.train_subset // scarce.train.batch_size)
    assert scarce.train.epochs * per_epoch >= 3000


def test_scarce_curves_are_kept_per_method_and_shown():
    rows = _rows("scarce", [(2.5, 2.4)])
    for row in rows:
        row["curve"] = [
            (100, 2.7),
            (200, 2.45 if row["method"] == "scratch" else 2.4),
            (300, row["bpc"]),
        ]
    summary = bench.summarise(rows, teacher_bpc=1.5)
    assert summary["scarce"]["curves"]["scratch"] == [[(100, 2.7), (200, 2.45), (300, 2.5)]]
    # the scratch student's best (2.45) is below its last (2.5): the page shows both
    assert "2.450, 2.500" in bench.curve_lines(summary)
    assert (
        "curves" not in bench.summarise(_rows("offline", [(2.0, 1.9)]), teacher_bpc=1.5)["offline"]
    )


def test_scarce_student_and_rates_change_the_scarce_recipes_only():
    args = bench.parse_args(
        ["--scarce-student", "gpt", "--scarce-student-option", "n_layer=2", "n_embd=128",
         "--scarce-lr", "scratch=3e-3", "kd=2e-3", "--out", "runs/x"]
    )  # fmt: skip
    teacher = Path("runs/teacher")
    scratch = bench.student_recipe(args, "scarce", "scratch", 1, teacher)
    kd = bench.student_recipe(args, "scarce", "kd", 1, teacher)
    for recipe in (scratch, kd):
        assert recipe.student.name == "gpt"
        assert recipe.student.options == {"n_layer": 2, "n_embd": 128}
    assert (scratch.train.lr, kd.train.lr) == (3e-3, 2e-3)
    assert [t.loss for t in kd.distill.terms] == ["forward_kl"]
    # all the text keeps the recipes' student and rates
    offline = bench.student_recipe(args, "offline", "scratch", 1, teacher)
    assert (offline.student.name, offline.student.options) == ("gpt_student", {})
    assert offline.train.lr == 4.2e-3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scarce-lr", "scratch"], "expected METHOD=LR"),
        (["--scarce-lr", "teacher=1e-3"], "'teacher=1e-3'"),
        (["--scarce-lr", "kd=-1"], "'kd=-1'"),
        (["--scarce-student-option", "n_layer"], "expected KEY=VALUE"),
        (["--scarce-only", "--write", "x.md"], "pass --variants scarce"),
    ],
)
def test_bad_scarce_arguments_exit_2_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_scarce_only_json_sets_the_scarce_keys_and_keeps_every_other(tmp_path: Path):
    path = tmp_path / "lm.json"
    kept = {
        "offline_gap_closed": 0.35,
        "scarce_gap_closed": 0.17,
        "lm_kd_gap": {"scarce": {"x": 1}},
    }
    path.write_text(json.dumps(kept))
    args = bench.parse_args(
        ["--seeds", "0", "1", "--variants", "scarce", "--scarce-student", "gpt",
         "--scarce-student-option", "n_layer=1", "--scarce-lr", "kd=2e-3", "--out", "runs/x"]
    )  # fmt: skip
    summary = bench.summarise(_rows("scarce", [(2.5, 2.0), (2.5, 2.4)]), teacher_bpc=1.5)
    bench.update_scarce_json(path, summary, args, Path("runs/teacher"))
    data = json.loads(path.read_text())
    # seed 0: 0.5 / 1.0; seed 1: 0.1 / 1.0
    assert data["scarce_gap_closed"] == pytest.approx(0.3)
    assert data["scarce_gap_closed_per_seed"] == pytest.approx([0.5, 0.1])
    student = data["scarce_student"]
    assert (student["model"], student["options"]) == ("gpt", {"n_layer": 1})
    assert student["lr"] == {"scratch": 4.2e-3, "kd": 2e-3}
    assert 0 < student["parameters"] < 300_000  # one block of 128, not the teacher's four
    assert data["lm_scarce"]["gap_closed_per_seed"] == pytest.approx([0.5, 0.1])
    assert {k: data[k] for k in ("offline_gap_closed", "lm_kd_gap")} == {
        "offline_gap_closed": 0.35,
        "lm_kd_gap": {"scarce": {"x": 1}},
    }


def test_a_full_write_keeps_the_scarce_figure_of_the_scarce_only_student(tmp_path: Path):
    path = tmp_path / "lm.json"
    path.write_text(json.dumps({"scarce_gap_closed": 0.4, "scarce_student": {"model": "gpt"}}))
    rows = _rows("offline", [(2.0, 1.9)]) + _rows("scarce", [(2.5, 2.6)])
    bench.update_json(path, bench.summarise(rows, teacher_bpc=1.5))
    data = json.loads(path.read_text())
    assert data["scarce_gap_closed"] == 0.4 and data["offline_gap_closed"] == pytest.approx(0.2)


def test_a_student_alone_below_the_teacher_leaves_no_gap_and_no_figure(tmp_path: Path):
    path = tmp_path / "lm.json"
    path.write_text(json.dumps({"scarce_gap_closed": 0.17}))
    args = bench.parse_args(
        ["--seeds", "0", "1", "--variants", "scarce", "--scarce-student", "gpt", "--out", "runs/x"]
    )
    # seed 1's student alone (2.4) beats the teacher (2.5): (2.4 - 2.3) / (2.4 - 2.5) would read -100 %
    rows = _rows("scarce", [(2.6, 2.55), (2.4, 2.3)])
    summary = bench.summarise(rows, teacher_bpc=2.5)
    scarce = summary["scarce"]
    assert scarce["scratch_below_teacher_seeds"] == [1]
    assert scarce["kd_minus_scratch_bpc_per_seed"] == pytest.approx([-0.05, -0.1])
    bench.update_scarce_json(path, summary, args, Path("runs/teacher"))
    data = json.loads(path.read_text())
    assert data["scarce_gap_closed"] == 0.17 and "scarce_student" not in data
    assert data["lm_scarce"]["student"]["model"] == "gpt"
    assert data["lm_scarce"]["scratch_below_teacher_seeds"] == [1]
    assert "**not measured**" in bench.status(summary) and "none to close" in bench.table(
        summary, args
    )


def test_another_teacher_keeps_its_own_scarce_key_and_names_itself(tmp_path: Path):
    path = tmp_path / "lm.json"
    path.write_text(json.dumps({"lm_scarce": {"kept": 1}, "scarce_gap_closed": 0.17}))
    args = bench.parse_args(
        ["--seeds", "0", "1", "--variants", "scarce", "--scarce-student", "gpt",
         "--teacher", "shakespeare/teacher_long", "--out", "runs/x"]
    )  # fmt: skip
    summary = bench.summarise(_rows("scarce", [(2.5, 2.0), (2.5, 2.4)]), teacher_bpc=1.5)
    bench.update_scarce_json(path, summary, args, Path("runs/teacher"))
    data = json.loads(path.read_text())
    assert data["lm_scarce"] == {"kept": 1}  # the default teacher's result stays
    assert data["lm_scarce_teacher_long"]["teacher"] == "shakespeare/teacher_long"
    assert data["scarce_teacher"] == "shakespeare/teacher_long"
    assert data["scarce_gap_closed"] == pytest.approx(0.3)
    assert "4 epochs" in bench.teacher_line("shakespeare/teacher_long")
    assert "1 epoch of" in bench.teacher_line(bench.TEACHER)
