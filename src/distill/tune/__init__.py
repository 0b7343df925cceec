"""``distill tune``: search a recipe's declared ranges (its ``tune:`` section) with Optuna.

Each trial is the recipe with the trial's values set at their paths, the section's ``overrides`` (a
shorter schedule, a subset) and ``data.validation``: it trains through :func:`distill.api.train` and is
scored on samples carved from the training set, so the test split is never read. TPE (Bergstra et al.
2011) proposes values; the first trial is the recipe's own values (where they lie in the ranges), then
``startup_trials`` random ones; after them, a median pruner stops a trial whose
validation metric after an epoch is below the median of earlier trials at that step.

The study lives in a folder (``tune.out``, default ``runs/<name>-tune``): ``study.journal`` (Optuna's
journal file storage, shared by the worker processes), ``trials/<number>/`` (each trial's run),
and, when the study ends, ``best.yaml`` (the recipe with the best values, loadable by ``distill train``),
``trials.csv``, ``trials.md``, ``study.png`` and ``study.json``. Running the same command again resumes
the study: finished and pruned trials are kept, a trial that was running when the study stopped is
marked failed and its values are tried again. One ``distill tune`` at a time holds a study folder.

The code: :mod:`.params` (the values and the trial recipes), :mod:`.storage` (the folder, the journal,
the resume checks), :mod:`.study` (:func:`tune` and the trials), :mod:`.results` (the files written at
the end).
"""

from distill.tune.params import check_paths, suggest, trial_overrides, tune_spec, yaml_value
from distill.tune.storage import RESUMABLE, STUDY_FILE
from distill.tune.study import _Report, study_dir, tune

__all__ = [
    "RESUMABLE",
    "STUDY_FILE",
    "_Report",
    "check_paths",
    "study_dir",
    "suggest",
    "trial_overrides",
    "tune",
    "tune_spec",
    "yaml_value",
]
