"""LM loss benchmarks: the chunked loss path at a 151,669-entry vocabulary, and distill side by side with
TRL's ``GKDTrainer`` on one tiny Llama-config pair.

    OMP_NUM_THREADS=1 python benchmarks/lm_trl.py chunked      # chunked_memory_ratio, chunked_time_ratio
    OMP_NUM_THREADS=1 python benchmarks/lm_trl.py trl          # trl_* keys (needs: pip install trl)
    OMP_NUM_THREADS=1 python benchmarks/lm_trl.py trl-parity   # only the loss and gradient parity
    OMP_NUM_THREADS=1 python benchmarks/lm_trl.py all

Every measurement runs in a fresh process (``--child``), so the peak resident set size it reads
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the kernel's high-water mark; tracemalloc does not see
torch's allocations) belongs to that measurement alone: the peak of the loss step is the high-water mark
after the step minus the one before it (models and inputs already allocated). Results go into
``docs/benchmarks/lm.json`` (other keys kept) and ``docs/benchmarks/lm_losses.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "docs" / "benchmarks" / "lm.json"
REPORT = ROOT / "docs" / "benchmarks" / "lm_losses.md"
VOCAB = 151_669  # the Qwen3 tokenizer's length
TOKENS = int(os.environ.get("LM_BENCH_TOKENS", "2048"))  # a smaller probe: LM_BENCH_TOKENS=256
STUDENT_DIM, TEACHER_DIM = 64, 128


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    )


# ------------------------------------------------------------------ chunked vs plain


def chunked_child(path: str, seed: int, chunk_size: int) -> dict:
    """One loss step (forward KL from hidden states through both heads, then backward), timed, with the
    process's peak RSS before and after."""
    from distill.losses import build_loss

    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(1, TOKENS, STUDENT_DIM, generator=g).requires_grad_(True)
    head = (0.05 * torch.randn(VOCAB, STUDENT_DIM, generator=g)).requires_grad_(True)
    ht = torch.randn(1, TOKENS, TEACHER_DIM, generator=g)
    teacher_head = 0.05 * torch.randn(VOCAB, TEACHER_DIM, generator=g)
    labels = torch.randint(0, VOCAB, (1, TOKENS), generator=g)
    loss = build_loss("forward_kl")
    before = peak_mib()
    start = time.perf_counter()
    if path == "plain":
        with torch.no_grad():
            teacher_logits = ht @ teacher_head.T
        value = loss(hs @ head.T, teacher_logits, labels)
    else:
        value = loss.chunked(hs, head, ht, teacher_head, labels, chunk_size=chunk_size)
    value.backward()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": peak_mib() - before, "value": float(value.detach())}


def run_child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_chunked(repeats: int, chunk_size: int) -> dict:
    rows: dict[str, list[dict]] = {"plain": [], "chunked": []}
    for seed in range(repeats):  # interleaved, so a burst of load hits both paths
        for path in ("chunked", "plain"):
            rows[path].append(run_child(["chunked", path, str(seed), str(chunk_size)]))
            print(path, seed, rows[path][-1], flush=True)
    for a, b in zip(rows["plain"], rows["chunked"], strict=True):
        assert abs(a["value"] - b["value"]) <= 1e-5 * abs(a["value"]), (a, b)
    ratio_t = [
        c["seconds"] / p["seconds"] for p, c in zip(rows["plain"], rows["chunked"], strict=True)
    ]
    ratio_m = [
        c["peak_mib"] / p["peak_mib"] for p, c in zip(rows["plain"], rows["chunked"], strict=True)
    ]
    stats = {
        path: {
            key: (statistics.mean(r[key] for r in rs), statistics.pstdev(r[key] for r in rs))
            for key in ("seconds", "peak_mib")
        }
        for path, rs in rows.items()
    }
    return {
        "chunked_memory_ratio": round(statistics.mean(ratio_m), 4),
        "chunked_time_ratio": round(statistics.mean(ratio_t), 4),
        "_chunked": {
            "stats": stats,
            "time_ratios": ratio_t,
            "memory_ratios": ratio_m,
            "chunk_size": chunk_size,
        },
    }


# ------------------------------------------------------------------ results


def save(results: dict) -> None:
    data = json.loads(JSON.read_text()) if JSON.is_file() else {}
    data.update({k: v for k, v in results.items() if not k.startswith("_")})
    JSON.parent.mkdir(parents=True, exist_ok=True)
    JSON.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    details = ROOT / "docs" / "benchmarks" / "lm_losses.json"
    old = json.loads(details.read_text()) if details.is_file() else {}
    old.update({k[1:]: v for k, v in results.items() if k.startswith("_")})
    old["machine"] = machine()
    details.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"


def write_report() -> None:
    """docs/benchmarks/lm_losses.md from the stored results (lm.json keys, lm_losses.json details)."""
    keys = json.loads(JSON.read_text()) if JSON.is_file() else {}
    details = ROOT / "docs" / "benchmarks" / "lm_losses.json"
    info = json.loads(details.read_text()) if details.is_file() else {}
    lines = [
        "# LM losses: the chunked path and TRL side by side",
        "",
        "Written by `benchmarks/lm_trl.py` (keys in `lm.json`, per-run numbers in `lm_losses.json`).",
        f"Machine: {info.get('machine', '?')}, a 2-core CPU shared with other work; every measurement in",
        "a fresh process, one thread (`OMP_NUM_THREADS=1`). Mean ± std over the runs; seeds 0, 1, 2.",
        "",
        "## Chunked loss (`chunked_memory_ratio`, `chunked_time_ratio`)",
        "",
        "    OMP_NUM_THREADS=1 python benchmarks/lm_trl.py chunked",
        "",
        f"Forward KL, {TOKENS} tokens, a {VOCAB:,}-entry vocabulary (the Qwen3 tokenizer's length), random",
        f"student ({STUDENT_DIM}) and teacher ({TEACHER_DIM}) hidden states and heads; one loss step = both",
        "heads, the loss and its backward. Peak memory: the process's resident-set high-water mark",
        "(`getrusage`) after the step minus before it.",
        "",
    ]
    chunk = info.get("chunked")
    if chunk:
        stats = chunk["stats"]
        lines += [
            "| path | seconds | peak MiB of the step |",
            "|---|---|---|",
        ]
        for path in ("plain", "chunked"):
            sec, mib = stats[path]["seconds"], stats[path]["peak_mib"]
            lines.append(f"| {path} | {sec[0]:.1f} ± {sec[1]:.1f} | {mib[0]:.0f} ± {mib[1]:.0f} |")
        lines += [
            "",
            f"chunk_size {chunk['chunk_size']}: memory ratio **{keys.get('chunked_memory_ratio')}** (target <= 0.25),"
            f" time ratio **{keys.get('chunked_time_ratio')}** (target <= 1.2), per run "
            + ", ".join(f"{r:.2f}" for r in chunk["time_ratios"])
            + ". Equal loss values in every run (checked to 1e-5); equal gradients are a unit test"
            " (`tests/losses/test_lm_chunked.py`).",
            "",
        ]
    lines += [
        "## TRL `GKDTrainer` (`trl_loss_max_rel_diff`, `trl_grad_min_cosine`, `trl_throughput_ratio`)",
        "",
        "    pip install trl   # the benchmark's own set-up, never a dependency of distill",
        "    OMP_NUM_THREADS=1 python benchmarks/lm_trl.py trl",
        "",
        "A tiny Llama-config teacher (hidden 96, 2 layers) and student (48, 1 layer), random weights, the",
        "same batches (8 x 64 tokens, 8 prompt tokens masked, right padding of varied length), lambda 0,",
        "float32 on both sides (TRL's default bf16 autocast turned off), AdamW at a constant 1e-3,",
        "clipping at 1. Parity: TRL's `compute_loss` vs distill's `Distiller` (a `generalized_jsd` term,",
        "task weight 0) on the first batch, beta 0, 0.5, 1; gradient cosine over every student parameter",
        "(float64). Throughput: input tokens of steps 3-12 per second of each trainer's own loop (beta 0.5).",
        "",
        "| vocabulary | max rel. loss diff | min grad cosine | tokens/s distill / TRL | peak RSS distill / TRL |",
        "|---|---|---|---|---|",
    ]
    for vocab, suffix in (("32000", ""), ("320", "_vocab320")):
        lines.append(
            f"| {vocab} | {keys.get('trl_loss_max_rel_diff' + suffix)} | {keys.get('trl_grad_min_cosine' + suffix)} | "
            f"{keys.get('trl_throughput_ratio' + suffix)} | {keys.get('trl_peak_memory_ratio' + suffix)} |"
        )
    for vocab in ("32000", "320"):
        speed = info.get(f"trl_speed_vocab{vocab}") or info.get(f"trl_vocab{vocab}")
        if speed:
            tput = speed["throughput"]
            lines.append(
                f"\nVocabulary {vocab}: TRL {_ms([r['tokens_per_s'] for r in tput['trl']])} tokens/s, "
                f"distill {_ms([r['tokens_per_s'] for r in tput['distill']])} tokens/s; peak RSS TRL "
                f"{_ms([r['peak_mib'] for r in tput['trl']])} MiB, distill {_ms([r['peak_mib'] for r in tput['distill']])} MiB; "
                "throughput ratio per run " + ", ".join(f"{r:.2f}" for r in speed["ratios"]) + "."
            )
    lines += [
        "",
        "The JSON keys are the 32,000-entry (Llama-2-sized) vocabulary's. There the loss is a large part of",
        "a step and distill computes it on the valid tokens only (prompt and padding are left out before",
        "the softmax), TRL on every position; at 320 entries the step is the models' forward and backward,",
        "the same code on both sides, and the ratio shows the trainers' own overhead. The runs alternate",
        "TRL and distill; other jobs on the shared machine make single runs vary (TRL's first run at",
        "32,000 entries was half as fast as its others), so read the per-run ratios with the means.",
    ]
    REPORT.write_text("\n".join(lines) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        kind, *rest = sys.argv[2:]
        if kind == "chunked":
            result = chunked_child(rest[0], int(rest[1]), int(rest[2]))
        else:
            from lm_trl_parity import trl_child

            result = trl_child(*rest)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["chunked", "trl", "trl-parity", "all", "report"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=256)
    args = parser.parse_args()
    results: dict = {}
    if args.part in ("chunked", "all"):
        results.update(bench_chunked(args.repeats, args.chunk_size))
    if args.part in ("trl", "trl-parity", "all"):
        from lm_trl_parity import bench_trl

        results.update(bench_trl(args.repeats, run_child, speed_too=args.part != "trl-parity"))
    if results:
        save(results)
        print(json.dumps({k: v for k, v in results.items() if not k.startswith("_")}, indent=2))
    write_report()


if __name__ == "__main__":
    main()
