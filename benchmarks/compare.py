"""Re-time the models of a finished ``distill compare`` run (batch 1, one thread unless told) in interleaved
rounds, each against the teacher made the same way.

Each round times every pipeline's model once with the shared harness (``measure_latency``: ``--warmup``
untimed calls, then ``--repeats`` timed ones, their median), the models in turn, so that a burst of load on
a shared machine hits all of them. Prints, per pipeline, the median ± std and the minimum over the rounds of
those medians, and the teacher's latency divided by the model's: the ratio of the two medians, and the
median and range of the per-round ratios (teacher and model timed seconds apart in the same round). Also
prints the machine, the library versions and the load average before and after.

    python benchmarks/compare.py fashion_mnist/kd train.epochs=1 train.warmup_epochs=0.1 \\
        --teacher-recipe fashion_mnist/teacher --out runs/compare-1epoch

``--breakdown`` adds onnxruntime's per-node profile and the cost of each layer of a batch-1 call;
``--int8-variants`` times the float32 student file against int8 files quantized from it in other ways.

Same recipe, overrides and ``--out`` as the comparison, so every model is reused (nothing trains; the ONNX
rows are exported and quantized again, deterministically).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from distill.compare import Context, parse_pipelines
from distill.compare import _kd_recipe as kd_recipe
from distill.compare.fair import reference_of, with_references
from distill.export import latency_key, measure_latency


def machine() -> str:
    """CPU model, logical cores, Python, torch and onnxruntime versions, in one line."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    versions = {}
    for package in ("onnxruntime", "openvino"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "-"
    return (
        f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {versions['onnxruntime']}, "
        f"openvino {versions['openvino']}"
    )


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "-"


def time_rounds(
    models: dict[str, torch.nn.Module],
    example: torch.Tensor,
    rounds: int,
    warmup: int,
    repeats: int,
    batch: int = 1,
    threads: int | None = 1,
) -> dict[str, list[float]]:
    """Per model, the median (ms) at ``batch`` and ``threads`` (None: all) of each round; rounds
    interleave the models."""
    times: dict[str, list[float]] = {name: [] for name in models}
    key = latency_key(batch, threads)
    for _ in range(rounds):
        for name, model in models.items():
            found = measure_latency(
                model,
                example,
                batch_sizes=(batch,),
                threads=(threads,),
                warmup=warmup,
                repeats=repeats,
            )
            times[name].append(found[key])
    return times


def table(times: dict[str, list[float]], cell: str = "b1, 1 thread") -> list[str]:
    """Markdown rows: median ± std and min of the round medians; the same-runtime teacher
    (:func:`~distill.compare.fair.reference_of`) over this row (medians, per round)."""
    lines = [
        f"| pipeline | ms @ {cell}: median ± std (min) | ref | ref / this: medians "
        "| per-round ratio: median [min, max] |",
        "|---|---|---|---|---|",
    ]
    for name, values in times.items():
        reference = reference_of(name)
        ref = times.get(reference)
        median = statistics.median(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = [name, f"{median:.4f} ± {std:.4f} ({min(values):.4f})", reference, "-", "-"]
        if ref:
            paired = [r / v for r, v in zip(ref, values, strict=True)]
            cells[3] = f"{statistics.median(ref) / median:.2f}x"
            cells[4] = f"{statistics.median(paired):.2f}x [{min(paired):.2f}, {max(paired):.2f}]"
        else:
            cells[2] = "-"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def node_profile(path: Path, example: torch.Tensor, calls: int) -> list[str]:
    """Per-node kernel time (µs, median over ``calls`` batch-1 runs) from onnxruntime's profiler. The
    profiler adds its own cost to every node, so compare nodes with each other, not with the wall time."""
    import json
    import tempfile

    import onnxruntime as ort

    from distill.export.runtime import session_options

    options = session_options(1)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: example.unsqueeze(0).numpy()}
        for _ in range(20 + calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[tuple[str, str], list[float]] = {}
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            nodes.setdefault((e["name"], e["args"]["op_name"]), []).append(e["dur"])
    medians = [(op, statistics.median(d[-calls:])) for (_, op), d in nodes.items()]
    total = sum(m for _, m in medians)
    return [
        f"{path.name}: {len(medians)} nodes, sum of node medians {total:.0f} µs, "
        f"profiled run {statistics.median(runs[-calls:]):.0f} µs",
        "  " + ", ".join(f"{op} {m:.0f}" for op, m in medians),
    ]


def call_layers(path: Path, example: torch.Tensor, rounds: int, repeats: int) -> list[str]:
    """Batch-1 wall time (µs, median / min over rounds) of one call: the bound run alone
    (``run_with_iobinding``), the same next to a tiny torch or numpy op, ``session.run`` with a numpy
    array, ``BoundRunner.one`` (input bound where it lies, output from the pool) and ``OnnxModule(x)``
    (what the table times: ``one`` behind ``nn.Module.__call__`` and ``forward``)."""
    from distill.export import OnnxModule
    from distill.export.latency import time_calls

    module = OnnxModule(path, threads=1)
    x = example.unsqueeze(0)
    module(x)
    module(x)  # the second call runs bound
    binding = module.runner.bound[(x.shape,)].binding
    session, name = module.session, module.input_name
    array = x.numpy()
    small, small_np = torch.zeros(4), np.zeros(4)
    calls = {
        "run_with_iobinding": lambda: session.run_with_iobinding(binding),
        # what a tiny op next to the run costs (alone each is a few µs)
        "bound run + 4-float torch add_": lambda: (
            small.add_(1),
            session.run_with_iobinding(binding),
        ),
        "bound run + 4-float numpy add": lambda: (
            np.add(small_np, 1, out=small_np),
            session.run_with_iobinding(binding),
        ),
        "session.run(numpy)": lambda: session.run(None, {name: array}),
        "BoundRunner.one(x)": lambda: module.runner.one(x),
        "OnnxModule(x)": lambda: module(x),
    }
    found: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for _ in range(rounds):
            for key, call in calls.items():
                found[key].append(1000 * statistics.median(time_calls(call, 20, repeats)))
    cells = [f"{k} {statistics.median(v):.1f} / {min(v):.1f}" for k, v in found.items()]
    return [f"{path.name} (µs, median / min of {rounds} rounds): " + ", ".join(cells)]


def int8_variants(
    float_path: Path,
    calibration: list[torch.Tensor],
    example: torch.Tensor,
    rounds: int,
    repeats: int,
) -> list[str]:
    """The onnxruntime run alone (µs, bound input and output, one thread, median / min over interleaved
    rounds) of the float32 file and of int8 files quantized from it in other ways: distill's recipe
    (QDQ, U8S8, per-channel, first and last compute layers float), per-tensor weights, every layer int8,
    int8 in only the last 1 or 2 convolutions, and, through onnxruntime's quantizer directly, the
    QOperator format and the S8S8 and U8U8 type pairs. Answers whether any int8 file beats the float one
    on this CPU."""
    import tempfile

    from onnxruntime import quantization as q

    from distill.export import OnnxModule
    from distill.export.latency import time_calls
    from distill.export.quantize import (
        _prepare,
        _Reader,
        first_and_last_layers,
        node_names,
        quantize_onnx,
    )

    keep = first_and_last_layers(float_path)
    convs = [n for n in node_names(float_path, "Conv") if n not in keep]
    with tempfile.TemporaryDirectory() as tmp:
        files = {"float32": float_path}

        def distill_int8(name: str, **options) -> None:
            files[name] = quantize_onnx(
                float_path, Path(tmp) / f"{name}.onnx", calibration=calibration, **options
            )

        distill_int8("int8 (distill's recipe)")
        distill_int8("int8, per-tensor weights", per_channel=False)
        distill_int8("int8, every layer", keep_float=())
        for last in (2, 1):
            if len(convs) > last:
                distill_int8(f"int8, last {last} conv(s) only", keep_float=keep + convs[:-last])
        prepared = Path(tmp) / "prepared.onnx"
        _prepare(q, float_path, prepared)
        input_name = node_input(prepared)
        extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
        for name, fmt, act, weight, options in (
            ("int8, QOperator format", q.QuantFormat.QOperator, q.QuantType.QUInt8, q.QuantType.QInt8, {}),
            ("int8, S8S8", q.QuantFormat.QDQ, q.QuantType.QInt8, q.QuantType.QInt8, {"ActivationSymmetric": True}),
            ("int8, U8U8", q.QuantFormat.QDQ, q.QuantType.QUInt8, q.QuantType.QUInt8, {"WeightSymmetric": False}),
        ):  # fmt: skip
            files[name] = Path(tmp) / f"{name}.onnx"
            q.quantize_static(
                str(prepared), str(files[name]), _Reader(input_name, iter(calibration)),
                quant_format=fmt, activation_type=act, weight_type=weight, per_channel=True,
                nodes_to_exclude=keep, extra_options={**extra, **options},
            )  # fmt: skip
        runs = {}
        x = example.unsqueeze(0)
        for name, path in files.items():
            module = OnnxModule(path, threads=1)
            module(x)
            module(x)  # the second call binds
            binding = module.runner.bound[(x.shape,)].binding
            runs[name] = functools.partial(module.session.run_with_iobinding, binding)
        found: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                found[name].append(1000 * statistics.median(time_calls(run, 20, repeats)))
    return [f"{k}: {statistics.median(v):.1f} / {min(v):.1f} µs" for k, v in found.items()]


def node_input(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--teacher-recipe")
    parser.add_argument("--pipelines", default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads; 0: all")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also profile the onnxruntime rows: per-node kernel times and per-call layers",
    )
    parser.add_argument(
        "--int8-variants",
        action="store_true",
        help="also quantize the student-kd-onnx file other ways and time each onnxruntime run",
    )
    args = parser.parse_args()
    console = Console()
    names, _ = with_references(parse_pipelines(args.pipelines))
    threads = args.threads or None
    cell = f"b{args.batch}, {'all threads' if threads is None else f'{threads} thread'}"
    kd = kd_recipe(
        args.recipe, args.overrides, args.out, args.teacher_recipe, False, False, console
    )
    ctx = Context(kd, args.out, console)
    made = {name: ctx.get(name) for name in names}
    models = {name: product.model for name, product in made.items()}
    before = load()
    times = time_rounds(
        models, ctx.example, args.rounds, args.warmup, args.repeats, args.batch, threads
    )
    print(f"machine: {machine()}")
    print(f"load average (1, 5, 15 min) before: {before}, after: {load()}")
    print(
        f"{args.rounds} rounds x {args.repeats} calls after {args.warmup} warm-up calls, "
        f"{cell}; one test image (the comparison's example) repeated to the batch\n"
    )
    print("\n".join(table(times, cell)))
    if args.breakdown:
        for name, product in made.items():
            if product.runtime == "onnxruntime" and product.artefact is not None:
                print(f"\n{name}:")
                print("\n".join(node_profile(product.artefact, ctx.example, 2000)))
                print("\n".join(call_layers(product.artefact, ctx.example, args.rounds, 300)))
        print(f"load average after the breakdown: {load()}")
    if args.int8_variants:
        if "student-kd-onnx" not in made:
            raise SystemExit(
                "--int8-variants needs student-kd-onnx in --pipelines (its float32 file)"
            )
        print(f"\nonnxruntime run alone, batch 1, one thread ({args.rounds} rounds, median / min):")
        lines = int8_variants(
            made["student-kd-onnx"].artefact, ctx.calibration(), ctx.example, args.rounds, 300
        )
        print("\n".join(lines))
        print(f"load average after the int8 variants: {load()}")


if __name__ == "__main__":
    main()
