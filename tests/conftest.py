"""Shared fixtures: small real models and data, nothing mocked."""

from __future__ import annotations

import pytest
import torch

from sparsenet.models import LeNet, SparseNet


@pytest.fixture
def dense() -> LeNet:
    torch.manual_seed(0)
    return LeNet(num_classes=10, image_size=32)


@pytest.fixture
def sparse(dense: LeNet) -> SparseNet:
    return SparseNet.from_dense(dense)
