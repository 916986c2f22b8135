"""Anatomy of torchvision's optical-flow model RAFT (``raft_small``, ``raft_large``).

``model(image1, image2)`` returns a list of flow fields, one per refinement iteration
(``num_flow_updates``, 12 by default), each ``(B, 2, H, W)`` at the images' size. Both
images must have sides divisible by 8: the encoders work at 1/8 resolution. The feature
encoder reads both images (stacked on the batch), the correlation block builds an
all-pairs correlation pyramid from its maps, and the update block (motion encoder,
recurrent unit, flow head) refines the flow from the correlation features and the context
encoder's output; ``raft_large`` also has a mask predictor for convex upsampling.

The whole-model meta probe runs RAFT end to end, so a part that does not fit its
neighbours is found there, with the module that raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.optical_flow import RAFT
from torchvision.models.optical_flow.raft import MotionEncoder

from surgery import paths
from surgery.anatomy._base import PROBE_BATCH, Anatomy, Context, Contract, Slot, SyntheticBatch
from surgery.anatomy._feed import finding
from surgery.findings import Finding
from surgery.signature import input_signature, meta_like, out_width

__all__ = ["OpticalFlowAnatomy", "sequence_loss"]

#: Weight decay over iterations of the flow loss: iteration ``i`` of ``n`` weighs ``GAMMA ** (n - i - 1)``,
#: as in torchvision's reference training script.
GAMMA = 0.8
#: Largest displacement, in pixels, of a synthetic flow target.
_MAX_FLOW = 4.0
#: The update block's parts, listed instead of the block when present.
_UPDATE_PARTS = ("update_block.motion_encoder", "update_block.recurrent_block", "update_block.flow_head")


def _side(model: nn.Module, image_size: int) -> int:
    """The image side RAFT runs at for ``image_size``: rounded down to a multiple of 8 (its
    encoders downsample by 8), and at least what its correlation pyramid accepts (the 1/8
    maps are halved ``num_levels - 1`` times and must keep 2 pixels: 128 for torchvision's)."""
    levels = getattr(model._modules.get("corr_block"), "num_levels", 1)
    smallest = 8 * 2 * 2 ** (levels - 1) if isinstance(levels, int) and levels >= 1 else 8
    return max(smallest, image_size - image_size % 8)


def sequence_loss(predictions: Sequence[Tensor], target: Tensor, gamma: float = GAMMA) -> Tensor:
    """The L1 distance of every predicted flow to ``target``, later iterations weighing more.

    Args:
        predictions: One ``(B, 2, H, W)`` flow per iteration.
        target: The ``(B, 2, H, W)`` flow to match.
        gamma: Iteration ``i`` of ``n`` weighs ``gamma ** (n - i - 1)``.

    Returns:
        The scalar loss.
    """
    n = len(predictions)
    return sum((gamma ** (n - i - 1) * (p - target).abs().mean() for i, p in enumerate(predictions)),
               torch.zeros((), device=target.device))


class OpticalFlowAnatomy(Anatomy):
    """RAFT: two images in, one flow field per refinement iteration out."""

    name = "optical flow"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, RAFT)

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        return [
            Slot("feature_encoder", "feature encoder: both images (stacked on the batch) → matching features at 1/8 size",
                 "FeatureEncoder or any (2B, 3, H, W) → (2B, C, H/8, W/8) module"),
            Slot("context_encoder", "context encoder: first image → hidden state + context at 1/8 size",
                 "FeatureEncoder with more output channels than the update block's hidden_state_size"),
            Slot("corr_block", "correlation block: feature maps → all-pairs correlation pyramid, indexed around each pixel's flow",
                 "CorrBlock(num_levels, radius), or a module with build_pyramid, index_pyramid and out_channels"),
            Slot("update_block", "update block: hidden state + context + correlation + flow → new hidden state + flow update",
                 "UpdateBlock or a module with hidden_state_size"),
            Slot("update_block.motion_encoder", "motion encoder: correlation features + current flow → motion features",
                 "MotionEncoder(in_channels_corr=corr_block.out_channels, ...)"),
            Slot("update_block.recurrent_block", "recurrent unit (ConvGRU): hidden state + context + motion features → new hidden state",
                 "RecurrentBlock(input_size, hidden_size, ...)"),
            Slot("update_block.flow_head", "flow head: hidden state → flow update (2 channels)",
                 "FlowHead(in_channels=hidden_state_size, hidden_size)"),
            Slot("mask_predictor", "mask predictor: hidden state → convex-upsampling weights (8·8·9 channels)",
                 "MaskPredictor(in_channels=hidden_state_size, hidden_size, multiplier)", optional=True),
        ]

    def slots(self, model: nn.Module) -> list[Slot]:
        present = super().slots(model)
        split = any(s.path in _UPDATE_PARTS for s in present)
        # an update block with the stock parts is listed by its parts; an opaque one as a whole
        return [s for s in present if not (s.path == "update_block" and split)]

    def declared_flow(self, model: nn.Module) -> list[tuple[str, str]]:
        if any(paths.exists(model, p) for p in _UPDATE_PARTS):
            motion, recurrent, head = _UPDATE_PARTS
            return [
                ("feature_encoder", "corr_block"),
                ("corr_block", motion),
                ("context_encoder", recurrent),
                (motion, recurrent),
                (recurrent, head),
                (recurrent, "mask_predictor"),
            ]
        return [
            ("feature_encoder", "corr_block"),
            ("corr_block", "update_block"),
            ("context_encoder", "update_block"),
            ("update_block", "mask_predictor"),
        ]

    def family_contracts(self, model: nn.Module) -> list[Contract]:
        return [Contract("corr_block out_channels → motion encoder correlation input",
                         ("corr_block", "update_block.motion_encoder"), _corr_width)]

    # ----------------------------------------------------------------------- inputs

    def probe_inputs(self, model: nn.Module, image_size: int) -> tuple[Any, ...] | None:
        """Two meta images of ``PROBE_BATCH×3×S×S``, with ``S`` a side RAFT accepts (see
        :meth:`synthetic_batch`), and one flow update: every module runs in it, and the next
        updates repeat the same shapes, so more would only cost time."""
        s = _side(model, image_size)
        return (meta_like((PROBE_BATCH, 3, s, s)), meta_like((PROBE_BATCH, 3, s, s)), 1)

    def synthetic_batch(
        self, model: nn.Module, batch_size: int, image_size: int, generator: torch.Generator, device: torch.device
    ) -> SyntheticBatch:
        """Two image batches ``[image1, image2]``, each ``(B, 3, S, S)``, and a flow target
        ``(B, 2, S, S)`` within ±4 pixels.

        ``S`` is ``image_size`` rounded down to a multiple of 8 (the encoders downsample by 8),
        raised to the smallest side the correlation pyramid accepts (128 for torchvision's
        RAFT, whose 1/8 maps are halved three times).
        """
        s = _side(model, image_size)
        images = [torch.rand(batch_size, 3, s, s, generator=generator).to(device) for _ in range(2)]
        return SyntheticBatch(images, self._flow(batch_size, s, s, generator).to(device))

    @staticmethod
    def _flow(batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        return (torch.rand(batch, 2, height, width, generator=generator) * 2 - 1) * _MAX_FLOW

    def split_inputs(self, inputs: Any) -> tuple[Any, Any]:
        """A :class:`SyntheticBatch`, or ``(image1, image2)`` (a tuple or list of two ``(B, 3, H, W)`` tensors).

        Raises:
            ValueError: ``inputs`` is not two image batches of the same shape.
        """
        if isinstance(inputs, SyntheticBatch):
            return list(inputs.images), inputs.targets
        if not (isinstance(inputs, (tuple, list)) and len(inputs) == 2 and all(isinstance(t, Tensor) and t.dim() == 4 for t in inputs)
                and inputs[0].shape == inputs[1].shape):
            shown = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in inputs] \
                if isinstance(inputs, (tuple, list)) else type(inputs).__name__
            raise ValueError(f"an optical-flow model takes (image1, image2), two (B, 3, H, W) tensors of the same shape; got {shown}")
        return list(inputs), None

    def train_targets(self, model: nn.Module, images: Any, generator: torch.Generator, device: torch.device) -> Any:
        b, _, h, w = (int(s) for s in images[0].shape)
        return self._flow(b, h, w, generator).to(device)

    def call(self, model: nn.Module, images: Any, targets: Any, train: bool) -> Any:
        return model(images[0], images[1])

    # ----------------------------------------------------------------------- the train step

    def loss_keys(self, model: nn.Module) -> tuple[str, ...]:
        return ("flow",)

    def loss_slots(self, model: nn.Module) -> dict[str, str]:
        return {"flow": "update_block.flow_head" if paths.exists(model, "update_block.flow_head") else "update_block"}

    def train_losses(self, model: nn.Module, output: Any, targets: Any) -> dict[str, Tensor] | str | None:
        """``flow``: :func:`sequence_loss` of the predicted flows to the target flow."""
        if not isinstance(targets, Tensor):
            return None
        problem = _flows_problem(output, tuple(int(s) for s in targets.shape))
        if problem is not None:
            return f"returned {problem}"
        return {"flow": sequence_loss(output, targets)}

    # ----------------------------------------------------------------------- the eval pass

    def check_eval_output(self, model: nn.Module, output: Any, images: Any, label: str) -> list[Finding]:
        """A non-empty list of ``(B, 2, H, W)`` float flows at the images' size, all finite."""
        b, _, h, w = (int(s) for s in images[0].shape)
        head = tuple(p for p in ("update_block.flow_head",) if paths.exists(model, p))
        problem = _flows_problem(output, (b, 2, h, w))
        if problem is not None:
            return [Finding("error", "shape-error", head, f"{label} returned {problem}", None)]
        bad = [i for i, flow in enumerate(output) if not bool(torch.isfinite(flow).all())]
        if bad:
            return [Finding("error", "non-finite", head, f"{label}: the flows of iterations {bad} contain NaN/Inf", None)]
        return []


def _flows_problem(output: Any, shape: tuple[int, ...]) -> str | None:
    """What is wrong with ``output`` as a list of flows of ``shape``, or None when nothing is."""
    if not isinstance(output, (list, tuple)) or not output:
        return f"{type(output).__name__}; expected a non-empty list of (B, 2, H, W) flows, one per iteration"
    for i, flow in enumerate(output):
        if not isinstance(flow, Tensor) or not flow.is_floating_point() or tuple(flow.shape) != shape:
            shown = f"{flow.dtype} of shape {tuple(flow.shape)}" if isinstance(flow, Tensor) else type(flow).__name__
            return f"a flow {shown} at iteration {i}; expected float of shape {shape}"
    return None


def _corr_width(ctx: Context) -> Iterable[Finding]:
    """The correlation features (``corr_block.out_channels`` = levels × (2·radius + 1)²) against
    the channels the motion encoder's first correlation conv takes. The corr block runs through
    its methods, never its forward, so the whole-model probe cannot vouch for it."""
    corr, motion = ctx.get("corr_block"), ctx.get("update_block.motion_encoder")
    width = getattr(corr, "out_channels", None)
    sig = input_signature(motion)
    if not isinstance(width, int) or sig is None or sig.size == width:
        return
    target = paths.expression("update_block.motion_encoder", ctx.model)
    yield finding("error", "channel-mismatch", ("corr_block", "update_block.motion_encoder"),
                  f"corr_block produces {width} correlation channels (corr_block.out_channels) but "
                  f"update_block.motion_encoder expects {sig.size} (in {paths.join('update_block.motion_encoder', sig.source)})",
                  _motion_fix(motion, target, width))


def _motion_fix(motion: nn.Module, target: str, width: int) -> str:
    """A line rebuilding a stock ``MotionEncoder`` for ``width`` correlation channels, other sizes kept."""
    if type(motion) is not MotionEncoder:
        return f"rebuild {target} to take {width} correlation channels"
    convs = [m for m in motion.modules() if isinstance(m, nn.Conv2d)]
    corr_layers = [out_width(c) for name in ("convcorr1", "convcorr2") for c in motion._modules[name].modules()  # type: ignore[union-attr]
                   if isinstance(c, nn.Conv2d)]
    flow_layers = [out_width(c) for name in ("convflow1", "convflow2") for c in motion._modules[name].modules()  # type: ignore[union-attr]
                   if isinstance(c, nn.Conv2d)]
    out = getattr(motion, "out_channels", out_width(convs[-1]) + 2 if convs else None)
    return (f"{target} = MotionEncoder(in_channels_corr={width}, corr_layers={tuple(corr_layers)}, "
            f"flow_layers={tuple(flow_layers)}, out_channels={out})")
