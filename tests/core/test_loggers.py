"""train.loggers: a tiny run's records reach every logger it names, with the recipe and the summary.

W&B runs offline (its run folder is read back) and MLflow logs to a local file store (read back through
its client); both tests are skipped where the package is missing."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from distill import api
from distill.config.build import build, make_trainer
from distill.config.schema import Recipe
from distill.errors import DistillError
from distill.train.callbacks import Callback
from distill.train.loggers import LOGGERS, Logger, RunInfo
from distill.train.logging import MetricsLogger, truncate_metrics
from helpers import tiny_recipe_dict


def train(tmp_path: Path, *loggers: object, **train: object) -> tuple[dict, Path]:
    recipe = tiny_recipe_dict(tmp_path / "run")
    recipe["train"].update(train)
    if loggers:
        recipe["train"]["loggers"] = list(loggers)
    return api.train(Recipe.model_validate(recipe)), tmp_path / "run"


def jsonl(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def csv_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_csv_holds_the_records_of_metrics_jsonl(tmp_path):
    _, run = train(tmp_path, "jsonl", "csv")
    records, rows = jsonl(run), csv_rows(run)
    assert [(r["event"], r["step"]) for r in records] == [
        (r["event"], int(r["step"])) for r in rows
    ]
    assert {"train", "eval"} <= {r["event"] for r in records}
    for record, row in zip(records, rows, strict=True):  # every value, to the last digit
        for key, value in record.items():
            assert row[key] == str(value), key
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["train"]["loggers"] == [
        {"name": "jsonl", "options": {}},
        {"name": "csv", "options": {}},
    ]


def test_the_default_is_jsonl_only(tmp_path):
    _, run = train(tmp_path)
    assert (run / "metrics.jsonl").is_file() and not (run / "metrics.csv").exists()
    assert not (run / "tensorboard").exists()


def test_tensorboard_true_adds_tensorboard_once(tmp_path):
    pytest.importorskip("tensorboard")
    logger = MetricsLogger(tmp_path, tensorboard=True, loggers=["csv", "tensorboard"])
    assert [type(lg).__name__ for lg in logger.loggers] == ["CsvLogger", "TensorBoardLogger"]
    logger.close({})
    assert not (tmp_path / "metrics.jsonl").exists()


def test_csv_widens_for_new_keys_and_resumes_like_metrics_jsonl(tmp_path):
    logger = MetricsLogger(tmp_path, loggers=["jsonl", "csv"])
    for step in (1, 2, 3, 4):
        logger.log("train", {"step": step, "loss": 1.0 / step})
        if step % 2 == 0:  # eval brings a column the header did not have
            logger.log("eval", {"step": step, "epoch": step // 2, "top1": 10.0 * step})
    logger.close({})
    rows = csv_rows(tmp_path)
    assert [r["top1"] for r in rows] == ["", "", "20.0", "", "", "40.0"]
    truncate_metrics(tmp_path, 2, eval_steps=[2])  # resumed at step 2: steps 3 and 4 run again
    assert [(r["event"], r["step"]) for r in jsonl(tmp_path)] == [
        (r["event"], int(r["step"])) for r in csv_rows(tmp_path)
    ]
    assert [int(r["step"]) for r in csv_rows(tmp_path)] == [1, 2, 2]
    resumed = MetricsLogger(tmp_path, loggers=["jsonl", "csv"])  # appends under the same header
    resumed.log("train", {"step": 3, "loss": 0.3})
    resumed.close({})
    assert [(r["step"], r["loss"]) for r in csv_rows(tmp_path)][-1] == ("3", "0.3")


def wandb_records(path: Path) -> tuple[dict, list[dict], dict]:
    """The config, history rows and summary an offline run's ``run-*.wandb`` holds: a LevelDB-style log
    (7-byte file header, 32 KiB blocks of records with 7-byte headers) of W&B's protobuf records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    pos, part, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        part, pos = part + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            records.append(part)
            part = b""
    config, history, summary = {}, [], {}
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):  # the config comes with the run record, or after it
            updates = (record.run.config if kind == "run" else record.config).update
            config.update({u.key: json.loads(u.value_json) for u in updates})
        elif kind == "history":
            history.append(
                {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "summary":
            summary.update(
                {
                    "/".join(u.nested_key) or u.key: json.loads(u.value_json)
                    for u in record.summary.update
                }
            )
    return config, history, summary


def test_wandb_offline_run_gets_metrics_recipe_and_summary(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary, run = train(tmp_path, "jsonl", {"name": "wandb", "options": {"project": "kd"}})
    wandb.teardown()  # the W&B service writes the run file out when it stops
    (path,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    config, history, final = wandb_records(path)
    assert config["train"]["batch_size"] == 64 and config["student"]["name"] == "cnn"  # the recipe
    assert config["run"]["world_size"] == 1
    rows = {row["_step"]: row for row in history}
    records = jsonl(run)
    for event, key in (("train", "loss"), ("eval", "top1")):
        logged = [r for r in records if r["event"] == event]
        assert logged and all(
            rows[r["step"]][f"{event}/{key}"] == pytest.approx(r[key]) for r in logged
        )
    assert final["best.top1"] == pytest.approx(summary["best"]["top1"])
    assert final["steps"] == summary["steps"]


def test_mlflow_file_store_run_gets_metrics_params_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores without it
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    options = {"tracking_uri": uri, "experiment": "tiny-kd"}
    summary, run = train(tmp_path, "jsonl", {"name": "mlflow", "options": options})
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny-kd")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "tiny"
    assert found.data.params["train.batch_size"] == "64"
    assert found.data.params["student.name"] == "cnn"
    assert found.data.tags["distill.world_size"] == "1"
    records = jsonl(run)
    for event, key in (("train", "loss"), ("eval", "top1")):
        history = client.get_metric_history(found.info.run_id, f"{event}/{key}")
        logged = [r for r in records if r["event"] == event]
        assert [m.step for m in history] == [r["step"] for r in logged]
        assert [m.value for m in history] == pytest.approx([r[key] for r in logged])
    artifacts = Path(client.download_artifacts(found.info.run_id, "", str(tmp_path / "got")))
    assert yaml.safe_load((artifacts / "recipe.yaml").read_text())["train"]["batch_size"] == 64
    assert json.loads((artifacts / "summary.json").read_text())["best"] == summary["best"]


def test_resume_may_change_the_loggers(tmp_path):
    train(tmp_path, "jsonl")
    recipe = tiny_recipe_dict(tmp_path / "run")
    recipe["train"]["loggers"] = ["jsonl", {"name": "csv"}]
    api.train(Recipe.model_validate(recipe), resume=True)  # a change in another key is refused
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert [spec["name"] for spec in saved["train"]["loggers"]] == ["jsonl", "csv"]


class Spy(Logger):
    """Records what a logger is told."""

    calls: list = []

    def start(self, run: RunInfo) -> None:
        Spy.calls.append(("start", run.recipe is not None, run.meta["world_size"]))

    def log(self, event: str, values, step: int) -> None:
        Spy.calls.append(("log", event, step))

    def finish(self, summary) -> None:
        Spy.calls.append(("finish", None if summary is None else summary["steps"]))


class Boom(Callback):
    def on_step_end(self, trainer, step, metrics) -> None:
        if step == 3:
            raise RuntimeError("a bug in a callback")


@pytest.mark.parametrize("fails", [False, True])
def test_a_logger_is_finished_with_the_summary_or_none_when_the_run_fails(
    tmp_path, monkeypatch, fails
):
    monkeypatch.setattr(LOGGERS, "_items", {**LOGGERS._items, "spy": Spy})
    monkeypatch.setattr(Spy, "calls", [])
    recipe = tiny_recipe_dict(tmp_path)
    recipe["train"]["loggers"] = ["spy"]
    built = build(Recipe.model_validate(recipe))
    trainer = make_trainer(built, tmp_path, callbacks=[Boom()] if fails else [])
    if fails:
        with pytest.raises(RuntimeError, match="a bug"):
            trainer.fit()
    else:
        trainer.fit()
    assert Spy.calls[0] == ("start", True, 1)
    assert ("log", "train", 2) in Spy.calls
    assert Spy.calls[-1] == ("finish", None if fails else 4)
    assert [c[0] for c in Spy.calls].count("finish") == 1


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_a_tracker_without_its_package_says_which_extra_to_install(tmp_path, monkeypatch, package):
    # import fails as if it were not installed (submodules an earlier test imported included)
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(DistillError, match=rf"pip install 'distill\[{package}\]'"):
        MetricsLogger(tmp_path, loggers=["jsonl", package])
