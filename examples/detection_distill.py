"""Distil a YOLO detector in Python (no recipe): a YOLO11s teacher teaches a YOLOv8n student.

Needs the ``yolo`` extra (Ultralytics, AGPL-3.0): ``pip install 'distill[yolo]'``. The data are synthetic
scenes (Fashion-MNIST items pasted on 160 px canvases, YOLO labels), generated once from the Fashion-MNIST
files (``bash scripts/get_data.sh``); any YOLO dataset works the same way:
``DetectionDataset("path/to/data.yaml", "train", image_size=640)``.

The teacher comes from ``distill train scenes/teacher`` (``runs/scenes-teacher``); without it this script
trains one briefly. The student learns from its own YOLO loss plus three teacher signals: the box
distributions (LD), the class scores (score KD) and the P3 neck map around the objects (FGD).

    python examples/detection_distill.py --quick      # 128 scenes, 2 epochs: a few minutes on a laptop CPU
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distill import Distiller, Term, TrainConfig, Trainer, build_loss
from distill.config.build import load_weights
from distill.data import build_dataset
from distill.models import build_model, count_parameters
from distill.tasks import DetectionTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="runs/scenes-teacher", help="trained teacher run")
    parser.add_argument("--quick", action="store_true", help="128 training scenes, 2 epochs")
    parser.add_argument("--out", default="runs/example-detection")
    args = parser.parse_args()

    size = {"train_images": 128, "val_images": 64} if args.quick else {}
    train = build_dataset("scenes", "train", hyp={"mosaic": 0.0}, **size)
    test = build_dataset("scenes", "test", **size)
    config = TrainConfig(epochs=2 if args.quick else 15, batch_size=16, eval_batch_size=32,
                         optimizer="adamw", lr=0.002, weight_decay=5e-4, warmup_epochs=1.0,
                         grad_clip=10.0, progress=False)  # fmt: skip
    teacher = build_model("yolo:yolo11s.yaml", num_classes=train.num_classes, in_channels=3)
    if Path(args.teacher, "model.safetensors").is_file():
        load_weights(teacher, args.teacher, "teacher")
    else:  # train the teacher first: a distiller without terms is plain training on the YOLO loss
        print(f"no teacher run at {args.teacher}; training the teacher for {config.epochs} epochs")
        Trainer(Distiller(teacher, DetectionTask()), train, test, config).fit()

    student = build_model("yolo:yolov8n.yaml", num_classes=train.num_classes, in_channels=3)
    task = DetectionTask()
    distiller = Distiller(
        student,
        task,
        teacher=teacher,
        terms=[
            Term(
                build_loss("ld"),
                student=["@boxes", "@scores"],
                teacher=["@boxes", "@scores"],
                weight=4.0,
            ),  # fmt: skip
            Term(
                build_loss("score_kd", teacher_weighted=True), student="@scores", teacher="@scores"
            ),
            Term(
                build_loss("fgd", alpha=2e-3, beta=1e-3, gamma=1e-3, lambda_=1e-5),
                student="@p3",
                teacher="@p3",
                projector="conv1x1",
            ),  # fmt: skip
        ],
    )
    summary = Trainer(distiller, train, test, config, run_dir=args.out).fit()
    teacher_metrics = task.evaluate(teacher, test.loader(32))
    print(
        f"teacher {count_parameters(teacher) / 1e6:.1f}M params: mAP50-95 "
        f"{teacher_metrics['map50_95']:.2f}%; student {count_parameters(student) / 1e6:.1f}M params: "
        f"mAP50-95 {summary['last']['map50_95']:.2f}%, mAP50 {summary['last']['map50']:.2f}%"
    )


if __name__ == "__main__":
    main()
