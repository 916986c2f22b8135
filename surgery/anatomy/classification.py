"""Anatomy of torchvision's image classifiers: every builder of ``torchvision.models`` (AlexNet
to ViT) and the quantizable ones of ``torchvision.models.quantization`` (built with
``quantize=False``; they subclass the float classes, so they match through them).

A model matches only when it is an instance of one of torchvision's classifier classes (or a
subclass). A user's own module with the same layout does not: the head's place alone does not
say what its forward does, and guessing would put a family's checks on a model they may not fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torchvision.models.alexnet import AlexNet
from torchvision.models.convnext import ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.efficientnet import EfficientNet
from torchvision.models.googlenet import GoogLeNet
from torchvision.models.inception import Inception3
from torchvision.models.maxvit import MaxVit
from torchvision.models.mnasnet import MNASNet
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import MobileNetV3
from torchvision.models.regnet import RegNet
from torchvision.models.resnet import ResNet
from torchvision.models.shufflenetv2 import ShuffleNetV2
from torchvision.models.squeezenet import SqueezeNet
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vgg import VGG
from torchvision.models.vision_transformer import VisionTransformer

from surgery.anatomy._base import RowLayer
from surgery.anatomy._classifier import Arch, ClassifierAnatomy
from surgery.anatomy._layers import linear_default, normal_init

__all__ = ["ClassificationAnatomy"]

_Layer = RowLayer


def _zero_bias(layer: _Layer) -> None:
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _trunc_normal(std: float, zero_bias: bool = True) -> Callable[[_Layer], None]:
    """``trunc_normal_(std)`` weights (cut at ±2, as torchvision calls it) and, with ``zero_bias``, a zero bias."""

    def init(layer: _Layer) -> None:
        nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-2.0, b=2.0)
        if zero_bias:
            _zero_bias(layer)

    return init


def _densenet(layer: _Layer) -> None:
    # DenseNet.__init__ only zeroes a Linear's bias; its weight keeps nn.Linear's default
    _zero_bias(layer)


def _efficientnet(layer: _Layer) -> None:
    bound = 1.0 / math.sqrt(layer.weight.shape[0])
    nn.init.uniform_(layer.weight, -bound, bound)
    _zero_bias(layer)


def _mnasnet(layer: _Layer) -> None:
    nn.init.kaiming_uniform_(layer.weight, mode="fan_out", nonlinearity="sigmoid")
    _zero_bias(layer)


def _zeros(layer: _Layer) -> None:
    nn.init.zeros_(layer.weight)
    _zero_bias(layer)


def _vit_size(model: nn.Module) -> int | None:
    value = getattr(model, "image_size", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _maxvit_size(model: nn.Module) -> int | None:
    """MaxViT is built for one input size: four times the grid of its first attention layer."""
    for m in model.modules():
        grid = getattr(m, "grid_size", None)
        if isinstance(grid, tuple) and grid and isinstance(grid[0], int):
            return 4 * grid[0]
    return None


_NORMAL_01 = "normal_(0, 0.01) weights, zero bias"
_DEFAULT = "nn.Linear default"

_ARCHS = (
    Arch(AlexNet, "classifier", "classifier.6", linear_default, _DEFAULT, min_size=64),
    Arch(ConvNeXt, "classifier", "classifier.2", _trunc_normal(0.02), "trunc_normal_(std=0.02) weights, zero bias"),
    Arch(DenseNet, "classifier", "classifier", _densenet, "nn.Linear default weights, zero bias"),
    Arch(EfficientNet, "classifier", "classifier.1", _efficientnet, "uniform_(±1/sqrt(num_classes)) weights, zero bias"),
    Arch(GoogLeNet, "fc", "fc", _trunc_normal(0.01, zero_bias=False),
         "trunc_normal_(std=0.01) weights, nn.Linear default bias",
         aux=(("aux1", "aux1.fc2"), ("aux2", "aux2.fc2"))),
    Arch(Inception3, "fc", "fc", _trunc_normal(0.1, zero_bias=False), "trunc_normal_(std=0.1) weights, nn.Linear default bias",
         aux=(("AuxLogits", "AuxLogits.fc"),), aux_init=_trunc_normal(0.001, zero_bias=False),
         aux_init_name="trunc_normal_(std=0.001) weights, nn.Linear default bias", min_size=75),
    Arch(MaxVit, "classifier", "classifier.5", normal_init(0.02), "normal_(0, 0.02) weights, zero bias", fixed_size=_maxvit_size),
    Arch(MNASNet, "classifier", "classifier.1", _mnasnet, "kaiming_uniform_(fan_out, sigmoid) weights, zero bias"),
    Arch(MobileNetV2, "classifier", "classifier.1", normal_init(0.01), _NORMAL_01),
    Arch(MobileNetV3, "classifier", "classifier.3", normal_init(0.01), _NORMAL_01),
    Arch(RegNet, "fc", "fc", normal_init(0.01), _NORMAL_01),
    Arch(ResNet, "fc", "fc", linear_default, _DEFAULT),
    Arch(ShuffleNetV2, "fc", "fc", linear_default, _DEFAULT),
    Arch(SqueezeNet, "classifier", "classifier.1", normal_init(0.01), _NORMAL_01),
    Arch(SwinTransformer, "head", "head", _trunc_normal(0.02), "trunc_normal_(std=0.02) weights, zero bias"),
    Arch(VGG, "classifier", "classifier.6", normal_init(0.01), _NORMAL_01),
    Arch(VisionTransformer, "heads", "heads.head", _zeros, "zero weights and bias", fixed_size=_vit_size),
)


class ClassificationAnatomy(ClassifierAnatomy):
    """torchvision's image classifiers: ``(B, 3, S, S)`` images → ``(B, num_classes)`` logits."""

    name = "classification"
    archs = _ARCHS
