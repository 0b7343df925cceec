"""The experiment trackers of ``train.loggers``: Weights & Biases (``wandb``) and MLflow (``mlflow``).

Each takes the run the way its tool expects it. W&B: the resolved recipe is the run's config (where it
ran under ``config.run``), every record's numbers are logged as ``<event>/<key>`` at their step, and the
summary's final numbers (``best.top1``, ``last.top1``, ``steps``...) go to the run summary. MLflow: the
recipe's values are the run's params (flattened: ``train.lr``), where it ran are tags (``distill.device``),
the records are metrics at their step, and ``recipe.yaml`` and ``summary.json`` are the run's artifacts.
Both packages are optional extras (``pip install 'distill[wandb]'``, ``'distill[mlflow]'``), imported
only when a run names them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from distill.errors import DistillError, first_line
from distill.train.loggers import (
    LOGGERS,
    Logger,
    RunInfo,
    _needs,
    final_numbers,
    flatten,
    scalars,
)

MLFLOW_PARAM_LENGTH = 500  # the longest param value every MLflow takes (newer ones take more)
MLFLOW_BATCH = 100  # params per log_batch call MLflow accepts


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    """A W&B run per training. ``project``, ``entity``, ``name`` (default: the recipe's name), ``group``,
    ``tags``, ``mode`` (``online``, ``offline``, ``disabled``) and ``dir`` are ``wandb.init``'s; unset,
    W&B's own settings apply (``WANDB_PROJECT``, ``WANDB_MODE``, ``WANDB_DIR``...)."""

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: str | None = None,
        dir: str | None = None,
    ) -> None:
        self.init_kwargs = {
            "project": project,
            "entity": entity,
            "name": name,
            "group": group,
            "tags": tags,
            "mode": mode,
            "dir": dir,
        }
        self.run: Any = None
        self.step = 0

    def start(self, run: RunInfo) -> None:
        try:
            import wandb
        except ImportError:
            raise _needs("wandb", "wandb") from None
        kwargs = {k: v for k, v in self.init_kwargs.items() if v is not None}
        kwargs.setdefault("name", run.name)
        config = dict(run.recipe or {})
        config["run"] = run.meta
        notes = (run.recipe or {}).get("description") or None
        try:
            self.run = wandb.init(config=config, notes=notes, reinit="finish_previous", **kwargs)
        except Exception as err:  # no API key, no network, a bad entity: W&B's own error types
            raise DistillError(
                f"W&B could not start a run ({first_line(err)}); run `wandb login`, set "
                "WANDB_MODE=offline, or drop wandb from train.loggers"
            ) from None

    def log(self, event: str, values: Mapping[str, Any], step: int) -> None:
        numbers = scalars(values)
        if self.run is None or not numbers:
            return
        # W&B drops a step lower than one it has seen (a nonfinite record names the step taken)
        self.step = max(self.step, step)
        self.run.log({f"{event}/{k}": v for k, v in numbers.items()}, step=self.step)

    def finish(self, summary: Mapping[str, Any] | None) -> None:
        if self.run is None:
            return
        if summary is not None:
            self.run.summary.update(final_numbers(summary))
        self.run.finish(exit_code=0 if summary is not None else 1)
        self.run = None


@LOGGERS.register("mlflow")
class MlflowLogger(Logger):
    """An MLflow run per training, in ``experiment`` (default: ``MLFLOW_EXPERIMENT_NAME``, else
    ``Default``) at ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``, else MLflow's); ``run_name``
    defaults to the recipe's name, ``tags`` are added to the run's."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.run_name, self.tags = run_name, dict(tags or {})
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run: RunInfo) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _needs("mlflow", "mlflow") from None
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
        tags = {f"distill.{k}": str(v) for k, v in run.meta.items() if v is not None}
        try:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            found = self.client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else self.client.create_experiment(name)
            created = self.client.create_run(
                experiment_id, run_name=self.run_name or run.name, tags={**tags, **self.tags}
            )
            self.run_id = created.info.run_id
            try:  # longer recipe values are cut to what this MLflow keeps
                from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as longest
            except ImportError:
                longest = MLFLOW_PARAM_LENGTH
            params = [
                Param(key, _param_value(value)[:longest])
                for key, value in flatten(run.recipe or {}).items()
            ]
            for i in range(0, len(params), MLFLOW_BATCH):
                self.client.log_batch(self.run_id, params=params[i : i + MLFLOW_BATCH])
            if run.recipe is not None:
                self.client.log_dict(self.run_id, run.recipe, "recipe.yaml")
        except (
            Exception
        ) as err:  # a tracking server that does not answer, a bad URI: MLflow's errors
            raise DistillError(
                f"MLflow could not start a run at {self.tracking_uri or 'the default tracking URI'} "
                f"({first_line(err)}); check train.loggers' tracking_uri or MLFLOW_TRACKING_URI, or "
                "drop mlflow from train.loggers"
            ) from None

    def log(self, event: str, values: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        numbers = scalars(values)
        if self.run_id is None or not numbers:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(f"{event}/{k}", v, now, step) for k, v in numbers.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: Mapping[str, Any] | None) -> None:
        if self.run_id is None:
            return
        if summary is not None:
            self.client.log_dict(self.run_id, json.loads(json.dumps(summary)), "summary.json")
        self.client.set_terminated(self.run_id, "FINISHED" if summary is not None else "FAILED")
        self.run_id = None


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
