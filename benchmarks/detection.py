"""Detection distillation on synthetic scenes: distill's recipes side by side with Ultralytics' own.

One teacher (``scenes/teacher``: YOLO11s, another family than the student) is trained once. Then, for each
seed, the same YOLOv8n student on the same scenes, epochs, batch, image size, optimizer and learning rate:

* ``distill: scratch``: distill's trainer, the model's own loss only (``scenes/scratch``);
* ``distill: <recipe>``: distill's trainer with each KD recipe (``scenes/fgd``, ``scenes/cwd``, ...);
* ``ultralytics: scratch`` and ``ultralytics: distill_model``: Ultralytics' own trainer without KD and with
  its built-in distillation (``model.train(distill_model=teacher.pt)``: projector + score-weighted L2 on
  the neck, ``dis=6``), with the shared settings passed as its arguments (``nbs`` = batch, so both
  trainers step the optimizer every batch) and its other defaults (EMA of the weights) left as they are.
  The scenes recipes optimise as Ultralytics does (AdamW beta1 0.937, biases warmed up from lr 0.1,
  cosine set per epoch, its gradient clip), so the two trainers differ only where named.

``--ema`` adds ``distill + EMA: <name>`` rows: the same distill runs with a weight average of the student
(``train.ema=0.9999``, ``ema_tau=2000``: Ultralytics' ``ModelEMA``), the one part of Ultralytics' trainer
that changes which weights are scored.

Every model is scored by the same evaluation: distill's detection task (Ultralytics' validator) on the
scenes' val split, **last epoch** (Ultralytics' ``last.pt``, its EMA weights), mAP50-95 and mAP50 in %,
mean ± sample std over seeds.

    python benchmarks/detection.py --write docs/benchmarks/detection.md
    python benchmarks/detection.py --seeds 0 --epochs 1 --teacher-epochs 1 --train-images 64 \
        --val-images 32 --out runs/bench/detection-smoke                 # the mechanics in minutes

Finished runs are appended to ``<out>/results.jsonl`` and skipped when the command runs again with the
same settings; ``--table-only`` rebuilds the table from it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

RECIPES = ("fgd", "cwd", "ld", "kd")
LABELS = {"distill": "distill", "distill-ema": "distill + EMA", "ultralytics": "ultralytics"}


def common(args: argparse.Namespace) -> list[str]:
    """Overrides every distill run shares: data, epochs, progress off."""
    return [
        f"data.options.train_images={args.train_images}",
        f"data.options.val_images={args.val_images}",
        f"train.epochs={args.epochs}",
        "train.progress=false",
        "train.device=cpu",
    ]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def teacher_run(args: argparse.Namespace) -> Path:
    from distill import api
    from distill.compare.runs import recipe_key, same_recipe
    from distill.config.load import load_recipe

    overrides = [*common(args), f"train.epochs={args.teacher_epochs}"]
    recipe = load_recipe("scenes/teacher", overrides)
    # any finished teacher whose recipe means the same (one by an older distill included)
    for summary in sorted(args.out.glob("teacher-*/summary.json")):
        if same_recipe(summary.parent, recipe):
            return summary.parent
    run_dir = args.out / f"teacher-{recipe_key(recipe)}"
    if not (run_dir / "summary.json").is_file():
        print(f"teacher: training into {run_dir}", flush=True)
        api.train(load_recipe("scenes/teacher", [*overrides, f"output={run_dir}"]), overwrite=True)
    return run_dir


def teacher_checkpoint(teacher: Path, data: Any) -> Path:
    """The distill teacher as an Ultralytics checkpoint, for ``distill_model=``."""
    from distill.config.build import load_weights
    from distill.models.yolo import yolo_model

    path = teacher / "ultralytics-teacher.pt"
    if not path.is_file():
        model = yolo_model("yolo11s.yaml", data.num_classes)
        load_weights(model, str(teacher), "teacher")
        model.names = dict(enumerate(data.classes))
        torch.save({"model": model, "train_args": {}, "epoch": -1}, path)
    return path


def evaluate(model: torch.nn.Module, data: Any) -> dict[str, float]:
    from distill.config.build import eval_loader
    from distill.tasks.detection import DetectionTask

    return DetectionTask().evaluate(model, eval_loader(data, 32))


def distill_job(
    name: str, seed: int, teacher: Path, args: argparse.Namespace, ema: bool = False
) -> dict[str, Any]:
    from distill import api
    from distill.config.load import load_recipe

    overrides = [*common(args), f"train.seed={seed}", f"data.options.seed={seed}"]
    if name != "scratch":
        overrides.append(f"teacher.weights={teacher}")
    if ema:  # Ultralytics' ModelEMA settings (decay 0.9999, tau 2000 steps)
        overrides += ["train.ema=0.9999", "train.ema_tau=2000"]
    run_dir = args.out / f"distill{'-ema' if ema else ''}-{name}-s{seed}"
    recipe = load_recipe(f"scenes/{name}", [*overrides, f"output={run_dir}"])
    start = time.time()
    summary = api.train(recipe, overwrite=True)
    return {"metrics": summary["last"], "seconds": time.time() - start}


def ultralytics_job(
    kind: str, seed: int, teacher_pt: Path, data_yaml: Path, test: Any, args: argparse.Namespace
) -> dict[str, Any]:
    from ultralytics import YOLO

    from distill.models.yolo import yolo_model

    name = f"ultralytics-{kind}-s{seed}"
    extra = {"distill_model": str(teacher_pt)} if kind == "distill_model" else {}
    start = time.time()
    YOLO("yolov8n.yaml").train(
        data=str(data_yaml), epochs=args.epochs, imgsz=160, batch=8, nbs=8, seed=seed,
        deterministic=True, workers=0, device="cpu", optimizer="AdamW", lr0=0.002, cos_lr=True,
        lrf=0.0, warmup_epochs=1.0, weight_decay=0.0005, mosaic=0.0, close_mosaic=0, amp=False,
        plots=False, val=False, project=str(args.out.resolve()), name=name, exist_ok=True,
        verbose=False, **extra,
    )  # fmt: skip
    seconds = time.time() - start
    last = args.out / name / "weights" / "last.pt"
    model = yolo_model(str(last), test.num_classes)
    return {"metrics": evaluate(model, test), "seconds": seconds}


def run_job(
    side: str, name: str, seed: int, teacher: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One student run (in a worker process), scored on the scenes' val split."""
    if side in ("distill", "distill-ema"):
        return distill_job(name, seed, teacher, args, ema=side == "distill-ema")
    from distill.data import build_dataset

    test = build_dataset(
        "scenes", "test", train_images=args.train_images, val_images=args.val_images
    )
    pt = teacher_checkpoint(teacher, test)
    return ultralytics_job(name, seed, pt, test.data_yaml, test, args)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def table(rows: list[dict[str, Any]], teacher: dict[str, float], args, seeds: list[int]) -> str:
    labels = list(dict.fromkeys(r["label"] for r in rows))
    by = {lab: [r for r in rows if r["label"] == lab and r["seed"] in seeds] for lab in labels}
    lines = [
        "| student (YOLOv8n) | mAP50-95 % | mAP50 % | Δ mAP50-95 vs scratch, same trainer | seeds | s / run |",
        "|---|---|---|---|---|---|",
    ]
    for lab in labels:
        runs = sorted(by[lab], key=lambda r: r["seed"])
        m = [r["metrics"]["map50_95"] for r in runs]
        m50 = [r["metrics"]["map50"] for r in runs]
        scratch = lab.split(": ")[0] + ": scratch"  # paired by seed with the same trainer's scratch
        base = [
            r["metrics"]["map50_95"] for r in sorted(by.get(scratch, []), key=lambda r: r["seed"])
        ]
        delta = "-"
        if base and len(base) == len(m) and lab != scratch:
            delta = _mean_std([a - b for a, b in zip(m, base, strict=True)])
        secs = statistics.mean(r["seconds"] for r in runs) if runs else 0.0
        lines.append(
            f"| {lab} | {_mean_std(m)} | {_mean_std(m50)} | {delta} | {len(runs)} | {secs:.0f} |"
        )
    per_seed = [
        f"{lab}: "
        + " / ".join(
            f"{r['metrics']['map50_95']:.2f}" for r in sorted(by[lab], key=lambda r: r["seed"])
        )
        for lab in labels
    ]
    return (
        f"Teacher (YOLO11s, {args.teacher_epochs} epochs): mAP50-95 {teacher['map50_95']:.2f} %, "
        f"mAP50 {teacher['map50']:.2f} %.\n\n" + "\n".join(lines) + "\n\n"
        f"mAP50-95 per seed ({', '.join(map(str, seeds))}): " + "; ".join(per_seed) + ".\n"
    )


def write_doc(path: Path, body: str, args: argparse.Namespace, seconds: float) -> None:
    command = "python benchmarks/detection.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    header = (
        "# Detection benchmark: distill's recipes vs Ultralytics' distill_model\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
        + (
            f"whole run {seconds / 60:.0f} min.  \n"
            if seconds
            else "table rebuilt from results.jsonl.  \n"
        )
        + f"Jobs: {args.jobs} runs side by side, {args.threads} torch thread(s) each (s / run: wall time).  \n"
        f"Data: synthetic scenes ({args.train_images} train / {args.val_images} val images, 160 px, "
        f"Fashion-MNIST items), {args.epochs} epochs, batch 8, AdamW lr 0.002 (beta1 0.937), cosine set "
        "per epoch, 1 warm-up epoch (biases from lr 0.1), mosaic off; both trainers. Metric: last "
        "epoch, Ultralytics' validator through distill's detection task, "
        "mean ± sample std over seeds.\n\n"
    )
    path.write_text(header + body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--val-images", type=int, default=128)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--no-ultralytics", action="store_true")
    parser.add_argument(
        "--ema",
        action="store_true",
        help="also train distill's runs with a weight average as Ultralytics' trainer keeps "
        "(train.ema=0.9999, ema_tau=2000)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/detection"))
    parser.add_argument("--write", type=Path)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    from distill.data import build_dataset

    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    opts = {"train_images": args.train_images, "val_images": args.val_images}
    test = build_dataset("scenes", "test", **opts)
    teacher = teacher_run(args)
    teacher_metrics = json.loads((teacher / "summary.json").read_text())["last"]
    settings = {
        k: v for k, v in vars(args).items() if k in ("epochs", "train_images", "val_images")
    }
    settings["teacher"] = teacher.name
    jobs = [("distill", name) for name in ("scratch", *args.recipes)]
    if args.ema:
        jobs += [("distill-ema", name) for name in ("scratch", *args.recipes)]
    if not args.no_ultralytics:
        jobs += [("ultralytics", "scratch"), ("ultralytics", "distill_model")]
    if not args.no_ultralytics:
        teacher_checkpoint(teacher, test)
    todo = [
        (side, name, seed, _key(side, name, seed, settings))
        for seed in args.seeds
        for side, name in jobs
        if not args.table_only
        and not any(r["key"] == _key(side, name, seed, settings) for r in done)
    ]
    # Runs go to --jobs worker processes of --threads threads each: on a small CPU two one-thread runs
    # side by side beat one two-thread run (no OpenMP threads spinning while they wait for a core).
    spawn = multiprocessing.get_context("spawn")  # no fork after torch's thread pools exist
    with ProcessPoolExecutor(
        args.jobs, mp_context=spawn, initializer=torch.set_num_threads, initargs=(args.threads,)
    ) as pool:
        futures = {pool.submit(run_job, side, name, seed, teacher, args): (side, name, seed, key)
                   for side, name, seed, key in todo}  # fmt: skip
        for future in as_completed(futures):
            side, name, seed, key = futures[future]
            result = future.result()
            row = {"key": key, "label": f"{LABELS[side]}: {name}", "seed": seed, **result}
            done.append(row)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"== {LABELS[side]}: {name}, seed {seed}: mAP50-95 {result['metrics']['map50_95']:.2f} "
                  f"({result['seconds']:.0f} s)", flush=True)  # fmt: skip
    keys = {_key(side, name, s, settings) for s in args.seeds for side, name in jobs}
    body = table([r for r in done if r["key"] in keys], teacher_metrics, args, args.seeds)
    print(body)
    if args.write:
        write_doc(args.write, body, args, 0.0 if args.table_only else time.time() - start)


if __name__ == "__main__":
    main()
