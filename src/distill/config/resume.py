"""What ``--resume`` checks before it touches a run: that there is one, and that the recipe still
describes it. A resumed run continues bit for bit only when everything that shapes it is unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.config.load import load_recipe
from distill.config.schema import AFTER_TRAINING, Recipe
from distill.errors import DistillError
from distill.train.checkpoint import MANIFEST

# Recipe keys --resume may change: none reaches the weights, the optimizer state, the data order or the
# evaluations. The name and description are text; output is where the run lives now (a moved folder);
# progress, log_every, tensorboard and loggers only show or log (a metrics line averages the steps
# since the previous one, whatever their number); checkpoint_every and keep_checkpoints say when and how many
# 'last' files are written, and every step is a function of the saved state, not of when it was saved.
# Everything else is refused, train.epochs and train.max_steps included: the learning-rate schedule spans
# the run's total steps (cosine, one-cycle and epoch-wise; the warm-up is capped by it), so a longer or
# shorter run differs from its first step on. eval_batch_size and eval_every can change the evaluations
# and so the 'best' checkpoint; device, bf16 and deterministic change the arithmetic. The data loader's
# workers (data.num_workers, pin_memory, persistent_workers, prefetch_factor) only change who decodes
# the items: the sampler, in the main process, fixes the order.
RESUMABLE_KEYS = frozenset(
    {
        "name",
        "description",
        "output",
        "train.progress",
        "train.log_every",
        "train.tensorboard",
        "train.loggers",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "data.num_workers",
        "data.pin_memory",
        "data.persistent_workers",
        "data.prefetch_factor",
    }
)
# export:, qat:, compare:, and the loggers (a list of {name, options})
RESUMABLE_SECTIONS = (*(f"{name}." for name in AFTER_TRAINING), "train.loggers.")
SHOWN = 3  # changed keys named in the error (the rest are counted)


def check_resume(run_dir: str | Path, recipe: Recipe) -> None:
    """Refuse ``--resume`` when ``run_dir`` holds no run, or when ``recipe`` differs from the run's
    ``recipe.yaml`` in a key outside :data:`RESUMABLE_KEYS`. It only reads: call it before anything is
    built or written."""
    run_dir = Path(run_dir)
    saved_path = run_dir / "recipe.yaml"
    if not saved_path.is_file():
        if not _has_checkpoints(run_dir / "checkpoints"):
            raise DistillError(
                f"nothing to resume in {run_dir}: no run was started there; check output=... (or the "
                "recipe's name), or train without --resume"
            )
        raise DistillError(
            f"cannot check what --resume continues: {saved_path} is missing; put back the recipe the "
            "run was started with, or start it again with --overwrite"
        )
    try:
        saved = load_recipe(saved_path)
    except DistillError as err:
        raise DistillError(
            f"cannot check what --resume continues ({err}); repair {saved_path} or start the run "
            "again with --overwrite"
        ) from None
    old, new = _flat(saved.model_dump(mode="json")), _flat(recipe.model_dump(mode="json"))
    changed = [
        key
        for key in dict.fromkeys([*old, *new])
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
        and key not in RESUMABLE_KEYS
        and not key.startswith(RESUMABLE_SECTIONS)
    ]
    if changed:
        shown = ", ".join(
            f"{key} ({_shown(old.get(key, _ABSENT))} -> {_shown(new.get(key, _ABSENT))})"
            for key in changed[:SHOWN]
        )
        more = f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
        raise DistillError(
            f"cannot resume {run_dir}: the recipe changed {shown}{more} since the run started "
            f"({saved_path}), and a resumed run must be the same run; undo the change, or train into "
            "another output=... (--overwrite starts this run again)"
        )


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaves (``distill.terms.0.options.temperature``); a list of plain values is a leaf."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _has_checkpoints(folder: Path) -> bool:
    return folder.is_dir() and any(
        p.suffix == ".safetensors" or p.name == MANIFEST for p in folder.iterdir()
    )
