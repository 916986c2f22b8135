"""The one interface to a model family: :class:`Anatomy`.

Its building blocks (slots, contracts, the context they run in) live in :mod:`._types` and
are re-exported here, so ``from surgery.anatomy._base import Slot`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from surgery import paths
from surgery._util import all_finite
from surgery.anatomy._types import (
    LAYER_CONTRACT,
    PROBE_BATCH,
    AdaptRule,
    AttrUpdate,
    BackbonePlan,
    ClassLayer,
    Context,
    Contract,
    Features,
    Rebuild,
    RowLayer,
    Slot,
    SyntheticBatch,
    is_stock,
    layer_attribute_findings,
)
from surgery.findings import Finding
from surgery.signature import (
    MultiSignature,
    SlotSignature,
    input_signature,
    meta_like,
    output_signature,
)

__all__ = [
    "Slot",
    "Contract",
    "Context",
    "Features",
    "Anatomy",
    "SyntheticBatch",
    "ClassLayer",
    "AttrUpdate",
    "AdaptRule",
    "BackbonePlan",
    "Rebuild",
    "is_stock",
    "PROBE_BATCH",
    "RowLayer",
    "LAYER_CONTRACT",
    "layer_attribute_findings",
]


class Anatomy:
    """Knowledge of one model family: the one interface the rest of the package asks.

    Subclasses live one per file in :mod:`surgery.anatomy`. Each public call resolves the
    anatomy once (:func:`surgery.anatomy.anatomy_for`) and passes it down. The defaults
    here describe a model no family knows: it takes one image tensor, has no targets, no
    class layers and no adapt rules.
    """

    #: Family name shown to users, e.g. ``"R-CNN"``.
    name: str = "generic"
    #: False only for the fallback that matches any model and knows nothing of it.
    knows_model: bool = True
    #: Why the whole-model meta probe is not run for this family (None: it is run).
    no_whole_probe: str | None = None
    #: Where and why the whole-model probe is expected to stop short for this family (None: it
    #: runs to the end): said with the coverage, so that a stop is not mistaken for a failure.
    probe_stops: str | None = None
    #: True when the forward takes a list of ``3×H×W`` images and, in train mode, targets
    #: (torchvision's detection API), rather than one tensor.
    takes_targets: bool = False

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """True when this anatomy describes ``model``."""
        raise NotImplementedError

    def slots(self, model: nn.Module) -> list[Slot]:
        """The family's slots that are present in ``model``, in data-flow order."""
        return [s for s in self.declared_slots(model) if paths.exists(model, s.path)]

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        """Every slot the family knows, present or not."""
        raise NotImplementedError

    def contracts(self, model: nn.Module) -> list[Contract]:
        """Every contract ``check`` runs on ``model``: the layer check every model gets, then
        the family's own (:meth:`family_contracts`)."""
        slots = tuple(s.path for s in self.slots(model))
        # it checks each layer against its own weights, not how slots fit: it covers no slot
        return [Contract(LAYER_CONTRACT, slots, layer_attribute_findings, covers=()), *self.family_contracts(model)]

    def family_contracts(self, model: nn.Module) -> list[Contract]:
        """The contracts between this family's slots; families override this, not :meth:`contracts`."""
        return []

    def declared_flow(self, model: nn.Module) -> list[tuple[str, str]]:
        """Static data-flow edges ``(producer, consumer)`` between the family's slots."""
        return []

    def flow(self, model: nn.Module) -> list[tuple[str, str]]:
        """The declared flow restricted to the slots present in ``model``.

        Where a slot is absent, its producers are connected to its consumers, so that an
        opaque ``backbone`` still feeds the heads.
        """
        present = {s.path for s in self.slots(model)}
        edges = self.declared_flow(model)
        out: list[tuple[str, str]] = []

        def targets(node: str, seen: frozenset[str]) -> list[str]:
            if node in present:
                return [node]
            found: list[str] = []
            for a, b in edges:
                if a == node and b not in seen:
                    found += targets(b, seen | {b})
            return found

        for a, b in edges:
            if a not in present:
                continue
            for t in targets(b, frozenset({b})):
                if (a, t) not in out and a != t:
                    out.append((a, t))
        return out

    def signatures(self, model: nn.Module, path: str) -> tuple[SlotSignature | None, SlotSignature | None]:
        """Static (input, output) signature of a slot; families override ambiguous ones.

        Multi-scale modules get one width per feature map: an ``IntermediateLayerGetter``
        body outputs the width of each returned layer, an FPN takes one per inner block.
        """
        module = paths.get(model, path)
        in_sig: SlotSignature | None = input_signature(module)
        out_sig: SlotSignature | None = output_signature(module)
        if isinstance(module, IntermediateLayerGetter):
            widths = []
            for name, child in module.named_children():
                if name in module.return_layers:
                    sig = output_signature(child)
                    widths.append(sig.size if sig is not None else 0)
            out_sig = MultiSignature("channels", tuple(widths), "return_layers")
        elif isinstance(module, FeaturePyramidNetwork):
            ins = [input_signature(b) for b in module.inner_blocks]
            in_sig = MultiSignature("channels", tuple(s.size if s is not None else 0 for s in ins), "inner_blocks")
            out_sig = output_signature(module.layer_blocks[0]) if len(module.layer_blocks) else None
        return in_sig, out_sig

    def features(self, ctx: Context) -> Features | None:
        """The backbone's feature maps, when the family has a backbone."""
        return None

    # ----------------------------------------------------------------------- inputs

    def synthetic_batch(
        self, model: nn.Module, batch_size: int, image_size: int, generator: torch.Generator, device: torch.device
    ) -> SyntheticBatch:
        """A random batch that fits the family (images drawn from ``generator``, a CPU generator)."""
        return SyntheticBatch(torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(device), None)

    def probe_inputs(self, model: nn.Module, image_size: int) -> tuple[Any, ...] | None:
        """Meta-device positional inputs for the whole-model probe (``surgery.probe``).

        A model no family knows is fed what its first Conv, Linear or Embedding layer reads:
        ``2×C×S×S`` for a 2-d conv (``2×C×S`` for 1-d, ``2×C×8×S×S`` for 3-d), ``2×F`` for a
        linear layer, ``2×16`` token ids for an embedding. None when there is no such layer.
        """
        for _, m in model.named_modules():
            weight = getattr(m, "weight", None)
            if not isinstance(weight, Tensor):
                continue
            scripted = getattr(m, "original_name", None) if isinstance(m, torch.jit.ScriptModule) else None
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or scripted in ("Conv1d", "Conv2d", "Conv3d"):
                # by the weight's rank, not type(m): a parametrized conv (weight norm) is a subclass made at run time
                spatial = {3: (image_size,), 4: (image_size, image_size), 5: (8, image_size, image_size)}[weight.dim()]
                return (meta_like((PROBE_BATCH, int(weight.shape[1]) * int(m.groups), *spatial)),)
            if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                spatial = (image_size // 8,) * (weight.dim() - 2)
                return (meta_like((PROBE_BATCH, int(weight.shape[0]), *spatial)),)
            if isinstance(m, nn.Linear) or scripted == "Linear":
                return (meta_like((PROBE_BATCH, int(weight.shape[1]))),)
            if isinstance(m, nn.Embedding):
                return (meta_like((PROBE_BATCH, 16), dtype=torch.long),)
        return None

    def split_inputs(self, inputs: Any) -> tuple[Any, Any]:
        """``(images, targets)`` of what a user passed to ``trace``; targets None when there are none.

        Raises:
            ValueError: The inputs do not have the form the family's forward takes.
        """
        if isinstance(inputs, SyntheticBatch):
            return inputs.images, None
        return inputs, None

    def train_targets(self, model: nn.Module, images: Any, generator: torch.Generator, device: torch.device) -> Any:
        """Targets for a train pass over user-given ``images`` (None when the family needs none)."""
        return None

    def call(self, model: nn.Module, images: Any, targets: Any, train: bool) -> Any:
        """Run ``model`` on ``images`` (and ``targets`` in train mode, where the family takes them)."""
        if isinstance(images, Mapping):
            return model(**images)
        if isinstance(images, tuple):
            return model(*images)
        return model(images)

    def fit_inputs(self, model: nn.Module, image_sizes: Sequence[tuple[int, int]]) -> bool:
        """Shrink what would enlarge images of these ``(height, width)`` sizes inside the model
        (a detection transform's sizes).

        Call it only inside :func:`surgery._state.preserved`, which puts the sizes back.

        Returns:
            True when something was changed.
        """
        return False

    # ----------------------------------------------------------------------- the train step

    def loss_keys(self, model: nn.Module) -> tuple[str, ...]:
        """The loss keys a train step of ``model`` must return (empty when the family has none)."""
        return ()

    def loss_slots(self, model: nn.Module) -> dict[str, str]:
        """``{loss key: slot that produces it}``, to name the module behind a bad loss."""
        return {}

    def train_losses(self, model: nn.Module, output: Any, targets: Any) -> dict[str, Tensor] | str | None:
        """The loss tensors of a train-mode ``output``.

        Returns:
            ``{name: loss}``; a message saying why ``output`` is not what the family returns;
            or None when the family has no loss of its own, so the caller uses its generic one.
        """
        return None

    # ----------------------------------------------------------------------- the eval pass

    def check_eval_output(self, model: nn.Module, output: Any, images: Any, label: str) -> list[Finding]:
        """Findings about an eval-mode ``output`` for ``images`` (``label`` names the pass in messages)."""
        if all_finite(output):
            return []
        return [Finding("error", "non-finite", (), f"{label} returned NaN/Inf values", None)]

    @contextmanager
    def exercised(self, model: nn.Module) -> Iterator[None]:
        """A block in which every head runs, even with random weights (detection lowers its
        score thresholds); everything is put back afterwards."""
        yield

    def unexercised_reason(self, model: nn.Module, output: Any, exercised: bool) -> str | None:
        """Why an eval-mode ``output`` left heads without work, in words that follow "the eval
        pass", e.g. ``"returned 0 detections for 2 images"``; None when the family cannot tell.

        Args:
            model: The model.
            output: What the eval forward returned.
            exercised: True when the pass ran inside :meth:`exercised`.
        """
        return None

    # ----------------------------------------------------------------------- classes

    def num_classes(self, model: nn.Module) -> int | None:
        """The number of classes the model predicts (background included where the family has
        one), read from its predictor; None when the family does not know it."""
        return None

    def class_layers(self, model: nn.Module) -> tuple[list[ClassLayer], list[AttrUpdate]]:
        """The class-dependent layers and the attributes that store the class count.

        Raises:
            ValueError: The family has none, or a class slot holds a module whose layout is unknown.
        """
        raise ValueError(
            f"set_num_classes() does not know the class-dependent layers of {type(model).__name__} "
            f"({self.name} family); replace its classifier yourself with surgery.replace()"
        )

    def keypoint_layers(self, model: nn.Module) -> tuple[list[ClassLayer], list[AttrUpdate]]:
        """The keypoint-dependent layers (one output channel per keypoint, in ``old_classes``)
        and the attributes that store the keypoint count.

        Raises:
            ValueError: The model predicts no keypoints, or its keypoint slot holds a module
                whose layout is unknown.
        """
        raise ValueError(
            f"set_num_keypoints() changes models that predict keypoints (Keypoint R-CNN); {type(model).__name__} "
            f"({self.name} family) predicts none"
        )

    # ----------------------------------------------------------------------- adapt

    def adapt_rule(self, model: nn.Module, path: str) -> AdaptRule:
        """The rule ``adapt`` follows after ``path`` changed.

        Raises:
            ValueError: The family has no rule for ``path``.
        """
        raise ValueError(
            f"adapt knows no rule of the {self.name} family for {path!r}: {path!r} of {type(model).__name__} has no such rule. "
            "Rebuild its consumers yourself inside `with surgery.edit(model) as e:` and the whole change is checked once at the end"
        )

    def backbone_plan(self, model: nn.Module, path: str, feats: Features) -> BackbonePlan:
        """What to rebuild so that the rest of ``model`` fits the backbone at ``path``, which
        produces ``feats`` (names, channels and probe shapes).

        Raises:
            ValueError: The family has no backbone rule, or the backbone cannot fit it (the
                message says what would).
        """
        raise ValueError(
            f"adapt knows no backbone rule of the {self.name} family: {path!r} of {type(model).__name__} has no such rule. "
            "Rebuild its consumers yourself inside `with surgery.edit(model) as e:` and the whole change is checked once at the end"
        )

    def backbone_probe_size(self, model: nn.Module) -> int:
        """Side of the square image a new backbone is probed with (a multiple of 128 by default;
        a family with a fixed input size returns that)."""
        return 512

    def slot_config(self, module: nn.Module) -> str | None:
        """The configuration of a slot's module that its signature does not show (anchor sizes
        and ratios per level, a pooler's maps and output size), or None when there is none."""
        return None

    def consumers(self, model: nn.Module, path: str) -> list[str]:
        """The slots fed by ``path`` that a check after replacing ``path`` should cover."""
        return []

    def rebuild_consumer(self, module: nn.Module, width: int) -> tuple[nn.Module, str, str] | None:
        """A module like the consumer ``module`` that takes ``width``: ``(module, old text, new text)``,
        or None when the family does not know how to rebuild it."""
        return None

    def rebuild_note(self, consumer: str, module: nn.Module, width: int) -> str:
        """Why a consumer was left as it is, when :meth:`rebuild_consumer` could not rebuild it."""
        return f"{consumer} is a {type(module).__name__}, which adapt cannot rebuild; rebuild it to take {width}"

    def consumed_width(self, module: nn.Module) -> int | None:
        """The width a consumer slot takes now, read from its first layer."""
        return None

    # ----------------------------------------------------------------------- freezing

    def backbone_body(self, model: nn.Module) -> tuple[str, nn.Module]:
        """``(path, module)`` of the backbone body that ``freeze_backbone_layers`` works on:
        ``backbone.body`` (torchvision's ``BackboneWithFPN``) or ``body``.

        Raises:
            ValueError: The model has no backbone body.
        """
        for path in ("backbone.body", "body"):
            if paths.exists(model, path):
                return path, paths.get(model, path)
        raise ValueError(
            f"freeze_backbone_layers() works on models with a 'backbone.body' (torchvision's BackboneWithFPN); "
            f"{type(model).__name__} has none"
        )

    # ----------------------------------------------------------------------- drawing

    def flow_label(self, model: nn.Module, src: str, dst: str) -> str | None:
        """What flows along a static edge when it is not a feature map (``"proposals"``,
        ``"anchors"``, ...); None for a feature map, whose width the renderer reads."""
        return None

    def carries_features(self, model: nn.Module, path: str) -> bool:
        """False for slots whose output is not a feature map (boxes, anchors, proposals)."""
        return True

    def cluster_of(self, path: str) -> str | None:
        """The group a slot is drawn in: the first segment of a dotted path, None for a top-level slot."""
        head, _, rest = path.partition(".")
        return head if rest else None
