"""Recipes: shipped recipes validate, ``defaults:`` includes, ``key=value`` overrides and the one-line
error messages a user sees for every kind of bad recipe."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import yaml

from distill import api
from distill.config.load import apply_override, deep_merge, load_recipe, parse_override
from distill.config.schema import Recipe, ScheduleSpec
from distill.errors import ConfigError, DistillError
from helpers import recipe_id, shipped_recipes


def _shipped_params():
    params = []
    for path in shipped_recipes():
        params.append(pytest.param(path, id=recipe_id(path)))
    return params


def assert_one_line_config_error(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    err = excinfo.value
    assert isinstance(err, ConfigError) and isinstance(err, DistillError)
    message = str(err)
    assert message and "\n" not in message, f"message is not one line: {message!r}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------- shipped recipes
def test_recipes_are_found():
    names = [recipe_id(p) for p in shipped_recipes()]
    assert {
        "fashion_mnist/teacher",
        "fashion_mnist/scratch",
        "fashion_mnist/kd",
        "fashion_mnist/fitnet",
    } <= set(names)


@pytest.mark.parametrize("path", _shipped_params())
def test_shipped_recipe_validates(path: Path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name and recipe.student.name
    # shipped recipes are also reachable by name
    assert load_recipe(recipe_id(path)) == recipe


@pytest.mark.parametrize("path", _shipped_params())
def test_shipped_recipe_resolve_round_trip(path: Path):
    recipe = load_recipe(path)
    text = api.resolve(path)
    data = yaml.safe_load(text)
    assert isinstance(data, dict) and "defaults" not in data
    assert Recipe.model_validate(data) == recipe
    # the resolved YAML is itself a loadable recipe file, and resolving it again is a fixed point
    assert api.resolve(recipe_id(path)) == text


def test_resolved_recipe_file_loads_again(tmp_path: Path):
    text = api.resolve("fashion_mnist/fitnet", ["train.epochs=2"])
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    again = load_recipe(path)
    assert again == load_recipe("fashion_mnist/fitnet", ["train.epochs=2"])
    assert api.resolve(path) == text


def test_shipped_kd_recipe_contents():
    """kd.yaml = scratch.yaml (same student, same schedule) + the teacher that teacher.yaml trains + a kd term."""
    kd, scratch, teacher = (load_recipe(f"fashion_mnist/{n}") for n in ("kd", "scratch", "teacher"))
    assert kd.name == "fashion_mnist-kd"
    assert kd.teacher is not None
    assert (kd.teacher.name, kd.teacher.options) == (teacher.student.name, teacher.student.options)
    assert kd.student == scratch.student
    assert kd.train == scratch.train and kd.data == scratch.data  # only the distillation differs
    assert kd.train.batch_size == 256 and kd.train.schedule == "cosine"  # from _base.yaml
    assert [t.loss for t in kd.distill.terms] == ["kd"]
    assert kd.distill.terms[0].options == {"temperature": 2.0}
    # fitnet replaces kd's terms list wholesale (lists are not merged)
    fitnet = load_recipe("fashion_mnist/fitnet")
    assert [t.loss for t in fitnet.distill.terms] == ["kd", "fitnet"]
    assert (
        fitnet.distill.task_weight == kd.distill.task_weight
    )  # inherited from kd.yaml through the deep merge


# ----------------------------------------------------------------------------- defaults: includes
def test_deep_merge_unit():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "l": [1, 2, 3], "s": 1}
    update = {"a": {"y": {"q": 20}, "z": 3}, "l": [9], "s": {"now": "dict"}}
    merged = deep_merge(base, update)
    assert merged == {"a": {"x": 1, "y": {"p": 1, "q": 20}, "z": 3}, "l": [9], "s": {"now": "dict"}}
    assert base == {
        "a": {"x": 1, "y": {"p": 1, "q": 2}},
        "l": [1, 2, 3],
        "s": 1,
    }  # inputs untouched


def test_defaults_deep_merge_later_wins_lists_replaced(write_recipe):
    write_recipe(
        {
            "name": "base",
            "student": {"name": "cnn", "options": {"channels": [32, 64, 128], "dropout": 0.1}},
            "data": {"augment": {"crop_padding": 2, "flip": True}, "train_subset": 100},
            "train": {"lr": 0.1, "epochs": 5, "batch_size": 32},
        },
        "inc/base.yaml",
    )
    write_recipe(
        {"train": {"lr": 0.2, "momentum": 0.5}, "data": {"augment": {"flip": False}}},
        "inc/first.yaml",
    )
    write_recipe({"train": {"lr": 0.3}, "description": "from second"}, "inc/second.yaml")
    top = write_recipe(
        {
            "defaults": ["inc/base.yaml", "inc/first.yaml", "inc/second.yaml"],
            "name": "top",
            "student": {"options": {"channels": [4, 8]}},
            "train": {"epochs": 2},
        },
        "top.yaml",
    )
    r = load_recipe(top)
    assert r.name == "top"
    assert r.description == "from second"
    assert r.train.lr == 0.3  # later include wins over earlier
    assert r.train.momentum == 0.5  # only first.yaml sets it
    assert r.train.epochs == 2  # the including file wins over its includes
    assert r.train.batch_size == 32  # from base, untouched by later files
    assert r.data.augment.crop_padding == 2 and r.data.augment.flip is False  # nested dicts merged
    assert r.data.train_subset == 100
    assert r.student.name == "cnn"
    assert r.student.options == {
        "channels": [4, 8],
        "dropout": 0.1,
    }  # list replaced, not appended/merged


def test_defaults_nested_chain_and_string_form(write_recipe):
    write_recipe({"name": "a", "student": {"name": "cnn"}, "train": {"lr": 0.5}}, "a.yaml")
    write_recipe({"defaults": "a.yaml", "train": {"epochs": 3}}, "b.yaml")
    c = write_recipe({"defaults": ["b.yaml"], "name": "c"}, "c.yaml")
    r = load_recipe(c)
    assert (r.name, r.train.lr, r.train.epochs) == ("c", 0.5, 3)


def test_defaults_paths_are_relative_to_the_including_file(write_recipe, tmp_path, monkeypatch):
    write_recipe({"name": "deep", "student": {"name": "mlp"}}, "x/y/base.yaml")
    top = write_recipe({"defaults": ["y/base.yaml"]}, "x/top.yaml")
    monkeypatch.chdir(tmp_path.parent)  # not where the files are
    assert load_recipe(top).student.name == "mlp"


def test_defaults_diamond_is_not_a_cycle(write_recipe):
    write_recipe({"name": "d", "student": {"name": "cnn"}, "train": {"lr": 0.1}}, "base.yaml")
    write_recipe({"defaults": ["base.yaml"], "train": {"epochs": 2}}, "left.yaml")
    write_recipe({"defaults": ["base.yaml"], "train": {"batch_size": 16}}, "right.yaml")
    top = write_recipe({"defaults": ["left.yaml", "right.yaml"]}, "top.yaml")
    r = load_recipe(top)
    assert (r.train.lr, r.train.epochs, r.train.batch_size) == (0.1, 2, 16)


def test_defaults_cycle_raises(write_recipe):
    write_recipe({"defaults": ["b.yaml"], "name": "a", "student": {"name": "cnn"}}, "a.yaml")
    write_recipe({"defaults": ["a.yaml"]}, "b.yaml")
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(write_recipe({"defaults": ["a.yaml"]}, "top.yaml"))
    assert_one_line_config_error(excinfo, "cycle", "a.yaml", "b.yaml")


def test_defaults_self_include_raises(write_recipe):
    path = write_recipe(
        {"defaults": ["self.yaml"], "name": "s", "student": {"name": "cnn"}}, "self.yaml"
    )
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path)
    assert_one_line_config_error(excinfo, "cycle", "self.yaml")


def test_defaults_missing_include_raises(write_recipe):
    path = write_recipe({"defaults": ["nope.yaml"], "name": "m", "student": {"name": "cnn"}})
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path)
    assert_one_line_config_error(excinfo, "'nope.yaml'", "not found")


@pytest.mark.parametrize("bad", [3, {"a": "b.yaml"}, ["ok.yaml", 5]])
def test_defaults_wrong_type_raises(write_recipe, bad):
    path = write_recipe({"defaults": bad, "name": "m", "student": {"name": "cnn"}})
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path)
    assert_one_line_config_error(excinfo, "'defaults' must be a list")


# ----------------------------------------------------------------------------- overrides
def test_override_float_int_bool_and_types():
    r = load_recipe(
        "fashion_mnist/kd", ["train.lr=0.3", "train.epochs=3", "data.augment.flip=true"]
    )
    assert r.train.lr == 0.3 and isinstance(r.train.lr, float)
    assert r.train.epochs == 3 and type(r.train.epochs) is int
    assert r.data.augment.flip is True
    base = load_recipe("fashion_mnist/kd")
    assert (
        r.train.weight_decay == base.train.weight_decay == 5e-4
    )  # siblings of an overridden key survive
    assert r.train.warmup_epochs == base.train.warmup_epochs > 0


def test_override_list_index():
    r = load_recipe(
        "fashion_mnist/fitnet",
        ["distill.terms.0.options.temperature=2", "distill.terms.1.weight=3.5"],
    )
    assert r.distill.terms[0].options == {"temperature": 2}
    assert r.distill.terms[1].weight == 3.5
    assert (
        r.distill.terms[1].loss == "fitnet" and r.distill.terms[1].projector == "conv1x1"
    )  # rest untouched


def test_override_yaml_values_lists_and_new_keys():
    r = load_recipe(
        "fashion_mnist/scratch",
        [
            "student.options.channels=[4, 8]",
            "data.train_subset=10",
            "train.grad_clip=1.5",
            "output=/tmp/x y",
        ],
    )
    assert r.student.options == {"channels": [4, 8]}
    assert r.data.train_subset == 10 and r.train.grad_clip == 1.5
    assert r.output == "/tmp/x y"


def test_override_null_teacher():
    r = load_recipe("fashion_mnist/kd", ["teacher=null", "distill.terms=[]"])
    assert r.teacher is None and r.distill.terms == []
    r = load_recipe("fashion_mnist/kd", ["teacher.weights=null"])
    assert r.teacher is not None and r.teacher.weights is None
    # removing the teacher alone leaves terms without a teacher: a clear error
    with pytest.raises(ConfigError) as excinfo:
        load_recipe("fashion_mnist/kd", ["teacher=null"])
    assert_one_line_config_error(excinfo, "teacher")


def test_override_value_with_equals_sign():
    assert parse_override("description=a=b==c") == (["description"], "a=b==c")
    r = load_recipe("fashion_mnist/scratch", ["description=lr=0.1 run"])
    assert r.description == "lr=0.1 run"


def test_override_empty_value_is_empty_string_and_bad_yaml_is_text():
    assert parse_override("description=") == (["description"], "")
    assert parse_override("description=[unclosed") == (["description"], "[unclosed")


def test_apply_override_creates_missing_mappings_and_does_not_touch_others():
    data = {"train": {"lr": 0.1}}
    assert apply_override(data, "data.augment.flip=true") == {
        "train": {"lr": 0.1},
        "data": {"augment": {"flip": True}},
    }


def test_override_exponent_float_is_a_float():
    r = load_recipe("fashion_mnist/kd", ["distill.terms.0.options.temperature=5e-1"])
    assert r.distill.terms[0].options["temperature"] == 0.5


@pytest.mark.parametrize(
    "override, needles",
    [
        ("trainlr", ["'trainlr'", "key=value"]),
        ("=3", ["'=3'", "empty key"]),
        ("a..b=1", ["'a..b=1'", "empty key"]),
        ("train.=1", ["'train.=1'", "empty key"]),
        ("distill.terms.5.options.temperature=2", ["distill.terms.5", "out of range"]),
        ("distill.terms.3=1", ["distill.terms.3", "out of range"]),
        ("train.lr.x=1", ["train.lr.x", "float"]),
        ("train.lrr=1", ["train.lrr", "Did you mean 'lr'?"]),
        ("train.epochs=zero", ["train.epochs", "'zero'"]),
    ],
)
def test_bad_overrides(override, needles):
    with pytest.raises(ConfigError) as excinfo:
        load_recipe("fashion_mnist/kd", [override])
    assert_one_line_config_error(excinfo, *needles)


# ----------------------------------------------------------------------------- bad recipe catalogue
OK = "name: ok\nstudent: {name: cnn}\n"
WITH_TEACHER = "name: ok\nstudent: {name: cnn}\nteacher: {name: cnn}\n"

BAD_RECIPES = {
    "yaml-syntax": (
        "name: x\nstudent: {name: cnn\ntrain:\n  lr: 0.1\n",
        ["line 3", "YAML syntax error"],
    ),
    "yaml-tab-indent": ("name: x\nstudent:\n\tname: cnn\n", ["line 3", "YAML syntax error"]),
    "top-level-list": ("- name: x\n- student: cnn\n", ["mapping", "list"]),
    "top-level-scalar": ("just a string\n", ["mapping", "str"]),
    "unknown-top-key": (OK + "trian: {lr: 0.1}\n", ["trian", "Did you mean 'train'?"]),
    "unknown-nested-key": (OK + "train: {lrr: 0.1}\n", ["train.lrr", "Did you mean 'lr'?"]),
    "unknown-data-key": (OK + "data: {augment: {flipp: true}}\n", ["data.augment.flipp", "'flip'"]),
    "wrong-type": (OK + "train: {epochs: many}\n", ["train.epochs", "'many'", "integer"]),
    "wrong-type-bool": (OK + "train: {nesterov: maybe}\n", ["train.nesterov", "'maybe'"]),
    "zero-epochs": (OK + "train: {epochs: 0}\n", ["train.epochs", "greater than 0", "got 0"]),
    "negative-batch": (
        OK + "train: {batch_size: -1}\n",
        ["train.batch_size", "greater than 0", "-1"],
    ),
    "zero-lr": (OK + "train: {lr: 0}\n", ["train.lr", "greater than 0"]),
    "zero-subset": (OK + "data: {train_subset: 0}\n", ["data.train_subset", "greater than 0"]),
    "bad-optimizer": (OK + "train: {optimizer: lion}\n", ["train.optimizer", "'lion'", "adamw"]),
    "unknown-loss": (
        WITH_TEACHER + "distill: {terms: [{loss: kdd}]}\n",
        ["'kdd'", "Did you mean 'kd'"],
    ),
    "unknown-loss-option": (
        WITH_TEACHER + "distill: {terms: [{loss: kd, options: {temprature: 4}}]}\n",
        ["'temprature'", "Did you mean 'temperature'?"],
    ),
    "unknown-term-key": (
        WITH_TEACHER + "distill: {terms: [{loss: kd, wieght: 2}]}\n",
        ["wieght", "'weight'"],
    ),
    "unknown-model": ("name: x\nstudent: {name: cnnn}\n", ["'cnnn'", "Did you mean 'cnn'"]),
    "unknown-teacher-model": (OK + "teacher: {name: resnet9}\n", ["'resnet9'", "resnet8"]),
    "unknown-model-option": (
        "name: x\nstudent: {name: cnn, options: {chanels: [4]}}\n",
        ["student", "'chanels'", "Did you mean 'channels'?"],
    ),
    "unknown-dataset": (
        OK + "data: {name: fashion_mnis}\n",
        ["'fashion_mnis'", "Did you mean 'fashion_mnist'?"],
    ),
    "unknown-dataset-option": (
        OK + "data: {name: fashion_mnist, options: {downlod: false}}\n",
        ["data", "'downlod'", "Did you mean 'download'?"],
    ),
    "unknown-task": (OK + "task: classifcation\n", ["'classifcation'", "'classification'"]),
    "unknown-task-option": (
        OK + "task_options: {label_smothing: 0.1}\n",
        ["'label_smothing'", "'label_smoothing'"],
    ),
    "unknown-projector": (
        WITH_TEACHER
        + "distill: {terms: [{loss: fitnet, student: features.1, teacher: features.1, projector: conv1x2}]}\n",
        ["'conv1x2'", "'conv1x1'"],
    ),
    "unknown-schedule": (
        WITH_TEACHER
        + "distill: {terms: [{loss: kd, weight: {schedule: linear_warmu, value: 2}}]}\n",
        ["'linear_warmu'", "Did you mean 'linear_warmup'?"],
    ),
    "terms-without-teacher": (
        OK + "distill: {terms: [{loss: kd}]}\n",
        ["teacher", "distill.terms"],
    ),
    "bad-name": ('name: "a b"\nstudent: {name: cnn}\n', ["name", "'a b'"]),
    "missing-student": ("name: x\n", ["student", "required"]),
    "plugin-not-importable": (
        OK + "plugins: [no_such_distill_plugin_xyz]\n",
        ["plugin", "'no_such_distill_plugin_xyz'", "cannot be imported"],
    ),
    "plugins-not-a-list": (OK + "plugins: {a: b}\n", ["'plugins' must be a list"]),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES), ids=str)
def test_bad_recipe_raises_one_line_config_error(case, write_recipe):
    text, needles = BAD_RECIPES[case]
    path = write_recipe(text, f"{case}.yaml")
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path)
    message = assert_one_line_config_error(excinfo, *needles)
    assert f"{case}.yaml" in message  # names the file at fault
    assert "Traceback" not in message


def test_bad_schedule_option_names_the_option(write_recipe):
    path = write_recipe(
        WITH_TEACHER
        + "distill: {terms: [{loss: kd, weight: {schedule: linear_warmup, valu: 2}}]}\n"
    )
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path)
    assert_one_line_config_error(excinfo, "'valu'", "Did you mean 'value'?")


def test_bad_schedule_option_is_rejected(write_recipe):
    """The error says where: the term's weight."""
    path = write_recipe(
        WITH_TEACHER
        + "distill: {terms: [{loss: kd, weight: {schedule: linear_warmup, valu: 2}}]}\n"
    )
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path)
    assert_one_line_config_error(excinfo, "distill.terms.0.weight")


def test_unknown_loss_message_lists_known_losses(write_recipe):
    path = write_recipe(WITH_TEACHER + "distill: {terms: [{loss: kdd}]}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path)
    from distill.losses import LOSSES

    assert_one_line_config_error(excinfo, "Known losses: " + ", ".join(sorted(LOSSES.names())))


def test_valid_schedule_weight_validates(write_recipe):
    path = write_recipe(
        WITH_TEACHER
        + "distill: {terms: [{loss: kd, weight: {schedule: linear_warmup, value: 2, warmup_epochs: 3}}]}\n"
    )
    weight = load_recipe(path).distill.terms[0].weight
    assert isinstance(weight, ScheduleSpec)
    assert weight.schedule == "linear_warmup" and weight.model_extra == {
        "value": 2,
        "warmup_epochs": 3,
    }


def test_empty_recipe_file_is_a_config_error(write_recipe):
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(write_recipe(""))
    assert_one_line_config_error(excinfo, "name", "required")


def test_missing_recipe_suggests_shipped_names():
    with pytest.raises(ConfigError) as excinfo:
        load_recipe("fashion_mnist/kdd")
    assert_one_line_config_error(excinfo, "'fashion_mnist/kdd'", "not found", "'fashion_mnist/kd'")


# ----------------------------------------------------------------------------- plugins
@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A module in tmp_path registering a loss under a unique name; the registry is restored afterwards."""
    from distill.losses import LOSSES

    monkeypatch.setattr(LOSSES, "_items", dict(LOSSES._items))
    monkeypatch.setattr(LOSSES, "_meta", dict(LOSSES._meta))
    suffix = uuid.uuid4().hex[:10]
    module, loss = f"distill_test_plugin_{suffix}", f"test_l1_{suffix}"
    (tmp_path / f"{module}.py").write_text(
        "import torch\n"
        "from distill.losses import LOSSES\n\n"
        f"@LOSSES.register({loss!r}, paper='test', year=2024, kind='logit', consumes='logits')\n"
        "class L1(torch.nn.Module):\n"
        "    extra_inputs = ()\n\n"
        "    def __init__(self, scale: float = 1.0):\n"
        "        super().__init__()\n"
        "        self.scale = scale\n\n"
        "    def forward(self, student, teacher):\n"
        "        return self.scale * (student - teacher).abs().mean()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module, loss
    sys.modules.pop(module, None)


def test_plugin_registers_a_loss_a_recipe_can_use(plugin_module, write_recipe):
    module, loss = plugin_module
    from distill.losses import LOSSES

    assert loss not in LOSSES
    path = write_recipe(
        WITH_TEACHER
        + f"plugins: [{module}]\ndistill: {{terms: [{{loss: {loss}, options: {{scale: 2.0}}}}]}}\n"
    )
    recipe = load_recipe(path)
    assert recipe.plugins == [module]
    assert recipe.distill.terms[0].loss == loss and recipe.distill.terms[0].options == {
        "scale": 2.0
    }
    assert loss in LOSSES
    # the plugin's loss options are checked like built-in ones
    bad = write_recipe(
        WITH_TEACHER
        + f"plugins: [{module}]\ndistill: {{terms: [{{loss: {loss}, options: {{scal: 2}}}}]}}\n",
        "bad.yaml",
    )
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(bad)
    assert_one_line_config_error(excinfo, "'scal'", "Did you mean 'scale'?")


def test_loss_from_a_plugin_is_unknown_without_the_plugin(plugin_module, write_recipe):
    _, loss = plugin_module
    path = write_recipe(WITH_TEACHER + f"distill: {{terms: [{{loss: {loss}}}]}}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path)
    assert_one_line_config_error(excinfo, f"unknown loss '{loss}'")


def test_plugin_with_broken_import_inside_is_a_config_error(tmp_path, monkeypatch, write_recipe):
    module = f"distill_test_broken_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text("import no_such_dependency_of_the_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_recipe(OK + f"plugins: [{module}]\n")
    with pytest.raises(ConfigError) as excinfo:
        load_recipe(path)
    assert_one_line_config_error(excinfo, repr(module), "no_such_dependency_of_the_plugin")
    sys.modules.pop(module, None)
