"""``surgery.detection_backbone``: a detection backbone (feature maps, optionally with an FPN)
from any torchvision classification model or a user's module.

The stages of the source network are found with one meta-device probe: every module's output
is watched through forward hooks on a ``2×3×256×320`` meta batch (no weights are read or
allocated), and the last module to finish at each stride 4, 8, 16 and 32 ends a stage. Those
module paths become the return nodes of
:func:`torchvision.models.feature_extraction.create_feature_extractor`; maps that come out
channels-last (Swin's ``N×H×W×C``) are permuted to ``N×C×H×W``; a
:class:`~torchvision.ops.FeaturePyramidNetwork` (with a max-pool ``"pool"`` level, as in
torchvision's detection backbones) goes on top when asked.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from surgery._util import check_int, first_line
from surgery.signature import meta_like, meta_probe, shapes_of

__all__ = ["DetectionBackbone", "detection_backbone"]

#: The probe image: height and width differ, so a map's layout (N×C×H×W or N×H×W×C) reads unambiguously.
_PROBE_H, _PROBE_W = 256, 320
#: The strides whose last module ends a stage (the stem's stride 2 only counts for freezing).
_STAGE_STRIDES = (4, 8, 16, 32)


class DetectionBackbone(nn.Module):
    """Feature maps of a network's stages, optionally through a feature pyramid.

    Built by :func:`detection_backbone`. ``forward(images)`` returns an ``OrderedDict`` of
    ``N×C×H×W`` maps: ``"0"``, ``"1"``, … (and ``"pool"`` with an FPN).

    Attributes:
        body: The feature extractor (an ``fx.GraphModule`` returning ``{"0": map, ...}``).
        fpn: The feature pyramid, or None.
        proj: One 1×1 conv per map when there is no FPN and ``out_channels`` was given, else None.
        channels_last: Names of the body's maps that come out ``N×H×W×C`` and are permuted.
        out_channels: Channels of every returned map (None when the maps differ).
    """

    def __init__(self, body: nn.Module, fpn: nn.Module | None, proj: nn.ModuleDict | None,
                 channels_last: Sequence[str], out_channels: int | None) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.proj = proj
        self.channels_last = list(channels_last)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.body(x)
        maps: OrderedDict[str, Tensor] = OrderedDict()
        for name, value in feats.items():
            maps[name] = value.permute(0, 3, 1, 2).contiguous() if name in self.channels_last else value
        if self.fpn is not None:
            return self.fpn(maps)  # type: ignore[no-any-return]
        if self.proj is not None:
            return OrderedDict((name, self.proj[name](value)) for name, value in maps.items())
        return maps


@dataclass(frozen=True)
class _Output:
    """One module's output in the probe: when it finished, its stride, layout and channels."""

    path: str
    end: int
    stride: int
    channels_last: bool
    channels: int


def _stride(shape: tuple[int, ...]) -> tuple[int, bool] | None:
    """(stride, channels_last) of a 4-d map of the probe image, None for anything else."""
    if len(shape) != 4:
        return None
    for (h, w), last in (((shape[2], shape[3]), False), ((shape[1], shape[2]), True)):
        if h > 0 and _PROBE_H % h == 0 and _PROBE_W % w == 0 and _PROBE_H // h == _PROBE_W // w:
            return _PROBE_H // h, last
    return None


def _watch(model: nn.Module, what: str) -> tuple[list[_Output], dict[str, int]]:
    """Meta-probe ``model`` on an image batch with hooks on every module.

    Returns:
        The 4-d outputs in the order their modules finished, and for every module with its
        own parameters the event number at which it started.

    Raises:
        ValueError: The model raised on the probe.
    """
    counter = itertools.count()
    outputs: list[_Output] = []
    starts: dict[str, int] = {}
    handles = []
    for path, module in model.named_modules():
        if not path:
            continue

        def pre(_m: nn.Module, _args: object, path: str = path) -> None:
            starts.setdefault(path, next(counter))

        def post(_m: nn.Module, _args: object, out: object, path: str = path) -> None:
            end = next(counter)
            if isinstance(out, Tensor):
                found = _stride(tuple(int(s) for s in out.shape))
                if found is not None:
                    channels = int(out.shape[3] if found[1] else out.shape[1])
                    outputs.append(_Output(path, end, found[0], found[1], channels))

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        probe = meta_probe(model, meta_like((2, 3, _PROBE_H, _PROBE_W)))
    finally:
        for h in handles:
            h.remove()
    if not probe.ok:
        where = f" in {probe.where}" if probe.where else ""
        raise ValueError(f"{what} raised on a 2×3×{_PROBE_H}×{_PROBE_W} image batch: {type(probe.error).__name__}{where}: "
                         f"{first_line(probe.error)}; detection_backbone() needs a network that takes an image batch")
    return outputs, starts


def _stage_ends(outputs: list[_Output]) -> dict[int, _Output]:
    """The module ending each stride's stage (stride 2 included, for freezing): among the
    shallowest modules (fewest path segments) with an output at that stride, the last to
    finish. Shallowest first, so that a stage container (``layer1``, ``features.3``) wins over
    a layer inside the next stage that still runs at the old stride before downsampling."""
    ends: dict[int, _Output] = {}
    for out in outputs:
        if out.stride not in (2, *_STAGE_STRIDES):
            continue
        best = ends.get(out.stride)
        depth, best_depth = out.path.count("."), best.path.count(".") if best is not None else None
        if best is None or best_depth is None or depth < best_depth or (depth == best_depth and out.end > best.end):
            ends[out.stride] = out
    return dict(sorted(ends.items()))


def _source(model_or_name: nn.Module | str) -> tuple[nn.Module, str]:
    if isinstance(model_or_name, str):
        try:
            builder = torchvision.models.get_model_builder(model_or_name)
        except ValueError as e:
            known = sorted(torchvision.models.list_models(module=torchvision.models))
            raise ValueError(f"model_or_name {model_or_name!r} is not a torchvision classification model; "
                             f"known names include {', '.join(known[:12])}, …") from e
        return builder(weights=None), model_or_name
    if isinstance(model_or_name, nn.Module):
        return model_or_name, type(model_or_name).__name__
    raise TypeError(f"model_or_name must be a torchvision model name (str) or an nn.Module, got {type(model_or_name).__name__}")


def _freeze(model: nn.Module, trainable_layers: int, ends: dict[int, _Output], starts: dict[str, int]) -> None:
    """torchvision's ``trainable_layers``: only the last ``trainable_layers`` stages train."""
    bounds = [o.end for o in ends.values()]  # stage i ends at bounds[i]
    if trainable_layers >= len(bounds):
        return
    first_trained = bounds[len(bounds) - trainable_layers - 1] if trainable_layers else max(bounds[-1], *starts.values()) + 1
    for path, module in model.named_modules():
        start = starts.get(path)
        if start is None or start >= first_trained:
            continue
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)


def detection_backbone(
    model_or_name: nn.Module | str,
    *,
    layers: Sequence[str] | int | None = None,
    fpn: bool = True,
    out_channels: int | None = 256,
    trainable_layers: int | None = None,
) -> DetectionBackbone:
    """A detection backbone built from a classification network or your own module.

    Example:
        >>> backbone = surgery.detection_backbone("convnext_tiny")       # 5 maps × 256 channels
        >>> surgery.replace(model, "backbone", backbone, adapt=True)

    Args:
        model_or_name: A torchvision classification model's name (``"resnet50"``,
            ``"mobilenet_v3_large"``, ``"convnext_tiny"``, ``"swin_t"``, …; built with
            ``weights=None``) or a module (used as it is, not copied).
        layers: Which stage outputs to return: None for every stage at strides 4, 8, 16 and 32
            with an FPN and the last stage alone without one; an int ``n`` for the last ``n``
            stages; or a list of module paths (``create_feature_extractor`` return nodes, e.g.
            ``["layer2", "layer4"]``).
        fpn: Put a ``FeaturePyramidNetwork`` with ``out_channels`` channels and a max-pool
            ``"pool"`` level on the maps.
        out_channels: The FPN's channels. Without an FPN: a 1×1 conv per map to this many
            channels, or None to return the maps as the network makes them.
        trainable_layers: How many stages, counted from the last, keep ``requires_grad``
            (torchvision's meaning: the stem counts as a stage, so ResNet has 5 and 5 trains
            everything, 0 freezes the whole body). None trains everything. The FPN always trains.

    Returns:
        A :class:`DetectionBackbone` with ``out_channels`` set.

    Raises:
        TypeError: ``model_or_name`` is neither a name nor a module.
        ValueError: An unknown name; a module that raises on an image batch or produces no
            feature maps; a bad ``layers``, ``out_channels`` or ``trainable_layers`` value; or
            a network ``create_feature_extractor`` cannot trace.
    """
    source, label = _source(model_or_name)
    if out_channels is not None or fpn:
        check_int("out_channels", out_channels, minimum=1)
    outputs, starts = _watch(source, label)
    ends = _stage_ends(outputs)
    stages = [o for s, o in ends.items() if s in _STAGE_STRIDES]
    if not stages:
        raise ValueError(f"{label} produces no feature maps: none of its modules outputs an N×C×H×W map at stride "
                         f"{', '.join(map(str, _STAGE_STRIDES))} of a {_PROBE_H}×{_PROBE_W} image, so it has nothing a "
                         "detector could use; pass a convolutional network")
    by_path = {o.path: o for o in outputs}
    if layers is None:
        chosen = stages if fpn else stages[-1:]
    elif isinstance(layers, int) and not isinstance(layers, bool):
        check_int("layers", layers, minimum=1, maximum=len(stages))
        chosen = stages[-layers:]
    elif isinstance(layers, (list, tuple)) and layers and all(isinstance(n, str) for n in layers):
        unknown = [n for n in layers if n not in by_path]
        if unknown:
            raise ValueError(f"layers {unknown} of {label} output no N×C×H×W map; stage outputs are "
                             f"{[o.path for o in stages]}")
        latest = {o.path: o for o in outputs}  # the last output a module made
        chosen = [latest[n] for n in layers]
    else:
        raise ValueError(f"layers must be None, an int or a list of module paths such as ['layer2', 'layer4'], got {layers!r}")
    if trainable_layers is not None:
        check_int("trainable_layers", trainable_layers, minimum=0, maximum=len(ends))
        _freeze(source, trainable_layers, ends, starts)
    nodes = {o.path: str(i) for i, o in enumerate(chosen)}
    try:
        body = create_feature_extractor(source, return_nodes=nodes)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds of errors on untraceable code
        raise ValueError(f"create_feature_extractor cannot trace {label} ({type(e).__name__}: {first_line(e)}); "
                         "make its forward traceable by torch.fx or pass a module that returns its feature maps") from e
    channels = [o.channels for o in chosen]
    last = [str(i) for i, o in enumerate(chosen) if o.channels_last]
    pyramid: nn.Module | None = None
    proj: nn.ModuleDict | None = None
    width: int | None
    if fpn:
        assert out_channels is not None  # checked above
        pyramid = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        width = out_channels
    elif out_channels is not None:
        proj = nn.ModuleDict({str(i): nn.Conv2d(c, out_channels, 1) for i, c in enumerate(channels)})
        width = out_channels
    else:
        width = channels[0] if len(set(channels)) == 1 else None
    backbone = DetectionBackbone(body, pyramid, proj, last, width)
    check = meta_probe(backbone, meta_like((2, 3, _PROBE_H, _PROBE_W)))
    if not check.ok:
        raise ValueError(f"the backbone built from {label} raised on a meta image batch: {type(check.error).__name__}: "
                         f"{first_line(check.error)}")
    if not isinstance(check.output, dict) or not check.output:
        raise ValueError(f"the backbone built from {label} produced {shapes_of(check.output)}, not feature maps")
    return backbone

