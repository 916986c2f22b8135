"""What torchvision's classifiers share, image and video alike: a body that turns the input into
features, a head whose last layer scores the classes, cross-entropy on the logits, and the
one contract between them (the head's layers take what reaches them).

A family file (:mod:`.classification`, :mod:`.video`) lists one :class:`Arch` per torchvision
model class: where its head and its class layer are, how torchvision initialises that layer,
which input sizes its forward accepts. :class:`ClassifierAnatomy` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from surgery import paths
from surgery.anatomy._base import PROBE_BATCH, Anatomy, AttrUpdate, ClassLayer, Context, Contract, RowLayer, Slot, SyntheticBatch
from surgery.findings import Finding
from surgery.signature import meta_like

__all__ = ["AUX_WEIGHT", "Arch", "ClassifierAnatomy", "HEAD_CONTRACT"]

#: Weight of an auxiliary classifier's loss (GoogLeNet, Inception v3) next to the main one.
AUX_WEIGHT = 0.4

#: Name of the contract between the body and the head.
HEAD_CONTRACT = "body → head features"

_LOSS = "loss_classifier"
_AUX_LOSS = "loss_aux"
_Init = Callable[[RowLayer], None]
_CLASS_LAYER = (nn.Linear, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Arch:
    """One torchvision classifier class and where its parts are.

    Attributes:
        kind: The model class; its subclasses (the quantizable variants) match too.
        head: The head slot (``"fc"``, ``"classifier"``, ``"heads"``, ``"head"``).
        logits: The layer that scores the classes, e.g. ``"classifier.6"``.
        init: Initialises a rebuilt ``logits`` layer as the model's own ``__init__`` does.
        init_name: What ``init`` does, for messages.
        aux: ``{aux head slot: its class layer}`` for auxiliary classifiers (train mode only).
        aux_init: Initialises a rebuilt auxiliary class layer (``init`` when None).
        aux_init_name: What ``aux_init`` does.
        min_size: The smallest image side its forward accepts.
        fixed_size: Reads, from a built model, the one image side it accepts (ViT's
            ``image_size``); None when any side from ``min_size`` up works.
        frames: Frames of a video input (0 for images).
        fixed_frames: Reads, from a built model, the one frame count it accepts.
    """

    kind: type[nn.Module]
    head: str
    logits: str
    init: _Init
    init_name: str
    aux: tuple[tuple[str, str], ...] = ()
    aux_init: _Init | None = None
    aux_init_name: str = ""
    min_size: int = 32
    fixed_size: Callable[[nn.Module], int | None] | None = None
    frames: int = 0
    fixed_frames: Callable[[nn.Module], int | None] | None = None


class _Stop(Exception):
    """Ends the head probe early, once a layer of the head was seen receiving the wrong width."""


@dataclass
class _Seen:
    """A head layer as the probe saw it: the width it received and the module that produced it."""

    width: int
    producer: str | None


def _width(layer: nn.Module, value: Any) -> int | None:
    """The width ``layer`` reads from its first input: the last dim for a linear layer, dim 1 for a conv."""
    if not isinstance(value, Tensor) or value.dim() < 2:
        return None
    return int(value.shape[-1] if isinstance(layer, nn.Linear) else value.shape[1])


class ClassifierAnatomy(Anatomy):
    """A torchvision classifier: ``model(images)`` returns ``(B, num_classes)`` logits.

    Subclasses set :attr:`archs`.
    """

    #: The classes this family knows, most specific first.
    archs: ClassVar[tuple[Arch, ...]] = ()
    #: Words for the input in slot roles and messages.
    input_word: ClassVar[str] = "image"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return any(isinstance(model, a.kind) for a in cls.archs)

    def arch(self, model: nn.Module) -> Arch:
        """The :class:`Arch` of ``model``.

        Raises:
            ValueError: ``model`` is none of the family's classes.
        """
        for a in self.archs:
            if isinstance(model, a.kind):
                return a
        known = ", ".join(a.kind.__name__ for a in self.archs)
        raise ValueError(f"the {self.name} family knows {known}; {type(model).__name__} is none of these")

    # ----------------------------------------------------------------------- slots

    def _aux_on(self, model: nn.Module) -> bool:
        """True when the model's auxiliary classifiers run in train mode."""
        arch = self.arch(model)
        return bool(arch.aux) and bool(getattr(model, "aux_logits", True)) and any(paths.exists(model, s) for s, _ in arch.aux)

    def body_paths(self, model: nn.Module) -> list[str]:
        """The top-level children with parameters that are neither the head nor an aux head, in order."""
        arch = self.arch(model)
        skip = {arch.head.partition(".")[0], *(s.partition(".")[0] for s, _ in arch.aux)}
        return [name for name, child in model.named_children()
                if name not in skip and any(True for _ in child.parameters())]

    def declared_slots(self, model: nn.Module) -> list[Slot]:
        arch = self.arch(model)
        body = self.body_paths(model)
        slots = []
        for i, path in enumerate(body):
            source = self.input_word if i == 0 else "features"
            target = "features for the head" if i == len(body) - 1 else "features"
            slots.append(Slot(path, f"body ({i + 1} of {len(body)}): {source} → {target}",
                              "a module with the same input and output shapes"))
        for aux, layer in arch.aux:
            slots.append(Slot(aux, f"auxiliary classifier (train mode only): features → class logits ({layer})",
                              "a module returning (B, num_classes) logits", optional=True))
        slots.append(Slot(arch.head, f"head: features → class logits ({arch.logits})",
                          "a module returning (B, num_classes) logits"))
        return slots

    def declared_flow(self, model: nn.Module) -> list[tuple[str, str]]:
        arch = self.arch(model)
        body = self.body_paths(model)
        edges = list(zip(body, body[1:], strict=False))
        if body:
            edges.append((body[-1], arch.head))
        return edges

    def cluster_of(self, path: str) -> str | None:
        return None

    # ----------------------------------------------------------------------- the contract

    def family_contracts(self, model: nn.Module) -> list[Contract]:
        arch = self.arch(model)
        heads = (arch.head, *(s for s, _ in arch.aux if paths.exists(model, s)))
        body = self.body_paths(model)
        return [Contract(HEAD_CONTRACT, (*body[-1:], arch.head), self._head_findings, covers=heads)]

    def _head_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The linear and conv layers of the head (and of the aux heads that run), in order."""
        arch = self.arch(model)
        heads = [arch.head, *(s for s, _ in arch.aux if paths.exists(model, s))] if self._aux_on(model) else [arch.head]
        found: list[tuple[str, nn.Module]] = []
        for head in heads:
            root = paths.get(model, head)
            for name, m in root.named_modules():
                if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    found.append((paths.join(head, name), m))
        return found

    def _slot_of(self, model: nn.Module, leaf: str | None) -> str | None:
        """The body slot holding ``leaf``, or ``leaf`` itself when it lies in a head."""
        if leaf is None:
            return None
        for path in self.body_paths(model):
            if leaf == path or leaf.startswith(path + "."):
                return path
        return leaf

    def _head_findings(self, ctx: Context) -> Iterator[Finding]:
        """The whole forward on meta tensors (shared with ``check``'s whole-model probe): a
        head layer that receives another width than its weight takes is the finding. Models
        whose aux heads run only in train mode are probed in train mode."""
        model = ctx.model
        heads = [path for path, _ in self._head_layers(model)]
        probe = ctx.model_probe(self, train=self._aux_on(model))
        found = probe.finding
        if found is not None and found.code == "channel-mismatch" and probe.raised_in in heads:
            yield found
        if probe.status == "ran" and not self._aux_on(model):  # a train-mode output holds the aux logits too
            problem = self._output_problem(model, probe.output, PROBE_BATCH)
            if problem is not None:
                arch = self.arch(model)
                yield Finding("error", problem[0], (arch.head,), f"the model, run whole on meta, {problem[1]}",
                              f"make {arch.head} return a tensor of logits of shape (B, num_classes)")

    # ----------------------------------------------------------------------- inputs

    def input_size(self, model: nn.Module, image_size: int) -> int:
        """The image side to feed ``model`` when ``image_size`` is asked for: the model's one side
        when it takes only one, else at least its minimum."""
        arch = self.arch(model)
        fixed = arch.fixed_size(model) if arch.fixed_size is not None else None
        return fixed if fixed is not None else max(image_size, arch.min_size)

    def input_shape(self, model: nn.Module, batch_size: int, image_size: int) -> tuple[int, ...]:
        """``(B, 3, S, S)`` for images, ``(B, 3, T, S, S)`` for video."""
        arch = self.arch(model)
        side = self.input_size(model, image_size)
        if not arch.frames:
            return (batch_size, 3, side, side)
        frames = arch.fixed_frames(model) if arch.fixed_frames is not None else None
        return (batch_size, 3, frames or arch.frames, side, side)

    def _labels(self, model: nn.Module, batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor:
        classes = self.num_classes(model) or 1
        return torch.randint(0, classes, (batch_size,), generator=generator, dtype=torch.int64).to(device)

    def synthetic_batch(
        self, model: nn.Module, batch_size: int, image_size: int, generator: torch.Generator, device: torch.device
    ) -> SyntheticBatch:
        """Random inputs of :meth:`input_shape` and integer class labels in ``[0, num_classes)``."""
        images = torch.rand(self.input_shape(model, batch_size, image_size), generator=generator).to(device)
        return SyntheticBatch(images, self._labels(model, batch_size, generator, device))

    def probe_inputs(self, model: nn.Module, image_size: int) -> tuple[Any, ...] | None:
        return (meta_like(self.input_shape(model, PROBE_BATCH, image_size)),)

    def split_inputs(self, inputs: Any) -> tuple[Any, Any]:
        if isinstance(inputs, SyntheticBatch):
            return inputs.images, inputs.targets
        return inputs, None

    def train_targets(self, model: nn.Module, images: Any, generator: torch.Generator, device: torch.device) -> Any:
        batch = int(images.shape[0]) if isinstance(images, Tensor) and images.dim() > 0 else 1
        return self._labels(model, batch, generator, device)

    def call(self, model: nn.Module, images: Any, targets: Any, train: bool) -> Any:
        return model(images)

    # ----------------------------------------------------------------------- the train step

    def loss_keys(self, model: nn.Module) -> tuple[str, ...]:
        return (_LOSS, _AUX_LOSS) if self._aux_on(model) else (_LOSS,)

    def loss_slots(self, model: nn.Module) -> dict[str, str]:
        arch = self.arch(model)
        slots = {_LOSS: arch.head}
        if arch.aux:
            slots[_AUX_LOSS] = arch.aux[0][0]
        return slots

    def train_losses(self, model: nn.Module, output: Any, targets: Any) -> dict[str, Tensor] | str | None:
        """Cross-entropy of the logits against ``targets``; with auxiliary logits (GoogLeNet and
        Inception v3 in train mode return a named tuple), ``loss_aux`` is ``AUX_WEIGHT`` × the sum
        of their cross-entropies."""
        if not isinstance(targets, Tensor):
            return f"was given targets of type {type(targets).__name__}; a classifier trains on a tensor of class indices"
        aux: list[Tensor] = []
        if isinstance(output, tuple) and hasattr(output, "_fields") and "logits" in output._fields:
            aux = [v for k, v in zip(output._fields, output, strict=True) if k.startswith("aux") and isinstance(v, Tensor)]
            output = output[output._fields.index("logits")]
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != targets.shape[0]:
            got = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
            return f"returned {got}; a classifier must return logits of shape ({targets.shape[0]}, num_classes)"
        losses = {_LOSS: F.cross_entropy(output.float(), targets)}
        if aux:
            losses[_AUX_LOSS] = AUX_WEIGHT * sum((F.cross_entropy(a.float(), targets) for a in aux), torch.zeros((), device=output.device))
        return losses

    # ----------------------------------------------------------------------- the eval pass

    def _output_problem(self, model: nn.Module, output: Any, batch: int | None) -> tuple[str, str] | None:
        """``(code, what is wrong)`` when ``output`` is not ``(B, num_classes)`` logits; works on meta tensors."""
        arch = self.arch(model)
        classes = self.num_classes(model)
        want = f"({batch if batch is not None else 'B'}, {classes if classes is not None else 'num_classes'})"
        if not isinstance(output, Tensor):
            return "shape-error", f"returned {type(output).__name__}; expected logits of shape {want}"
        if output.dim() != 2 or (batch is not None and output.shape[0] != batch) or (classes is not None and output.shape[1] != classes):
            code = "num-classes-mismatch" if output.dim() == 2 and output.shape[0] == batch else "shape-error"
            return code, (f"returned logits of shape {tuple(output.shape)}; expected {want} "
                          f"(num_classes={classes}, read from {arch.logits})")
        return None

    def check_eval_output(self, model: nn.Module, output: Any, images: Any, label: str) -> list[Finding]:
        """Logits of shape ``(B, num_classes)``, all finite."""
        arch = self.arch(model)
        head = (arch.head,) if paths.exists(model, arch.head) else ()
        batch = int(images.shape[0]) if isinstance(images, Tensor) else None
        problem = self._output_problem(model, output, batch)
        if problem is not None:
            return [Finding("error", problem[0], head, f"{label} {problem[1]}", None)]
        if not bool(torch.isfinite(output).all()):
            return [Finding("error", "non-finite", head, f"{label} returned NaN/Inf logits", None)]
        return []

    # ----------------------------------------------------------------------- classes

    def num_classes(self, model: nn.Module) -> int | None:
        arch = self.arch(model)
        layer = paths.get(model, arch.logits) if paths.exists(model, arch.logits) else None
        weight = getattr(layer, "weight", None)
        if isinstance(weight, Tensor) and weight.dim() >= 2 and not isinstance(weight, nn.parameter.UninitializedParameter):
            return int(weight.shape[0])  # the weight, not out_features, which goes stale when weights are sliced
        value = getattr(layer, "out_features", getattr(layer, "out_channels", None))
        return int(value) if isinstance(value, int) else None

    def class_layers(self, model: nn.Module) -> tuple[list[ClassLayer], list[AttrUpdate]]:
        """The head's class layer, the aux heads' class layers where present, and the model's
        ``num_classes`` attribute where it has one."""
        arch = self.arch(model)
        wanted = [(arch.head, arch.logits, arch.init, arch.init_name)]
        for slot, layer in arch.aux:
            if paths.exists(model, slot):
                wanted.append((slot, layer, arch.aux_init or arch.init, arch.aux_init_name or arch.init_name))
        layers = []
        for slot, path, init, init_name in wanted:
            module = paths.get(model, path) if paths.exists(model, path) else None
            if not isinstance(module, _CLASS_LAYER):
                what = f"a {type(module).__name__}" if module is not None else "absent"
                raise ValueError(
                    f"set_num_classes() rebuilds {path}, the layer of {type(model).__name__} that scores the classes, but it is "
                    f"{what}, not an nn.Linear or conv; replace the {slot} slot yourself with surgery.replace() "
                    "with a module built for the new class count"
                )
            classes = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            layers.append(ClassLayer(path, slot, 1, 1, int(classes), init, init_name))
        attrs = [AttrUpdate("", "num_classes")] if isinstance(getattr(model, "num_classes", None), int) else []
        return layers, attrs
