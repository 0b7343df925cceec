"""Shared fixtures (the factories they and the tests share are in ``tests/helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test (tiny models gain nothing from more on a shared 2-core box);
    the previous count is restored after. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """``write_recipe(data_or_text, name="r.yaml") -> Path`` in ``tmp_path``."""

    def write(content: dict | str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        )
        return path

    return write
