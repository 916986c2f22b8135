"""Synthetic batches that fit a model's family: images plus detection targets.

``synthetic_batch`` builds what one forward/backward needs without a data set: random images
and, for detection families, targets whose boxes, labels, masks and keypoints fit the model
(labels below the model's own ``num_classes``, one mask per box for mask models, the
model's own keypoint count for keypoint models). Everything is drawn from a local
``torch.Generator``, so the global random state is never touched and a seed always gives
the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from surgery._errors import NotAModuleError
from surgery.anatomy import anatomy_for

__all__ = ["SyntheticBatch", "synthetic_batch", "synthetic_targets", "fit_transform", "num_classes_of", "DETECTION_FAMILIES"]

#: Families whose forward takes ``(images, targets)`` lists rather than one tensor.
DETECTION_FAMILIES = ("R-CNN", "RetinaNet", "FCOS", "SSD")
#: Objects per synthetic image.
_OBJECTS = 2
#: Smallest side of a synthetic box, in pixels.
_MIN_BOX = 8


class SyntheticBatch(NamedTuple):
    """What :func:`synthetic_batch` returns; unpacks as ``images, targets = batch``.

    Attributes:
        images: A list of ``3×S×S`` image tensors for detection families, or one
            ``(batch_size, 3, S, S)`` tensor for any other model.
        targets: One dict per image (``boxes``, ``labels`` and, where the model has the
            branch, ``masks`` / ``keypoints``); None for a non-detection model.
    """

    images: list[Tensor] | Tensor
    targets: list[dict[str, Tensor]] | None


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be a torch.device or a string such as 'cpu' or 'cuda:0', got {device!r}") from e
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def num_classes_of(model: nn.Module, family: str | None = None) -> int | None:
    """The number of classes (background included) the model predicts, read from its predictor.

    Args:
        model: A detection model.
        family: The anatomy name (``"R-CNN"``, ``"RetinaNet"``, ``"FCOS"``, ``"SSD"``); looked
            up when None.

    Returns:
        The class count, or None when the predictor does not expose it.
    """
    family = family or anatomy_for(model).name
    value: Any = None
    if family == "R-CNN":
        cls_score = getattr(getattr(getattr(model, "roi_heads", None), "box_predictor", None), "cls_score", None)
        value = getattr(cls_score, "out_features", None)
    elif family in ("RetinaNet", "FCOS"):
        value = getattr(getattr(getattr(model, "head", None), "classification_head", None), "num_classes", None)
    elif family == "SSD":
        value = getattr(getattr(getattr(model, "head", None), "classification_head", None), "num_columns", None)
    return int(value) if isinstance(value, int) else None


def _num_keypoints(model: nn.Module) -> int | None:
    predictor = getattr(getattr(model, "roi_heads", None), "keypoint_predictor", None)
    if predictor is None:
        return None
    value = getattr(predictor, "out_channels", None)
    if isinstance(value, int):
        return value
    lowres = getattr(predictor, "kps_score_lowres", None)
    value = getattr(lowres, "out_channels", None)
    return int(value) if isinstance(value, int) else None


def _branch_on(model: nn.Module, name: str) -> bool:
    roi_heads = getattr(model, "roi_heads", None)
    check = getattr(roi_heads, name, None)
    return bool(check()) if callable(check) else False


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def synthetic_targets(
    model: nn.Module,
    image_sizes: Sequence[tuple[int, int]],
    *,
    generator: torch.Generator,
    device: torch.device | None = None,
    family: str | None = None,
) -> list[dict[str, Tensor]]:
    """Detection targets for images of the given ``(height, width)`` sizes.

    Args:
        model: The detection model the targets are for.
        image_sizes: One ``(height, width)`` per image.
        generator: A CPU generator all random values are drawn from.
        device: Where the tensors go (CPU when None).
        family: The anatomy name; looked up when None.

    Returns:
        One dict per image: ``boxes`` (``N×4`` float, ``x1<x2``, ``y1<y2``, inside the image),
        ``labels`` (``N`` int64 in ``[1, num_classes)``), plus ``masks`` (``N×H×W`` uint8)
        for mask models and ``keypoints`` (``N×K×3``, visibility 2) for keypoint models.

    Raises:
        ValueError: An image side is smaller than 16 pixels.
    """
    family = family or anatomy_for(model).name
    classes = num_classes_of(model, family)
    high = classes if classes is not None and classes >= 2 else 2
    masks = family == "R-CNN" and _branch_on(model, "has_mask")
    keypoints = _num_keypoints(model) if family == "R-CNN" and _branch_on(model, "has_keypoint") else None
    out: list[dict[str, Tensor]] = []
    for h, w in image_sizes:
        if h < 2 * _MIN_BOX or w < 2 * _MIN_BOX:
            raise ValueError(f"image sizes must be at least {2 * _MIN_BOX}×{2 * _MIN_BOX} for synthetic boxes, got {h}×{w}")
        n = _OBJECTS
        bw = _uniform(generator, n, max(_MIN_BOX, 0.2 * w), 0.5 * w)
        bh = _uniform(generator, n, max(_MIN_BOX, 0.2 * h), 0.5 * h)
        x1 = _uniform(generator, n, 0.0, 1.0) * (w - bw)
        y1 = _uniform(generator, n, 0.0, 1.0) * (h - bh)
        boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1).floor().clamp(min=0)
        boxes[:, 2] = boxes[:, 2].clamp(max=w - 1)
        boxes[:, 3] = boxes[:, 3].clamp(max=h - 1)
        target = {"boxes": boxes, "labels": torch.randint(1, high, (n,), generator=generator, dtype=torch.int64)}
        if masks:
            m = torch.zeros(n, h, w, dtype=torch.uint8)
            for i, (a, b, c, d) in enumerate(boxes.to(torch.int64).tolist()):
                m[i, b : d + 1, a : c + 1] = 1
            target["masks"] = m
        if keypoints is not None:
            fx = torch.rand(n, keypoints, generator=generator)
            fy = torch.rand(n, keypoints, generator=generator)
            kx = boxes[:, 0:1] + fx * (boxes[:, 2:3] - boxes[:, 0:1])
            ky = boxes[:, 1:2] + fy * (boxes[:, 3:4] - boxes[:, 1:2])
            target["keypoints"] = torch.stack([kx, ky, torch.full_like(kx, 2.0)], dim=2)
        out.append({k: v.to(device) if device is not None else v for k, v in target.items()})
    return out


def synthetic_batch(
    model: nn.Module,
    batch_size: int = 2,
    image_size: int = 320,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> SyntheticBatch:
    """A batch of random images, plus targets that fit the model's family.

    The family comes from :func:`surgery.anatomy.anatomy_for`. Detection families get a
    list of ``3×S×S`` images and one target dict per image; any other model gets one
    ``(batch_size, 3, S, S)`` tensor and no targets. The same model and seed always give
    the same batch; the global random state is left alone.

    Args:
        model: The model the batch is for (read only).
        batch_size: Number of images.
        image_size: Side ``S`` of each square image.
        device: Where the tensors go; None means the device of the model's parameters.
        seed: Seed of the local generator.

    Returns:
        A :class:`SyntheticBatch` ``(images, targets)``.

    Raises:
        NotAModuleError: ``model`` is not an ``nn.Module``.
        ValueError: ``batch_size``, ``image_size``, ``seed`` or ``device`` is not valid.
    """
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"synthetic_batch() takes an nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    where = _device_of(model, device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    family = anatomy_for(model).name
    if family not in DETECTION_FAMILIES:
        return SyntheticBatch(torch.rand(batch_size, 3, image_size, image_size, generator=gen).to(where), None)
    images = [torch.rand(3, image_size, image_size, generator=gen).to(where) for _ in range(batch_size)]
    targets = synthetic_targets(model, [(image_size, image_size)] * batch_size, generator=gen, device=where, family=family)
    return SyntheticBatch(images, targets)


def fit_transform(model: nn.Module, image_sizes: Sequence[tuple[int, int]]) -> bool:
    """Shrink a ``GeneralizedRCNNTransform``'s ``min_size``/``max_size`` to the images' size.

    Only call it inside :func:`surgery._state.preserved`, which puts the sizes back. A
    transform with ``fixed_size`` (SSD) and one already at or below the images' size are
    left alone, so images are never enlarged.

    Args:
        model: The model whose ``transform`` to adjust.
        image_sizes: ``(height, width)`` of each image of the batch.

    Returns:
        True when the sizes were changed.
    """
    transform = model._modules.get("transform")
    if not isinstance(transform, GeneralizedRCNNTransform) or transform.fixed_size is not None or not image_sizes:
        return False
    short = min(min(h, w) for h, w in image_sizes)
    long = max(max(h, w) for h, w in image_sizes)
    changed = False
    if transform.min_size and max(transform.min_size) > short:
        transform.min_size = (short,)
        changed = True
    if transform.max_size > long:
        transform.max_size = long
        changed = True
    return changed
