"""Reading a detection backbone: which feature maps it produces, with how many channels."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.poolers import MultiScaleRoIAlign

from surgery import paths
from surgery._state import structure_key
from surgery._util import first_line
from surgery.anatomy._base import PROBE_BATCH, Context, Features, is_stock
from surgery.anatomy._feed import finding
from surgery.findings import Finding
from surgery.signature import input_signature, meta_like, meta_probe, out_width, output_signature, shapes_of

__all__ = [
    "backbone_features",
    "backbone_contracts_findings",
    "anchor_maps_findings",
    "FEATURES_KEY",
    "ProbedMaps",
    "seed_features",
    "PROBE_SIDE",
    "probe_maps",
    "map_strides",
    "STOCK_SIZES",
    "spread_sizes",
    "spread_ratios",
    "anchors_text",
    "anchor_generator_like",
    "pooler_like",
    "config_text",
    "first_layer_like",
    "kaiming_relu",
]

FEATURES_KEY = "features"

#: What an adapt saw of a backbone, by path: the module, its :func:`surgery._state.structure_key`
#: then, and the maps its probe returned (the check that ends the edit reads them while the key holds).
ProbedMaps = dict[str, tuple[nn.Module, tuple[Any, ...], Features]]


def seed_features(ctx: Context, seen: ProbedMaps) -> None:
    """Give ``ctx`` the maps an adapt already probed, for each backbone that is still the same
    module in the same structure: :func:`backbone_features` then reads them instead of probing again."""
    for path, (module, key, feats) in seen.items():
        if paths.find(ctx.model, path) is module and structure_key(module) == key:
            ctx.cache[f"{FEATURES_KEY}:{path}"] = feats


def _extra_names(extra: nn.Module | None) -> list[str] | None:
    if extra is None:
        return []
    if type(extra) is LastLevelMaxPool:
        return ["pool"]
    if type(extra) is LastLevelP6P7:
        return ["p6", "p7"]
    return None  # unknown extra block: needs a probe


def _static_fpn_features(backbone: nn.Module) -> Features | None:
    """Feature maps of a stock ``BackboneWithFPN``, read without running anything."""
    if not (isinstance(backbone, BackboneWithFPN) and type(backbone.body) is IntermediateLayerGetter):
        return None
    fpn = backbone.fpn
    if type(fpn) is not FeaturePyramidNetwork:
        return None
    extra = _extra_names(fpn.extra_blocks)
    if extra is None:
        return None
    body = backbone.body
    names = [body.return_layers[n] for n in body._modules if n in body.return_layers]
    widths = {w for block in fpn.layer_blocks if (w := _out(block)) is not None}
    if len(widths) != 1:
        return None
    (width,) = widths
    channels: dict[str, int | None]
    if isinstance(fpn.extra_blocks, LastLevelP6P7):
        p6, p7 = out_width(fpn.extra_blocks.p6), out_width(fpn.extra_blocks.p7)
        channels = {**dict.fromkeys(names, width), "p6": p6, "p7": p7}
    else:
        channels = dict.fromkeys(names + extra, width)
    return Features(names + extra, channels, "static")


def _out(module: nn.Module) -> int | None:
    sig = output_signature(module)
    return sig.size if sig is not None else None


def common_width(ctx: Context, path: str = "backbone") -> tuple[int | None, Finding | None]:
    """The channel count every map of the backbone shares (None when they differ or are
    unknown), or the ``shape-error`` of a backbone that raised on the probe."""
    feats = backbone_features(ctx, path)
    if isinstance(feats, Finding):
        return None, feats
    return feats.common_channels(), None


def backbone_features(ctx: Context, path: str = "backbone", image_size: int | None = None) -> Features | Finding:
    """The maps ``model.<path>`` produces, statically when it is a stock FPN backbone, else by a meta probe.

    Returns:
        :class:`Features`, or a ``shape-error`` :class:`Finding` when the probe raised.
    """
    key = f"{FEATURES_KEY}:{path}"
    if key in ctx.cache:
        return ctx.cache[key]  # type: ignore[no-any-return]
    backbone = ctx.get(path)
    result: Features | Finding | None = _static_fpn_features(backbone)
    if result is None:
        size = image_size or ctx.probe_image_size
        probe = ctx.probe(path, (PROBE_BATCH, 3, size, size))
        if probe.ok:
            out = probe.output
            if isinstance(out, torch.Tensor):
                out = {"0": out}
            if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
                result = Features(
                    [str(k) for k in out],
                    {str(k): int(v.shape[1]) for k, v in out.items()},
                    "probe",
                    {str(k): tuple(int(s) for s in v.shape) for k, v in out.items()},
                )
            elif isinstance(out, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in out):
                result = Features(
                    [str(i) for i in range(len(out))],
                    {str(i): int(v.shape[1]) for i, v in enumerate(out)},
                    "probe",
                    {str(i): tuple(int(s) for s in v.shape) for i, v in enumerate(out)},
                )
        elif not probe.inconclusive:
            where = paths.join(path, probe.where)
            result = finding(
                "error",
                "shape-error",
                (path,),
                f"{path} ({type(backbone).__name__}) raised on a {PROBE_BATCH}×3×{size}×{size} batch: "
                f"{type(probe.error).__name__} in {where}: {first_line(probe.error) if str(probe.error).strip() else ''}",
                None,
            )
        if result is None:
            result = Features([], {}, "unknown")
    ctx.cache[key] = result
    return result


def backbone_contracts_findings(ctx: Context, path: str = "backbone") -> Iterable[Finding]:
    """Body → FPN channels per map, and the ``out_channels`` attribute against the real maps."""
    backbone = ctx.get(path)
    if isinstance(backbone, BackboneWithFPN) and isinstance(backbone.body, IntermediateLayerGetter) and is_stock(backbone.fpn):
        body, fpn = backbone.body, backbone.fpn
        layers = [n for n in body._modules if n in body.return_layers]
        for i, layer in enumerate(layers):
            if i >= len(fpn.inner_blocks):
                break
            produced = _out(body._modules[layer])  # type: ignore[arg-type]
            sig = input_signature(fpn.inner_blocks[i])
            if produced is not None and sig is not None and sig.size != produced:
                yield finding(
                    "error",
                    "channel-mismatch",
                    (f"{path}.body", f"{path}.fpn"),
                    f"{path}.body.{layer} (feature map '{body.return_layers[layer]}') produces {produced} channels "
                    f"but {path}.fpn.inner_blocks.{i} expects {sig.size}",
                    f"model.{path}.fpn = FeaturePyramidNetwork({_body_widths(body)}, {_out(fpn.layer_blocks[0])}, "
                    f"extra_blocks=model.{path}.fpn.extra_blocks)",
                )
        if len(layers) != len(fpn.inner_blocks):
            yield finding(
                "error",
                "channel-mismatch",
                (f"{path}.body", f"{path}.fpn"),
                f"{path}.body returns {len(layers)} feature maps but {path}.fpn has {len(fpn.inner_blocks)} inner blocks",
                f"model.{path}.fpn = FeaturePyramidNetwork({_body_widths(body)}, {_out(fpn.layer_blocks[0])}, "
                f"extra_blocks=model.{path}.fpn.extra_blocks)",
            )
    feats = backbone_features(ctx, path)
    if isinstance(feats, Finding):
        yield feats
        return
    yield from _mixed_widths(ctx, path, feats)
    declared = getattr(backbone, "out_channels", None)
    actual = feats.common_channels()
    if isinstance(declared, int) and actual is not None and declared != actual:
        yield finding(
            "error",
            "channel-mismatch",
            (path,),
            f"{path}.out_channels says {declared} but its feature maps have {actual} channels; "
            "builders and heads that read out_channels will be sized wrongly",
            f"model.{path}.out_channels = {actual}",
        )


def _mixed_widths(ctx: Context, path: str, feats: Features) -> Iterable[Finding]:
    """A ``channel-mismatch`` when the maps differ in channels: the heads after a detection
    backbone run one set of convs over every map, so the first map with another count raises."""
    widths: list[tuple[str, int]] = [(n, w) for n in feats.names if (w := feats.channels.get(n)) is not None]
    counts: dict[int, int] = {}
    for _, w in widths:
        counts[w] = counts.get(w, 0) + 1
    if len(counts) < 2:
        return
    usual = max(counts, key=lambda w: (counts[w], w))
    odd = [n for n, w in widths if w != usual]
    listed = ", ".join(f"{n!r}: {w}" for n, w in widths)
    yield finding("error", "channel-mismatch", (path,),
                  f"{path} produces feature maps with different channel counts ({listed}); the heads after it run "
                  f"one set of convs over every map, so the forward raises at the first map whose count they do not take",
                  f"make {paths.expression(path, ctx.model)} produce {usual} channels on every map (maps {odd} differ), "
                  f"e.g. with surgery.detection_backbone(..., out_channels={usual})")


def _body_widths(body: nn.Module) -> list[int | None]:
    return_layers: dict[str, str] = body.return_layers  # type: ignore[assignment]
    return [_out(child) for n, child in body._modules.items() if n in return_layers and child is not None]


def anchor_maps_findings(ctx: Context, gen_path: str, sizes: list, ratios: list | None, feats: Features | Finding) -> Iterable[Finding]:
    """Sizes tuples vs aspect-ratio tuples vs the number of feature maps (shared with dense detectors)."""
    if ratios is not None and len(ratios) != len(sizes):
        yield finding("error", "anchor-mismatch", (gen_path,),
                      f"{gen_path} has {len(sizes)} sizes tuples but {len(ratios)} aspect_ratios tuples; they must pair up",
                      f"aspect_ratios=((0.5, 1.0, 2.0),) * {len(sizes)}")
    if isinstance(feats, Finding) or not feats.names:
        return
    n = len(feats.names)
    if len(sizes) != n:
        example = spread_sizes(sizes, n)
        first = tuple(ratios[0]) if ratios else (0.5, 1.0, 2.0)
        yield finding("error", "anchor-mismatch", ("backbone", gen_path),
                      f"backbone produces {n} feature maps {feats.names} but {gen_path} has {len(sizes)} sizes tuples; "
                      "it needs one per feature map",
                      f"model.{gen_path} = AnchorGenerator(sizes={example}, aspect_ratios=({first},) * {n})")


# --------------------------------------------------------------------------- backbone adapt

#: Side of the square meta image a new backbone is probed with: a multiple of 128, so that
#: every stride up to 128 divides it and a map's stride reads exactly.
PROBE_SIDE = 512


def probe_maps(module: nn.Module, what: str, image_size: int = PROBE_SIDE) -> Features:
    """The feature maps ``module`` produces on a ``PROBE_BATCH×3×S×S`` meta batch: names, channels, shapes.

    A dict (``OrderedDict``) of 4-d tensors keeps its keys; a list or tuple gets ``"0"``,
    ``"1"``, …; a single 4-d tensor is map ``"0"``.

    Args:
        module: The backbone.
        what: How to name it in messages, e.g. ``"the new backbone"``.
        image_size: Side of the probe image.

    Returns:
        :class:`Features` with ``source="probe"`` and one shape per map.

    Raises:
        ValueError: The module raised on the probe, or produced no 4-d feature maps.
    """
    # in the module's own mode: the shapes are the same, and switching modes would recompile a
    # feature extractor's graph (torchvision keeps one graph per mode)
    probe = meta_probe(module, meta_like((PROBE_BATCH, 3, image_size, image_size)))
    if not probe.ok:
        where = f" in {probe.where}" if probe.where else ""
        raise ValueError(
            f"{what} ({type(module).__name__}) raised on a {PROBE_BATCH}×3×{image_size}×{image_size} image batch: "
            f"{type(probe.error).__name__}{where}: {first_line(probe.error)}; a detection backbone takes an image batch "
            "and returns its feature maps"
        )
    out = probe.output
    maps: dict[str, Tensor] | None = None
    if isinstance(out, Tensor):
        maps = {"0": out}
    elif isinstance(out, dict) and out and all(isinstance(v, Tensor) for v in out.values()):
        maps = {str(k): v for k, v in out.items()}
    elif isinstance(out, (list, tuple)) and out and all(isinstance(v, Tensor) for v in out):
        maps = {str(i): v for i, v in enumerate(out)}
    if maps is None or not all(v.dim() == 4 for v in maps.values()):
        got = shapes_of(out)
        raise ValueError(
            f"{what} ({type(module).__name__}) produces no feature maps: on a {PROBE_BATCH}×3×{image_size}×{image_size} "
            f"batch it returned {got}, but a detection backbone must return an OrderedDict (or list) of N×C×H×W maps. "
            "Wrap it with surgery.detection_backbone(module) to get one"
        )
    return Features(list(maps), {k: int(v.shape[1]) for k, v in maps.items()}, "probe",
                    {k: tuple(int(s) for s in v.shape) for k, v in maps.items()})


def map_strides(feats: Features, image_size: int = PROBE_SIDE) -> dict[str, int]:
    """Each map's stride (image side / map side, rounded to a power of two), from probe shapes."""
    out: dict[str, int] = {}
    for name in feats.names:
        shape = feats.shapes.get(name)
        if shape is not None and shape[-1] > 0:
            out[name] = 2 ** round(math.log2(image_size / shape[-1]))
    return out


#: torchvision's anchor sizes for R-CNN: one per FPN level, 32 to 512.
STOCK_SIZES = (32, 64, 128, 256, 512)


def spread_sizes(old: Sequence[Sequence[int]], levels: int) -> tuple[tuple[int, ...], ...]:
    """Anchor sizes for ``levels`` feature maps, with every size of ``old`` kept.

    The rule:

    * as many levels as before: ``old`` unchanged;
    * two or more old levels, all with the same sizes (MobileNet's ``((32, 64, 128, 256, 512),) * 3``):
      that tuple on every level;
    * otherwise the sizes of all levels, sorted (joined by torchvision's stock sizes
      :data:`STOCK_SIZES` when there are fewer sizes than levels), are cut into ``levels`` runs of ``k =
      ceil(count / levels)`` sizes each, smallest first. When ``levels × k`` exceeds the count,
      geometric means are inserted into the widest gaps (largest ratio, the higher one on a
      tie) until it fits, so the range stays the same and each level gets the same number of
      sizes (a shared RPN / dense head needs one anchor count on every map).

    For the stock ``((32,), (64,), (128,), (256,), (512,))``: one map gives
    ``((32, 64, 128, 256, 512),)``, two give ``((32, 64, 128), (256, 362, 512))``, three
    ``((32, 64), (128, 256), (362, 512))`` and four ``((32, 64), (91, 128), (181, 256), (362, 512))``.

    Args:
        old: The current sizes, one tuple per level.
        levels: How many feature maps there are now (>= 1).

    Returns:
        One tuple of sizes per level.
    """
    tuples = [tuple(int(s) for s in level) for level in old]
    if len(tuples) == levels:
        return tuple(tuples)
    if len(tuples) > 1 and all(t == tuples[0] for t in tuples):
        return (tuples[0],) * levels
    flat = sorted({s for t in tuples for s in t})
    if len(flat) < levels:
        flat = sorted(set(flat) | set(STOCK_SIZES))
    if len(flat) <= 1:
        return (tuple(flat),) * levels
    per = math.ceil(len(flat) / levels)
    while len(flat) < per * levels:
        gaps = [(flat[i + 1] / flat[i], i) for i in range(len(flat) - 1)]
        ratio, i = max(gaps)
        middle = round(math.sqrt(flat[i] * flat[i + 1]))
        if ratio <= 1 or middle in (flat[i], flat[i + 1]):
            break
        flat.insert(i + 1, middle)
    while len(flat) < per * levels:  # sizes too close to split further: repeat the largest
        flat.append(flat[-1])
    return tuple(tuple(flat[i * per:(i + 1) * per]) for i in range(levels))


def spread_ratios(old: Sequence[Sequence[float]], levels: int) -> tuple[tuple[float, ...], ...]:
    """Aspect ratios for ``levels`` maps: ``old`` when the count is unchanged, else the first
    level's ratios on every level."""
    tuples = [tuple(float(r) for r in level) for level in old]
    if len(tuples) == levels:
        return tuple(tuples)
    return (tuples[0] if tuples else (0.5, 1.0, 2.0),) * levels


def anchors_text(sizes: Sequence[Sequence[int]], ratios: Sequence[Sequence[float]]) -> str:
    """``AnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2)``-style text, short."""
    level_ratios = {tuple(r) for r in ratios}
    ratio_text = f"({tuple(ratios[0])},) * {len(ratios)}" if len(level_ratios) == 1 and ratios else str(tuple(tuple(r) for r in ratios))
    return f"AnchorGenerator({tuple(tuple(s) for s in sizes)}, {ratio_text})"


def anchor_generator_like(old: nn.Module, levels: int) -> tuple[AnchorGenerator, str, str] | None:
    """An :class:`AnchorGenerator` with ``levels`` levels spread from ``old``'s sizes
    (:func:`spread_sizes`) and ratios; None when ``old`` already has ``levels`` levels or is
    not an ``AnchorGenerator``."""
    if not isinstance(old, AnchorGenerator):
        return None
    sizes, ratios = spread_sizes(old.sizes, levels), spread_ratios(old.aspect_ratios, levels)
    if len(old.sizes) == levels:
        return None
    return AnchorGenerator(sizes, ratios), anchors_text(old.sizes, old.aspect_ratios), anchors_text(sizes, ratios)


def pooler_like(old: nn.Module, names: list[str]) -> tuple[MultiScaleRoIAlign, str, str] | None:
    """A :class:`MultiScaleRoIAlign` pooling ``names`` with ``old``'s output size, sampling
    ratio and canonical scale/level; None when ``old`` already pools exactly ``names`` or is
    not a ``MultiScaleRoIAlign``."""
    if not isinstance(old, MultiScaleRoIAlign) or list(old.featmap_names) == names:
        return None
    size = tuple(old.output_size)
    new = MultiScaleRoIAlign(names, size, old.sampling_ratio,
                             canonical_scale=old.canonical_scale, canonical_level=old.canonical_level)

    def text(featmaps: Sequence[str]) -> str:
        return f"MultiScaleRoIAlign({list(featmaps)}, {_size_text(size)}, {old.sampling_ratio})"

    return new, text(old.featmap_names), text(names)


def _size_text(size: tuple[int, ...]) -> str:
    return str(size[0]) if len(set(size)) == 1 else str(size)


def _num(value: float) -> str:
    return f"{value:g}"


def config_text(module: nn.Module) -> str | None:
    """What an anchor generator or RoI pooler is configured with, in one line:

    * ``AnchorGenerator``: ``sizes 32 | 64 | 128; ratios 0.5,1,2`` (levels split by ``|``,
      ratios once when every level has the same);
    * ``DefaultBoxGenerator``: ``ratios 2 | 2,3; steps 8,16; scales 0.07,0.15``;
    * ``MultiScaleRoIAlign``: ``maps 0,1,2,3 → 7×7, sampling 2``.

    None for any other module.
    """
    if isinstance(module, AnchorGenerator):
        sizes = " | ".join(",".join(str(int(s)) for s in level) for level in module.sizes)
        ratio_levels = [",".join(_num(float(r)) for r in level) for level in module.aspect_ratios]
        ratios = ratio_levels[0] if len(set(ratio_levels)) == 1 else " | ".join(ratio_levels)
        return f"sizes {sizes}; ratios {ratios}"
    if isinstance(module, DefaultBoxGenerator):
        parts = ["ratios " + " | ".join(",".join(_num(float(r)) for r in level) for level in module.aspect_ratios)]
        if module.steps is not None:
            parts.append("steps " + ",".join(str(s) for s in module.steps))
        parts.append("scales " + ",".join(_num(round(float(s), 3)) for s in module.scales))
        return "; ".join(parts)
    if isinstance(module, MultiScaleRoIAlign):
        size = "×".join(str(s) for s in module.output_size)
        return f"maps {','.join(map(str, module.featmap_names))} → {size}, sampling {module.sampling_ratio}"
    return None


def first_layer_like(head: nn.Module, width: int, pool: tuple[int, int] | None,
                     init: Callable[[nn.Module], None]) -> tuple[nn.Module, str, str] | None:
    """A copy of ``head`` whose first layer takes ``width`` channels: a first ``Conv2d`` gets
    ``in_channels=width``; a first ``Linear`` (a flattening head such as ``TwoMLPHead``) gets
    ``in_features=width × pool height × pool width``. Everything else is kept; the new layer
    is initialised with ``init``.

    Returns:
        ``(new head, old text, new text)``; None when the head already takes ``width`` or its
        first layer is neither a ``Conv2d`` nor a flattening ``Linear``.
    """
    found = next(((n, m) for n, m in head.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if found is None:
        return None
    name, layer = found
    new_layer: nn.Module
    if isinstance(layer, nn.Conv2d):
        if layer.in_channels == width or layer.groups != 1:
            return None
        new_layer = nn.Conv2d(width, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,  # type: ignore[arg-type]
                              layer.dilation, 1, layer.bias is not None, layer.padding_mode)  # type: ignore[arg-type]
        old_in, new_in = str(layer.in_channels), str(width)
    else:
        if pool is None:
            return None
        area = pool[0] * pool[1]
        if layer.in_features % area or layer.in_features == width * area:
            return None
        new_layer = nn.Linear(width * area, layer.out_features, layer.bias is not None)
        old_in, new_in = f"{layer.in_features // area}×{pool[0]}×{pool[1]}", f"{width}×{pool[0]}×{pool[1]}"
    init(new_layer)
    new_head = copy.deepcopy(head, {id(layer): new_layer})  # the old first layer is not copied, only replaced
    kind = type(head).__name__
    return new_head, f"{kind} taking {old_in} ({name})", f"{kind} taking {new_in} ({name})"


def kaiming_relu(layer: nn.Module) -> None:
    """``kaiming_normal_(fan_out, relu)`` on a conv's weight and a zero bias (torchvision's
    R-CNN conv heads); a ``Linear`` keeps PyTorch's default."""
    if isinstance(layer, nn.Conv2d):
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
