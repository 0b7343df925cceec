"""The detection task adapter against plain Ultralytics: named outputs, the task loss equals the model's own
loss per image, evaluation scores an oracle 100 and a blind detector 0, and YOLO26's end-to-end head."""

from __future__ import annotations

import pytest
import torch
from det_helpers import squares  # noqa: F401  (fixture)
from torch import nn

pytest.importorskip("ultralytics")

from distill.data.detection import DetectionDataset  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.models.yolo import yolo_model  # noqa: E402
from distill.tasks.detection import DetectionTask, named_outputs, raw_outputs  # noqa: E402


@pytest.fixture(scope="module")
def batch(squares):  # noqa: F811
    data = DetectionDataset(squares, "train", image_size=64, hyp={"mosaic": 0.0})
    return next(iter(data.loader(4)))


def test_named_outputs_shapes_and_inverse(batch):
    model = yolo_model("yolov8n.yaml", 3).train()
    task = DetectionTask()
    out = task.forward(model, task.split(batch).inputs)
    assert set(out) == {"p3", "p4", "p5", "scores", "boxes"}
    assert out["p3"].shape[-2:] == (8, 8) and out["p5"].shape[-2:] == (
        2,
        2,
    )  # strides 8 and 32 on 64 px
    anchors = 8 * 8 + 4 * 4 + 2 * 2
    assert out["scores"].shape == (4, 3, anchors) and out["boxes"].shape == (4, 64, anchors)
    raw = raw_outputs(out)
    assert raw["scores"] is out["scores"] and [f.shape for f in raw["feats"]] == [
        out[k].shape for k in ("p3", "p4", "p5")
    ]


def test_task_loss_is_ultralytics_loss_per_image(batch):
    torch.manual_seed(0)
    model = yolo_model("yolov8n.yaml", 3).train()
    task = DetectionTask()
    task.bind(model)
    split = task.split(batch)
    ours = task.loss(task.forward(model, split.inputs), split)
    reference_batch = {k: v for k, v in batch.items()}
    reference_batch["img"] = batch["img"].float() / 255
    theirs, items = model.loss(reference_batch)  # Ultralytics: (box, cls, dfl) summed x batch size
    assert torch.allclose(ours, theirs.sum() / 4, rtol=1e-5)
    metrics = task.batch_metrics({}, split)
    assert set(metrics) == {"box", "cls", "dfl"}
    assert torch.allclose(torch.stack(list(metrics.values())), torch.stack(list(items.values())))


def test_extras_are_normalised_xyxy_boxes_with_their_images(batch):
    split = DetectionTask().split(batch)
    boxes, index, labels = (split.extras[k] for k in ("boxes", "box_index", "box_labels"))
    assert boxes.shape == (len(index), 4) and len(labels) == len(index)
    assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 1
    assert set(index.tolist()) <= set(range(4)) and labels.max() < 3


class _Fixed(nn.Module):
    """A 'detector' whose decoded output (B, 4 + nc, A) is given: xywh pixels, then class scores."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make
        self.names = {0: "red", 1: "green", 2: "blue"}

    def forward(self, x):
        return self.make(x)


def _oracle(loader):
    """Decoded predictions equal to the ground truth of each batch, in loader order."""
    batches = iter(list(loader))

    def make(x):
        b = next(batches)
        size = x.shape[-1]
        out = torch.zeros(x.shape[0], 4 + 3, 10)
        for j, (i, c, box) in enumerate(zip(b["batch_idx"], b["cls"], b["bboxes"], strict=True)):
            slot = int((b["batch_idx"][:j] == i).sum())
            out[int(i), :4, slot] = box * size
            out[int(i), 4 + int(c), slot] = 1.0
        return out

    return make


def test_evaluation_scores_an_oracle_100_and_a_blind_detector_0(squares):  # noqa: F811
    data = DetectionDataset(squares, "test", image_size=64)
    task = DetectionTask()
    perfect = task.evaluate(_Fixed(_oracle(data.loader(2))), data.loader(2))
    assert perfect["map50_95"] == pytest.approx(100.0, abs=0.5)
    assert perfect["map50"] == pytest.approx(100.0, abs=0.5) and perfect["images"] == len(data)
    blind = task.evaluate(_Fixed(lambda x: torch.zeros(x.shape[0], 7, 10)), data.loader(2))
    assert blind["map50_95"] == 0.0 and blind["recall"] == 0.0


def test_end_to_end_head_names_both_branches_and_trains(batch):
    model = yolo_model("yolo26n.yaml", 3).train()
    task = DetectionTask()
    task.bind(model)
    split = task.split(batch)
    out = task.forward(model, split.inputs)
    assert {"one2one_scores", "one2one_boxes", "scores", "boxes", "p3"} <= set(out)
    assert out["boxes"].shape[1] == 4  # reg_max 1: direct regression, no distributions
    loss = task.loss(out, split)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0


def test_teacher_in_eval_mode_gives_the_same_named_outputs(batch):
    model = yolo_model("yolo11n.yaml", 3).eval()
    task = DetectionTask()
    with torch.no_grad():
        out = task.forward(model, task.split(batch).inputs)
    assert {"p3", "p4", "p5", "scores", "boxes"} == set(out)


def test_bad_batches_and_models_are_one_line_errors(batch):
    task = DetectionTask()
    with pytest.raises(DistillError, match="Ultralytics dicts with img"):
        task.split({"image": torch.zeros(1)})
    with pytest.raises(DistillError, match="yolo:<model yaml or .pt>"):
        task.bind(nn.Linear(2, 2))
    with pytest.raises(DistillError, match="bind it to the student"):
        task.loss(named_outputs({"boxes": 0, "scores": 0, "feats": []}, _head()), task.split(batch))
    with pytest.raises(DistillError, match="conf must be in"):
        DetectionTask(conf=2)


def _head():
    class Head:
        stride = torch.tensor([])

    return Head()


def test_the_loss_is_built_on_the_device_the_student_is_on_when_used():
    """Distiller binds the task while the student is still on the CPU; the trainer moves it afterwards.
    Ultralytics' loss keeps tensors on the device it was built for, so it is built at first use and
    again after the student moves (a first parameter on 'meta' stands in for a GPU here)."""
    model = yolo_model("yolov8n.yaml", 3).train()
    task = DetectionTask()
    built: list[torch.device] = []
    make = model.init_criterion
    model.init_criterion = lambda: built.append(next(model.parameters()).device) or make()
    task.bind(model)
    assert built == []  # nothing is built at bind time
    on_cpu = task.criterion()
    assert task.criterion() is on_cpu and built == [torch.device("cpu")]  # kept while it stays put
    name, first = next(model.named_parameters())  # the parameter whose device Ultralytics reads
    owner, attr = name.rsplit(".", 1)
    setattr(model.get_submodule(owner), attr, nn.Parameter(torch.empty_like(first, device="meta")))
    moved = task.criterion()
    assert built == [torch.device("cpu"), torch.device("meta")]
    assert moved.device.type == "meta" and moved.proj.device.type == "meta"
