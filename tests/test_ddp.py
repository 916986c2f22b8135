"""The DDP phase of smoke_test: two gloo processes on CPU, loopback, always cleaned up."""

from __future__ import annotations

import glob
import math
import multiprocessing
import os
import re
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from surgery import SmokeTestError, smoke_test, synthetic_batch
from surgery.smoke.ddp import parse_unused, run_ddp
from tests.helpers import fingerprint
from tests.test_smoke import assert_restored, stamped, tiny_maskrcnn

SIZE = 128
#: What DDP (torch 2.14, TORCH_DISTRIBUTED_DEBUG=INFO) raised for a module whose ``spare`` Linear got no gradient.
DDP_MESSAGE = (
    "Expected to have finished reduction in the prior iteration before starting a new one. This error indicates that your "
    "module has parameters that were not used in producing loss. You can enable unused parameter detection by passing the "
    "keyword argument `find_unused_parameters=True` to `torch.nn.parallel.DistributedDataParallel`, and by \nmaking sure all "
    "`forward` function outputs participate in calculating loss. \n"
    "Parameters which did not receive grad for rank 0: spare.bias, spare.weight\n"
    "Parameter indices which did not receive grad for rank 0: 2 3"
)


def resnet18_maskrcnn(num_classes: int = 20) -> MaskRCNN:
    """DESIGN.md's model with a resnet18 FPN backbone and few RoIs, so that a DDP step is quick on CPU."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return MaskRCNN(backbone, num_classes, min_size=SIZE, max_size=SIZE, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                    rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, box_detections_per_img=10)


def recipe_model() -> MaskRCNN:
    """The motivating recipe: a predictor hung off the model root, where forward never calls it."""
    model = resnet18_maskrcnn()
    model.mask_predictor = MaskRCNNPredictor(256, 256, 20)
    return model


class HangsUnderDDP(nn.Module):
    """A mask head that sleeps for ten minutes, but only inside a DDP worker."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if dist.is_initialized():
            time.sleep(600)
        return self.conv(x)


class CrashesUnderDDP(HangsUnderDDP):
    """A mask head that kills its process, but only inside a DDP worker."""

    def forward(self, x: Tensor) -> Tensor:
        if dist.is_initialized():
            os._exit(3)
        return self.conv(x)


class TwoOutputs(nn.Module):
    """A generic model whose forward returns a tuple of two float tensors."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wide = nn.Conv2d(3, 4, 3)
        self.narrow = nn.Conv2d(3, 2, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.wide(x), self.narrow(x)


class ClassIndices(nn.Module):
    """A generic model whose forward returns only an integer tensor: nothing to backpropagate from."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).argmax(1)


def _leftovers() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "surgery-ddp-*")))


def test_parse_unused_reads_names_or_maps_indices() -> None:
    assert parse_unused(DDP_MESSAGE, ["used.weight", "used.bias", "spare.weight", "spare.bias"]) == ["spare.bias", "spare.weight"]
    only_indices = DDP_MESSAGE.replace("Parameters which did not receive grad for rank 0: spare.bias, spare.weight\n", "")
    assert parse_unused(only_indices, ["used.weight", "used.bias", "spare.weight", "spare.bias"]) == ["spare.weight", "spare.bias"]
    assert parse_unused("some other error", ["a"]) == []


@pytest.mark.slow
def test_ddp_fails_on_the_motivating_recipe_and_names_the_module() -> None:
    before = _leftovers()
    model, fp, grads = stamped(recipe_model())
    result = smoke_test(model, device="cpu", image_size=SIZE, batch_size=1, ddp=2, check=False)
    assert not result.ok
    assert [(f.code, f.paths) for f in result.findings] == [("unused-parameter", ("mask_predictor",))]
    phase = result.phase("ddp")
    assert phase.status == "failed"
    assert phase.note == (
        "2 processes, gloo on cpu, 2 steps, find_unused_parameters=False; rank 0 raised RuntimeError at step 2: Expected to have "
        "finished reduction in the prior iteration before starting a new one. (no gradient: mask_predictor)"
    )
    assert result.ddp is not None
    assert (result.ddp["world_size"], result.ddp["backend"], result.ddp["device"], result.ddp["steps"]) == (2, "gloo", "cpu", 2)
    assert [len(steps) for steps in result.ddp["losses"]] == [1, 1]  # the second step raises before its losses
    assert multiprocessing.active_children() == []
    assert _leftovers() == before
    assert_restored(model, fp, grads)


@pytest.mark.slow
def test_ddp_passes_on_the_fixed_model() -> None:
    model = recipe_model()
    model.roi_heads.mask_predictor = model.mask_predictor  # the fix check proposes
    del model.mask_predictor
    result = smoke_test(model, device="cpu", image_size=SIZE, batch_size=1, ddp=2)
    assert result.ok, str(result)
    assert [p.name for p in result.phases] == ["check", "train", "eval", "ddp"]
    assert result.phase("ddp").status == "ok"
    assert result.ddp is not None
    losses = result.ddp["losses"]
    assert [len(steps) for steps in losses] == [2, 2]
    assert all(set(step) == set(result.losses) and all(math.isfinite(v) for v in step.values()) for steps in losses for step in steps)
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_ddp_workers_past_the_timeout_are_killed() -> None:
    before = _leftovers()
    model = tiny_maskrcnn()
    model.roi_heads.mask_head = HangsUnderDDP()
    fp = fingerprint(model)
    start = time.perf_counter()
    result = smoke_test(model, device="cpu", image_size=SIZE, ddp=2, ddp_timeout=10, check=False)
    assert time.perf_counter() - start < 45
    assert (result.ok, result.phase("ddp").status, result.phase("train").status) == (False, "failed", "ok")  # the train phase's result is kept
    (finding,) = [f for f in result.findings if f.message.startswith("the DDP phase did not finish")]
    assert finding.message.startswith("the DDP phase did not finish: its 2 workers ran past 10 s and were killed")
    assert multiprocessing.active_children() == []
    assert _leftovers() == before
    assert fingerprint(model) == fp


@pytest.mark.slow
def test_a_crashed_worker_is_an_error_finding_with_its_exit_code() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.mask_head = CrashesUnderDDP()
    result = smoke_test(model, device="cpu", image_size=SIZE, ddp=2, ddp_timeout=120, check=False)
    assert (result.ok, result.phase("ddp").status) == (False, "failed")
    assert any(re.match(r"the DDP phase did not finish: rank [01] exited with code 3 without a result", f.message) for f in result.findings)
    assert multiprocessing.active_children() == []


def test_an_unpicklable_model_is_refused_before_any_process_starts() -> None:
    model = tiny_maskrcnn()
    model.scale = lambda x: x * 2  # a lambda attribute cannot be pickled
    fp = fingerprint(model)
    with pytest.raises(SmokeTestError, match=r"ddp=2 sends the model to its worker processes by pickling it, and MaskRCNN cannot be pickled"):
        smoke_test(model, device="cpu", image_size=SIZE, ddp=2, check=False)
    assert multiprocessing.active_children() == []
    assert fingerprint(model) == fp


@pytest.mark.slow
def test_ddp_takes_the_loss_of_a_tuple_output_as_the_train_step_does() -> None:
    model = TwoOutputs()
    result = smoke_test(model, device="cpu", image_size=32, ddp=2, check=False)
    assert result.ok, str(result)
    assert [(p.name, p.status) for p in result.phases] == [("train", "ok"), ("eval", "ok"), ("ddp", "ok")]
    assert result.ddp is not None
    losses = result.ddp["losses"]
    assert [[sorted(step) for step in steps] for steps in losses] == [[["output"], ["output"]], [["output"], ["output"]]]
    # Rank 0's first step sees the train phase's batch (seed 0) and weights: the same loss, the mean of both outputs.
    with torch.no_grad():
        wide, narrow = model(synthetic_batch(model, 2, 32, seed=0).images)
    expected = float(wide.mean() + narrow.mean())
    assert result.losses["output"] == pytest.approx(expected, rel=1e-5)
    assert losses[0][0]["output"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_an_output_without_a_float_tensor_is_the_same_finding_in_the_train_and_ddp_phases() -> None:
    message = "returned Tensor with no floating-point tensor to backpropagate from"
    result = smoke_test(ClassIndices(), device="cpu", image_size=32, ddp=2, check=False)
    assert [(f.code, f.paths, f.message) for f in result.findings] == [("shape-error", (), f"train step 1 {message}")]
    assert [(p.name, p.status) for p in result.phases] == [("train", "failed"), ("eval", "ok"), ("ddp", "failed")]
    assert result.phase("ddp").note == "2 processes, gloo on cpu, 2 steps, find_unused_parameters=False"  # nothing raised
    outcome = run_ddp(ClassIndices(), world_size=2, device=torch.device("cpu"), batch_size=2, image_size=32, amp=None, timeout=120)
    # One finding per (code, paths): rank 1's identical finding is merged into rank 0's.
    assert [(f.code, f.paths, f.message) for f in outcome.findings] == [("shape-error", (), f"DDP rank 0, step 1 {message}")]
    assert (outcome.raised, outcome.losses) == ("", [[], []])
    assert multiprocessing.active_children() == []
