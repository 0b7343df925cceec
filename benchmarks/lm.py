"""The KD gap on Shakespeare: a 64 k-parameter character GPT alone vs taught by a 0.82 M teacher.

Trains the teacher once (``shakespeare/teacher``, one epoch; cached under ``$DISTILL_CACHE`` like the
demo's teacher), then for each seed trains the same student for the same number of steps without KD
(``shakespeare/scratch``) and with teacher-forced KD (``shakespeare/kd``), on all the training text
(``offline``) and on 10 % of it (``scarce``: a seeded tenth of the blocks; the teacher saw all of it).
Reports held-out bits per character (the validation plays; mean ± sample std over seeds) and the share
of the teacher-student gap that KD closes, ``(scratch - kd) / (scratch - teacher)``, paired by seed.

``kd`` reads the teacher's distribution from a top-``--kd-k`` cache (32 of 84 characters keep over
99 % of the mass; the rest is spread evenly), filled once per training set, so a KD run costs what a
scratch run costs; ``--kd-k 0`` runs the teacher online instead. On all the text a third student,
``cached`` (``shakespeare/cached``: ``topk_kl`` on a top-``--topk-k`` cache), gives the share of KD's
gain the top-k cache keeps, ``(scratch - cached) / (scratch - kd)`` (``topk_retention``). On-policy
distillation is a second stage from each seed's ``kd`` run, as GKD and tinker-cookbook run it:
``on_policy`` (``shakespeare/on_policy_stage2``: lambda = 1, reverse KL, the teacher online to score the
student's samples) against ``kd_more`` (``shakespeare/kd`` continued from the same run for the same
steps at the same rate, teacher-forced on the text), so both have trained the same total steps; the
teacher's NLL of the student's own samples (``on_policy_sample_nll_ratio``; every student's samples are
scored: 64 held-out prompts of 32 characters, 96 sampled at temperature 1) and the held-out NLL
(``on_policy_heldout_nll_ratio``) are ``on_policy``'s over ``kd_more``'s. ``scarce`` trains for
``--scarce-steps`` (several passes over its tenth) and evaluates every ``--scarce-eval-every`` epochs,
so each run's held-out curve is kept (``curve``). ``--scarce-student`` (with
``--scarce-student-option`` and ``--scarce-lr``) gives the scarce variant a student and rates of its
own; ``--scarce-only --write PAGE`` writes that variant's page alone and sets only its keys in
``lm.json`` (docs/benchmarks/lm_scarce.md).

    make data-lm
    python benchmarks/lm.py --write docs/benchmarks/lm.md          # seeds 0 1 2, both variants
    python benchmarks/lm.py --seeds 0 --steps 100 --scarce-steps 100   # a quick look
    python benchmarks/lm.py --seeds 0 --variants offline --stage2-steps 200 --stage2-lr 1e-3  # a probe
    # on 2 shared cores: the teacher once, then one one-thread process, then the table
    python benchmarks/lm.py --teacher-only
    OMP_NUM_THREADS=1 python benchmarks/lm.py --seeds 0 1 2
    python benchmarks/lm.py --table-only --write docs/benchmarks/lm.md

Finished runs go to ``<out>/results.jsonl`` and are reused when the command runs again with the same
settings and recipes; caches go to ``<out>/cache`` (their fill time is printed, not counted).
``--write`` keeps the hand-written end of an existing page (from its first ``## Reading`` heading or
``KEEP_MARKER`` line on) below the regenerated part, and also updates ``offline_gap_closed``, ``scarce_gap_closed`` and ``topk_retention`` (and
``on_policy_sample_nll_ratio``, ``on_policy_heldout_nll_ratio``, which student they are of:
``on_policy_recipe``, ``on_policy_lam``, ``on_policy_comparator``; ``lm_kd_gap``, the detail) in
``docs/benchmarks/lm.json``, keeping the keys other benchmarks wrote there.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

VARIANTS = ("offline", "scarce")
METHODS = ("scratch", "kd", "cached", "kd_more", "on_policy")
# the on-policy student: a second stage from kd's run, against kd continued as many teacher-forced steps
ON_POLICY = "shakespeare/on_policy_stage2"
STAGE2 = ("kd_more", "on_policy")
JSON_KEYS = {"offline": "offline_gap_closed", "scarce": "scarce_gap_closed"}


TEACHER = "shakespeare/teacher"


def teacher_run(recipe: str = TEACHER) -> Path:
    """The teacher of ``recipe`` (``shakespeare/teacher`` by default), trained once per distinct recipe
    into the cache."""
    from rich.console import Console

    from distill.compare.runs import cached_run

    return cached_run(recipe, [], False, Console())


@functools.cache
def _train_blocks() -> int:
    from distill.config.build import build_data
    from distill.config.load import load_recipe

    train, _ = build_data(load_recipe("shakespeare/scratch"))
    return len(train)


def cache_dir(args: argparse.Namespace, variant: str, seed: int, k: int) -> Path:
    """The top-``k`` cache of a variant's training blocks: one for all seeds on all the text, one per
    seed on the scarce tenth (the seed picks its blocks)."""
    name = f"{variant}-k{k}" if variant == "offline" else f"{variant}-s{seed}-k{k}"
    return Path(args.out) / "cache" / name


def student_recipe(args: argparse.Namespace, variant: str, method: str, seed: int, teacher: Path):
    """``method``'s recipe: ``scratch``, ``kd`` (the teacher's distribution from a top-``--kd-k`` cache,
    or online with ``--kd-k 0``) or ``cached`` (``shakespeare/cached``, top-``--topk-k`` sparse loss)."""
    from distill.config.load import load_recipe

    if method in STAGE2:
        return stage2_recipe(args, variant, method, seed, teacher)
    steps = args.scarce_steps if variant == "scarce" else args.steps
    # offline: evaluated once, after the last step; scarce: a held-out curve over the passes
    every = args.scarce_eval_every if variant == "scarce" else 1000
    overrides = [
        "train.progress=false", f"train.seed={seed}", f"train.max_steps={steps}",
        f"train.eval_every={every}", f"teacher.weights={teacher / 'model.safetensors'}",
        f"output={Path(args.out) / f'{variant}-{method}-s{seed}'}",
    ]  # fmt: skip
    blocks = _train_blocks()
    if variant == "scarce":
        blocks = max(1, round(args.fraction * blocks))
        overrides.append(f"data.train_subset={blocks}")
    per_epoch = math.ceil(blocks / load_recipe("shakespeare/scratch").train.batch_size)
    overrides.append(f"train.epochs={math.ceil(steps / per_epoch)}")
    if variant == "scarce":
        overrides += scarce_student_overrides(args, method)
    k = {"kd": args.kd_k, "cached": args.topk_k}.get(method, 0)
    if k:
        overrides += [
            f"distill.topk_cache.dir={cache_dir(args, variant, seed, k)}",
            f"distill.topk_cache.k={k}",
        ]
    return load_recipe(f"shakespeare/{method}", overrides)


def scarce_student_overrides(args: argparse.Namespace, method: str) -> list[str]:
    """The scarce variant's student and rates where ``--scarce-student``, ``--scarce-student-option``
    or ``--scarce-lr`` change them (every method of the variant reads the same student)."""
    overrides = []
    if args.scarce_student:
        overrides.append(f"student.name={args.scarce_student}")
    for key, value in args.scarce_student_option:
        overrides.append(f"student.options.{key}={value}")
    lrs = dict(args.scarce_lr)
    if method in lrs:
        overrides.append(f"train.lr={lrs[method]}")
    return overrides


def parse_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--scarce-student-option`` (the value is read as YAML by the recipe)."""
    key, sep, value = text.partition("=")
    if not (sep and key.isidentifier() and value):
        raise argparse.ArgumentTypeError(
            f"--scarce-student-option {text!r}: expected KEY=VALUE, e.g. n_layer=2"
        )
    return key, value


def parse_method_lr(text: str) -> tuple[str, float]:
    """``METHOD=LR`` of ``--scarce-lr``: a method of METHODS and a positive rate."""
    method, _, lr = text.partition("=")
    try:
        rate = float(lr)
    except ValueError:
        rate = -1.0
    if method not in METHODS or not rate > 0:
        raise argparse.ArgumentTypeError(
            f"--scarce-lr {text!r}: expected METHOD=LR with METHOD one of {', '.join(METHODS)} and "
            "LR a positive number, e.g. scratch=3e-3"
        )
    return method, rate


def stage2_settings(args: argparse.Namespace) -> tuple[int, float]:
    """The second stage's steps and learning rate: ``--stage2-steps``/``--stage2-lr`` or the recipe's."""
    from distill.config.load import load_recipe

    train = load_recipe(ON_POLICY).train
    steps = args.stage2_steps or train.max_steps
    return steps, args.stage2_lr or train.lr


def stage2_recipe(args: argparse.Namespace, variant: str, method: str, seed: int, teacher: Path):
    """A second stage from the seed's ``kd`` run: ``on_policy`` (``shakespeare/on_policy_stage2``,
    lambda = 1, reverse KL) or ``kd_more`` (``shakespeare/kd``, teacher-forced on the text, its top-k
    cache), both for the same steps at the same rate, so they differ only in the data and the loss."""
    from distill.config.load import load_recipe

    steps, lr = stage2_settings(args)
    kd_run = Path(args.out) / f"{variant}-kd-s{seed}"
    overrides = [
        "train.progress=false", f"train.seed={seed}", f"train.max_steps={steps}", f"train.lr={lr}",
        f"train.eval_every={steps}", f"teacher.weights={teacher / 'model.safetensors'}",
        f"student.weights={kd_run}", f"output={Path(args.out) / f'{variant}-{method}-s{seed}'}",
    ]  # fmt: skip
    per_epoch = math.ceil(_train_blocks() / load_recipe("shakespeare/scratch").train.batch_size)
    overrides.append(f"train.epochs={math.ceil(steps / per_epoch)}")
    if method == "kd_more":
        if args.kd_k:
            overrides += [
                f"distill.topk_cache.dir={cache_dir(args, variant, seed, args.kd_k)}",
                f"distill.topk_cache.k={args.kd_k}",
            ]
        return load_recipe("shakespeare/kd", overrides)
    return load_recipe(ON_POLICY, overrides)


def fill_cache(recipe: Any) -> float:
    """Fill ``recipe``'s top-k cache with the teacher if it is not complete; the seconds it took (0: it
    was complete), kept out of the training seconds."""
    from distill.config.build import build, make_trainer

    manifest = Path(recipe.distill.topk_cache.dir) / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("complete"):
        return 0.0
    started = time.perf_counter()
    make_trainer(build(recipe)).prepare()
    return time.perf_counter() - started


def student_runs(
    args: argparse.Namespace, teacher: Path, train: bool = True
) -> list[dict[str, Any]]:
    """Train each (variant, method, seed) with no stored row of its recipe as resolved now."""
    from distill import api
    from distill.compare.runs import recipe_key

    results = Path(args.out) / "results.jsonl"
    stored = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    )
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            for method in METHODS:
                if method not in args.methods:
                    continue
                if method == "cached" and variant not in args.cached_variants:
                    continue
                if method in STAGE2 and variant not in args.on_policy_variants:
                    continue
                recipe = student_recipe(args, variant, method, seed, teacher)
                key = recipe_key(recipe.model_copy(update={"output": None}))
                match = [r for r in stored if r["recipe"] == key]
                if match:
                    rows.append(match[-1])
                    continue
                if not train:
                    print(f"{variant} {method} seed {seed}: no stored run", flush=True)
                    continue
                fill = fill_cache(recipe) if recipe.distill.topk_cache is not None else 0.0
                if fill:
                    print(json.dumps({"variant": variant, "seed": seed, "method": method,
                                      "fill_seconds": round(fill, 1)}), flush=True)  # fmt: skip
                started = time.perf_counter()
                summary = api.train(recipe, overwrite=True)
                last = summary["last"]
                row = {
                    "variant": variant, "method": method, "seed": seed, "bpc": last["bpc"],
                    "nll": last["nll"], "top1": last["top1"], "agreement": last.get("agreement"),
                    "steps": summary["steps"], "seconds": round(time.perf_counter() - started, 1),
                    "recipe": key, "curve": [(h["step"], h["bpc"]) for h in summary["history"]],
                    "sample_nll": own_samples_nll(Path(recipe.output), seed),
                }  # fmt: skip
                print(json.dumps(row), flush=True)
                results.parent.mkdir(parents=True, exist_ok=True)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
    return rows


def own_samples_nll(run_dir: Path, seed: int) -> float:
    """The teacher's NLL (nats per character) of the student's continuations of held-out prompts
    (``benchmarks/lm_cache.py``'s measure: 64 prompts of 32 characters, 96 sampled at temperature 1)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from lm_cache import held_out_prompts, sample_nll

    return sample_nll(run_dir, held_out_prompts(64), seed)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(rows: list[dict[str, Any]], teacher_bpc: float) -> dict[str, Any]:
    """Per variant: bpc of each method (mean, std), the gap closed per seed and its mean ± std, and
    where ``cached`` ran, the share of KD's gain it keeps, ``(scratch - cached) / (scratch - kd)``."""
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        by = {(r["method"], r["seed"]): r for r in rows if r["variant"] == variant}
        seeds = sorted({s for (m, s) in by if (("scratch", s) in by and ("kd", s) in by)})
        if not seeds:
            continue
        closed = [
            (by["scratch", s]["bpc"] - by["kd", s]["bpc"]) / (by["scratch", s]["bpc"] - teacher_bpc)
            for s in seeds
        ]
        diffs = [by["kd", s]["bpc"] - by["scratch", s]["bpc"] for s in seeds]
        methods = [m for m in METHODS if all((m, s) in by for s in seeds)]
        out[variant] = {
            "seeds": seeds,
            "teacher_bpc": teacher_bpc,
            **{f"{m}_bpc": _mean_std([by[m, s]["bpc"] for s in seeds]) for m in methods},
            "gap_closed": _mean_std(closed),
            "gap_closed_per_seed": closed,
            # where the student alone ends at or below the teacher there is no gap to close: the
            # share above is then no measure of KD (its sign flips), the bpc difference is
            "scratch_below_teacher_seeds": [
                s for s in seeds if by["scratch", s]["bpc"] <= teacher_bpc
            ],
            "kd_minus_scratch_bpc": _mean_std(diffs),
            "kd_minus_scratch_bpc_per_seed": diffs,
            "kd_beats_scratch_every_seed": all(
                by["kd", s]["bpc"] < by["scratch", s]["bpc"] for s in seeds
            ),
            "seconds": {m: sum(by[m, s]["seconds"] for s in seeds) for m in methods},
        }
        if all(len(by[m, s].get("curve", [])) > 1 for m in methods for s in seeds):
            # held-out bpc after each evaluation: where a student overfits, its last is above its best
            out[variant]["curves"] = {m: [by[m, s]["curve"] for s in seeds] for m in methods}
        if "cached" in methods:
            kept = [
                (by["scratch", s]["bpc"] - by["cached", s]["bpc"])
                / (by["scratch", s]["bpc"] - by["kd", s]["bpc"])
                for s in seeds
            ]
            out[variant]["topk_retention"] = _mean_std(kept)
            out[variant]["topk_retention_per_seed"] = kept
        if "on_policy" in methods and "kd_more" in methods:
            # the comparator: kd continued as many steps on the text (``kd_more``); against the
            # first stage's kd (fewer steps) too, for reference
            for name, key in (("sample_nll", "sample_nll"), ("heldout_nll", "nll")):
                for suffix, base in (("", "kd_more"), ("_vs_kd", "kd")):
                    ratios = [by["on_policy", s][key] / by[base, s][key] for s in seeds]
                    out[variant][f"on_policy_{name}_ratio{suffix}"] = _mean_std(ratios)
                    out[variant][f"on_policy_{name}_ratio{suffix}_per_seed"] = ratios
            for m in STAGE2:
                out[variant][f"{m}_sample_nll"] = _mean_std([by[m, s]["sample_nll"] for s in seeds])
                out[variant][f"{m}_nll"] = _mean_std([by[m, s]["nll"] for s in seeds])
    return out


def table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "| text the student sees | teacher bpc | scratch bpc | KD bpc | gap closed | KD better on every seed |",
        "|---|---|---|---|---|---|",
    ]
    label = {"offline": "all (100 %)", "scarce": f"{100 * args.fraction:.0f} %"}
    for variant, s in summary.items():
        (sm, ss), (km, ks), (gm, gs) = s["scratch_bpc"], s["kd_bpc"], s["gap_closed"]
        closed = f"{100 * gm:.1f} % ± {100 * gs:.1f}"
        if s.get("scratch_below_teacher_seeds"):
            closed = f"none to close: scratch below the teacher on seeds {s['scratch_below_teacher_seeds']}"
        lines.append(
            f"| {label[variant]} | {s['teacher_bpc']:.4f} | {sm:.4f} ± {ss:.4f} | {km:.4f} ± {ks:.4f} "
            f"| {closed} | {'yes' if s['kd_beats_scratch_every_seed'] else 'no'} |"
        )
    return "\n".join(lines)


def update_json(path: Path, summary: dict[str, Any]) -> None:
    """Set this benchmark's keys in ``path``, keeping every other key (and ``scarce_gap_closed`` where
    ``--scarce-only`` wrote it for its own student: ``scarce_student`` says which)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    for variant, key in JSON_KEYS.items():
        # once --scarce-only has written the figure (with ``scarce_student``), it stays that student's
        if variant in summary and not (variant == "scarce" and "scarce_student" in data):
            data[key] = round(summary[variant]["gap_closed"][0], 4)
    for key in ("topk_retention", "on_policy_sample_nll_ratio", "on_policy_heldout_nll_ratio"):
        found = [s[key][0] for s in summary.values() if key in s]
        if found:
            data[key] = round(found[0], 4)
    if any("on_policy_sample_nll_ratio" in s for s in summary.values()):
        # which on-policy student the two ratios are of (the figure is lambda = 1)
        from distill.config.load import load_recipe

        data["on_policy_recipe"] = ON_POLICY
        data["on_policy_lam"] = load_recipe(ON_POLICY).distill.data_mode.lam
        data["on_policy_comparator"] = (
            "shakespeare/kd continued from the same kd run for as many steps at the same rate"
        )
    data["lm_kd_gap"] = summary
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps on all the text")
    parser.add_argument(
        "--scarce-steps", type=int, default=2000, help="optimizer steps on the scarce tenth"
    )
    parser.add_argument(
        "--scarce-eval-every", type=int, default=2, help="scarce: evaluate every N passes"
    )
    parser.add_argument(
        "--fraction", type=float, default=0.1, help="text share of the scarce variant"
    )
    parser.add_argument(
        "--scarce-student", default="",
        help="scarce: the student's model name (e.g. gpt; default: the recipes' gpt_student)",
    )  # fmt: skip
    parser.add_argument(
        "--scarce-student-option", nargs="*", default=[], type=parse_option, metavar="KEY=VALUE",
        help="scarce: the student's factory options, e.g. n_layer=1 n_embd=128",
    )  # fmt: skip
    parser.add_argument(
        "--scarce-lr", nargs="*", default=[], type=parse_method_lr, metavar="METHOD=LR",
        help="scarce: a method's learning rate, e.g. scratch=3e-3 kd=6e-3 (default: its recipe's)",
    )  # fmt: skip
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS),
        help="train only these methods (a probe); the table needs scratch and kd",
    )  # fmt: skip
    parser.add_argument(
        "--kd-k", type=int, default=32,
        help="kd reads the teacher from a top-k cache with this k (0: the teacher online)",
    )  # fmt: skip
    parser.add_argument("--topk-k", type=int, default=8, help="k of the cached method's cache")
    parser.add_argument(
        "--cached-variants", nargs="*", choices=VARIANTS, default=["offline"],
        help="variants that also train the cached (top-k) student",
    )  # fmt: skip
    parser.add_argument(
        "--on-policy-variants", nargs="*", choices=VARIANTS, default=["offline"],
        help="variants that also train the on-policy student (the teacher online)",
    )  # fmt: skip
    parser.add_argument(
        "--stage2-steps", type=int, default=0,
        help="steps of the second stage from kd's run (on_policy, kd_more); 0: the recipe's",
    )  # fmt: skip
    parser.add_argument(
        "--stage2-lr", type=float, default=0.0, help="its learning rate; 0: the recipe's"
    )
    parser.add_argument("--out", default="runs/bench-lm")
    parser.add_argument(
        "--teacher",
        default=TEACHER,
        help="the teacher's recipe (shakespeare/teacher_long: four epochs instead of one)",
    )
    parser.add_argument("--teacher-only", action="store_true")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--write", help="the Markdown page to write (the JSON goes next to it)")
    parser.add_argument(
        "--scarce-only", action="store_true",
        help="--write a page of the scarce variant alone and set only its keys in lm.json beside it "
        "(scarce_gap_closed, scarce_student, lm_scarce), keeping every other key",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.scarce_only and args.variants != ["scarce"]:
        parser.error(
            f"--scarce-only with --variants {' '.join(args.variants)}: pass --variants scarce"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    teacher = teacher_run(args.teacher)
    if args.teacher_only:
        return
    teacher_summary = json.loads((teacher / "summary.json").read_text())
    teacher_bpc = teacher_summary["last"]["bpc"]
    rows = student_runs(args, teacher, train=not args.table_only)
    summary = summarise(rows, teacher_bpc)
    text = table(summary, args)
    print(text)
    if args.write:
        page = Path(args.write)
        command = "python benchmarks/lm.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        wall = time.perf_counter() - started
        if args.scarce_only:
            write_page(page, render_scarce(summary, text, args, command, wall, teacher))
            update_scarce_json(page.parent / "lm.json", summary, args, teacher)
            return
        write_page(page, render(summary, text, args, command, wall))
        update_json(page.with_suffix(".json"), summary)


# where the hand-written part of an existing page starts: it is kept below the regenerated table
KEEP_MARKER = "<!-- kept by benchmarks/lm.py --write: everything below -->"
KEEP_HEADING = "## Reading"


def write_page(page: Path, generated: str) -> None:
    """Write ``generated`` to ``page``, keeping the hand-written end of an existing page: everything
    from its first ``KEEP_MARKER`` line or ``## Reading...`` heading on, whichever comes first."""
    kept = ""
    if page.is_file():
        lines = page.read_text().splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.strip() == KEEP_MARKER or line.startswith(KEEP_HEADING):
                kept = "".join(lines[i:])
                break
    page.write_text(generated.rstrip("\n") + "\n\n" + kept if kept else generated)


TARGETS = {"offline": 0.15, "scarce": 0.30}  # the shares of the gap
# a wider student on the tenth has a page of its own (--scarce-only)
SCARCE_POINTER = (
    "* The `scarce` row above is the 64 k student's; a wider student on the same tenth: "
    "[lm_scarce.md](lm_scarce.md) with this teacher (`--scarce-only`, `lm_scarce` in lm.json) and "
    "[lm_scarce_long.md](lm_scarce_long.md) with `shakespeare/teacher_long` (`--teacher`, "
    "`lm_scarce_teacher_long`); `scarce_gap_closed` is another pair's figure where lm.json's "
    "`scarce_student` and `scarce_teacher` name it."
)


def scarce_student(args: argparse.Namespace, teacher: Path) -> dict[str, Any]:
    """Which student the scarce rows are of: its model name, options, parameters and each method's
    learning rate, as the resolved recipes say."""
    from distill.models import MODELS

    recipes = {
        m: student_recipe(args, "scarce", m, args.seeds[0], teacher) for m in ("scratch", "kd")
    }
    spec = recipes["scratch"].student
    model = MODELS.get(spec.name)(84, 1, **spec.options)
    kd = recipes["kd"].distill
    terms = " + ".join(f"{t.weight} x {t.loss}" for t in kd.terms)
    return {
        "model": spec.name,
        "options": dict(spec.options),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": args.scarce_steps,
        "fraction": args.fraction,
        "lr": {m: r.train.lr for m, r in recipes.items()},
        "kd_loss": f"{kd.task_weight} x cross-entropy + {terms}",
    }


def scarce_key(teacher: str) -> str:
    """The JSON key of a ``--scarce-only`` result: ``lm_scarce`` with the default teacher,
    ``lm_scarce_<recipe>`` with another (``lm_scarce_teacher_long``), so each teacher's runs keep theirs."""
    return "lm_scarce" if teacher == TEACHER else f"lm_scarce_{teacher.rsplit('/', 1)[-1]}"


def teacher_line(recipe: str) -> str:
    """The teacher as the page names it: recipe, model, parameters and epochs of the training plays."""
    from distill.config.load import load_recipe
    from distill.models import MODELS

    resolved = load_recipe(recipe)
    spec = resolved.student  # a teacher recipe trains its model as the run's student
    size = sum(p.numel() for p in MODELS.get(spec.name)(84, 1, **spec.options).parameters())
    epochs = resolved.train.epochs
    return (
        f"`{recipe}` (`{spec.name}`, {size / 1e6:.2f} M parameters), {epochs:g} "
        f"epoch{'s' if epochs != 1 else ''} of all the training plays"
    )


def update_scarce_json(
    path: Path, summary: dict[str, Any], args: argparse.Namespace, teacher: Path
) -> None:
    """Set the scarce variant's keys in ``path``, keeping every other key and its value: ``lm_scarce``
    (the detail, with its student), and where the student alone stays above the teacher on every
    seed, ``scarce_gap_closed``, its per-seed values and ``scarce_student`` (which student they are
    of); below the teacher there is no gap to close, and the figure already there stays."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    scarce = summary["scarce"]
    student = scarce_student(args, teacher)
    data[scarce_key(args.teacher)] = {"student": student, "teacher": args.teacher, **scarce}
    if not scarce["scratch_below_teacher_seeds"]:
        data["scarce_gap_closed"] = round(scarce["gap_closed"][0], 4)
        data["scarce_gap_closed_per_seed"] = [round(x, 4) for x in scarce["gap_closed_per_seed"]]
        data["scarce_student"] = student
        data["scarce_teacher"] = args.teacher
    # else no gap to close (the student alone beats the teacher): the figure stays the one it was
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def render_scarce(
    summary: dict[str, Any],
    text: str,
    args: argparse.Namespace,
    command: str,
    wall: float,
    teacher: Path,
) -> str:
    """The page of ``--scarce-only``: the scarce variant's student, settings, table and curves."""
    s, student = summary["scarce"], scarce_student(args, teacher)
    options = ", ".join(f"{k}={v}" for k, v in student["options"].items()) or "its defaults"
    per_seed = [round(x, 4) for x in s["gap_closed_per_seed"]]
    diffs = [round(x, 4) for x in s["kd_minus_scratch_bpc_per_seed"]]
    seconds = {m: round(t) for m, t in s["seconds"].items()}
    below_note = (
        " (no measure of KD where the student alone is below the teacher)"
        if s["scratch_below_teacher_seeds"]
        else ""
    )
    return f"""# Causal LM: KD with the student on 10 % of the text

Written by `{command}` from the stored runs (this call: {wall:.0f} s wall). Wall-clock seconds of
student training summed over seeds: {json.dumps(seconds)}; cache fills are not counted.

Machine: {platform.machine()} CPU, {os.cpu_count()} cores shared with other work, torch
{torch.__version__}, `OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}`. Seeds {args.seeds};
mean ± sample std over seeds.

* Teacher: {teacher_line(args.teacher)}, cached once.
* Student: `{student["model"]}` ({options}; {student["parameters"]:,} parameters), on a seeded
  {100 * args.fraction:.0f} % of the training blocks (the same blocks for both methods of a seed) for
  {args.scarce_steps} steps of 32 blocks of 128 characters: `shakespeare/scratch` at lr
  {student["lr"]["scratch"]:g} vs `shakespeare/kd` at lr {student["lr"]["kd"]:g}
  ({student["kd_loss"]}), teacher-forced on the same blocks, the teacher's distribution read from a
  top-{args.kd_k} cache of those blocks. Held-out bpc every {args.scarce_eval_every} passes over the tenth.
* Metric: bits per character on the held-out validation plays (Julius Caesar, Twelfth Night), the last
  checkpoint. Gap closed = (scratch - KD) / (scratch - teacher), per seed.

{text}

Per seed: gap closed {json.dumps(per_seed)}{below_note}; KD - scratch bpc {json.dumps(diffs)}.

{status({"scarce": s}).splitlines()[-1]}

{curve_lines(summary)}
"""


def status(summary: dict[str, Any]) -> str:
    """One line per variant: the gap closed against the issue's target, or that it was not measured."""
    lines = []
    for variant, target in TARGETS.items():
        if variant not in summary:
            lines.append(f"* `{variant}`: not measured (no finished KD runs).")
            continue
        mean, std = summary[variant]["gap_closed"]
        met = "met" if mean >= target else "**not met**"
        below = summary[variant].get("scratch_below_teacher_seeds")
        if below:
            (dm, ds), per_seed = (
                summary[variant]["kd_minus_scratch_bpc"],
                summary[variant]["kd_minus_scratch_bpc_per_seed"],
            )
            lines.append(
                f"* `{variant}`: no gap to close, target >= {100 * target:.0f} % **not measured**: the "
                f"student alone ends below the teacher on seeds {below}; KD - scratch "
                f"{dm:+.4f} ± {ds:.4f} bpc (per seed {[round(x, 4) for x in per_seed]})."
            )
            continue
        every = (
            "on every seed"
            if summary[variant]["kd_beats_scratch_every_seed"]
            else "not on every seed"
        )
        lines.append(
            f"* `{variant}`: {100 * mean:.1f} % ± {100 * std:.1f} of the gap closed, target "
            f">= {100 * target:.0f} % {met}; KD better than scratch {every}."
        )
    return "\n".join(lines)


def describe(method: str) -> str:
    """One line on what ``shakespeare/<method>`` trains with: learning rate, task weight, KD terms."""
    from distill.config.load import load_recipe

    recipe = load_recipe(f"shakespeare/{method}")
    terms = ", ".join(
        f"{t.weight} x `{t.loss}`" + (f" {t.options}" if t.options else "")
        for t in recipe.distill.terms
    )
    kd = f", {recipe.distill.task_weight} x cross-entropy + {terms}" if terms else ""
    return f"`shakespeare/{method}` (lr {recipe.train.lr:g}{kd})"


def on_policy_mode() -> str:
    from distill.config.load import load_recipe

    mode = load_recipe(ON_POLICY).distill.data_mode
    return f"`{mode.model_dump()}`" if mode is not None else "none"


def retention_lines(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = []
    for variant, s in summary.items():
        if "topk_retention" in s:
            mean, std = s["topk_retention"]
            per_seed = [round(x, 3) for x in s["topk_retention_per_seed"]]
            met = "met" if mean >= 0.9 else "**not met**"
            lines.append(
                f"* top-{args.topk_k} cache (`{variant}`): cached {s['cached_bpc'][0]:.4f} ± "
                f"{s['cached_bpc'][1]:.4f} bpc; keeps {100 * mean:.0f} % ± {100 * std:.0f} of KD's gain "
                f"(per seed {per_seed}), target >= 90 % {met}."
            )
    return "\n".join(lines)


def curve_lines(summary: dict[str, Any]) -> str:
    lines = []
    for variant, s in summary.items():
        for method, curves in s.get("curves", {}).items():
            shown = "; ".join(
                f"seed {seed}: " + ", ".join(f"{bpc:.3f}" for _, bpc in curve)
                for seed, curve in zip(s["seeds"], curves, strict=True)
            )
            steps = ", ".join(str(step) for step, _ in curves[0])
            lines.append(f"* `{variant}` {method}, held-out bpc at steps {steps}: {shown}.")
    return "\n".join(lines)


def _met(mean: float, per_seed: list[float], bound: float) -> str:
    """An upper bound met on the mean, and whether on every seed too."""
    if mean > bound:
        return "**not met**"
    return (
        "met on every seed" if max(per_seed) <= bound else "met on the mean, **not on every seed**"
    )


def on_policy_lines(summary: dict[str, Any]) -> str:
    lines = []
    for variant, s in summary.items():
        if "on_policy_sample_nll_ratio" in s:
            (sm, ss), (hm, hs) = s["on_policy_sample_nll_ratio"], s["on_policy_heldout_nll_ratio"]
            (km, ks), (om, os_) = s["kd_more_sample_nll"], s["on_policy_sample_nll"]
            lines.append(
                f"* on-policy second stage (`{variant}`): teacher NLL of its own samples {om:.3f} ± "
                f"{os_:.3f} nats/character vs kd_more's {km:.3f} ± {ks:.3f}, "
                f"{sm:.3f} ± {ss:.3f} x kd_more's "
                f"(per seed {[round(x, 3) for x in s['on_policy_sample_nll_ratio_per_seed']]}), target "
                f"<= 0.95 {_met(sm, s['on_policy_sample_nll_ratio_per_seed'], 0.95)}; held-out NLL "
                f"{hm:.3f} ± {hs:.3f} x "
                f"kd_more's (per seed {[round(x, 3) for x in s['on_policy_heldout_nll_ratio_per_seed']]}), "
                f"target <= 1.02 {_met(hm, s['on_policy_heldout_nll_ratio_per_seed'], 1.02)}."
            )
            (sk, _), (hk, _) = (
                s["on_policy_sample_nll_ratio_vs_kd"],
                s["on_policy_heldout_nll_ratio_vs_kd"],
            )
            lines.append(
                f"  Against the first stage's kd ({variant}, fewer steps): own samples {sk:.3f} x, "
                f"held-out NLL {hk:.3f} x."
            )
    return "\n".join(lines)


def render(
    summary: dict[str, Any], text: str, args: argparse.Namespace, command: str, wall: float
) -> str:
    seconds = {v: {m: round(t) for m, t in s["seconds"].items()} for v, s in summary.items()}
    per_seed = {v: [round(x, 4) for x in s["gap_closed_per_seed"]] for v, s in summary.items()}
    source = (
        f"read from a top-{args.kd_k} cache of the teacher (float16; the rest of the mass, under 1 % "
        "on average, spread evenly), which the `cached` student does not share"
        if args.kd_k
        else "the teacher online"
    )
    return f"""# Causal LM: the KD gap on Shakespeare

Table written by `{command}` from the stored runs (this call: {wall:.0f} s wall). Wall-clock seconds of
student training summed over seeds: {json.dumps(seconds)}; cache fills are not counted.

Machine: {platform.machine()} CPU, {os.cpu_count()} cores shared with other work, torch
{torch.__version__}, `OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}`. Seeds {args.seeds};
mean ± sample std over seeds.

* Teacher: `shakespeare/teacher`, `gpt_teacher` (4 blocks x 128, 0.82 M parameters), one epoch of the
  training plays (1,129 steps of 32 blocks of 128 characters), cached once.
* Student: `gpt_student` (1 block x 64, 64 k parameters), {args.steps} steps of 32 blocks of 128
  characters for every run on all the text: {describe("scratch")} vs {describe("kd")}, teacher-forced
  on the same blocks; the teacher's next-character distribution is {source}. `cached`:
  {describe("cached")}, from a top-{args.topk_k} cache. On-policy, a second stage from each seed's kd
  run for {stage2_settings(args)[0]} steps at lr {stage2_settings(args)[1]:g}: `on_policy`
  ({describe("on_policy_stage2")}, data mode {on_policy_mode()}) against `kd_more` (`shakespeare/kd`
  continued as many steps at the same rate on the text), so both trained {args.steps} +
  {stage2_settings(args)[0]} steps. Learning rates: each method's best of the same grid (lm_settings.md,
  the probes; the second stage's steps and rate: its own probes there). `scarce`: the student reads a seeded {100 * args.fraction:.0f} % of the training blocks (the
  same ones for every method of a seed) for {args.scarce_steps} steps; the teacher was trained on all
  of them.
* Metric: bits per character on the held-out validation plays (Julius Caesar, Twelfth Night; 231 k
  characters), the last checkpoint. Gap closed = (scratch - KD) / (scratch - teacher), per seed.

{text}

Per seed (gap closed): {json.dumps(per_seed)}.

Against the issue's targets:

{status(summary)}
{SCARCE_POINTER}
{retention_lines(summary, args)}
{on_policy_lines(summary)}

{curve_lines(summary) or "No held-out curves (one evaluation per run)."}

Settings: the probes in [lm_settings.md](lm_settings.md) (seeds 0 and 1, 1000 steps) picked each
method's learning rate from the same grid by the same rule (the lowest mean; within 0.01 bpc, the
smaller spread between the seeds) and KD's form: 0.5 x cross-entropy + 0.5 x forward KL beat the KD
term alone. The earlier 500-step settings (scratch 8.5e-3, the KD term alone at 1.2e-2) left some seeds
on the plateau before the student uses the context, so one method's bpc varied by up to 0.3 between
seeds and every ratio built on it with it.
"""


if __name__ == "__main__":
    main()
