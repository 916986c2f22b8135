"""Shared fixtures. Built models are cached per session: tests that change a model must
build their own with ``build()`` (or ``copy.deepcopy`` a shared one).

``cuda``-marked tests are skipped without a GPU by surgery's own pytest plugin
(``surgery.pytest_plugin``, registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torchvision
from torch import nn

from tests.helpers import build

DETECTION_BUILDERS = sorted(torchvision.models.list_models(module=torchvision.models.detection))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden files under tests/golden/ instead of comparing against them")


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when the run was started with ``--update-golden``."""
    return bool(request.config.getoption("--update-golden"))


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
