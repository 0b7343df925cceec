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
    parser.add_argument("part", choices=["chunked", "trl", "trl-parity", "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=256)
    args = parser.parse_args()
    results: dict = {}
    if args.part in ("chunked", "all"):
        results.update(bench_chunked(args.repeats, args.chunk_size))
    if args.part in ("trl", "trl-parity", "all"):
        from lm_trl_parity import bench_trl

        results.update(bench_trl(args.repeats, run_child, speed_too=args.part != "trl-parity"))
    save(results)
    print(json.dumps({k: v for k, v in results.items() if not k.startswith("_")}, indent=2))


if __name__ == "__main__":
    main()
