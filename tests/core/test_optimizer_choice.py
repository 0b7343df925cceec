"""Choosing the optimizer: a factory or parameter groups from the Python API, named optimizers and
``param_groups`` from recipes; the schedule scales each group's own rate, and resume stays bit-exact."""

import io
import json

import pytest
import torch
from pydantic import ValidationError
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from distill.distiller import Distiller, Term
from distill.errors import DistillError
from distill.losses import KDLoss
from distill.tasks import ClassificationTask
from distill.train import TrainConfig, Trainer
from distill.train.callbacks import Callback
from distill.train.checkpoint import flatten_state, optimizer_state_from_json, unflatten_state
from distill.train.optim import build_optimizer, lr_at

PIXELS = 16


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def synthetic(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def distiller():
    torch.manual_seed(0)
    student = nn.Sequential(
        nn.Flatten(), nn.Linear(PIXELS, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2)
    )
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, 2))
    return Distiller(
        student, ClassificationTask(), teacher=teacher, terms=[Term(KDLoss(2.0))], task_weight=0.5
    )


def config(**overrides):
    base = dict(
        epochs=3, batch_size=16, lr=0.1, progress=False, device="cpu", log_every=2, seed=0,
        deterministic=True, checkpoint_every=1, warmup_epochs=0.5,
    )  # fmt: skip
    return TrainConfig(**(base | overrides))


def radam_two_groups(named):
    """A pretrained 'backbone' (the first layer) at a tenth of the head's rate."""
    named = list(named)
    backbone = [p for n, p in named if n.startswith("student.1.")]
    rest = [p for n, p in named if not n.startswith("student.1.")]
    return torch.optim.RAdam(
        [{"params": backbone, "lr": 1e-3}, {"params": rest, "lr": 1e-2}], weight_decay=1e-4
    )


class GroupRates(Callback):
    def __init__(self):
        self.rates = []

    def on_step_end(self, trainer, step, metrics):
        self.rates.append([g["lr"] for g in trainer.optimizer.param_groups])


def train(run_dir, resume=False, stop_after=None, optimizer=radam_two_groups, callbacks=(), **cfg):
    d = distiller()
    trainer = Trainer(
        d, synthetic(64, 0), synthetic(32, 1), config(**cfg), run_dir=run_dir,
        console=Console(file=io.StringIO()), optimizer=optimizer, callbacks=list(callbacks),
    )  # fmt: skip
    summary = trainer.fit(resume=resume, stop_after=stop_after)
    return d, trainer, summary


def same_weights(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_radam_factory_groups_keep_their_ratio_through_warmup_and_cosine(tmp_path):
    rates = GroupRates()
    _, trainer, summary = train(tmp_path / "a", callbacks=[rates])
    assert isinstance(trainer.optimizer, torch.optim.RAdam)
    assert summary["steps"] == 12 and len(rates.rates) == 12
    cfg = trainer.config
    for step, (backbone, head) in enumerate(rates.rates):
        shape = lr_at(step, 12, 2, cfg, 4) / cfg.lr  # warm-up over 2 steps, then cosine
        assert backbone == pytest.approx(1e-3 * shape, rel=1e-12)
        assert head == pytest.approx(1e-2 * shape, rel=1e-12)
    heads = [h for _, h in rates.rates]
    assert heads[0] < heads[1] and heads[1] > heads[-1]  # rises in warm-up, then falls
    # the logged rate is the first group's
    logged = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train_lrs = {e["step"]: e["lr"] for e in logged if e["event"] == "train"}
    assert train_lrs
    for step, lr in train_lrs.items():
        assert lr == pytest.approx(rates.rates[step - 1][0], rel=1e-12)


def test_radam_factory_resume_is_bit_exact(tmp_path):
    full, _, _ = train(tmp_path / "a")
    train(tmp_path / "b", stop_after=6)
    resumed, trainer, summary = train(tmp_path / "b", resume=True)
    assert summary["steps"] == 12
    assert isinstance(trainer.optimizer, torch.optim.RAdam)
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == [1e-3, 1e-2]
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # a tuple, as saved
    assert same_weights(resumed.student, full.student)
    other, _, _ = train(tmp_path / "c", seed=1)  # sanity: the comparison can fail
    assert not same_weights(other.student, full.student)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.RAdam(p, lr=1e-2, decoupled_weight_decay=True),
        lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99)),
        lambda p: torch.optim.Rprop(p, lr=1e-2),
    ],
    ids=["radam", "adam", "rprop"],
)
def test_optimizer_state_round_trips_through_checkpoint_json(make):
    """Tensors via safetensors names, the rest via JSON: group settings come back as they were
    (tuples included), so a resumed optimizer equals the saved one."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))

    def groups():
        return [
            {"params": list(model[0].parameters()), "lr": 1e-2},
            {"params": list(model[1].parameters()), "lr": 1e-3, "initial_lr": 1e-3},
        ]

    opt = make(groups())
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    tensors = {}
    saved = json.loads(json.dumps(flatten_state(opt.state_dict(), "optim", tensors)))
    fresh = make(groups())
    fresh.load_state_dict(optimizer_state_from_json(unflatten_state(saved, tensors)))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for key, value in a["state"][i].items():
            assert torch.equal(value, b["state"][i][key])


def test_param_groups_by_prefix_scale_from_the_recipe_setting():
    d = distiller()
    cfg = config(
        optimizer="radam",
        param_groups=[{"prefix": "student.1", "lr_scale": 0.1, "weight_decay": 0.0}],
    )
    opt = build_optimizer(d.trainable().named_parameters(), cfg)
    assert isinstance(opt, torch.optim.RAdam)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    first, head = d.student[1], d.student[4]
    assert by_param[id(first.weight)]["initial_lr"] == pytest.approx(0.01)
    assert by_param[id(first.weight)]["weight_decay"] == 0.0
    assert by_param[id(head.weight)]["initial_lr"] == 0.1
    assert by_param[id(head.weight)]["weight_decay"] == cfg.weight_decay
    assert by_param[id(head.bias)]["weight_decay"] == 0.0  # biases: never decayed


def test_api_param_groups_take_prefixes_or_parameters_longest_prefix_wins():
    d = distiller()
    head = d.student[4]
    spec = [
        {"params": "student", "lr": 0.5},
        {"params": "student.1", "lr": 0.01},
        {"params": [head.weight], "lr": 0.2},
    ]
    opt = build_optimizer(d.trainable().named_parameters(), config(optimizer="adam"), spec)
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert by_param[id(d.student[1].weight)] == 0.01
    assert by_param[id(head.bias)] == 0.5
    assert by_param[id(head.weight)] == 0.2
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(d.trainable().parameters()))


@pytest.mark.parametrize(
    "name,cls",
    [
        ("sgd", torch.optim.SGD),
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("nadam", torch.optim.NAdam),
        ("radam", torch.optim.RAdam),
        ("adamax", torch.optim.Adamax),
        ("rmsprop", torch.optim.RMSprop),
        ("adagrad", torch.optim.Adagrad),
    ],
)
def test_recipe_names_the_common_optimizers(name, cls):
    cfg = config(optimizer=name, **({"eps": 1e-6} if name != "sgd" else {}))
    opt = build_optimizer(distiller().trainable().named_parameters(), cfg)
    assert type(opt) is cls
    assert all(g.get("eps", 1e-6) == 1e-6 for g in opt.param_groups)


def test_adam_family_takes_beta2():
    opt = build_optimizer(
        distiller().trainable().named_parameters(),
        config(optimizer="radam", momentum=0.8, beta2=0.99),
    )
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)


@pytest.mark.parametrize(
    "settings,words",
    [
        (dict(optimizer="adamw", nesterov=False), "nesterov=False does not apply"),
        (dict(optimizer="sgd", beta2=0.99), "beta2=0.99 does not apply"),
        (dict(optimizer="sgd", eps=1e-6), "eps=1e-06 does not apply"),
        (dict(optimizer="adagrad", momentum=0.5), "momentum=0.5 does not apply"),
        (dict(optimizer="lion"), "optimizer"),
        (dict(param_groups=[{"prefix": "student", "lr": 0.1}]), "lr"),
        (dict(param_groups=[{"prefix": "a"}, {"prefix": "a"}]), "prefix 'a' twice"),
        (dict(param_groups=[{"prefix": "a", "lr_scale": 0}]), "lr_scale"),
    ],
)
def test_bad_optimizer_settings_are_refused(settings, words):
    with pytest.raises(ValidationError, match=words):
        TrainConfig(**settings)


def test_unknown_prefix_names_close_modules():
    cfg = config(param_groups=[{"prefix": "student.l"}])
    with pytest.raises(DistillError, match=r"no trainable parameter is under 'student.l'"):
        build_optimizer(distiller().trainable().named_parameters(), cfg)


def test_factory_must_return_an_optimizer_and_groups_come_from_one_place(tmp_path):
    with pytest.raises(DistillError, match="returned list, not a torch.optim.Optimizer"):
        build_optimizer(distiller().trainable().named_parameters(), config(), lambda named: [])
    built = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(DistillError, match="pass a function that builds it"):
        build_optimizer(distiller().trainable().named_parameters(), config(), built)
    with pytest.raises(DistillError, match="not both"):
        Trainer(
            distiller(), synthetic(8, 0), config=config(param_groups=[{"prefix": "student"}]),
            optimizer=radam_two_groups, console=Console(file=io.StringIO()),
        )  # fmt: skip
