"""What torchvision's detection families share: the ``(images, targets)`` forward, synthetic
targets, the loss dict of a train step, the per-image result dicts of an eval pass, and the
score thresholds that decide whether the second-stage heads run.

:class:`DetectionAnatomy` is the base of the R-CNN, RetinaNet, FCOS and SSD anatomies; each
family file adds its own slots, loss keys and class layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from surgery import paths
from surgery._util import first_line
from surgery.anatomy._backbone import config_text
from surgery.anatomy._base import PROBE_BATCH, Anatomy, Context, Contract, SyntheticBatch
from surgery.anatomy._feed import finding
from surgery.findings import Finding
from surgery.signature import meta_like

__all__ = ["DetectionAnatomy", "synthetic_targets"]

#: Objects per synthetic image.
_OBJECTS = 2
#: Smallest side of a synthetic box, in pixels.
_MIN_BOX = 8
#: Slack, in pixels, allowed when checking that boxes lie inside the image (rescaling rounds).
_BOX_SLACK = 1e-2


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def synthetic_targets(
    image_sizes: Sequence[tuple[int, int]],
    *,
    classes: int | None,
    masks: bool,
    keypoints: int | None,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> list[dict[str, Tensor]]:
    """Detection targets for images of the given ``(height, width)`` sizes.

    Args:
        image_sizes: One ``(height, width)`` per image.
        classes: Classes the model predicts (background included); labels lie in ``[1, classes)``.
        masks: Add one binary mask per box.
        keypoints: Add this many keypoints per box (None for none).
        generator: A CPU generator all random values are drawn from.
        device: Where the tensors go (CPU when None).

    Returns:
        One dict per image: ``boxes`` (``N×4`` float, ``x1<x2``, ``y1<y2``, inside the image),
        ``labels`` (``N`` int64), plus ``masks`` (``N×H×W`` uint8) and ``keypoints``
        (``N×K×3``, visibility 2) where asked for.

    Raises:
        ValueError: An image side is smaller than 16 pixels.
    """
    high = classes if classes is not None and classes >= 2 else 2
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


TRANSFORM_CONTRACT = "transform: images → batched ImageList"


def _transform_findings(ctx: Context) -> Iterator[Finding]:
    """The transform must take a list of ``3×H×W`` images (and targets) and return
    ``(ImageList, targets)``, as ``GeneralizedRCNNTransform`` does: the backbone reads
    ``.tensors`` and the heads read ``.image_sizes``."""
    transform = ctx.get("transform")
    if type(transform) is GeneralizedRCNNTransform:
        return  # torchvision's own transform does this by construction; only a replacement needs the probe
    size = ctx.probe_image_size
    probe = ctx.probe_with("transform", "images", [meta_like((3, size, size)) for _ in range(PROBE_BATCH)])
    if probe.inconclusive:
        return
    fix = "model.transform = GeneralizedRCNNTransform(min_size, max_size, image_mean, image_std)  # as the builder made it"
    kind = type(transform).__name__
    if not probe.ok:
        yield Finding("error", "shape-error", ("transform",),
                      f"transform ({kind}) must take a list of 3×H×W images (and targets) and return (ImageList, targets), "
                      f"but it raised {type(probe.error).__name__} on {PROBE_BATCH} images of 3×{size}×{size}: {first_line(probe.error)}",
                      fix)
        return
    out = probe.output
    images = out[0] if isinstance(out, (tuple, list)) and out else None
    batch = getattr(images, "tensors", None)
    sizes = getattr(images, "image_sizes", None)
    if not (isinstance(batch, Tensor) and batch.dim() == 4 and isinstance(sizes, list) and len(sizes) == PROBE_BATCH):
        got = type(out).__name__ if images is None else f"({type(images).__name__}, ...)"
        yield Finding("error", "shape-error", ("transform",),
                      f"transform ({kind}) returned {got} for {PROBE_BATCH} images; the model expects (ImageList, targets): "
                      "a batched N×3×H×W tensor in .tensors and one (H, W) per image in .image_sizes",
                      fix)


def _tdesc(t: object) -> str:
    if isinstance(t, Tensor):
        return f"{str(t.dtype).removeprefix('torch.')} of shape {tuple(t.shape)}"
    return type(t).__name__


class DetectionAnatomy(Anatomy):
    """Families with torchvision's detection API: ``model(images, targets)`` in train mode
    returns a loss dict, ``model(images)`` in eval mode one result dict per image."""

    takes_targets = True
    probe_stops = ("as expected: the post-processing keeps boxes by their scores, so its sizes depend on the data; "
                   "the contracts probe each slot after it")
    #: Slot whose outputs decide the labels and scores (for out-of-range labels), and the boxes.
    class_slot: str = "head.classification_head"
    box_slot: str = "head.regression_head"

    def predictions_contract(self) -> Contract:
        """The contract of :func:`predictions_vs_anchors` for a family whose dense heads sit at
        ``class_slot`` and ``box_slot`` and whose anchors come from ``anchor_generator``."""
        heads = (self.class_slot, self.box_slot)
        return Contract(PREDICTIONS_CONTRACT, (*heads, "anchor_generator"),
                        lambda ctx: predictions_vs_anchors(self, ctx, heads, "anchor_generator"))

    def contracts(self, model: nn.Module) -> list[Contract]:
        """The layer check, the transform check every detection family shares, then the family's own."""
        base = super().contracts(model)
        return [*base[:1], Contract(TRANSFORM_CONTRACT, ("transform",), _transform_findings), *base[1:]]

    # ----------------------------------------------------------------------- what subclasses add

    def has_masks(self, model: nn.Module) -> bool:
        """True when the model predicts masks (targets need ``masks``)."""
        return False

    def num_keypoints(self, model: nn.Module) -> int | None:
        """Keypoints per object when the model predicts keypoints, else None."""
        return None

    def result_keys(self, model: nn.Module) -> dict[str, str | None]:
        """``{key of an eval result dict: slot that produces it}``."""
        return {"boxes": self.box_slot, "labels": self.class_slot, "scores": self.class_slot}

    # ----------------------------------------------------------------------- inputs

    def synthetic_batch(
        self, model: nn.Module, batch_size: int, image_size: int, generator: torch.Generator, device: torch.device
    ) -> SyntheticBatch:
        images = [torch.rand(3, image_size, image_size, generator=generator).to(device) for _ in range(batch_size)]
        return SyntheticBatch(images, self.targets(model, [(image_size, image_size)] * batch_size, generator, device))

    def targets(
        self, model: nn.Module, image_sizes: Sequence[tuple[int, int]], generator: torch.Generator, device: torch.device | None
    ) -> list[dict[str, Tensor]]:
        """Synthetic targets that fit ``model`` for images of the given ``(height, width)`` sizes."""
        return synthetic_targets(image_sizes, classes=self.num_classes(model), masks=self.has_masks(model),
                                 keypoints=self.num_keypoints(model), generator=generator, device=device)

    def probe_inputs(self, model: nn.Module, image_size: int) -> tuple[Any, ...] | None:
        """One list of ``PROBE_BATCH`` meta images of ``3×S×S``."""
        return ([meta_like((3, image_size, image_size)) for _ in range(PROBE_BATCH)],)

    def split_inputs(self, inputs: Any) -> tuple[Any, Any]:
        if isinstance(inputs, SyntheticBatch):
            return list(inputs.images) if isinstance(inputs.images, (list, tuple)) else inputs.images, inputs.targets
        if (
            isinstance(inputs, tuple)
            and len(inputs) == 2
            and not isinstance(inputs[0], Tensor)
            and (inputs[1] is None or isinstance(inputs[1], list))
        ):
            images, targets = inputs
        else:
            images, targets = inputs, None
        if isinstance(images, Tensor):
            if images.dim() == 3:
                images = [images]
            elif images.dim() == 4:
                images = list(images.unbind(0))
            else:
                raise ValueError(
                    f"detection images must be a 3×H×W or N×3×H×W tensor or a list of 3×H×W tensors, got shape {tuple(images.shape)}"
                )
        if not (isinstance(images, (list, tuple)) and images and all(isinstance(i, Tensor) and i.dim() == 3 for i in images)):
            raise ValueError(
                "inputs of a detection model must be a list of 3×H×W image tensors, an N×3×H×W tensor, "
                f"or (images, targets); got {type(images).__name__}"
            )
        if targets is not None and (len(targets) != len(images) or not all(isinstance(t, Mapping) for t in targets)):
            raise ValueError(
                f"targets must be a list of one dict per image ({len(images)} images), got {type(targets).__name__} of {len(targets)}"
            )
        return list(images), targets

    def train_targets(self, model: nn.Module, images: Any, generator: torch.Generator, device: torch.device) -> Any:
        return self.targets(model, [(int(i.shape[-2]), int(i.shape[-1])) for i in images], generator, device)

    def call(self, model: nn.Module, images: Any, targets: Any, train: bool) -> Any:
        return model(images, targets) if train else model(images)

    def fit_inputs(self, model: nn.Module, image_sizes: Sequence[tuple[int, int]]) -> bool:
        """Shrink a ``GeneralizedRCNNTransform``'s ``min_size``/``max_size`` to the images' size.

        A transform with ``fixed_size`` (SSD) and one already at or below the images' size are
        left alone, so images are never enlarged.
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

    # ----------------------------------------------------------------------- the train step

    def train_losses(self, model: nn.Module, output: Any, targets: Any) -> dict[str, Tensor] | str | None:
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], Mapping):  # scripted: (losses, detections)
            output = output[0]
        if not isinstance(output, Mapping) or not all(isinstance(v, Tensor) for v in output.values()):
            return (f"returned {type(output).__name__}, not a dict of loss tensors; "
                    "a detection model in train mode must return {loss_name: tensor}")
        return {str(k): v for k, v in output.items()}

    # ----------------------------------------------------------------------- the eval pass

    @contextmanager
    def exercised(self, model: nn.Module) -> Iterator[None]:
        """Set every module's float ``score_thresh`` to 0 for the block, then put it back, so
        that the second-stage heads run on a full ``detections_per_img`` worth of boxes."""
        saved: list[tuple[nn.Module, float]] = []
        for m in model.modules():
            value = m.__dict__.get("score_thresh")
            if isinstance(value, float):
                saved.append((m, value))
        try:
            for m, _ in saved:
                m.__dict__["score_thresh"] = 0.0
            yield
        finally:
            for m, value in saved:
                m.__dict__["score_thresh"] = value

    def unexercised_reason(self, model: nn.Module, output: Any, exercised: bool) -> str | None:
        """``"returned 0 detections for 2 images, even with every score threshold at 0"`` when no
        image got a box (the second-stage heads then ran on nothing); None otherwise."""
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], list):  # scripted: (losses, detections)
            output = output[1]
        if not isinstance(output, list) or not all(isinstance(o, Mapping) for o in output):
            return None
        boxes = [o.get("boxes") for o in output]
        if not all(isinstance(b, Tensor) for b in boxes) or any(b.shape[0] for b in boxes if isinstance(b, Tensor) and b.dim()):
            return None
        where = "even with every score threshold at 0" if exercised else "at the model's own score thresholds"
        return f"returned 0 detections for {len(output)} image{'s' if len(output) != 1 else ''}, {where}"

    def check_eval_output(self, model: nn.Module, output: Any, images: Any, label: str) -> list[Finding]:
        """One result dict per image, with the family's keys, shapes and dtypes; labels in
        ``[0, num_classes)``; boxes inside the image; everything finite."""
        sizes = [tuple(int(s) for s in img.shape[-2:]) for img in images]
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], list):  # scripted: (losses, detections)
            output = output[1]
        if not isinstance(output, list) or len(output) != len(sizes) or not all(isinstance(o, Mapping) for o in output):
            got = f"a list of {len(output)}" if isinstance(output, list) else type(output).__name__
            return [Finding("error", "shape-error", (), f"{label} returned {got}; expected a list of {len(sizes)} dicts, one per image", None)]
        wanted = self.result_keys(model)
        keys = list(wanted)

        def slot(key: str) -> tuple[str, ...]:
            path = wanted.get(key)
            return (path,) if path and paths.exists(model, path) else ()

        classes = self.num_classes(model)
        keypoints = self.num_keypoints(model)
        box_slot, class_slot = slot("boxes"), slot("labels")
        found: list[Finding] = []

        def shape_error(where: tuple[str, ...], message: str) -> None:
            found.append(Finding("error", "shape-error", where, f"{label}: {message}", None))

        for i, (det, (h, w)) in enumerate(zip(output, sizes, strict=True)):
            missing = [k for k in keys if k not in det]
            if missing:
                shape_error((), f"image {i}'s result has keys {sorted(det)}; the {self.name} family also needs {missing}")
                continue
            not_tensors = [k for k in keys if not isinstance(det[k], Tensor)]
            if not_tensors:
                shape_error((), f"image {i}: {', '.join(f'{k} is a {type(det[k]).__name__}' for k in not_tensors)}, not a tensor")
                continue
            boxes, labels, scores = det["boxes"], det["labels"], det["scores"]
            n = boxes.shape[0] if boxes.dim() >= 1 else -1
            if not boxes.is_floating_point() or tuple(boxes.shape) != (n, 4):
                shape_error(box_slot, f"image {i}: boxes are {_tdesc(boxes)}; expected a float N×4 tensor")
                continue
            if labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
                shape_error(class_slot, f"image {i}: labels are {_tdesc(labels)}; expected int64 of shape ({n},), one per box")
            if not scores.is_floating_point() or tuple(scores.shape) != (n,):
                shape_error(class_slot, f"image {i}: scores are {_tdesc(scores)}; expected float of shape ({n},), one per box")
            for key, where in (("boxes", box_slot), ("scores", class_slot)):
                t = det[key]
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    found.append(Finding("error", "non-finite", where, f"{label}: image {i}'s {key} contain NaN/Inf", None))
            if n > 0 and labels.dtype == torch.int64 and classes is not None:
                low, high = int(labels.min()), int(labels.max())
                if low < 0 or high >= classes:
                    found.append(Finding("error", "num-classes-mismatch", class_slot,
                                         f"{label}: image {i} has labels in [{low}, {high}], but the model has num_classes={classes} "
                                         f"(read from {class_slot[0] if class_slot else 'its predictor'}), so labels must lie in [0, {classes})",
                                         "make the classifier's output width match the num_classes it declares"))
            if n > 0 and bool(torch.isfinite(boxes).all()):
                b = boxes.detach().float()
                slack = _BOX_SLACK * max(h, w)
                outside = ((b[:, 0] < -slack) | (b[:, 1] < -slack) | (b[:, 2] > w + slack) | (b[:, 3] > h + slack)
                           | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))
                if bool(outside.any()):
                    k = int(outside.nonzero()[0, 0])
                    shape_error(box_slot, f"image {i}: {int(outside.sum())} of {n} boxes are not inside the {w}×{h} image or have x2<x1/y2<y1, "
                                          f"e.g. {[round(v, 1) for v in b[k].tolist()]}")
            if "masks" in keys:
                masks = det["masks"]
                if not masks.is_floating_point() or tuple(masks.shape) != (n, 1, h, w):
                    shape_error(slot("masks"), f"image {i}: masks are {_tdesc(masks)}; expected float of shape ({n}, 1, {h}, {w})")
                elif not bool(torch.isfinite(masks).all()):
                    found.append(Finding("error", "non-finite", slot("masks"), f"{label}: image {i}'s masks contain NaN/Inf", None))
            if "keypoints" in keys:
                kps, kps_scores = det["keypoints"], det["keypoints_scores"]
                k_ = keypoints if keypoints is not None else (kps.shape[1] if kps.dim() == 3 else -1)
                if not kps.is_floating_point() or tuple(kps.shape) != (n, k_, 3):
                    shape_error(slot("keypoints"), f"image {i}: keypoints are {_tdesc(kps)}; expected float of shape ({n}, {k_}, 3)")
                elif not bool(torch.isfinite(kps).all()):
                    found.append(Finding("error", "non-finite", slot("keypoints"), f"{label}: image {i}'s keypoints contain NaN/Inf", None))
                if tuple(kps_scores.shape) != (n, k_):
                    shape_error(slot("keypoints"), f"image {i}: keypoints_scores are {_tdesc(kps_scores)}; expected shape ({n}, {k_})")
        return found

    # ----------------------------------------------------------------------- drawing

    def flow_label(self, model: nn.Module, src: str, dst: str) -> str | None:
        if _is_anchor_generator(paths.find(model, src)):
            return "anchors"
        return None

    def carries_features(self, model: nn.Module, path: str) -> bool:
        return not _is_anchor_generator(paths.find(model, path))

    def slot_config(self, module: nn.Module) -> str | None:
        """Anchor sizes and ratios per level, or a pooler's maps, output size and sampling ratio."""
        return config_text(module)




def _is_anchor_generator(module: nn.Module | None) -> bool:
    return module is not None and (
        hasattr(module, "num_anchors_per_location") or type(module).__name__ in ("AnchorGenerator", "DefaultBoxGenerator")
    )


#: The contract comparing what the dense heads predict per image with the anchors per image.
PREDICTIONS_CONTRACT = "head predictions per image → anchors per image"


def predictions_vs_anchors(anatomy: Anatomy, ctx: Context, heads: Sequence[str], generator: str) -> Iterable[Finding]:
    """An ``anchor-mismatch`` when a dense head makes another number of predictions per image than
    there are anchors per image, read from what the whole-model probe saw both slots return (it runs
    them before the post-processing stops it): a head layer that changes its map's spatial size
    (a 1×1 conv where a padded 3×3 was) still has the right channels, but the box decoding pairs
    every prediction with an anchor, and the first real forward raises."""
    probe = ctx.model_probe(anatomy)
    made = probe.slot_io.get(generator)
    anchors = made[1] if made is not None else None
    if not (isinstance(anchors, (list, tuple)) and anchors and isinstance(anchors[0], Tensor) and anchors[0].dim() == 2):
        return
    per_image = int(anchors[0].shape[0])
    for head in heads:
        seen = probe.slot_io.get(head)
        out = seen[1] if seen is not None else None
        first = out if isinstance(out, Tensor) else out[0] if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor) else None
        if first is None or first.dim() < 3 or int(first.shape[1]) == per_image:
            continue
        yield finding("error", "anchor-mismatch", (head, generator),
                      f"{head} makes {int(first.shape[1])} predictions per image (output {tuple(first.shape)}) but {generator} "
                      f"makes {per_image} anchors per image; the box decoding pairs each prediction with an anchor, so the "
                      f"forward raises. A layer of {head} changes its map's spatial size, or its anchors per location",
                      f"make every layer of {paths.expression(head, ctx.model)} keep its map's size (e.g. 3×3 convs with "
                      "padding=1) and make its anchors per location what the generator gives")
