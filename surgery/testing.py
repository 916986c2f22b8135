"""Assertions for a project's own tests: is my model compatible, does it run and train?

::

    from surgery.testing import assert_compatible, assert_smoke

    def test_my_head():
        model = build_model()
        assert_compatible(model)                  # static: channels, classes, anchors, orphans
        assert_smoke(model, image_size=256)       # train step + eval pass on a synthetic batch

A failed assertion raises ``AssertionError`` whose message lists the findings (code,
modules, numbers, fix), so pytest shows what to change. The pytest plugin
(:mod:`surgery.pytest_plugin`, installed with the package) adds the ``surgery_smoke``
fixture, the ``cuda`` marker and ``--surgery-device``; outside pytest the
``SURGERY_DEVICE`` environment variable picks the default device the same way.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from surgery.check import check
from surgery.findings import Report
from surgery.smoke import SmokeResult, smoke_test

__all__ = ["DEVICES", "SmokeRunner", "assert_compatible", "assert_smoke", "default_device", "set_default_device"]

#: Values accepted by ``--surgery-device`` and ``SURGERY_DEVICE``.
DEVICES = ("auto", "cpu", "cuda")
_ENV = "SURGERY_DEVICE"
_forced: str | None = None


def _valid(device: str, source: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"{source} must be one of {', '.join(DEVICES)}, got {device!r}")
    return device


def set_default_device(device: str | None) -> str | None:
    """Force the device :func:`assert_smoke` uses when none is passed (None: back to the default).

    The pytest plugin calls it for ``--surgery-device``.

    Returns:
        The device forced before (None when none was), to put back later.

    Raises:
        ValueError: ``device`` is not ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """
    global _forced
    previous = _forced
    _forced = None if device is None else _valid(device, "the default device")
    return previous


def default_device() -> str:
    """The device smoke tests use when none is passed.

    ``--surgery-device`` (through :func:`set_default_device`) wins, then the ``SURGERY_DEVICE``
    environment variable, then ``"auto"``.

    Raises:
        ValueError: ``SURGERY_DEVICE`` holds something other than ``auto``, ``cpu`` or ``cuda``.
    """
    if _forced is not None:
        return _forced
    env = os.environ.get(_ENV, "").strip()
    return _valid(env, f"the {_ENV} environment variable") if env else "auto"


def assert_compatible(model: nn.Module, **check_kwargs: Any) -> Report:
    """Assert that :func:`surgery.check` finds no error in ``model``.

    Args:
        model: The model to check.
        **check_kwargs: Passed to :func:`surgery.check` (e.g. ``paths=``, ``trace=True``).

    Returns:
        The report (warnings may be in it).

    Raises:
        AssertionError: The report has errors; the message lists every finding with its fix.
    """
    __tracebackhide__ = True
    report = check(model, **check_kwargs)
    if not report.ok:
        raise AssertionError(f"{type(model).__name__} is not compatible: surgery.check found {len(report.errors)} error(s)\n"
                             + _findings_text(report.findings))
    return report


def assert_smoke(model: nn.Module, **smoke_kwargs: Any) -> SmokeResult:
    """Assert that :func:`surgery.smoke_test` passes on ``model``.

    Args:
        model: The model to test (left exactly as it was).
        **smoke_kwargs: Passed to :func:`surgery.smoke_test`; ``device`` defaults to
            :func:`default_device`.

    Returns:
        The result, for further assertions on timings or memory.

    Raises:
        AssertionError: The smoke test found errors; the message lists them, then the phases.
        SmokeTestError: The test could not run (e.g. ``device="cuda"`` without a GPU).
    """
    __tracebackhide__ = True
    smoke_kwargs.setdefault("device", default_device())
    result = smoke_test(model, **smoke_kwargs)
    if not result.ok:
        table = "\n".join(f"  {p}" for p in result.phases)
        raise AssertionError(
            f"surgery smoke test failed for {result.model} on {result.device}: {len(result.errors)} error(s)\n"
            + _findings_text(result.findings) + f"\nphases (batch {result.batch_size} × {result.image_size}×{result.image_size}):\n{table}"
        )
    return result


def _findings_text(findings: list[Any]) -> str:
    return "\n".join("  " + str(f).replace("\n", "\n  ") for f in findings)


class SmokeRunner:
    """What the ``surgery_smoke`` fixture gives a test.

    Calling it runs :func:`assert_smoke` on the fixture's device; :meth:`run` returns the
    result without asserting; :meth:`check` is :func:`assert_compatible`.

    Attributes:
        device: The device the smoke tests run on (``--surgery-device``, ``SURGERY_DEVICE`` or ``"auto"``).
    """

    def __init__(self, device: str | None = None) -> None:
        self.device = _valid(device, "device") if device is not None else default_device()

    def __call__(self, model: nn.Module, **smoke_kwargs: Any) -> SmokeResult:
        __tracebackhide__ = True
        smoke_kwargs.setdefault("device", self.device)
        return assert_smoke(model, **smoke_kwargs)

    def run(self, model: nn.Module, **smoke_kwargs: Any) -> SmokeResult:
        """Run the smoke test and return the result, passed or not."""
        smoke_kwargs.setdefault("device", self.device)
        return smoke_test(model, **smoke_kwargs)

    def check(self, model: nn.Module, **check_kwargs: Any) -> Report:
        """Assert that :func:`surgery.check` finds no error (see :func:`assert_compatible`)."""
        __tracebackhide__ = True
        return assert_compatible(model, **check_kwargs)

    def __repr__(self) -> str:
        return f"SmokeRunner(device={self.device!r})"
