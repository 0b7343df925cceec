"""CPU latency of a PyTorch model or an ONNX file, at several batch sizes and thread counts.

Keys of :func:`measure_latency`'s result, for batch size ``B`` and threads ``T`` (``all`` for ``None``,
the runtime's default of all cores):

* ``latency_ms_b{B}_t{T}``: median wall time of one forward pass, in milliseconds;
* ``latency_p90_ms_b{B}_t{T}``: its 90th percentile.

e.g. ``latency_ms_b1_t1`` (batch 1, one thread) and ``latency_p90_ms_b256_tall``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from distill.errors import DistillError
from distill.export.runtime import RuntimeModule


def latency_key(batch_size: int, threads: int | None, stat: str = "median") -> str:
    """``latency_ms_b1_t1`` (median) or ``latency_p90_ms_b1_t1`` (``stat="p90"``)."""
    t = "all" if threads is None else str(threads)
    prefix = "latency_ms" if stat == "median" else f"latency_{stat}_ms"
    return f"{prefix}_b{batch_size}_t{t}"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def time_calls(run: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Wall times (ms) of ``repeats`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return times


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set PyTorch's intra-op threads for the block (``None``: leave as is) and restore them after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_latency(
    model_or_session: nn.Module,
    example: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 256),
    threads: Sequence[int | None] = (1, None),
    warmup: int = 10,
    repeats: int = 50,
) -> dict[str, float]:
    """Median and p90 latency (ms) for each batch size and thread count (keys in the module docstring).

    ``example`` is ONE input without the batch dimension, e.g. ``(C, H, W)``; it is repeated to each
    batch size. The model must be on the CPU. Every model is timed the same way: ``model(x)`` on a batch
    made before the timing, under ``torch.inference_mode``. A PyTorch model runs in eval mode (restored
    after) with ``torch.set_num_threads`` set for the measurement and restored after; an
    :class:`~distill.export.OnnxModule` gets one onnxruntime session per thread setting, and its calls run
    through buffers bound once per input shape (``BoundRunner``), as a deployment keeping a session open
    would; the first warm-up call binds them.
    """
    _check(batch_sizes, threads, warmup, repeats)
    was_training = model_or_session.training
    results: dict[str, float] = {}
    try:
        for t in threads:
            if isinstance(model_or_session, RuntimeModule):
                model, context = model_or_session.with_threads(t), contextlib.nullcontext()
            else:
                model, context = model_or_session.eval(), torch_threads(t)
            with context, torch.inference_mode():
                for b in batch_sizes:
                    x = example.unsqueeze(0).expand(b, *example.shape).contiguous().cpu()
                    times = time_calls(lambda: model(x), warmup, repeats)  # noqa: B023 - called here
                    results[latency_key(b, t)] = statistics.median(times)
                    results[latency_key(b, t, "p90")] = percentile(times, 90)
    finally:
        model_or_session.train(was_training)
    return results


def _check(
    batch_sizes: Sequence[int], threads: Sequence[int | None], warmup: int, repeats: int
) -> None:
    def positive(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if not batch_sizes or not all(positive(b) for b in batch_sizes):
        raise DistillError(
            f"batch_sizes must be positive ints, got {list(batch_sizes)}; e.g. (1, 256)"
        )
    if not threads or not all(t is None or positive(t) for t in threads):
        raise DistillError(
            f"threads must be positive ints or None (all cores), got {list(threads)}; e.g. (1, None)"
        )
    if not positive(repeats) or not isinstance(warmup, int) or warmup < 0:
        raise DistillError(
            f"need repeats >= 1 and warmup >= 0, got repeats={repeats!r}, warmup={warmup!r}"
        )
