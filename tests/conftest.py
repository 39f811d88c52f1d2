"""Shared fixtures: small real models and data, nothing mocked."""

from __future__ import annotations

import pytest
import torch

from sparsenet.models import LeNet, SparseNet


@pytest.fixture(autouse=True, scope="session")
def engine_cache(tmp_path_factory):
    """Compiled engines go to a cache of the test session's own (stages run by dvc inherit it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SPARSENET_CACHE", str(tmp_path_factory.mktemp("engine-cache")))
    yield
    mp.undo()


@pytest.fixture
def dense() -> LeNet:
    torch.manual_seed(0)
    return LeNet(num_classes=10, image_size=32)


@pytest.fixture
def sparse(dense: LeNet) -> SparseNet:
    return SparseNet.from_dense(dense)


def pytest_collection_modifyitems(items):
    """The sweep tests first: the longest file, so one worker starts it while the other takes
    the rest (``-n 2 --dist loadfile`` hands out files in this order)."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_sweep.py"))
