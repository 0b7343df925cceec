"""Does the top-k cache teach what the full distribution teaches? On one batch of real training blocks,
the per-token top-k loss read from a filled cache against the full forward KL to the online teacher:
loss values, gradients with respect to the student's logits (cosine, norm ratio) and the teacher mass
the top-k capture.

    python benchmarks/lm.py --teacher-only
    python benchmarks/lm_topk_check.py [--student RUN/model.safetensors] [--k 8]

The cache is filled for the first 64 training blocks into ``--cache`` (the cache path, alignment "row j
predicts token j+1", float16 storage and re-tempering are the ones training uses); the student is a
trained one (``--student``) or a fresh ``gpt_student``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def grad_of(
    loss: torch.nn.Module, student_logits: torch.Tensor, teacher: object, labels: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """``loss(student, teacher, labels)`` and its gradient with respect to the student's logits."""
    logits = student_logits.detach().clone().requires_grad_(True)
    value = loss(logits, teacher, labels)
    value.backward()
    return float(value.detach()), logits.grad.flatten()


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from safetensors.torch import load_file

    from distill.config.build import build, make_trainer
    from distill.config.load import load_recipe
    from distill.data.base import make_loader
    from distill.losses import LOSSES
    from lm import teacher_run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", help="a trained gpt_student's model.safetensors")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--cache", default="runs/bench-lm-topk-check")
    args = parser.parse_args(argv)
    weights = teacher_run() / "model.safetensors"
    shutil.rmtree(args.cache, ignore_errors=True)
    common = ["train.progress=false", f"teacher.weights={weights}", "data.train_subset=64"]
    cached = build(load_recipe("shakespeare/cached", [*common, f"distill.topk_cache.k={args.k}",
                                                      f"distill.topk_cache.dir={args.cache}"]))  # fmt: skip
    make_trainer(cached, run_dir=Path(args.cache) / "run").prepare()  # fills the cache
    source = cached.distiller.source
    online = build(load_recipe("shakespeare/kd", common))
    student, teacher = online.student, online.teacher.eval()
    if args.student:
        student.load_state_dict(load_file(args.student))
    batch = source.task.split(next(iter(make_loader(cached.train_data, 32, list(range(32))))))
    ids = batch.inputs["input_ids"] if isinstance(batch.inputs, dict) else batch.inputs
    labels = batch.targets
    with torch.no_grad():
        teacher_logits, student_logits = teacher(input_ids=ids), student(input_ids=ids)
    topk = source.outputs(batch, ["@topk"])["@topk"]
    mass = topk[0].exp().sum(-1)
    print(f"top-{args.k} teacher mass per token: mean {mass.mean():.3f}, median "
          f"{mass.median():.3f}, 5th percentile {mass.quantile(0.05):.3f}")  # fmt: skip
    print("\n| loss (T) | full KL | cached top-k loss | gradient cosine | gradient norm ratio |")
    print("|---|---|---|---|---|")
    for missing in ("tail_bucket", "renormalise"):
        for temperature in (1.0, 2.0):
            full = LOSSES.get("forward_kl")(temperature=temperature)
            sparse = LOSSES.get("topk_kl")(missing=missing, temperature=temperature)
            ref, ref_grad = grad_of(full, student_logits, teacher_logits, labels)
            val, grad = grad_of(sparse, student_logits, topk, labels)
            cos = float(F.cosine_similarity(grad, ref_grad, dim=0))
            print(f"| topk_kl {missing} (T={temperature:g}) | {ref:.4f} | {val:.4f} | {cos:.4f} | "
                  f"{float(grad.norm() / ref_grad.norm()):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
