"""pytest plugin, registered through the ``pytest11`` entry point when ``surgery`` is installed.

It adds:

- the ``surgery_smoke`` fixture: ``surgery_smoke(model, **kw)`` asserts that
  :func:`surgery.smoke_test` passes and returns the result; ``surgery_smoke.run(model)``
  returns it without asserting; ``surgery_smoke.check(model)`` asserts that
  :func:`surgery.check` finds no error;
- the ``cuda`` marker: a test marked ``@pytest.mark.cuda`` is skipped where
  ``torch.cuda.is_available()`` is False;
- ``--surgery-device auto|cpu|cuda``: the device of the fixture and of
  :func:`surgery.testing.assert_smoke` (the ``SURGERY_DEVICE`` environment variable does the
  same without the option). ``cuda`` on a machine without a GPU makes smoke tests fail
  instead of silently running on the CPU.

Nothing here imports torch until a test needs it, so the plugin costs nothing in test
sessions that do not use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from surgery.testing import SmokeRunner

__all__ = ["pytest_addoption", "pytest_configure", "pytest_unconfigure", "pytest_collection_modifyitems", "surgery_smoke"]

_DEVICES = ("auto", "cpu", "cuda")
_CUDA_MARKER = "cuda: needs a CUDA GPU; skipped where torch.cuda.is_available() is False (surgery plugin)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("surgery", "surgery smoke tests")
    group.addoption("--surgery-device", choices=_DEVICES, default=None,
                    help="device of surgery smoke tests (surgery_smoke fixture, surgery.testing.assert_smoke): "
                         "auto (cuda when available), cpu or cuda (fail without a GPU). Default: $SURGERY_DEVICE or auto")


_PREVIOUS = pytest.StashKey[str | None]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _CUDA_MARKER)
    device = config.getoption("--surgery-device", default=None)
    if device is not None:
        from surgery import testing

        config.stash[_PREVIOUS] = testing.set_default_device(device)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PREVIOUS in config.stash:  # put back what was forced before (an outer session's, under pytester)
        from surgery import testing

        testing.set_default_device(config.stash[_PREVIOUS])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture
def surgery_smoke(request: pytest.FixtureRequest) -> SmokeRunner:
    """A :class:`surgery.testing.SmokeRunner` on the session's device (``--surgery-device``)."""
    from surgery.testing import SmokeRunner

    return SmokeRunner(request.config.getoption("--surgery-device", default=None))
