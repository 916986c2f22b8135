"""surgery's pytest plugin and surgery.testing, run as a user's test session would (pytester)."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch

from surgery import SmokeTestError
from surgery.testing import SmokeRunner, assert_compatible, assert_smoke, default_device, set_default_device
from tests.test_smoke import motivating_recipe, tiny_maskrcnn, unfixed_mask_head

pytest_plugins = ["pytester"]

USER_TESTS = '''
import pytest
from surgery.testing import assert_compatible, assert_smoke
from tests.test_smoke import motivating_recipe, tiny_maskrcnn


def test_fits():
    assert_compatible(tiny_maskrcnn())


def test_runs(surgery_smoke):
    result = surgery_smoke(tiny_maskrcnn(), image_size=128)
    assert result.device == "cpu"


def test_broken():
    assert_smoke(motivating_recipe(), image_size=128)
'''


def test_the_plugin_is_registered_by_its_entry_point(request: pytest.FixtureRequest) -> None:
    assert any(ep.name == "surgery" and ep.value == "surgery.pytest_plugin" for ep in entry_points(group="pytest11"))
    assert request.config.pluginmanager.has_plugin("surgery")


def test_passing_and_failing_user_tests_show_the_findings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("--surgery-device", "cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([  # fnmatch patterns: "[[]" is a literal "["
        "*_ test_broken _*",
        ">       assert_smoke(motivating_recipe(), image_size=128)",
        "E       AssertionError: surgery smoke test failed for MaskRCNN on cpu: 2 error(s)",
        "E         error [[]orphan-module] mask_predictor -> roi_heads.mask_predictor: mask_predictor (MaskRCNNPredictor*",
        "E             fix: model.roi_heads.mask_predictor = model.mask_predictor; del model.mask_predictor  # and first: *",
        "E         error [[]unused-parameter] mask_predictor: 4 trainable parameter tensor(s)*got no gradient from the train step*",
        "E             fix: call mask_predictor in the forward pass*",
        "E       phases (batch 2 × 128×128):",
        "E         check  failed*",
        "E         train  failed*",
        "E         eval   ok*",
        "test_user.py:16: AssertionError",
    ])
    text = result.stdout.str()
    assert "def assert_smoke" not in text  # __tracebackhide__: the traceback stops at the user's line
    assert "assert_smoke(motivating_recipe(), image_size=128)" in text


def test_assert_compatible_message_lists_the_findings() -> None:
    with pytest.raises(AssertionError, match=r"MaskRCNN is not compatible: surgery.check found 1 error\(s\)\n"
                                             r"  error \[channel-mismatch\] roi_heads.mask_head -> roi_heads.mask_predictor: ") as info:
        assert_compatible(unfixed_mask_head())
    assert "fix: model.roi_heads.mask_predictor = MaskRCNNPredictor(64, " in str(info.value)
    assert assert_compatible(tiny_maskrcnn()).ok


def test_assert_smoke_returns_the_result_and_raises_with_the_findings() -> None:
    result = assert_smoke(tiny_maskrcnn(), image_size=128, device="cpu")
    assert result.ok and result.device == "cpu"
    with pytest.raises(AssertionError, match=r"\[unused-parameter\] mask_predictor: "):
        assert_smoke(motivating_recipe(), image_size=128, device="cpu", check=False)


def test_cuda_marker_skips_without_a_gpu(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_gpu="""
        import pytest

        @pytest.mark.cuda
        def test_on_gpu():
            pass

        def test_anywhere():
            pass
    """)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*needs a CUDA GPU (torch.cuda.is_available() is False)"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_cuda_marker_is_declared(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.cuda: needs a CUDA GPU; skipped where torch.cuda.is_available() is False (surgery plugin)"])


def test_surgery_device_option_sets_the_fixture_and_the_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_device="""
        from surgery.testing import default_device

        def test_device(surgery_smoke):
            assert surgery_smoke.device == "cpu"
            assert default_device() == "cpu"
    """)
    before = default_device()
    pytester.runpytest("--surgery-device=cpu", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert default_device() == before  # put back when the inner session ended
    bad = pytester.runpytest("--surgery-device=tpu")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*argument --surgery-device: invalid choice: 'tpu' (choose from *auto*cpu*cuda*)"])


def test_forcing_cuda_without_a_gpu_fails_the_smoke_test(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pytester.makepyfile(test_forced="""
        from tests.test_smoke import tiny_maskrcnn

        def test_runs(surgery_smoke):
            surgery_smoke(tiny_maskrcnn(), image_size=128)
    """)
    result = pytester.runpytest("--surgery-device=cuda", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *surgery._errors.SmokeTestError: device='cuda' was asked for, but torch sees no CUDA GPU*"])


def test_default_device_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    outer = set_default_device(None)  # this session's own --surgery-device, if any
    try:
        monkeypatch.setenv("SURGERY_DEVICE", "cpu")
        assert default_device() == "cpu"
        assert SmokeRunner().device == "cpu"
        assert set_default_device("cuda") is None
        assert default_device() == "cuda"  # the option (set_default_device) wins over the environment
        assert set_default_device(None) == "cuda"
        monkeypatch.setenv("SURGERY_DEVICE", "gpu")
        with pytest.raises(ValueError, match=r"the SURGERY_DEVICE environment variable must be one of auto, cpu, cuda, got 'gpu'"):
            default_device()
        with pytest.raises(ValueError, match=r"the default device must be one of auto, cpu, cuda, got 'tpu'"):
            set_default_device("tpu")
    finally:
        set_default_device(outer)


def test_smoke_runner_run_does_not_assert(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = SmokeRunner("cpu")
    assert repr(runner) == "SmokeRunner(device='cpu')"
    result = runner.run(motivating_recipe(), image_size=128, check=False)
    assert not result.ok and result.codes() == ["unused-parameter"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SmokeTestError, match=r"device='cuda' was asked for, but torch sees no CUDA GPU"):
        SmokeRunner("cuda")(tiny_maskrcnn(), image_size=128)
