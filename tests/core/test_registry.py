"""Registry: registration, lookup, did-you-mean errors, metadata, iteration order."""

import pytest

from distill.errors import ConfigError, DistillError, first_line
from distill.registry import Registry, UnknownNameError


@pytest.fixture
def reg():
    r = Registry("widget")

    @r.register("resnet18", paper="He et al.", year=2016)
    class ResNet18:
        pass

    r.add("mobilenet", object(), year=2017)
    r.add("alpha", "obj-alpha")
    return r


def test_register_returns_object_and_get_finds_it():
    r = Registry("loss")

    class KD:
        pass

    decorated = r.register("kd")(KD)
    assert decorated is KD  # the decorator must not replace the class
    assert r.get("kd") is KD
    assert "kd" in r
    assert "dkd" not in r
    assert len(r) == 1


def test_add_then_get_returns_same_object(reg):
    assert reg.get("alpha") == "obj-alpha"


def test_duplicate_name_raises_and_keeps_first(reg):
    original = reg.get("alpha")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", "other")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(object)
    assert reg.get("alpha") is original


@pytest.mark.parametrize("bad", ["", None, 3])
def test_bad_names_rejected(bad):
    with pytest.raises(ValueError):
        Registry("x").add(bad, object())


def test_unknown_name_is_distill_error_with_suggestion_and_known_list(reg):
    with pytest.raises(UnknownNameError) as info:
        reg.get("resnet19")
    err = info.value
    assert isinstance(err, DistillError)
    assert isinstance(err, KeyError)  # still catchable as a plain lookup failure
    msg = str(err)
    assert "'resnet19'" in msg
    assert "Did you mean 'resnet18'" in msg
    # known names are listed, sorted
    assert "Known widgets: alpha, mobilenet, resnet18" in msg
    # str() must not be wrapped in quotes the way KeyError does
    assert not msg.startswith(("'", '"'))


def test_unknown_name_without_close_match_has_no_suggestion(reg):
    with pytest.raises(UnknownNameError) as info:
        reg.get("zzzzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "alpha" in str(info.value)


def test_unknown_name_in_empty_registry():
    with pytest.raises(UnknownNameError, match=r"\(none\)"):
        Registry("task").get("classification")


def test_meta(reg):
    assert reg.meta("resnet18") == {"paper": "He et al.", "year": 2016}
    assert reg.meta("alpha") == {}
    with pytest.raises(UnknownNameError):
        reg.meta("nope")


def test_meta_is_a_copy_of_the_kwargs():
    r = Registry("x")
    meta = {"year": 1}
    r.add("a", 1, **meta)
    meta["year"] = 2
    assert r.meta("a")["year"] == 1


def test_iteration_and_names_sorted(reg):
    assert list(reg) == ["alpha", "mobilenet", "resnet18"]
    assert reg.names() == sorted(reg.names())
    assert "resnet18" in repr(reg)


def test_library_registries_populated():
    from distill.losses import LOSSES
    from distill.projectors import PROJECTORS
    from distill.schedules import SCHEDULES

    assert {"kd", "fitnet"} <= set(LOSSES)
    assert LOSSES.meta("kd")["year"] == 2015
    assert {"conv1x1", "linear", "identity"} <= set(PROJECTORS)
    assert "linear_warmup" in SCHEDULES


def test_create_checks_options_against_the_signature():
    r = Registry("widget")

    @r.register("box")
    class Box:
        def __init__(self, width: int = 1, height: int = 1, split: str = "train") -> None:
            self.size = (width, height, split)

    assert r.create("box", {"width": 3}, split="test").size == (3, 1, "test")
    with pytest.raises(ConfigError) as info:
        r.create("box", {"widht": 3})
    assert str(info.value) == (
        "widget 'box' has no option 'widht'. Did you mean 'width', 'height'? "
        "Accepted options: width, height, split"
    )
    # an argument the caller supplies itself is not the user's option to give
    with pytest.raises(ConfigError, match="no option 'split'.*Accepted options: width, height$"):
        r.create("box", {"split": "test"}, split="train")
    with pytest.raises(UnknownNameError, match="'bx'"):
        r.create("bx")


def test_every_build_function_goes_through_create(monkeypatch):
    """build_loss / build_task / build_dataset / build_model all check options in Registry.create."""
    from distill.data import build_dataset
    from distill.losses import build_loss
    from distill.models import build_model
    from distill.tasks import build_task

    calls = []
    original = Registry.create

    def spy(self, name, /, options=None, **given):
        calls.append(self.kind)
        return original(self, name, options, **given)

    monkeypatch.setattr(Registry, "create", spy)
    for build, name in [(build_loss, "kd"), (build_task, "classification"), (build_model, "mlp")]:
        with pytest.raises(ConfigError, match="has no option 'bogus'"):
            build(name, bogus=1)
    with pytest.raises(ConfigError, match="dataset 'tensors' has no option 'bogus'"):
        build_dataset("tensors", bogus=1)
    assert calls == ["loss", "task", "model", "dataset"]


def test_first_line_quotes_an_error_on_one_line():
    assert first_line(RuntimeError("\n  shape mismatch  \nmore detail")) == "shape mismatch"
    assert first_line(ValueError("x" * 500), limit=10) == "x" * 10
    assert first_line(KeyError()) == "KeyError"
