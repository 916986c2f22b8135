"""Anatomy of torchvision's video classifiers: ``r3d_18``, ``mc3_18``, ``r2plus1d_18``
(``VideoResNet``), ``s3d``, ``mvit_v1_b``, ``mvit_v2_s`` (``MViT``) and ``swin3d_t/s/b``
(``SwinTransformer3d``). Their input is a clip ``(B, 3, T, S, S)``; their output
``(B, num_classes)`` logits, as an image classifier's.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.video.mvit import MViT
from torchvision.models.video.resnet import VideoResNet
from torchvision.models.video.s3d import S3D
from torchvision.models.video.swin_transformer import SwinTransformer3d

from surgery.anatomy._base import RowLayer
from surgery.anatomy._classifier import Arch, ClassifierAnatomy
from surgery.anatomy._layers import linear_default, normal_init

__all__ = ["VideoAnatomy"]


def _trunc_normal_002(layer: RowLayer) -> None:
    nn.init.trunc_normal_(layer.weight, std=0.02)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _mvit_stride(model: nn.Module, dim: int) -> int:
    conv = getattr(model, "conv_proj", None)
    stride = getattr(conv, "stride", None)
    return int(stride[dim]) if isinstance(stride, tuple) and len(stride) > dim else 1


def _mvit_size(model: nn.Module) -> int | None:
    """MViT takes one clip size: its positional encoding's grid times the patch stride."""
    size = getattr(getattr(model, "pos_encoding", None), "spatial_size", None)
    return int(size[0]) * _mvit_stride(model, 1) if isinstance(size, tuple) and size else None


def _mvit_frames(model: nn.Module) -> int | None:
    frames = getattr(getattr(model, "pos_encoding", None), "temporal_size", None)
    return int(frames) * _mvit_stride(model, 0) if isinstance(frames, int) else None


_TRUNC = "trunc_normal_(std=0.02) weights, zero bias"

_ARCHS = (
    Arch(VideoResNet, "fc", "fc", normal_init(0.01), "normal_(0, 0.01) weights, zero bias", frames=4),
    # its final AvgPool3d has a fixed (2, 7, 7) kernel: it needs 224×224 clips of 16 frames or more
    Arch(S3D, "classifier", "classifier.1", linear_default, "nn.Conv3d default", min_size=224, frames=16),
    Arch(MViT, "head", "head.1", _trunc_normal_002, _TRUNC, fixed_size=_mvit_size, frames=16, fixed_frames=_mvit_frames),
    Arch(SwinTransformer3d, "head", "head", _trunc_normal_002, _TRUNC, frames=4),
)


class VideoAnatomy(ClassifierAnatomy):
    """torchvision's video classifiers: ``(B, 3, T, S, S)`` clips → ``(B, num_classes)`` logits."""

    name = "video classification"
    input_word = "clip"
    archs = _ARCHS
