"""DistilBERT-style distillation of your own fine-tuned encoder, in Python (no recipe).

The teacher is all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (``distill train rotten_tomatoes/teacher``
writes ``runs/rotten_tomatoes-teacher``; without it this script fine-tunes one briefly). The student keeps
the teacher's embeddings, two of its six layers and its head, and learns from the teacher's soft targets
plus a cosine loss between the last hidden states (DistilBERT's two distillation terms).

    bash scripts/get_text_data.sh            # Rotten Tomatoes + the MiniLM weights (offline afterwards)
    python examples/text_distill.py --quick  # a few hundred samples, a minute or two on a laptop CPU

Your own data: ``text_file(split, root, train_file="train.jsonl", text_column="review", label_column="stars")``;
your own teacher: ``build_model("hf:<folder or hub id>", num_classes=...)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distill import Distiller, KDLoss, Term, TrainConfig, Trainer, build_loss
from distill.config.build import load_weights
from distill.data.rotten_tomatoes import rotten_tomatoes
from distill.models import build_model, count_parameters
from distill.models.hf import student_from_teacher, tokenizer_of
from distill.tasks import TextClassificationTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--teacher", default="runs/rotten_tomatoes-teacher", help="fine-tuned teacher run"
    )
    parser.add_argument(
        "--quick", action="store_true", help="512 training samples, 256 test samples"
    )
    parser.add_argument("--out", default="runs/example-text")
    args = parser.parse_args()

    train, test = rotten_tomatoes("train", max_length=64), rotten_tomatoes("test", max_length=64)
    if args.quick:
        train, test = train.subset(512), test.subset(256)
    task = TextClassificationTask()
    teacher = build_model(
        "hf:sentence-transformers/all-MiniLM-L6-v2", num_classes=train.num_classes
    )
    for data in (train, test):
        data.set_tokenizer(tokenizer_of(teacher))  # dynamic padding, at most 64 tokens
    if Path(args.teacher, "model.safetensors").is_file():
        load_weights(teacher, args.teacher, "teacher")
    else:  # fine-tune the teacher first: a distiller without terms is plain training
        print(f"no teacher run at {args.teacher}; fine-tuning the teacher for one epoch")
        config = TrainConfig(epochs=1, batch_size=32, optimizer="adamw", lr=5e-5, weight_decay=0.01,
                             warmup_epochs=0.1, progress=False)  # fmt: skip
        Trainer(Distiller(teacher, task), train, test, config).fit()

    student = student_from_teacher(
        teacher, uniform=2
    )  # embeddings, layers 0 and 3, pooler and head
    distiller = Distiller(
        student,
        task,
        teacher=teacher,
        terms=[
            Term(KDLoss(temperature=2.0), weight=0.5),  # soft targets
            Term(
                build_loss("hidden_cosine"), student="@hidden_states.2", teacher="@hidden_states.6"
            ),
        ],
        task_weight=0.5,  # the student's own cross-entropy
    )
    config = TrainConfig(epochs=1 if args.quick else 3, batch_size=32, optimizer="adamw", lr=1e-4,
                         weight_decay=0.01, warmup_epochs=0.1, grad_clip=1.0, progress=False)  # fmt: skip
    summary = Trainer(distiller, train, test, config, run_dir=args.out).fit()
    teacher_metrics = task.evaluate(teacher, test.loader(256))
    print(
        f"teacher {count_parameters(teacher) / 1e6:.1f}M params: top-1 {teacher_metrics['top1']:.2f}%; "
        f"student {count_parameters(student) / 1e6:.1f}M params: top-1 {summary['last']['top1']:.2f}%, "
        f"macro-F1 {summary['last']['macro_f1']:.2f}%, agreement {summary['last']['agreement']:.2f}%"
    )


if __name__ == "__main__":
    main()
