"""Registry: registration, lookup, did-you-mean errors, metadata, iteration order."""

import pytest

from distill.errors import DistillError
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
