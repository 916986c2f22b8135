"""Synthetic batches that fit a model's family.

``synthetic_batch`` builds what one forward/backward needs without a data set: random images
and whatever the family trains on (for detection, targets whose boxes, labels, masks and
keypoints fit the model). What fits is the anatomy's to say
(:meth:`surgery.anatomy.Anatomy.synthetic_batch`). Everything is drawn from a local
``torch.Generator``, so the global random state is never touched and a seed always gives the
same batch.
"""

from __future__ import annotations

import torch
from torch import nn

from surgery._util import check_int, device_of, require_module
from surgery.anatomy import Anatomy, anatomy_for
from surgery.anatomy._base import SyntheticBatch

__all__ = ["SyntheticBatch", "synthetic_batch"]


def synthetic_batch(
    model: nn.Module,
    batch_size: int = 2,
    image_size: int = 320,
    device: str | torch.device | None = None,
    seed: int = 0,
    *,
    anatomy: Anatomy | None = None,
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
        anatomy: The model's anatomy, when the caller has resolved it already.

    Returns:
        A :class:`SyntheticBatch` ``(images, targets)``.

    Raises:
        NotAModuleError: ``model`` is not an ``nn.Module``.
        ValueError: ``batch_size``, ``image_size``, ``seed`` or ``device`` is not valid.
    """
    require_module(model, "synthetic_batch()")
    check_int("batch_size", batch_size, 1)
    check_int("image_size", image_size, 32)
    check_int("seed", seed)
    where = device_of(model, device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    anatomy = anatomy or anatomy_for(model)
    return anatomy.synthetic_batch(model, batch_size, image_size, gen, where)
