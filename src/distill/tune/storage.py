"""The study folder and its journal: Optuna (the ``tune`` extra) loaded on first use, the journal file
storage opened and a torn last line repaired, and a folder refused when it holds a training run, another
recipe's study or trials the journal does not know."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.config.resume import _flat, _shown
from distill.config.schema import Recipe
from distill.errors import DistillError


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise DistillError(
            "distill tune needs Optuna; install it with pip install 'distill[tune]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


STUDY_FILE = "study.journal"


# what a resumed study may change: the trial count, the processes, the folder, and how values are proposed
# (ranges, sampler, pruner); everything else reaches the trials' scores, which must stay comparable
RESUMABLE = ("output", "description", "tune.trials", "tune.jobs", "tune.out", "tune.params",
             "tune.startup_trials", "tune.pruner", "tune.seed")  # fmt: skip


def _storage(folder: Path) -> Any:
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend

    journal = folder / STUDY_FILE
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    except Exception as err:  # noqa: BLE001 - optuna replays the log with JSON and asserts
        raise DistillError(
            f"study journal {journal} is damaged ({type(err).__name__}: {str(err)[:120]}); move it "
            "away to start the study again, or give --out (tune.out) a new folder"
        ) from None


def _repair_journal(journal: Path) -> bool:
    """Check the study journal line by line before Optuna appends to it: a last line cut short (a
    process killed while writing it; Optuna ignores it when reading) is removed, so the next write does
    not run into it; any other line that is not JSON is refused. Returns whether a cut was removed."""
    if not journal.is_file():
        return False
    data = journal.read_bytes()
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], 1):
        try:
            json.loads(line)
        except ValueError:
            raise DistillError(
                f"study journal {journal} is damaged (line {number} is not JSON); move it away to "
                "start the study again, or give --out (tune.out) a new folder"
            ) from None
    if not lines[-1]:
        return False
    with open(journal, "r+b") as f:  # the torn last line: never a complete operation
        f.truncate(len(data) - len(lines[-1]))
    return True


def _finished(study: Any) -> bool:
    """Whether a trial of ``study`` ended with a value (complete or pruned)."""
    states = _optuna().trial.TrialState
    return bool(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))


def _check_folder(folder: Path) -> None:
    """A study folder is new, empty or a study's (it holds the journal): trials would be written over a
    training run or other files otherwise."""
    if folder.is_dir() and not (folder / STUDY_FILE).is_file():
        held = sorted(p.name for p in folder.iterdir() if p.name != ".lock")
        if held:
            what = "a training run" if "recipe.yaml" in held else "other files"
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise DistillError(
                f"study folder {folder} holds {what} ({shown}) and no study; give --out (tune.out) a "
                "new or empty folder"
            )


def _study_key(recipe: Recipe) -> dict[str, Any]:
    """What makes trials comparable: the recipe, less the settings a resumed study may change."""
    flat = _flat(recipe.model_dump(mode="json"))
    return {k: v for k, v in flat.items() if k != "name" and not k.startswith(RESUMABLE)}


def _check_same_study(storage: Any, recipe: Recipe, folder: Path) -> None:
    """Refuse a folder that holds another recipe's study, or this study started from another recipe:
    its trials would be overwritten, or mixed with trials that are not comparable."""
    optuna = _optuna()
    names = [
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    ]
    other = [n for n in names if n != recipe.name]
    if other:
        raise DistillError(
            f"study folder {folder} holds the study {other[0]!r}, not {recipe.name!r}; its trials "
            "would be overwritten: give --out (tune.out) another folder"
        )
    study = optuna.load_study(study_name=recipe.name, storage=storage) if names else None
    known = len(study.get_trials(deepcopy=False)) if study is not None else 0
    trials = folder / "trials"
    stray = sorted(
        p.name
        for p in (trials.iterdir() if trials.is_dir() else ())
        if not (p.name.isdigit() and int(p.name) < known)
    )
    if stray:
        raise DistillError(
            f"study folder {folder}: trials/{stray[0]} is the run of no trial in the journal (it lists "
            f"{known}), so a new trial would overwrite it; give --out (tune.out) a new folder"
        )
    if study is None or not _finished(study):
        return  # no trial finished (a first trial that failed): a fixed recipe starts it over
    saved = study.user_attrs.get("recipe")
    if saved is None:
        return  # a study begun before the recipe was recorded
    now = json.loads(json.dumps(_study_key(recipe)))
    changed = [k for k in dict.fromkeys([*saved, *now]) if saved.get(k) != now.get(k)]
    if changed:
        shown = ", ".join(
            f"{k} ({_shown(saved.get(k, 'absent'))} -> {_shown(now.get(k, 'absent'))})"
            for k in changed[:3]
        )
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise DistillError(
            f"the study in {folder} was started from another recipe: {shown}{more} changed, so its "
            "trials would not be comparable; undo the change, or give --out (tune.out) a new folder"
        )
