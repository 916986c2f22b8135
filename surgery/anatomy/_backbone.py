"""Reading a detection backbone: which feature maps it produces, with how many channels."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from surgery import paths
from surgery._util import first_line
from surgery.anatomy._base import PROBE_BATCH, Context, Features, is_stock
from surgery.anatomy._feed import finding
from surgery.findings import Finding
from surgery.signature import input_signature, out_width, output_signature

__all__ = ["backbone_features", "backbone_contracts_findings", "anchor_maps_findings", "FEATURES_KEY"]

FEATURES_KEY = "features"


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
        example = tuple((32 * 2**i,) for i in range(n))
        yield finding("error", "anchor-mismatch", ("backbone", gen_path),
                      f"backbone produces {n} feature maps {feats.names} but {gen_path} has {len(sizes)} sizes tuples; "
                      "it needs one per feature map",
                      f"model.{gen_path} = AnchorGenerator(sizes={example}, aspect_ratios=((0.5, 1.0, 2.0),) * {n})")
