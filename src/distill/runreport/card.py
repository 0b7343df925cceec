"""``MODEL_CARD.md``: what a finished student was distilled from, how, on which data, and how it measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.config.schema import Recipe
from distill.io import write_text

COMPARE_HEADING = "## In `distill compare`"


def data_facts(train_data: Any, test_data: Any) -> dict[str, Any]:
    """Sizes, classes and training label counts of the data a run used, as far as the datasets tell."""
    facts: dict[str, Any] = {}
    for split, data in (("train", train_data), ("test", test_data)):
        try:
            facts[f"{split}_samples"] = len(data)
        except TypeError:
            pass
    classes = getattr(test_data, "classes", None) or getattr(train_data, "classes", None)
    if classes is not None:
        facts["classes"] = [str(c) for c in classes]
    num_classes = getattr(train_data, "num_classes", None)
    if isinstance(num_classes, int):
        facts["num_classes"] = num_classes
    labels = getattr(train_data, "labels", None)
    if hasattr(labels, "bincount") and getattr(labels, "ndim", None) == 1:
        counts = labels.long().bincount(minlength=facts.get("num_classes", 0)).tolist()
        facts["train_label_counts"] = counts
    return facts


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    return repr(round(float(value), 4))


def _options(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=str) if options else "defaults"


def _metrics_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    keys = list(dict.fromkeys(k for _, r in rows for k in r if k not in ("epoch", "step")))
    lines = ["| checkpoint | epoch | step | " + " | ".join(keys) + " |"]
    lines.append("|" + "---|" * (len(keys) + 3))
    for label, r in rows:
        cells = [_number(r[k]) if k in r else "-" for k in keys]
        epoch, step = _number(r.get("epoch", "-")), _number(r.get("step", "-"))
        lines.append(f"| {label} | {epoch} | {step} | " + " | ".join(cells) + " |")
    return lines


def model_card(
    recipe: Recipe,
    summary: dict[str, Any],
    data: dict[str, Any] | None = None,
    term_names: list[str] | None = None,
) -> str:
    """The card's Markdown. ``summary`` is the trainer's (``summary.json``); ``data`` is :func:`data_facts`;
    ``term_names`` are the distiller's labels of the terms (the names ``metrics.jsonl`` logs them under)."""
    data = data or {}
    teacher = recipe.teacher
    t = recipe.train
    lines = [f"# Model card: {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    lines += [
        f"- Student: `{recipe.student.name}` with options `{_options(recipe.student.options)}`",
        "- Weights: `model.safetensors` (the final student; checkpoints in `checkpoints/`)",
        f"- Task: `{recipe.task}`, primary metric `{summary.get('primary_metric', 'top1')}`",
        "",
        "## Distilled from",
        "",
    ]
    if teacher is None:
        lines.append("- Teacher: none (trained from the labels alone)")
    else:
        lines += [
            f"- Teacher: `{teacher.name}` with options `{_options(teacher.options)}`",
            f"- Teacher weights: `{teacher.weights or 'none (random initialisation)'}`",
        ]
    lines += ["", "## How", ""]
    lines.append(f"- Task loss weight (task_weight): {recipe.distill.task_weight}")
    terms = recipe.distill.terms
    if terms:
        names = term_names or [term.name or term.loss for term in terms]
        lines += ["", "| term | loss | options | weight | student | teacher | projector |"]
        lines.append("|---|---|---|---|---|---|---|")
        for name, term in zip(names, terms, strict=False):
            lines.append(
                f"| {name} | `{term.loss}` | `{_options(term.options)}` | {term.weight} | "
                f"`{term.student}` | `{term.teacher}` | {term.projector or '-'} |"
            )
        lines.append("")
    else:
        lines.append("- Terms: none (the task loss alone)")
    steps = f", at most {t.max_steps} steps" if t.max_steps else ""
    lines += [
        f"- Training: {t.epochs} epochs{steps} ({summary.get('steps', '?')} optimizer steps done), "
        f"batch size {t.batch_size}",
        f"- Optimizer: `{t.optimizer}`, lr {t.lr}, weight decay {t.weight_decay}, schedule "
        f"`{t.schedule}`, warmup {t.warmup_epochs} epochs",
        f"- Seed {t.seed}; ran on `{summary.get('device', '?')}` with torch {summary.get('torch', '?')}",
    ]
    if summary.get("stopped"):
        lines.append(f"- Stopped early: {summary['stopped']}")
    spent = summary.get("time")  # a data mode that samples: generating and training apart
    if spent:
        lines.append(
            f"- Time: {spent['generate_s']:.1f} s generating samples, {spent['train_s']:.1f} s "
            "training (the rest of the steps)"
        )
    d = recipe.data
    lines += [
        "",
        "## Data",
        "",
        f"- Dataset: `{d.name}`" + (f" (root `{d.root}`)" if d.root else ""),
    ]
    subsets = f"train_subset {d.train_subset or 'all'}, test_subset {d.test_subset or 'all'}"
    sizes = ""
    if "train_samples" in data:
        sizes = (
            f": {data['train_samples']} training and {data.get('test_samples', '?')} test samples"
        )
    lines.append(f"- Subsets: {subsets}{sizes}")
    if data.get("classes"):
        lines.append(f"- Labels ({len(data['classes'])}): " + ", ".join(data["classes"]))
    elif "num_classes" in data:
        lines.append(f"- Labels: {data['num_classes']} classes")
    if data.get("train_label_counts"):
        counts = data["train_label_counts"]
        lines.append("- Training samples per label: " + ", ".join(str(c) for c in counts))
    seen = summary.get("labels")  # a transfer set (data.transfer): how many labels the student saw
    if seen:
        per_step = (
            f", {seen['labelled_per_step']} labelled rows a step"
            if "labelled_per_step" in seen
            else ""
        )
        lines.append(
            f"- Labels the student saw: {seen['labelled_samples']} labelled samples{per_step}; "
            f"{seen['unlabelled_samples']} more without labels (transfer set, distillation terms only)"
        )
    lines += ["", "## Measured", ""]
    rows = [(label, summary[label]) for label in ("best", "last") if summary.get(label)]
    if rows:
        lines += _metrics_table(rows)
        lines += ["", "Test split, as evaluated during training. Curves: `curves.png`."]
    else:
        lines.append("No evaluation ran.")
    return "\n".join(lines) + "\n"


def write_model_card(run_dir: str | Path, card: str) -> Path:
    """Write ``card`` to ``run_dir/MODEL_CARD.md`` (atomically) and return the path."""
    path = Path(run_dir) / "MODEL_CARD.md"
    write_text(path, card)
    return path


def add_compare_rows(run_dir: str | Path, title: str, table: str) -> Path | None:
    """Put ``distill compare``'s rows (``table``, Markdown, under the line ``title``) into ``run_dir``'s card
    under :data:`COMPARE_HEADING`, replacing an earlier comparison's; None (nothing written) without a
    card."""
    path = Path(run_dir) / "MODEL_CARD.md"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    text = text.split("\n" + COMPARE_HEADING, 1)[0].rstrip("\n") + "\n"
    write_text(path, "\n".join([text, COMPARE_HEADING, "", title, "", table.strip("\n"), ""]))
    return path
