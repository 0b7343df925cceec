"""The ``distill`` command: exit codes (0 ok, 2 user error), one-line errors without tracebacks, and the
train -> refuse -> resume/overwrite -> eval cycle on a tiny recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import commands, main
from helpers import RECIPES_DIR, count_of, recipe_id, shipped_recipes, tiny_recipe_dict

DISTILL = Path(sys.executable).parent / "distill"
RUNNABLE = shipped_recipes()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to runs/ lands in tmp_path


@pytest.fixture(autouse=True)
def _fixed_console_width(monkeypatch):
    """Output must not depend on the terminal the suite happens to run in (CI has 80 columns)."""
    monkeypatch.setattr(commands.console, "_width", 160)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *needles: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {err!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in err
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def run_script(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(DISTILL), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- list / help
@pytest.mark.parametrize(
    "what, names",
    [
        ("losses", ["kd", "fitnet", "Hinton"]),
        ("models", ["cnn", "cnn_small", "mlp", "resnet8"]),
        ("datasets", ["fashion_mnist"]),
        ("tasks", ["classification"]),
        ("projectors", ["conv1x1", "linear"]),
        ("schedules", ["linear_warmup", "constant"]),
        ("callbacks", ["early_stopping"]),
        (
            "recipes",
            [
                "fashion_mnist/kd",
                "fashion_mnist/teacher",
                "fashion_mnist/fitnet",
                "fashion_mnist/scratch",
            ],
        ),
    ],
)
def test_list(capsys, what, names):
    code, out, err = run_cli(capsys, "list", what)
    assert code == 0, err
    assert err == ""
    for name in names:
        assert name in out, f"{name!r} missing from `distill list {what}`"


def test_list_recipes_keeps_brackets_in_descriptions(capsys):
    """Recipe descriptions are text, not rich markup: kd.yaml's '[Hinton et al. 2015]' must survive."""
    code, out, _ = run_cli(capsys, "list", "recipes")
    assert code == 0 and "[Hinton et al." in out and "fashion_mnist/_base" not in out


def test_list_unknown_suggests(capsys):
    code, out, err = run_cli(capsys, "list", "lossez")
    assert code == 2 and out == ""
    assert_one_error_line(err, "'lossez'", "Did you mean 'losses'?")


def test_help(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("train", "eval", "validate", "config", "list", "demo"):
        assert command in out


def test_error_messages_are_printed_verbatim(capsys, monkeypatch):
    """A DistillError's text is not interpreted as rich markup and stays on one line."""
    from distill import api
    from distill.errors import DistillError

    def boom(paths):
        raise DistillError("bad [bold]thing[/bold] in [base.yaml]; fix it")

    monkeypatch.setattr(api, "validate", boom)
    code, out, err = run_cli(capsys, "validate", "whatever.yaml")
    assert code == 2
    assert_one_error_line(err, "bad [bold]thing[/bold] in [base.yaml]; fix it")


# ----------------------------------------------------------------------------- validate / config
def test_validate_all_shipped_recipes(capsys):
    code, out, err = run_cli(capsys, "validate", *map(str, RUNNABLE))
    assert code == 0, err
    assert out.count("ok ") == len(RUNNABLE)
    for path in RUNNABLE:
        assert str(path) in out


def test_validate_glob_with_include_fragments(capsys, tmp_path, monkeypatch):
    """`distill validate recipes/x/*.yaml` (as the README shows) passes over _fragments but still parses them.

    One line per file even on a narrow terminal (long checkout paths once wrapped mid-word on CI)."""
    monkeypatch.setattr(commands.console, "_width", 40)
    fragments = sorted(RECIPES_DIR.rglob("_*.yaml"))
    assert fragments, "the shipped recipes are expected to use an include fragment"
    code, out, err = run_cli(capsys, "validate", *map(str, fragments + RUNNABLE))
    assert code == 0, err
    lines = out.strip("\n").splitlines()
    assert len(lines) == len(fragments) + len(RUNNABLE), out
    assert out.count("(include fragment)") == len(fragments)
    (tmp_path / "_broken.yaml").write_text("train: {lr: [1\n")
    code, _, err = run_cli(capsys, "validate", str(tmp_path / "_broken.yaml"))
    assert code == 2 and "YAML syntax error" in err


def test_validate_shipped_recipes_by_name(capsys):
    code, out, _ = run_cli(capsys, "validate", *(recipe_id(p) for p in RUNNABLE))
    assert code == 0 and out.count("ok ") == len(RUNNABLE) and "(fashion_mnist-kd)" in out


def test_validate_bad_recipe(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nstudent: {name: cnn}\ntrian: {lr: 0.1}\n")
    code, out, err = run_cli(capsys, "validate", "bad.yaml")
    assert code == 2
    assert_one_error_line(err, "bad.yaml", "trian", "Did you mean 'train'?")


def test_validate_stops_at_first_bad_recipe_with_exit_2(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nstudent: {name: cnnn}\n")
    code, _, err = run_cli(capsys, "validate", str(RUNNABLE[0]), "bad.yaml")
    assert code == 2
    assert_one_error_line(err, "'cnnn'", "Did you mean 'cnn'")


def test_config_prints_resolved_yaml_with_override(capsys):
    import yaml

    code, out, err = run_cli(capsys, "config", "fashion_mnist/kd", "train.lr=0.3")
    assert code == 0, err
    assert "  lr: 0.3" in out.splitlines()
    data = yaml.safe_load(out)
    assert data["train"]["lr"] == 0.3 and data["name"] == "fashion_mnist-kd"
    teacher_recipe = yaml.safe_load(run_cli(capsys, "config", "fashion_mnist/teacher")[1])
    assert data["teacher"]["name"] == teacher_recipe["student"]["name"]
    assert (
        data["teacher"]["options"] == teacher_recipe["student"]["options"]
    )  # the model the teacher run trains
    assert "defaults" not in data


def test_config_bad_override(capsys):
    code, out, err = run_cli(capsys, "config", "fashion_mnist/kd", "trainlr")
    assert code == 2 and out == ""
    assert_one_error_line(err, "'trainlr'", "key=value")


def test_train_missing_recipe_suggests_shipped(capsys):
    code, _, err = run_cli(capsys, "train", "fashion_mnist/kdd")
    assert code == 2
    assert_one_error_line(
        err, "'fashion_mnist/kdd'", "not found", "Did you mean 'fashion_mnist/kd'"
    )


def test_eval_on_a_folder_that_is_not_a_run(capsys, tmp_path):
    (tmp_path / "not-a-run").mkdir()
    code, _, err = run_cli(capsys, "eval", "not-a-run")
    assert code == 2
    assert_one_error_line(err, "not-a-run", "not a distill run directory")


def test_eval_on_a_missing_folder(capsys):
    code, _, err = run_cli(capsys, "eval", "no-such-dir")
    assert code == 2
    assert_one_error_line(err, "no-such-dir")


# ----------------------------------------------------------------------------- train / eval cycle
@pytest.fixture
def tiny_yaml(tmp_path, write_recipe):
    return write_recipe(tiny_recipe_dict(tmp_path / "run"), "tiny.yaml")


def test_train_refuse_resume_overwrite_eval(capsys, tmp_path, tiny_yaml):
    run = tmp_path / "run"
    ckpt = run / "checkpoints"

    code, out, err = run_cli(capsys, "train", str(tiny_yaml))
    assert code == 0, err
    assert "done:" in out and str(run) in out
    manifest = json.loads((ckpt / "manifest.json").read_text())
    last_file = manifest["last"][0]["file"]
    assert {last_file, manifest["best"]["file"]} <= {p.name for p in ckpt.iterdir()}
    assert (
        (run / "recipe.yaml").is_file()
        and (run / "summary.json").is_file()
        and (run / "metrics.jsonl").is_file()
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4  # 256 samples / batch 64, one epoch
    assert summary["best"]["epoch"] == 1
    assert count_of(summary["best"]["top1"], 128) > 128 // 10  # of 128 test images, above chance
    first = snapshot(ckpt)

    # again, without --resume/--overwrite: refused before touching anything
    code, out, err = run_cli(capsys, "train", str(tiny_yaml))
    assert code == 2
    assert_one_error_line(err, str(run), "--resume", "--overwrite")
    assert snapshot(ckpt) == first

    # --resume after it finished: nothing to do, checkpoints untouched
    code, out, err = run_cli(capsys, "train", str(tiny_yaml), "--resume")
    assert code == 0, err
    assert snapshot(ckpt) == first
    assert json.loads((run / "summary.json").read_text())["steps"] == 4

    # --overwrite of a run that cannot even be built (missing teacher weights): the old run survives
    bad_teacher = (
        "teacher={name: cnn, options: {channels: [4, 8]}, weights: no/such/teacher.safetensors}"
    )
    code, out, err = run_cli(capsys, "train", str(tiny_yaml), bad_teacher, "--overwrite")
    assert code == 2
    assert_one_error_line(err, "no/such/teacher.safetensors")
    assert snapshot(ckpt) == first

    # --overwrite: trains again from scratch (fresh files, same seed -> same weights)
    code, out, err = run_cli(capsys, "train", str(tiny_yaml), "--overwrite")
    assert code == 0, err
    again = snapshot(ckpt)
    assert again.keys() == first.keys()
    assert again[last_file][1] != first[last_file][1]  # rewritten
    assert again[last_file][0] == first[last_file][0]  # deterministic training
    best = json.loads((run / "summary.json").read_text())["best"]

    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0, err
    assert "top1" in out and "agreement" not in out  # no teacher in this recipe
    assert (
        f"{best['top1']:.4g}" in out
    )  # eval of the best checkpoint matches what training recorded


def test_train_with_overrides_and_output_override(capsys, tmp_path, tiny_yaml):
    other = tmp_path / "elsewhere"
    code, _, err = run_cli(capsys, "train", str(tiny_yaml), f"output={other}", "train.max_steps=2")
    assert code == 0, err
    assert json.loads((other / "summary.json").read_text())["steps"] == 2
    assert not (tmp_path / "run").exists()
    import yaml

    saved = yaml.safe_load((other / "recipe.yaml").read_text())
    assert saved["output"] == str(other) and saved["train"]["max_steps"] == 2


def test_train_into_unwritable_output(capsys, tmp_path, write_recipe):
    (tmp_path / "afile").write_text("I am a file")
    recipe = write_recipe(tiny_recipe_dict(tmp_path / "afile" / "run"), "unwritable.yaml")
    code, _, err = run_cli(capsys, "train", str(recipe))
    assert code == 2
    assert_one_error_line(err, "afile")
    assert (tmp_path / "afile").read_text() == "I am a file"


# ----------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("argv", [["train"], ["nosuchcmd"], ["list", "losses", "--bogus"]])
def test_usage_errors_exit_2_in_process(capsys, argv):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- the real console script
def test_console_script_exit_codes(tmp_path):
    assert DISTILL.is_file()
    (tmp_path / "bad.yaml").write_text("name: x\nstudent: {name: cnn}\ntrain: {lrr: 0.1}\n")
    done = run_script("validate", "bad.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert_one_error_line(done.stderr, "bad.yaml", "train.lrr", "Did you mean 'lr'?")
    assert done.stdout == ""

    done = run_script("--help", cwd=tmp_path)
    assert done.returncode == 0 and "validate" in done.stdout and done.stderr == ""


def test_console_script_usage_error_has_no_traceback(tmp_path):
    done = run_script("nosuchcmd", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "nosuchcmd" in done.stderr
