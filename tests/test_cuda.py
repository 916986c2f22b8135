"""smoke_test on a GPU: device round trip, AMP, peak memory, a real OOM, DDP with nccl.

Every test here is marked ``cuda`` and skipped where ``torch.cuda.is_available()`` is False
(surgery's pytest plugin does the skipping). ``benchmarks/gpu_smoke.sh`` runs them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

from surgery import smoke_test
from tests.helpers import fingerprint
from tests.test_ddp import recipe_model
from tests.test_smoke import RCNN_MASK_LOSSES, assert_restored, stamped, tiny_maskrcnn

pytestmark = pytest.mark.cuda
SIZE = 128


class HugeAllocationHead(MaskRCNNHeads):
    """A mask head that asks the GPU for a petabyte: a real CUDA out-of-memory error."""

    def forward(self, x: Tensor) -> Tensor:
        torch.empty(1 << 50, dtype=torch.uint8, device=x.device)
        return super().forward(x)


def test_cpu_model_runs_on_cuda_and_comes_back_unchanged() -> None:
    model, fp, grads = stamped(tiny_maskrcnn())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = smoke_test(model, device="cuda", image_size=SIZE)
    assert result.ok, str(result)
    assert result.device == f"cuda:{torch.cuda.current_device()}"
    assert set(result.losses) == RCNN_MASK_LOSSES
    assert_restored(model, fp, grads)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_auto_picks_cuda_and_says_so() -> None:
    result = smoke_test(tiny_maskrcnn(), device="auto", image_size=SIZE)
    assert result.device.startswith("cuda")
    assert result.device_note.startswith("auto: CUDA available (")


def test_model_already_on_the_gpu_stays_there_with_its_values() -> None:
    model = tiny_maskrcnn().cuda()
    model, fp, grads = stamped(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = smoke_test(model, device="cuda", image_size=SIZE, steps=2)
    assert result.ok, str(result)
    assert_restored(model, fp, grads)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("amp", "name"), [(True, "float16"), ("fp16", "float16"), ("bf16", "bfloat16")])
def test_amp_on_cuda(amp: bool | str, name: str) -> None:
    if name == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    result = smoke_test(tiny_maskrcnn(), device="cuda", image_size=SIZE, amp=amp)
    assert result.ok, str(result)
    assert result.amp == name


def test_peak_memory_is_the_cuda_allocator_peak(shared: Callable[..., nn.Module]) -> None:
    model = shared("maskrcnn_resnet50_fpn")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    small = smoke_test(model, device="cuda", image_size=320, batch_size=1, check=False)
    large = smoke_test(model, device="cuda", image_size=800, batch_size=2, check=False)
    assert small.ok and large.ok, str(large)
    assert "max_memory_allocated" in large.memory_source
    for result in (small, large):
        train, eval_ = result.memory["train"], result.memory["eval"]
        assert train is not None and eval_ is not None
        assert train > weights and eval_ > weights
    assert large.memory["train"] > small.memory["train"]  # type: ignore[operator]
    assert large.throughput["train"] > 0 and large.throughput["eval"] > 0


def test_a_real_out_of_memory_error_is_a_finding_and_memory_is_released() -> None:
    model = tiny_maskrcnn()
    model.roi_heads.mask_head = HugeAllocationHead(32, (32, 32), 1)
    fp = fingerprint(model)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    result = smoke_test(model, device="cuda", image_size=SIZE, check=False)
    assert result.codes() == ["shape-error"]
    finding = result.findings[0]
    assert finding.paths == ("roi_heads.mask_head",)
    assert finding.message.startswith("the forward pass of train step 1 ran out of memory in roi_heads.mask_head (HugeAllocationHead)")
    assert finding.fix == "lower batch_size or image_size, or use amp=True"
    assert fingerprint(model) == fp
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP with nccl needs 2 GPUs")
def test_ddp_with_nccl_on_two_gpus() -> None:
    failing = smoke_test(recipe_model(), device="cuda", image_size=SIZE, batch_size=1, ddp=2, check=False)
    assert failing.ddp is not None and failing.ddp["backend"] == "nccl"
    assert failing.phase("ddp").status == "failed"
    assert "(no gradient: mask_predictor)" in failing.phase("ddp").note
    fixed = recipe_model()
    fixed.roi_heads.mask_predictor = fixed.mask_predictor
    del fixed.mask_predictor
    result = smoke_test(fixed, device="cuda", image_size=SIZE, batch_size=1, ddp=2)
    assert result.ok, str(result)
    assert result.ddp is not None and (result.ddp["backend"], result.ddp["device"]) == ("nccl", "cuda")
    assert multiprocessing.active_children() == []


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="the gloo fallback is for machines with fewer GPUs than processes")
def test_ddp_with_one_gpu_falls_back_to_gloo_on_cpu_and_says_so() -> None:
    result = smoke_test(tiny_maskrcnn(), device="cuda", image_size=SIZE, ddp=2, check=False)
    assert result.ok, str(result)
    assert result.ddp is not None
    assert (result.ddp["backend"], result.ddp["device"]) == ("gloo", "cpu")
    assert result.ddp["fallback"] == f"gloo on cpu: nccl needs 2 GPUs, there are {torch.cuda.device_count()}"
