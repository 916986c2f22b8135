"""The optical-flow family: RAFT's slots, its two-image input, the flow loss, eval checks, smoke test."""

from __future__ import annotations

import gc

import pytest
import torch
import torchvision
from torchvision.models.optical_flow.raft import CorrBlock, MotionEncoder

import surgery
from surgery.anatomy import anatomy_for
from surgery.anatomy.optical_flow import OpticalFlowAnatomy, sequence_loss
from tests.helpers import build, fingerprint

OPTICAL_FLOW = sorted(torchvision.models.list_models(module=torchvision.models.optical_flow))


def small_raft() -> torch.nn.Module:
    """raft_small with a 2-level correlation pyramid, which accepts 32×32 images (the stock 4 levels need 128)."""
    return build("raft_small", corr_block=CorrBlock(num_levels=2, radius=3))


def test_components_list_the_slots_with_roles() -> None:
    model = build("raft_large")
    got = [(c.path, c.role) for c in surgery.components(model)]
    assert got == [
        ("feature_encoder", "feature encoder: both images (stacked on the batch) → matching features at 1/8 size"),
        ("context_encoder", "context encoder: first image → hidden state + context at 1/8 size"),
        ("corr_block", "correlation block: feature maps → all-pairs correlation pyramid, indexed around each pixel's flow"),
        ("update_block.motion_encoder", "motion encoder: correlation features + current flow → motion features"),
        ("update_block.recurrent_block", "recurrent unit (ConvGRU): hidden state + context + motion features → new hidden state"),
        ("update_block.flow_head", "flow head: hidden state → flow update (2 channels)"),
        ("mask_predictor", "mask predictor: hidden state → convex-upsampling weights (8·8·9 channels)"),
    ]


def test_check_probes_both_images_end_to_end() -> None:
    model = build("raft_small")
    before = fingerprint(model)
    report = surgery.check(model, probe_image_size=100)  # rounded down to 96, raised to the pyramid's 128
    assert report.ok and report.findings == []
    assert "whole-model meta probe (2×3×128×128, 2×3×128×128)" in report.checked
    cov = report.coverage
    assert cov is not None and cov.family == "optical flow" and cov.probe == "ran" and cov.unchecked == []
    assert fingerprint(model) == before


def test_motion_encoder_of_the_wrong_correlation_width() -> None:
    model = build("raft_small")
    model.update_block.motion_encoder = MotionEncoder(in_channels_corr=100, corr_layers=(96,), flow_layers=(64, 32), out_channels=82)
    (f,) = surgery.check(model).errors  # the probe's failure in the same module is not repeated
    assert (f.code, f.paths) == ("channel-mismatch", ("corr_block", "update_block.motion_encoder"))
    assert f.message == ("corr_block produces 196 correlation channels (corr_block.out_channels) but update_block.motion_encoder "
                         "expects 100 (in update_block.motion_encoder.convcorr1.0)")
    assert f.fix == ("model.update_block.motion_encoder = MotionEncoder(in_channels_corr=196, corr_layers=(96,), "
                     "flow_layers=(64, 32), out_channels=82)")
    exec(f.fix, {"model": model, "MotionEncoder": MotionEncoder})
    assert surgery.check(model).ok


def test_synthetic_batch_is_two_images_and_a_flow() -> None:
    model = small_raft()
    (image1, image2), flow = surgery.synthetic_batch(model, batch_size=2, image_size=37, seed=0)
    assert [tuple(t.shape) for t in (image1, image2, flow)] == [(2, 3, 32, 32), (2, 3, 32, 32), (2, 2, 32, 32)]
    assert float(flow.abs().max()) <= 4.0


def test_flow_loss_and_eval_checks() -> None:
    anatomy = OpticalFlowAnatomy()
    model = small_raft()
    target = torch.zeros(1, 2, 8, 8)
    flows = [torch.full((1, 2, 8, 8), 1.0), torch.full((1, 2, 8, 8), 2.0)]
    assert float(sequence_loss(flows, target)) == pytest.approx(0.8 * 1.0 + 2.0)
    losses = anatomy.train_losses(model, flows, target)
    assert isinstance(losses, dict) and list(losses) == ["flow"]
    images = [torch.zeros(1, 3, 8, 8)] * 2
    assert anatomy.check_eval_output(model, flows, images, "the eval pass") == []
    (f,) = anatomy.check_eval_output(model, [torch.zeros(1, 3, 8, 8)], images, "the eval pass")
    assert (f.code, f.paths, f.message) == ("shape-error", ("update_block.flow_head",),
                                            "the eval pass returned a flow torch.float32 of shape (1, 3, 8, 8) at iteration 0; "
                                            "expected float of shape (1, 2, 8, 8)")
    (g,) = anatomy.check_eval_output(model, [flows[0], flows[1] * float("nan")], images, "the eval pass")
    assert (g.code, g.message) == ("non-finite", "the eval pass: the flows of iterations [1] contain NaN/Inf")


def test_smoke_test_trains_and_evaluates() -> None:
    model = small_raft()
    before = fingerprint(model)
    result = surgery.smoke_test(model, device="cpu", batch_size=1, image_size=32)
    assert result.ok, str(result)
    assert result.family == "optical flow" and list(result.losses) == ["flow"]
    assert fingerprint(model) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTICAL_FLOW)
def test_every_optical_flow_builder_checks_clean(name: str) -> None:
    model = build(name)
    assert isinstance(anatomy_for(model), OpticalFlowAnatomy)
    report = surgery.check(model)
    assert report.errors == [] and report.findings == [], str(report)
    comps = surgery.components(model)
    assert comps and all(c.role for c in comps)
    del model
    gc.collect()
