"""Shared fixtures. Built models are cached per session: tests that change a model must
build their own with ``build()`` (or ``copy.deepcopy`` a shared one)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import build

DETECTION_BUILDERS = sorted(torchvision.models.list_models(module=torchvision.models.detection))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    if not torch.cuda.is_available():
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def shared() -> Callable[..., nn.Module]:
    """``shared(name, **kwargs)``: a session-cached model built with no weights. Do not modify it."""
    cache: dict[tuple, nn.Module] = {}

    def get(name: str, **kwargs: object) -> nn.Module:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = build(name, **kwargs)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def maskrcnn(shared: Callable[..., nn.Module]) -> nn.Module:
    """The default Mask R-CNN, shared. Do not modify it."""
    return shared("maskrcnn_resnet50_fpn")
