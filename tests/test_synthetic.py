"""``surgery.synthetic_batch``: images and targets that fit each family, deterministic per seed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import surgery
from surgery._state import preserved
from surgery.anatomy import anatomy_for
from tests.helpers import build

SIZE = 64


def _check_boxes(targets: list[dict[str, torch.Tensor]], size: int) -> None:
    for t in targets:
        boxes = t["boxes"]
        assert boxes.dtype == torch.float32 and boxes.shape == (2, 4)
        assert bool((boxes[:, 0] < boxes[:, 2]).all()) and bool((boxes[:, 1] < boxes[:, 3]).all())
        assert float(boxes.min()) >= 0 and float(boxes[:, 2:].max()) <= size - 1
        assert t["labels"].dtype == torch.int64 and t["labels"].shape == (2,)


def test_mask_rcnn_batch_has_masks_inside_the_boxes(maskrcnn: nn.Module) -> None:
    images, targets = surgery.synthetic_batch(maskrcnn, batch_size=3, image_size=SIZE)
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(3, SIZE, SIZE)] * 3
    assert all(float(i.min()) >= 0 and float(i.max()) < 1 for i in images)
    assert targets is not None and len(targets) == 3
    _check_boxes(targets, SIZE)
    for t in targets:
        assert sorted(t) == ["boxes", "labels", "masks"]
        masks = t["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (2, SIZE, SIZE)
        for box, mask in zip(t["boxes"].to(torch.int64).tolist(), masks, strict=True):
            x1, y1, x2, y2 = box
            assert int(mask.sum()) == (x2 - x1 + 1) * (y2 - y1 + 1)
            assert int(mask[y1 : y2 + 1, x1 : x2 + 1].min()) == 1
        assert bool(((t["labels"] >= 1) & (t["labels"] < 91)).all())


def test_keypoint_rcnn_batch_has_keypoints_inside_the_boxes(shared: Callable[..., nn.Module]) -> None:
    model = shared("keypointrcnn_resnet50_fpn")
    _, targets = surgery.synthetic_batch(model, image_size=SIZE)
    assert targets is not None
    for t in targets:
        assert sorted(t) == ["boxes", "keypoints", "labels"]
        kps = t["keypoints"]
        assert kps.shape == (2, 17, 3) and kps.dtype == torch.float32
        assert bool((kps[..., 2] == 2).all())
        boxes = t["boxes"]
        assert bool(((kps[..., 0] >= boxes[:, 0:1]) & (kps[..., 0] <= boxes[:, 2:3])).all())
        assert bool(((kps[..., 1] >= boxes[:, 1:2]) & (kps[..., 1] <= boxes[:, 3:4])).all())
        assert bool(((t["labels"] >= 1) & (t["labels"] < 2)).all())  # keypoint R-CNN has 2 classes


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("fasterrcnn_mobilenet_v3_large_320_fpn", 5),
        ("retinanet_resnet50_fpn", 3),
        ("fcos_resnet50_fpn", 4),
        ("ssdlite320_mobilenet_v3_large", 3),
    ],
)
def test_labels_follow_the_models_own_num_classes(name: str, classes: int) -> None:
    model = build(name, num_classes=classes)
    assert anatomy_for(model).num_classes(model) == classes
    _, targets = surgery.synthetic_batch(model, batch_size=16, image_size=SIZE)
    assert targets is not None
    _check_boxes(targets, SIZE)
    labels = torch.cat([t["labels"] for t in targets])
    assert set(labels.tolist()) == set(range(1, classes))
    assert all(sorted(t) == ["boxes", "labels"] for t in targets)


def test_gated_off_mask_branch_gets_no_masks() -> None:
    model: Any = build("maskrcnn_resnet50_fpn")
    model.roi_heads.mask_predictor = None
    _, targets = surgery.synthetic_batch(model, image_size=SIZE)
    assert targets is not None and all(sorted(t) == ["boxes", "labels"] for t in targets)


def test_generic_model_gets_a_plain_tensor_batch() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    batch = surgery.synthetic_batch(model, batch_size=5, image_size=40)
    assert isinstance(batch.images, torch.Tensor) and tuple(batch.images.shape) == (5, 3, 40, 40)
    assert batch.targets is None
    assert anatomy_for(model).num_classes(model) is None


def test_same_seed_same_batch_and_global_rng_untouched(maskrcnn: nn.Module) -> None:
    state = torch.get_rng_state()
    a = surgery.synthetic_batch(maskrcnn, image_size=SIZE, seed=7)
    b = surgery.synthetic_batch(maskrcnn, image_size=SIZE, seed=7)
    c = surgery.synthetic_batch(maskrcnn, image_size=SIZE, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    assert a.targets is not None and b.targets is not None and c.targets is not None
    for ta, tb in zip(a.targets, b.targets, strict=True):
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not torch.equal(a.images[0], c.images[0])
    assert not torch.equal(a.targets[0]["boxes"], c.targets[0]["boxes"])


def test_device_follows_the_model_or_the_argument(maskrcnn: nn.Module) -> None:
    images, targets = surgery.synthetic_batch(maskrcnn, image_size=SIZE)
    assert targets is not None
    assert images[0].device.type == "cpu" and targets[0]["masks"].device.type == "cpu"
    images, _ = surgery.synthetic_batch(maskrcnn, image_size=SIZE, device="cpu")
    assert images[0].device == torch.device("cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
        ({"batch_size": 2.0}, r"batch_size must be an int >= 1, got 2\.0"),
        ({"image_size": 16}, r"image_size must be an int >= 32, got 16"),
        ({"seed": "a"}, r"seed must be an int, got 'a'"),
        ({"device": "nowhere"}, r"device must be a torch\.device or a string such as 'cpu'.*got 'nowhere'"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        surgery.synthetic_batch(nn.Linear(2, 2), **kwargs)  # type: ignore[arg-type]


def test_not_a_module_is_refused() -> None:
    with pytest.raises(surgery.NotAModuleError, match=r"synthetic_batch\(\): model must be an nn\.Module, got list"):
        surgery.synthetic_batch([1, 2])  # type: ignore[arg-type]


def test_fit_transform_shrinks_and_preserved_restores(maskrcnn: nn.Module) -> None:
    transform: Any = maskrcnn.transform
    before = (transform.min_size, transform.max_size)
    assert before == ((800,), 1333)
    with preserved(maskrcnn):
        assert anatomy_for(maskrcnn).fit_inputs(maskrcnn, [(256, 256), (256, 200)]) is True
        assert (transform.min_size, transform.max_size) == ((200,), 256)
        assert anatomy_for(maskrcnn).fit_inputs(maskrcnn, [(512, 512)]) is False  # never enlarges
        assert (transform.min_size, transform.max_size) == ((200,), 256)
    assert (transform.min_size, transform.max_size) == before


def test_fit_transform_leaves_a_fixed_size_transform_alone(shared: Callable[..., nn.Module]) -> None:
    model: Any = shared("ssdlite320_mobilenet_v3_large")
    before = (model.transform.min_size, model.transform.max_size, model.transform.fixed_size)
    assert anatomy_for(model).fit_inputs(model, [(64, 64)]) is False
    assert (model.transform.min_size, model.transform.max_size, model.transform.fixed_size) == before
    linear = nn.Linear(2, 2)
    assert anatomy_for(linear).fit_inputs(linear, [(64, 64)]) is False
