"""KD training throughput: distill's Trainer against a hand-written PyTorch loop and torchdistill.

All three train the same student from the same teacher (the demo's pair) on the same Fashion-MNIST
batches: teacher forward under no_grad, student forward, cross-entropy + Hinton KD (T=2), backward,
SGD step (lr 0.05, momentum 0.9, nesterov, weight decay 5e-4). No augmentation, evaluation or
checkpoints. Each run takes ``--warmup`` untimed steps, then ``--steps`` timed ones; runs alternate
(the order of the frameworks rotates every repeat) so that machine noise hits all of them, and each
number is the median over ``--repeats``.

Two tables. **Online teacher** (like for like): every loop runs the teacher on every batch.
- distill: ``Trainer`` + ``Distiller`` with a ``kd`` term, fp32, ``progress: false`` (the defaults
  otherwise: the non-finite guard and exact-resume seeding stay on);
- hand-written: the loop above, nothing else;
- torchdistill: ``DistillationBox`` (``forward_process`` + ``post_forward_process``, the per-batch API its
  examples use) with its ``KDLoss`` (alpha 1, beta 1: the same CE + T^2 KL), teacher frozen, no hooks,
  fed the hand loop's batches.

**Fastest documented configuration**: the same job where each framework uses what it documents to go
faster. distill: ``distill.cache_teacher: true`` (the teacher runs once over the training set before
training; exact here, since there is no augmentation); the hand-written loop does the same (teacher
logits computed once, looked up by index); torchdistill 1.1.5 has no teacher-output cache (the
``cached_data``/cache-file path of older ``DistillationBox`` versions is not in it: nothing in its
``core/`` or ``datasets/`` caches) and nothing else that makes an fp32 CPU step faster (its
``accelerator`` is Hugging Face Accelerate's mixed precision, ``grad_accum_step`` and ``max_grad_norm``
add work), so its fastest is the online loop above. These runs train on a seeded, class-balanced subset
of ``--cached-subset`` samples (the teacher's pass over them is set-up, not timed).

torchdistill is never a dependency of distill: ``--install-torchdistill`` puts it (without its
dependencies; torch, torchvision, numpy, pyyaml and scipy come from the environment) into
``benchmarks/.torchdistill``, which this script adds to ``sys.path``.

    python benchmarks/throughput.py --install-torchdistill --write docs/benchmarks.md \
        --json docs/benchmarks/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from distill import ClassificationTask, TrainConfig
from distill.config.build import build_distiller, build_trainer
from distill.config.schema import DistillSpec, TermSpec
from distill.data import FashionMNIST
from distill.models import build_model, count_parameters
from distill.train.callbacks import Callback

# The demo's pair (recipes/fashion_mnist/teacher.yaml and scratch.yaml).
TEACHER = {"channels": (16, 32, 64, 256), "hidden": 1024, "dropout": 0.2}
STUDENT = {"channels": (4, 8, 16, 32)}
T = 2.0
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
TORCHDISTILL_DIR = Path(__file__).resolve().parent / ".torchdistill"
TORCHDISTILL_VERSION = "1.1.5"

CONFIGS = """**Online teacher (like for like).** Every loop runs the teacher on every batch, on the same
modules, the same Fashion-MNIST tensors and the same number of threads:

- **distill**: `Trainer` + `Distiller` with one `kd` term (T=2) and the task loss, fp32,
  `progress: false`; everything else default, so the non-finite guard (loss and gradient norm checked
  each step, one fused host read), the gradient norm and the per-step seeding that makes resume exact
  all stay on. Its data come through its own seeded sampler.
- **hand-written PyTorch**: teacher forward under `no_grad`, student forward, cross-entropy + KL * T^2,
  `zero_grad(set_to_none=True)`, backward, SGD step; batches indexed straight from the tensors.
- **torchdistill**: `DistillationBox` with its `KDLoss` (alpha 1, beta 1: the same loss), the teacher
  frozen (`requires_grad: false`), no forward hooks, `forward_process` + `post_forward_process` per batch
  as its example scripts do, fed the hand loop's batches (so its own data loader is not timed).

All use SGD (lr 0.05, momentum 0.9, nesterov, weight decay 5e-4). Timed: the steps after the warm-up
steps of each run (model building and set-up are not timed).

**Fastest documented configuration.** Each framework with what it documents to go faster on this job:

- **distill**: as above plus `distill.cache_teacher: true`, its documented teacher-output cache (the
  teacher runs once over the training set in `Trainer.prepare`, then each step reads the batch's
  outputs by sample index; exact here because nothing is augmented).
- **hand-written PyTorch**: the same idea by hand: the teacher's logits for the training samples
  computed once (under `no_grad`, in eval mode), each step indexes them.
- **torchdistill**: its fastest is the online `DistillationBox` above. Version 1.1.5 has no
  teacher-output cache (the `cached_data`/cache-file path of older `DistillationBox` versions is not in
  it; nothing in its `core/` or `datasets/` caches), and its other switches do not make an fp32 CPU step
  faster (`accelerator` is Hugging Face Accelerate's mixed precision, `grad_accum_step`/`max_grad_norm`
  add work).

These runs train on a seeded, class-balanced subset of `--cached-subset` Fashion-MNIST training samples
(the same ones for all three loops), so that the teacher's one pass, set-up that is not timed, stays
short."""

NOTE = (
    "The machine is shared with other work, so single runs are noisy: the frameworks alternate within "
    "each repeat (their order rotates every repeat) and the table gives medians with min and max. "
    "The ratios are medians divided by medians. In the JSON, `ratio_vs_hand` and "
    "`ratio_vs_torchdistill` are the online (like-for-like) table's, `ratio_vs_hand_fastest` and "
    "`ratio_vs_torchdistill_fastest` the fastest-documented table's, each the lower of the batch "
    "sizes' ratios (`ratio_keys` says the same)."
)


def models(seed: int, device: str = "cpu"):
    torch.manual_seed(seed)
    teacher = build_model("cnn", **TEACHER).eval().to(device)
    student = build_model("cnn", **STUDENT).to(device)
    return teacher, student


def _sync(device: str) -> None:
    """Wait for queued kernels, so that a clock read after it counts them."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _sgd(params) -> torch.optim.SGD:
    params = list(params)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, nesterov=True)


def _batches(data, batch_size: int, count: int, device: str):
    """``count`` batches of the training set in one seeded order (the hand loop's and torchdistill's)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    for step in range(count):
        idx = order[(step * batch_size) % (len(data) - batch_size) :][:batch_size]
        yield data.images[idx].to(device), data.labels[idx].to(device), idx


class _Clock(Callback):
    """Reads the clock after the warm-up steps and after the last step."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device, self.times = warmup, device, {}

    def on_step_end(self, trainer, step, metrics) -> None:
        if step in (self.warmup, trainer.config.max_steps):
            _sync(self.device)
            self.times[step] = time.perf_counter()


def run_distill(
    data, steps: int, batch_size: int, device: str, warmup: int, cache: bool = False
) -> float:
    teacher, student = models(0)
    kd = DistillSpec(
        terms=[TermSpec(loss="kd", options={"temperature": T})],
        task_weight=1.0,
        cache_teacher=cache,
    )
    distiller = build_distiller(kd, student, teacher, ClassificationTask())
    per_epoch = len(data) // batch_size + (len(data) % batch_size > 0)
    cfg = TrainConfig(
        epochs=-(-(warmup + steps) // per_epoch),  # enough epochs for the steps on a small subset
        max_steps=warmup + steps,
        batch_size=batch_size,
        lr=LR,
        progress=False,
        schedule="constant",
        device=device,
    )
    clock = _Clock(warmup, device)
    build_trainer(distiller, data, None, cfg, callbacks=[clock]).fit()
    return steps * batch_size / (clock.times[warmup + steps] - clock.times[warmup])


def run_distill_cached(data, steps: int, batch_size: int, device: str, warmup: int) -> float:
    return run_distill(data, steps, batch_size, device, warmup, cache=True)


@torch.no_grad()
def _teacher_logits(teacher: torch.nn.Module, data, device: str) -> torch.Tensor:
    """The teacher's logits for every sample of ``data`` (the hand loop's teacher cache)."""
    chunks = [teacher(data.images[i : i + 512].to(device)) for i in range(0, len(data), 512)]
    return torch.cat(chunks)


def run_hand(
    data, steps: int, batch_size: int, device: str, warmup: int, cache: bool = False
) -> float:
    teacher, student = models(0, device)
    teacher.requires_grad_(False)
    cached = _teacher_logits(teacher, data, device) if cache else None
    opt = _sgd(student.parameters())
    student.train()
    start = 0.0
    for step, (x, y, idx) in enumerate(_batches(data, batch_size, warmup + steps, device)):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        if cached is not None:
            t_logits = cached[idx.to(device)]
        else:
            with torch.no_grad():
                t_logits = teacher(x)
        s_logits = student(x)
        kd = F.kl_div(
            F.log_softmax(s_logits / T, -1),
            F.log_softmax(t_logits / T, -1),
            reduction="batchmean",
            log_target=True,
        )
        loss = F.cross_entropy(s_logits, y) + kd * T * T
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def run_hand_cached(data, steps: int, batch_size: int, device: str, warmup: int) -> float:
    return run_hand(data, steps, batch_size, device, warmup, cache=True)


def run_torchdistill(data, steps: int, batch_size: int, device: str, warmup: int) -> float:
    import torchdistill.core.interfaces.forward_proc  # noqa: F401  (registers forward_batch_only)
    from torchdistill.core.distillation import DistillationBox

    teacher, student = models(0, device)
    kd = {
        "key": "KDLoss",
        "kwargs": {
            "student_module_path": ".",
            "student_module_io": "output",
            "teacher_module_path": ".",
            "teacher_module_io": "output",
            "temperature": T,
            "alpha": 1.0,
            "beta": 1.0,
            "reduction": "batchmean",
        },
    }
    config = {
        "num_epochs": 1,
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {
            "key": "SGD",
            "kwargs": {
                "lr": LR,
                "momentum": MOMENTUM,
                "weight_decay": WEIGHT_DECAY,
                "nesterov": True,
            },
        },
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {"sub_terms": {"kd": {"criterion": kd, "weight": 1.0}}},
        },
    }
    box = DistillationBox(teacher, student, {}, config, torch.device(device), None, False, 1.0)
    box.student_model.train()
    start = 0.0
    for step, (x, y, _) in enumerate(_batches(data, batch_size, warmup + steps, device)):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        loss = box.forward_process(x, y, {})
        box.post_forward_process(loss=loss)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def torchdistill_available(install: bool) -> str | None:
    """torchdistill's version when it imports (installed into benchmarks/.torchdistill on request)."""
    if TORCHDISTILL_DIR.is_dir():
        sys.path.insert(0, str(TORCHDISTILL_DIR))
    try:
        import torchdistill
    except ImportError:
        if not install:
            return None
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
        command += [str(TORCHDISTILL_DIR), f"torchdistill=={TORCHDISTILL_VERSION}"]
        print("installing torchdistill (no dependencies) into", TORCHDISTILL_DIR, flush=True)
        subprocess.run(command, check=True)
        sys.path.insert(0, str(TORCHDISTILL_DIR))
        import torchdistill
    return str(getattr(torchdistill, "__version__", "?"))


def measure(runners: dict[str, Callable], data, args, batch_size: int) -> dict[str, list[float]]:
    names = list(runners)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        shift = repeat % len(names)  # rotate who goes first
        for name in names[shift:] + names[:shift]:
            rate = runners[name](data, args.steps, batch_size, args.device, args.warmup)
            rates[name].append(rate)
    return rates


TABLES = {
    "online": "online teacher, like for like",
    "fastest": "fastest documented configuration",
}
RATIO_KEYS = {
    "ratio_vs_hand": "distill / hand-written loop, both with the teacher online (like for like); "
    "the lower of the batch sizes",
    "ratio_vs_torchdistill": "distill / torchdistill DistillationBox, both with the teacher online "
    "(like for like); the lower of the batch sizes",
    "ratio_vs_hand_fastest": "distill with distill.cache_teacher / the hand-written loop with its "
    "teacher logits computed once; the lower of the batch sizes",
    "ratio_vs_torchdistill_fastest": "distill with distill.cache_teacher / torchdistill in its "
    "fastest documented configuration (the online DistillationBox: 1.1.5 has no teacher cache); "
    "the lower of the batch sizes",
}


def runners_for(table: str, with_torchdistill: bool) -> dict[str, Callable]:
    """The loops a table compares: each framework's online loop, or its fastest documented one."""
    runners: dict[str, Callable] = (
        {"distill": run_distill, "hand": run_hand}
        if table == "online"
        else {"distill": run_distill_cached, "hand": run_hand_cached}
    )
    if with_torchdistill:
        runners["torchdistill"] = run_torchdistill  # its fastest documented loop is the online one
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", default="256,16", help="one or more, comma-separated")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="where every loop runs: cpu, cuda, cuda:1")
    parser.add_argument(
        "--tables", default="online,fastest", help="online (teacher every step), fastest, or both"
    )
    parser.add_argument(
        "--cached-subset", type=int, default=16384, help="training samples of the fastest table"
    )
    parser.add_argument("--install-torchdistill", action="store_true")
    parser.add_argument("--write", default=None, help="markdown file to write the result into")
    parser.add_argument("--json", default=None, help="JSON file for the numbers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_size.split(",")]
    tables = [t for t in args.tables.split(",") if t]
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        parser.error(f"--tables: unknown {unknown}; use online, fastest or online,fastest")
    version = torchdistill_available(args.install_torchdistill)
    full = FashionMNIST("train")
    load_before = os.getloadavg()
    results: dict[str, dict[int, dict[str, list[float]]]] = {}
    for table in tables:
        data = full if table == "online" else full.subset(args.cached_subset)
        runners = runners_for(table, version is not None)
        results[table] = {}
        for batch_size in sizes:
            for runner in runners.values():  # warm-up: allocator, kernels, imports
                runner(data, 2, batch_size, args.device, 1)
            results[table][batch_size] = measure(runners, data, args, batch_size)
    load = {"before": list(load_before), "after": list(os.getloadavg())}
    text, numbers = report(results, args, version, load)
    print(text)
    if args.write:
        with open(args.write, "w") as f:
            f.write(
                "# Benchmarks\n\n## KD training throughput: distill vs hand-written PyTorch and torchdistill\n\n"
            )
            f.write(f"Command: `python benchmarks/throughput.py {' '.join(sys.argv[1:])}`\n\n")
            f.write(text + "\n\n" + CONFIGS + "\n\n" + NOTE + "\n")
    if args.json:
        numbers["command"] = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")


def _table(
    table: str, results: dict[int, dict[str, list[float]]], version: str | None
) -> tuple[list[str], dict[str, dict]]:
    """Markdown rows and per-batch-size numbers of one table."""
    names = {
        "distill": "distill Trainer + Distiller"
        + (" + cache_teacher" if table == "fastest" else ""),
        "hand": "hand-written PyTorch" + (" + teacher logits once" if table == "fastest" else ""),
        "torchdistill": f"torchdistill {version} DistillationBox",
    }
    lines = [
        f"**{TABLES[table].capitalize()}**",
        "",
        "| batch | loop | samples/s (median) | min | max | ratio distill / this |",
        "|---|---|---|---|---|---|",
    ]
    per_size: dict[str, dict] = {}
    for batch_size, rates in results.items():
        medians = {name: statistics.median(r) for name, r in rates.items()}
        for name, r in rates.items():
            ratio = medians["distill"] / medians[name]
            lines.append(
                f"| {batch_size} | {names[name]} | {medians[name]:.0f} | {min(r):.0f} | {max(r):.0f} | {ratio:.3f} |"
            )
        entry = {
            "samples_per_s": {name: round(m, 1) for name, m in medians.items()},
            "runs": {name: [round(x, 1) for x in r] for name, r in rates.items()},
            "ratio_vs_hand": round(medians["distill"] / medians["hand"], 4),
        }
        if "torchdistill" in medians:
            entry["ratio_vs_torchdistill"] = round(medians["distill"] / medians["torchdistill"], 4)
        per_size[str(batch_size)] = entry
    return lines, per_size


def _lowest(per_size: dict[str, dict], key: str) -> float | None:
    values = [v[key] for v in per_size.values() if key in v]
    return min(values) if values else None


def report(
    results: dict[str, dict[int, dict[str, list[float]]]],
    args,
    version: str | None,
    load: dict[str, list[float]],
):
    numbers: dict = {"device": args.device, "threads": args.threads, "torch": torch.__version__}
    numbers["torchdistill"] = version
    numbers["machine"] = f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"
    numbers["load_average"] = {k: [round(x, 2) for x in v] for k, v in load.items()}
    numbers["configurations"] = {
        "online": "every loop runs the teacher on every batch (like for like)",
        "fastest": "each framework's fastest documented configuration: distill.cache_teacher; the "
        "hand loop with teacher logits computed once; torchdistill's online DistillationBox (1.1.5 "
        f"documents no teacher cache); a seeded subset of {args.cached_subset} training samples",
    }
    lines: list[str] = []
    summary: list[str] = []
    for table, by_size in results.items():
        rows, per_size = _table(table, by_size, version)
        lines += rows + [""]
        suffix = "" if table == "online" else "_fastest"
        if table == "online":
            numbers["batch_sizes"] = per_size
        else:
            for size, entry in per_size.items():
                numbers.setdefault("batch_sizes", {}).setdefault(size, {})["fastest"] = entry
        hand, td = _lowest(per_size, "ratio_vs_hand"), _lowest(per_size, "ratio_vs_torchdistill")
        numbers["ratio_vs_hand" + suffix] = hand
        numbers["ratio_vs_torchdistill" + suffix] = td
        summary.append(
            f"{TABLES[table]}: **distill / hand-written {hand:.3f}** (target >= 0.95), "
            + (
                f"**distill / torchdistill {td:.3f}** (target >= 1.2)"
                if td is not None
                else "torchdistill not installed (run with --install-torchdistill)"
            )
        )
    numbers["ratio_keys"] = {k: v for k, v in RATIO_KEYS.items() if k in numbers}
    t, s = models(0)
    lines += [
        "Each ratio is the lower of the batch sizes'. " + "; ".join(summary) + ".",
        "",
        f"Teacher cnn{TEACHER} ({count_parameters(t):,} params), student cnn{STUDENT} "
        f"({count_parameters(s):,} params), {args.warmup} warm-up + {args.steps} timed steps x "
        f"{args.repeats} rotating repeats, {args.threads} threads, device {args.device}, torch "
        f"{torch.__version__}, {numbers['machine']}; load average (1, 5, 15 min) "
        f"{numbers['load_average']['before']} before, {numbers['load_average']['after']} after.",
    ]
    return "\n".join(lines), numbers


if __name__ == "__main__":
    main()
